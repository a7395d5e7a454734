//! Machine-private state: what git tracks under `.agent-vault/.local/`
//! (which must be nothing) and gitlinks in the vault.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::{LOCAL_DIR, refused};

/// The git repository holding `vault_dir` and the vault directory's path
/// inside its working tree; `None` when the vault is in no repository (or
/// outside its working tree).
fn vault_repo(vault_dir: &Path) -> Result<Option<(git2::Repository, PathBuf)>> {
    let repo = match git2::Repository::discover(vault_dir) {
        Ok(r) => r,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(workdir) = repo.workdir() else {
        return Ok(None);
    };
    let workdir = workdir.canonicalize().map_err(|e| Error::io(workdir, e))?;
    let Ok(rel) = vault_dir.strip_prefix(&workdir).map(Path::to_path_buf) else {
        return Ok(None);
    };
    Ok(Some((repo, rel)))
}

/// The entries git tracks (in the index or in HEAD's tree) under
/// `<vault_dir>/.local/`, as paths relative to the working tree. `.local/`
/// is this machine's private state: while one is tracked, nothing under it
/// is trusted.
pub fn tracked_local(vault_dir: &Path) -> Result<Vec<String>> {
    let Some((repo, rel)) = vault_repo(vault_dir)? else {
        return Ok(Vec::new());
    };
    let local = rel.join(LOCAL_DIR);
    let Some(prefix) = local.to_str().map(|s| format!("{s}/")) else {
        return Ok(Vec::new());
    };
    let mut found: BTreeSet<String> = index_entries(&repo, &prefix)?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    if let Ok(tree) = repo.head().and_then(|h| h.peel_to_tree())
        && let Ok(entry) = tree.get_path(&local)
    {
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id())?;
                sub.walk(git2::TreeWalkMode::PreOrder, |dir, e| {
                    if e.kind() != Some(git2::ObjectType::Tree) {
                        found.insert(format!("{prefix}{dir}{}", e.name().unwrap_or("?")));
                    }
                    git2::TreeWalkResult::Ok
                })?;
            }
            _ => {
                found.insert(local.to_string_lossy().into_owned());
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// Entries below `.agent-vault/` that git tracks as a gitlink (a
/// submodule). A plain `git pull` brings one in unchecked, as an empty
/// directory that no reader enters; `check` reports it (links it finds on
/// its own walk of the files).
pub fn tracked_gitlinks(vault_dir: &Path) -> Result<Vec<String>> {
    const GITLINK: u32 = 0o160000;
    let Some((repo, rel)) = vault_repo(vault_dir)? else {
        return Ok(Vec::new());
    };
    let Some(prefix) = rel.to_str().map(|s| format!("{s}/")) else {
        return Ok(Vec::new());
    };
    Ok(index_entries(&repo, &prefix)?
        .into_iter()
        .filter(|(p, mode)| p.starts_with(&prefix) && mode & 0o170000 == GITLINK)
        .map(|(p, _)| p)
        .collect())
}

/// The index entries (path, mode) under `prefix` or equal to it without
/// its `/`: read from the index's bytes (every writer asks, and libgit2
/// would load and hash the whole index of a big vault), or by libgit2 when
/// the index is of a form only it reads.
fn index_entries(repo: &git2::Repository, prefix: &str) -> Result<Vec<(String, u32)>> {
    if let Some(found) = crate::git_index::entries_under(repo.path(), prefix)? {
        return Ok(found);
    }
    let exact = prefix.trim_end_matches('/').as_bytes();
    Ok(repo
        .index()?
        .iter()
        .filter(|e| e.path.starts_with(prefix.as_bytes()) || e.path == exact)
        .map(|e| (String::from_utf8_lossy(&e.path).into_owned(), e.mode))
        .collect())
}

/// Refuses, naming the first one, if git tracks anything under `.local/`.
pub fn ensure_local_untracked(vault_dir: &Path) -> Result<()> {
    match tracked_local(vault_dir)?.into_iter().next() {
        None => Ok(()),
        Some(p) => Err(refused(p, TRACKED_LOCAL)),
    }
}

/// Why a tracked `.local` entry is refused.
pub const TRACKED_LOCAL: &str = "is tracked by git, but .agent-vault/.local/ is this machine's private state and is never taken from git; remove it from git (`git rm -r --cached .agent-vault/.local` and delete what a commit put there, or revert that commit), then try again";
