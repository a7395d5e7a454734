//! Accepting and authenticating: the agent's connection to the proxy, the
//! `CONNECT` with its token, the check that the token may reach the host at
//! all, the tunnel's TLS, and the time limits on each. Requests inside a
//! tunnel go on to [`crate::forward`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_vault_core::broker::decide;
use agent_vault_core::broker::token::{Claims, TokenError};
use base64::Engine;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::body::Held;
use crate::broker::Broker;
use crate::error::ProxyError;
use crate::forward::forward;
use crate::handoff::Session;
use crate::problem::{Problem, Reason, refuse_early};
use crate::reply::{ProxyBody, empty};

/// Why an agent's `Proxy-Authorization` was refused.
#[derive(Debug)]
pub(crate) enum AuthError {
    /// No `Proxy-Authorization` header (or not text).
    NoToken,
    /// Basic credentials that do not decode to `agent:token`.
    Malformed,
    /// Neither Basic nor Bearer.
    Scheme,
    /// The token does not verify (expired, revoked, forged…).
    Token(TokenError),
    /// A hand-off whose supervisor is gone (`run --isolate` ended).
    Ended,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::NoToken => f.write_str(
                "no token: set HTTPS_PROXY=http://AGENT:TOKEN@HOST:PORT (agent-vault run does)",
            ),
            AuthError::Malformed => f.write_str("malformed Proxy-Authorization"),
            AuthError::Scheme => f.write_str("Proxy-Authorization must be Basic or Bearer"),
            AuthError::Token(e) => write!(f, "{e}: ask for a new token (agent-vault token issue)"),
            AuthError::Ended => f.write_str("the supervisor of this `run --isolate` is gone"),
        }
    }
}

impl AuthError {
    /// The 407 this refusal is.
    pub(crate) fn problem(&self) -> Problem {
        let reason = match self {
            AuthError::NoToken => Reason::TokenMissing,
            AuthError::Malformed | AuthError::Scheme => Reason::TokenMalformed,
            AuthError::Token(e) => Reason::of_token(*e),
            AuthError::Ended => Reason::SessionEnded,
        };
        Problem::new(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            reason,
            self.to_string(),
        )
    }
}

impl Broker {
    /// The token in `Proxy-Authorization` (Basic with the token as the
    /// password, or Bearer), verified now.
    fn authenticate(&self, req: &Request<Incoming>) -> Result<Claims, AuthError> {
        let h = req
            .headers()
            .get(hyper::header::PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::NoToken)?;
        let token = if let Some(b) = h.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| AuthError::Malformed)?;
            let text = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
            text.split_once(':')
                .map(|(_, t)| t.to_owned())
                .ok_or(AuthError::Malformed)?
        } else if let Some(t) = h.strip_prefix("Bearer ") {
            t.trim().to_owned()
        } else {
            return Err(AuthError::Scheme);
        };
        self.check_token(&token)
    }

    /// An owner's token (`avt1`, the token key) or one the agent minted
    /// (`avt2`, the agent's key in the current manifest, its lifetime and
    /// services held to the vault's cap and the agent's grants).
    pub(crate) fn check_token(&self, token: &str) -> Result<Claims, AuthError> {
        let snap = self.snapshot();
        let now = jiff::Timestamp::now().as_second();
        agent_vault_core::broker::agent_token::Verifier {
            token_key: &self.token_key,
            manifest: snap.manifest(),
            services: &snap.services,
            max_ttl: self.max_token_ttl(),
        }
        .verify(token, now)
        .map_err(AuthError::Token)
    }
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

/// Serves one agent's TCP connection to the proxy until it closes: inside
/// TLS when the listener speaks it (`crate::listener`), the handshake
/// within the same limit as a tunnel's.
pub async fn serve_agent(broker: Arc<Broker>, stream: TcpStream) {
    // Requests are small writes: no waiting for delayed ACKs.
    let _ = stream.set_nodelay(true);
    let Some(cfg) = broker.listener_tls().cloned() else {
        return serve_stream(broker, stream).await;
    };
    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
    if let Ok(Ok(tls)) = tokio::time::timeout(broker.limits.handshake, accept).await {
        serve_stream(broker, tls).await
    }
}

/// Serves one agent's connection, TCP or Unix socket, until it closes.
pub async fn serve_stream<S>(broker: Arc<Broker>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_with(broker, stream, None).await
}

/// Serves one connection accepted on a handed-off listener (see
/// [`crate::handoff`]): its token is the session's.
pub(crate) async fn serve_handed(broker: Arc<Broker>, stream: TcpStream, session: Arc<Session>) {
    let _ = stream.set_nodelay(true);
    serve_with(broker, stream, Some(session)).await
}

