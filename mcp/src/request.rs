//! `agent_vault_request`: an HTTPS request sent through the broker. This
//! process opens a `CONNECT` tunnel to the broker with the agent's token,
//! speaks TLS to the broker (which terminates it with the vault's CA) and
//! sends one HTTP/1.1 request. The broker injects the credential and fills
//! placeholders; values never pass through this process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use agent_vault_core::broker::decide::{ERROR_HEADER, PROBLEM_TYPE_BASE};

/// How long one request may take, tunnel included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a URL is not one `agent_vault_request` sends; each message is one a
/// model can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// Not `https://`.
    NotHttps,
    /// `user@host`.
    UserInfo,
    /// `[` without `]`.
    UnclosedIpv6,
    /// Something after an IPv6 host other than a port.
    MalformedHost,
    /// No host at all.
    NoHost,
    /// A port that is not a number from 1 to 65535.
    Port(String),
}

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlError::NotHttps => {
                f.write_str("the url must start with https:// (the broker only forwards HTTPS)")
            }
            UrlError::UserInfo => {
                f.write_str("the url must not contain user information (user@host)")
            }
            UrlError::UnclosedIpv6 => f.write_str("the url's IPv6 host has no closing ]"),
            UrlError::MalformedHost => f.write_str("the url's host is malformed"),
            UrlError::NoHost => f.write_str("the url has no host"),
            UrlError::Port(p) => write!(f, "the url's port {p:?} is not a number from 1 to 65535"),
        }
    }
}

impl std::error::Error for UrlError {}

/// Why a request through the broker failed, or got no answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum RequestError {
    /// The vault's CA certificate is not PEM.
    CaMalformed(rustls_pki_types::pem::Error),
    /// rustls refused the vault's CA certificate.
    CaUnusable(rustls::Error),
    /// The TLS configuration could not be built.
    Tls(rustls::Error),
    /// The request took longer than this.
    Timeout(Duration),
    /// Not an HTTP method.
    Method(String),
    /// No TCP connection to the broker.
    Unreachable {
        /// The broker's address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The broker closed the connection while the `CONNECT` was sent.
    Closed(std::io::Error),
    /// The broker's answer to `CONNECT` was over 16 KiB.
    ConnectTooLong,
    /// The broker's answer to `CONNECT` could not be read.
    ConnectRead(std::io::Error),
    /// The broker closed the connection before it answered `CONNECT`.
    ConnectClosed,
    /// The broker's answer to `CONNECT` is not HTTP.
    NotHttp(String),
    /// The broker refused the tunnel.
    Refused {
        /// `host:port` asked for.
        authority: String,
        /// The broker's status.
        status: u16,
        /// Its reason phrase.
        reason: String,
        /// The start of its explanation (at most 500 characters).
        detail: String,
        /// Its problem+json body, read.
        problem: Option<Box<Problem>>,
    },
    /// The broker answered a request in the tunnel itself (refused it, or
    /// the upstream failed): its `agent-vault-error` header was set.
    Broker {
        /// The status.
        status: u16,
        /// Its problem+json body, read (or what could be read of it).
        problem: Box<Problem>,
    },
    /// The URL's host is not a valid TLS server name.
    HostName(String),
    /// The TLS handshake with the broker failed.
    Handshake(std::io::Error),
    /// HTTP with the broker could not start.
    Http(hyper::Error),
    /// The request could not be built.
    Malformed(hyper::http::Error),
    /// The request failed on its way through the broker.
    Send(hyper::Error),
    /// The response's body could not be read.
    Body(hyper::Error),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::CaMalformed(e) => {
                write!(f, "the vault's CA certificate is malformed: {e}")
            }
            RequestError::CaUnusable(e) => write!(f, "the vault's CA certificate is unusable: {e}"),
            RequestError::Tls(e) => write!(f, "TLS: {e}"),
            RequestError::Timeout(d) => {
                write!(f, "the request took longer than {}s", d.as_secs())
            }
            RequestError::Method(m) => write!(f, "{m:?} is not an HTTP method"),
            RequestError::Unreachable { addr, source } => write!(
                f,
                "cannot reach the broker at {addr}: {source}; is `agent-vault proxy` running there?"
            ),
            RequestError::Closed(e) => write!(f, "the broker closed the connection: {e}"),
            RequestError::ConnectTooLong => {
                f.write_str("the broker's answer to CONNECT is too long")
            }
            RequestError::ConnectRead(e) => write!(f, "reading the broker's answer failed: {e}"),
            RequestError::ConnectClosed => {
                f.write_str("the broker closed the connection before answering CONNECT")
            }
            RequestError::NotHttp(line) => write!(f, "the broker's answer is not HTTP: {line:?}"),
            RequestError::Refused {
                authority,
                status,
                problem: Some(p),
                ..
            } => write!(
                f,
                "the broker refused the tunnel to {authority} ({status}): {p}"
            ),
            RequestError::Refused {
                authority,
                status,
                reason,
                detail,
                problem: None,
            } => write!(
                f,
                "the broker refused the tunnel to {authority}: {status} {reason}{}{detail}",
                if detail.is_empty() { "" } else { ": " },
            ),
            RequestError::Broker { status, problem } => {
                write!(f, "the broker refused the request ({status}): {problem}")
            }
            RequestError::HostName(h) => write!(f, "{h:?} is not a valid host name"),
            RequestError::Handshake(e) => write!(f, "TLS with the broker failed: {e}"),
            RequestError::Http(e) => write!(f, "HTTP with the broker failed: {e}"),
            RequestError::Malformed(e) => write!(f, "the request is malformed: {e}"),
            RequestError::Send(e) => write!(f, "the request through the broker failed: {e}"),
            RequestError::Body(e) => write!(f, "reading the response failed: {e}"),
        }
    }
}

