//! The proxy: `CONNECT host:port` with a token, TLS terminated with a leaf
//! for that host, each request matched to a service, the agent's
//! credentials stripped and the real one injected, the upstream verified,
//! and every injected value scrubbed from the response.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use agent_vault_core::inject::{Outgoing, Plan};
use agent_vault_core::model::{Manifest, Mode};
use agent_vault_core::services::Services;
use agent_vault_core::token::{Claims, TokenKey};
use agent_vault_core::{KeySource, SecretPath, Vault};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

use crate::audit::{AuditLog, Record};
use crate::body::{Held, Rewritten};
use crate::ca::Minter;
use crate::lru::{LEAF_CACHE, LEAF_MAX_AGE, Lru};

type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// How the proxy is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Extra CA certificates (PEM) to trust for upstreams.
    pub upstream_ca: Option<PathBuf>,
    /// Allow upstreams on private, loopback and link-local addresses.
    pub allow_private_upstreams: bool,
    /// The audit log file.
    pub audit: Option<PathBuf>,
    /// The broker's key file (default: the vault's in the key store).
    pub key: Option<PathBuf>,
}

/// A start-up or serving failure.
#[derive(Debug)]
pub struct ProxyError(pub String);

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> ProxyError + '_ {
    move |e| ProxyError(format!("{what}: {e}"))
}

/// How long an agent may take to send a request's head to the proxy (the
/// `CONNECT`, or a plain-http request), counted from when the broker starts
/// waiting for it: a connection that sends nothing, or half a request, is
/// closed after this. No token is needed to hold a connection this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the TLS handshake inside a tunnel may take, counted from the
/// broker's answer to the `CONNECT`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a tunnel may stay open with no request in flight (between
/// keep-alive requests, or before its first one) before the broker closes
/// it. A request in flight, a streaming response, an open WebSocket keep
/// it open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Sets all three time limits to this many milliseconds (tests use it so
/// a limit is reached in a second, not in ten). Not for production use.
const TIME_LIMIT_ENV: &str = "AGENT_VAULT_BROKER_TIME_LIMIT_MS";

/// The broker's time limits (see the constants above).
#[derive(Debug, Clone, Copy)]
struct Limits {
    header: Duration,
    handshake: Duration,
    idle: Duration,
}

