//! Team sync over real git remotes on loopback: file://, git daemon, and
//! ssh with key authentication.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::harness::*;
use crate::remotes;

pub fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

/// A second clone of the vault: an owner's or an agent's machine.
pub struct Clone {
    dir: PathBuf,
    home: PathBuf,
    key: PathBuf,
}

impl Clone {
    pub fn run(&self, env: &Env, args: &[&str]) -> Output {
        let mut a = args.to_vec();
        let key = self.key.to_str().unwrap().to_owned();
        a.extend(["--key", &key]);
        env.run_in(&self.dir, &self.home, &a)
    }
}

/// Alice's vault pushed to a bare repository served at `url`.
pub fn team(env: &Env, url: &str, git_ssh: Option<&str>) {
    let bare = env.tmp.path().join("srv/vault.git");
    std::fs::create_dir_all(&bare).unwrap();
    ok(
        env.git_in(&bare, &["init", "--bare", "-q"]),
        "git init --bare",
    );
    env.git(&["remote", "add", "origin", url]);
    if let Some(ssh) = git_ssh {
        env.git(&["config", "core.sshCommand", ssh]);
    }
    ok(env.run(&["push"], b""), "push");
}

fn clone(env: &Env, url: &str, name: &str, key: PathBuf) -> Clone {
    let dir = env.tmp.path().join(name);
    ok(
        env.git_in(env.tmp.path(), &["clone", "-q", url, dir.to_str().unwrap()]),
        "git clone",
    );
    Clone {
        dir,
        home: env.tmp.path().join(format!("{name}-home")),
        key,
    }
}

pub fn add_bob(env: &Env, url: &str) -> Clone {
    let key = env.tmp.path().join("bob.key");
    let v = env.json(&["keygen", "--out", key.to_str().unwrap()]);
    env.ok(&[
        "add-owner",
        "bob",
        v["recipient"].as_str().unwrap(),
        "--signing-key",
        v["signing_key"].as_str().unwrap(),
    ]);
    env.ok(&["sync"]);
    clone(env, url, "bob", key)
}

pub fn file_url(env: &Env) -> String {
    format!("file://{}", env.tmp.path().join("srv/vault.git").display())
}

#[test]
fn two_owners_change_different_things_and_both_see_everything() {
    let env = Env::new();
    let url = file_url(&env);
    team(&env, &url, None);
    env.set("a/one", b"alice-1");
    let bob = add_bob(&env, &url);
    // Concurrent, unrelated changes on each side.
    env.set("a/two", b"alice-2");
    env.add_agent("bot");
    env.ok(&["grant", "bot", "a"]);
    let out = std::process::Command::new(BIN)
        .args(["set", "b/three", "--key", bob.key.to_str().unwrap()])
        .current_dir(&bob.dir)
        .env("AGENT_VAULT_HOME", &bob.home)
        .env("GIT_CONFIG_GLOBAL", env.tmp.path().join("gitconfig"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"bob-3")?;
            c.wait_with_output()
        })
        .unwrap();
    ok(out, "bob set");
    ok(bob.run(&env, &["add-agent", "helper"]), "bob add-agent");
    // Both sync; the second one merges.
    ok(env.run(&["sync"], b""), "alice sync");
    let out = ok(bob.run(&env, &["sync", "--json"]), "bob sync");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pull"], "merged the remote's changes");
    assert_eq!(v["conflicts"], serde_json::json!([]));
    ok(env.run(&["sync"], b""), "alice sync again");
    for (path, value) in [
        ("a/one", "alice-1"),
        ("a/two", "alice-2"),
        ("b/three", "bob-3"),
    ] {
        assert_eq!(env.get(path), value.as_bytes(), "alice reads {path}");
        assert_eq!(
            ok(bob.run(&env, &["get", path]), "bob get").stdout,
            value.as_bytes(),
            "bob reads {path}"
        );
    }
    let agents = env.json(&["list-agents"]);
    let names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bot", "helper"]);
    assert_eq!(agents[0]["grants"]["a"], "read");
    env.ok(&["check"]);
    ok(bob.run(&env, &["check"]), "bob check");
    // Bob's sync made a merge commit: two parents, a re-signed manifest.
    let parents = String::from_utf8(
        env.git_in(&bob.dir, &["log", "-1", "--format=%P %s"])
            .stdout,
    )
    .unwrap();
    assert_eq!(
        parents.split_whitespace().filter(|w| w.len() == 40).count(),
        2,
        "{parents}"
    );
    assert!(parents.contains("agent-vault: merge origin/"), "{parents}");
}

