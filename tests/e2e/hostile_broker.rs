//! The broker against a prompt-injected agent (issue 10): a real nginx
//! upstream (a `location /admin`, gzip on, a second virtual host), a Python
//! upstream that sends trailers and server-sent events, the real broker, and
//! real clients (curl, Python's http.client and ssl).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{Proc, start_broker_with, wait_until};
use crate::harness::*;

const TOKEN_VALUE: &str = "tok_REAL_VALUE_123";

/// nginx on 127.0.0.1 with TLS: `/allowed` and `/admin` say which they
/// are, the host they saw and the credential; a second server answers for
/// `fronted.example`. The access log records host, raw target, normalised
/// path and Authorization of every request.
fn nginx(dir: &Path, cert: &Path, key: &Path) -> (Proc, u16, PathBuf) {
    let port = free_port();
    let access = dir.join("nginx-access.log");
    let d = dir.display();
    let (cert, key) = (cert.display(), key.display());
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 512; }}
http {{
    log_format seen '$host|$request_uri|$uri|$http_authorization';
    access_log {access} seen;
    client_body_temp_path {d}/ngx-body;
    proxy_temp_path {d}/ngx-proxy;
    fastcgi_temp_path {d}/ngx-fastcgi;
    uwsgi_temp_path {d}/ngx-uwsgi;
    scgi_temp_path {d}/ngx-scgi;
    default_type text/plain;
    gzip on;
    gzip_min_length 1;
    server {{
        listen 127.0.0.1:{port} ssl http2 default_server;
        server_name 127.0.0.1;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location /admin {{ return 200 "ADMIN AREA host=$host auth=$http_authorization\n"; }}
        location /allowed {{ return 200 "allowed uri=$uri host=$host auth=$http_authorization\n"; }}
        location / {{ return 404 "nothing here\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name fronted.example;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "FRONTED host=$host auth=$http_authorization\n"; }}
    }}
}}
"#,
        access = access.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(nginx_bin())
        .args(["-p", &d.to_string(), "-e"])
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt-get install nginx-light)");
    let proc = Proc(child);
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "nginx did not start: {}",
        std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
    );
    (proc, port, access)
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTPS upstream in Python: `/trailers` sends a chunked body with
/// trailers (one echoes the credential), `/events` sends server-sent
/// events, the second only once the file `flag` exists (or after 5 s),
/// and splits the credential across two chunks sent 0.2 s apart.
const PY_UPSTREAM: &str = r#"
import json, os, ssl, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
cert, key, log_path, flag = sys.argv[1:5]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def log(self, **kv):
        with open(log_path, "a") as f:
            f.write(json.dumps(kv) + "\n")

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        self.log(path=self.path, host=self.headers.get("Host"), auth=auth)
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        if self.path == "/trailers":
            self.send_header("Content-Type", "text/plain")
            self.send_header("Trailer", "X-Checksum, X-Echo")
            self.end_headers()
            self.chunk(b"body\n")
            self.wfile.write(b"0\r\nX-Checksum: abc123\r\nX-Echo: " + auth.encode() + b"\r\n\r\n")
            self.wfile.flush()
        elif self.path.startswith("/events"):
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.chunk(b"data: event 0\n\n")
            deadline = time.time() + 5
            while not os.path.exists(flag) and time.time() < deadline:
                time.sleep(0.02)
            self.log(event1_sent_after_the_client_had_event0=os.path.exists(flag))
            secret = auth.removeprefix("Bearer ").encode()
            self.chunk(b"data: event 1 " + secret[:4])
            time.sleep(0.2)
            self.chunk(secret[4:] + b"\n\n")
            time.sleep(1.8 if "slow" in self.path else 0.7)
            self.chunk(b"data: event 2\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        else:
            self.end_headers()
            self.chunk(b"ok\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

server = ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

struct Hostile {
    _env: Env,
    _nginx: Proc,
    nginx_port: u16,
    nginx_log: PathBuf,
    _py: Proc,
    py_port: u16,
    py_log: PathBuf,
    flag: PathBuf,
    broker_ca: PathBuf,
    _broker: Proc,
    port: u16,
    token: String,
}

/// A vault whose agent `bot` may use `api/token`: the service `web` sends it
/// to nginx for paths under `/allowed` only, `py` to the Python upstream.
/// `vars`: the broker's environment (its time limits).
fn hostile(vars: &[(&str, &str)]) -> Hostile {
    let env = Env::new();
    let dir = env.tmp.path().to_owned();
    let (ca, ca_key) = agent_vault_proxy::ca::generate("hostile-upstream-ca").unwrap();
    let minter = agent_vault_proxy::ca::Minter::new(&ca, &ca_key).unwrap();
    let (cert, key) = minter.leaf("127.0.0.1").unwrap();
    let (upstream_ca, cert_path, key_path) = (
        dir.join("up-ca.pem"),
        dir.join("up.pem"),
        dir.join("up.key"),
    );
    std::fs::write(&upstream_ca, ca).unwrap();
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let (nginx, nginx_port, nginx_log) = nginx(&dir, &cert_path, &key_path);
    let (py_log, flag) = (dir.join("py.log"), dir.join("flag"));
    let mut child = Command::new("python3")
        .args(["-c", PY_UPSTREAM])
        .args([&cert_path, &key_path, &py_log, &flag])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let py = Proc(child);
    let py_port: u16 = line.trim().parse().unwrap();

    env.set("api/token", TOKEN_VALUE.as_bytes());
    env.add_agent("bot");
    env.ok(&["grant", "bot", "api", "--mode", "use"]);
    env.ok(&["broker", "init"]);
    let web = format!("127.0.0.1:{nginx_port}");
    env.ok(&[
        "service",
        "add",
        "web",
        "--bearer",
        "api/token",
        "--host",
        &web,
        "--path",
        "/allowed",
    ]);
    let pyhost = format!("127.0.0.1:{py_port}");
    env.ok(&[
        "service",
        "add",
        "py",
        "--bearer",
        "api/token",
        "--host",
        &pyhost,
    ]);
    let broker_ca = dir.join("broker-ca.pem");
    std::fs::write(&broker_ca, env.ok(&["ca", "cert"]).stdout).unwrap();
    let (broker, port) = start_broker_with(
        &env,
        &[
            "--allow-private-upstreams",
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
        ],
        vars,
    );
    let token = env.json(&["token", "issue", "bot", "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    Hostile {
        _env: env,
        _nginx: nginx,
        nginx_port,
        nginx_log,
        _py: py,
        py_port,
        py_log,
        flag,
        broker_ca,
        _broker: broker,
        port,
        token,
    }
}

/// The status line of the last response curl printed (after the proxy's
/// answer to its CONNECT).
fn status(out: &str) -> &str {
    out.lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .unwrap_or_default()
        .trim()
}

impl Hostile {
    /// curl through the broker, paths sent as written; (headers and body, stderr).
    fn curl(&self, url: &str, extra: &[&str]) -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "-g", "--path-as-is", "--max-time", "10", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", self.port))
            .args(["--proxy-user", &format!("bot:{}", self.token)])
            .args(["--cacert", self.broker_ca.to_str().unwrap(), "-D", "-"])
            .args(extra)
            .arg(url)
            .output()
            .expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn web(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.nginx_port)
    }

    fn py(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.py_port)
    }

    /// nginx's access log: (host, raw target, normalised path, Authorization).
    fn nginx_saw(&self) -> Vec<[String; 4]> {
        std::fs::read_to_string(&self.nginx_log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut f = l.splitn(4, '|').map(str::to_owned);
                [(); 4].map(|_| f.next().unwrap_or_default())
            })
            .collect()
    }

    /// Python's http.client in a tunnel to nginx, sending one request with
    /// exactly this target and these headers (Host included only if given);
    /// the status and body.
    fn raw_request(&self, target: &str, headers: &[(&str, &str)]) -> String {
        let script = format!(
            r#"
import base64, http.client, ssl
ctx = ssl.create_default_context(cafile={ca:?})
c = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx, timeout=10)
auth = base64.b64encode(b"bot:" + {token:?}.encode()).decode()
c.set_tunnel("127.0.0.1", {up}, headers={{"Proxy-Authorization": "Basic " + auth}})
c.putrequest("GET", {target:?}, skip_host=True, skip_accept_encoding=True)
for k, v in [{headers}]:
    c.putheader(k, v)
c.endheaders()
r = c.getresponse()
print(r.status, r.read().decode(errors="replace"))
"#,
            ca = self.broker_ca.to_str().unwrap(),
            port = self.port,
            token = self.token,
            up = self.nginx_port,
            headers = headers
                .iter()
                .map(|(k, v)| format!("({k:?}, {v:?})"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

#[test]
fn domain_fronting_inside_a_tunnel_is_refused() {
    let s = hostile(&[]);
    // The tunnel is opened to 127.0.0.1; the request inside names another
    // host, in each way a client can: Host over HTTP/1.1 (curl, Python),
    // :authority over HTTP/2 (curl), an absolute-form target.
    let (h1, e1) = s.curl(
        &s.web("/allowed/x"),
        &["--http1.1", "-H", "Host: fronted.example"],
    );
    assert!(status(&h1).starts_with("HTTP/1.1 421"), "{h1}{e1}");
    assert!(
        h1.contains("fronted.example") && h1.contains("127.0.0.1"),
        "{h1}"
    );
    let (h2, e2) = s.curl(
        &s.web("/allowed/x"),
        &["--http2", "-H", "Host: fronted.example"],
    );
    assert!(status(&h2).starts_with("HTTP/2 421"), "{h2}{e2}");
    let py = s.raw_request("/allowed/x", &[("Host", "fronted.example")]);
    assert!(py.starts_with("421"), "{py}");
    let py = s.raw_request(
        "https://fronted.example/allowed/x",
        &[("Host", &format!("127.0.0.1:{}", s.nginx_port))],
    );
    assert!(py.starts_with("421"), "{py}");
    let py = s.raw_request(
        "/allowed/x",
        &[
            ("Host", &format!("127.0.0.1:{}", s.nginx_port)),
            ("Host", "fronted.example"),
        ],
    );
    assert!(py.starts_with("400"), "{py}");
    // None of them reached nginx, under any host.
    assert!(s.nginx_saw().is_empty(), "{:?}", s.nginx_saw());
    // The same requests naming the tunnel's own host go through; nginx saw
    // the tunnel's host, with the credential, and the agent sees it scrubbed.
    let (ok, err) = s.curl(&s.web("/allowed/x"), &["--http1.1"]);
    assert!(status(&ok).starts_with("HTTP/1.1 200"), "{ok}{err}");
    assert!(
        ok.contains("host=127.0.0.1 auth=Bearer [REDACTED:api/token]"),
        "{ok}"
    );
    let py = s.raw_request("/allowed/y", &[("Host", "127.0.0.1")]);
    assert!(
        py.starts_with("200 allowed uri=/allowed/y host=127.0.0.1"),
        "{py}"
    );
    let saw = s.nginx_saw();
    assert_eq!(saw.len(), 2, "{saw:?}");
    for [host, _, _, auth] in &saw {
        assert_eq!(host, "127.0.0.1");
        assert_eq!(auth, &format!("Bearer {TOKEN_VALUE}"));
    }
    assert!(!ok.contains(TOKEN_VALUE) && !py.contains(TOKEN_VALUE));
}

#[test]
fn a_path_prefix_cannot_be_escaped() {
    let s = hostile(&[]);
    // A path under /allowed, made of dot segments and doubled slashes: sent
    // to nginx exactly as normalised (the target nginx logs is ours).
    let (out, err) = s.curl(&s.web("/allowed/./x/../y//z"), &[]);
    assert!(status(&out).ends_with(" 200"), "{out}{err}");
    assert!(out.contains("allowed uri=/allowed/y/z"), "{out}");
    let saw = s.nginx_saw();
    assert_eq!(saw.len(), 1, "{saw:?}");
    assert_eq!(saw[0][1], "/allowed/y/z", "{saw:?}");
    // Every way out of /allowed: resolved to a path outside it (403), or
    // refused as ambiguous (400). Over HTTP/1.1 and HTTP/2.
    let escapes = [
        ("/allowed/../admin", "403"),
        ("/allowed/./../admin", "403"),
        ("/allowed//../admin", "403"),
        ("/allowed/x/../../admin", "403"),
        ("/allowed/%2e%2e/admin", "400"),
        ("/allowed/%2E%2E/admin", "400"),
        ("/allowed/.%2e/admin", "400"),
        ("/allowed/..%2fadmin", "400"),
        ("/allowed%2f..%2fadmin", "400"),
        ("/allowed/%2fadmin", "400"),
        ("/allowed/..%5cadmin", "400"),
        ("/allowed/..\\admin", "400"),
        ("/allowed/..;/admin", "400"),
        ("/allowed/%252e%252e/admin", "400"),
        ("/allowed/%00/../../admin", "400"),
        ("/admin", "403"),
    ];
    for (path, want) in escapes {
        for proto in ["--http1.1", "--http2"] {
            let (out, err) = s.curl(&s.web(path), &[proto]);
            let first = status(&out);
            assert!(
                first.starts_with("HTTP/") && first.contains(&format!(" {want}")),
                "{path} {proto}: {out}{err}"
            );
            assert!(!out.contains("ADMIN AREA"), "{path}: {out}");
        }
    }
    // Python sends the target byte for byte (no client-side clean-up).
    for path in [
        "/allowed/../admin",
        "/allowed/%2e%2e/admin",
        "/allowed/..%2Fadmin",
    ] {
        let out = s.raw_request(path, &[("Host", "127.0.0.1")]);
        assert!(
            out.starts_with("403") || out.starts_with("400"),
            "{path}: {out}"
        );
    }
    // None of it reached nginx: it saw only the one allowed request, and
    // never a request for /admin with the credential.
    let saw = s.nginx_saw();
    assert_eq!(saw.len(), 1, "{saw:?}");
    assert!(
        !saw.iter()
            .any(|[_, _, uri, auth]| uri.starts_with("/admin") && !auth.is_empty()),
        "{saw:?}"
    );
}

#[test]
fn a_compressed_echo_of_the_credential_is_still_scrubbed() {
    let s = hostile(&[]);
    // nginx gzips what it sends when asked: the broker asks for no
    // compression, so the echo comes back plain and scrubbed, even though
    // the agent asked for gzip.
    for proto in ["--http1.1", "--http2"] {
        let (out, err) = s.curl(&s.web("/allowed/echo"), &[proto, "--compressed"]);
        assert!(status(&out).contains(" 200"), "{out}{err}");
        assert!(
            out.contains("auth=Bearer [REDACTED:api/token]") && !out.contains(TOKEN_VALUE),
            "{out}"
        );
        assert!(
            !out.to_lowercase().contains("content-encoding: gzip"),
            "{out}"
        );
    }
}

#[test]
fn idle_and_half_open_connections_are_closed_and_do_not_starve_the_broker() {
    // Limits of 1 s for the test (10 s, 10 s and 90 s otherwise).
    let s = hostile(&[("AGENT_VAULT_BROKER_TIME_LIMIT_MS", "1000")]);
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("bot:{}", s.token))
    };
    /// Sends `bytes`, then waits for the broker to close; how long it took.
    fn closed_after(port: u16, bytes: &[u8]) -> (Duration, Vec<u8>) {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let start = Instant::now();
        c.write_all(bytes).unwrap();
        let mut got = Vec::new();
        // The broker's answer to a CONNECT, then end of file (not a time-out).
        let r = c.read_to_end(&mut got);
        assert!(r.is_ok(), "not closed by the broker: {r:?}");
        (start.elapsed(), got)
    }
    // Nothing at all; half a CONNECT, with no token yet.
    for bytes in [&b""[..], b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nProxy-Auth"] {
        let (took, got) = closed_after(s.port, bytes);
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(10),
            "{took:?}"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    // A CONNECT answered, then no TLS handshake.
    let connect = format!(
        "CONNECT 127.0.0.1:{} HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n",
        s.py_port
    );
    let (took, got) = closed_after(s.port, connect.as_bytes());
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{got:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // A tunnel with its TLS up, then no request (HTTP/1.1 and HTTP/2), or
    // half a request's head that never ends (HTTP/1.1), closed by the
    // broker: Python sees the end of the stream.
    for (alpn, partial) in [
        ("http/1.1", ""),
        ("h2", ""),
        ("http/1.1", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a"),
    ] {
        let script = format!(
            r#"
import socket, ssl, time
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall({connect:?}.encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
ctx = ssl.create_default_context(cafile={ca:?})
ctx.set_alpn_protocols([{alpn:?}])
t = ctx.wrap_socket(s, server_hostname="127.0.0.1")
t.settimeout(15)
t.sendall({partial:?}.encode())
start = time.time()
try:
    while t.recv(4096):
        pass
    print("closed", time.time() - start)
except Exception as e:
    print("error", type(e).__name__, time.time() - start)
"#,
            port = s.port,
            ca = s.broker_ca.to_str().unwrap(),
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let secs: f64 = text
            .split_whitespace()
            .last()
            .and_then(|t| t.parse().ok())
            .unwrap_or(99.0);
        assert!(
            (text.starts_with("closed") || text.starts_with("error SSLEOFError"))
                && (0.5..10.0).contains(&secs),
            "{alpn} {partial:?}: {text}{}",
            stderr(&out)
        );
    }
    // A streaming response longer than the idle limit is not cut: a
    // request in flight keeps its tunnel.
    // (Two seconds from the first event to the last.)
    std::fs::write(&s.flag, "").unwrap();
    for proto in ["--http1.1", "--http2"] {
        let (out, err) = s.curl(&s.py("/events?slow"), &["-N", proto]);
        assert_eq!(out.matches("data: event").count(), 3, "{proto}: {out}{err}");
    }
    // Many connections that send nothing or half a request do not keep a
    // real request from being served at once.
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        if i % 2 == 1 {
            let _ = c.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nX: ");
        }
        idle.push(c);
    }
    let (out, err) = s.curl(&s.py("/after"), &[]);
    assert!(
        status(&out).ends_with(" 200") && out.contains("ok"),
        "{out}{err}"
    );
    // And the broker closed them all.
    let mut buf = [0u8; 64];
    for c in &mut idle {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("an idle connection was not closed: {e}"),
            }
        }
    }
}

#[test]
fn trailers_are_scrubbed_like_headers() {
    let s = hostile(&[]);
    for proto in ["--http1.1", "--http2"] {
        let (out, err) = s.curl(&s.py("/trailers"), &[proto, "-H", "TE: trailers"]);
        assert!(status(&out).contains(" 200"), "{out}{err}");
        // The trailers arrived (so this shows something)...
        let lower = out.to_lowercase();
        assert!(lower.contains("x-checksum: abc123"), "{proto}: {out}");
        // ... with the credential the upstream echoed in one scrubbed.
        assert!(
            lower.contains("x-echo: bearer [redacted:api/token]"),
            "{proto}: {out}"
        );
        assert!(!out.contains(TOKEN_VALUE), "{proto}: {out}");
    }
    let log = std::fs::read_to_string(&s.py_log).unwrap();
    assert!(log.contains(&format!("Bearer {TOKEN_VALUE}")), "{log}");
}

#[test]
fn an_event_is_passed_on_before_the_next_one_is_sent() {
    let s = hostile(&[]);
    for proto in ["--http1.1", "--http2"] {
        let _ = std::fs::remove_file(&s.flag);
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "--max-time", "15", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", s.port))
            .args(["--proxy-user", &format!("bot:{}", s.token)])
            .args(["--cacert", s.broker_ca.to_str().unwrap(), proto])
            .arg(s.py("/events"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        let mut flagged = false;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            // Event 0, whole (its blank line included): only now may the
            // upstream send event 1.
            if !flagged && line.is_empty() && lines.iter().any(|l| l == "data: event 0") {
                std::fs::write(&s.flag, "").unwrap();
                flagged = true;
            }
            lines.push(line);
        }
        let _ = child.wait();
        let events: Vec<&String> = lines.iter().filter(|l| l.starts_with("data:")).collect();
        assert_eq!(events.len(), 3, "{proto}: {lines:?}");
        // The upstream sent event 1 only after the agent had event 0 whole:
        // the broker held nothing of it back.
        let log = std::fs::read_to_string(&s.py_log).unwrap();
        let last = log
            .lines()
            .rfind(|l| l.contains("event1_sent"))
            .unwrap_or_default();
        assert!(last.contains("true"), "{proto}: {log}");
        // The credential, sent in two pieces 0.2 s apart, is still scrubbed.
        assert_eq!(events[1], "data: event 1 [REDACTED:api/token]", "{proto}");
        assert!(!lines.iter().any(|l| l.contains("tok_")), "{lines:?}");
    }
}
