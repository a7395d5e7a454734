//! Running the broker: one single-threaded tokio runtime per core. The main
//! thread accepts agents' connections and deals them out in turn; a
//! connection, its TLS, and the upstream connections its requests use then
//! live on one thread, so a request never waits for a wake-up from another
//! thread. On a loaded machine this costs about a third less CPU per
//! request than tokio's work-stealing runtime, and dealing in turn (rather
//! than letting the runtimes race for `accept`) keeps the cores evenly
//! loaded when a client opens its connections all at once (bench/broker.sh).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::server::{Broker, ProxyError, serve_agent};

/// Listens on `listen`, calls `on_listening` with the bound address, and
/// serves until SIGTERM or Ctrl-C. `threads`: how many runtimes (at least
/// one; `None`: one per available core).
pub fn run(
    broker: Arc<Broker>,
    listen: SocketAddr,
    threads: Option<usize>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ProxyError> {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let mut queues = Vec::with_capacity(threads);
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let (queue, mut incoming) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let broker = broker.clone();
        let worker = std::thread::Builder::new()
            .name(format!("broker-{i}"))
            .spawn(move || -> Result<(), ProxyError> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(ProxyError::Runtime)?;
                // Ends when the acceptor drops its end of the queue; the
                // connections still open are dropped with the runtime.
                rt.block_on(async move {
                    while let Some(stream) = incoming.recv().await {
                        if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                            tokio::spawn(serve_agent(broker.clone(), stream));
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
        on_listening(bound);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ProxyError::Signal)?;
        let mut next = 0;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let Ok(stream) = stream.into_std() else { continue };
                    let _ = queues[next].send(stream);
                    next = (next + 1) % queues.len();
                }
            }
        }
    });
    // `queues` went with the acceptor's future: the workers stop.
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
