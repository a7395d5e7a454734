//! The webhook: a Slack-compatible `{"text": …}` POST for each new pending
//! proposal, naming the agent, the proposal and the first line of its
//! message, with the page's link (never the login token). Never a value: a
//! proposal's values are not even read here.
//!
//! Which proposals were notified is remembered in memory for the run: a
//! restarted `agent-vault ui` notifies the pending ones again, once. A
//! failed POST is retried at the next poll, three times at most.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::server::App;
use super::store::{self, Summary};

/// How often the pending list is read.
pub(crate) const POLL: Duration = Duration::from_secs(3);
/// Tries per proposal before it is given up.
const TRIES: u32 = 3;
/// Time for one POST, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where notifications go.
pub(crate) struct Webhook {
    uri: Uri,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Webhook {
    /// Checks the URL: `http://` or `https://` with a host. An `https://`
    /// URL is verified against the system's roots.
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| "the webhook is not a URL (http://… or https://…)".to_owned())?;
        if uri.host().is_none_or(str::is_empty) {
            return Err("the webhook URL has no host".into());
        }
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("cannot set up TLS for the webhook: {e}"))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(Arc::new(cfg))
            }
            _ => return Err("the webhook URL must start with http:// or https://".into()),
        };
        Ok(Webhook { uri, tls })
    }

    /// The URL without its path (a Slack webhook's path is its secret).
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}://{}/…",
            self.uri.scheme_str().unwrap_or("http"),
            self.uri.authority().map(|a| a.as_str()).unwrap_or("")
        )
    }

    /// POSTs one JSON body; the status, or why it failed (no URL path in it).
    async fn post(&self, body: Vec<u8>) -> Result<u16, String> {
        match tokio::time::timeout(TIMEOUT, self.send(body)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        }
    }

    async fn send(&self, body: Vec<u8>) -> Result<u16, String> {
        let host = self.uri.host().unwrap_or("").trim_matches(['[', ']']);
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = Request::post(path)
            .header(HOST, authority)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("agent-vault/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "cannot build the request".to_owned())?;
        match &self.tls {
            None => exchange(TokioIo::new(tcp), req).await,
            Some(cfg) => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|_| "the webhook's host is not a valid name".to_owned())?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS failed: {e}"))?;
                exchange(TokioIo::new(tls), req).await
            }
        }
    }
}

/// One HTTP/1.1 request on a fresh connection.
async fn exchange<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<u16, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP failed: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP failed: {e}"))?;
    Ok(resp.status().as_u16())
}

/// Slack's escaping of `&`, `<` and `>` (so an agent's message cannot make
/// a mention or a link), after control characters are made visible.
fn slack(s: &str) -> String {
    agent_vault_core::model::printable(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The JSON for one proposal.
pub(crate) fn message(p: &Summary, base: &str) -> Vec<u8> {
    let text = format!(
        "agent-vault: agent {agent} proposes {id}: {line}\nReview it at {base}/p/{id} (log in with the URL `agent-vault ui` printed).",
        agent = slack(&p.agent),
        id = slack(&p.id),
        line = slack(&p.first_line),
    );
    serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default()
}

/// Reads the pending list every [`POLL`] and notifies each new proposal once.
pub(crate) async fn watch(app: Arc<App>, hook: Webhook) {
    let mut done: HashSet<String> = HashSet::new();
    let mut tries: HashMap<String, u32> = HashMap::new();
    loop {
        let owner = app.owner.clone();
        let list = tokio::task::spawn_blocking(move || store::pending(&owner)).await;
        if let Ok(Ok(list)) = list {
            let fresh: Vec<&Summary> = list.iter().filter(|p| !done.contains(&p.id)).collect();
            for p in fresh {
                match hook.post(message(p, &app.base())).await {
                    Ok(status) if (200..300).contains(&status) => {
                        done.insert(p.id.clone());
                        crate::output::note(format!("ui: webhook told of proposal {}", p.id));
                    }
                    outcome => {
                        let why = match outcome {
                            Ok(status) => format!("answered {status}"),
                            Err(e) => e,
                        };
                        let n = tries.entry(p.id.clone()).or_default();
                        *n += 1;
                        let last = *n >= TRIES;
                        crate::output::note(format!(
                            "ui: webhook {} for proposal {}: {why}{}",
                            hook.describe(),
                            p.id,
                            if last {
                                "; giving up on it"
                            } else {
                                "; will retry"
                            }
                        ));
                        if last {
                            done.insert(p.id.clone());
                        }
                    }
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
