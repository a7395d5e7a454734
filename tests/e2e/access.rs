use crate::harness::*;

#[test]
fn read_use_and_no_grant() {
    let env = Env::new();
    env.set("stripe/key", b"sk_stripe");
    env.set("github/token", b"ghp_x");
    let bot = env.add_agent("bot");
    // Not granted: the message says what an owner can do.
    let err = stderr(&env.get_as(&bot, "stripe/key"));
    assert!(
        err.contains(
            "bot is not granted group stripe: an owner can run `agent-vault grant bot stripe`"
        ),
        "{err}"
    );
    env.ok(&["grant", "bot", "stripe"]);
    assert_eq!(env.get_as(&bot, "stripe/key").stdout, b"sk_stripe");
    env.ok(&["grant", "bot", "github", "--mode", "use"]);
    let err = stderr(&env.get_as(&bot, "github/token"));
    assert!(
        err.contains("bot may use group github but not read it"),
        "{err}"
    );
    assert!(!err.contains("ghp_x"));
    // An agent cannot change the vault.
    let out = env.run(
        &["set", "stripe/key", "--key", bot.to_str().unwrap()],
        b"evil",
    );
    assert!(
        stderr(&out).contains("needs an owner key"),
        "{}",
        stderr(&out)
    );
    let v = env.json(&["list-agents"]);
    assert_eq!(v[0]["name"], "bot");
    assert_eq!(v[0]["grants"]["stripe"], "read");
    assert_eq!(v[0]["grants"]["github"], "use");
}

