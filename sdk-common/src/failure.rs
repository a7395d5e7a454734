//! What a failure is to an SDK: a [`Kind`] (one exception class in Python,
//! one `code` in Node), core's message and its hint. Every core error and
//! every clone error becomes a [`Failure`] here, once, for both SDKs.

use std::fmt;

use agent_vault_core::Error;
use agent_vault_core::git::remote::CloneError;

/// The kind of a failure, as the SDKs expose it: one exception class in
/// Python, one `code` in Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No vault at the path (or the clone holds none).
    VaultNotFound,
    /// No such secret.
    SecretNotFound,
    /// The key may not read this (not granted, use-only, unknown key, not an owner).
    NotAuthorized,
    /// The manifest is not signed by a trusted owner.
    Manifest,
    /// A group or secret name breaks the naming rule.
    InvalidName,
    /// Anything else.
    Vault,
}

impl Kind {
    /// The stable code of this kind (Node's `err.code`, Python's `exc.code`).
    pub fn code(self) -> &'static str {
        match self {
            Kind::VaultNotFound => "VAULT_NOT_FOUND",
            Kind::SecretNotFound => "SECRET_NOT_FOUND",
            Kind::NotAuthorized => "NOT_AUTHORIZED",
            Kind::Manifest => "MANIFEST",
            Kind::InvalidName => "INVALID_NAME",
            Kind::Vault => "VAULT",
        }
    }

    fn of(e: &Error) -> Kind {
        match e {
            Error::VaultNotFound(_) => Kind::VaultNotFound,
            Error::SecretNotFound(_) => Kind::SecretNotFound,
            Error::NotGranted { .. }
            | Error::UseOnly { .. }
            | Error::UnknownKey
            | Error::NotOwner => Kind::NotAuthorized,
            Error::UnsignedManifest(_) => Kind::Manifest,
            Error::InvalidName { .. } => Kind::InvalidName,
            _ => Kind::Vault,
        }
    }
}

/// A failure: its kind, the core's message (never a secret value or key
/// material) and what to do about it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The kind.
    pub kind: Kind,
    /// The message, as the CLI prints it after `agent-vault: error: `.
    pub message: String,
    /// The CLI's hint, if there is one.
    pub hint: Option<String>,
}

impl Failure {
    pub(crate) fn vault(message: impl Into<String>) -> Self {
        Failure {
            kind: Kind::Vault,
            message: message.into(),
            hint: None,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            kind: Kind::of(&e),
            message: e.to_string(),
            hint: e.hint(),
        }
    }
}

/// A URL that cannot be cloned holds no vault ([`Kind::VaultNotFound`]);
/// git missing, or a clone that cannot be put in place, is [`Kind::Vault`].
impl From<CloneError> for Failure {
    fn from(e: CloneError) -> Self {
        let kind = match &e {
            CloneError::Failed { .. } => Kind::VaultNotFound,
            CloneError::Dir(e) => Kind::of(e),
            _ => Kind::Vault,
        };
        Failure {
            kind,
            message: e.to_string(),
            hint: e.hint(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A result with a [`Failure`].
pub type Result<T, E = Failure> = std::result::Result<T, E>;
