//! Issue 16: brokers on many machines. Each broker runs on its own clone of
//! a bare remote (file:// on this machine), follows it (`--pull-interval`),
//! fails closed when it cannot (`--max-stale`), and speaks TLS on its
//! listener (`fleet_tls`), and runs behind HAProxy (`fleet_lb`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;

use crate::broker::{Proc, upstream, wait_until};
use crate::harness::*;

pub(crate) const VALUE: &str = "tok_FLEET_VALUE_4242";

/// An owner's vault pushed to a bare repository, with a service `api` on an
/// HTTPS echo upstream, the agent `bot` allowed to use it, and a broker key.
pub(crate) struct Team {
    pub(crate) env: Env,
    _upstream: Proc,
    pub(crate) up_port: u16,
    pub(crate) upstream_ca: PathBuf,
    pub(crate) upstream_log: PathBuf,
    pub(crate) broker_ca: PathBuf,
    pub(crate) bare: PathBuf,
    pub(crate) token: String,
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

pub(crate) fn team() -> Team {
    let env = Env::new();
    let (up, up_port, upstream_ca, upstream_log) = upstream(env.tmp.path());
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
    ]);
    let bare = env.push_to_bare();
    let broker_ca = env.broker_ca();
    let token = env.json(&["token", "issue", "bot", "--ttl", "30m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    Team {
        env,
        _upstream: up,
        up_port,
        upstream_ca,
        upstream_log,
        broker_ca,
        bare,
        token,
    }
}

/// One broker on its own clone of the remote.
pub(crate) struct Replica {
    pub(crate) proc: Proc,
    pub(crate) port: u16,
    pub(crate) admin: String,
    /// What it printed on stderr (read by a thread as it comes).
    pub(crate) log: Arc<Mutex<String>>,
}

impl Team {
    /// Clones the remote to `name` and starts a broker there with `args`
    /// (and `--admin`, the upstream's CA, private upstreams allowed).
    pub(crate) fn replica(&self, name: &str, args: &[&str]) -> Replica {
        let ca = self.upstream_ca.to_str().unwrap().to_owned();
        let mut all = vec![
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--allow-private-upstreams",
            "--upstream-ca",
            &ca,
        ];
        all.extend_from_slice(args);
        self.replica_raw(name, &all)
    }

    /// Clones the remote to `name` and runs `agent-vault ARGS` there (a
    /// broker with an admin listener).
    pub(crate) fn replica_raw(&self, name: &str, all: &[&str]) -> Replica {
        let dir = self.env.tmp.path().join(name);
        ok(
            self.env.git_in(
                self.env.tmp.path(),
                &[
                    "clone",
                    "-q",
                    self.bare.to_str().unwrap(),
                    dir.to_str().unwrap(),
                ],
            ),
            "git clone",
        );
        let mut child = self
            .env
            .cmd(all)
            .current_dir(&dir)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        let port = first
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("broker did not start: {first}"));
        let mut second = String::new();
        reader.read_line(&mut second).unwrap();
        let admin = second
            .strip_prefix("agent-vault: admin listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no admin address: {second}"))
            .to_owned();
        let log = Arc::new(Mutex::new(first + &second));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Replica {
            proc: Proc(child),
            port,
            admin,
            log,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.up_port)
    }

    /// The owner changes something and pushes it.
    pub(crate) fn owner(&self, args: &[&str]) {
        self.env.ok(args);
        ok(self.env.run(&["sync"], b""), "sync");
    }
}

/// `(CONNECT status, final status)` of a GET through the plain-HTTP broker
/// on `port`, by curl.
pub(crate) fn curl_status(team: &Team, port: u16, path: &str) -> (u16, u16) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "10"])
        .args(["-w", "%{http_connect} %{http_code}"])
        .args(["--proxy", &format!("http://127.0.0.1:{port}")])
        .args(["--proxy-user", &format!("bot:{}", team.token)])
        .args(["--cacert", team.broker_ca.to_str().unwrap()])
        .arg(team.url(path))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut codes = text.split_whitespace().map(|c| c.parse().unwrap_or(0));
    (codes.next().unwrap_or(0), codes.next().unwrap_or(0))
}

