//! The language-neutral half of the agent-vault SDKs (Python and Node): a
//! vault opened once with a key and followed by core's live reader, which
//! rebuilds its verified reader only when the manifest files change, so a
//! warm `get` reads a handful of small files and does no manifest parsing
//! or signature check of its own.
//!
//! Everything here goes through `agent-vault-core`: the format, the crypto
//! and the access rules have one implementation, shared with the CLI.
//!
//! A [`Session`] is `Send + Sync`: one open vault may serve many threads.
//! Reads take a shared lock; [`Session::pull`] and [`Session::close`] take
//! it exclusively.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

pub use agent_vault_core;
use agent_vault_core::crypto::SecretValue;
use agent_vault_core::live::LiveReader;
use agent_vault_core::model::{Mode, SecretMeta};
use agent_vault_core::reader::Reader;
use agent_vault_core::secrecy::SecretString;
use agent_vault_core::sync::{self, PullOutcome};
use agent_vault_core::{Error, GroupName, KeySource, KeyStore, Role, SecretPath, Vault};
use sha2::{Digest, Sha256};

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
    fn vault(message: impl Into<String>) -> Self {
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

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A result with a [`Failure`].
pub type Result<T, E = Failure> = std::result::Result<T, E>;

/// How to open a vault.
pub struct Options {
    /// A directory in (or under) the vault, or a git URL to clone.
    pub repo: String,
    /// A key file.
    pub key_path: Option<PathBuf>,
    /// A raw `AGE-SECRET-KEY-1…` (or a key file's path), kept in memory only.
    pub key_str: Option<SecretString>,
    /// Pull from the remote before reads, at most once per the vault's
    /// `pull_interval_seconds`, never failing the read.
    pub auto_pull: bool,
}

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

/// An open vault: core's live reader on it (the key, and a verified reader
/// rebuilt when the manifest changes).
pub struct Session {
    origin: String,
    root: PathBuf,
    auto_pull: bool,
    pull_interval: Duration,
    /// `None` once closed.
    live: RwLock<Option<LiveReader>>,
    last_pull: Mutex<Option<Instant>>,
    warnings: Mutex<Vec<String>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("origin", &self.origin)
            .field("root", &self.root)
            .field("auto_pull", &self.auto_pull)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Whether `repo` names a git remote rather than a local directory.
pub fn is_git_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    // scp-like `user@host:path`
    match (repo.find('@'), repo.find(':'), repo.find('/')) {
        (Some(at), Some(colon), slash) => at < colon && slash.is_none_or(|s| colon < s),
        _ => false,
    }
}

/// Where a git URL is cloned: `$AGENT_VAULT_HOME/clones/<sha256 of the URL>`.
pub fn clone_dir(keys: &KeyStore, url: &str) -> PathBuf {
    keys.root()
        .join("clones")
        .join(hex::encode(Sha256::digest(url.as_bytes())))
}

fn git_clone(url: &str, dest: &Path) -> Result<()> {
    let parent = dest
        .parent()
        .ok_or_else(|| Failure::vault("the clone directory has no parent"))?;
    agent_vault_core::fsutil::create_dir_all(parent, 0o700)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{}-{nanos}", std::process::id()));
    let out = Command::new("git")
        .args(["clone", "--quiet", "--"])
        .arg(url)
        .arg(&tmp)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Failure::vault(format!("cannot run git to clone {url}: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(Failure {
            kind: Kind::VaultNotFound,
            message: format!("git clone {url} failed: {why}"),
            hint: Some("check the URL and that `git clone` of it works in a shell".into()),
        });
    }
    if std::fs::rename(&tmp, dest).is_err() {
        // Another process cloned it first: use theirs.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dest.join(".git").exists() {
            return Err(Failure::vault(format!(
                "cannot put the clone of {url} in place at {}",
                dest.display()
            )));
        }
    }
    Ok(())
}

fn outcome_name(o: &PullOutcome) -> &'static str {
    match o {
        PullOutcome::NoRemote => "no-remote",
        PullOutcome::UpToDate => "up-to-date",
        PullOutcome::FastForward => "fast-forward",
        PullOutcome::Merged { .. } => "merged",
    }
}

impl Session {
    /// Opens a vault: finds it (or clones the URL, or pulls an earlier
    /// clone), loads the key and verifies the manifest. Fails early on a key
    /// that belongs to no owner or agent.
    pub fn open(opts: Options) -> Result<Self> {
        let keys = KeyStore::from_env()?;
        Self::open_with(opts, keys)
    }

    /// [`Session::open`] with an explicit key store.
    pub fn open_with(opts: Options, keys: KeyStore) -> Result<Self> {
        let key = match (opts.key_str, opts.key_path) {
            (Some(_), Some(_)) => {
                return Err(Failure::vault("give key_path or key_str, not both"));
            }
            (Some(s), None) => KeySource::Text(s),
            (None, Some(p)) => KeySource::File(p),
            (None, None) => KeySource::resolve(None),
        };
        let mut warnings = Vec::new();
        let mut pulled = None;
        let vault = if is_git_url(&opts.repo) {
            let dir = clone_dir(&keys, &opts.repo);
            let existed = dir.join(".git").exists();
            if !existed {
                git_clone(&opts.repo, &dir)?;
            }
            let vault = Vault::find(&dir, keys.clone())?;
            if existed && opts.auto_pull && std::env::var_os("AGENT_VAULT_OFFLINE").is_none() {
                pulled = Some(Instant::now());
            }
            if pulled.is_some()
                && let Err(e) = sync::pull_fast_forward(
                    &vault,
                    Duration::from_secs(vault.config().pull_timeout_seconds),
                )
            {
                warnings.push(format!(
                    "could not update the clone of {} from its remote, using the local copy: {e}",
                    opts.repo
                ));
            }
            vault
        } else {
            Vault::find(Path::new(&opts.repo), keys.clone())?
        };
        let root = vault.root().to_path_buf();
        let pull_interval = Duration::from_secs(vault.config().pull_interval_seconds);
        // Looked at on every call: a change made a moment ago is seen.
        let live = LiveReader::open(vault, &key, Duration::ZERO)?;
        Ok(Session {
            origin: opts.repo,
            root,
            auto_pull: opts.auto_pull,
            pull_interval,
            live: RwLock::new(Some(live)),
            // An open that pulled counts as this interval's pull.
            last_pull: Mutex::new(pulled),
            warnings: Mutex::new(warnings),
        })
    }

