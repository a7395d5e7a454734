//! OpenTelemetry logs over OTLP/HTTP, JSON encoding: one
//! `ExportLogsServiceRequest` per batch, POSTed to the collector's logs
//! URL with the broker's own upstream client (TLS verified, `--upstream-ca`
//! trusted). Each record is a log record: its time, a severity (INFO when
//! the upstream answered, WARN when the broker refused), the record's JSON
//! line as the body, and its fields as attributes. A 2xx is delivered (less
//! what a `partialSuccess` says was rejected); 429, 5xx and failures to
//! connect are tried again; any other status refuses the batch.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Batch, Deliver, Failure};
use crate::audit::Record;
use crate::error::ProxyError;
use crate::upstream::Upstreams;

/// The most of a collector's answer read (it says only how many records it
/// rejected).
const MAX_ANSWER: usize = 64 * 1024;

/// The collector's logs URL, taken apart.
#[derive(Debug, Clone)]
struct Endpoint {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

fn endpoint(url: &str) -> Result<Endpoint, ProxyError> {
    let bad = |why: &str| ProxyError::Export(format!("--audit-otlp {url:?}: {why}"));
    let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("give an http:// or https:// URL")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = match uri.path() {
        "" | "/" => "/v1/logs".to_owned(),
        p => p.to_owned(),
    };
    Ok(Endpoint {
        https,
        host,
        port,
        path,
    })
}

/// The OTLP exporter: its own small runtime, and the upstream client.
pub(crate) struct Otlp {
    rt: tokio::runtime::Runtime,
    client: Upstreams,
    to: Endpoint,
    /// The request's JSON up to its first log record (the resource and
    /// the scope, the same in every batch).
    head: Bytes,
}

/// What closes an `ExportLogsServiceRequest` after its log records.
const TAIL: &[u8] = b"]}]}]}";

impl Otlp {
    pub(crate) fn new(
        url: &str,
        upstream_ca: Option<&std::path::Path>,
    ) -> Result<Self, ProxyError> {
        let to = endpoint(url)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ProxyError::Runtime)?;
        let client = Upstreams::new(upstream_ca).map_err(ProxyError::Upstream)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let resource = json!({"attributes": [
            attr("service.name", json!({"stringValue": "agent-vault-broker"})),
            attr("service.version", json!({"stringValue": env!("CARGO_PKG_VERSION")})),
            attr("host.name", json!({"stringValue": host})),
        ]});
        Ok(Otlp {
            rt,
            client,
            to,
            head: Bytes::from(head(&resource)),
        })
    }

    async fn post(&self, body: [Bytes; 3]) -> Result<(), Failure> {
        let retry = |e: String| Failure::Retry(e);
        let addr: SocketAddr = tokio::net::lookup_host((self.to.host.as_str(), self.to.port))
            .await
            .map_err(|e| retry(e.to_string()))?
            .next()
            .ok_or_else(|| retry("the collector's host does not resolve".into()))?;
        let authority = match self.to.port {
            443 if self.to.https => self.to.host.clone(),
            80 if !self.to.https => self.to.host.clone(),
            p => format!("{}:{p}", self.to.host),
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri(&self.to.path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(crate::reply::parts(body))
            .map_err(|e| retry(e.to_string()))?;
        let sent = self
            .client
            .send(&self.to.host, self.to.port, addr, self.to.https, false, req);
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), sent)
            .await
            .map_err(|_| retry("the collector did not answer in 10 s".into()))?
            .map_err(|e| retry(e.to_string()))?;
        let status = response.status();
        // The collector's answer is read bounded in size and time: a broken
        // one must not grow memory or stall the exporter.
        let collected = http_body_util::Limited::new(response.into_body(), MAX_ANSWER).collect();
        let body = tokio::time::timeout(std::time::Duration::from_secs(10), collected)
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            // A partial success names how many records it rejected.
            let rejected = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| {
                    let r = &v["partialSuccess"]["rejectedLogRecords"];
                    r.as_u64().or_else(|| r.as_str()?.parse().ok())
                })
                .unwrap_or(0);
            return if rejected == 0 {
                Ok(())
            } else {
                Err(Failure::Refused(rejected))
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(retry(format!("the collector answered {status}")));
        }
        Err(Failure::Refused(u64::MAX))
    }
}

impl Deliver for Otlp {
    fn deliver(&mut self, batch: &Batch<'_>) -> Result<(), (usize, Failure)> {
        let body = request(&self.head, batch);
        // One request: all of the batch or none of it.
        self.rt.block_on(self.post(body)).map_err(|f| (0, f))
    }
}

