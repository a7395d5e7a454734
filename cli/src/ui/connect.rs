//! Connecting an OAuth credential from the owner's page: Authorization
//! Code with PKCE (RFC 7636, S256) through a loopback redirect to this page
//! (RFC 8252 §7.3).
//!
//! `GET /oauth` shows the form (a provider preset fills in the endpoints);
//! `POST /oauth/start` (CSRF-checked like every form) keeps the flow in
//! memory under a fresh `state` and sends the browser to the provider;
//! `GET /oauth/callback` takes the code back. The session cookie is
//! `SameSite=Strict`, so a browser coming back from the provider does not
//! send it: the callback is authenticated by its `state` instead, 256
//! random bits that only this page's flow knows, usable once and for ten
//! minutes. The code is exchanged with the verifier and the tokens go
//! straight into the vault, owner-signed; none is ever shown or logged.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_vault_core::SecretPath;
use agent_vault_core::broker::oauth::{Client, OAuthCredential, PRESETS, preset};
use agent_vault_core::writer::{SetOptions, Writer};
use agent_vault_proxy::oauth::TokenClient;
use base64::Engine;
use hyper::StatusCode;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Digest;
use zeroize::Zeroizing;

use super::form::Form;
use super::html::{self, esc};
use super::server::{Answer, App, html_page};
use super::session::{Authed, random_token};

/// A flow not finished in this time is forgotten.
const FLOW_LIFETIME: Duration = Duration::from_secs(600);

/// At most this many flows wait at once.
const MAX_FLOWS: usize = 16;

/// Query components: everything but the unreserved set is encoded.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A flow between `/oauth/start` and `/oauth/callback`.
struct Flow {
    path: SecretPath,
    client: Client,
    verifier: Zeroizing<String>,
    description: Option<String>,
    started: Instant,
}

/// The flows under way, by `state`, and the client that reaches token
/// endpoints (the broker's, with `ui --upstream-ca`).
pub(crate) struct Connect {
    flows: Mutex<HashMap<String, Flow>>,
    tokens: Arc<TokenClient>,
}

impl Connect {
    pub(crate) fn new(tokens: TokenClient) -> Self {
        Connect {
            flows: Mutex::new(HashMap::new()),
            tokens: Arc::new(tokens),
        }
    }
}

/// The page's redirect URI.
fn redirect_uri(app: &App) -> String {
    format!("{}/oauth/callback", app.base())
}

/// `GET /oauth`: the form. `path` prefills the credential's name (from an
/// approved proposal's slot).
pub(crate) fn form(app: &App, authed: &Authed, path: Option<&str>, error: Option<&str>) -> Answer {
    let mut b = String::from("<h1>Connect an OAuth credential</h1>");
    if let Some(e) = error {
        let _ = write!(b, "<p class=\"error\" role=\"alert\">{}</p>", html::text(e));
    }
    let options: String = PRESETS
        .iter()
        .map(|p| format!("<option value=\"{0}\">{0}</option>", p.name))
        .collect();
    let _ = write!(
        b,
        "<p>Your browser goes to the provider to sign in and approve; it comes back here, \
         and the tokens go straight into the vault. Register <code>{redirect}</code> as the \
         client's redirect URI.</p>\
         <form method=\"post\" action=\"/oauth/start\" class=\"connect\" autocomplete=\"off\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Credential (GROUP/NAME) <input name=\"path\" required value=\"{path}\"></label>\
         <label>Provider <select name=\"provider\"><option value=\"\">other (give the URLs)</option>{options}</select></label>\
         <label>Client id <input name=\"client_id\" required></label>\
         <label>Client secret <input name=\"client_secret\" type=\"password\" autocomplete=\"off\"></label>\
         <label>Authorization URL <input name=\"authorization_url\" placeholder=\"from the preset\"></label>\
         <label>Token URL <input name=\"token_url\" placeholder=\"from the preset\"></label>\
         <label>Scopes (space-separated) <input name=\"scopes\"></label>\
         <label>Description <input name=\"description\"></label>\
         <button type=\"submit\">Connect</button></form>",
        redirect = esc(&redirect_uri(app)),
        csrf = esc(&authed.csrf),
        path = esc(path.unwrap_or("")),
    );
    html_page(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        html::page("Connect", Some(&authed.csrf), authed.flash.as_deref(), &b),
    )
}

