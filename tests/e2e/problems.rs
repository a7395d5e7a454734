//! Issue 13, items 1 and 2: what the broker says when it answers itself
//! (problem+json with a stable `type` and an `agent-vault-error` header, as
//! curl, Python `requests` and Node see it), every such answer audited
//! (`audit --denied`), and `explain` agreeing with the broker.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::broker::{Proc, start_broker_with, upstream};
use crate::harness::*;

const TYPE: &str = "urn:agent-vault:problem:";
const VALUE: &str = "tok_PROBLEM_VALUE_42";

struct Setup {
    env: Env,
    _upstream: Proc,
    up_port: u16,
    /// A port nothing listens on, which the service `dead` names.
    dead_port: u16,
    broker_ca: PathBuf,
    audit: PathBuf,
    _broker: Proc,
    port: u16,
    token: String,
}

/// `api`: GET and POST under /v1 on the echo upstream, injecting
/// `api/token`; `dead`: a port nothing listens on. `bot` may use `api`;
/// `nobody` holds no grant.
fn setup() -> Setup {
    let env = Env::new();
    let (up, up_port, upstream_ca, _log) = upstream(env.tmp.path());
    let dead_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.set("api/token", VALUE.as_bytes());
    env.add_agent("bot");
    env.add_agent("nobody");
    env.ok(&["grant", "bot", "api", "--mode", "use"]);
    env.ok(&["broker", "init"]);
    let (api_host, dead_host) = (
        format!("127.0.0.1:{up_port}"),
        format!("127.0.0.1:{dead_port}"),
    );
    env.ok(&[
        "service",
        "add",
        "api",
        "--bearer",
        "api/token",
        "--host",
        &api_host,
        "--method",
        "GET",
        "--method",
        "POST",
        "--path",
        "/v1",
    ]);
    env.ok(&[
        "service",
        "add",
        "dead",
        "--passthrough",
        "--host",
        &dead_host,
    ]);
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
    let token = env.json(&["token", "issue", "bot", "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    Setup {
        env,
        _upstream: up,
        up_port,
        dead_port,
        broker_ca,
        audit,
        _broker: broker,
        port,
        token,
    }
}

impl Setup {
    fn api(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.up_port)
    }

    /// curl through the broker; stdout (with the response head, `-D -`)
    /// and stderr (`-v`: the CONNECT's head too).
    fn curl(&self, token: Option<&str>, extra: &[&str], url: &str) -> (String, String) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-v", "--max-time", "10", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", self.port))
            .args(["--cacert", self.broker_ca.to_str().unwrap(), "-D", "-"]);
        if let Some(t) = token {
            c.args(["--proxy-user", &format!("bot:{t}")]);
        }
        let out = c.args(extra).arg(url).output().expect("curl");
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(!o.contains(VALUE) && !e.contains(VALUE) && !o.contains(&self.token));
        (o, e)
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit).unwrap_or_default()
    }
}

/// The problem+json body at the end of curl's `-D -` output.
fn body_of(curl_out: &str) -> Value {
    let body = curl_out.rsplit("\r\n\r\n").next().unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {curl_out}"))
}

#[test]
fn curl_sees_the_problem_of_each_refusal() {
    let s = setup();
    let t = Some(s.token.as_str());
    // A host no service covers: the CONNECT is refused; curl drops the
    // body of a failed CONNECT but shows its head with -v.
    let (out, err) = s.curl(t, &[], "https://nowhere.example.invalid/");
    let both = format!("{out}{err}");
    assert!(
        both.contains("agent-vault-error: host-not-covered"),
        "{both}"
    );
    assert!(both.contains("agent-vault service add"), "{both}");
    // No token, then a forged one (CONNECT: the header; plain http: the body).
    let (out, err) = s.curl(None, &[], &s.api("/v1/x"));
    assert!(
        format!("{out}{err}").contains("agent-vault-error: token-missing"),
        "{out}{err}"
    );
    let plain = format!("http://127.0.0.1:{}/v1/x", s.up_port);
    let (out, _) = s.curl(None, &[], &plain);
    assert!(out.starts_with("HTTP/1.1 407"), "{out}");
    assert_eq!(body_of(&out)["type"], format!("{TYPE}token-missing"));
    let (out, _) = s.curl(Some("avt1.e30.AAAA"), &[], &plain);
    assert!(
        body_of(&out)["type"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{TYPE}token-")),
        "{out}"
    );
    // Plain http to a service that does not allow it.
    let (out, _) = s.curl(t, &[], &plain);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{out}"
    );
    let p = body_of(&out);
    assert_eq!(p["type"], format!("{TYPE}plain-http-not-allowed"));
    assert_eq!(p["status"], 403);
    assert!(
        p["detail"].as_str().unwrap().contains("--allow-http"),
        "{p}"
    );
    // Inside the tunnel: a method, then a path, the service does not allow.
    let (out, _) = s.curl(t, &["-X", "DELETE"], &s.api("/v1/x"));
    assert!(
        out.contains("agent-vault-error: method-not-allowed"),
        "{out}"
    );
    let p = body_of(&out);
    assert_eq!(p["type"], format!("{TYPE}method-not-allowed"));
    assert_eq!(p["title"], "Method not allowed by the service");
    assert!(
        p["detail"].as_str().unwrap().contains("--method DELETE"),
        "{p}"
    );
    let (out, _) = s.curl(t, &[], &s.api("/v2/x?secret=q"));
    assert_eq!(body_of(&out)["type"], format!("{TYPE}path-not-allowed"));
    // The upstream fails: 502, told apart from the upstream's own answers.
    let (out, _) = s.curl(t, &[], &format!("https://127.0.0.1:{}/", s.dead_port));
    assert!(
        out.starts_with("HTTP/1.1 200")
            && (out.contains("HTTP/1.1 502") || out.contains("HTTP/2 502")),
        "{out}"
    );
    assert_eq!(body_of(&out)["type"], format!("{TYPE}upstream-unreachable"));
    // What the upstream answers itself carries no such header.
    let (out, _) = s.curl(t, &[], &s.api("/v1/ok"));
    assert!(
        out.contains("HTTP/1.1 200") && !out.contains("agent-vault-error"),
        "{out}"
    );
}

