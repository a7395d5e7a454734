//! Agents authenticate to the broker themselves (issue 12, item 1): tokens
//! an agent mints with its own key (`avt2`), verified by the real broker,
//! used by curl, `agent-vault run`, `proxy env` and the MCP server with no
//! owner key on the machine.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use agent_vault_core::broker::agent_token;
use agent_vault_core::broker::token::Claims;
use agent_vault_core::crypto::Identity;
use agent_vault_core::model::{Manifest, ManifestSig};

use crate::broker::{Proc, start_broker_with, upstream, wait_until};
use crate::harness::*;

const VALUE: &str = "tok_AGENT_TOKENS_42";

struct World {
    env: Env,
    _upstream: Proc,
    up_port: u16,
    upstream_log: PathBuf,
    upstream_ca: PathBuf,
    broker_ca: PathBuf,
    audit: PathBuf,
    bot: PathBuf,
    eve: PathBuf,
    _broker: Option<Proc>,
    port: u16,
}

/// A vault with two agents: bot may use `api` (service `api`, paths
/// `/v1`), eve may use `other` (service `other`, paths `/other`), both on
/// the same HTTPS echo upstream. `max_ttl` goes into config.yaml before the
/// broker starts.
fn world(max_ttl: Option<i64>) -> World {
    let env = Env::new();
    let (up, up_port, upstream_ca, upstream_log) = upstream(env.tmp.path());
    env.set("api/token", VALUE.as_bytes());
    env.set("other/x", b"other-secret-value");
    let bot = env.add_agent("bot");
    let eve = env.add_agent("eve");
    env.ok(&["grant", "bot", "api", "--mode", "use"]);
    env.ok(&["grant", "eve", "other", "--mode", "use"]);
    env.ok(&["broker", "init"]);
    let host = format!("127.0.0.1:{up_port}");
    for (name, secret, path) in [("api", "api/token", "/v1"), ("other", "other/x", "/other")] {
        env.ok(&[
            "service", "add", name, "--bearer", secret, "--host", &host, "--path", path,
        ]);
    }
    if let Some(max) = max_ttl {
        let p = env.vault.join(".agent-vault/config.yaml");
        let cfg = std::fs::read_to_string(&p).unwrap();
        let cfg: String = cfg
            .lines()
            .filter(|l| !l.starts_with("token_max_ttl_seconds:"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&p, format!("{cfg}token_max_ttl_seconds: {max}\n")).unwrap();
        env.git(&["commit", "-qam", "short tokens"]);
    }
    let broker_ca = env.broker_ca();
    let audit = env.tmp.path().join("audit.jsonl");
    let mut w = World {
        env,
        _upstream: up,
        up_port,
        upstream_log,
        upstream_ca,
        broker_ca,
        audit,
        bot,
        eve,
        _broker: None,
        port: 0,
    };
    w.start_broker();
    w
}

impl World {
    fn start_broker(&mut self) {
        let (broker, port) = start_broker_with(
            &self.env,
            &[
                "--allow-private-upstreams",
                "--upstream-ca",
                self.upstream_ca.to_str().unwrap(),
                "--audit",
                self.audit.to_str().unwrap(),
            ],
            &[],
        );
        self._broker = Some(broker);
        self.port = port;
    }

    /// The owner key moved out of the key store (this machine is the agent's).
    fn owner_away(&self) -> PathBuf {
        let away = self.env.tmp.path().join("owner.key.away");
        std::fs::rename(self.env.owner_key(), &away).unwrap();
        away
    }

    fn owner_back(&self, away: &Path) {
        std::fs::rename(away, self.env.owner_key()).unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.up_port)
    }

    /// curl through the broker as `agent` with `token`: the status line and
    /// the body.
    fn curl(&self, agent: &str, token: &str, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "-g", "--max-time", "10", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", self.port))
            .args(["--proxy-user", &format!("{agent}:{token}")])
            .args(["--cacert", self.broker_ca.to_str().unwrap(), "-D", "-"])
            .arg(self.url(path))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn status(&self, agent: &str, token: &str, path: &str) -> String {
        let out = self.curl(agent, token, path);
        out.split_whitespace().nth(1).unwrap_or("").to_owned()
    }

    /// The broker's answer to a bare `CONNECT` with this token (status
    /// line, headers and body: a refusal says why).
    fn connect(&self, agent: &str, token: &str) -> String {
        use base64::Engine;
        use std::io::Read;
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{agent}:{token}"));
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let target = format!("127.0.0.1:{}", self.up_port);
        write!(
            tcp,
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {creds}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn upstream_saw(&self) -> String {
        std::fs::read_to_string(&self.upstream_log).unwrap_or_default()
    }

    fn issue(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["token", "issue"];
        a.extend_from_slice(args);
        self.env.json(&a)
    }

    fn token(v: &serde_json::Value) -> String {
        v["token"].as_str().unwrap().to_owned()
    }
}

/// Claims as an agent would mint them, from now.
fn claims(agent: &str, life: i64, services: &[&str]) -> Claims {
    let now = jiff::Timestamp::now().as_second();
    Claims {
        id: format!("hand-{agent}-{life}"),
        agent: agent.into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        session: None,
        iat: now,
        exp: now + life,
    }
}

/// An `avt2` token signed by hand with the key derived from `key_file`.
fn hand_mint(key_file: &Path, vault_id: &str, c: &Claims) -> String {
    let id = Identity::read_file(key_file).unwrap();
    agent_token::sign(&id.agent_signing_key(), vault_id, c).unwrap()
}

#[test]
fn with_only_the_agent_key_token_issue_run_and_proxy_env_work() {
    let w = world(None);
    // With the owner key, `token issue` is an owner's token, as before.
    let t1 = World::token(&w.issue(&["bot"]));
    assert!(t1.starts_with("avt1."), "{t1}");
    let away = w.owner_away();
    // Nothing but the agent's key in the key store: the agent mints its own.
    let v = w.issue(&["bot", "--ttl", "5m", "--session", "job-1"]);
    let t2 = World::token(&v);
    assert!(t2.starts_with("avt2."), "{t2}");
    assert_eq!(v["agent"], "bot");
    assert_eq!(v["session"], "job-1");
    let out = w.curl("bot", &t2, "/v1/curl");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(w.upstream_saw().contains(&format!("Bearer {VALUE}")));
    assert!(!out.contains(VALUE), "{out}");
    assert!(out.contains("[REDACTED:api/token]"), "{out}");
    // The audit names the agent and the token's id.
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(last["agent"], "bot");
    assert_eq!(last["token_id"], v["id"]);

    // `run`: curl in the child, HTTPS_PROXY and the CA set by agent-vault.
    let out = w.env.run(
        &[
            "run",
            "--agent",
            "bot",
            "--proxy",
            &format!("127.0.0.1:{}", w.port),
            "--",
            "curl",
            "-sS",
            "-D",
            "-",
            "--max-time",
            "10",
            &w.url("/v1/run"),
        ],
        b"",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("[REDACTED:api/token]") && !text.contains(VALUE));
    assert!(w.upstream_saw().contains("/v1/run"));

    // `proxy env`: an avt2 token in HTTPS_PROXY, usable by curl.
    let env = String::from_utf8(w.env.ok(&["proxy", "env", "--agent", "bot"]).stdout).unwrap();
    let proxy_url = env
        .lines()
        .find_map(|l| l.strip_prefix("export HTTPS_PROXY='"))
        .and_then(|l| l.strip_suffix('\''))
        .unwrap();
    let token = proxy_url
        .strip_prefix("http://bot:")
        .and_then(|r| r.split('@').next())
        .unwrap();
    assert!(token.starts_with("avt2."), "{env}");
    assert_eq!(w.status("bot", token, "/v1/env"), "200");

    // The agent key given with --key or AGENT_VAULT_KEY works the same,
    // even beside an owner key.
    w.owner_back(&away);
    let bot = w.bot.to_str().unwrap();
    let t = World::token(&w.issue(&["bot", "--key", bot]));
    assert!(t.starts_with("avt2."), "{t}");
    assert_eq!(w.status("bot", &t, "/v1/key"), "200");
    let out = w
        .env
        .cmd(&["token", "issue", "bot"])
        .env("AGENT_VAULT_KEY", bot)
        .output()
        .unwrap();
    let t = String::from_utf8(out.stdout).unwrap();
    assert!(t.trim().starts_with("avt2."), "{t}");
    assert_eq!(w.status("bot", t.trim(), "/v1/envkey"), "200");

    // Another agent's key mints nothing for bot; no key at all says so.
    let err = w
        .env
        .fail(&["token", "issue", "bot", "--key", w.eve.to_str().unwrap()]);
    assert!(
        err.contains("agent eve's") && err.contains("not for bot"),
        "{err}"
    );
    let _away = w.owner_away();
    std::fs::rename(&w.bot, w.env.tmp.path().join("bot.away")).unwrap();
    let err = w.env.fail(&["token", "issue", "bot"]);
    assert!(!err.contains("AGE-SECRET-KEY"), "{err}");
    // No token or key in any output.
    assert!(!env.contains("AGE-SECRET-KEY"));
}

#[test]
fn forged_tampered_foreign_long_and_unknown_agent_tokens_are_refused() {
    let w = world(None);
    let vid = w.env.vault_id();
    let good = hand_mint(&w.bot, &vid, &claims("bot", 300, &[]));
    assert_eq!(
        w.status("bot", &good, "/v1/ok"),
        "200",
        "the hand-made token is valid"
    );
    // Eve's key, claims saying bot.
    let foreign = hand_mint(&w.eve, &vid, &claims("bot", 300, &[]));
    // Claims changed under bot's signature: a longer life.
    let sig = good.rsplit_once('.').unwrap().1;
    let body = base64_url(&serde_json::to_vec(&claims("bot", 3000, &[])).unwrap());
    let tampered = format!("avt2.{body}.{sig}");
    // A signature that is random bytes.
    let (head, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{head}.{}", base64_url(&[7u8; 64]));
    // Over the vault's cap (24 h by default), with bot's own key.
    let long = hand_mint(&w.bot, &vid, &claims("bot", 24 * 3600 + 1, &[]));
    // An agent the vault does not have.
    let ghost = hand_mint(&w.bot, &vid, &claims("ghost", 300, &[]));
    // Another vault's token.
    let other_vault = hand_mint(&w.bot, "another-vault", &claims("bot", 300, &[]));
    // Issued far in the future.
    let mut future = claims("bot", 300, &[]);
    future.iat += 3600;
    future.exp += 3600;
    let future = hand_mint(&w.bot, &vid, &future);
    let before = w.upstream_saw().len();
    for (what, token, reason) in [
        ("eve's key", &foreign, "not issued for this vault"),
        ("tampered", &tampered, "not issued for this vault"),
        ("forged", &forged, "not issued for this vault"),
        ("too long", &long, "longer than the vault allows"),
        ("unknown agent", &ghost, "agent this vault does not have"),
        ("other vault", &other_vault, "not issued for this vault"),
        ("future", &future, "issued in the future"),
    ] {
        assert_eq!(w.status("bot", token, "/v1/forged"), "407", "{what}");
        let out = w.connect("bot", token);
        assert!(out.starts_with("HTTP/1.1 407"), "{what}: {out}");
        assert!(out.contains(reason), "{what}: {out}");
    }
    assert_eq!(
        w.upstream_saw().len(),
        before,
        "a refused token reached the upstream"
    );
}

#[test]
fn a_token_never_reaches_more_than_the_agents_grants() {
    let w = world(None);
    let vid = w.env.vault_id();
    let bot = w.bot.to_str().unwrap();
    // At mint: bot may not use `other`'s group.
    let err = w
        .env
        .fail(&["token", "issue", "bot", "--key", bot, "--service", "other"]);
    assert!(err.contains("other"), "{err}");
    // Its own service is fine, and the token is held to it.
    let t = World::token(&w.issue(&["bot", "--key", bot, "--service", "api"]));
    assert_eq!(w.status("bot", &t, "/v1/scoped"), "200");
    // By the broker: a hand-made token naming `other` (or a service that
    // does not exist) is refused at CONNECT, even for bot's own paths.
    for services in [vec!["other"], vec!["api", "other"], vec!["nosuch"]] {
        let t = hand_mint(&w.bot, &vid, &claims("bot", 300, &services));
        assert_eq!(w.status("bot", &t, "/other/x"), "407", "{services:?}");
        let out = w.connect("bot", &t);
        assert!(
            out.contains("beyond the agent's grants"),
            "{services:?}: {out}"
        );
    }
    assert!(!w.upstream_saw().contains("other-secret-value"));
    // Eve's own token for `other` works; bot's grants are not eve's.
    let t = hand_mint(&w.eve, &vid, &claims("eve", 300, &["other"]));
    assert_eq!(w.status("eve", &t, "/other/eve"), "200");
    assert!(w.upstream_saw().contains("Bearer other-secret-value"));
}

#[test]
fn revocation_by_id_agent_and_session_covers_agent_tokens() {
    let w = world(None);
    let bot = w.bot.to_str().unwrap();
    let mint = |session: &str| {
        let v = w.issue(&["bot", "--key", bot, "--session", session]);
        assert!(World::token(&v).starts_with("avt2."));
        v
    };
    // A revocation reaches the broker within RECHECK (250 ms); the wait is
    // long because CI runs this beside Chromium on two cores. On a failure
    // the last answer is shown whole.
    let refused_soon = |token: &str| {
        let mut answer = String::new();
        wait_until(Duration::from_secs(20), || {
            answer = w.curl("bot", token, "/v1/revoked");
            answer.split_whitespace().nth(1) == Some("407")
        });
        assert_eq!(answer.split_whitespace().nth(1), Some("407"), "{answer}");
    };
    let works = |token: &str, path: &str| {
        let answer = w.curl("bot", token, path);
        assert_eq!(answer.split_whitespace().nth(1), Some("200"), "{answer}");
    };
    let (a, b, c) = (mint("s-a"), mint("s-b"), mint("s-c"));
    for v in [&a, &b, &c] {
        works(&World::token(v), "/v1/before");
    }
    w.env
        .ok(&["token", "revoke", "--id", a["id"].as_str().unwrap()]);
    refused_soon(&World::token(&a));
    works(&World::token(&b), "/v1/still");
    w.env.ok(&["token", "revoke", "--session", "s-b"]);
    refused_soon(&World::token(&b));
    works(&World::token(&c), "/v1/still");
    w.env.ok(&["token", "revoke", "--agent", "bot"]);
    refused_soon(&World::token(&c));
    // Tokens minted after the revocation (a second later) work again.
    std::thread::sleep(Duration::from_millis(1100));
    let d = mint("s-d");
    works(&World::token(&d), "/v1/after");
    w.env.ok(&["token", "revoke", "--all"]);
    refused_soon(&World::token(&d));
}

/// Turns bot into an agent made before signing keys: its entry without
/// one, the manifest re-signed by the owner and committed.
fn make_old_agent(w: &World, agent: &str) {
    let m_path = w.env.vault.join(".agent-vault/manifest.yaml");
    let mut m: Manifest = agent_vault_core::model::parse_yaml(
        Path::new("manifest.yaml"),
        &std::fs::read(&m_path).unwrap(),
    )
    .unwrap();
    m.agents
        .get_mut(&agent.parse().unwrap())
        .unwrap()
        .signing_key = None;
    let bytes = agent_vault_core::model::to_yaml(&m);
    let services = std::fs::read(w.env.vault.join(".agent-vault/services.yaml")).unwrap();
    let owner = Identity::read_file(&w.env.owner_key()).unwrap();
    let sig = ManifestSig::sign(
        &"alice".parse().unwrap(),
        &owner.signing_key(),
        &w.env.vault_id(),
        &bytes,
        &services,
    );
    std::fs::write(&m_path, &bytes).unwrap();
    std::fs::write(
        w.env.vault.join(".agent-vault/manifest.sig"),
        agent_vault_core::model::to_yaml(&sig),
    )
    .unwrap();
    w.env
        .git(&["commit", "-qam", "an agent from before signing keys"]);
}

#[test]
fn upgrade_agents_adds_signing_keys_for_old_agents() {
    let w = world(None);
    let vid = w.env.vault_id();
    let listed = w.env.json(&["list-agents"]);
    let bot_key = Identity::read_file(&w.bot)
        .unwrap()
        .agent_signing_key()
        .public();
    assert_eq!(listed[0]["name"], "bot");
    assert_eq!(
        listed[0]["signing_key"],
        bot_key.as_str(),
        "add-agent gives the key"
    );
    make_old_agent(&w, "bot");
    make_old_agent(&w, "eve");
    assert!(w.env.json(&["list-agents"])[0]["signing_key"].is_null());
    // The old agent cannot mint; the broker refuses one minted anyway.
    let bot = w.bot.to_str().unwrap();
    let err = w.env.fail(&["token", "issue", "bot", "--key", bot]);
    assert!(err.contains("upgrade-agent --agent bot"), "{err}");
    let old = hand_mint(&w.bot, &vid, &claims("bot", 300, &[]));
    // The broker follows the vault: it refuses once it has read the change.
    let mut status = String::new();
    wait_until(Duration::from_secs(5), || {
        status = w.status("bot", &old, "/v1/old");
        status == "407"
    });
    assert_eq!(status, "407");
    let out = w.connect("bot", &old);
    assert!(out.contains("no signing key"), "{out}");
    // An owner's token still works for it.
    assert_eq!(
        w.status("bot", &World::token(&w.issue(&["bot"])), "/v1/owner"),
        "200"
    );

    // Only the agent named.
    let v = w.env.json(&["upgrade-agent", "--agent", "bot"]);
    assert_eq!(v["upgraded"], serde_json::json!(["bot"]));
    let listed = w.env.json(&["list-agents"]);
    assert_eq!(listed[0]["signing_key"], bot_key.as_str());
    assert!(listed[1]["signing_key"].is_null());
    // The manifest still verifies (for the agent's machine too) and the
    // commit holds exactly the signed manifest change.
    let out = w
        .env
        .run(&["list-agents", "--key", w.eve.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let log = w.env.git(&["log", "-1", "--name-only", "--format=%s"]);
    assert!(log.contains("upgrade agent signing keys bot"), "{log}");
    assert!(
        log.contains("manifest.yaml") && log.contains("manifest.sig"),
        "{log}"
    );
    let t = World::token(&w.issue(&["bot", "--key", bot]));
    // The broker follows the vault: the token works once it has read the change.
    let mut status = String::new();
    wait_until(Duration::from_secs(5), || {
        status = w.status("bot", &t, "/v1/upgraded");
        status == "200"
    });
    assert_eq!(status, "200");
    // The token minted before the upgrade, with the same key, verifies now.
    assert_eq!(w.status("bot", &old, "/v1/old-now"), "200");
    // The rest, then nothing left to do.
    let v = w.env.json(&["upgrade-agent"]);
    assert_eq!(v["upgraded"], serde_json::json!(["eve"]));
    let out = String::from_utf8(w.env.ok(&["upgrade-agent"]).stdout).unwrap();
    assert!(
        out.contains("every agent has a token-signing key already"),
        "{out}"
    );
    let err = w.env.fail(&["upgrade-agent", "--agent", "ghost"]);
    assert!(err.contains("ghost"), "{err}");
    // A key given back by recover-agent is a new signing key: tokens of the old one stop.
    w.env.ok(&["recover-agent", "bot"]);
    let mut status = String::new();
    wait_until(Duration::from_secs(5), || {
        status = w.status("bot", &old, "/v1/recovered");
        status == "407"
    });
    assert_eq!(status, "407");
}

/// The MCP server over stdio, as a client drives it.
struct Mcp {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    next: u64,
}

impl Mcp {
    fn start(env: &Env, args: &[&str], token: Option<&str>) -> Mcp {
        let mut cmd = env.cmd(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env_remove("AGENT_VAULT_TOKEN");
        if let Some(t) = token {
            cmd.env("AGENT_VAULT_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut m = Mcp {
            child,
            stdin,
            lines,
            next: 1,
        };
        m.call(
            "initialize",
            serde_json::json!({"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}),
        );
        writeln!(
            m.stdin,
            r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
        )
        .unwrap();
        m
    }

    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next;
        self.next += 1;
        let msg = serde_json::json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
        writeln!(self.stdin, "{msg}").unwrap();
        loop {
            let l = self.lines.next().expect("mcp reply").unwrap();
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }

    /// `agent_vault_request` GET `url`: (is_error, text).
    fn request(&mut self, url: &str) -> (bool, String) {
        let r = self.call(
            "tools/call",
            serde_json::json!({"name":"agent_vault_request","arguments":{"method":"GET","url":url}}),
        );
        let text = r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        (r["result"]["isError"] == true, text)
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_mcp_server_mints_and_renews_its_own_tokens() {
    // Tokens live 3 s at most in this vault.
    let w = world(Some(3));
    let _away = w.owner_away();
    let broker = format!("127.0.0.1:{}", w.port);
    let bot = w.bot.to_str().unwrap();
    let mut mcp = Mcp::start(&w.env, &["--key", bot, "mcp", "--broker", &broker], None);
    let mut seen = Vec::new();
    // Requests over 8 s: the first token is long expired by the end.
    for i in 0..5 {
        let (err, text) = mcp.request(&w.url(&format!("/v1/mcp{i}")));
        assert!(!err, "request {i}: {text}");
        let resp: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(resp["status"], 200, "{text}");
        assert!(!text.contains(VALUE), "{text}");
        seen.push(i);
        std::thread::sleep(Duration::from_millis(2000));
    }
    assert_eq!(seen.len(), 5);
    let saw = w.upstream_saw();
    assert_eq!(saw.matches(&format!("Bearer {VALUE}")).count(), 5, "{saw}");
    // More than one token was used: it renewed.
    let audit = std::fs::read_to_string(&w.audit).unwrap();
    let ids: std::collections::BTreeSet<String> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["token_id"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.len() >= 3, "{ids:?}");
    drop(mcp);

    // A pasted token is used as given (and not renewed): once it expires,
    // the request tool says so.
    let pasted = hand_mint(&w.bot, &w.env.vault_id(), &claims("bot", 2, &[]));
    let mut mcp = Mcp::start(
        &w.env,
        &["--key", bot, "mcp", "--broker", &broker],
        Some(&pasted),
    );
    let (err, text) = mcp.request(&w.url("/v1/pasted"));
    assert!(!err, "{text}");
    std::thread::sleep(Duration::from_millis(2500));
    let (err, text) = mcp.request(&w.url("/v1/pasted-late"));
    assert!(err && text.contains("407"), "{text}");
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
