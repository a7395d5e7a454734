//! Audit records to an existing log pipeline, besides the local JSON-lines
//! file: OpenTelemetry logs over OTLP/HTTP with the JSON encoding
//! ([`otlp`]), and RFC 5424 syslog over UDP, TCP or a Unix socket
//! ([`syslog`]).
//!
//! Lossless means accounted for: a request encodes its record (into a
//! buffer of its thread; no copy of the record, and for OTLP no
//! allocation) and appends
//! the bytes to each exporter's bounded buffer under a short lock, and
//! goes on (it never waits for the pipeline); a thread per exporter takes
//! the buffer in batches, tries a failed batch again with growing pauses,
//! and counts every record either delivered or dropped (buffer full,
//! retries exhausted, the receiver refusing it, or still buffered when the
//! broker stopped): [`Totals`], also in `/metrics` as
//! `agent_vault_audit_exported_total` and
//! `agent_vault_audit_export_dropped_total` by sink. Names, never values:
//! a record holds none.
//!
//! The exporter's thread sends a batch straight from the buffer the
//! requests wrote: the buffer is frozen into shared bytes, a sink sends
//! slices of it, and the next batch's records are written into the same
//! memory once the sink has let go of it. Copying each batch into a
//! request body of its own (a fresh half-megabyte allocation, every
//! record read once more) cost the broker ~1.5% of its throughput
//! (bench/fleet.sh --only otlp).
//!
//! Why encoded on the request's thread: a queue of [`Record`]s cost each
//! request a clone (a dozen allocations, freed on the other thread, so
//! the request's thread never got its memory back cheaply) and the
//! exporter's thread a generic serialiser; measured with callgrind, that
//! was ~22,000 instructions per record against ~106,000 for the whole
//! request. Written by hand into a buffer it is a few thousand.

pub mod otlp;
pub mod syslog;

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;

use crate::audit::Record;
use crate::metrics::Metrics;

/// Records waiting for an exporter at most; more are dropped (counted).
pub const QUEUE: usize = 16 * 1024;
/// Bytes of encoded records waiting for an exporter at most (a bound on
/// memory whatever the records' paths); more are dropped (counted).
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Bytes an emptied buffer keeps for the next records at most.
const KEEP: usize = 4 * 1024 * 1024;
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

/// Writes one record as the sink wants it; runs on the request's thread,
/// so it must be quick and must not wait.
pub(crate) trait Encode: Send + Sync {
    /// Appends the record's encoding (one log record, one message).
    fn encode(&self, r: &Record, out: &mut Vec<u8>);

    /// What goes between one record and the next in the buffer, so that a
    /// batch's records are one contiguous slice the sink can send as it is
    /// (OTLP/JSON: the comma between log records).
    fn separator(&self) -> &'static [u8] {
        b""
    }
}

/// Sends batches of encoded records to one sink.
pub(crate) trait Deliver: Send {
    /// Sends one batch: all of it accepted, or how many from its front
    /// were (a stream's records go one by one) and why not the rest.
    fn deliver(&mut self, batch: &Batch<'_>) -> Result<(), (usize, Failure)>;
}

/// A batch of encoded records: slices of the buffer the exporter's thread
/// took, which a sink sends without copying.
#[derive(Clone, Copy)]
pub(crate) struct Batch<'a> {
    /// The buffer the records are in.
    buf: &'a Bytes,
    /// Where the first record starts.
    start: usize,
    /// Where each record ends.
    ends: &'a [usize],
    /// The separator's length (see [`Encode::separator`]).
    gap: usize,
}

impl<'a> Batch<'a> {
    /// How many records.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Each record's bytes.
    pub(crate) fn records(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let (buf, gap) = (self.buf.as_ref(), self.gap);
        let mut start = self.start;
        self.ends.iter().map(move |&end| {
            let r = &buf[start..end];
            start = end + gap;
            r
        })
    }

    /// The records with the separators between them, as one share of the
    /// buffer (no copy).
    pub(crate) fn joined(&self) -> Bytes {
        match self.ends.last() {
            Some(&end) => self.buf.slice(self.start..end),
            None => Bytes::new(),
        }
    }

