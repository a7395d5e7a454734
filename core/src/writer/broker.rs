//! What owners change for the broker: its keys, token revocations, the
//! services list.

use std::path::PathBuf;

use crate::crypto::{self, Identity, Recipient};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::journal::Txn;
use crate::keystore::{self};
use crate::vfs::Kind;

use super::Writer;

impl Writer<'_> {
    /// Creates the broker: its age key (written to this machine's key store
    /// and escrowed to the owners) and its CA, whose key is stored
    /// encrypted to the broker and the owners. Groups that agents `use`
    /// become readable by the broker. Returns the broker key's path.
    pub fn init_broker(&mut self, ca_cert_pem: &str, ca_key_pem: &str) -> Result<PathBuf> {
        if self.manifest.broker.is_some() {
            return Err(Error::InvalidInput(
                "this vault has a broker already".into(),
            ));
        }
        let id = Identity::generate();
        let recipient = id.recipient();
        let dir = self.vault.broker_dir();
        self.vault.fs().create_dir_all(&dir, 0o755)?;
        let key_path = self
            .vault
            .keys()
            .vault_dir(self.vault.id())
            .join("broker.key");
        keystore::write_private_key(&key_path, &id)?;
        let owners = self.owner_recipients(&self.manifest)?;
        let owner_refs: Vec<&Recipient> = owners.iter().collect();
        let mut with_broker = owner_refs.clone();
        with_broker.push(&recipient);
        let token_key = crate::broker::token::TokenKey::generate()?;
        let files: [(&str, Vec<u8>); 5] = [
            (
                "token.key.age",
                crypto::encrypt(&with_broker, token_key.bytes())?,
            ),
            ("public.key", format!("{recipient}\n").into_bytes()),
            (
                "private.key.escrow",
                crypto::encrypt_identity(&owner_refs, &id)?,
            ),
            ("ca.crt", ca_cert_pem.as_bytes().to_vec()),
            (
                "ca.key.age",
                crypto::encrypt(&with_broker, ca_key_pem.as_bytes())?,
            ),
        ];
        let mut txn = Txn::new("broker init");
        for (name, bytes) in &files {
            self.vault
                .fs()
                .write_atomic(&dir.join(name), bytes, fsutil::PUBLIC_FILE)?;
            txn.extra_files.push(format!("broker/{name}"));
        }
        let mut target = self.manifest.clone();
        target.broker = Some(crate::model::BrokerEntry {
            recipient: recipient.as_string(),
            ca_sha256: crypto::sha256_hex(ca_cert_pem.as_bytes()),
        });
        txn.rewrap = target
            .groups
            .keys()
            .filter(|g| target.used(g))
            .cloned()
            .collect();
        txn.manifest = Some(target);
        self.run(txn)?;
        Ok(key_path)
    }

    /// Revokes broker tokens (recorded in the signed manifest; a running
    /// broker sees it on its next read of the manifest).
    pub fn revoke_tokens(
        &mut self,
        change: impl FnOnce(&mut crate::model::Revocations),
        op: &str,
    ) -> Result<()> {
        let mut target = self.manifest.clone();
        change(&mut target.revoked);
        let mut txn = Txn::new(op);
        txn.manifest = Some(target);
        self.run(txn)
    }

    /// The verified services list.
    pub fn services(&self) -> Result<crate::broker::services::Services> {
        let path = self.vault.services_path();
        let bytes = self.vault.fs().read_optional(&path, Kind::Services)?;
        crate::broker::services::Services::parse(&path, &bytes.unwrap_or_default())
    }

    /// Replaces the services list (signed with the manifest). Every secret a
    /// service names must exist in a group of the vault.
    pub fn set_services(
        &mut self,
        services: &crate::broker::services::Services,
        op: &str,
    ) -> Result<()> {
        services.validate()?;
        for (name, svc) in &services.services {
            for p in svc.all_secrets() {
                if !self.manifest.groups.contains_key(p.group())
                    || !self.vault.fs().is_file(&self.vault.secret_age_path(&p))?
                {
                    return Err(Error::InvalidInput(format!(
                        "service {name} names {p}, which is not a secret of this vault; set it first"
                    )));
                }
            }
        }
        let bytes = services.to_bytes();
        let mut txn = Txn::new(op);
        txn.services = Some(
            String::from_utf8(bytes)
                .map_err(|_| Error::InvalidInput("services are not UTF-8".into()))?,
        );
        txn.manifest = Some(self.manifest.clone());
        self.run(txn)
    }
}
