//! Issue 13, item 5: the admin listener (`proxy --admin`): `GET /healthz`,
//! and `GET /metrics` in the Prometheus text format, read by the Prometheus
//! project's own Python parser, its counters moving as curl's requests go
//! through the broker, and never a value or a token in it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::broker::{Proc, upstream, wait_until};
use crate::harness::*;

const VALUE: &str = "tok_METRICS_VALUE_77";

struct Setup {
    env: Env,
    _upstream: Proc,
    up_port: u16,
    broker_ca: PathBuf,
    _broker: Proc,
    port: u16,
    /// The admin listener's address, as the broker printed it.
    admin: String,
    token: String,
}

/// Starts `agent-vault proxy --listen 127.0.0.1:0 ARGS`; returns it, its
/// port, and the admin address it printed (if it printed one).
fn start(env: &Env, args: &[&str]) -> (Proc, u16, Option<String>) {
    let mut child = env
        .cmd(&[&["proxy", "--listen", "127.0.0.1:0"], args].concat())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("agent-vault: broker listening on 127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("broker did not start: {line}"));
    let admin = args.contains(&"--admin").then(|| {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line.strip_prefix("agent-vault: admin listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no admin address: {line}"))
            .to_owned()
    });
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
    });
    (Proc(child), port, admin)
}