impl Limits {
    fn from_env() -> Self {
        match std::env::var(TIME_LIMIT_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
        {
            Some(ms) => Limits {
                header: Duration::from_millis(ms),
                handshake: Duration::from_millis(ms),
                idle: Duration::from_millis(ms),
            },
            None => Limits {
                header: HEADER_TIMEOUT,
                handshake: HANDSHAKE_TIMEOUT,
                idle: IDLE_TIMEOUT,
            },
        }
    }
}

/// The vault as the broker last read it.
struct Snapshot {
    manifest: Manifest,
    services: Services,
    stamp: Option<(SystemTime, SystemTime)>,
    /// The broker's reader on this manifest: it keeps opened group keys,
    /// checked signatures and values between requests (core's read cache),
    /// so a request costs no public-key operation once warm.
    reader: Arc<agent_vault_core::reader::Reader<'static>>,
    /// When `stamp` was last compared with the files (ms after `Broker::started`).
    checked_ms: AtomicU64,
    /// Injection plans by service, then agent, with when they were made
    /// (two levels, so a lookup by `&str` allocates nothing).
    plans: Mutex<HashMap<String, HashMap<String, MadePlan>>>,
}

/// A plan and when it was made.
type MadePlan = (Instant, Arc<Plan>);

/// How long the broker goes on with what it read from the vault's files
/// before it looks at them again: grants, services and revocations (by the
/// manifest's and the services list's times), and secret values (plans are
/// re-made). So a change reaches a running broker within this time, and a
/// request on a warm broker makes no file system call at all.
const RECHECK: Duration = Duration::from_millis(250);

impl Snapshot {
    fn new(
        manifest: Manifest,
        services: Services,
        stamp: Option<(SystemTime, SystemTime)>,
        reader: agent_vault_core::reader::Reader<'static>,
        now_ms: u64,
    ) -> Self {
        Snapshot {
            manifest,
            services,
            stamp,
            reader: Arc::new(reader),
            checked_ms: AtomicU64::new(now_ms),
            plans: Mutex::new(HashMap::new()),
        }
    }
}

/// The running broker.
pub struct Broker {
    vault: Vault,
    token_key: TokenKey,
    minter: Minter,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The clock `Snapshot::checked_ms` counts from.
    started: Instant,
    upstream_tls: Arc<rustls::ClientConfig>,
    upstream_tls_h1: Arc<rustls::ClientConfig>,
    pool: Pool,
    leaf_configs: Mutex<Lru<Arc<rustls::ServerConfig>>>,
    audit: AuditLog,
    allow_private: bool,
    limits: Limits,
}

fn stamp(vault: &Vault) -> Option<(SystemTime, SystemTime)> {
    let m = |f: &str| {
        std::fs::metadata(vault.dir().join(f))
            .and_then(|m| m.modified())
            .ok()
    };
    Some((
        m("manifest.sig")?,
        m("services.yaml").unwrap_or(SystemTime::UNIX_EPOCH),
    ))
}

impl Broker {
    /// Opens the vault with the broker key, the token key and the CA.
    pub fn new(vault: Vault, opts: &Options) -> Result<Self, ProxyError> {
        let key_source = KeySource::File(
            opts.key
                .clone()
                .unwrap_or_else(|| vault.keys().vault_dir(vault.id()).join("broker.key")),
        );
        let id = vault.keys().load(&key_source, vault.id()).map_err(|e| {
            ProxyError(format!(
                "no broker key ({e}); run `agent-vault broker init` or pass --key"
            ))
        })?;
        let manifest = vault.manifest().map_err(err("the vault's manifest"))?;
        let services = vault
            .services()
            .map_err(|e| ProxyError(format!("refusing the services list: {e}")))?;
        let token_key =
            agent_vault_core::broker::token_key(&vault, &id).map_err(err("the token key"))?;
        let ca_key = agent_vault_core::broker::ca_key(&vault, &id).map_err(err("the CA key"))?;
        let ca_cert = String::from_utf8(vault.ca_cert().map_err(err("the CA certificate"))?)
            .map_err(err("the CA certificate"))?;
        let minter = Minter::new(&ca_cert, &ca_key).map_err(err("the CA"))?;

        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if let Some(p) = &opts.upstream_ca {
            for c in CertificateDer::pem_file_iter(p).map_err(err("--upstream-ca"))? {
                roots
                    .add(c.map_err(err("--upstream-ca"))?)
                    .map_err(err("--upstream-ca"))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut upstream = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(err("TLS"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut upstream_h1 = upstream.clone();
        upstream_h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        upstream.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let s = stamp(&vault);
        // The reader borrows the vault for as long as the broker runs: one
        // small allocation, leaked on purpose, for the life of the process.
        let forever: &'static Vault = Box::leak(Box::new(vault.clone()));
        let reader = forever
            .reader(&key_source)
            .and_then(|r| r.with_manifest(manifest.clone()))
            .map_err(err("the broker cannot open the vault"))?;
        Ok(Broker {
            token_key,
            minter,
            snapshot: RwLock::new(Arc::new(Snapshot::new(manifest, services, s, reader, 0))),
            started: Instant::now(),
            upstream_tls: Arc::new(upstream),
            upstream_tls_h1: Arc::new(upstream_h1),
            pool: Pool::default(),
            leaf_configs: Mutex::new(Lru::new(LEAF_CACHE, LEAF_MAX_AGE)),
            audit: AuditLog::open(opts.audit.as_deref()).map_err(err("the audit log"))?,
            allow_private: opts.allow_private_upstreams,
            limits: Limits::from_env(),
            vault,
        })
    }

    /// The current grants, services and revocations; re-read when the
    /// vault's files changed (looked at once per [`RECHECK`]).
    fn snapshot(&self) -> Arc<Snapshot> {
        // A panic elsewhere cannot leave a half-written snapshot (it is
        // replaced whole), so a poisoned lock's value is still good.
        let current = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = current.checked_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < RECHECK.as_millis() as u64
            // One request looks; the others go on with what is current.
            || current
                .checked_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return current;
        }
        let now = stamp(&self.vault);
        if now == current.stamp {
            // Values may have changed (a `set` touches neither file):
            // plans are re-made from the files after RECHECK (see `plan`).
            return current;
        }
        // Only a manifest and services list that verify replace the old ones.
        match (self.vault.manifest(), self.vault.services()) {
            (Ok(manifest), Ok(services)) => {
                let Ok(reader) = current.reader.with_manifest(manifest.clone()) else {
                    return current;
                };
                let fresh = Arc::new(Snapshot::new(manifest, services, now, reader, now_ms));
                *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                fresh
            }
            _ => current,
        }
    }

    /// The injection plan for `service` on behalf of `agent`: made from the
    /// vault's values (only those the agent's grants cover), then kept for
    /// [`RECHECK`], so a warm request reads no file and decrypts nothing.
    fn plan(
        &self,
        snap: &Snapshot,
        name: &str,
        service: &agent_vault_core::services::Service,
        agent: &str,
    ) -> Result<Arc<Plan>, agent_vault_core::Error> {
        if let Ok(plans) = snap.plans.lock()
            && let Some((made, plan)) = plans.get(name).and_then(|by_agent| by_agent.get(agent))
            && made.elapsed() < RECHECK
        {
            return Ok(plan.clone());
        }
        let agent_name: Option<agent_vault_core::AgentName> = agent.parse().ok();
        let resolve = |p: &SecretPath| {
            let granted = agent_name
                .as_ref()
                .and_then(|a| snap.manifest.grant(a, p.group()))
                .is_some_and(|m| matches!(m, Mode::Use | Mode::Read));
            if !granted {
                return Err(agent_vault_core::Error::NotGranted {
                    agent: agent.to_owned(),
                    group: p.group().to_string(),
                });
            }
            snap.reader.get(p)
        };
        let plan = Arc::new(Plan::new(service, &resolve)?);
        if let Ok(mut plans) = snap.plans.lock() {
            plans
                .entry(name.to_owned())
                .or_default()
                .insert(agent.to_owned(), (Instant::now(), plan.clone()));
        }
        Ok(plan)
    }

    /// Leaves minted so far (a host's leaf is minted once).
    pub fn leaves_minted(&self) -> u64 {
        self.minter.minted()
    }

    fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        if let Some(c) = self.leaf_configs.lock().map_err(|_| "poisoned")?.get(host) {
            return Ok(c);
        }
        let (cert, key) = self.minter.leaf(host).map_err(|e| e.to_string())?;
        let certs =
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| e.to_string())?];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        self.leaf_configs
            .lock()
            .map_err(|_| "poisoned")?
            .insert(host.to_owned(), cfg.clone());
        Ok(cfg)
    }

