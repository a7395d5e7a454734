//! TLS on the broker's own listener (`HTTPS_PROXY=https://…`), so an
//! agent's token never crosses a network in cleartext: with a certificate
//! and key the owner provides (`--tls-cert`/`--tls-key`), or with a leaf
//! the vault's CA mints for the names given (`--tls-name`), which agents
//! already trust. A minted leaf lives a day ([`crate::ca::LEAF_LIFETIME`]):
//! a new one is minted, with a new key, when the current one is past half
//! its life, at the next handshake. The agent's `CONNECT` then runs inside
//! this TLS, and its own TLS to the leaf for the upstream's host inside that.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::ca::{LEAF_LIFETIME, Minter};
use crate::error::ProxyError;

/// Where the listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerTls {
    /// A certificate chain and its key, PEM files the owner provides.
    Files {
        /// The certificate chain (leaf first).
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// A leaf the vault's CA mints for these names (host names or IP
    /// addresses agents connect to).
    Minted(Vec<String>),
}

/// The listener's TLS configuration (HTTP/1.1: a proxy's `CONNECT`).
pub(crate) fn server_config(
    tls: &ListenerTls,
    ca_cert: &str,
    ca_key: &str,
) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
    let err = |what: String| ProxyError::ListenerTls(what);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_no_client_auth();
    let mut cfg = match tls {
        ListenerTls::Files { cert, key } => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| err(format!("{}: {e}", cert.display())))?;
            if certs.is_empty() {
                return Err(err(format!("{}: no certificate", cert.display())));
            }
            // The key's error names the file only: never its content.
            let private = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| err(format!("{}: {e}", key.display())))?;
            builder
                .with_single_cert(certs, private)
                .map_err(|e| err(format!("{} and {}: {e}", cert.display(), key.display())))?
        }
        ListenerTls::Minted(names) => {
            let minter = Minter::new(ca_cert, ca_key).map_err(|e| err(e.to_string()))?;
            let resolver = Reminting::new(minter, names.clone())?;
            builder.with_cert_resolver(Arc::new(resolver))
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The minted leaf, and a new one once it is past half its life.
struct Reminting {
    minter: Minter,
    names: Vec<String>,
    current: RwLock<(Instant, Arc<CertifiedKey>)>,
}

impl Reminting {
    fn new(minter: Minter, names: Vec<String>) -> Result<Self, ProxyError> {
        let first = mint(&minter, &names)?;
        Ok(Reminting {
            minter,
            names,
            current: RwLock::new((Instant::now(), first)),
        })
    }
}

/// A leaf for `names` as rustls serves it.
fn mint(minter: &Minter, names: &[String]) -> Result<Arc<CertifiedKey>, ProxyError> {
    let err = |e: String| ProxyError::ListenerTls(format!("--tls-name {}: {e}", names.join(",")));
    let (cert, key) = minter.mint(names).map_err(|e| err(e.to_string()))?;
    let cert = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| err(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| err(e.to_string()))?;
    let key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| err(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(vec![cert], key)))
}

impl std::fmt::Debug for Reminting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reminting")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Reminting {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (made, key) = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if made.elapsed() < LEAF_LIFETIME / 2 {
            return Some(key);
        }
        // Past half its life: a new one (the old one still serves if
        // minting fails, until it expires).
        match mint(&self.minter, &self.names) {
            Ok(fresh) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    (Instant::now(), fresh.clone());
                Some(fresh)
            }
            Err(_) => Some(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_listener_config_and_missing_files_are_named() {
        let (ca, key) = crate::ca::generate("0123456789abcdef").unwrap();
        let cfg = server_config(
            &ListenerTls::Minted(vec!["broker.internal".into(), "127.0.0.1".into()]),
            &ca,
            &key,
        )
        .unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let e = server_config(
            &ListenerTls::Files {
                cert: "/nowhere/cert.pem".into(),
                key: "/nowhere/key.pem".into(),
            },
            &ca,
            &key,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nowhere/cert.pem"), "{e}");
    }
}
