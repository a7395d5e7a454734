//! AWS Signature Version 4, done by the broker: the agent's own signature
//! (its `Authorization`, `X-Amz-Date`, `X-Amz-Security-Token`, a presigned
//! URL's parameters) is removed, and the request is signed with the keys
//! from the vault by the `aws-sigv4` crate, exactly as it goes upstream.
//!
//! The payload is signed the way the agent's client chose, read from its
//! `x-amz-content-sha256`: `UNSIGNED-PAYLOAD` and
//! `STREAMING-UNSIGNED-PAYLOAD-TRAILER` stream through unsigned; a declared
//! SHA-256 is signed as declared and the body streams (the upstream checks
//! the body against it); without one the body is read whole, up to
//! [`MAX_HASHED_BODY`], and its hash signed. Chunk-signed streaming
//! (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`) carries the agent's signature in
//! every chunk and is refused.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use agent_vault_core::broker::services::{AwsKeys, Scope, without_presigned_params};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Builder;
use hyper::{Request, StatusCode};
use zeroize::Zeroizing;

use agent_vault_core::broker::inject::StreamReplace;

use crate::body::Rewritten;
use crate::reply::{ProxyBody, full};

/// The largest request body the broker reads whole to hash it, when the
/// agent's client declared no hash and did not choose `UNSIGNED-PAYLOAD`.
pub(crate) const MAX_HASHED_BODY: u64 = 16 * 1024 * 1024;

const CONTENT_SHA256: &str = "x-amz-content-sha256";

/// Why a request could not be signed.
#[derive(Debug)]
pub(crate) enum SignError {
    /// Neither the service nor the host says which region and AWS service
    /// to sign for.
    NoScope {
        /// The tunnel's host.
        host: String,
    },
    /// The agent's client signs each chunk (`STREAMING-AWS4-HMAC-SHA256-…`).
    SignedChunks,
    /// An `x-amz-content-sha256` that is none of the known forms.
    UnknownPayload,
    /// A body to hash over [`MAX_HASHED_BODY`].
    TooLarge,
    /// The body to hash could not be read.
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// A key in the vault is not text.
    KeyNotText,
    /// The signer refused the request (a malformed path, say).
    Sign(String),
    /// The signed request is not a valid request.
    Build(hyper::http::Error),
}

impl SignError {
    /// The status the agent gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            SignError::SignedChunks | SignError::UnknownPayload | SignError::Body(_) => {
                StatusCode::BAD_REQUEST
            }
            SignError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            SignError::NoScope { .. }
            | SignError::KeyNotText
            | SignError::Sign(_)
            | SignError::Build(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignError::NoScope { host } => write!(
                f,
                "cannot tell which AWS region and service to sign for on {host}; an owner can name them (agent-vault service add NAME --sigv4 --region R --aws-service S)"
            ),
            SignError::SignedChunks => f.write_str(
                "the broker signs AWS requests itself and cannot re-sign a chunk-signed upload (STREAMING-AWS4-HMAC-SHA256-PAYLOAD); send x-amz-content-sha256: UNSIGNED-PAYLOAD (boto3: Config(s3={'payload_signing_enabled': False}))",
            ),
            SignError::UnknownPayload => f.write_str(
                "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER or a hex SHA-256",
            ),
            SignError::TooLarge => write!(
                f,
                "an AWS request body whose hash is signed may be at most {} MiB (the broker reads it to hash it); send larger uploads with x-amz-content-sha256: UNSIGNED-PAYLOAD",
                MAX_HASHED_BODY >> 20
            ),
            SignError::Body(e) => write!(f, "cannot read the request body: {e}"),
            SignError::KeyNotText => f.write_str(
                "the AWS keys in the vault are not text; an owner can set them again",
            ),
            SignError::Sign(e) => write!(f, "cannot sign the request: {e}"),
            SignError::Build(e) => write!(f, "cannot forward the request: {e}"),
        }
    }
}

