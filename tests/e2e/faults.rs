use std::collections::BTreeMap;

use std::process::Stdio;
use std::time::Duration;

use agent_vault_core::crypto::{self, Identity};
use agent_vault_core::keyring::Keyring;
use agent_vault_core::secrecy::ExposeSecret;

use crate::harness::*;

#[test]
fn truncated_or_corrupted_files_fail_clearly_and_lose_nothing() {
    let env = Env::new();
    env.set("g/a", b"AAAA");
    env.set("g/b", b"BBBB");
    let a = env
        .vault
        .join(".agent-vault")
        .join(secret_file("g", "a", ".age"));
    let bytes = std::fs::read(&a).unwrap();
    std::fs::write(&a, &bytes[..bytes.len() / 2]).unwrap();
    let err = env.fail(&["get", "g/a"]);
    assert!(err.contains("g/a") || err.contains("a.age"), "{err}");
    env.fail(&["check"]);
    let report = env.run(&["check", "--json"], b"");
    assert!(!report.status.success());
    let v: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["subject"] == "g/a")
    );
    // The other secret is fine; the damaged one comes back from git history.
    assert_eq!(env.get("g/b"), b"BBBB");
    env.git(&[
        "checkout",
        "--",
        &format!(".agent-vault/{}", secret_file("g", "a", ".age")),
    ]);
    assert_eq!(env.get("g/a"), b"AAAA");
    // Corrupted bytes inside the payload.
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    std::fs::write(&a, &bad).unwrap();
    assert!(env.fail(&["get", "g/a"]).contains("g/a"));
    // Malformed metadata.
    std::fs::write(&a, &bytes).unwrap();
    std::fs::write(
        env.vault
            .join(".agent-vault")
            .join(secret_file("g", "a", ".meta.yaml")),
        "{{{{",
    )
    .unwrap();
    assert!(env.fail(&["get", "g/a"]).contains("metadata"));
    // A group key file cut short.
    let gk = env.vault.join(".agent-vault/groups/g.key.age");
    let gkb = std::fs::read(&gk).unwrap();
    std::fs::write(&gk, &gkb[..20]).unwrap();
    assert!(env.fail(&["get", "g/b"]).contains("g.key.age"));
}

