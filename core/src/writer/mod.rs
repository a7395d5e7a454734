//! Changing the vault. A [`Writer`] holds the vault's lock and an owner key.
//! Each operation describes itself as a [`Txn`], writes it to the journal,
//! and completes it with `Writer::complete` — the same code that finishes
//! a half-finished operation after a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use rayon::prelude::*;

use crate::crypto::{self, Identity, OwnerSigningKey, Recipient};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::git::VaultRepo;
use crate::journal::{Rotation, Txn};
use crate::keystore::{self, KeySource};
use crate::model::{
    self, AgentEntry, GroupEntry, Manifest, ManifestSig, MetaFields, Mode, SecretMeta,
};
use crate::names::{AgentName, GroupName, OwnerName, SecretPath};
use crate::vault::{Role, Vault};
use crate::vfs::{Batch, Kind};

/// Options of `set`.
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    /// Expiry; `None` keeps the current one.
    pub expires: Option<jiff::Timestamp>,
    /// Description; `None` keeps the current one.
    pub description: Option<String>,
}

/// What a revoke (or a downgrade from read to use) leaves to do upstream.
#[derive(Debug, Clone, Default)]
pub struct Exposure {
    /// The agent.
    pub agent: String,
    /// The group.
    pub group: String,
    /// Whether the agent could read the group (a `use` grant never exposed values).
    pub could_read: bool,
    /// Secrets in the group now, whose values the agent could read.
    pub secrets: Vec<String>,
    /// Secrets no longer in the group but still in git history, encrypted
    /// to a group key the agent may have held.
    pub in_history: Vec<String>,
    /// Secrets of the group the rotation left as they were, because no
    /// owner signed them (planted, or damaged) or they could not be read
    /// safely: `get` refuses them, and they stay encrypted to the old key.
    pub skipped: Vec<String>,
}

/// The result of a grant.
#[derive(Debug, Clone)]
pub struct GrantOutcome {
    /// The mode before, if any.
    pub previous: Option<Mode>,
    /// Set when the grant narrowed read to use, which rotates the group key.
    pub exposure: Option<Exposure>,
}

/// A rekey plan or result: group → number of secrets re-encrypted.
pub type RekeyReport = BTreeMap<String, usize>;

/// The vault opened for changes, with its lock held.
pub struct Writer<'v> {
    pub(crate) vault: &'v Vault,
    pub(crate) id: Identity,
    owner: OwnerName,
    signing: OwnerSigningKey,
    pub(crate) manifest: Manifest,
    pub(crate) repo: Option<VaultRepo>,
    recovered: Option<String>,
    /// Secrets the last operation's rotations left alone (see [`Exposure::skipped`]).
    skipped: Vec<String>,
    _lock: File,
}

/// Takes the vault's lock: `.local/lock`, never through a link, and only
/// while git tracks nothing under `.local/` (whose files are then trusted).
fn lock(vault: &Vault) -> Result<File> {
    crate::vfs::ensure_local_untracked(vault.dir())?;
    let path = vault.local_dir().join("lock");
    let f = vault.fs().open_lock_file(&path)?;
    f.lock().map_err(|e| Error::io(&path, e))?;
    Ok(f)
}

