//! A compound change in one journaled operation and one commit: values
//! set, secrets removed, services replaced, `use` grants added and public
//! files written together. What an approved proposal applies.

use std::collections::BTreeSet;

use crate::broker::services::Services;
use crate::crypto::OwnerSigningKey;
use crate::error::{Error, Result};
use crate::journal::Txn;
use crate::model::{GroupEntry, Mode};
use crate::names::{AgentName, GroupName, SecretPath};

use super::{SetOptions, Writer};

/// What [`Writer::apply`] changes.
#[derive(Default)]
pub struct Change<'a> {
    /// What the operation is, for the commit message (never a value).
    pub op: String,
    /// Values to set.
    pub set: Vec<(SecretPath, &'a [u8], SetOptions)>,
    /// Secrets to remove (each must exist).
    pub remove: Vec<SecretPath>,
    /// The new services list, if it changes (signed with the manifest).
    pub services: Option<Services>,
    /// `use` grants to add (an agent's existing grant on a group is kept as it is).
    pub grants: Vec<(AgentName, GroupName)>,
    /// Public files to write and commit, relative to `.agent-vault`.
    pub files: Vec<(String, String)>,
    /// Secrets a service may name though they are not set yet: OAuth
    /// credentials the owner connects right after (until then the broker
    /// answers that the secret is unavailable).
    pub to_connect: Vec<SecretPath>,
}

impl Writer<'_> {
    /// The owner's signing key (for records an owner signs, such as a
    /// proposal's decision).
    pub(crate) fn signing_key(&self) -> &OwnerSigningKey {
        &self.signing
    }

    /// Applies a compound change in one journaled operation and one commit.
    pub fn apply(&mut self, change: Change<'_>) -> Result<()> {
        if let Some((p, _, _)) = change
            .set
            .iter()
            .find(|(_, v, _)| v.len() > crate::vfs::MAX_VALUE)
        {
            return Err(Error::InvalidInput(format!(
                "the value of {p} is larger than {} bytes, the most a secret may hold",
                crate::vfs::MAX_VALUE
            )));
        }
        for a in change.grants.iter().map(|(a, _)| a) {
            if !self.manifest.agents.contains_key(a) {
                return Err(Error::AgentNotFound(a.to_string()));
            }
        }
        let setting: BTreeSet<&SecretPath> = change.set.iter().map(|(p, _, _)| p).collect();
        for p in &change.remove {
            if setting.contains(p) || !self.vault.fs().is_file(&self.vault.secret_age_path(p))? {
                return Err(Error::SecretNotFound(p.to_string()));
            }
        }
        if let Some(services) = &change.services {
            services.validate()?;
            for (name, svc) in &services.services {
                for p in svc.all_secrets() {
                    let present = setting.contains(&p)
                        || change.to_connect.contains(&p)
                        || (self.manifest.groups.contains_key(p.group())
                            && !change.remove.contains(&p)
                            && self.vault.fs().is_file(&self.vault.secret_age_path(&p))?);
                    if !present {
                        return Err(Error::InvalidInput(format!(
                            "service {name} names {p}, which is not a secret of this vault; set it first"
                        )));
                    }
                }
            }
        }
        self.prepare_value_paths(change.set.iter().map(|(p, _, _)| p))?;

        let mut txn = Txn::new(change.op.clone());
        let mut target = self.manifest.clone();
        for (a, g) in &change.grants {
            target
                .grants
                .entry(a.clone())
                .or_default()
                .entry(g.clone())
                .or_insert(Mode::Use);
        }
        // The broker must open an existing group some agent now uses.
        if target.broker.is_some() {
            txn.rewrap = target
                .groups
                .keys()
                .filter(|g| target.used(g) && !self.manifest.used(g))
                .cloned()
                .collect();
        }
        // New groups: their first key, encrypted to the target's readers
        // (a group of a credential to connect too, so that it can be set).
        let new_groups: BTreeSet<&GroupName> = change
            .set
            .iter()
            .map(|(p, _, _)| p.group())
            .chain(change.to_connect.iter().map(SecretPath::group))
            .filter(|g| !self.manifest.groups.contains_key(*g))
            .collect();
        for g in new_groups {
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
        for (a, g) in &change.grants {
            if !target.groups.contains_key(g) {
                return Err(Error::InvalidInput(format!(
                    "cannot grant {a} use on group {g}: the group has no secret and this change sets none"
                )));
            }
        }
        if let Some(services) = &change.services {
            txn.services = Some(
                String::from_utf8(services.to_bytes())
                    .map_err(|_| Error::InvalidInput("services are not UTF-8".into()))?,
            );
        }
        txn.remove_secrets = change.remove.clone();
        txn.write_files = change.files.clone();
        txn.manifest = Some(target.clone());
        let sealed = self.seal(&target, &change.set)?;
        txn.metas = sealed
            .iter()
            .map(|(p, _, m)| (p.clone(), m.clone()))
            .collect();
        self.preflight(&txn)?;
        txn.write(self.vault, &self.signing)?;
        self.write_sealed(sealed)?;
        self.complete(txn)
    }

    /// Writes and commits public files alone (a denial's record), journaled.
    pub(crate) fn write_files(&mut self, op: String, files: Vec<(String, String)>) -> Result<()> {
        let mut txn = Txn::new(op);
        txn.write_files = files;
        self.run(txn)
    }
}
