//! Issue 10, "the vault trusts its own working tree": someone with push
//! access and no owner key pushes a hostile commit through a real bare
//! remote. The owner's `sync` refuses it; after a plain `git pull` the
//! owner's commands refuse or report it, naming the path, touch no file
//! outside the repository and print no key byte; once the hostile files are
//! gone again (a normal commit or `git reset`) the vault passes `check`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const KEY_MARK: &str = "AGE-SECRET-KEY";

/// The owner's vault with a secret, an agent that reads its group, pushed
/// to a bare repository; and a canary file outside the repository.
struct Scene {
    env: Env,
    url: String,
    bot_key: PathBuf,
    outside: PathBuf,
    before: Vec<(PathBuf, Vec<u8>, i64)>,
}

impl Scene {
    fn new() -> Self {
        let env = Env::new();
        env.set("g/one", b"value-one");
        let bot_key = env.add_agent("bot");
        env.ok(&["grant", "bot", "g"]);
        let bare = env.push_to_bare();
        let url = format!("file://{}", bare.display());
        let outside = env.tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let canary = outside.join("canary.txt");
        std::fs::write(&canary, b"canary").unwrap();
        std::fs::write(outside.join("x.age"), b"outside").unwrap();
        let mut s = Scene {
            env,
            url,
            bot_key,
            outside,
            before: Vec::new(),
        };
        s.before = s.guarded();
        s
    }

    /// Files outside the repository that nothing may touch: the canary
    /// directory and the key store, with contents and mtimes.
    fn guarded(&self) -> Vec<(PathBuf, Vec<u8>, i64)> {
        let mut v = Vec::new();
        for dir in [&self.outside, &self.env.home] {
            for (p, b) in Env::snapshot(dir) {
                let m = std::fs::metadata(&p).map(|m| m.mtime_nsec() + m.mtime() * 1_000_000_000);
                v.push((p, b, m.unwrap_or(0)));
            }
        }
        v
    }

    fn assert_untouched(&self) {
        let now = self.guarded();
        // The key store may gain files (pins, caches) but none may change.
        for (p, b, m) in &self.before {
            let after = now.iter().find(|(q, _, _)| q == p);
            assert!(
                after.is_some_and(|(_, b2, m2)| b2 == b && m2 == m),
                "{} was changed or removed",
                p.display()
            );
        }
        let outside_now: Vec<_> = now
            .iter()
            .filter(|(p, _, _)| p.starts_with(&self.outside))
            .collect();
        let outside_before = self
            .before
            .iter()
            .filter(|(p, _, _)| p.starts_with(&self.outside))
            .count();
        assert_eq!(
            outside_now.len(),
            outside_before,
            "a file appeared outside the repository"
        );
    }

    /// An attacker's clone: `change` edits it, then a commit is pushed.
    fn attack(&self, change: impl FnOnce(&Path)) {
        let dir = self.env.tmp.path().join("attacker");
        let _ = std::fs::remove_dir_all(&dir);
        let out = self.env.git_in(
            self.env.tmp.path(),
            &["clone", "-q", &self.url, dir.to_str().unwrap()],
        );
        assert!(out.status.success(), "clone: {}", stderr(&out));
        change(&dir.join(".agent-vault"));
        for args in [
            &["add", "-A", "-f", "."][..],
            &["commit", "-q", "-m", "innocent change"],
            &["push", "-q", "origin", "HEAD"],
        ] {
            let out = self.env.git_in(&dir, args);
            assert!(
                out.status.success(),
                "attacker git {args:?}: {}",
                stderr(&out)
            );
        }
    }