#[test]
fn a_rotation_on_one_side_covers_values_added_on_the_other() {
    use agent_vault_core::crypto::{self, Identity};
    let env = Env::new();
    let url = file_url(&env);
    team(&env, &url, None);
    env.set("g/a", b"1");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    let bob = add_bob(&env, &url);
    // Alice revokes bot (the group rotates); Bob, not yet synced, adds a
    // value encrypted to the group key bot still holds.
    env.ok(&["revoke", "bot", "g"]);
    ok(env.run(&["sync"], b""), "alice sync");
    ok(bob.run(&env, &["set", "g/new", "added-by-bob"]), "bob set");
    ok(bob.run(&env, &["sync"]), "bob sync");
    // After the merge nothing in the group opens with bot's key.
    let bot_id = Identity::read_file(&bot).unwrap();
    let gk = bob.dir.join(".agent-vault/groups/g.key.age");
    assert!(crypto::decrypt_identity(&[&bot_id], &std::fs::read(&gk).unwrap(), &gk).is_err());
    assert_eq!(
        ok(bob.run(&env, &["get", "g/new"]), "get").stdout,
        b"added-by-bob"
    );
    ok(env.run(&["pull"], b""), "alice pull");
    assert_eq!(env.get("g/new"), b"added-by-bob");
    assert_eq!(env.get("g/a"), b"1");
    assert!(stderr(&env.get_as(&bot, "g/new")).contains("not granted"));
    env.ok(&["check"]);
}

#[test]
fn same_secret_on_both_sides_is_a_named_conflict_resolved_either_way() {
    let env = Env::new();
    let url = file_url(&env);
    team(&env, &url, None);
    env.set("s/key", b"base");
    let bob = add_bob(&env, &url);
    env.set("s/key", b"alice-value");
    env.set("s/other", b"o");
    ok(env.run(&["sync"], b""), "alice sync");
    let out = bob.run(&env, &["set", "s/key", "bob-value"]);
    ok(out, "bob set");
    let out = ok(bob.run(&env, &["sync", "--json"]), "bob sync");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["conflicts"], serde_json::json!(["s/key"]));
    // Ours (bob's) stands, the vault checks clean but for the warning.
    assert_eq!(
        ok(bob.run(&env, &["get", "s/key"]), "get").stdout,
        b"bob-value"
    );
    assert_eq!(ok(bob.run(&env, &["get", "s/other"]), "get").stdout, b"o");
    let check = ok(bob.run(&env, &["check"]), "check");
    assert!(String::from_utf8_lossy(&check.stdout).contains("[conflict] s/key"));
    // Theirs is recoverable.
    ok(bob.run(&env, &["resolve", "s/key", "--theirs"]), "resolve");
    assert_eq!(
        ok(bob.run(&env, &["get", "s/key"]), "get").stdout,
        b"alice-value"
    );
    assert!(!String::from_utf8_lossy(&bob.run(&env, &["check"]).stdout).contains("conflict"));
    let err = stderr(&bob.run(&env, &["resolve", "s/key", "--ours"]));
    assert!(err.contains("no unresolved merge conflict"), "{err}");
    ok(bob.run(&env, &["sync"]), "bob sync");
    ok(env.run(&["sync"], b""), "alice sync");
    assert_eq!(env.get("s/key"), b"alice-value");
}