    /// The batch without its first `n` records.
    fn after(&self, n: usize) -> Batch<'a> {
        let n = n.min(self.ends.len());
        Batch {
            buf: self.buf,
            start: match n {
                0 => self.start,
                n => self.ends[n - 1] + self.gap,
            },
            ends: &self.ends[n..],
            gap: self.gap,
        }
    }
}

/// How many records one exporter delivered and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Delivered to the sink.
    pub delivered: u64,
    /// Counted as dropped (buffer full, refused, retries exhausted, still
    /// buffered at shutdown).
    pub dropped: u64,
    /// Why the last failed try failed (names and addresses only).
    pub last_failure: Option<String>,
}

/// Encoded records, one after another with the encoder's separator
/// between them, and where each ends.
#[derive(Default)]
struct Encoded {
    bytes: BytesMut,
    ends: Vec<usize>,
    /// The separator.
    separator: &'static [u8],
}

impl Encoded {
    fn new(separator: &'static [u8]) -> Self {
        Encoded {
            separator,
            ..Encoded::default()
        }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn push(&mut self, record: &[u8]) {
        if !self.ends.is_empty() {
            self.bytes.extend_from_slice(self.separator);
        }
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
    }

    /// The records' bytes, frozen to be sent (see [`Encoded::clear`]).
    fn freeze(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes).freeze()
    }

    /// Empty, with the memory of the bytes [`Encoded::freeze`] gave if the
    /// sinks have let go of them (up to [`KEEP`]: what a burst took beyond
    /// that is given back).
    fn clear(&mut self, frozen: Bytes) {
        let mut bytes = frozen.try_into_mut().unwrap_or_default();
        bytes.clear();
        self.bytes = if bytes.capacity() <= KEEP {
            bytes
        } else {
            BytesMut::new()
        };
        self.ends.clear();
        self.ends.shrink_to(KEEP / 256);
    }

    /// The batches of at most [`BATCH`] records in `frozen` (what
    /// [`Encoded::freeze`] gave).
    fn batches<'a>(&'a self, frozen: &'a Bytes) -> impl Iterator<Item = Batch<'a>> {
        let gap = self.separator.len();
        self.ends.chunks(BATCH).scan(0, move |start, ends| {
            let batch = Batch {
                buf: frozen,
                start: *start,
                ends,
                gap,
            };
            *start = ends.last().map_or(*start, |&end| end + gap);
            Some(batch)
        })
    }
}

/// The buffer requests write into and the exporter's thread takes.
struct Pending {
    records: Encoded,
    /// No more records taken (the broker is stopping).
    closed: bool,
}

