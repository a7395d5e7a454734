//! Short-lived, scoped broker tokens. An owner's token is
//! `avt1.<claims>.<mac>`: base64url JSON claims and an HMAC-SHA256 over them
//! with the vault's token key, which is stored encrypted to the broker and
//! the owners — so any broker instance verifies any token with no shared
//! database. An agent mints its own, `avt2` (see
//! [`crate::broker::agent_token`]), with the same claims. Revocations live in
//! the signed manifest.

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
    /// An agent's token (`avt2`) naming no agent of the vault.
    UnknownAgent,
    /// An agent's token (`avt2`) for an agent the manifest holds no
    /// signing key for (made before signing keys; `upgrade-agent`).
    NoAgentKey,
    /// An agent's token (`avt2`) living longer than `token_max_ttl_seconds`.
    TooLong,
    /// An agent's token (`avt2`) issued in the future.
    NotYetValid,
    /// An agent's token (`avt2`) naming a service beyond the agent's grants.
    BeyondGrants,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "token not issued for this vault",
            TokenError::Expired => "token expired",
            TokenError::Revoked => "token revoked",
            TokenError::UnknownAgent => "token for an agent this vault does not have",
            TokenError::NoAgentKey => {
                "the agent has no signing key in the manifest yet (an owner runs `agent-vault upgrade-agent`)"
            }
            TokenError::TooLong => "token lives longer than the vault allows (token_max_ttl_seconds)",
            TokenError::NotYetValid => "token issued in the future (check the clock)",
            TokenError::BeyondGrants => "token names a service beyond the agent's grants",
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

/// The token's contract at its edges: what it carries, when it stops
/// working, and that no byte of it can be changed unnoticed.
#[cfg(test)]
mod token_rules {
    use super::*;

    fn claims() -> Claims {
        Claims {
            id: "tok-1".into(),
            agent: "bot".into(),
            services: vec!["github".into(), "stripe".into()],
            session: Some("task-7".into()),
            iat: 1_000,
            exp: 2_000,
        }
    }

    fn none() -> Revocations {
        Revocations::default()
    }

    #[test]
    fn round_trip_keeps_every_claim() {
        let key = TokenKey::generate().unwrap();
        for c in [
            claims(),
            Claims {
                services: Vec::new(),
                session: None,
                ..claims()
            },
        ] {
            let t = key.issue(&c).unwrap();
            assert!(t.starts_with("avt1.") && t.split('.').count() == 3, "{t}");
            assert_eq!(key.verify(&t, 1_500, &none()).unwrap(), c);
            // Surrounding blanks (a header value, a line read from a file) are fine.
            assert_eq!(key.verify(&format!(" {t}\n"), 1_500, &none()).unwrap(), c);
            // The same key, saved and loaded again, verifies it.
            let again = TokenKey::from_bytes(key.bytes()).unwrap();
            assert_eq!(again.verify(&t, 1_500, &none()).unwrap(), c);
        }
    }

    #[test]
    fn expiry_is_exclusive_and_rechecked() {
        let key = TokenKey::generate().unwrap();
        let c = claims();
        let t = key.issue(&c).unwrap();
        assert!(key.verify(&t, c.exp - 1, &none()).is_ok());
        assert_eq!(key.verify(&t, c.exp, &none()), Err(TokenError::Expired));
        assert_eq!(key.verify(&t, i64::MAX, &none()), Err(TokenError::Expired));
        assert_eq!(key.verify_claims(&c, c.exp - 1, &none()), Ok(()));
        assert_eq!(
            key.verify_claims(&c, c.exp, &none()),
            Err(TokenError::Expired)
        );
        let revoked = Revocations {
            sessions: vec!["task-7".into()],
            ..Default::default()
        };
        assert_eq!(
            key.verify_claims(&c, c.exp - 1, &revoked),
            Err(TokenError::Revoked)
        );
        // An expired token is reported as expired even when also revoked.
        assert_eq!(key.verify(&t, c.exp, &revoked), Err(TokenError::Expired));
    }

