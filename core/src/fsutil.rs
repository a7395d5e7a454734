//! Durable file writes. Every file is written to a temporary name in its own
//! directory, synced and renamed into place, so a reader sees the old or the
//! new content and never a torn file. Bulk writes sync once per batch
//! (`syncfs`) instead of once per file.

use std::collections::BTreeSet;
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

/// A set of file replacements made durable together: every new content is
/// written to a temporary file, the file system is synced once, and only
/// then are the files moved into place (each move atomic), after which the
/// touched directories are synced.
///
/// Temporary files come from a pool of spare files in the vault's local
/// directory, and a replaced file's old inode goes back to the pool (an
/// atomic exchange of the two names) instead of being freed. Bulk
/// operations rewrite tens of thousands of files; creating and freeing that
/// many inodes is what costs most on some file systems (ext4 without a
/// journal scans recently freed inodes on every creation), while reusing
/// them costs a truncate.
#[derive(Default)]
pub struct Batch {
    staged: Vec<(PathBuf, PathBuf)>,
    pool: Vec<PathBuf>,
    pool_dir: Option<PathBuf>,
}

impl Batch {
    /// An empty batch whose temporary files are created beside their targets.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch drawing temporary files from (and returning replaced
    /// files to) the pool in `dir`, which must be on the targets' file system.
    pub fn with_pool(dir: &Path) -> Result<Self> {
        create_dir_all(dir, PRIVATE_DIR)?;
        let mut pool = Vec::new();
        for e in std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
        {
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                pool.push(e.path());
            }
        }
        Ok(Batch {
            staged: Vec::new(),
            pool,
            pool_dir: Some(dir.to_owned()),
        })
    }

    /// A temporary file for `target`: a spare from the pool, or a new one.
    fn temp_for(&mut self, target: &Path) -> Result<(PathBuf, bool)> {
        match (&self.pool_dir, self.pool.pop()) {
            (Some(_), Some(spare)) => Ok((spare, true)),
            (Some(dir), None) => Ok((temp_path(&dir.join("spare"))?, false)),
            (None, _) => Ok((temp_path(target)?, false)),
        }
    }

    /// Stages `contents` for `path` (creating the parent directory).
    pub fn write(&mut self, path: &Path, contents: &[u8]) -> Result<()> {
        self.write_all(vec![(path.to_owned(), contents.to_vec())])
    }

    /// Stages many files, written in parallel.
    pub fn write_all(&mut self, files: Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
        use rayon::prelude::*;
        let _t = crate::trace::phase("batch: write temporaries");
        let dirs: BTreeSet<&Path> = files.iter().filter_map(|(p, _)| p.parent()).collect();
        for d in dirs {
            create_dir_all(d, 0o755)?;
        }
        let temps = files
            .iter()
            .map(|(p, _)| self.temp_for(p))
            .collect::<Result<Vec<_>>>()?;
        let written: Vec<Result<()>> = files
            .par_iter()
            .zip(temps.par_iter())
            .map(|((_, contents), (tmp, reused))| write_file(tmp, contents, *reused))
            .collect();
        for ((path, _), ((tmp, _), res)) in files.iter().zip(temps.into_iter().zip(written)) {
            match res {
                Ok(()) => self.staged.push((tmp, path.clone())),
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Makes the staged files durable and moves them into place, in the
    /// order they were staged.
    pub fn commit(mut self, any_path_on_fs: &Path) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let t = crate::trace::phase("batch: syncfs");
        sync_filesystem(any_path_on_fs)?;
        drop(t);
        let _t = crate::trace::phase("batch: move into place");
        let mut dirs = BTreeSet::new();
        let pooled = self.pool_dir.is_some();
        for (tmp, path) in std::mem::take(&mut self.staged) {
            // With a pool, an existing target swaps names with its
            // replacement: the old inode becomes a spare.
            if !(pooled && exchange(&tmp, &path)) {
                fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
            }
            if let Some(d) = path.parent() {
                dirs.insert(d.to_owned());
            }
        }
        if let Some(d) = &self.pool_dir {
            dirs.insert(d.clone());
        }
        if dirs.len() > 64 {
            sync_filesystem(any_path_on_fs)
        } else {
            dirs.iter().try_for_each(|d| sync_dir(d))
        }
    }
}

/// Writes a whole file: a new one (created with the public mode) or a
/// pool spare, overwritten from the start and cut to the new length (a
/// truncate to zero first would free its blocks only to allocate them again).
fn write_file(path: &Path, contents: &[u8], reuse: bool) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true);
    if !reuse {
        opts.create_new(true).mode(PUBLIC_FILE);
    }
    let mut f = opts.open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(contents)
        .and_then(|()| {
            if reuse {
                f.set_len(contents.len() as u64)
            } else {
                Ok(())
            }
        })
        .map_err(|e| Error::io(path, e))
}

/// Atomically swaps two existing names; false if the target does not exist
/// or the system cannot (the caller then renames).
fn exchange(a: &Path, b: &Path) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            a,
            rustix::fs::CWD,
            b,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .is_ok()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
    {
        let _ = (a, b);
        false
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Uncommitted temporaries are ciphertext or public metadata. Beside
        // their targets they would linger as orphans; in the pool they are spares.
        if self.pool_dir.is_none() {
            for (tmp, _) in &self.staged {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_batch_replaces_files_and_keeps_spares() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        let a = dir.path().join("d/a");
        let b = dir.path().join("d/b");
        let mut batch = Batch::with_pool(&pool).unwrap();
        batch
            .write_all(vec![
                (a.clone(), b"a1".to_vec()),
                (b.clone(), b"b1".to_vec()),
            ])
            .unwrap();
        batch.commit(dir.path()).unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"a1");
        assert_eq!(
            fs::read_dir(&pool).unwrap().count(),
            0,
            "new files consumed their temporaries"
        );
        // Replacing: the old inodes become spares.
        let mut batch = Batch::with_pool(&pool).unwrap();
        batch
            .write_all(vec![
                (a.clone(), b"a2".to_vec()),
                (b.clone(), b"b2-longer".to_vec()),
            ])
            .unwrap();
        batch.commit(dir.path()).unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"a2");
        assert_eq!(fs::read(&b).unwrap(), b"b2-longer");
        assert_eq!(fs::read_dir(&pool).unwrap().count(), 2);
        // And are reused, truncated, next time.
        let mut batch = Batch::with_pool(&pool).unwrap();
        batch.write_all(vec![(b.clone(), b"b3".to_vec())]).unwrap();
        batch.commit(dir.path()).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"b3");
        assert_eq!(fs::read_dir(&pool).unwrap().count(), 2);
    }
}
