//! The journal of an operation in progress. Every change to the vault is
//! described first as a [`Txn`], written durably to
//! `.agent-vault/.local/journal.json`, then carried out by the same
//! roll-forward code that completes it after a crash. The journal holds only
//! public data: names, recipients, signed metadata, the target manifest.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::{Manifest, SecretMeta};
use crate::names::{AgentName, GroupName, SecretPath};

/// A group key rotation: a new group identity (waiting, encrypted to its
/// readers, in `groups/<group>.key.age.next`) to which every secret of the
/// group is re-encrypted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotation {
    /// The group.
    pub group: GroupName,
    /// The new group key's recipient.
    pub recipient: String,
    /// The new generation.
    pub generation: u64,
    /// Further encrypted group keys the values may be encrypted to (after a
    /// merge: the other side's), relative to `.agent-vault/.local`.
    #[serde(default)]
    pub extra_keys: Vec<String>,
}

/// One operation on the vault, as a description that can be completed from
/// any point.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Txn {
    /// What the operation is, for the commit message (never a value).
    pub op: String,
    /// The manifest to sign and write at the end, if the operation changes it.
    pub manifest: Option<Manifest>,
    /// New secret files: once a `.age` file's hash equals its metadata's, the
    /// metadata is written.
    pub metas: Vec<(SecretPath, SecretMeta)>,
    /// Group key rotations.
    pub rotate: Vec<Rotation>,
    /// Groups whose key file is re-encrypted to the target manifest's readers.
    pub rewrap: Vec<GroupName>,
    /// Secrets to delete.
    pub remove_secrets: Vec<SecretPath>,
    /// Agents whose files to delete.
    pub remove_agents: Vec<AgentName>,
    /// Agents whose files (`public.key`, `private.key.escrow`) were written.
    pub agent_files: Vec<AgentName>,
    /// Agents whose escrowed key is re-encrypted to the target manifest's owners.
    #[serde(default)]
    pub reescrow: Vec<AgentName>,
    /// For a merge: the merged commit (the second parent).
    #[serde(default)]
    pub merge_parent: Option<String>,
    /// Further files to commit (a merge's, the broker's), relative to `.agent-vault`.
    #[serde(default)]
    pub extra_files: Vec<String>,
    /// The new `services.yaml` (empty: none), signed with the manifest.
    #[serde(default)]
    pub services: Option<String>,
}

impl Txn {
    /// A transaction for `op`.
    pub fn new(op: impl Into<String>) -> Self {
        Txn {
            op: op.into(),
            ..Txn::default()
        }
    }

    /// Writes the journal durably. From here on the operation will complete.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| Error::corrupt(path, format!("cannot encode journal: {e}")))?;
        if let Some(dir) = path.parent() {
            fsutil::create_dir_all(dir, 0o755)?;
        }
        fsutil::write_atomic(path, &bytes, fsutil::PUBLIC_FILE)
    }

    /// Reads a journal.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        match fsutil::read_optional(path)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::corrupt(path, format!("unreadable journal: {e}"))),
        }
    }
}
