//! Running the broker: single-threaded tokio runtimes, two per core. The
//! main thread accepts agents' connections and deals them out in turn; a
//! connection, its TLS, and the upstream connections its requests use then
//! live on one thread, so a request never waits for a wake-up from another
//! thread. On a loaded machine this costs about a third less CPU per
//! request than tokio's work-stealing runtime, and dealing in turn (rather
//! than letting the runtimes race for `accept`) keeps the cores evenly
//! loaded when a client opens its connections all at once. Two runtimes a
//! core, each under `SCHED_BATCH` (`sched.rs`), rather than one: where the
//! broker shares the cores with its agents and upstreams, its runtimes then
//! get the CPU in the proportion its work needs without the agents having
//! to sleep to give it up, and each wake-up finds more to do. Measured on
//! two cores with 8, 32 and 64 agent connections: a third, a sixth and a
//! tenth more requests per second than one runtime a core under the default
//! policy; three runtimes a core were slower again (bench/broker.sh).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::handoff::{Dealt, Handoffs};
use crate::server::{Broker, ProxyError, serve_agent, serve_stream};
use crate::tunnel::serve_handed;

/// An accepted agent connection, dealt to a runtime.
enum Accepted {
    Tcp(std::net::TcpStream),
    Other(Dealt),
}

/// Deals connections to the runtimes in turn.
struct Dealer {
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Dealer {
    fn deal(&self, stream: Accepted) {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.queues.len();
        let _ = self.queues[i].send(stream);
    }
}

/// Listens on `listen` (and on the Unix socket `unix`, if given: for agents
/// in `run --isolate`, whose only way out is that socket), calls
/// `on_listening` with the bound address, and serves until SIGTERM or Ctrl-C.
/// The socket file is made anew, readable and writable by this user only,
/// and removed when the broker stops. `threads`: how many runtimes (at least
/// one; `None`: two per available core).
pub fn run(
    broker: Arc<Broker>,
    listen: SocketAddr,
    unix: Option<&Path>,
    threads: Option<usize>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ProxyError> {
    let threads = threads
        .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let mut queues = Vec::with_capacity(threads);
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Accepted>();
        let broker = broker.clone();
        let worker = std::thread::Builder::new()
            .name(format!("broker-{i}"))
            .spawn(move || -> Result<(), ProxyError> {
                crate::sched::batch_this_thread();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ProxyError::Runtime)?;
                // Ends when the acceptor drops its end of the queue; the
                // connections still open are dropped with the runtime.
                rt.block_on(async move {
                    while let Some(stream) = incoming.recv().await {
                        match stream {
                            Accepted::Tcp(s) => {
                                if let Ok(s) = tokio::net::TcpStream::from_std(s) {
                                    tokio::spawn(serve_agent(broker.clone(), s));
                                }
                            }
                            Accepted::Other(Dealt::Unix(s)) => {
                                if let Ok(s) = tokio::net::UnixStream::from_std(s) {
                                    tokio::spawn(serve_stream(broker.clone(), s));
                                }
                            }
                            Accepted::Other(Dealt::Handed(s, session)) => {
                                if let Ok(s) = tokio::net::TcpStream::from_std(s) {
                                    tokio::spawn(serve_handed(broker.clone(), s, session));
                                }
                            }
                        }
                    }
                });
                Ok(())
            })
            .map_err(ProxyError::Thread)?;
        queues.push(queue);
        workers.push(worker);
    }
    // This thread accepts, and waits for the signal to stop.
    let acceptor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    let dealer = Arc::new(Dealer {
        queues,
        next: Default::default(),
    });
    let handoffs = Handoffs::default();
    let served = acceptor.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ProxyError::Listen {
                addr: listen,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| ProxyError::Listen {
            addr: listen,
            source,
        })?;
        let unix_listener = match unix {
            Some(path) => Some(bind_unix(path)?),
            None => None,
        };
        on_listening(bound);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ProxyError::Signal)?;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let Ok(stream) = stream.into_std() else { continue };
                    dealer.deal(Accepted::Tcp(stream));
                }
                accepted = accept_unix(unix_listener.as_ref()) => {
                    let Ok(stream) = accepted else { continue };
                    // An agent's HTTP or a listener hand-off (`run --isolate`).
                    let (dealer, handoffs, broker) = (dealer.clone(), handoffs.clone(), broker.clone());
                    tokio::spawn(async move {
                        handoffs
                            .take(broker, stream, move |d| dealer.deal(Accepted::Other(d)))
                            .await
                    });
                }
            }
        }
    });
    if let Some(path) = unix {
        let _ = std::fs::remove_file(path);
    }
    // The dealer went with the acceptor's future and its tasks (hand-offs):
    // the workers stop.
    drop(acceptor);
    let mut result = served;
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = result.and(Err(e)),
            Err(_) => result = result.and(Err(ProxyError::Panicked)),
        }
    }
    result
}

/// Serves the broker's Unix socket on this runtime until `shutdown`
/// resolves: each connection an agent's HTTP, or a listener hand-off
/// (`run --isolate`) whose connections are served here too. For a broker
/// inside another program (`agent-vault demo`); [`run`] deals them out to
/// its threads instead.
pub async fn serve_unix(
    broker: Arc<Broker>,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let handoffs = Handoffs::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (handoffs, broker) = (handoffs.clone(), broker.clone());
                tokio::spawn(async move {
                    let b = broker.clone();
                    handoffs.take(broker, stream, move |d| serve_dealt(&b, d)).await
                });
            }
        }
    }
}

/// Serves a connection from the Unix socket on this runtime.
fn serve_dealt(broker: &Arc<Broker>, dealt: Dealt) {
    match dealt {
        Dealt::Unix(s) => {
            if let Ok(s) = tokio::net::UnixStream::from_std(s) {
                tokio::spawn(serve_stream(broker.clone(), s));
            }
        }
        Dealt::Handed(s, session) => {
            if let Ok(s) = tokio::net::TcpStream::from_std(s) {
                tokio::spawn(serve_handed(broker.clone(), s, session));
            }
        }
    }
}

/// Binds the Unix socket at `path`: a stale socket file there (a broker that
/// did not stop cleanly) is replaced, anything else is refused; the socket
/// is made with no access for group and others.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ProxyError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |source| ProxyError::ListenUnix {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something other than a socket is there",
            )));
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// The next connection on the Unix socket; never, without one.
async fn accept_unix(
    listener: Option<&tokio::net::UnixListener>,
) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}
