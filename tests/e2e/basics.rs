use std::os::unix::fs::PermissionsExt;

use crate::harness::*;

#[test]
fn init_creates_vault_repo_key_hook_and_ignores() {
    let env = Env::new();
    let d = env.vault.join(".agent-vault");
    for f in ["config.yaml", "manifest.yaml", "manifest.sig", ".gitignore"] {
        assert!(d.join(f).is_file(), "{f}");
    }
    assert!(env.vault.join(".git").is_dir());
    let key = env.owner_key();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(key.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains("AGE-SECRET-KEY-1")
    );
    assert!(env.vault.join(".git/hooks/pre-commit").is_file());
    assert!(
        std::fs::read_to_string(env.vault.join(".gitignore"))
            .unwrap()
            .contains("owner.key")
    );
    assert_eq!(
        env.git(&["log", "--format=%s"]).trim(),
        "agent-vault: init vault"
    );
    assert_eq!(env.git(&["status", "--porcelain"]), "");
    // A second init refuses.
    assert!(env.fail(&["init", "."]).contains("exists already"));
}

#[test]
fn set_get_is_binary_exact() {
    let env = Env::new();
    let all: Vec<u8> = (0..=255u8).chain([b'\n', b'\r', 0, b'\n']).collect();
    env.set("bin/all-bytes", &all);
    assert_eq!(env.get("bin/all-bytes"), all);
    env.set("bin/empty", b"");
    assert_eq!(env.get("bin/empty"), b"");
    env.set("txt/trailing-newline", b"value\n");
    assert_eq!(env.get("txt/trailing-newline"), b"value\n");
    env.ok(&["set", "txt/arg", "from-argv"]);
    assert_eq!(env.get("txt/arg"), b"from-argv");
    let f = env.tmp.path().join("v.bin");
    std::fs::write(&f, b"\x00file\xff").unwrap();
    env.ok(&["set", "txt/file", "--from-file", f.to_str().unwrap()]);
    assert_eq!(env.get("txt/file"), b"\x00file\xff");
    // Nested names and overwrite.
    env.set("stripe/live/key.v2", b"one");
    env.set("stripe/live/key.v2", b"two");
    assert_eq!(env.get("stripe/live/key.v2"), b"two");
}

#[test]
fn commits_name_the_operation_and_only_vault_files() {
    let env = Env::new();
    // The user's own staged and unstaged work.
    std::fs::write(env.vault.join("notes.txt"), "mine").unwrap();
    env.git(&["add", "notes.txt"]);
    std::fs::write(env.vault.join("scratch.txt"), "unstaged").unwrap();
    env.set("stripe/api-key", b"sk_live_TOPSECRET");
    let log = env.git(&["log", "--format=%s"]);
    assert!(log.starts_with("agent-vault: set stripe/api-key"), "{log}");
    let files = env.git(&["show", "--name-only", "--format=", "HEAD"]);
    assert!(!files.contains("notes.txt"), "{files}");
    assert!(files.contains(&format!(
        ".agent-vault/{}",
        secret_file("stripe", "api-key", ".age")
    )));
    // Still staged, still there.
    let status = env.git(&["status", "--porcelain"]);
    assert!(status.contains("A  notes.txt"), "{status}");
    assert!(status.contains("?? scratch.txt"), "{status}");
    assert!(!status.contains(".agent-vault"), "{status}");
    // No value in any commit message or object outside the ciphertext.
    let all = env.git(&["log", "-p", "--all"]);
    assert!(!all.contains("TOPSECRET"));
}

#[test]
fn list_and_metadata() {
    let env = Env::new();
    env.ok(&[
        "set",
        "a/one",
        "1",
        "--description",
        "first",
        "--expires",
        "2099-01-01",
    ]);
    env.ok(&["set", "b/two/deep", "2"]);
    let v = env.json(&["list"]);
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["path"], "a/one");
    assert_eq!(arr[0]["description"], "first");
    assert!(
        arr[0]["expires"]
            .as_str()
            .unwrap()
            .starts_with("2099-01-01")
    );
    assert_eq!(arr[1]["path"], "b/two/deep");
    let v = env.json(&["list", "--group", "b"]);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let text = String::from_utf8(env.ok(&["list"]).stdout).unwrap();
    assert!(text.contains("a/one") && text.contains("first"));
    assert!(!text.contains('1') || !text.contains("\n1\n"));
    // Description and expiry survive a new value.
    env.ok(&["set", "a/one", "11"]);
    let v = env.json(&["list", "--group", "a"]);
    assert_eq!(v[0]["description"], "first");
}

