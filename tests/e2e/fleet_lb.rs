//! Issue 16, item 4: `deploy/`. Two brokers, each on its own clone of a
//! bare remote, behind Debian's HAProxy started with `deploy/haproxy.cfg` as
//! it is; and the systemd unit `deploy/agent-vault-broker.service`, checked
//! by `systemd-analyze verify` and its `ExecStart` run as written.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{Proc, wait_until};
use crate::fleet::{Team, curl_status, healthz, team};
use crate::harness::*;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
        .join(file)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy in the foreground with `deploy/haproxy.cfg`, in front of
/// `brokers` (proxy port, admin port); returns it and its port.
pub(crate) fn haproxy(brokers: [(u16, u16); 2]) -> (Proc, u16) {
    let port = free_port();
    let admin_port = |a: u16| a.to_string();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(deploy("haproxy.cfg"))
        .env("AV_LISTEN", format!("127.0.0.1:{port}"))
        .env("AV_BROKER1", format!("127.0.0.1:{}", brokers[0].0))
        .env("AV_BROKER1_ADMIN", admin_port(brokers[0].1))
        .env("AV_BROKER2", format!("127.0.0.1:{}", brokers[1].0))
        .env("AV_BROKER2_ADMIN", admin_port(brokers[1].1))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (Debian's haproxy package; scripts/test-all.sh installs it)");
    let child = Proc(child);
    let up = wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up < Duration::from_secs(10), "haproxy did not listen");
    (child, port)
}

fn admin_port(admin: &str) -> u16 {
    admin.rsplit(':').next().unwrap().parse().unwrap()
}

fn lines(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |t| t.lines().count())
}

/// Both replicas up, behind HAProxy; returns the audit files too.
fn fleet(t: &Team) -> (crate::fleet::Replica, crate::fleet::Replica, [PathBuf; 2]) {
    let audits = [
        t.env.tmp.path().join("audit-a.jsonl"),
        t.env.tmp.path().join("audit-b.jsonl"),
    ];
    let follow = ["--pull-interval", "300ms", "--max-stale", "10s"];
    let a = t.replica(
        "replica-a",
        &[&follow[..], &["--audit", audits[0].to_str().unwrap()]].concat(),
    );
    let b = t.replica(
        "replica-b",
        &[&follow[..], &["--audit", audits[1].to_str().unwrap()]].concat(),
    );
    (a, b, audits)
}

