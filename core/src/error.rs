//! The one error type of the core library. Messages never contain a secret
//! value or key material: they name files, secrets, agents and groups only.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A result with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the vault.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A name does not follow its rule.
    InvalidName {
        /// "agent", "group", "owner" or "secret".
        kind: &'static str,
        /// The rejected input.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// No `.agent-vault` directory here or above.
    VaultNotFound(PathBuf),
    /// `init` found a vault already.
    AlreadyInitialized(PathBuf),
    /// A file could not be read or written.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A vault file is malformed, truncated or of an unknown format.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A path the vault refuses to touch: a symbolic link or special file
    /// below `.agent-vault`, a file larger than its kind may be, an entry
    /// under `.agent-vault/.local/` that git tracks, a journal this machine
    /// did not write, or such an entry in an incoming commit.
    Refused {
        /// The path (in the working tree, or in the incoming commit).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No key was given and this machine holds no owner key for the vault.
    NoKey {
        /// The vault id whose owner key was looked for.
        vault_id: String,
    },
    /// A key file or `AGENT_VAULT_KEY` does not hold an age identity.
    BadKey {
        /// Where the key came from.
        source: String,
    },
    /// The key is neither an owner's nor any agent's of this vault.
    UnknownKey,
    /// The command needs the owner key.
    NotOwner,
    /// The agent has no grant on the group.
    NotGranted {
        /// The agent.
        agent: String,
        /// The group.
        group: String,
    },
    /// The agent may only use the group through the broker.
    UseOnly {
        /// The agent.
        agent: String,
        /// The group.
        group: String,
    },
    /// A file could not be decrypted with the keys at hand.
    Decrypt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No such secret.
    SecretNotFound(String),
    /// No such group.
    GroupNotFound(String),
    /// No such agent.
    AgentNotFound(String),
    /// The agent exists already.
    AgentExists(String),
    /// The manifest's signature does not verify, or its signer is not trusted.
    UnsignedManifest(String),
    /// A secret's metadata signature or ciphertext hash does not verify.
    UnsignedSecret {
        /// The secret.
        path: String,
        /// What failed.
        reason: String,
    },
    /// Git failed.
    Git(String),
    /// Input the user gave is not acceptable.
    InvalidInput(String),
    /// A path exists where the command would create one.
    Exists(PathBuf),
    /// A git remote failed.
    Remote {
        /// The remote's name.
        remote: String,
        /// Its URL.
        url: String,
        /// What kind of failure.
        failure: RemoteFailure,
        /// What happened.
        message: String,
        /// What to do.
        hint: String,
    },
    /// A merge needs an owner key (an agent's clone only fast-forwards).
    Diverged(String),
    /// A proposal is refused: forged, over a cap, expired, decided, or
    /// not applicable to the vault as it is.
    Proposal(String),
}

/// How a remote operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteFailure {
    /// The remote refused our credentials.
    Auth,
    /// The remote could not be reached (or is not a repository).
    Unreachable,
    /// A push was rejected because the remote has commits we do not.
    Rejected,
    /// Anything else.
    Other,
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Describes a malformed file.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl fmt::Display) -> Self {
        Error::Corrupt {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// What the user can do about it, if there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::VaultNotFound(_) => {
                "run `agent-vault init` to create one, or name it with `--vault DIR`".into()
            }
            Error::NoKey { vault_id } => format!(
                "pass `--key FILE` or set AGENT_VAULT_KEY (a key file's path or the key itself); \
                 owner keys are looked for in $AGENT_VAULT_HOME/keys/{vault_id}/owner.key"
            ),
            Error::UseOnly { agent: _, group } => format!(
                "values of group {group} reach this agent only through the broker \
                 (`agent-vault run`), never as plain text"
            ),
            Error::NotOwner => {
                "this command changes the vault; run it with an owner key (the one `init` created)"
                    .into()
            }
            Error::UnknownKey => {
                "check `--key` / AGENT_VAULT_KEY; `agent-vault list-agents` shows who has access"
                    .into()
            }
            Error::SecretNotFound(_) => "`agent-vault list` shows the secrets there are".into(),
            Error::GroupNotFound(_) => {
                "a group is created by the first `agent-vault set GROUP/NAME`".into()
            }
            Error::AgentNotFound(_) => {
                "`agent-vault list-agents` shows the agents; `agent-vault add-agent NAME` adds one"
                    .into()
            }
            Error::UnsignedManifest(_) => {
                "someone without an owner key changed the vault; inspect `git log -p .agent-vault` \
                 and revert the change (after a plain `git merge`, an owner's `agent-vault repair` \
                 re-signs the merged manifest)"
                    .into()
            }
            Error::UnsignedSecret { .. } => {
                "the file was not written by an owner; inspect `git log -p` for it, revert it, \
                 and set the value again"
                    .into()
            }
            Error::Decrypt { .. } => {
                "`agent-vault check` reports damaged files; git history holds earlier versions"
                    .into()
            }
            Error::Corrupt { .. } => {
                "`agent-vault check` reports damaged files; git history holds earlier versions"
                    .into()
            }
            Error::Refused { .. } => {
                "nothing below .agent-vault may be a link or a special file, and nothing under \
                 .agent-vault/.local may come from git; `git log -- PATH` shows which commit \
                 brought it: revert it, then run `agent-vault check`"
                    .into()
            }
            Error::Remote { hint, .. } => hint.clone(),
            Error::Proposal(_) => {
                "`agent-vault proposals list` shows the proposals and their state; an agent \
                 proposes again with `agent-vault propose`"
                    .into()
            }
            _ => return None,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidName { kind, name, rule } => {
                write!(f, "invalid {kind} name {name:?}: expected {rule}")
            }
            Error::VaultNotFound(p) => {
                write!(
                    f,
                    "no vault found in {} or any parent directory",
                    p.display()
                )
            }
            Error::AlreadyInitialized(p) => write!(f, "a vault exists already at {}", p.display()),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Corrupt { path, reason } => write!(f, "{}: {reason}", path.display()),
            Error::Refused { path, reason } => {
                write!(f, "refusing {}: it {reason}", path.display())
            }
            Error::NoKey { .. } => write!(f, "no key to open the vault with"),
            Error::BadKey { source } => write!(f, "{source} does not hold an age identity"),
            Error::UnknownKey => write!(f, "this key belongs to no owner or agent of this vault"),
            Error::NotOwner => write!(
                f,
                "this needs an owner key, and the key given is an agent's"
            ),
            Error::NotGranted { agent, group } => {
                write!(
                    f,
                    "{agent} is not granted group {group}: an owner can run `agent-vault grant {agent} {group}`"
                )
            }
            Error::UseOnly { agent, group } => {
                write!(f, "{agent} may use group {group} but not read it")
            }
            Error::Decrypt { path, reason } => {
                write!(f, "cannot decrypt {}: {reason}", path.display())
            }
            Error::SecretNotFound(p) => write!(f, "no secret {p}"),
            Error::GroupNotFound(g) => write!(f, "no group {g}"),
            Error::AgentNotFound(a) => write!(f, "no agent {a}"),
            Error::AgentExists(a) => write!(f, "agent {a} exists already"),
            Error::UnsignedManifest(why) => write!(f, "the manifest is not trusted: {why}"),
            Error::UnsignedSecret { path, reason } => {
                write!(f, "secret {path} is not signed by an owner: {reason}")
            }
            Error::Git(m) => write!(f, "git: {m}"),
            Error::InvalidInput(m) => f.write_str(m),
            Error::Exists(p) => write!(f, "{} exists already", p.display()),
            Error::Remote {
                remote,
                url,
                message,
                ..
            } => write!(f, "remote {remote} ({url}): {message}"),
            Error::Diverged(m) => f.write_str(m),
            Error::Proposal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<git2::Error> for Error {
    fn from(e: git2::Error) -> Self {
        Error::Git(e.message().to_owned())
    }
}