/// How the payload is signed.
enum Payload {
    /// `UNSIGNED-PAYLOAD`.
    Unsigned,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER` (aws-chunked, checksum trailer).
    UnsignedTrailer,
    /// The hash the agent's client declared.
    Declared(String),
    /// None declared: the broker hashes the body.
    Hash,
}

impl Payload {
    fn from_header(v: Option<&HeaderValue>) -> Result<Self, SignError> {
        let Some(v) = v else {
            return Ok(Payload::Hash);
        };
        let v = v.to_str().map_err(|_| SignError::UnknownPayload)?.trim();
        match v {
            "UNSIGNED-PAYLOAD" => Ok(Payload::Unsigned),
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Ok(Payload::UnsignedTrailer),
            v if v.starts_with("STREAMING-") => Err(SignError::SignedChunks),
            v if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Payload::Declared(v.to_ascii_lowercase()))
            }
            _ => Err(SignError::UnknownPayload),
        }
    }
}

/// The request as it goes upstream, signed. `builder` holds the method,
/// the path and query, and every header as sent (`Host` included, the
/// agent's credentials already removed but for its `x-amz-content-sha256`,
/// read here to learn how it chose to sign the payload).
pub(crate) async fn signed(
    keys: &AwsKeys,
    host: &str,
    mut builder: Builder,
    body: Incoming,
    substituter: StreamReplace,
    bytes_in: &Arc<AtomicU64>,
) -> Result<Request<ProxyBody>, SignError> {
    let scope = keys.config.scope(host).ok_or_else(|| SignError::NoScope {
        host: host.to_owned(),
    })?;
    let headers = builder.headers_mut().ok_or(SignError::Sign(
        "the request was malformed before signing".into(),
    ))?;
    let payload = Payload::from_header(headers.get(CONTENT_SHA256))?;
    let sent_sha = headers.remove(CONTENT_SHA256).is_some();
    let pq = builder
        .uri_ref()
        .and_then(|u| u.path_and_query())
        .map(|pq| without_presigned_params(pq.as_str()))
        .unwrap_or_else(|| "/".into());
    builder = builder.uri(pq.as_str());
    let (body, whole) = match payload {
        Payload::Hash => {
            let declared = builder
                .headers_ref()
                .and_then(|h| h.get(hyper::header::CONTENT_LENGTH))
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_HASHED_BODY) {
                return Err(SignError::TooLarge);
            }
            let whole = http_body_util::Limited::new(body, MAX_HASHED_BODY as usize)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        SignError::TooLarge
                    } else {
                        SignError::Body(e)
                    }
                })?
                .to_bytes();
            bytes_in.store(whole.len() as u64, Ordering::Relaxed);
            if let Some(h) = builder.headers_mut() {
                h.remove(hyper::header::TRANSFER_ENCODING);
                // A GET with no body is sent with none, as the agent sent it.
                if !whole.is_empty() || h.contains_key(hyper::header::CONTENT_LENGTH) {
                    h.insert(
                        hyper::header::CONTENT_LENGTH,
                        HeaderValue::from(whole.len()),
                    );
                }
            }
            (full(whole.clone()), Some(whole))
        }
        _ => {
            let counter = bytes_in.clone();
            let body = Rewritten::new(
                body,
                substituter,
                Some(Box::new(move |n| counter.store(n, Ordering::Relaxed))),
            );
            (body.boxed(), None)
        }
    };
    let signable = match (&payload, &whole) {
        (Payload::Unsigned, _) => SignableBody::UnsignedPayload,
        (Payload::UnsignedTrailer, _) => SignableBody::StreamingUnsignedPayloadTrailer,
        (Payload::Declared(h), _) => SignableBody::Precomputed(h.clone()),
        (Payload::Hash, Some(b)) => SignableBody::Bytes(b),
        (Payload::Hash, None) => SignableBody::empty(),
    };
    let signature = signature(keys, &scope, host, &builder, &pq, signable, sent_sha)?;
    for (name, value) in signature {
        builder = builder.header(name, value);
    }
    builder.body(body).map_err(SignError::Build)
}

/// The headers that carry the signature, for the request as `builder`
/// holds it.
fn signature(
    keys: &AwsKeys,
    scope: &Scope,
    host: &str,
    builder: &Builder,
    pq: &str,
    body: SignableBody<'_>,
    sent_sha: bool,
) -> Result<Vec<(HeaderName, HeaderValue)>, SignError> {
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(|s| Zeroizing::new(s.to_owned()))
            .map_err(|_| SignError::KeyNotText)
    };
    let (id, secret) = (text(keys.access_key_id())?, text(keys.secret_access_key())?);
    let token = keys.session_token().map(text).transpose()?;
    let identity = Credentials::new(
        id.as_str(),
        secret.as_str(),
        token.as_ref().map(|t| t.to_string()),
        None,
        "agent-vault",
    )
    .into();
    let mut settings = SigningSettings::default();
    if let Some(excluded) = &mut settings.excluded_headers {
        // As botocore: an `Expect: 100-continue` is not signed.
        excluded.push(Cow::Borrowed("expect"));
    }
    if scope.is_s3() || sent_sha {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    if scope.is_s3() {
        // S3 signs the path as sent: no second encoding, no normalisation.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&scope.region)
        .name(&scope.service)
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| SignError::Sign(e.to_string()))?
        .into();
    let headers = builder.headers_ref().ok_or(SignError::Sign(
        "the request was malformed before signing".into(),
    ))?;
    let method = builder.method_ref().map(|m| m.as_str()).unwrap_or("GET");
    // The URI only gives the signer the path and query; the host it signs
    // is the `Host` header the broker wrote.
    let uri = format!("https://{}{pq}", host_for_uri(host));
    let request = SignableRequest::new(
        method,
        uri,
        headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))),
        body,
    )
    .map_err(|e| SignError::Sign(e.to_string()))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| SignError::Sign(e.to_string()))?
        .into_parts();
    instructions
        .headers()
        .map(|(n, v)| {
            Ok((
                HeaderName::from_bytes(n.as_bytes()).map_err(|e| SignError::Sign(e.to_string()))?,
                HeaderValue::from_str(v).map_err(|e| SignError::Sign(e.to_string()))?,
            ))
        })
        .collect()
}

/// A host as it appears in a URI (IPv6 in brackets).
fn host_for_uri(host: &str) -> Cow<'_, str> {
    if host.contains(':') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}
