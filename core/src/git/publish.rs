//! A broker replica's OAuth state published through the vault's remote.
//! Between replicas the git push is the compare-and-swap (DESIGN "OAuth
//! credentials"): a replica that refreshed a credential commits its state
//! files alone on top of its clone's HEAD and pushes; the push lands only
//! if nobody pushed since (a fast-forward). If someone did, the commit is
//! taken back, the remote's commits come in through the verified
//! fast-forward every pull uses, and then:
//! - if they changed the same state (another replica refreshed first), this
//!   replica lost the swap and uses theirs ([`Published::Lost`]);
//! - otherwise (an owner's unrelated change) the state is committed again on
//!   the new tip and pushed, a few times at most.
//!
//! Nothing is left half-done in the clone: after a failure the branch and
//! the index are as they were, and the state files hold what this replica
//! uses (outside git, pushed with its next state).

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Oid, Repository};

use crate::error::{Error, Result};
use crate::git::VaultRepo;
use crate::git::pull::{PullOutcome, pull_fast_forward};
use crate::git::remote;
use crate::vault::Vault;
use crate::vfs::Kind;

/// How many times a state is committed again on a tip that moved.
const TRIES: usize = 3;

/// What became of a published state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Pushed: the remote has it, and every replica pulls it.
    Landed,
    /// Another replica pushed this state first: the clone now holds theirs.
    Lost,
    /// The vault has no remote to publish to (the files stay as written).
    NoRemote,
}

/// Commits `files` (absolute paths of state files the broker just wrote,
/// inside the vault) and pushes them, as the module says. The caller holds
/// off the broker's own pulls meanwhile. An error (the remote cannot be
/// reached, a push refused for another reason) leaves the branch and the
/// index where they were, and the files as written.
pub fn publish_state(
    vault: &Vault,
    files: &[PathBuf],
    message: &str,
    timeout: Duration,
) -> Result<Published> {
    let Some(repo) = VaultRepo::discover(vault.root())? else {
        return Ok(Published::NoRemote);
    };
    let Some(up) = remote::upstream(repo.repo())? else {
        return Ok(Published::NoRemote);
    };
    let rels = files
        .iter()
        .map(|f| {
            f.strip_prefix(repo.workdir())
                .map(Path::to_owned)
                .map_err(|_| Error::Git(format!("{} is outside the repository", f.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    // What this replica wrote, to write again on a tip that moved: read
    // as every vault file is (no link followed, size bounded by its kind).
    let fs = vault.fs();
    let ours = files
        .iter()
        .map(|f| fs.read(f, Kind::of_path(f)))
        .collect::<Result<Vec<_>>>()?;
    for _ in 0..TRIES {
        let before = head(repo.repo())?;
        let Some(_) = repo.commit_paths(files, message)? else {
            return Ok(Published::Landed);
        };
        let pushed = remote::push(repo.workdir(), &up, timeout);
        if pushed.is_ok() {
            return Ok(Published::Landed);
        }
        take_back(vault, &repo, before, &rels)?;
        let pulled = pull_fast_forward(vault, timeout);
        if !matches!(pulled, Ok(PullOutcome::FastForward)) {
            // The remote did not move (the push failed for another reason:
            // no access, not reachable), or cannot be brought in: the state
            // stays written, outside git, as a broker that does not follow
            // a remote keeps it, and is pushed with the next one.
            write_all(vault, files, &ours)?;
            pulled?;
            return pushed.map(|()| Published::Landed);
        }
        let now = head(repo.repo())?;
        if rels
            .iter()
            .any(|r| blob(repo.repo(), before, r) != blob(repo.repo(), now, r))
        {
            return Ok(Published::Lost);
        }
        write_all(vault, files, &ours)?;
    }
    Err(Error::Git(format!(
        "{}/{} kept moving while the broker published its OAuth state",
        up.remote, up.remote_branch
    )))
}

fn write_all(vault: &Vault, files: &[PathBuf], contents: &[Vec<u8>]) -> Result<()> {
    files
        .iter()
        .zip(contents)
        .try_for_each(|(f, bytes)| vault.fs().write_atomic(f, bytes, 0o644))
}

fn head(repo: &Repository) -> Result<Oid> {
    repo.head()?
        .target()
        .ok_or_else(|| Error::Git("HEAD is not a commit".into()))
}

/// The bytes of `rel` at commit `at`, if it is there.
fn blob(repo: &Repository, at: Oid, rel: &Path) -> Option<Vec<u8>> {
    let tree = repo.find_commit(at).ok()?.tree().ok()?;
    crate::git::pull::blob_at(repo, &tree, rel)
}

/// Moves the branch back to `to` and puts `rels` (index and working tree)
/// as `to` has them: a file `to` lacks is removed.
fn take_back(vault: &Vault, repo: &VaultRepo, to: Oid, rels: &[PathBuf]) -> Result<()> {
    let r = repo.repo();
    let commit = r.find_commit(to)?;
    let branch = r.head()?.name().map(str::to_owned);
    if let Ok(branch) = branch {
        r.reference(&branch, to, true, "agent-vault: OAuth state not published")?;
    }
    r.reset_default(Some(commit.as_object()), rels.iter())?;
    for rel in rels {
        let path = repo.workdir().join(rel);
        match blob(r, to, rel) {
            Some(bytes) => vault.fs().write_atomic(&path, &bytes, 0o644)?,
            None => crate::fsutil::remove_file(&path)?,
        }
    }
    Ok(())
}
