//! The admin listener (`proxy --admin HOST:PORT`): plain HTTP, apart from
//! the proxy's listener, for a load balancer and a Prometheus server.
//! `GET /healthz` says whether the broker can serve ([`Health`]), and
//! `GET /metrics` is [`crate::metrics::Metrics`] in the Prometheus text
//! format; any other path is 404 and any other method 405. It holds no
//! token and shows no value: names and counts only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::broker::Broker;
use crate::error::ProxyError;
pub use crate::health::Health;
use crate::limits::HEADER_TIMEOUT;

/// Binds the admin listener at `addr` (port 0: any free one); returns it
/// and the address it is bound to.
pub fn bind(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), ProxyError> {
    let listen = |source| ProxyError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let bound = listener.local_addr().map_err(listen)?;
    Ok((listener, bound))
}

/// Serves the admin endpoints on `listener` from a thread of their own
/// (one small runtime, apart from the proxy's), for as long as the process
/// lives.
pub fn spawn(broker: Arc<Broker>, listener: std::net::TcpListener) -> Result<(), ProxyError> {
    // Every reason at 0 from the start.
    broker
        .metrics()
        .reasons(crate::problem::Reason::ALL.iter().map(|r| r.name()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    std::thread::Builder::new()
        .name("broker-admin".into())
        .spawn(move || rt.block_on(serve(broker, listener)))
        .map_err(ProxyError::Thread)?;
    Ok(())
}

/// Accepts admin connections until the runtime goes.
async fn serve(broker: Arc<Broker>, listener: std::net::TcpListener) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let answer = answer(&broker, &req);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = http1::Builder::new()
                .max_buf_size(16 * 1024)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The answer to one admin request.
fn answer(b: &Broker, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != "/healthz" && path != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the admin listener serves GET /healthz and GET /metrics\n".into(),
        );
    }
    if req.method() != Method::GET {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            format!("{path} takes GET only\n"),
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if path == "/metrics" {
        return reply(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            b.metrics().encode(),
        );
    }
    let failing = b.health().failing();
    let (status, body) = if failing.is_empty() {
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unhealthy", "failing": failing}),
        )
    };
    reply(status, "application/json", format!("{body}\n"))
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}
