//! Forwarding one request inside a tunnel: the token checked again, the
//! service matched, the request edited (the agent's credentials out, the
//! service's in, placeholders substituted), sent upstream through
//! [`crate::upstream`], and the response scrubbed of every injected value on
//! its way back. Each request's audit record is an [`Audited`] guard.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_vault_core::broker::decide;
use agent_vault_core::broker::inject::{Outgoing, Plan};
use agent_vault_core::broker::scrub::Decompress;
use agent_vault_core::broker::services::PathRefusal;
use agent_vault_core::broker::token::{Claims, TokenError};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};

use crate::audit::{Audited, Record};
use crate::authority::{AuthorityError, pinned_authority};
use crate::body::{OnEnd, Rewritten, Scrub};
use crate::broker::{Broker, PlanFailure, Prepared};
use crate::head::{HOP, body_codings, scrub_head, scrub_reason};
use crate::problem::{Problem, Reason};
use crate::ratelimit::{Admitted, Limited};
use crate::reply::{ProxyBody, full};
use crate::upstream::SendError;
use crate::websocket::splice;

/// How long the upstream may take to answer a request's head.
const UPSTREAM_ANSWER: Duration = Duration::from_secs(120);

/// Why a request inside a tunnel was refused; each is one answer to the
/// agent and one audit record with its status.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The token no longer verifies (expired or revoked since `CONNECT`).
    Token(TokenError),
    /// `Host` or `:authority` names another host than the tunnel's.
    Authority(AuthorityError),
    /// No service this token may use covers the request (core's decision:
    /// host, method, path or an ambiguous path), or the agent may not use
    /// the service's secrets.
    Route(decide::Refusal),
    /// No injection plan (a secret missing, or not signed).
    Plan(agent_vault_core::Error),
    /// An OAuth credential of the service could not be refreshed.
    OAuth(crate::oauth::RefreshFailed),
    /// The request carries what the injection refuses (an unlisted
    /// placeholder, a credential where none may go).
    Injection(agent_vault_core::Error),
    /// The agent reached a rate limit of the service.
    Limited(Limited),
    /// A body with placeholders over [`MAX_REWRITTEN_BODY`].
    TooLarge,
    /// The body with placeholders could not be read.
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// The edited request is not a valid request.
    Build(hyper::http::Error),
    /// The upstream could not be reached, or failed.
    Upstream(SendError),
    /// An AWS request that could not be signed (SigV4 services).
    Sigv4(crate::sigv4::SignError),
    /// The upstream did not answer in time.
    Timeout {
        /// The tunnel's host.
        host: String,
    },
    /// The upstream sent a body in an encoding the broker cannot decode.
    Compressed {
        /// The tunnel's host.
        host: String,
    },
    /// The broker is not up to date with the vault's remote (fail closed).
    Stale(String),
}

impl Refusal {
    /// The status the agent gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::Token(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Refusal::Authority(e) => e.status(),
            Refusal::Body(_) | Refusal::Build(_) => StatusCode::BAD_REQUEST,
            Refusal::Route(r) => crate::problem::route_status(r),
            Refusal::Plan(_) | Refusal::Injection(_) => StatusCode::FORBIDDEN,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Upstream(_) | Refusal::Compressed { .. } | Refusal::OAuth(_) => {
                StatusCode::BAD_GATEWAY
            }
            Refusal::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Sigv4(e) => e.status(),
            Refusal::Stale(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Token(e) => write!(f, "{e}"),
            Refusal::Authority(e) => write!(f, "{e}"),
            Refusal::Route(why) => write!(f, "{why}"),
            Refusal::Plan(e) | Refusal::Injection(e) => write!(f, "{e}"),
            Refusal::OAuth(e) => write!(f, "{e}"),
            Refusal::TooLarge => f.write_str("a body with placeholders may be at most 16 MiB"),
            Refusal::Limited(l) => write!(f, "{l}"),
            Refusal::Body(e) => write!(f, "cannot read the request body: {e}"),
            Refusal::Build(e) => write!(f, "cannot forward the request: {e}"),
            Refusal::Upstream(e) => write!(f, "{e}"),
            Refusal::Timeout { host } => write!(f, "{host} did not answer"),
            Refusal::Sigv4(e) => write!(f, "{e}"),
            Refusal::Stale(why) => f.write_str(why),
            Refusal::Compressed { host } => write!(
                f,
                "{host} sent a body in an encoding the broker cannot decode; a body it cannot read cannot be scrubbed, so it is not passed on"
            ),
        }
    }
}