impl std::error::Error for RequestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RequestError::CaMalformed(e) => Some(e),
            RequestError::CaUnusable(e) | RequestError::Tls(e) => Some(e),
            RequestError::Unreachable { source: e, .. }
            | RequestError::Closed(e)
            | RequestError::ConnectRead(e)
            | RequestError::Handshake(e) => Some(e),
            RequestError::Http(e) | RequestError::Send(e) | RequestError::Body(e) => Some(e),
            RequestError::Malformed(e) => Some(e),
            RequestError::Timeout(_)
            | RequestError::Method(_)
            | RequestError::ConnectTooLong
            | RequestError::ConnectClosed
            | RequestError::NotHttp(_)
            | RequestError::Refused { .. }
            | RequestError::Broker { .. }
            | RequestError::HostName(_) => None,
        }
    }
}

/// A broker's problem+json answer (RFC 9457): type, title, what to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[non_exhaustive]
pub struct Problem {
    /// The problem type (`urn:agent-vault:problem:host-not-covered`).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The title.
    #[serde(default)]
    pub title: String,
    /// What happened and what to do.
    #[serde(default)]
    pub detail: String,
}

impl Problem {
    /// The problem+json in a body; else its text, with the header's type.
    pub fn read(body: &[u8], reason: Option<&str>) -> Option<Problem> {
        if let Ok(p) = serde_json::from_slice::<Problem>(body)
            && !p.kind.is_empty()
        {
            return Some(p);
        }
        let reason = reason?;
        let text = String::from_utf8_lossy(body);
        Some(Problem {
            kind: format!("{PROBLEM_TYPE_BASE}{reason}"),
            title: String::new(),
            detail: text.trim().chars().take(500).collect(),
        })
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\ntype: {}", self.detail, self.kind)?;
        if !self.title.is_empty() {
            write!(f, "\ntitle: {}", self.title)?;
        }
        Ok(())
    }
}

/// A parsed `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host (IPv6 without brackets).
    pub host: String,
    /// The port (443 unless given).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path_and_query: String,
}

impl Target {
    /// `host:port` as `CONNECT` and `Host` name it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses an `https://` URL; a message a model can act on if it is not one.
pub fn parse_url(url: &str) -> Result<Target, UrlError> {
    let rest = url
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
        .ok_or(UrlError::NotHttps)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(UrlError::UnclosedIpv6)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlError::MalformedHost),
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let port = match port {
        None => 443,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| UrlError::Port(p.to_owned()))?,
    };
    let tail = tail.split('#').next().unwrap_or("");
    let path_and_query = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok(Target {
        host: host.to_ascii_lowercase(),
        port,
        path_and_query,
    })
}

/// Appends query parameters, percent-encoding them but leaving
/// `{{secret:GROUP/NAME}}` placeholders as they are for the broker.
pub fn add_query(path_and_query: &mut String, query: &BTreeMap<String, String>) {
    for (k, v) in query {
        path_and_query.push(if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        });
        encode_keeping_placeholders(path_and_query, k);
        path_and_query.push('=');
        encode_keeping_placeholders(path_and_query, v);
    }
}

