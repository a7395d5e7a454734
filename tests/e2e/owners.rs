//! Several owners, and what git history says: log and exposure.

use crate::harness::*;

fn keygen(env: &Env, name: &str) -> (std::path::PathBuf, String, String) {
    let out = env.tmp.path().join(format!("{name}.key"));
    let v = env.json(&["keygen", "--out", out.to_str().unwrap()]);
    (
        out,
        v["recipient"].as_str().unwrap().to_owned(),
        v["signing_key"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn second_owner_reads_and_writes_then_is_removed() {
    let env = Env::new();
    env.set("g/a", b"from-alice");
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    let (bob, recipient, signing) = keygen(&env, "bob");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bob).unwrap().permissions().mode() & 0o777,
        0o600
    );
    env.ok(&["add-owner", "bob", &recipient, "--signing-key", &signing]);
    assert_eq!(env.json(&["list-owners"]).as_array().unwrap().len(), 2);
    // Bob opens everything and writes with his own key.
    assert_eq!(env.get_as(&bob, "g/a").stdout, b"from-alice");
    let b = bob.to_str().unwrap();
    let out = env.run(&["set", "g/b", "--key", b], b"from-bob");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.get("g/b"), b"from-bob");
    assert_eq!(env.get_as(&bot, "g/b").stdout, b"from-bob");
    // Bob can recover the agent's key from escrow too.
    let restored = env.tmp.path().join("bot-restored.key");
    env.ok(&[
        "restore-agent",
        "bot",
        "--to",
        restored.to_str().unwrap(),
        "--key",
        b,
    ]);
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&bot).unwrap()
    );
    // Bad input.
    assert!(
        env.fail(&["add-owner", "bob", &recipient, "--signing-key", &signing])
            .contains("exists already")
    );
    assert!(
        env.fail(&["add-owner", "carol", "age1nope", "--signing-key", &signing])
            .contains("not an age")
    );
    let (_, r2, _) = keygen(&env, "carol");
    assert!(
        env.fail(&["add-owner", "carol", &r2, "--signing-key", "AAAA"])
            .contains("not an owner signing key")
    );
    assert!(
        env.fail(&["remove-owner", "alice"])
            .contains("another owner must remove it")
    );

    // Alice removes Bob: his key opens nothing, his signature counts no more,
    // the agent gets a new key, and every value still reads.
    let old_bot = std::fs::read(&bot).unwrap();
    let v = env.json(&["remove-owner", "bob"]);
    assert_eq!(v["new_agent_keys"][0]["agent"], "bot");
    assert!(stderr(&env.get_as(&bob, "g/a")).contains("belongs to no owner or agent"));
    assert!(
        env.fail(&["set", "g/c", "x", "--key", b])
            .contains("belongs to no owner or agent")
    );
    assert_ne!(std::fs::read(&bot).unwrap(), old_bot);
    assert_eq!(env.get_as(&bot, "g/b").stdout, b"from-bob");
    assert_eq!(env.get("g/a"), b"from-alice");
    env.ok(&["check"]);
}

#[test]
fn log_shows_who_changed_what() {
    let env = Env::new();
    env.set("g/a", b"1");
    env.set("g/b", b"2");
    env.set("g/a", b"3");
    env.ok(&["rm", "g/b"]);
    let all = env.json(&["log"]);
    let msgs: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        msgs[..4],
        [
            "agent-vault: rm g/b",
            "agent-vault: set g/a",
            "agent-vault: set g/b",
            "agent-vault: set g/a"
        ]
    );
    assert_eq!(*msgs.last().unwrap(), "agent-vault: init vault");
    let one = env.json(&["log", "g/a"]);
    assert_eq!(one.as_array().unwrap().len(), 2);
    assert_eq!(one[0]["files_changed"], 2);
    assert!(one[0]["author"].as_str().unwrap().contains('<'));
    let text = String::from_utf8(env.ok(&["log", "g/b"]).stdout).unwrap();
    assert!(
        text.contains("rm g/b") && text.contains("set g/b"),
        "{text}"
    );
}

#[test]
fn exposure_lists_every_version_an_agent_could_decrypt() {
    let env = Env::new();
    env.set("g/old", b"removed before the grant");
    env.ok(&["rm", "g/old"]);
    env.set("g/cur", b"current");
    env.set("h/other", b"never granted");
    env.add_agent("bot");
    env.ok(&["grant", "bot", "g"]);
    env.ok(&["grant", "bot", "h", "--mode", "use"]);
    let v = env.json(&["exposure", "bot"]);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["secret"].as_str().unwrap())
        .collect();
    // g/old was encrypted to the generation bot was given: still in history.
    assert_eq!(names, ["g/cur", "g/old"]);
    assert_eq!(v[0]["at_head"], true);
    assert_eq!(v[1]["at_head"], false);
    // After a revoke the group rotates: new values are out of reach, old ones stay listed.
    env.ok(&["revoke", "bot", "g"]);
    env.set("g/new", b"after");
    let v = env.json(&["exposure", "bot"]);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["secret"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["g/cur", "g/old"]);
    // Lazy revocation: g/cur is still at the generation bot held until it
    // is set again.
    assert_eq!(v[0]["at_head"], true);
    env.set("g/cur", b"rotated");
    let v = env.json(&["exposure", "bot"]);
    assert_eq!(v[0]["secret"], "g/cur");
    assert_eq!(v[0]["at_head"], false);
    let text = String::from_utf8(env.ok(&["exposure", "nobody-yet"]).stdout).unwrap();
    assert!(text.contains("could never decrypt"));
}
