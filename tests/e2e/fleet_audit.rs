//! Issue 16, item 3: audit records into a log pipeline. An OTLP/HTTP
//! receiver written with the OpenTelemetry protobufs (`otlp_receiver.py`,
//! which refuses JSON that does not parse into them) and Debian's rsyslog,
//! started here with a configuration of its own on loopback UDP and TCP and
//! a Unix socket. Every record arrives, holds no value and no token, and
//! with the receivers down every record is counted dropped, exactly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::broker::{Proc, wait_until};
use crate::fleet::{Replica, Team, VALUE, admin_get, curl_status, team};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port nothing listens on, and nothing will while the test
/// runs: below the ephemeral range, so no test's port-0 listener is given
/// it (a freed ephemeral port was, and took a "down" receiver's records).
fn closed_port() -> u16 {
    (1..1024)
        .find(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_err())
        .expect("a closed port below 1024")
}

/// The OTLP receiver; its process, port and the file it writes records to.
fn otlp_receiver(dir: &Path) -> (Proc, u16, PathBuf) {
    let out = dir.join("otlp-records.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/otlp_receiver.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| {
        panic!("receiver did not start (pip install opentelemetry-proto): {line:?}")
    });
    (Proc(child), port, out)
}

/// rsyslogd in the foreground with its own configuration: UDP and TCP on
/// loopback, a Unix socket, every message written with its fields to a file.
struct Rsyslog {
    _proc: Proc,
    udp: u16,
    tcp: u16,
    socket: PathBuf,
    out: PathBuf,
}