fn encode_keeping_placeholders(out: &mut String, s: &str) {
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(start) = rest.find("{{secret:") {
            let (before, from) = rest.split_at(start);
            encode(out, before);
            match from.find("}}") {
                Some(end) => {
                    out.push_str(&from[..end + 2]);
                    rest = &from[end + 2..];
                }
                None => {
                    encode(out, from);
                    rest = "";
                }
            }
        } else {
            encode(out, rest);
            rest = "";
        }
    }
}

fn encode(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// What the tunnel and the broker need.
pub struct Broker {
    /// The broker's address, `HOST:PORT`.
    pub addr: String,
    /// `Basic base64(AGENT:TOKEN)`.
    pub proxy_auth: String,
    /// TLS trusting the vault's CA.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Broker {
    /// A broker client for `agent` with `token`, trusting `ca_pem`.
    pub fn new(
        addr: String,
        agent: &str,
        token: &str,
        ca_pem: &[u8],
    ) -> Result<Self, RequestError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            let c = c.map_err(RequestError::CaMalformed)?;
            roots.add(c).map_err(RequestError::CaUnusable)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(RequestError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{agent}:{token}"));
        Ok(Broker {
            addr,
            proxy_auth: format!("Basic {creds}"),
            tls: Arc::new(tls),
        })
    }
}

/// The response as the tool returns it.
#[derive(Debug, serde::Serialize)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Headers (repeated ones joined with ", ").
    pub headers: BTreeMap<String, String>,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    /// Whether the body was cut at the size limit.
    pub truncated: bool,
    /// The body's size as received (up to the limit plus one chunk).
    pub body_bytes: usize,
}

/// Sends one request through the broker.
pub async fn send(
    broker: &Broker,
    target: &Target,
    method: &str,
    headers: &BTreeMap<String, String>,
    body: Option<String>,
    max_body: usize,
) -> Result<Response, RequestError> {
    tokio::time::timeout(
        TIMEOUT,
        send_inner(broker, target, method, headers, body, max_body),
    )
    .await
    .map_err(|_| RequestError::Timeout(TIMEOUT))?
}