fn field(form: &Form, name: &str) -> String {
    form.get(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The client the form describes, with the preset's URLs where none given.
fn client_of(form: &mut Form) -> Result<(SecretPath, Client), String> {
    let path: SecretPath = field(form, "path").parse().map_err(|e| format!("{e}"))?;
    let preset = match field(form, "provider").as_str() {
        "" => None,
        p => Some(preset(p).map_err(|e| e.to_string())?),
    };
    let or_preset = |given: String, from: Option<&'static str>| {
        if given.is_empty() {
            from.map(str::to_owned)
        } else {
            Some(given)
        }
    };
    let authorization_url = or_preset(
        field(form, "authorization_url"),
        preset.map(|p| p.authorization_url),
    )
    .ok_or("give an authorization URL, or choose a provider")?;
    let token_url = or_preset(field(form, "token_url"), preset.map(|p| p.token_url))
        .ok_or("give a token URL, or choose a provider")?;
    let secret = form.take("client_secret").unwrap_or_default();
    let client_secret = std::str::from_utf8(&secret)
        .map_err(|_| "the client secret is not text")?
        .trim()
        .to_owned();
    let client = Client {
        client_id: field(form, "client_id"),
        client_secret,
        token_url,
        authorization_url: Some(authorization_url),
        scopes: field(form, "scopes")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    };
    // The same checks as a stored credential's, before the browser leaves.
    OAuthCredential::new(&client, "-".into(), None, None).map_err(|e| e.to_string())?;
    Ok((path, client))
}

/// `POST /oauth/start`: a flow under a fresh `state`, and the browser sent
/// to the provider's authorization endpoint.
pub(crate) fn start(app: &App, authed: &Authed, mut form: Form) -> Answer {
    let (path, client) = match client_of(&mut form) {
        Ok(c) => c,
        Err(e) => return self::form(app, authed, None, Some(&e)),
    };
    let (Ok(state), Ok(verifier)) = (random_token(), random_token()) else {
        return self::form(app, authed, None, Some("no randomness for the flow"));
    };
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let auth = client.authorization_url.clone().unwrap_or_default();
    let mut url = format!(
        "{auth}{}response_type=code&client_id={}&redirect_uri={}&state={}&code_challenge={challenge}&code_challenge_method=S256",
        if auth.contains('?') { '&' } else { '?' },
        utf8_percent_encode(&client.client_id, QUERY),
        utf8_percent_encode(&redirect_uri(app), QUERY),
        state.as_str(),
    );
    if !client.scopes.is_empty() {
        let _ = write!(
            url,
            "&scope={}",
            utf8_percent_encode(&client.scopes.join(" "), QUERY)
        );
    }
    let description = Some(field(&form, "description")).filter(|d| !d.is_empty());
    let Ok(mut flows) = app.connect.flows.lock() else {
        return self::form(
            app,
            authed,
            None,
            Some("the page's state is unusable; restart it"),
        );
    };
    flows.retain(|_, f| f.started.elapsed() < FLOW_LIFETIME);
    if flows.len() >= MAX_FLOWS {
        return self::form(
            app,
            authed,
            None,
            Some("too many connections under way; finish one"),
        );
    }
    flows.insert(
        state.to_string(),
        Flow {
            path,
            client,
            verifier,
            description,
            started: Instant::now(),
        },
    );
    // A page with a link rather than a redirect: the page's CSP allows
    // forms to post only here (`form-action 'self'`, which covers a
    // redirect after the post), and the owner sees which host the browser
    // is sent to before it goes.
    let host = auth
        .strip_prefix("https://")
        .and_then(|r| r.split(['/', '?', '#']).next())
        .unwrap_or("");
    html_page(
        StatusCode::OK,
        html::page(
            "Continue at the provider",
            Some(&authed.csrf),
            None,
            &format!(
                "<h1>Continue at the provider</h1><p>Sign in at <code>{}</code> and approve; \
                 the browser then comes back here.</p>\
                 <p><a id=\"continue\" class=\"button\" href=\"{}\">Continue to {}</a></p>",
                esc(host),
                esc(&url),
                esc(host)
            ),
        ),
    )
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn done(status: StatusCode, title: &str, html_paragraph: &str) -> Answer {
    html_page(status, html::notice(title, html_paragraph, None))
}

/// `GET /oauth/callback?code=…&state=…`: the flow that `state` names (once),
/// the code exchanged with its verifier, the credential stored.
pub(crate) async fn callback(app: &App, query: Option<&str>) -> Answer {
    let query = query.unwrap_or("");
    let state = query_param(query, "state").unwrap_or_default();
    let flow = app.connect.flows.lock().ok().and_then(|mut flows| {
        flows.retain(|_, f| f.started.elapsed() < FLOW_LIFETIME);
        // Compared by the map's lookup: the state is 256 random bits, so a
        // timing difference tells nothing usable.
        flows.remove(&state)
    });
    let Some(flow) = flow else {
        return done(
            StatusCode::FORBIDDEN,
            "Connection refused",
            "This answer does not belong to a connection started on this page (its \
             <code>state</code> is unknown, used or expired). Start again from the page.",
        );
    };
    if let Some(e) = query_param(query, "error") {
        let e: String = e
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        return done(
            StatusCode::BAD_REQUEST,
            "Not connected",
            &format!(
                "The provider did not grant access (<code>{}</code>). Nothing was stored.",
                esc(&e)
            ),
        );
    }
    let code = Zeroizing::new(query_param(query, "code").unwrap_or_default());
    let granted = app
        .connect
        .tokens
        .exchange_code(&flow.client, &code, &redirect_uri(app), &flow.verifier)
        .await;
    let granted = match granted {
        Ok(g) => g,
        Err(e) => {
            return done(
                StatusCode::BAD_GATEWAY,
                "Not connected",
                &format!("{}. Nothing was stored.", esc(&e.to_string())),
            );
        }
    };
    let Some(refresh) = granted.refresh_token.clone() else {
        return done(
            StatusCode::BAD_GATEWAY,
            "Not connected",
            "The provider gave no refresh token, so the broker could not renew the access \
             token. Ask for offline access (Google: <code>access_type=offline</code> in the \
             authorization URL) or enable token expiry for the app, then connect again.",
        );
    };
    let cred = match OAuthCredential::new(
        &flow.client,
        refresh,
        Some(granted.access_token.clone()),
        granted.expires_at,
    ) {
        Ok(c) => c,
        Err(e) => {
            return done(
                StatusCode::BAD_REQUEST,
                "Not connected",
                &esc(&e.to_string()),
            );
        }
    };
    let path = flow.path.clone();
    let opts = SetOptions {
        expires: None,
        description: flow.description.clone(),
    };
    let stored = super::pages::blocking(&app.owner, move |owner| {
        let vault = owner.vault()?;
        let value = cred.to_value().map_err(super::store::err)?;
        Writer::open(&vault, &owner.key)
            .and_then(|mut w| w.set(&path, &value, &opts))
            .map_err(super::store::err)
    })
    .await;
    match stored {
        Ok(()) => done(
            StatusCode::OK,
            "Connected",
            &format!(
                "<code>{}</code> is stored in the vault; the broker refreshes its access token \
                 itself. <a href=\"/\">Back to the page</a>.",
                esc(&flow.path.to_string())
            ),
        ),
        Err(e) => done(StatusCode::INTERNAL_SERVER_ERROR, "Not stored", &esc(&e)),
    }
}
