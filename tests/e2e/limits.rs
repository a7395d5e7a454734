//! Rate limits (issue 13, item 3): per (agent, service) requests per second
//! with a burst and requests in flight, set in the signed services list,
//! enforced by the real broker against real clients (curl, Python
//! `requests` in 50 threads): 429 with `Retry-After` and problem+json,
//! audited, shown by `explain`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::broker::{Proc, start_broker_with, upstream};
use crate::harness::*;

const TYPE: &str = "urn:agent-vault:problem:rate-limited";

struct Setup {
    env: Env,
    _upstream: Proc,
    up_port: u16,
    /// The slow upstream's log: the most requests it had at once.
    most_log: Option<PathBuf>,
    broker_ca: PathBuf,
    audit: PathBuf,
    _broker: Proc,
    port: u16,
}

/// A vault with agents `bot` and `bot2` (both may use `api`), the service
/// `api` on the echo upstream (or, `slow`, on an upstream that holds each
/// request), with the limits `api_limits` (arguments of `service add`).
fn setup(slow: bool, api_limits: &[&str]) -> Setup {
    let env = Env::new();
    let (up, up_port, upstream_ca, most_log) = if slow {
        let (child, mut out, ca, log) = crate::broker::python_tls_upstream(
            env.tmp.path(),
            "slow",
            "slow_server.py",
            "most.log",
            &[("HOLD", "0.2")],
        );
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        (child, line.trim().parse().unwrap(), ca, Some(log))
    } else {
        let (p, port, ca, _log) = upstream(env.tmp.path());
        (p, port, ca, None)
    };
    env.set("api/token", b"tok_LIMITS_VALUE_7");
    env.add_agent("bot");
    env.add_agent("bot2");
    env.ok(&["grant", "bot", "api", "--mode", "use"]);
    env.ok(&["grant", "bot2", "api", "--mode", "use"]);
    env.ok(&["broker", "init"]);
    let host = format!("127.0.0.1:{up_port}");
    let mut add = vec![
        "service",
        "add",
        "api",
        "--bearer",
        "api/token",
        "--host",
        &host,
    ];
    add.extend_from_slice(api_limits);
    env.ok(&add);
    let broker_ca = env.broker_ca();
    let audit = env.tmp.path().join("audit.jsonl");
    let (broker, port) = start_broker_with(
        &env,
        &[
            "--allow-private-upstreams",
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
            "--audit",
            audit.to_str().unwrap(),
        ],
        &[],
    );
    Setup {
        env,
        _upstream: up,
        up_port,
        most_log,
        broker_ca,
        audit,
        _broker: broker,
        port,
    }
}