#[test]
fn python_requests_sees_the_problem_of_each_refusal() {
    let s = setup();
    let script = r#"
import json, os, requests
e = os.environ
proxy = 'http://bot:%s@127.0.0.1:%s' % (e['TOKEN'], e['PORT'])
proxies = {'https': proxy, 'http': proxy}
out = {}
try:
    requests.get('https://nowhere.example.invalid/', proxies=proxies, timeout=10)
    out['connect'] = 'no error'
except requests.exceptions.ProxyError as err:
    out['connect'] = str(err)
def problem(r):
    return [r.status_code, r.headers.get('agent-vault-error'), r.headers.get('content-type'), r.json()['type']]
up = e['UP']
out['method'] = problem(requests.delete('https://127.0.0.1:%s/v1/x' % up, proxies=proxies, verify=e['CA'], timeout=10))
out['plain'] = problem(requests.get('http://127.0.0.1:%s/v1/x' % up, proxies=proxies, timeout=10))
bad = 'http://bot:avt1.e30.AAAA@127.0.0.1:%s' % e['PORT']
out['token'] = problem(requests.get('http://127.0.0.1:%s/v1/x' % up, proxies={'http': bad}, timeout=10))
out['upstream'] = problem(requests.get('https://127.0.0.1:%s/' % e['DEAD'], proxies=proxies, verify=e['CA'], timeout=10))
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .env("TOKEN", &s.token)
        .env("PORT", s.port.to_string())
        .env("UP", s.up_port.to_string())
        .env("DEAD", s.dead_port.to_string())
        .env("CA", &s.broker_ca)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(!text.contains(VALUE) && !text.contains(&s.token), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    // requests drops the body of a failed CONNECT, but shows the status
    // line: the detail and reason are there.
    let connect = v["connect"].as_str().unwrap();
    assert!(
        connect.contains("403") && connect.contains("agent-vault-error: host-not-covered"),
        "{connect}"
    );
    let problem = "application/problem+json";
    let expect = |key: &str, status: u16, reason: &str| {
        assert_eq!(
            v[key],
            serde_json::json!([status, reason, problem, format!("{TYPE}{reason}")]),
            "{key}"
        );
    };
    expect("method", 403, "method-not-allowed");
    expect("plain", 403, "plain-http-not-allowed");
    expect("token", 407, "token-invalid");
    expect("upstream", 502, "upstream-unreachable");
}

#[test]
fn node_sees_the_problem_of_each_refusal() {
    let modules = node_modules();
    let s = setup();
    let script = r#"
const fs = require('fs');
const http = require('http');
const { ProxyAgent } = require('undici');
const e = process.env;
const auth = 'Basic ' + Buffer.from('bot:' + e.TOKEN).toString('base64');
const dispatcher = new ProxyAgent({
  uri: 'http://127.0.0.1:' + e.PORT, token: auth, requestTls: { ca: fs.readFileSync(e.CA) },
});
// Node's own http client hands over the socket of a refused CONNECT, body included.
function connect(authority) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: e.PORT, method: 'CONNECT', path: authority,
                               headers: { 'Proxy-Authorization': auth } });
    req.on('connect', (res, socket, head) => {
      let body = head;
      const len = Number(res.headers['content-length']);
      const done = () => { socket.destroy(); resolve([res.statusCode, res.headers['agent-vault-error'], JSON.parse(body.toString()).type]); };
      if (body.length >= len) return done();
      socket.on('data', (d) => { body = Buffer.concat([body, d]); if (body.length >= len) done(); });
    });
    req.on('error', reject);
    req.end();
  });
}
// An absolute-form http:// request to the proxy.
function plain(url) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: e.PORT, method: 'GET', path: url,
                               headers: { 'Proxy-Authorization': auth } }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve([res.statusCode, res.headers['agent-vault-error'], JSON.parse(body).type]));
    });
    req.on('error', reject);
    req.end();
  });
}
async function viaFetch(url, method) {
  const r = await fetch(url, { method, dispatcher });
  return [r.status, r.headers.get('agent-vault-error'), (await r.json()).type];
}
(async () => {
  const out = {};
  out.connect = await connect('nowhere.example.invalid:443');
  try { await fetch('https://nowhere.example.invalid/', { dispatcher }); out.undici = 'no error'; }
  catch (err) { out.undici = String(err.cause || err); }
  out.method = await viaFetch('https://127.0.0.1:' + e.UP + '/v1/x', 'DELETE');
  out.plain = await plain('http://127.0.0.1:' + e.UP + '/v1/x');
  out.upstream = await viaFetch('https://127.0.0.1:' + e.DEAD + '/', 'GET');
  console.log(JSON.stringify(out));
})().catch((err) => { console.error(err); process.exit(1); });
"#;
    let out = Command::new("node")
        .args(["-e", script])
        .env("NODE_PATH", &modules)
        .env("TOKEN", &s.token)
        .env("PORT", s.port.to_string())
        .env("UP", s.up_port.to_string())
        .env("DEAD", s.dead_port.to_string())
        .env("CA", &s.broker_ca)
        .output()
        .expect("node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(!text.contains(VALUE) && !text.contains(&s.token), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let expect = |key: &str, status: u16, reason: &str| {
        assert_eq!(
            v[key],
            serde_json::json!([status, reason, format!("{TYPE}{reason}")]),
            "{key}: {text}"
        );
    };
    expect("connect", 403, "host-not-covered");
    expect("method", 403, "method-not-allowed");
    expect("plain", 403, "plain-http-not-allowed");
    expect("upstream", 502, "upstream-unreachable");
    // undici 6's ProxyAgent throws away a refused CONNECT's answer ("Request
    // was cancelled"): it fails, and Node's own client above shows the problem.
    assert_ne!(v["undici"], "no error", "{text}");
}

