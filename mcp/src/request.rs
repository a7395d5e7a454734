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

/// How long one request may take, tunnel included.
const TIMEOUT: Duration = Duration::from_secs(30);

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
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
        .ok_or_else(|| {
            "the url must start with https:// (the broker only forwards HTTPS)".to_owned()
        })?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err("the url must not contain user information (user@host)".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| "the url's IPv6 host has no closing ]".to_owned())?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("the url's host is malformed".into()),
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("the url has no host".into());
    }
    let port = match port {
        None => 443,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("the url's port {p:?} is not a number from 1 to 65535"))?,
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
    pub fn new(addr: String, agent: &str, token: &str, ca_pem: &[u8]) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            let c = c.map_err(|e| format!("the vault's CA certificate is malformed: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("the vault's CA certificate is unusable: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
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
) -> Result<Response, String> {
    tokio::time::timeout(
        TIMEOUT,
        send_inner(broker, target, method, headers, body, max_body),
    )
    .await
    .map_err(|_| format!("the request took longer than {}s", TIMEOUT.as_secs()))?
}

async fn send_inner(
    broker: &Broker,
    target: &Target,
    method: &str,
    headers: &BTreeMap<String, String>,
    body: Option<String>,
    max_body: usize,
) -> Result<Response, String> {
    let method = hyper::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let mut tcp = TcpStream::connect(&broker.addr).await.map_err(|e| {
        format!(
            "cannot reach the broker at {}: {e}; is `agent-vault proxy` running there?",
            broker.addr
        )
    })?;
    let _ = tcp.set_nodelay(true);
    let authority = target.authority();
    let connect = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\n",
        broker.proxy_auth
    );
    tcp.write_all(connect.as_bytes())
        .await
        .map_err(|e| format!("the broker closed the connection: {e}"))?;
    let (status, reason, rest) = read_connect_response(&mut tcp).await?;
    if !(200..300).contains(&status) {
        let detail = String::from_utf8_lossy(&rest);
        let detail = detail.trim();
        return Err(format!(
            "the broker refused the tunnel to {authority}: {status} {reason}{}{}",
            if detail.is_empty() { "" } else { ": " },
            detail.chars().take(500).collect::<String>()
        ));
    }
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| format!("{:?} is not a valid host name", target.host))?;
    let tls = tokio_rustls::TlsConnector::from(broker.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with the broker failed: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP with the broker failed: {e}"))?;
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
        .map_err(|e| format!("the request is malformed: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("the request through the broker failed: {e}"))?;
    let status = resp.status().as_u16();
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
        let frame = frame.map_err(|e| format!("reading the response failed: {e}"))?;
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
async fn read_connect_response(tcp: &mut TcpStream) -> Result<(u16, String, Vec<u8>), String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err("the broker's answer to CONNECT is too long".into());
        }
        let n = tcp
            .read(&mut byte)
            .await
            .map_err(|e| format!("reading the broker's answer failed: {e}"))?;
        if n == 0 {
            return Err("the broker closed the connection before answering CONNECT".into());
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
        .ok_or_else(|| format!("the broker's answer is not HTTP: {status_line:?}"))?;
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
