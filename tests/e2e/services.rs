//! Broker services in the signed services list.

use crate::harness::*;

#[test]
fn services_are_added_listed_removed_and_signed() {
    let env = Env::new();
    env.set("github/token", b"ghp_x");
    env.set("anthropic/api-key", b"sk-ant");
    env.set("q/k", b"qq");
    env.ok(&[
        "service",
        "add",
        "github",
        "--template",
        "github",
        "--secret",
        "github/token",
    ]);
    env.ok(&[
        "service",
        "add",
        "claude",
        "--header",
        "x-api-key={{anthropic/api-key}}",
        "--host",
        "api.anthropic.com",
    ]);
    env.ok(&[
        "service",
        "add",
        "local",
        "--query",
        "api_key=q/k",
        "--host",
        "127.0.0.1:8443",
        "--path",
        "/v1",
        "--method",
        "post",
        "--substitute",
        "q/k",
        "--placeholder",
        "PLACEHOLDER=q/k",
    ]);
    env.ok(&[
        "service",
        "add",
        "open",
        "--passthrough",
        "--host",
        "*.example.com",
        "--allow-http",
    ]);
    let v = env.json(&["service", "list"]);
    assert_eq!(v["github"]["auth"]["bearer"], "github/token");
    assert_eq!(v["github"]["hosts"][0], "api.github.com");
    assert_eq!(
        v["claude"]["auth"]["header"]["template"],
        "{{anthropic/api-key}}"
    );
    assert_eq!(v["local"]["methods"][0], "POST");
    assert_eq!(v["local"]["placeholders"]["PLACEHOLDER"], "q/k");
    assert_eq!(v["open"]["auth"], "passthrough");
    assert_eq!(v["open"]["allow_http"], true);
    let log = env.git(&["log", "--format=%s", "-1"]);
    assert_eq!(log.trim(), "agent-vault: service add open");
    env.ok(&["service", "rm", "open"]);
    assert!(env.json(&["service", "list"]).get("open").is_none());
    env.ok(&["check"]);

    // Bad input: unknown template, a secret that does not exist, no host, bad header.
    assert!(
        env.fail(&[
            "service",
            "add",
            "x",
            "--template",
            "nope",
            "--secret",
            "github/token"
        ])
        .contains("no template")
    );
    assert!(
        env.fail(&[
            "service",
            "add",
            "x",
            "--bearer",
            "nope/none",
            "--host",
            "a.com"
        ])
        .contains("not a secret of this vault")
    );
    assert!(
        env.fail(&["service", "add", "x", "--bearer", "github/token"])
            .contains("--host")
    );
    assert!(
        env.fail(&[
            "service",
            "add",
            "x",
            "--header",
            "bad header={{github/token}}",
            "--host",
            "a.com"
        ])
        .contains("invalid header")
    );
    assert!(env.fail(&["service", "add", "x"]).contains("required"));
    assert!(
        env.fail(&["service", "rm", "nope"])
            .contains("no service nope")
    );

    // Someone with push access redirects the credential to their host: refused.
    let path = env.vault.join(".agent-vault/services.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("api.github.com", "evil.example.net")).unwrap();
    let err = env.fail(&["service", "list"]);
    assert!(
        err.contains("manifest is not trusted") && err.contains("services.yaml"),
        "{err}"
    );
    assert!(
        env.fail(&["service", "add", "y", "--passthrough", "--host", "b.com"])
            .contains("not trusted")
    );
}

#[test]
fn broker_init_makes_a_key_and_ca_and_opens_used_groups() {
    use agent_vault_core::crypto::{self, Identity};
    let env = Env::new();
    env.set("stripe/key", b"sk");
    env.set("gh/token", b"ghp");
    env.set("other/x", b"x");
    env.add_agent("bot");
    env.ok(&["grant", "bot", "stripe", "--mode", "use"]);
    env.ok(&["grant", "bot", "other"]);
    assert!(env.fail(&["ca", "cert"]).contains("no broker yet"));
    let v = env.json(&["broker", "init"]);
    let broker =
        Identity::read_file(std::path::Path::new(v["broker_key"].as_str().unwrap())).unwrap();
    let pem = String::from_utf8(env.ok(&["ca", "cert"]).stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let d = env.vault.join(".agent-vault");
    let opens = |g: &str| {
        let p = d.join(format!("groups/{g}.key.age"));
        crypto::decrypt_identity(&[&broker], &std::fs::read(&p).unwrap(), &p).is_ok()
    };
    // The broker opens the groups some agent may use, and only those.
    assert!(opens("stripe"));
    assert!(!opens("other") && !opens("gh"));
    env.ok(&["grant", "bot", "gh", "--mode", "use"]);
    assert!(opens("gh"));
    // The CA key opens for the broker and the owner, and nobody else.
    let ca_key = d.join("broker/ca.key.age");
    let ct = std::fs::read(&ca_key).unwrap();
    assert!(crypto::decrypt(&[&broker], &ct, &ca_key).is_ok());
    let owner = Identity::read_file(&env.owner_key()).unwrap();
    assert!(crypto::decrypt(&[&owner], &ct, &ca_key).is_ok());
    env.ok(&["check"]);
    assert!(
        env.fail(&["broker", "init"])
            .contains("has a broker already")
    );
    // A swapped CA certificate is refused.
    std::fs::write(d.join("broker/ca.crt"), pem.replace('A', "B")).unwrap();
    assert!(
        env.fail(&["ca", "cert"])
            .contains("not the CA the manifest names")
    );
}

#[test]
fn tokens_are_issued_scoped_verified_and_revoked() {
    use agent_vault_core::broker::token::TokenError;
    use agent_vault_core::crypto::Identity;
    use agent_vault_core::{KeyStore, Vault};
    let env = Env::new();
    env.set("gh/token", b"ghp");
    env.set("other/x", b"x");
    env.add_agent("bot");
    env.ok(&["grant", "bot", "gh", "--mode", "use"]);
    assert!(
        env.fail(&["token", "issue", "bot"])
            .contains("no broker yet")
    );
    let v = env.json(&["broker", "init"]);
    let broker =
        Identity::read_file(std::path::Path::new(v["broker_key"].as_str().unwrap())).unwrap();
    env.ok(&[
        "service",
        "add",
        "github",
        "--template",
        "github",
        "--secret",
        "gh/token",
    ]);
    env.ok(&[
        "service",
        "add",
        "other",
        "--bearer",
        "other/x",
        "--host",
        "other.example",
    ]);
    let issued = env.json(&[
        "token",
        "issue",
        "bot",
        "--ttl",
        "10m",
        "--service",
        "github",
        "--session",
        "task-7",
    ]);
    let token = issued["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("avt1."));
    // Never for a service whose secrets the agent has no grant on, nor too long, nor for nobody.
    assert!(
        env.fail(&["token", "issue", "bot", "--service", "other"])
            .contains("not granted group other")
    );
    assert!(
        env.fail(&["token", "issue", "bot", "--ttl", "400d"])
            .contains("between 1 second")
    );
    assert!(
        env.fail(&["token", "issue", "ghost"])
            .contains("no agent ghost")
    );
    // The broker verifies it with the key it can open.
    let vault = Vault::open(&env.vault, KeyStore::at(&env.home)).unwrap();
    let key = agent_vault_core::broker::token_key(&vault, &broker).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let claims = key
        .verify(&token, now, &vault.manifest().unwrap().revoked)
        .unwrap();
    assert_eq!(
        (claims.agent.as_str(), claims.services.as_slice()),
        ("bot", &["github".to_string()][..])
    );
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(
        key.verify(&token, now + 601, &Default::default()),
        Err(TokenError::Expired)
    );
    // Revoked by session: in the signed manifest, seen by the next read.
    env.ok(&["token", "revoke", "--session", "task-7"]);
    assert_eq!(
        key.verify(&token, now, &vault.manifest().unwrap().revoked),
        Err(TokenError::Revoked)
    );
    let t2 = env.json(&["token", "issue", "bot"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        key.verify(&t2, now, &vault.manifest().unwrap().revoked)
            .is_ok()
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.ok(&["token", "revoke", "--agent", "bot"]);
    assert_eq!(
        key.verify(&t2, now, &vault.manifest().unwrap().revoked),
        Err(TokenError::Revoked)
    );
    assert!(env.fail(&["token", "revoke"]).contains("required"));
    env.ok(&["check"]);
}
