//! RFC 5424 syslog: one message per audit record, over UDP (one datagram
//! each), TCP (octet-counted framing, RFC 6587) or a Unix datagram socket
//! (`/dev/log` style). Written here rather than taken from a crate: the
//! format is a line of text, and the crates that write it (`syslog`) send
//! fire-and-forget from the caller's thread, while the broker needs to
//! know of each message whether it went out, to count it delivered or
//! dropped, and to try again from the first one that did not.
//!
//! "Delivered" is what the transport can tell: the kernel took the
//! datagram or the bytes. Over UDP a receiver that is down is not noticed;
//! over TCP a receiver that dies loses what was in flight. A Unix datagram
//! socket with no receiver, and a TCP receiver that cannot be reached, are
//! noticed at once, and those records are tried again and then dropped.
//!
//! The message: facility `authpriv`, severity `info` when the upstream
//! answered and `warning` when the broker refused, APP-NAME `agent-vault`,
//! MSGID `audit`, the record's fields as the structured data element
//! `audit@32473` (32473 is the enterprise number RFC 5612 reserves for
//! documentation: there is no registered one for this project), and the
//! record's JSON line as the message.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use super::{Batch, Deliver, Encode, Failure};
use crate::audit::Record;
use crate::error::ProxyError;

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `udp://HOST:PORT`.
    Udp(String),
    /// `tcp://HOST:PORT`.
    Tcp(String),
    /// `unix:///PATH`: a datagram socket.
    Unix(PathBuf),
}

impl Target {
    /// Reads `udp://HOST:PORT`, `tcp://HOST:PORT` or `unix:///PATH`.
    pub fn parse(s: &str) -> Result<Self, ProxyError> {
        let bad = || {
            ProxyError::Export(format!(
                "--audit-syslog {s:?}: give udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH"
            ))
        };
        if let Some(a) = s.strip_prefix("udp://") {
            return (a.contains(':') && !a.contains('/'))
                .then(|| Target::Udp(a.to_owned()))
                .ok_or_else(bad);
        }
        if let Some(a) = s.strip_prefix("tcp://") {
            return (a.contains(':') && !a.contains('/'))
                .then(|| Target::Tcp(a.to_owned()))
                .ok_or_else(bad);
        }
        match s.strip_prefix("unix://") {
            Some(p) if p.starts_with('/') => Ok(Target::Unix(PathBuf::from(p))),
            _ => Err(bad()),
        }
    }

    /// `syslog-udp`, `syslog-tcp` or `syslog-unix`.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Udp(_) => "syslog-udp",
            Target::Tcp(_) => "syslog-tcp",
            Target::Unix(_) => "syslog-unix",
        }
    }
}

/// A connection, made when first needed and again after a failure.
enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Unix(UnixDatagram),
}

/// The syslog exporter.
pub(crate) struct Syslog {
    target: Target,
    conn: Option<Conn>,
}

/// Writes a record's message (on the request's thread).
pub(crate) struct Encoder {
    hostname: String,
    pid: u32,
}

impl Encoder {
    pub(crate) fn new() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or_else(|| "-".to_owned());
        Encoder {
            hostname,
            pid: std::process::id(),
        }
    }
}

impl Encode for Encoder {
    fn encode(&self, r: &Record, out: &mut Vec<u8>) {
        out.extend_from_slice(format(r, &self.hostname, self.pid).as_bytes());
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

impl Syslog {
    pub(crate) fn new(target: Target) -> Self {
        Syslog { target, conn: None }
    }

    fn connect(&self) -> std::io::Result<Conn> {
        let addr = |a: &str| {
            a.to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("the host does not resolve"))
        };
        Ok(match &self.target {
            Target::Udp(a) => {
                let to = addr(a)?;
                let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let s = UdpSocket::bind(bind)?;
                s.connect(to)?;
                Conn::Udp(s)
            }
            Target::Tcp(a) => {
                let s = TcpStream::connect_timeout(&addr(a)?, TIMEOUT)?;
                s.set_write_timeout(Some(TIMEOUT))?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            Target::Unix(p) => {
                let s = UnixDatagram::unbound()?;
                s.connect(p)?;
                s.set_write_timeout(Some(TIMEOUT))?;
                Conn::Unix(s)
            }
        })
    }

    fn send(&mut self, msg: &[u8]) -> std::io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let result = match self.conn.as_mut() {
            Some(Conn::Udp(s)) => s.send(msg).map(drop),
            Some(Conn::Unix(s)) => s.send(msg).map(drop),
            Some(Conn::Tcp(s)) => {
                // Octet counting: the length, a space, the message.
                let mut framed = format!("{} ", msg.len()).into_bytes();
                framed.extend_from_slice(msg);
                s.write_all(&framed)
            }
            None => Ok(()),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

impl Deliver for Syslog {
    fn deliver(&mut self, batch: &Batch<'_>) -> Result<(), (usize, Failure)> {
        for (i, msg) in batch.records().enumerate() {
            self.send(msg)
                .map_err(|e| (i, Failure::Retry(e.to_string())))?;
        }
        Ok(())
    }
}

/// A structured data parameter's value: `"`, `\` and `]` escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The RFC 5424 message for a record.
pub(crate) fn format(r: &Record, hostname: &str, pid: u32) -> String {
    // authpriv (10): info (6) when the upstream answered, warning (4) when refused.
    let pri = 10 * 8 + if r.reason.is_some() { 4 } else { 6 };
    let time = r.time.round(jiff::Unit::Microsecond).unwrap_or(r.time);
    let mut sd = format!(
        "[audit@32473 agent=\"{}\" token_id=\"{}\" service=\"{}\" method=\"{}\" host=\"{}\" path=\"{}\" status=\"{}\" duration_ms=\"{}\" secrets=\"{}\"",
        escape(&r.agent),
        escape(&r.token_id),
        escape(&r.service),
        escape(&r.method),
        escape(&r.host),
        escape(&r.path),
        r.status,
        r.duration_ms,
        escape(&r.secrets.join(",")),
    );
    if let Some(reason) = &r.reason {
        sd.push_str(&format!(" reason=\"{}\"", escape(reason)));
    }
    sd.push(']');
    let json = serde_json::to_string(r).unwrap_or_default();
    format!("<{pri}>1 {time} {hostname} agent-vault {pid} audit {sd} {json}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_messages() {
        assert_eq!(
            Target::parse("udp://127.0.0.1:514").unwrap(),
            Target::Udp("127.0.0.1:514".into())
        );
        assert_eq!(
            Target::parse("unix:///dev/log").unwrap(),
            Target::Unix("/dev/log".into())
        );
        assert!(Target::parse("tcp://nowhere").is_err());
        assert!(Target::parse("unix://relative").is_err());
        let r: Record = serde_json::from_str(
            r#"{"time":"2026-01-02T03:04:05.678Z","agent":"bot","token_id":"t1","service":"api","method":"GET","host":"h","path":"/a\"]\\b","status":403,"bytes_in":0,"bytes_out":0,"duration_ms":3,"secrets":["api/token"],"reason":"not-granted"}"#,
        )
        .unwrap();
        let m = format(&r, "host1", 42);
        assert!(
            m.starts_with("<84>1 2026-01-02T03:04:05.678Z host1 agent-vault 42 audit [audit@32473 agent=\"bot\""),
            "{m}"
        );
        assert!(m.contains(r#"path="/a\"\]\\b""#), "{m}");
        assert!(m.contains(r#" reason="not-granted"] {"time""#), "{m}");
    }
}
