//! Tokens an agent mints itself: `avt2.<claims>.<signature>`, the same
//! [`Claims`] as an owner's `avt1` token, signed with the agent's Ed25519
//! key (derived from its age identity, its public half in the signed
//! manifest's agent entry) over a domain string, the vault id and the
//! claims. The broker verifies one with the key the manifest holds for the
//! agent the claims name, and trusts nothing else in them: the lifetime is
//! held to the vault's cap and every service named must stay within the
//! agent's grants.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::broker::services::Services;
use crate::broker::token::{Claims, TokenError, TokenKey};
use crate::crypto::{self, AgentSigningKey};
use crate::error::{Error, Result};
use crate::model::Manifest;
use crate::names::AgentName;

/// The prefix of an agent-minted token.
pub const PREFIX: &str = "avt2";
const DOMAIN: &str = "agent-vault/v1/agent-token";
/// How far ahead of the broker's clock a token's `iat` may be (machines'
/// clocks differ a little).
pub const CLOCK_SKEW: i64 = 60;

/// What the signature covers: the vault id (a token of one vault is no
/// token of another) and the claims exactly as sent.
fn message(vault_id: &str, body: &str) -> Vec<u8> {
    format!("{vault_id}\0{body}").into_bytes()
}

/// Signs `claims` with the agent's key. Checks nothing: see
/// [`crate::broker::issue_agent_token`], which checks the grants first.
pub fn sign(key: &AgentSigningKey, vault_id: &str, claims: &Claims) -> Result<String> {
    let body =
        B64.encode(serde_json::to_vec(claims).map_err(|e| Error::InvalidInput(e.to_string()))?);
    let sig = B64.encode(key.sign_raw(DOMAIN, &message(vault_id, &body)));
    Ok(format!("{PREFIX}.{body}.{sig}"))
}

/// Everything the broker needs to verify a token of either kind.
pub struct Verifier<'a> {
    /// The vault's token key (for owner-issued `avt1` tokens).
    pub token_key: &'a TokenKey,
    /// The verified manifest: agents' signing keys, grants, revocations.
    pub manifest: &'a Manifest,
    /// The verified services list (a token's services must be within the agent's grants).
    pub services: &'a Services,
    /// The longest an agent's token may live (`token_max_ttl_seconds`).
    pub max_ttl: i64,
}

impl Verifier<'_> {
    /// Verifies an `avt1` or `avt2` token at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> std::result::Result<Claims, TokenError> {
        let token = token.trim();
        if !token.starts_with("avt2.") {
            return self.token_key.verify(token, now, &self.manifest.revoked);
        }
        let claims = verify_signature(self.manifest, token)?;
        check_lifetime(&claims, now, self.max_ttl)?;
        self.token_key
            .verify_claims(&claims, now, &self.manifest.revoked)?;
        let agent: AgentName = claims.agent.parse().map_err(|_| TokenError::UnknownAgent)?;
        crate::broker::check_scope(self.manifest, self.services, &agent, &claims.services)
            .map_err(|_| TokenError::BeyondGrants)?;
        Ok(claims)
    }
}

/// The claims of an `avt2` token whose signature verifies with the key the
/// manifest holds for the agent it names.
fn verify_signature(manifest: &Manifest, token: &str) -> std::result::Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(PREFIX), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
    // The claims are read before they are trusted, only to find whose key
    // to check them with.
    let claims: Claims = B64
        .decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    let entry = claims
        .agent
        .parse::<AgentName>()
        .ok()
        .and_then(|a| manifest.agents.get(&a))
        .ok_or(TokenError::UnknownAgent)?;
    let key = entry.signing_key.as_deref().ok_or(TokenError::NoAgentKey)?;
    if !crypto::verify_raw(key, DOMAIN, &message(&manifest.vault_id, body), &sig) {
        return Err(TokenError::BadSignature);
    }
    Ok(claims)
}

