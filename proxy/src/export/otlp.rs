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
    resource: Value,
}

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
            resource,
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
        let body = Bytes::from(request(&self.resource, batch));
        // One request: all of the batch or none of it.
        self.rt.block_on(self.post(body)).map_err(|f| (0, f))
    }
}

fn attr(key: &str, value: Value) -> Value {
    json!({"key": key, "value": value})
}

/// An OTLP `AnyValue` in the JSON mapping (`{"stringValue": …}`), borrowed
/// from the record: serialised straight into the body, no tree built.
#[derive(Serialize)]
enum Any<'a> {
    #[serde(rename = "stringValue")]
    Str(&'a str),
    /// OTLP/JSON writes 64-bit integers as decimal strings.
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "boolValue")]
    Bool(bool),
    #[serde(rename = "arrayValue")]
    Array { values: Vec<Any<'a>> },
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'static str,
    value: Any<'a>,
}

#[derive(Serialize)]
struct Body {
    #[serde(rename = "stringValue")]
    string_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogRecord<'a> {
    time_unix_nano: String,
    observed_time_unix_nano: String,
    severity_number: u8,
    severity_text: &'static str,
    body: Body,
    attributes: Vec<KeyValue<'a>>,
}

fn kv<'a>(key: &'static str, value: Any<'a>) -> KeyValue<'a> {
    KeyValue { key, value }
}

/// One log record of an audit record.
fn log_record(r: &Record) -> LogRecord<'_> {
    let nanos = r.time.as_nanosecond().max(0).to_string();
    let (severity_number, severity_text) = if r.reason.is_some() {
        (13, "WARN")
    } else {
        (9, "INFO")
    };
    let int = |v: u64| Any::Int(v.to_string());
    let mut attributes = vec![
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
                values: r.secrets.iter().map(|s| Any::Str(s)).collect(),
            },
        ),
    ];
    if let Some(port) = r.port {
        attributes.push(kv("server.port", int(u64::from(port))));
    }
    if let Some(reason) = &r.reason {
        attributes.push(kv("agent_vault.reason", Any::Str(reason)));
    }
    if r.tunnel {
        attributes.push(kv("agent_vault.tunnel", Any::Bool(true)));
    }
    LogRecord {
        observed_time_unix_nano: nanos.clone(),
        time_unix_nano: nanos,
        severity_number,
        severity_text,
        body: Body {
            string_value: serde_json::to_string(r).unwrap_or_default(),
        },
        attributes,
    }
}

/// An `ExportLogsServiceRequest` (OTLP/JSON) for a batch, as bytes.
fn request(resource: &Value, batch: &[Record]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Scope {
        name: &'static str,
        version: &'static str,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ScopeLogs<'a> {
        scope: Scope,
        log_records: Vec<LogRecord<'a>>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ResourceLogs<'a> {
        resource: &'a Value,
        scope_logs: [ScopeLogs<'a>; 1],
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Request<'a> {
        resource_logs: [ResourceLogs<'a>; 1],
    }
    let req = Request {
        resource_logs: [ResourceLogs {
            resource,
            scope_logs: [ScopeLogs {
                scope: Scope {
                    name: "agent-vault.audit",
                    version: env!("CARGO_PKG_VERSION"),
                },
                log_records: batch.iter().map(log_record).collect(),
            }],
        }],
    };
    serde_json::to_vec(&req).unwrap_or_default()
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
}
