//! OAuth credentials end to end (issue 15): a real OAuth 2.0 provider built
//! with Authlib (`oauth_provider.py`: authorization code with PKCE, refresh
//! tokens rotated on every use, short-lived access tokens, an API that
//! accepts only the newest access token and echoes it with every earlier
//! one), the real CLI and the real broker, and Python `requests` as the
//! agent's client.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::broker::{Proc, python_tls_upstream, wait_until};
use crate::harness::*;

const CLIENT: &str = "agent-vault-test";
pub(crate) const CLIENT_SECRET: &str = "test-client-secret";

/// The provider, a vault, and (once started) the broker.
pub(crate) struct Setup {
    pub(crate) env: Env,
    _provider: Proc,
    pub(crate) port: u16,
    pub(crate) ca: PathBuf,
    secret_file: PathBuf,
    audit: PathBuf,
    /// Everything the CLI printed, to look for tokens in at the end.
    outputs: Vec<u8>,
}

pub(crate) fn setup() -> Setup {
    let env = Env::new();
    let (child, mut out, ca, _log) = python_tls_upstream(
        env.tmp.path(),
        "provider",
        "oauth_provider.py",
        "provider.log",
        &[],
    );
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("provider did not start: {line:?}"));
    let secret_file = env.tmp.path().join("client-secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    let audit = env.tmp.path().join("audit.jsonl");
    Setup {
        env,
        _provider: child,
        port,
        ca,
        secret_file,
        audit,
        outputs: Vec::new(),
    }
}

