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

use super::{Deliver, Failure};
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
    /// the scope, the same in every batch), and what closes it.
    head: Vec<u8>,
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
            head: head(&resource),
        })
    }

    async fn post(&self, body: Bytes) -> Result<(), Failure> {
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
            .body(crate::reply::full(body))
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
    fn deliver(&mut self, batch: &[Record]) -> Result<(), (usize, Failure)> {
        let body = Bytes::from(request(&self.head, batch));
        // One request: all of the batch or none of it.
        self.rt.block_on(self.post(body)).map_err(|f| (0, f))
    }
}

fn attr(key: &str, value: Value) -> Value {
    json!({"key": key, "value": value})
}

/// A number written in decimal into a buffer on the stack (OTLP/JSON
/// writes 64-bit integers as strings), serialised as a string.
struct Decimal {
    digits: [u8; 40],
    len: usize,
}

impl Decimal {
    fn new(v: impl std::fmt::Display) -> Self {
        use std::io::Write;
        let mut digits = [0u8; 40];
        let mut cursor = std::io::Cursor::new(&mut digits[..]);
        let _ = write!(cursor, "{v}");
        let len = cursor.position() as usize;
        Decimal { digits, len }
    }
}

impl Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Only ASCII digits and '-' are written.
        s.serialize_str(std::str::from_utf8(&self.digits[..self.len]).unwrap_or("0"))
    }
}

/// An OTLP `AnyValue` in the JSON mapping (`{"stringValue": …}`), borrowed
/// from the record.
#[derive(Serialize)]
enum Any<'a> {
    #[serde(rename = "stringValue")]
    Str(&'a str),
    /// OTLP/JSON writes 64-bit integers as decimal strings.
    #[serde(rename = "intValue")]
    Int(Decimal),
    #[serde(rename = "boolValue")]
    Bool(bool),
    #[serde(rename = "arrayValue")]
    Array { values: Strings<'a> },
}

/// A list of strings as `AnyValue`s.
struct Strings<'a>(&'a [String]);

impl Serialize for Strings<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|v| Any::Str(v)))
    }
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'static str,
    value: Any<'a>,
}

/// The body: one line a person reads in a log viewer ("GET host/path
/// 200", a refusal's reason after it); the fields themselves are the
/// attributes, so they are not sent twice.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "stringValue")]
    string_value: Summary<'a>,
}

struct Summary<'a>(&'a Record);

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0;
        write!(f, "{} {}", r.method, r.host)?;
        if let Some(port) = r.port {
            write!(f, ":{port}")?;
        }
        write!(f, "{} {}", r.path, r.status)?;
        if let Some(why) = &r.reason {
            write!(f, " {why}")?;
        }
        Ok(())
    }
}

impl Serialize for Summary<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Escaped as it is written: no string built first.
        s.collect_str(self)
    }
}

/// A record's fields as attributes.
struct Attributes<'a>(&'a Record);

impl Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let kv = |key, value| KeyValue { key, value };
        let int = |v: u64| Any::Int(Decimal::new(v));
        let fields = [
            kv("agent_vault.agent", Any::Str(&r.agent)),
            kv("agent_vault.token_id", Any::Str(&r.token_id)),
            kv("agent_vault.service", Any::Str(&r.service)),
            kv("http.request.method", Any::Str(&r.method)),
            kv("server.address", Any::Str(&r.host)),
            kv("url.path", Any::Str(&r.path)),
            kv("http.response.status_code", int(u64::from(r.status))),
            kv("agent_vault.bytes_in", int(r.bytes_in)),
            kv("agent_vault.bytes_out", int(r.bytes_out)),
            kv("agent_vault.duration_ms", int(r.duration_ms)),
            kv(
                "agent_vault.secrets",
                Any::Array {
                    values: Strings(&r.secrets),
                },
            ),
        ];
        let optional = [
            r.port.map(|p| kv("server.port", int(u64::from(p)))),
            r.reason
                .as_deref()
                .map(|why| kv("agent_vault.reason", Any::Str(why))),
            r.tunnel.then(|| kv("agent_vault.tunnel", Any::Bool(true))),
        ];
        s.collect_seq(fields.into_iter().chain(optional.into_iter().flatten()))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogRecord<'a> {
    time_unix_nano: &'a Decimal,
    observed_time_unix_nano: &'a Decimal,
    severity_number: u8,
    severity_text: &'static str,
    body: Body<'a>,
    attributes: Attributes<'a>,
}

/// One log record of an audit record.
fn log_record<'a>(r: &'a Record, nanos: &'a Decimal) -> LogRecord<'a> {
    let (severity_number, severity_text) = if r.reason.is_some() {
        (13, "WARN")
    } else {
        (9, "INFO")
    };
    LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        severity_number,
        severity_text,
        body: Body {
            string_value: Summary(r),
        },
        attributes: Attributes(r),
    }
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

/// An `ExportLogsServiceRequest` (OTLP/JSON) for a batch, as bytes: each
/// log record written straight into the body, borrowed from its record (no
/// tree built, no value copied).
fn request(head: &[u8], batch: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + TAIL.len() + 800 * batch.len());
    out.extend_from_slice(head);
    for (i, r) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let nanos = Decimal::new(r.time.as_nanosecond().max(0));
        let _ = serde_json::to_writer(&mut out, &log_record(r, &nanos));
    }
    out.extend_from_slice(TAIL);
    out
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

    #[test]
    fn a_batch_is_one_otlp_json_request_with_each_record_whole() {
        let resource = json!({"attributes": [attr("service.name", json!({"stringValue": "x"}))]});
        let mut tunnel = record(None);
        tunnel.tunnel = true;
        tunnel.port = None;
        let records = [record(Some("not-granted")), record(None), tunnel];
        let body: Value = serde_json::from_slice(&request(&head(&resource), &records)).unwrap();
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
        assert_eq!(
            last[11],
            json!({"key": "agent_vault.tunnel", "value": {"boolValue": true}})
        );
    }
}