/// The broker's answer to a raw `CONNECT` with the token: status, head, body.
fn raw_connect(team: &Team, port: u16) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("bot:{}", team.token));
    let target = format!("127.0.0.1:{}", team.up_port);
    write!(
        s,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Head, then the body by its length (a refusal has one; a 200 has none).
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// `GET /healthz` on the admin listener: status and body.
pub(crate) fn healthz(admin: &str) -> (u16, String) {
    admin_get(admin, "/healthz")
}

/// `GET path` on the admin listener: status and body.
pub(crate) fn admin_get(admin: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

#[test]
fn a_broker_follows_its_remote_and_fails_closed_without_it() {
    let t = team();
    let r = t.replica(
        "replica-a",
        &["--pull-interval", "300ms", "--max-stale", "2s"],
    );
    assert_eq!(curl_status(&t, r.port, "/v1/a"), (200, 200));
    assert_eq!(healthz(&r.admin).0, 200);
    assert!(
        r.log
            .lock()
            .unwrap()
            .contains("following the vault's remote every 0.3s"),
        "{}",
        r.log.lock().unwrap()
    );

    // The remote goes away: within --max-stale (and a pull), every request
    // is refused with the fail-closed problem, and /healthz says why.
    let gone = t.bare.with_file_name("moved.git");
    std::fs::rename(&t.bare, &gone).unwrap();
    let took = wait_until(Duration::from_secs(10), || healthz(&r.admin).0 == 503);
    assert!(took < Duration::from_secs(10), "never unhealthy");
    let (status, body) = healthz(&r.admin);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "unhealthy", "{body}");
    assert!(
        v["failing"]["remote"]
            .as_str()
            .unwrap()
            .contains("--max-stale"),
        "{body}"
    );
    assert_eq!(status, 503);
    let (status, head, body) = raw_connect(&t, r.port);
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("agent-vault-error: vault-stale"),
        "{head}"
    );
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with(":vault-stale"),
        "{body}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("remote"),
        "{body}"
    );
    assert_eq!(curl_status(&t, r.port, "/v1/b").0, 503);

    // It comes back: the broker recovers on its next pull.
    std::fs::rename(&gone, &t.bare).unwrap();
    let took = wait_until(Duration::from_secs(10), || healthz(&r.admin).0 == 200);
    assert!(took < Duration::from_secs(10), "never healthy again");
    assert_eq!(curl_status(&t, r.port, "/v1/c"), (200, 200));

    // The owner revokes and pushes: the broker refuses within a pull or two.
    t.owner(&["revoke", "bot", "api"]);
    let took = wait_until(Duration::from_secs(10), || {
        curl_status(&t, r.port, "/v1/d") != (200, 200)
    });
    assert!(took < Duration::from_secs(5), "revocation took {took:?}");
    let (connect, code) = curl_status(&t, r.port, "/v1/e");
    assert!(connect == 403 || code == 403, "{connect} {code}");
    let saw = std::fs::read_to_string(&t.upstream_log).unwrap_or_default();
    assert!(
        !saw.contains("/v1/e"),
        "the upstream saw a request after the revocation"
    );
    drop(r);
}

