//! `manifest.yaml` and its signature, `manifest.sig`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, OwnerSigningKey};
use crate::error::{Error, Result};
use crate::names::{AgentName, GroupName, OwnerName};

use super::{Mode, format_supported};

const MANIFEST_DOMAIN: &str = "agent-vault/v1/manifest";

/// An owner in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerEntry {
    /// age recipient.
    pub recipient: String,
    /// Ed25519 public key (base64) derived from the owner's age identity.
    pub signing_key: String,
}

/// An agent in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// age recipient.
    pub recipient: String,
    /// Ed25519 public key (base64) derived from the agent's age identity:
    /// the broker verifies the tokens the agent mints itself (`avt2`) with
    /// it. Absent for agents made before it existed, until an owner runs
    /// `agent-vault upgrade-agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
}

/// A group in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// The group key's age recipient; every secret of the group is encrypted to it.
    pub recipient: String,
    /// Incremented each time the group key is rotated.
    pub generation: u64,
}

impl GroupEntry {
    /// The generations a value of the group may be signed at: every one up
    /// to the newest (the keyring holds them all; an older one is exposed,
    /// not invalid).
    pub fn generations(&self) -> Vec<u64> {
        (1..=self.generation).collect()
    }
}

/// `manifest.yaml`: who is who and who may do what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// On-disk format version.
    pub format: u32,
    /// Must equal `config.yaml`'s.
    pub vault_id: String,
    /// Owners by name.
    pub owners: BTreeMap<OwnerName, OwnerEntry>,
    /// Agents by name.
    #[serde(default)]
    pub agents: BTreeMap<AgentName, AgentEntry>,
    /// Groups by name.
    #[serde(default)]
    pub groups: BTreeMap<GroupName, GroupEntry>,
    /// Grants: agent → group → mode.
    #[serde(default)]
    pub grants: BTreeMap<AgentName, BTreeMap<GroupName, Mode>>,
    /// The broker, once `broker init` made it: it can open the groups some
    /// agent may `use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerEntry>,
    /// Revoked broker tokens.
    #[serde(default, skip_serializing_if = "Revocations::is_empty")]
    pub revoked: Revocations,
}

/// Revoked tokens: by id, by agent (issued before a time), by session, or all
/// issued before a time. Kept in the signed manifest, so a push cannot undo one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    /// Token ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// Agent → tokens issued at or before this time (Unix seconds) are revoked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, i64>,
    /// Session ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<String>,
    /// Every token issued at or before this time is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_before: Option<i64>,
}

impl Revocations {
    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        *self == Revocations::default()
    }

    /// Whether a token is revoked, given its id, its agent, its session (if
    /// any) and when it was issued (Unix seconds).
    pub fn covers(&self, id: &str, agent: &str, session: Option<&str>, iat: i64) -> bool {
        self.tokens.iter().any(|t| t == id)
            || self.agents.get(agent).is_some_and(|t| iat <= *t)
            || session.is_some_and(|s| self.sessions.iter().any(|x| x == s))
            || self.all_before.is_some_and(|t| iat <= t)
    }
}

/// The broker in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerEntry {
    /// The broker's age recipient.
    pub recipient: String,
    /// SHA-256 (hex) of `broker/ca.crt`: the signed manifest vouches for the CA.
    pub ca_sha256: String,
}

impl Manifest {
    /// The mode an agent holds on a group, if any.
    pub fn grant(&self, agent: &AgentName, group: &GroupName) -> Option<Mode> {
        self.grants.get(agent).and_then(|g| g.get(group)).copied()
    }

    /// Agents holding `read` on the group.
    pub fn readers(&self, group: &GroupName) -> impl Iterator<Item = &AgentName> {
        self.grants
            .iter()
            .filter(move |(_, g)| g.get(group) == Some(&Mode::Read))
            .map(|(a, _)| a)
    }

