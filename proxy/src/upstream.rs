//! Connections to upstreams: TLS verified for the host, HTTP/2 or HTTP/1.1
//! by ALPN, kept in a pool for reuse. Knows nothing of services, tokens or
//! credentials: it sends a request it is given to an address it is given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::reply::ProxyBody;

/// Why the upstream connections could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum SetupError {
    /// The `--upstream-ca` file could not be read as PEM certificates.
    CaFile(rustls::pki_types::pem::Error),
    /// A certificate in the `--upstream-ca` file was refused.
    CaRefused(rustls::Error),
    /// The TLS configuration could not be built.
    Tls(rustls::Error),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::CaFile(e) => write!(f, "--upstream-ca: {e}"),
            SetupError::CaRefused(e) => write!(f, "--upstream-ca: {e}"),
            SetupError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// Why a request did not reach the upstream, or got no answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// No TCP connection to the pinned address.
    Unreachable {
        /// The upstream's host.
        host: String,
        /// Its port.
        port: u16,
        /// What the connect said.
        source: std::io::Error,
    },
    /// The host is not a name TLS can verify.
    Name {
        /// The upstream's host.
        host: String,
        /// Why.
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The TLS handshake failed (usually: the certificate is not trusted).
    Tls {
        /// The upstream's host.
        host: String,
        /// What the handshake said.
        source: std::io::Error,
    },
    /// HTTP failed: the handshake, or the request on the connection.
    Http {
        /// The upstream's host.
        host: String,
        /// What hyper said.
        source: hyper::Error,
    },
    /// The request's target could not be written for HTTP/2.
    Uri {
        /// The upstream's host.
        host: String,
        /// Why.
        source: hyper::http::uri::InvalidUri,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unreachable { host, port, source } => {
                write!(f, "cannot reach {host}:{port}: {source}")
            }
            SendError::Name { host, source } => write!(f, "{host}: {source}"),
            SendError::Tls { host, source } => write!(
                f,
                "TLS with {host} failed (its certificate is not trusted?): {source}"
            ),
            SendError::Http { host, source } => write!(f, "{host}: {source}"),
            SendError::Uri { host, source } => write!(f, "{host}: {source}"),
        }
    }
}

impl std::error::Error for SendError {}

/// A connection to an upstream that can take another request.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ProxyBody>),
    H2(hyper::client::conn::http2::SendRequest<ProxyBody>),
}

/// Upstream connections kept for reuse, by pinned address, host and scheme.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Sender>>>,
}

/// An upstream (pinned address, host, https) and the thread whose runtime
/// drives the connection: with a runtime per core, a request only ever
/// uses a connection of its own thread (no wake-ups across threads).
type PoolKey = (SocketAddr, String, bool, std::thread::ThreadId);

/// The most idle connections kept per upstream.
const POOL_PER_UPSTREAM: usize = 64;

impl Pool {
    /// An idle connection that can take a request now, if any.
    fn take(&self, key: &PoolKey) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some(s) = list.pop() {
            match s {
                Sender::H1(h) if h.is_ready() => return Some(Sender::H1(h)),
                // (A multiplexed HTTP/2 connection goes back in when used.)
                Sender::H2(h) if h.is_ready() => return Some(Sender::H2(h)),
                // Busy or closed: an HTTP/1.1 connection still streaming a
                // response is dropped from the pool (it closes when done).
                _ => {}
            }
        }
        None
    }

    fn put(&self, key: PoolKey, s: Sender) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            if list.len() < POOL_PER_UPSTREAM {
                list.push(s);
            }
        }
    }
}

/// The upstream side: the trusted roots, and the connections kept.
pub(crate) struct Upstreams {
    tls: Arc<rustls::ClientConfig>,
    /// The same, offering only HTTP/1.1 (for WebSocket handshakes).
    tls_h1: Arc<rustls::ClientConfig>,
    pool: Pool,
}

