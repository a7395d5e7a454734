//! What the broker says when it answers a request itself: an
//! `application/problem+json` body (RFC 9457) with a stable `type` per
//! reason, a `title`, the `status` and a `detail` that says what to do,
//! and an `agent-vault-error: <reason>` header, so an agent and its client
//! tell a broker refusal from an upstream's answer. Every such answer is
//! one audit record with its reason. Names, never values or tokens.

use std::sync::Arc;

use agent_vault_core::broker::decide;
use agent_vault_core::broker::token::{Claims, TokenError};
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

use crate::audit::{AuditLog, Record};
use crate::reply::{ProxyBody, full};

/// Every problem type is this followed by the reason's name, and the
/// header that carries the name: core's, which clients (the MCP server)
/// read too.
pub use agent_vault_core::broker::decide::{ERROR_HEADER, PROBLEM_TYPE_BASE as TYPE_BASE};

/// Why the broker answered a request itself. [`Reason::ALL`] is the list
/// README.md documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// 407: no `Proxy-Authorization`.
    TokenMissing,
    /// 407: a `Proxy-Authorization` that holds no token.
    TokenMalformed,
    /// 407: a token not issued for this vault.
    TokenInvalid,
    /// 407: the token has expired.
    TokenExpired,
    /// 407: the token was revoked.
    TokenRevoked,
    /// 407: the `run --isolate` whose listener this is has ended.
    SessionEnded,
    /// 400: not a request the broker can read.
    BadRequest,
    /// 403: no service the token may use names the host.
    HostNotCovered,
    /// 403: no service allows plain http to the host.
    PlainHttpNotAllowed,
    /// 403: the host resolves to a private, loopback or link-local address.
    AddressRefused,
    /// 403: the host does not resolve.
    HostUnresolved,
    /// 421/400: `Host` or `:authority` is not the tunnel's host.
    AuthorityMismatch,
    /// 400: an ambiguous path (`%2e%2e`, `%2f`).
    PathAmbiguous,
    /// 403: the services naming the host allow other methods.
    MethodNotAllowed,
    /// 403: the services naming the host cover other paths.
    PathNotAllowed,
    /// 403: the agent may not use a group the service injects from.
    NotGranted,
    /// 403: a secret the service injects cannot be read (missing, unsigned).
    SecretUnavailable,
    /// 403: a placeholder or credential the service does not allow.
    PlaceholderRefused,
    /// 413: a body with placeholders is too large.
    BodyTooLarge,
    /// 429: the agent reached a rate limit of the service (requests per
    /// second, or in flight).
    RateLimited,
    /// 502: the upstream could not be reached.
    UpstreamUnreachable,
    /// 502: TLS with the upstream failed.
    UpstreamTls,
    /// 502: the upstream failed (HTTP).
    UpstreamFailed,
    /// 502: the upstream's body is in an encoding the broker cannot scrub.
    UpstreamEncoding,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 502: the broker could not sign the request (SigV4: no region or
    /// service for the host, a key that is not text).
    SigningFailed,
    /// 502: an OAuth credential the service injects could not be
    /// refreshed (the provider refused, or could not be reached).
    OAuthRefreshFailed,
    /// 503: the broker has not been up to date with the vault's remote for
    /// longer than `--max-stale` (it fails closed).
    VaultStale,
}

impl Reason {
    /// Every reason.
    pub const ALL: &[Reason] = &[
        Reason::TokenMissing,
        Reason::TokenMalformed,
        Reason::TokenInvalid,
        Reason::TokenExpired,
        Reason::TokenRevoked,
        Reason::SessionEnded,
        Reason::BadRequest,
        Reason::HostNotCovered,
        Reason::PlainHttpNotAllowed,
        Reason::AddressRefused,
        Reason::HostUnresolved,
        Reason::AuthorityMismatch,
        Reason::PathAmbiguous,
        Reason::MethodNotAllowed,
        Reason::PathNotAllowed,
        Reason::NotGranted,
        Reason::SecretUnavailable,
        Reason::PlaceholderRefused,
        Reason::BodyTooLarge,
        Reason::RateLimited,
        Reason::UpstreamUnreachable,
        Reason::UpstreamTls,
        Reason::UpstreamFailed,
        Reason::UpstreamEncoding,
        Reason::UpstreamTimeout,
        Reason::SigningFailed,
        Reason::OAuthRefreshFailed,
        Reason::VaultStale,
    ];

