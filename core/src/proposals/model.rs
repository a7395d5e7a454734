//! A proposal as data: what an agent asks for, the draft it starts from,
//! and the caps every proposal is held to.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::broker::services::{Service, Services};
use crate::error::{Error, Result};
pub use crate::names::ProposalId;
use crate::names::{AgentName, SecretPath};

/// The format of proposal files this build writes and reads.
pub const FORMAT: u32 = 1;
/// At most this many proposals of one agent are pending at once.
pub const MAX_PENDING_PER_AGENT: usize = 20;
/// At most this many credential slots per proposal.
pub const MAX_SLOTS: usize = 10;
/// At most this many services per proposal.
pub const MAX_SERVICES: usize = 10;
/// The longest message to the owner, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// The longest slot description or "where to obtain it", in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// The largest value an agent may hand over in a proposal (bytes).
pub const MAX_AGENT_VALUE: usize = 32 * 1024;
/// The largest proposal file read (bytes).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// How long a proposal waits by default.
pub const DEFAULT_EXPIRY: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);
/// The longest a proposal may wait.
pub const MAX_EXPIRY: jiff::SignedDuration = jiff::SignedDuration::from_hours(30 * 24);
/// How far in the future a proposal's creation time may lie (clock skew).
pub const MAX_CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// What approving a slot does to the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Set the secret (the owner supplies the value, or the agent did).
    #[default]
    Set,
    /// Delete the secret.
    Delete,
}

/// What kind of credential a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    /// A static value (an API key, a password).
    #[default]
    Static,
    /// An OAuth credential. Stored as the value the owner supplies until the
    /// vault has an OAuth credential type.
    Oauth,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Set => "set",
            Action::Delete => "delete",
        })
    }
}

impl fmt::Display for SlotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotKind::Static => "static",
            SlotKind::Oauth => "oauth",
        })
    }
}

/// A service the agent wants, as `agent-vault service add` would define it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposedService {
    /// The service's name.
    pub name: String,
    /// The service.
    pub service: Service,
}

/// A credential slot: a secret to set or delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    /// The secret.
    pub path: SecretPath,
    /// What the credential is for.
    #[serde(default)]
    pub description: String,
    /// Where and how the owner obtains it.
    #[serde(default)]
    pub obtain: String,
    /// Set or delete.
    #[serde(default)]
    pub action: Action,
    /// Static or OAuth.
    #[serde(default)]
    pub kind: SlotKind,
    /// A value the agent obtained itself: an ASCII-armored age file
    /// encrypted to the vault's owners. Never plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A proposal: what an agent asks the owners to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// The file's format (`FORMAT`).
    pub format: u32,
    /// The vault this proposal is for.
    pub vault_id: String,
    /// Its id.
    pub id: ProposalId,
    /// The proposing agent.
    pub agent: AgentName,
    /// When it was made.
    pub created: jiff::Timestamp,
    /// When it lapses if no owner decided.
    pub expires: jiff::Timestamp,
    /// The agent's message to the owner.
    #[serde(default)]
    pub message: String,
    /// Services to add or replace.
    #[serde(default)]
    pub services: Vec<ProposedService>,
    /// Credential slots.
    #[serde(default)]
    pub slots: Vec<Slot>,
}

/// What an agent writes to propose (`propose --file`): a proposal without
/// the parts `propose` fills in. A draft carries no value: values come from
/// standard input or a file, and are encrypted before they are written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// The message to the owner.
    #[serde(default)]
    pub message: String,
    /// When it lapses (default: 7 days from now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<jiff::Timestamp>,
    /// Services to add or replace.
    #[serde(default)]
    pub services: Vec<ProposedService>,
    /// Credential slots (their `value` must be absent).
    #[serde(default)]
    pub slots: Vec<Slot>,
}

impl Draft {
    /// Parses a draft (YAML).
    pub fn parse(path: &std::path::Path, bytes: &[u8]) -> Result<Self> {
        let d: Draft = crate::yaml::parse_yaml(path, bytes)?;
        if let Some(s) = d.slots.iter().find(|s| s.value.is_some()) {
            return Err(Error::InvalidInput(format!(
                "{}: slot {} has a value in the file; a value is never written in plain text: \
                 pass it with `--value {}=@FILE` (or `--value-stdin`), and propose encrypts it to the owners",
                path.display(),
                s.path,
                s.path
            )));
        }
        Ok(d)
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

impl Proposal {
    /// Checks the caps and the shape: the message, the number of slots and
    /// services, unique names, valid services, an expiry after creation and
    /// at most [`MAX_EXPIRY`] later. Does not check the signature or the
    /// vault (see [`super::verify`]).
    pub fn check_shape(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Proposal(format!("proposal {}: {why}", self.id)));
        if self.format != FORMAT {
            return bad(format!(
                "format {} is not the {FORMAT} this build reads",
                self.format
            ));
        }
        if self.slots.is_empty() && self.services.is_empty() {
            return bad("it asks for nothing (no slot, no service)".into());
        }
        if chars(&self.message) > MAX_MESSAGE_CHARS {
            return bad(format!(
                "its message is longer than {MAX_MESSAGE_CHARS} characters"
            ));
        }
        if self.slots.len() > MAX_SLOTS {
            return bad(format!("it has more than {MAX_SLOTS} slots"));
        }
        if self.services.len() > MAX_SERVICES {
            return bad(format!("it has more than {MAX_SERVICES} services"));
        }
        let mut paths = BTreeSet::new();
        for s in &self.slots {
            if !paths.insert(&s.path) {
                return bad(format!("slot {} appears twice", s.path));
            }
            if chars(&s.description) > MAX_TEXT_CHARS || chars(&s.obtain) > MAX_TEXT_CHARS {
                return bad(format!(
                    "slot {}: description or obtain is longer than {MAX_TEXT_CHARS} characters",
                    s.path
                ));
            }
            if s.action == Action::Delete && s.value.is_some() {
                return bad(format!(
                    "slot {} deletes the secret but carries a value",
                    s.path
                ));
            }
            if let Some(v) = &s.value
                && (!v.starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
                    || v.len() > 2 * MAX_AGENT_VALUE)
            {
                return bad(format!(
                    "slot {}: its value is not an armored age file of at most {MAX_AGENT_VALUE} bytes",
                    s.path
                ));
            }
        }
        let mut names = BTreeSet::new();
        let mut all = Services::default();
        for s in &self.services {
            if !names.insert(&s.name) {
                return bad(format!("service {} appears twice", s.name));
            }
            all.services.insert(s.name.clone(), s.service.clone());
        }
        if let Err(e) = all.validate() {
            return bad(e.to_string());
        }
        if jiff::Timestamp::now()
            .checked_add(MAX_CLOCK_SKEW)
            .is_ok_and(|later| self.created > later)
        {
            return bad("it claims to be made in the future".into());
        }
        if self.expires <= self.created {
            return bad("it expires before it was made".into());
        }
        if self.created.duration_until(self.expires) > MAX_EXPIRY {
            return bad(format!(
                "it waits longer than {} days",
                MAX_EXPIRY.as_hours() / 24
            ));
        }
        Ok(())
    }

    /// Whether it has lapsed at `now`.
    pub fn expired_at(&self, now: jiff::Timestamp) -> bool {
        self.expires <= now
    }
}
