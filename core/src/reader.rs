//! Reading secret values: check the grant, open the group key, verify the
//! owner's signature over the ciphertext, decrypt. No git, no lock, no
//! network: a handful of small files whatever the vault's size.
//!
//! A [`Reader`] is the vault as it was when it read the manifest: it owns
//! what it reads (the vault, the key), so it can be kept, shared between
//! threads and replaced whole when the files change
//! ([`crate::live::LiveReader`] does that).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use age::secrecy::ExposeSecret;

use sha2::Digest;

use crate::broker::services::Services;
use crate::crypto::{self, Identity, SecretValue};
use crate::error::{Error, Result};
use crate::keyring::Keyring;
use crate::keystore::KeySource;
use crate::model::{Manifest, Mode};
use crate::names::{GroupName, SecretPath};
use crate::vault::{Role, Vault};
use crate::vfs::Kind;

/// A vault opened with a key (an owner's, an agent's or the broker's), on
/// the manifest and services list as they were read and verified.
pub struct Reader {
    vault: Arc<Vault>,
    id: Arc<Identity>,
    role: Role,
    manifest: Manifest,
    /// The bytes of `services.yaml` the manifest's signature covered.
    services_bytes: Vec<u8>,
    /// Those bytes parsed, on first use (most readers never look).
    services: OnceLock<Result<Services>>,
    /// The manifest files as they were just before they were read.
    stamp: Stamp,
    cache: std::sync::Mutex<ReadCache>,
}

/// What identifies the manifest files' contents without reading them:
/// inode, length and modification time of `manifest.yaml`, `manifest.sig`
/// and `services.yaml`. Every write replaces a file (a new inode), so any
/// change of any of them changes the stamp.
pub(crate) type Stamp = [Option<(u64, u64, i64, i64)>; 3];

/// The stamp of the manifest files in `dir` (`.agent-vault`) now.
pub(crate) fn stamp(dir: &Path) -> Stamp {
    let one = |name: &str| {
        std::fs::metadata(dir.join(name))
            .ok()
            .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
    };
    [
        one("manifest.yaml"),
        one("manifest.sig"),
        one("services.yaml"),
    ]
}

/// What a long-lived reader (the SDKs', the broker's) need not redo: group
/// keys already opened, keyed by the exact bytes of their files, and
/// signatures already checked, keyed by a hash of the exact metadata and
/// ciphertext bytes (and the generations acceptable then). A changed file
/// misses the cache and is checked in full.
#[derive(Default)]
struct ReadCache {
    groups: std::collections::HashMap<GroupName, OpenedGroup>,
    verified: std::collections::HashSet<[u8; 32]>,
    /// Values already decrypted, by the same hash: a warm read is file reads
    /// and a hash, no public-key operation. Zeroized when dropped; bounded.
    values: std::collections::HashMap<[u8; 32], SecretValue>,
    /// Public-key operations done (group keys opened, signatures checked,
    /// values decrypted), so tests can tell a warm read from a cold one.
    #[cfg(test)]
    pub(crate) work: u32,
}

/// The most values a reader keeps decrypted.
const VALUE_CACHE: usize = 256;

/// A group's key files as read (`.key.age`, `.key.age.next`) and the
/// identities they opened to.
struct OpenedGroup {
    key_file: Vec<u8>,
    next_file: Option<Vec<u8>>,
    keys: std::sync::Arc<GroupKeys>,
}

/// The identities that may decrypt a group's secrets right now (the
/// keyring's, and while a rotation is half-finished the rotated key waiting
/// in `.key.age.next`), and the generations a value may be signed at.
struct GroupKeys {
    ring: Keyring,
    next: Option<Keyring>,
    generations: Vec<u64>,
    /// The manifest's generation of the group: the keyring's first.
    newest: u64,
}

impl GroupKeys {
    /// The identities to try: the one of `generation` first, where the
    /// keyring's order says it is (newest first, one per revocation; a
    /// merge may append others), then the rest newest first. Each try is a
    /// key agreement: a value set before many revocations was opened by
    /// trying every newer generation first.
    fn ids(&self, generation: Option<u64>) -> Vec<&Identity> {
        let mut ids: Vec<&Identity> = self.next.iter().map(Keyring::newest).collect();
        let ahead = ids.len();
        ids.extend(self.ring.all());
        if let Some(i) = generation
            .and_then(|g| self.newest.checked_sub(g))
            .and_then(|back| usize::try_from(back).ok())
            .map(|back| back + ahead)
            .filter(|&i| i < ids.len())
        {
            let id = ids.remove(i);
            ids.insert(0, id);
        }
        ids
    }
}

