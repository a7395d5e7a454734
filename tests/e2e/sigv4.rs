//! Issue 13, items 4 and 6: AWS SigV4 signed by the broker, checked by an
//! upstream that recomputes the signature with botocore (and refuses a
//! mismatch); and tunnel services, where the agent's TLS reaches the
//! upstream itself and the client verifies the upstream's own certificate.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::broker::{Proc, start_broker_with, upstream, wait_until};
use crate::harness::*;

const KEY_ID: &str = "AKIATESTREALKEY4SIG7";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYrealSECRET";
const DUMMY_ID: &str = "AKIADUMMYAGENTKEY000";
const DUMMY_SECRET: &str = "dummy/secret/the/agent/holds/000000000000";

/// The botocore-checking upstream, with its own CA; returns it, its port,
/// its CA file and its log.
fn sigv4_upstream(dir: &Path) -> (Proc, u16, PathBuf, PathBuf) {
    let (child, mut out, ca_path, log) = crate::broker::python_tls_upstream(
        dir,
        "aws",
        "sigv4_server.py",
        "aws.log",
        &[("SIGV4_KEY_ID", KEY_ID), ("SIGV4_SECRET", SECRET)],
    );
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| {
        panic!("the SigV4 upstream did not start (is botocore installed?): {line:?}")
    });
    (child, port, ca_path, log)
}

