//! The broker's identity, and what owners do for it: open the token key
//! and the CA key, and issue tokens.

use age::secrecy::ExposeSecret;

use crate::broker::token::{Claims, TokenKey};
use crate::crypto::{self, Identity};
use crate::error::{Error, Result};
use crate::model::{Manifest, Mode};
use crate::names::AgentName;
use crate::vault::{Role, Vault};
use crate::vfs::Kind;

pub use crate::model::DEFAULT_MAX_TTL;

/// Opens the token key with the broker's or an owner's identity.
pub fn token_key(vault: &Vault, id: &Identity) -> Result<TokenKey> {
    let path = vault.broker_dir().join("token.key.age");
    let ct = vault
        .fs()
        .read_optional(&path, Kind::KeyFile)?
        .ok_or_else(|| {
            Error::InvalidInput(
                "this vault has no broker yet: run `agent-vault broker init`".into(),
            )
        })?;
    TokenKey::from_bytes(crypto::decrypt(&[id], &ct, &path)?.expose_secret())
}

/// Opens the CA key (PEM) with the broker's or an owner's identity.
pub fn ca_key(vault: &Vault, id: &Identity) -> Result<zeroize::Zeroizing<String>> {
    let path = vault.broker_dir().join("ca.key.age");
    let ct = vault.fs().read(&path, Kind::KeyFile)?;
    let pem = crypto::decrypt(&[id], &ct, &path)?;
    String::from_utf8(pem.expose_secret().clone())
        .map(zeroize::Zeroizing::new)
        .map_err(|_| Error::corrupt(&path, "not a PEM key"))
}

/// Issues a token for an agent. Only owners can (they hold the token key).
/// Every service named must exist and involve only groups the agent may
/// use or read.
pub fn issue_token(
    vault: &Vault,
    owner: &Identity,
    manifest: &Manifest,
    agent: &AgentName,
    ttl_seconds: i64,
    services: &[String],
    session: Option<String>,
) -> Result<(String, Claims)> {
    if !manifest
        .owners
        .values()
        .any(|o| o.recipient == owner.recipient().as_string())
    {
        return Err(Error::NotOwner);
    }
    if !manifest.agents.contains_key(agent) {
        return Err(Error::AgentNotFound(agent.to_string()));
    }
    let max = vault.config().token_max_ttl_seconds;
    if ttl_seconds <= 0 || ttl_seconds > max {
        return Err(Error::InvalidInput(format!(
            "a token lives between 1 second and {max} seconds (token_max_ttl_seconds in config.yaml)"
        )));
    }
    let all = crate::broker::services::Services::load(vault)?;
    for s in services {
        let svc = all
            .services
            .get(s)
            .ok_or_else(|| Error::InvalidInput(format!("no service {s}")))?;
        for p in svc.all_secrets() {
            crate::access::check(manifest, &Role::Agent(agent.clone()), p.group(), Mode::Use)?;
        }
    }
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        id: crate::broker::token::new_id()?,
        agent: agent.to_string(),
        services: services.to_vec(),
        session,
        iat: now,
        exp: now + ttl_seconds,
    };
    let token = token_key(vault, owner)?.issue(&claims)?;
    Ok((token, claims))
}