    /// The token in `Proxy-Authorization` (Basic with the token as the
    /// password, or Bearer), verified now.
    fn authenticate(&self, req: &Request<Incoming>) -> Result<Claims, String> {
        let h = req
            .headers()
            .get(hyper::header::PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(
                "no token: set HTTPS_PROXY=http://AGENT:TOKEN@HOST:PORT (agent-vault run does)",
            )?;
        let token = if let Some(b) = h.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| "malformed Proxy-Authorization")?;
            let text = String::from_utf8(decoded).map_err(|_| "malformed Proxy-Authorization")?;
            text.split_once(':')
                .map(|(_, t)| t.to_owned())
                .ok_or("malformed Proxy-Authorization")?
        } else if let Some(t) = h.strip_prefix("Bearer ") {
            t.trim().to_owned()
        } else {
            return Err("Proxy-Authorization must be Basic or Bearer".into());
        };
        self.check_token(&token)
    }

    fn check_token(&self, token: &str) -> Result<Claims, String> {
        let snap = self.snapshot();
        let now = jiff::Timestamp::now().as_second();
        self.token_key
            .verify(token, now, &snap.manifest.revoked)
            .map_err(|e| format!("{e}: ask for a new token (agent-vault token issue)"))
    }
}

fn text(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("agent-vault: {msg}\n")))
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        r.headers_mut().insert(
            hyper::header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"agent-vault\""),
        );
    }
    r
}

fn empty() -> ProxyBody {
    Empty::new()
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        .boxed()
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ProxyError> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(serve_agent(broker.clone(), stream));
            }
        }
    }
}

/// Serves one agent's connection to the proxy until it closes.
pub async fn serve_agent(broker: Arc<Broker>, stream: TcpStream) {
    // Requests are small writes: no waiting for delayed ACKs.
    let _ = stream.set_nodelay(true);
    let header = broker.limits.header;
    let svc = service_fn(move |req| handle_proxy(broker.clone(), req));
    // The clock for a request's head starts as soon as the broker waits for
    // it (hyper starts it on the first read, and again between requests).
    let _ = http1::Builder::new()
        .max_buf_size(64 * 1024)
        .timer(TokioTimer::new())
        .header_read_timeout(header)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await;
}