/// The status of the last response in curl's `-D -` output (the first is
/// the proxy's answer to CONNECT).
fn status(head: &str) -> u16 {
    head.lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct Aws {
    env: Env,
    _upstream: Proc,
    up_port: u16,
    up_ca: PathBuf,
    log: PathBuf,
    broker_ca: PathBuf,
    audit: PathBuf,
    _broker: Proc,
    port: u16,
    token: String,
}

fn aws() -> Aws {
    let env = Env::new();
    let (up, up_port, up_ca, log) = sigv4_upstream(env.tmp.path());
    env.set("aws/id", KEY_ID.as_bytes());
    env.set("aws/secret", SECRET.as_bytes());
    env.add_agent("bot");
    env.ok(&["grant", "bot", "aws", "--mode", "use"]);
    env.ok(&["broker", "init"]);
    let host = format!("127.0.0.1:{up_port}");
    let added = env.ok(&[
        "service",
        "add",
        "s3local",
        "--sigv4",
        "--host",
        &host,
        "--region",
        "us-east-1",
        "--aws-service",
        "s3",
        "--access-key-id",
        "aws/id",
        "--secret-access-key",
        "aws/secret",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&added.stdout).trim(),
        format!("service s3local: {host} (sigv4 aws/id aws/secret, region us-east-1, service s3)")
    );
    let broker_ca = env.broker_ca();
    let audit = env.tmp.path().join("audit.jsonl");
    let (broker, port) = start_broker_with(
        &env,
        &[
            "--allow-private-upstreams",
            "--upstream-ca",
            up_ca.to_str().unwrap(),
            "--audit",
            audit.to_str().unwrap(),
        ],
        &[],
    );
    let token = env.json(&["token", "issue", "bot", "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    Aws {
        env,
        _upstream: up,
        up_port,
        up_ca,
        log,
        broker_ca,
        audit,
        _broker: broker,
        port,
        token,
    }
}

impl Aws {
    fn proxy(&self) -> String {
        format!("http://bot:{}@127.0.0.1:{}", self.token, self.port)
    }

    /// curl through the broker; returns (head and body, stderr).
    fn curl(&self, path: &str, extra: &[&str]) -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--proxy", &self.proxy()])
            .args(["--cacert", self.broker_ca.to_str().unwrap(), "-D", "-"])
            .args(extra)
            .arg(format!("https://127.0.0.1:{}{path}", self.up_port))
            .output()
            .expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The upstream's records, in order.
    fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn last_seen(&self) -> Value {
        self.seen().pop().expect("the upstream saw no request")
    }

    /// A Python script run with the agent's view: the broker's proxy and
    /// CA, a dummy AWS key in its environment.
    fn python(&self, script: &str) -> std::process::Output {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .env("AWS_ACCESS_KEY_ID", DUMMY_ID)
            .env("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("PROXY", self.proxy())
            .env("CA", &self.broker_ca)
            .env("UP_CA", &self.up_ca)
            .env("ENDPOINT", format!("https://127.0.0.1:{}", self.up_port))
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .expect("python3")
    }
}

/// The upstream is a real check: a request signed with a wrong key, or not
/// signed, sent to it directly, is refused with 403; the same signed with
/// the real key passes.
#[test]
fn the_upstream_refuses_a_wrong_signature() {
    let a = aws();
    let script = r#"
import os, requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
def send(key_id, secret):
    r = AWSRequest(method="GET", url=os.environ["ENDPOINT"] + "/bucket/k")
    if key_id:
        S3SigV4Auth(Credentials(key_id, secret), "s3", "us-east-1").add_auth(r)
    p = r.prepare()
    return requests.get(p.url, headers=dict(p.headers), verify=os.environ["UP_CA"], timeout=10).status_code
print(send(None, None), send(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]),
      send(os.environ["REAL_ID"], "not-the-secret"), send(os.environ["REAL_ID"], os.environ["REAL_SECRET"]))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("AWS_ACCESS_KEY_ID", DUMMY_ID)
        .env("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
        .env("REAL_ID", KEY_ID)
        .env("REAL_SECRET", SECRET)
        .env("UP_CA", &a.up_ca)
        .env("ENDPOINT", format!("https://127.0.0.1:{}", a.up_port))
        .env_remove("HTTPS_PROXY")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "403 403 403 200",
        "{}",
        stderr(&out)
    );
    let refused: Vec<Value> = a.seen().into_iter().map(|r| r["refused"].clone()).collect();
    assert_eq!(
        refused,
        vec![
            Value::from("no SigV4 Authorization header"),
            Value::from("InvalidAccessKeyId"),
            Value::from("SignatureDoesNotMatch"),
            Value::Null
        ]
    );
}

/// curl knows nothing of AWS: the broker signs a plain GET and a PUT with
/// a body (its hash signed), and scrubs the keys out of what comes back.
#[test]
fn curl_requests_are_signed_by_the_broker() {
    let a = aws();
    let (head, err) = a.curl("/bucket/some%20key.txt?list-type=2&prefix=a%2Fb", &[]);
    assert_eq!(status(&head), 200, "{head}\n{err}");
    let seen = a.last_seen();
    assert_eq!(seen["ok"], true, "{seen}");
    assert_eq!(
        seen["path"],
        "/bucket/some%20key.txt?list-type=2&prefix=a%2Fb"
    );
    // The echo of the Authorization header (it holds the key id) comes back
    // scrubbed, in the header and in the body.
    assert!(!head.contains(KEY_ID), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-echo-auth: aws4-hmac-sha256 credential=[redacted:aws/id]/"),
        "{head}"
    );

    let body = "hello, signed payload";
    let (head, err) = a.curl(
        "/bucket/put.txt",
        &[
            "-X",
            "PUT",
            "--data-binary",
            body,
            "-H",
            "Content-Type: text/plain",
        ],
    );
    assert_eq!(status(&head), 200, "{head}\n{err}");
    let seen = a.last_seen();
    assert_eq!(seen["ok"], true, "{seen}");
    assert_eq!(seen["body_len"], body.len());
    assert_eq!(
        seen["payload"], seen["body_sha256"],
        "the body's hash is signed"
    );
    assert!(
        seen["headers"]["authorization"]
            .as_str()
            .unwrap()
            .contains("content-type;host;x-amz-content-sha256;x-amz-date"),
        "{seen}"
    );

    // The secret key itself, reflected, is scrubbed too.
    let (head, _) = a.curl("/leak", &[]);
    assert!(head.contains("[REDACTED:aws/secret]"), "{head}");
    assert!(!head.contains(SECRET) && !head.contains(KEY_ID), "{head}");

    // The audit names the service and the secrets, never a value.
    let audit = std::fs::read_to_string(&a.audit).unwrap();
    assert!(audit.contains(r#""service":"s3local""#), "{audit}");
    assert!(
        audit.contains(r#""secrets":["aws/id","aws/secret"]"#),
        "{audit}"
    );
    assert!(!audit.contains(KEY_ID) && !audit.contains(SECRET));
}

/// boto3 itself, with a dummy key in its environment: an UNSIGNED-PAYLOAD
/// upload (payload signing off) stays unsigned, an upload whose hash boto3
/// signed keeps that hash, a download works; the upstream sees the real
/// key's signature every time.
#[test]
fn boto3_with_a_dummy_key_goes_through() {
    let a = aws();
    let script = r#"
import json, os, boto3, botocore
from botocore.config import Config
extra = {}
if tuple(int(x) for x in botocore.__version__.split(".")[:2]) >= (1, 36):
    # Newer botocore adds a CRC32 trailer by default; plain UNSIGNED-PAYLOAD here.
    extra["request_checksum_calculation"] = "when_required"
def client(sign_payload):
    return boto3.client("s3", endpoint_url=os.environ["ENDPOINT"], verify=os.environ["CA"],
        config=Config(proxies={"https": os.environ["PROXY"]}, retries={"max_attempts": 1},
                      s3={"addressing_style": "path", "payload_signing_enabled": sign_payload}, **extra))
out = {}
out["unsigned"] = client(False).put_object(Bucket="bucket", Key="big.bin", Body=b"u" * 300000)["ResponseMetadata"]["HTTPStatusCode"]
out["signed"] = client(True).put_object(Bucket="bucket", Key="small.txt", Body=b"signed by boto3")["ResponseMetadata"]["HTTPStatusCode"]
got = client(False).get_object(Bucket="bucket", Key="small.txt")["Body"].read().decode()
out["get_scrubbed"] = "[REDACTED:aws/id]" in got and os.environ["AWS_ACCESS_KEY_ID"] not in got
print(json.dumps(out))
"#;
    let out = a.python(script);
    let got: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("boto3 failed: {}", stderr(&out)));
    assert_eq!(
        got,
        serde_json::json!({"unsigned": 200, "signed": 200, "get_scrubbed": true})
    );
    let seen = a.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|s| s["ok"] == true), "{seen:?}");
    assert_eq!(seen[0]["payload"], "UNSIGNED-PAYLOAD");
    assert_eq!(seen[0]["body_len"], 300000);
    assert_eq!(seen[1]["payload"], seen[1]["body_sha256"]);
    for s in &seen {
        let auth = s["headers"]["authorization"].as_str().unwrap();
        assert!(auth.contains(&format!("Credential={KEY_ID}/")), "{auth}");
    }
}

/// What the broker cannot sign is refused with a reason: a chunk-signed
/// upload, and a body it would have to hash over the cap.
#[test]
fn unsignable_requests_are_refused_clearly() {
    let a = aws();
    let (head, _) = a.curl(
        "/bucket/chunked",
        &[
            // Refused before its body is read: over HTTP/2 curl may see the
            // stream reset before the answer, so HTTP/1.1 here.
            "--http1.1",
            "-X",
            "PUT",
            "--data-binary",
            "x",
            "-H",
            "x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        ],
    );
    assert_eq!(status(&head), 400, "{head}");
    assert!(head.contains("UNSIGNED-PAYLOAD"), "{head}");
    let big = a.env.tmp.path().join("big.bin");
    std::fs::write(&big, vec![b'b'; 17 << 20]).unwrap();
    let (head, err) = a.curl(
        "/bucket/big",
        &[
            "--http1.1",
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", big.display()),
        ],
    );
    assert_eq!(status(&head), 413, "{head}\n{err}");
    assert!(head.contains("at most 16 MiB"), "{head}");
    // The same body as UNSIGNED-PAYLOAD streams through.
    let (head, _) = a.curl(
        "/bucket/big",
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", big.display()),
            "-H",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD",
        ],
    );
    assert_eq!(status(&head), 200, "{head}");
    let seen = a.last_seen();
    assert_eq!(
        (seen["ok"].clone(), seen["body_len"].clone()),
        (Value::from(true), Value::from(17 << 20))
    );
}

/// `--template s3|bedrock --region R`: the region's endpoints, signed with
/// the two keys; what is missing is said.
#[test]
fn aws_templates() {
    let env = Env::new();
    env.set("aws/id", KEY_ID.as_bytes());
    env.set("aws/secret", SECRET.as_bytes());
    let keys = [
        "--access-key-id",
        "aws/id",
        "--secret-access-key",
        "aws/secret",
    ];
    let mut args = vec![
        "service",
        "add",
        "s3",
        "--template",
        "s3",
        "--region",
        "eu-west-1",
    ];
    args.extend(keys);
    env.ok(&args);
    let mut args = vec![
        "service",
        "add",
        "br",
        "--template",
        "bedrock",
        "--region",
        "us-west-2",
    ];
    args.extend(keys);
    env.ok(&args);
    let list = env.json(&["service", "list"]);
    assert_eq!(
        list["s3"]["hosts"],
        serde_json::json!(["s3.eu-west-1.amazonaws.com", "*.s3.eu-west-1.amazonaws.com"])
    );
    assert_eq!(
        list["br"]["auth"],
        serde_json::json!({"sigv4": {"access_key_id": "aws/id", "secret_access_key": "aws/secret", "region": "us-west-2", "service": "bedrock"}})
    );
    let mut args = vec!["service", "add", "x", "--template", "s3"];
    args.extend(keys);
    assert!(env.fail(&args).contains("--template s3 needs --region"));
    let err = env.fail(&[
        "service",
        "add",
        "x",
        "--sigv4",
        "--host",
        "h.example",
        "--access-key-id",
        "aws/id",
    ]);
    assert!(err.contains("--secret-access-key"), "{err}");
}

/// A tunnel service: the client verifies the upstream's own certificate
/// through the broker (and fails with only the vault's CA); nothing is
/// injected; one audit record with the bytes each way.
#[test]
fn tunnel_services_are_not_intercepted() {
    let env = Env::new();
    let (_up, up_port, up_ca, up_log) = upstream(env.tmp.path());
    env.add_agent("bot");
    env.ok(&["broker", "init"]);
    let host = format!("127.0.0.1:{up_port}");
    let out = env.ok(&["service", "add", "model", "--tunnel", "--host", &host]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("service model: {host} (tunnel, not intercepted)")
    );
    // A tunnel names no secret, and cannot be held to paths.
    env.set("api/token", b"tok_REAL_VALUE_123");
    let err = env.fail(&[
        "service",
        "add",
        "t2",
        "--tunnel",
        "--bearer",
        "api/token",
        "--host",
        "x.example",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = env.fail(&[
        "service",
        "add",
        "t2",
        "--tunnel",
        "--substitute",
        "api/token",
        "--host",
        "x.example",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    let services = env.vault.join(".agent-vault/services.yaml");
    let before = std::fs::read_to_string(&services).unwrap();
    assert!(before.contains("tunnel: true"), "{before}");

    let broker_ca = env.broker_ca();
    let audit = env.tmp.path().join("audit.jsonl");
    // No --upstream-ca: the broker never speaks TLS to this upstream.
    let (_broker, port) = start_broker_with(
        &env,
        &[
            "--allow-private-upstreams",
            "--audit",
            audit.to_str().unwrap(),
        ],
        &[],
    );
    let token = env.json(&["token", "issue", "bot", "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let curl = |ca: &Path, port: u16| {
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--proxy",
                &format!("http://127.0.0.1:{port}"),
            ])
            .args(["--proxy-user", &format!("bot:{token}")])
            .args(["--cacert", ca.to_str().unwrap()])
            .args(["-H", "Authorization: Bearer agents-own"])
            .arg(format!("https://127.0.0.1:{up_port}/through"))
            .output()
            .unwrap()
    };
    let out = curl(&up_ca, port);
    assert!(out.status.success(), "{}", stderr(&out));
    let echoed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echoed["path"], "/through");
    // The agent's own header reached the upstream untouched.
    assert_eq!(echoed["headers"]["authorization"], "Bearer agents-own");
    // With only the vault's CA, the upstream's certificate does not verify:
    // the broker did not intercept.
    let out = curl(&broker_ca, port);
    assert_eq!(out.status.code(), Some(60), "{}", stderr(&out));
    assert!(
        std::fs::read_to_string(&up_log)
            .unwrap()
            .contains("/through")
    );

    // One record per tunnel, with the bytes each way, written when it closes.
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_until(Duration::from_secs(10), || read().len() >= 2);
    let records = read();
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r["tunnel"], true, "{r}");
        assert_eq!(r["method"], "CONNECT");
        assert_eq!(r["service"], "model");
        assert_eq!(r["host"], "127.0.0.1");
        assert_eq!(r["status"], 200);
        assert_eq!(r["secrets"], serde_json::json!([]));
        assert!(r["bytes_in"].as_u64().unwrap() > 100, "{r}");
    }
    assert!(
        records[0]["bytes_out"].as_u64().unwrap() > 500,
        "{:?}",
        records[0]
    );
    let shown = env.json(&["audit", audit.to_str().unwrap()]);
    assert_eq!(shown[0]["tunnel"], true);

    // Private addresses are still refused unless allowed.
    let (_strict, strict_port) = start_broker_with(&env, &[], &[]);
    let out = curl(&up_ca, strict_port);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
}

/// The tunnel flag is part of the signed services list: set by hand,
/// without the owner's signature, the vault no longer verifies.
#[test]
fn the_tunnel_flag_is_signed() {
    let env = Env::new();
    env.ok(&[
        "service",
        "add",
        "model",
        "--passthrough",
        "--host",
        "api.example.com",
    ]);
    let services = env.vault.join(".agent-vault/services.yaml");
    let text = std::fs::read_to_string(&services).unwrap();
    assert!(!text.contains("tunnel"), "{text}");
    std::fs::write(
        &services,
        text.replace("auth: passthrough", "auth: passthrough\n    tunnel: true"),
    )
    .unwrap();
    let err = env.fail(&["service", "list"]);
    assert!(
        err.contains("manifest is not trusted") && err.contains("services.yaml"),
        "{err}"
    );
}
