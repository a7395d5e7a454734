//! Agents and their grants: keys, escrow, grant and revoke, and what an
//! agent could read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::crypto::{self, Identity};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::journal::Txn;
use crate::keystore::{self};
use crate::model::{AgentEntry, Manifest, Mode};
use crate::names::{AgentName, GroupName};
use crate::vfs::Kind;

use super::{Exposure, GrantOutcome, Writer};

impl Writer<'_> {
    /// Adds an agent: a key pair, the private key escrowed to the owners in
    /// the vault and written to this machine's key store. Returns the
    /// path of the local key file.
    pub fn add_agent(&mut self, name: &AgentName) -> Result<PathBuf> {
        if self.manifest.agents.contains_key(name) {
            return Err(Error::AgentExists(name.to_string()));
        }
        let (key_path, entry) = self.new_agent_key(name, &self.manifest)?;
        let mut target = self.manifest.clone();
        target.agents.insert(name.clone(), entry);
        let mut txn = Txn::new(format!("add agent {name}"));
        txn.manifest = Some(target);
        txn.agent_files.push(name.clone());
        self.run(txn)?;
        Ok(key_path)
    }

    /// Makes a new key pair for an agent: public key and escrow (to the
    /// owners of `owners`) in the vault, private key in the local key store.
    /// Returns the key file's path and the agent's manifest entry (its
    /// recipient and token-signing key).
    pub(super) fn new_agent_key(
        &self,
        name: &AgentName,
        owners: &Manifest,
    ) -> Result<(PathBuf, AgentEntry)> {
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
        let entry = AgentEntry {
            recipient,
            signing_key: Some(id.agent_signing_key().public()),
        };
        Ok((key_path, entry))
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
        let (key_path, entry) = self.new_agent_key(name, &self.manifest)?;
        let mut target = self.manifest.clone();
        target.agents.insert(name.clone(), entry);
        let mut txn = Txn::new(format!("recover agent {name}"));
        for g in self.readable_groups(name) {
            self.rotate_into(&mut target, &mut txn, &g)?;
        }
        txn.manifest = Some(target);
        txn.agent_files.push(name.clone());
        self.run(txn)?;
        Ok(key_path)
    }

    /// Gives agents made before token-signing keys existed their signing
    /// key: each one's escrow is opened with this owner's key, the key
    /// derived, and its public half written into the signed manifest (one
    /// journaled change). `only` limits it to these agents (each must
    /// exist); agents that have a key already are left alone. Returns the
    /// agents upgraded.
    pub fn upgrade_agents(&mut self, only: &[AgentName]) -> Result<Vec<AgentName>> {
        for a in only {
            if !self.manifest.agents.contains_key(a) {
                return Err(Error::AgentNotFound(a.to_string()));
            }
        }
        let mut target = self.manifest.clone();
        let mut upgraded = Vec::new();
        for (name, entry) in target.agents.iter_mut() {
            if entry.signing_key.is_some() || !(only.is_empty() || only.contains(name)) {
                continue;
            }
            let id = self.open_escrow(name)?;
            entry.signing_key = Some(id.agent_signing_key().public());
            upgraded.push(name.clone());
        }
        if upgraded.is_empty() {
            return Ok(upgraded);
        }
        let names: Vec<String> = upgraded.iter().map(ToString::to_string).collect();
        let mut txn = Txn::new(format!("upgrade agent signing keys {}", names.join(", ")));
        txn.manifest = Some(target);
        self.run(txn)?;
        Ok(upgraded)
    }

    /// An agent's identity, opened from its escrow with this owner's key and
    /// checked against its recipient in the manifest.
    fn open_escrow(&self, name: &AgentName) -> Result<Identity> {
        let escrow = self.vault.agent_dir(name).join("private.key.escrow");
        let ct = self.vault.fs().read(&escrow, Kind::KeyFile)?;
        let id = crypto::decrypt_identity(&[&self.id], &ct, &escrow)?;
        let entry = self.manifest.agents.get(name);
        if entry.is_none_or(|e| id.recipient().as_string() != e.recipient) {
            return Err(Error::corrupt(
                &escrow,
                "the escrowed key is not the agent's current key",
            ));
        }
        Ok(id)
    }

    /// Writes an agent's private key, recovered from escrow, to `to`
    /// (created 0600; an existing file is never overwritten).
    pub fn restore_agent(&self, name: &AgentName, to: &Path) -> Result<()> {
        if !self.manifest.agents.contains_key(name) {
            return Err(Error::AgentNotFound(name.to_string()));
        }
        let id = self.open_escrow(name)?;
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

    /// What an agent could read of a group, now and in git history.
    fn exposure(&self, agent: &AgentName, group: &GroupName, could_read: bool) -> Result<Exposure> {
        let t = crate::trace::phase("exposure: the group's secrets");
        let current = self.vault.group_secret_names(group)?;
        drop(t);
        let _t = crate::trace::phase("exposure: history");
        // Sorted, and a name once though history holds it in both layouts.
        let mut in_history = BTreeSet::new();
        if could_read && let Some(repo) = &self.repo {
            let dir = self.vault.group_dir(group);
            // Names are matched past their bucket: history spans the
            // migration and holds both layouts.
            let bare = crate::layout::past_bucket;
            // `current` as bare names, in order (all of it starts with
            // `<group>/`), walked beside history's names in the same order.
            let from = group.as_str().len() + 1;
            let mut cur = current
                .iter()
                .map(|p| p.get(from..).unwrap_or(""))
                .peekable();
            let cache = self
                .vault
                .local_dir()
                .join("history")
                .join(format!("{group}.json"));
            repo.names_in_history(&dir, Some(&cache), &bare, &mut |name| {
                let b = bare(name);
                while cur.next_if(|c| *c < b).is_some() {}
                if cur.peek() == Some(&b) {
                    return;
                }
                // Either layout (history spans the migration); a file in a
                // wrong bucket was never a secret.
                if let Some((p, _)) = crate::layout::parse(&format!("{group}/{name}.age")) {
                    in_history.insert(p.to_string());
                }
            })?;
        }
        Ok(Exposure {
            agent: agent.to_string(),
            group: group.to_string(),
            could_read,
            secrets: if could_read { current } else { Vec::new() },
            in_history: in_history.into_iter().collect(),
            skipped: Vec::new(),
        })
    }
}
