//! OAuth credentials: what an owner stores (client, endpoints, scopes,
//! refresh token, the last access token) as the value of an ordinary
//! secret, encrypted to its group and owner-signed like any value.
//!
//! The value is JSON whose first member is `"type":"oauth"`, which is how
//! the broker tells it from a static value: for a service that names it,
//! the broker injects the credential's current access token (refreshing it
//! first when due), never the JSON. What the broker learns later (a
//! rotated refresh token, newer access tokens) is not an owner's value: it
//! is the broker's state ([`crate::broker::oauth_state`]).

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// How every OAuth credential's value begins (`OAuthCredential::to_value`
/// writes the type first).
pub const PREFIX: &[u8] = b"{\"type\":\"oauth\"";

/// Refresh when the access token is this close to its expiry (seconds).
pub const REFRESH_MARGIN: i64 = 300;

/// An OAuth 2.0 client's credential as the vault keeps it. No `Debug`:
/// it holds the client secret and tokens, zeroized on drop.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthCredential {
    /// Always `oauth` (serialized first: see [`PREFIX`]).
    #[serde(rename = "type")]
    kind: String,
    /// The client id the provider issued.
    pub client_id: String,
    /// The client secret (empty for a public client).
    #[serde(default)]
    pub client_secret: String,
    /// The token endpoint (`https://`).
    pub token_url: String,
    /// The authorization endpoint, for the connect flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    /// The scopes asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The refresh token.
    pub refresh_token: String,
    /// The last access token known when the owner set the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// When that access token expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl Drop for OAuthCredential {
    fn drop(&mut self) {
        self.client_secret.zeroize();
        self.refresh_token.zeroize();
        if let Some(a) = &mut self.access_token {
            a.zeroize();
        }
    }
}

/// What an owner gives to make a credential (before any token is known).
pub struct Client {
    /// The client id.
    pub client_id: String,
    /// The client secret (empty for a public client).
    pub client_secret: String,
    /// The token endpoint.
    pub token_url: String,
    /// The authorization endpoint.
    pub authorization_url: Option<String>,
    /// The scopes.
    pub scopes: Vec<String>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.client_secret.zeroize();
    }
}

/// A provider's endpoints, to fill in for an owner who names it.
pub struct Preset {
    /// The name an owner gives (`github`).
    pub name: &'static str,
    /// Its authorization endpoint.
    pub authorization_url: &'static str,
    /// Its token endpoint.
    pub token_url: &'static str,
}

/// The providers whose endpoints are known: GitHub (OAuth and GitHub Apps'
/// user tokens), Google, Slack (OAuth v2) and Microsoft (identity platform
/// v2.0, any tenant).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "github",
        authorization_url: "https://github.com/login/oauth/authorize",
        token_url: "https://github.com/login/oauth/access_token",
    },
    Preset {
        name: "google",
        authorization_url: "https://accounts.google.com/o/oauth2/v2/auth",
        token_url: "https://oauth2.googleapis.com/token",
    },
    Preset {
        name: "slack",
        authorization_url: "https://slack.com/oauth/v2/authorize",
        token_url: "https://slack.com/api/oauth.v2.access",
    },
    Preset {
        name: "microsoft",
        authorization_url: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
    },
];

/// The preset named `name`.
pub fn preset(name: &str) -> Result<&'static Preset> {
    PRESETS
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            let known: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            Error::InvalidInput(format!(
                "no provider preset {name:?}; known: {} (or give --token-url)",
                known.join(", ")
            ))
        })
}

/// Whether a URL is one the broker may send a credential to: `https://`
/// with a host. (A token endpoint receives the client secret and the
/// refresh token; a cleartext one would give them to the network.)
pub fn check_endpoint(what: &str, url: &str) -> Result<()> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        Error::InvalidInput(format!(
            "the {what} must be an https:// URL (it receives the client secret and tokens)"
        ))
    })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') || url.chars().any(|c| c.is_whitespace()) {
        return Err(Error::InvalidInput(format!(
            "the {what} has no valid host (expected https://HOST[:PORT]/PATH, no user info)"
        )));
    }
    Ok(())
}

impl OAuthCredential {
    /// A credential for `client` with the tokens the provider granted.
    pub fn new(
        client: &Client,
        refresh_token: String,
        access_token: Option<String>,
        expires_at: Option<i64>,
    ) -> Result<Self> {
        check_endpoint("token URL", &client.token_url)?;
        if let Some(a) = &client.authorization_url {
            check_endpoint("authorization URL", a)?;
        }
        if client.client_id.is_empty() {
            return Err(Error::InvalidInput("the client id is empty".into()));
        }
        if refresh_token.is_empty() {
            return Err(Error::InvalidInput("the refresh token is empty".into()));
        }
        Ok(OAuthCredential {
            kind: "oauth".into(),
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone(),
            token_url: client.token_url.clone(),
            authorization_url: client.authorization_url.clone(),
            scopes: client.scopes.clone(),
            refresh_token,
            access_token,
            expires_at,
        })
    }

