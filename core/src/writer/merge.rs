//! Merging two diverged histories of the vault: files by git, the manifest
//! entry by entry and re-signed, group keys reconciled, and each secret changed
//! on both sides kept as ours and recorded for `resolve`.

use std::collections::BTreeSet;
use std::path::Path;

use git2::{Index, Oid, Repository, Tree, build::CheckoutBuilder};

use super::Writer;
use super::rotation::Plan;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::git::VaultRepo;
use crate::git::merge::{merge_manifests, read_conflicts, write_conflicts};
use crate::git::pull::blob_at;
use crate::git::remote::Upstream;
use crate::journal::Txn;
use crate::layout::{self, FANOUT_FORMAT, SecretFile};
use crate::model::{self, Manifest};
use crate::names::{GroupName, SecretPath};

/// The three trees of a merge (the common base, ours and theirs) in the
/// repository, and the vault directory's path inside it.
struct Sides<'r> {
    repo: &'r Repository,
    rel: &'r Path,
    base: Tree<'r>,
    ours: Tree<'r>,
    theirs: Tree<'r>,
}

impl Writer<'_> {
    /// Merges `theirs` (verified) into HEAD, whose common ancestor is
    /// `base`, and commits the result. Returns the secrets changed on both
    /// sides (kept as ours, recorded for `resolve`).
    pub(super) fn merge(
        &mut self,
        repo: &VaultRepo,
        up: &Upstream,
        base: Oid,
        theirs: Oid,
        rel: &Path,
    ) -> Result<Vec<String>> {
        let r = repo.repo();
        let ours_commit = r.head()?.peel_to_commit()?;
        let sides = Sides {
            repo: r,
            rel,
            base: r.find_commit(base)?.tree()?,
            ours: ours_commit.tree()?,
            theirs: r.find_commit(theirs)?.tree()?,
        };
        let mut index = r.merge_trees(&sides.base, &sides.ours, &sides.theirs, None)?;
        let conflicted_secrets = settle_conflicts(&mut index, &sides.ours, rel)?;
        let (merged_tree, merged_files) = checkout_merged(r, &mut index, up, &sides.ours, rel)?;
        let mut conflicted_secrets = conflicted_secrets;
        let merged_files = self.move_into_buckets(merged_files, &mut conflicted_secrets)?;
        let changed = secrets_changed(r, &sides.base, merged_tree, rel)?;

        // The manifest, entry by entry.
        let parse = |t: &Tree<'_>| -> Option<Manifest> {
            blob_at(r, t, &rel.join("manifest.yaml"))
                .and_then(|b| model::parse_yaml(Path::new("manifest.yaml"), &b).ok())
        };
        let our_m =
            parse(&sides.ours).ok_or_else(|| Error::Git("our manifest is unreadable".into()))?;
        let their_m = parse(&sides.theirs)
            .ok_or_else(|| Error::Git("their manifest is unreadable".into()))?;
        let base_m = parse(&sides.base);
        let mut target = merge_manifests(base_m.as_ref(), &our_m, &their_m);
        let mut txn = Txn::new(format!("merge {}/{}", up.remote, up.remote_branch));
        let merge_dir = self.vault.local_dir().join("merge");
        self.reconcile_group_keys(
            &sides,
            (&our_m, &their_m),
            (&mut target, &mut txn),
            &changed,
            &merge_dir,
        )?;
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

    /// Secrets' files that the merge brought in at their version 1 place
    /// (set by a build before the move, on the other side) moved into their
    /// buckets, where this vault's readers look; where ours is already in
    /// its bucket, ours stands and theirs is recorded as a conflict (for
    /// `resolve`, which reads either layout). Returns the files to commit,
    /// both names included.
    fn move_into_buckets(
        &self,
        files: Vec<String>,
        conflicted: &mut BTreeSet<String>,
    ) -> Result<Vec<String>> {
        let v = self.vault;
        if v.layout_format() < FANOUT_FORMAT {
            return Ok(files);
        }
        let fs = v.fs();
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            if let Some(inside) = f.strip_prefix("secrets/")
                && let Some((p, kind)) = layout::parse(inside)
                && layout::rel(1, &p, kind) == Path::new(inside)
                && fs.is_file(&v.dir().join(&f)).unwrap_or(false)
            {
                let to = v.secret_file_in(FANOUT_FORMAT, &p, kind);
                if fs.is_file(&to)? {
                    fs.remove_file(&v.dir().join(&f))?;
                    conflicted.insert(p.to_string());
                } else {
                    fs.create_dir_all(to.parent().unwrap_or(v.dir()), 0o755)?;
                    fs.rename(&v.dir().join(&f), &to)?;
                }
                out.push(format!(
                    "secrets/{}",
                    layout::rel(FANOUT_FORMAT, &p, kind).display()
                ));
            }
            out.push(f);
        }
        Ok(out)
    }

    /// Group keys: a group whose key differs between the sides was rotated
    /// on one of them (someone lost access there): rotate it again, into a
    /// keyring holding both sides' generations (each side's key file is set
    /// aside in `merge_dir`), and re-encrypt to the new key every value of
    /// the group set on either side since the base: one side set it to a
    /// key the other side's revoked agent may hold. Otherwise re-encrypt
    /// the keyring to the merged readers.
    fn reconcile_group_keys(
        &self,
        sides: &Sides<'_>,
        (our_m, their_m): (&Manifest, &Manifest),
        (target, txn): (&mut Manifest, &mut Txn),
        changed: &[SecretPath],
        merge_dir: &Path,
    ) -> Result<()> {
        let (r, rel) = (sides.repo, sides.rel);
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
                        ("theirs", &sides.theirs),
                        ("base", &sides.base),
                        ("ours", &sides.ours),
                    ] {
                        if let Some(b) = blob_at(r, tree, &key_rel) {
                            let fs = self.vault.fs();
                            fs.create_dir_all(merge_dir, 0o700)?;
                            let name = format!("{g}.{side}.key.age");
                            fs.write_atomic(&merge_dir.join(&name), &b, fsutil::PUBLIC_FILE)?;
                            extra.push(format!("merge/{name}"));
                        }
                    }
                    let plan = Plan {
                        eager: false,
                        reencrypt: changed.iter().filter(|p| p.group() == g).cloned().collect(),
                        extra_keys: extra,
                    };
                    self.rotate_with(target, txn, g, plan)?;
                }
                _ => txn.rewrap.push(g.clone()),
            }
        }
        Ok(())
    }
}

