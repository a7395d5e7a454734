//! What the broker answers with: the body type of every response. Its own
//! answers (refusals, failures) are problem+json: see [`crate::problem`].

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// The body of every response the broker sends, and of every request it
/// sends upstream.
pub(crate) type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A body of these bytes.
pub(crate) fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        .boxed()
}

/// No body.
pub(crate) fn empty() -> ProxyBody {
    Empty::new()
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        .boxed()
}