impl Refusal {
    /// A plan that could not be made: core's refusal when the agent may not
    /// use the service's secrets (what `explain` says too), else the error.
    pub(crate) fn plan(service: &str, e: PlanFailure) -> Self {
        match e {
            PlanFailure::OAuth(e) => Refusal::OAuth(e),
            PlanFailure::Core(agent_vault_core::Error::NotGranted { agent, group }) => {
                Refusal::Route(decide::Refusal::NotGranted {
                    agent,
                    service: service.to_owned(),
                    group,
                })
            }
            PlanFailure::Core(e) => Refusal::Plan(e),
        }
    }

    /// The answer this refusal is.
    pub(crate) fn problem(&self) -> Problem {
        use crate::upstream::SendError;
        if let Refusal::Limited(l) = self {
            return Problem::rate_limited(l.to_string(), l.retry_after);
        }
        let reason = match self {
            Refusal::Token(e) => Reason::of_token(*e),
            Refusal::Authority(_) => Reason::AuthorityMismatch,
            Refusal::Route(r) => Reason::of(r),
            Refusal::Plan(_) => Reason::SecretUnavailable,
            Refusal::OAuth(_) => Reason::OAuthRefreshFailed,
            Refusal::Injection(_) => Reason::PlaceholderRefused,
            Refusal::TooLarge => Reason::BodyTooLarge,
            Refusal::Limited(_) => Reason::RateLimited,
            Refusal::Body(_) | Refusal::Build(_) => Reason::BadRequest,
            Refusal::Upstream(SendError::Unreachable { .. }) => Reason::UpstreamUnreachable,
            Refusal::Upstream(SendError::Tls { .. }) => Reason::UpstreamTls,
            Refusal::Upstream(_) => Reason::UpstreamFailed,
            Refusal::Timeout { .. } => Reason::UpstreamTimeout,
            Refusal::Compressed { .. } => Reason::UpstreamEncoding,
            Refusal::Stale(_) => Reason::VaultStale,
            Refusal::Sigv4(e) => match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Reason::BodyTooLarge,
                StatusCode::BAD_REQUEST => Reason::BadRequest,
                _ => Reason::SigningFailed,
            },
        };
        let hint = match reason {
            Reason::TokenExpired | Reason::TokenRevoked | Reason::TokenInvalid => "",
            Reason::SecretUnavailable => {
                "; an owner can check it with `agent-vault check` and set it again with `agent-vault set`"
            }
            Reason::UpstreamTls => {
                "; for an upstream with a private CA the broker needs `agent-vault proxy --upstream-ca FILE`"
            }
            Reason::UpstreamUnreachable | Reason::UpstreamFailed | Reason::UpstreamTimeout => {
                " (the upstream failed: this is no refusal by the vault's rules; try again later)"
            }
            _ => "",
        };
        Problem::new(self.status(), reason, format!("{self}{hint}"))
    }
}

/// The refusal's answer (problem+json); its audit record is written with
/// its status and reason.
fn refuse(mut audit: Audited, refusal: Refusal) -> Response<ProxyBody> {
    let problem = refusal.problem();
    audit.record.status = problem.status.as_u16();
    audit.record.reason = Some(problem.reason.name().to_owned());
    drop(audit);
    problem.response()
}

