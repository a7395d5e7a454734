//! Short-lived, scoped broker tokens. A token is
//! `avt1.<claims>.<mac>`: base64url JSON claims and an HMAC-SHA256 over them
//! with the vault's token key, which is stored encrypted to the broker and
//! the owners — so any broker instance verifies any token with no shared
//! database, and only owners issue them. Revocations live in the signed
//! manifest.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::model::Revocations;

const PREFIX: &str = "avt1";
const DOMAIN: &[u8] = b"agent-vault/v1/token\0";

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The token's id (for revocation and the audit log).
    pub id: String,
    /// The agent it speaks for.
    pub agent: String,
    /// Services it may reach (empty: every service the agent's grants allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// An optional session or task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

impl Claims {
    /// Whether the token may reach the service named `service` (the
    /// agent's grants still decide which secrets it may use).
    pub fn may_use(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|s| s == service)
    }
}

/// The token key (32 bytes), zeroized on drop.
pub struct TokenKey(Zeroizing<Vec<u8>>);

impl TokenKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let mut k = Zeroizing::new(vec![0u8; 32]);
        getrandom::fill(&mut k).map_err(|e| Error::InvalidInput(format!("no randomness: {e}")))?;
        Ok(TokenKey(k))
    }

    /// From its bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() != 32 {
            return Err(Error::InvalidInput("the token key is malformed".into()));
        }
        Ok(TokenKey(Zeroizing::new(b.to_vec())))
    }

    /// Its bytes (to encrypt them).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, claims_b64: &str) -> std::result::Result<Hmac<Sha256>, TokenError> {
        // HMAC takes a key of any length (ours is 32 bytes): this cannot fail.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .map_err(|_| TokenError::BadSignature)?;
        m.update(DOMAIN);
        m.update(claims_b64.as_bytes());
        Ok(m)
    }

    /// Issues a token.
    pub fn issue(&self, claims: &Claims) -> Result<String> {
        let body =
            B64.encode(serde_json::to_vec(claims).map_err(|e| Error::InvalidInput(e.to_string()))?);
        let mac = self
            .mac(&body)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let tag = B64.encode(mac.finalize().into_bytes());
        Ok(format!("{PREFIX}.{body}.{tag}"))
    }

    /// Verifies a token at `now` (Unix seconds) against the revocations.
    pub fn verify(
        &self,
        token: &str,
        now: i64,
        revoked: &Revocations,
    ) -> std::result::Result<Claims, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(PREFIX), Some(body), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
        self.mac(body)?
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = B64
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if revoked.covers(
            &claims.id,
            &claims.agent,
            claims.session.as_deref(),
            claims.iat,
        ) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }
}

impl TokenKey {
    /// Re-checks claims already verified (expiry, revocations), e.g. on
    /// every request of a long-lived tunnel.
    pub fn verify_claims(
        &self,
        claims: &Claims,
        now: i64,
        revoked: &Revocations,
    ) -> std::result::Result<(), TokenError> {
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if revoked.covers(
            &claims.id,
            &claims.agent,
            claims.session.as_deref(),
            claims.iat,
        ) {
            return Err(TokenError::Revoked);
        }
        Ok(())
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token.
    Malformed,
    /// Not signed with this vault's token key.
    BadSignature,
    /// Past its expiry.
    Expired,
    /// Revoked by an owner.
    Revoked,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "token not issued for this vault",
            TokenError::Expired => "token expired",
            TokenError::Revoked => "token revoked",
        })
    }
}

/// A new token id.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 9];
    getrandom::fill(&mut b).map_err(|e| Error::InvalidInput(format!("no randomness: {e}")))?;
    Ok(B64.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_expire_revoke() {
        let key = TokenKey::generate().unwrap();
        let claims = Claims {
            id: new_id().unwrap(),
            agent: "bot".into(),
            services: vec!["github".into()],
            session: Some("task-1".into()),
            iat: 100,
            exp: 1000,
        };
        let t = key.issue(&claims).unwrap();
        let none = Revocations::default();
        assert_eq!(key.verify(&t, 500, &none).unwrap(), claims);
        assert_eq!(key.verify(&t, 1000, &none), Err(TokenError::Expired));
        let other = TokenKey::generate().unwrap();
        assert_eq!(other.verify(&t, 500, &none), Err(TokenError::BadSignature));
        let mut forged = t.clone();
        forged.replace_range(6..8, "xx");
        assert!(key.verify(&forged, 500, &none).is_err());
        assert_eq!(key.verify("nope", 500, &none), Err(TokenError::Malformed));
        for r in [
            Revocations {
                tokens: vec![claims.id.clone()],
                ..Default::default()
            },
            Revocations {
                agents: [("bot".to_string(), 200)].into(),
                ..Default::default()
            },
            Revocations {
                sessions: vec!["task-1".into()],
                ..Default::default()
            },
            Revocations {
                all_before: Some(101),
                ..Default::default()
            },
        ] {
            assert_eq!(key.verify(&t, 500, &r), Err(TokenError::Revoked), "{r:?}");
        }
        // A revocation of the agent before the token was issued does not cover it.
        let old = Revocations {
            agents: [("bot".to_string(), 50)].into(),
            ..Default::default()
        };
        assert!(key.verify(&t, 500, &old).is_ok());
    }
}
