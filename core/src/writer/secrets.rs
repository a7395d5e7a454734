//! Secrets: set, remove, and re-signing their metadata.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::crypto::{self, Recipient};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::journal::Txn;
use crate::model::{GroupEntry, MetaFields, SecretMeta};
use crate::names::{GroupName, SecretPath};
use crate::progress::Task;
use crate::vfs::Batch;

use super::{SetOptions, Writer};

/// A value sealed for writing: its path, ciphertext and signed metadata.
pub(super) type Sealed = (SecretPath, Vec<u8>, SecretMeta);

impl Writer<'_> {
    /// Sets one secret.
    pub fn set(&mut self, path: &SecretPath, value: &[u8], opts: &SetOptions) -> Result<()> {
        self.set_many(
            vec![(path.clone(), value, opts.clone())],
            format!("set {path}"),
        )
    }

    /// Sets many secrets under one lock with one commit (used by `import`).
    pub fn set_many(
        &mut self,
        items: Vec<(SecretPath, &[u8], SetOptions)>,
        op: String,
    ) -> Result<()> {
        if let Some((p, _, _)) = items
            .iter()
            .find(|(_, v, _)| v.len() > crate::vfs::MAX_VALUE)
        {
            return Err(Error::InvalidInput(format!(
                "the value of {p} is larger than {} bytes, the most a secret may hold",
                crate::vfs::MAX_VALUE
            )));
        }
        self.prepare_value_paths(items.iter().map(|(p, _, _)| p))?;
        let mut txn = Txn::new(op);
        let mut target = self.manifest.clone();
        let groups: BTreeSet<&GroupName> = items.iter().map(|(p, _, _)| p.group()).collect();
        for g in groups {
            if !target.groups.contains_key(g) {
                let rot = self.prepare_rotation(&target, g, 1, Default::default())?;
                target.groups.insert(
                    g.clone(),
                    GroupEntry {
                        recipient: rot.recipient.clone(),
                        generation: 1,
                    },
                );
                txn.rotate.push(rot);
            }
        }
        if !txn.rotate.is_empty() {
            txn.manifest = Some(target.clone());
        }
        let sealed = self.seal(&target, &items)?;
        txn.metas = sealed
            .iter()
            .map(|(p, _, m)| (p.clone(), m.clone()))
            .collect();
        let _t = crate::trace::phase("set: journal and ciphertext");
        txn.write(self.vault, &self.signing)?;
        self.write_sealed(sealed)?;
        drop(_t);
        self.complete(txn)
    }

    /// Encrypts values to their groups' keys in `target` and signs their
    /// metadata (before the journal is written).
    pub(super) fn seal(
        &self,
        target: &crate::model::Manifest,
        items: &[(SecretPath, &[u8], SetOptions)],
    ) -> Result<Vec<Sealed>> {
        let now = jiff::Timestamp::now();
        let vault = self.vault;
        let signing = &self.signing;
        let bar = Task::begin("encrypting", items.len());
        items
            .par_iter()
            .map(|(path, value, opts)| {
                bar.step();
                let entry = target.group(path.group())?;
                let recipient: Recipient = entry.recipient.parse()?;
                // Only fields an owner signed (or legacy metadata whose value
                // an owner signed) carry over: an edited description or
                // expiry is not laundered into a new signature.
                let old = vault
                    .secret_meta(path)
                    .ok()
                    .filter(|m| m.verify_signature(vault.id(), path, target).is_ok());
                let fields = MetaFields {
                    created: old.as_ref().map(|m| m.created).unwrap_or(now),
                    updated: now,
                    expires: opts.expires.or(old.as_ref().and_then(|m| m.expires)),
                    description: opts
                        .description
                        .clone()
                        .or(old.as_ref().and_then(|m| m.description.clone())),
                };
                let ct = crypto::encrypt(&[&recipient], value)?;
                let meta =
                    SecretMeta::sign(fields, signing, vault.id(), path, &ct, entry.generation);
                Ok((path.clone(), ct, meta))
            })
            .collect()
    }

    /// Writes sealed values' ciphertexts (after the journal is written).
    pub(super) fn write_sealed(&self, sealed: Vec<Sealed>) -> Result<()> {
        let fs = self.vault.fs();
        if let [(p, ct, _)] = sealed.as_slice() {
            fs.write_atomic(&self.vault.secret_age_path(p), ct, fsutil::PUBLIC_FILE)?;
        } else {
            let mut batch = Batch::with_pool(fs, &self.vault.pool_dir())?;
            batch.write_all(
                sealed
                    .into_iter()
                    .map(|(p, ct, _)| (self.vault.secret_age_path(&p), ct))
                    .collect(),
            )?;
            batch.commit()?;
        }
        Ok(())
    }

    /// Makes sure each value's directory is a real directory and its two
    /// files are absent or regular files (before the journal is written:
    /// a link there refuses the whole operation).
    pub(super) fn prepare_value_paths<'a>(
        &self,
        paths: impl Iterator<Item = &'a SecretPath> + Clone,
    ) -> Result<()> {
        let dirs: BTreeSet<PathBuf> = paths
            .clone()
            .filter_map(|p| self.vault.secret_age_path(p).parent().map(Path::to_owned))
            .collect();
        for d in &dirs {
            self.vault.fs().create_dir_all(d, 0o755)?;
        }
        for p in paths {
            self.vault.fs().is_file(&self.vault.secret_age_path(p))?;
            self.vault.fs().is_file(&self.vault.secret_meta_path(p))?;
        }
        Ok(())
    }

    /// Removes a secret.
    pub fn remove_secret(&mut self, path: &SecretPath) -> Result<()> {
        if self
            .vault
            .fs()
            .entry_type(&self.vault.secret_age_path(path))?
            .is_none()
        {
            return Err(Error::SecretNotFound(path.to_string()));
        }
        let mut txn = Txn::new(format!("rm {path}"));
        txn.remove_secrets.push(path.clone());
        self.run(txn)
    }

    /// Signs the description and expiry of every secret whose metadata
    /// predates their signing (`signed: 2`): metadata whose value signature
    /// verifies is re-signed with its fields as they stand, in one journaled
    /// operation. Returns the secrets re-signed and those left alone because
    /// their value's signature does not verify (`check` names why).
    pub fn resign_metadata(&mut self) -> Result<(Vec<SecretPath>, Vec<SecretPath>)> {
        let v = self.vault;
        let mut txn = Txn::new("sign the description and expiry of older metadata");
        let mut skipped = Vec::new();
        for p in v.secret_paths(None)? {
            let Ok(meta) = v.secret_meta(&p) else {
                skipped.push(p);
                continue;
            };
            if meta.signed != 1 {
                continue;
            }
            let Some(ct) = fsutil::read_optional(&v.secret_age_path(&p))? else {
                skipped.push(p);
                continue;
            };
            let generations = self
                .manifest
                .groups
                .get(p.group())
                .map(|g| vec![g.generation])
                .unwrap_or_default();
            if meta
                .verify(v.id(), &p, &ct, &self.manifest, &generations)
                .is_err()
            {
                skipped.push(p);
                continue;
            }
            let new = SecretMeta::sign(
                meta.fields(),
                &self.signing,
                v.id(),
                &p,
                &ct,
                meta.generation,
            );
            txn.metas.push((p, new));
        }
        if txn.metas.is_empty() {
            return Ok((Vec::new(), skipped));
        }
        let done = txn.metas.iter().map(|(p, _)| p.clone()).collect();
        self.run(txn)?;
        Ok((done, skipped))
    }
}
