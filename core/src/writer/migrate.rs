//! Moving a vault of format version 1 to the current one, by the first
//! owner command that writes. Version 1's group key file (one identity) is
//! already a keyring of one, and its values are signed at their group's
//! generation, so no value or key changes: the secrets' files move into
//! their buckets ([`crate::layout`]) and the version numbers change
//! (`config.yaml`'s and the signed manifest's), in one journaled operation
//! and one commit. The order keeps every instant readable: each file gets
//! its bucket name as a second link (no copy), the file system is synced,
//! `config.yaml` switches readers to the buckets in one rename, and only
//! then are the old names removed. A crash anywhere leaves a vault this
//! build reads, and the next command completes the journal. The version
//! matters because a version 1 build would rotate a keyring as if it held
//! one key and look for secrets where they no longer are: it refuses a
//! version 2 vault instead.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::fsutil;
use crate::journal::Txn;
use crate::layout::{self, FANOUT_FORMAT, SecretFile};
use crate::model::{self, Config, FORMAT_VERSION};
use crate::names::SecretPath;
use crate::vault::Vault;
use crate::vfs::{EntryType, Kind};

use super::Writer;

impl Writer<'_> {
    /// The format `config.yaml` names on disk now (the opened vault's copy
    /// may predate a migration made since).
    fn format_on_disk(&self) -> Result<u32> {
        let path = self.vault.dir().join("config.yaml");
        let bytes = self.vault.fs().read(&path, Kind::Config)?;
        Ok(Config::parse(&path, &bytes)?.format)
    }

    /// Migrates the vault if its config or manifest is of an older format.
    /// Returns whether it did.
    pub(super) fn migrate_if_old(&mut self) -> Result<bool> {
        if self.manifest.format >= FORMAT_VERSION && self.format_on_disk()? >= FORMAT_VERSION {
            return Ok(false);
        }
        let mut target = self.manifest.clone();
        target.format = FORMAT_VERSION;
        let mut txn = Txn::new(format!("migrate the vault to format {FORMAT_VERSION}"));
        txn.migrate = true;
        txn.manifest = Some(target);
        self.run(txn)?;
        Ok(true)
    }

    /// The migration's own step: the secrets in their buckets, then
    /// `config.yaml` at the current format, then the old names removed.
    /// Re-runnable from any point.
    pub(super) fn complete_migration(&self, txn: &Txn, touched: &mut Vec<PathBuf>) -> Result<()> {
        if !txn.migrate {
            return Ok(());
        }
        let v = self.vault;
        let path = v.dir().join("config.yaml");
        let fs = v.fs();
        let mut config = Config::parse(&path, &fs.read(&path, Kind::Config)?)?;
        let old = flat_files(v)?;
        if config.format < FORMAT_VERSION {
            let bar = crate::progress::Task::begin("moving secrets into buckets", old.len());
            for (p, kind, file) in &old {
                bar.step();
                fs.link_unsynced(file, &v.secret_file_in(FANOUT_FORMAT, p, *kind))?;
            }
            drop(bar);
            fs.sync_filesystem()?;
            config.format = FORMAT_VERSION;
            fs.write_atomic(&path, &model::to_yaml(&config), fsutil::PUBLIC_FILE)?;
        }
        v.set_layout_format(FANOUT_FORMAT);
        // The old names, where the bucket holds the file (a file planted
        // in the old layout after the switch stays, and `check` names it).
        let secrets = v.dir().join("secrets");
        for (p, kind, file) in &old {
            if fs.is_file(&v.secret_file_in(FANOUT_FORMAT, p, *kind))? {
                fs.remove_file_unsynced(file)?;
                super::remove_empty_dirs(v, file, &secrets.join(p.group().as_str()));
            }
        }
        fs.sync_filesystem()?;
        // Both names of every secret now in a bucket: git drops the old
        // ones (also when an earlier run removed them before a crash).
        for (p, kind) in bucket_files(v)? {
            touched.push(v.secret_file_in(FANOUT_FORMAT, &p, kind));
            touched.push(v.secret_file_in(1, &p, kind));
        }
        touched.push(path);
        Ok(())
    }
}

/// Every regular file under `secrets/` that is a secret's file at its
/// format 1 place: `(secret, which file, path)`.
fn flat_files(v: &Vault) -> Result<Vec<(SecretPath, SecretFile, PathBuf)>> {
    let mut out = Vec::new();
    walk_secrets(v, &mut |rel, file| {
        if let Some((p, kind)) = layout::parse(rel)
            && layout::rel(1, &p, kind) == Path::new(rel)
        {
            out.push((p, kind, file.to_owned()));
        }
    })?;
    Ok(out)
}

/// Every secret's file at its bucket.
fn bucket_files(v: &Vault) -> Result<Vec<(SecretPath, SecretFile)>> {
    let mut out = Vec::new();
    walk_secrets(v, &mut |rel, _| {
        if let Some((p, kind)) = layout::parse(rel)
            && layout::rel(FANOUT_FORMAT, &p, kind) == Path::new(rel)
        {
            out.push((p, kind));
        }
    })?;
    Ok(out)
}

/// Calls `f` with the path relative to `secrets/` and the full path of
/// every regular file below it; links are never followed (nor reported:
/// `check` does).
fn walk_secrets(v: &Vault, f: &mut dyn FnMut(&str, &Path)) -> Result<()> {
    let fs = v.fs();
    let root = v.dir().join("secrets");
    let mut stack = vec![(root, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match fs.read_dir(&dir) {
            Ok(Some(e)) => e,
            Ok(None) | Err(crate::error::Error::Refused { .. }) => continue,
            Err(e) => return Err(e),
        };
        for (name, t) in entries {
            let Some(name) = name.to_str() else { continue };
            let rel = format!("{prefix}{name}");
            match t {
                EntryType::Dir => stack.push((dir.join(name), format!("{rel}/"))),
                EntryType::File => f(&rel, &dir.join(name)),
                _ => {}
            }
        }
    }
    Ok(())
}