#[test]
fn refusals_are_audited_and_counted() {
    let s = setup();
    let t = Some(s.token.as_str());
    for _ in 0..3 {
        s.curl(t, &[], "https://nowhere.example.invalid/");
    }
    s.curl(t, &[], "https://other.example.invalid:8443/");
    s.curl(t, &["-X", "DELETE"], &s.api("/v1/x?q=secret-query"));
    s.curl(None, &[], &s.api("/v1/x"));
    s.curl(t, &[], &s.api("/v1/ok"));
    let log = s.audit_text();
    assert!(!log.contains(VALUE) && !log.contains(&s.token), "{log}");
    assert!(
        !log.contains("secret-query"),
        "a path is audited without its query: {log}"
    );
    let records = s.env.json(&["audit", s.audit.to_str().unwrap()]);
    let records = records.as_array().unwrap();
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("reason").is_some())
        .collect();
    assert_eq!(refused.len(), 6, "{log}");
    // A refused CONNECT: agent, token id, host, port, method, reason.
    let connect = refused
        .iter()
        .find(|r| r["host"] == "other.example.invalid")
        .unwrap();
    assert_eq!(connect["agent"], "bot");
    assert!(!connect["token_id"].as_str().unwrap().is_empty());
    assert_eq!(connect["port"], 8443);
    assert_eq!(connect["method"], "CONNECT");
    assert_eq!(connect["status"], 403);
    assert_eq!(connect["reason"], "host-not-covered");
    // A refusal inside the tunnel: method and path (no query), the service unmatched.
    let inside = refused
        .iter()
        .find(|r| r["reason"] == "method-not-allowed")
        .unwrap();
    assert_eq!(
        (inside["method"].as_str(), inside["path"].as_str()),
        (Some("DELETE"), Some("/v1/x"))
    );
    assert_eq!(inside["port"], s.up_port);
    // No token: no agent claimed.
    let no_token = refused
        .iter()
        .find(|r| r["reason"] == "token-missing")
        .unwrap();
    assert_eq!(no_token["agent"], "");
    // The brokered request: no reason.
    assert!(
        records
            .iter()
            .any(|r| r["status"] == 200 && r.get("reason").is_none())
    );

    let denied = s
        .env
        .json(&["audit", s.audit.to_str().unwrap(), "--denied"]);
    let rows = denied.as_array().unwrap();
    assert_eq!(rows[0]["host"], "nowhere.example.invalid", "{denied}");
    assert_eq!(rows[0]["reason"], "host-not-covered");
    assert_eq!(rows[0]["count"], 3);
    assert_eq!(rows[0]["agents"], serde_json::json!(["bot"]));
    let other = rows
        .iter()
        .find(|r| r["host"] == "other.example.invalid:8443")
        .unwrap();
    assert_eq!(other["count"], 1);
    let api = format!("127.0.0.1:{}", s.up_port);
    assert!(
        rows.iter()
            .any(|r| r["host"] == api.as_str() && r["reason"] == "method-not-allowed")
    );
    assert_eq!(rows.len(), 4, "{denied}");
    let text = String::from_utf8_lossy(
        &s.env
            .ok(&["audit", s.audit.to_str().unwrap(), "--denied"])
            .stdout,
    )
    .into_owned();
    assert!(
        text.lines()
            .next()
            .unwrap()
            .trim_start()
            .starts_with("3  nowhere.example.invalid  host-not-covered (403)"),
        "{text}"
    );
}