    /// The reason's stable name: the end of its type, the header's value,
    /// the audit record's `reason`.
    pub fn name(self) -> &'static str {
        self.info().0
    }

    /// The problem's title: the same for every occurrence of the reason.
    pub fn title(self) -> &'static str {
        self.info().1
    }

    fn info(self) -> (&'static str, &'static str) {
        match self {
            Reason::TokenMissing => ("token-missing", "No broker token"),
            Reason::TokenMalformed => ("token-malformed", "Malformed broker token"),
            Reason::TokenInvalid => ("token-invalid", "Broker token not valid for this vault"),
            Reason::TokenExpired => ("token-expired", "Broker token expired"),
            Reason::TokenRevoked => ("token-revoked", "Broker token revoked"),
            Reason::SessionEnded => ("session-ended", "The isolated run has ended"),
            Reason::BadRequest => ("bad-request", "Request the broker cannot forward"),
            Reason::HostNotCovered => ("host-not-covered", "No service covers this host"),
            Reason::PlainHttpNotAllowed => (
                "plain-http-not-allowed",
                "Plain http is not allowed to this host",
            ),
            Reason::AddressRefused => ("address-refused", "Private upstream address refused"),
            Reason::HostUnresolved => ("host-unresolved", "Host does not resolve"),
            Reason::AuthorityMismatch => {
                ("authority-mismatch", "Host differs from the tunnel's host")
            }
            Reason::PathAmbiguous => ("path-ambiguous", "Ambiguous request path"),
            Reason::MethodNotAllowed => ("method-not-allowed", "Method not allowed by the service"),
            Reason::PathNotAllowed => ("path-not-allowed", "Path not covered by the service"),
            Reason::NotGranted => ("not-granted", "Agent may not use the service's secrets"),
            Reason::SecretUnavailable => {
                ("secret-unavailable", "The service's secret is unavailable")
            }
            Reason::PlaceholderRefused => {
                ("placeholder-refused", "Placeholder or credential refused")
            }
            Reason::BodyTooLarge => ("body-too-large", "Request body too large"),
            Reason::RateLimited => ("rate-limited", "Rate limit of the service reached"),
            Reason::UpstreamUnreachable => ("upstream-unreachable", "Upstream unreachable"),
            Reason::UpstreamTls => ("upstream-tls", "TLS with the upstream failed"),
            Reason::UpstreamFailed => ("upstream-failed", "Upstream failed"),
            Reason::UpstreamEncoding => (
                "upstream-encoding",
                "Upstream body in an encoding the broker cannot scrub",
            ),
            Reason::UpstreamTimeout => ("upstream-timeout", "Upstream did not answer in time"),
            Reason::SigningFailed => ("signing-failed", "The broker could not sign the request"),
            Reason::OAuthRefreshFailed => (
                "oauth-refresh-failed",
                "An OAuth credential could not be refreshed",
            ),
            Reason::VaultStale => (
                "vault-stale",
                "The broker is not up to date with the vault's remote",
            ),
        }
    }

    /// The problem type: [`TYPE_BASE`] and the name.
    pub fn type_uri(self) -> String {
        format!("{TYPE_BASE}{}", self.name())
    }

    /// The reason of a refusal core's decision made (what the broker
    /// answers, and `agent-vault explain` says).
    pub fn of(r: &decide::Refusal) -> Reason {
        match r {
            decide::Refusal::PlainHttp { .. } => Reason::PlainHttpNotAllowed,
            decide::Refusal::PathAmbiguous(_) => Reason::PathAmbiguous,
            decide::Refusal::MethodNotAllowed { .. } => Reason::MethodNotAllowed,
            decide::Refusal::PathNotAllowed { .. } => Reason::PathNotAllowed,
            decide::Refusal::NotGranted { .. } => Reason::NotGranted,
            _ => Reason::HostNotCovered,
        }
    }

    /// The reason a token was refused.
    pub(crate) fn of_token(e: TokenError) -> Reason {
        match e {
            TokenError::Malformed => Reason::TokenMalformed,
            TokenError::Expired => Reason::TokenExpired,
            TokenError::Revoked => Reason::TokenRevoked,
            // The detail names which check failed.
            TokenError::BadSignature
            | TokenError::UnknownAgent
            | TokenError::NoAgentKey
            | TokenError::TooLong
            | TokenError::NotYetValid
            | TokenError::BeyondGrants => Reason::TokenInvalid,
        }
    }

    /// A reason for a bare status, for an answer made without one.
    fn of_status(status: StatusCode) -> Reason {
        match status.as_u16() {
            407 => Reason::TokenInvalid,
            403 => Reason::HostNotCovered,
            413 => Reason::BodyTooLarge,
            429 => Reason::RateLimited,
            502 => Reason::UpstreamFailed,
            504 => Reason::UpstreamTimeout,
            _ => Reason::BadRequest,
        }
    }
}

