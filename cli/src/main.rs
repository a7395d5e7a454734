//! The `agent-vault` binary: argument parsing and output. The work is in
//! `agent-vault-core`.
#![forbid(unsafe_code)]

mod broker;
mod cli;
mod cmd;
mod demo;
mod isolate;
mod output;
mod progress;
mod service;
mod ui;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system's allocator: the broker makes and frees
/// small buffers on every request, and spends about a tenth less CPU per
/// request with it (bench/broker.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `run --isolate`'s set-up steps, before anything can start a thread.
    if let Some(code) = isolate::hidden_entry() {
        return code;
    }
    // `demo`'s agent, a process of its own.
    if let Some(code) = demo::agent_entry() {
        return code;
    }
    let cli = cli::Cli::parse();
    progress::install(cli.quiet, cli.json);
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => output::report_error(&e),
    }
}