#[test]
fn agent_key_from_env_raw_is_never_written() {
    let env = Env::new();
    env.set("g/s", b"value");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    let text = std::fs::read_to_string(&bot).unwrap();
    let raw = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .unwrap()
        .to_owned();
    std::fs::remove_file(&bot).unwrap();
    let out = env
        .cmd(&["get", "g/s"])
        .env("AGENT_VAULT_KEY", &raw)
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"value", "{}", stderr(&out));
    // A path works too.
    let keyfile = env.tmp.path().join("bot.key");
    std::fs::write(&keyfile, &text).unwrap();
    let out = env
        .cmd(&["get", "g/s"])
        .env("AGENT_VAULT_KEY", &keyfile)
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"value");
    std::fs::remove_file(&keyfile).unwrap();
    // The raw key reached no file: not the vault, .git, the key store, the temp dir.
    assert_eq!(
        found_in_files(env.tmp.path(), raw.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn no_key_wrong_key_missing_secret() {
    let env = Env::new();
    env.set("g/s", b"v");
    let other_home = env.tmp.path().join("other-home");
    let out = env
        .cmd(&["get", "g/s"])
        .env("AGENT_VAULT_HOME", &other_home)
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("no key to open the vault with"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--key"));
    // A stranger's key.
    let other = Env::new();
    let err = stderr(&env.get_as(&other.owner_key(), "g/s"));
    assert!(
        err.contains("belongs to no owner or agent of this vault"),
        "{err}"
    );
    let garbage = env.tmp.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    assert!(stderr(&env.get_as(&garbage, "g/s")).contains("does not hold an age identity"));
    assert!(env.fail(&["get", "g/nope"]).contains("no secret g/nope"));
    assert!(
        env.fail(&["get", "nogroup/x"])
            .contains("no secret nogroup/x")
    );
}

#[test]
fn bad_names_write_nothing() {
    let env = Env::new();
    env.add_agent("bot");
    let before_vault = Env::snapshot(&env.vault);
    let before_home = Env::snapshot(&env.home);
    for args in [
        vec!["set", "../x", "v"],
        vec!["set", "g/../x", "v"],
        vec!["set", "g/a//b", "v"],
        vec!["set", "g/.hidden", "v"],
        vec!["set", "/abs/x", "v"],
        vec!["set", "G/x", "v"],
        vec!["set", "g/", "v"],
        vec!["get", "g/../../etc/passwd"],
        vec!["add-agent", "Bot"],
        vec!["add-agent", "a/b"],
        vec!["add-agent", ".."],
        vec!["add-agent", "_x"],
        vec!["grant", "bot", "../g"],
        vec!["import", "../g", "/dev/null"],
    ] {
        let err = env.fail(&args);
        assert!(
            err.contains("invalid") && err.contains("name"),
            "{args:?}: {err}"
        );
    }
    let long = "a".repeat(64);
    assert!(
        env.fail(&["add-agent", &long])
            .contains("invalid agent name")
    );
    assert_eq!(Env::snapshot(&env.vault), before_vault);
    assert_eq!(Env::snapshot(&env.home), before_home);
}

#[test]
fn revoke_rotates_and_lists_exposure_including_history() {
    let env = Env::new();
    env.set("stripe/live", b"v1");
    env.set("stripe/old", b"gone-soon");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "stripe"]);
    assert_eq!(env.get_as(&bot, "stripe/live").stdout, b"v1");
    env.ok(&["rm", "stripe/old"]);
    let gen_before = env.json(&["list"])[0]["generation"].as_u64().unwrap();
    let v = env.json(&["revoke", "bot", "stripe"]);
    let e = &v["exposure"][0];
    assert_eq!(e["could_read"], true);
    assert_eq!(e["secrets"], serde_json::json!(["stripe/live"]));
    assert_eq!(e["in_history"], serde_json::json!(["stripe/old"]));
    // Lazy revocation (format 2): the group has a new key generation, and
    // the value stays at the one it was set at (exposed until set again).
    assert_eq!(
        env.json(&["list"])[0]["generation"].as_u64().unwrap(),
        gen_before
    );
    env.set("stripe/live", b"v2");
    assert_eq!(
        env.json(&["list"])[0]["generation"].as_u64().unwrap(),
        gen_before + 1
    );
    // The agent is out, the owner still reads everything.
    assert!(stderr(&env.get_as(&bot, "stripe/live")).contains("not granted"));
    assert_eq!(env.get("stripe/live"), b"v2");
    // Even with a forged grant, the old agent key opens nothing new: the
    // group key was rotated and is not encrypted to it.
    let key_file = env.vault.join(".agent-vault/groups/stripe.key.age");
    let out = std::process::Command::new("age")
        .args([
            "-d",
            "-i",
            bot.to_str().unwrap(),
            key_file.to_str().unwrap(),
        ])
        .output();
    if let Ok(out) = out {
        assert!(!out.status.success());
    }
    // Text output says what to do.
    env.ok(&["grant", "bot", "stripe"]);
    let out = env.ok(&["revoke", "bot", "stripe"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("rotate them upstream") && s.contains("stripe/live"),
        "{s}"
    );
    assert!(
        env.fail(&["revoke", "bot", "stripe"])
            .contains("has no grant")
    );
    // Later revokes read only the history added since (cached), and still
    // know what was removed before.
    env.set("stripe/gone-too", b"x");
    env.ok(&["rm", "stripe/gone-too"]);
    env.ok(&["grant", "bot", "stripe"]);
    let v = env.json(&["revoke", "bot", "stripe"]);
    assert_eq!(
        v["exposure"][0]["in_history"],
        serde_json::json!(["stripe/gone-too", "stripe/old"])
    );
}

#[test]
fn grant_use_then_downgrade_and_rekey() {
    let env = Env::new();
    env.set("g/a", b"A");
    env.set("h/b", b"B");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    // read -> use is a narrowing: the group rotates.
    let v = env.json(&["grant", "bot", "g", "--mode", "use"]);
    assert_eq!(v["previous"], "read");
    assert_eq!(v["exposure"]["secrets"], serde_json::json!(["g/a"]));
    assert!(stderr(&env.get_as(&bot, "g/a")).contains("may use group g"));
    let plan = env.json(&["rekey", "--dry-run"]);
    assert_eq!(plan["groups"], serde_json::json!({"g": 1, "h": 1}));
    env.ok(&["rekey"]);
    assert_eq!(env.get("g/a"), b"A");
    assert_eq!(env.get("h/b"), b"B");
    let gens: Vec<u64> = env
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(gens, vec![3, 2]);
    env.ok(&["check"]);
}

#[test]
fn recover_restore_and_remove_agent() {
    let env = Env::new();
    env.set("g/a", b"A");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    let old_key = std::fs::read(&bot).unwrap();
    // Restore from escrow writes the same key, 0600, never over a file.
    let restored = env.tmp.path().join("restored.key");
    env.ok(&["restore-agent", "bot", "--to", restored.to_str().unwrap()]);
    assert_eq!(std::fs::read(&restored).unwrap(), old_key);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        env.fail(&["restore-agent", "bot", "--to", restored.to_str().unwrap()])
            .contains("exists already")
    );
    // Recover: a new key; the old one opens nothing.
    let old_copy = env.tmp.path().join("old.key");
    std::fs::write(&old_copy, &old_key).unwrap();
    env.ok(&["recover-agent", "bot"]);
    let new_key = std::fs::read(&bot).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(env.get_as(&bot, "g/a").stdout, b"A");
    assert!(!env.get_as(&old_copy, "g/a").status.success());
    // Remove: grants gone, group rotated, files gone.
    let v = env.json(&["remove-agent", "bot"]);
    assert_eq!(v["exposure"][0]["secrets"], serde_json::json!(["g/a"]));
    assert!(!env.vault.join(".agent-vault/agents/bot").exists());
    assert!(env.fail(&["remove-agent", "bot"]).contains("no agent bot"));
    assert_eq!(env.get("g/a"), b"A");
    env.ok(&["check"]);
}

#[test]
fn second_vault_in_same_home_leaves_first_intact() {
    let env = Env::new();
    env.set("g/a", b"first");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    let home_before = Env::snapshot(&env.home);
    let second = env.tmp.path().join("second");
    env.ok(&["init", second.to_str().unwrap(), "--owner", "bob"]);
    let mut c = env.cmd(&["set", "g/a", "second"]);
    assert!(c.current_dir(&second).status().unwrap().success());
    // The first vault's key files are byte-for-byte unchanged.
    let home_after = Env::snapshot(&env.home);
    for (p, b) in &home_before {
        let after = home_after.iter().find(|(q, _)| q == p).map(|(_, b)| b);
        assert_eq!(after, Some(b), "{} changed", p.display());
    }
    assert_eq!(env.get("g/a"), b"first");
    assert_eq!(env.get_as(&bot, "g/a").stdout, b"first");
    let out = env
        .cmd(&["get", "g/a"])
        .current_dir(&second)
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"second");
}
