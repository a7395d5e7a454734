//! Running the broker: one single-threaded tokio runtime per core, all
//! accepting from one listening socket. An agent's connection, its TLS, and
//! the upstream connections its requests use then live on one thread, so a
//! request never waits for a wake-up from another thread; on a loaded
//! machine this costs about a third less CPU per request than tokio's
//! work-stealing runtime (bench/broker.sh).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::server::{Broker, ProxyError, serve};

/// Listens on `listen`, calls `on_listening` with the bound address, and
/// serves until SIGTERM or Ctrl-C. `threads`: how many runtimes (at least
/// one; `None`: one per available core).
pub fn run(
    broker: Arc<Broker>,
    listen: SocketAddr,
    threads: Option<usize>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ProxyError> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| ProxyError(format!("cannot listen on {listen}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ProxyError(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ProxyError(format!("cannot listen on {listen}: {e}")))?;
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        // Each runtime accepts on its own descriptor of the one socket:
        // whichever thread is free takes the next connection.
        let socket = listener
            .try_clone()
            .map_err(|e| ProxyError(format!("cannot listen on {listen}: {e}")))?;
        let broker = broker.clone();
        let mut stopped = stopped.clone();
        let worker = std::thread::Builder::new()
            .name(format!("broker-{i}"))
            .spawn(move || -> Result<(), ProxyError> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| ProxyError(format!("cannot start: {e}")))?;
                rt.block_on(async move {
                    let socket = tokio::net::TcpListener::from_std(socket)
                        .map_err(|e| ProxyError(format!("cannot listen: {e}")))?;
                    serve(broker, socket, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
                })
            })
            .map_err(|e| ProxyError(format!("cannot start a thread: {e}")))?;
        workers.push(worker);
    }
    drop(listener);
    on_listening(bound);
    // This thread waits for the signal and tells the runtimes.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ProxyError(format!("cannot start: {e}")))?;
    signals.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| ProxyError(format!("cannot wait for SIGTERM: {e}")))?;
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        Ok::<_, ProxyError>(())
    })?;
    let _ = stop.send(true);
    let mut result = Ok(());
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(ProxyError("a broker thread panicked".into())),
        }
    }
    result
}
