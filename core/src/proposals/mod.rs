//! Proposals: an agent asks for access, an owner approves.
//!
//! An agent that needs a service or credential the vault does not give it
//! writes a [`Proposal`]: services (as `agent-vault service add` defines
//! them) and credential [`Slot`]s (a secret to set or delete, what it is
//! for, where to obtain it; a value the agent obtained itself travels
//! age-encrypted to the owners, never in plain text), a message, an expiry
//! (default 7 days). Caps: [`MAX_PENDING_PER_AGENT`] pending per agent,
//! [`MAX_SLOTS`] slots, [`MAX_SERVICES`] services, [`MAX_MESSAGE_CHARS`]
//! characters of message.
//!
//! The API, by who calls it:
//!
//! - The agent: [`submit`] signs a [`Draft`] with the agent's signing key
//!   (Ed25519 derived from its age key; the manifest holds the public half)
//!   and commits it to the branch `agent-vault/proposals/<agent>` of the
//!   vault's repository (never the vault's branch), pushing it when there is
//!   a remote. [`status`] reads where one stands.
//! - The owner: [`list`] (every proposal found, verified, with its
//!   [`Status`]; forged or unreadable ones apart, with the reason), [`load`]
//!   (one, verified), [`verify`] (the checks [`load`] makes), [`plan`] (what
//!   approving would change, as plain data: [`Plan`]), [`approve`] (every
//!   slot, service and grant in one journaled operation and one commit, the
//!   signed decision with them; refuses a `set` slot without a value) and
//!   [`deny`] (a signed decision with a reason the agent reads).
//!
//! Trust: everything on a proposal branch is hostile. A proposal is read
//! only from `proposals/<id>.yaml` and its detached signature
//! `proposals/<id>.sig` ([`signed`]), verified on its exact bytes against
//! the signing key the verified manifest gives the agent it names, before
//! it is parsed; a commit on such a branch never changes the vault. A
//! decision is a file of the vault, `decisions/<agent>/<id>.yaml`, signed
//! by an owner ([`decision`]); an unsigned one is ignored, and what an
//! approval changes (manifest, services, values) is verified by every
//! reader on its own, as any change is.
//!
//! ```no_run
//! use agent_vault_core::{KeySource, KeyStore, Vault, proposals};
//!
//! # fn main() -> agent_vault_core::Result<()> {
//! let vault = Vault::find(std::path::Path::new("."), KeyStore::from_env()?)?;
//! let listing = proposals::list(&vault)?;
//! for (p, status) in &listing.proposals {
//!     let plan = proposals::plan(&vault, p)?;
//!     println!("{} {} {} {:?}", p.id, p.agent, status.word(), plan.values_needed());
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use crate::broker::services::Services;
use crate::crypto::SecretValue;
use crate::error::{Error, Result};
use crate::git::VaultRepo;
use crate::keystore::KeySource;
use crate::model::Manifest;
use crate::names::{AgentName, SecretPath};
use crate::vault::Vault;

mod approve;
mod branch;
pub mod decision;
mod model;
mod plan;
pub mod signed;
mod submit;
#[cfg(test)]
mod tests;

pub use approve::{approve, deny};
pub use decision::Status;
pub use model::{
    Action, DEFAULT_EXPIRY, Draft, MAX_AGENT_VALUE, MAX_EXPIRY, MAX_MESSAGE_CHARS,
    MAX_PENDING_PER_AGENT, MAX_SERVICES, MAX_SLOTS, MAX_TEXT_CHARS, Proposal, ProposalId,
    ProposedService, Slot, SlotKind,
};
pub use plan::{GrantPlan, Plan, ServicePlan, SlotPlan};
pub use submit::{Submitted, submit};

/// Values an owner supplies at approval, by slot.
pub type Values = BTreeMap<SecretPath, SecretValue>;

/// A proposal found but refused: forged, unreadable, over a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The agent it claims (or the branch it was on).
    pub agent: String,
    /// Its id, as found.
    pub id: String,
    /// Why it is refused.
    pub reason: String,
}

/// Every proposal this vault's repository holds.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The verified proposals and where each stands, oldest first.
    pub proposals: Vec<(Proposal, Status)>,
    /// Those refused, with the reason.
    pub refused: Vec<Refused>,
}

/// How long proposals' git traffic may take.
pub const TIMEOUT: Duration = crate::git::pull::DEFAULT_TIMEOUT;

/// A proposal as found, verified.
struct Verified {
    proposal: Proposal,
    signed: signed::SignedProposal,
}

fn open_repo(vault: &Vault) -> Result<VaultRepo> {
    VaultRepo::discover(vault.root())?.ok_or_else(|| {
        Error::Proposal(
            "proposals travel on git branches, and this vault is not in a git repository".into(),
        )
    })
}

