//! Pull, push and merge. Fetching and pushing go through the system `git`
//! ([`crate::git::remote`]); bringing the fetched commit in is ours: a safe
//! fast-forward when possible (never a forced checkout: a file the user
//! changed is never overwritten), otherwise a merge that understands the
//! vault — the manifest merged entry by entry and re-signed by the owner who
//! merges, group keys reconciled (a group rotated on either side is rotated
//! again so nothing stays encrypted to a key someone lost access to), and the
//! same secret changed on both sides kept on our side with theirs set aside
//! for `agent-vault resolve`. Nothing the remote brings is accepted unless
//! an owner signed it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Oid, Repository, Tree, build::CheckoutBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::git::VaultRepo;
use crate::git::remote::{self, Failure, Upstream};
use crate::journal::Txn;
use crate::model::{self, Manifest, Mode, SecretMeta};
use crate::names::{AgentName, GroupName, SecretPath};
use crate::vault::Vault;
use crate::vfs::Kind;
use crate::writer::{SetOptions, Writer};

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// The vault has no remote.
    NoRemote,
    /// The remote has nothing new (or no branch yet).
    UpToDate,
    /// Our branch moved forward to the remote's.
    FastForward,
    /// Both had changes: merged. Secrets changed on both sides, kept as ours.
    Merged {
        /// Secrets with a value from each side.
        conflicts: Vec<String>,
    },
}

/// What a sync did.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    /// The pull.
    pub pull: PullOutcome,
    /// Whether anything was pushed.
    pub pushed: bool,
}

/// The default time a fetch or push may take before it is abandoned.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

fn blob_at(repo: &Repository, tree: &Tree<'_>, path: &Path) -> Option<Vec<u8>> {
    let e = tree.get_path(path).ok()?;
    repo.find_blob(e.id()).ok().map(|b| b.content().to_vec())
}

/// The vault directory relative to the repository's working tree.
fn vault_rel(vault: &Vault, repo: &VaultRepo) -> Result<PathBuf> {
    vault
        .dir()
        .strip_prefix(repo.workdir())
        .map(Path::to_owned)
        .map_err(|_| Error::Git("the vault is outside its repository".into()))
}

/// Refuses a commit that would put in the vault's directory anything but
/// directories and regular files (a symbolic link, a submodule), or anything
/// under `.agent-vault/.local/` (machine-private state never comes from
/// git), or that makes the vault's directory (or one above it) something
/// other than a directory. Only what differs from `from` is looked at.
fn check_incoming_entries(
    repo: &Repository,
    rel: &Path,
    from: Option<&Tree<'_>>,
    to: &Tree<'_>,
) -> Result<()> {
    let refuse = |path: PathBuf, what: &str| Error::Refused {
        path,
        reason: format!("{what} in the incoming commit; nothing was brought in"),
    };
    let mut above = PathBuf::new();
    for c in rel.components() {
        above.push(c);
        match to.get_path(&above) {
            Ok(e) if e.kind() == Some(git2::ObjectType::Tree) => {}
            Ok(_) => return Err(refuse(above, "is not a directory")),
            // No vault there: the manifest check says so.
            Err(_) => return Ok(()),
        }
    }
    let new_sub = to.get_path(rel).ok().map(|e| e.id());
    let old_sub = from.and_then(|t| t.get_path(rel).ok()).map(|e| e.id());
    let Some(new_sub) = new_sub.filter(|n| Some(*n) != old_sub) else {
        return Ok(());
    };
    let new_tree = repo.find_tree(new_sub)?;
    let old_tree = old_sub.map(|o| repo.find_tree(o)).transpose()?;
    let mut opts = git2::DiffOptions::new();
    opts.include_typechange(true);
    let diff = repo.diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), Some(&mut opts))?;
    let local = Path::new(crate::vault::LOCAL_DIR);
    for d in diff.deltas() {
        let f = d.new_file();
        let Some(p) = f.path() else { continue };
        if !f.exists() {
            continue;
        }
        let path = rel.join(p);
        if p.starts_with(local) {
            return Err(refuse(
                path,
                "is under .agent-vault/.local/, this machine's private state, which never comes from git,",
            ));
        }
        match f.mode() {
            git2::FileMode::Blob | git2::FileMode::BlobExecutable => {}
            git2::FileMode::Link => return Err(refuse(path, "is a symbolic link")),
            git2::FileMode::Commit => return Err(refuse(path, "is a submodule (a gitlink)")),
            _ => return Err(refuse(path, "is not a regular file")),
        }
    }
    Ok(())
}