fn attr(key: &str, value: Value) -> Value {
    json!({"key": key, "value": value})
}

/// Writes each record as one OTLP/JSON log record, by hand: the keys and
/// the JSON around the values are constants, the values are copied as they
/// are unless they hold a character JSON escapes (then `serde_json` writes
/// them), integers go through `itoa`. It runs on the request's thread, so
/// it is kept to a few thousand instructions (a generic serialiser spent
/// ~19,000 per record, half of them escaping the constant keys).
pub(crate) struct Encoder;

impl super::Encode for Encoder {
    fn encode(&self, r: &Record, out: &mut Vec<u8>) {
        log_record(r, out);
    }

    fn separator(&self) -> &'static [u8] {
        b","
    }
}

/// The bytes JSON escapes in a string (control characters, `"`, `\`).
static ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A JSON string's contents (no quotes): copied when nothing in it needs
/// escaping (the usual case: names, hosts, paths), else as `serde_json`
/// writes it.
fn contents(out: &mut Vec<u8>, s: &str) {
    if !s.bytes().any(|b| ESCAPED[usize::from(b)]) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    if let Ok(quoted) = serde_json::to_vec(s)
        && let [b'"', inside @ .., b'"'] = quoted.as_slice()
    {
        out.extend_from_slice(inside);
    }
}

