//! Who may use the page: the one-time login token printed in the terminal,
//! the sessions it opens (a random cookie each) and each session's CSRF
//! token. Every comparison of a secret token is constant-time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "agent_vault_session";

/// How long a session lives after its login, used or not.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// At most this many sessions at once (the oldest goes first). There is one
/// login token, so in practice there is one session.
const MAX_SESSIONS: usize = 4;

/// 32 random bytes, base64url without padding (43 characters).
pub(crate) fn random_token() -> std::io::Result<Zeroizing<String>> {
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(raw.as_mut()).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Zeroizing::new(URL_SAFE_NO_PAD.encode(&raw[..])))
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// One logged-in browser.
struct Session {
    cookie: Zeroizing<String>,
    csrf: Zeroizing<String>,
    since: Instant,
    /// A line to show on the next page (what the last action did).
    flash: Option<String>,
}

/// The login token and the sessions.
pub(crate) struct Sessions {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The one-time login token; `None` once used.
    login: Option<Zeroizing<String>>,
    sessions: Vec<Session>,
}

/// What a valid session cookie gives a request.
pub(crate) struct Authed {
    /// The session's cookie (to find it again for a flash message).
    pub(crate) cookie: Zeroizing<String>,
    /// The session's CSRF token, for the forms of the page.
    pub(crate) csrf: Zeroizing<String>,
    /// The flash message, taken (shown once).
    pub(crate) flash: Option<String>,
}

impl Sessions {
    /// A fresh login token, returned to be printed.
    pub(crate) fn new() -> std::io::Result<(Self, Zeroizing<String>)> {
        let login = random_token()?;
        let s = Sessions {
            inner: Mutex::new(Inner {
                login: Some(login.clone()),
                sessions: Vec::new(),
            }),
        };
        Ok((s, login))
    }

    /// Uses the login token: on a match (the first and only time), a new
    /// session whose cookie value is returned.
    pub(crate) fn login(&self, token: &str) -> Option<Zeroizing<String>> {
        let mut inner = self.inner.lock().ok()?;
        let ok = inner.login.as_ref().is_some_and(|t| same(t, token));
        if !ok {
            return None;
        }
        inner.login = None;
        let cookie = random_token().ok()?;
        let csrf = random_token().ok()?;
        if inner.sessions.len() >= MAX_SESSIONS {
            inner.sessions.remove(0);
        }
        inner.sessions.push(Session {
            cookie: cookie.clone(),
            csrf,
            since: Instant::now(),
            flash: None,
        });
        Some(cookie)
    }

    /// The session a `Cookie` header names, if it is live.
    pub(crate) fn check(&self, cookie_header: Option<&str>) -> Option<Authed> {
        let value = cookie_header.and_then(cookie_value)?;
        let mut inner = self.inner.lock().ok()?;
        inner
            .sessions
            .retain(|s| s.since.elapsed() < SESSION_LIFETIME);
        // Every session compared, so the time taken says nothing of which.
        let mut found = None;
        for (i, s) in inner.sessions.iter().enumerate() {
            if same(&s.cookie, value) {
                found = Some(i);
            }
        }
        let s = &mut inner.sessions[found?];
        Some(Authed {
            cookie: s.cookie.clone(),
            csrf: s.csrf.clone(),
            flash: s.flash.take(),
        })
    }

    /// Leaves a message for the session's next page.
    pub(crate) fn flash(&self, cookie: &str, msg: String) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some(s) = inner.sessions.iter_mut().find(|s| same(&s.cookie, cookie))
        {
            s.flash = Some(msg);
        }
    }

    /// Ends a session (log out).
    pub(crate) fn end(&self, cookie: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.sessions.retain(|s| !same(&s.cookie, cookie));
        }
    }
}

impl Authed {
    /// Whether a form's CSRF field is this session's token.
    pub(crate) fn csrf_ok(&self, field: Option<&[u8]>) -> bool {
        field.is_some_and(|f| f.ct_eq(self.csrf.as_bytes()).into())
    }
}

/// Our cookie's value in a `Cookie` header (`a=1; agent_vault_session=…`).
fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE).then_some(value)
    })
}

/// The `Set-Cookie` value for a new session.
pub(crate) fn set_cookie(value: &str) -> String {
    format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/")
}

/// The `Set-Cookie` value that removes the cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_login_token_works_once() {
        let (s, t) = Sessions::new().unwrap();
        assert_eq!(t.len(), 43);
        assert!(s.login("wrong").is_none());
        let c = s.login(&t).unwrap();
        assert!(s.login(&t).is_none());
        let header = format!("x=1; {COOKIE}={}", c.as_str());
        let a = s.check(Some(&header)).unwrap();
        assert!(a.csrf_ok(Some(a.csrf.as_bytes())));
        assert!(!a.csrf_ok(Some(b"nope")));
        assert!(!a.csrf_ok(None));
        assert!(s.check(Some(&format!("{COOKIE}=other"))).is_none());
        assert!(s.check(None).is_none());
        s.end(&c);
        assert!(s.check(Some(&header)).is_none());
    }
}