/// An agent's token lives at most `max_ttl` seconds and was not issued in
/// the future (beyond [`CLOCK_SKEW`]).
pub fn check_lifetime(
    claims: &Claims,
    now: i64,
    max_ttl: i64,
) -> std::result::Result<(), TokenError> {
    let lifetime = claims.exp.checked_sub(claims.iat);
    if lifetime.is_none_or(|l| l <= 0 || l > max_ttl) {
        return Err(TokenError::TooLong);
    }
    if claims.iat > now.saturating_add(CLOCK_SKEW) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::services::{Auth, Service};
    use crate::crypto::Identity;
    use crate::model::{AgentEntry, FORMAT_VERSION, GroupEntry, Mode, OwnerEntry, Revocations};

    struct World {
        bot: Identity,
        eve: Identity,
        token_key: TokenKey,
        manifest: Manifest,
        services: Services,
    }

    fn world() -> World {
        let (owner, bot, eve, old) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let agent = |id: &Identity, key: bool| AgentEntry {
            recipient: id.recipient().as_string(),
            signing_key: key.then(|| id.agent_signing_key().public()),
        };
        let group = || GroupEntry {
            recipient: Identity::generate().recipient().as_string(),
            generation: 1,
        };
        let manifest = Manifest {
            format: FORMAT_VERSION,
            vault_id: "v-1".into(),
            owners: [(
                "alice".parse().unwrap(),
                OwnerEntry {
                    recipient: owner.recipient().as_string(),
                    signing_key: owner.signing_key().public(),
                },
            )]
            .into(),
            agents: [
                ("bot".parse().unwrap(), agent(&bot, true)),
                ("eve".parse().unwrap(), agent(&eve, true)),
                ("old".parse().unwrap(), agent(&old, false)),
            ]
            .into(),
            groups: [
                ("api".parse().unwrap(), group()),
                ("ops".parse().unwrap(), group()),
            ]
            .into(),
            grants: [
                (
                    "bot".parse().unwrap(),
                    [("api".parse().unwrap(), Mode::Use)].into(),
                ),
                (
                    "eve".parse().unwrap(),
                    [("ops".parse().unwrap(), Mode::Read)].into(),
                ),
            ]
            .into(),
            broker: None,
            revoked: Revocations::default(),
        };
        let svc =
            |s: &str| Service::new(vec!["h.example".into()], Auth::Bearer(s.parse().unwrap()));
        let services = Services {
            services: [
                ("api".to_string(), svc("api/token")),
                ("ops".to_string(), svc("ops/token")),
            ]
            .into(),
            ..Services::default()
        };
        World {
            bot,
            eve,
            token_key: TokenKey::generate().unwrap(),
            manifest,
            services,
        }
    }

    impl World {
        fn verifier(&self) -> Verifier<'_> {
            Verifier {
                token_key: &self.token_key,
                manifest: &self.manifest,
                services: &self.services,
                max_ttl: 600,
            }
        }
    }

    fn claims(agent: &str) -> Claims {
        Claims {
            id: "t-1".into(),
            agent: agent.into(),
            services: vec!["api".into()],
            session: Some("s-1".into()),
            iat: 1_000,
            exp: 1_300,
        }
    }

    #[test]
    fn signed_by_the_agent_verifies() {
        let w = world();
        let t = sign(&w.bot.agent_signing_key(), "v-1", &claims("bot")).unwrap();
        assert!(t.starts_with("avt2.") && t.split('.').count() == 3);
        assert_eq!(w.verifier().verify(&t, 1_100), Ok(claims("bot")));
        assert_eq!(
            w.verifier().verify(&format!(" {t}\n"), 1_100),
            Ok(claims("bot"))
        );
        // Every service (no list) is fine too: the grants decide per request.
        let all = Claims {
            services: Vec::new(),
            ..claims("bot")
        };
        let t = sign(&w.bot.agent_signing_key(), "v-1", &all).unwrap();
        assert_eq!(w.verifier().verify(&t, 1_100), Ok(all));
        // avt1 tokens still verify with the token key.
        let t1 = w.token_key.issue(&claims("bot")).unwrap();
        assert_eq!(w.verifier().verify(&t1, 1_100), Ok(claims("bot")));
    }

    #[test]
    fn wrong_keys_are_refused() {
        let w = world();
        let v = w.verifier();
        // Eve's key, claims saying bot.
        let t = sign(&w.eve.agent_signing_key(), "v-1", &claims("bot")).unwrap();
        assert_eq!(v.verify(&t, 1_100), Err(TokenError::BadSignature));
        // Bot's owner-style key (the other derivation) is not its token key.
        let t = sign_with_owner_label(&w.bot, &claims("bot"));
        assert_eq!(v.verify(&t, 1_100), Err(TokenError::BadSignature));
        // Another vault's token.
        let t = sign(&w.bot.agent_signing_key(), "v-2", &claims("bot")).unwrap();
        assert_eq!(v.verify(&t, 1_100), Err(TokenError::BadSignature));
        // An agent the vault does not have, or one with no signing key yet.
        let t = sign(&w.bot.agent_signing_key(), "v-1", &claims("ghost")).unwrap();
        assert_eq!(v.verify(&t, 1_100), Err(TokenError::UnknownAgent));
        let t = sign(&w.bot.agent_signing_key(), "v-1", &claims("Not An Agent")).unwrap();
        assert_eq!(v.verify(&t, 1_100), Err(TokenError::UnknownAgent));
        let t = sign(&w.bot.agent_signing_key(), "v-1", &claims("old")).unwrap();
        assert_eq!(v.verify(&t, 1_100), Err(TokenError::NoAgentKey));
    }

    fn sign_with_owner_label(id: &Identity, c: &Claims) -> String {
        let body = B64.encode(serde_json::to_vec(c).unwrap());
        let sig = id.signing_key().sign(DOMAIN, &message("v-1", &body));
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        format!("{PREFIX}.{body}.{}", B64.encode(sig))
    }

    #[test]
    fn a_changed_byte_is_refused() {
        let w = world();
        let t = sign(&w.bot.agent_signing_key(), "v-1", &claims("bot")).unwrap();
        for i in 5..t.len() {
            let mut b = t.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(b).unwrap();
            assert!(w.verifier().verify(&forged, 1_100).is_err(), "byte {i}");
        }
        // Claims widened under the old signature.
        let wider = Claims {
            exp: 1_500,
            ..claims("bot")
        };
        let body = B64.encode(serde_json::to_vec(&wider).unwrap());
        let sig = t.rsplit('.').next().unwrap();
        assert_eq!(
            w.verifier().verify(&format!("avt2.{body}.{sig}"), 1_100),
            Err(TokenError::BadSignature)
        );
        for bad in ["avt2", "avt2..", "avt3.a.b", &format!("{t}.x")] {
            assert_eq!(
                w.verifier().verify(bad, 1_100),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        // A signed field the claims do not have: refused, never ignored.
        let body = B64.encode(br#"{"id":"x","agent":"bot","iat":1000,"exp":1100,"admin":true}"#);
        let sig = B64.encode(
            w.bot
                .agent_signing_key()
                .sign_raw(DOMAIN, &message("v-1", &body)),
        );
        assert_eq!(
            w.verifier().verify(&format!("avt2.{body}.{sig}"), 1_050),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn lifetime_is_capped_and_checked() {
        let w = world();
        let key = w.bot.agent_signing_key();
        let mk = |iat, exp| {
            sign(
                &key,
                "v-1",
                &Claims {
                    iat,
                    exp,
                    ..claims("bot")
                },
            )
            .unwrap()
        };
        let v = w.verifier();
        assert!(
            v.verify(&mk(1_000, 1_600), 1_100).is_ok(),
            "exactly the cap"
        );
        assert_eq!(v.verify(&mk(1_000, 1_601), 1_100), Err(TokenError::TooLong));
        assert_eq!(v.verify(&mk(1_000, 1_000), 999), Err(TokenError::TooLong));
        assert_eq!(v.verify(&mk(1_000, 900), 950), Err(TokenError::TooLong));
        assert_eq!(
            v.verify(&mk(i64::MIN, i64::MAX), 0),
            Err(TokenError::TooLong)
        );
        // Issued in the future: a minute of skew is fine, more is not.
        assert!(v.verify(&mk(1_000, 1_100), 1_000 - CLOCK_SKEW).is_ok());
        assert_eq!(
            v.verify(&mk(1_000, 1_100), 1_000 - CLOCK_SKEW - 1),
            Err(TokenError::NotYetValid)
        );
        // Expiry is exclusive.
        assert!(v.verify(&mk(1_000, 1_100), 1_099).is_ok());
        assert_eq!(v.verify(&mk(1_000, 1_100), 1_100), Err(TokenError::Expired));
    }

    #[test]
    fn revocation_covers_agent_tokens() {
        let mut w = world();
        let t = sign(&w.bot.agent_signing_key(), "v-1", &claims("bot")).unwrap();
        for r in [
            Revocations {
                tokens: vec!["t-1".into()],
                ..Default::default()
            },
            Revocations {
                agents: [("bot".to_string(), 1_000)].into(),
                ..Default::default()
            },
            Revocations {
                sessions: vec!["s-1".into()],
                ..Default::default()
            },
            Revocations {
                all_before: Some(1_000),
                ..Default::default()
            },
        ] {
            w.manifest.revoked = r.clone();
            assert_eq!(
                w.verifier().verify(&t, 1_100),
                Err(TokenError::Revoked),
                "{r:?}"
            );
        }
        // Revoked before it was minted: a later token is fine.
        w.manifest.revoked = Revocations {
            agents: [("bot".to_string(), 999)].into(),
            ..Default::default()
        };
        assert!(w.verifier().verify(&t, 1_100).is_ok());
    }

    #[test]
    fn services_beyond_the_grants_are_refused() {
        let w = world();
        let key = w.bot.agent_signing_key();
        for services in [vec!["ops"], vec!["api", "ops"], vec!["nosuch"]] {
            let c = Claims {
                services: services.iter().map(|s| s.to_string()).collect(),
                ..claims("bot")
            };
            let t = sign(&key, "v-1", &c).unwrap();
            assert_eq!(
                w.verifier().verify(&t, 1_100),
                Err(TokenError::BeyondGrants),
                "{services:?}"
            );
        }
        // Eve reads ops (read implies use), not api.
        let c = Claims {
            services: vec!["ops".into()],
            ..claims("eve")
        };
        let t = sign(&w.eve.agent_signing_key(), "v-1", &c).unwrap();
        assert!(w.verifier().verify(&t, 1_100).is_ok());
    }
}
