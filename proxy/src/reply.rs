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

/// A body of these parts, sent one after another as they are (never
/// copied into one buffer), with their total length as Content-Length.
pub(crate) fn parts(parts: impl IntoIterator<Item = Bytes>) -> ProxyBody {
    let mut parts: Vec<Bytes> = parts.into_iter().filter(|b| !b.is_empty()).collect();
    parts.reverse();
    Parts { parts }
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { match e {} })
        .boxed()
}

/// See [`parts`]: the parts still to send, last first.
struct Parts {
    parts: Vec<Bytes>,
}

impl hyper::body::Body for Parts {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let next = self.parts.pop();
        std::task::Poll::Ready(next.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.parts.iter().map(|b| b.len() as u64).sum())
    }
}

/// No body.
pub(crate) fn empty() -> ProxyBody {
    Empty::new()
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body;

    #[tokio::test]
    async fn a_body_of_parts_is_their_bytes_in_order_with_its_exact_length() {
        let body = parts([
            Bytes::from_static(b"{\"a\":["),
            Bytes::new(),
            Bytes::from(b"1,2".to_vec()),
            Bytes::from_static(b"]}"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(11));
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"{\"a\":[1,2]}");
        assert_eq!(parts([]).size_hint().exact(), Some(0));
        assert!(parts([Bytes::new()]).is_end_stream());
    }
}
