//! The pre-commit hook that `init` installs, driven by real `git commit`.

use crate::harness::*;

const AGE_KEY: &str = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";

fn commit(env: &Env, file: &str, content: &str) -> std::process::Output {
    std::fs::write(env.vault.join(file), content).unwrap();
    env.git(&["add", file]);
    env.git_out(&["commit", "-m", "test"])
}

#[test]
fn hook_blocks_staged_private_keys_by_name() {
    let env = Env::new();
    let real_key = std::fs::read_to_string(env.owner_key()).unwrap();
    let out = commit(&env, "leak.txt", &real_key);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refusing to commit leak.txt") && err.contains("age private key"),
        "{err}"
    );
    assert!(
        !err.contains("AGE-SECRET-KEY-1"),
        "the hook must not print the key"
    );
    env.git(&["reset", "-q", "leak.txt"]);

    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----\n";
    for (file, content) in [
        ("id_rsa", pem.to_owned()),
        ("id_ed25519", pem.replace("RSA ", "OPENSSH ")),
        ("ec.pem", pem.replace("RSA ", "EC ")),
        ("pkcs8.pem", pem.replace("RSA ", "")),
        ("config.py", format!("KEY = \"{AGE_KEY}\"\n")),
        (
            "pq.txt",
            format!(
                "AGE-SECRET-KEY-PQ-1{}\n",
                "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L".repeat(4)
            ),
        ),
    ] {
        let out = commit(&env, file, &content);
        assert!(!out.status.success(), "{file} was committed");
        assert!(
            stderr(&out).contains(&format!("refusing to commit {file}")),
            "{}",
            stderr(&out)
        );
        env.git(&["reset", "-q", file]);
        std::fs::remove_file(env.vault.join(file)).unwrap();
    }
}

#[test]
fn hook_allows_code_that_only_mentions_key_prefixes() {
    let env = Env::new();
    let code = r#"
// Detects age keys: they start with "AGE-SECRET-KEY-1".
const PEM_HEADER: &str = "-----BEGIN RSA PRIVATE KEY-----";
fn is_key(s: &str) -> bool { s.starts_with("AGE-SECRET-KEY-1") || s.contains("-----BEGIN OPENSSH PRIVATE KEY-----") }
"#;
    let out = commit(&env, "detect.rs", code);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn hook_reads_the_staged_blob_not_the_working_tree() {
    let env = Env::new();
    // Staged: a key. Working tree: harmless. Blocked.
    std::fs::write(env.vault.join("f.txt"), AGE_KEY).unwrap();
    env.git(&["add", "f.txt"]);
    std::fs::write(env.vault.join("f.txt"), "harmless").unwrap();
    assert!(!env.git_out(&["commit", "-m", "x"]).status.success());
    // Staged: harmless. Working tree: a key. Allowed.
    std::fs::write(env.vault.join("f.txt"), "harmless").unwrap();
    env.git(&["add", "f.txt"]);
    std::fs::write(env.vault.join("f.txt"), AGE_KEY).unwrap();
    assert!(env.git_out(&["commit", "-m", "x"]).status.success());
}

#[test]
fn init_adds_to_an_existing_hook_under_core_hooks_path() {
    let env = Env::empty();
    env.git(&["init", "-q"]);
    env.git(&["config", "core.hooksPath", ".githooks"]);
    let hooks = env.vault.join(".githooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let existing = "#!/bin/sh\necho ran >> existing-hook-ran\nexit 0\n";
    std::fs::write(hooks.join("pre-commit"), existing).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        hooks.join("pre-commit"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    env.ok(&["init", ".", "--owner", "alice"]);
    let hook = std::fs::read_to_string(hooks.join("pre-commit")).unwrap();
    assert!(
        hook.contains("echo ran >> existing-hook-ran") && hook.contains("exit 0"),
        "{hook}"
    );
    assert!(hook.contains("agent-vault-pre-commit"));
    assert!(hooks.join("agent-vault-pre-commit").is_file());
    assert!(!env.vault.join(".git/hooks/agent-vault-pre-commit").exists());
    // Both run: ours blocks the key even though the old hook ends in `exit 0`.
    let out = commit(&env, "k.txt", AGE_KEY);
    assert!(!out.status.success());
    env.git(&["reset", "-q", "k.txt"]);
    let out = commit(&env, "ok.txt", "fine");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.vault.join("existing-hook-ran").exists());
    // A second install does not add the line twice.
    let again = agent_vault_core::git::VaultRepo::discover(&env.vault)
        .unwrap()
        .unwrap();
    agent_vault_core::init::install_hook(&again).unwrap();
    let hook2 = std::fs::read_to_string(hooks.join("pre-commit")).unwrap();
    assert_eq!(hook, hook2);
}
