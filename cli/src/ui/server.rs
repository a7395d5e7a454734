//! The HTTP side: one hyper 1 HTTP/1.1 server on a loopback listener, the
//! checks every request passes (Host header, session, CSRF on POST), the
//! security headers every answer carries, and a router small enough to read
//! at a glance. Pages are in `pages.rs`; this file knows no proposal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::form::{Form, FormError, read_body};
use super::html;
use super::pages;
use super::session::{self, Authed, Sessions};
use super::store::Owner;

/// The Content-Security-Policy of every answer: nothing from elsewhere, no
/// inline script or style, no framing, forms post only here.
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A page answer.
pub(crate) type Answer = Response<Full<Bytes>>;

/// The server's state, shared by every connection.
pub(crate) struct App {
    /// The address served (for the Host check and the links).
    pub(crate) addr: SocketAddr,
    /// Login token and sessions.
    pub(crate) sessions: Sessions,
    /// How the vault is opened for each action.
    pub(crate) owner: Arc<Owner>,
    /// The broker's audit log, when given.
    pub(crate) audit: Option<std::path::PathBuf>,
    /// OAuth connections under way.
    pub(crate) connect: super::connect::Connect,
}

impl App {
    /// The page's base URL (`http://127.0.0.1:PORT`).
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Host header values accepted: the address itself and
    /// `localhost:PORT` (port omitted when it is 80).
    fn host_ok(&self, host: &str) -> bool {
        let port = self.addr.port();
        let ip = self.addr.ip();
        let own = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let with_port = |h: &str| format!("{h}:{port}");
        host == with_port(&own)
            || host == with_port("localhost")
            || (port == 80 && (host == own || host == "localhost"))
    }
}

/// Serves until the process ends.
pub(crate) async fn serve(app: Arc<App>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                crate::output::note(format!("ui: accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One request: checks, route, headers. Logs the method, path and status
/// only (never a query, a header or a body).
async fn handle(app: &App, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut answer = route(app, req).await;
    secure(&mut answer);
    crate::output::note(format!(
        "ui: {method} {} {}",
        path.chars().take(200).collect::<String>(),
        answer.status().as_u16()
    ));
    answer
}

/// The headers every answer carries.
fn secure(a: &mut Answer) {
    let h = a.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

async fn route(app: &App, req: Request<Incoming>) -> Answer {
    // DNS rebinding: a page of another site that resolves its name to
    // 127.0.0.1 still sends its own name as Host.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !app.host_ok(host) {
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this page answers only to 127.0.0.1 or localhost with its port\n",
        );
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/static/style.css") => {
            return respond(StatusCode::OK, "text/css; charset=utf-8", html::CSS.into());
        }
        (&Method::GET, "/login") => return login(app, req.uri().query()),
        // Authenticated by its one-time `state`, not the cookie (which a
        // browser coming back from the provider does not send).
        (&Method::GET, "/oauth/callback") => {
            return super::connect::callback(app, req.uri().query()).await;
        }
        _ => {}
    }
    let cookie = req
        .headers()
        .get(header::COOKIE)
        .and_then(|h| h.to_str().ok());
    let Some(authed) = app.sessions.check(cookie) else {
        return pages::login_needed();
    };
    if method == Method::POST {
        // A cross-origin form post that names another origin is refused
        // before the body is read (the CSRF token is checked after).
        // Browsers send `Origin: null` under `Referrer-Policy: no-referrer`:
        // that says nothing, and the CSRF token decides.
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let ok = origin.as_bytes() == b"null"
                || origin
                    .to_str()
                    .ok()
                    .and_then(|o| o.strip_prefix("http://"))
                    .is_some_and(|h| app.host_ok(h));
            if !ok {
                return pages::refused("The request came from another site.");
            }
        }
        let body = match read_body(req.into_body()).await {
            Ok(b) => b,
            Err(FormError::TooLarge) => {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n");
            }
            Err(FormError::Read) => return plain(StatusCode::BAD_REQUEST, "cannot read form\n"),
        };
        let form = Form::parse(&body);
        drop(body);
        if !authed.csrf_ok(form.get("csrf")) {
            return pages::refused(
                "The form's security token is missing or stale. Open the page again and retry.",
            );
        }
        return post(app, &authed, &path, form).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path.as_str() {
        "/" => pages::list(app, &authed).await,
        "/audit" => pages::audit(app, &authed).await,
        "/oauth" => {
            let path = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("path="))
                    .map(|p| {
                        percent_encoding::percent_decode_str(p)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
            });
            super::connect::form(app, &authed, path.as_deref(), None)
        }
        p => match p.strip_prefix("/p/") {
            Some(id) => pages::proposal(app, &authed, id, None).await,
            None => pages::not_found(&authed),
        },
    }
}

/// `POST` routes, the CSRF token already checked.
async fn post(app: &App, authed: &Authed, path: &str, form: Form) -> Answer {
    if path == "/logout" {
        app.sessions.end(&authed.cookie);
        let mut a = redirect("/");
        if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
            a.headers_mut().insert(header::SET_COOKIE, v);
        }
        return a;
    }
    if path == "/sync" {
        return pages::sync(app, authed).await;
    }
    if path == "/oauth/start" {
        return super::connect::start(app, authed, form);
    }
    let Some(rest) = path.strip_prefix("/p/") else {
        return pages::not_found(authed);
    };
    match rest.rsplit_once('/') {
        Some((id, "approve")) => pages::approve(app, authed, id, form).await,
        Some((id, "deny")) => pages::deny(app, authed, id, form).await,
        _ => pages::not_found(authed),
    }
}

/// `GET /login?t=TOKEN`: the one-time token opens a session.
fn login(app: &App, query: Option<&str>) -> Answer {
    let token = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("t="));
    let Some(cookie) = token.and_then(|t| app.sessions.login(t)) else {
        return pages::login_failed();
    };
    let mut a = redirect("/");
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&cookie)) {
        a.headers_mut().insert(header::SET_COOKIE, v);
    }
    a
}

/// An answer with a body.
pub(crate) fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Answer {
    let mut a = Response::new(Full::new(body));
    *a.status_mut() = status;
    a.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    a
}

/// An HTML page.
pub(crate) fn html_page(status: StatusCode, page: String) -> Answer {
    respond(status, "text/html; charset=utf-8", page.into())
}

/// A plain-text answer.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Answer {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

/// `303 See Other` to a path of ours.
pub(crate) fn redirect(to: &str) -> Answer {
    let mut a = Response::new(Full::new(Bytes::new()));
    *a.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        a.headers_mut().insert(header::LOCATION, v);
    }
    a
}
