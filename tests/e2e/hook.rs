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

/// A PKCS#8 EC P-521 key as `openssl genpkey` writes it: 64-column lines and
/// a last line of four characters (the old hook wanted every line ≥ 16).
const P521_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIBnKCHKdtef/Ezxh5Y\n\
k/Hx8mLJK9qGMnaAkX6HY52xctxyvFe/Dv1vW31BLo5xhiSqHqW0duK6GPRQ6sMN\n\
69JDfyqhgYkDgYYABAEcnrsolcuY1qld6BSJLdwmCfRL0jExcIPRvQ0yW280bhiD\n\
56XTSlhKbijhTEmD3Vy7Af7KOnll5YlNAWQJFodl1ADaVwe8rTOJkDWI0wRMFD/d\n\
JMrSBlyG35r+mi/MCDL/xqOFNpZRLX/9Rl2j7sUu+KzDaXElqKuojyNDMgO80KZ9\n\
9w==\n\
-----END PRIVATE KEY-----\n";

#[test]
fn hook_blocks_pem_keys_whatever_their_line_lengths_and_inside_json() {
    let env = Env::new();
    let one_line_body = P521_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    let service_account = format!(
        "{{\"type\": \"service_account\", \"project_id\": \"p\", \"private_key_id\": \"1\", \
         \"private_key\": {}, \"client_email\": \"x@p.iam.example\"}}\n",
        serde_json::to_string(P521_PEM).unwrap()
    );
    for (file, content) in [
        ("p521.pem", P521_PEM.to_owned()),
        ("crlf.pem", P521_PEM.replace('\n', "\r\n")),
        (
            "unwrapped.pem",
            format!(
                "-----BEGIN EC PRIVATE KEY-----\n{one_line_body}\n-----END EC PRIVATE KEY-----\n"
            ),
        ),
        ("sa.json", service_account),
        (
            "escaped.env",
            format!("KEY=\"{}\"\n", P521_PEM.replace('\n', "\\n")),
        ),
    ] {
        let out = commit(&env, file, &content);
        assert!(!out.status.success(), "{file} was committed");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("refusing to commit {file}")) && err.contains("PEM"),
            "{file}: {err}"
        );
        assert!(!err.contains("MIHuAgEA"), "the hook must not print the key");
        env.git(&["reset", "-q", file]);
        std::fs::remove_file(env.vault.join(file)).unwrap();
    }
    // A README that shows the shape of a key without one is not blocked.
    let doc = "Paste it as:\n-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n";
    let out = commit(&env, "README.md", doc);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn hook_blocks_a_symlink_turned_into_a_file_holding_a_key() {
    let env = Env::new();
    std::os::unix::fs::symlink("/etc/hostname", env.vault.join("cred")).unwrap();
    env.git(&["add", "cred"]);
    assert!(env.git_out(&["commit", "-m", "link"]).status.success());
    // The typechange (link -> file) is what git reports for it: `T`, not `M`.
    std::fs::remove_file(env.vault.join("cred")).unwrap();
    let out = commit(&env, "cred", P521_PEM);
    assert!(!out.status.success(), "the typechange was committed");
    assert!(
        stderr(&out).contains("refusing to commit cred"),
        "{}",
        stderr(&out)
    );
}
