//! The broker's metrics, in the Prometheus text format on the admin
//! listener (`crate::admin`). Off unless the broker was started with
//! them ([`crate::Options::metrics`]); then each hook below is one branch.
//!
//! Most of them are read off the one audit `Record` every request, refusal
//! and tunnel ends in (`Metrics::record`, called by the audit log whether
//! or not it writes to a file), so no path through the broker is counted
//! twice or forgotten. The rest are handles a service's injection plan
//! takes once (`ServiceMeter`: scrubbed values, upstream latency), the
//! audit log's own outcome, and the leaves minted.
//!
//! Labels come only from the signed services list (service and secret
//! names), the broker's fixed reasons and HTTP status codes: never from a
//! host or path an agent sent, and never a value, token or key.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// What the metrics read off an audit record (`crate::audit::Record`).
pub(crate) struct Seen<'a> {
    /// The service (empty when none matched).
    pub(crate) service: &'a str,
    /// The status the agent got.
    pub(crate) status: u16,
    /// The reason, when the broker answered itself.
    pub(crate) reason: Option<&'a str>,
    /// The secrets injected, by name.
    pub(crate) secrets: &'a [String],
    /// A tunnel service's `CONNECT`.
    pub(crate) tunnel: bool,
    /// Bytes from the agent, and to it.
    pub(crate) bytes: (u64, u64),
}

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A service and the status the agent got.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceStatus {
    service: String,
    status: u16,
}

/// An audit export's sink (`crate::export::Sink::name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// A service (a name from the signed services list).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// A refusal's reason (one of the problem types' names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// A secret, by name (`group/name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabel {
    secret: String,
}

/// Why a token was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// A tunnel service's bytes, one way.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    service: String,
    /// `in` (agent to upstream) or `out` (upstream to agent).
    direction: &'static str,
}

/// The upstream latency buckets, in seconds: 5 ms to about 20 s.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    ])
}

/// The families, registered once.
struct Inner {
    registry: Registry,
    requests: Family<ServiceStatus, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    injections: Family<SecretLabel, Counter>,
    scrubbed: Family<ServiceLabel, Counter>,
    rate_limited: Family<ServiceLabel, Counter>,
    token_failures: Family<KindLabel, Counter>,
    leaves: Counter,
    audit_written: Counter,
    audit_dropped: Counter,
    exported: Family<SinkLabel, Counter>,
    export_dropped: Family<SinkLabel, Counter>,
    latency: Family<ServiceLabel, Histogram, fn() -> Histogram>,
    tunnels: Family<ServiceLabel, Counter>,
    tunnel_bytes: Family<Direction, Counter>,
}

/// The broker's metrics: off (every hook a no-op), or on and shared by
/// every thread. Cloning shares them.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Inner>>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Metrics(on)"
        } else {
            "Metrics(off)"
        })
    }
}

impl Metrics {
    /// Metrics that count nothing.
    pub fn off() -> Self {
        Metrics(None)
    }

    /// Metrics that count, every family registered (and shown at 0 until
    /// something moves it).
    pub fn on() -> Self {
        let mut inner = Inner {
            registry: Registry::with_prefix("agent_vault"),
            requests: Family::default(),
            refusals: Family::default(),
            injections: Family::default(),
            scrubbed: Family::default(),
            rate_limited: Family::default(),
            token_failures: Family::default(),
            leaves: Counter::default(),
            audit_written: Counter::default(),
            audit_dropped: Counter::default(),
            exported: Family::default(),
            export_dropped: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            tunnels: Family::default(),
            tunnel_bytes: Family::default(),
        };
        let r = &mut inner.registry;
        r.register(
            "requests",
            "Requests brokered (a service matched), by service and the status the agent got",
            inner.requests.clone(),
        );
        r.register(
            "refusals",
            "Answers the broker made itself (problem+json), by reason",
            inner.refusals.clone(),
        );
        r.register(
            "injections",
            "Secrets injected into requests the upstream answered, by secret name",
            inner.injections.clone(),
        );
        r.register(
            "scrubbed",
            "Injected values replaced in responses (header values, bodies, WebSocket frames), by service",
            inner.scrubbed.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused over a rate limit, by service",
            inner.rate_limited.clone(),
        );
        r.register(
            "token_failures",
            "Requests refused for their token, by kind (missing, malformed, invalid, expired, revoked, session-ended)",
            inner.token_failures.clone(),
        );
        r.register(
            "leaves_minted",
            "Leaf certificates minted for the hosts agents reach",
            inner.leaves.clone(),
        );
        r.register(
            "audit_records_written",
            "Audit records written to the audit log",
            inner.audit_written.clone(),
        );
        r.register(
            "audit_records_dropped",
            "Audit records that could not be written to the audit log",
            inner.audit_dropped.clone(),
        );
        r.register(
            "audit_exported",
            "Audit records delivered to a log pipeline, by sink (otlp, syslog-udp, syslog-tcp, syslog-unix)",
            inner.exported.clone(),
        );
        r.register(
            "audit_export_dropped",
            "Audit records a log pipeline did not get (queue full, refused, retries exhausted, queued at shutdown), by sink",
            inner.export_dropped.clone(),
        );
        r.register_with_unit(
            "upstream_latency",
            "Time from sending a request upstream to its response's head, by service",
            Unit::Seconds,
            inner.latency.clone(),
        );
        r.register(
            "tunnel_connections",
            "Tunnel-service CONNECTs passed through, by service",
            inner.tunnels.clone(),
        );
        r.register(
            "tunnel_bytes",
            "Bytes passed through tunnel services, by service and direction (in: to the upstream)",
            inner.tunnel_bytes.clone(),
        );
        Metrics(Some(Arc::new(inner)))
    }

