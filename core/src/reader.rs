//! Reading secret values: check the grant, open the group key, verify the
//! owner's signature over the ciphertext, decrypt. No git, no lock, no
//! network: a handful of small files whatever the vault's size.

use age::secrecy::ExposeSecret;

use crate::crypto::{self, Identity, SecretValue};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::keystore::KeySource;
use crate::model::{Manifest, Mode};
use crate::names::{GroupName, SecretPath};
use crate::vault::{Role, Vault};

/// A vault opened with a key: an owner's or an agent's.
pub struct Reader<'v> {
    vault: &'v Vault,
    id: Identity,
    role: Role,
    manifest: Manifest,
}

/// The identities that may decrypt a group's secrets right now, with the
/// generations they belong to. Normally one; two while a rotation is
/// half-finished (the rotated key waits in `.key.age.next`).
struct GroupKeys {
    pub ids: Vec<Identity>,
    pub generations: Vec<u64>,
}

impl<'v> Reader<'v> {
    pub(crate) fn new(vault: &'v Vault, source: &KeySource) -> Result<Self> {
        let id = vault.keys().load(source, vault.id())?;
        let manifest = vault.manifest()?;
        let role = Vault::role_of(&manifest, &id)?;
        Ok(Reader {
            vault,
            id,
            role,
            manifest,
        })
    }

    /// Who the key belongs to.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The same key on a newer manifest (the broker re-reads the vault
    /// while it runs, to see grants and revocations).
    pub fn with_manifest(&self, manifest: Manifest) -> Result<Reader<'v>> {
        let id = Identity::parse(self.id.to_secret_string().expose_secret(), "key")?;
        let role = Vault::role_of(&manifest, &id)?;
        Ok(Reader {
            vault: self.vault,
            id,
            role,
            manifest,
        })
    }

    /// The key this reader opens the vault with.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// Whether this key may read the group's values; a clear error if not.
    pub fn check_read(&self, group: &GroupName) -> Result<()> {
        match &self.role {
            Role::Owner(_) => Ok(()),
            Role::Broker if self.manifest.used(group) => Ok(()),
            Role::Broker => Err(Error::NotGranted {
                agent: "the broker".into(),
                group: group.to_string(),
            }),
            Role::Agent(a) => match self.manifest.grant(a, group) {
                Some(Mode::Read) => Ok(()),
                Some(Mode::Use) => Err(Error::UseOnly {
                    agent: a.to_string(),
                    group: group.to_string(),
                }),
                None => Err(Error::NotGranted {
                    agent: a.to_string(),
                    group: group.to_string(),
                }),
            },
        }
    }

    fn group_keys(
        vault: &Vault,
        id: &Identity,
        manifest: &Manifest,
        group: &GroupName,
    ) -> Result<GroupKeys> {
        let entry = manifest.group(group)?;
        let path = vault.group_key_path(group);
        let ct = fsutil::read_optional(&path)?
            .ok_or_else(|| Error::corrupt(&path, "the group key file is missing"))?;
        let mut keys = GroupKeys {
            ids: vec![crypto::decrypt_identity(&[id], &ct, &path)?],
            generations: vec![entry.generation],
        };
        let next = vault.group_next_key_path(group);
        if let Some(ct) = fsutil::read_optional(&next)?
            && let Ok(nid) = crypto::decrypt_identity(&[id], &ct, &next)
        {
            keys.ids.push(nid);
            keys.generations.push(entry.generation + 1);
        }
        Ok(keys)
    }

    /// The value of a secret, after checking the grant and the owner's
    /// signature over its ciphertext.
    pub fn get(&self, path: &SecretPath) -> Result<SecretValue> {
        if !self.manifest.groups.contains_key(path.group()) {
            return Err(Error::SecretNotFound(path.to_string()));
        }
        self.check_read(path.group())?;
        let age_path = self.vault.secret_age_path(path);
        let ct = fsutil::read_optional(&age_path)?
            .ok_or_else(|| Error::SecretNotFound(path.to_string()))?;
        let meta = self
            .vault
            .secret_meta(path)
            .map_err(|_| Error::UnsignedSecret {
                path: path.to_string(),
                reason: "its metadata file is missing or malformed".into(),
            })?;
        let keys = Self::group_keys(self.vault, &self.id, &self.manifest, path.group())?;
        meta.verify(
            self.vault.id(),
            path,
            &ct,
            &self.manifest,
            &keys.generations,
        )?;
        let ids: Vec<&Identity> = keys.ids.iter().collect();
        crypto::decrypt(&ids, &ct, &age_path)
    }
}