    /// Whether a secret's value is an OAuth credential.
    pub fn is_oauth(value: &[u8]) -> bool {
        value.starts_with(PREFIX)
    }

    /// Parses a value that [`Self::is_oauth`]; `path` names it in errors
    /// (which never quote the value).
    pub fn parse(path: &str, value: &[u8]) -> Result<Self> {
        let c: OAuthCredential = serde_json::from_slice(value).map_err(|_| {
            Error::InvalidInput(format!(
                "{path} looks like an OAuth credential but does not parse as one; set it again with `agent-vault oauth set {path}`"
            ))
        })?;
        if c.kind != "oauth" {
            return Err(Error::InvalidInput(format!(
                "{path} is not an OAuth credential"
            )));
        }
        check_endpoint("token URL", &c.token_url)?;
        Ok(c)
    }

    /// The value to store: JSON, type first.
    pub fn to_value(&self) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        serde_json::to_vec(self)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| Error::InvalidInput(format!("cannot encode the credential: {e}")))
    }

    /// The client's part (no tokens).
    pub fn client(&self) -> Client {
        Client {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            token_url: self.token_url.clone(),
            authorization_url: self.authorization_url.clone(),
            scopes: self.scopes.clone(),
        }
    }
}

/// When an access token that expires at `expires_at` is due for a refresh
/// (Unix seconds; `None`: its expiry is unknown, so it is due now).
/// [`REFRESH_MARGIN`] before it expires; for a token granted at
/// `granted_at` that lives less than twice the margin, halfway through its
/// life instead, so a five-minute token is not due the moment it arrives
/// (which would refresh it on every request). `granted_at` is `None` for a
/// token read back from the vault, whose lifetime is not known.
pub fn refresh_at(expires_at: Option<i64>, granted_at: Option<i64>) -> Option<i64> {
    let e = expires_at?;
    let lifetime = granted_at.map_or(i64::MAX, |g| e.saturating_sub(g));
    Some(e.saturating_sub(REFRESH_MARGIN.min(lifetime / 2)))
}

/// Whether a token due at `refresh_at` (see [`refresh_at`]) must be
/// refreshed at `now`.
pub fn due(refresh_at: Option<i64>, now: i64) -> bool {
    refresh_at.is_none_or(|r| r <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client {
            client_id: "id".into(),
            client_secret: "s3cret".into(),
            token_url: "https://auth.example/token".into(),
            authorization_url: None,
            scopes: vec!["repo".into()],
        }
    }

    #[test]
    fn round_trip_and_detection() {
        let c = OAuthCredential::new(&client(), "rt".into(), Some("at".into()), Some(5)).unwrap();
        let v = c.to_value().unwrap();
        assert!(OAuthCredential::is_oauth(&v));
        let back = OAuthCredential::parse("g/n", &v).unwrap();
        assert_eq!(back.refresh_token, "rt");
        assert_eq!(back.scopes, ["repo"]);
        assert!(!OAuthCredential::is_oauth(b"ghp_static"));
    }

    #[test]
    fn endpoints_must_be_https_with_a_host() {
        for bad in [
            "http://auth.example/token",
            "https:///token",
            "https://user@auth.example/t",
            "ftp://x",
        ] {
            let mut c = client();
            c.token_url = bad.into();
            assert!(
                OAuthCredential::new(&c, "rt".into(), None, None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bad_value_is_named_never_quoted() {
        let e = OAuthCredential::parse("g/n", b"{\"type\":\"oauth\",\"refresh_token\":\"SECRET\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("g/n") && !e.contains("SECRET"), "{e}");
    }

    #[test]
    fn refresh_is_due_within_five_minutes() {
        assert!(due(refresh_at(None, None), 0));
        assert!(due(refresh_at(Some(1000), None), 700));
        assert!(!due(refresh_at(Some(1000), None), 699));
        // An hour's token granted at 0: five minutes before it expires.
        assert_eq!(refresh_at(Some(3600), Some(0)), Some(3300));
    }

    #[test]
    fn a_short_lived_token_is_due_halfway_not_at_once() {
        // Five minutes: due after two and a half, not the moment it came.
        assert_eq!(refresh_at(Some(1300), Some(1000)), Some(1150));
        assert!(!due(refresh_at(Some(1300), Some(1000)), 1000));
        assert!(due(refresh_at(Some(1300), Some(1000)), 1150));
        // Already expired when granted (a provider's clock): due at once.
        assert!(due(refresh_at(Some(900), Some(1000)), 1000));
    }
}
