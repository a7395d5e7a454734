//! Core's types as the SDKs show them, in plain language-neutral structs:
//! who a key belongs to, an agent's grants, a secret's metadata flattened to
//! optional fields, a pull's outcome, a value as text. Each SDK only maps
//! these views to Python or JavaScript objects; no conversion is written twice.

use agent_vault_core::Role;
use agent_vault_core::crypto::SecretValue;
use agent_vault_core::model::{Manifest, Mode, SecretMeta};
use agent_vault_core::sync::PullOutcome;
use jiff::Timestamp;

use crate::failure::{Failure, Result};

/// Who the key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `"owner"` or `"agent"`.
    pub role: &'static str,
    /// The owner's or agent's name.
    pub name: String,
}

/// One agent and its grants, from the verified manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's name.
    pub name: String,
    /// Its age recipient.
    pub recipient: String,
    /// Group → `"read"` or `"use"`, sorted by group.
    pub grants: Vec<(String, &'static str)>,
}

/// One secret's metadata (names and metadata are public; no value is read).
#[derive(Debug, Clone)]
pub struct SecretInfo {
    /// `group/name`.
    pub path: String,
    /// The group.
    pub group: String,
    /// The name within the group.
    pub name: String,
    /// The metadata, or why it could not be read.
    pub meta: std::result::Result<SecretMeta, String>,
}

impl From<agent_vault_core::SecretInfo> for SecretInfo {
    fn from(i: agent_vault_core::SecretInfo) -> Self {
        SecretInfo {
            path: i.path.to_string(),
            group: i.path.group().to_string(),
            name: i.path.name().to_owned(),
            meta: i.meta,
        }
    }
}

/// A secret's metadata as both SDKs show it: every field optional, and
/// `error` set (and the metadata fields `None`) when it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataView {
    /// `group/name`.
    pub path: String,
    /// The group.
    pub group: String,
    /// The name within the group.
    pub name: String,
    /// When it was first set.
    pub created: Option<Timestamp>,
    /// When its value last changed.
    pub updated: Option<Timestamp>,
    /// When it expires, if it does.
    pub expires: Option<Timestamp>,
    /// Its description.
    pub description: Option<String>,
    /// The group key generation it is encrypted to.
    pub generation: Option<u64>,
    /// Why the metadata could not be read, if it could not.
    pub error: Option<String>,
}

impl From<SecretInfo> for MetadataView {
    fn from(i: SecretInfo) -> Self {
        let (meta, error): (Option<SecretMeta>, _) = match i.meta {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        };
        let (created, updated, expires, description, generation) = match meta {
            Some(m) => (
                Some(m.created),
                Some(m.updated),
                m.expires,
                m.description,
                Some(m.generation),
            ),
            None => (None, None, None, None, None),
        };
        MetadataView {
            path: i.path,
            group: i.group,
            name: i.name,
            created,
            updated,
            expires,
            description,
            generation,
            error,
        }
    }
}

impl From<&Role> for Principal {
    fn from(role: &Role) -> Self {
        match role {
            Role::Owner(n) => Principal {
                role: "owner",
                name: n.to_string(),
            },
            Role::Agent(n) => Principal {
                role: "agent",
                name: n.to_string(),
            },
            Role::Broker => Principal {
                role: "broker",
                name: "broker".to_string(),
            },
        }
    }
}

/// A grant's mode as the SDKs name it: `"read"` or `"use"`.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Read => "read",
        Mode::Use => "use",
    }
}

/// Every agent of the manifest with its grants, sorted by name.
pub fn agents(m: &Manifest) -> Vec<AgentInfo> {
    m.agents
        .iter()
        .map(|(a, e)| AgentInfo {
            name: a.to_string(),
            recipient: e.recipient.clone(),
            grants: m
                .grants
                .get(a)
                .map(|g| {
                    g.iter()
                        .map(|(g, mode)| (g.to_string(), mode_name(*mode)))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// A pull's outcome as the SDKs return it.
pub fn outcome_name(o: &PullOutcome) -> &'static str {
    match o {
        PullOutcome::NoRemote => "no-remote",
        PullOutcome::UpToDate => "up-to-date",
        PullOutcome::FastForward => "fast-forward",
        PullOutcome::Merged { .. } => "merged",
    }
}

/// Decodes a value as UTF-8, with an error that names the secret, never the value.
pub fn utf8<'a>(path: &str, value: &'a SecretValue) -> Result<&'a str> {
    use agent_vault_core::secrecy::ExposeSecret;
    match std::str::from_utf8(value.expose_secret()) {
        Ok(s) => Ok(s),
        Err(e) => Err(Failure::vault(format!(
            "secret {path} is not UTF-8 text (invalid byte at offset {}); read it as bytes",
            e.valid_up_to()
        ))),
    }
}