#[test]
fn rm_and_import() {
    let env = Env::new();
    let dotenv = env.tmp.path().join(".env");
    std::fs::write(
        &dotenv,
        "# comment\nAPI_KEY=abc\nexport DB_URL=\"postgres://u:p@h/db\"\nQUOTED='x y'\n",
    )
    .unwrap();
    let out = env.ok(&["import", "app", dotenv.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 3"));
    assert_eq!(env.get("app/API_KEY"), b"abc");
    assert_eq!(env.get("app/DB_URL"), b"postgres://u:p@h/db");
    assert_eq!(env.get("app/QUOTED"), b"x y");
    assert_eq!(
        env.git(&["log", "--format=%s", "-1"]).trim(),
        "agent-vault: import 3 secrets into app"
    );
    env.ok(&["rm", "app/API_KEY"]);
    assert!(
        env.fail(&["get", "app/API_KEY"])
            .contains("no secret app/API_KEY")
    );
    assert!(env.fail(&["rm", "app/API_KEY"]).contains("no secret"));
    // A bad dotenv line names the line, never a value, and writes nothing.
    std::fs::write(&dotenv, "GOOD=visible-value\nbad line\n").unwrap();
    let before = Env::snapshot(&env.vault.join(".agent-vault"));
    let err = env.fail(&["import", "app", dotenv.to_str().unwrap()]);
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("visible-value"));
    assert_eq!(Env::snapshot(&env.vault.join(".agent-vault")), before);
}

#[test]
fn vault_found_from_subdirectory_or_by_flag() {
    let env = Env::new();
    env.set("g/s", b"v");
    let sub = env.vault.join("deep/er");
    std::fs::create_dir_all(&sub).unwrap();
    let out = env.cmd(&["get", "g/s"]).current_dir(&sub).output().unwrap();
    assert_eq!(out.stdout, b"v");
    let out = env
        .cmd(&["get", "g/s", "--vault", env.vault.to_str().unwrap()])
        .current_dir(env.tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"v");
    let out = env
        .cmd(&["get", "g/s"])
        .current_dir(env.tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no vault found"), "{}", stderr(&out));
    assert!(stderr(&out).contains("agent-vault init"));
}

#[test]
fn get_and_list_need_no_git() {
    let env = Env::new();
    env.set("g/s", b"v");
    // With the repository gone, reads still work: they open no git machinery.
    std::fs::rename(env.vault.join(".git"), env.tmp.path().join("git-away")).unwrap();
    assert_eq!(env.get("g/s"), b"v");
    env.ok(&["list"]);
}

#[test]
fn completions_and_man_pages() {
    let env = Env::empty();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = env.ok(&["completions", shell]);
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.contains("grant") && s.contains("revoke"), "{shell}");
    }
    let dir = env.tmp.path().join("man");
    env.ok(&["man", dir.to_str().unwrap()]);
    let page = std::fs::read_to_string(dir.join("agent-vault-grant.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("mode"));
    assert!(dir.join("agent-vault.1").is_file());
    // Every command has real help.
    let out = env.ok(&["set", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--from-file"));
}

#[test]
fn demo_runs_end_to_end() {
    let env = Env::empty();
    let out = env.ok(&["demo"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo complete"));
    // The main job: the agent may only use the key; the upstream gets it,
    // the agent's copy of the upstream's echo is scrubbed, nothing prints it.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("as demo-bot: refused"), "{text}");
    assert!(
        text.contains("the upstream received: Authorization: Bearer <18 bytes>, the real value"),
        "{text}"
    );
    assert!(
        text.contains(r#""Bearer [REDACTED:payments/api-key]""#),
        "{text}"
    );
    let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    assert!(
        !String::from_utf8_lossy(&all).contains("sk_demo_"),
        "{text}"
    );
}

#[test]
fn check_reports_expiry_orphans_mismatches_and_permissions() {
    let env = Env::new();
    env.ok(&["set", "g/fresh", "1", "--expires", "2099-01-01"]);
    env.ok(&["set", "g/soon", "2", "--expires", "10d"]);
    env.ok(&["set", "g/old", "3", "--expires", "2001-01-01T00:00:00Z"]);
    env.add_agent("bot");
    let d = env.vault.join(".agent-vault");
    std::fs::create_dir_all(d.join("secrets/g/deep/er")).unwrap();
    std::fs::write(d.join("secrets/g/deep/er/stray.txt"), "x").unwrap();
    std::fs::write(d.join("secrets/g/deep/er/lonely.meta.yaml"), "x").unwrap();
    std::fs::create_dir_all(d.join("secrets/nogroup")).unwrap();
    std::fs::write(d.join("agents/bot/public.key"), "age1qqqq\n").unwrap();
    let key = env.owner_key();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = env.run(&["check", "--json"], b"");
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = v["findings"].as_array().unwrap();
    let has = |kind: &str, subject: &str| {
        findings
            .iter()
            .any(|f| f["kind"] == kind && f["subject"].as_str().unwrap().contains(subject))
    };
    assert!(has("expired", "g/old"), "{findings:#?}");
    assert!(has("expiring", "g/soon"));
    assert!(!has("expiring", "g/fresh") && !has("expired", "g/fresh"));
    assert!(has("orphan", "deep/er/stray.txt"));
    assert!(has("orphan", "lonely.meta.yaml"));
    assert!(has("orphan", "secrets/nogroup"));
    assert!(has("mismatch", "agents/bot/public.key"));
    assert!(has("loose-permissions", "owner.key"));
    assert_eq!(v["secrets"], 3);
    // The text form says the same, one line each, and exits non-zero.
    let out = env.run(&["check"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("error: [expired] g/old"), "{text}");
    assert!(!out.status.success());
}