/// The tunnel a request came through: who, where to, and how.
pub(crate) struct Tunnel {
    /// The token's claims, checked at `CONNECT`.
    pub(crate) token: Arc<Claims>,
    /// The host the tunnel was opened to (lower case, IPv6 without brackets).
    pub(crate) host: Arc<str>,
    /// Its port.
    pub(crate) port: u16,
    /// The upstream address pinned when the tunnel was admitted.
    pub(crate) addr: SocketAddr,
    /// https (a `CONNECT` tunnel), or plain http.
    pub(crate) https: bool,
}

/// The upstream's answer, and what the response stage needs to know of
/// the request.
struct Answered {
    plan: Arc<Prepared>,
    upstream: Response<Incoming>,
    /// The agent's side of a WebSocket upgrade.
    agent_upgrade: Option<OnUpgrade>,
    websocket: bool,
    head_only: bool,
    /// Request body bytes from the agent, set as the body is sent.
    bytes_in: Arc<AtomicU64>,
    /// Its place in flight (rate limits), held until the request ends.
    admitted: Admitted,
}

/// Forwards one request from a tunnel and answers it: the upstream's
/// response, scrubbed, or the broker's refusal.
pub(crate) async fn forward(
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
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let record = Record {
        time,
        agent: token.agent.clone(),
        token_id: token.id.clone(),
        service: String::new(),
        method: method.as_str().to_owned(),
        host: host.to_string(),
        path,
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0,
        secrets: Vec::new(),
        port: Some(port),
        reason: None,
        tunnel: false,
    };
    let mut audit = Audited::new(b.audit.clone(), started, record);
    let tunnel = Tunnel {
        token,
        host,
        port,
        addr,
        https,
    };
    match exchange(&b, &tunnel, method.as_str(), req, &mut audit.record).await {
        Ok(answered) => Ok(respond(audit, answered, &tunnel.host)),
        Err(refusal) => Ok(refuse(audit, refusal)),
    }
}

/// The request stage: checks, the plan, the edited request sent upstream.
async fn exchange(
    b: &Broker,
    t: &Tunnel,
    method: &str,
    req: Request<Incoming>,
    record: &mut Record,
) -> Result<Answered, Refusal> {
    let host = &*t.host;
    // Fail closed in open tunnels too.
    if let Some(why) = b.stale() {
        return Err(Refusal::Stale(why));
    }
    // The token is checked again on every request: a revocation reaches
    // tunnels that are already open.
    let snap = b.snapshot();
    b.token_key
        .verify_claims(
            &t.token,
            jiff::Timestamp::now().as_second(),
            &snap.manifest().revoked,
        )
        .map_err(Refusal::Token)?;
    // The request goes to the host the tunnel was opened to, whatever
    // the agent wrote in Host or :authority (no domain fronting).
    pinned_authority(&req, host, t.port).map_err(Refusal::Authority)?;
    let (pq, normal) = normalised(&req);
    if let Ok(p) = &normal {
        record.path = p.clone();
    }
    let dest = decide::Destination {
        host,
        port: t.port,
        https: t.https,
    };
    let (name, service) = decide::route(&snap.services, &dest, method, &pq, &normal, |n| {
        t.token.may_use(n)
    })
    .map_err(Refusal::Route)?;
    record.service = name.to_owned();
    let admitted = snap.rates.admit(name, &t.token.agent);
    let admitted = admitted.map_err(Refusal::Limited)?;
    let plan = b
        .plan(&snap, name, service, &t.token.agent)
        .await
        .map_err(|e| Refusal::plan(name, e))?;
    record.secrets = plan.secret_names.clone();
    // A WebSocket upgrade (HTTP/1.1): the handshake is brokered like any
    // request, then the two connections are joined.
    let mut req = req;
    let websocket = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let agent_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let head_only = req.method() == Method::HEAD;
    let bytes_in = Arc::new(AtomicU64::new(0));
    let upstream_req = upstream_request(&plan, t, req, pq, websocket, &bytes_in).await?;
    // The upstream, at the address pinned at CONNECT, verified for the host.
    let response = b
        .upstreams
        .send(host, t.port, t.addr, t.https, websocket, upstream_req);
    let sent = Instant::now();
    let upstream = match tokio::time::timeout(UPSTREAM_ANSWER, response).await {
        Ok(Ok(r)) => {
            plan.meter.upstream_took(sent.elapsed());
            r
        }
        Ok(Err(e)) => return Err(Refusal::Upstream(e)),
        Err(_) => {
            return Err(Refusal::Timeout {
                host: host.to_owned(),
            });
        }
    };
    Ok(Answered {
        plan,
        upstream,
        agent_upgrade,
        websocket,
        head_only,
        bytes_in,
        admitted,
    })
}