/// Python with `requests`, the script given `args`; its standard output.
pub(crate) fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Setup {
    pub(crate) fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A control call to the provider (`GET /control/stats`, `POST
    /// /control/ttl/N`, …).
    pub(crate) fn control(&self, method: &str, path: &str) -> Value {
        let out = python(
            "import requests, sys\nr = requests.request(sys.argv[1], sys.argv[2], verify=sys.argv[3])\nprint(r.text)",
            &[
                method,
                &format!("{}{path}", self.base()),
                self.ca.to_str().unwrap(),
            ],
        );
        serde_json::from_str(&out).unwrap()
    }

    pub(crate) fn stats(&self) -> Value {
        self.control("GET", "/control/stats")
    }

    /// A refresh token obtained the way a user's browser would: the
    /// authorization endpoint (PKCE), then the code at the token endpoint.
    pub(crate) fn refresh_token_from_the_provider(&self) -> String {
        python(
            r#"
import base64, hashlib, requests, secrets, sys
from urllib.parse import urlparse, parse_qs
base, ca = sys.argv[1], sys.argv[2]
verifier = secrets.token_urlsafe(48)
challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
redirect = "http://127.0.0.1:9/callback"
r = requests.get(base + "/authorize", params=dict(response_type="code", client_id="agent-vault-test",
    redirect_uri=redirect, state="s", code_challenge=challenge, code_challenge_method="S256"),
    verify=ca, allow_redirects=False)
code = parse_qs(urlparse(r.headers["Location"]).query)["code"][0]
t = requests.post(base + "/token", data=dict(grant_type="authorization_code", code=code, redirect_uri=redirect,
    code_verifier=verifier, client_id="agent-vault-test", client_secret="test-client-secret"), verify=ca)
t.raise_for_status()
print(t.json()["refresh_token"])
"#,
            &[&self.base(), self.ca.to_str().unwrap()],
        )
        .trim()
        .to_owned()
    }

    /// `oauth set PATH` with the refresh token on standard input.
    pub(crate) fn oauth_set(&mut self, path: &str, refresh: &str) -> std::process::Output {
        let token_url = format!("{}/token", self.base());
        let out = self.env.run(
            &[
                "oauth",
                "set",
                path,
                "--client-id",
                CLIENT,
                "--client-secret-file",
                self.secret_file.to_str().unwrap(),
                "--token-url",
                &token_url,
                "--scope",
                "repo",
                "--upstream-ca",
                self.ca.to_str().unwrap(),
                "--allow-private-endpoints",
            ],
            format!("{refresh}\n").as_bytes(),
        );
        self.outputs.extend_from_slice(&out.stdout);
        self.outputs.extend_from_slice(&out.stderr);
        out
    }

    /// The service `api` (bearer from `api/gh`) to the provider's API, an
    /// agent `bot` that may use it, the broker's keys.
    pub(crate) fn service(&self) {
        self.env.add_agent("bot");
        self.env.ok(&["grant", "bot", "api", "--mode", "use"]);
        self.env.ok(&["broker", "init"]);
        let host = format!("127.0.0.1:{}", self.port);
        self.env.ok(&[
            "service", "add", "api", "--bearer", "api/gh", "--host", &host,
        ]);
    }

    /// Starts the broker, its standard error into `log`; its port.
    pub(crate) fn broker(&self, log: &Path) -> (Proc, u16) {
        self.broker_in(None, log, &["--audit", self.audit.to_str().unwrap()])
    }

    /// Starts a broker in `dir` (a clone; `None`: the vault) with `extra`
    /// arguments, its standard error into `log`; its port.
    pub(crate) fn broker_in(&self, dir: Option<&Path>, log: &Path, extra: &[&str]) -> (Proc, u16) {
        let err = std::fs::File::create(log).unwrap();
        let mut args = vec![
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--allow-private-upstreams",
            "--upstream-ca",
            self.ca.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut cmd = self.env.cmd(&args);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let child = cmd.stdout(Stdio::null()).stderr(err).spawn().unwrap();
        let child = Proc(child);
        let mut port = None;
        wait_until(Duration::from_secs(20), || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            port = text
                .lines()
                .next()
                .filter(|l| l.contains("127.0.0.1:"))
                .and_then(|l| l.trim().rsplit(':').next()?.parse().ok());
            port.is_some()
        });
        (child, port.expect("the broker did not start"))
    }

    pub(crate) fn token(&self) -> String {
        self.env.json(&["token", "issue", "bot", "--ttl", "10m"])["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `n` concurrent GETs of the provider's echo API through the broker
    /// (Python requests, one thread and one tunnel each): status and body
    /// of each, one JSON line per request.
    pub(crate) fn through_broker(&self, broker: u16, token: &str, n: usize) -> Vec<(u16, String)> {
        let ca = self.env.broker_ca();
        let out = python(
            r#"
import json, sys, requests
from concurrent.futures import ThreadPoolExecutor
proxy, ca, url, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def one(_):
    s = requests.Session()
    s.trust_env = False
    r = s.get(url, proxies={"https": proxy}, verify=ca, timeout=30)
    return {"status": r.status_code, "body": r.text, "type": r.headers.get("content-type", ""),
            "error": r.headers.get("agent-vault-error", "")}
with ThreadPoolExecutor(n) as pool:
    for r in pool.map(one, range(n)):
        print(json.dumps(r))
"#,
            &[
                &format!("http://bot:{token}@127.0.0.1:{broker}"),
                ca.to_str().unwrap(),
                &format!("{}/api/echo", self.base()),
                &n.to_string(),
            ],
        );
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let body = format!(
                    "{} {} {}",
                    v["type"].as_str().unwrap(),
                    v["error"].as_str().unwrap(),
                    v["body"].as_str().unwrap()
                );
                (v["status"].as_u64().unwrap() as u16, body)
            })
            .collect()
    }

    /// Every token the provider ever issued.
    pub(crate) fn all_tokens(&self) -> Vec<String> {
        let s = self.stats();
        ["access", "refresh"]
            .iter()
            .flat_map(|k| s[k].as_array().unwrap().clone())
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    }

    /// The access tokens agent-vault came to hold: all but the first, which
    /// the test's own code exchange got (and used to paste its refresh token).
    fn vault_access_tokens(&self) -> Vec<String> {
        self.stats()["access"].as_array().unwrap()[1..]
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    }

    /// Whether the provider's token endpoint takes `refresh` now.
    fn provider_takes(&self, refresh: &str) -> bool {
        let out = python(
            r#"
import requests, sys
r = requests.post(sys.argv[1] + "/token", data=dict(grant_type="refresh_token", refresh_token=sys.argv[3],
    client_id="agent-vault-test", client_secret="test-client-secret"), verify=sys.argv[2])
print(r.status_code)
"#,
            &[&self.base(), self.ca.to_str().unwrap(), refresh],
        );
        out.trim() == "200"
    }
}

pub(crate) fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap()
}

