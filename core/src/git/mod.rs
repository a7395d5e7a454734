//! Commits through libgit2 (git2, built without its network features, so no
//! TLS start-up on local commands). The tool commits exactly the vault files
//! it changed: the new tree is HEAD's tree with those paths replaced, never
//! the user's index, so whatever the user staged stays staged and out of our
//! commit; the index entries of our paths are then updated so `git status`
//! shows them clean.

pub(crate) mod merge;
pub(crate) mod pack;
pub(crate) mod publish;
pub(crate) mod pull;
pub mod remote;

use std::path::{Path, PathBuf};

use git2::{FileMode, IndexEntry, IndexTime, Oid, Repository, Signature, build::TreeUpdateBuilder};

use crate::error::{Error, Result};
use crate::vfs::{Kind, VaultFs};

/// libgit2 re-reads and re-hashes every object it references while
/// creating a tree or commit, and re-hashes every object it reads. Our own
/// commits reference objects we have just written, and nothing we trust
/// rests on git's hashes (values carry owner signatures), so both checks
/// only cost time: a 10,000-entry tree is re-hashed on every commit.
fn tune_libgit2() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        git2::opts::strict_object_creation(false);
        git2::opts::strict_hash_verification(false);
    });
}

/// A file's contents and metadata as the commit takes them.
type FileNow = (Vec<u8>, std::fs::Metadata);

/// One path's new index entry (blob id and file metadata), or its removal.
type IndexUpdate = (String, Option<(Oid, std::fs::Metadata)>);

/// Commits of more files than this are written to git as one pack.
const PACK_THRESHOLD: usize = 64;

/// A vault's git repository.
pub struct VaultRepo {
    repo: Repository,
    workdir: PathBuf,
}

impl VaultRepo {
    /// Opens the repository containing `dir`, if there is one.
    pub fn discover(dir: &Path) -> Result<Option<Self>> {
        tune_libgit2();
        let repo = match Repository::discover(dir) {
            Ok(r) => r,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(workdir) = repo.workdir().map(Path::to_owned) else {
            return Ok(None);
        };
        let workdir = workdir.canonicalize().map_err(|e| Error::io(&workdir, e))?;
        Ok(Some(VaultRepo { repo, workdir }))
    }

    /// Creates a repository at `dir`.
    pub fn init(dir: &Path) -> Result<Self> {
        tune_libgit2();
        let repo = Repository::init(dir)?;
        // The vault's own repository: libgit2 and git read an index whose
        // trailing hash is zeros, and with this set git writes it so too.
        // Hashing the 2 MB index of 10,000 secrets on every write was a
        // tenth of a `set`. Only where the git on PATH takes it whole:
        // before 2.40, `git fsck` calls such an index corrupt.
        if remote::git_version().is_some_and(|v| v >= (2, 40)) {
            repo.config()?.set_bool("index.skipHash", true)?;
        }
        let workdir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        Ok(VaultRepo { repo, workdir })
    }

    /// The working tree.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The underlying repository.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    fn signature(&self) -> Result<Signature<'static>> {
        match self.repo.signature() {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Ok(Signature::now("agent-vault", "agent-vault@localhost")?),
        }
    }

    /// Commits the current contents of `paths` (absolute, inside the working
    /// tree; a missing file is removed from the tree) on top of HEAD. Returns
    /// `None` when nothing changed.
    pub fn commit_paths(&self, paths: &[PathBuf], message: &str) -> Result<Option<Oid>> {
        self.commit_paths_merging(paths, message, None)
    }

