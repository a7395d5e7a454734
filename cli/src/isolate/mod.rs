//! `agent-vault run --isolate`: CMD runs where the only way out is the broker
//! and no key material is in reach, with no root and no Docker (DESIGN.md,
//! "Isolation").
//!
//! Three processes:
//! - the supervisor (`run`, outside): holds the keys, and starts the set-up
//!   step with a [`Plan`] on its stdin, a socketpair (never in argv); it
//!   hands init's listener to the broker with a token it mints, and renews
//!   that token while CMD runs ([`channel`]);
//! - the set-up step (`agent-vault __isolate`, re-executed so that it is
//!   single-threaded, as `unshare(CLONE_NEWUSER)` requires): new user, mount,
//!   network and PID namespaces, the key store and key files hidden under
//!   empty mounts, loopback up ([`setup`]);
//! - the namespace's init (`agent-vault __isolate-init`, PID 1 inside): a
//!   fresh `/proc`, a listener on 127.0.0.1 passed out to the supervisor
//!   (the broker accepts on it: CMD's `HTTPS_PROXY` holds no token),
//!   Landlock as the second layer, then CMD ([`init`]).
//!
//! Each dies with its parent (`PR_SET_PDEATHSIG`), and when PID 1 ends the
//! kernel ends every process in the namespace: killing the supervisor ends
//! everything inside. Where namespaces are refused, Landlock alone is the
//! fallback (key reads denied, TCP only to the broker's port, the token in
//! `HTTPS_PROXY`, not renewed); what is not enforced is said at start, and
//! `--isolate=required` refuses to start.

mod channel;
mod init;
mod landlock;
mod setup;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    /// The broker's Unix socket, which the supervisor hands the listener to.
    pub socket: PathBuf,
    /// The broker's TCP address, for the fallback (no network namespace).
    pub proxy_tcp: String,
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
    /// The proxy variables CMD gets, pointing at `addr`, with `userinfo`
    /// (`AGENT:TOKEN`) on the fallback only.
    fn proxy_env(&self, addr: &str, userinfo: Option<&str>) -> Vec<(String, String)> {
        let url = match userinfo {
            Some(u) => format!("http://{u}@{addr}"),
            None => format!("http://{addr}"),
        };
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

/// Mints the agent's tokens for the supervisor.
pub struct Minter<'a> {
    /// A fresh token.
    pub mint: Box<dyn FnMut() -> CliResult<String> + 'a>,
    /// The agent's name.
    pub agent: String,
    /// A token's lifetime.
    pub ttl: Duration,
}

/// What an isolated command ran under, as the supervisor learnt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforced {
    /// User, mount, PID and network namespaces (and Landlock where it is).
    Namespaces,
    /// No namespaces; Landlock alone.
    LandlockOnly,
    /// Neither: CMD ran as this user, for this reason.
    Nothing(String),
}

/// The supervisor: starts the set-up step with `plan`, hands init's
/// listener to the broker with a token from `minter`, renews it until CMD
/// ends, and waits for it.
pub fn supervise(plan: &Plan, minter: Minter<'_>) -> CliResult<ExitCode> {
    supervise_with(plan, minter, Stdio::inherit()).map(|(code, _)| code)
}

/// [`supervise`], with CMD's stdout going to `stdout`; also says what was
/// enforced (`None`: CMD did not start, the failure said on stderr).
pub fn supervise_with(
    plan: &Plan,
    mut minter: Minter<'_>,
    stdout: Stdio,
) -> CliResult<(ExitCode, Option<Enforced>)> {
    let err = |what: &str, e: &dyn std::fmt::Display| CliError::Msg(format!("{what}: {e}"), None);
    let exe = std::env::current_exe().map_err(|e| err("cannot find this program", &e))?;
    let json = serde_json::to_vec(plan).map_err(|e| err("cannot pass the plan on", &e))?;
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| err("cannot start the isolation", &e))?;
    let mut child = Command::new(exe)
        .arg(SETUP)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(stdout)
        .spawn()
        .map_err(|e| err("cannot start the isolation", &e))?;
    // Once for the set-up step, once for init.
    channel::write_frame(&mut ours, &json)
        .and_then(|()| channel::write_frame(&mut ours, &json))
        .map_err(|e| err("cannot pass the plan on", &e))?;
    // Minted while the set-up step works.
    let token = (minter.mint)()?;
    let mut enforced = None;
    let control = match channel::recv_fd(&ours) {
        Ok(Some((channel::LISTENER, Some(listener)))) => {
            let control = channel::hand_off(&plan.socket, &listener, &token);
            drop(listener);
            match control {
                Ok(c) => {
                    ours.write_all(&[channel::GO])
                        .map_err(|e| err("cannot start the command", &e))?;
                    Some(c)
                }
                Err(e) => {
                    // init sees the channel close and stops.
                    drop(ours);
                    let _ = child.wait();
                    return Err(CliError::Msg(
                        e,
                        Some("is `agent-vault proxy --unix PATH` running there?".into()),
                    ));
                }
            }
        }
        Ok(Some((channel::TOKEN, _))) => {
            ours.write_all(format!("{}:{token}\n", minter.agent).as_bytes())
                .map_err(|e| err("cannot pass the token on", &e))?;
            enforced = channel::read_enforced(&ours);
            None
        }
        // A failure inside, said there.
        _ => None,
    };
    let (done, status) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let Some(mut control) = control else {
        return wait(&status).map(|code| (code, enforced));
    };
    enforced = Some(Enforced::Namespaces);
    // Renewed before the last token expires: at about 2/3 of its lifetime
    // (less a second, as tokens count whole seconds).
    let every =
        (minter.ttl.saturating_sub(Duration::from_secs(1)) * 2 / 3).max(Duration::from_millis(500));
    let mut next = Instant::now() + every;
    let mut renewing = true;
    loop {
        match status.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(done) => return exited(done).map(|code| (code, enforced)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return wait(&status).map(|code| (code, enforced));
            }
        }
        next = Instant::now() + every;
        if !renewing {
            continue;
        }
        let sent = (minter.mint)().and_then(|t| {
            control
                .write_all(format!("{t}\n").as_bytes())
                .map_err(|e| err("the broker closed the hand-off", &e))
        });
        if let Err(e) = sent {
            renewing = false;
            let why = match e {
                CliError::Core(e) => e.to_string(),
                CliError::Msg(m, _) => m,
            };
            crate::output::note(format!(
                "warning: run --isolate: the token cannot be renewed ({why}); the command's requests will be refused once it expires"
            ));
        }
    }
}

/// The set-up step's exit, as ours, once it comes.
fn wait(status: &mpsc::Receiver<std::io::Result<std::process::ExitStatus>>) -> CliResult<ExitCode> {
    let done = status
        .recv()
        .map_err(|e| CliError::Msg(format!("cannot wait for the command: {e}"), None))?;
    exited(done)
}

/// The set-up step's exit, as ours.
fn exited(done: std::io::Result<std::process::ExitStatus>) -> CliResult<ExitCode> {
    let status =
        done.map_err(|e| CliError::Msg(format!("cannot wait for the command: {e}"), None))?;
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
    let plan = channel::stdin_channel()
        .and_then(|mut c| channel::read_frame(&mut c))
        .and_then(|json| serde_json::from_slice::<Plan>(&json).map_err(|e| e.to_string()));
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
