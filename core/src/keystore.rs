//! Private keys outside the repository, under `$AGENT_VAULT_HOME`
//! (default `~/.agent-vault`): `keys/<vault-id>/owner.key`,
//! `keys/<vault-id>/agents/<agent>.key`, and the trust pins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::crypto::Identity;
use crate::error::{Error, Result};
use crate::fsutil::{self, PRIVATE_DIR, PRIVATE_FILE};
use crate::model;
use crate::names::{AgentName, OwnerName};

/// Where a key to open the vault comes from.
pub enum KeySource {
    /// `--key FILE`.
    File(PathBuf),
    /// The raw key or a path, e.g. from `AGENT_VAULT_KEY`. Used in memory only.
    Text(age::secrecy::SecretString),
    /// The owner key stored for this vault.
    OwnerDefault,
}

impl KeySource {
    /// Key resolution for reads: `--key FILE`, then `AGENT_VAULT_KEY` (a path
    /// or a raw `AGE-SECRET-KEY-…`), then the owner key of this vault.
    pub fn resolve(flag: Option<PathBuf>) -> Self {
        if let Some(f) = flag {
            return KeySource::File(f);
        }
        match std::env::var("AGENT_VAULT_KEY") {
            Ok(v) if !v.trim().is_empty() => KeySource::Text(v.into()),
            _ => KeySource::OwnerDefault,
        }
    }
}

/// The key store of one user: `$AGENT_VAULT_HOME`.
#[derive(Debug, Clone)]
pub struct KeyStore {
    root: PathBuf,
}

/// What a reader pinned the first time it opened a vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustPins {
    /// The vault id.
    pub vault_id: String,
    /// Owner name → Ed25519 public key (base64).
    pub owners: BTreeMap<OwnerName, String>,
}

/// Which vault a repository holds, as this machine first saw it: keyed by
/// something a push cannot change (the clone's path on this machine, a
/// remote's URL), never by the unsigned `config.yaml` alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryPin {
    /// `path:<canonical directory>` or `remote:<url>`.
    pub repository: String,
    /// The vault id pinned for it.
    pub vault_id: String,
}