impl Reader {
    /// Opens the vault for reading with the given key, on the manifest as
    /// it is now (a [`crate::live::LiveReader`] follows later changes).
    pub fn open(vault: &Vault, source: &KeySource) -> Result<Self> {
        Self::open_shared(Arc::new(vault.clone()), source)
    }

    /// Reads and verifies the manifest, then loads the key: a vault that is
    /// not trusted says so before a missing key would.
    pub(crate) fn open_shared(vault: Arc<Vault>, source: &KeySource) -> Result<Self> {
        let (stamp, manifest, services_bytes) = Self::verified(&vault)?;
        let id = Arc::new(vault.keys().load(source, vault.id())?);
        Self::assemble(vault, id, stamp, manifest, services_bytes)
    }

    /// A reader on the vault's files as they are now, with the key given.
    pub(crate) fn with_identity(vault: Arc<Vault>, id: Arc<Identity>) -> Result<Self> {
        let (stamp, manifest, services_bytes) = Self::verified(&vault)?;
        Self::assemble(vault, id, stamp, manifest, services_bytes)
    }

    /// The same vault and key on the files as they are now: a new manifest
    /// and a cache of its own (a signature checked against an older
    /// manifest's owners is checked again).
    pub(crate) fn reread(&self) -> Result<Self> {
        Self::with_identity(self.vault.clone(), self.id.clone())
    }

    /// The stamp, then the manifest files, verified.
    fn verified(vault: &Vault) -> Result<(Stamp, Manifest, Vec<u8>)> {
        // Stamped before reading: a change made while reading shows next time.
        let stamp = stamp(vault.dir());
        let (mbytes, services, sig) = vault.manifest_files()?;
        let manifest = vault.verify_manifest(&mbytes, sig.as_deref(), &services, true)?;
        Ok((stamp, manifest, services))
    }

    fn assemble(
        vault: Arc<Vault>,
        id: Arc<Identity>,
        stamp: Stamp,
        manifest: Manifest,
        services_bytes: Vec<u8>,
    ) -> Result<Self> {
        let role = Vault::role_of(&manifest, &id)?;
        Ok(Reader {
            vault,
            id,
            role,
            manifest,
            services_bytes,
            services: OnceLock::new(),
            stamp,
            cache: Default::default(),
        })
    }

    /// Whether the manifest files changed since this reader read them.
    pub(crate) fn stale(&self) -> bool {
        stamp(self.vault.dir()) != self.stamp
    }

    /// The vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Who the key belongs to.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The services list the manifest's signature covers, parsed once.
    pub fn services(&self) -> std::result::Result<&Services, &Error> {
        self.services
            .get_or_init(|| Services::parse(&self.vault.services_path(), &self.services_bytes))
            .as_ref()
    }

    /// The key this reader opens the vault with.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// Whether this key may read the group's values; a clear error if not.
    pub fn check_read(&self, group: &GroupName) -> Result<()> {
        crate::access::check(&self.manifest, &self.role, group, Mode::Read).map(|_| ())
    }

