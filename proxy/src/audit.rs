//! The audit log: one JSON line per brokered request, and per request the
//! broker refused or answered itself (with its `reason`). Names, never
//! values. The broker writes [`Record`]s with [`AuditLog`]; `agent-vault
//! audit` reads the same type back with [`records`], old lines included
//! (fields added later are optional).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// One brokered or refused request: one line of the audit log, as written
/// and as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it started (written as RFC 3339).
    pub time: jiff::Timestamp,
    /// The agent the token speaks for.
    pub agent: String,
    /// The token's id.
    pub token_id: String,
    /// The matching service (empty when refused before one matched).
    pub service: String,
    /// HTTP method.
    pub method: String,
    /// Destination host.
    pub host: String,
    /// Path, without the query.
    pub path: String,
    /// Status sent to the agent.
    pub status: u16,
    /// Request body bytes from the agent.
    pub bytes_in: u64,
    /// Response body bytes to the agent.
    pub bytes_out: u64,
    /// Milliseconds from request to the end of the response.
    pub duration_ms: u64,
    /// Secrets injected, by name.
    pub secrets: Vec<String>,
    /// The destination port (absent from lines written before it was
    /// recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Why the broker answered itself, refusing or failing (a problem
    /// type's reason: `host-not-covered`, `upstream-unreachable`…); absent
    /// when the upstream answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A tunnel service's `CONNECT`, passed through without interception:
    /// `bytes_in` and `bytes_out` count the TLS bytes each way, and
    /// `duration_ms` is the tunnel's life. Absent (false) in older records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tunnel: bool,
}

/// The records in an audit log's text, oldest first. A line that is not a
/// record (torn by a crash, or written by something else) is skipped.
pub fn records(text: &str) -> impl Iterator<Item = Record> + '_ {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
}

/// An append-only audit file, and the metrics every record is counted in
/// (see [`crate::metrics`]).
pub struct AuditLog {
    file: Option<Mutex<std::fs::File>>,
    metrics: Metrics,
    /// Log pipelines the records go to as well (`crate::export`).
    exports: Vec<Arc<dyn Forward>>,
}

/// Somewhere records go besides the file: a log pipeline's queue
/// (`crate::export::Exporter`). Must not wait: it runs on the request's path.
pub trait Forward: Send + Sync {
    /// Takes a copy of the record (or counts it dropped).
    fn send(&self, r: &Record);
}

impl AuditLog {
    /// Appends to `path` (created 0600), or logs nowhere.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = match path {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)?,
            )),
            None => None,
        };
        Ok(AuditLog {
            file,
            metrics: Metrics::off(),
            exports: Vec::new(),
        })
    }

    /// The same log, its records forwarded to these pipelines too.
    pub fn exporting(self, exports: Vec<Arc<dyn Forward>>) -> Self {
        AuditLog { exports, ..self }
    }

    /// The same log, its records counted in `metrics` too.
    pub fn counted(self, metrics: Metrics) -> Self {
        AuditLog { metrics, ..self }
    }

    /// Whether records go anywhere (a file, a pipeline, or the metrics).
    pub fn enabled(&self) -> bool {
        self.file.is_some() || self.metrics.enabled() || !self.exports.is_empty()
    }

    /// Counts one record in the metrics and writes it (one `write` of one
    /// line, so lines never interleave). A record that cannot be written
    /// (the disk full, the file gone bad) is counted as dropped.
    pub fn write(&self, r: &Record) {
        self.metrics.record(&crate::metrics::Seen {
            service: &r.service,
            status: r.status,
            reason: r.reason.as_deref(),
            secrets: &r.secrets,
            tunnel: r.tunnel,
            bytes: (r.bytes_in, r.bytes_out),
        });
        for e in &self.exports {
            e.send(r);
        }
        let Some(f) = &self.file else { return };
        let written = serde_json::to_vec(r).ok().and_then(|mut line| {
            line.push(b'\n');
            let mut f = f.lock().ok()?;
            f.write_all(&line).ok()
        });
        match written {
            Some(()) => self.metrics.audit_written(),
            None => self.metrics.audit_dropped(),
        }
    }
}