impl<'v> Writer<'v> {
    /// Opens the vault for changes: takes the lock, completes a half-finished
    /// operation, and checks that the key is an owner's.
    pub fn open(vault: &'v Vault, source: &KeySource) -> Result<Self> {
        let lock = lock(vault)?;
        let id = vault.keys().load(source, vault.id())?;
        let repo = VaultRepo::discover(vault.root())?;
        let pending = Txn::read(vault, &id.signing_key().public())?;
        // With no journal, a rotated key waiting in `.next` is debris from an
        // operation that died before it began: nothing refers to it.
        if pending.is_none() {
            remove_stray_next_keys(vault)?;
        }
        // The manifest that a pending operation is heading to, or the signed
        // one — or one that plain `git merge` made from two signed ones,
        // which this owner signs now.
        let mut git_merged = None;
        let manifest = match pending.as_ref().and_then(|t| t.manifest.clone()) {
            Some(m) => m,
            None => match vault.manifest() {
                Ok(m) => m,
                Err(Error::UnsignedManifest(why)) => match crate::sync::git_merged_manifest(vault)?
                {
                    Some(m) => {
                        git_merged = Some(m.clone());
                        m
                    }
                    None => return Err(Error::UnsignedManifest(why)),
                },
                Err(e) => return Err(e),
            },
        };
        let owner = match Vault::role_of(&manifest, &id)? {
            Role::Owner(o) => o,
            Role::Agent(_) | Role::Broker => return Err(Error::NotOwner),
        };
        let signing = id.signing_key();
        if manifest.owners[&owner].signing_key != signing.public() {
            return Err(Error::UnsignedManifest(format!(
                "owner {owner}'s signing key in the manifest does not match this owner key"
            )));
        }
        let mut w = Writer {
            vault,
            id,
            owner,
            signing,
            manifest,
            repo,
            recovered: None,
            skipped: Vec::new(),
            _lock: lock,
        };
        if let Some(txn) = pending {
            // The interrupted process may have died inside a git commit.
            if let (Some(repo), Ok(began)) = (&w.repo, vault.fs().modified(&vault.journal_path()))
                && let Some(began) = began
            {
                repo.clear_locks_since(began);
            }
            let op = txn.op.clone();
            w.complete(txn)?;
            w.recovered = Some(op);
        }
        if let Some(m) = git_merged {
            let mut txn = Txn::new("re-sign the manifest git merged");
            txn.rewrap = m.groups.keys().cloned().collect();
            txn.reescrow = m.agents.keys().cloned().collect();
            txn.manifest = Some(m);
            w.run(txn)?;
        }
        // Whatever we hold now must be the signed manifest.
        w.manifest = vault.manifest()?;
        Ok(w)
    }

    /// The operation that a crash had left half-finished and that opening
    /// this writer completed, if any.
    pub fn recovered(&self) -> Option<&str> {
        self.recovered.as_deref()
    }

    /// The current (signed) manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The owner's name.
    pub fn owner(&self) -> &OwnerName {
        &self.owner
    }

