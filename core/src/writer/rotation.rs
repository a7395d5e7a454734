//! Group key rotation: a new key for the next generation in front of the
//! group's keyring. Lazy (revocation, format 2): no value is rewritten, and
//! values of older generations are *exposed* until set again. Eager
//! (`rekey`, `remove-owner`): every value of the group re-encrypted to it.

use std::path::PathBuf;

use age::secrecy::ExposeSecret;
use rayon::prelude::*;

use crate::crypto::{self, Identity, OwnerSigningKey, Recipient};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::journal::{Rotation, Txn};
use crate::keyring::Keyring;
use crate::model::{self, GroupEntry, Manifest, MetaFields, SecretMeta};
use crate::names::{GroupName, SecretPath};
use crate::progress::Task;
use crate::vault::Vault;
use crate::vfs::{Batch, Kind};

use super::Writer;

/// How a rotation treats the group's values.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Re-encrypt every value to the new key (`rekey`, `remove-owner`);
    /// otherwise only those in `reencrypt` (format 2's lazy revocation).
    pub eager: bool,
    /// Values to move to the new key even when lazy (after a merge: those
    /// set on either side since the common base).
    pub reencrypt: Vec<SecretPath>,
    /// Further keyring files whose generations join the new keyring (after
    /// a merge: each side's), relative to `.agent-vault/.local`.
    pub extra_keys: Vec<String>,
}

impl Plan {
    /// Every value re-encrypted.
    pub(crate) fn eager() -> Self {
        Plan {
            eager: true,
            ..Plan::default()
        }
    }
}

impl Writer<'_> {
    /// Adds a lazy rotation of `group` to the next generation to `txn` and
    /// `target`: a new key in front of the keyring, no value rewritten. What
    /// revocation does.
    pub(crate) fn rotate_into(
        &self,
        target: &mut Manifest,
        txn: &mut Txn,
        group: &GroupName,
    ) -> Result<()> {
        self.rotate_with(target, txn, group, Plan::default())
    }

    /// Adds a rotation of `group` to the next generation, as `plan` says.
    pub(crate) fn rotate_with(
        &self,
        target: &mut Manifest,
        txn: &mut Txn,
        group: &GroupName,
        plan: Plan,
    ) -> Result<()> {
        let generation = target.group(group)?.generation + 1;
        let rot = self.prepare_rotation(target, group, generation, plan)?;
        target.groups.insert(
            group.clone(),
            GroupEntry {
                recipient: rot.recipient.clone(),
                generation,
            },
        );
        txn.rotate.push(rot);
        Ok(())
    }

    /// Makes a new group identity for `group` at `generation`, puts it in
    /// front of the group's keyring (with every older generation, and the
    /// plan's extra keyrings), encrypted to the readers that `target` gives
    /// the group, and leaves it in `groups/<group>.key.age.next`. Must run
    /// before the journal is written.
    pub(super) fn prepare_rotation(
        &self,
        target: &Manifest,
        group: &GroupName,
        generation: u64,
        plan: Plan,
    ) -> Result<Rotation> {
        let (v, fs) = (self.vault, self.vault.fs());
        let mut ring = Keyring::generate();
        let key_path = v.group_key_path(group);
        let older = std::iter::once(key_path)
            .filter(|_| generation > 1)
            .chain(plan.extra_keys.iter().map(|k| v.local_dir().join(k)));
        for path in older {
            if let Some(ct) = fs.read_optional(&path, Kind::GroupKey)? {
                ring.absorb(Keyring::open(&[&self.id], &ct, &path)?);
            }
        }
        let recipient = ring.newest().recipient().as_string();
        let recipients = target.group_key_recipients(group)?;
        let ct = ring.seal(&recipients.iter().collect::<Vec<_>>())?;
        let next = self.vault.group_next_key_path(group);
        fs.write_atomic(&next, &ct, fsutil::PUBLIC_FILE)?;
        Ok(Rotation {
            group: group.clone(),
            recipient,
            generation,
            extra_keys: plan.extra_keys,
            lazy: !plan.eager,
            reencrypt: plan.reencrypt,
        })
    }

    /// Re-encrypts the group's values the rotation moves (all, or when lazy
    /// only those it names) to the rotated key, then puts the new keyring
    /// in place. Returns the files it changed, and the secrets it left
    /// alone because no owner signed them or they cannot be read safely (a
    /// rotation never stops half-way over planted files).
    pub(super) fn complete_rotation(&self, rot: &Rotation) -> Result<(Vec<PathBuf>, Vec<String>)> {
        let v = self.vault;
        let fs = v.fs();
        let g = &rot.group;
        let key_path = v.group_key_path(g);
        let next_path = v.group_next_key_path(g);
        let mut touched = vec![key_path.clone()];
        // No `.next`: the keyring is in place already, every value moved.
        let Some(next_ct) = fs.read_optional(&next_path, Kind::GroupKey)? else {
            return Ok((touched, Vec::new()));
        };
        let ring = Keyring::open(&[&self.id], &next_ct, &next_path)?;
        let ids = ring.all();
        let (new_id, old_ids) = (ids[0], &ids[1..]);
        // Every older generation is in the keyring: a value signed at any
        // of them opens.
        let old_gens: Vec<u64> = (1..rot.generation).collect();
        let new_recipient: Recipient = rot.recipient.parse()?;
        let paths: Vec<SecretPath> = if rot.lazy {
            let mut only = rot.reencrypt.clone();
            only.retain(|p| p.group() == g && fs.is_file(&v.secret_age_path(p)).unwrap_or(false));
            only
        } else {
            v.secret_paths(Some(g))?
        };
        let (signing, manifest) = (&self.signing, &self.manifest);
        let t = crate::trace::phase("rotation: re-encrypt");
        let bar = Task::begin(&format!("re-encrypting group {g}"), paths.len());
        let rewritten: Vec<Rewrite> = paths
            .par_iter()
            .map(|p| {
                bar.step();
                let keys = RotationKeys {
                    new_id,
                    old_ids,
                    old_gens: &old_gens,
                    new_recipient: &new_recipient,
                    generation: rot.generation,
                };
                reencrypt(v, signing, manifest, &keys, p)
            })
            .collect::<Result<_>>()?;
        drop((t, bar));
        let _t = crate::trace::phase("rotation: write batch");
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        for (p, r) in paths.iter().zip(rewritten) {
            match r {
                Rewrite::Done => {}
                Rewrite::Skipped => {
                    skipped.push(p.to_string());
                    continue;
                }
                Rewrite::Files([a, m]) => {
                    files.push(a);
                    files.push(m);
                }
            }
            touched.push(v.secret_age_path(p));
            touched.push(v.secret_meta_path(p));
        }
        let mut batch = Batch::with_pool(fs, &self.vault.pool_dir())?;
        batch.write_all(files)?;
        batch.commit()?;
        fs.rename(&next_path, &key_path)?;
        Ok((touched, skipped))
    }
}

