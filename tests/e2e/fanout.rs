//! Format 2's fan-out of secrets into buckets (`secrets/<g>/_<xx>/`): a
//! `set` rewrites a few small git trees, files outside their bucket are
//! never read, and the move of a version 1 layout survives kill -9.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::faults::{kill_at, owner_can_decrypt_everything};
use crate::harness::*;

/// A vault with `n` secrets `g/k<i>` imported in one command.
fn vault_of(n: usize) -> (Env, BTreeMap<String, Vec<u8>>) {
    let env = Env::new();
    let file = env.tmp.path().join("in.env");
    let values: BTreeMap<String, Vec<u8>> = (0..n)
        .map(|i| (format!("g/k{i}"), format!("value-{i}").into_bytes()))
        .collect();
    let body: String = (0..n).map(|i| format!("k{i}=value-{i}\n")).collect();
    std::fs::write(&file, body).unwrap();
    env.ok(&["import", "g", file.to_str().unwrap()]);
    (env, values)
}

/// `git ls-tree` of one tree of HEAD: (mode, type, name) per entry.
fn ls_tree(env: &Env, path: &str) -> Vec<(String, String, String)> {
    env.git(&["ls-tree", &format!("HEAD:{path}")])
        .lines()
        .map(|l| {
            let (meta, name) = l.split_once('\t').unwrap();
            let mut m = meta.split(' ');
            let mode = m.next().unwrap().to_owned();
            let kind = m.next().unwrap().to_owned();
            (mode, kind, name.to_owned())
        })
        .collect()
}

#[test]
fn a_set_rewrites_a_few_small_trees_and_leaves_git_status_clean() {
    let (env, _) = vault_of(600);
    // The user's own staged work, which no command of ours may commit.
    std::fs::write(env.vault.join("notes.txt"), "mine").unwrap();
    env.git(&["add", "notes.txt"]);
    env.set("g/new", b"v");
    // The group's tree holds only buckets, each holding only its names.
    let buckets = ls_tree(&env, ".agent-vault/secrets/g");
    assert!(buckets.len() <= 256 && buckets.len() > 100, "{buckets:?}");
    for (_, kind, b) in &buckets {
        assert_eq!(kind, "tree", "{b}");
        for (_, _, f) in ls_tree(&env, &format!(".agent-vault/secrets/g/{b}")) {
            let name = f
                .strip_suffix(".meta.yaml")
                .or_else(|| f.strip_suffix(".age"))
                .unwrap();
            assert_eq!(secret_file("g", name, ""), format!("secrets/g/{b}/{name}"));
        }
    }
    // The commit changed the secret's two files and the trees above them:
    // root, .agent-vault, secrets, g, one bucket.
    let changed = env.git(&["diff-tree", "-r", "-t", "--name-only", "HEAD~1", "HEAD"]);
    let lines: Vec<&str> = changed.lines().collect();
    let file = |s| format!(".agent-vault/{}", secret_file("g", "new", s));
    assert!(lines.contains(&file(".age").as_str()), "{changed}");
    assert!(lines.contains(&file(".meta.yaml").as_str()), "{changed}");
    assert_eq!(lines.len(), 2 + 4, "{changed}");
    assert_eq!(
        env.git(&["status", "--porcelain"]),
        "A  notes.txt\n",
        "the user's staged file stays staged, ours are clean"
    );
    assert!(
        !env.git(&["show", "--stat", "--format=", "HEAD"])
            .contains("notes.txt")
    );
    assert_eq!(env.get("g/new"), b"v");
    assert_eq!(env.get("g/k599"), b"value-599");
}

/// The files HEAD holds under group `g`, each of them in a bucket.
fn committed_in_buckets(env: &Env) -> String {
    let head = env.git(&[
        "ls-tree",
        "-r",
        "--name-only",
        "HEAD",
        ".agent-vault/secrets/g",
    ]);
    assert!(
        head.lines()
            .all(|l| l.starts_with(".agent-vault/secrets/g/_")),
        "a file left out of its bucket: {head}"
    );
    head
}

