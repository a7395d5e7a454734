//! The broker's start-up and serving failures.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ca::CaError;
use crate::upstream::SetupError;

/// Why the broker could not start, or stopped serving. Each variant's
/// message is the one shown to the user.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyError {
    /// The broker's key could not be loaded (none made yet, or unreadable).
    NoBrokerKey(agent_vault_core::Error),
    /// The vault's manifest could not be read or did not verify.
    Manifest(agent_vault_core::Error),
    /// The services list was refused (the reader keeps the error; this is
    /// its message).
    Services(String),
    /// The broker's token key could not be opened.
    TokenKey(agent_vault_core::Error),
    /// The CA's private key could not be opened.
    CaKey(agent_vault_core::Error),
    /// The CA certificate could not be read.
    CaCert(agent_vault_core::Error),
    /// The CA certificate is not text.
    CaCertText(std::string::FromUtf8Error),
    /// The CA's certificate and key did not make a CA.
    Ca(CaError),
    /// The upstream side (its TLS configuration, `--upstream-ca`) could
    /// not be set up.
    Upstream(SetupError),
    /// The broker's reader could not open the vault.
    Open(agent_vault_core::Error),
    /// The audit log could not be opened.
    AuditLog {
        /// The audit log's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tokio runtime could not be started.
    Runtime(std::io::Error),
    /// A broker thread could not be started.
    Thread(std::io::Error),
    /// The broker could not listen on its address (in use, not allowed…).
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The broker could not listen on its Unix socket (`--unix`).
    ListenUnix {
        /// The socket's path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The broker could not install its SIGTERM handler.
    Signal(std::io::Error),
    /// A broker thread panicked.
    Panicked,
    /// `--pull-interval` on a vault whose repository has no remote.
    NoRemote,
    /// The listener's TLS (`--tls-cert`/`--tls-key`, `--tls-name`) could not
    /// be set up; the message names the file or the name.
    ListenerTls(String),
    /// An audit export (`--audit-otlp`, `--audit-syslog`) could not be set
    /// up; the message names the flag.
    Export(String),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::NoBrokerKey(e) => write!(
                f,
                "no broker key ({e}); run `agent-vault broker init` or pass --key"
            ),
            ProxyError::Manifest(e) => write!(f, "the vault's manifest: {e}"),
            ProxyError::Services(e) => write!(f, "refusing the services list: {e}"),
            ProxyError::TokenKey(e) => write!(f, "the token key: {e}"),
            ProxyError::CaKey(e) => write!(f, "the CA key: {e}"),
            ProxyError::CaCert(e) => write!(f, "the CA certificate: {e}"),
            ProxyError::CaCertText(e) => write!(f, "the CA certificate: {e}"),
            ProxyError::Ca(e) => write!(f, "the CA: {e}"),
            ProxyError::Upstream(e) => write!(f, "{e}"),
            ProxyError::Open(e) => write!(f, "the broker cannot open the vault: {e}"),
            ProxyError::AuditLog { source, .. } => write!(f, "the audit log: {source}"),
            ProxyError::Runtime(e) => write!(f, "cannot start: {e}"),
            ProxyError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            ProxyError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ProxyError::ListenUnix { path, source } => {
                write!(f, "cannot listen on {}: {source}", path.display())
            }
            ProxyError::Signal(e) => write!(f, "cannot wait for SIGTERM: {e}"),
            ProxyError::Panicked => f.write_str("a broker thread panicked"),
            ProxyError::NoRemote => f.write_str(
                "--pull-interval: the vault's repository has no remote to follow (add one with `git remote add`)",
            ),
            ProxyError::ListenerTls(e) => write!(f, "the listener's TLS: {e}"),
            ProxyError::Export(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::NoBrokerKey(e)
            | ProxyError::Manifest(e)
            | ProxyError::TokenKey(e)
            | ProxyError::CaKey(e)
            | ProxyError::CaCert(e)
            | ProxyError::Open(e) => Some(e),
            ProxyError::CaCertText(e) => Some(e),
            ProxyError::Services(_) => None,
            ProxyError::Ca(e) => Some(e),
            ProxyError::Upstream(e) => Some(e),
            ProxyError::AuditLog { source, .. }
            | ProxyError::Listen { source, .. }
            | ProxyError::ListenUnix { source, .. } => Some(source),
            ProxyError::Runtime(e) | ProxyError::Thread(e) | ProxyError::Signal(e) => Some(e),
            ProxyError::Panicked
            | ProxyError::NoRemote
            | ProxyError::ListenerTls(_)
            | ProxyError::Export(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_names_the_address_and_keeps_the_io_error() {
        let e = ProxyError::Listen {
            addr: "127.0.0.1:8080".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("cannot listen on 127.0.0.1:8080: "),
            "{text}"
        );
        let source = std::error::Error::source(&e).unwrap();
        let io = source.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn messages_are_the_ones_users_see() {
        assert_eq!(ProxyError::Panicked.to_string(), "a broker thread panicked");
        let e = ProxyError::AuditLog {
            path: "/nowhere/audit.log".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(e.to_string().starts_with("the audit log: "), "{e}");
    }
}
