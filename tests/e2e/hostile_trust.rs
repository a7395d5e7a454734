//! Issue 10, signatures, parsing and pins: someone with push access (and no
//! owner key) pushes a hostile commit through a real bare remote; the
//! owner's clone gets it by `agent-vault sync`, the agent's by plain
//! `git pull`, and every command refuses it, saying what changed.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::*;

const VALUE: &[u8] = b"real-token-value-1234";
const PLANTED: &[u8] = b"attacker-planted-value";

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// No private key and no secret value in anything a command printed.
fn no_key_bytes(o: &Output) {
    let all = all_output(o);
    assert!(
        !all.contains("AGE-SECRET-KEY"),
        "key material in output:\n{all}"
    );
    assert!(
        !all.contains(std::str::from_utf8(VALUE).unwrap()),
        "the value in output:\n{all}"
    );
}

/// Alice's vault on a bare remote, an agent `bot` that may read `app`, the
/// agent's clone (which has read once, so it pinned the vault) and an
/// attacker's clone.
struct Team {
    env: Env,
    url: String,
    bot_key: PathBuf,
    agent: PathBuf,
    agent_home: PathBuf,
    attacker: PathBuf,
}

impl Team {
    fn new() -> Team {
        let env = Env::new();
        let bare = env.tmp.path().join("srv/vault.git");
        std::fs::create_dir_all(&bare).unwrap();
        ok(
            env.git_in(&bare, &["init", "--bare", "-q"]),
            "git init --bare",
        );
        let url = format!("file://{}", bare.display());
        env.git(&["remote", "add", "origin", &url]);
        let bot_key = env.add_agent("bot");
        env.set("app/token", VALUE);
        env.ok(&["grant", "bot", "app", "--mode", "read"]);
        ok(env.run(&["push"], b""), "push");
        let agent = env.tmp.path().join("agent");
        let attacker = env.tmp.path().join("attacker");
        for dir in [&agent, &attacker] {
            ok(
                env.git_in(
                    env.tmp.path(),
                    &["clone", "-q", &url, dir.to_str().unwrap()],
                ),
                "git clone",
            );
        }
        let t = Team {
            agent_home: env.tmp.path().join("agent-home"),
            env,
            url,
            bot_key,
            agent,
            attacker,
        };
        let first = t.agent_get();
        assert_eq!(ok(first, "agent's first get").stdout, VALUE);
        t
    }

    fn agent_run(&self, args: &[&str]) -> Output {
        let mut a = args.to_vec();
        a.extend(["--key", self.bot_key.to_str().unwrap()]);
        self.env.run_in(&self.agent, &self.agent_home, &a)
    }

    fn agent_get(&self) -> Output {
        self.agent_run(&["get", "app/token"])
    }

    /// The attacker commits everything in its clone and pushes.
    fn attacker_push(&self, msg: &str) {
        ok(self.env.git_in(&self.attacker, &["add", "-A"]), "git add");
        ok(
            self.env
                .git_in(&self.attacker, &["commit", "-q", "--no-verify", "-m", msg]),
            "git commit",
        );
        ok(
            self.env.git_in(&self.attacker, &["push", "-q"]),
            "attacker push",
        );
    }

    /// The attacker reverts its last commit on the remote (the clean-up).
    fn attacker_revert(&self) {
        ok(
            self.env
                .git_in(&self.attacker, &["revert", "--no-edit", "HEAD"]),
            "git revert",
        );
        ok(
            self.env.git_in(&self.attacker, &["push", "-q"]),
            "push revert",
        );
    }

    fn agent_git_pull(&self) {
        ok(
            self.env
                .git_in(&self.agent, &["pull", "-q", "--no-rebase", "--no-edit"]),
            "agent git pull",
        );
    }

    /// After the revert: both clones catch up and everything passes again.
    fn recovered(&self) {
        ok(self.env.run(&["sync"], b""), "owner sync after revert");
        self.agent_git_pull();
        assert_eq!(ok(self.agent_get(), "agent get after revert").stdout, VALUE);
        assert_eq!(self.env.get("app/token"), VALUE);
        let c = self.env.run(&["check"], b"");
        assert!(
            c.status.success(),
            "check after revert:\n{}",
            all_output(&c)
        );
        no_key_bytes(&c);
    }

    fn attacker_vault(&self) -> PathBuf {
        self.attacker.join(".agent-vault")
    }
}

/// Everything outside the clones, to see that nothing there was touched.
fn outside(t: &Team) -> Vec<(PathBuf, Vec<u8>)> {
    Env::snapshot(&t.env.home)
        .into_iter()
        .chain(Env::snapshot(&t.agent_home))
        .filter(|(p, _)| !p.components().any(|c| c.as_os_str() == "repositories"))
        .filter(|(p, _)| p.file_name().is_none_or(|n| n != "trust.yaml"))
        .collect()
}