/// Verifies what a commit would bring: nothing but regular files and
/// directories (see [`check_incoming_entries`]), its manifest signed by a
/// trusted owner, and every secret that differs from `from` signed by one of
/// its owners at its group's generation.
fn verify_incoming(
    vault: &Vault,
    repo: &Repository,
    rel: &Path,
    from: Option<&Tree<'_>>,
    to: &Tree<'_>,
) -> Result<()> {
    check_incoming_entries(repo, rel, from, to)?;
    // The vault id is what trust is pinned to: an incoming change of it is
    // never signed by this vault's owners.
    if let Some(cfg) = blob_at(repo, to, &rel.join("config.yaml")) {
        let incoming = model::Config::parse(&rel.join("config.yaml"), &cfg)
            .map_err(|e| Error::UnsignedManifest(format!("in the incoming commit: {e}")))?;
        if incoming.vault_id != vault.id() {
            return Err(Error::UnsignedManifest(format!(
                "the incoming commit changes config.yaml's vault id from {} to {}; no owner of \
                 vault {} signs a change of vault id",
                vault.id(),
                incoming.vault_id,
                vault.id()
            )));
        }
    }
    let mbytes = blob_at(repo, to, &rel.join("manifest.yaml"))
        .ok_or_else(|| Error::UnsignedManifest("the incoming commit has no manifest".into()))?;
    let sig = blob_at(repo, to, &rel.join("manifest.sig"));
    let services = blob_at(repo, to, &rel.join("services.yaml")).unwrap_or_default();
    let manifest = vault
        .verify_manifest(&mbytes, sig.as_deref(), &services, false)
        .map_err(|e| Error::UnsignedManifest(format!("in the incoming commit: {e}")))?;
    let secrets = rel.join("secrets");
    let new_sub = to.get_path(&secrets).ok().map(|e| e.id());
    let old_sub = from.and_then(|t| t.get_path(&secrets).ok()).map(|e| e.id());
    let (Some(new_sub), true) = (new_sub, new_sub != old_sub) else {
        return Ok(());
    };
    let new_tree = repo.find_tree(new_sub)?;
    let old_tree = old_sub.map(|o| repo.find_tree(o)).transpose()?;
    let diff = repo.diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), None)?;
    let mut changed = BTreeSet::new();
    for d in diff.deltas() {
        if let Some(p) = d.new_file().path().and_then(Path::to_str)
            && d.new_file().exists()
            && let Some(stem) = p
                .strip_suffix(".age")
                .or_else(|| p.strip_suffix(".meta.yaml"))
        {
            changed.insert(stem.to_owned());
        }
    }
    for stem in changed {
        let Some((g, name)) = stem.split_once('/') else {
            continue;
        };
        let Ok(path) = SecretPath::new(g.parse()?, name) else {
            continue;
        };
        let fail = |reason: &str| Error::UnsignedSecret {
            path: path.to_string(),
            reason: format!("in the incoming commit: {reason}"),
        };
        let ct = blob_at(repo, &new_tree, Path::new(&format!("{stem}.age")))
            .ok_or_else(|| fail("metadata without a value"))?;
        let meta: SecretMeta = blob_at(repo, &new_tree, Path::new(&format!("{stem}.meta.yaml")))
            .and_then(|b| model::parse_yaml(Path::new("meta"), &b).ok())
            .ok_or_else(|| fail("missing or malformed metadata"))?;
        let generation = manifest
            .group(path.group())
            .map(|g| g.generation)
            .map_err(|_| fail("its group is not in the manifest"))?;
        meta.verify(vault.id(), &path, &ct, &manifest, &[generation])?;
    }
    Ok(())
}