/// A secret's two rewritten files: `.age` and `.meta.yaml`, with their contents.
type RewrittenSecret = [(PathBuf, Vec<u8>); 2];

/// What a rotation does with one secret.
enum Rewrite {
    /// Already re-encrypted.
    Done,
    /// Left alone: no owner signed it, or it cannot be read safely.
    Skipped,
    /// Its new files.
    Files(RewrittenSecret),
}

/// The keys of one group rotation.
#[derive(Clone, Copy)]
struct RotationKeys<'a> {
    new_id: &'a Identity,
    old_ids: &'a [&'a Identity],
    old_gens: &'a [u64],
    new_recipient: &'a Recipient,
    generation: u64,
}

/// One secret of a rotation: `None` if already done. A value encrypted
/// to the old key is trusted only with a valid owner signature; one
/// encrypted to the new key (whose recipient nobody else knows yet) was
/// written by this rotation.
fn reencrypt(
    v: &Vault,
    signing: &OwnerSigningKey,
    manifest: &Manifest,
    keys: &RotationKeys<'_>,
    p: &SecretPath,
) -> Result<Rewrite> {
    let RotationKeys {
        new_id,
        old_ids,
        old_gens,
        new_recipient,
        generation,
    } = *keys;
    let age_path = v.secret_age_path(p);
    let ct = match v.fs().read(&age_path, Kind::Secret) {
        Ok(ct) => ct,
        Err(Error::Refused { .. }) => return Ok(Rewrite::Skipped),
        Err(e) => return Err(e),
    };
    let meta = v.secret_meta(p).ok();
    if let Some(m) = &meta
        && m.generation == generation
        && m.ciphertext_sha256 == crypto::sha256_hex(&ct)
    {
        return Ok(Rewrite::Done);
    }
    // The usual case: a value signed at the old generation. Otherwise the
    // file must open with the new key, which only this rotation has used.
    let signed_old = match &meta {
        Some(m)
            if !old_ids.is_empty()
                && old_gens.contains(&m.generation)
                && m.verify(v.id(), p, &ct, manifest, old_gens).is_ok() =>
        {
            crypto::decrypt(old_ids, &ct, &age_path).ok()
        }
        _ => None,
    };
    // Neither signed at the group's current generation nor encrypted to its
    // new key: not an owner's value. It is left as it is (and reported),
    // never re-encrypted to the new key, and never stops the rotation.
    let value = match signed_old {
        Some(value) => value,
        None => match crypto::decrypt(&[new_id], &ct, &age_path) {
            Ok(value) => value,
            Err(_) => return Ok(Rewrite::Skipped),
        },
    };
    let now = jiff::Timestamp::now();
    let fields = meta
        .filter(|m| m.verify_signature(v.id(), p, manifest).is_ok())
        .map(|m| m.fields())
        .unwrap_or(MetaFields {
            created: now,
            updated: now,
            expires: None,
            description: None,
        });
    let new_ct = crypto::encrypt(&[new_recipient], value.expose_secret())?;
    let new_meta = SecretMeta::sign(fields, signing, v.id(), p, &new_ct, generation);
    Ok(Rewrite::Files([
        (age_path, new_ct),
        (v.secret_meta_path(p), model::to_yaml(&new_meta)),
    ]))
}
