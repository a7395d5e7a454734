//! Bodies that pass through a replacer chunk by chunk (a [`StreamReplace`]
//! filling in placeholders, or a [`Scrub`] decoding and scrubbing a
//! response), so streams (server-sent events) flow without buffering, and
//! that count their bytes and report when they end. Trailers pass through
//! the same replacer as the data (a value in a trailer is scrubbed like
//! one in a header).

use std::pin::Pin;
use std::task::{Context, Poll};

use agent_vault_core::broker::inject::StreamReplace;
use agent_vault_core::broker::scrub::{Decompress, DecompressError, Scrubber};
use bytes::Bytes;
use hyper::HeaderMap;
use hyper::body::{Body, Frame};
use hyper::header::HeaderValue;

use crate::metrics::ServiceMeter;

/// Called once when the body ends (or is dropped), with the bytes it carried.
pub type OnEnd = Box<dyn FnOnce(u64) + Send + Sync>;

/// What rewrites a body's chunks and its trailers' values.
pub trait Replace {
    /// Feeds a chunk; returns what may be passed on now.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecompressError>;
    /// Ends the body; returns the rest.
    fn finish(&mut self) -> Result<Vec<u8>, DecompressError>;
    /// Feeds the body's last chunk and ends it: `push`, then `finish`.
    fn push_last(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecompressError> {
        let mut out = self.push(chunk)?;
        out.extend(self.finish()?);
        Ok(out)
    }
    /// Whether a header (trailer) value needs rewriting.
    fn finds(&self, value: &[u8]) -> bool;
    /// A header (trailer) value rewritten.
    fn replace_all(&self, value: &[u8]) -> Vec<u8>;
}

impl Replace for StreamReplace {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecompressError> {
        Ok(StreamReplace::push(self, chunk))
    }
    fn finish(&mut self) -> Result<Vec<u8>, DecompressError> {
        Ok(StreamReplace::finish(self))
    }
    fn finds(&self, value: &[u8]) -> bool {
        StreamReplace::finds(self, value)
    }
    fn replace_all(&self, value: &[u8]) -> Vec<u8> {
        StreamReplace::replace_all(self, value)
    }
}

/// A response body's way to the agent: decoded from its
/// `Content-Encoding` (if it has one), then scrubbed; the values it
/// replaced are counted when it is dropped.
pub struct Scrub {
    /// The body's decoder, if it is encoded.
    pub decode: Option<Decompress>,
    /// The scrubbing engine.
    pub scrub: Scrubber,
    /// Where its replacements are counted.
    pub meter: ServiceMeter,
}

impl Scrub {
    /// Decodes with `decode`, scrubs with `scrub`, counts in `meter`.
    pub fn new(decode: Option<Decompress>, scrub: Scrubber, meter: ServiceMeter) -> Self {
        Scrub {
            decode,
            scrub,
            meter,
        }
    }
}

impl Drop for Scrub {
    fn drop(&mut self) {
        self.meter.scrubbed(self.scrub.redactions());
    }
}

impl Replace for Scrub {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecompressError> {
        match &mut self.decode {
            Some(d) => Ok(self.scrub.push(&d.push(chunk)?)),
            None => Ok(self.scrub.push(chunk)),
        }
    }
    fn finish(&mut self) -> Result<Vec<u8>, DecompressError> {
        let mut out = match &mut self.decode {
            Some(d) => self.scrub.push(&d.finish()?),
            None => Vec::new(),
        };
        out.extend(self.scrub.finish());
        Ok(out)
    }
    fn push_last(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecompressError> {
        match &mut self.decode {
            Some(d) => {
                let mut out = self.scrub.push(&d.push(chunk)?);
                out.extend(self.scrub.push_last(&d.finish()?));
                Ok(out)
            }
            // A body in one chunk is scrubbed in one pass.
            None => Ok(self.scrub.push_last(chunk)),
        }
    }
    fn finds(&self, value: &[u8]) -> bool {
        self.scrub.finds(value)
    }
    fn replace_all(&self, value: &[u8]) -> Vec<u8> {
        self.scrub.replace_all(value)
    }
}

/// A body rewritten on the fly.
pub struct Rewritten<B, R = StreamReplace> {
    inner: B,
    replace: R,
    finished: bool,
    bytes: u64,
    on_end: Option<OnEnd>,
    /// Trailers that arrived while held-back data was still to be sent.
    trailers: Option<HeaderMap>,
}

impl<B, R: Replace> Rewritten<B, R> {
    /// Wraps `inner`.
    pub fn new(inner: B, replace: R, on_end: Option<OnEnd>) -> Self {
        Rewritten {
            inner,
            replace,
            finished: false,
            bytes: 0,
            on_end,
            trailers: None,
        }
    }

    /// Each trailer value through the replacer, as a header's would be.
    fn rewrite_trailers(&self, mut trailers: HeaderMap) -> HeaderMap {
        for v in trailers.values_mut() {
            if self.replace.finds(v.as_bytes()) {
                *v = HeaderValue::from_bytes(&self.replace.replace_all(v.as_bytes()))
                    .unwrap_or(HeaderValue::from_static("[REDACTED]"));
            }
        }
        trailers
    }
}

impl<B, R> Rewritten<B, R> {
    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes);
        }
    }
}

impl<B, R> Drop for Rewritten<B, R> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<B, R> Body for Rewritten<B, R>
where
    R: Replace + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(trailers) = this.trailers.take() {
            this.finished = true;
            this.end();
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        // The last chunk (a body of known length, all
                        // here): the body ends with it.
                        let last = this.inner.is_end_stream();
                        let pushed = if last {
                            this.replace.push_last(&data)
                        } else {
                            this.replace.push(&data)
                        };
                        let out = match pushed {
                            Ok(out) => out,
                            Err(e) => {
                                this.finished = true;
                                this.end();
                                return Poll::Ready(Some(Err(e.into())));
                            }
                        };
                        this.bytes += out.len() as u64;
                        if last {
                            this.finished = true;
                            this.end();
                            if out.is_empty() {
                                return Poll::Ready(None);
                            }
                        } else if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    // Trailers end the body: what was held back goes
                    // first, then the trailers, rewritten.
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else {
                            continue;
                        };
                        let trailers = this.rewrite_trailers(trailers);
                        let rest = match this.replace.finish() {
                            Ok(rest) => rest,
                            Err(e) => {
                                this.finished = true;
                                this.end();
                                return Poll::Ready(Some(Err(e.into())));
                            }
                        };
                        this.bytes += rest.len() as u64;
                        if rest.is_empty() {
                            this.finished = true;
                            this.end();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        this.trailers = Some(trailers);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                    }
                },
                Poll::Ready(None) => {
                    this.finished = true;
                    let rest = match this.replace.finish() {
                        Ok(rest) => rest,
                        Err(e) => {
                            this.end();
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    };
                    this.bytes += rest.len() as u64;
                    this.end();
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.trailers.is_none()
    }
}

/// A body that holds something (a guard) until it has been sent or dropped.
pub struct Held<B, G> {
    inner: B,
    guard: Option<G>,
}

impl<B, G> Held<B, G> {
    /// Wraps `inner`, keeping `guard` until the body ends.
    pub fn new(inner: B, guard: G) -> Self {
        Held {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B, G> Body for Held<B, G>
where
    B: Body + Unpin,
    G: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