/// Moves HEAD's branch to `target` and updates the working tree and index
/// for the files that differ — refusing, with nothing changed, if that would
/// overwrite a change the user made.
fn fast_forward(repo: &Repository, up: &Upstream, target: Oid) -> Result<()> {
    let commit = repo.find_commit(target)?;
    let mut co = CheckoutBuilder::new();
    co.safe();
    repo.checkout_tree(commit.as_object(), Some(&mut co)).map_err(|e| {
        Error::Git(format!(
            "cannot bring in {}/{}: {} (commit or stash your own changes to the vault's files, then try again)",
            up.remote,
            up.remote_branch,
            e.message()
        ))
    })?;
    repo.reference(
        &format!("refs/heads/{}", up.branch),
        target,
        true,
        &format!(
            "agent-vault: fast-forward to {}/{}",
            up.remote, up.remote_branch
        ),
    )?;
    if repo.head().is_err() {
        repo.set_head(&format!("refs/heads/{}", up.branch))?;
    }
    Ok(())
}

enum Position {
    UpToDate,
    FastForward,
    Diverged(Oid),
}

fn position(repo: &Repository, theirs: Oid) -> Result<Position> {
    let ours = match repo.head().ok().and_then(|h| h.target()) {
        Some(o) => o,
        None => return Ok(Position::FastForward),
    };
    if ours == theirs || repo.graph_descendant_of(ours, theirs)? {
        return Ok(Position::UpToDate);
    }
    if repo.graph_descendant_of(theirs, ours)? {
        return Ok(Position::FastForward);
    }
    Ok(Position::Diverged(repo.merge_base(ours, theirs)?))
}

/// Fetches and fast-forwards, with no key: what a reader (an agent's clone)
/// does. A diverged clone is reported, never merged.
pub fn pull_fast_forward(vault: &Vault, timeout: Duration) -> Result<PullOutcome> {
    let Some(repo) = VaultRepo::discover(vault.root())? else {
        return Ok(PullOutcome::NoRemote);
    };
    let Some(up) = remote::upstream(repo.repo())? else {
        return Ok(PullOutcome::NoRemote);
    };
    let Some(theirs) = remote::fetch(repo.workdir(), repo.repo(), &up, timeout)? else {
        return Ok(PullOutcome::UpToDate);
    };
    match position(repo.repo(), theirs)? {
        Position::UpToDate => Ok(PullOutcome::UpToDate),
        Position::FastForward => {
            let rel = vault_rel(vault, &repo)?;
            let r = repo.repo();
            let from = r.head().ok().and_then(|h| h.peel_to_tree().ok());
            verify_incoming(
                vault,
                r,
                &rel,
                from.as_ref(),
                &r.find_commit(theirs)?.tree()?,
            )?;
            fast_forward(r, &up, theirs)?;
            Ok(PullOutcome::FastForward)
        }
        Position::Diverged(_) => Err(Error::Diverged(format!(
            "this clone and {}/{} have both changed; an owner's `agent-vault sync` merges them",
            up.remote, up.remote_branch
        ))),
    }
}

/// State kept between `pull` and `resolve` for secrets changed on both sides.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Conflicts {
    /// Secret path → the commit holding their version.
    secrets: BTreeMap<String, String>,
}

fn conflicts_path(vault: &Vault) -> PathBuf {
    vault
        .dir()
        .join(crate::vault::LOCAL_DIR)
        .join("conflicts.yaml")
}

fn read_conflicts(vault: &Vault) -> Result<Conflicts> {
    let p = conflicts_path(vault);
    Ok(match vault.fs().read_optional(&p, Kind::Local)? {
        Some(b) => model::parse_yaml(&p, &b)?,
        None => Conflicts::default(),
    })
}

fn write_conflicts(vault: &Vault, c: &Conflicts) -> Result<()> {
    let p = conflicts_path(vault);
    if c.secrets.is_empty() {
        return vault.fs().remove_file(&p);
    }
    vault
        .fs()
        .write_atomic(&p, &model::to_yaml(c), fsutil::PUBLIC_FILE)
}

/// Secrets changed on both sides of a merge and not yet resolved.
pub fn unresolved(vault: &Vault) -> Result<Vec<String>> {
    Ok(read_conflicts(vault)?.secrets.into_keys().collect())
}