/// An integer, in decimal.
fn decimal(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// The constant JSON between one attribute's value and the next one's: the
/// end of the previous value (`"}}`, or what `$end` says), then the next
/// key and its value's kind, up to the value's opening quote. One constant
/// per attribute, so one copy.
macro_rules! next {
    ($key:literal, $kind:literal) => {
        next!(r#""}},"#, $key, $kind)
    };
    ($end:literal, $key:literal, $kind:literal) => {
        concat!(
            $end,
            r#"{"key":""#,
            $key,
            r#"","value":{""#,
            $kind,
            r#"":""#
        )
        .as_bytes()
    };
}

/// One log record of an audit record: its time, a severity (INFO when the
/// upstream answered, WARN when the broker refused), a body of one line to
/// read in a log viewer ("GET host/path 200", a refusal's reason after it),
/// and the record's fields as attributes (so they are not sent twice).
fn log_record(r: &Record, out: &mut Vec<u8>) {
    let mut buf = itoa::Buffer::new();
    // Nanoseconds since 1970 fit in 64 bits until 2554 (cheaper than 128).
    let nanos = match u64::try_from(r.time.as_nanosecond()) {
        Ok(n) => buf.format(n),
        Err(_) => buf.format(r.time.as_nanosecond().max(0)),
    };
    out.extend_from_slice(br#"{"timeUnixNano":""#);
    out.extend_from_slice(nanos.as_bytes());
    out.extend_from_slice(br#"","observedTimeUnixNano":""#);
    out.extend_from_slice(nanos.as_bytes());
    out.extend_from_slice(if r.reason.is_some() {
        br#"","severityNumber":13,"severityText":"WARN","body":{"stringValue":""#
    } else {
        br#"","severityNumber":9,"severityText":"INFO","body":{"stringValue":""#
    });
    contents(out, &r.method);
    out.push(b' ');
    contents(out, &r.host);
    if let Some(port) = r.port {
        out.push(b':');
        decimal(out, port);
    }
    contents(out, &r.path);
    out.push(b' ');
    decimal(out, r.status);
    if let Some(why) = &r.reason {
        out.push(b' ');
        contents(out, why);
    }
    out.extend_from_slice(next!(
        r#""},"attributes":["#,
        "agent_vault.agent",
        "stringValue"
    ));
    contents(out, &r.agent);
    out.extend_from_slice(next!("agent_vault.token_id", "stringValue"));
    contents(out, &r.token_id);
    out.extend_from_slice(next!("agent_vault.service", "stringValue"));
    contents(out, &r.service);
    out.extend_from_slice(next!("http.request.method", "stringValue"));
    contents(out, &r.method);
    out.extend_from_slice(next!("server.address", "stringValue"));
    contents(out, &r.host);
    out.extend_from_slice(next!("url.path", "stringValue"));
    contents(out, &r.path);
    // OTLP/JSON writes 64-bit integers as strings.
    out.extend_from_slice(next!("http.response.status_code", "intValue"));
    decimal(out, r.status);
    out.extend_from_slice(next!("agent_vault.bytes_in", "intValue"));
    decimal(out, r.bytes_in);
    out.extend_from_slice(next!("agent_vault.bytes_out", "intValue"));
    decimal(out, r.bytes_out);
    out.extend_from_slice(next!("agent_vault.duration_ms", "intValue"));
    decimal(out, r.duration_ms);
    // The secrets' names: an array of strings.
    out.extend_from_slice(br#""}},{"key":"agent_vault.secrets","value":{"arrayValue":{"values":["#);
    for (i, name) in r.secrets.iter().enumerate() {
        out.extend_from_slice(if i == 0 {
            br#"{"stringValue":""#
        } else {
            br#""},{"stringValue":""#
        });
        contents(out, name);
    }
    out.extend_from_slice(if r.secrets.is_empty() {
        b"]}}}".as_slice()
    } else {
        br#""}]}}}"#.as_slice()
    });
    if let Some(port) = r.port {
        out.extend_from_slice(next!(",", "server.port", "intValue"));
        decimal(out, port);
        out.extend_from_slice(br#""}}"#);
    }
    if let Some(why) = &r.reason {
        out.extend_from_slice(next!(",", "agent_vault.reason", "stringValue"));
        contents(out, why);
        out.extend_from_slice(br#""}}"#);
    }
    if r.tunnel {
        out.extend_from_slice(br#",{"key":"agent_vault.tunnel","value":{"boolValue":true}}"#);
    }
    out.extend_from_slice(b"]}");
}

/// The start of every `ExportLogsServiceRequest` (OTLP/JSON): the resource
/// and the scope, up to the first log record.
fn head(resource: &Value) -> Vec<u8> {
    #[derive(Serialize)]
    struct Scope {
        name: &'static str,
        version: &'static str,
    }
    let scope = Scope {
        name: "agent-vault.audit",
        version: env!("CARGO_PKG_VERSION"),
    };
    let mut out = br#"{"resourceLogs":[{"resource":"#.to_vec();
    let _ = serde_json::to_writer(&mut out, resource);
    out.extend_from_slice(br#","scopeLogs":[{"scope":"#);
    let _ = serde_json::to_writer(&mut out, &scope);
    out.extend_from_slice(br#","logRecords":["#);
    out
}

/// An `ExportLogsServiceRequest` (OTLP/JSON) for a batch of log records
/// as [`Encoder`] wrote them, in three parts sent as they are: the head,
/// the records with the commas between them (a share of the exporter's
/// buffer), the tail.
fn request(head: &Bytes, batch: &Batch<'_>) -> [Bytes; 3] {
    [head.clone(), batch.joined(), Bytes::from_static(TAIL)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_and_bad_ones_named() {
        let e = endpoint("http://127.0.0.1:4318/v1/logs").unwrap();
        assert_eq!(
            (e.https, e.host.as_str(), e.port, e.path.as_str()),
            (false, "127.0.0.1", 4318, "/v1/logs")
        );
        let e = endpoint("https://collector.example").unwrap();
        assert_eq!((e.https, e.port, e.path.as_str()), (true, 443, "/v1/logs"));
        let err = endpoint("ftp://x").unwrap_err().to_string();
        assert!(err.contains("http:// or https://"), "{err}");
    }

    fn record(reason: Option<&str>) -> Record {
        Record {
            time: "2026-01-02T03:04:05.678901234Z".parse().unwrap(),
            agent: "bot".into(),
            token_id: "t\"1".into(),
            service: "api".into(),
            method: "GET".into(),
            host: "api.example.com".into(),
            path: "/v1/\u{e9}".into(),
            status: 403,
            bytes_in: 1,
            bytes_out: u64::MAX,
            duration_ms: 3,
            secrets: vec!["api/token".into(), "api/other".into()],
            port: Some(8443),
            reason: reason.map(str::to_owned),
            tunnel: false,
        }
    }

    /// The request the exporter sends for these records.
    fn encoded(resource: &Value, records: &[Record]) -> Vec<u8> {
        use super::super::{Encode, Encoded};
        let mut buffer = Encoded::new(Encoder.separator());
        for r in records {
            let mut out = Vec::new();
            Encoder.encode(r, &mut out);
            buffer.push(&out);
        }
        let frozen = buffer.freeze();
        let mut batches = buffer.batches(&frozen);
        let batch = batches.next().expect("one batch");
        assert!(batches.next().is_none());
        request(&Bytes::from(head(resource)), &batch).concat()
    }

    #[test]
    fn a_batch_is_one_otlp_json_request_with_each_record_whole() {
        let resource = json!({"attributes": [attr("service.name", json!({"stringValue": "x"}))]});
        let mut tunnel = record(None);
        tunnel.tunnel = true;
        tunnel.port = None;
        tunnel.secrets = Vec::new();
        let records = [record(Some("not-granted")), record(None), tunnel];
        let body: Value = serde_json::from_slice(&encoded(&resource, &records)).unwrap();
        let rl = &body["resourceLogs"][0];
        assert_eq!(rl["resource"], resource);
        let scope = &rl["scopeLogs"][0];
        assert_eq!(scope["scope"]["name"], "agent-vault.audit");
        let logs = scope["logRecords"].as_array().unwrap();
        assert_eq!(logs.len(), 3);
        let (warn, info) = (&logs[0], &logs[1]);
        assert_eq!(warn["timeUnixNano"], "1767323045678901234");
        assert_eq!(warn["observedTimeUnixNano"], "1767323045678901234");
        assert_eq!(
            (
                warn["severityNumber"].as_u64(),
                warn["severityText"].as_str()
            ),
            (Some(13), Some("WARN"))
        );
        assert_eq!(
            (
                info["severityNumber"].as_u64(),
                info["severityText"].as_str()
            ),
            (Some(9), Some("INFO"))
        );
        // The body is one line to read; the fields are the attributes.
        assert_eq!(
            warn["body"]["stringValue"],
            "GET api.example.com:8443/v1/\u{e9} 403 not-granted"
        );
        assert_eq!(
            info["body"]["stringValue"],
            "GET api.example.com:8443/v1/\u{e9} 403"
        );
        let attrs: std::collections::HashMap<&str, &Value> = warn["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| (kv["key"].as_str().unwrap(), &kv["value"]))
            .collect();
        assert_eq!(
            attrs["agent_vault.token_id"],
            &json!({"stringValue": "t\"1"})
        );
        assert_eq!(attrs["url.path"], &json!({"stringValue": "/v1/\u{e9}"}));
        assert_eq!(
            attrs["http.response.status_code"],
            &json!({"intValue": "403"})
        );
        assert_eq!(
            attrs["agent_vault.bytes_out"],
            &json!({"intValue": u64::MAX.to_string()})
        );
        assert_eq!(attrs["server.port"], &json!({"intValue": "8443"}));
        assert_eq!(
            attrs["agent_vault.reason"],
            &json!({"stringValue": "not-granted"})
        );
        assert_eq!(
            attrs["agent_vault.secrets"],
            &json!({"arrayValue": {"values": [{"stringValue": "api/token"}, {"stringValue": "api/other"}]}})
        );
        assert!(!attrs.contains_key("agent_vault.tunnel"));
        assert_eq!(attrs.len(), 13);
        let info_keys = info["attributes"].as_array().unwrap().len();
        assert_eq!(info_keys, 12, "no reason when the upstream answered");
        let last = logs[2]["attributes"].as_array().unwrap();
        assert_eq!(last.len(), 12, "a tunnel, no port: {last:?}");
        assert_eq!(last[10]["value"], json!({"arrayValue": {"values": []}}));
        assert_eq!(
            last[11],
            json!({"key": "agent_vault.tunnel", "value": {"boolValue": true}})
        );
    }

    #[test]
    fn every_string_is_escaped_as_json_wants_it() {
        // Each character JSON escapes, and ones it must not (non-ASCII,
        // U+2028, DEL) in every string field.
        let odd = "a\"b\\c\n\u{1}\u{1f}\t\u{7f}\u{2028}\u{e9}/</script>";
        let mut r = record(Some(odd));
        (r.agent, r.token_id, r.service) = (odd.into(), odd.into(), odd.into());
        (r.method, r.host, r.path) = (odd.into(), odd.into(), odd.into());
        r.secrets = vec![odd.into(), String::new()];
        let resource = json!({"attributes": []});
        let body: Value = serde_json::from_slice(&encoded(&resource, &[r])).unwrap();
        let log = &body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(
            log["body"]["stringValue"],
            format!("{odd} {odd}:8443{odd} 403 {odd}")
        );
        let attrs = log["attributes"].as_array().unwrap();
        let strings: Vec<&str> = attrs
            .iter()
            .filter_map(|kv| kv["value"]["stringValue"].as_str())
            .collect();
        assert_eq!(strings, vec![odd; 7]);
        assert_eq!(
            attrs[10]["value"],
            json!({"arrayValue": {"values": [{"stringValue": odd}, {"stringValue": ""}]}})
        );
    }
}