    /// The group's identities, opened once per version of its key files.
    fn group_keys(&self, group: &GroupName) -> Result<std::sync::Arc<GroupKeys>> {
        let entry = self.manifest.group(group)?;
        let path = self.vault.group_key_path(group);
        let fs = self.vault.fs();
        let ct = fs
            .read_optional(&path, Kind::GroupKey)?
            .ok_or_else(|| Error::corrupt(&path, "the group key file is missing"))?;
        let next = self.vault.group_next_key_path(group);
        let next_ct = fs.read_optional(&next, Kind::GroupKey)?;
        if let Ok(cache) = self.cache.lock()
            && let Some(g) = cache.groups.get(group)
            && g.key_file == ct
            && g.next_file == next_ct
        {
            return Ok(g.keys.clone());
        }
        // Every generation in the keyring opens values; a rotation half-way
        // has the next keyring (a superset) waiting in `.next`.
        let ring = Keyring::open(&[&*self.id], &ct, &path)?;
        let mut keys = GroupKeys {
            ring,
            next: None,
            generations: entry.generations(),
            newest: entry.generation,
        };
        if let Some(nct) = &next_ct
            && let Ok(next_ring) = Keyring::open(&[&*self.id], nct, &next)
        {
            keys.next = Some(next_ring);
            keys.generations.push(entry.generation + 1);
        }
        let keys = std::sync::Arc::new(keys);
        if let Ok(mut cache) = self.cache.lock() {
            #[cfg(test)]
            {
                cache.work += 1;
            }
            cache.groups.insert(
                group.clone(),
                OpenedGroup {
                    key_file: ct,
                    next_file: next_ct,
                    keys: keys.clone(),
                },
            );
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
        let ct = self
            .vault
            .fs()
            .read_optional(&age_path, Kind::Secret)?
            .ok_or_else(|| Error::SecretNotFound(path.to_string()))?;
        let keys = self.group_keys(path.group())?;
        let meta_path = self.vault.secret_meta_path(path);
        let unsigned = |reason: &str| Error::UnsignedSecret {
            path: path.to_string(),
            reason: reason.into(),
        };
        let meta_bytes = self
            .vault
            .fs()
            .read_optional(&meta_path, Kind::Metadata)?
            .ok_or_else(|| unsigned("its metadata file is missing or malformed"))?;
        let mut h = sha2::Sha256::new();
        for part in [meta_bytes.as_slice(), &ct, path.to_string().as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        for g in &keys.generations {
            h.update(g.to_le_bytes());
        }
        let seen: [u8; 32] = h.finalize().into();
        if let Ok(c) = self.cache.lock()
            && let Some(v) = c.values.get(&seen)
        {
            return Ok(age::secrecy::SecretBox::new(Box::new(
                v.expose_secret().clone(),
            )));
        }
        let known = self
            .cache
            .lock()
            .map(|c| c.verified.contains(&seen))
            .unwrap_or(false);
        // The value's generation, signed in its metadata: its identity is
        // tried first.
        let mut generation = None;
        if !known {
            let meta: crate::model::SecretMeta = crate::model::parse_yaml(&meta_path, &meta_bytes)
                .map_err(|_| unsigned("its metadata file is missing or malformed"))?;
            // Metadata whose description and expiry are unsigned (written
            // before they were signed) still vouches for the value.
            let _trust = meta.verify(
                self.vault.id(),
                path,
                &ct,
                &self.manifest,
                &keys.generations,
            )?;
            generation = Some(meta.generation);
            if let Ok(mut c) = self.cache.lock() {
                #[cfg(test)]
                {
                    c.work += 1;
                }
                c.verified.insert(seen);
            }
        }
        let ids = keys.ids(generation);
        let value = crypto::decrypt(&ids, &ct, &age_path)?;
        if let Ok(mut c) = self.cache.lock() {
            #[cfg(test)]
            {
                c.work += 1;
            }
            if c.values.len() >= VALUE_CACHE {
                c.values.clear();
            }
            c.values.insert(
                seen,
                age::secrecy::SecretBox::new(Box::new(value.expose_secret().clone())),
            );
        }
        Ok(value)
    }
}

#[cfg(test)]
impl Reader {
    /// Public-key operations this reader has done so far.
    pub(crate) fn work(&self) -> u32 {
        self.cache.lock().map(|c| c.work).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value's own generation is tried first: one key agreement for a
    /// value set before many revocations, not one per newer generation.
    #[test]
    fn the_identity_of_a_values_generation_is_tried_first() {
        // Generations 1 to 4, newest first, as revocations build them.
        let mut ring = Keyring::generate();
        for _ in 0..3 {
            ring = ring.with_newest(Identity::generate());
        }
        let keys_of = |ring: &Keyring| -> Vec<String> {
            ring.all()
                .iter()
                .map(|i| i.recipient().as_string())
                .collect()
        };
        let order = keys_of(&ring);
        let keys = GroupKeys {
            ring,
            next: None,
            generations: vec![1, 2, 3, 4],
            newest: 4,
        };
        let tried = |g: Option<u64>| -> Vec<String> {
            keys.ids(g)
                .iter()
                .map(|i| i.recipient().as_string())
                .collect()
        };
        assert_eq!(tried(Some(1))[0], order[3]);
        assert_eq!(tried(Some(3))[0], order[1]);
        assert_eq!(tried(Some(4)), order);
        // Every identity is still tried, each once.
        let mut all = tried(Some(1));
        all.sort();
        let mut want = order.clone();
        want.sort();
        assert_eq!(all, want);
        // A generation the keyring does not place (planted, or appended by
        // a merge): the newest first, as before.
        assert_eq!(tried(Some(9)), order);
        assert_eq!(tried(None), order);
    }
}