    // ---- operations -------------------------------------------------------

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
        // Every directory the values go to is a real directory (made now,
        // before the journal: a link there refuses the whole operation).
        let dirs: BTreeSet<PathBuf> = items
            .iter()
            .filter_map(|(p, _, _)| self.vault.secret_age_path(p).parent().map(Path::to_owned))
            .collect();
        for d in &dirs {
            self.vault.fs().create_dir_all(d, 0o755)?;
        }
        // And each value's two files are absent or regular files.
        for (p, _, _) in &items {
            self.vault.fs().is_file(&self.vault.secret_age_path(p))?;
            self.vault.fs().is_file(&self.vault.secret_meta_path(p))?;
        }
        let mut txn = Txn::new(op);
        let mut target = self.manifest.clone();
        let groups: BTreeSet<&GroupName> = items.iter().map(|(p, _, _)| p.group()).collect();
        for g in groups {
            if !target.groups.contains_key(g) {
                let rot = self.prepare_rotation(&target, g, 1)?;
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
        let now = jiff::Timestamp::now();
        let vault = self.vault;
        let signing = &self.signing;
        let sealed: Vec<(SecretPath, Vec<u8>, SecretMeta)> = items
            .par_iter()
            .map(|(path, value, opts)| {
                let entry = target.group(path.group())?;
                let recipient: Recipient = entry.recipient.parse()?;
                // Only fields an owner signed (or legacy metadata whose value
                // an owner signed) carry over: an edited description or
                // expiry is not laundered into a new signature.
                let old = vault
                    .secret_meta(path)
                    .ok()
                    .filter(|m| m.verify_signature(vault.id(), path, &target).is_ok());
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
            .collect::<Result<_>>()?;
        txn.metas = sealed
            .iter()
            .map(|(p, _, m)| (p.clone(), m.clone()))
            .collect();
        let _t = crate::trace::phase("set: journal and ciphertext");
        txn.write(self.vault, &self.signing)?;
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
        drop(_t);
        self.complete(txn)
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

    /// Adds an agent: a key pair, the private key escrowed to the owners in
    /// the vault and written to this machine's key store. Returns the
    /// path of the local key file.
    pub fn add_agent(&mut self, name: &AgentName) -> Result<PathBuf> {
        if self.manifest.agents.contains_key(name) {
            return Err(Error::AgentExists(name.to_string()));
        }
        let (key_path, recipient) = self.new_agent_key(name, &self.manifest)?;
        let mut target = self.manifest.clone();
        target.agents.insert(name.clone(), AgentEntry { recipient });
        let mut txn = Txn::new(format!("add agent {name}"));
        txn.manifest = Some(target);
        txn.agent_files.push(name.clone());
        self.run(txn)?;
        Ok(key_path)
    }

    /// Makes a new key pair for an agent: public key and escrow (to the
    /// owners of `owners`) in the vault, private key in the local key store.
    /// Returns the key file's path and the new recipient.
    fn new_agent_key(&self, name: &AgentName, owners: &Manifest) -> Result<(PathBuf, String)> {
        let id = Identity::generate();
        let recipients = self.owner_recipients(owners)?;
        let escrow = crypto::encrypt_identity(&recipients.iter().collect::<Vec<_>>(), &id)?;
        let dir = self.vault.agent_dir(name);
        let fs = self.vault.fs();
        fs.create_dir_all(&dir, 0o755)?;
        let key_path = self.vault.keys().agent_key_path(self.vault.id(), name);
        keystore::write_private_key(&key_path, &id)?;
        fs.write_atomic(
            &dir.join("private.key.escrow"),
            &escrow,
            fsutil::PUBLIC_FILE,
        )?;
        let recipient = id.recipient().as_string();
        fs.write_atomic(
            &dir.join("public.key"),
            format!("{recipient}\n").as_bytes(),
            fsutil::PUBLIC_FILE,
        )?;
        Ok((key_path, recipient))
    }

    /// Removes an agent: its grants go, and every group it could read is
    /// rotated. Returns what it could read.
    pub fn remove_agent(&mut self, name: &AgentName) -> Result<Vec<Exposure>> {
        if !self.manifest.agents.contains_key(name) {
            return Err(Error::AgentNotFound(name.to_string()));
        }
        let readable: Vec<GroupName> = self.readable_groups(name);
        let mut target = self.manifest.clone();
        target.agents.remove(name);
        target.grants.remove(name);
        let mut txn = Txn::new(format!("remove agent {name}"));
        for g in &readable {
            self.rotate_into(&mut target, &mut txn, g)?;
        }
        txn.manifest = Some(target);
        txn.remove_agents.push(name.clone());
        let mut exposures = readable
            .iter()
            .map(|g| self.exposure(name, g, true))
            .collect::<Result<Vec<_>>>()?;
        self.run(txn)?;
        self.take_skipped(&mut exposures);
        let _ = fsutil::remove_file(&self.vault.keys().agent_key_path(self.vault.id(), name));
        Ok(exposures)
    }

    /// Replaces an agent's key pair (lost or compromised key): a new key,
    /// escrowed, and every group the agent can read rotated so that the old
    /// key opens nothing written from now on. Returns the new key's path.
    pub fn recover_agent(&mut self, name: &AgentName) -> Result<PathBuf> {
        if !self.manifest.agents.contains_key(name) {
            return Err(Error::AgentNotFound(name.to_string()));
        }
        let (key_path, recipient) = self.new_agent_key(name, &self.manifest)?;
        let mut target = self.manifest.clone();
        target.agents.insert(name.clone(), AgentEntry { recipient });
        let mut txn = Txn::new(format!("recover agent {name}"));
        for g in self.readable_groups(name) {
            self.rotate_into(&mut target, &mut txn, &g)?;
        }
        txn.manifest = Some(target);
        txn.agent_files.push(name.clone());
        self.run(txn)?;
        Ok(key_path)
    }

    /// Writes an agent's private key, recovered from escrow, to `to`
    /// (created 0600; an existing file is never overwritten).
    pub fn restore_agent(&self, name: &AgentName, to: &Path) -> Result<()> {
        if !self.manifest.agents.contains_key(name) {
            return Err(Error::AgentNotFound(name.to_string()));
        }
        let escrow = self.vault.agent_dir(name).join("private.key.escrow");
        let ct = self.vault.fs().read(&escrow, Kind::KeyFile)?;
        let id = crypto::decrypt_identity(&[&self.id], &ct, &escrow)?;
        if id.recipient().as_string() != self.manifest.agents[name].recipient {
            return Err(Error::corrupt(
                &escrow,
                "the escrowed key is not the agent's current key",
            ));
        }
        if to.exists() {
            return Err(Error::Exists(to.to_owned()));
        }
        keystore::write_private_key(to, &id)
    }

    /// Grants an agent `read` or `use` on a group. Widening to `read`
    /// re-encrypts the group key file only; narrowing `read` to `use`
    /// rotates the group.
    pub fn grant(
        &mut self,
        agent: &AgentName,
        group: &GroupName,
        mode: Mode,
    ) -> Result<GrantOutcome> {
        if !self.manifest.agents.contains_key(agent) {
            return Err(Error::AgentNotFound(agent.to_string()));
        }
        self.manifest.group(group)?;
        let previous = self.manifest.grant(agent, group);
        if previous == Some(mode) {
            return Ok(GrantOutcome {
                previous,
                exposure: None,
            });
        }
        let mut target = self.manifest.clone();
        target
            .grants
            .entry(agent.clone())
            .or_default()
            .insert(group.clone(), mode);
        let mut txn = Txn::new(format!("grant {agent} {mode} on {group}"));
        let mut exposure = None;
        match (previous, mode) {
            (_, Mode::Read) => txn.rewrap.push(group.clone()),
            (Some(Mode::Read), Mode::Use) => {
                self.rotate_into(&mut target, &mut txn, group)?;
                exposure = Some(self.exposure(agent, group, true)?);
            }
            // The broker (if there is one) must open a group some agent uses.
            (_, Mode::Use) if target.broker.is_some() => txn.rewrap.push(group.clone()),
            (_, Mode::Use) => {}
        }
        txn.manifest = Some(target);
        self.run(txn)?;
        self.take_skipped(exposure.as_mut_slice());
        Ok(GrantOutcome { previous, exposure })
    }

    /// Revokes an agent's grant on a group. A `read` grant rotates the
    /// group key; the result lists what the agent could have read.
    pub fn revoke(&mut self, agent: &AgentName, group: &GroupName) -> Result<Exposure> {
        let Some(mode) = self.manifest.grant(agent, group) else {
            return Err(Error::InvalidInput(format!(
                "{agent} has no grant on group {group}"
            )));
        };
        let mut target = self.manifest.clone();
        if let Some(g) = target.grants.get_mut(agent) {
            g.remove(group);
            if g.is_empty() {
                target.grants.remove(agent);
            }
        }
        let mut txn = Txn::new(format!("revoke {agent} on {group}"));
        if mode == Mode::Read {
            self.rotate_into(&mut target, &mut txn, group)?;
        }
        txn.manifest = Some(target);
        let mut exposure = self.exposure(agent, group, mode == Mode::Read)?;
        self.run(txn)?;
        self.take_skipped(std::slice::from_mut(&mut exposure));
        Ok(exposure)
    }

    /// Adds an owner. Owners open everything: every group key and every
    /// escrowed agent key is re-encrypted to include the new owner.
    pub fn add_owner(
        &mut self,
        name: &OwnerName,
        recipient: &Recipient,
        signing_key: &str,
    ) -> Result<()> {
        if self.manifest.owners.contains_key(name) {
            return Err(Error::InvalidInput(format!("owner {name} exists already")));
        }
        let r = recipient.as_string();
        let taken = self.manifest.owners.values().any(|o| o.recipient == r)
            || self.manifest.agents.values().any(|a| a.recipient == r);
        if taken {
            return Err(Error::InvalidInput(format!(
                "{r} is already an owner's or an agent's key"
            )));
        }
        if !crypto::valid_signing_key(signing_key) {
            return Err(Error::InvalidInput(format!(
                "{signing_key:?} is not an owner signing key (the base64 key `agent-vault keygen` prints)"
            )));
        }
        let mut target = self.manifest.clone();
        target.owners.insert(
            name.clone(),
            crate::model::OwnerEntry {
                recipient: r,
                signing_key: signing_key.to_owned(),
            },
        );
        let mut txn = Txn::new(format!("add owner {name}"));
        txn.rewrap = target.groups.keys().cloned().collect();
        txn.reescrow = target.agents.keys().cloned().collect();
        txn.manifest = Some(target);
        self.run(txn)
    }

    /// Removes an owner. The removed owner held every group key and every
    /// escrowed agent key, so every agent gets a new key pair and every
    /// group is rotated; its signature is no longer accepted. Returns the
    /// agents' new key files, to hand to them.
    pub fn remove_owner(&mut self, name: &OwnerName) -> Result<Vec<(AgentName, PathBuf)>> {
        if !self.manifest.owners.contains_key(name) {
            return Err(Error::InvalidInput(format!("no owner {name}")));
        }
        if *name == self.owner {
            return Err(Error::InvalidInput(format!(
                "{name} is the owner running this command; another owner must remove it"
            )));
        }
        let mut target = self.manifest.clone();
        target.owners.remove(name);
        let mut txn = Txn::new(format!("remove owner {name}"));
        let mut keys = Vec::new();
        let agents: Vec<AgentName> = target.agents.keys().cloned().collect();
        for a in agents {
            let (key_path, recipient) = self.new_agent_key(&a, &target)?;
            target.agents.insert(a.clone(), AgentEntry { recipient });
            txn.agent_files.push(a.clone());
            keys.push((a, key_path));
        }
        let groups: Vec<GroupName> = target.groups.keys().cloned().collect();
        for g in &groups {
            self.rotate_into(&mut target, &mut txn, g)?;
        }
        txn.manifest = Some(target);
        self.run(txn)?;
        Ok(keys)
    }

    /// Rotates every group key and re-encrypts every secret. With
    /// `dry_run`, only reports what it would do.
    pub fn rekey(&mut self, dry_run: bool) -> Result<RekeyReport> {
        let mut report = RekeyReport::new();
        for g in self.manifest.groups.keys() {
            report.insert(g.to_string(), self.vault.secret_paths(Some(g))?.len());
        }
        if dry_run {
            return Ok(report);
        }
        let mut target = self.manifest.clone();
        let mut txn = Txn::new("rekey");
        let groups: Vec<GroupName> = target.groups.keys().cloned().collect();
        for g in &groups {
            self.rotate_into(&mut target, &mut txn, g)?;
        }
        txn.manifest = Some(target);
        self.run(txn)?;
        // What a rotation left alone (no owner signed it) was not re-encrypted.
        for skipped in std::mem::take(&mut self.skipped) {
            if let Some((g, _)) = skipped.split_once('/')
                && let Some(n) = report.get_mut(g)
            {
                *n = n.saturating_sub(1);
            }
        }
        Ok(report)
    }

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

    /// Re-signs the manifest as it is (e.g. after `init`).
    pub fn resign(&mut self, op: &str) -> Result<()> {
        let mut txn = Txn::new(op);
        txn.manifest = Some(self.manifest.clone());
        self.run(txn)
    }

    // ---- helpers ----------------------------------------------------------

    /// Hands the secrets that rotations skipped to the exposures of their groups.
    fn take_skipped(&mut self, exposures: &mut [Exposure]) {
        let skipped = std::mem::take(&mut self.skipped);
        for e in exposures {
            let prefix = format!("{}/", e.group);
            e.skipped = skipped
                .iter()
                .filter(|s| s.starts_with(&prefix))
                .cloned()
                .collect();
        }
    }

    fn readable_groups(&self, agent: &AgentName) -> Vec<GroupName> {
        self.manifest
            .grants
            .get(agent)
            .map(|g| {
                g.iter()
                    .filter(|(_, m)| **m == Mode::Read)
                    .map(|(g, _)| g.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn owner_recipients(&self, m: &Manifest) -> Result<Vec<Recipient>> {
        m.owners.values().map(|o| o.recipient.parse()).collect()
    }

    /// Adds a rotation of `group` to the next generation to `txn` and `target`.
    pub(crate) fn rotate_into(
        &self,
        target: &mut Manifest,
        txn: &mut Txn,
        group: &GroupName,
    ) -> Result<()> {
        let generation = target.group(group)?.generation + 1;
        let rot = self.prepare_rotation(target, group, generation)?;
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

    /// Makes a new group identity for `group` at `generation`, encrypted to
    /// the readers that `target` gives the group, and leaves it in
    /// `groups/<group>.key.age.next`. Must run before the journal is written.
    fn prepare_rotation(
        &self,
        target: &Manifest,
        group: &GroupName,
        generation: u64,
    ) -> Result<Rotation> {
        let id = Identity::generate();
        let recipients = target.group_key_recipients(group)?;
        let ct = crypto::encrypt_identity(&recipients.iter().collect::<Vec<_>>(), &id)?;
        let next = self.vault.group_next_key_path(group);
        self.vault
            .fs()
            .write_atomic(&next, &ct, fsutil::PUBLIC_FILE)?;
        Ok(Rotation {
            group: group.clone(),
            recipient: id.recipient().as_string(),
            generation,
            extra_keys: Vec::new(),
        })
    }

    /// What an agent could read of a group, now and in git history.
    fn exposure(&self, agent: &AgentName, group: &GroupName, could_read: bool) -> Result<Exposure> {
        let current: Vec<String> = self
            .vault
            .secret_paths(Some(group))?
            .iter()
            .map(|p| p.to_string())
            .collect();
        let mut in_history = Vec::new();
        if could_read && let Some(repo) = &self.repo {
            let dir = self.vault.group_dir(group);
            let cur: BTreeSet<&String> = current.iter().collect();
            let cache = self
                .vault
                .local_dir()
                .join("history")
                .join(format!("{group}.json"));
            for name in repo.names_in_history(&dir, Some(&cache))? {
                let p = format!("{group}/{name}");
                if !cur.contains(&p) {
                    in_history.push(p);
                }
            }
        }
        Ok(Exposure {
            agent: agent.to_string(),
            group: group.to_string(),
            could_read,
            secrets: if could_read { current } else { Vec::new() },
            in_history,
            skipped: Vec::new(),
        })
    }

    pub(crate) fn run(&mut self, txn: Txn) -> Result<()> {
        self.preflight(&txn)?;
        txn.write(self.vault, &self.signing)?;
        self.complete(txn)
    }

    /// Reads, before the journal is written, the files an operation cannot
    /// do without (group keys, escrows): a link, special file or oversize
    /// file among them refuses the operation here, naming it, instead of
    /// leaving a journal that cannot complete.
    fn preflight(&self, txn: &Txn) -> Result<()> {
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
    fn complete(&mut self, txn: Txn) -> Result<()> {
        let v = self.vault;
        let fs = v.fs();
        let target = txn
            .manifest
            .clone()
            .unwrap_or_else(|| self.manifest.clone());
        let mut touched: Vec<PathBuf> = Vec::new();
        self.skipped.clear();

        // 1. Metadata of new values, once their ciphertext is in place.
        let t = crate::trace::phase("complete: metadata");
        let ready: Vec<Option<(PathBuf, Vec<u8>)>> = txn
            .metas
            .par_iter()
            .map(|(p, meta)| {
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
        drop(t);

        // 2. Rotations.
        let _t = crate::trace::phase("complete: rotations");
        for rot in &txn.rotate {
            let (files, skipped) = self.complete_rotation(rot)?;
            touched.extend(files);
            self.skipped.extend(skipped);
        }

        // 3. Group key files re-encrypted to a new reader set.
        for g in &txn.rewrap {
            let path = v.group_key_path(g);
            let ct = fs.read(&path, Kind::GroupKey)?;
            let gid = crypto::decrypt_identity(&[&self.id], &ct, &path)?;
            // A key file is not signed: only the manifest's recipient vouches for it.
            if gid.recipient().as_string() != target.group(g)?.recipient {
                return Err(Error::corrupt(
                    &path,
                    "holds a key that is not the group's (its recipient differs from the manifest's)",
                ));
            }
            let recipients = target.group_key_recipients(g)?;
            let new = crypto::encrypt_identity(&recipients.iter().collect::<Vec<_>>(), &gid)?;
            fs.write_atomic(&path, &new, fsutil::PUBLIC_FILE)?;
            touched.push(path);
        }

        // 4. Removals.
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
        let owners = self.owner_recipients(&target)?;
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

        // 5. The services list and the manifest, signed together.
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

        // 6. One commit of exactly these files.
        let _t = crate::trace::phase("complete: git commit");
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
        fs.remove_file(&v.journal_path())?;
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

    /// Re-encrypts every secret of the group to the rotated key, then puts
    /// the key in place. Returns the files it changed, and the secrets it
    /// left alone because no owner signed them or they cannot be read
    /// safely (a rotation never stops half-way over planted files).
    fn complete_rotation(&self, rot: &Rotation) -> Result<(Vec<PathBuf>, Vec<String>)> {
        let v = self.vault;
        let fs = v.fs();
        let g = &rot.group;
        let key_path = v.group_key_path(g);
        let next_path = v.group_next_key_path(g);
        let next_ct = fs.read_optional(&next_path, Kind::GroupKey)?;
        let mut touched = vec![key_path.clone()];
        let new_id = match &next_ct {
            Some(ct) => crypto::decrypt_identity(&[&self.id], ct, &next_path)?,
            // The key is in place already: every secret was re-encrypted.
            None => return Ok((touched, Vec::new())),
        };
        // The keys the group's values may be encrypted to now: the current
        // one, and after a merge the other sides' (kept in `.local`).
        let mut old: Vec<Identity> = Vec::new();
        for path in std::iter::once(key_path.clone())
            .chain(rot.extra_keys.iter().map(|k| v.local_dir().join(k)))
        {
            if let Some(ct) = fs.read_optional(&path, Kind::GroupKey)? {
                old.push(crypto::decrypt_identity(&[&self.id], &ct, &path)?);
            }
        }
        let old_ids: Vec<&Identity> = old.iter().collect();
        let old_gens: Vec<u64> = if rot.extra_keys.is_empty() {
            rot.generation
                .checked_sub(1)
                .filter(|g| *g > 0)
                .into_iter()
                .collect()
        } else {
            (1..rot.generation).collect()
        };
        let new_recipient: Recipient = rot.recipient.parse()?;
        let paths = v.secret_paths(Some(g))?;
        let (signing, manifest) = (&self.signing, &self.manifest);
        let t = crate::trace::phase("rotation: re-encrypt");
        let rewritten: Vec<Rewrite> = paths
            .par_iter()
            .map(|p| {
                let keys = RotationKeys {
                    new_id: &new_id,
                    old_ids: &old_ids,
                    old_gens: &old_gens,
                    new_recipient: &new_recipient,
                    generation: rot.generation,
                };
                reencrypt(v, signing, manifest, &keys, p)
            })
            .collect::<Result<_>>()?;
        drop(t);
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

fn remove_stray_next_keys(vault: &Vault) -> Result<()> {
    let dir = vault.dir().join("groups");
    let fs = vault.fs();
    let Ok(Some(entries)) = fs.read_dir(&dir) else {
        return Ok(());
    };
    for (name, _) in entries {
        if name.to_string_lossy().ends_with(".key.age.next") {
            fs.remove_file(&dir.join(name))?;
        }
    }
    Ok(())
}

/// Removes the now-empty directories between a removed file and `stop`.
fn remove_empty_dirs(vault: &Vault, file: &Path, stop: &Path) {
    let mut cur = file.parent();
    while let Some(d) = cur {
        if d == stop || !d.starts_with(stop) || !vault.fs().remove_empty_dir(d) {
            break;
        }
        cur = d.parent();
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
