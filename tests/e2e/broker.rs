//! The broker, end to end: a real HTTPS upstream (Python, echoing what it
//! gets), the real broker, and clients this project did not write (curl,
//! Python requests).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    env: Env,
    _upstream: Proc,
    up_port: u16,
    upstream_log: PathBuf,
    upstream_ca: PathBuf,
    broker_ca: PathBuf,
    audit: PathBuf,
    _broker: Proc,
    port: u16,
    token: String,
}

/// An HTTPS echo upstream with its own CA, on 127.0.0.1.
pub(crate) fn upstream(dir: &Path) -> (Proc, u16, PathBuf, PathBuf) {
    let (child, mut out, ca_path, log) =
        python_tls_upstream(dir, "up", "echo_server.py", "upstream.log", &[]);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    (child, line.trim().parse().unwrap(), ca_path, log)
}

/// A Python HTTPS upstream (`tests/e2e/SCRIPT CERT KEY LOG`) with a CA of
/// its own, its files named after `name` in `dir`: the process, its
/// standard output (where it says its port), its CA file and its log.
pub(crate) fn python_tls_upstream(
    dir: &Path,
    name: &str,
    script: &str,
    log: &str,
    envs: &[(&str, &str)],
) -> (Proc, BufReader<std::process::ChildStdout>, PathBuf, PathBuf) {
    let (ca, ca_key) = agent_vault_proxy::ca::generate(&format!("{name}-test-ca")).unwrap();
    let minter = agent_vault_proxy::ca::Minter::new(&ca, &ca_key).unwrap();
    let (cert, key) = minter.leaf("127.0.0.1").unwrap();
    let (ca_path, cert_path, key_path, log) = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
        dir.join(log),
    );
    std::fs::write(&ca_path, ca).unwrap();
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e")
        .join(script);
    let mut child = Command::new("python3")
        .arg(script)
        .args([&cert_path, &key_path, &log])
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let out = BufReader::new(child.stdout.take().unwrap());
    (Proc(child), out, ca_path, log)
}

/// Calls `done` every 50 ms until it says yes or `limit` has passed;
/// returns how long that took.
pub(crate) fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Starts `agent-vault proxy` on port 0; returns it and its port.
fn start_broker(env: &Env, extra: &[&str]) -> (Proc, u16) {
    start_broker_with(env, extra, &[])
}

/// Like [`start_broker`], with these environment variables.
pub(crate) fn start_broker_with(env: &Env, extra: &[&str], vars: &[(&str, &str)]) -> (Proc, u16) {
    let mut args = vec!["proxy", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut child = env
        .cmd(&args)
        .envs(vars.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("broker did not start: {line}"));
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
    });
    (Proc(child), port)
}

fn setup() -> Setup {
    let env = Env::new();
    let (up, up_port, upstream_ca, upstream_log) = upstream(env.tmp.path());
    env.set("api/token", b"tok_REAL_VALUE_123");
    env.set("api/user", b"user-1");
    env.set("other/x", b"not-for-bot");
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
        "--substitute",
        "api/user",
    ]);
    let broker_ca = env.broker_ca();
    let audit = env.tmp.path().join("audit.jsonl");
    let (broker, port) = start_broker(
        &env,
        &[
            "--allow-private-upstreams",
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
            "--audit",
            audit.to_str().unwrap(),
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
        upstream_log,
        upstream_ca,
        broker_ca,
        audit,
        _broker: broker,
        port,
        token,
    }
}