impl KeyStore {
    /// `$AGENT_VAULT_HOME`, or `~/.agent-vault`.
    pub fn from_env() -> Result<Self> {
        if let Some(h) = std::env::var_os("AGENT_VAULT_HOME").filter(|h| !h.is_empty()) {
            return Ok(KeyStore { root: h.into() });
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                Error::InvalidInput("neither AGENT_VAULT_HOME nor HOME is set".into())
            })?;
        Ok(KeyStore {
            root: PathBuf::from(home).join(".agent-vault"),
        })
    }

    /// A key store rooted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        KeyStore { root: root.into() }
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `keys/<vault-id>`.
    pub fn vault_dir(&self, vault_id: &str) -> PathBuf {
        self.root.join("keys").join(vault_id)
    }

    /// `keys/<vault-id>/owner.key`.
    pub fn owner_key_path(&self, vault_id: &str) -> PathBuf {
        self.vault_dir(vault_id).join("owner.key")
    }

    /// `keys/<vault-id>/agents/<agent>.key`.
    pub fn agent_key_path(&self, vault_id: &str, agent: &AgentName) -> PathBuf {
        self.vault_dir(vault_id)
            .join("agents")
            .join(format!("{agent}.key"))
    }

    fn trust_path(&self, vault_id: &str) -> PathBuf {
        self.vault_dir(vault_id).join("trust.yaml")
    }

    /// Writes a private key file 0600 in 0700 directories, atomically.
    pub fn write_key(&self, path: &Path, id: &Identity) -> Result<()> {
        write_private_key(path, id)
    }

    /// Loads the key named by `source`.
    pub fn load(&self, source: &KeySource, vault_id: &str) -> Result<Identity> {
        match source {
            KeySource::File(p) => Identity::read_file(p),
            KeySource::Text(t) => {
                let t = t.expose_secret().trim();
                if t.starts_with("AGE-SECRET-KEY-") {
                    Identity::parse(t, "AGENT_VAULT_KEY")
                } else {
                    Identity::read_file(Path::new(t))
                }
            }
            KeySource::OwnerDefault => {
                let p = self.owner_key_path(vault_id);
                if !p.exists() {
                    return Err(Error::NoKey {
                        vault_id: vault_id.to_owned(),
                    });
                }
                Identity::read_file(&p)
            }
        }
    }

    /// The key to mint a token for `agent` with: the key named by `source`;
    /// with none named, this vault's owner key, or else, when this machine
    /// holds no owner key, the agent's own key in this store
    /// (`keys/<vault-id>/agents/<agent>.key`).
    pub fn load_for_agent(
        &self,
        source: &KeySource,
        vault_id: &str,
        agent: &AgentName,
    ) -> Result<Identity> {
        if let KeySource::OwnerDefault = source {
            let own = self.agent_key_path(vault_id, agent);
            if !self.owner_key_path(vault_id).exists() && own.exists() {
                return Identity::read_file(&own);
            }
        }
        self.load(source, vault_id)
    }

    /// The pins for a vault, if it was opened here before.
    pub fn trust(&self, vault_id: &str) -> Result<Option<TrustPins>> {
        let p = self.trust_path(vault_id);
        match fsutil::read_optional(&p)? {
            None => Ok(None),
            Some(b) => Ok(Some(model::parse_yaml(&p, &b)?)),
        }
    }

    /// Records the pins.
    pub fn set_trust(&self, pins: &TrustPins) -> Result<()> {
        let dir = self.vault_dir(&pins.vault_id);
        fsutil::create_dir_all(&dir, PRIVATE_DIR)?;
        fsutil::write_atomic(
            &self.trust_path(&pins.vault_id),
            &model::to_yaml(pins),
            PRIVATE_FILE,
        )
    }

    /// `repositories/<sha256 of the repository key>.yaml`.
    pub fn repository_pin_path(&self, repository: &str) -> PathBuf {
        self.root.join("repositories").join(format!(
            "{}.yaml",
            crate::crypto::sha256_hex(repository.as_bytes())
        ))
    }

    /// The vault id pinned for a repository (`path:…` or `remote:…`), if any.
    pub fn repository_pin(&self, repository: &str) -> Result<Option<String>> {
        let p = self.repository_pin_path(repository);
        match fsutil::read_optional(&p)? {
            None => Ok(None),
            Some(b) => {
                let pin: RepositoryPin = model::parse_yaml(&p, &b)?;
                Ok((pin.repository == repository).then_some(pin.vault_id))
            }
        }
    }

    /// Pins a repository to a vault id.
    pub fn set_repository_pin(&self, repository: &str, vault_id: &str) -> Result<()> {
        let p = self.repository_pin_path(repository);
        if let Some(d) = p.parent() {
            fsutil::create_dir_all(d, PRIVATE_DIR)?;
        }
        let pin = RepositoryPin {
            repository: repository.to_owned(),
            vault_id: vault_id.to_owned(),
        };
        fsutil::write_atomic(&p, &model::to_yaml(&pin), PRIVATE_FILE)
    }

    /// Files under `keys/<vault-id>` whose permissions let others read them.
    pub fn loose_permissions(&self, vault_id: &str) -> Vec<(PathBuf, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = Vec::new();
        let mut stack = vec![self.vault_dir(vault_id)];
        while let Some(dir) = stack.pop() {
            if let Ok(md) = std::fs::metadata(&dir) {
                let mode = md.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    out.push((dir.clone(), mode));
                }
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(md) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if md.is_dir() {
                    stack.push(p);
                } else {
                    let mode = md.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        out.push((p, mode));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

/// Writes a private key file: 0600 from creation, in 0700 directories.
pub fn write_private_key(path: &Path, id: &Identity) -> Result<()> {
    if let Some(dir) = path.parent() {
        fsutil::create_dir_all(dir, PRIVATE_DIR)?;
    }
    fsutil::write_atomic(
        path,
        id.to_file_contents().expose_secret().as_bytes(),
        PRIVATE_FILE,
    )
}
