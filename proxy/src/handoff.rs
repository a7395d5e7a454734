//! Listener hand-offs on the broker's Unix socket, for `run --isolate`.
//!
//! The supervisor of an isolated command (outside, holding the agent key)
//! connects to the Unix socket and sends [`MARK`] with a TCP listener that
//! lives in the command's network namespace attached (`SCM_RIGHTS`), then
//! the agent's token on a line. The broker answers `ok` on a line (or
//! `refused: WHY`), accepts on that listener and serves each connection
//! like an agent's TCP connection, except that the token is the session's
//! newest one: whatever `Proxy-Authorization` the client sends is ignored,
//! so nothing inside holds a token. The supervisor sends a renewed token on
//! a line before the last one expires. When the control connection closes
//! (the supervisor is gone), the listener is dropped and the session's
//! connections are refused from then on.
//!
//! No HTTP request starts with NUL, so the first byte tells a hand-off from
//! an agent's HTTP connection on the same socket.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_vault_core::broker::token::Claims;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;

use crate::broker::Broker;

/// The first byte of a hand-off.
pub const MARK: u8 = 0;
/// Hand-offs served at once; more are refused.
const MAX_SESSIONS: usize = 256;
/// The longest token line taken.
const MAX_LINE: u64 = 16 * 1024;

/// One hand-off: the token its connections use, until it ends.
pub(crate) struct Session {
    /// The agent of the first token: a renewal for another agent ends the
    /// session (the supervisor speaks for one agent).
    agent: String,
    state: Mutex<State>,
}

struct State {
    /// The newest token; `None` once the supervisor is gone.
    token: Option<String>,
    /// Its claims, verified when it came (`None` if it did not verify).
    claims: Option<Arc<Claims>>,
}

impl Session {
    /// The newest token, or `None` once the session ended.
    pub(crate) fn token(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.token.clone())
    }

    /// The newest token's claims (for requests inside a tunnel, which
    /// re-check expiry and revocation), or `None` once the session ended.
    pub(crate) fn claims(&self) -> Option<Arc<Claims>> {
        self.state.lock().ok().and_then(|s| s.claims.clone())
    }

    /// Takes the supervisor's newest token; `false` (and the session
    /// ended) when it speaks for another agent than the first one.
    fn set(&self, b: &Broker, token: Option<String>) -> bool {
        let claims = token
            .as_deref()
            .and_then(|t| b.check_token(t).ok())
            .map(Arc::new);
        let same_agent = claims.as_ref().is_none_or(|c| c.agent == self.agent);
        let (token, claims) = if same_agent {
            (token, claims)
        } else {
            (None, None)
        };
        if let Ok(mut s) = self.state.lock() {
            *s = State { token, claims };
        }
        same_agent
    }
}

/// What a connection on the Unix socket turned out to be.
pub(crate) enum Dealt {
    /// An agent's HTTP connection, to serve as it is.
    Unix(std::os::unix::net::UnixStream),
    /// A connection accepted on a handed-off listener.
    Handed(std::net::TcpStream, Arc<Session>),
}

/// The hand-offs of one broker, counted against [`MAX_SESSIONS`].
#[derive(Default, Clone)]
pub(crate) struct Handoffs {
    live: Arc<AtomicUsize>,
}

/// Counts a live session; uncounted when dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Handoffs {
    /// Takes one connection on the Unix socket: an HTTP connection goes to
    /// `deal` as it is; a hand-off is checked and served here, each
    /// connection its listener accepts going to `deal`, until its control
    /// connection closes. Anything else is dropped.
    pub(crate) async fn take(
        &self,
        b: Arc<Broker>,
        stream: UnixStream,
        deal: impl Fn(Dealt) + Send + 'static,
    ) {
        let limit = b.limits.header;
        let Ok(Ok(first)) = tokio::time::timeout(limit, peek(&stream)).await else {
            return;
        };
        if first != Some(MARK) {
            if first.is_some()
                && let Ok(s) = stream.into_std()
            {
                deal(Dealt::Unix(s));
            }
            return;
        }
        let mut reader = BufReader::new(stream);
        let Ok(Ok(got)) = tokio::time::timeout(limit, receive(&mut reader, &b, self)).await else {
            return;
        };
        let received = match got {
            Ok(v) => v,
            Err(why) => {
                let answer = format!("refused: {why}\n");
                let _ = reader.get_mut().write_all(answer.as_bytes()).await;
                return;
            }
        };
        if reader.get_mut().write_all(b"ok\n").await.is_err() {
            return;
        }
        serve(b, reader, received, deal).await;
    }
}

/// The first byte waiting on `stream`, left there; `None` at its end.
async fn peek(stream: &UnixStream) -> std::io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    let (n, _) = stream
        .async_io(Interest::READABLE, || {
            rustix::net::recv(stream, &mut byte, RecvFlags::PEEK).map_err(std::io::Error::from)
        })
        .await?;
    Ok((n == 1).then_some(byte[0]))
}

