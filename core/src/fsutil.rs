//! Durable file writes outside the vault's tree (the key store, git hooks);
//! vault files go through `vfs`. Every file is written to a temporary name in its own
//! directory, synced and renamed into place, so a reader sees the old or the
//! new content and never a torn file. Bulk writes sync once per batch
//! (`syncfs`) instead of once per file.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Mode of files holding private keys (and of everything we create under
/// `$AGENT_VAULT_HOME`).
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of vault files, which are public (ciphertext, public keys, metadata).
pub const PUBLIC_FILE: u32 = 0o644;
/// Mode of directories holding private keys.
pub const PRIVATE_DIR: u32 = 0o700;

/// The prefix of every temporary file. Valid names never start with a dot, so
/// a temporary file can never be mistaken for a secret or collide with one.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Creates `dir` and its missing parents with `mode`.
pub fn create_dir_all(dir: &Path, mode: u32) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Error::io(dir, e))
}

/// The directory holding `path` ("." for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> Result<PathBuf> {
    let dir = parent_dir(path);
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| Error::io(dir, io::Error::other(e.to_string())))?;
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Keep the name short enough for NAME_MAX even when `file` is long.
    let keep: String = file.chars().take(32).collect();
    Ok(dir.join(format!("{TEMP_PREFIX}{}-{keep}", hex::encode(rnd))))
}

/// Writes `contents` to a new temporary file beside `path` with `mode`
/// (set at creation, never chmod-ed later). Optionally fsyncs it.
fn write_temp(path: &Path, contents: &[u8], mode: u32, sync: bool) -> Result<PathBuf> {
    let tmp = temp_path(path)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let res = f
        .write_all(contents)
        .and_then(|()| if sync { f.sync_all() } else { Ok(()) });
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    Ok(tmp)
}

/// Fsyncs a directory, making the renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Atomically replaces `path` with `contents`: temp file, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = write_temp(path, contents, mode, true)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(parent_dir(path))
}

/// Removes a file if it exists and syncs its directory.
pub fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent_dir(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads a file, mapping a missing file to `None`.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads a file.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Flushes every dirty page of the file system holding `path` to disk: one
/// call in place of an fsync per file.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io(path, e.into()))
}