/// `api`: GET under /v1 on the echo upstream (which echoes the
/// `Authorization` it gets in a header and in its body), injecting
/// `api/token`. The broker with `--admin 127.0.0.1:0`.
fn setup() -> Setup {
    let env = Env::new();
    let (up, up_port, upstream_ca, _log) = upstream(env.tmp.path());
    env.set("api/token", VALUE.as_bytes());
    env.add_agent("bot");
    env.ok(&["grant", "bot", "api", "--mode", "use"]);
    env.ok(&["broker", "init"]);
    let host = format!("127.0.0.1:{up_port}");
    env.ok(&[
        "service",
        "add",
        "api",
        "--bearer",
        "api/token",
        "--host",
        &host,
        "--method",
        "GET",
        "--path",
        "/v1",
    ]);
    let broker_ca = env.broker_ca();
    let audit = env.tmp.path().join("audit.jsonl");
    let (broker, port, admin) = start(
        &env,
        &[
            "--allow-private-upstreams",
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
            "--audit",
            audit.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let token = env.json(&["token", "issue", "bot", "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    Setup {
        env,
        _upstream: up,
        up_port,
        broker_ca,
        _broker: broker,
        port,
        admin: admin.unwrap(),
        token,
    }
}

/// One plain HTTP/1.1 request; the status, the head and the body.
fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {out:?}"));
    (status, head.to_owned(), body.to_owned())
}

impl Setup {
    fn api(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.up_port)
    }

    /// curl through the broker, with this token; stdout with the head.
    fn curl(&self, token: &str, url: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-D", "-", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", self.port))
            .args(["--cacert", self.broker_ca.to_str().unwrap()])
            .args(["--proxy-user", &format!("bot:{token}")])
            .arg(url)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// /metrics, parsed by `prometheus_client`: its samples. No value and
    /// no token is anywhere in the page.
    fn scrape(&self) -> Vec<Value> {
        let (status, head, text) = http(&self.admin, "GET", "/metrics");
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(!text.contains(VALUE), "a value in /metrics:\n{text}");
        assert!(!text.contains(&self.token), "a token in /metrics");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/metrics_parse.py");
        let mut py = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = py.wait_with_output().unwrap();
        assert!(out.status.success(), "prometheus_client refused:\n{text}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits (a few seconds at most) until `done` holds of a scrape; the
    /// last scrape.
    fn scrape_until(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut last = self.scrape();
        wait_until(Duration::from_secs(5), || {
            last = self.scrape();
            done(&last)
        });
        last
    }
}

/// The sum of the samples named `name` whose labels include `labels`.
fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

#[test]
fn healthz_and_metrics_on_the_admin_listener_only() {
    let s = setup();
    let (status, head, body) = http(&s.admin, "GET", "/healthz");
    assert_eq!(status, 200, "{head}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    // Only those two paths, and only GET.
    assert_eq!(http(&s.admin, "GET", "/").0, 404);
    assert_eq!(http(&s.admin, "GET", "/metrics/x").0, 404);
    let (status, head, _) = http(&s.admin, "POST", "/metrics");
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");
    // The Python parser reads the page; the service's and the reasons'
    // series are there at 0 from the start.
    let samples = s.scrape();
    let families: Vec<&str> = samples
        .iter()
        .filter_map(|s| s["family"].as_str())
        .collect();
    for f in [
        "agent_vault_leaves_minted",
        "agent_vault_audit_records_written",
        "agent_vault_upstream_latency_seconds",
    ] {
        assert!(families.contains(&f), "{f} missing: {families:?}");
    }
    let zero = |name: &str, labels: &[(&str, &str)]| {
        let found = samples
            .iter()
            .any(|x| x["name"] == name && labels.iter().all(|(k, v)| x["labels"][*k] == *v));
        assert!(found, "no {name} {labels:?}");
        assert_eq!(value(&samples, name, labels), 0.0);
    };
    zero(
        "agent_vault_refusals_total",
        &[("reason", "host-not-covered")],
    );
    zero("agent_vault_token_failures_total", &[("kind", "expired")]);
    zero("agent_vault_scrubbed_total", &[("service", "api")]);
    zero(
        "agent_vault_upstream_latency_seconds_count",
        &[("service", "api")],
    );
    // The proxy's listener serves no metrics, with a token or without.
    let proxy = format!("127.0.0.1:{}", s.port);
    let (status, _, body) = http(&proxy, "GET", "/metrics");
    assert_ne!(status, 200);
    assert!(!body.contains("agent_vault_"), "{body}");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*", "-D", "-"])
        .args(["--proxy-user", &format!("bot:{}", s.token)])
        .arg(format!("http://{proxy}/metrics"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.starts_with("HTTP/1.1 200") && !out.contains("agent_vault_"),
        "{out}"
    );
    // And the admin listener is no proxy.
    let (status, _, _) = http(&s.admin, "CONNECT", &format!("127.0.0.1:{}", s.up_port));
    assert_eq!(status, 404);
}

#[test]
fn the_admin_listener_binds_only_where_told() {
    let env = Env::new();
    env.ok(&["broker", "init"]);
    // 127.0.0.2 is loopback too, but another address than 127.0.0.1.
    let (_broker, _, admin) = start(&env, &["--admin", "127.0.0.2:0"]);
    let admin = admin.unwrap();
    assert!(admin.starts_with("127.0.0.2:"), "{admin}");
    assert_eq!(http(&admin, "GET", "/healthz").0, 200);
    let port = admin.rsplit(':').next().unwrap();
    assert!(TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
    // Without --admin, no admin listener is started and none is printed.
    let (_broker, port, admin) = start(&env, &[]);
    assert!(admin.is_none());
    assert_ne!(http(&format!("127.0.0.1:{port}"), "GET", "/healthz").0, 200);
    // An address that is no HOST:PORT is refused at start.
    let err = env.fail(&["proxy", "--listen", "127.0.0.1:0", "--admin", "localhost"]);
    assert!(
        err.contains("--admin \"localhost\" is not HOST:PORT"),
        "{err}"
    );
}

#[test]
fn counters_move_as_requests_go_through_and_hold_no_value() {
    let s = setup();
    let requests = |m: &[Value]| {
        value(
            m,
            "agent_vault_requests_total",
            &[("service", "api"), ("status", "200")],
        )
    };
    let before = s.scrape();
    // A brokered request: injected, answered, its echo of the value scrubbed
    // (in a header and in the body).
    let out = s.curl(&s.token, &s.api("/v1/x"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("[REDACTED:api/token]") && !out.contains(VALUE),
        "{out}"
    );
    let after = s.scrape_until(|m| requests(m) == requests(&before) + 1.0);
    assert_eq!(requests(&after), requests(&before) + 1.0);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        moved("agent_vault_injections_total", &[("secret", "api/token")]),
        1.0
    );
    assert_eq!(
        moved(
            "agent_vault_upstream_latency_seconds_count",
            &[("service", "api")]
        ),
        1.0
    );
    assert!(
        moved(
            "agent_vault_upstream_latency_seconds_sum",
            &[("service", "api")]
        ) > 0.0
    );
    assert_eq!(
        moved("agent_vault_scrubbed_total", &[("service", "api")]),
        2.0,
        "X-Echo-Auth and the body each held the value once"
    );
    assert_eq!(moved("agent_vault_audit_records_written_total", &[]), 1.0);
    assert_eq!(moved("agent_vault_audit_records_dropped_total", &[]), 0.0);
    assert!(value(&after, "agent_vault_leaves_minted_total", &[]) >= 1.0);

    // Refusals: a path the service does not cover, a host no service
    // covers; counted by reason, and nothing the agent sent is a label.
    let before = after;
    let out = s.curl(&s.token, &s.api("/v2/agent-sent-path"));
    assert!(out.contains("agent-vault-error: path-not-allowed"), "{out}");
    let _ = s.curl(&s.token, "https://agent-sent-host.invalid/");
    let refusals =
        |m: &[Value], reason: &str| value(m, "agent_vault_refusals_total", &[("reason", reason)]);
    let after = s.scrape_until(|m| refusals(m, "host-not-covered") == 1.0);
    assert_eq!(
        refusals(&after, "path-not-allowed") - refusals(&before, "path-not-allowed"),
        1.0
    );
    assert_eq!(refusals(&after, "host-not-covered"), 1.0);
    assert_eq!(requests(&after), requests(&before), "no request brokered");
    let (_, _, text) = http(&s.admin, "GET", "/metrics");
    assert!(
        !text.contains("agent-sent-host") && !text.contains("agent-sent-path"),
        "{text}"
    );

    // A bad token: a token failure, by kind, and a refusal with its reason.
    let before = after;
    let failures = |m: &[Value]| value(m, "agent_vault_token_failures_total", &[]);
    let forged = format!("{}x", s.token);
    let out = s.curl(&forged, &s.api("/v1/x"));
    assert!(!out.contains(VALUE));
    let after = s.scrape_until(|m| failures(m) == failures(&before) + 1.0);
    assert_eq!(failures(&after), failures(&before) + 1.0);
    let token_refusals = |m: &[Value]| {
        m.iter()
            .filter(|x| x["name"] == "agent_vault_refusals_total")
            .filter(|x| {
                x["labels"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("token-"))
            })
            .map(|x| x["value"].as_f64().unwrap())
            .sum::<f64>()
    };
    assert_eq!(token_refusals(&after), token_refusals(&before) + 1.0);
    let (_, _, text) = http(&s.admin, "GET", "/metrics");
    assert!(!text.contains(&forged) && !text.contains(VALUE));
    // The values in the vault are nowhere in the page, whole or in part.
    let value_in_vault = String::from_utf8(s.env.get("api/token")).unwrap();
    assert!(!text.contains(value_in_vault.trim()));
}