impl Setup {
    fn curl(&self, token: Option<&str>, url: &str, extra: &[&str]) -> (String, String) {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "-g",
            "--max-time",
            "10",
            "--proxy",
            &format!("http://127.0.0.1:{}", self.port),
        ]);
        if let Some(t) = token {
            c.args(["--proxy-user", &format!("bot:{t}")]);
        }
        c.args(["--cacert", self.broker_ca.to_str().unwrap(), "-D", "-"]);
        c.args(extra).arg(url);
        let out = c.output().expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.up_port)
    }

    fn upstream_saw(&self) -> String {
        std::fs::read_to_string(&self.upstream_log).unwrap_or_default()
    }

    /// A tunnel held open by Python's http.client (CONNECT once, then
    /// requests on the same TLS connection when asked).
    fn open_tunnel(&self) -> Tunnel {
        let script = format!(
            r#"
import base64, http.client, ssl, sys
ctx = ssl.create_default_context(cafile={ca:?})
c = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx, timeout=10)
auth = base64.b64encode(b"bot:" + {token:?}.encode()).decode()
c.set_tunnel("127.0.0.1", {up}, headers={{"Proxy-Authorization": "Basic " + auth}})
for line in sys.stdin:
    c.request("GET", "/held")
    r = c.getresponse()
    r.read()
    print(r.status, flush=True)
"#,
            ca = self.broker_ca.to_str().unwrap(),
            port = self.port,
            token = self.token,
            up = self.up_port,
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let out = BufReader::new(child.stdout.take().unwrap());
        Tunnel {
            stdin: child.stdin.take(),
            out,
            ok: 0,
            _child: Proc(child),
        }
    }
}

struct Tunnel {
    stdin: Option<std::process::ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
    /// Requests on it answered 200.
    ok: usize,
    _child: Proc,
}

impl Tunnel {
    /// One request on the held connection; its status.
    fn request(&mut self) -> String {
        use std::io::Write;
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let status = line.trim().to_owned();
        self.ok += usize::from(status == "200");
        status
    }
}

#[test]
fn curl_through_the_broker_gets_the_credential_injected_and_never_sees_it() {
    let s = setup();
    let (out, err) = s.curl(
        Some(&s.token),
        &s.url("/v1/echo?q=1"),
        &[
            "-H",
            "Authorization: Bearer agent-made-this-up",
            "-H",
            "X-Who: {{secret:api/user}}",
            "--data",
            "user={{secret:api/user}}&again=tok_REAL_VALUE_123",
        ],
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}{err}");
    // The upstream got the real credential, the substituted value, and not the agent's own.
    let saw = s.upstream_saw();
    assert!(
        saw.contains("Bearer tok_REAL_VALUE_123"),
        "{saw} {out} {err}"
    );
    assert!(!saw.contains("agent-made-this-up"), "{saw}");
    assert!(
        saw.contains("\"x-who\": \"user-1\"") && saw.contains("user=user-1"),
        "{saw}"
    );
    // The echo comes back with every injected value scrubbed, in headers and body.
    assert!(
        !out.contains("tok_REAL_VALUE_123") && !out.contains("user-1"),
        "{out}"
    );
    assert!(
        out.contains("[REDACTED:api/token]") && out.contains("[REDACTED:api/user]"),
        "{out}"
    );
    assert!(
        out.to_lowercase()
            .contains("x-echo-auth: bearer [redacted:api/token]"),
        "{out}"
    );
    // One audit line: names, never values.
    let audit = std::fs::read_to_string(&s.audit).unwrap();
    let line: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(line["agent"], "bot");
    assert_eq!(line["service"], "api");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v1/echo");
    assert_eq!(line["status"], 200);
    assert!(line["bytes_out"].as_u64().unwrap() > 0 && line["bytes_in"].as_u64().unwrap() > 0);
    assert_eq!(
        line["secrets"],
        serde_json::json!(["api/token", "api/user"])
    );
    assert!(!audit.contains("tok_REAL_VALUE_123") && !audit.contains("user-1"));
}