fn rsyslog(dir: &Path) -> Rsyslog {
    let dir = dir.join("rsyslog");
    std::fs::create_dir_all(&dir).unwrap();
    let (udp, tcp) = (free_port(), free_port());
    let socket = dir.join("log.sock");
    let out = dir.join("out.log");
    let conf = format!(
        r#"global(workDirectory="{d}")
module(load="imudp")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
template(name="fields" type="string" string="%inputname% %syslogfacility-text% %syslogseverity-text% %app-name% %msgid% %structured-data% %msg%\n")
ruleset(name="av") {{ action(type="omfile" file="{out}" template="fields") }}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="av")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="av")
input(type="imuxsock" Socket="{sock}" ruleset="av" UseSpecialParser="off")
"#,
        d = dir.display(),
        out = out.display(),
        sock = socket.display(),
    );
    let conf_file = dir.join("rsyslog.conf");
    std::fs::write(&conf_file, conf).unwrap();
    let child = Command::new("/usr/sbin/rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf_file)
        .arg("-i")
        .arg(dir.join("pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rsyslogd (Debian's rsyslog; scripts/test-all.sh installs it)");
    let ready = wait_until(Duration::from_secs(10), || {
        socket.exists() && std::net::TcpStream::connect(("127.0.0.1", tcp)).is_ok()
    });
    assert!(ready < Duration::from_secs(10), "rsyslogd did not start");
    Rsyslog {
        _proc: Proc(child),
        udp,
        tcp,
        socket,
        out,
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A sample of /metrics: the value of the line starting with `name{labels}`.
fn sample(admin: &str, series: &str) -> Option<u64> {
    admin_get(admin, "/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// SIGTERM, then what the broker printed until it stopped.
fn stop(r: Replica) -> String {
    let Replica { mut proc, log, .. } = r;
    Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()
        .unwrap();
    proc.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    log.lock().unwrap().clone()
}

/// Three brokered requests and one refusal (a host no service covers).
fn traffic(t: &Team, port: u16) {
    for i in 0..3 {
        assert_eq!(curl_status(t, port, &format!("/v1/audit{i}")), (200, 200));
    }
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-w",
            "%{http_connect}",
        ])
        .args(["--proxy", &format!("http://127.0.0.1:{port}")])
        .args(["--proxy-user", &format!("bot:{}", t.token)])
        .arg("https://127.0.0.1:1/elsewhere")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
}

#[test]
fn audit_records_reach_an_otlp_receiver_and_rsyslog_over_udp_tcp_and_a_unix_socket() {
    let t = team();
    let dir = t.env.tmp.path();
    let (_rx, rx_port, records) = otlp_receiver(dir);
    let rs = rsyslog(dir);
    let (otlp, udp, tcp, unix) = (
        format!("http://127.0.0.1:{rx_port}/v1/logs"),
        format!("udp://127.0.0.1:{}", rs.udp),
        format!("tcp://127.0.0.1:{}", rs.tcp),
        format!("unix://{}", rs.socket.display()),
    );
    let r = t.replica(
        "replica-audit",
        &[
            "--audit-otlp",
            &otlp,
            "--audit-syslog",
            &udp,
            "--audit-syslog",
            &tcp,
            "--audit-syslog",
            &unix,
        ],
    );
    traffic(&t, r.port);
    let took = wait_until(Duration::from_secs(10), || {
        read(&records).lines().count() == 4 && read(&rs.out).lines().count() == 12
    });
    assert!(
        took < Duration::from_secs(10),
        "{}\n{}",
        read(&records),
        read(&rs.out)
    );

    // OTLP: parsed into the protobufs by the receiver; fields as attributes.
    let recs: Vec<serde_json::Value> = read(&records)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        recs.iter()
            .all(|r| r["resource"]["service.name"] == "agent-vault-broker")
    );
    let ok: Vec<_> = recs
        .iter()
        .filter(|r| r["severity_text"] == "INFO")
        .collect();
    assert_eq!(ok.len(), 3, "{recs:?}");
    for r in &ok {
        let a = &r["attributes"];
        assert_eq!(a["agent_vault.agent"], "bot");
        assert_eq!(a["agent_vault.service"], "api");
        assert_eq!(a["agent_vault.secrets"], serde_json::json!(["api/token"]));
        assert_eq!(a["http.response.status_code"], 200);
        assert!(a["url.path"].as_str().unwrap().starts_with("/v1/audit"));
        // The body is one line to read ("GET host:port/path 200").
        let body = r["body"].as_str().unwrap();
        assert!(
            body.starts_with("GET 127.0.0.1")
                && body.contains("/v1/audit")
                && body.ends_with(" 200"),
            "{body}"
        );
        assert!(r["time_unix_nano"].as_u64().unwrap() > 1_700_000_000_000_000_000);
    }
    let refused = recs.iter().find(|r| r["severity_text"] == "WARN").unwrap();
    assert_eq!(
        refused["attributes"]["agent_vault.reason"],
        "host-not-covered"
    );

    // rsyslog: four RFC 5424 messages per transport, parsed into fields.
    let syslog = read(&rs.out);
    for input in ["imudp", "imtcp", "imuxsock"] {
        let lines: Vec<_> = syslog.lines().filter(|l| l.starts_with(input)).collect();
        assert_eq!(lines.len(), 4, "{input}: {syslog}");
        assert_eq!(
            lines
                .iter()
                .filter(
                    |l| l.contains(" authpriv info agent-vault audit [audit@32473 agent=\"bot\"")
                )
                .count(),
            3,
            "{syslog}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" authpriv warning ")
                    && l.contains("reason=\"host-not-covered\"")),
            "{syslog}"
        );
    }
    // No value and no token in anything a pipeline got.
    for text in [read(&records), syslog] {
        assert!(!text.contains(VALUE), "a value was exported");
        assert!(!text.contains(&t.token), "a token was exported");
    }
    for sink in ["otlp", "syslog-udp", "syslog-tcp", "syslog-unix"] {
        // A receiver has the records a moment before the exporter has its
        // answer and counts them delivered.
        let s = format!("agent_vault_audit_exported_total{{sink=\"{sink}\"}}");
        wait_until(Duration::from_secs(10), || sample(&r.admin, &s) == Some(4));
        assert_eq!(sample(&r.admin, &s), Some(4), "{sink}");
        let s = format!("agent_vault_audit_export_dropped_total{{sink=\"{sink}\"}}");
        assert_eq!(sample(&r.admin, &s), Some(0), "{sink}");
    }
    let said = stop(r);
    assert!(
        said.contains("audit export otlp: 4 delivered, 0 dropped"),
        "{said}"
    );
    assert!(
        said.contains("audit export syslog-unix: 4 delivered, 0 dropped"),
        "{said}"
    );
}

#[test]
fn with_the_receivers_down_every_record_is_counted_dropped() {
    let t = team();
    let dir = t.env.tmp.path();
    let otlp = format!("http://127.0.0.1:{}/v1/logs", closed_port());
    let tcp = format!("tcp://127.0.0.1:{}", closed_port());
    let unix = format!("unix://{}", dir.join("nobody-listens.sock").display());
    let r = t.replica(
        "replica-down",
        &[
            "--audit-otlp",
            &otlp,
            "--audit-syslog",
            &tcp,
            "--audit-syslog",
            &unix,
        ],
    );
    traffic(&t, r.port);
    // Each batch is tried 5 times over 1.5 s, then its records are dropped.
    let sinks = ["otlp", "syslog-tcp", "syslog-unix"];
    let dropped = |sink: &str| {
        sample(
            &r.admin,
            &format!("agent_vault_audit_export_dropped_total{{sink=\"{sink}\"}}"),
        )
    };
    let took = wait_until(Duration::from_secs(15), || {
        sinks.iter().all(|s| dropped(s) == Some(4))
    });
    assert!(took < Duration::from_secs(15), "{:?}", sinks.map(dropped));
    // And stays exact: no record counted twice.
    std::thread::sleep(Duration::from_secs(2));
    for sink in sinks {
        assert_eq!(dropped(sink), Some(4), "{sink}");
        let s = format!("agent_vault_audit_exported_total{{sink=\"{sink}\"}}");
        assert_eq!(sample(&r.admin, &s), Some(0), "{sink}");
    }
    // Records still queued when the broker stops are dropped too, and said.
    traffic(&t, r.port);
    let said = stop(r);
    for sink in sinks {
        assert!(
            said.contains(&format!(
                "audit export {sink}: 0 delivered, 8 dropped (last failure: "
            )),
            "{said}"
        );
    }
}
