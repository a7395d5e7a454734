//! The journal of an operation in progress. Every change to the vault is
//! described first as a [`Txn`], written durably to
//! `.agent-vault/.local/journal.json`, then carried out by the same
//! roll-forward code that completes it after a crash. The journal holds only
//! public data: names, recipients, signed metadata, the target manifest.
//!
//! A journal is completed only if it is this machine's own: it is signed
//! with the signing key of the owner who began the operation (derived from
//! the owner key, which never leaves the machine's key store), and it names
//! the manifest it started from (the SHA-256 of `manifest.yaml`'s bytes).
//! It is completed only by that owner, and only while `manifest.yaml` is
//! still the one it started from or the one it is heading to. A journal that
//! arrived some other way (committed to git, planted in the working tree,
//! an old one of ours put back) is refused, naming it, and never completed.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, OwnerSigningKey};
use crate::error::{Error, Result};
use crate::model::{self, Manifest, SecretMeta};
use crate::names::{AgentName, GroupName, SecretPath};
use crate::vault::Vault;
use crate::vfs::Kind;

/// The signature domain of journals.
const DOMAIN: &str = "agent-vault journal v1";

/// The journal as written: the transaction's exact JSON, what it started
/// from, and the owner's signature over both.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// The public signing key of the owner who wrote it.
    signing_key: String,
    /// SHA-256 (hex) of `manifest.yaml` when the operation began ("" if none).
    base_manifest_sha256: String,
    /// The transaction, as JSON.
    txn: String,
    /// The owner's signature over the vault id, the base and the transaction.
    signature: String,
}

fn signed_message(vault_id: &str, base: &str, txn: &str) -> Vec<u8> {
    let mut m = Vec::new();
    for part in [vault_id, base, txn] {
        m.extend_from_slice(&(part.len() as u64).to_le_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m
}

fn manifest_sha256(vault: &Vault) -> Result<String> {
    Ok(vault
        .fs()
        .read_optional(&vault.manifest_path(), Kind::Manifest)?
        .map(|b| crypto::sha256_hex(&b))
        .unwrap_or_default())
}

/// A group key rotation: a new keyring (waiting, encrypted to its readers,
/// in `groups/<group>.key.age.next`), and the values re-encrypted to its
/// newest key (every one, or when lazy those named).
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
    /// Format 2's lazy revocation: only the values in `reencrypt` move to
    /// the new key (false in a journal written before it: every value).
    #[serde(default)]
    pub lazy: bool,
    /// The values a lazy rotation re-encrypts (a merge's, set since the base).
    #[serde(default)]
    pub reencrypt: Vec<SecretPath>,
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
    /// Further public files to write and commit, relative to `.agent-vault`
    /// (a proposal's decision), with their contents.
    #[serde(default)]
    pub write_files: Vec<(String, String)>,
    /// Moves the vault to the current format (`config.yaml`'s version; the
    /// target manifest carries its own).
    #[serde(default)]
    pub migrate: bool,
}

impl Txn {
    /// A transaction for `op`.
    pub fn new(op: impl Into<String>) -> Self {
        Txn {
            op: op.into(),
            ..Txn::default()
        }
    }

    /// Writes the journal durably, signed by `signing` and bound to the
    /// manifest as it is now. From here on the operation will complete.
    pub fn write(&self, vault: &Vault, signing: &OwnerSigningKey) -> Result<()> {
        let path = vault.journal_path();
        let txn = serde_json::to_string(self)
            .map_err(|e| Error::corrupt(&path, format!("cannot encode journal: {e}")))?;
        let base = manifest_sha256(vault)?;
        let sealed = Sealed {
            signing_key: signing.public(),
            signature: signing.sign(DOMAIN, &signed_message(vault.id(), &base, &txn)),
            base_manifest_sha256: base,
            txn,
        };
        let bytes = serde_json::to_vec(&sealed)
            .map_err(|e| Error::corrupt(&path, format!("cannot encode journal: {e}")))?;
        vault
            .fs()
            .write_atomic(&path, &bytes, crate::fsutil::PUBLIC_FILE)
    }

    /// Reads the journal of a half-finished operation, if there is one, and
    /// accepts it only if the owner whose public signing key is `ours`
    /// wrote it on this vault and the manifest is still the one it started
    /// from (or already the one it heads to). Otherwise it is refused.
    pub fn read(vault: &Vault, ours: &str) -> Result<Option<Self>> {
        let path = vault.journal_path();
        let Some(bytes) = vault.fs().read_optional(&path, Kind::Journal)? else {
            return Ok(None);
        };
        let refuse = |why: &str| Error::Refused {
            path: path.clone(),
            reason: format!(
                "is not a journal this machine's owner key wrote for the vault as it is ({why}); \
                 it is not completed. Delete it if no agent-vault command of yours was interrupted"
            ),
        };
        let sealed: Sealed =
            serde_json::from_slice(&bytes).map_err(|_| refuse("it is not a signed journal"))?;
        if sealed.signing_key != ours
            || !crypto::verify(
                ours,
                DOMAIN,
                &signed_message(vault.id(), &sealed.base_manifest_sha256, &sealed.txn),
                &sealed.signature,
            )
        {
            return Err(refuse("its signature is not this owner's"));
        }
        let txn: Txn =
            serde_json::from_str(&sealed.txn).map_err(|_| refuse("its operation is unreadable"))?;
        let now = manifest_sha256(vault)?;
        let target = txn
            .manifest
            .as_ref()
            .map(|m| crypto::sha256_hex(&model::to_yaml(m)));
        if now != sealed.base_manifest_sha256 && Some(&now) != target.as_ref() {
            return Err(refuse(
                "the manifest is neither the one it started from nor the one it leads to",
            ));
        }
        Ok(Some(txn))
    }

    /// The operation a journal names, unverified (for `check`'s report).
    pub fn peek(vault: &Vault) -> Result<Option<String>> {
        let path = vault.journal_path();
        let Some(bytes) = vault.fs().read_optional(&path, Kind::Journal)? else {
            return Ok(None);
        };
        Ok(Some(
            serde_json::from_slice::<Sealed>(&bytes)
                .ok()
                .and_then(|s| serde_json::from_str::<Txn>(&s.txn).ok())
                .map(|t| t.op)
                .unwrap_or_else(|| "an unknown operation".into()),
        ))
    }
}
