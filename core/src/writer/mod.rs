//! Changing the vault. A [`Writer`] holds the vault's lock and an owner key.
//! Each operation describes itself as a `Txn`, writes it to the journal,
//! and completes it with `Writer::complete` — the same code that finishes
//! a half-finished operation after a crash.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use crate::crypto::{Identity, OwnerSigningKey, Recipient};
use crate::error::{Error, Result};
use crate::git::VaultRepo;
use crate::journal::Txn;
use crate::keystore::KeySource;
use crate::model::{Manifest, Mode};
use crate::names::{AgentName, GroupName, OwnerName};
use crate::vault::{Role, Vault};

mod agents;
mod apply;
mod broker;
mod complete;
mod merge;
mod migrate;
mod owners;
mod rotation;
mod secrets;
mod sync;

pub use apply::Change;
pub use sync::SyncOutcome;

/// Options of `set`.
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    /// Expiry; `None` keeps the current one.
    pub expires: Option<jiff::Timestamp>,
    /// Description; `None` keeps the current one.
    pub description: Option<String>,
}

/// What a revoke (or a downgrade from read to use) leaves to do upstream.
#[derive(Debug, Clone, Default)]
pub struct Exposure {
    /// The agent.
    pub agent: String,
    /// The group.
    pub group: String,
    /// Whether the agent could read the group (a `use` grant never exposed values).
    pub could_read: bool,
    /// Secrets in the group now, whose values the agent could read.
    pub secrets: Vec<String>,
    /// Secrets no longer in the group but still in git history, encrypted
    /// to a group key the agent may have held.
    pub in_history: Vec<String>,
    /// Secrets of the group the rotation left as they were, because no
    /// owner signed them (planted, or damaged) or they could not be read
    /// safely: `get` refuses them, and they stay encrypted to the old key.
    pub skipped: Vec<String>,
}

/// The result of a grant.
#[derive(Debug, Clone)]
pub struct GrantOutcome {
    /// The mode before, if any.
    pub previous: Option<Mode>,
    /// Set when the grant narrowed read to use, which rotates the group key.
    pub exposure: Option<Exposure>,
}

/// A rekey plan or result: group → number of secrets re-encrypted.
pub type RekeyReport = BTreeMap<String, usize>;

/// The vault opened for changes, with its lock held.
pub struct Writer<'v> {
    pub(crate) vault: &'v Vault,
    pub(crate) id: Identity,
    owner: OwnerName,
    signing: OwnerSigningKey,
    pub(crate) manifest: Manifest,
    pub(crate) repo: Option<VaultRepo>,
    recovered: Option<String>,
    /// Secrets the last operation's rotations left alone (see [`Exposure::skipped`]).
    skipped: Vec<String>,
    _lock: File,
}

/// Takes the vault's lock: `.local/lock`, never through a link, and only
/// while git tracks nothing under `.local/` (whose files are then trusted).
fn lock(vault: &Vault) -> Result<File> {
    crate::vfs::ensure_local_untracked(vault.dir())?;
    let path = vault.local_dir().join("lock");
    let f = vault.fs().open_lock_file(&path)?;
    f.lock().map_err(|e| Error::io(&path, e))?;
    Ok(f)
}