#[test]
fn issue10_deeply_nested_manifest_is_refused_before_parsing() {
    let t = Team::new();
    let before = outside(&t);
    // 120 KB of nesting: once 12 s of parser time before the signature check.
    let deep = format!(
        "format: 1\nowners: {}x{}\n",
        "[".repeat(60_000),
        "]".repeat(60_000)
    );
    std::fs::write(t.attacker_vault().join("manifest.yaml"), &deep).unwrap();
    t.attacker_push("nested manifest");

    // The owner: sync refuses the incoming commit, naming the manifest.
    let s = t.env.run(&["sync"], b"");
    assert!(!s.status.success(), "sync took it:\n{}", all_output(&s));
    assert!(stderr(&s).contains("manifest"), "{}", stderr(&s));
    no_key_bytes(&s);
    assert_eq!(t.env.get("app/token"), VALUE);

    // The agent: plain git pull brings it in; get refuses at once.
    t.agent_git_pull();
    let start = Instant::now();
    let g = t.agent_get();
    let took = start.elapsed();
    assert!(!g.status.success(), "get read through it");
    assert!(
        stderr(&g).contains("manifest.yaml") && stderr(&g).contains("signature"),
        "{}",
        stderr(&g)
    );
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    no_key_bytes(&g);
    // A first use (fresh key store, nothing pinned) refuses as fast.
    let fresh = t.env.tmp.path().join("fresh-home");
    let start = Instant::now();
    let g = t.env.run_in(
        &t.agent,
        &fresh,
        &["get", "app/token", "--key", t.bot_key.to_str().unwrap()],
    );
    assert!(!g.status.success());
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(stderr(&g).contains("manifest.yaml"), "{}", stderr(&g));
    let c = t.agent_run(&["check"]);
    assert!(!c.status.success());
    no_key_bytes(&c);

    assert_eq!(outside(&t), before, "files outside the clones changed");
    t.attacker_revert();
    t.recovered();
}

/// The attacker's own vault in a scratch directory: its own owner key and
/// vault id, the agent's real recipient given the `app` group (as an owner
/// entry, which reads everything), and a planted value it signed itself.
fn attacker_vault(t: &Team) -> PathBuf {
    let env = &t.env;
    let dir = env.tmp.path().join("evil");
    let home = env.tmp.path().join("evil-home");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str], stdin: &[u8]| {
        let mut c = env.cmd(args);
        c.current_dir(&dir)
            .env("AGENT_VAULT_HOME", &home)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        ok(
            child.wait_with_output().unwrap(),
            &format!("attacker {args:?}"),
        )
    };
    run(&["init", ".", "--owner", "mallory"], b"");
    run(&["set", "app/token"], PLANTED);
    let manifest = std::fs::read_to_string(env.vault.join(".agent-vault/manifest.yaml")).unwrap();
    let mut lines = manifest.lines().skip_while(|l| !l.starts_with("agents:"));
    let bot = lines
        .find(|l| l.trim() == "bot:")
        .and_then(|_| lines.find_map(|l| l.trim().strip_prefix("recipient: ")))
        .unwrap()
        .to_owned();
    let keygen = env.tmp.path().join("evil-extra.key");
    let v: serde_json::Value = serde_json::from_slice(
        &run(
            &["keygen", "--out", keygen.to_str().unwrap(), "--json"],
            b"",
        )
        .stdout,
    )
    .unwrap();
    run(
        &[
            "add-owner",
            "bot",
            &bot,
            "--signing-key",
            v["signing_key"].as_str().unwrap(),
        ],
        b"",
    );
    dir.join(".agent-vault")
}

fn replace_dir(from: &Path, to: &Path) {
    std::fs::remove_dir_all(to).unwrap();
    let out = std::process::Command::new("cp")
        .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(to.join(".local"));
}