impl Setup {
    fn token(&self, agent: &str) -> String {
        self.env.json(&["token", "issue", agent, "--ttl", "10m"])["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.up_port)
    }

    /// One curl request through the broker as `agent`: the status, and
    /// the response head and body (`-D -`).
    fn curl(&self, token: &str, agent: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", self.port))
            .args(["--proxy-user", &format!("{agent}:{token}")])
            .args(["--cacert", self.broker_ca.to_str().unwrap(), "-D", "-"])
            .args(["-w", "\n%{http_code}"])
            .arg(self.url("/x"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!text.contains("tok_LIMITS_VALUE_7"), "{text}");
        let (head_body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap_or(0), head_body.to_owned())
    }

    /// 50 Python clients at once (`retry`: each until it gets through).
    fn python_clients(&self, token: &str, n: usize, retry: bool) -> Value {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/limits_client.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(format!("http://bot:{token}@127.0.0.1:{}", self.port))
            .arg(&self.broker_ca)
            .arg(self.url("/x"))
            .arg(n.to_string())
            .env("RETRY", if retry { "1" } else { "0" })
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", stderr(&out));
        assert!(!text.contains("tok_LIMITS_VALUE_7"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["errors"], serde_json::json!([]), "{v}");
        v
    }
}

fn count(v: &Value, status: u64) -> usize {
    v["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.as_u64() == Some(status))
        .count()
}

/// The body after curl's `-D -` head.
fn body_of(out: &str) -> Value {
    let body = out.rsplit("\r\n\r\n").next().unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn a_burst_over_the_limit_gets_429_with_retry_after_and_is_audited() {
    // One request per 10 s refills: the burst is all there is in the test.
    let s = setup(false, &["--rps", "0.1", "--burst", "3"]);
    let token = s.token("bot");
    for i in 0..3 {
        let (code, out) = s.curl(&token, "bot");
        assert_eq!(code, 200, "request {i}: {out}");
    }
    let (code, out) = s.curl(&token, "bot");
    assert_eq!(code, 429, "{out}");
    let head = out.to_ascii_lowercase();
    assert!(head.contains("agent-vault-error: rate-limited"), "{out}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{out}"
    );
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {out}"));
    assert!((1..=10).contains(&retry), "{retry}");
    let p = body_of(&out);
    assert!(p["type"].as_str().unwrap().ends_with("rate-limited"), "{p}");
    assert_eq!(p["status"], 429);
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("0.1 requests/s, burst 3")
            && detail.contains("per agent and service, on each broker instance")
            && detail.contains("`agent-vault service limits api --rps N --burst N`"),
        "{detail}"
    );
    // Audited like any refusal: `audit --denied` counts it.
    let audit = s.audit.to_str().unwrap();
    let denied = s.env.json(&["audit", audit, "--denied"]);
    let row = denied
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "rate-limited")
        .unwrap_or_else(|| panic!("{denied}"));
    assert_eq!(row["count"], 1);
    assert_eq!(row["statuses"], serde_json::json!([429]));
    assert_eq!(row["agents"], serde_json::json!(["bot"]));
    let records = std::fs::read_to_string(&s.audit).unwrap();
    let limited: Value = records
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["reason"] == "rate-limited")
        .unwrap();
    assert_eq!(limited["service"], "api");
    assert_eq!(limited["status"], 429);
    assert!(!records.contains("tok_LIMITS_VALUE_7"));
}

#[test]
fn fifty_concurrent_clients_get_no_more_than_the_bucket_allows() {
    let (rps, burst) = (2.0, 5.0);
    let s = setup(false, &["--rps", "2", "--burst", "5"]);
    let token = s.token("bot");
    let v = s.python_clients(&token, 50, false);
    let (ok, limited) = (count(&v, 200), count(&v, 429));
    let elapsed = v["elapsed"].as_f64().unwrap();
    assert_eq!(ok + limited, 50, "{v}");
    let most = burst + rps * elapsed + 1.0;
    assert!(
        ok as f64 <= most && ok >= burst as usize,
        "{ok} got through in {elapsed:.2} s; at most {most:.1} may: {v}"
    );
    for (retry, ty) in v["retry_after"]
        .as_array()
        .unwrap()
        .iter()
        .zip(v["types"].as_array().unwrap())
    {
        let secs: u64 = retry.as_str().unwrap().parse().unwrap();
        assert!(secs >= 1, "{v}");
        assert_eq!(ty, TYPE);
    }
}

#[test]
fn requests_in_flight_never_exceed_the_limit() {
    let s = setup(true, &["--in-flight", "3"]);
    let token = s.token("bot");
    // Every client retries until it gets through: 50 requests, each held
    // 0.2 s by the upstream (its body streams until then), at most 3 at
    // once.
    let v = s.python_clients(&token, 50, true);
    assert_eq!(count(&v, 200), 50, "{v}");
    assert!(count(&v, 429) > 0, "{v}");
    let most: u32 = std::fs::read_to_string(s.most_log.as_ref().unwrap())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&most), "the upstream saw {most} at once");
    assert!(
        v["retry_after"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r == "1"),
        "{v}"
    );
}

