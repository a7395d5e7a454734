//! The supervisor's socketpair with the set-up step and init (their
//! stdin), and the supervisor's hand-off to the broker.
//!
//! On the socketpair the supervisor sends the plan twice (a 4-byte length,
//! then JSON): once for the set-up step, once for init. Then one of:
//! - init sends [`LISTENER`] with its listener attached (`SCM_RIGHTS`); the
//!   supervisor hands it to the broker and answers [`GO`] (or closes);
//! - the set-up step, on the Landlock fallback, sends [`TOKEN`]; the
//!   supervisor answers `AGENT:TOKEN` on a line (the fallback's only way to
//!   the broker is its TCP port with a token in `HTTPS_PROXY`), and the
//!   set-up step says on a line what it enforced: `landlock`, or
//!   `none: WHY` (see [`read_enforced`]);
//! - nothing: the socketpair closes (a failure inside).

use std::io::{BufRead, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// init → supervisor: the listener is attached.
pub const LISTENER: u8 = b'L';
/// set-up → supervisor: the fallback asks for a token.
pub const TOKEN: u8 = b'T';
/// supervisor → init: the broker took the listener; start CMD.
pub const GO: u8 = b'G';
/// The first byte of a hand-off on the broker's socket (no HTTP request
/// starts with it); `agent_vault_proxy` reads it.
const HANDOFF: u8 = 0;
/// The longest plan taken.
const MAX_PLAN: u32 = 1 << 20;

/// This process's stdin, the socketpair with the supervisor.
pub fn stdin_channel() -> Result<UnixStream, String> {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixStream::from)
        .map_err(|e| format!("the channel to the supervisor: {e}"))
}

/// The fallback's line after its token: what it enforced, or `None` when
/// the set-up step ended without saying (CMD did not start).
pub fn read_enforced(from: &UnixStream) -> Option<super::Enforced> {
    let mut line = String::new();
    std::io::BufReader::new(from)
        .take(16 * 1024)
        .read_line(&mut line)
        .ok()?;
    let line = line.strip_suffix('\n')?;
    if line == "landlock" {
        return Some(super::Enforced::LandlockOnly);
    }
    line.strip_prefix("none: ")
        .map(|why| super::Enforced::Nothing(why.to_owned()))
}

/// Writes one plan frame.
pub fn write_frame(to: &mut UnixStream, json: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(json.len()).map_err(std::io::Error::other)?;
    to.write_all(&len.to_be_bytes())?;
    to.write_all(json)
}

/// Reads one plan frame, and nothing after it.
pub fn read_frame(from: &mut UnixStream) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len);
    if len > MAX_PLAN {
        return Err("the plan is too long".into());
    }
    let mut json = vec![0u8; len as usize];
    from.read_exact(&mut json).map_err(|e| e.to_string())?;
    Ok(json)
}

/// Sends `byte` with `fd` attached.
pub fn send_fd(to: &UnixStream, byte: u8, fd: impl AsFd) -> std::io::Result<()> {
    let fds = [fd.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(to, &[IoSlice::new(&[byte])], &mut cmsg, SendFlags::empty())?;
    Ok(())
}

/// One byte from `from`, with the descriptor attached to it if any;
/// `None` at the end.
pub fn recv_fd(from: &UnixStream) -> std::io::Result<Option<(u8, Option<OwnedFd>)>> {
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            from,
            &mut [IoSliceMut::new(&mut byte)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    if got.bytes == 0 {
        return Ok(None);
    }
    let mut fd = None;
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && fd.is_none()
        {
            fd = fds.next();
        }
    }
    Ok(Some((byte[0], fd)))
}

/// Hands `listener` and `token` to the broker at `socket`; the control
/// connection, kept open for renewed tokens (closing it ends the session).
pub fn hand_off(socket: &Path, listener: &OwnedFd, token: &str) -> Result<UnixStream, String> {
    let mut control = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the broker at {}: {e}", socket.display()))?;
    let broken = |e: std::io::Error| format!("the hand-off to the broker failed: {e}");
    send_fd(&control, HANDOFF, listener).map_err(broken)?;
    control
        .write_all(format!("{token}\n").as_bytes())
        .map_err(broken)?;
    let mut answer = Vec::new();
    std::io::BufReader::new(control.try_clone().map_err(broken)?)
        .take(1024)
        .read_until(b'\n', &mut answer)
        .map_err(broken)?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.trim_end() {
        "ok" => Ok(control),
        refused if refused.starts_with("refused: ") => Err(format!(
            "the broker refused the hand-off: {}",
            &refused["refused: ".len()..]
        )),
        _ => Err(
            "the broker does not take listener hand-offs: restart it with this version of agent-vault"
                .into(),
        ),
    }
}