    /// Shows each of these refusal reasons (and the token failures among
    /// them) at 0 until they move, so a rate over one is defined before
    /// its first refusal.
    pub(crate) fn reasons<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        let Some(m) = &self.0 else { return };
        for reason in reasons {
            let _ = m.refusals.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
            if let Some(kind) = token_failure(reason) {
                let _ = m
                    .token_failures
                    .get_or_create(&KindLabel { kind: kind.into() });
            }
        }
    }

    /// Whether anything is counted.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(m) = &self.0 {
            // Writing to a String fails only on a metric's own error.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry);
        }
        out
    }

    /// Counts one request, refusal or tunnel by its audit record: the one
    /// place every request ends (see `crate::audit`).
    pub(crate) fn record(&self, r: &Seen<'_>) {
        let Some(m) = &self.0 else { return };
        if r.tunnel {
            let service = ServiceLabel {
                service: r.service.to_owned(),
            };
            m.tunnels.get_or_create(&service).inc();
            for (direction, n) in [("in", r.bytes.0), ("out", r.bytes.1)] {
                let labels = Direction {
                    service: r.service.to_owned(),
                    direction,
                };
                m.tunnel_bytes.get_or_create(&labels).inc_by(n);
            }
        } else if !r.service.is_empty() {
            let labels = ServiceStatus {
                service: r.service.to_owned(),
                status: r.status,
            };
            m.requests.get_or_create(&labels).inc();
        }
        let Some(reason) = r.reason else {
            // The upstream answered: the secrets went with the request.
            for secret in r.secrets {
                let labels = SecretLabel {
                    secret: secret.clone(),
                };
                m.injections.get_or_create(&labels).inc();
            }
            return;
        };
        m.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
        if let Some(kind) = token_failure(reason) {
            m.token_failures
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc();
        } else if reason == RATE_LIMITED {
            self.rate_limited(r.service);
        }
    }

    /// Counts a request refused over a rate limit for `service` (empty when
    /// no service had matched yet). `Metrics::record` calls it for every
    /// audit record whose reason is `rate-limited` (which also counts it
    /// under the refusals): a limit that refuses through the problem path
    /// needs no call of its own.
    pub fn rate_limited(&self, service: &str) {
        let Some(m) = &self.0 else { return };
        m.rate_limited
            .get_or_create(&ServiceLabel {
                service: service.to_owned(),
            })
            .inc();
    }

    /// The counters of an audit export to `sink`: delivered, dropped.
    /// They count whether or not the metrics are on (the broker prints
    /// them when it stops); on, `/metrics` shows them.
    pub(crate) fn export_counters(&self, sink: &str) -> (Counter, Counter) {
        let Some(m) = &self.0 else {
            return (Counter::default(), Counter::default());
        };
        let label = SinkLabel { sink: sink.into() };
        (
            m.exported.get_or_create(&label).clone(),
            m.export_dropped.get_or_create(&label).clone(),
        )
    }

    /// An audit record written to the audit log.
    pub(crate) fn audit_written(&self) {
        if let Some(m) = &self.0 {
            m.audit_written.inc();
        }
    }

    /// An audit record the audit log could not write.
    pub(crate) fn audit_dropped(&self) {
        if let Some(m) = &self.0 {
            m.audit_dropped.inc();
        }
    }

    /// A leaf certificate minted.
    pub(crate) fn leaf_minted(&self) {
        if let Some(m) = &self.0 {
            m.leaves.inc();
        }
    }

    /// Shows each of these services at 0 (their scrubbed values, upstream
    /// latency and rate-limited requests) until they move.
    pub(crate) fn services<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let Some(m) = &self.0 else { return };
        for service in names {
            let _ = self.for_service(service);
            let _ = m.rate_limited.get_or_create(&ServiceLabel {
                service: service.to_owned(),
            });
        }
    }

    /// The handles a service's requests count with, looked up once (when
    /// the service's injection plan is made).
    pub(crate) fn for_service(&self, service: &str) -> ServiceMeter {
        let Some(m) = &self.0 else {
            return ServiceMeter::default();
        };
        let labels = ServiceLabel {
            service: service.to_owned(),
        };
        ServiceMeter(Some(Arc::new((
            m.scrubbed.get_or_create_owned(&labels),
            m.latency.get_or_create_owned(&labels),
        ))))
    }
}