/// The buffer and how the thread is woken: when a record arrives in an
/// empty buffer, when a batch is full, when the exporter stops — never
/// per record.
struct Shared {
    pending: Mutex<Pending>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One sink's buffer and the thread that empties it.
pub struct Exporter {
    sink: Sink,
    encode: Box<dyn Encode>,
    shared: Arc<Shared>,
    accepted: Counter,
    delivered: Counter,
    dropped: Counter,
    last_failure: Arc<Mutex<Option<String>>>,
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// What the thread settled of the accepted records (see [`Settled`]).
    settled: Arc<Mutex<Settled>>,
}

/// The accepted records the thread has counted, delivered or dropped (a
/// record refused at a full buffer was never accepted); once `closed`, the
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
        let (encode, deliver): (Box<dyn Encode>, Box<dyn Deliver>) = match &sink {
            Sink::Otlp(url) => (
                Box::new(otlp::Encoder),
                Box::new(otlp::Otlp::new(url, upstream_ca)?),
            ),
            Sink::Syslog(t) => (
                Box::new(syslog::Encoder::new()),
                Box::new(syslog::Syslog::new(t.clone())),
            ),
        };
        let (delivered, dropped) = metrics.export_counters(sink.name());
        Self::with(sink, encode, deliver, (delivered, dropped))
    }

    /// Starts the thread that delivers with `deliver`.
    fn with(
        sink: Sink,
        encode: Box<dyn Encode>,
        deliver: Box<dyn Deliver>,
        (delivered, dropped): (Counter, Counter),
    ) -> Result<Self, crate::ProxyError> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                records: Encoded::new(encode.separator()),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let (finished, done) = std::sync::mpsc::channel();
        let last_failure = Arc::new(Mutex::new(None));
        let settled = Arc::new(Mutex::new(Settled::default()));
        let (d, x, why) = (delivered.clone(), dropped.clone(), last_failure.clone());
        let (s, incoming) = (settled.clone(), shared.clone());
        std::thread::Builder::new()
            .name(format!("audit-{}", sink.name()))
            .spawn(move || {
                // It sends in batches: woken, it waits its turn rather than
                // preempt the runtimes that write the records.
                crate::sched::batch_this_thread();
                drain(&incoming, deliver, (&d, &x, &s), &why);
                let _ = finished.send(());
            })
            .map_err(crate::ProxyError::Thread)?;
        Ok(Exporter {
            sink,
            encode,
            shared,
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
    /// Encodes the record into the buffer; never waits for the sink. A full
    /// buffer (or a stopped exporter) drops it, counted.
    fn send(&self, r: &Record) {
        thread_local! {
            /// Where a record is encoded before it is copied in: the lock
            /// both runtime threads take is held for a copy, not an encoding.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            self.encode.encode(r, scratch);
            self.buffer(scratch);
        });
    }
}

impl Exporter {
    /// Adds one encoded record to the buffer, or counts it dropped.
    fn buffer(&self, record: &[u8]) {
        let mut p = self.shared.lock();
        if p.closed || p.records.len() >= QUEUE || p.records.bytes.len() >= QUEUE_BYTES {
            drop(p);
            self.dropped.inc();
            return;
        }
        p.records.push(record);
        // Counted under the lock: once `stop` has closed the buffer, every
        // accepted record is counted (see `close`).
        self.accepted.inc();
        let n = p.records.len();
        drop(p);
        if n == 1 || n == BATCH {
            self.shared.ready.notify_one();
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

    /// Stops taking records: the thread sends what is buffered, then ends.
    pub fn stop(&self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
    }

    /// Stops taking records and gives the thread until `until` to send
    /// what is buffered; what it has not delivered or dropped by then is
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
            // Accepted into the buffer, but neither delivered nor dropped yet.
            let stranded = self.accepted.get().saturating_sub(settled.count);
            self.dropped.inc_by(stranded);
            settled.closed = true;
        }
        drop(settled);
        self.totals()
    }
}

/// The exporter's thread: takes the buffer in batches until it is closed
/// and empty, each record delivered or counted dropped. The first record
/// is waited for as long as it takes; then the thread waits up to
/// [`LINGER`] for a full batch, takes all that is buffered (leaving the
/// requests an empty buffer with the memory of the last one) and sends it
/// in batches of at most [`BATCH`].
fn drain(
    shared: &Shared,
    mut deliver: Box<dyn Deliver>,
    (ok, lost, settled): (&Counter, &Counter, &Mutex<Settled>),
    why: &Mutex<Option<String>>,
) {
    let mut taken = Encoded::new(shared.lock().records.separator);
    loop {
        let p = shared.lock();
        let p = shared
            .ready
            .wait_while(p, |p| p.records.len() == 0 && !p.closed)
            .unwrap_or_else(PoisonError::into_inner);
        if p.records.len() == 0 {
            return; // closed and empty
        }
        let (mut p, _) = shared
            .ready
            .wait_timeout_while(p, LINGER, |p| p.records.len() < BATCH && !p.closed)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut p.records, &mut taken);
        drop(p);
        let frozen = taken.freeze();
        for batch in taken.batches(&frozen) {
            let n = batch.len() as u64;
            let lost_now = send_with_retries(deliver.as_mut(), &batch, why).min(n);
            let mut s = settled.lock().unwrap_or_else(PoisonError::into_inner);
            if !s.closed {
                ok.inc_by(n - lost_now);
                lost.inc_by(lost_now);
                s.count += n;
            }
        }
        taken.clear(frozen);
    }
}

