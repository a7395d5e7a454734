//! Audit records to an existing log pipeline, besides the local JSON-lines
//! file: OpenTelemetry logs over OTLP/HTTP with the JSON encoding
//! ([`otlp`]), and RFC 5424 syslog over UDP, TCP or a Unix socket
//! ([`syslog`]).
//!
//! Lossless means accounted for: a request hands its record to each
//! exporter's bounded queue and goes on (it never waits for the pipeline);
//! a thread per exporter sends the queue in batches, tries a failed batch
//! again with growing pauses, and counts every record either delivered or
//! dropped (queue full, retries exhausted, the receiver refusing it, or
//! still queued when the broker stopped): [`Totals`], also in `/metrics`
//! as `agent_vault_audit_exported_total` and
//! `agent_vault_audit_export_dropped_total` by sink. Names, never values:
//! a record holds none.

pub mod otlp;
pub mod syslog;

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::audit::Record;
use crate::metrics::Metrics;

/// Records waiting for an exporter at most; more are dropped (counted).
pub const QUEUE: usize = 16 * 1024;
/// Records sent in one batch at most.
pub const BATCH: usize = 512;
/// How long a record waits for others to join its batch.
pub const LINGER: Duration = Duration::from_millis(200);
/// Tries of one batch before its records are counted as dropped; the
/// pauses between them double from [`FIRST_PAUSE`].
pub const TRIES: u32 = 5;
/// The pause after a batch's first failure (then 2x, 4x…: 1.5 s in all).
pub const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Where audit records are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// OTLP/HTTP logs, JSON encoding: the collector's full logs URL
    /// (`http://collector:4318/v1/logs`), http or https.
    Otlp(String),
    /// RFC 5424 syslog.
    Syslog(syslog::Target),
}

impl Sink {
    /// The sink's name in metrics and messages: `otlp`, `syslog-udp`,
    /// `syslog-tcp`, `syslog-unix`.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Otlp(_) => "otlp",
            Sink::Syslog(t) => t.name(),
        }
    }
}

/// Why a batch was not delivered.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth trying again (the receiver unreachable, busy, failing).
    Retry(String),
    /// The receiver refused these many records for good (a 4xx, a partial
    /// success): counted as dropped, not tried again.
    Refused(u64),
}

/// Sends batches to one sink.
pub(crate) trait Deliver: Send {
    /// Sends one batch: all of it accepted, or how many from its front
    /// were (a stream's records go one by one) and why not the rest.
    fn deliver(&mut self, batch: &[Record]) -> Result<(), (usize, Failure)>;
}

/// How many records one exporter delivered and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Delivered to the sink.
    pub delivered: u64,
    /// Counted as dropped (queue full, refused, retries exhausted, still
    /// queued at shutdown).
    pub dropped: u64,
    /// Why the last failed try failed (names and addresses only).
    pub last_failure: Option<String>,
}

/// One sink's queue and the thread that empties it.
pub struct Exporter {
    sink: Sink,
    queue: Mutex<Option<SyncSender<Record>>>,
    accepted: Counter,
    delivered: Counter,
    dropped: Counter,
    last_failure: Arc<Mutex<Option<String>>>,
    done: Mutex<Option<Receiver<()>>>,
    /// What the thread settled of the accepted records (see [`Settled`]).
    settled: Arc<Mutex<Settled>>,
}

/// The accepted records the thread has counted, delivered or dropped (a
/// record refused at a full queue was never accepted); once `closed`, the
/// thread counts no more, so a record is counted once whatever the timing.
#[derive(Default)]
struct Settled {
    count: u64,
    closed: bool,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("sink", &self.sink.name())
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Starts exporting to `sink`; counts in `metrics` (when on).
    /// `upstream_ca`: extra CAs to trust for an https OTLP collector.
    pub fn start(
        sink: Sink,
        upstream_ca: Option<&std::path::Path>,
        metrics: &Metrics,
    ) -> Result<Self, crate::ProxyError> {
        let deliver: Box<dyn Deliver> = match &sink {
            Sink::Otlp(url) => Box::new(otlp::Otlp::new(url, upstream_ca)?),
            Sink::Syslog(t) => Box::new(syslog::Syslog::new(t.clone())),
        };
        let (delivered, dropped) = metrics.export_counters(sink.name());
        let (queue, incoming) = std::sync::mpsc::sync_channel(QUEUE);
        let (finished, done) = std::sync::mpsc::channel();
        let last_failure = Arc::new(Mutex::new(None));
        let settled = Arc::new(Mutex::new(Settled::default()));
        let (d, x, why) = (delivered.clone(), dropped.clone(), last_failure.clone());
        let s = settled.clone();
        std::thread::Builder::new()
            .name(format!("audit-{}", sink.name()))
            .spawn(move || {
                drain(incoming, deliver, (&d, &x, &s), &why);
                let _ = finished.send(());
            })
            .map_err(crate::ProxyError::Thread)?;
        Ok(Exporter {
            sink,
            queue: Mutex::new(Some(queue)),
            accepted: Counter::default(),
            delivered,
            dropped,
            last_failure,
            done: Mutex::new(Some(done)),
            settled,
        })
    }

