//! Scrubbing, end to end: a hostile upstream (`transform_server.py`) takes
//! the credential the broker injected and hands it back through every
//! transformation the scrubber claims to catch (base64 at each offset,
//! percent-encoding, hex, JSON and HTML escapes), in headers, bodies and
//! trailers, the body plain, chunked (the value cut across chunk
//! boundaries) and compressed (gzip, deflate, br, streamed and whole), and
//! in a WebSocket frame. Real clients (curl over HTTP/1.1 and HTTP/2, with
//! and without `--compressed`; Python requests) must never get it, and
//! must get the marker that shows the response did come through. A body
//! in an encoding the broker does not know is refused.
//!
//! One broker and one upstream serve the whole table; each client fetches
//! every case in one process.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::broker::{Proc, start_broker_with};
use crate::harness::*;

/// The injected value: `/`, `+` and `=` in it, a space, quotes, `&`, `<`
/// and `>`, so that every encoding writes it differently (and base64 of
/// `~~~` and `???` holds `+` and `/`).
const VALUE: &str = "s3/cr+t= \"A&B\"<x>~~~???-9";

const MARKER: &str = "[REDACTED:api/token]";

/// The shortest piece of an encoded value that counts as a leak.
const WINDOW: usize = 12;

struct Table {
    _env: Env,
    _upstream: Proc,
    up_port: u16,
    log: PathBuf,
    upstream_ca: PathBuf,
    broker_ca: PathBuf,
    _broker: Proc,
    port: u16,
    token: String,
    transforms: Vec<String>,
    modes: Vec<String>,
}

/// The hostile upstream, with its own CA; its port and case table.
fn upstream(dir: &Path) -> (Proc, u16, PathBuf, PathBuf, serde_json::Value) {
    let (child, mut out, ca_path, log) = crate::broker::python_tls_upstream(
        dir,
        "transform",
        "transform_server.py",
        "transforms.jsonl",
        &[],
    );
    let (mut port, mut table) = (String::new(), String::new());
    out.read_line(&mut port).unwrap();
    out.read_line(&mut table).unwrap();
    let port = port
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("upstream did not start: {port}"));
    let table = serde_json::from_str(&table).unwrap();
    (child, port, ca_path, log, table)
}