#[test]
fn a_changed_value_reaches_the_running_broker() {
    let s = setup();
    let mut open = s.open_tunnel();
    assert_eq!(open.request(), "200");
    assert!(s.upstream_saw().contains("Bearer tok_REAL_VALUE_123"));
    // The owner rotates the value: the broker injects the new one within
    // moments, on the tunnel already open, and scrubs it too.
    s.env.set("api/token", b"tok_ROTATED_456");
    let took = wait_until(Duration::from_secs(5), || {
        s.upstream_saw().contains("Bearer tok_ROTATED_456") || {
            assert_eq!(open.request(), "200");
            false
        }
    });
    assert!(took < Duration::from_secs(2), "{took:?}");
    let (out, err) = s.curl(Some(&s.token), &s.url("/after-rotation"), &[]);
    assert!(
        out.contains("[REDACTED:api/token]") && !out.contains("tok_ROTATED"),
        "{out}{err}"
    );
}

#[test]
fn tokens_hosts_and_addresses_are_enforced() {
    let s = setup();
    // No token, a forged one: 407.
    let (out, _) = s.curl(None, &s.url("/"), &[]);
    assert!(out.contains("407"), "{out}");
    let (out, _) = s.curl(Some("avt1.e30.AAAA"), &s.url("/"), &[]);
    assert!(out.contains("407"), "{out}");
    // A host no service names: 403 with a reason.
    let (out, err) = s.curl(
        Some(&s.token),
        &format!("https://localhost:{}/", s.up_port),
        &[],
    );
    assert!(out.contains("403") || err.contains("403"), "{out}{err}");
    // A placeholder for a secret the service does not list: refused, not passed on.
    let (out, _) = s.curl(Some(&s.token), &s.url("/{{secret:other/x}}"), &[]);
    assert!(out.contains("403") && out.contains("may not use"), "{out}");
    assert!(!s.upstream_saw().contains("not-for-bot"));
    // Revocation reaches the running broker within moments: on a tunnel
    // already open (Python keeps its connection) and on a new one.
    let mut open = s.open_tunnel();
    assert_eq!(open.request(), "200");
    s.env.ok(&["token", "revoke", "--agent", "bot"]);
    let mut status = String::new();
    let took = wait_until(Duration::from_secs(5), || {
        status = open.request();
        status != "200"
    });
    assert_eq!(
        status, "407",
        "the open tunnel still works after the revocation"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // What was refused never reached the upstream.
    let reached = s.upstream_saw().matches("/held").count();
    assert_eq!(reached, open.ok, "{}", s.upstream_saw());
    let (out, _) = s.curl(Some(&s.token), &s.url("/"), &[]);
    assert!(out.contains("407"), "{out}");
    // Without --allow-private-upstreams, loopback upstreams are refused.
    let (_strict, port) = start_broker(&s.env, &["--upstream-ca", s.upstream_ca.to_str().unwrap()]);
    // (A revocation of the agent covers tokens issued in the same second.)
    std::thread::sleep(Duration::from_millis(1100));
    let token = s.env.json(&["token", "issue", "bot"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--proxy",
            &format!("http://127.0.0.1:{port}"),
            "--proxy-user",
            &format!("bot:{token}"),
        ])
        .args(["--cacert", s.broker_ca.to_str().unwrap(), "-D", "-"])
        .arg(s.url("/"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("403"), "{text}");
}

#[test]
fn server_sent_events_arrive_as_sent() {
    let s = setup();
    let mut child = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--max-time",
            "10",
            "--proxy",
            &format!("http://127.0.0.1:{}", s.port),
        ])
        .args([
            "--proxy-user",
            &format!("bot:{}", s.token),
            "--cacert",
            s.broker_ca.to_str().unwrap(),
        ])
        .arg(s.url("/stream"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut times = Vec::new();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("data:") {
            times.push(start.elapsed());
            lines.push(line);
        }
    }
    let _ = child.wait();
    assert_eq!(lines.len(), 3, "{lines:?}");
    // Each event arrives when it is sent (0.4 s apart), not all at the end.
    assert!(
        times[1] - times[0] > Duration::from_millis(250),
        "{times:?}"
    );
    assert!(
        times[2] - times[1] > Duration::from_millis(250),
        "{times:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("[REDACTED:api/token]") && !l.contains("tok_REAL")),
        "{lines:?}"
    );
}

#[test]
fn python_requests_and_agent_vault_run() {
    let s = setup();
    // `agent-vault run` sets HTTPS_PROXY with a fresh token and the CA variables.
    let script = format!(
        "import os, requests\nr = requests.get('{}', headers={{'Authorization': 'Bearer nope'}})\nprint(r.status_code, r.headers.get('X-Echo-Auth'), 'tok_REAL' in r.text)",
        s.url("/py")
    );
    let out = s.env.run(
        &[
            "run",
            "--agent",
            "bot",
            "--proxy",
            &format!("127.0.0.1:{}", s.port),
            "--",
            "python3",
            "-c",
            &script,
        ],
        b"",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert_eq!(stdout.trim(), "200 Bearer [REDACTED:api/token] False");
    assert!(s.upstream_saw().contains("Bearer tok_REAL_VALUE_123"));
    let env = String::from_utf8(s.env.ok(&["proxy", "env", "--agent", "bot"]).stdout).unwrap();
    for v in [
        "HTTPS_PROXY=",
        "SSL_CERT_FILE=",
        "NODE_EXTRA_CA_CERTS=",
        "REQUESTS_CA_BUNDLE=",
        "CURL_CA_BUNDLE=",
        "GIT_SSL_CAINFO=",
        "NODE_USE_ENV_PROXY='1'",
    ] {
        assert!(env.contains(v), "{v} missing: {env}");
    }
}

#[test]
fn malformed_requests_get_an_error_and_the_broker_keeps_serving() {
    use std::io::Write;
    use std::net::TcpStream;
    let s = setup();
    let auth = base64_basic(&format!("bot:{}", s.token));
    let bad: Vec<Vec<u8>> = vec![
        b"CONNECT\r\n\r\n".to_vec(),
        b"CONNECT :::: HTTP/1.1\r\n\r\n".to_vec(),
        format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\nX: {}\r\n\r\n", s.up_port, "a".repeat(200_000)).into_bytes(),
        format!("POST http://127.0.0.1:{}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nProxy-Authorization: Basic {auth}\r\n\r\n0\r\n\r\n", s.up_port).into_bytes(),
        b"\x16\x03\x01\x00\xff garbage that is not http".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
    ];
    for req in bad {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(&req);
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{:?} got {text:?}",
            String::from_utf8_lossy(&req[..req.len().min(40)])
        );
    }
    // A body with placeholders is read whole to fill them in: one declared
    // larger than 16 MiB is refused before it is read, and never sent on.
    let script = format!(
        r#"
import base64, http.client, ssl
ctx = ssl.create_default_context(cafile={ca:?})
c = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx, timeout=10)
c.set_tunnel("127.0.0.1", {up}, headers={{"Proxy-Authorization": "Basic {auth}"}})
c.putrequest("POST", "/too-big")
c.putheader("Content-Length", str(20 * 1024 * 1024))
c.endheaders()
c.send(b"x" * 1000)
print(c.getresponse().status)
"#,
        ca = s.broker_ca.to_str().unwrap(),
        port = s.port,
        up = s.up_port,
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "413",
        "{}",
        stderr(&out)
    );
    assert!(!s.upstream_saw().contains("/too-big"));
    // Still serving.
    let (out, err) = s.curl(Some(&s.token), &s.url("/after"), &[]);
    assert!(out.contains("[REDACTED:api/token]"), "{out}{err}");
    // And the audit log reads back, filtered.
    let v = s
        .env
        .json(&["audit", s.audit.to_str().unwrap(), "--agent", "bot"]);
    assert!(v.as_array().unwrap().iter().any(|r| r["path"] == "/after"));
    let none = s
        .env
        .json(&["audit", s.audit.to_str().unwrap(), "--agent", "nobody"]);
    assert_eq!(none.as_array().unwrap().len(), 0);
}