async fn handle_proxy(
    b: Arc<Broker>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let claims = match b.authenticate(&req) {
        Ok(c) => c,
        Err(msg) => return Ok(text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, &msg)),
    };
    if req.method() != Method::CONNECT {
        return plain_http(b, claims, req).await;
    }
    let Some(authority) = req.uri().authority().cloned() else {
        return Ok(text(StatusCode::BAD_REQUEST, "CONNECT needs host:port"));
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(443);
    let addr = match admit(&b, &claims, &host, port, true).await {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    tokio::spawn(async move {
        let limits = b.limits;
        // The agent's TLS handshake, within a time limit.
        let handshake = async {
            let upgraded = hyper::upgrade::on(req).await.ok()?;
            let cfg = b.server_config(&host).ok()?;
            tokio_rustls::TlsAcceptor::from(cfg)
                .accept(TokioIo::new(upgraded))
                .await
                .ok()
        };
        let Ok(Some(tls)) = tokio::time::timeout(limits.handshake, handshake).await else {
            return;
        };
        // Shared by every request on the tunnel.
        let (claims, host): (Arc<Claims>, Arc<str>) = (Arc::new(claims), host.into());
        let activity = Arc::new(Activity::new());
        let watched = activity.clone();
        let svc = service_fn(move |req| {
            let busy = Busy::start(watched.clone());
            let answer = handle_inner(
                b.clone(),
                claims.clone(),
                host.clone(),
                port,
                addr,
                true,
                req,
            );
            async move {
                let response = answer.await?;
                // In flight until its body has been sent.
                Ok::<_, Infallible>(response.map(|body| Held::new(body, busy).boxed()))
            }
        });
        // HTTP/2 or HTTP/1.1, as the agent's client and the broker agreed (ALPN).
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = &mut conn => return,
                _ = activity.idle_for(limits.idle) => conn.as_mut().graceful_shutdown(),
            }
            // GOAWAY sent; streams still open get a moment to finish.
            let _ = tokio::time::timeout(limits.idle, conn).await;
        } else {
            // HTTP/1.1: the wait for a request's head is the idle limit
            // (hyper starts it when it waits for the next request).
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle)
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades()
                .await;
        }
    });
    Ok(Response::new(empty()))
}

/// What a tunnel is doing: how many requests are in flight (their response
/// bodies included), and when the last one ended.
struct Activity {
    busy: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            busy: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    /// Resolves once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let since = self
                .last
                .lock()
                .map(|l| l.elapsed())
                .unwrap_or(Duration::ZERO);
            if self.busy.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(limit).await;
            } else if since >= limit {
                return;
            } else {
                tokio::time::sleep(limit - since).await;
            }
        }
    }
}

/// One request in flight on a tunnel; ends when dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::AcqRel);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut last) = self.0.last.lock() {
            *last = Instant::now();
        }
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether the token may reach `host:port` at all (some service it may use
/// covers the host, for https or plain http), and the address to pin: a
/// public one unless private upstreams are allowed. Else the refusal.
async fn admit(
    b: &Broker,
    claims: &Claims,
    host: &str,
    port: u16,
    https: bool,
) -> Result<SocketAddr, Response<ProxyBody>> {
    let covered = b
        .snapshot()
        .services
        .covers(host, port, https, |n| claims.may_use(n));
    if !covered {
        let msg = if https {
            format!(
                "no service this token may use covers {host}:{port}; an owner can add one with `agent-vault service add`"
            )
        } else {
            format!(
                "no service this token may use allows plain http to {host}:{port}; use https://"
            )
        };
        return Err(text(StatusCode::FORBIDDEN, &msg));
    }
    crate::net::resolve(host, port, b.allow_private)
        .await
        .map_err(|msg| text(StatusCode::FORBIDDEN, &msg))
}

/// An absolute-form `http://` request: brokered only for a service that
/// allows plain http.
async fn plain_http(
    b: Arc<Broker>,
    claims: Claims,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (Some("http"), Some(authority)) = (req.uri().scheme_str(), req.uri().authority().cloned())
    else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "send https:// through CONNECT, or an absolute http:// URL",
        ));
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(80);
    let addr = match admit(&b, &claims, &host, port, false).await {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    handle_inner(b, Arc::new(claims), host.into(), port, addr, false, req).await
}

/// A connection to an upstream that can take another request.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ProxyBody>),
    H2(hyper::client::conn::http2::SendRequest<ProxyBody>),
}

/// Upstream connections kept for reuse, by pinned address, host and scheme.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Sender>>>,
}

/// An upstream (pinned address, host, https) and the thread whose runtime
/// drives the connection: with a runtime per core, a request only ever
/// uses a connection of its own thread (no wake-ups across threads).
type PoolKey = (SocketAddr, String, bool, std::thread::ThreadId);

/// The most idle connections kept per upstream.
const POOL_PER_UPSTREAM: usize = 64;

impl Pool {
    /// An idle connection that can take a request now, if any.
    fn take(&self, key: &PoolKey) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some(s) = list.pop() {
            match s {
                Sender::H1(h) if h.is_ready() => return Some(Sender::H1(h)),
                // (A multiplexed HTTP/2 connection goes back in when used.)
                Sender::H2(h) if h.is_ready() => return Some(Sender::H2(h)),
                // Busy or closed: an HTTP/1.1 connection still streaming a
                // response is dropped from the pool (it closes when done).
                _ => {}
            }
        }
        None
    }

    fn put(&self, key: PoolKey, s: Sender) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            if list.len() < POOL_PER_UPSTREAM {
                list.push(s);
            }
        }
    }
}

