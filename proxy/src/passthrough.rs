//! Tunnel services: a `CONNECT` passed through without TLS interception, so
//! the agent's TLS goes to the upstream itself and the agent sees the
//! upstream's own certificate. Nothing is injected (a tunnel service names
//! no secret), so there is nothing to scrub. The destination rules still
//! hold: the host was admitted at `CONNECT` (a service covers it, private
//! addresses refused unless allowed) and the bytes go to the address
//! resolved then. One audit record per tunnel: host, bytes each way,
//! duration.
//!
//! A tunnel is closed when no byte has passed either way for the idle
//! limit, when its token expires or is revoked, when the broker goes stale
//! (`--max-stale`), or when no tunnel service covers its host any more
//! (each checked every second).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agent_vault_core::broker::token::Claims;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::audit::{Audited, Record};
use crate::broker::Broker;
use crate::handoff::Session;
use crate::problem::{Problem, Reason, refuse_early};
use crate::reply::{ProxyBody, empty};

/// How often an open tunnel is checked again (see [`still_admitted`]).
const RECHECK_ADMISSION: Duration = Duration::from_secs(1);

/// The tunnel service a `CONNECT` to `host:port` is passed through for,
/// if any (see [`agent_vault_core::broker::services::Services::tunnel_for`]).
pub(crate) fn service_for(b: &Broker, claims: &Claims, host: &str, port: u16) -> Option<String> {
    b.snapshot()
        .services
        .tunnel_for(host, port, |n| claims.may_use(n))
        .map(str::to_owned)
}

/// Answers an admitted `CONNECT` for a tunnel service: the upstream
/// connected, `200`, and the bytes passed through from then on; or `502`.
pub(crate) async fn open(
    b: Arc<Broker>,
    req: Request<Incoming>,
    claims: Claims,
    session: Option<Arc<Session>>,
    service: String,
    (host, port, addr): (String, u16, SocketAddr),
) -> Response<ProxyBody> {
    match Passthrough::connect(&b, &claims, &service, &host, port, addr).await {
        Ok(p) => {
            tokio::spawn(p.run(b, req, claims, session));
            Response::new(empty())
        }
        Err(e) => refuse_early(
            &b,
            &req,
            Some(&claims),
            Problem::new(
                StatusCode::BAD_GATEWAY,
                Reason::UpstreamUnreachable,
                e.to_string(),
            ),
        ),
    }
}

/// Why the upstream of a tunnel could not be reached.
#[derive(Debug)]
pub(crate) struct Unreachable {
    host: String,
    port: u16,
    why: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reach {}:{}: {}", self.host, self.port, self.why)
    }
}

/// A tunnel admitted at `CONNECT`, its upstream connected (before the
/// agent is told `200`, so a failure is an answer, not a closed socket).
pub(crate) struct Passthrough {
    audit: Audited,
    upstream: TcpStream,
    started: Instant,
}

impl Passthrough {
    /// Connects to the pinned address, within the handshake time limit.
    /// The tunnel's audit record starts now (and is written, with status
    /// 502, if the upstream cannot be reached).
    pub(crate) async fn connect(
        b: &Broker,
        claims: &Claims,
        service: &str,
        host: &str,
        port: u16,
        addr: SocketAddr,
    ) -> Result<Self, Unreachable> {
        let started = Instant::now();
        let record = Record {
            time: jiff::Timestamp::now(),
            agent: claims.agent.clone(),
            token_id: claims.id.clone(),
            service: service.to_owned(),
            method: "CONNECT".into(),
            host: host.to_owned(),
            path: String::new(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
            secrets: Vec::new(),
            port: Some(port),
            reason: None,
            tunnel: true,
        };
        let mut audit = Audited::new(b.audit.clone(), started, record);
        let unreachable = |why: String| Unreachable {
            host: host.to_owned(),
            port,
            why,
        };
        let upstream =
            match tokio::time::timeout(b.limits.handshake, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    audit.record.status = 502;
                    return Err(unreachable(e.to_string()));
                }
                Err(_) => {
                    audit.record.status = 504;
                    return Err(unreachable("no answer in time".into()));
                }
            };
        let _ = upstream.set_nodelay(true);
        audit.record.status = 200;
        Ok(Passthrough {
            audit,
            upstream,
            started,
        })
    }

    /// Joins the agent's upgraded connection to the upstream until either
    /// side closes, the tunnel is idle too long, or its token stops
    /// verifying (a hand-off's newest token: the supervisor renews it);
    /// then writes the audit record.
    pub(crate) async fn run(
        self,
        b: Arc<Broker>,
        req: Request<Incoming>,
        claims: Claims,
        session: Option<Arc<Session>>,
    ) {
        let Passthrough {
            mut audit,
            upstream,
            started,
        } = self;
        let claims = Arc::new(claims);
        let Ok(Ok(agent)) = tokio::time::timeout(b.limits.handshake, hyper::upgrade::on(req)).await
        else {
            return;
        };
        let last = Arc::new(AtomicU64::new(0));
        let (sent, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut agent = Counted::new(TokioIo::new(agent), sent.clone(), last.clone(), started);
        let mut upstream = Counted::new(upstream, received.clone(), last.clone(), started);
        let copy = tokio::io::copy_bidirectional(&mut agent, &mut upstream);
        tokio::pin!(copy);
        let mut tick = tokio::time::interval(RECHECK_ADMISSION);
        loop {
            tokio::select! {
                _ = &mut copy => break,
                _ = tick.tick() => {
                    let idle = started.elapsed()
                        .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                    let current = match &session {
                        Some(s) => s.claims(),
                        None => Some(claims.clone()),
                    };
                    if idle >= b.limits.idle || !still_admitted(&b, current.as_deref(), &audit) {
                        break;
                    }
                }
            }
        }
        audit.bytes(
            sent.load(Ordering::Relaxed),
            received.load(Ordering::Relaxed),
        );
    }
}

/// Whether an open tunnel may go on: its token (the session's newest, for a
/// hand-off) still verifies, the broker is not stale (a broker that fails
/// closed cuts what it already let through too), and a tunnel service the
/// token may use still covers the host (an owner who removed the service
/// or narrowed it ends the tunnels it allowed).
fn still_admitted(b: &Broker, claims: Option<&Claims>, audit: &Audited) -> bool {
    let Some(claims) = claims else {
        return false;
    };
    let snap = b.snapshot();
    let now = jiff::Timestamp::now().as_second();
    let (host, port) = (&audit.record.host, audit.record.port.unwrap_or(443));
    b.token_key
        .verify_claims(claims, now, &snap.manifest().revoked)
        .is_ok()
        && b.stale().is_none()
        && snap
            .services
            .tunnel_for(host, port, |n| claims.may_use(n))
            .is_some_and(|s| s == audit.record.service)
}

/// A stream that counts the bytes read from it and notes when it last
/// moved (milliseconds since the tunnel started).
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    started: Instant,
}

impl<S> Counted<S> {
    fn new(inner: S, read: Arc<AtomicU64>, last: Arc<AtomicU64>, started: Instant) -> Self {
        Counted {
            inner,
            read,
            last,
            started,
        }
    }

    fn moved(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.moved();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