/// The status of a refusal core's decision made: 400 for an ambiguous
/// path, else 403.
pub fn route_status(r: &decide::Refusal) -> StatusCode {
    match r {
        decide::Refusal::PathAmbiguous(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    }
}

/// One answer of the broker's own.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) reason: Reason,
    /// One line: what happened and what to do. Names, never values.
    pub(crate) detail: String,
    /// Seconds before trying again (`Retry-After`), for a 429.
    retry_after: Option<u64>,
}

/// The body, as RFC 9457 names its members.
#[derive(serde::Serialize)]
struct Body<'a> {
    r#type: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    /// A problem with this status, reason and detail.
    pub(crate) fn new(status: StatusCode, reason: Reason, detail: impl Into<String>) -> Self {
        Problem {
            status,
            reason,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 429 `rate-limited`, its answer with `Retry-After: SECONDS`.
    pub(crate) fn rate_limited(detail: String, retry_after: u64) -> Self {
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, Reason::RateLimited, detail);
        p.retry_after = Some(retry_after);
        p
    }

    /// A problem for a bare status and message (the reason guessed from
    /// the status).
    pub(crate) fn of_status(status: StatusCode, msg: &str) -> Self {
        Problem::new(status, Reason::of_status(status), msg)
    }

    /// The problem+json body.
    fn body(&self) -> Bytes {
        let body = Body {
            r#type: self.reason.type_uri(),
            title: self.reason.title(),
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let mut json = serde_json::to_vec(&body).unwrap_or_default();
        json.push(b'\n');
        Bytes::from(json)
    }

    /// The answer: status, `agent-vault-error`, problem+json body (and a
    /// `Proxy-Authenticate` challenge with a 407).
    pub(crate) fn response(&self) -> Response<ProxyBody> {
        let mut r = Response::new(full(self.body()));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.reason.name()));
        if let Some(secs) = self.retry_after {
            h.insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            h.insert(
                hyper::header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"agent-vault\""),
            );
        }
        r
    }

    /// The answer to a refused `CONNECT`: as [`Problem::response`], with
    /// the detail as the reason phrase too, since many clients drop the
    /// body of a failed `CONNECT` but show its status line (Python's
    /// "Tunnel connection failed: 403 …").
    pub(crate) fn connect_response(&self) -> Response<ProxyBody> {
        let mut r = self.response();
        let phrase: String = format!("{} ({ERROR_HEADER}: {})", self.detail, self.reason.name())
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .take(400)
            .collect();
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(Bytes::from(phrase)) {
            r.extensions_mut().insert(p);
        }
        r
    }
}