/// HTTP/2 takes the authority in the URI, not a Host header.
fn for_h2(
    mut req: Request<ProxyBody>,
    host: &str,
    port: u16,
) -> Result<Request<ProxyBody>, String> {
    let authority = if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = format!("https://{authority}{pq}")
        .parse()
        .map_err(|e| format!("{host}: {e}"))?;
    req.headers_mut().remove(hyper::header::HOST);
    *req.version_mut() = hyper::Version::HTTP_2;
    Ok(req)
}

/// Sends on a connection. Fails with the request handed back when it was
/// never written (a pooled connection the upstream had closed), so it can
/// go out on a new one.
async fn send_on(
    b: &Broker,
    key: PoolKey,
    sender: Sender,
    mut req: Request<ProxyBody>,
    host: &str,
    port: u16,
    reuse: bool,
) -> Result<Response<Incoming>, (Option<Request<ProxyBody>>, String)> {
    match sender {
        Sender::H1(mut s) => {
            *req.version_mut() = hyper::Version::HTTP_11;
            match s.try_send_request(req).await {
                Ok(r) => {
                    if reuse {
                        b.pool.put(key, Sender::H1(s));
                    }
                    Ok(r)
                }
                Err(mut e) => Err((e.take_message(), format!("{host}: {}", e.into_error()))),
            }
        }
        Sender::H2(mut s) => {
            let req = for_h2(req, host, port).map_err(|e| (None, e))?;
            match s.try_send_request(req).await {
                Ok(r) => {
                    if reuse {
                        b.pool.put(key, Sender::H2(s));
                    }
                    Ok(r)
                }
                Err(mut e) => Err((e.take_message(), format!("{host}: {}", e.into_error()))),
            }
        }
    }
}

/// Sends a request to the upstream: on an idle connection when there is one,
/// else on a new one (TCP to the pinned address, TLS verified for the host,
/// HTTP/2 or HTTP/1.1 by ALPN). WebSocket handshakes always get a connection
/// of their own.
async fn send_upstream(
    b: &Broker,
    host: &str,
    port: u16,
    addr: SocketAddr,
    https: bool,
    websocket: bool,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, String> {
    let key = (addr, host.to_owned(), https, std::thread::current().id());
    let mut req = req;
    if !websocket && let Some(sender) = b.pool.take(&key) {
        match send_on(b, key.clone(), sender, req, host, port, true).await {
            Ok(r) => return Ok(r),
            // Never written: the idle connection had gone; a new one below.
            Err((Some(back), _)) => req = back,
            Err((None, msg)) => return Err(msg),
        }
    }
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot reach {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let sender = if !https {
        // A service that allows plain http (its owner said so).
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Sender::H1(sender)
    } else {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
        // A WebSocket handshake needs HTTP/1.1 upstream.
        let config = if websocket {
            b.upstream_tls_h1.clone()
        } else {
            b.upstream_tls.clone()
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                format!("TLS with {host} failed (its certificate is not trusted?): {e}")
            })?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("{host}: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("{host}: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Sender::H1(sender)
        }
    };
    send_on(b, key, sender, req, host, port, !websocket)
        .await
        .map_err(|(_, msg)| msg)
}

/// Joins an upgraded agent connection to the upstream's: bytes to the
/// upstream pass as they are; bytes to the agent pass through a scrubber that
/// keeps lengths (frame headers count them). Returns (to agent, to upstream).
async fn join<A, U>(
    agent: A,
    upstream: U,
    mut scrub: agent_vault_core::inject::StreamReplace,
) -> (u64, u64)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut agent_r, mut agent_w) = tokio::io::split(agent);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let to_upstream = async {
        let n = tokio::io::copy(&mut agent_r, &mut up_w).await.unwrap_or(0);
        let _ = up_w.shutdown().await;
        n
    };
    let to_agent = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let n = match up_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let out = scrub.push(&buf[..n]);
            total += out.len() as u64;
            if agent_w.write_all(&out).await.is_err() {
                return total;
            }
        }
        let rest = scrub.finish();
        total += rest.len() as u64;
        let _ = agent_w.write_all(&rest).await;
        let _ = agent_w.shutdown().await;
        total
    };
    let (a, u) = tokio::join!(to_agent, to_upstream);
    (a, u)
}