async fn send_inner(
    broker: &Broker,
    target: &Target,
    method: &str,
    headers: &BTreeMap<String, String>,
    body: Option<String>,
    max_body: usize,
) -> Result<Response, RequestError> {
    let method = hyper::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| RequestError::Method(method.to_owned()))?;
    let mut tcp =
        TcpStream::connect(&broker.addr)
            .await
            .map_err(|source| RequestError::Unreachable {
                addr: broker.addr.clone(),
                source,
            })?;
    let _ = tcp.set_nodelay(true);
    let authority = target.authority();
    let connect = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\n",
        broker.proxy_auth
    );
    tcp.write_all(connect.as_bytes())
        .await
        .map_err(RequestError::Closed)?;
    let (status, reason, rest) = read_connect_response(&mut tcp).await?;
    if !(200..300).contains(&status) {
        let problem = Problem::read(&rest, None).map(Box::new);
        let detail = String::from_utf8_lossy(&rest);
        let detail = detail.trim();
        return Err(RequestError::Refused {
            authority,
            status,
            reason,
            detail: detail.chars().take(500).collect(),
            problem,
        });
    }
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| RequestError::HostName(target.host.clone()))?;
    let tls = tokio_rustls::TlsConnector::from(broker.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(RequestError::Handshake)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(RequestError::Http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(target.path_and_query.as_str());
    let mut has_host = false;
    for (k, v) in headers {
        has_host |= k.eq_ignore_ascii_case("host");
        req = req.header(k.as_str(), v.as_str());
    }
    if !has_host {
        req = req.header(hyper::header::HOST, authority.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(RequestError::Malformed)?;
    let resp = sender.send_request(req).await.map_err(RequestError::Send)?;
    let status = resp.status().as_u16();
    // The broker's own answer (the upstream's never carries the header).
    if let Some(reason) = resp.headers().get(ERROR_HEADER) {
        let reason = String::from_utf8_lossy(reason.as_bytes()).into_owned();
        let body = http_body_util::Limited::new(resp.into_body(), 16 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let problem = Box::new(Problem::read(&body, Some(&reason)).unwrap_or_default());
        return Err(RequestError::Broker { status, problem });
    }
    let mut out_headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in resp.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        out_headers
            .entry(k.as_str().to_owned())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(RequestError::Body)?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > max_body {
                truncated = true;
                break;
            }
        }
    }
    let body_bytes = buf.len();
    buf.truncate(max_body);
    Ok(Response {
        status,
        headers: out_headers,
        body: String::from_utf8_lossy(&buf).into_owned(),
        truncated,
        body_bytes,
    })
}

/// Reads the broker's answer to `CONNECT`: status, reason, and the body of
/// a refusal (what fits in 4 KiB).
async fn read_connect_response(
    tcp: &mut TcpStream,
) -> Result<(u16, String, Vec<u8>), RequestError> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(RequestError::ConnectTooLong);
        }
        let n = tcp
            .read(&mut byte)
            .await
            .map_err(RequestError::ConnectRead)?;
        if n == 0 {
            return Err(RequestError::ConnectClosed);
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RequestError::NotHttp(status_line.to_owned()))?;
    let reason = parts.next().unwrap_or("").to_owned();
    let mut rest = Vec::new();
    if !(200..300).contains(&status) {
        let len = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(4096);
        rest.resize(len, 0);
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_exact(&mut rest)).await;
    }
    Ok((status, reason, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("https://API.example.com/v1/x?a=1#frag").unwrap();
        assert_eq!(t.host, "api.example.com");
        assert_eq!(t.port, 443);
        assert_eq!(t.path_and_query, "/v1/x?a=1");
        let t = parse_url("https://127.0.0.1:8443").unwrap();
        assert_eq!((t.port, t.path_and_query.as_str()), (8443, "/"));
        let t = parse_url("https://[::1]:9/p").unwrap();
        assert_eq!(t.authority(), "[::1]:9");
        assert!(parse_url("http://example.com/").is_err());
        assert!(parse_url("https://u:p@example.com/").is_err());
        assert!(parse_url("https://example.com:99999/").is_err());
        assert!(parse_url("https:///x").is_err());
    }

    #[test]
    fn url_errors_say_what_is_wrong() {
        assert_eq!(parse_url("http://example.com/"), Err(UrlError::NotHttps));
        assert_eq!(parse_url("https://u@example.com/"), Err(UrlError::UserInfo));
        assert_eq!(parse_url("https://[::1/"), Err(UrlError::UnclosedIpv6));
        assert_eq!(parse_url("https://[::1]x/"), Err(UrlError::MalformedHost));
        assert_eq!(parse_url("https:///x"), Err(UrlError::NoHost));
        let port = parse_url("https://example.com:0/").unwrap_err();
        assert_eq!(port, UrlError::Port("0".into()));
        assert_eq!(
            port.to_string(),
            "the url's port \"0\" is not a number from 1 to 65535"
        );
        assert_eq!(
            UrlError::NotHttps.to_string(),
            "the url must start with https:// (the broker only forwards HTTPS)"
        );
    }

    #[test]
    fn a_problem_is_read_from_its_body_or_its_header() {
        let body = br#"{"type":"urn:agent-vault:problem:method-not-allowed","title":"Method not allowed by the service","status":403,"detail":"no service allows PUT"}"#;
        let p = Problem::read(body, Some("method-not-allowed")).unwrap();
        assert_eq!(p.kind, "urn:agent-vault:problem:method-not-allowed");
        assert_eq!(
            p.to_string(),
            "no service allows PUT\ntype: urn:agent-vault:problem:method-not-allowed\ntitle: Method not allowed by the service"
        );
        // Text, with the header: the header's type and the text.
        let p = Problem::read(b"agent-vault: no\n", Some("token-missing")).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.detail.as_str()),
            ("urn:agent-vault:problem:token-missing", "agent-vault: no")
        );
        assert_eq!(Problem::read(b"<html>", None), None);
    }

    #[test]
    fn query_keeps_placeholders() {
        let mut pq = "/x?a=1".to_owned();
        let q = BTreeMap::from([
            ("k".to_owned(), "a b&{{secret:g/n}}!".to_owned()),
            ("z".to_owned(), "{{secret:unclosed".to_owned()),
        ]);
        add_query(&mut pq, &q);
        assert_eq!(
            pq,
            "/x?a=1&k=a%20b%26{{secret:g/n}}%21&z=%7B%7Bsecret%3Aunclosed"
        );
    }
}
