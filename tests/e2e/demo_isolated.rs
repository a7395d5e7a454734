//! `agent-vault demo`'s agent runs as a process of its own, isolated as
//! `run --isolate` isolates a command where the machine allows it, and the
//! demo says how in one line; where it allows nothing, the demo still runs
//! and says why. As root (CI) and as an ordinary user.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use crate::harness::*;
use crate::isolation::{binary, user};

/// Whether this machine gives an unprivileged process user, mount, PID and
/// network namespaces (asked of util-linux, not of the code under test).
fn namespaces_work(as_user: bool) -> bool {
    let mut c = Command::new("unshare");
    c.args([
        "--user",
        "--map-root-user",
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "true",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if as_user && let Some((uid, gid)) = user() {
        c.uid(uid).gid(gid);
    }
    c.status().is_ok_and(|s| s.success())
}

/// `agent-vault demo`, as the test user or as this one, with `env` set.
fn demo(as_user: bool, env: &[(&str, &str)]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Command::new(if as_user {
        binary()
    } else {
        std::path::Path::new(BIN)
    });
    c.arg("demo")
        .env("HOME", tmp.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", tmp.path().join("gitconfig"))
        .env_remove("AGENT_VAULT_ISOLATE_FALLBACK")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    if as_user && let Some((uid, gid)) = user() {
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        c.uid(uid).gid(gid);
    }
    c.output().unwrap()
}

/// The demo's isolation line, checked against what the machine allows, and
/// the agent's printout checked for the value.
fn check(out: &Output, expected: &[&str]) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(out));
    assert!(text.contains("demo complete"), "{text}");
    let isolation: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("isolated: ") || l.starts_with("not isolated: "))
        .collect();
    assert_eq!(isolation.len(), 1, "one isolation line: {text}");
    assert!(
        expected.iter().any(|e| isolation[0].starts_with(e)),
        "{:?} is none of {expected:?}\n{text}\n{}",
        isolation[0],
        stderr(out)
    );
    // What the agent printed: the echo, scrubbed, and never the value.
    let printed = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("demo-bot saw the echo: "))
        .unwrap_or_else(|| panic!("no printout of the agent: {text}"));
    assert!(printed.contains("[REDACTED:payments/api-key]"), "{printed}");
    assert!(!printed.contains("sk_demo_"), "{printed}");
    let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    assert!(
        !String::from_utf8_lossy(&all).contains("sk_demo_"),
        "{text}"
    );
}

#[test]
fn the_demos_agent_runs_isolated_where_the_machine_allows_it() {
    for as_user in [false, true] {
        let expected: &[&str] = if namespaces_work(as_user) {
            &["isolated: user, mount, PID and network namespaces"]
        } else {
            &["isolated: Landlock only", "not isolated: "]
        };
        check(&demo(as_user, &[]), expected);
    }
}

#[test]
fn without_namespaces_the_demo_says_so_and_still_runs() {
    // The namespaces skipped, as on a machine that refuses them: Landlock
    // alone where the kernel has it, else nothing, and the reason said.
    let out = demo(false, &[("AGENT_VAULT_ISOLATE_FALLBACK", "1")]);
    check(
        &out,
        &[
            "isolated: Landlock only",
            "not isolated: namespaces skipped (AGENT_VAULT_ISOLATE_FALLBACK), and Landlock is unavailable",
        ],
    );
}