    fn head(&self) -> String {
        self.env.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// The owner's `sync` must refuse, naming `path`, with HEAD and the
    /// working tree as they were.
    fn sync_refuses(&self, path: &str) {
        let head = self.head();
        let tree = Env::snapshot(&self.env.vault.join(".agent-vault"));
        let out = self.env.run(&["sync"], b"");
        assert!(!out.status.success(), "sync accepted a hostile commit");
        no_key(&out);
        assert!(
            stderr(&out).contains(path),
            "sync's error names {path}: {}",
            stderr(&out)
        );
        assert_eq!(self.head(), head);
        let after = Env::snapshot(&self.env.vault.join(".agent-vault"));
        let public = |s: &[(PathBuf, Vec<u8>)]| -> Vec<(PathBuf, Vec<u8>)> {
            s.iter()
                // Machine-private state, and the debris of an earlier refused
                // operation (which any writer clears), may change.
                .filter(|(p, _)| {
                    let p = p.to_string_lossy();
                    !p.contains("/.local/") && !p.ends_with(".key.age.next")
                })
                .cloned()
                .collect()
        };
        assert_eq!(
            public(&after),
            public(&tree),
            "sync changed the working tree"
        );
        self.assert_untouched();
    }

    /// Plain `git pull`, as a user would; returns the commit before it.
    fn git_pull(&self) -> String {
        let head = self.head();
        let branch = self.env.git(&["rev-parse", "--abbrev-ref", "HEAD"]);
        self.env
            .git(&["pull", "-q", "--ff-only", "origin", branch.trim()]);
        head
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = run_limited(&self.env, args, b"", Duration::from_secs(60));
        no_key(&out);
        out
    }

    /// The command fails and its error names `path`.
    fn refuses(&self, args: &[&str], path: &str) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "{args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr(&out).contains(path),
            "{args:?}: the error should name {path}: {}",
            stderr(&out)
        );
        self.assert_untouched();
    }

    /// `check` fails and reports `kind` for `path`.
    fn check_reports(&self, kind: &str, path: &str) -> String {
        let out = self.run(&["check", "--json"]);
        assert!(
            !out.status.success(),
            "check passed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(&text).expect("check --json");
        let found = v["findings"].as_array().unwrap().iter().any(|f| {
            f["kind"] == kind
                && f["severity"] == "error"
                && (f["subject"].as_str().unwrap_or("").contains(path)
                    || f["message"].as_str().unwrap_or("").contains(path))
        });
        assert!(found, "check should report {kind} for {path}: {text}");
        self.assert_untouched();
        text
    }

    fn check_passes(&self) {
        let out = self.run(&["check"]);
        assert!(
            out.status.success(),
            "check after the clean-up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }

    /// Undoes the pull with `git reset --hard`.
    fn reset_to(&self, commit: &str) {
        self.env.git(&["reset", "-q", "--hard", commit]);
    }
}

fn no_key(out: &Output) {
    for s in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(s).contains(KEY_MARK),
            "key bytes in output: {}",
            String::from_utf8_lossy(s)
        );
    }
}

