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
//!
//! The parts live in their layers: verifying and fast-forwarding in
//! `git/pull.rs`, the manifest merge in `git/merge.rs`, an
//! owner's pull, merge, push and `resolve` on the [`crate::writer::Writer`].
//! This module gathers them and adds the readers' automatic pull.

use std::time::Duration;

use crate::error::Error;
use crate::fsutil;
use crate::git::remote;
use crate::vault::Vault;

pub use crate::git::merge::{
    GITATTRIBUTES, git_merged_manifest, merge_driver, merge_manifests, register_merge_driver,
    unresolved,
};
pub use crate::git::publish::{Published, publish_state};
pub use crate::git::pull::{DEFAULT_TIMEOUT, PullOutcome, pull_fast_forward};
pub use crate::writer::SyncOutcome;

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