#[test]
fn files_outside_their_bucket_are_never_read_as_secrets() {
    let env = Env::new();
    env.set("g/one", b"old-one");
    env.set("g/two", b"two");
    let d = env.vault.join(".agent-vault");
    let old =
        [".age", ".meta.yaml"].map(|s| std::fs::read(d.join(secret_file("g", "one", s))).unwrap());
    env.set("g/one", b"new-one");
    let bucket = secret_file("g", "one", "");
    let bucket = Path::new(&bucket)
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let wrong = if bucket == "_00" { "_01" } else { "_00" };
    // An owner-signed older value of g/one planted where readers of another
    // bucket, of the version 1 layout, or of a name that is no bucket would
    // look; and a stranger in g/one's own bucket.
    for dir in [
        format!("secrets/g/{wrong}"),
        "secrets/g".into(),
        "secrets/g/_zz".into(),
        "secrets/g/x".into(),
    ] {
        std::fs::create_dir_all(d.join(&dir)).unwrap();
        std::fs::write(d.join(&dir).join("one.age"), &old[0]).unwrap();
        std::fs::write(d.join(&dir).join("one.meta.yaml"), &old[1]).unwrap();
    }
    std::fs::write(
        d.join("secrets/g").join(&bucket).join("stranger.age"),
        &old[0],
    )
    .unwrap();
    std::fs::write(
        d.join("secrets/g").join(&bucket).join("stranger.meta.yaml"),
        &old[1],
    )
    .unwrap();
    assert_eq!(env.get("g/one"), b"new-one");
    env.fail(&["get", "g/stranger"]);
    env.fail(&["get", "g/x/one"]);
    let listed: Vec<String> = env
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["g/one", "g/two"]);
    let report = String::from_utf8_lossy(&env.run(&["check"], b"").stdout).into_owned();
    for planted in [
        format!("secrets/g/{wrong}/one.age"),
        "secrets/g/one.age".into(),
        "secrets/g/_zz/one.meta.yaml".into(),
        format!("secrets/g/{bucket}/stranger.age"),
    ] {
        assert!(
            report.contains(&planted),
            "{planted} not reported:\n{report}"
        );
    }
    assert!(
        report.contains("not where this vault's layout puts"),
        "{report}"
    );
    // An owner write neither moves nor signs them, and a linked bucket is
    // refused, never followed.
    env.set("g/three", b"3");
    assert_eq!(env.get("g/one"), b"new-one");
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::remove_dir_all(d.join("secrets/g").join(&bucket)).unwrap();
    std::os::unix::fs::symlink(&outside, d.join("secrets/g").join(&bucket)).unwrap();
    let err = env.fail(&["get", "g/one"]);
    assert!(err.contains(&bucket), "{err}");
}