/// The record of a request in progress, written when it is dropped: when
/// the request is refused, when its response body ends (or is dropped),
/// when its WebSocket closes, or when the request is abandoned. So no path
/// through the broker forgets to audit.
pub(crate) struct Audited {
    log: Arc<AuditLog>,
    started: Instant,
    /// Filled in as the request goes; `duration_ms` is set when written.
    pub(crate) record: Record,
    /// The request's place among those in flight (rate limits): held as
    /// long as the record is, so until the request ends.
    in_flight: Option<crate::ratelimit::Admitted>,
}

impl Audited {
    /// Starts the record of a request that started at `started`.
    pub(crate) fn new(log: Arc<AuditLog>, started: Instant, record: Record) -> Self {
        Audited {
            log,
            started,
            record,
            in_flight: None,
        }
    }

    /// Holds the request's place in flight until the request ends.
    pub(crate) fn hold(&mut self, admitted: crate::ratelimit::Admitted) {
        self.in_flight = Some(admitted);
    }

    /// Sets the bytes each way, as counted when the request ended.
    pub(crate) fn bytes(&mut self, bytes_in: u64, bytes_out: u64) {
        self.record.bytes_in = bytes_in;
        self.record.bytes_out = bytes_out;
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        self.record.duration_ms = self.started.elapsed().as_millis() as u64;
        self.log.write(&self.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(agent: &str) -> Record {
        Record {
            time: "2026-01-02T03:04:05.678Z".parse().unwrap(),
            agent: agent.into(),
            token_id: "t1".into(),
            service: "api".into(),
            method: "GET".into(),
            host: "api.example.com".into(),
            path: "/v1".into(),
            status: 200,
            bytes_in: 1,
            bytes_out: 2,
            duration_ms: 3,
            secrets: vec!["api/token".into()],
            port: None,
            reason: None,
            tunnel: false,
        }
    }

    #[test]
    fn what_the_writer_writes_the_reader_reads() {
        let path = std::env::temp_dir().join(format!(
            "agent-vault-audit-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::open(Some(&path)).unwrap();
        log.write(&record("bot"));
        log.write(&record("other"));
        drop(log);
        // A torn line and a foreign one are skipped, not fatal.
        let mut text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        text.push_str("{\"tool\":\"agent_vault_get\"}\n{\"time\":\"2026-\n\n");
        let read: Vec<Record> = records(&text).collect();
        assert_eq!(read, vec![record("bot"), record("other")]);
    }

    #[test]
    fn old_lines_still_read_and_refusals_round_trip() {
        // A line as the broker wrote it before refusals were audited.
        let old = r#"{"time":"2026-01-02T03:04:05.678Z","agent":"bot","token_id":"t1","service":"api","method":"GET","host":"api.example.com","path":"/v1","status":200,"bytes_in":1,"bytes_out":2,"duration_ms":3,"secrets":["api/token"]}"#;
        let read: Vec<Record> = records(old).collect();
        assert_eq!(read, vec![record("bot")]);
        // A refusal: the new fields written, and nothing else lost.
        let mut refused = record("bot");
        refused.port = Some(8443);
        refused.reason = Some("host-not-covered".into());
        let line = serde_json::to_string(&refused).unwrap();
        assert!(
            line.contains(r#""port":8443,"reason":"host-not-covered""#),
            "{line}"
        );
        assert_eq!(records(&line).collect::<Vec<_>>(), vec![refused]);
        // A brokered record writes neither, so older readers see what they knew.
        let line = serde_json::to_string(&record("bot")).unwrap();
        assert!(!line.contains("reason") && !line.contains("port"), "{line}");
    }
}