fn base64_basic(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn http2_between_the_agent_and_the_broker() {
    let s = setup();
    let (out, err) = s.curl(Some(&s.token), &s.url("/h2"), &["--http2"]);
    assert!(out.contains("HTTP/2 200"), "{out}{err}");
    assert!(
        out.contains("[REDACTED:api/token]") && !out.contains("tok_REAL"),
        "{out}"
    );
    assert!(s.upstream_saw().contains("Bearer tok_REAL_VALUE_123"));
}

#[test]
fn plain_http_only_where_a_service_allows_it() {
    let s = setup();
    let log = s.env.tmp.path().join("plain.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/echo_server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["-", "-"])
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _plain = Proc(child);
    let port: u16 = line.trim().parse().unwrap();
    let url = format!("http://127.0.0.1:{port}/plain");
    let curl = |token: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--proxy",
                &format!("http://127.0.0.1:{}", s.port),
            ])
            .args(["--proxy-user", &format!("bot:{token}"), "-D", "-"])
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Refused while no service allows plain http there.
    s.env.ok(&[
        "service",
        "add",
        "plain",
        "--bearer",
        "api/token",
        "--host",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(curl(&s.token).starts_with("HTTP/1.1 403"));
    s.env.ok(&[
        "service",
        "add",
        "plain",
        "--bearer",
        "api/token",
        "--host",
        &format!("127.0.0.1:{port}"),
        "--allow-http",
    ]);
    // The changed services list reaches the running broker within moments.
    let mut out = String::new();
    wait_until(Duration::from_secs(2), || {
        out = curl(&s.token);
        !out.starts_with("HTTP/1.1 403")
    });
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("[REDACTED:api/token]") && !out.contains("tok_REAL"),
        "{out}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("Bearer tok_REAL_VALUE_123")
    );
    assert!(curl("avt1.x.y").starts_with("HTTP/1.1 407"));
    // A service that fills in no placeholders still refuses one in a
    // header or the path, and passes nothing on.
    for extra in [
        vec!["-H", "X-Try: {{secret:other/x}}"],
        vec!["-g", "--path-as-is"],
    ] {
        let target = if extra[0] == "-H" {
            url.clone()
        } else {
            format!("http://127.0.0.1:{port}/{{{{secret:other/x}}}}")
        };
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", s.port))
            .args(["--proxy-user", &format!("bot:{}", s.token), "-D", "-"])
            .args(&extra)
            .arg(&target)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.starts_with("HTTP/1.1 403") && out.contains("may not use"),
            "{out}"
        );
    }
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("secret:other")
    );
}