/// The path and query as matched and sent, and the path normalised (or why
/// it cannot be): `/allowed/../admin` is `/admin`, and an ambiguous one
/// (`%2e%2e`, `%2f`) is under no prefix.
fn normalised(req: &Request<Incoming>) -> (String, Result<String, PathRefusal>) {
    // Core's, which `agent-vault explain` uses too.
    decide::target(req.uri().path_and_query().map_or("/", |p| p.as_str()))
}

/// The request as it goes upstream: headers edited, `Host` written by the
/// broker, the body streamed or, with placeholders, rewritten whole.
async fn upstream_request(
    plan: &Plan,
    t: &Tunnel,
    req: Request<Incoming>,
    pq: String,
    websocket: bool,
    bytes_in: &Arc<AtomicU64>,
) -> Result<Request<ProxyBody>, Refusal> {
    let (mut parts, body) = req.into_parts();
    let substituter = plan.substituter();
    let rewrites_body = !substituter.is_empty();
    let (pq, mut headers) = edit_headers(plan, &mut parts.headers, pq)?;
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
    let mut builder = Request::builder().method(parts.method).uri(pq.as_str());
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    if websocket {
        builder = builder
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, "websocket");
    }
    let (host, port) = (&*t.host, t.port);
    let default_port = if t.https { 443 } else { 80 };
    builder = builder.header(
        hyper::header::HOST,
        match (port == default_port, host.contains(':')) {
            (true, false) => host.to_string(),
            (true, true) => format!("[{host}]"),
            (false, false) => format!("{host}:{port}"),
            (false, true) => format!("[{host}]:{port}"),
        },
    );
    if let Some(keys) = plan.aws() {
        // Boxed, as it is rare and large (see `Upstreams::send`).
        return Box::pin(crate::sigv4::signed(
            keys,
            host,
            builder,
            body,
            substituter,
            bytes_in,
        ))
        .await
        .map_err(Refusal::Sigv4);
    }
    let upstream_req = if !rewrites_body {
        // Nothing to substitute: the body streams through as it is.
        let counter = bytes_in.clone();
        let body = Rewritten::new(
            body,
            substituter,
            Some(Box::new(move |n| counter.store(n, Ordering::Relaxed))),
        );
        builder.body(body.boxed())
    } else {
        // Substitution changes the body's length, and many servers take no
        // chunked request bodies: a body of declared length is read whole
        // (up to a limit), rewritten, and sent with its new length.
        if declared.is_some_and(|n| n > MAX_REWRITTEN_BODY) {
            return Err(Refusal::TooLarge);
        }
        let whole = http_body_util::Limited::new(body, MAX_REWRITTEN_BODY as usize)
            .collect()
            .await
            .map_err(Refusal::Body)?
            .to_bytes();
        bytes_in.store(whole.len() as u64, Ordering::Relaxed);
        let rewritten = Bytes::from(substituter.replace_all(&whole));
        builder = builder.header(hyper::header::CONTENT_LENGTH, rewritten.len());
        builder.body(full(rewritten))
    };
    upstream_req.map_err(Refusal::Build)
}