/// Runs the binary and kills it if it takes longer than `limit` (a hang is
/// a failure, not a stuck test run).
fn run_limited(env: &Env, args: &[&str], stdin: &[u8], limit: Duration) -> Output {
    use std::io::Write;
    let mut child = env
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("agent-vault {args:?} hung: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn symlink(target: &Path, link: &Path) {
    if let Some(d) = link.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[test]
fn committed_local_journal_is_never_completed() {
    let s = Scene::new();
    let id = s.env.vault_id();
    s.attack(|v| {
        std::fs::create_dir_all(v.join(".local")).unwrap();
        // What an old journal looked like: a target manifest to sign.
        let manifest = std::fs::read_to_string(v.join("manifest.yaml")).unwrap();
        let txn = serde_json::json!({
            "op": "add owner mallory", "manifest": null, "metas": [], "rotate": [],
            "rewrap": ["g"], "remove_secrets": [], "remove_agents": [], "agent_files": [],
        });
        std::fs::write(v.join(".local/journal.json"), txn.to_string()).unwrap();
        assert!(manifest.contains(&id));
    });
    s.sync_refuses(".agent-vault/.local/journal.json");
    let before = s.git_pull();
    let manifest = std::fs::read(s.env.vault.join(".agent-vault/manifest.yaml")).unwrap();
    for args in [
        &["set", "g/two"][..],
        &["rm", "g/one"],
        &["revoke", "bot", "g"],
        &["repair"],
    ] {
        s.refuses(args, ".agent-vault/.local/journal.json");
    }
    assert_eq!(
        std::fs::read(s.env.vault.join(".agent-vault/manifest.yaml")).unwrap(),
        manifest,
        "the manifest was rewritten"
    );
    let out = s.run(&["get", "g/one"]);
    assert_eq!(out.stdout, b"value-one");
    let text = s.check_reports("tracked-local", ".agent-vault/.local/journal.json");
    assert!(!text.contains("repair"), "check advises repair: {text}");
    assert!(s.run(&["list", "--json"]).status.success());
    // Untracked but left in place, the journal is still not this machine's.
    s.env.git(&[
        "rm",
        "-q",
        "-r",
        "--cached",
        ".agent-vault/.local/journal.json",
    ]);
    s.env
        .git(&["commit", "-q", "-m", "untrack the planted journal"]);
    s.refuses(&["set", "g/two"], "journal.json");
    s.check_reports("foreign-journal", "journal.json");
    std::fs::remove_file(s.env.vault.join(".agent-vault/.local/journal.json")).unwrap();
    s.env.set("g/two", b"value-two");
    s.check_passes();
    let _ = before;
}

#[test]
fn local_last_pull_link_to_the_owner_key_is_not_followed() {
    let s = Scene::new();
    let key = s.env.owner_key();
    s.attack(|v| symlink(&key, &v.join(".local/last-pull")));
    s.sync_refuses(".agent-vault/.local/last-pull");
    let before = s.git_pull();
    // `get` reads its value; the automatic pull neither follows nor writes the link.
    let out = s.run(&["get", "g/one"]);
    assert!(out.status.success(), "get: {}", stderr(&out));
    assert_eq!(out.stdout, b"value-one");
    s.assert_untouched();
    s.refuses(&["set", "g/two"], ".agent-vault/.local/last-pull");
    s.refuses(&["rm", "g/one"], ".agent-vault/.local/last-pull");
    s.check_reports("tracked-local", ".agent-vault/.local/last-pull");
    s.check_reports("unsafe-file", ".agent-vault/.local/last-pull");
    // Removed from git by a normal commit, the link stays untracked: still never followed.
    s.env
        .git(&["rm", "-q", "--cached", ".agent-vault/.local/last-pull"]);
    s.env.git(&["commit", "-q", "-m", "untrack last-pull"]);
    let out = s.run(&["get", "g/one"]);
    assert_eq!(out.stdout, b"value-one");
    s.assert_untouched();
    std::fs::remove_file(s.env.vault.join(".agent-vault/.local/last-pull")).unwrap();
    s.check_passes();
    let _ = before;
}

#[test]
fn local_spare_link_to_a_directory_outside_is_not_written_through() {
    let s = Scene::new();
    let outside = s.outside.clone();
    s.attack(|v| symlink(&outside, &v.join(".local/spare")));
    s.sync_refuses(".agent-vault/.local/spare");
    let before = s.git_pull();
    s.refuses(&["set", "g/two"], ".agent-vault/.local/spare");
    s.check_reports("tracked-local", ".agent-vault/.local/spare");
    // Untracked, the link is left alone: writes go beside their targets.
    s.env
        .git(&["rm", "-q", "--cached", ".agent-vault/.local/spare"]);
    s.env.git(&["commit", "-q", "-m", "untrack spare"]);
    for (name, value) in [("g/two", "v2"), ("g/one", "v1-new"), ("h/three", "v3")] {
        let out = run_limited(
            &s.env,
            &["set", name],
            value.as_bytes(),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "set {name}: {}", stderr(&out));
    }
    let out = run_limited(
        &s.env,
        &["revoke", "bot", "g"],
        b"",
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "revoke: {}", stderr(&out));
    s.assert_untouched();
    s.check_reports("unsafe-file", ".agent-vault/.local/spare");
    std::fs::remove_file(s.env.vault.join(".agent-vault/.local/spare")).unwrap();
    s.check_passes();
    assert_eq!(s.env.get("g/one"), b"v1-new");
    let _ = before;
}

#[test]
fn group_directory_linked_outside_is_refused() {
    let s = Scene::new();
    let outside = s.outside.clone();
    s.attack(|v| {
        std::fs::remove_dir_all(v.join("secrets/g")).unwrap();
        symlink(&outside, &v.join("secrets/g"));
    });
    s.sync_refuses(".agent-vault/secrets/g");
    let before = s.git_pull();
    let path = ".agent-vault/secrets/g";
    s.refuses(&["get", "g/one"], path);
    s.refuses(&["get", "g/x"], path);
    s.refuses(&["set", "g/two"], path);
    s.refuses(&["rm", "g/x"], path);
    s.refuses(&["revoke", "bot", "g"], path);
    s.refuses(&["list", "--json"], path);
    s.check_reports("unsafe-file", path);
    // Later writes elsewhere are not wedged.
    let out = run_limited(
        &s.env,
        &["set", "h/other"],
        b"fine",
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "set h/other: {}", stderr(&out));
    s.assert_untouched();
    s.reset_to(&before);
    s.check_passes();
    assert_eq!(s.env.get("g/one"), b"value-one");
}

#[test]
fn config_and_metadata_linked_to_a_key_never_reach_output() {
    let s = Scene::new();
    let key = s.env.owner_key();
    s.attack(|v| symlink(&key, &v.join(secret_file("g", "one", ".meta.yaml"))));
    s.sync_refuses(&format!(
        ".agent-vault/{}",
        secret_file("g", "one", ".meta.yaml")
    ));
    let before = s.git_pull();
    let meta = &format!(".agent-vault/{}", secret_file("g", "one", ".meta.yaml"));
    s.refuses(&["get", "g/one"], meta);
    // `list` reports the file it cannot read, by name.
    let out = s.run(&["list", "--json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(meta) || stderr(&out).contains(meta),
        "list names {meta}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    s.refuses(&["set", "g/one"], meta);
    s.check_reports("unsafe-file", meta);
    // A revocation finishes: it rewrites no value (format 2), so it never
    // reads the file it could not verify.
    let out = s.run(&["revoke", "bot", "g", "--json"]);
    assert!(out.status.success(), "revoke: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exposure"][0]["skipped"], serde_json::json!([]), "{v}");
    s.assert_untouched();
    s.reset_to(&before);
    s.check_passes();

    s.attack(|v| {
        std::fs::remove_file(v.join(secret_file("g", "one", ".meta.yaml"))).unwrap();
        std::fs::copy(
            s.env
                .vault
                .join(".agent-vault")
                .join(secret_file("g", "one", ".meta.yaml")),
            v.join(secret_file("g", "one", ".meta.yaml")),
        )
        .unwrap();
        symlink(&key, &v.join("config.yaml"));
    });
    s.sync_refuses(".agent-vault/config.yaml");
    let before = s.git_pull();
    let cfg = ".agent-vault/config.yaml";
    for args in [
        &["get", "g/one"][..],
        &["set", "g/two"],
        &["rm", "g/one"],
        &["list", "--json"],
        &["check"],
    ] {
        s.refuses(args, cfg);
    }
    s.reset_to(&before);
    s.check_passes();
}

#[test]
fn fifos_and_dev_zero_do_not_hang_or_exhaust() {
    let s = Scene::new();
    // git cannot carry a FIFO: made in the working tree.
    let vault = s.env.vault.join(".agent-vault");
    for rel in ["groups/g.key.age", &secret_file("g", "one", ".age")] {
        let p = vault.join(rel);
        let saved = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&p)
                .status()
                .unwrap()
                .success()
        );
        s.refuses(&["get", "g/one"], &format!(".agent-vault/{rel}"));
        s.check_reports("unsafe-file", rel);
        if rel.starts_with("groups/") {
            // Refused before anything is written: no journal is left behind.
            s.refuses(&["revoke", "bot", "g"], rel);
            assert!(!vault.join(".local/journal.json").exists());
        }
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, saved).unwrap();
        s.check_passes();
    }
    // A link to /dev/zero comes through git.
    s.attack(|v| {
        symlink(
            Path::new("/dev/zero"),
            &v.join(secret_file("g", "one", ".age")),
        )
    });
    s.sync_refuses(&format!(".agent-vault/{}", secret_file("g", "one", ".age")));
    let before = s.git_pull();
    s.refuses(
        &["get", "g/one"],
        &format!(".agent-vault/{}", secret_file("g", "one", ".age")),
    );
    s.check_reports("unsafe-file", &secret_file("g", "one", ".age"));
    s.reset_to(&before);
    s.check_passes();
}