#[test]
fn two_replicas_behind_haproxy_follow_revocations_and_survive_a_kill() {
    let t = team();
    let (mut a, b, audits) = fleet(&t);
    let (_lb, lb) = haproxy([
        (a.port, admin_port(&a.admin)),
        (b.port, admin_port(&b.admin)),
    ]);
    // Requests through HAProxy succeed, served by both replicas.
    for i in 0..10 {
        assert_eq!(curl_status(&t, lb, &format!("/v1/lb{i}")), (200, 200));
    }
    assert!(
        lines(&audits[0]) > 0 && lines(&audits[1]) > 0,
        "one replica served nothing: {} {}",
        lines(&audits[0]),
        lines(&audits[1])
    );

    // The owner revokes and pushes: both replicas refuse within the pull
    // interval (and so does every request through HAProxy).
    t.owner(&["revoke", "bot", "api"]);
    let took = wait_until(Duration::from_secs(10), || {
        curl_status(&t, a.port, "/v1/x") != (200, 200)
            && curl_status(&t, b.port, "/v1/x") != (200, 200)
    });
    assert!(took < Duration::from_secs(5), "revocation took {took:?}");
    for i in 0..4 {
        assert_ne!(curl_status(&t, lb, &format!("/v1/revoked{i}")), (200, 200));
    }
    let saw = std::fs::read_to_string(&t.upstream_log).unwrap_or_default();
    assert!(!saw.contains("/v1/revoked"), "{saw}");

    // Granted again, then one replica is killed under load: requests go on
    // through the other, and none hangs.
    t.owner(&["grant", "bot", "api", "--mode", "use"]);
    let took = wait_until(Duration::from_secs(10), || {
        curl_status(&t, a.port, "/v1/y") == (200, 200)
            && curl_status(&t, b.port, "/v1/y") == (200, 200)
    });
    assert!(took < Duration::from_secs(5), "grant took {took:?}");
    let killed_at = Instant::now() + Duration::from_millis(800);
    let load = {
        let (token, ca, url) = (t.token.clone(), t.broker_ca.clone(), t.url("/v1/load"));
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut results = Vec::new();
            while start.elapsed() < Duration::from_secs(4) {
                let sent = Instant::now();
                let out = Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "--max-time", "20"])
                    .args(["-w", "%{http_code}"])
                    .args(["--proxy", &format!("http://127.0.0.1:{lb}")])
                    .args(["--proxy-user", &format!("bot:{token}")])
                    .args(["--cacert", ca.to_str().unwrap()])
                    .arg(&url)
                    .output()
                    .unwrap();
                let code = String::from_utf8_lossy(&out.stdout).to_string();
                results.push((sent, sent.elapsed(), code));
            }
            results
        })
    };
    std::thread::sleep(killed_at.saturating_duration_since(Instant::now()));
    a.proc.0.kill().unwrap();
    a.proc.0.wait().unwrap();
    let results = load.join().unwrap();
    let slowest = results.iter().map(|r| r.1).max().unwrap();
    assert!(
        slowest < Duration::from_secs(5),
        "a request hung: {slowest:?}"
    );
    let after: Vec<_> = results.iter().filter(|r| r.0 > killed_at).collect();
    assert!(
        after.len() >= 5,
        "too few requests after the kill: {results:?}"
    );
    // A request in flight at the instant of the kill may fail (TCP mode:
    // its connection was to the dead process); every later one succeeds.
    let failed: Vec<_> = after.iter().filter(|r| r.2 != "200").collect();
    assert!(failed.len() <= 1, "failed after the kill: {failed:?}");
    assert!(after.last().unwrap().2 == "200", "{results:?}");
    // HAProxy took the dead replica out (its health check fails).
    assert_eq!(healthz(&b.admin).0, 200);
}

#[test]
fn the_systemd_unit_verifies_and_its_exec_start_runs() {
    let unit = std::fs::read_to_string(deploy("agent-vault-broker.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    assert_eq!(words[0], "/usr/local/bin/agent-vault");
    let t = team();
    if Path::new("/usr/bin/systemd-analyze").exists() {
        // The unit as installed, with this build where it would be installed.
        let copy = t.env.tmp.path().join("agent-vault-broker.service");
        std::fs::write(&copy, unit.replace("/usr/local/bin/agent-vault", BIN)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // ExecStart as written, on this machine's paths: the addresses on port 0
    // of loopback, the key, clone and audit file the test's.
    let key = t
        .env
        .home
        .join("keys")
        .join(t.env.vault_id())
        .join("broker.key");
    let audit = t.env.tmp.path().join("unit-audit.jsonl");
    for w in words.iter_mut() {
        *w = match w.as_str() {
            "0.0.0.0:14322" | "0.0.0.0:14323" => "127.0.0.1:0".to_owned(),
            "/var/lib/agent-vault/broker.key" => key.display().to_string(),
            "/var/log/agent-vault/audit.jsonl" => audit.display().to_string(),
            other => other.to_owned(),
        };
    }
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let r = t.replica_raw("unit-clone", &args);
    assert!(
        wait_until(Duration::from_secs(5), || r
            .log
            .lock()
            .unwrap()
            .contains("following"))
            < Duration::from_secs(5)
    );
    let log = r.log.lock().unwrap().clone();
    assert!(log.contains("broker listening with TLS on"), "{log}");
    assert!(
        log.contains("following the vault's remote every 30s"),
        "{log}"
    );
    assert_eq!(healthz(&r.admin).0, 200);
}