#[test]
fn oauth_paste_mode_accepts_a_good_refresh_token_and_refuses_a_bad_one() {
    let mut s = setup();
    let good = s.refresh_token_from_the_provider();
    let out = s.oauth_set("api/gh", &good);
    assert!(out.status.success(), "{}", stderr(&out));
    // The token was used at once: the provider rotated it, and the vault
    // holds the new one (owner-signed like any value).
    assert_eq!(count(&s.stats(), "refresh_ok"), 1);
    let stored: Value = serde_json::from_slice(&s.env.get("api/gh")).unwrap();
    assert_eq!(stored["type"], "oauth");
    let newest = s.stats()["refresh"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(stored["refresh_token"], newest);
    assert_ne!(stored["refresh_token"].as_str().unwrap(), good);
    assert!(stored["access_token"].is_string() && stored["expires_at"].is_i64());

    // A token the provider refuses is refused, nothing stored, and the
    // error names the credential and the provider's code, not the token.
    let bad = "not-a-refresh-token-0123456789";
    let out = s.oauth_set("api/other", bad);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("api/other") && err.contains("invalid_grant"),
        "{err}"
    );
    assert!(!err.contains(bad), "{err}");
    assert!(!s.env.run(&["get", "api/other"], b"").status.success());
    // The token that was good is spent (rotated): pasting it again fails.
    assert!(!s.oauth_set("api/again", &good).status.success());

    // A token endpoint that is not https is refused before anything is sent.
    let before = count(&s.stats(), "refreshes");
    let out = s.env.run(
        &[
            "oauth",
            "set",
            "api/plain",
            "--client-id",
            CLIENT,
            "--token-url",
            "http://127.0.0.1:9/token",
        ],
        b"whatever\n",
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("https://"), "{}", stderr(&out));
    assert_eq!(count(&s.stats(), "refreshes"), before);

    // Without an owner key the vault cannot be written: the provider is not
    // asked (it would rotate the token away), and the token stays good.
    let fresh = s.refresh_token_from_the_provider();
    let before = count(&s.stats(), "refreshes");
    let away = s.env.tmp.path().join("owner.key.away");
    std::fs::rename(s.env.owner_key(), &away).unwrap();
    let out = s.oauth_set("api/nokey", &fresh);
    std::fs::rename(&away, s.env.owner_key()).unwrap();
    assert!(!out.status.success());
    assert_eq!(count(&s.stats(), "refreshes"), before);
    assert!(s.oauth_set("api/nokey", &fresh).status.success());

    // A secret never comes from the command line: there is no flag for it.
    let out = s
        .env
        .run(&["oauth", "set", "api/x", "--refresh-token", "x"], b"");
    assert!(!out.status.success());

    for t in s.all_tokens() {
        assert!(
            !s.outputs.windows(t.len()).any(|w| w == t.as_bytes()),
            "a token in the CLI's output"
        );
    }
}