/// Every proposal found, verified against `manifest`; the per-agent cap
/// applies to pending ones (the oldest [`MAX_PENDING_PER_AGENT`] count).
fn gather(vault: &Vault, manifest: &Manifest) -> Result<(Vec<(Verified, Status)>, Vec<Refused>)> {
    let repo = open_repo(vault)?;
    let (found, unreadable) = branch::found(&repo)?;
    let mut refused: Vec<Refused> = unreadable
        .into_iter()
        .map(|u| Refused {
            agent: u.where_,
            id: String::new(),
            reason: u.reason,
        })
        .collect();
    let now = jiff::Timestamp::now();
    let mut ok = Vec::new();
    for f in found {
        match f.signed.open(manifest, vault.id(), &f.agent, &f.id) {
            Ok(p) => {
                let status = status_of(vault, manifest, &p, now)?;
                ok.push((
                    Verified {
                        proposal: p,
                        signed: f.signed,
                    },
                    status,
                ));
            }
            Err(e) => refused.push(Refused {
                agent: f.agent.to_string(),
                id: f.id.to_string(),
                reason: e.to_string(),
            }),
        }
    }
    ok.sort_by(|a, b| {
        (a.0.proposal.created, &a.0.proposal.id).cmp(&(b.0.proposal.created, &b.0.proposal.id))
    });
    let mut pending: BTreeMap<AgentName, usize> = BTreeMap::new();
    let mut kept = Vec::new();
    for (v, s) in ok {
        if s == Status::Pending {
            let n = pending.entry(v.proposal.agent.clone()).or_default();
            *n += 1;
            if *n > MAX_PENDING_PER_AGENT {
                refused.push(Refused {
                    agent: v.proposal.agent.to_string(),
                    id: v.proposal.id.to_string(),
                    reason: format!(
                        "agent {} has more than {MAX_PENDING_PER_AGENT} proposals pending; \
                         this one is over the cap and refused",
                        v.proposal.agent
                    ),
                });
                continue;
            }
        }
        kept.push((v, s));
    }
    Ok((kept, refused))
}

fn status_of(
    vault: &Vault,
    manifest: &Manifest,
    p: &Proposal,
    now: jiff::Timestamp,
) -> Result<Status> {
    Ok(match decision::read(vault, manifest, &p.agent, &p.id)? {
        Some(d) => d.status(),
        None if p.expired_at(now) => Status::Expired,
        None => Status::Pending,
    })
}

/// Every proposal on the repository's proposal branches (local, and those
/// an owner's `sync` fetched), verified, with its status; the refused ones
/// apart.
pub fn list(vault: &Vault) -> Result<Listing> {
    let manifest = vault.manifest()?;
    let (ok, refused) = gather(vault, &manifest)?;
    Ok(Listing {
        proposals: ok.into_iter().map(|(v, s)| (v.proposal, s)).collect(),
        refused,
    })
}

/// Finds one proposal by id (`ID`, or `AGENT/ID` when two agents used the
/// same id), verified.
fn find(vault: &Vault, manifest: &Manifest, id: &str) -> Result<(Verified, Status)> {
    let (agent, id) = match id.split_once('/') {
        Some((a, i)) => (Some(a.parse::<AgentName>()?), i.parse::<ProposalId>()?),
        None => (None, id.parse::<ProposalId>()?),
    };
    let (ok, refused) = gather(vault, manifest)?;
    if let Some(r) = refused
        .iter()
        .find(|r| r.id == id.as_str() && agent.as_ref().is_none_or(|a| a.as_str() == r.agent))
    {
        return Err(Error::Proposal(r.reason.clone()));
    }
    let mut hits: Vec<(Verified, Status)> = ok
        .into_iter()
        .filter(|(v, _)| {
            v.proposal.id == id && agent.as_ref().is_none_or(|a| *a == v.proposal.agent)
        })
        .collect();
    match hits.len() {
        0 => Err(Error::Proposal(format!(
            "no proposal {id} here; an owner's `agent-vault sync` fetches the agents' proposals \
             (`agent-vault proposals list` shows those there are)"
        ))),
        1 => Ok(hits.remove(0)),
        _ => Err(Error::Proposal(format!(
            "several agents have a proposal {id}; name it as AGENT/{id}"
        ))),
    }
}

/// One proposal (`ID` or `AGENT/ID`), verified, with its status. A forged
/// one is refused with the reason.
pub fn load(vault: &Vault, id: &str) -> Result<(Proposal, Status)> {
    let manifest = vault.manifest()?;
    find(vault, &manifest, id).map(|(v, s)| (v.proposal, s))
}

/// Verifies a proposal against the vault: signed by the agent it names with
/// the signing key the verified manifest gives it, within the caps, not
/// expired and not decided. ([`load`] and [`list`] verify the signature as
/// they read; this adds that it can still be decided.)
pub fn verify(vault: &Vault, id: &str) -> Result<Proposal> {
    let manifest = vault.manifest()?;
    let (v, status) = find(vault, &manifest, id)?;
    decidable(&v.proposal, &status)?;
    Ok(v.proposal)
}

fn decidable(p: &Proposal, status: &Status) -> Result<()> {
    match status {
        Status::Pending => Ok(()),
        Status::Expired => Err(Error::Proposal(format!(
            "proposal {} of {} expired at {}; the agent proposes again if it still needs it",
            p.id, p.agent, p.expires
        ))),
        s => Err(Error::Proposal(format!(
            "proposal {} of {} is {} already",
            p.id,
            p.agent,
            s.word()
        ))),
    }
}

/// What approving `p` would change in the vault as it is now.
pub fn plan(vault: &Vault, p: &Proposal) -> Result<Plan> {
    let manifest = vault.manifest()?;
    let services = Services::load(vault)?;
    Ok(plan::make(vault, &manifest, &services, p))
}

/// Where a proposal stands (`ID` or `AGENT/ID`): what the agent asks after
/// proposing. Reads the proposal branches and the decisions in the vault as
/// this clone has them (pull first to see an owner's latest decisions).
pub fn status(vault: &Vault, id: &str) -> Result<(Proposal, Status)> {
    load(vault, id)
}

/// Resolves the key for owner operations (a convenience for callers that
/// hold a [`KeySource`]).
fn owner_writer<'v>(vault: &'v Vault, key: &KeySource) -> Result<crate::writer::Writer<'v>> {
    crate::writer::Writer::open(vault, key)
}
