//! The agent's side: a draft made into a signed proposal, its values
//! encrypted to the owners, put on the agent's proposal branch and pushed.

use age::secrecy::ExposeSecret;

use crate::crypto::{self, Identity, Recipient};
use crate::error::{Error, Result};
use crate::names::AgentName;
use crate::vault::{Role, Vault};

use super::model::{
    Action, DEFAULT_EXPIRY, Draft, FORMAT, MAX_AGENT_VALUE, MAX_PENDING_PER_AGENT, Proposal,
    ProposalId,
};
use super::signed::SignedProposal;
use super::{Status, TIMEOUT, Values, branch, gather, open_repo};

/// What [`submit`] did.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The proposal as signed.
    pub proposal: Proposal,
    /// Whether its branch was pushed to the vault's remote (false: the vault
    /// has none, and the proposal is on the local branch for an owner here).
    pub pushed: bool,
}

/// Armors a binary age file (so it sits in YAML as text).
fn armor(binary: &[u8]) -> Result<String> {
    use std::io::Write;
    let fail = |e: std::io::Error| Error::InvalidInput(format!("cannot armor a value: {e}"));
    let mut w = age::armor::ArmoredWriter::wrap_output(Vec::new(), age::armor::Format::AsciiArmor)
        .map_err(fail)?;
    w.write_all(binary).map_err(fail)?;
    let out = w.finish().map_err(fail)?;
    String::from_utf8(out).map_err(|_| Error::InvalidInput("armor is not text".into()))
}

/// Makes `draft` a proposal of the agent whose key is `key`, signs it with
/// the agent's signing key, and puts it on the branch
/// `agent-vault/proposals/<agent>` (pushed when the vault has a remote).
/// `values` are values the agent obtained itself, for `set` slots of the
/// draft: each is encrypted to the vault's owners. Refused when the agent
/// has [`MAX_PENDING_PER_AGENT`] proposals pending, or the draft breaks a cap.
pub fn submit(vault: &Vault, key: &Identity, draft: Draft, values: Values) -> Result<Submitted> {
    let manifest = vault.manifest()?;
    let agent: AgentName = match Vault::role_of(&manifest, key)? {
        Role::Agent(a) => a,
        Role::Owner(_) => {
            return Err(Error::Proposal(
                "this is an owner key: an owner changes the vault directly (`agent-vault set`, \
                 `service add`, `grant`); agents propose"
                    .into(),
            ));
        }
        Role::Broker => return Err(Error::Proposal("the broker does not propose".into())),
    };
    let signing = key.agent_signing_key();
    match manifest
        .agents
        .get(&agent)
        .and_then(|e| e.signing_key.as_ref())
    {
        Some(k) if *k == signing.public() => {}
        Some(_) => {
            return Err(Error::Proposal(format!(
                "the manifest's signing key for agent {agent} is not this key's; an owner runs \
                 `agent-vault upgrade-agent {agent}` after recovering the agent"
            )));
        }
        None => {
            return Err(Error::Proposal(format!(
                "agent {agent} has no signing key in the manifest yet, so its proposals could \
                 not be verified; an owner runs `agent-vault upgrade-agent {agent}`"
            )));
        }
    }
    let owners: Vec<Recipient> = manifest
        .owners
        .values()
        .map(|o| o.recipient.parse())
        .collect::<Result<_>>()?;
    let owner_refs: Vec<&Recipient> = owners.iter().collect();
    let mut slots = draft.slots;
    for (path, value) in &values {
        let Some(slot) = slots.iter_mut().find(|s| s.path == *path) else {
            return Err(Error::InvalidInput(format!(
                "a value was given for {path}, which is not a slot of the proposal"
            )));
        };
        if slot.action != Action::Set {
            return Err(Error::InvalidInput(format!(
                "slot {path} deletes the secret; it takes no value"
            )));
        }
        let v = value.expose_secret();
        if v.len() > MAX_AGENT_VALUE {
            return Err(Error::InvalidInput(format!(
                "the value for {path} is larger than the {MAX_AGENT_VALUE} bytes a proposal carries"
            )));
        }
        slot.value = Some(armor(&crypto::encrypt(&owner_refs, v)?)?);
    }
    let created = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let expires = match draft.expires {
        Some(e) => e,
        None => created
            .checked_add(DEFAULT_EXPIRY)
            .map_err(|e| Error::InvalidInput(format!("cannot compute the expiry: {e}")))?,
    };
    let proposal = Proposal {
        format: FORMAT,
        vault_id: vault.id().to_owned(),
        id: ProposalId::generate()?,
        agent: agent.clone(),
        created,
        expires,
        message: draft.message,
        services: draft.services,
        slots,
    };
    proposal.check_shape()?;
    let repo = open_repo(vault)?;
    if let Some(up) = crate::git::remote::upstream(repo.repo())? {
        branch::fetch_agent_branch(&repo, &up, &agent, TIMEOUT)?;
    }
    let (mine, _) = gather(vault, &manifest)?;
    let pending = mine
        .iter()
        .filter(|(v, s)| v.proposal.agent == agent && *s == Status::Pending)
        .count();
    if pending >= MAX_PENDING_PER_AGENT {
        return Err(Error::Proposal(format!(
            "agent {agent} has {pending} proposals pending, the most it may have \
             ({MAX_PENDING_PER_AGENT}); wait for an owner to decide some, or for them to expire"
        )));
    }
    let signed = SignedProposal::sign(&proposal, &signing);
    let pushed = branch::publish(&repo, &agent, &proposal.id, &signed, TIMEOUT)?;
    Ok(Submitted { proposal, pushed })
}
