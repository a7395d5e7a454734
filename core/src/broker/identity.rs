//! The broker's identity, and what owners do for it: open the token key
//! and the CA key, and issue tokens; and the tokens agents mint themselves.

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

/// Issues a token (`avt1`) for an agent with an owner's key (owners hold the token key).
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
    let claims = new_claims(vault, manifest, agent, ttl_seconds, services, session)?;
    let token = token_key(vault, owner)?.issue(&claims)?;
    Ok((token, claims))
}

/// Mints a token (`avt2`) with the agent's own key: no owner and no token
/// key needed. `agent_id` must be the agent's current key, and the manifest
/// must hold its signing key (`upgrade-agent` adds it for agents made
/// before). The same checks as an owner's token: lifetime within
/// `token_max_ttl_seconds`, every service within the agent's grants.
pub fn issue_agent_token(
    vault: &Vault,
    agent_id: &Identity,
    manifest: &Manifest,
    agent: &AgentName,
    ttl_seconds: i64,
    services: &[String],
    session: Option<String>,
) -> Result<(String, Claims)> {
    let entry = manifest
        .agents
        .get(agent)
        .ok_or_else(|| Error::AgentNotFound(agent.to_string()))?;
    if entry.recipient != agent_id.recipient().as_string() {
        return Err(Error::InvalidInput(format!(
            "this key is not agent {agent}'s: an agent mints tokens only for itself, with its current key"
        )));
    }
    let key = agent_id.agent_signing_key();
    if entry.signing_key.as_deref() != Some(key.public().as_str()) {
        return Err(Error::InvalidInput(format!(
            "agent {agent} has no token-signing key in the manifest yet: an owner runs `agent-vault upgrade-agent --agent {agent}` (or issues the token: `agent-vault token issue {agent}`)"
        )));
    }
    let claims = new_claims(vault, manifest, agent, ttl_seconds, services, session)?;
    let token = crate::broker::agent_token::sign(&key, &manifest.vault_id, &claims)?;
    Ok((token, claims))
}

/// Mints a token for `agent` with whatever key `id` is: an owner's issues
/// `avt1` ([`issue_token`]), the agent's own mints `avt2`
/// ([`issue_agent_token`]). Another agent's key, or the broker's, issues none.
pub fn issue_any(
    vault: &Vault,
    id: &Identity,
    manifest: &Manifest,
    agent: &AgentName,
    ttl_seconds: i64,
    services: &[String],
    session: Option<String>,
) -> Result<(String, Claims)> {
    match Vault::role_of(manifest, id)? {
        Role::Owner(_) => issue_token(vault, id, manifest, agent, ttl_seconds, services, session),
        Role::Agent(a) if a == *agent => {
            issue_agent_token(vault, id, manifest, agent, ttl_seconds, services, session)
        }
        Role::Agent(a) => Err(Error::InvalidInput(format!(
            "this key is agent {a}'s: it mints tokens for {a} only, not for {agent}"
        ))),
        Role::Broker => Err(Error::NotOwner),
    }
}

/// Fresh claims, checked: the agent exists, the lifetime is within the
/// vault's cap, every service is within the agent's grants.
fn new_claims(
    vault: &Vault,
    manifest: &Manifest,
    agent: &AgentName,
    ttl_seconds: i64,
    services: &[String],
    session: Option<String>,
) -> Result<Claims> {
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
    check_scope(manifest, &all, agent, services)?;
    let now = jiff::Timestamp::now().as_second();
    Ok(Claims {
        id: crate::broker::token::new_id()?,
        agent: agent.to_string(),
        services: services.to_vec(),
        session,
        iat: now,
        exp: now + ttl_seconds,
    })
}

/// A token never reaches more than the agent's grants: every service named
/// must exist and involve only groups the agent may use (or read). Asked
/// when a token is issued and, for the tokens agents mint themselves, by
/// the broker on every one it is shown.
pub fn check_scope(
    manifest: &Manifest,
    services: &crate::broker::services::Services,
    agent: &AgentName,
    names: &[String],
) -> Result<()> {
    for s in names {
        let svc = services
            .services
            .get(s)
            .ok_or_else(|| Error::InvalidInput(format!("no service {s}")))?;
        for p in svc.all_secrets() {
            crate::access::check(manifest, &Role::Agent(agent.clone()), p.group(), Mode::Use)?;
        }
    }
    Ok(())
}