/// Settles the files git could not merge: ours stands, and a secret with a
/// value from each side is returned (its value and metadata both ours).
fn settle_conflicts(
    index: &mut Index,
    our_tree: &Tree<'_>,
    rel: &Path,
) -> Result<BTreeSet<String>> {
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
        if let (Some(inside), Some(_)) = (inside, c.their.as_ref())
            && let Some((secret, kind)) = layout::parse(&inside)
        {
            conflicted_secrets.insert((
                secret.clone(),
                layout::rel(FANOUT_FORMAT, &secret, kind) == Path::new(&inside),
            ));
        }
    }
    // A secret's value and metadata go together: both ours.
    for (secret, fanned) in &conflicted_secrets {
        let format = if *fanned { FANOUT_FORMAT } else { 1 };
        for kind in [SecretFile::Value, SecretFile::Meta] {
            let p = rel.join("secrets").join(layout::rel(format, secret, kind));
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
    Ok(conflicted_secrets
        .into_iter()
        .map(|(secret, _)| secret.to_string())
        .collect())
}

/// The secrets whose value differs between the base and the merged tree:
/// those set (on either side) since the sides diverged.
fn secrets_changed(
    r: &Repository,
    base: &Tree<'_>,
    merged: Oid,
    rel: &Path,
) -> Result<Vec<SecretPath>> {
    let merged = r.find_tree(merged)?;
    let diff = r.diff_tree_to_tree(Some(base), Some(&merged), None)?;
    let secrets = rel.join("secrets");
    Ok(diff
        .deltas()
        .filter_map(|d| d.new_file().path())
        .filter_map(|p| p.strip_prefix(&secrets).ok())
        .filter_map(|p| match layout::parse(p.to_str()?)? {
            (secret, SecretFile::Value) => Some(secret),
            _ => None,
        })
        .collect::<BTreeSet<SecretPath>>()
        .into_iter()
        .collect())
}

/// Checks the merged tree out (safely: a change of the user's is never
/// overwritten) and returns it and every vault file the merge brought in.
fn checkout_merged(
    r: &Repository,
    index: &mut Index,
    up: &Upstream,
    our_tree: &Tree<'_>,
    rel: &Path,
) -> Result<(Oid, Vec<String>)> {
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
    let diff = r.diff_tree_to_tree(Some(our_tree), Some(&merged_tree), None)?;
    let merged_files: Vec<String> = diff
        .deltas()
        .flat_map(|d| [d.old_file().path(), d.new_file().path()])
        .flatten()
        .filter_map(|p| p.strip_prefix(rel).ok())
        .filter_map(|p| p.to_str().map(str::to_owned))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok((merged_tree_id, merged_files))
}
