//! Moving a vault of format version 1 to the current one, by the first
//! owner command that writes. Version 1's group key file (one identity) is
//! already a keyring of one, and its values are signed at their group's
//! generation, so nothing but the version numbers changes: `config.yaml`'s
//! and the signed manifest's, in one journaled operation and one commit. A
//! crash anywhere leaves files that both versions' readers of this build
//! read, and the next command completes the journal. The version matters
//! because a version 1 build would rotate a keyring as if it held one key:
//! it refuses a version 2 vault instead.

use std::path::PathBuf;

use crate::error::Result;
use crate::fsutil;
use crate::journal::Txn;
use crate::model::{self, Config, FORMAT_VERSION};
use crate::vfs::Kind;

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

    /// The migration's own step: `config.yaml` at the current format.
    pub(super) fn complete_migration(&self, txn: &Txn, touched: &mut Vec<PathBuf>) -> Result<()> {
        if !txn.migrate {
            return Ok(());
        }
        let path = self.vault.dir().join("config.yaml");
        let fs = self.vault.fs();
        let mut config = Config::parse(&path, &fs.read(&path, Kind::Config)?)?;
        if config.format < FORMAT_VERSION {
            config.format = FORMAT_VERSION;
            fs.write_atomic(&path, &model::to_yaml(&config), fsutil::PUBLIC_FILE)?;
        }
        touched.push(path);
        Ok(())
    }
}
