//! Pull, push and sync for an owner: a fast-forward, or a merge that
//! understands the vault (see [`super::merge`]).

use std::path::Path;
use std::time::Duration;

use git2::Oid;

use super::{SetOptions, Writer};
use crate::error::{Error, Result};
use crate::git::VaultRepo;
use crate::git::merge::{read_conflicts, register_merge_driver, write_conflicts};
use crate::git::pull::{
    Position, PullOutcome, blob_at, fast_forward, position, vault_rel, verify_incoming,
};
use crate::git::remote::{self, Failure, Upstream};
use crate::model::{self, Manifest, SecretMeta};
use crate::names::SecretPath;

impl Writer<'_> {
    /// A handle of its own on the repository (the writer's commits through
    /// its own), and the upstream.
    fn repo_and_upstream(&self) -> Result<Option<(VaultRepo, Upstream)>> {
        let Some(repo) = VaultRepo::discover(self.vault.root())? else {
            return Ok(None);
        };
        Ok(remote::upstream(repo.repo())?.map(|u| (repo, u)))
    }

    /// Fetches and brings the remote's changes in: a fast-forward, or a merge.
    pub fn pull(&mut self, timeout: Duration) -> Result<PullOutcome> {
        let Some((repo, up)) = self.repo_and_upstream()? else {
            return Ok(PullOutcome::NoRemote);
        };
        register_merge_driver(&repo)?;
        let fetched = remote::fetch(repo.workdir(), repo.repo(), &up, timeout)?;
        // The agents' proposals, beside (never into) the vault's branch.
        remote::fetch_proposals(repo.workdir(), &up, timeout)?;
        let Some(theirs) = fetched else {
            return Ok(PullOutcome::UpToDate);
        };
        let rel = vault_rel(self.vault, &repo)?;
        let r = repo.repo();
        let their_tree = r.find_commit(theirs)?.tree()?;
        match position(r, theirs)? {
            Position::UpToDate => Ok(PullOutcome::UpToDate),
            Position::FastForward => {
                let from = r.head().ok().and_then(|h| h.peel_to_tree().ok());
                verify_incoming(self.vault, r, &rel, from.as_ref(), &their_tree)?;
                fast_forward(r, &up, theirs)?;
                self.manifest = self.vault.manifest()?;
                Ok(PullOutcome::FastForward)
            }
            Position::Diverged(base) => {
                let base_tree = r.find_commit(base)?.tree()?;
                verify_incoming(self.vault, r, &rel, Some(&base_tree), &their_tree)?;
                let conflicts = self.merge(&repo, &up, base, theirs, &rel)?;
                Ok(PullOutcome::Merged { conflicts })
            }
        }
    }

    /// Pushes the branch.
    pub fn push(&self, timeout: Duration) -> Result<bool> {
        let Some((repo, up)) = self.repo_and_upstream()? else {
            return Ok(false);
        };
        remote::push(repo.workdir(), &up, timeout)?;
        Ok(true)
    }

    /// Pull, then push; if the remote moved in between, again (three times
    /// at most).
    pub fn sync(&mut self, timeout: Duration) -> Result<SyncOutcome> {
        let mut last = None;
        for _ in 0..3 {
            let pull = self.pull(timeout)?;
            if pull == PullOutcome::NoRemote {
                return Ok(SyncOutcome {
                    pull,
                    pushed: false,
                });
            }
            match self.push(timeout) {
                Ok(pushed) => return Ok(SyncOutcome { pull, pushed }),
                Err(Error::Remote {
                    failure: Failure::Rejected,
                    ..
                }) => last = Some(pull),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Git(format!(
            "the remote kept moving while syncing ({last:?}); try again"
        )))
    }

    /// Settles a secret that both sides of a merge changed: `theirs` takes
    /// the value from the other side (re-encrypted to the group's current
    /// key and signed); otherwise ours stays.
    pub fn resolve(&mut self, path: &SecretPath, theirs: bool) -> Result<()> {
        let mut record = read_conflicts(self.vault)?;
        let key = format!("{}/{}", path.group(), path.name());
        let Some(commit) = record.secrets.get(&key).cloned() else {
            return Err(Error::InvalidInput(format!(
                "{path} has no unresolved merge conflict"
            )));
        };
        if theirs {
            let repo = VaultRepo::discover(self.vault.root())?
                .ok_or_else(|| Error::Git("no repository".into()))?;
            let r = repo.repo();
            let rel = vault_rel(self.vault, &repo)?;
            let tree = r.find_commit(Oid::from_str(&commit)?)?.tree()?;
            // Their commit may predate the move to buckets: either layout.
            let file = |f| {
                crate::layout::rels_any(path, f)
                    .iter()
                    .find_map(|p| blob_at(r, &tree, &rel.join("secrets").join(p)))
            };
            let ct = file(crate::layout::SecretFile::Value)
                .ok_or_else(|| Error::SecretNotFound(format!("{path} in {commit}")))?;
            let meta: SecretMeta = file(crate::layout::SecretFile::Meta)
                .and_then(|b| model::parse_yaml(Path::new("meta"), &b).ok())
                .ok_or_else(|| Error::UnsignedSecret {
                    path: path.to_string(),
                    reason: "their metadata is missing".into(),
                })?;
            let their_m: Manifest = blob_at(r, &tree, &rel.join("manifest.yaml"))
                .and_then(|b| model::parse_yaml(Path::new("manifest.yaml"), &b).ok())
                .ok_or_else(|| Error::Git("their manifest is unreadable".into()))?;
            let generations = their_m.group(path.group())?.generations();
            meta.verify(self.vault.id(), path, &ct, &their_m, &generations)?;
            let key_ct = blob_at(
                r,
                &tree,
                &rel.join("groups").join(format!("{}.key.age", path.group())),
            )
            .ok_or_else(|| Error::Git("their group key is missing".into()))?;
            let ring =
                crate::keyring::Keyring::open(&[&self.id], &key_ct, Path::new("their group key"))?;
            let value = crate::crypto::decrypt(&ring.all(), &ct, Path::new(&key))?;
            use age::secrecy::ExposeSecret;
            let opts = SetOptions {
                expires: meta.expires,
                description: meta.description.clone(),
            };
            self.set_many(
                vec![(path.clone(), value.expose_secret().as_slice(), opts)],
                format!("resolve {path} with their value"),
            )?;
        }
        record.secrets.remove(&key);
        write_conflicts(self.vault, &record)
    }
}

/// What a sync did.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    /// The pull.
    pub pull: PullOutcome,
    /// Whether anything was pushed.
    pub pushed: bool,
}
