//! OAuth on the owner's page (issue 15, items 3 and 4): connecting a
//! credential through headless Chromium (Selenium, tests/e2e/ui_driver.py)
//! against the Authlib provider of `oauth.rs`, and approving a proposal's
//! OAuth slot, which leads to that flow.

use std::path::Path;

use serde_json::Value;

use crate::harness::*;
use crate::oauth::{CLIENT_SECRET, count, python, setup};

#[test]
fn oauth_connect_on_the_owners_page_with_pkce_and_state() {
    use crate::ui::{Ui, drive};
    if !have("chromium") && !Path::new("/usr/bin/chromium").exists() {
        panic!("chromium is needed (scripts/test-all.sh installs it)");
    }
    let s = setup();
    let ca = s.ca.to_str().unwrap().to_owned();
    let ui = Ui::start(
        &s.env,
        &s.env.vault,
        &["--upstream-ca", &ca, "--allow-private-endpoints"],
    );
    let out = s.env.tmp.path().join("pages");
    std::fs::create_dir_all(&out).unwrap();
    let r = drive(
        &[
            "connect",
            &ui.login,
            "api/gh",
            &s.base(),
            out.to_str().unwrap(),
        ],
        &[("UI_CLIENT_SECRET", CLIENT_SECRET)],
    );
    assert_eq!(r["title"], "Connected · agent-vault", "{r}");
    assert!(r["text"].as_str().unwrap().contains("api/gh"), "{r}");
    // The provider saw an S256 challenge at its authorization endpoint and a
    // verifier that matched it at its token endpoint.
    let stats = s.stats();
    assert_eq!(count(&stats, "code_exchanges"), 1, "{stats}");
    assert_eq!(count(&stats, "pkce_verified"), 1, "{stats}");
    let log = std::fs::read_to_string(s.env.tmp.path().join("provider.log")).unwrap();
    assert!(log.contains("\"code_challenge_method\": \"S256\""), "{log}");
    assert!(log.contains("\"scope\": \"repo read:user\""), "{log}");

    // The tokens went into the vault, owner-signed, as an OAuth credential.
    let stored: Value = serde_json::from_slice(&s.env.get("api/gh")).unwrap();
    assert_eq!(stored["type"], "oauth");
    assert_eq!(
        Some(stored["refresh_token"].clone()),
        s.stats()["refresh"].as_array().unwrap().last().cloned()
    );

    // The callback again (same code and state): the state was used once.
    let callback = r["url"].as_str().unwrap();
    assert!(callback.contains("/oauth/callback?"), "{callback}");
    let again = python(
        "import sys, urllib.request, urllib.error\ntry:\n    print(urllib.request.urlopen(sys.argv[1]).status)\nexcept urllib.error.HTTPError as e:\n    print(e.code)",
        &[callback],
    );
    assert_eq!(again.trim(), "403");
    // A state the page never made, with a code: refused, nothing exchanged.
    let forged = format!("{}/oauth/callback?code=x&state=forged", ui.base);
    let forged = python(
        "import sys, urllib.request, urllib.error\ntry:\n    print(urllib.request.urlopen(sys.argv[1]).status)\nexcept urllib.error.HTTPError as e:\n    print(e.code)",
        &[&forged],
    );
    assert_eq!(forged.trim(), "403");
    assert_eq!(count(&s.stats(), "code_exchanges"), 1);

    // The page's log names paths, never a code, a state or a token.
    let text = ui.stderr_text();
    for t in s.all_tokens() {
        assert!(!text.contains(&t), "a token in the page's log");
    }
    assert!(!text.contains("code="), "{text}");
    for page in std::fs::read_dir(&out).unwrap() {
        let html = std::fs::read_to_string(page.unwrap().path()).unwrap();
        for t in s.all_tokens() {
            assert!(!html.contains(&t), "a token on a page");
        }
        assert!(!html.contains(CLIENT_SECRET), "the client secret on a page");
    }
}

#[test]
fn oauth_approving_a_proposal_with_an_oauth_slot_leads_to_the_connect_flow() {
    use agent_vault_core::broker::services::{Auth, Service};
    use agent_vault_core::proposals::{self, Action, Draft, ProposedService, Slot, SlotKind};
    use agent_vault_core::{KeySource, KeyStore, Vault};

    use crate::ui::{Ui, drive};
    let s = setup();
    let key = s.env.add_agent("bot");
    s.env.ok(&["broker", "init"]);
    // The agent asks for a service on the provider's API, authenticated by
    // an OAuth credential it names but cannot obtain itself.
    let vault = Vault::find(&s.env.vault, KeyStore::at(&s.env.home)).unwrap();
    let id = vault
        .keys()
        .load(&KeySource::File(key), vault.id())
        .unwrap();
    let host = format!("127.0.0.1:{}", s.port);
    let service = Service::new(vec![host], Auth::Bearer("api/gh".parse().unwrap()));
    let draft = Draft {
        message: "I need the provider's API".into(),
        expires: None,
        services: vec![ProposedService {
            name: "api".into(),
            service,
        }],
        slots: vec![Slot {
            path: "api/gh".parse().unwrap(),
            description: "the provider account".into(),
            obtain: "connect it at the provider".into(),
            action: Action::Set,
            kind: SlotKind::Oauth,
            value: None,
        }],
    };
    let pid = proposals::submit(&vault, &id, draft, proposals::Values::new())
        .unwrap()
        .proposal
        .id
        .to_string();

    let ca = s.ca.to_str().unwrap().to_owned();
    let ui = Ui::start(
        &s.env,
        &s.env.vault,
        &["--upstream-ca", &ca, "--allow-private-endpoints"],
    );
    let out = s.env.tmp.path().join("pages");
    std::fs::create_dir_all(&out).unwrap();
    let r = drive(
        &[
            "approve-connect",
            &ui.login,
            &pid,
            &s.base(),
            out.to_str().unwrap(),
        ],
        &[("UI_CLIENT_SECRET", CLIENT_SECRET)],
    );
    // Approving led to the connect form, the slot's name filled in.
    assert_eq!(
        r["form_url"],
        format!("{}/oauth?path=api/gh", ui.base),
        "{r}"
    );
    assert_eq!(r["path"], "api/gh", "{r}");
    assert_eq!(r["title"], "Connected · agent-vault", "{r}");
    assert_eq!(count(&s.stats(), "pkce_verified"), 1);

    // The proposal's service and grant are in place, and the connected
    // credential works through the broker.
    let log = s.env.tmp.path().join("broker.log");
    let (_broker, port) = s.broker(&log);
    let token = s.token();
    let answers = s.through_broker(port, &token, 1);
    assert_eq!(answers[0].0, 200, "{}", answers[0].1);
    assert!(
        answers[0].1.contains("[REDACTED:api/gh]"),
        "{}",
        answers[0].1
    );
}
