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
use serde_json::{Value, json};

use super::{Deliver, Failure};
use crate::audit::Record;
use crate::error::ProxyError;
use crate::upstream::Upstreams;

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
        let body = response
            .into_body()
            .collect()
            .await
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
        let body = request(&self.resource, batch);
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        // One request: all of the batch or none of it.
        self.rt.block_on(self.post(body)).map_err(|f| (0, f))
    }
}

fn attr(key: &str, value: Value) -> Value {
    json!({"key": key, "value": value})
}

fn text(key: &str, v: &str) -> Value {
    attr(key, json!({"stringValue": v}))
}

fn int(key: &str, v: u64) -> Value {
    // OTLP/JSON writes 64-bit integers as decimal strings.
    attr(key, json!({"intValue": v.to_string()}))
}

/// One log record of an audit record.
fn log_record(r: &Record) -> Value {
    let nanos = r.time.as_nanosecond().max(0).to_string();
    let (severity, severity_text) = if r.reason.is_some() {
        (13, "WARN")
    } else {
        (9, "INFO")
    };
    let mut attributes = vec![
        text("agent_vault.agent", &r.agent),
        text("agent_vault.token_id", &r.token_id),
        text("agent_vault.service", &r.service),
        text("http.request.method", &r.method),
        text("server.address", &r.host),
        text("url.path", &r.path),
        int("http.response.status_code", u64::from(r.status)),
        int("agent_vault.bytes_in", r.bytes_in),
        int("agent_vault.bytes_out", r.bytes_out),
        int("agent_vault.duration_ms", r.duration_ms),
        attr(
            "agent_vault.secrets",
            json!({"arrayValue": {"values": r.secrets.iter().map(|s| json!({"stringValue": s})).collect::<Vec<_>>()}}),
        ),
    ];
    if let Some(port) = r.port {
        attributes.push(int("server.port", u64::from(port)));
    }
    if let Some(reason) = &r.reason {
        attributes.push(text("agent_vault.reason", reason));
    }
    if r.tunnel {
        attributes.push(attr("agent_vault.tunnel", json!({"boolValue": true})));
    }
    json!({
        "timeUnixNano": nanos,
        "observedTimeUnixNano": nanos,
        "severityNumber": severity,
        "severityText": severity_text,
        "body": {"stringValue": serde_json::to_string(r).unwrap_or_default()},
        "attributes": attributes,
    })
}

/// An `ExportLogsServiceRequest` (OTLP/JSON) for a batch.
fn request(resource: &Value, batch: &[Record]) -> Value {
    json!({"resourceLogs": [{
        "resource": resource,
        "scopeLogs": [{
            "scope": {"name": "agent-vault.audit", "version": env!("CARGO_PKG_VERSION")},
            "logRecords": batch.iter().map(log_record).collect::<Vec<_>>(),
        }],
    }]})
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