fn setup() -> Table {
    let env = Env::new();
    let (up, up_port, upstream_ca, log, table) = upstream(env.tmp.path());
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
    let broker_ca = env.broker_ca();
    let (broker, port) = start_broker_with(
        &env,
        &[
            "--allow-private-upstreams",
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
        ],
        &[],
    );
    let token = env.json(&["token", "issue", "bot", "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let names = |k: &str| -> Vec<String> {
        table[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    Table {
        transforms: names("transforms"),
        modes: names("modes"),
        _env: env,
        _upstream: up,
        up_port,
        log,
        upstream_ca,
        broker_ca,
        _broker: broker,
        port,
        token,
    }
}

/// What one client got for one case: the status, and all it showed of
/// the response (headers, the body as it decoded it, trailers where it
/// shows them).
#[derive(Debug)]
struct Got {
    status: u16,
    text: String,
}

impl Table {
    fn url(&self, case: &str) -> String {
        format!("https://127.0.0.1:{}/t/{case}", self.up_port)
    }

    /// Every transformation in every mode.
    fn cases(&self) -> Vec<String> {
        self.transforms
            .iter()
            .flat_map(|t| self.modes.iter().map(move |m| format!("{t}/{m}")))
            .collect()
    }

    /// Fewer, for the clients that differ only between them and the
    /// broker: every transformation in a few modes, every mode for one
    /// transformation of each family.
    fn sample(&self) -> Vec<String> {
        let few_modes = ["plain", "chunked", "br-chunked", "trailer"];
        let few_transforms = [
            "raw",
            "b64-github60-1",
            "b64-url-nopad-end-2",
            "pct-reserved-lower",
            "hex-upper",
            "json-u-upper",
            "html-named-all",
        ];
        self.cases()
            .into_iter()
            .filter(|c| {
                let (t, m) = c.split_once('/').unwrap();
                few_modes.contains(&m) || few_transforms.contains(&t)
            })
            .collect()
    }

    /// Every case with one curl process (the tunnel reused), the output
    /// cut per transfer at a `--write-out` line that carries its status.
    fn curl(&self, cases: &[String], extra: &[&str]) -> Vec<Got> {
        const END: &str = "\n@@transfer-end@@ ";
        let out = Command::new("curl")
            .args(["-sS", "-g", "--max-time", "120", "--proxy"])
            .arg(format!("http://127.0.0.1:{}", self.port))
            .args(["--proxy-user", &format!("bot:{}", self.token)])
            .arg("--cacert")
            .arg(&self.broker_ca)
            // An HTTP/1.1 client gets trailers only when it says it takes them.
            .args(["-H", "TE: trailers", "-D", "-", "-w"])
            .arg(format!("{END}%{{http_code}}\n"))
            .args(extra)
            .args(cases.iter().map(|c| self.url(c)))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Part 0 is the first transfer; each later part starts with the
        // status of the transfer before it, then the next transfer.
        let parts: Vec<&str> = text.split(END).collect();
        let mut got = Vec::new();
        for (i, part) in parts.iter().enumerate().take(parts.len().saturating_sub(1)) {
            let shown = if i == 0 {
                *part
            } else {
                part.split_once('\n').map_or("", |(_, rest)| rest)
            };
            let status = parts[i + 1].lines().next().unwrap_or("").trim();
            got.push(Got {
                status: status.parse().unwrap_or(0),
                text: shown.to_owned(),
            });
        }
        assert_eq!(
            got.len(),
            cases.len(),
            "curl {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        got
    }

    /// Each transformation (plain body) straight from the upstream, the
    /// broker bypassed: what the agent would see without it. One curl.
    fn direct(&self) -> Vec<String> {
        const END: &str = "\n@@transfer-end@@\n";
        let auth = format!("Authorization: Bearer {VALUE}");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "--noproxy", "*", "--cacert"])
            .arg(&self.upstream_ca)
            .args(["-H", &auth, "-D", "-", "-w", END])
            .args(
                self.transforms
                    .iter()
                    .map(|t| self.url(&format!("{t}/plain"))),
            )
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let got: Vec<String> = text.split(END).map(str::to_owned).collect();
        assert_eq!(got.len(), self.transforms.len() + 1, "{text}");
        got
    }

    /// Every case with Python requests, one session.
    fn requests(&self, cases: &[String]) -> Vec<Got> {
        let script = r#"
import json, os, sys, requests
s = requests.Session()
s.trust_env = False  # no NO_PROXY from the environment: through the broker
proxy = "http://bot:%s@127.0.0.1:%s" % (os.environ["TOKEN"], os.environ["PORT"])
s.proxies = {"https": proxy}
s.verify = os.environ["CA"]
for url in sys.stdin.read().split():
    try:
        r = s.get(url, allow_redirects=False, timeout=30)
        head = "".join("%s: %s\r\n" % kv for kv in r.headers.items())
        out = {"status": r.status_code, "text": head + "\r\n" + r.content.decode("utf-8", "replace")}
    except requests.RequestException as e:
        out = {"status": 0, "text": "error: %s" % e}
    print(json.dumps(out), flush=True)
"#;
        let mut child = Command::new("python3")
            .args(["-c", script])
            .env("TOKEN", &self.token)
            .env("PORT", self.port.to_string())
            .env("CA", &self.broker_ca)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let urls: Vec<String> = cases.iter().map(|c| self.url(c)).collect();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(urls.join("\n").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let got: Vec<Got> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Got {
                    status: v["status"].as_u64().unwrap() as u16,
                    text: v["text"].as_str().unwrap().to_owned(),
                }
            })
            .collect();
        assert_eq!(got.len(), cases.len());
        got
    }

    /// What must never reach a client, per transformation (the upstream
    /// wrote it down from the value it received).
    fn needles(&self) -> HashMap<String, Vec<String>> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let needles = v["needles"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_owned())
                    .collect();
                (v["transform"].as_str().unwrap().to_owned(), needles)
            })
            .collect()
    }
}