/// The largest request body rewritten for placeholders.
const MAX_REWRITTEN_BODY: u64 = 16 * 1024 * 1024;

/// Hop-by-hop headers: never forwarded.
const HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Refuses a request whose `Host` or `:authority` (or absolute-form
/// target) names anything but the host and port the tunnel was opened to:
/// 421 Misdirected Request; 400 for several or malformed Host headers.
fn pinned_authority(
    req: &Request<Incoming>,
    host: &str,
    port: u16,
) -> Result<(), (StatusCode, String)> {
    let misdirected = |named: &str| {
        let shown: String = named.chars().take(100).collect();
        (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this connection goes to {host}:{port}; a request for {shown:?} is refused (Host and :authority must name the host the tunnel was opened to)"
            ),
        )
    };
    if let Some(a) = req.uri().authority()
        && !same_authority(a.as_str(), host, port)
    {
        return Err(misdirected(a.as_str()));
    }
    let mut hosts = req.headers().get_all(hyper::header::HOST).iter();
    if let Some(h) = hosts.next() {
        if hosts.next().is_some() {
            return Err((
                StatusCode::BAD_REQUEST,
                "more than one Host header".to_owned(),
            ));
        }
        let Ok(h) = h.to_str() else {
            return Err((
                StatusCode::BAD_REQUEST,
                "a malformed Host header".to_owned(),
            ));
        };
        if !same_authority(h, host, port) {
            return Err(misdirected(h));
        }
    }
    Ok(())
}

/// Whether `authority` (`host`, `host:port`, `[v6]:port`) names `host`
/// (lower case, IPv6 without brackets) and, if it has a port, `port`.
/// Case and a trailing dot do not count; user information does.
pub fn same_authority(authority: &str, host: &str, port: u16) -> bool {
    let Ok(a) = authority.parse::<hyper::http::uri::Authority>() else {
        return false;
    };
    if a.as_str().contains('@') {
        return false;
    }
    let named = a.host().trim_start_matches('[').trim_end_matches(']');
    named
        .trim_end_matches('.')
        .eq_ignore_ascii_case(host.trim_end_matches('.'))
        && a.port_u16().is_none_or(|p| p == port)
}