    /// Every recipient the group key must be encrypted to: the owners and
    /// the agents that may read the group.
    pub fn group_key_recipients(&self, group: &GroupName) -> Result<Vec<crypto::Recipient>> {
        let mut out = Vec::new();
        for o in self.owners.values() {
            out.push(o.recipient.parse()?);
        }
        for a in self.readers(group) {
            let entry = self
                .agents
                .get(a)
                .ok_or_else(|| Error::AgentNotFound(a.to_string()))?;
            out.push(entry.recipient.parse()?);
        }
        if let Some(b) = &self.broker
            && self.used(group)
        {
            out.push(b.recipient.parse()?);
        }
        Ok(out)
    }

    /// Whether some agent may `use` the group (so the broker must open it).
    pub fn used(&self, group: &GroupName) -> bool {
        self.grants
            .values()
            .any(|g| g.get(group) == Some(&Mode::Use))
    }

    /// The group entry or a not-found error.
    pub fn group(&self, group: &GroupName) -> Result<&GroupEntry> {
        self.groups
            .get(group)
            .ok_or_else(|| Error::GroupNotFound(group.to_string()))
    }

    /// Checks internal consistency: names referenced by grants exist, keys parse.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if !format_supported(self.format) {
            return Err(Error::corrupt(path, "unsupported format version"));
        }
        if self.owners.is_empty() {
            return Err(Error::corrupt(path, "no owners"));
        }
        for (a, gs) in &self.grants {
            if !self.agents.contains_key(a) {
                return Err(Error::corrupt(path, format!("grant for unknown agent {a}")));
            }
            for g in gs.keys() {
                if !self.groups.contains_key(g) {
                    return Err(Error::corrupt(path, format!("grant on unknown group {g}")));
                }
            }
        }
        let recipients = self
            .owners
            .values()
            .map(|o| &o.recipient)
            .chain(self.agents.values().map(|a| &a.recipient))
            .chain(self.broker.iter().map(|b| &b.recipient))
            .chain(self.groups.values().map(|g| &g.recipient));
        for r in recipients {
            r.parse::<crypto::Recipient>()
                .map_err(|_| Error::corrupt(path, format!("invalid recipient {r:?}")))?;
        }
        for (a, e) in &self.agents {
            if let Some(k) = &e.signing_key
                && !crypto::valid_signing_key(k)
            {
                return Err(Error::corrupt(
                    path,
                    format!("agent {a}'s signing key is not an Ed25519 public key"),
                ));
            }
        }
        Ok(())
    }
}

/// `manifest.sig`: an owner's signature over the manifest and services list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSig {
    /// The signing owner's name.
    pub signer: OwnerName,
    /// The owner's Ed25519 public key, base64.
    pub signing_key: String,
    /// Ed25519 signature, base64.
    pub signature: String,
}

fn manifest_message(vault_id: &str, manifest: &[u8], services: &[u8]) -> Vec<u8> {
    format!(
        "{vault_id}\0{}\0{}",
        crypto::sha256_hex(manifest),
        crypto::sha256_hex(services)
    )
    .into_bytes()
}

impl ManifestSig {
    /// Signs the manifest and services bytes.
    pub fn sign(
        signer: &OwnerName,
        key: &OwnerSigningKey,
        vault_id: &str,
        manifest: &[u8],
        services: &[u8],
    ) -> Self {
        ManifestSig {
            signer: signer.clone(),
            signing_key: key.public(),
            signature: key.sign(
                MANIFEST_DOMAIN,
                &manifest_message(vault_id, manifest, services),
            ),
        }
    }

    /// Whether the signature verifies over these bytes (the signer's trust is
    /// checked separately).
    pub fn verifies(&self, vault_id: &str, manifest: &[u8], services: &[u8]) -> bool {
        crypto::verify(
            &self.signing_key,
            MANIFEST_DOMAIN,
            &manifest_message(vault_id, manifest, services),
            &self.signature,
        )
    }
}