#[test]
fn planted_unsigned_secret_does_not_stop_revoke() {
    let s = Scene::new();
    let recipient = group_recipient(&s.env, "g");
    s.attack(|v| {
        // A value encrypted to the group's public recipient, with metadata
        // copied from a real secret: no owner signed it.
        let ct = age_encrypt(&recipient, b"planted");
        let planted = v.join(secret_file("g", "planted", ".age"));
        std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
        std::fs::write(planted, ct).unwrap();
        std::fs::copy(
            v.join(secret_file("g", "one", ".meta.yaml")),
            v.join(secret_file("g", "planted", ".meta.yaml")),
        )
        .unwrap();
    });
    s.sync_refuses("g/planted");
    let before = s.git_pull();
    let key_before = std::fs::read(s.env.vault.join(".agent-vault/groups/g.key.age")).unwrap();
    let out = s.run(&["revoke", "bot", "g", "--json"]);
    assert!(out.status.success(), "revoke: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Lazy revocation rewrites no value: the planted one is left as it is,
    // never re-encrypted (nor signed); `rekey` reports it as skipped.
    assert_eq!(v["exposure"][0]["skipped"], serde_json::json!([]), "{v}");
    let key_after = std::fs::read(s.env.vault.join(".agent-vault/groups/g.key.age")).unwrap();
    assert_ne!(key_before, key_after, "the group key was not rotated");
    assert!(
        !s.env
            .vault
            .join(".agent-vault/.local/journal.json")
            .exists(),
        "a journal was left"
    );
    // Later writes work; the revoked agent cannot read new values.
    s.env.set("g/two", b"new-value");
    assert_eq!(s.env.get("g/two"), b"new-value");
    assert_eq!(s.env.get("g/one"), b"value-one");
    let out = s.env.get_as(&s.bot_key, "g/two");
    assert!(!out.status.success(), "the revoked agent read a new value");
    let out = s.env.get_as(&s.bot_key, "g/planted");
    assert!(!out.status.success());
    s.check_reports("unsigned-secret", "g/planted");
    let out = s.run(&["rekey", "--json"]);
    assert!(out.status.success(), "rekey: {}", stderr(&out));
    s.env.git(&[
        "rm",
        "-q",
        &format!(".agent-vault/{}", secret_file("g", "planted", ".age")),
        &format!(".agent-vault/{}", secret_file("g", "planted", ".meta.yaml")),
    ]);
    s.env
        .git(&["commit", "-q", "-m", "remove the planted secret"]);
    s.check_passes();
    let _ = before;
}

/// Encrypts to a recipient with our own binary's library-free path: the
/// `age` CLI if present, else random bytes (unsigned either way).
fn age_encrypt(recipient: &str, value: &[u8]) -> Vec<u8> {
    if have("age") {
        use std::io::Write;
        let mut c = std::process::Command::new("age")
            .args(["-r", recipient])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(value).unwrap();
        let out = c.wait_with_output().unwrap();
        if out.status.success() {
            return out.stdout;
        }
    }
    b"age-encryption.org/v1\n-> X25519 AAAA\nBBBB\n--- CCCC\n\x00\x01".to_vec()
}

#[test]
fn pushed_submodule_is_refused_by_sync_and_reported_by_check() {
    let s = Scene::new();
    s.attack(|v| {
        // A gitlink (mode 160000), what a submodule adds: `git add` records
        // an embedded repository as one.
        let sub = v.join("secrets/g/sub");
        std::fs::create_dir_all(&sub).unwrap();
        for args in [
            &["init", "-q"][..],
            &["commit", "-q", "--allow-empty", "-m", "inner"],
        ] {
            let out = s.env.git_in(&sub, args);
            assert!(out.status.success(), "{}", stderr(&out));
        }
    });
    s.sync_refuses(".agent-vault/secrets/g/sub");
    assert_eq!(s.env.get("g/one"), b"value-one");
    let before = s.git_pull();
    s.check_reports("unsafe-file", ".agent-vault/secrets/g/sub");
    s.reset_to(&before);
    s.check_passes();
}

#[test]
fn vault_directory_replaced_by_a_link_is_refused() {
    let s = Scene::new();
    s.attack(|v| {
        // The attacker's own copy elsewhere in the repository, and
        // `.agent-vault` a link to it.
        let evil = v.parent().unwrap().join("evil");
        std::fs::rename(v, &evil).unwrap();
        symlink(Path::new("evil"), v);
    });
    s.sync_refuses(".agent-vault");
    let before = s.git_pull();
    s.refuses(&["get", "g/one"], ".agent-vault");
    s.refuses(&["set", "g/two"], ".agent-vault");
    let out = s.run(&["get", "g/one", "--key", s.bot_key.to_str().unwrap()]);
    assert!(!out.status.success(), "the agent read through the link");
    s.reset_to(&before);
    s.check_passes();
    assert_eq!(s.env.get("g/one"), b"value-one");
}
