//! Carrying out a journaled operation: the checks before the journal is
//! written, then each step, re-runnable after a crash.

use std::path::PathBuf;

use age::secrecy::ExposeSecret;
use rayon::prelude::*;

use crate::crypto::{self, Recipient};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::journal::Txn;
use crate::keyring::Keyring;
use crate::model::{self, Manifest, ManifestSig};
use crate::vfs::{Batch, Kind};

use super::{Writer, remove_empty_dirs};

impl Writer<'_> {
    pub(crate) fn run(&mut self, txn: Txn) -> Result<()> {
        self.preflight(&txn)?;
        txn.write(self.vault, &self.signing)?;
        self.complete(txn)
    }

    /// Reads, before the journal is written, the files an operation cannot
    /// do without (group keys, escrows): a link, special file or oversize
    /// file among them refuses the operation here, naming it, instead of
    /// leaving a journal that cannot complete.
    pub(super) fn preflight(&self, txn: &Txn) -> Result<()> {
        let (v, fs) = (self.vault, self.vault.fs());
        for g in txn.rotate.iter().map(|r| &r.group).chain(&txn.rewrap) {
            fs.read_optional(&v.group_key_path(g), Kind::GroupKey)?;
        }
        for a in &txn.reescrow {
            fs.read_optional(&v.agent_dir(a).join("private.key.escrow"), Kind::KeyFile)?;
        }
        for p in &txn.remove_secrets {
            for f in [v.secret_age_path(p), v.secret_meta_path(p)] {
                if let Some(t @ crate::vfs::EntryType::Dir) = fs.entry_type(&f)? {
                    return Err(Error::Refused {
                        path: f,
                        reason: t.refusal().into(),
                    });
                }
            }
        }
        if txn.manifest.is_some() {
            for f in [v.manifest_path(), v.sig_path(), v.services_path()] {
                fs.is_file(&f)?;
            }
        }
        Ok(())
    }

    /// Carries out a journaled operation from wherever it stands. Every step
    /// checks what is already done, so running it twice is harmless.
    pub(super) fn complete(&mut self, txn: Txn) -> Result<()> {
        let target = txn
            .manifest
            .clone()
            .unwrap_or_else(|| self.manifest.clone());
        let mut touched: Vec<PathBuf> = Vec::new();
        self.skipped.clear();

        // 0. A version 1 vault's move to the current format.
        self.complete_migration(&txn, &mut touched)?;

        // 1. Metadata of new values, once their ciphertext is in place.
        let t = crate::trace::phase("complete: metadata");
        self.complete_metadata(&txn, &mut touched)?;
        drop(t);

        // 2. Rotations.
        let _t = crate::trace::phase("complete: rotations");
        for rot in &txn.rotate {
            let (files, skipped) = self.complete_rotation(rot)?;
            touched.extend(files);
            self.skipped.extend(skipped);
        }

        // 3. Group key files re-encrypted to a new reader set.
        self.complete_rewrap(&txn, &target, &mut touched)?;

        // 4. Removals, then the escrows when the owners changed.
        self.complete_removals(&txn, &mut touched)?;
        self.complete_escrows(&txn, &target, &mut touched)?;

        // 5. The services list and the manifest, signed together.
        self.complete_signed(&txn, &mut touched)?;

        // 6. One commit of exactly these files.
        let _t = crate::trace::phase("complete: git commit");
        self.complete_commit(&txn, touched)?;
        self.vault.fs().remove_file(&self.vault.journal_path())?;
        Ok(())
    }

    /// Writes the metadata of every new value whose ciphertext is in place.
    fn complete_metadata(&self, txn: &Txn, touched: &mut Vec<PathBuf>) -> Result<()> {
        let v = self.vault;
        let fs = v.fs();
        let bar = crate::progress::Task::begin("signing metadata", txn.metas.len());
        let ready: Vec<Option<(PathBuf, Vec<u8>)>> = txn
            .metas
            .par_iter()
            .map(|(p, meta)| {
                bar.step();
                // A value that is not (or no longer) a regular file of ours is
                // not ready: its metadata is not written.
                let ct = match fs.read_optional(&v.secret_age_path(p), Kind::Secret) {
                    Err(Error::Refused { .. }) => None,
                    _ if fs.is_file(&v.secret_meta_path(p)).is_err() => None,
                    other => other?,
                };
                Ok(ct
                    .filter(|ct| crypto::sha256_hex(ct) == meta.ciphertext_sha256)
                    .map(|_| (v.secret_meta_path(p), model::to_yaml(meta))))
            })
            .collect::<Result<_>>()?;
        for (p, _) in &txn.metas {
            touched.push(v.secret_age_path(p));
            touched.push(v.secret_meta_path(p));
        }
        let mut batch = Batch::with_pool(fs, &v.pool_dir())?;
        batch.write_all(ready.into_iter().flatten().collect())?;
        batch.commit()?;
        Ok(())
    }

    /// Re-encrypts group keyrings (every generation) to their groups' new reader sets.
    fn complete_rewrap(
        &self,
        txn: &Txn,
        target: &Manifest,
        touched: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let v = self.vault;
        let fs = v.fs();
        for g in &txn.rewrap {
            let path = v.group_key_path(g);
            let ct = fs.read(&path, Kind::GroupKey)?;
            let ring = Keyring::open(&[&self.id], &ct, &path)?;
            // A key file is not signed: only the manifest's recipient vouches
            // for its newest key (the one new values are encrypted to).
            if ring.newest().recipient().as_string() != target.group(g)?.recipient {
                return Err(Error::corrupt(
                    &path,
                    "holds a key that is not the group's (its recipient differs from the manifest's)",
                ));
            }
            let recipients = target.group_key_recipients(g)?;
            let new = ring.seal(&recipients.iter().collect::<Vec<_>>())?;
            fs.write_atomic(&path, &new, fsutil::PUBLIC_FILE)?;
            touched.push(path);
        }
        Ok(())
    }

    /// Removes the files of removed secrets and agents.
    fn complete_removals(&self, txn: &Txn, touched: &mut Vec<PathBuf>) -> Result<()> {
        let v = self.vault;
        let fs = v.fs();
        for p in &txn.remove_secrets {
            for f in [v.secret_age_path(p), v.secret_meta_path(p)] {
                fs.remove_file(&f)?;
                touched.push(f);
            }
            remove_empty_dirs(v, &v.secret_age_path(p), &v.group_dir(p.group()));
        }
        for a in &txn.remove_agents {
            let dir = v.agent_dir(a);
            for f in ["public.key", "private.key.escrow"] {
                fs.remove_file(&dir.join(f))?;
                touched.push(dir.join(f));
            }
            fs.remove_empty_dir(&dir);
        }
        for a in &txn.agent_files {
            let dir = v.agent_dir(a);
            touched.push(dir.join("public.key"));
            touched.push(dir.join("private.key.escrow"));
        }
        Ok(())
    }

    /// Re-encrypts the broker's escrow and keys and the agents' escrows to
    /// the target's owners.
    fn complete_escrows(
        &self,
        txn: &Txn,
        target: &Manifest,
        touched: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let v = self.vault;
        let fs = v.fs();
        let owners = self.owner_recipients(target)?;
        // Owners changed: the broker's escrow and CA key follow them.
        if !txn.reescrow.is_empty()
            && let Some(b) = &target.broker
        {
            let dir = v.broker_dir();
            let broker: Recipient = b.recipient.parse()?;
            let owner_refs: Vec<&Recipient> = owners.iter().collect();
            let mut with_broker = owner_refs.clone();
            with_broker.push(&broker);
            for (name, to) in [
                ("private.key.escrow", &owner_refs),
                ("ca.key.age", &with_broker),
                ("token.key.age", &with_broker),
            ] {
                let path = dir.join(name);
                let plain = crypto::decrypt(&[&self.id], &fs.read(&path, Kind::KeyFile)?, &path)?;
                fs.write_atomic(
                    &path,
                    &crypto::encrypt(to, plain.expose_secret())?,
                    fsutil::PUBLIC_FILE,
                )?;
                touched.push(path);
            }
        }
        for a in &txn.reescrow {
            let path = v.agent_dir(a).join("private.key.escrow");
            let ct = fs.read(&path, Kind::KeyFile)?;
            let id = crypto::decrypt_identity(&[&self.id], &ct, &path)?;
            let new = crypto::encrypt_identity(&owners.iter().collect::<Vec<_>>(), &id)?;
            fs.write_atomic(&path, &new, fsutil::PUBLIC_FILE)?;
            touched.push(path);
        }
        Ok(())
    }

    /// Writes the services list and the signed manifest.
    fn complete_signed(&mut self, txn: &Txn, touched: &mut Vec<PathBuf>) -> Result<()> {
        let v = self.vault;
        let fs = v.fs();
        for (rel, text) in &txn.write_files {
            if rel.starts_with(crate::vault::LOCAL_DIR)
                || rel
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty())
            {
                return Err(Error::corrupt(
                    v.journal_path(),
                    format!("names a file it may not write: {rel}"),
                ));
            }
            let path = v.dir().join(rel);
            if let Some(parent) = path.parent() {
                fs.create_dir_all(parent, 0o755)?;
            }
            fs.write_atomic(&path, text.as_bytes(), fsutil::PUBLIC_FILE)?;
            touched.push(path);
        }
        if let Some(services) = &txn.services {
            let path = v.services_path();
            if services.is_empty() {
                fs.remove_file(&path)?;
            } else {
                fs.write_atomic(&path, services.as_bytes(), fsutil::PUBLIC_FILE)?;
            }
            touched.push(path);
        }
        if let Some(m) = &txn.manifest {
            self.write_manifest(m)?;
            touched.push(v.manifest_path());
            touched.push(v.sig_path());
            self.manifest = m.clone();
        }
        Ok(())
    }

    /// Commits exactly the files the operation touched.
    fn complete_commit(&self, txn: &Txn, mut touched: Vec<PathBuf>) -> Result<()> {
        let v = self.vault;
        if let Some(repo) = &self.repo {
            for f in &txn.extra_files {
                if !f.split('/').any(|c| c == ".." || c.is_empty()) {
                    touched.push(v.dir().join(f));
                }
            }
            touched.sort();
            touched.dedup();
            let merged = txn
                .merge_parent
                .as_deref()
                .map(git2::Oid::from_str)
                .transpose()?;
            repo.commit_paths_merging(&touched, &format!("agent-vault: {}", txn.op), merged)?;
        }
        Ok(())
    }

    fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let v = self.vault;
        let fs = v.fs();
        let bytes = model::to_yaml(m);
        let services = fs
            .read_optional(&v.services_path(), Kind::Services)?
            .unwrap_or_default();
        let sig = ManifestSig::sign(&self.owner, &self.signing, v.id(), &bytes, &services);
        fs.write_atomic(&v.manifest_path(), &bytes, fsutil::PUBLIC_FILE)?;
        fs.write_atomic(&v.sig_path(), &model::to_yaml(&sig), fsutil::PUBLIC_FILE)
    }
}
