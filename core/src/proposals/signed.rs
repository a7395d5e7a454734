//! A proposal's signature: `proposals/<id>.yaml` holds the proposal as the
//! agent wrote it, `proposals/<id>.sig` a detached Ed25519 signature by the
//! agent's signing key over the vault id and those exact bytes. Like
//! `manifest.yaml` and `manifest.sig`: the YAML stays readable as it is, and
//! it is verified on its exact bytes before it is parsed.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, AgentSigningKey};
use crate::error::{Error, Result};
use crate::model::Manifest;
use crate::names::AgentName;

use super::model::{MAX_FILE_BYTES, Proposal, ProposalId};

/// The signature domain of proposals.
const DOMAIN: &str = "agent-vault/v1/proposal";

/// The largest signature file read.
pub(crate) const MAX_SIG_BYTES: usize = 4096;

/// `proposals/<id>.sig`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigFile {
    /// The signing agent.
    agent: AgentName,
    /// Its public signing key (base64), as the manifest's agent entry holds it.
    signing_key: String,
    /// The signature (base64).
    signature: String,
}

/// A proposal as it travels: the file's bytes and its signature file's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedProposal {
    /// `proposals/<id>.yaml`.
    pub yaml: Vec<u8>,
    /// `proposals/<id>.sig`.
    pub sig: Vec<u8>,
}

fn message(vault_id: &str, yaml: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + vault_id.len() + yaml.len());
    for part in [vault_id.as_bytes(), yaml] {
        m.extend_from_slice(&(part.len() as u64).to_le_bytes());
        m.extend_from_slice(part);
    }
    m
}

impl SignedProposal {
    /// Serialises and signs a proposal with the agent's key.
    pub fn sign(p: &Proposal, key: &AgentSigningKey) -> Self {
        let yaml = crate::yaml::to_yaml(p);
        let sig = SigFile {
            agent: p.agent.clone(),
            signing_key: key.public(),
            signature: base64_encode(&key.sign_raw(DOMAIN, &message(&p.vault_id, &yaml))),
        };
        SignedProposal {
            sig: crate::yaml::to_yaml(&sig),
            yaml,
        }
    }

    /// The SHA-256 (hex) of the proposal's bytes, which a decision names.
    pub fn sha256(&self) -> String {
        crypto::sha256_hex(&self.yaml)
    }

    /// Verifies the signature, then parses: the signature must be by the
    /// signing key the (verified) manifest gives `agent`, over this vault's
    /// id and these bytes; the proposal must name `agent`, this vault and
    /// `id`, and keep to the caps. A forged proposal (signed by any other
    /// key) is refused, naming the agent it claims.
    pub fn open(
        &self,
        manifest: &Manifest,
        vault_id: &str,
        agent: &AgentName,
        id: &ProposalId,
    ) -> Result<Proposal> {
        let refuse =
            |why: String| Error::Proposal(format!("proposal {id} of agent {agent}: {why}"));
        if self.yaml.len() > MAX_FILE_BYTES || self.sig.len() > MAX_SIG_BYTES {
            return Err(refuse("its file is larger than a proposal may be".into()));
        }
        let Some(entry) = manifest.agents.get(agent) else {
            return Err(refuse(format!(
                "the vault has no agent {agent}; it is refused"
            )));
        };
        let Some(key) = &entry.signing_key else {
            return Err(refuse(format!(
                "agent {agent} has no signing key in the manifest, so nothing it signs can be \
                 verified; an owner runs `agent-vault upgrade-agent {agent}`"
            )));
        };
        let sig: SigFile =
            crate::yaml::parse_yaml(std::path::Path::new("proposal signature"), &self.sig)
                .map_err(|_| refuse("its signature file is malformed; it is refused".into()))?;
        if sig.agent != *agent
            || sig.signing_key != *key
            || !crypto::verify(key, DOMAIN, &message(vault_id, &self.yaml), &sig.signature)
        {
            return Err(refuse(format!(
                "it is not signed by agent {agent}'s signing key: a forged proposal, refused"
            )));
        }
        let p: Proposal = crate::yaml::parse_yaml(std::path::Path::new("proposal"), &self.yaml)
            .map_err(|e| refuse(format!("signed but unreadable ({e})")))?;
        if p.agent != *agent || p.id != *id || p.vault_id != vault_id {
            return Err(refuse(format!(
                "it names agent {}, id {} and vault {}, not where it was found",
                p.agent, p.id, p.vault_id
            )));
        }
        p.check_shape()?;
        Ok(p)
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