async fn serve_with<S>(broker: Arc<Broker>, stream: S, session: Option<Arc<Session>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header = broker.limits.header;
    let svc = service_fn(move |req| handle_proxy(broker.clone(), req, session.clone()));
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
    session: Option<Arc<Session>>,
) -> Result<Response<ProxyBody>, Infallible> {
    // A hand-off's connections use its token; what the client sends is ignored.
    let auth = match &session {
        Some(s) => s
            .token()
            .ok_or(AuthError::Ended)
            .and_then(|t| b.check_token(&t)),
        None => b.authenticate(&req),
    };
    let claims = match auth {
        Ok(c) => c,
        Err(e) => return Ok(refuse_early(&b, &req, None, e.problem())),
    };
    // Fail closed: grants not known to be current are not used.
    if let Some(why) = b.stale() {
        let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, Reason::VaultStale, why);
        return Ok(refuse_early(&b, &req, Some(&claims), problem));
    }
    if req.method() != Method::CONNECT {
        return plain_http(b, claims, req).await;
    }
    let Some(authority) = req.uri().authority().cloned() else {
        let problem = Problem::of_status(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
        return Ok(refuse_early(&b, &req, Some(&claims), problem));
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(443);
    let addr = match admit(&b, &claims, &host, port, true).await {
        Ok(a) => a,
        Err(e) => return Ok(refuse_early(&b, &req, Some(&claims), e.problem())),
    };
    if let Some(service) = crate::passthrough::service_for(&b, &claims, &host, port) {
        let to = (host, port, addr);
        return Ok(crate::passthrough::open(b, req, claims, session, service, to).await);
    }
    tokio::spawn(tunnel(b, req, (host, port, addr), claims, session));
    Ok(Response::new(empty()))
}

/// The tunnel after the broker's `200` to a `CONNECT`: the agent's TLS
/// handshake with a leaf for `host`, then HTTP/2 or HTTP/1.1 as agreed,
/// each request forwarded, until the agent closes it or it is idle too long.
async fn tunnel(
    b: Arc<Broker>,
    req: Request<Incoming>,
    (host, port, addr): (String, u16, SocketAddr),
    claims: Claims,
    session: Option<Arc<Session>>,
) {
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
        // A hand-off's requests use its newest token (the supervisor renews it).
        let claims = match &session {
            Some(s) => s.claims(),
            None => Some(claims.clone()),
        };
        let answer =
            claims.map(|claims| forward(b.clone(), claims, host.clone(), port, addr, true, req));
        async move {
            let response = match answer {
                Some(answer) => answer.await?,
                None => AuthError::Ended.problem().response(),
            };
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
        // HTTP/1.1: the idle limit from the tunnel's activity too, one timer
        // for the tunnel (hyper's head timeout arms one per request). A
        // connection shut down idle closes at once, a head half read too.
        let conn = http1::Builder::new()
            .serve_connection(TokioIo::new(tls), svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = &mut conn => return,
            _ = activity.idle_for(limits.idle) => conn.as_mut().graceful_shutdown(),
        }
        let _ = tokio::time::timeout(limits.idle, conn).await;
    }
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

/// Why a token may not reach a destination at all.
#[derive(Debug)]
pub(crate) enum Unadmitted {
    /// No service the token may use covers `host:port` for the scheme
    /// (core's decision, with what would allow it).
    Refused(decide::Refusal),
    /// The host does not resolve, or resolves to a refused address.
    Resolve(crate::net::ResolveError),
}

impl std::fmt::Display for Unadmitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unadmitted::Refused(e) => write!(f, "{e}"),
            Unadmitted::Resolve(e) => write!(f, "{e}"),
        }
    }
}

impl Unadmitted {
    /// The 403 this refusal is.
    pub(crate) fn problem(&self) -> Problem {
        use crate::net::ResolveError;
        let reason = match self {
            Unadmitted::Refused(r) => Reason::of(r),
            Unadmitted::Resolve(ResolveError::Private { .. }) => Reason::AddressRefused,
            Unadmitted::Resolve(_) => Reason::HostUnresolved,
        };
        Problem::new(StatusCode::FORBIDDEN, reason, self.to_string())
    }
}

/// Whether the token may reach `host:port` at all (some service it may use
/// covers the host, for https or plain http), and the address to pin: a
/// public one unless private upstreams are allowed.
async fn admit(
    b: &Broker,
    claims: &Claims,
    host: &str,
    port: u16,
    https: bool,
) -> Result<SocketAddr, Unadmitted> {
    let dest = decide::Destination { host, port, https };
    decide::admit(&b.snapshot().services, &dest, |n| claims.may_use(n))
        .map_err(Unadmitted::Refused)?;
    crate::net::resolve(host, port, b.allow_private)
        .await
        .map_err(Unadmitted::Resolve)
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
        let problem = Problem::of_status(
            StatusCode::BAD_REQUEST,
            "send https:// through CONNECT, or an absolute http:// URL",
        );
        return Ok(refuse_early(&b, &req, Some(&claims), problem));
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(80);
    let addr = match admit(&b, &claims, &host, port, false).await {
        Ok(a) => a,
        Err(e) => return Ok(refuse_early(&b, &req, Some(&claims), e.problem())),
    };
    forward(b, Arc::new(claims), host.into(), port, addr, false, req).await
}