#[test]
fn manifest_edited_without_signature_is_refused() {
    let env = Env::new();
    env.set("stripe/key", b"sk");
    env.add_agent("bot");
    let m = env.vault.join(".agent-vault/manifest.yaml");
    let original = std::fs::read_to_string(&m).unwrap();
    // Someone with push access adds their own agent key with a read grant.
    let eve = Identity::generate();
    let tampered = original.replace(
        "agents:\n",
        &format!("agents:\n  eve:\n    recipient: {}\n", eve.recipient()),
    );
    let tampered = if tampered.contains("grants: {}") {
        tampered.replace("grants: {}", "grants:\n  eve:\n    stripe: read")
    } else {
        format!("{tampered}grants:\n  eve:\n    stripe: read\n")
    };
    assert_ne!(tampered, original);
    std::fs::write(&m, &tampered).unwrap();
    let gk_before = std::fs::read(env.vault.join(".agent-vault/groups/stripe.key.age")).unwrap();
    for args in [
        vec!["set", "stripe/key", "new"],
        vec!["grant", "bot", "stripe"],
        vec!["rekey"],
        vec!["get", "stripe/key"],
    ] {
        let err = env.fail(&args);
        assert!(err.contains("manifest is not trusted"), "{args:?}: {err}");
    }
    // Nothing was encrypted to the recipient the unsigned change added.
    assert_eq!(
        std::fs::read(env.vault.join(".agent-vault/groups/stripe.key.age")).unwrap(),
        gk_before
    );
    let out = env.run(&["check"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("manifest-signature"));
    // A re-signature by a stranger is refused too: its key is not a pinned owner's.
    std::fs::write(&m, &original).unwrap();
    assert_eq!(env.get("stripe/key"), b"sk");
}

#[test]
fn secret_replaced_by_non_owner_is_refused() {
    let env = Env::new();
    env.set("stripe/key", b"real");
    // Anyone can encrypt to the group's public recipient.
    let recipient: crypto::Recipient = group_recipient(&env, "stripe").parse().unwrap();
    let forged = crypto::encrypt(&[&recipient], b"attacker-value").unwrap();
    let age = env
        .vault
        .join(".agent-vault")
        .join(secret_file("stripe", "key", ".age"));
    std::fs::write(&age, &forged).unwrap();
    let err = env.fail(&["get", "stripe/key"]);
    assert!(
        err.contains("secret stripe/key is not signed by an owner"),
        "{err}"
    );
    // Fixing up the hash in the metadata does not help: the signature fails.
    let meta_path = env
        .vault
        .join(".agent-vault")
        .join(secret_file("stripe", "key", ".meta.yaml"));
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    let fixed: String = meta
        .lines()
        .map(|l| {
            if l.starts_with("ciphertext_sha256:") {
                format!("ciphertext_sha256: {}", crypto::sha256_hex(&forged))
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&meta_path, fixed).unwrap();
    let err = env.fail(&["get", "stripe/key"]);
    assert!(
        err.contains("stripe/key") && err.contains("bad signature"),
        "{err}"
    );
    let out = env.run(&["check"], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("[unsigned-secret] stripe/key"));
    // And a rotation does not launder it: it is left as it is (not
    // re-encrypted, not signed), the rotation finishes, and `get` still refuses it.
    let out = env.ok(&["rekey"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-encrypted 0 secret(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read(&age).unwrap(), forged);
    assert!(
        env.fail(&["get", "stripe/key"])
            .contains("not signed by an owner")
    );
    assert!(!env.vault.join(".agent-vault/.local/journal.json").exists());
}

#[test]
fn eight_concurrent_sets_all_land() {
    let env = Env::new();
    env.set("g/seed", b"0");
    let children: Vec<_> = (0..8)
        .map(|i| {
            env.cmd(&["set", &format!("g/s{i}"), &format!("value-{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for i in 0..8 {
        assert_eq!(env.get(&format!("g/s{i}")), format!("value-{i}").as_bytes());
    }
    let log = env.git(&["log", "--format=%s"]);
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("agent-vault: set g/s") && !l.ends_with("seed"))
            .count(),
        8
    );
    assert_eq!(env.git(&["status", "--porcelain"]), "");
    env.ok(&["check"]);
}

/// Every secret decrypts for the owner with nothing but the files: the group
/// keyring (or the rotated one waiting beside it) opened with the owner key.
pub fn owner_can_decrypt_everything(env: &Env, expect: &BTreeMap<String, Vec<Vec<u8>>>) {
    let owner = Identity::read_file(&env.owner_key()).unwrap();
    let root = env.vault.join(".agent-vault");
    // Where the config on disk tells readers to look, at this instant.
    let config = std::fs::read_to_string(root.join("config.yaml")).unwrap();
    let flat = config.lines().any(|l| l.trim() == "format: 1");
    for (path, allowed) in expect {
        let (group, name) = path.split_once('/').unwrap();
        let age = if flat {
            root.join("secrets").join(group).join(format!("{name}.age"))
        } else {
            root.join(secret_file(group, name, ".age"))
        };
        let Ok(ct) = std::fs::read(&age) else {
            // Only a secret an interrupted import had not yet written may be absent.
            assert!(allowed.iter().any(Vec::is_empty), "{path} is missing");
            continue;
        };
        let mut rings = Vec::new();
        for f in [format!("{group}.key.age"), format!("{group}.key.age.next")] {
            let p = root.join("groups").join(f);
            if let Ok(b) = std::fs::read(&p) {
                rings.push(Keyring::open(&[&owner], &b, &p).unwrap());
            }
        }
        let ids: Vec<&Identity> = rings.iter().flat_map(Keyring::all).collect();
        let value = crypto::decrypt(&ids, &ct, &age).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            allowed.contains(value.expose_secret()),
            "{path} has an unexpected value"
        );
    }
}

pub fn kill_at(env: &Env, args: &[&str], delay: Duration) -> bool {
    let mut child = env
        .cmd(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    !finished
}

fn crash_env(n: usize) -> (Env, BTreeMap<String, Vec<Vec<u8>>>) {
    let env = Env::new();
    let mut dotenv = String::new();
    let mut expect = BTreeMap::new();
    for i in 0..n {
        dotenv.push_str(&format!("K{i}=value-{i}\n"));
        expect.insert(format!("grp/K{i}"), vec![format!("value-{i}").into_bytes()]);
    }
    let f = env.tmp.path().join("seed.env");
    std::fs::write(&f, dotenv).unwrap();
    env.ok(&["import", "grp", f.to_str().unwrap()]);
    env.add_agent("bot");
    (env, expect)
}

fn after_crash(env: &Env, expect: &BTreeMap<String, Vec<Vec<u8>>>) {
    owner_can_decrypt_everything(env, expect);
    if env.vault.join(".agent-vault/.local/journal.json").exists() {
        let out = env.run(&["check"], b"");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("[half-finished]"));
    }
    // The next command completes whatever was half-done.
    env.ok(&["repair"]);
    let out = env.run(&["check"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let listed: Vec<String> = env
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_owned())
        .collect();
    for (path, allowed) in expect {
        if listed.contains(path) {
            let v = env.get(path);
            assert!(allowed.contains(&v), "{path}");
        } else {
            assert!(allowed.iter().any(Vec::is_empty), "{path} lost");
        }
    }
    assert!(!env.vault.join(".agent-vault/.local/journal.json").exists());
}

const DELAYS_MS: [u64; 8] = [1, 4, 10, 20, 35, 60, 100, 160];

#[test]
fn kill_9_during_grant_revoke_rekey() {
    let (env, expect) = crash_env(400);
    let mut interrupted = 0;
    for (i, ms) in DELAYS_MS.iter().enumerate() {
        let d = Duration::from_millis(*ms);
        // Alternate: grant then revoke, so each has something to do.
        let granted = env.json(&["list-agents"])[0]["grants"]["grp"] == "read";
        let args: Vec<&str> = match (i % 3, granted) {
            (0, _) => vec!["rekey"],
            (_, false) => vec!["grant", "bot", "grp"],
            (_, true) => vec!["revoke", "bot", "grp"],
        };
        if kill_at(&env, &args, d) {
            interrupted += 1;
        }
        after_crash(&env, &expect);
    }
    assert!(
        interrupted > 0,
        "no command was interrupted: the vault is too small to test crashes"
    );
}

#[test]
fn kill_9_during_import() {
    let (env, mut expect) = crash_env(50);
    let mut dotenv = String::new();
    for i in 0..1500 {
        dotenv.push_str(&format!("K{i}=second-{i}\n"));
        let e = expect
            .entry(format!("grp/K{i}"))
            .or_insert_with(|| vec![Vec::new()]);
        e.push(format!("second-{i}").into_bytes());
    }
    let f = env.tmp.path().join("second.env");
    std::fs::write(&f, dotenv).unwrap();
    let mut interrupted = 0;
    for ms in DELAYS_MS {
        if kill_at(
            &env,
            &["import", "grp", f.to_str().unwrap()],
            Duration::from_millis(ms),
        ) {
            interrupted += 1;
        }
        after_crash(&env, &expect);
    }
    assert!(interrupted > 0);
}

#[test]
fn manifest_resigned_by_a_stranger_is_refused() {
    use agent_vault_core::model::{Manifest, ManifestSig, OwnerEntry};
    let env = Env::new();
    env.set("stripe/key", b"sk");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "stripe"]);
    // The agent's machine opens the vault once: it pins the owner's key.
    assert_eq!(env.get_as(&bot, "stripe/key").stdout, b"sk");
    // Someone with push access makes themselves an owner and signs with their own key.
    let m_path = env.vault.join(".agent-vault/manifest.yaml");
    let mut m: Manifest = serde_yaml_from(&std::fs::read(&m_path).unwrap());
    let mallory = Identity::generate();
    let name: agent_vault_core::OwnerName = "mallory".parse().unwrap();
    m.owners.insert(
        name.clone(),
        OwnerEntry {
            recipient: mallory.recipient().to_string(),
            signing_key: mallory.signing_key().public(),
        },
    );
    let bytes = agent_vault_core::model::to_yaml(&m);
    let sig = ManifestSig::sign(&name, &mallory.signing_key(), &env.vault_id(), &bytes, b"");
    std::fs::write(&m_path, &bytes).unwrap();
    std::fs::write(
        env.vault.join(".agent-vault/manifest.sig"),
        agent_vault_core::model::to_yaml(&sig),
    )
    .unwrap();
    let err = stderr(&env.get_as(&bot, "stripe/key"));
    assert!(err.contains("never trusted"), "{err}");
    let err = env.fail(&["set", "stripe/key", "x"]);
    assert!(err.contains("never trusted"), "{err}");
}

fn serde_yaml_from<T: serde::de::DeserializeOwned>(b: &[u8]) -> T {
    agent_vault_core::model::parse_yaml(std::path::Path::new("manifest.yaml"), b).unwrap()
}

#[test]
fn repair_removes_unfinished_writes_but_keeps_spares() {
    let env = Env::new();
    env.set("g/a", b"A");
    let d = env.vault.join(".agent-vault");
    std::fs::write(d.join("secrets/g/.tmp-0123-a.age"), b"partial").unwrap();
    std::fs::create_dir_all(d.join(".local/spare")).unwrap();
    std::fs::write(d.join(".local/spare/.tmp-spare"), b"old").unwrap();
    let out = env.run(&["check"], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("unfinished write"));
    let v = env.json(&["repair"]);
    assert_eq!(v["temp_files_removed"], 1);
    assert!(!d.join("secrets/g/.tmp-0123-a.age").exists());
    assert!(d.join(".local/spare/.tmp-spare").exists());
    let out = env.run(&["check"], b"");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 error(s), 0 warning(s)"));
    assert_eq!(env.get("g/a"), b"A");
}

#[test]
fn a_commit_killed_mid_write_leaves_no_lock_behind() {
    let env = Env::new();
    env.set("g/a", b"A");
    env.set("g/b", b"B");
    let journal = env.vault.join(".agent-vault/.local/journal.json");
    let lock = env.vault.join(".git/index.lock");
    // A lock that was there before the operation began is someone else's:
    // the operation cannot commit, and its (signed) journal stays.
    std::fs::write(&lock, b"").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let err = env.fail(&["rm", "g/a"]);
    assert!(err.contains("lock"), "{err}");
    assert!(journal.exists());
    let err = env.fail(&["repair"]);
    assert!(err.contains("lock"), "{err}");
    std::fs::remove_file(&lock).unwrap();
    // A process of ours killed inside git's commit leaves index.lock behind,
    // newer than its journal: the next command clears it and completes.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&lock, b"").unwrap();
    let v = env.json(&["repair"]);
    assert_eq!(v["completed"], "rm g/a");
    assert!(!lock.exists());
    assert!(env.fail(&["get", "g/a"]).contains("no secret g/a"));
    assert_eq!(env.get("g/b"), b"B");
    assert_eq!(env.git(&["status", "--porcelain"]), "");
}

#[test]
fn a_long_lived_reader_still_refuses_a_file_changed_under_it() {
    use agent_vault_core::{KeySource, KeyStore, Reader, Vault};
    let env = Env::new();
    env.set("g/a", b"real");
    let vault = Vault::open(&env.vault, KeyStore::at(&env.home)).unwrap();
    let reader = Reader::open(&vault, &KeySource::File(env.owner_key())).unwrap();
    let p = "g/a".parse().unwrap();
    assert_eq!(reader.get(&p).unwrap().expose_secret().as_slice(), b"real");
    assert_eq!(reader.get(&p).unwrap().expose_secret().as_slice(), b"real");
    // Someone re-encrypts the file to the group's public recipient.
    let recipient: crypto::Recipient = group_recipient(&env, "g").parse().unwrap();
    let age = env
        .vault
        .join(".agent-vault")
        .join(secret_file("g", "a", ".age"));
    let original = std::fs::read(&age).unwrap();
    std::fs::write(&age, crypto::encrypt(&[&recipient], b"forged").unwrap()).unwrap();
    assert!(reader.get(&p).is_err());
    std::fs::write(&age, original).unwrap();
    assert_eq!(reader.get(&p).unwrap().expose_secret().as_slice(), b"real");
    // A new value set meanwhile is read, checked, and cached in its turn.
    env.set("g/a", b"newer");
    assert_eq!(reader.get(&p).unwrap().expose_secret().as_slice(), b"newer");
}
