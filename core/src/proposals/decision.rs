//! An owner's decision on a proposal, and a proposal's status.
//!
//! A decision is a file in the vault itself,
//! `.agent-vault/decisions/<agent>/<id>.yaml`, committed on the vault's
//! branch with the change it approves (or alone, for a denial) and signed
//! by the deciding owner's signing key over the vault id, the proposal's
//! id, agent and SHA-256, the verdict, the reason, the owner and the time.
//! The agent reads it after its next pull. A decision file that no owner of
//! the verified manifest signed is ignored, as if it were not there: an
//! agent that writes "approved" into its clone changes nothing, and the
//! vault changes an approval brings (manifest, services, values) are each
//! verified on their own by every reader.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, OwnerSigningKey};
use crate::error::Result;
use crate::model::Manifest;
use crate::names::{AgentName, OwnerName};
use crate::vault::Vault;
use crate::vfs::Kind;

use super::model::ProposalId;

/// The signature domain of decisions.
const DOMAIN: &str = "agent-vault/v1/proposal-decision";

/// Where a proposal stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Waiting for an owner.
    Pending,
    /// An owner approved it; the vault holds the change.
    Approved {
        /// The owner.
        by: OwnerName,
        /// When.
        at: jiff::Timestamp,
    },
    /// An owner denied it.
    Denied {
        /// Why, for the agent to read.
        reason: String,
        /// The owner.
        by: OwnerName,
        /// When.
        at: jiff::Timestamp,
    },
    /// No owner decided before it expired.
    Expired,
}

impl Status {
    /// `pending`, `approved`, `denied` or `expired`.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved { .. } => "approved",
            Status::Denied { .. } => "denied",
            Status::Expired => "expired",
        }
    }
}

/// The verdict in a decision file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    Approved,
    Denied,
}

/// `decisions/<agent>/<id>.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Decision {
    pub id: ProposalId,
    pub agent: AgentName,
    /// SHA-256 of the proposal file decided on.
    pub proposal_sha256: String,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub by: OwnerName,
    pub at: jiff::Timestamp,
    pub signature: String,
}

impl Decision {
    fn message(&self, vault_id: &str) -> Vec<u8> {
        let verdict = match self.verdict {
            Verdict::Approved => "approved",
            Verdict::Denied => "denied",
        };
        let at = self.at.to_string();
        let mut m = Vec::new();
        for part in [
            vault_id,
            self.id.as_str(),
            self.agent.as_str(),
            &self.proposal_sha256,
            verdict,
            &self.reason,
            self.by.as_str(),
            &at,
        ] {
            m.extend_from_slice(&(part.len() as u64).to_le_bytes());
            m.extend_from_slice(part.as_bytes());
        }
        m
    }

    /// A signed decision.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        vault_id: &str,
        id: &ProposalId,
        agent: &AgentName,
        proposal_sha256: &str,
        verdict: Verdict,
        reason: &str,
        by: &OwnerName,
        key: &OwnerSigningKey,
    ) -> Self {
        let mut d = Decision {
            id: id.clone(),
            agent: agent.clone(),
            proposal_sha256: proposal_sha256.to_owned(),
            verdict,
            reason: reason.to_owned(),
            by: by.clone(),
            // Whole seconds: the signed text and the file's agree exactly.
            at: jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
                .unwrap_or_else(|_| jiff::Timestamp::now()),
            signature: String::new(),
        };
        d.signature = key.sign(DOMAIN, &d.message(vault_id));
        d
    }

    /// Whether an owner of `manifest` signed it.
    fn verifies(&self, vault_id: &str, manifest: &Manifest) -> bool {
        manifest.owners.get(&self.by).is_some_and(|o| {
            crypto::verify(
                &o.signing_key,
                DOMAIN,
                &self.message(vault_id),
                &self.signature,
            )
        })
    }

    /// The status it records.
    pub fn status(&self) -> Status {
        match self.verdict {
            Verdict::Approved => Status::Approved {
                by: self.by.clone(),
                at: self.at,
            },
            Verdict::Denied => Status::Denied {
                reason: self.reason.clone(),
                by: self.by.clone(),
                at: self.at,
            },
        }
    }
}

/// The decision's path relative to `.agent-vault`.
pub(crate) fn rel_path(agent: &AgentName, id: &ProposalId) -> String {
    format!("decisions/{agent}/{id}.yaml")
}

fn path(vault: &Vault, agent: &AgentName, id: &ProposalId) -> PathBuf {
    vault.dir().join(rel_path(agent, id))
}

/// The verified decision on a proposal, if an owner made one. A decision
/// file no owner signed, or one that is unreadable, is ignored.
pub(crate) fn read(
    vault: &Vault,
    manifest: &Manifest,
    agent: &AgentName,
    id: &ProposalId,
) -> Result<Option<Decision>> {
    let p = path(vault, agent, id);
    let Some(bytes) = vault.fs().read_optional(&p, Kind::Metadata).ok().flatten() else {
        return Ok(None);
    };
    let Ok(d) = crate::yaml::parse_yaml::<Decision>(&p, &bytes) else {
        return Ok(None);
    };
    Ok((d.id == *id && d.agent == *agent && d.verifies(vault.id(), manifest)).then_some(d))
}