impl<'v> Writer<'v> {
    /// Opens the vault for changes: takes the lock, completes a half-finished
    /// operation, and checks that the key is an owner's.
    pub fn open(vault: &'v Vault, source: &KeySource) -> Result<Self> {
        let lock = lock(vault)?;
        let id = vault.keys().load(source, vault.id())?;
        let repo = VaultRepo::discover(vault.root())?;
        let pending = Txn::read(vault, &id.signing_key().public())?;
        // With no journal, a rotated key waiting in `.next` is debris from an
        // operation that died before it began: nothing refers to it.
        if pending.is_none() {
            remove_stray_next_keys(vault)?;
        }
        // The manifest that a pending operation is heading to, or the signed
        // one — or one that plain `git merge` made from two signed ones,
        // which this owner signs now.
        let mut git_merged = None;
        let manifest = match pending.as_ref().and_then(|t| t.manifest.clone()) {
            Some(m) => m,
            None => match vault.manifest() {
                Ok(m) => m,
                Err(Error::UnsignedManifest(why)) => {
                    match crate::git::merge::git_merged_manifest(vault)? {
                        Some(m) => {
                            git_merged = Some(m.clone());
                            m
                        }
                        None => return Err(Error::UnsignedManifest(why)),
                    }
                }
                Err(e) => return Err(e),
            },
        };
        let owner = match Vault::role_of(&manifest, &id)? {
            Role::Owner(o) => o,
            Role::Agent(_) | Role::Broker => return Err(Error::NotOwner),
        };
        let signing = id.signing_key();
        if manifest.owners[&owner].signing_key != signing.public() {
            return Err(Error::UnsignedManifest(format!(
                "owner {owner}'s signing key in the manifest does not match this owner key"
            )));
        }
        let mut w = Writer {
            vault,
            id,
            owner,
            signing,
            manifest,
            repo,
            recovered: None,
            skipped: Vec::new(),
            _lock: lock,
        };
        if let Some(txn) = pending {
            // The interrupted process may have died inside a git commit.
            if let (Some(repo), Ok(began)) = (&w.repo, vault.fs().modified(&vault.journal_path()))
                && let Some(began) = began
            {
                repo.clear_locks_since(began);
            }
            let op = txn.op.clone();
            w.complete(txn)?;
            w.recovered = Some(op);
        }
        if let Some(m) = git_merged {
            let mut txn = Txn::new("re-sign the manifest git merged");
            txn.rewrap = m.groups.keys().cloned().collect();
            txn.reescrow = m.agents.keys().cloned().collect();
            txn.manifest = Some(m);
            w.run(txn)?;
        }
        // Whatever we hold now must be the signed manifest.
        w.manifest = vault.manifest()?;
        w.migrate_if_old()?;
        Ok(w)
    }

    /// The operation that a crash had left half-finished and that opening
    /// this writer completed, if any.
    pub fn recovered(&self) -> Option<&str> {
        self.recovered.as_deref()
    }

    /// The current (signed) manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The owner's name.
    pub fn owner(&self) -> &OwnerName {
        &self.owner
    }

    // ---- helpers shared by the operations ----------------------------------

    /// Hands the secrets that rotations skipped to the exposures of their groups.
    fn take_skipped(&mut self, exposures: &mut [Exposure]) {
        let skipped = std::mem::take(&mut self.skipped);
        for e in exposures {
            let prefix = format!("{}/", e.group);
            e.skipped = skipped
                .iter()
                .filter(|s| s.starts_with(&prefix))
                .cloned()
                .collect();
        }
    }

    fn readable_groups(&self, agent: &AgentName) -> Vec<GroupName> {
        self.manifest
            .grants
            .get(agent)
            .map(|g| {
                g.iter()
                    .filter(|(_, m)| **m == Mode::Read)
                    .map(|(g, _)| g.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn owner_recipients(&self, m: &Manifest) -> Result<Vec<Recipient>> {
        m.owners.values().map(|o| o.recipient.parse()).collect()
    }
}

fn remove_stray_next_keys(vault: &Vault) -> Result<()> {
    let dir = vault.dir().join("groups");
    let fs = vault.fs();
    let Ok(Some(entries)) = fs.read_dir(&dir) else {
        return Ok(());
    };
    for (name, _) in entries {
        if name.to_string_lossy().ends_with(".key.age.next") {
            fs.remove_file(&dir.join(name))?;
        }
    }
    Ok(())
}

/// Removes the now-empty directories between a removed file and `stop`.
fn remove_empty_dirs(vault: &Vault, file: &Path, stop: &Path) {
    let mut cur = file.parent();
    while let Some(d) = cur {
        if d == stop || !d.starts_with(stop) || !vault.fs().remove_empty_dir(d) {
            break;
        }
        cur = d.parent();
    }
}