#[test]
fn each_agent_has_its_own_bucket() {
    let s = setup(false, &["--rps", "0.1", "--burst", "2"]);
    let (bot, bot2) = (s.token("bot"), s.token("bot2"));
    assert_eq!(s.curl(&bot, "bot").0, 200);
    assert_eq!(s.curl(&bot, "bot").0, 200);
    assert_eq!(s.curl(&bot, "bot").0, 429);
    // bot2's bucket is full: bot's use does not count against it.
    assert_eq!(s.curl(&bot2, "bot2").0, 200);
    assert_eq!(s.curl(&bot2, "bot2").0, 200);
    assert_eq!(s.curl(&bot2, "bot2").0, 429);
}

#[test]
fn limits_are_set_changed_shown_and_explained() {
    let s = setup(false, &[]);
    let url = s.url("/x");
    let explain = |s: &Setup| {
        let out = s.env.ok(&["explain", "--agent", "bot", "GET", &url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // No limits and no defaults: unlimited.
    assert!(
        explain(&s).contains("limits: none (unlimited)"),
        "{}",
        explain(&s)
    );
    let v = s.env.json(&["explain", "--agent", "bot", "GET", &url]);
    assert_eq!(v["limits"], Value::Null);
    // Vault defaults apply to a service that sets none.
    s.env.ok(&[
        "service",
        "limits",
        "--default",
        "--in-flight",
        "4",
        "--rps",
        "10",
    ]);
    let text = explain(&s);
    assert!(
        text.contains(
            "limits: 10 requests/s, burst 10, 4 in flight, per agent, per broker instance; over it: 429"
        ),
        "{text}"
    );
    // The service's own fields override the defaults one by one.
    s.env
        .ok(&["service", "limits", "api", "--rps", "5", "--burst", "10"]);
    let v = s.env.json(&["explain", "--agent", "bot", "GET", &url]);
    assert_eq!(v["limits"]["rps"], 5.0);
    assert_eq!(v["limits"]["burst"], 10);
    assert_eq!(v["limits"]["in_flight"], 4);
    let shown = s.env.ok(&["service", "limits", "api"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("service api limits: rps 5, burst 10")
            && shown.contains(
                "5 requests/s, burst 10, 4 in flight, per agent (with the vault's defaults)"
            ),
        "{shown}"
    );
    let list = s.env.ok(&["service", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("default limits: rps 10, in_flight 4")
            && list.contains("limits: 5 requests/s, burst 10, 4 in flight"),
        "{list}"
    );
    // Re-adding the service without limit options keeps its limits.
    let host = format!("127.0.0.1:{}", s.up_port);
    let out = s.env.ok(&[
        "service",
        "add",
        "api",
        "--bearer",
        "api/token",
        "--host",
        &host,
    ]);
    assert!(
        stderr(&out).contains("keeps its limits"),
        "{}",
        stderr(&out)
    );
    // Clear both: unlimited again.
    s.env.ok(&["service", "limits", "api", "--clear"]);
    s.env.ok(&["service", "limits", "--default", "--clear"]);
    assert!(explain(&s).contains("limits: none (unlimited)"));
    // Clear errors.
    for (args, why) in [
        (
            &["service", "limits", "api", "--rps", "0"][..],
            "rps must be a number more than 0",
        ),
        (
            &["service", "limits", "api", "--burst", "0", "--rps", "1"],
            "burst must be at least 1",
        ),
        (
            &["service", "limits", "api", "--in-flight", "0"],
            "in_flight must be at least 1",
        ),
        (
            &["service", "limits", "api", "--burst", "4"],
            "burst 4 needs rps",
        ),
        (
            &["service", "limits", "nope", "--rps", "1"],
            "no service nope",
        ),
    ] {
        let err = s.env.fail(args);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    // The broker reads a changed list: a limit set while it runs holds.
    s.env
        .ok(&["service", "limits", "api", "--rps", "0.1", "--burst", "1"]);
    let token = s.token("bot");
    let mut codes = Vec::new();
    crate::broker::wait_until(std::time::Duration::from_secs(10), || {
        codes.push(s.curl(&token, "bot").0);
        codes.ends_with(&[429])
    });
    assert_eq!(codes.last(), Some(&429), "{codes:?}");
}