/// Turns a format 2 vault back into the version 1 layout (files out of
/// their buckets, `config.yaml` at format 1, committed), so that the move
/// into buckets runs on as many secrets as the test wants. Its manifest
/// stays at format 2 (signed; only the layout is under test).
fn to_version_1_layout(env: &Env) {
    let g = env.vault.join(".agent-vault/secrets/g");
    for e in std::fs::read_dir(&g).unwrap().flatten() {
        for f in std::fs::read_dir(e.path()).unwrap().flatten() {
            std::fs::rename(f.path(), g.join(f.file_name())).unwrap();
        }
        std::fs::remove_dir(e.path()).unwrap();
    }
    let cfg = env.vault.join(".agent-vault/config.yaml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("format: 2", "format: 1");
    std::fs::write(&cfg, text).unwrap();
    env.git(&["add", "-A", ".agent-vault"]);
    env.git(&[
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-qm",
        "version 1 layout",
    ]);
}

fn config_format(env: &Env) -> String {
    std::fs::read_to_string(env.vault.join(".agent-vault/config.yaml"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("format:"))
        .unwrap()
        .to_owned()
}

/// Runs the migrating `set` once, watching the files: when the first
/// bucket appeared, when the last old name went, and when it exited.
fn watch_move(env: &Env) -> (Duration, Duration, Duration) {
    let d = env.vault.join(".agent-vault");
    let bucket = d.join(secret_file("g", "k7", ".age"));
    let bucket = bucket.parent().unwrap();
    let old = [d.join("secrets/g/k7.age"), d.join("secrets/g/k499.age")];
    let t = Instant::now();
    let mut child = env
        .cmd(&["set", "g/new", "x"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut first, mut last) = (None, None);
    while child.try_wait().unwrap().is_none() {
        if first.is_none() && bucket.exists() {
            first = Some(t.elapsed());
        }
        if last.is_none() && first.is_some() && old.iter().all(|f| !f.exists()) {
            last = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let whole = t.elapsed();
    (first.unwrap_or_default(), last.unwrap_or(whole), whole)
}

#[test]
fn kill_9_during_the_move_into_buckets() {
    const N: usize = 500;
    let (base, values) = vault_of(N);
    to_version_1_layout(&base);
    let mut expect: BTreeMap<String, Vec<Vec<u8>>> = values
        .iter()
        .map(|(k, v)| (k.clone(), vec![v.clone()]))
        .collect();
    expect.insert("g/new".into(), vec![Vec::new(), b"x".to_vec()]);
    let fresh = || {
        let env = Env::empty();
        for (from, to) in [(&base.vault, &env.vault), (&base.home, &env.home)] {
            std::fs::create_dir_all(to).unwrap();
            copy_dir(from, to);
        }
        env
    };
    // When the move runs in this process's life, here and now: from the
    // first bucket to the last old name gone.
    let probe = fresh();
    let (first_bucket, moved, whole) = watch_move(&probe);
    assert_eq!(config_format(&probe), "format: 2");
    let (mut mid_move, trials) = (0, 20u32);
    // The window as the kills find it: `lo` a kill that came before the
    // move, `hi` one that came after. Timing drifts on a loaded machine, so
    // a kill that misses narrows the window for the next (the probe's
    // window, widened, to start with), and kills go on past `trials`
    // until one lands inside (at most three times as many).
    // The window stays at least as long as the probe's move.
    let span = moved.saturating_sub(first_bucket);
    let (mut lo, mut hi) = (first_bucket.mul_f64(0.7), moved.mul_f64(1.3));
    let mut i = 0u32;
    while i < trials || (mid_move == 0 && i < 3 * trials) {
        let env = fresh();
        // Most inside the window, spread over it; every fourth over the
        // whole run.
        let spread = i % 4 == 3;
        let d = if spread {
            whole.mul_f64((f64::from(i % trials) + 0.5) / f64::from(trials))
        } else {
            lo + (hi - lo).mul_f64((f64::from((i - i / 4) % 15) + 0.5) / 15.0)
        };
        i += 1;
        kill_at(&env, &["set", "g/new", "x"], d);
        let flat = env.vault.join(".agent-vault/secrets/g/k7.age").exists()
            || env.vault.join(".agent-vault/secrets/g/k499.age").exists();
        let fanned = env
            .vault
            .join(".agent-vault")
            .join(secret_file("g", "k7", ".age"))
            .exists()
            || env
                .vault
                .join(".agent-vault")
                .join(secret_file("g", "k499", ".age"))
                .exists();
        match (flat, fanned) {
            (true, true) => mid_move += 1,
            // Before the move: the window starts later.
            (true, false) if !spread && d > lo => {
                lo = d;
                hi = hi.max(lo + span);
            }
            // After it: the window ends sooner.
            (false, true) if !spread && d < hi => {
                hi = d;
                lo = lo.min(hi.saturating_sub(span));
            }
            _ => {}
        }
        owner_can_decrypt_everything(&env, &expect);
        env.ok(&["repair"]);
        assert_eq!(config_format(&env), "format: 2");
        let out = env.run(&["check"], b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(env.git(&["status", "--porcelain"]), "");
        let head = committed_in_buckets(&env);
        assert!(head.lines().filter(|l| l.ends_with(".age")).count() >= N);
        assert!(env.json(&["list"]).as_array().unwrap().len() >= N);
        for k in ["g/k0", "g/k7", "g/k499"] {
            assert_eq!(env.get(k), values[k]);
        }
    }
    eprintln!(
        "killed inside the move: {mid_move} of {i} (move {first_bucket:?}..{moved:?} of {whole:?}; window found {lo:?}..{hi:?})"
    );
    assert!(
        mid_move > 0,
        "no kill landed inside the move ({first_bucket:?}..{moved:?})"
    );
}

#[test]
fn a_sync_moves_a_version_1_place_the_other_side_committed_into_its_bucket() {
    use agent_vault_core::crypto::{self, Identity};
    use agent_vault_core::model::{MetaFields, SecretMeta};
    // The shared history is at the version 1 layout.
    let env = Env::new();
    env.set("g/b", b"ours");
    to_version_1_layout(&env);
    // Pushed with git itself: any owner command would migrate first.
    let url = crate::sync::file_url(&env);
    let bare = env.tmp.path().join("srv/vault.git");
    std::fs::create_dir_all(&bare).unwrap();
    env.git_in(&bare, &["init", "--bare", "-q"]);
    env.git(&["remote", "add", "origin", &url]);
    env.git(&["push", "-q", "-u", "origin", "HEAD"]);
    let old = env.tmp.path().join("old");
    env.git_in(
        env.tmp.path(),
        &["clone", "-q", &url, old.to_str().unwrap()],
    );
    // Ours moves to buckets with its next write.
    env.set("g/d", b"ours-d");
    assert_eq!(config_format(&env), "format: 2");
    env.set("g/b", b"ours-2");
    // The other side (a build from before the move) adds g/c and changes
    // g/b at their version 1 places: owner-signed, encrypted to the group.
    let owner = Identity::read_file(&env.owner_key()).unwrap();
    let recipient: crypto::Recipient = group_recipient(&env, "g").parse().unwrap();
    for (name, value) in [("c", &b"theirs-flat"[..]), ("b", b"theirs-b")] {
        let ct = crypto::encrypt(&[&recipient], value).unwrap();
        let t = "2026-01-01T00:00:00Z".parse().unwrap();
        let fields = MetaFields {
            created: t,
            updated: t,
            expires: None,
            description: None,
        };
        let path = format!("g/{name}").parse().unwrap();
        let meta = SecretMeta::sign(fields, &owner.signing_key(), &env.vault_id(), &path, &ct, 1);
        let d = old.join(".agent-vault/secrets/g");
        std::fs::write(d.join(format!("{name}.age")), ct).unwrap();
        std::fs::write(
            d.join(format!("{name}.meta.yaml")),
            agent_vault_core::model::to_yaml(&meta),
        )
        .unwrap();
    }
    for args in [
        &["add", "-A"][..],
        &["commit", "-qm", "old build"],
        &["push", "-q"],
    ] {
        let out = env.git_in(&old, args);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    env.ok(&["sync"]);
    assert!(
        env.git(&["log", "-1", "--format=%p"]).trim().contains(' '),
        "not a merge"
    );
    assert_eq!(env.get("g/c"), b"theirs-flat");
    assert_eq!(
        env.get("g/b"),
        b"ours-2",
        "ours stands where both sides changed it"
    );
    let head = committed_in_buckets(&env);
    assert!(head.contains(&secret_file("g", "c", ".age")), "{head}");
    assert_eq!(env.git(&["status", "--porcelain"]), "");
    let out = env.run(&["check"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Theirs of g/b is kept for `resolve`, read from its version 1 place.
    env.ok(&["resolve", "g/b", "--theirs"]);
    assert_eq!(env.get("g/b"), b"theirs-b");
}

/// The secrets `revoke --json` says `bot` could read in group `g`: current
/// ones, and those removed since but in history.
fn revoked(env: &Env) -> (Vec<String>, Vec<String>) {
    let out = env.json(&["revoke", "bot", "g"]);
    let e = &out["exposure"][0];
    let names = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = e[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    (names("secrets"), names("in_history"))
}

/// A revoke lists a group's secrets from the listing it kept of settled
/// directories: a value set since (in a new bucket, and nested), one
/// removed, and a file planted in the wrong bucket are all seen as they are
/// now, not as the listing remembered them.
#[test]
fn revoke_lists_what_is_there_now_through_its_remembered_listing() {
    let env = Env::new();
    for i in 0..30 {
        env.set(&format!("g/s{i}"), b"v");
    }
    env.set("g/db/password", b"v");
    env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    // Directories changed in the last 2 s are read again (racy): wait so
    // that this listing is remembered.
    std::thread::sleep(Duration::from_millis(2300));
    let (first, _) = revoked(&env);
    assert_eq!(first.len(), 31, "{first:?}");
    let cache = env.vault.join(".agent-vault/.local/listing/g.v2.json");
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert!(kept["dirs"].as_object().unwrap().len() > 10, "{kept}");
    env.ok(&["grant", "bot", "g"]);
    env.set("g/new", b"v");
    env.set("g/db/deep/key", b"v");
    env.ok(&["rm", "g/s3"]);
    // A copy of a value in a bucket that is not its name's: no secret.
    let s4 = std::fs::read_dir(env.vault.join(".agent-vault/secrets/g"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.join("s4.age").exists())
        .unwrap();
    let other = s4.with_file_name(if s4.ends_with("_00") { "_01" } else { "_00" });
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(s4.join("s4.age"), other.join("planted.age")).unwrap();
    let (now, history) = revoked(&env);
    let mut want: Vec<String> = first.iter().filter(|s| *s != "g/s3").cloned().collect();
    want.extend(["g/new".to_owned(), "g/db/deep/key".to_owned()]);
    want.sort();
    assert_eq!(now, want);
    assert_eq!(history, ["g/s3"]);
}