    /// Like [`VaultRepo::commit_paths`], with `merged` as a second parent:
    /// the commit that completes a merge.
    pub fn commit_paths_merging(
        &self,
        paths: &[PathBuf],
        message: &str,
        merged: Option<Oid>,
    ) -> Result<Option<Oid>> {
        let head = match self.repo.head() {
            Ok(h) => Some(h.peel_to_commit()?),
            Err(e)
                if matches!(
                    e.code(),
                    git2::ErrorCode::UnbornBranch | git2::ErrorCode::NotFound
                ) =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        let base_tree = match &head {
            Some(c) => c.tree()?,
            None => {
                let oid = self.repo.treebuilder(None)?.write()?;
                self.repo.find_tree(oid)?
            }
        };
        let t = crate::trace::phase("git: blobs");
        let odb = self.repo.odb()?;
        let mut update = TreeUpdateBuilder::new();
        let mut index_updates: Vec<IndexUpdate> = Vec::new();
        // Read the files on every core; libgit2's object database is fed
        // from this thread.
        use rayon::prelude::*;
        let workdir = &self.workdir;
        let files: Vec<(String, Option<FileNow>)> = paths
            .par_iter()
            .map(|p| {
                let rel = p
                    .strip_prefix(workdir)
                    .ok()
                    .and_then(Path::to_str)
                    .ok_or_else(|| {
                        Error::Git(format!(
                            "{} is outside the repository or not UTF-8",
                            p.display()
                        ))
                    })?
                    .to_owned();
                // Never through a link, never a special file, never more
                // than the file's kind may hold. A path that is a link or
                // special file now is left as git has it (`check` reports it).
                match VaultFs::new(workdir).read_with_metadata(p, Kind::of_path(p)) {
                    Ok(f) => Ok(Some((rel, f))),
                    Err(Error::Refused { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        // A large commit goes into git as one pack instead of a loose file
        // per object: creating tens of thousands of small files is what costs.
        let present: Vec<&[u8]> = files
            .iter()
            .filter_map(|(_, f)| f.as_ref().map(|(b, _)| b.as_slice()))
            .collect();
        let mut oids = if present.len() > PACK_THRESHOLD {
            crate::git::pack::write_blobs(&odb, &present)?
        } else {
            present
                .into_iter()
                .map(|b| odb.write(git2::ObjectType::Blob, b))
                .collect::<std::result::Result<_, _>>()?
        }
        .into_iter();
        for (rel, file) in files {
            match file {
                Some((_, md)) => {
                    let oid = oids
                        .next()
                        .ok_or_else(|| Error::Git("lost a blob id".into()))?;
                    update.upsert(rel.as_str(), oid, FileMode::Blob);
                    index_updates.push((rel, Some((oid, md))));
                }
                None => {
                    if base_tree.get_path(Path::new(&rel)).is_ok() {
                        update.remove(rel.as_str());
                    }
                    index_updates.push((rel, None));
                }
            }
        }
        drop(t);
        // The index (the user's, spliced in place or rewritten by libgit2) and the new tree
        // are independent: build them on both cores at once.
        let git_dir = self.repo.path().to_owned();
        // As git does: no trailing hash where the repository says so.
        let skip_hash = self
            .repo
            .config()
            .and_then(|c| c.get_bool("index.skipHash"))
            .unwrap_or(false);
        std::thread::scope(|scope| {
            let index = scope.spawn(|| Self::update_index(&git_dir, &index_updates, skip_hash));
            let committed = self.commit_tree(update, head.as_ref(), merged, &base_tree, message);
            let indexed = index
                .join()
                .unwrap_or_else(|_| Err(Error::Git("updating the index failed".into())));
            let committed = committed?;
            indexed?;
            Ok(committed)
        })
    }

    fn commit_tree(
        &self,
        mut update: TreeUpdateBuilder,
        head: Option<&git2::Commit<'_>>,
        merged: Option<Oid>,
        base_tree: &git2::Tree<'_>,
        message: &str,
    ) -> Result<Option<Oid>> {
        let t = crate::trace::phase("git: tree and commit");
        let tree_oid = update.create_updated(&self.repo, base_tree)?;
        if head.is_some() && tree_oid == base_tree.id() && merged.is_none() {
            return Ok(None);
        }
        let tree = self.repo.find_tree(tree_oid)?;
        let sig = self.signature()?;
        let merged = merged.map(|m| self.repo.find_commit(m)).transpose()?;
        let parents: Vec<&git2::Commit> = head.into_iter().chain(merged.as_ref()).collect();
        let oid = self
            .repo
            .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?;
        drop(t);
        Ok(Some(oid))
    }

    /// Removes git's lock files that a process of ours left when it was
    /// killed mid-commit: only those created after `since` (when the
    /// interrupted operation began, under the vault's lock), so a lock of an
    /// unrelated git command that was already running stays.
    pub fn clear_locks_since(&self, since: std::time::SystemTime) {
        let git_dir = self.repo.path();
        let mut candidates = vec![
            git_dir.join("index.lock"),
            git_dir.join("HEAD.lock"),
            git_dir.join("config.lock"),
        ];
        if let Ok(rd) = std::fs::read_dir(git_dir.join("refs/heads")) {
            candidates.extend(
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "lock")),
            );
        }
        for lock in candidates {
            let newer = std::fs::metadata(&lock)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if newer {
                let _ = std::fs::remove_file(&lock);
            }
        }
    }

    /// Brings the index entries of our paths in line with the new commit,
    /// leaving every other entry (the user's staged work) untouched.
    fn update_index(git_dir: &Path, updates: &[IndexUpdate], skip_hash: bool) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let _t = crate::trace::phase("git: index");
        // A few paths (a `set`, a revoke): spliced into the index's bytes.
        // Many (an import, a migration): libgit2 rewrites it anyway.
        if updates.len() <= PACK_THRESHOLD {
            let changes: Vec<crate::git_index::Change<'_>> = updates
                .iter()
                .map(|(rel, e)| (rel.as_str(), e.as_ref().map(|(oid, md)| (*oid, md))))
                .collect();
            if crate::git_index::update(git_dir, &changes, skip_hash)? {
                return Ok(());
            }
        }
        let repo = Repository::open(git_dir)?;
        let mut index = repo.index()?;
        for (rel, entry) in updates {
            match entry {
                None => {
                    let _ = index.remove_path(Path::new(rel));
                }
                Some((oid, md)) => {
                    let e = IndexEntry {
                        ctime: IndexTime::new(md.ctime() as i32, md.ctime_nsec() as u32),
                        mtime: IndexTime::new(md.mtime() as i32, md.mtime_nsec() as u32),
                        dev: md.dev() as u32,
                        ino: md.ino() as u32,
                        mode: 0o100644,
                        uid: md.uid(),
                        gid: md.gid(),
                        file_size: md.size() as u32,
                        id: *oid,
                        flags: (rel.len().min(0xfff)) as u16,
                        flags_extended: 0,
                        path: rel.as_bytes().to_vec(),
                    };
                    index.add(&e)?;
                }
            }
        }
        index.write()?;
        Ok(())
    }
}

/// How many commits [`VaultRepo::names_in_history`] walks past its cache
/// before it rewrites the cache.
const HISTORY_CACHE_STALE: usize = 8;

/// [`VaultRepo::names_in_history`]'s cache: the names as of a commit. A
/// name JSON had to escape cannot be borrowed: the cache is then not used
/// (a vault's names never need it).
#[derive(serde::Serialize, serde::Deserialize)]
struct HistoryCache<'a> {
    commit: std::borrow::Cow<'a, str>,
    /// In the caller's order, each once.
    #[serde(borrow)]
    names: Vec<&'a str>,
}

impl VaultRepo {
    /// Hands `each` the names (relative to `dir`, without `.age`) of every
    /// `.age` file that stood under `dir` at any commit reachable from HEAD,
    /// each once, sorted by `key` of the name, then by the name (a caller
    /// that matches them against its own sorted list chooses the order).
    /// Walks the history once, diffing only the commits that changed `dir`.
    ///
    /// With a `cache` file, the answer is remembered with the commit it was
    /// computed at, and the next call walks only the commits since then —
    /// otherwise every revoke would re-read a history that every rotation
    /// makes longer. Names read from it are borrowed from its bytes, not
    /// allocated one by one (a big group's history holds tens of thousands).
    pub fn names_in_history(
        &self,
        dir: &Path,
        cache: Option<&Path>,
        key: &dyn Fn(&str) -> &str,
        each: &mut dyn FnMut(&str),
    ) -> Result<()> {
        use std::borrow::Cow;
        let order = |a: &&str, b: &&str| key(a).cmp(key(b)).then_with(|| a.cmp(b));
        let Ok(rel) = dir.strip_prefix(&self.workdir) else {
            return Ok(());
        };
        let head = match self.repo.head() {
            Ok(h) => h.peel_to_commit()?,
            Err(_) => return Ok(()),
        };
        // The cached names (in order), and those the walk finds that are
        // not among them.
        let mut names: Vec<&str> = Vec::new();
        let mut found = std::collections::BTreeSet::<String>::new();
        let mut since: Option<Oid> = None;
        let mut resorted = false;
        let fs = VaultFs::new(&self.workdir);
        let t = crate::trace::phase("history: read cache");
        let bytes = cache.and_then(|p| fs.read_optional(p, Kind::Local).ok().flatten());
        if let Some(c) = bytes
            .as_deref()
            .and_then(|b| serde_json::from_slice::<HistoryCache<'_>>(b).ok())
            && let Ok(oid) = Oid::from_str(&c.commit)
            && (oid == head.id()
                || self
                    .repo
                    .graph_descendant_of(head.id(), oid)
                    .unwrap_or(false))
        {
            names = c.names;
            // In order as written (another order, or a file edited out of
            // order, is not trusted).
            if !names.is_sorted_by(|a, b| order(a, b).is_le()) {
                names.sort_unstable_by(order);
                resorted = true;
            }
            names.dedup();
            since = Some(oid);
        }
        drop(t);
        let t = crate::trace::phase("history: walk");
        let walked = self.paths_changed_since(rel, head.id(), since, &mut |p| {
            if let Some(n) = p.strip_suffix(".age")
                && names.binary_search_by(|x| order(x, &n)).is_err()
                && !found.contains(n)
            {
                found.insert(n.to_owned());
            }
        })?;
        drop(t);
        let _t = crate::trace::phase("history: merge and write");
        let mut all = names;
        if !found.is_empty() {
            all.extend(found.iter().map(String::as_str));
            all.sort_unstable_by(order);
        }
        // Rewritten when it learnt a name, or to keep the next walk short
        // (each commit walked costs tens of microseconds, reading its
        // trees): not after every grant and revoke (tens of thousands of
        // names).
        if let Some(p) = cache
            && (!found.is_empty() || since.is_none() || resorted || walked > HISTORY_CACHE_STALE)
        {
            let c = HistoryCache {
                commit: Cow::Owned(head.id().to_string()),
                names: all.clone(),
            };
            // A cache: lost, it is rebuilt by one full walk.
            let _ = fs.write_unsynced(
                p,
                &serde_json::to_vec(&c).unwrap_or_default(),
                crate::fsutil::PUBLIC_FILE,
            );
        }
        all.into_iter().for_each(each);
        Ok(())
    }

    /// Hands `each` the path (relative to `rel`) of every file added,
    /// changed or removed under `rel` by the commits reachable from `head`
    /// but not from `since`; the number of commits walked.
    fn paths_changed_since(
        &self,
        rel: &Path,
        head: Oid,
        since: Option<Oid>,
        each: &mut dyn FnMut(&str),
    ) -> Result<usize> {
        let subtree =
            |c: &git2::Commit| -> Option<Oid> { c.tree().ok()?.get_path(rel).ok().map(|e| e.id()) };
        let mut walk = self.repo.revwalk()?;
        walk.push(head)?;
        if let Some(s) = since {
            walk.hide(s)?;
        }
        let mut seen = std::collections::HashSet::new();
        let mut collect = |old: Option<Oid>, new: Oid| -> Result<()> {
            if !seen.insert((old, new)) {
                return Ok(());
            }
            let new_tree = self.repo.find_tree(new)?;
            let old_tree = match old {
                Some(o) => Some(self.repo.find_tree(o)?),
                None => None,
            };
            let diff = self
                .repo
                .diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), None)?;
            for d in diff.deltas() {
                for f in [d.old_file(), d.new_file()] {
                    if let Some(p) = f.path().and_then(Path::to_str) {
                        each(p);
                    }
                }
            }
            Ok(())
        };
        let mut walked = 0usize;
        for oid in walk {
            walked += 1;
            let c = self.repo.find_commit(oid?)?;
            let Some(new) = subtree(&c) else { continue };
            if c.parent_count() == 0 {
                collect(None, new)?;
            }
            for parent in c.parents() {
                match subtree(&parent) {
                    Some(old) if old == new => {}
                    old => collect(old, new)?,
                }
            }
        }
        Ok(walked)
    }
}
