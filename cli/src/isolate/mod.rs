//! `agent-vault run --isolate`: CMD runs where the only way out is the broker
//! and no key material is in reach, with no root and no Docker (DESIGN.md,
//! "Isolation").
//!
//! Three processes:
//! - the supervisor (`run`, outside): holds the keys, issues the token, and
//!   starts the set-up step with a [`Plan`] on its stdin (never in argv);
//! - the set-up step (`agent-vault __isolate`, re-executed so that it is
//!   single-threaded, as `unshare(CLONE_NEWUSER)` requires): new user, mount,
//!   network and PID namespaces, the key store and key files hidden under
//!   empty mounts, loopback up ([`setup`]);
//! - the namespace's init (`agent-vault __isolate-init`, PID 1 inside): a
//!   fresh `/proc`, the relay from 127.0.0.1 to the broker's Unix socket,
//!   Landlock as the second layer, then CMD ([`init`]).
//!
//! Each dies with its parent (`PR_SET_PDEATHSIG`), and when PID 1 ends the
//! kernel ends every process in the namespace: killing the supervisor ends
//! everything inside. Where namespaces are refused, Landlock alone is the
//! fallback (key reads denied, TCP only to the broker's port); what is not
//! enforced is said at start, and `--isolate=required` refuses to start.

mod init;
mod landlock;
mod setup;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use serde::{Deserialize, Serialize};

use crate::output::{CliError, CliResult};

/// The hidden subcommand of the set-up step.
pub const SETUP: &str = "__isolate";
/// The hidden subcommand of the namespace's init.
pub const INIT: &str = "__isolate-init";

/// Set in a test to skip the namespaces and take the Landlock-only path.
pub const FORCE_FALLBACK: &str = "AGENT_VAULT_ISOLATE_FALLBACK";

/// How much isolation `run` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// Whatever this machine allows, said at start.
    BestEffort,
    /// Namespaces and Landlock, or no start.
    Required,
}

/// What the set-up step and init need, passed on stdin as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Directories to cover with an empty mount (the key store, `.local/`).
    pub hide_dirs: Vec<PathBuf>,
    /// Files to cover with an empty one (key files named on the command line).
    pub hide_files: Vec<PathBuf>,
    /// The broker's Unix socket, which the relay inside forwards to.
    pub socket: PathBuf,
    /// The broker's TCP address, for the fallback (no network namespace).
    pub proxy_tcp: String,
    /// `AGENT:TOKEN`, the userinfo of `HTTPS_PROXY`.
    pub userinfo: String,
    /// The environment CMD gets besides the proxy variables (the CA files).
    pub env: Vec<(String, String)>,
    /// Variables removed from CMD's environment (keys, tokens).
    pub env_remove: Vec<String>,
    /// CMD and its arguments.
    pub command: Vec<String>,
    /// How much isolation is asked for.
    pub level: Level,
    /// Skip the namespaces (tests of the fallback).
    pub force_fallback: bool,
}

impl Plan {
    /// The proxy variables CMD gets, pointing at `addr`.
    fn proxy_env(&self, addr: &str) -> Vec<(String, String)> {
        let url = format!("http://{}@{addr}", self.userinfo);
        ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
            .iter()
            .map(|k| ((*k).to_owned(), url.clone()))
            .chain(
                [
                    ("NO_PROXY", ""),
                    ("no_proxy", ""),
                    ("NODE_USE_ENV_PROXY", "1"),
                ]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            )
            .collect()
    }
}

/// The supervisor: starts the set-up step with `plan` and waits for it.
pub fn supervise(plan: &Plan) -> CliResult<ExitCode> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Msg(format!("cannot find this program: {e}"), None))?;
    let json = serde_json::to_vec(plan)
        .map_err(|e| CliError::Msg(format!("cannot pass the plan on: {e}"), None))?;
    let mut child = Command::new(exe)
        .arg(SETUP)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| CliError::Msg(format!("cannot start the isolation: {e}"), None))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&json)
            .map_err(|e| CliError::Msg(format!("cannot pass the plan on: {e}"), None))?;
    }
    let status = child
        .wait()
        .map_err(|e| CliError::Msg(format!("cannot wait for the command: {e}"), None))?;
    Ok(exit_code(status.code()))
}

/// Runs the hidden subcommands; `None` when argv names neither. Called
/// first thing in `main`, while the process has one thread.
pub fn hidden_entry() -> Option<ExitCode> {
    let which = std::env::args_os().nth(1)?;
    let step = if which == SETUP {
        setup::run
    } else if which == INIT {
        init::run
    } else {
        return None;
    };
    let mut json = Vec::new();
    let plan = std::io::stdin()
        .lock()
        .read_to_end(&mut json)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<Plan>(&json).map_err(|e| e.to_string()));
    Some(match plan {
        Ok(plan) => match step(plan) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("agent-vault: error: run --isolate: {e}");
                ExitCode::from(125)
            }
        },
        Err(e) => {
            eprintln!("agent-vault: error: run --isolate: a malformed plan: {e}");
            ExitCode::from(125)
        }
    })
}

/// A child's exit status as ours: its code, or failure when a signal ended it.
fn exit_code(code: Option<i32>) -> ExitCode {
    match code {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}
