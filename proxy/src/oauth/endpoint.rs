//! The token endpoint (RFC 6749 §3.2): a refresh (§6) or an authorization
//! code exchanged with its PKCE verifier (§4.1.3, RFC 7636), sent through
//! the broker's own upstream side (the address checked as an upstream's,
//! TLS verified). The client authenticates with `client_secret_post`,
//! which every preset provider accepts. Errors name the endpoint's host
//! and the provider's error code, never a token or the secret.

use std::path::Path;
use std::time::Duration;

use agent_vault_core::broker::oauth::{Client, check_endpoint};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Request, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::reply::full;
use crate::upstream::{SetupError, Upstreams};

/// `application/x-www-form-urlencoded`: everything but the unreserved set.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The most a token response may hold.
const MAX_RESPONSE: usize = 64 * 1024;

/// An access token's lifetime when the provider gives none (seconds).
const DEFAULT_LIFETIME: i64 = 3600;

/// The longest lifetime taken from a provider (a year, in seconds).
const MAX_LIFETIME: i64 = 366 * 24 * 3600;

/// How long the provider has to answer.
const ANSWER: Duration = Duration::from_secs(20);

/// What the token endpoint granted. No `Debug`; zeroized on drop.
pub struct Granted {
    /// The new access token.
    pub access_token: String,
    /// A new refresh token, if the provider rotated it.
    pub refresh_token: Option<String>,
    /// When the access token expires (Unix seconds): as the provider said,
    /// or an hour from now when it did not.
    pub expires_at: Option<i64>,
}

impl Drop for Granted {
    fn drop(&mut self) {
        self.access_token.zeroize();
        if let Some(r) = &mut self.refresh_token {
            r.zeroize();
        }
    }
}

/// Why the token endpoint gave no token.
#[derive(Debug)]
#[non_exhaustive]
pub enum OAuthError {
    /// The token URL cannot be used.
    Endpoint(String),
    /// The endpoint could not be reached.
    Unreachable {
        /// Its host.
        host: String,
        /// Why (names no value).
        why: String,
    },
    /// The provider refused: its HTTP status and OAuth error code.
    Refused {
        /// Its host.
        host: String,
        /// The HTTP status.
        status: u16,
        /// The `error` field (`invalid_grant`, …), or `-`.
        error: String,
    },
    /// The answer is not a token response.
    Malformed {
        /// Its host.
        host: String,
    },
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OAuthError::Endpoint(why) => f.write_str(why),
            OAuthError::Unreachable { host, why } => {
                write!(
                    f,
                    "the token endpoint at {host} could not be reached: {why}"
                )
            }
            OAuthError::Refused {
                host,
                status,
                error,
            } => write!(
                f,
                "the token endpoint at {host} refused (HTTP {status}, error {error})"
            ),
            OAuthError::Malformed { host } => write!(
                f,
                "the token endpoint at {host} answered something that is not a token response"
            ),
        }
    }
}

impl std::error::Error for OAuthError {}

/// The token response's fields we read (RFC 6749 §5.1, §5.2).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
}

impl Drop for TokenResponse {
    fn drop(&mut self) {
        if let Some(a) = &mut self.access_token {
            a.zeroize();
        }
        if let Some(r) = &mut self.refresh_token {
            r.zeroize();
        }
    }
}

/// A client of token endpoints.
pub struct TokenClient {
    upstreams: Upstreams,
    allow_private: bool,
}

impl TokenClient {
    /// Trusts the system's roots and those in `extra_ca`; endpoints on
    /// private addresses only if `allow_private`.
    pub fn new(extra_ca: Option<&Path>, allow_private: bool) -> Result<Self, SetupError> {
        Ok(TokenClient {
            upstreams: Upstreams::new(extra_ca)?,
            allow_private,
        })
    }

    /// Uses a refresh token (RFC 6749 §6). No `scope`: the grant keeps the
    /// scopes it was given (asking for them again can only be refused).
    pub async fn refresh(
        &self,
        client: &Client,
        refresh_token: &str,
    ) -> Result<Granted, OAuthError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        self.post(client, &form).await
    }

    /// Exchanges an authorization code with its PKCE verifier.
    pub async fn exchange_code(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Granted, OAuthError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        self.post(client, &form).await
    }

    async fn post(&self, client: &Client, fields: &[(&str, &str)]) -> Result<Granted, OAuthError> {
        check_endpoint("token URL", &client.token_url)
            .map_err(|e| OAuthError::Endpoint(e.to_string()))?;
        let uri: Uri = client
            .token_url
            .parse()
            .map_err(|_| OAuthError::Endpoint("the token URL does not parse".into()))?;
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let unreachable = |why: String| OAuthError::Unreachable {
            host: host.clone(),
            why,
        };
        let addr = crate::net::resolve(&host, port, self.allow_private)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut body = Zeroizing::new(String::new());
        let all = [
            ("client_id", client.client_id.as_str()),
            ("client_secret", client.client_secret.as_str()),
        ];
        for (k, v) in fields.iter().chain(all.iter()) {
            if k == &"client_secret" && v.is_empty() {
                continue;
            }
            if !body.is_empty() {
                body.push('&');
            }
            body.push_str(k);
            body.push('=');
            body.extend(utf8_percent_encode(v, FORM));
        }
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = Request::post(pq)
            .header(hyper::header::HOST, authority)
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "agent-vault")
            .body(full(Bytes::from(body.as_bytes().to_vec())))
            .map_err(|e| unreachable(e.to_string()))?;
        let send = self.upstreams.send(&host, port, addr, true, false, req);
        let resp = match tokio::time::timeout(ANSWER, send).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("no answer in time".into())),
        };
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|_| OAuthError::Malformed { host: host.clone() })?
            .to_bytes();
        let bytes = Zeroizing::new(bytes.to_vec());
        let parsed: Option<TokenResponse> = serde_json::from_slice(&bytes).ok();
        // Some providers (GitHub, Slack) refuse with 200 and an `error`.
        let refused = parsed.as_ref().is_some_and(|p| p.error.is_some());
        if !status.is_success() || refused {
            let error = parsed
                .as_ref()
                .and_then(|p| p.error.as_deref())
                .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                .unwrap_or("-")
                .to_owned();
            return Err(OAuthError::Refused {
                host,
                status: status.as_u16(),
                error,
            });
        }
        let Some(mut p) = parsed else {
            return Err(OAuthError::Malformed { host });
        };
        let Some(access_token) = p.access_token.take().filter(|a| !a.is_empty()) else {
            return Err(OAuthError::Malformed { host });
        };
        // A number, or (some providers) a number in a string.
        // Without one, the token is taken to last DEFAULT_LIFETIME (an
        // unknown expiry would be due at once: a refresh per request). A
        // lifetime from the network is bounded before any arithmetic.
        let expires_in = match &p.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(DEFAULT_LIFETIME)
        .clamp(0, MAX_LIFETIME);
        Ok(Granted {
            access_token,
            refresh_token: p.refresh_token.take().filter(|r| !r.is_empty()),
            expires_at: Some(
                jiff::Timestamp::now()
                    .as_second()
                    .saturating_add(expires_in),
            ),
        })
    }
}
