//! The open vault: the key, a cached verified reader rebuilt when the
//! manifest files change, the automatic pull, and the clone of a git URL.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use agent_vault_core::crypto::SecretValue;
use agent_vault_core::git::remote::{self, is_git_url};
use agent_vault_core::live::LiveReader;
use agent_vault_core::reader::Reader;
use agent_vault_core::secrecy::SecretString;
use agent_vault_core::sync;
use agent_vault_core::{GroupName, KeySource, KeyStore, SecretPath, Vault};
use sha2::{Digest, Sha256};

use crate::convert::{self, AgentInfo, Principal, SecretInfo};
use crate::failure::{Failure, Result};

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

/// Where a git URL is cloned: `$AGENT_VAULT_HOME/clones/<sha256 of the URL>`.
pub fn clone_dir(keys: &KeyStore, url: &str) -> PathBuf {
    keys.root()
        .join("clones")
        .join(hex::encode(Sha256::digest(url.as_bytes())))
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
                remote::clone(&opts.repo, &dir)?;
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
        self.with_reader(|r| Ok(Principal::from(r.role())))
    }

    /// The agents and their grants, from the verified manifest.
    pub fn list_agents(&self) -> Result<Vec<AgentInfo>> {
        self.with_reader(|r| Ok(convert::agents(r.manifest())))
    }

    /// Every secret (or one group's) with its metadata, as `agent-vault list` shows them.
    pub fn list_secrets(&self, group: Option<&str>) -> Result<Vec<SecretInfo>> {
        let group: Option<GroupName> = group.map(str::parse).transpose().map_err(Failure::from)?;
        let guard = self.live.read().unwrap_or_else(PoisonError::into_inner);
        let live = guard.as_ref().ok_or_else(Self::closed)?;
        let infos = live.vault().list(group.as_ref())?;
        Ok(infos.into_iter().map(SecretInfo::from).collect())
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
        Ok(convert::outcome_name(&outcome))
    }
}