#[test]
fn websocket_upgrade_through_the_broker() {
    let s = setup();
    let text = websocket_message(&s, "/ws");
    // The frame came back, the injected value in it masked (same length: frames count bytes).
    assert!(text.starts_with("echo: hello auth=Bearer ***"), "{text}");
    assert!(!text.contains("tok_REAL"), "{text}");
    let saw = s.upstream_saw();
    assert!(
        saw.contains("Bearer tok_REAL_VALUE_123") && !saw.contains("agent-made-up"),
        "{saw}"
    );
}

/// Runs the WebSocket client on `path`; returns what it printed.
fn websocket_message(s: &Setup, path: &str) -> String {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/ws_client.py");
    let out = Command::new("python3")
        .arg(client)
        .args([
            &s.port.to_string(),
            &s.token,
            s.broker_ca.to_str().unwrap(),
            "127.0.0.1",
            &s.up_port.to_string(),
            path,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn websocket_frames_are_scrubbed_as_the_agent_joins_them() {
    let s = setup();
    // The upstream sends its reply as one message in 7-byte frames, the
    // value split across three of them: the joined message is masked.
    let text = websocket_message(&s, "/ws-fragment");
    assert!(text.starts_with("echo: hello auth=Bearer ***"), "{text}");
    assert!(!text.contains("REAL") && !text.contains("VALUE"), "{text}");
    // A frame with the compressed bit set (nothing was negotiated: the
    // broker removes the extensions header) cannot be read, so it is not
    // passed on: the connection ends instead.
    let text = websocket_message(&s, "/ws-rsv1");
    assert_eq!(text.trim(), "closed");
}

#[test]
fn upstream_connections_are_reused() {
    let s = setup();
    // One curl, three requests over one tunnel, one after the other.
    let (out, err) = s.curl(
        Some(&s.token),
        &s.url("/one"),
        &[&s.url("/two"), &s.url("/three")],
    );
    assert_eq!(
        out.matches("[REDACTED:api/token]").count(),
        3 * 2,
        "{out}{err}"
    );
    let peers: Vec<u64> = s
        .upstream_saw()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["peer"].as_u64())
        .collect();
    assert_eq!(peers.len(), 3);
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "one upstream connection for all three: {peers:?}"
    );
}

/// The broker's runtimes: two per core, each thread under `SCHED_BATCH`
/// with the nice value it started with (proxy/src/run.rs, sched.rs), and
/// serving; an audit exporter's thread under `SCHED_BATCH` too.
#[test]
fn runtime_threads_are_two_per_core_and_batch_scheduled() {
    let s = setup();
    let (out, err) = s.curl(Some(&s.token), &s.url("/threads"), &[]);
    assert!(out.contains("[REDACTED:api/token]"), "{out}{err}");
    let own_nice = stat_fields(PathBuf::from("/proc/self/stat"))[STAT_NICE].clone();
    let runtimes = threads_named(s._broker.0.id(), "broker-");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(runtimes.len(), 2 * cores, "{runtimes:?}");
    for (name, fields) in &runtimes {
        assert_eq!(fields[STAT_POLICY], SCHED_BATCH, "{name}'s policy");
        assert_eq!(fields[STAT_NICE], own_nice, "{name}'s nice value changed");
    }
    // UDP to the discard port: the exporter needs no receiver to start.
    let (exporting, _) = start_broker(&s.env, &["--audit-syslog", "udp://127.0.0.1:9"]);
    let exporters = threads_named(exporting.0.id(), "audit-");
    assert_eq!(exporters.len(), 1, "{exporters:?}");
    assert_eq!(exporters[0].1[STAT_POLICY], SCHED_BATCH, "{exporters:?}");
}

/// Indexes into [`stat_fields`]: the nice value (field 19 of
/// `/proc/<pid>/task/<tid>/stat`) and the policy (field 41).
const STAT_NICE: usize = 19 - 3;
const STAT_POLICY: usize = 41 - 3;
/// The policy's number in `stat`.
const SCHED_BATCH: &str = "3";

/// The fields of a `stat` file after the command's `)`: the file's third
/// field is the first here.
fn stat_fields(path: PathBuf) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let rest = &text[text.rfind(')').unwrap() + 1..];
    rest.split_whitespace().map(str::to_owned).collect()
}

