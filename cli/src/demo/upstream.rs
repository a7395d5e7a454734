//! The demo's upstream: a small HTTPS server on 127.0.0.1 that answers every
//! request with the `Authorization` header it received, as an echo API would
//! (many do, in errors and debug endpoints). It keeps the header it last saw,
//! so the demo can show that the real value reached the upstream while the
//! agent's copy of the echo was scrubbed by the broker.

use std::sync::{Arc, Mutex};

use agent_vault_core::secrecy::SecretString;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The echo upstream: its port, the CA that signed its certificate (PEM, for
/// the broker's `upstream_ca`) and the last `Authorization` it received.
pub struct Echo {
    pub port: u16,
    pub ca_pem: String,
    pub received: Arc<Mutex<Option<SecretString>>>,
}

/// Starts the echo on a free loopback port; it serves until the runtime ends.
pub async fn start() -> Result<Echo, String> {
    let (ca_cert, ca_key) = agent_vault_proxy::ca::generate("demo-upstream")
        .map_err(|e| format!("cannot make the upstream's CA: {e}"))?;
    let minter = agent_vault_proxy::ca::Minter::new(&ca_cert, &ca_key)
        .map_err(|e| format!("cannot make the upstream's CA: {e}"))?;
    let (cert, key) = minter
        .leaf("127.0.0.1")
        .map_err(|e| format!("cannot make the upstream's certificate: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the upstream's certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("the upstream's key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("the upstream's TLS: {e}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?
        .port();
    let received = Arc::new(Mutex::new(None));
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = answer(tls, &seen).await;
                }
            });
        }
    });
    Ok(Echo {
        port,
        ca_pem: ca_cert,
        received,
    })
}

/// Reads one request head and answers it with its `Authorization` line.
async fn answer<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    mut tls: S,
    seen: &Mutex<Option<SecretString>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let auth = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let body = format!("{{\"you_sent\": {{\"authorization\": \"{auth}\"}}}}\n");
    if let Ok(mut s) = seen.lock() {
        *s = Some(SecretString::from(auth));
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(reply.as_bytes()).await?;
    tls.shutdown().await
}
