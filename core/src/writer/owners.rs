//! Owners: adding and removing them, rekeying, re-signing.

use std::path::PathBuf;

use crate::crypto::{self, Recipient};
use crate::error::{Error, Result};
use crate::journal::Txn;
use crate::names::{AgentName, GroupName, OwnerName};

use super::{RekeyReport, Writer};

impl Writer<'_> {
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
            let (key_path, entry) = self.new_agent_key(&a, &target)?;
            target.agents.insert(a.clone(), entry);
            txn.agent_files.push(a.clone());
            keys.push((a, key_path));
        }
        let groups: Vec<GroupName> = target.groups.keys().cloned().collect();
        for g in &groups {
            self.rotate_with(&mut target, &mut txn, g, super::rotation::Plan::eager())?;
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
            self.rotate_with(&mut target, &mut txn, g, super::rotation::Plan::eager())?;
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

    /// Re-signs the manifest as it is (e.g. after `init`).
    pub fn resign(&mut self, op: &str) -> Result<()> {
        let mut txn = Txn::new(op);
        txn.manifest = Some(self.manifest.clone());
        self.run(txn)
    }
}