impl Table {
    /// One WebSocket frame holding every transformation, through the
    /// broker to `ws_client.py`: masked (same length, as frames count
    /// bytes), none of it left.
    fn websocket(&self, needles: &HashMap<String, Vec<String>>) -> Vec<String> {
        let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/ws_client.py");
        let out = Command::new("python3")
            .arg(client)
            .args([
                &self.port.to_string(),
                &self.token,
                self.broker_ca.to_str().unwrap(),
                "127.0.0.1",
                &self.up_port.to_string(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut wrong = Vec::new();
        if !out.status.success() || !text.contains("raw: ***") {
            wrong.push(format!(
                "websocket: no masked frame: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let all: Vec<String> = needles.values().flatten().cloned().collect();
        let leaked = leaks(&text, &all);
        if !leaked.is_empty() {
            wrong.push(format!("websocket: LEAKED {leaked:?} in {text:?}"));
        }
        wrong
    }
}

/// Pieces of any needle (or of the value) `text` shows: any run of
/// [`WINDOW`] characters, also once line breaks (raw or JSON-escaped) are
/// taken out, and regardless of case.
fn leaks(text: &str, needles: &[String]) -> Vec<String> {
    let joined = text
        .replace("\\n", "")
        .replace("\\r", "")
        .replace(['\r', '\n'], "");
    let lower = joined.to_lowercase();
    let mut found = Vec::new();
    for needle in needles.iter().map(String::as_str).chain([VALUE]) {
        let chars: Vec<char> = needle.chars().collect();
        for w in chars.windows(WINDOW.min(chars.len())) {
            let w: String = w.iter().collect();
            if text.contains(&w) || joined.contains(&w) || lower.contains(&w.to_lowercase()) {
                found.push(w);
                break;
            }
        }
    }
    found
}

/// The line of `text` that is header `name`, if any.
fn header<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    text.lines().find(|l| {
        l.len() > name.len()
            && l[..name.len()].eq_ignore_ascii_case(name)
            && l.as_bytes()[name.len()] == b':'
    })
}

/// Checks one client's answers to every case; returns what is wrong.
fn check(
    client: &str,
    cases: &[String],
    got: &[Got],
    needles: &HashMap<String, Vec<String>>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (case, g) in cases.iter().zip(got) {
        let (transform, mode) = case.split_once('/').unwrap();
        let Some(needles) = needles.get(transform) else {
            wrong.push(format!("{client} {case}: the upstream never answered it"));
            continue;
        };
        let leaked = leaks(&g.text, needles);
        if !leaked.is_empty() {
            wrong.push(format!(
                "{client} {case}: LEAKED {leaked:?} in {:?}",
                g.text
            ));
        }
        if mode.starts_with("unknown") {
            if g.status != 502 {
                wrong.push(format!(
                    "{client} {case}: status {} (want 502): {:?}",
                    g.status, g.text
                ));
            }
            continue;
        }
        if g.status != 200 {
            wrong.push(format!(
                "{client} {case}: status {}: {:?}",
                g.status, g.text
            ));
            continue;
        }
        for name in ["x-leak", "location"] {
            if !header(&g.text, name).is_some_and(|h| h.contains(MARKER)) {
                wrong.push(format!(
                    "{client} {case}: no marker in {name}: {:?}",
                    g.text
                ));
            }
        }
        // curl shows trailers (HTTP/1.1 ones because it sent `TE: trailers`).
        if mode == "trailer"
            && client.starts_with("curl")
            && !header(&g.text, "x-leak-trailer").is_some_and(|h| h.contains(MARKER))
        {
            wrong.push(format!(
                "{client} {case}: no scrubbed trailer: {:?}",
                g.text
            ));
        }
        let body = g
            .text
            .split_once(&format!("case {transform} {mode}: "))
            .and_then(|(_, rest)| rest.split_once("-- end of case"))
            .map(|(b, _)| b);
        if !body.is_some_and(|b| b.contains(MARKER)) {
            wrong.push(format!(
                "{client} {case}: no marker in the body: {:?}",
                g.text
            ));
        }
    }
    wrong
}

#[test]
fn no_transformation_of_the_value_reaches_a_client() {
    let t = setup();
    let (all, sample) = (t.cases(), t.sample());
    let started = std::time::Instant::now();
    let mut wrong = Vec::new();
    let runs: [(&str, &[&str], &[String]); 3] = [
        ("curl", &["--http1.1"], &all),
        ("curl --compressed", &["--http1.1", "--compressed"], &sample),
        ("curl --http2", &["--http2", "--compressed"], &sample),
    ];
    let mut needles = HashMap::new();
    for (name, extra, cases) in runs {
        let got = t.curl(cases, extra);
        if needles.is_empty() {
            needles = t.needles();
        }
        wrong.extend(check(name, cases, &got, &needles));
    }
    let got = t.requests(&sample);
    wrong.extend(check("requests", &sample, &got, &needles));
    wrong.extend(t.websocket(&needles));
    eprintln!(
        "{} + 3 x {} cases and a WebSocket in {:?}",
        all.len(),
        sample.len(),
        started.elapsed()
    );
    assert!(
        needles["raw"] == vec![VALUE.to_owned()],
        "the upstream got {:?}",
        needles["raw"]
    );
    // The check can fail: straight from the upstream, it finds every
    // transformation.
    let direct = t.direct();
    for (transform, text) in t.transforms.iter().zip(&direct) {
        assert!(
            !leaks(text, &needles[transform]).is_empty(),
            "the check does not see {transform} in {text:?}"
        );
    }
    assert!(
        wrong.is_empty(),
        "{} failures:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