async fn handle_inner(
    b: Arc<Broker>,
    token: Arc<Claims>,
    host: Arc<str>,
    port: u16,
    addr: SocketAddr,
    https: bool,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let mut record = Record {
        time,
        agent: token.agent.clone(),
        token_id: token.id.clone(),
        service: String::new(),
        method: method.clone(),
        host: host.to_string(),
        path: path.clone(),
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0,
        secrets: Vec::new(),
    };
    let refuse = |b: &Broker, mut record: Record, status: StatusCode, msg: &str| {
        record.status = status.as_u16();
        record.duration_ms = started.elapsed().as_millis() as u64;
        b.audit.write(&record);
        Ok(text(status, msg))
    };
    // The token is checked again on every request: a revocation reaches
    // tunnels that are already open.
    let snap = b.snapshot();
    if let Err(e) = b.token_key.verify_claims(
        &token,
        jiff::Timestamp::now().as_second(),
        &snap.manifest.revoked,
    ) {
        return refuse(
            &b,
            record,
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            &e.to_string(),
        );
    }
    // The request goes to the host the tunnel was opened to, whatever
    // the agent wrote in Host or :authority (no domain fronting).
    if let Err((status, msg)) = pinned_authority(&req, &host, port) {
        return refuse(&b, record, status, &msg);
    }
    // The path is matched, and sent, as normalised: `/allowed/../admin` is
    // `/admin`, and an ambiguous one (`%2e%2e`, `%2f`) is under no prefix.
    let raw_pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let (raw_path, query) = match raw_pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw_pq.as_str(), None),
    };
    let normal = agent_vault_core::services::normalize_path(raw_path);
    let pq = match (&normal, query) {
        (Ok(p), Some(q)) => format!("{p}?{q}"),
        (Ok(p), None) => p.clone(),
        // Only a service with no path prefix can match it: sent as it is.
        (Err(_), _) => raw_pq.clone(),
    };
    if let Ok(p) = &normal {
        record.path = p.clone();
    }
    let Some((name, service)) = snap
        .services
        .find(&host, port, https, &method, &pq, |n| token.may_use(n))
    else {
        return match normal {
            Err(why) => refuse(&b, record, StatusCode::BAD_REQUEST, &why),
            Ok(p) => refuse(
                &b,
                record,
                StatusCode::FORBIDDEN,
                &format!("no service this token may use covers {method} {p} on {host}"),
            ),
        };
    };
    record.service = name.to_owned();
    let plan = match b.plan(&snap, name, service, &token.agent) {
        Ok(p) => p,
        Err(e) => return refuse(&b, record, StatusCode::FORBIDDEN, &e.to_string()),
    };
    record.secrets = plan.secrets().iter().map(|s| s.to_string()).collect();
    // A WebSocket upgrade (HTTP/1.1): the handshake is brokered like any
    // request, then the two connections are joined.
    let mut req = req;
    let websocket = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let agent_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let substituter = plan.substituter();
    let rewrites_body = !substituter.is_empty();
    let (pq, mut headers) = if plan.edits_headers_only() {
        // The common case: credentials out, the real one in, on the
        // request's own header map.
        let mut headers = std::mem::take(&mut parts.headers);
        for name in HOP
            .iter()
            .copied()
            .chain(plan.strips().iter().map(|s| s.as_str()))
        {
            headers.remove(name);
        }
        if let Err(e) = Plan::refuse_unlisted(
            std::iter::once(pq.as_bytes()).chain(headers.values().map(|v| v.as_bytes())),
        ) {
            return refuse(&b, record, StatusCode::FORBIDDEN, &e.to_string());
        }
        for (n, v) in plan.sets() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                headers.insert(n, v);
            }
        }
        (pq, headers)
    } else {
        let mut out = Outgoing {
            path_and_query: pq,
            headers: parts
                .headers
                .iter()
                .filter(|(n, _)| !HOP.contains(&n.as_str()))
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
        };
        if let Err(e) = plan.apply(&mut out) {
            return refuse(&b, record, StatusCode::FORBIDDEN, &e.to_string());
        }
        let mut headers = hyper::HeaderMap::with_capacity(out.headers.len());
        for (n, v) in &out.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                headers.append(n, v);
            }
        }
        (out.path_and_query, headers)
    };
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if rewrites_body {
        headers.remove(hyper::header::CONTENT_LENGTH);
    }
    // No compressed frames: the scrubber must see the bytes.
    if websocket {
        headers.remove(hyper::header::SEC_WEBSOCKET_EXTENSIONS);
    }
    // Checked above; the broker writes the one the upstream gets.
    headers.remove(hyper::header::HOST);
    // A compressed response cannot be scrubbed (an echo of the credential,
    // gzipped, would pass): the broker asks for none when it injects.
    if !plan.secrets().is_empty() {
        headers.insert(
            hyper::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let head_only = parts.method == Method::HEAD;
    let mut builder = Request::builder().method(parts.method).uri(pq.as_str());
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    if websocket {
        builder = builder
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, "websocket");
    }
    let default_port = if https { 443 } else { 80 };
    builder = builder.header(
        hyper::header::HOST,
        match (port == default_port, host.contains(':')) {
            (true, false) => host.to_string(),
            (true, true) => format!("[{host}]"),
            (false, false) => format!("{host}:{port}"),
            (false, true) => format!("[{host}]:{port}"),
        },
    );
    let bytes_in = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let upstream_req = if !rewrites_body {
        // Nothing to substitute: the body streams through as it is.
        let counter = bytes_in.clone();
        let body = Rewritten::new(
            body,
            substituter,
            Some(Box::new(move |n| {
                counter.store(n, std::sync::atomic::Ordering::Relaxed)
            })),
        );
        builder.body(body.boxed())
    } else {
        // Substitution changes the body's length, and many servers take no
        // chunked request bodies: a body of declared length is read whole
        // (up to a limit), rewritten, and sent with its new length.
        match declared {
            Some(n) if n > MAX_REWRITTEN_BODY => {
                return refuse(
                    &b,
                    record,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "a body with placeholders may be at most 16 MiB",
                );
            }
            _ => {}
        }
        let whole = match http_body_util::Limited::new(body, MAX_REWRITTEN_BODY as usize)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return refuse(
                    &b,
                    record,
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request body: {e}"),
                );
            }
        };
        bytes_in.store(whole.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let rewritten = Bytes::from(substituter.replace_all(&whole));
        builder = builder.header(hyper::header::CONTENT_LENGTH, rewritten.len());
        builder.body(
            Full::new(rewritten)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
                .boxed(),
        )
    };
    let upstream_req = match upstream_req {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                &b,
                record,
                StatusCode::BAD_REQUEST,
                &format!("cannot forward the request: {e}"),
            );
        }
    };
    // The upstream, at the address pinned at CONNECT, verified for the host.
    let response = send_upstream(&b, &host, port, addr, https, websocket, upstream_req);
    let upstream = match tokio::time::timeout(Duration::from_secs(120), response).await {
        Ok(Ok(r)) => r,
        Ok(Err(msg)) => return refuse(&b, record, StatusCode::BAD_GATEWAY, &msg),
        Err(_) => {
            return refuse(
                &b,
                record,
                StatusCode::GATEWAY_TIMEOUT,
                &format!("{host} did not answer"),
            );
        }
    };
    let mut upstream = upstream;
    let switching = websocket && upstream.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(agent_upgrade) = agent_upgrade {
        let upstream_upgrade = hyper::upgrade::on(&mut upstream);
        let ws_scrub = plan.scrubber_same_length();
        let audit_b = b.clone();
        let mut record = record.clone();
        record.status = 101;
        tokio::spawn(async move {
            if let (Ok(a), Ok(u)) = (agent_upgrade.await, upstream_upgrade.await) {
                let (to_agent, to_upstream) =
                    join(TokioIo::new(a), TokioIo::new(u), ws_scrub).await;
                record.bytes_in = to_upstream;
                record.bytes_out = to_agent;
            }
            record.duration_ms = started.elapsed().as_millis() as u64;
            audit_b.audit.write(&record);
        });
    }
    let (mut parts, body) = upstream.into_parts();
    let scrub = plan.scrubber();
    // Asked for none above; an upstream that compresses anyway is refused
    // rather than passed on unscrubbed.
    let encoded = parts
        .headers
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let bodiless = head_only
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if encoded && !scrub.is_empty() && !bodiless && !switching {
        return refuse(
            &b,
            record,
            StatusCode::BAD_GATEWAY,
            &format!(
                "{host} sent a compressed body although the broker asked for none; a compressed body cannot be scrubbed, so it is not passed on"
            ),
        );
    }
    // Edited in place: most responses carry no injected value, and their
    // headers pass without a copy. `Trailer` stays: it names the trailers
    // (scrubbed like the body, see `Rewritten`), and an HTTP/1.1 agent only
    // gets trailers it announces.
    for name in HOP.iter().filter(|n| **n != "trailer") {
        let keep_for_upgrade = switching && (*name == "upgrade" || *name == "connection");
        if !keep_for_upgrade {
            parts.headers.remove(*name);
        }
    }
    // A scrubbed body changes length.
    if !scrub.is_empty() {
        parts.headers.remove(hyper::header::CONTENT_LENGTH);
    }
    for v in parts.headers.values_mut() {
        if scrub.finds(v.as_bytes()) {
            *v = HeaderValue::from_bytes(&scrub.replace_all(v.as_bytes()))
                .unwrap_or(HeaderValue::from_static("[REDACTED]"));
        }
    }
    record.status = parts.status.as_u16();
    let audit_b = b.clone();
    // An upgraded connection is audited when it closes (above).
    let on_end: Option<crate::body::OnEnd> = (!switching).then(|| -> crate::body::OnEnd {
        Box::new(move |n| {
            record.bytes_out = n;
            record.bytes_in = bytes_in.load(std::sync::atomic::Ordering::Relaxed);
            record.duration_ms = started.elapsed().as_millis() as u64;
            audit_b.audit.write(&record);
        })
    });
    let body = Rewritten::new(body, scrub, on_end);
    Ok(Response::from_parts(parts, body.boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tunnels_host_is_the_same_authority() {
        for a in [
            "api.example.com",
            "API.Example.com",
            "api.example.com.",
            "api.example.com:443",
        ] {
            assert!(same_authority(a, "api.example.com", 443), "{a}");
        }
        assert!(same_authority("[::1]:8443", "::1", 8443));
        assert!(same_authority("127.0.0.1:8443", "127.0.0.1", 8443));
        for a in [
            "evil.example.com",
            "api.example.com:444",
            "api.example.com.evil.com",
            "user@api.example.com",
            "api.example.com@evil.com",
            "api.example.com/x",
            "api.example.com evil",
            "",
            ":443",
        ] {
            assert!(!same_authority(a, "api.example.com", 443), "{a}");
        }
    }

    proptest::proptest! {
        #[test]
        fn an_authority_accepted_names_the_tunnels_host(
            a in "[a-zA-Z0-9.:@\\[\\]%/ -]{0,40}",
            port in proptest::prelude::any::<u16>(),
        ) {
            // Never panics; accepted only if what it names is the host.
            if same_authority(&a, "api.example.com", port) {
                let parsed: hyper::http::uri::Authority = a.parse().unwrap();
                proptest::prop_assert!(parsed.host().trim_end_matches('.').eq_ignore_ascii_case("api.example.com"));
                proptest::prop_assert!(parsed.port_u16().is_none_or(|p| p == port));
                proptest::prop_assert!(!a.contains('@'));
            }
            let _ = same_authority(&a, &a, port);
        }
    }
}