/// The answer to a request refused before it reached a tunnel (its token,
/// its destination), audited with what the request named. A refused
/// `CONNECT` carries the detail in its status line too.
pub(crate) fn refuse_early(
    b: &crate::broker::Broker,
    req: &hyper::Request<hyper::body::Incoming>,
    claims: Option<&Claims>,
    problem: Problem,
) -> Response<ProxyBody> {
    let connect = req.method() == hyper::Method::CONNECT;
    let uri = req.uri();
    let host = uri
        .host()
        .map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let default_port = if connect { 443 } else { 80 };
    let port = uri.host().map(|_| uri.port_u16().unwrap_or(default_port));
    let path = if connect { "" } else { uri.path() };
    let attempt = Attempt {
        claims,
        method: req.method().as_str(),
        host: &host,
        port,
        path,
    };
    audit_refusal(&b.audit, &attempt, &problem);
    if connect {
        problem.connect_response()
    } else {
        problem.response()
    }
}

/// What is known of a request the broker refused before any service
/// matched (at `CONNECT`, or an absolute-form `http://` request).
pub(crate) struct Attempt<'a> {
    /// The token's claims, when it verified.
    pub(crate) claims: Option<&'a Claims>,
    /// The method (`CONNECT` for a tunnel).
    pub(crate) method: &'a str,
    /// The host, when the request named one.
    pub(crate) host: &'a str,
    /// The port, when the request named one.
    pub(crate) port: Option<u16>,
    /// The path without the query (empty for a tunnel).
    pub(crate) path: &'a str,
}

/// Writes the audit record of a request refused before it reached a
/// tunnel (one write of one line, after the decision: no lock of the
/// broker's is held).
pub(crate) fn audit_refusal(log: &Arc<AuditLog>, attempt: &Attempt<'_>, problem: &Problem) {
    if !log.enabled() {
        return;
    }
    log.write(&Record {
        time: jiff::Timestamp::now(),
        agent: attempt.claims.map(|c| c.agent.clone()).unwrap_or_default(),
        token_id: attempt.claims.map(|c| c.id.clone()).unwrap_or_default(),
        service: String::new(),
        method: attempt.method.to_owned(),
        host: attempt.host.to_owned(),
        path: attempt.path.to_owned(),
        status: problem.status.as_u16(),
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0,
        secrets: Vec::new(),
        port: attempt.port,
        reason: Some(problem.reason.name().to_owned()),
        tunnel: false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_documented() {
        let readme = include_str!("../../README.md");
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.name()), "{} twice", r.name());
            assert!(
                readme.contains(&format!("`{}`", r.name())),
                "README.md does not list {}",
                r.name()
            );
        }
    }

    #[test]
    fn core_and_broker_name_a_refusal_alike() {
        use agent_vault_core::broker::services::PathRefusal;
        let all = [
            decide::Refusal::HostNotCovered {
                host: "h".into(),
                outside_token: vec![],
            },
            decide::Refusal::PlainHttp {
                host: "h:80".into(),
                services: vec!["s".into()],
            },
            decide::Refusal::PathAmbiguous(PathRefusal::EncodedDot),
            decide::Refusal::MethodNotAllowed {
                method: "PUT".into(),
                host: "h".into(),
                allowed: vec![],
            },
            decide::Refusal::PathNotAllowed {
                method: "GET".into(),
                path: "/".into(),
                host: "h".into(),
                allowed: vec![],
            },
            decide::Refusal::NotGranted {
                agent: "a".into(),
                service: "s".into(),
                group: "g".into(),
            },
        ];
        for r in &all {
            assert_eq!(Reason::of(r).name(), r.reason());
        }
        assert_eq!(route_status(&all[2]), StatusCode::BAD_REQUEST);
        assert_eq!(route_status(&all[0]), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn the_body_is_problem_json() {
        use http_body_util::BodyExt;
        let p = Problem::new(
            StatusCode::FORBIDDEN,
            Reason::HostNotCovered,
            "no service covers \"x\"\u{e9}",
        );
        let r = p.connect_response();
        assert_eq!(r.headers()[ERROR_HEADER], "host-not-covered");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let phrase = r.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert!(
            phrase
                .as_bytes()
                .ends_with(b"(agent-vault-error: host-not-covered)")
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "urn:agent-vault:problem:host-not-covered");
        assert_eq!(v["status"], 403);
        assert_eq!(v["title"], "No service covers this host");
        assert_eq!(v["detail"], "no service covers \"x\"\u{e9}");
    }
}