#[test]
fn explain_says_what_the_broker_does() {
    let s = setup();
    let explain = |agent: &str, method: &str, url: &str| -> (bool, Value) {
        let out = s
            .env
            .run(&["explain", "--agent", agent, method, url, "--json"], b"");
        let v: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        assert_eq!(out.status.success(), v["allowed"] == true, "{v}");
        (out.status.success(), v)
    };
    let (ok, v) = explain("bot", "GET", &s.api("/v1/a/../b?x=1"));
    assert!(ok, "{v}");
    assert_eq!(v["service"], "api");
    assert_eq!(v["path"], "/v1/b?x=1");
    assert_eq!(v["secrets"], serde_json::json!(["api/token"]));
    let (ok, v) = explain("bot", "GET", "https://nowhere.example.invalid/");
    assert!(!ok);
    assert_eq!(v["reason"], "host-not-covered");
    assert_eq!(v["type"], format!("{TYPE}host-not-covered"));
    assert_eq!(v["status"], 403);
    let (_, v) = explain("bot", "DELETE", &s.api("/v1/x"));
    assert_eq!(v["reason"], "method-not-allowed");
    assert!(
        v["detail"].as_str().unwrap().contains("api: GET, POST"),
        "{v}"
    );
    let (_, v) = explain("nobody", "GET", &s.api("/v1/x"));
    assert_eq!(v["reason"], "not-granted");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("agent-vault grant nobody api --mode use"),
        "{v}"
    );
    // A token limited to another service.
    let out = s.env.run(
        &[
            "explain",
            "--agent",
            "bot",
            "--service",
            "dead",
            "GET",
            &s.api("/v1/x"),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("403 host-not-covered") && text.contains("--service api"),
        "{text}"
    );
    // The text form.
    let out = s
        .env
        .ok(&["explain", "--agent", "bot", "POST", &s.api("/v1/x")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("allowed: POST") && text.contains("secrets: api/token"),
        "{text}"
    );
    assert!(
        s.env
            .fail(&["explain", "--agent", "ghost", "GET", &s.api("/")])
            .contains("no agent ghost")
    );
    assert!(
        s.env
            .fail(&["explain", "--agent", "bot", "GET", "ftp://x/"])
            .contains("https://")
    );

    // Explain and the broker agree, request by request.
    let cases = [
        ("GET", s.api("/v1/x")),
        ("POST", s.api("/v1/")),
        ("DELETE", s.api("/v1/x")),
        ("GET", s.api("/v2")),
        ("GET", s.api("/v1/%2e%2e/admin")),
        ("GET", format!("http://127.0.0.1:{}/v1/x", s.up_port)),
        ("GET", "https://nowhere.example.invalid/".to_owned()),
    ];
    for (method, url) in &cases {
        let (_, v) = explain("bot", method, url);
        let (out, err) = s.curl(Some(&s.token), &["-X", method, "--path-as-is"], url);
        let both = format!("{out}{err}");
        match v["reason"].as_str() {
            None => assert!(
                !both.contains("agent-vault-error"),
                "{method} {url}: {both}"
            ),
            Some(reason) => assert!(
                both.contains(&format!("agent-vault-error: {reason}")),
                "{method} {url}: explain says {reason}: {both}"
            ),
        }
    }
}
