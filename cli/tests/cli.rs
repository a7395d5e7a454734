//! The command line as a user sees it: snapshot cases under `tests/cmd/`,
//! run by trycmd against the built binary.
//!
//! - `cmd/help/*.toml`: every command's and subcommand's `--help`
//!   (`help_cases_cover_every_command` fails when a command has none).
//! - `cmd/errors/*.toml`: errors that need no vault (argument parsing,
//!   names, flags read before the vault is opened).
//! - `cmd/vault/*.trycmd`: errors that need a vault; each file runs its
//!   commands in order in a fresh sandbox (its `.out/` directory makes
//!   trycmd copy the empty `.in/` to a temp dir), with `AGENT_VAULT_HOME`
//!   relative to it, so nothing outside the sandbox is read or written.
//!
//! Update the expected output with
//! `TRYCMD=overwrite cargo test -p agent-vault --test cli`, then read it.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_agent-vault");

/// The environment every case runs in: a key store inside the case's own
/// directory, no key or vault from the caller's environment, no git
/// configuration of the machine, a fixed terminal width for help.
fn cases() -> trycmd::TestCases {
    let t = trycmd::TestCases::new();
    t.register_bin("agent-vault", PathBuf::from(BIN))
        .register_bin("sh", PathBuf::from("/bin/sh"))
        .env("AGENT_VAULT_HOME", "home")
        .env("AGENT_VAULT_TOKEN", "")
        .env("AGENT_VAULT_OFFLINE", "1")
        .env("USER", "alice")
        .env("COLUMNS", "100")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com");
    t
}

#[test]
fn cli_cases() {
    // trycmd can only add variables, and a default would override a case's
    // own (`AGENT_VAULT_KEY=… agent-vault …`); clap takes an empty
    // AGENT_VAULT_DIR for an empty --vault. So the caller's must not be set.
    for var in ["AGENT_VAULT_DIR", "AGENT_VAULT_KEY"] {
        assert!(
            std::env::var_os(var).is_none(),
            "unset {var} to run the CLI cases"
        );
    }
    cases()
        .case("tests/cmd/help/*.toml")
        .case("tests/cmd/errors/*.toml")
        .case("tests/cmd/vault/*.trycmd")
        .run();
}

/// The subcommands `agent-vault <path…> --help` lists (without `help`).
fn listed_subcommands(path: &[&str]) -> Vec<String> {
    let out = Command::new(BIN)
        .args(path)
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .expect("run agent-vault --help");
    assert!(out.status.success(), "{path:?} --help failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some((_, rest)) = text.split_once("\nCommands:\n") else {
        return Vec::new();
    };
    rest.lines()
        .take_while(|l| !l.trim().is_empty())
        // A command's name starts at column 2; wrapped descriptions start further in.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command and subcommand (and the hidden `merge-driver`, which git
/// runs) has a `--help` snapshot: `cmd/help/<a>-<b>.toml`.
#[test]
fn help_cases_cover_every_command() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cmd/help");
    let mut missing = Vec::new();
    let mut paths: Vec<Vec<String>> = vec![Vec::new(), vec!["merge-driver".into()]];
    let mut i = 0;
    while i < paths.len() {
        let path = paths[i].clone();
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        for sub in listed_subcommands(&args) {
            let mut p = path.clone();
            p.push(sub);
            paths.push(p);
        }
        i += 1;
    }
    for path in &paths {
        let stem = if path.is_empty() {
            "agent-vault".to_owned()
        } else {
            path.join("-")
        };
        if !dir.join(format!("{stem}.toml")).is_file() {
            missing.push(stem);
        }
    }
    assert!(
        missing.is_empty(),
        "no --help case in tests/cmd/help/ for: {missing:?}"
    );
    assert!(paths.len() > 40, "found only {} commands", paths.len());
}