/// The request's target and headers with hop-by-hop headers and the
/// agent's credentials taken out and the service's put in.
fn edit_headers(
    plan: &Plan,
    headers: &mut HeaderMap,
    pq: String,
) -> Result<(String, HeaderMap), Refusal> {
    if plan.edits_headers_only() {
        // The common case: credentials out, the real one in, on the
        // request's own header map.
        let mut headers = std::mem::take(headers);
        for name in &HOP {
            headers.remove(name);
        }
        for name in plan.strips() {
            headers.remove(name.as_str());
        }
        Plan::refuse_unlisted(
            std::iter::once(pq.as_bytes()).chain(headers.values().map(|v| v.as_bytes())),
        )
        .map_err(Refusal::Injection)?;
        for (n, v) in plan.sets() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                headers.insert(n, v);
            }
        }
        return Ok((pq, headers));
    }
    let mut out = Outgoing {
        path_and_query: pq,
        headers: headers
            .iter()
            .filter(|(n, _)| !HOP.contains(n))
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
    };
    plan.apply(&mut out).map_err(Refusal::Injection)?;
    let mut headers = HeaderMap::with_capacity(out.headers.len());
    for (n, v) in &out.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(n, v);
        }
    }
    Ok((out.path_and_query, headers))
}

/// The response stage: a WebSocket joined, or the response's head scrubbed
/// and its body scrubbed as it streams; the audit record written when the
/// body ends (or the WebSocket closes).
fn respond(mut audit: Audited, answered: Answered, host: &str) -> Response<ProxyBody> {
    let Answered {
        plan,
        mut upstream,
        agent_upgrade,
        websocket,
        head_only,
        bytes_in,
        admitted,
    } = answered;
    audit.hold(admitted);
    let switching = websocket && upstream.status() == StatusCode::SWITCHING_PROTOCOLS;
    // An upgraded connection is audited when it closes.
    let audit = if switching && let Some(agent_upgrade) = agent_upgrade {
        let upstream_upgrade = hyper::upgrade::on(&mut upstream);
        let scrub = (plan.mask.fresh(), plan.meter.clone());
        splice(audit, agent_upgrade, upstream_upgrade, scrub);
        None
    } else {
        Some(audit)
    };
    let (mut parts, body) = upstream.into_parts();
    let scrub = plan.scrub.fresh();
    // Asked for none above; a body the upstream encodes anyway is decoded
    // and scrubbed, and one in an encoding the broker does not know is
    // refused rather than passed on unscrubbed.
    let bodiless = head_only
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let mut decode = None;
    if !scrub.is_empty()
        && !bodiless
        && !switching
        && let Some(encoding) = body_codings(&parts.headers)
    {
        match Decompress::for_content_encoding(&encoding, MAX_DECODED_BODY) {
            Ok(d) => decode = d,
            Err(_) => {
                let refusal = Refusal::Compressed {
                    host: host.to_owned(),
                };
                return match audit {
                    Some(audit) => refuse(audit, refusal),
                    None => refusal.problem().response(),
                };
            }
        }
        // Sent on decoded.
        parts.headers.remove(hyper::header::CONTENT_ENCODING);
    }
    plan.meter.scrubbed(scrub_head(
        &mut parts.headers,
        &scrub,
        &plan.names,
        switching,
    ));
    scrub_reason(&mut parts.extensions, &scrub);
    let on_end = audit.map(|mut audit| -> OnEnd {
        audit.record.status = parts.status.as_u16();
        Box::new(move |n| {
            audit.bytes(bytes_in.load(Ordering::Relaxed), n);
        })
    });
    let body = Rewritten::new(body, Scrub::new(decode, scrub, plan.meter.clone()), on_end);
    Response::from_parts(parts, body.boxed())
}

/// The most a compressed response body may decode to.
const MAX_DECODED_BODY: u64 = 4 << 30;

/// The largest request body rewritten for placeholders.
const MAX_REWRITTEN_BODY: u64 = 16 * 1024 * 1024;