impl Upstreams {
    /// Trusts the system's roots and those in `extra_ca` (PEM).
    pub(crate) fn new(extra_ca: Option<&Path>) -> Result<Self, SetupError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if let Some(p) = extra_ca {
            for c in CertificateDer::pem_file_iter(p).map_err(SetupError::CaFile)? {
                roots
                    .add(c.map_err(SetupError::CaFile)?)
                    .map_err(SetupError::CaRefused)?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(SetupError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tls_h1 = tls.clone();
        tls_h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Upstreams {
            tls: Arc::new(tls),
            tls_h1: Arc::new(tls_h1),
            pool: Pool::default(),
        })
    }

    /// Sends a request to the upstream: on an idle connection when there is
    /// one, else on a new one (TCP to the pinned address, TLS verified for
    /// the host, HTTP/2 or HTTP/1.1 by ALPN). WebSocket handshakes always
    /// get a connection of their own.
    pub(crate) async fn send(
        &self,
        host: &str,
        port: u16,
        addr: SocketAddr,
        https: bool,
        websocket: bool,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let key = (addr, host.to_owned(), https, std::thread::current().id());
        let mut req = req;
        if !websocket && let Some(sender) = self.pool.take(&key) {
            match self
                .send_on(key.clone(), sender, req, host, port, true)
                .await
            {
                Ok(r) => return Ok(r),
                // Never written: the idle connection had gone; a new one below.
                Err((Some(back), _)) => req = back,
                Err((None, e)) => return Err(e),
            }
        }
        // Boxed: the connection's set-up (TLS, HTTP/2 handshake) is a large
        // future, and every request's future would carry its size, moved
        // (copied) as it is handed along.
        let sender = Box::pin(self.connect(host, port, addr, https, websocket)).await?;
        self.send_on(key, sender, req, host, port, !websocket)
            .await
            .map_err(|(_, e)| e)
    }

    /// A new connection to the upstream.
    async fn connect(
        &self,
        host: &str,
        port: u16,
        addr: SocketAddr,
        https: bool,
        websocket: bool,
    ) -> Result<Sender, SendError> {
        let http = |source| SendError::Http {
            host: host.to_owned(),
            source,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| SendError::Unreachable {
                host: host.to_owned(),
                port,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if !https {
            // A service that allows plain http (its owner said so).
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(http)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            return Ok(Sender::H1(sender));
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|source| SendError::Name {
            host: host.to_owned(),
            source,
        })?;
        // A WebSocket handshake needs HTTP/1.1 upstream.
        let config = if websocket {
            self.tls_h1.clone()
        } else {
            self.tls.clone()
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| SendError::Tls {
                host: host.to_owned(),
                source,
            })?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(http)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(http)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(Sender::H1(sender))
        }
    }

    /// Sends on a connection. Fails with the request handed back when it
    /// was never written (a pooled connection the upstream had closed), so
    /// it can go out on a new one.
    async fn send_on(
        &self,
        key: PoolKey,
        sender: Sender,
        mut req: Request<ProxyBody>,
        host: &str,
        port: u16,
        reuse: bool,
    ) -> Result<Response<Incoming>, (Option<Request<ProxyBody>>, SendError)> {
        let failed = |mut e: hyper::client::conn::TrySendError<Request<ProxyBody>>| {
            let back = e.take_message();
            let source = e.into_error();
            (
                back,
                SendError::Http {
                    host: host.to_owned(),
                    source,
                },
            )
        };
        match sender {
            Sender::H1(mut s) => {
                *req.version_mut() = hyper::Version::HTTP_11;
                match s.try_send_request(req).await {
                    Ok(r) => {
                        if reuse {
                            self.pool.put(key, Sender::H1(s));
                        }
                        Ok(r)
                    }
                    Err(e) => Err(failed(e)),
                }
            }
            Sender::H2(mut s) => {
                let req = for_h2(req, host, port).map_err(|e| (None, e))?;
                match s.try_send_request(req).await {
                    Ok(r) => {
                        if reuse {
                            self.pool.put(key, Sender::H2(s));
                        }
                        Ok(r)
                    }
                    Err(e) => Err(failed(e)),
                }
            }
        }
    }
}

/// HTTP/2 takes the authority in the URI, not a Host header.
fn for_h2(
    mut req: Request<ProxyBody>,
    host: &str,
    port: u16,
) -> Result<Request<ProxyBody>, SendError> {
    let authority = if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = format!("https://{authority}{pq}")
        .parse()
        .map_err(|source| SendError::Uri {
            host: host.to_owned(),
            source,
        })?;
    req.headers_mut().remove(hyper::header::HOST);
    *req.version_mut() = hyper::Version::HTTP_2;
    Ok(req)
}