/// The threads of process `pid` whose names start with `prefix`: each
/// name and [`stat_fields`].
fn threads_named(pid: u32, prefix: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap();
        if comm.trim().starts_with(prefix) {
            found.push((comm.trim().to_owned(), stat_fields(task.join("stat"))));
        }
    }
    found
}

#[test]
fn start_up_errors_are_clear_and_sigterm_stops_the_broker() {
    let mut s = setup();
    // The port is taken (by the running broker).
    let err = s
        .env
        .fail(&["proxy", "--listen", &format!("127.0.0.1:{}", s.port)]);
    assert!(
        err.contains("cannot listen") && err.contains("another broker"),
        "{err}"
    );
    // SIGTERM: the broker stops, and says so with success.
    let pid = s._broker.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut exited = None;
    wait_until(Duration::from_secs(5), || {
        exited = s._broker.0.try_wait().unwrap();
        exited.is_some()
    });
    let status = exited.expect("still running after SIGTERM");
    assert!(status.success(), "{status:?}");
    // An unsigned (edited) services list: refused at start.
    let services = s.env.vault.join(".agent-vault/services.yaml");
    let mut text = std::fs::read_to_string(&services).unwrap();
    text = text.replace("api/token", "other/x");
    std::fs::write(&services, text).unwrap();
    let err = s.env.fail(&["proxy", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("without an owner's signature"), "{err}");
    // No broker key: say how to make one.
    let fresh = Env::new();
    let err = fresh.fail(&["proxy", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("broker init"), "{err}");
}

/// Node's own `fetch` through the broker, with undici's `ProxyAgent` as the
/// dispatcher (Node 20 has no NODE_USE_ENV_PROXY). undici comes from
/// tests/e2e/node (`npm install` there; scripts/test-all.sh does it).
#[test]
fn node_fetch_through_the_broker() {
    let modules = node_modules();
    let dir = modules.parent().unwrap().to_owned();
    let s = setup();
    let script = r#"
const fs = require('fs');
const { ProxyAgent } = require('undici');
const e = process.env;
const dispatcher = new ProxyAgent({
  uri: 'http://127.0.0.1:' + e.BROKER_PORT,
  token: 'Basic ' + Buffer.from('bot:' + e.BROKER_TOKEN).toString('base64'),
  requestTls: { ca: fs.readFileSync(e.BROKER_CA) },
});
(async () => {
  const r = await fetch(e.TARGET_URL, {
    method: 'POST',
    headers: { Authorization: 'Bearer fake-agent-value', 'Content-Type': 'application/json' },
    body: JSON.stringify({ hello: 'from node' }),
    dispatcher,
  });
  console.log(r.status);
  console.log(r.headers.get('x-echo-auth'));
  console.log(await r.text());
})().catch((err) => { console.error(err); process.exit(1); });
"#;
    let out = Command::new("node")
        .args(["-e", script])
        .current_dir(&dir)
        .env("NODE_PATH", &modules)
        .env("BROKER_PORT", s.port.to_string())
        .env("BROKER_TOKEN", &s.token)
        .env("BROKER_CA", &s.broker_ca)
        .env("TARGET_URL", s.url("/node?x=1"))
        .output()
        .expect("node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("200"), "{text}");
    assert_eq!(lines.next(), Some("Bearer [REDACTED:api/token]"), "{text}");
    let body = lines.collect::<Vec<_>>().join("\n");
    assert!(
        body.contains("[REDACTED:api/token]") && body.contains("from node"),
        "{body}"
    );
    assert!(!text.contains("tok_REAL"), "{text}");
    let saw = s.upstream_saw();
    assert!(saw.contains("Bearer tok_REAL_VALUE_123"), "{saw}");
    assert!(!saw.contains("fake-agent-value"), "{saw}");
}

/// `git clone` (smart HTTP) through the broker, from a `git http-backend`
/// upstream that answers 401 without the real credential.
#[test]
fn git_clone_over_https_through_the_broker() {
    let s = setup();
    let tmp = s.env.tmp.path();
    // A repository with a commit, served bare.
    let work = tmp.join("git-work");
    let root = tmp.join("git-root");
    std::fs::create_dir_all(&root).unwrap();
    let git = |dir: &Path, args: &[&str]| {
        let out = s.env.git_in(dir, args);
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    };
    git(tmp, &["init", "-q", "-b", "main", "git-work"]);
    std::fs::write(work.join("README.txt"), "cloned through the broker\n").unwrap();
    git(&work, &["add", "README.txt"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(
        tmp,
        &["clone", "-q", "--bare", "git-work", "git-root/repo.git"],
    );
    // The server, with the upstream echo's certificate (signed by the CA the broker trusts).
    let log = tmp.join("git-server.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/git_https_server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([
            tmp.join("up.pem"),
            tmp.join("up.key"),
            root.clone(),
            log.clone(),
        ])
        .arg("Bearer tok_REAL_VALUE_123")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Proc(child);
    let git_port: u16 = line.trim().parse().unwrap();
    let host = format!("127.0.0.1:{git_port}");
    let url = format!("https://{host}/repo.git");
    let home = tmp.join("git-home");
    std::fs::create_dir_all(&home).unwrap();
    let git_cmd = |mut c: Command| {
        c.env("HOME", &home)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", home.join("gitconfig"))
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdin(Stdio::null());
        c
    };
    // Straight to the server, without the credential: refused.
    let mut direct = git_cmd(Command::new("git"));
    direct
        .args(["clone", "-q", &url])
        .arg(tmp.join("direct"))
        .env("GIT_SSL_CAINFO", &s.upstream_ca)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    let out = direct.output().expect("git");
    assert!(!out.status.success(), "cloned without the credential");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("\"authorization\": \"\"")
    );
    // The service; the running broker picks it up within moments.
    s.env.ok(&[
        "service",
        "add",
        "gitsvc",
        "--bearer",
        "api/token",
        "--host",
        &host,
    ]);
    let refs = format!("{url}/info/refs?service=git-upload-pack");
    let (mut out, mut err) = (String::new(), String::new());
    wait_until(Duration::from_secs(3), || {
        (out, err) = s.curl(Some(&s.token), &refs, &[]);
        out.contains("# service=git-upload-pack")
    });
    assert!(out.contains("# service=git-upload-pack"), "{out}{err}");
    // git clone, the proxy and CA set by hand.
    let dest = tmp.join("cloned");
    let proxy = format!("http://bot:{}@127.0.0.1:{}", s.token, s.port);
    let mut clone = git_cmd(Command::new("git"));
    clone
        .args(["clone", "-q", &url])
        .arg(&dest)
        .env("HTTPS_PROXY", &proxy)
        .env("https_proxy", &proxy)
        .env("GIT_SSL_CAINFO", &s.broker_ca);
    let out = clone.output().expect("git");
    assert!(out.status.success(), "git clone: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dest.join("README.txt")).unwrap(),
        "cloned through the broker\n"
    );
    assert!(!stderr(&out).contains("tok_REAL"));
    // Every request that reached the server through the broker carried the
    // real credential; the count of those.
    let injected = || {
        let served = std::fs::read_to_string(&log).unwrap();
        let through: Vec<&str> = served
            .lines()
            .filter(|l| !l.contains("\"authorization\": \"\""))
            .collect();
        assert!(
            through
                .iter()
                .all(|l| l.contains("\"authorization\": \"Bearer tok_REAL_VALUE_123\"")),
            "{served}"
        );
        assert!(
            served.contains("\"method\": \"POST\", \"path\": \"/repo.git/git-upload-pack\""),
            "{served}"
        );
        through.len()
    };
    let after_clone = injected();
    // A second commit, fetched with `agent-vault run` setting the proxy and CA.
    std::fs::write(work.join("NEWS.txt"), "second commit\n").unwrap();
    git(&work, &["add", "NEWS.txt"]);
    git(&work, &["commit", "-q", "-m", "second"]);
    git(&work, &["push", "-q", "../git-root/repo.git", "main"]);
    let mut pull = git_cmd(s.env.cmd(&[
        "run",
        "--agent",
        "bot",
        "--proxy",
        &format!("127.0.0.1:{}", s.port),
        "--",
        "git",
        "-C",
        dest.to_str().unwrap(),
        "pull",
        "-q",
        "--ff-only",
    ]));
    let out = pull.output().expect("agent-vault run");
    assert!(out.status.success(), "git pull: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dest.join("NEWS.txt")).unwrap(),
        "second commit\n"
    );
    assert!(injected() > after_clone);
}
