//! The vault's files as data: `config.yaml`, `manifest.yaml`, `manifest.sig`
//! and each secret's `.meta.yaml`, with the signatures over them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, OwnerSigningKey};
use crate::error::{Error, Result};
use crate::names::{AgentName, GroupName, OwnerName, SecretPath};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

const MANIFEST_DOMAIN: &str = "agent-vault/v1/manifest";
const SECRET_DOMAIN: &str = "agent-vault/v1/secret";

/// Parses YAML, naming the file in the error.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_yaml_ng::from_slice(bytes).map_err(|e| Error::corrupt(path, format!("malformed: {e}")))
}

/// Serializes to YAML.
pub fn to_yaml<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain data structures cannot fail.
    serde_yaml_ng::to_string(value)
        .unwrap_or_default()
        .into_bytes()
}

/// `config.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// On-disk format version.
    pub format: u32,
    /// The vault's random id; names its key directory under `$AGENT_VAULT_HOME`.
    pub vault_id: String,
    /// Secrets expiring within this many days are reported by `check`.
    #[serde(default = "default_warn_days")]
    pub expiry_warning_days: u32,
    /// Whether reads pull from the remote first (at most once per interval).
    #[serde(default = "default_true")]
    pub auto_pull: bool,
    /// The interval of automatic pulls.
    #[serde(default = "default_pull_interval")]
    pub pull_interval_seconds: u64,
    /// How long an automatic pull may take before the read goes on without it.
    #[serde(default = "default_pull_timeout")]
    pub pull_timeout_seconds: u64,
    /// The longest a broker token may live.
    #[serde(default = "default_max_ttl")]
    pub token_max_ttl_seconds: i64,
}

fn default_max_ttl() -> i64 {
    crate::broker::DEFAULT_MAX_TTL
}

fn default_warn_days() -> u32 {
    30
}
fn default_true() -> bool {
    true
}
fn default_pull_interval() -> u64 {
    60
}
fn default_pull_timeout() -> u64 {
    5
}

/// Whether a vault id is safe to use as a directory name.
pub fn valid_vault_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Config {
    /// Parses and validates `config.yaml`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let c: Config = parse_yaml(path, bytes)?;
        if c.format != FORMAT_VERSION {
            return Err(Error::corrupt(
                path,
                format!(
                    "format version {} is not supported by this agent-vault (it reads {FORMAT_VERSION})",
                    c.format
                ),
            ));
        }
        if !valid_vault_id(&c.vault_id) {
            return Err(Error::corrupt(path, "invalid vault_id"));
        }
        Ok(c)
    }
}

/// What an agent may do with a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decrypt the group's secrets with its own key.
    Read,
    /// Have them injected by the broker; never see them.
    Use,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Read => "read",
            Mode::Use => "use",
        })
    }
}

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

    /// Whether a token is revoked.
    pub fn covers(&self, c: &crate::token::Claims) -> bool {
        self.tokens.contains(&c.id)
            || self.agents.get(&c.agent).is_some_and(|t| c.iat <= *t)
            || c.session
                .as_ref()
                .is_some_and(|s| self.sessions.contains(s))
            || self.all_before.is_some_and(|t| c.iat <= t)
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
        if self.format != FORMAT_VERSION {
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

/// A secret's `.meta.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretMeta {
    /// When the secret was first set.
    pub created: jiff::Timestamp,
    /// When its value last changed.
    pub updated: jiff::Timestamp,
    /// When it expires, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<jiff::Timestamp>,
    /// A human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// SHA-256 (hex) of the `.age` file's bytes.
    pub ciphertext_sha256: String,
    /// The group key generation the value is encrypted to.
    pub generation: u64,
    /// The signing owner's Ed25519 public key, base64.
    pub signing_key: String,
    /// Signature over (vault id, path, ciphertext hash, generation).
    pub signature: String,
}

fn secret_message(vault_id: &str, path: &SecretPath, hash: &str, generation: u64) -> Vec<u8> {
    format!("{vault_id}\0{path}\0{hash}\0{generation}").into_bytes()
}

/// The unsigned part of a secret's metadata.
#[derive(Debug, Clone)]
pub struct MetaFields {
    /// When the secret was first set.
    pub created: jiff::Timestamp,
    /// When its value last changed.
    pub updated: jiff::Timestamp,
    /// Expiry.
    pub expires: Option<jiff::Timestamp>,
    /// Description.
    pub description: Option<String>,
}

impl SecretMeta {
    /// Signs new metadata for `ciphertext`.
    pub fn sign(
        fields: MetaFields,
        key: &OwnerSigningKey,
        vault_id: &str,
        path: &SecretPath,
        ciphertext: &[u8],
        generation: u64,
    ) -> Self {
        let hash = crypto::sha256_hex(ciphertext);
        let signature = key.sign(
            SECRET_DOMAIN,
            &secret_message(vault_id, path, &hash, generation),
        );
        SecretMeta {
            created: fields.created,
            updated: fields.updated,
            expires: fields.expires,
            description: fields.description,
            ciphertext_sha256: hash,
            generation,
            signing_key: key.public(),
            signature,
        }
    }

    /// The unsigned fields.
    pub fn fields(&self) -> MetaFields {
        MetaFields {
            created: self.created,
            updated: self.updated,
            expires: self.expires,
            description: self.description.clone(),
        }
    }

    /// Verifies the metadata against the ciphertext, the owner keys and the
    /// generations that are acceptable now.
    pub fn verify(
        &self,
        vault_id: &str,
        path: &SecretPath,
        ciphertext: &[u8],
        owners: &Manifest,
        generations: &[u64],
    ) -> Result<()> {
        let fail = |reason: &str| Error::UnsignedSecret {
            path: path.to_string(),
            reason: reason.to_owned(),
        };
        if !owners
            .owners
            .values()
            .any(|o| o.signing_key == self.signing_key)
        {
            return Err(fail("its signing key is not an owner's"));
        }
        if crypto::sha256_hex(ciphertext) != self.ciphertext_sha256 {
            return Err(fail("the encrypted file does not match its signed hash"));
        }
        if !generations.contains(&self.generation) {
            return Err(fail("it is encrypted to an outdated group key"));
        }
        let msg = secret_message(vault_id, path, &self.ciphertext_sha256, self.generation);
        if !crypto::verify(&self.signing_key, SECRET_DOMAIN, &msg, &self.signature) {
            return Err(fail("bad signature"));
        }
        Ok(())
    }
}
