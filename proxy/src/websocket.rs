//! A WebSocket through the broker: once the handshake has been brokered
//! like any request, the agent's connection and the upstream's are joined,
//! every injected value scrubbed from what the upstream sends, frame by
//! frame ([`frames`]).

mod frames;

use agent_vault_core::broker::scrub::Scrubber;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::audit::Audited;
use crate::metrics::ServiceMeter;

/// Joins the two sides of an upgraded (WebSocket) connection once both
/// have switched, scrubbing with `scrub` (its replacements counted in the
/// meter); the record (status 101, bytes each way) is written when they
/// close.
pub(crate) fn splice(
    mut audit: Audited,
    agent: OnUpgrade,
    upstream: OnUpgrade,
    (scrub, meter): (Scrubber, ServiceMeter),
) {
    audit.record.status = 101;
    tokio::spawn(async move {
        if let (Ok(a), Ok(u)) = (agent.await, upstream.await) {
            let (to_agent, to_upstream) =
                join(TokioIo::new(a), TokioIo::new(u), scrub, &meter).await;
            audit.bytes(to_upstream, to_agent);
        }
        drop(audit);
    });
}

/// Joins an upgraded agent connection to the upstream's: bytes to the
/// upstream pass as they are; frames to the agent are scrubbed (see
/// [`frames`]), and a frame the broker cannot scrub ends the connection.
/// Returns (to agent, to upstream).
async fn join<A, U>(agent: A, upstream: U, scrub: Scrubber, meter: &ServiceMeter) -> (u64, u64)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut agent_r, mut agent_w) = tokio::io::split(agent);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let to_upstream = async {
        let n = tokio::io::copy(&mut agent_r, &mut up_w).await.unwrap_or(0);
        let _ = up_w.shutdown().await;
        n
    };
    let to_agent = async {
        let mut frames = frames::Frames::new(scrub);
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let n = match up_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Ok(out) = frames.push(&buf[..n]) else {
                // Unreadable frames: nothing more of them reaches the agent.
                let _ = agent_w.shutdown().await;
                return total;
            };
            total += out.len() as u64;
            if agent_w.write_all(&out).await.is_err() {
                meter.scrubbed(frames.redactions());
                return total;
            }
        }
        let rest = frames.finish();
        meter.scrubbed(frames.redactions());
        total += rest.len() as u64;
        let _ = agent_w.write_all(&rest).await;
        let _ = agent_w.shutdown().await;
        total
    };
    let (a, u) = tokio::join!(to_agent, to_upstream);
    (a, u)
}