#[test]
fn agent_clone_over_git_daemon_follows_grants_and_revokes() {
    let env = Env::new();
    let srv = env.tmp.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let daemon = remotes::git_daemon(&srv);
    let url = format!("git://127.0.0.1:{}/vault.git", daemon.port);
    team(&env, &url, None);
    env.set("stripe/key", b"sk_1");
    let bot_key = env.add_agent("bot");
    env.ok(&["sync"]);
    let agent = clone(&env, &url, "agent", bot_key.clone());
    assert!(stderr(&agent.run(&env, &["get", "stripe/key"])).contains("not granted"));
    // The owner grants and syncs; the agent's next read pulls first (once
    // the interval since its last pull has passed).
    env.ok(&["grant", "bot", "stripe"]);
    env.ok(&["sync"]);
    std::fs::remove_file(agent.dir.join(".agent-vault/.local/last-pull")).unwrap();
    assert_eq!(
        ok(agent.run(&env, &["get", "stripe/key"]), "agent get").stdout,
        b"sk_1"
    );
    // The agent machine's own files survive every pull.
    std::fs::write(agent.dir.join("agent-notes.txt"), "mine").unwrap();
    std::fs::write(agent.dir.join(".gitignore"), "edited on the agent\n").unwrap();
    // A revoke reaches the agent on its next pull.
    env.ok(&["revoke", "bot", "stripe"]);
    env.set("stripe/key", b"sk_2");
    env.ok(&["sync"]);
    let out = ok(agent.run(&env, &["pull"]), "agent pull");
    assert!(String::from_utf8_lossy(&out.stdout).contains("fast-forward"));
    assert!(stderr(&agent.run(&env, &["get", "stripe/key"])).contains("not granted"));
    // An agent can never merge: it has no owner key.
    // The remote goes away: reads go on from the local copy, with a warning.
    env.ok(&["grant", "bot", "stripe"]);
    env.ok(&["sync"]);
    ok(agent.run(&env, &["pull"]), "agent pull");
    assert_eq!(
        std::fs::read_to_string(agent.dir.join("agent-notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_to_string(agent.dir.join(".gitignore")).unwrap(),
        "edited on the agent\n"
    );
    drop(daemon);
    std::fs::remove_file(agent.dir.join(".agent-vault/.local/last-pull")).ok();
    // --offline never tries.
    let out = agent.run(&env, &["get", "stripe/key", "--offline"]);
    assert_eq!(out.stdout, b"sk_2");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let out = agent.run(&env, &["get", "stripe/key"]);
    assert_eq!(out.stdout, b"sk_2");
    assert!(
        stderr(&out).contains("using the local copy"),
        "{}",
        stderr(&out)
    );
    // Within the interval it does not try (or warn) again.
    let out = agent.run(&env, &["get", "stripe/key"]);
    assert_eq!(out.stdout, b"sk_2");
    assert!(!stderr(&out).contains("local copy"));
    let err = stderr(&agent.run(&env, &["pull"]));
    assert!(
        err.contains("remote origin") && err.contains("cannot reach"),
        "{err}"
    );
}

#[test]
fn rejected_push_then_sync_and_user_files_survive() {
    let env = Env::new();
    let url = file_url(&env);
    team(&env, &url, None);
    let bob = add_bob(&env, &url);
    env.set("g/a", b"1");
    ok(env.run(&["push"], b""), "alice push");
    // Bob's own work in his clone: an untracked file and a changed tracked one.
    std::fs::write(bob.dir.join("notes.txt"), "mine").unwrap();
    std::fs::write(bob.dir.join(".gitignore"), "changed by bob\n").unwrap();
    ok(bob.run(&env, &["set", "g/b", "2"]), "bob set");
    let err = stderr(&bob.run(&env, &["push"]));
    assert!(
        err.contains("push rejected") && err.contains("agent-vault sync"),
        "{err}"
    );
    ok(bob.run(&env, &["sync"]), "bob sync");
    assert_eq!(
        std::fs::read_to_string(bob.dir.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_to_string(bob.dir.join(".gitignore")).unwrap(),
        "changed by bob\n"
    );
    let status =
        String::from_utf8(env.git_in(&bob.dir, &["status", "--porcelain"]).stdout).unwrap();
    assert!(
        status.contains(" M .gitignore") && status.contains("?? notes.txt"),
        "{status}"
    );
    ok(env.run(&["pull"], b""), "alice pull");
    assert_eq!(env.get("g/b"), b"2");
}

#[test]
fn unsigned_change_pushed_by_an_agent_is_refused() {
    let env = Env::new();
    let url = file_url(&env);
    team(&env, &url, None);
    env.set("g/a", b"1");
    let bot = env.add_agent("bot");
    env.ok(&["sync"]);
    let agent = clone(&env, &url, "agent", bot);
    // The agent (push access, no owner key) grants itself read in the manifest.
    let m = agent.dir.join(".agent-vault/manifest.yaml");
    let text = std::fs::read_to_string(&m).unwrap();
    let text = if text.contains("grants: {}") {
        text.replace("grants: {}", "grants:\n  bot:\n    g: read")
    } else {
        format!("{text}grants:\n  bot:\n    g: read\n")
    };
    std::fs::write(&m, text).unwrap();
    ok(
        env.git_in(&agent.dir, &["commit", "-qam", "sneaky"]),
        "agent commit",
    );
    ok(
        env.git_in(&agent.dir, &["push", "-q", "origin", "HEAD"]),
        "agent push",
    );
    let err = stderr(&env.run(&["sync"], b""));
    assert!(
        err.contains("manifest is not trusted") && err.contains("incoming commit"),
        "{err}"
    );
    assert!(
        env.json(&["list-agents"])[0]["grants"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn ssh_remote_with_key_auth_and_a_clear_auth_failure() {
    let env = Env::new();
    let Some(ssh) = remotes::sshd(&env.tmp.path().join("sshd")) else {
        panic!("sshd is needed (apt-get install openssh-server); scripts/test-all.sh installs it");
    };
    let bare = env.tmp.path().join("srv/vault.git");
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        remotes::whoami(),
        ssh.server.port,
        bare.display()
    );
    team(&env, &url, Some(&ssh.git_ssh));
    env.set("g/a", b"over-ssh");
    env.ok(&["sync"]);
    let log = String::from_utf8(env.git_in(&bare, &["log", "--format=%s", "-1"]).stdout).unwrap();
    assert_eq!(log.trim(), "agent-vault: set g/a");
    // The wrong key: a clear error naming the remote.
    env.git(&["config", "core.sshCommand", &ssh.git_ssh_wrong]);
    env.set("g/b", b"x");
    let err = env.fail(&["sync"]);
    assert!(
        err.contains("remote origin") && err.contains("authentication failed"),
        "{err}"
    );
    assert!(err.contains("ssh-agent"), "{err}");
}

#[test]
fn plain_git_pull_merges_the_manifest_and_an_owner_re_signs_it() {
    let env = Env::new();
    let url = file_url(&env);
    team(&env, &url, None);
    env.set("g/a", b"1");
    let bob = add_bob(&env, &url);
    // Bob's first pull registers the merge driver in his clone.
    ok(bob.run(&env, &["pull"]), "bob pull");
    env.add_agent("alpha");
    ok(env.run(&["sync"], b""), "alice sync");
    ok(bob.run(&env, &["add-agent", "beta"]), "bob add-agent");
    // Bob merges with plain git; the driver init registered merges the
    // manifest entry by entry (the binary is found on PATH).
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("git")
        .args(["pull", "--no-rebase", "--no-edit", "-q", "origin"])
        .current_dir(&bob.dir)
        .env("PATH", &path)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", env.tmp.path().join("gitconfig"))
        .env("GIT_AUTHOR_NAME", "bob")
        .env("GIT_AUTHOR_EMAIL", "bob@example.com")
        .env("GIT_COMMITTER_NAME", "bob")
        .env("GIT_COMMITTER_EMAIL", "bob@example.com")
        .output()
        .unwrap();
    ok(out, "git pull");
    // Until an owner signs the merge, readers refuse it and say what to do.
    let err = stderr(&bob.run(&env, &["get", "g/a"]));
    assert!(
        err.contains("not trusted") && err.contains("agent-vault repair"),
        "{err}"
    );
    ok(bob.run(&env, &["repair"]), "repair");
    assert_eq!(ok(bob.run(&env, &["get", "g/a"]), "get").stdout, b"1");
    let agents = ok(bob.run(&env, &["list-agents", "--json"]), "list");
    let v: serde_json::Value = serde_json::from_slice(&agents.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    ok(bob.run(&env, &["check"]), "check");
    ok(bob.run(&env, &["sync"]), "bob sync");
    ok(env.run(&["sync"], b""), "alice sync");
    assert_eq!(env.json(&["list-agents"]).as_array().unwrap().len(), 2);
}

#[test]
fn the_users_git_setup_applies_insteadof() {
    let env = Env::new();
    let srv = env.tmp.path().join("srv");
    // The user's own rewrite rule: team:NAME means a directory on this machine.
    let rule = format!("url.file://{}/.insteadOf", srv.display());
    ok(
        env.git_in(env.tmp.path(), &["config", "--global", &rule, "team:"]),
        "git config",
    );
    team(&env, "team:vault.git", None);
    env.set("g/a", b"1");
    ok(env.run(&["sync"], b""), "sync");
    let log = String::from_utf8(
        env.git_in(&srv.join("vault.git"), &["log", "--format=%s", "-1"])
            .stdout,
    )
    .unwrap();
    assert_eq!(log.trim(), "agent-vault: set g/a");
}