/// The hand-off's mark with its listener, and the first token line: the
/// listener checked, the token verified (its agent is the session's), the
/// session counted. `Err`: why it is refused.
async fn receive(
    reader: &mut BufReader<UnixStream>,
    b: &Broker,
    handoffs: &Handoffs,
) -> std::io::Result<Result<Received, String>> {
    let stream = reader.get_ref();
    let fds = stream
        .async_io(Interest::READABLE, || {
            let mut mark = [0u8; 1];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut cmsg = RecvAncillaryBuffer::new(&mut space);
            let got = rustix::net::recvmsg(
                stream,
                &mut [std::io::IoSliceMut::new(&mut mark)],
                &mut cmsg,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let mut fds = Vec::new();
            for msg in cmsg.drain() {
                if let RecvAncillaryMessage::ScmRights(got) = msg {
                    fds.extend(got);
                }
            }
            // More descriptors than room for one: the kernel closed the rest.
            let truncated = got.flags.contains(rustix::net::ReturnFlags::CTRUNC);
            Ok((fds, truncated))
        })
        .await?;
    let (fds, truncated) = fds;
    let mut fds = fds.into_iter();
    let (Some(fd), None, false) = (fds.next(), fds.next(), truncated) else {
        return Ok(Err("a hand-off carries exactly one listening socket".into()));
    };
    let listener = match listener(fd) {
        Ok(l) => l,
        Err(why) => return Ok(Err(why)),
    };
    let mut line = Vec::new();
    match (&mut *reader)
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .await
    {
        Ok(_) if line.ends_with(b"\n") => {}
        Ok(_) => return Ok(Err("no token line".into())),
        Err(e) => return Err(e),
    }
    let Ok(token) = String::from_utf8(line) else {
        return Ok(Err("the token is not text".into()));
    };
    let claims = match b.check_token(token.trim()) {
        Ok(c) => Arc::new(c),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let live = handoffs.live.fetch_add(1, Ordering::AcqRel);
    let counted = Live(handoffs.live.clone());
    if live >= MAX_SESSIONS {
        return Ok(Err(format!("{MAX_SESSIONS} hand-offs are served already")));
    }
    Ok(Ok(Received {
        listener,
        token: token.trim().to_owned(),
        claims,
        live: counted,
    }))
}

/// An accepted hand-off.
struct Received {
    listener: tokio::net::TcpListener,
    /// The supervisor's first token, and its claims, verified once.
    token: String,
    claims: Arc<Claims>,
    live: Live,
}

/// `fd` as a TCP listener on loopback, or why not.
fn listener(fd: OwnedFd) -> Result<tokio::net::TcpListener, String> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let listening = sockopt::socket_acceptconn(fd.as_fd()).unwrap_or(false);
    let stream = sockopt::socket_type(fd.as_fd()).ok() == Some(SocketType::STREAM);
    let family = sockopt::socket_domain(fd.as_fd()).ok();
    let inet = family == Some(AddressFamily::INET) || family == Some(AddressFamily::INET6);
    if !(listening && stream && inet) {
        return Err("what was handed over is not a listening TCP socket".into());
    }
    let std = std::net::TcpListener::from(fd);
    let loopback = std.local_addr().is_ok_and(|a| a.ip().is_loopback());
    if !loopback {
        return Err("the listener handed over is not on loopback".into());
    }
    std.set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(std))
        .map_err(|e| format!("cannot take the listener: {e}"))
}

/// Accepts on the session's listener while the control connection is open,
/// taking each renewed token from it; then drops the listener and ends the
/// session (its connections are refused from then on).
async fn serve(
    b: Arc<Broker>,
    mut lines: BufReader<UnixStream>,
    received: Received,
    deal: impl Fn(Dealt) + Send + 'static,
) {
    let Received {
        listener,
        token,
        claims,
        live,
    } = received;
    let session = Arc::new(Session {
        agent: claims.agent.clone(),
        state: Mutex::new(State {
            token: Some(token),
            claims: Some(claims),
        }),
    });
    let accepting = {
        let session = session.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        if let Ok(s) = s.into_std() {
                            deal(Dealt::Handed(s, session.clone()));
                        }
                    }
                    // Out of file descriptors, for instance: not a reason
                    // to end the session, nor to spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut lines)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) if n > 0 && line.ends_with(b"\n") => {
                let token = String::from_utf8(std::mem::take(&mut line)).ok();
                if !session.set(&b, token.map(|t| t.trim().to_owned())) {
                    break;
                }
            }
            // Closed, broken, or a line too long: the session ends.
            _ => break,
        }
    }
    accepting.abort();
    session.set(&b, None);
    drop(live);
}