#[test]
fn issue10_swapped_vault_id_is_refused_by_the_pinned_agent() {
    let t = Team::new();
    let real_id = t.env.vault_id();
    let evil = attacker_vault(&t);
    replace_dir(&evil, &t.attacker_vault());
    t.attacker_push("routine maintenance");
    let evil_id = {
        let cfg = std::fs::read_to_string(t.attacker_vault().join("config.yaml")).unwrap();
        cfg.lines()
            .find_map(|l| l.strip_prefix("vault_id: "))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_ne!(evil_id, real_id);

    // The owner's sync refuses, naming what changed.
    let s = t.env.run(&["sync"], b"");
    assert!(
        !s.status.success(),
        "owner sync took it:\n{}",
        all_output(&s)
    );
    assert!(
        stderr(&s).contains("vault id") && stderr(&s).contains(&evil_id),
        "{}",
        stderr(&s)
    );
    no_key_bytes(&s);

    // The agent's clone, updated by plain git pull: before the fix this
    // pinned the attacker and printed the planted value.
    t.agent_git_pull();
    let g = t.agent_get();
    assert!(
        !g.status.success(),
        "the agent accepted the attacker's vault: {:?}",
        String::from_utf8_lossy(&g.stdout)
    );
    assert!(!all_output(&g).contains(std::str::from_utf8(PLANTED).unwrap()));
    let e = stderr(&g);
    assert!(
        e.contains("config.yaml") && e.contains(&real_id) && e.contains(&evil_id),
        "{e}"
    );
    no_key_bytes(&g);
    for args in [&["list"][..], &["check"], &["sync"]] {
        let o = t.agent_run(args);
        assert!(!o.status.success(), "{args:?} took it:\n{}", all_output(&o));
        assert!(stderr(&o).contains("vault id"), "{args:?}: {}", stderr(&o));
    }

    // A fresh clone on the agent's machine: the remote's URL is pinned too.
    let again = t.env.tmp.path().join("agent2");
    ok(
        t.env.git_in(
            t.env.tmp.path(),
            &["clone", "-q", &t.url, again.to_str().unwrap()],
        ),
        "clone",
    );
    let g = t.env.run_in(
        &again,
        &t.agent_home,
        &["get", "app/token", "--key", t.bot_key.to_str().unwrap()],
    );
    assert!(!g.status.success(), "fresh clone took it");
    assert!(stderr(&g).contains("vault id"), "{}", stderr(&g));

    // A fresh machine, anchored by the owner's signing key.
    let alice_signing = t.env.json(&["list-owners"])[0]["signing_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let g = t
        .env
        .cmd(&["get", "app/token", "--key", t.bot_key.to_str().unwrap()])
        .current_dir(&again)
        .env("AGENT_VAULT_HOME", t.env.tmp.path().join("new-machine"))
        .env("AGENT_VAULT_EXPECT_OWNER", &alice_signing)
        .output()
        .unwrap();
    assert!(!g.status.success(), "expected owner did not hold");
    assert!(
        stderr(&g).contains("AGENT_VAULT_EXPECT_OWNER"),
        "{}",
        stderr(&g)
    );
    no_key_bytes(&g);

    t.attacker_revert();
    t.recovered();
}

#[test]
fn issue10_edited_metadata_is_refused_and_printed_safely() {
    let t = Team::new();
    t.env.ok(&[
        "set",
        "app/old",
        "v",
        "--expires",
        "2001-01-01",
        "--description",
        "rotated yearly",
    ]);
    ok(t.env.run(&["push"], b""), "push");
    ok(t.env.git_in(&t.attacker, &["pull", "-q"]), "attacker pull");
    let check = t.env.run(&["check"], b"");
    assert!(stderr(&check).contains("expired") || all_output(&check).contains("expired"));

    // Hide the expiry, and plant escape sequences in a description.
    let old = t
        .attacker_vault()
        .join(secret_file("app", "old", ".meta.yaml"));
    let meta = std::fs::read_to_string(&old).unwrap();
    let hidden: String = meta
        .lines()
        .filter(|l| !l.starts_with("expires:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&old, hidden).unwrap();
    let tok = t
        .attacker_vault()
        .join(secret_file("app", "token", ".meta.yaml"));
    let meta = std::fs::read_to_string(&tok).unwrap();
    std::fs::write(
        &tok,
        format!("description: \"innocent\\e[2J\\nFAKE LINE\\rX\"\n{meta}"),
    )
    .unwrap();
    t.attacker_push("tidy metadata");

    // The owner's sync refuses the unsigned change, naming the secret.
    let s = t.env.run(&["sync"], b"");
    assert!(!s.status.success(), "sync took it:\n{}", all_output(&s));
    assert!(stderr(&s).contains("app/"), "{}", stderr(&s));

    // The agent, by plain git pull: get refuses the edited secret.
    t.agent_git_pull();
    let g = t.agent_get();
    assert!(!g.status.success(), "get took an edited description");
    assert!(stderr(&g).contains("app/token"), "{}", stderr(&g));
    assert!(stderr(&g).contains("signature"), "{}", stderr(&g));
    no_key_bytes(&g);

    // check: both secrets flagged (bad signature), the expiry still reported.
    let c = t.agent_run(&["check"]);
    assert!(!c.status.success());
    let out = all_output(&c);
    assert!(
        out.contains("app/old") && out.contains("app/token"),
        "{out}"
    );
    assert!(out.contains("bad signature"), "{out}");

    // list: no escape sequence and no fake line reaches the terminal.
    let l = t.agent_run(&["list"]);
    let out = String::from_utf8_lossy(&l.stdout).into_owned();
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    assert!(
        !out.lines().any(|l| l.starts_with("FAKE LINE")),
        "fake line printed: {out}"
    );
    let token_line = out.lines().find(|l| l.starts_with("app/token")).unwrap();
    assert!(token_line.contains("(unverified)"), "{token_line}");
    assert!(token_line.contains("FAKE LINE"), "{token_line}");
    // list --json stays valid JSON carrying the text as it is, flagged.
    let j = t.agent_run(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    let tok = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "app/token")
        .unwrap();
    assert!(
        tok["description"]
            .as_str()
            .unwrap()
            .contains("\x1b[2J\nFAKE")
    );
    assert_eq!(tok["metadata_signed"], false);
    no_key_bytes(&l);

    t.attacker_revert();
    // The expiry the attacker tried to hide is reported again; the owner
    // retires the expired secret, and everything passes.
    t.agent_git_pull();
    let c = t.agent_run(&["check"]);
    assert!(
        all_output(&c).contains("[expired] app/old"),
        "{}",
        all_output(&c)
    );
    ok(t.env.run(&["sync"], b""), "owner sync");
    t.env.ok(&["rm", "app/old"]);
    t.recovered();
    // After the revert, signed metadata is shown as such.
    let j = t.env.json(&["list"]);
    assert!(
        j.as_array()
            .unwrap()
            .iter()
            .all(|e| e["metadata_signed"] == true)
    );
}

#[test]
fn issue10_old_metadata_is_read_flagged_and_signed_by_repair() {
    // The fixture vault of tests/vectors was written before descriptions
    // and expiry were signed.
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors");
    let env = Env::empty();
    let out = std::process::Command::new("cp")
        .args([
            "-a",
            vectors.join("vault/.agent-vault").to_str().unwrap(),
            env.vault.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new("cp")
        .args([
            "-a",
            vectors.join("home").to_str().unwrap(),
            env.home.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(env.get("app/db/password"), b"correct horse battery staple");
    let c = env.run(&["--offline", "check"], b"");
    let out = all_output(&c);
    assert!(out.contains("unsigned-metadata"), "{out}");
    let l = String::from_utf8_lossy(&env.ok(&["--offline", "list"]).stdout).into_owned();
    assert!(l.contains("(unverified) database password"), "{l}");
    let r = env.ok(&["--offline", "repair"]);
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("signed the description and expiry"),
        "{}",
        all_output(&r)
    );
    let c = env.run(&["--offline", "check"], b"");
    assert!(
        !all_output(&c).contains("unsigned-metadata"),
        "{}",
        all_output(&c)
    );
    let l = String::from_utf8_lossy(&env.ok(&["--offline", "list"]).stdout).into_owned();
    assert!(!l.contains("(unverified)"), "{l}");
    assert_eq!(env.get("ops/deploy-key"), b"ops-only-value");
}

#[test]
fn issue10_descriptions_never_reach_a_terminal_raw() {
    let env = Env::new();
    let bot = env.add_agent("bot");
    env.ok(&[
        "set",
        "app/token",
        "v",
        "--description",
        "innocent\x1b[2J\nFAKE LINE\r\u{202e}",
    ]);
    env.ok(&["grant", "bot", "app", "--mode", "read"]);

    let out = String::from_utf8(env.ok(&["list"]).stdout).unwrap();
    assert!(
        !out.contains('\x1b') && !out.contains('\r') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(out.contains("innocent\\u{1b}[2J\\nFAKE LINE"), "{out:?}");
    assert!(!out.contains("(unverified)"), "{out:?}");
    let v = env.json(&["list"]);
    assert_eq!(v[0]["description"], "innocent\x1b[2J\nFAKE LINE\r\u{202e}");
    assert_eq!(v[0]["metadata_signed"], true);

    // The MCP server's agent_vault_list, over stdio as a client drives it.
    use std::io::{BufRead, BufReader, Write};
    let mut child = env
        .cmd(&["--key", bot.to_str().unwrap(), "mcp"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for m in [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"agent_vault_list","arguments":{}}}"#,
    ] {
        writeln!(stdin, "{m}").unwrap();
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let reply = loop {
        let l = lines.next().expect("mcp reply").unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        if v["id"] == 2 {
            break v;
        }
    };
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(!text.contains("AGE-SECRET-KEY"));
    let listed: serde_json::Value = serde_json::from_str(text).unwrap();
    let desc = listed["secrets"][0]["description"].as_str().unwrap();
    assert!(
        !desc.contains('\x1b') && !desc.contains('\n') && !desc.contains('\r'),
        "{desc:?}"
    );
    assert!(desc.contains("FAKE LINE"), "{desc:?}");
    assert_eq!(listed["secrets"][0]["metadata_signed"], true);
}