    #[test]
    fn another_vaults_key_is_refused() {
        let key = TokenKey::generate().unwrap();
        let t = key.issue(&claims()).unwrap();
        for _ in 0..8 {
            let other = TokenKey::generate().unwrap();
            assert_ne!(other.bytes(), key.bytes());
            assert_eq!(
                other.verify(&t, 1_500, &none()),
                Err(TokenError::BadSignature)
            );
        }
        let mut flipped = key.bytes().to_vec();
        flipped[31] ^= 1;
        let near = TokenKey::from_bytes(&flipped).unwrap();
        assert_eq!(
            near.verify(&t, 1_500, &none()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_changed_byte_anywhere_is_refused() {
        let key = TokenKey::generate().unwrap();
        let t = key.issue(&claims()).unwrap();
        let body_end = t.rfind('.').unwrap();
        for i in 0..t.len() {
            for sub in [b'A', b'a', b'0', b'-', b'_', b'.', b'=', b' ', b'\0'] {
                let mut bytes = t.as_bytes().to_vec();
                if bytes[i] == sub {
                    continue;
                }
                bytes[i] = sub;
                let forged = String::from_utf8(bytes).unwrap();
                let got = key.verify(&forged, 1_500, &none());
                assert!(got.is_err(), "byte {i} set to {sub:?} still verifies");
                if (5..body_end).contains(&i) && !matches!(sub, b'.' | b'=' | b' ' | b'\0') {
                    // A changed claim (still base64) fails the MAC, not the parse.
                    assert_eq!(got, Err(TokenError::BadSignature), "byte {i}");
                }
            }
        }
        // Cut short or extended anywhere.
        for i in 0..t.len() {
            assert!(key.verify(&t[..i], 1_500, &none()).is_err(), "prefix {i}");
        }
        assert!(key.verify("avt1..", 1_500, &none()).is_err());
        for extra in ["A", ".", ".A", "AA"] {
            assert!(key.verify(&format!("{t}{extra}"), 1_500, &none()).is_err());
        }
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let key = TokenKey::generate().unwrap();
        let t = key.issue(&claims()).unwrap();
        let (_, rest) = t.split_once('.').unwrap();
        for bad in [
            String::new(),
            "avt1".into(),
            format!("avt2.{rest}"),
            format!("AVT1.{rest}"),
            format!("{t}.extra"),
            t.replacen('.', "", 1),
        ] {
            assert_eq!(
                key.verify(&bad, 1_500, &none()),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn signed_but_unknown_claims_are_refused() {
        // A body the key did sign, but with a field the claims do not have
        // (a future or forged capability): refused, never ignored.
        let key = TokenKey::generate().unwrap();
        let json = br#"{"id":"x","agent":"bot","iat":1,"exp":9999,"admin":true}"#;
        let body = B64.encode(json);
        let tag = B64.encode(key.mac(&body).unwrap().finalize().into_bytes());
        let t = format!("{PREFIX}.{body}.{tag}");
        assert_eq!(key.verify(&t, 5, &none()), Err(TokenError::Malformed));
        // Signed bytes that are not JSON at all.
        let body = B64.encode(b"not json");
        let tag = B64.encode(key.mac(&body).unwrap().finalize().into_bytes());
        let t = format!("{PREFIX}.{body}.{tag}");
        assert_eq!(key.verify(&t, 5, &none()), Err(TokenError::Malformed));
    }

    #[test]
    fn services_cap_what_a_token_reaches() {
        let c = claims();
        assert!(c.may_use("github") && c.may_use("stripe"));
        assert!(!c.may_use("openai"));
        assert!(!c.may_use("GitHub"));
        assert!(!c.may_use(""));
        let all = Claims {
            services: Vec::new(),
            ..claims()
        };
        assert!(all.may_use("openai") && all.may_use("github"));
        // The cap travels inside the signed body: it cannot be widened.
        let key = TokenKey::generate().unwrap();
        let t = key.issue(&c).unwrap();
        let got = key.verify(&t, 1_500, &none()).unwrap();
        assert_eq!(got.services, c.services);
        assert!(!got.may_use("openai"));
        let widened_body = B64.encode(serde_json::to_vec(&all).unwrap());
        let tag = t.rsplit('.').next().unwrap();
        let widened = format!("{PREFIX}.{widened_body}.{tag}");
        assert_eq!(
            key.verify(&widened, 1_500, &none()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn keys_and_ids() {
        assert!(TokenKey::from_bytes(&[0u8; 31]).is_err());
        assert!(TokenKey::from_bytes(&[0u8; 33]).is_err());
        assert!(TokenKey::from_bytes(&[]).is_err());
        assert_eq!(TokenKey::generate().unwrap().bytes().len(), 32);
        let ids: std::collections::BTreeSet<String> = (0..64).map(|_| new_id().unwrap()).collect();
        assert_eq!(ids.len(), 64, "ids repeat");
        for id in &ids {
            assert_eq!(id.len(), 12);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
        // Error texts say why, and never echo the token.
        for e in [
            TokenError::Malformed,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::Revoked,
            TokenError::UnknownAgent,
            TokenError::NoAgentKey,
            TokenError::TooLong,
            TokenError::NotYetValid,
            TokenError::BeyondGrants,
        ] {
            assert!(!e.to_string().contains("avt1"));
        }
    }
}