    /// What the vault was opened from (a path or a URL, as given).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The vault's root: the directory holding `.agent-vault`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether [`Session::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Warnings since the last call (an unreachable remote): print them, never fail on them.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Drops the key and the reader (the identities are zeroized on drop).
    /// Every later call fails.
    pub fn close(&self) {
        let live = self
            .live
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(live);
    }

    fn closed() -> Failure {
        Failure::vault("this vault is closed")
    }

    fn maybe_auto_pull(&self) {
        if !self.auto_pull {
            return;
        }
        {
            let mut last = self
                .last_pull
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < self.pull_interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        let guard = self.live.read().unwrap_or_else(PoisonError::into_inner);
        let Some(live) = guard.as_ref() else { return };
        if let Some(w) = sync::auto_pull(live.vault()) {
            self.warnings
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(w);
        }
    }

    /// Runs `f` with an up-to-date reader (core's live reader rebuilds it
    /// when the manifest files changed).
    fn with_reader<T>(&self, f: impl FnOnce(&Reader) -> Result<T>) -> Result<T> {
        let guard = self.live.read().unwrap_or_else(PoisonError::into_inner);
        let live = guard.as_ref().ok_or_else(Self::closed)?;
        f(&*live.current()?)
    }

    /// A secret's value, after the grant check and the owner-signature check.
    pub fn get(&self, path: &str) -> Result<SecretValue> {
        let path: SecretPath = path.parse().map_err(Failure::from)?;
        self.maybe_auto_pull();
        // Readers take no lock: core's live reader waits out a writer's
        // operation and reads again on files that changed under it.
        let guard = self.live.read().unwrap_or_else(PoisonError::into_inner);
        let live = guard.as_ref().ok_or_else(Self::closed)?;
        Ok(live.get(&path)?)
    }

    /// Who the key belongs to.
    pub fn whoami(&self) -> Result<Principal> {
        self.with_reader(|r| {
            Ok(match r.role() {
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
            })
        })
    }

    /// The agents and their grants, from the verified manifest.
    pub fn list_agents(&self) -> Result<Vec<AgentInfo>> {
        self.with_reader(|r| {
            let m = r.manifest();
            Ok(m.agents
                .iter()
                .map(|(a, e)| AgentInfo {
                    name: a.to_string(),
                    recipient: e.recipient.clone(),
                    grants: m
                        .grants
                        .get(a)
                        .map(|g| {
                            g.iter()
                                .map(|(g, mode)| {
                                    (
                                        g.to_string(),
                                        match mode {
                                            Mode::Read => "read",
                                            Mode::Use => "use",
                                        },
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect())
        })
    }

    /// Every secret (or one group's) with its metadata, as `agent-vault list` shows them.
    pub fn list_secrets(&self, group: Option<&str>) -> Result<Vec<SecretInfo>> {
        let group: Option<GroupName> = group.map(str::parse).transpose().map_err(Failure::from)?;
        let guard = self.live.read().unwrap_or_else(PoisonError::into_inner);
        let live = guard.as_ref().ok_or_else(Self::closed)?;
        let infos = live.vault().list(group.as_ref())?;
        Ok(infos
            .into_iter()
            .map(|i| SecretInfo {
                path: i.path.to_string(),
                group: i.path.group().to_string(),
                name: i.path.name().to_owned(),
                meta: i.meta,
            })
            .collect())
    }

    /// Fetches and fast-forwards (no merge: a diverged clone is an error).
    /// Returns `"no-remote"`, `"up-to-date"` or `"fast-forward"`.
    pub fn pull(&self) -> Result<&'static str> {
        let guard = self.live.write().unwrap_or_else(PoisonError::into_inner);
        let live = guard.as_ref().ok_or_else(Self::closed)?;
        // The next read sees the pulled files (their stamp changed).
        let outcome = sync::pull_fast_forward(live.vault(), sync::DEFAULT_TIMEOUT)?;
        *self
            .last_pull
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        Ok(outcome_name(&outcome))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        for u in [
            "https://example.invalid/v.git",
            "file:///tmp/v.git",
            "ssh://git@host/v",
            "git@host:team/vault.git",
        ] {
            assert!(is_git_url(u), "{u}");
        }
        for p in [".", "/tmp/vault", "vault", "dir/with@at:colon", "./a:b"] {
            assert!(!is_git_url(p), "{p}");
        }
    }

    #[test]
    fn codes_are_stable() {
        let e = Failure::from(Error::SecretNotFound("a/b".into()));
        assert_eq!(e.kind.code(), "SECRET_NOT_FOUND");
        assert_eq!(e.message, "no secret a/b");
        let e = Failure::from(Error::UnknownKey);
        assert_eq!(e.kind.code(), "NOT_AUTHORIZED");
    }
}
