//! Bodies that pass through a [`StreamReplace`] chunk by chunk, so streams
//! (server-sent events) flow without buffering, and that count their bytes
//! and report when they end.

use std::pin::Pin;
use std::task::{Context, Poll};

use agent_vault_core::inject::StreamReplace;
use bytes::Bytes;
use hyper::body::{Body, Frame};

/// Called once when the body ends (or is dropped), with the bytes it carried.
pub type OnEnd = Box<dyn FnOnce(u64) + Send + Sync>;

/// A body rewritten on the fly.
pub struct Rewritten<B> {
    inner: B,
    replace: StreamReplace,
    finished: bool,
    bytes: u64,
    on_end: Option<OnEnd>,
}

impl<B> Rewritten<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, replace: StreamReplace, on_end: Option<OnEnd>) -> Self {
        Rewritten {
            inner,
            replace,
            finished: false,
            bytes: 0,
            on_end,
        }
    }

    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes);
        }
    }
}

impl<B> Drop for Rewritten<B> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<B> Body for Rewritten<B>
where
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
        if this.finished {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.replace.push(&data);
                        this.bytes += out.len() as u64;
                        if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    // Trailers pass as they are.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) => {
                    this.finished = true;
                    let rest = this.replace.finish();
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
}
