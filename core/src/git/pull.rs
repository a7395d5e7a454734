//! Bringing a fetched commit in: what it brings is verified first (regular
//! files only, nothing under `.local/`, the manifest and every changed secret
//! signed by an owner), then a safe fast-forward that never overwrites a
//! change of the user's. The keyless pull of readers (an agent's clone).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Oid, Repository, Tree, build::CheckoutBuilder};

use crate::error::{Error, Result};
use crate::git::VaultRepo;
use crate::git::remote::{self, Upstream};
use crate::layout::{FANOUT_FORMAT, SecretFile};
use crate::model::{self, SecretMeta};
use crate::vault::Vault;

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

/// The default time a fetch or push may take before it is abandoned.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn blob_at(repo: &Repository, tree: &Tree<'_>, path: &Path) -> Option<Vec<u8>> {
    let e = tree.get_path(path).ok()?;
    repo.find_blob(e.id()).ok().map(|b| b.content().to_vec())
}

/// The vault directory relative to the repository's working tree.
pub(crate) fn vault_rel(vault: &Vault, repo: &VaultRepo) -> Result<PathBuf> {
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
/// its owners at one of its group's generations.
pub(crate) fn verify_incoming(
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
        // Either layout; a file where no secret of its name belongs is
        // never read as one, so it needs no signature here (`check` names it).
        if let Some(p) = d.new_file().path().and_then(Path::to_str)
            && d.new_file().exists()
            && let Some((path, kind)) = crate::layout::parse(p)
        {
            let format = if crate::layout::rel(FANOUT_FORMAT, &path, kind) == Path::new(p) {
                FANOUT_FORMAT
            } else {
                1
            };
            changed.insert((path, format));
        }
    }
    let bar = crate::progress::Task::begin("verifying incoming secrets", changed.len());
    for (path, format) in changed {
        bar.step();
        let file = |f| crate::layout::rel(format, &path, f);
        let fail = |reason: &str| Error::UnsignedSecret {
            path: path.to_string(),
            reason: format!("in the incoming commit: {reason}"),
        };
        let ct = blob_at(repo, &new_tree, &file(SecretFile::Value))
            .ok_or_else(|| fail("metadata without a value"))?;
        let meta: SecretMeta = blob_at(repo, &new_tree, &file(SecretFile::Meta))
            .and_then(|b| model::parse_yaml(Path::new("meta"), &b).ok())
            .ok_or_else(|| fail("missing or malformed metadata"))?;
        let generations = manifest
            .group(path.group())
            .map(|g| g.generations())
            .map_err(|_| fail("its group is not in the manifest"))?;
        meta.verify(vault.id(), &path, &ct, &manifest, &generations)?;
    }
    Ok(())
}

/// Moves HEAD's branch to `target` and updates the working tree and index
/// for the files that differ — refusing, with nothing changed, if that would
/// overwrite a change the user made.
pub(crate) fn fast_forward(repo: &Repository, up: &Upstream, target: Oid) -> Result<()> {
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

pub(crate) enum Position {
    UpToDate,
    FastForward,
    Diverged(Oid),
}

pub(crate) fn position(repo: &Repository, theirs: Oid) -> Result<Position> {
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