    /// The sink.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }
}

impl crate::audit::Forward for Exporter {
    /// Queues a record; never waits. A full queue (or a stopped exporter)
    /// drops it, counted.
    fn send(&self, r: &Record) {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(q) = queue.as_ref() else {
            self.dropped.inc();
            return;
        };
        match q.try_send(r.clone()) {
            Ok(()) => {
                self.accepted.inc();
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

impl Exporter {
    /// Delivered and dropped so far.
    pub fn totals(&self) -> Totals {
        Totals {
            delivered: self.delivered.get(),
            dropped: self.dropped.get(),
            last_failure: self
                .last_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Stops taking records: the thread sends what is queued, then ends.
    pub fn stop(&self) {
        drop(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// Stops taking records and gives the thread until `until` to send
    /// what is queued; what it has not delivered or dropped by then is
    /// counted as dropped. The final totals.
    pub fn close(&self, until: Instant) -> Totals {
        self.stop();
        if let Some(done) = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = done.recv_timeout(until.saturating_duration_since(Instant::now()));
        }
        let mut settled = self.settled.lock().unwrap_or_else(PoisonError::into_inner);
        if !settled.closed {
            // Accepted into the queue, but neither delivered nor dropped yet.
            let stranded = self.accepted.get().saturating_sub(settled.count);
            self.dropped.inc_by(stranded);
            settled.closed = true;
        }
        drop(settled);
        self.totals()
    }
}

/// The exporter's thread: batches from the queue until it is closed and
/// empty (a closed queue still yields what it holds), each delivered or
/// counted dropped.
fn drain(
    incoming: Receiver<Record>,
    mut deliver: Box<dyn Deliver>,
    (ok, lost, settled): (&Counter, &Counter, &Mutex<Settled>),
    why: &Mutex<Option<String>>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // The first record of a batch: wait as long as it takes. Then take
    // what is queued; if that is no full batch, sleep once for the rest
    // to arrive. The thread is not woken per record (a request's `send`
    // wakes nobody while the thread sleeps), only once per batch.
    while let Ok(first) = incoming.recv() {
        batch.push(first);
        take_queued(&incoming, &mut batch);
        if batch.len() < BATCH {
            std::thread::sleep(LINGER);
            take_queued(&incoming, &mut batch);
        }
        let n = batch.len() as u64;
        let lost_now = send_with_retries(deliver.as_mut(), &batch, why).min(n);
        let mut s = settled.lock().unwrap_or_else(PoisonError::into_inner);
        if !s.closed {
            ok.inc_by(n - lost_now);
            lost.inc_by(lost_now);
            s.count += n;
        }
        drop(s);
        batch.clear();
    }
}

/// Moves what is queued into `batch`, up to [`BATCH`] records.
fn take_queued(incoming: &Receiver<Record>, batch: &mut Vec<Record>) {
    while batch.len() < BATCH {
        match incoming.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => return,
        }
    }
}

/// One batch, tried up to [`TRIES`] times (each try from the first record
/// not yet delivered); how many of its records were not delivered.
fn send_with_retries(
    deliver: &mut dyn Deliver,
    batch: &[Record],
    why: &Mutex<Option<String>>,
) -> u64 {
    let failed = |reason: String| {
        *why.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    };
    let mut rest = batch;
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=TRIES {
        match deliver.deliver(rest) {
            Ok(()) => return 0,
            Err((done, Failure::Refused(n))) => {
                failed("the receiver refused records".into());
                return n.min(rest.len().saturating_sub(done) as u64);
            }
            Err((done, Failure::Retry(reason))) => {
                failed(reason);
                rest = &rest[done.min(rest.len())..];
                if attempt < TRIES {
                    std::thread::sleep(pause);
                    pause *= 2;
                }
            }
        }
    }
    rest.len() as u64
}