/// Someone with push access but no owner key pushes a change: the broker
/// refuses to bring it in, keeps serving the last verified state, and
/// (stuck behind that commit) fails closed after --max-stale, naming why.
#[test]
fn an_unsigned_push_is_not_taken_and_the_broker_fails_closed() {
    let t = team();
    t.owner(&["revoke", "bot", "api"]);
    let r = t.replica(
        "replica-a",
        &["--pull-interval", "300ms", "--max-stale", "2s"],
    );
    assert_ne!(curl_status(&t, r.port, "/v1/a"), (200, 200));
    // The attacker's clone: the grant written into the manifest by hand.
    let evil = t.env.tmp.path().join("evil");
    ok(
        t.env.git_in(
            t.env.tmp.path(),
            &[
                "clone",
                "-q",
                t.bare.to_str().unwrap(),
                evil.to_str().unwrap(),
            ],
        ),
        "git clone",
    );
    // Any change to the manifest without an owner's signature (here a
    // line at its end) is refused however harmless it looks.
    let manifest = evil.join(".agent-vault/manifest.yaml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("\n# pushed by someone without an owner key\n");
    std::fs::write(&manifest, text).unwrap();
    ok(t.env.git_in(&evil, &["commit", "-qam", "change"]), "commit");
    ok(t.env.git_in(&evil, &["push", "-q"]), "push");
    let took = wait_until(Duration::from_secs(10), || healthz(&r.admin).0 == 503);
    assert!(took < Duration::from_secs(10), "never unhealthy");
    let body = healthz(&r.admin).1;
    assert!(body.contains("incoming commit"), "{body}");
    assert_eq!(curl_status(&t, r.port, "/v1/b").0, 503);
    let saw = std::fs::read_to_string(&t.upstream_log).unwrap_or_default();
    assert!(!saw.contains("/v1/"), "{saw}");
}

#[test]
fn follow_flags_are_checked() {
    let t = team();
    let err = t.env.fail(&["proxy", "--max-stale", "5s"]);
    assert!(err.contains("--max-stale needs --pull-interval"), "{err}");
    let err = t
        .env
        .fail(&["proxy", "--pull-interval", "10s", "--max-stale", "1s"]);
    assert!(err.contains("shorter than --pull-interval"), "{err}");
    let err = t.env.fail(&["proxy", "--pull-interval", "soon"]);
    assert!(err.contains("is not a span of time"), "{err}");
    // A vault with no remote has nothing to follow.
    let lone = Env::new();
    lone.ok(&["broker", "init"]);
    let err = lone.fail(&["proxy", "--listen", "127.0.0.1:0", "--pull-interval", "1s"]);
    assert!(err.contains("has no remote"), "{err}");
}

/// A TLS connection held open by Python's http.client through a tunnel
/// service (the broker passes the bytes through): one request per line on
/// stdin, its status (or `closed: …` when the held connection fails) on
/// stdout. The upstream's CA is trusted; its certificate names 127.0.0.1,
/// and the tunnel goes to `localhost`, so the name is not checked.
fn held_tunnel(
    t: &Team,
    port: u16,
) -> (
    Proc,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    let script = format!(
        r#"
import base64, http.client, ssl, sys
ctx = ssl.create_default_context(cafile={ca:?})
ctx.check_hostname = False
c = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx, timeout=10)
auth = base64.b64encode(b"bot:" + {token:?}.encode()).decode()
c.set_tunnel("localhost", {up}, headers={{"Proxy-Authorization": "Basic " + auth}})
c.connect()
c.auto_open = 0  # a request after the cut fails, never opens a new tunnel
for line in sys.stdin:
    try:
        c.request("GET", "/held")
        r = c.getresponse()
        r.read()
        print(r.status, flush=True)
    except Exception as e:
        print("closed:", type(e).__name__, flush=True)
"#,
        ca = t.upstream_ca.to_str().unwrap(),
        token = t.token,
        up = t.up_port,
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let stdin = child.stdin.take().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (Proc(child), stdin, out)
}

fn request_on(
    stdin: &mut std::process::ChildStdin,
    out: &mut BufReader<std::process::ChildStdout>,
) -> String {
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// A broker that fails closed cuts the tunnels it already passed through,
/// and an owner who removes a tunnel service ends the tunnels it allowed:
/// neither goes on carrying bytes the broker would no longer admit.
#[test]
fn open_tunnels_are_cut_when_the_broker_goes_stale_or_the_service_goes() {
    let t = team();
    let tunnel_host = format!("localhost:{}", t.up_port);
    t.owner(&[
        "service",
        "add",
        "model",
        "--tunnel",
        "--host",
        &tunnel_host,
    ]);
    let r = t.replica(
        "replica-a",
        &["--pull-interval", "300ms", "--max-stale", "2s"],
    );

    // Fresh: the held connection carries request after request.
    let (_py, mut stdin, mut out) = held_tunnel(&t, r.port);
    for _ in 0..3 {
        assert_eq!(request_on(&mut stdin, &mut out), "200");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The remote goes away: once the broker is stale, the held connection
    // is cut (the next request on it fails), within a second of the check.
    let gone = t.bare.with_file_name("moved.git");
    std::fs::rename(&t.bare, &gone).unwrap();
    let mut last = String::new();
    let took = wait_until(Duration::from_secs(10), || {
        last = request_on(&mut stdin, &mut out);
        last.starts_with("closed")
    });
    assert!(
        last.starts_with("closed"),
        "the tunnel outlived --max-stale: {last}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(healthz(&r.admin).0, 503);

    // Back: new tunnels work; then the owner removes the service, and the
    // tunnel open at that moment is cut too.
    std::fs::rename(&gone, &t.bare).unwrap();
    wait_until(Duration::from_secs(10), || healthz(&r.admin).0 == 200);
    let (_py, mut stdin, mut out) = held_tunnel(&t, r.port);
    assert_eq!(request_on(&mut stdin, &mut out), "200");
    t.owner(&["service", "rm", "model"]);
    let took = wait_until(Duration::from_secs(10), || {
        last = request_on(&mut stdin, &mut out);
        last.starts_with("closed")
    });
    assert!(
        last.starts_with("closed"),
        "the tunnel outlived its service: {last}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}