/// One batch, tried up to [`TRIES`] times (each try from the first record
/// not yet delivered); how many of its records were not delivered.
fn send_with_retries(
    deliver: &mut dyn Deliver,
    batch: &Batch<'_>,
    why: &Mutex<Option<String>>,
) -> u64 {
    let failed = |reason: String| {
        *why.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    };
    let mut rest = *batch;
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=TRIES {
        match deliver.deliver(&rest) {
            Ok(()) => return 0,
            Err((done, Failure::Refused(n))) => {
                failed("the receiver refused records".into());
                return n.min(rest.len().saturating_sub(done) as u64);
            }
            Err((done, Failure::Retry(reason))) => {
                failed(reason);
                rest = rest.after(done);
                if attempt < TRIES {
                    std::thread::sleep(pause);
                    pause *= 2;
                }
            }
        }
    }
    rest.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Forward;

    /// A sink that holds every batch until the test lets it go, and keeps
    /// what it got.
    struct Gate {
        open: std::sync::mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<Vec<u8>>>>,
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl Deliver for Gate {
        fn deliver(&mut self, batch: &Batch<'_>) -> Result<(), (usize, Failure)> {
            let _ = self.open.recv();
            self.sizes.lock().unwrap().push(batch.len());
            let mut got = self.got.lock().unwrap();
            got.extend(batch.records().map(<[u8]>::to_vec));
            Ok(())
        }
    }

    /// Encodes a record as its agent's name.
    struct Name;

    impl Encode for Name {
        fn encode(&self, r: &Record, out: &mut Vec<u8>) {
            out.extend_from_slice(r.agent.as_bytes());
        }
    }

    fn record(i: usize) -> Record {
        Record {
            time: jiff::Timestamp::UNIX_EPOCH,
            agent: format!("r{i}"),
            token_id: String::new(),
            service: String::new(),
            method: String::new(),
            host: String::new(),
            path: String::new(),
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
            secrets: Vec::new(),
            port: None,
            reason: None,
            tunnel: false,
        }
    }

    /// An exporter whose sink is a [`Gate`], what the sink got, the sizes
    /// of its batches, and the sender that lets each batch through.
    struct Gated {
        e: Exporter,
        open: std::sync::mpsc::Sender<()>,
        got: Arc<Mutex<Vec<Vec<u8>>>>,
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    fn gated() -> Gated {
        let (open, gate) = std::sync::mpsc::channel();
        let (got, sizes) = (Arc::default(), Arc::default());
        let deliver = Gate {
            open: gate,
            got: Arc::clone(&got),
            sizes: Arc::clone(&sizes),
        };
        let e = Exporter::with(
            Sink::Otlp("http://127.0.0.1:9/v1/logs".into()),
            Box::new(Name),
            Box::new(deliver),
            (Counter::default(), Counter::default()),
        )
        .unwrap();
        Gated {
            e,
            open,
            got,
            sizes,
        }
    }

    /// Sends one record and waits until the thread has taken it (a batch
    /// of one, held at the gate).
    fn send_one_taken(e: &Exporter) {
        e.send(&record(0));
        let taken = Instant::now();
        while e.shared.lock().records.len() > 0 {
            assert!(taken.elapsed() < Duration::from_secs(5), "never taken");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_buffer_is_bounded_and_every_record_is_delivered_or_counted_dropped() {
        let Gated {
            e,
            open,
            got,
            sizes,
        } = gated();
        // The first record: the thread takes it; then the buffer fills
        // while the sink does not answer.
        send_one_taken(&e);
        let extra = 100;
        for i in 1..=QUEUE + extra {
            e.send(&record(i));
        }
        assert_eq!(e.totals().dropped, extra as u64, "dropped at a full buffer");
        // The sink answers again: everything buffered is delivered, in
        // order, in batches of at most BATCH.
        for _ in 0..=QUEUE / BATCH + 1 {
            open.send(()).unwrap();
        }
        let t = e.close(Instant::now() + Duration::from_secs(10));
        assert_eq!(
            t,
            Totals {
                delivered: 1 + QUEUE as u64,
                dropped: extra as u64,
                last_failure: None
            }
        );
        let got = got.lock().unwrap();
        let want: Vec<Vec<u8>> = (0..=QUEUE).map(|i| format!("r{i}").into_bytes()).collect();
        assert_eq!(*got, want);
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes[0], 1);
        assert!(sizes.iter().all(|&n| n <= BATCH), "{sizes:?}");
        // Stopped: a record now is dropped, counted.
        e.send(&record(0));
        assert_eq!(e.totals().dropped, extra as u64 + 1);
    }

    #[test]
    fn batches_are_slices_of_one_buffer_whose_memory_is_written_again() {
        let mut buffer = Encoded::new(b",");
        let n = BATCH + 3;
        for i in 0..n {
            buffer.push(format!("r{i}").as_bytes());
        }
        let frozen = buffer.freeze();
        let at = frozen.as_ptr();
        let batches: Vec<Batch<'_>> = buffer.batches(&frozen).collect();
        assert_eq!(
            batches.iter().map(Batch::len).collect::<Vec<_>>(),
            [BATCH, 3]
        );
        let all: Vec<&[u8]> = batches.iter().flat_map(Batch::records).collect();
        let want: Vec<Vec<u8>> = (0..n).map(|i| format!("r{i}").into_bytes()).collect();
        assert_eq!(all, want);
        // A batch's records with the separators between them, none outside.
        let second = &batches[1];
        let joined = format!("r{BATCH},r{},r{}", BATCH + 1, BATCH + 2);
        assert_eq!(second.joined(), joined.as_bytes());
        let rest = format!("r{},r{}", BATCH + 1, BATCH + 2);
        assert_eq!(second.after(1).joined(), rest.as_bytes());
        assert_eq!(second.after(1).records().count(), 2);
        assert_eq!(second.after(3).joined(), b"".as_slice());
        assert_eq!(batches[0].after(0).records().next(), Some(b"r0".as_slice()));
        // Once the sinks let go of the frozen bytes, the next records are
        // written into the same memory: no allocation per batch.
        drop(batches);
        buffer.clear(frozen);
        buffer.push(b"next");
        assert_eq!(buffer.bytes.as_ptr(), at);
        assert_eq!(&buffer.bytes[..], b"next");
        // A sink still holding a share: the next records go to new memory,
        // and the share keeps its bytes.
        let frozen = buffer.freeze();
        let share = frozen.clone();
        buffer.clear(frozen);
        buffer.push(b"new");
        assert_eq!(&share[..], b"next");
        assert_ne!(buffer.bytes.as_ptr(), share.as_ptr());
        assert_eq!(&buffer.bytes[..], b"new");
    }

    #[test]
    fn what_is_still_buffered_at_close_is_counted_dropped() {
        let Gated { e, open: _open, .. } = gated();
        for i in 0..10 {
            e.send(&record(i));
        }
        // The sink never answers: all ten are counted dropped at close.
        let t = e.close(Instant::now() + Duration::from_millis(300));
        assert_eq!((t.delivered, t.dropped), (0, 10));
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_too() {
        let Gated { e, open, .. } = gated();
        // The thread holds the first record at the gate; then records of
        // 1 MiB each fill the buffer's bytes long before its record count.
        send_one_taken(&e);
        let mut big = record(1);
        big.agent = "x".repeat(1 << 20);
        let fit = QUEUE_BYTES >> 20;
        for _ in 0..fit + 3 {
            e.send(&big);
        }
        assert_eq!(e.shared.lock().records.len(), fit);
        assert_eq!(e.totals().dropped, 3);
        for _ in 0..3 {
            let _ = open.send(());
        }
        let t = e.close(Instant::now() + Duration::from_secs(10));
        assert_eq!((t.delivered, t.dropped), (1 + fit as u64, 3));
    }
}