#[test]
fn oauth_fifty_requests_at_expiry_refresh_once_and_the_newest_refresh_token_survives_a_restart() {
    let mut s = setup();
    // Access tokens that live 302 s are due for a refresh (within 5 min of
    // expiry) 2 s after they are issued.
    s.control("POST", "/control/ttl/302");
    let pasted = s.refresh_token_from_the_provider();
    assert!(s.oauth_set("api/gh", &pasted).status.success());
    let owner_set: Value = serde_json::from_slice(&s.env.get("api/gh")).unwrap();
    let owner_refresh = owner_set["refresh_token"].as_str().unwrap().to_owned();
    s.service();
    let log1 = s.env.tmp.path().join("broker1.log");
    let (broker, port) = s.broker(&log1);
    let token = s.token();
    std::thread::sleep(Duration::from_millis(2500));

    let before = s.stats();
    let answers = s.through_broker(port, &token, 50);
    let after = s.stats();
    assert_eq!(answers.len(), 50);
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    // Exactly one refresh at the provider for the fifty.
    assert_eq!(count(&after, "refreshes") - count(&before, "refreshes"), 1);
    assert_eq!(
        count(&after, "refresh_ok") - count(&before, "refresh_ok"),
        1
    );
    // The token the broker was just granted lives 302 s, less than twice
    // the 5-minute margin: it is due halfway (151 s), not at once, so
    // requests a few seconds later do not refresh it again.
    std::thread::sleep(Duration::from_millis(2500));
    let later = s.through_broker(port, &token, 5);
    assert!(later.iter().all(|(status, _)| *status == 200), "{later:?}");
    assert_eq!(count(&s.stats(), "refreshes"), count(&after, "refreshes"));
    // The API echoed the current token and the earlier one: the agent sees
    // neither.
    let tokens = s.vault_access_tokens();
    assert_eq!(tokens.len(), 2);
    for (_, body) in &answers {
        assert!(body.contains("[REDACTED:api/gh]"), "{body}");
        for t in &tokens {
            assert!(
                !body.contains(t.as_str()),
                "a token reached the agent: {body}"
            );
        }
    }
    // The rotated refresh token and the access token are the broker's
    // state, encrypted (no token in the clear on disk).
    let state = s.env.vault.join(".agent-vault/broker/state/api/gh.age");
    assert!(state.is_file() && state.with_extension("sig").is_file());
    // The vault stays healthy with the broker's state in it, and the owner's
    // value still reads (the broker never rewrites it).
    s.env.ok(&["check"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&s.env.get("api/gh")).unwrap()["refresh_token"],
        owner_refresh.as_str()
    );
    drop(broker);

    // The owner-set refresh token was rotated away: the provider refuses it.
    assert!(!s.provider_takes(&owner_refresh));
    assert!(!s.provider_takes(&pasted));

    // A new broker reads the state: the access token it holds is due again
    // (302 s), so it refreshes with the newest refresh token, not the
    // owner's (which the provider would refuse).
    s.control("POST", "/control/ttl/3600");
    std::thread::sleep(Duration::from_millis(2500));
    let log2 = s.env.tmp.path().join("broker2.log");
    let (_broker2, port2) = s.broker(&log2);
    let before = s.stats();
    let answers = s.through_broker(port2, &token, 3);
    let after = s.stats();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert_eq!(count(&after, "refreshes") - count(&before, "refreshes"), 1);
    assert_eq!(
        count(&after, "refresh_ok") - count(&before, "refresh_ok"),
        1
    );
    // Every token so far, the ones from before the restart included, is
    // scrubbed from what the API echoes.
    let tokens = s.vault_access_tokens();
    assert_eq!(tokens.len(), 3);
    for (_, body) in &answers {
        assert!(body.contains("[REDACTED:api/gh]"), "{body}");
        for t in &tokens {
            assert!(
                !body.contains(t.as_str()),
                "a token reached the agent: {body}"
            );
        }
    }

    // The owner sees the broker's state, its signature checked against the
    // broker the manifest names (key opened from its escrow), never a token.
    let out = s.env.ok(&["--json", "oauth", "status", "api/gh"]);
    s.outputs.extend_from_slice(&out.stdout);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["broker_state"]["verified"], true, "{st}");
    assert_eq!(st["broker_state"]["continues_owner_value"], true, "{st}");
    assert!(
        st["broker_state"]["earlier_access_tokens"]
            .as_u64()
            .unwrap()
            >= 2,
        "{st}"
    );
    // A signature file someone else made: the state is not the broker's.
    let sig = state.with_extension("sig");
    let good = std::fs::read(&sig).unwrap();
    std::fs::write(&sig, br#"{"signing_key":"AAAA","signature":"AAAA"}"#).unwrap();
    let out = s.env.ok(&["--json", "oauth", "status", "api/gh"]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(st["broker_state"].is_null(), "{st}");
    std::fs::write(&sig, good).unwrap();

    // No token in the audit log, the brokers' logs, the CLI's output, or
    // any vault file (in the clear).
    let tokens = s.all_tokens();
    let mut logs = std::fs::read(&s.audit).unwrap();
    assert!(!logs.is_empty());
    logs.extend(std::fs::read(&log1).unwrap());
    logs.extend(std::fs::read(&log2).unwrap());
    logs.extend_from_slice(&s.outputs);
    for t in &tokens {
        assert!(
            !logs.windows(t.len()).any(|w| w == t.as_bytes()),
            "a token in a log"
        );
        assert!(found_in_files(&s.env.vault, t.as_bytes()).is_empty());
        assert!(found_in_files(&s.env.home, t.as_bytes()).is_empty());
    }
    let audit = std::fs::read_to_string(&s.audit).unwrap();
    assert!(audit.contains("api/gh"), "the audit names the credential");
}

#[test]
fn oauth_a_refused_refresh_is_a_502_problem_naming_the_credential() {
    let mut s = setup();
    // Access tokens that expire a second after they are issued.
    s.control("POST", "/control/ttl/1");
    let pasted = s.refresh_token_from_the_provider();
    assert!(s.oauth_set("api/gh", &pasted).status.success());
    s.service();
    // The provider revokes everything: the refresh the broker needs fails.
    s.control("POST", "/control/revoke-all");
    let log = s.env.tmp.path().join("broker.log");
    let (_broker, port) = s.broker(&log);
    let token = s.token();
    std::thread::sleep(Duration::from_millis(1500));
    let before = s.stats();
    let answers = s.through_broker(port, &token, 5);
    for (status, body) in &answers {
        assert_eq!(*status, 502, "{body}");
        assert!(
            body.starts_with("application/problem+json oauth-refresh-failed"),
            "{body}"
        );
        assert!(
            body.contains("api/gh") && body.contains("invalid_grant"),
            "{body}"
        );
    }
    // One refresh was tried; the requests behind it got its answer
    // rather than asking the provider again.
    assert_eq!(
        count(&s.stats(), "refreshes") - count(&before, "refreshes"),
        1
    );
    let tokens = s.all_tokens();
    let mut logs = std::fs::read(&log).unwrap();
    logs.extend(std::fs::read(&s.audit).unwrap_or_default());
    for (_, body) in &answers {
        logs.extend_from_slice(body.as_bytes());
    }
    for t in &tokens {
        assert!(
            !logs.windows(t.len()).any(|w| w == t.as_bytes()),
            "a token in an error or log"
        );
    }
}

#[test]
fn oauth_readers_refuse_a_broker_signed_value() {
    use base64::Engine;
    let s = setup();
    s.env.set("api/static", b"owner-set-value");
    s.env.add_agent("bot");
    s.env.ok(&["grant", "bot", "api", "--mode", "use"]);
    s.env.ok(&["broker", "init"]);
    let broker_key = s
        .env
        .home
        .join("keys")
        .join(s.env.vault_id())
        .join("broker.key");
    let broker = agent_vault_core::crypto::Identity::read_file(&broker_key).unwrap();

    // A value encrypted to the group and metadata signed, correctly, by the
    // broker's derived key: a broker (or whoever holds its key) cannot set
    // a value owners did not.
    let vault = s.env.vault.join(".agent-vault");
    let recipient = group_recipient(&s.env, "api");
    let forged =
        agent_vault_core::crypto::encrypt(&[&recipient.parse().unwrap()], b"broker-chosen-value")
            .unwrap();
    let meta_path = vault.join(secret_file("api", "static", ".meta.yaml"));
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    let field = |k: &str| {
        meta.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap()
            .trim_matches(['\'', '"'])
            .to_owned()
    };
    let hash = agent_vault_core::crypto::sha256_hex(&forged);
    let generation: u64 = field("generation").parse().unwrap();
    let created: jiff::Timestamp = field("created").parse().unwrap();
    let updated: jiff::Timestamp = field("updated").parse().unwrap();
    let msg = format!(
        "{}\0api/static\0{hash}\0{generation}\0{}\0{}\0-\0-",
        s.env.vault_id(),
        created.as_nanosecond(),
        updated.as_nanosecond()
    );
    let key = broker.broker_signing_key();
    let sig = base64::engine::general_purpose::STANDARD
        .encode(key.sign_raw("agent-vault/v2/secret", msg.as_bytes()));
    let forged_meta = format!(
        "created: {}\nupdated: {}\nciphertext_sha256: {hash}\ngeneration: {generation}\nsigning_key: {}\nsignature: {sig}\nsigned: 2\n",
        field("created"),
        field("updated"),
        key.public()
    );
    std::fs::write(vault.join(secret_file("api", "static", ".age")), &forged).unwrap();
    std::fs::write(&meta_path, forged_meta).unwrap();
    let out = s.env.run(&["get", "api/static"], b"");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not an owner's"), "{}", stderr(&out));
}