/// The reason a rate limit refuses with.
const RATE_LIMITED: &str = "rate-limited";

/// The kind of token failure a refusal's reason is, if it is one.
fn token_failure(reason: &str) -> Option<&str> {
    match reason {
        "session-ended" => Some(reason),
        r => r.strip_prefix("token-"),
    }
}

/// One service's scrubbed-values counter and upstream-latency histogram
/// (nothing when metrics are off).
#[derive(Clone, Default)]
pub struct ServiceMeter(Option<Arc<(Counter, Histogram)>>);

impl ServiceMeter {
    /// `n` injected values replaced in a response.
    pub fn scrubbed(&self, n: u64) {
        if let Some(m) = &self.0
            && n > 0
        {
            m.0.inc_by(n);
        }
    }

    /// The upstream took `d` to answer a request's head.
    pub(crate) fn upstream_took(&self, d: Duration) {
        if let Some(m) = &self.0 {
            m.1.observe(d.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(service: &'a str, status: u16, reason: Option<&'a str>) -> Seen<'a> {
        Seen {
            service,
            status,
            reason,
            secrets: &[],
            tunnel: false,
            bytes: (3, 5),
        }
    }

    #[test]
    fn off_counts_nothing_and_encodes_nothing() {
        let m = Metrics::off();
        m.record(&record("api", 200, None));
        m.rate_limited("api");
        m.for_service("api").scrubbed(3);
        assert!(!m.enabled());
        assert_eq!(m.encode(), "");
    }

    #[test]
    fn a_record_moves_its_families_and_no_host_or_path_becomes_a_label() {
        let m = Metrics::on();
        let secrets = ["api/token".to_owned()];
        m.record(&Seen {
            secrets: &secrets,
            ..record("api", 200, None)
        });
        m.record(&record("api", 502, Some("upstream-unreachable")));
        m.record(&record("", 407, Some("token-expired")));
        m.record(&record("", 403, Some("host-not-covered")));
        m.record(&record("api", 429, Some("rate-limited")));
        m.record(&Seen {
            tunnel: true,
            ..record("model", 200, None)
        });
        let meter = m.for_service("api");
        meter.scrubbed(2);
        meter.upstream_took(Duration::from_millis(30));
        m.leaf_minted();
        m.audit_written();
        m.audit_dropped();
        let text = m.encode();
        for line in [
            "agent_vault_requests_total{service=\"api\",status=\"200\"} 1",
            "agent_vault_requests_total{service=\"api\",status=\"502\"} 1",
            "agent_vault_refusals_total{reason=\"upstream-unreachable\"} 1",
            "agent_vault_refusals_total{reason=\"rate-limited\"} 1",
            "agent_vault_rate_limited_total{service=\"api\"} 1",
            "agent_vault_token_failures_total{kind=\"expired\"} 1",
            "agent_vault_injections_total{secret=\"api/token\"} 1",
            "agent_vault_scrubbed_total{service=\"api\"} 2",
            "agent_vault_upstream_latency_seconds_count{service=\"api\"} 1",
            "agent_vault_tunnel_connections_total{service=\"model\"} 1",
            "agent_vault_tunnel_bytes_total{service=\"model\",direction=\"in\"} 3",
            "agent_vault_leaves_minted_total 1",
            "agent_vault_audit_records_written_total 1",
            "agent_vault_audit_records_dropped_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // A refusal before any service matched is counted by reason only.
        assert!(!text.contains("service=\"\""), "{text}");
    }
}
