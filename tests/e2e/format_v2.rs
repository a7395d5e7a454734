//! Format version 2 (issue 17): group keyrings and lazy revocation, the
//! move of a version 1 vault (the committed fixture `tests/vectors/v1`), and
//! crashes (kill -9) in the middle of both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agent_vault_core::crypto::{self, Identity};
use agent_vault_core::keyring::Keyring;
use agent_vault_core::secrecy::ExposeSecret;
use base64::Engine;

use crate::faults::{kill_at, owner_can_decrypt_everything};
use crate::harness::*;
use crate::sync::{add_bob, file_url, ok, team};

const V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/v1");

/// A small random number generator for kill delays (xorshift; the seed is
/// printed so a failing run can be replayed with `FORMAT_V2_SEED`).
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("FORMAT_V2_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    | 1
            });
        eprintln!("FORMAT_V2_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The version 1 fixture's values.
fn v1_values() -> BTreeMap<String, Vec<u8>> {
    let text = std::fs::read_to_string(Path::new(V1).join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["values"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, b)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.as_str().unwrap())
                .unwrap();
            (k.clone(), bytes)
        })
        .collect()
}

/// A copy of the version 1 fixture in a fresh git repository, with its key
/// store (0600, as git does not keep it).
fn v1_env() -> Env {
    let env = Env::empty();
    copy_dir(&Path::new(V1).join("vault"), &env.vault);
    std::fs::create_dir_all(&env.home).unwrap();
    copy_dir(&Path::new(V1).join("home"), &env.home);
    let out = Command::new("chmod")
        .args(["-R", "go-rwx", &env.home.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    env.git(&["init", "-q"]);
    env.git(&["add", "-A"]);
    env.git(&["-c", "commit.gpgsign=false", "commit", "-qm", "v1 fixture"]);
    env
}

fn agent_key(env: &Env, agent: &str) -> PathBuf {
    env.home
        .join("keys")
        .join(env.vault_id())
        .join("agents")
        .join(format!("{agent}.key"))
}

fn format_of(env: &Env) -> (String, String) {
    let read = |f: &str| {
        std::fs::read_to_string(env.vault.join(".agent-vault").join(f))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("format:"))
            .unwrap()
            .to_owned()
    };
    (read("config.yaml"), read("manifest.yaml"))
}

/// What every reader must see in the fixture, before and after migration.
fn v1_reads_alike(env: &Env) {
    let values = v1_values();
    for (p, v) in &values {
        assert_eq!(&env.get(p), v, "owner {p}");
    }
    let reader = agent_key(env, "reader");
    for (p, v) in values.iter().filter(|(p, _)| p.starts_with("app/")) {
        let out = env.get_as(&reader, p);
        assert!(out.status.success(), "reader {p}: {}", stderr(&out));
        assert_eq!(&out.stdout, v);
    }
    let gone = agent_key(env, "gone");
    assert!(!env.get_as(&gone, "app/api-key").status.success());
    // The revoked agent's key opens neither keyring (it was rotated in v1).
    let gone_id = Identity::read_file(&gone).unwrap();
    let gk = env.vault.join(".agent-vault/groups/app.key.age");
    assert!(Keyring::open(&[&gone_id], &std::fs::read(&gk).unwrap(), &gk).is_err());
}

#[test]
fn a_version_1_vault_is_read_as_it_is_then_moved_by_the_first_owner_write() {
    let env = v1_env();
    assert_eq!(
        format_of(&env),
        ("format: 1".to_owned(), "format: 1".to_owned())
    );
    v1_reads_alike(&env);
    env.ok(&["check"]);
    // Reading changed nothing.
    assert_eq!(format_of(&env).0, "format: 1");
    assert_eq!(env.git(&["status", "--porcelain"]), "");
    // The first owner write migrates, in a commit of its own, then sets.
    env.set("ops/new", b"after-migration");
    assert_eq!(
        format_of(&env),
        ("format: 2".to_owned(), "format: 2".to_owned())
    );
    let log = env.git(&["log", "--format=%s", "-3"]);
    assert!(
        log.contains("agent-vault: migrate the vault to format 2"),
        "{log}"
    );
    assert!(log.starts_with("agent-vault: set ops/new"), "{log}");
    let migrated = env.git(&["show", "--stat", "--format=", "HEAD~1"]);
    assert!(migrated.contains("config.yaml") && migrated.contains("manifest.yaml"));
    assert_eq!(env.git(&["status", "--porcelain"]), "");
    v1_reads_alike(&env);
    assert_eq!(env.get("ops/new"), b"after-migration");
    env.ok(&["check"]);
    // A second write does not migrate again.
    env.set("ops/new", b"again");
    assert_eq!(
        env.git(&["log", "--format=%s", "-1"]).trim(),
        "agent-vault: set ops/new"
    );
    // Lazily revoking a v1-made group keeps every value readable by owner
    // and reader, and the age recipe opens old and new values.
    env.ok(&["revoke", "reader", "app"]);
    env.set("app/new", b"after-lazy-revoke");
    for (p, v) in v1_values() {
        assert_eq!(age_recipe(&env, &p), v, "{p}");
    }
    assert_eq!(age_recipe(&env, "app/new"), b"after-lazy-revoke");
}

/// The documented recovery with nothing but the `age` CLI (the shell's
/// `_*` finds the secret's bucket).
fn age_recipe(env: &Env, path: &str) -> Vec<u8> {
    assert!(have("age"), "the `age` CLI is needed (apt-get install age)");
    let (group, name) = path.split_once('/').unwrap();
    let d = env.vault.join(".agent-vault");
    let script = format!(
        "age -d -i <(age -d -i '{}' '{}/groups/{group}.key.age') '{}/secrets/{group}/'_*/{name}.age",
        env.owner_key().display(),
        d.display(),
        d.display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{script}: {}", stderr(&out));
    out.stdout
}

/// The keyring in a commit, opened with `id` (None if it does not open, or
/// the commit has none).
fn keyring_at(env: &Env, rev: &str, group: &str, id: &Identity) -> Option<Keyring> {
    let out = env.git_out(&[
        "show",
        &format!("{rev}:.agent-vault/groups/{group}.key.age"),
    ]);
    if !out.status.success() {
        return None;
    }
    Keyring::open(&[id], &out.stdout, Path::new("keyring")).ok()
}

fn opens(ring: &Keyring, env: &Env, path: &str) -> bool {
    let (group, name) = path.split_once('/').unwrap();
    let f = env
        .vault
        .join(".agent-vault")
        .join(secret_file(group, name, ".age"));
    crypto::decrypt(&ring.all(), &std::fs::read(&f).unwrap(), &f).is_ok()
}

#[test]
fn revoke_rotates_one_file_and_lists_the_exposed_values() {
    let env = Env::new();
    for i in 0..20 {
        env.set(&format!("g/s{i}"), format!("old-{i}").as_bytes());
    }
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    assert_eq!(env.get_as(&bot, "g/s0").stdout, b"old-0");
    let before = env.git(&["rev-parse", "HEAD"]);
    let out = env.ok(&["revoke", "bot", "g"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("g/s7") && said.contains("set"), "{said}");
    // One keyring file and the signed manifest: no value was rewritten.
    let changed = env.git(&["diff", "--name-only", before.trim(), "HEAD"]);
    let mut files: Vec<&str> = changed.lines().collect();
    files.sort();
    assert_eq!(
        files,
        [
            ".agent-vault/groups/g.key.age",
            ".agent-vault/manifest.sig",
            ".agent-vault/manifest.yaml"
        ]
    );
    // `check` lists every value set before the revocation, as a warning.
    let report = env.json(&["check"]);
    let exposed: Vec<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "exposed")
        .map(|f| f["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(exposed.len(), 20, "{report}");
    // Setting a value again moves it to the newest key: no longer exposed.
    env.set("g/s0", b"rotated-upstream");
    env.set("g/after", b"set-after-revoke");
    let report = env.json(&["check"]);
    let exposed = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "exposed")
        .count();
    assert_eq!(exposed, 19);
    // The revoked agent: refused by the CLI, and with every keyring it ever
    // held, it opens the old values (it had them) and none set since.
    assert!(!env.get_as(&bot, "g/after").status.success());
    let bot_id = Identity::read_file(&bot).unwrap();
    assert!(keyring_at(&env, "HEAD", "g", &bot_id).is_none());
    let held = keyring_at(&env, before.trim(), "g", &bot_id).expect("bot held it");
    assert!(opens(&held, &env, "g/s1"));
    assert!(!opens(&held, &env, "g/after"));
    assert!(!opens(&held, &env, "g/s0"));
    // An agent granted after the revoke reads old and new values.
    let late = env.add_agent("late");
    env.ok(&["grant", "late", "g"]);
    assert_eq!(env.get_as(&late, "g/s5").stdout, b"old-5");
    assert_eq!(env.get_as(&late, "g/after").stdout, b"set-after-revoke");
    assert_eq!(env.get_as(&late, "g/s0").stdout, b"rotated-upstream");
    // The age CLI recovers both generations with the documented recipe.
    assert_eq!(age_recipe(&env, "g/s5"), b"old-5");
    assert_eq!(age_recipe(&env, "g/after"), b"set-after-revoke");
    // Narrowing read to use rotates too; `rekey` stays eager.
    env.ok(&["grant", "late", "g", "--mode", "use"]);
    assert!(!env.get_as(&late, "g/after").status.success());
    env.ok(&["rekey"]);
    let report = env.json(&["check"]);
    assert!(
        !report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "exposed"),
        "{report}"
    );
    assert_eq!(env.get("g/s5"), b"old-5");
}

#[test]
fn kill_9_during_migration() {
    let mut rng = Rng::new();
    let mut expect: BTreeMap<String, Vec<Vec<u8>>> =
        v1_values().into_iter().map(|(k, v)| (k, vec![v])).collect();
    expect.insert("ops/new".into(), vec![Vec::new(), b"x".to_vec()]);
    let mut interrupted = 0;
    for _ in 0..20 {
        let env = v1_env();
        let d = Duration::from_millis(rng.below(60));
        if kill_at(&env, &["set", "ops/new", "x"], d) {
            interrupted += 1;
        }
        owner_can_decrypt_everything(&env, &expect);
        // The next owner command completes (or makes) the migration.
        env.ok(&["repair"]);
        assert_eq!(
            format_of(&env),
            ("format: 2".to_owned(), "format: 2".to_owned())
        );
        assert!(!env.vault.join(".agent-vault/.local/journal.json").exists());
        let out = env.run(&["check"], b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        v1_reads_alike(&env);
    }
    assert!(interrupted > 0, "no migration was interrupted");
}

#[test]
fn kill_9_during_revoke() {
    let mut rng = Rng::new();
    let env = Env::new();
    let mut dotenv = String::new();
    let mut expect = BTreeMap::new();
    for i in 0..300 {
        dotenv.push_str(&format!("K{i}=value-{i}\n"));
        expect.insert(format!("grp/K{i}"), vec![format!("value-{i}").into_bytes()]);
    }
    let f = env.tmp.path().join("seed.env");
    std::fs::write(&f, dotenv).unwrap();
    env.ok(&["import", "grp", f.to_str().unwrap()]);
    let bot = env.add_agent("bot");
    let mut interrupted = 0;
    for round in 0..20 {
        env.ok(&["grant", "bot", "grp"]);
        let d = Duration::from_millis(rng.below(80));
        if kill_at(&env, &["revoke", "bot", "grp"], d) {
            interrupted += 1;
        }
        owner_can_decrypt_everything(&env, &expect);
        env.ok(&["repair"]);
        assert!(!env.vault.join(".agent-vault/.local/journal.json").exists());
        let out = env.run(&["check"], b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Finished or not begun: finish it, then a value set now is out of
        // the revoked agent's reach.
        if env.json(&["list-agents"])[0]["grants"]["grp"] == "read" {
            env.ok(&["revoke", "bot", "grp"]);
        }
        let p = format!("grp/after-{round}");
        env.set(&p, b"new");
        expect.insert(p.clone(), vec![b"new".to_vec()]);
        assert!(!env.get_as(&bot, &p).status.success());
        let bot_id = Identity::read_file(&bot).unwrap();
        assert!(keyring_at(&env, "HEAD", "grp", &bot_id).is_none());
    }
    assert!(interrupted > 0, "no revoke was interrupted");
    for (p, v) in &expect {
        assert_eq!(&env.get(p), &v[0], "{p}");
    }
}

#[test]
fn one_owner_revokes_while_another_sets_and_sync_leaves_nothing_new_to_the_agent() {
    let env = Env::new();
    let url = file_url(&env);
    team(&env, &url, None);
    env.set("g/a", b"before");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    let bob = add_bob(&env, &url);
    // Alice revokes bot; Bob, not yet synced, sets values at the key bot holds.
    env.ok(&["revoke", "bot", "g"]);
    env.set("g/alice-after", b"alice-after");
    ok(env.run(&["sync"], b""), "alice sync");
    ok(
        bob.run(&env, &["set", "g/bob-after", "bob-after"]),
        "bob set",
    );
    ok(bob.run(&env, &["set", "g/a", "bob-changed"]), "bob set");
    ok(bob.run(&env, &["sync"]), "bob sync");
    ok(env.run(&["pull"], b""), "alice pull");
    // Every keyring bot ever held, from any commit of either side.
    let bot_id = Identity::read_file(&bot).unwrap();
    let revs = env.git(&["rev-list", "--all"]);
    let held: Vec<Keyring> = revs
        .lines()
        .filter_map(|r| keyring_at(&env, r, "g", &bot_id))
        .collect();
    assert!(!held.is_empty());
    assert!(held.iter().any(|k| k.len() == 1));
    for p in ["g/alice-after", "g/bob-after", "g/a"] {
        assert!(
            !held.iter().any(|k| opens(k, &env, p)),
            "{p} opens with a key bot held"
        );
    }
    assert_eq!(env.get("g/bob-after"), b"bob-after");
    assert_eq!(env.get("g/alice-after"), b"alice-after");
    assert_eq!(env.get("g/a"), b"bob-changed");
    assert!(!env.get_as(&bot, "g/bob-after").status.success());
    env.ok(&["check"]);
    assert_eq!(age_recipe(&env, "g/bob-after"), b"bob-after");
}

#[test]
fn a_keyring_is_one_age_identity_file() {
    let env = Env::new();
    env.set("g/a", b"1");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    env.ok(&["revoke", "bot", "g"]);
    env.ok(&["grant", "bot", "g"]);
    env.ok(&["revoke", "bot", "g"]);
    let owner = Identity::read_file(&env.owner_key()).unwrap();
    let gk = env.vault.join(".agent-vault/groups/g.key.age");
    let ct = std::fs::read(&gk).unwrap();
    let plain = crypto::decrypt(&[&owner], &ct, &gk).unwrap();
    let text = String::from_utf8(plain.expose_secret().clone()).unwrap();
    assert_eq!(text.matches("AGE-SECRET-KEY-1").count(), 3);
    assert_eq!(text.matches("# public key: age1").count(), 3);
    // Newest first: the manifest's recipient is the first one.
    let first = text
        .lines()
        .find(|l| l.starts_with("# public key: "))
        .unwrap();
    assert_eq!(
        first.trim_start_matches("# public key: "),
        group_recipient(&env, "g")
    );
    let _ = bot;
}

/// Runs the binary under a pseudo-terminal (`script`), returning what the
/// terminal showed.
fn on_a_terminal(env: &Env, args: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", &format!("'{BIN}' {args}"), "/dev/null"])
        .current_dir(&env.vault)
        .env("AGENT_VAULT_HOME", &env.home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", env.tmp.path().join("gitconfig"))
        // A terminal has a type; without one (or with TERM=dumb) indicatif
        // draws nothing, as it should.
        .env("TERM", "xterm")
        .env_remove("AGENT_VAULT_KEY")
        .env_remove("AGENT_VAULT_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn progress_bars_only_on_a_terminal_and_never_with_quiet() {
    assert!(have("script"), "`script` (util-linux) is needed");
    let env = Env::new();
    let dotenv: String = (0..3000).map(|i| format!("K{i}=value-{i}\n")).collect();
    let f = env.tmp.path().join("seed.env");
    std::fs::write(&f, dotenv).unwrap();
    // Not a terminal: nothing on stderr.
    let out = env.ok(&["import", "grp", f.to_str().unwrap()]);
    assert_eq!(stderr(&out), "");
    let out = env.ok(&["rekey"]);
    assert_eq!(stderr(&out), "");
    // A terminal: a bar, and no value in it.
    let shown = on_a_terminal(&env, "rekey");
    assert!(shown.contains("re-encrypting group grp"), "{shown:?}");
    assert!(!shown.contains("value-"), "{shown:?}");
    let shown = on_a_terminal(&env, "--quiet rekey");
    assert!(!shown.contains("re-encrypting"), "{shown:?}");
    let shown = on_a_terminal(&env, "rekey -q");
    assert!(!shown.contains("re-encrypting"), "{shown:?}");
    assert_eq!(env.get("grp/K2999"), b"value-2999");
}