/// Three-way merge of a map: a side's change wins over no change; when
/// both changed an entry differently, ours wins.
fn merge_map<K: Ord + Clone, V: PartialEq + Clone>(
    base: &BTreeMap<K, V>,
    ours: &BTreeMap<K, V>,
    theirs: &BTreeMap<K, V>,
) -> BTreeMap<K, V> {
    let keys: BTreeSet<&K> = base
        .keys()
        .chain(ours.keys())
        .chain(theirs.keys())
        .collect();
    let mut out = BTreeMap::new();
    for k in keys {
        let (b, o, t) = (base.get(k), ours.get(k), theirs.get(k));
        let pick = if o == t || t == b {
            o
        } else if o == b {
            t
        } else {
            o
        };
        if let Some(v) = pick {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Revocations only accumulate: a merge keeps every one of both sides.
fn merge_revocations(
    a: &crate::model::Revocations,
    b: &crate::model::Revocations,
) -> crate::model::Revocations {
    let mut out = a.clone();
    for t in &b.tokens {
        if !out.tokens.contains(t) {
            out.tokens.push(t.clone());
        }
    }
    for (agent, t) in &b.agents {
        let e = out.agents.entry(agent.clone()).or_insert(*t);
        *e = (*e).max(*t);
    }
    for s in &b.sessions {
        if !out.sessions.contains(s) {
            out.sessions.push(s.clone());
        }
    }
    out.all_before = a.all_before.max(b.all_before);
    out
}

/// The manifest both sides' changes lead to.
pub fn merge_manifests(base: Option<&Manifest>, ours: &Manifest, theirs: &Manifest) -> Manifest {
    let empty = Manifest {
        format: ours.format,
        vault_id: ours.vault_id.clone(),
        owners: BTreeMap::new(),
        agents: BTreeMap::new(),
        groups: BTreeMap::new(),
        grants: BTreeMap::new(),
        broker: None,
        revoked: Default::default(),
    };
    let base = base.unwrap_or(&empty);
    let flat = |m: &Manifest| -> BTreeMap<(AgentName, GroupName), Mode> {
        m.grants
            .iter()
            .flat_map(|(a, gs)| {
                gs.iter()
                    .map(move |(g, mode)| ((a.clone(), g.clone()), *mode))
            })
            .collect()
    };
    let mut merged = Manifest {
        format: ours.format,
        vault_id: ours.vault_id.clone(),
        owners: merge_map(&base.owners, &ours.owners, &theirs.owners),
        agents: merge_map(&base.agents, &ours.agents, &theirs.agents),
        groups: merge_map(&base.groups, &ours.groups, &theirs.groups),
        grants: BTreeMap::new(),
        broker: if ours.broker == theirs.broker || theirs.broker == base.broker {
            ours.broker.clone()
        } else {
            theirs.broker.clone()
        },
        revoked: merge_revocations(&ours.revoked, &theirs.revoked),
    };
    for ((a, g), mode) in merge_map(&flat(base), &flat(ours), &flat(theirs)) {
        if merged.agents.contains_key(&a) && merged.groups.contains_key(&g) {
            merged.grants.entry(a).or_default().insert(g, mode);
        }
    }
    merged
}

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
        let Some(theirs) = remote::fetch(repo.workdir(), repo.repo(), &up, timeout)? else {
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

    fn merge(
        &mut self,
        repo: &VaultRepo,
        up: &Upstream,
        base: Oid,
        theirs: Oid,
        rel: &Path,
    ) -> Result<Vec<String>> {
        let r = repo.repo();
        let ours_commit = r.head()?.peel_to_commit()?;
        let (base_tree, our_tree, their_tree) = (
            r.find_commit(base)?.tree()?,
            ours_commit.tree()?,
            r.find_commit(theirs)?.tree()?,
        );
        let mut index = r.merge_trees(&base_tree, &our_tree, &their_tree, None)?;
        // Conflicting files: ours stands; a secret with a value from each
        // side is recorded for `resolve`.
        let mut conflicted_secrets = BTreeSet::new();
        let conflicts: Vec<_> = index.conflicts()?.collect::<std::result::Result<_, _>>()?;
        for c in conflicts {
            let path = c
                .our
                .as_ref()
                .or(c.their.as_ref())
                .or(c.ancestor.as_ref())
                .map(|e| String::from_utf8_lossy(&e.path).into_owned())
                .unwrap_or_default();
            index.conflict_remove(Path::new(&path))?;
            if let Some(mut ours) = c.our {
                // Back to an ordinary (stage 0) entry.
                ours.flags &= !0x3000;
                index.add(&ours)?;
            }
            let inside = Path::new(&path)
                .strip_prefix(rel.join("secrets"))
                .ok()
                .and_then(Path::to_str)
                .map(str::to_owned);
            if let (Some(inside), Some(_)) = (inside, c.their.as_ref()) {
                let stem = inside
                    .strip_suffix(".age")
                    .or_else(|| inside.strip_suffix(".meta.yaml"));
                if let Some(stem) = stem {
                    conflicted_secrets.insert(stem.to_owned());
                }
            }
        }
        // A secret's value and metadata go together: both ours.
        for stem in &conflicted_secrets {
            for ext in ["age", "meta.yaml"] {
                let p = rel.join("secrets").join(format!("{stem}.{ext}"));
                match our_tree.get_path(&p) {
                    Ok(e) => index.add(&git2::IndexEntry {
                        ctime: git2::IndexTime::new(0, 0),
                        mtime: git2::IndexTime::new(0, 0),
                        dev: 0,
                        ino: 0,
                        mode: 0o100644,
                        uid: 0,
                        gid: 0,
                        file_size: 0,
                        id: e.id(),
                        flags: p.to_string_lossy().len().min(0xfff) as u16,
                        flags_extended: 0,
                        path: p.to_string_lossy().as_bytes().to_vec(),
                    })?,
                    Err(_) => {
                        let _ = index.remove_path(&p);
                    }
                }
            }
        }
        let merged_tree_id = index.write_tree_to(r)?;
        let merged_tree = r.find_tree(merged_tree_id)?;
        let mut co = CheckoutBuilder::new();
        co.safe();
        r.checkout_tree(merged_tree.as_object(), Some(&mut co)).map_err(|e| {
            Error::Git(format!(
                "cannot merge {}/{}: {} (commit or stash your own changes to the vault's files, then try again)",
                up.remote,
                up.remote_branch,
                e.message()
            ))
        })?;
        // Every file the merge brought in.
        let diff = r.diff_tree_to_tree(Some(&our_tree), Some(&merged_tree), None)?;
        let merged_files: Vec<String> = diff
            .deltas()
            .flat_map(|d| [d.old_file().path(), d.new_file().path()])
            .flatten()
            .filter_map(|p| p.strip_prefix(rel).ok())
            .filter_map(|p| p.to_str().map(str::to_owned))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();

        // The manifest, entry by entry.
        let parse = |t: &Tree<'_>| -> Option<Manifest> {
            blob_at(r, t, &rel.join("manifest.yaml"))
                .and_then(|b| model::parse_yaml(Path::new("manifest.yaml"), &b).ok())
        };
        let our_m =
            parse(&our_tree).ok_or_else(|| Error::Git("our manifest is unreadable".into()))?;
        let their_m =
            parse(&their_tree).ok_or_else(|| Error::Git("their manifest is unreadable".into()))?;
        let base_m = parse(&base_tree);
        let mut target = merge_manifests(base_m.as_ref(), &our_m, &their_m);
        let mut txn = Txn::new(format!("merge {}/{}", up.remote, up.remote_branch));
        // Group keys: a group whose key differs between the sides was rotated
        // on one of them (someone lost access there): rotate it again, from
        // whichever key each value is encrypted to. Otherwise re-encrypt the
        // key to the merged readers.
        let merge_dir = self.vault.local_dir().join("merge");
        let groups: Vec<GroupName> = target.groups.keys().cloned().collect();
        for g in &groups {
            let (o, t) = (our_m.groups.get(g), their_m.groups.get(g));
            let key_rel = rel.join("groups").join(format!("{g}.key.age"));
            match (o, t) {
                (Some(o), Some(t)) if o.recipient != t.recipient => {
                    let generation = o.generation.max(t.generation);
                    if let Some(e) = target.groups.get_mut(g) {
                        e.generation = generation;
                    }
                    let mut extra = Vec::new();
                    for (side, tree) in [
                        ("theirs", &their_tree),
                        ("base", &base_tree),
                        ("ours", &our_tree),
                    ] {
                        if let Some(b) = blob_at(r, tree, &key_rel) {
                            let fs = self.vault.fs();
                            fs.create_dir_all(&merge_dir, 0o700)?;
                            let name = format!("{g}.{side}.key.age");
                            fs.write_atomic(&merge_dir.join(&name), &b, fsutil::PUBLIC_FILE)?;
                            extra.push(format!("merge/{name}"));
                        }
                    }
                    self.rotate_into(&mut target, &mut txn, g)?;
                    if let Some(rot) = txn.rotate.last_mut() {
                        rot.extra_keys = extra;
                    }
                }
                _ => txn.rewrap.push(g.clone()),
            }
        }
        if our_m.owners != their_m.owners {
            txn.reescrow = target.agents.keys().cloned().collect();
        }
        txn.manifest = Some(target);
        txn.merge_parent = Some(theirs.to_string());
        txn.extra_files = merged_files;
        // The merged manifest in the working tree is whatever git merged;
        // the journal's target replaces it and is signed. Values are checked
        // against the merged owners.
        self.manifest = txn.manifest.clone().unwrap_or(our_m);
        self.run(txn)?;
        let _ = self.vault.fs().remove_dir_all(&merge_dir);
        let mut record = read_conflicts(self.vault)?;
        for s in &conflicted_secrets {
            record.secrets.insert(s.clone(), theirs.to_string());
        }
        write_conflicts(self.vault, &record)?;
        Ok(conflicted_secrets.into_iter().collect())
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
            let file = |ext: &str| {
                blob_at(
                    r,
                    &tree,
                    &rel.join("secrets")
                        .join(path.group().as_str())
                        .join(format!("{}.{ext}", path.name())),
                )
            };
            let ct =
                file("age").ok_or_else(|| Error::SecretNotFound(format!("{path} in {commit}")))?;
            let meta: SecretMeta = file("meta.yaml")
                .and_then(|b| model::parse_yaml(Path::new("meta"), &b).ok())
                .ok_or_else(|| Error::UnsignedSecret {
                    path: path.to_string(),
                    reason: "their metadata is missing".into(),
                })?;
            let their_m: Manifest = blob_at(r, &tree, &rel.join("manifest.yaml"))
                .and_then(|b| model::parse_yaml(Path::new("manifest.yaml"), &b).ok())
                .ok_or_else(|| Error::Git("their manifest is unreadable".into()))?;
            let generation = their_m.group(path.group())?.generation;
            meta.verify(self.vault.id(), path, &ct, &their_m, &[generation])?;
            let key_ct = blob_at(
                r,
                &tree,
                &rel.join("groups").join(format!("{}.key.age", path.group())),
            )
            .ok_or_else(|| Error::Git("their group key is missing".into()))?;
            let gid = crate::crypto::decrypt_identity(
                &[&self.id],
                &key_ct,
                Path::new("their group key"),
            )?;
            let value = crate::crypto::decrypt(&[&gid], &ct, Path::new(&key))?;
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

/// The manifest of a merge that plain `git merge` made (through the merge
/// driver `init` registers): returned when HEAD is a merge whose parents'
/// manifests are both signed by trusted owners and the committed manifest is
/// exactly their entry-by-entry merge — the one unsigned manifest an owner
/// may sign without looking. Group keys must not have diverged (a rotation
/// on either side needs `agent-vault sync`).
pub fn git_merged_manifest(vault: &Vault) -> Result<Option<Manifest>> {
    let Some(repo) = VaultRepo::discover(vault.root())? else {
        return Ok(None);
    };
    let rel = vault_rel(vault, &repo)?;
    let r = repo.repo();
    let Ok(head) = r.head().and_then(|h| h.peel_to_commit()) else {
        return Ok(None);
    };
    if head.parent_count() != 2 {
        return Ok(None);
    }
    let current = vault.fs().read(&vault.manifest_path(), Kind::Manifest)?;
    if blob_at(r, &head.tree()?, &rel.join("manifest.yaml")).as_deref() != Some(current.as_slice())
    {
        return Ok(None);
    }
    let mut sides = Vec::new();
    for parent in head.parents() {
        let t = parent.tree()?;
        let m = blob_at(r, &t, &rel.join("manifest.yaml")).unwrap_or_default();
        let sig = blob_at(r, &t, &rel.join("manifest.sig"));
        let services = blob_at(r, &t, &rel.join("services.yaml")).unwrap_or_default();
        match vault.verify_manifest(&m, sig.as_deref(), &services, false) {
            Ok(m) => sides.push(m),
            Err(_) => return Ok(None),
        }
    }
    let base = r.merge_base(head.parent_id(0)?, head.parent_id(1)?)?;
    let base_m: Option<Manifest> =
        blob_at(r, &r.find_commit(base)?.tree()?, &rel.join("manifest.yaml"))
            .and_then(|b| model::parse_yaml(Path::new("manifest.yaml"), &b).ok());
    let merged = merge_manifests(base_m.as_ref(), &sides[0], &sides[1]);
    let now: Manifest = model::parse_yaml(&vault.manifest_path(), &current)?;
    let diverged = merged.groups.iter().any(|(g, e)| {
        sides
            .iter()
            .any(|s| s.groups.get(g).is_some_and(|x| x.recipient != e.recipient))
    });
    Ok((now == merged && !diverged).then_some(merged))
}

/// The lines `init` (and every pull) puts in `.agent-vault/.gitattributes`
/// and the repository's config, so that plain `git pull` merges the
/// manifest entry by entry.
pub const GITATTRIBUTES: &str = "# agent-vault: merge the manifest entry by entry; the next agent-vault command re-signs it\nmanifest.yaml merge=agent-vault-manifest\nmanifest.sig merge=agent-vault-ours\n*.age binary\n";

/// Registers the manifest merge driver in the repository's config.
pub fn register_merge_driver(repo: &VaultRepo) -> Result<()> {
    let mut cfg = repo.repo().config()?;
    let key = "merge.agent-vault-manifest.driver";
    if cfg.get_string(key).is_err() {
        cfg.set_str(
            "merge.agent-vault-manifest.name",
            "agent-vault manifest (entry by entry)",
        )?;
        cfg.set_str(key, "agent-vault merge-driver %O %A %B")?;
        // The signature is made anew for the merged manifest: keep ours meanwhile.
        cfg.set_str(
            "merge.agent-vault-ours.name",
            "agent-vault: keep ours until re-signed",
        )?;
        cfg.set_str("merge.agent-vault-ours.driver", "true")?;
    }
    Ok(())
}

/// The merge driver: merges three manifest files entry by entry into
/// `ours`. Returns false (a conflict for git) if one does not parse.
pub fn merge_driver(base: &Path, ours: &Path, theirs: &Path) -> Result<bool> {
    let read = |p: &Path| -> Option<Manifest> {
        let b = std::fs::read(p).ok()?;
        model::parse_yaml(p, &b).ok()
    };
    let (Some(o), Some(t)) = (read(ours), read(theirs)) else {
        return Ok(false);
    };
    let merged = merge_manifests(read(base).as_ref(), &o, &t);
    fsutil::write_atomic(ours, &model::to_yaml(&merged), fsutil::PUBLIC_FILE)?;
    Ok(true)
}

/// The automatic pull of readers: at most once per interval, only with a
/// remote, fast-forward only, never failing the read. Returns a warning to
/// print when the remote could not be reached (once per interval).
pub fn auto_pull(vault: &Vault) -> Option<String> {
    let cfg = vault.config();
    if !cfg.auto_pull || std::env::var_os("AGENT_VAULT_OFFLINE").is_some() {
        return None;
    }
    let git_dir = vault
        .root()
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|d| d.exists())?;
    if !remote::has_remote_cheap(&git_dir) {
        return None;
    }
    // The stamp is machine-private: never a link (it is neither followed nor
    // written through), and not written while git tracks anything under
    // `.local/`. (A fresh stamp only ever skips a pull for one interval.)
    let fs = vault.fs();
    let stamp = vault.local_dir().join("last-pull");
    let not_updating = |e: Error| Some(format!("not updating the vault from its remote: {e}"));
    let fresh = match fs.modified(&stamp) {
        Ok(t) => t
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(cfg.pull_interval_seconds)),
        Err(e) => return not_updating(e),
    };
    if fresh {
        return None;
    }
    if let Err(e) = crate::vfs::ensure_local_untracked(vault.dir()) {
        return not_updating(e);
    }
    // Stamp first: a failing remote is tried (and warned about) once per interval.
    if let Err(e) = fs.write_atomic(&stamp, b"", fsutil::PUBLIC_FILE) {
        return not_updating(e);
    }
    match pull_fast_forward(vault, Duration::from_secs(cfg.pull_timeout_seconds)) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "could not update the vault from its remote, using the local copy: {e}"
        )),
    }
}
