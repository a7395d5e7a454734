//! Bulk writes: a set of file replacements made durable together.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::error::{Error, Result};

use super::vault_fs::{check_replaceable, read_dir_fd, temp_name};
use super::{EntryType, VaultFs, io_err, refused};

/// A set of file replacements made durable together: every new content is
/// written to a temporary file, the file system is synced once (a small
/// batch: each file), and only
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
///
/// Every directory is opened without following links, a spare is reused
/// only if it is a regular file with one link, and a target is replaced
/// only if it is absent or a regular file.
pub struct Batch<'a> {
    fs: VaultFs<'a>,
    staged: Vec<Staged>,
    pool: Vec<OsString>,
    pool_dir: Option<(Arc<OwnedFd>, PathBuf)>,
    dirs: BTreeMap<PathBuf, Arc<OwnedFd>>,
}

/// Up to this many staged files are made durable one by one (an fsync
/// each); more, with one syncfs. Flushing the whole file system costs
/// whatever other programs left dirty (over 100 ms on a busy machine),
/// which the one metadata file of a `set` should not pay.
const FSYNC_EACH_UP_TO: usize = 16;

struct Staged {
    tmp_dir: Arc<OwnedFd>,
    tmp: OsString,
    dir: Arc<OwnedFd>,
    name: OsString,
    path: PathBuf,
}

impl<'a> Batch<'a> {
    /// An empty batch whose temporary files are created beside their targets.
    pub fn new(fs: VaultFs<'a>) -> Self {
        Batch {
            fs,
            staged: Vec::new(),
            pool: Vec::new(),
            pool_dir: None,
            dirs: BTreeMap::new(),
        }
    }

    /// An empty batch drawing temporary files from (and returning replaced
    /// files to) the pool in `dir`, which must be on the targets' file system.
    /// A pool that is not a plain directory (a link, say) is not used: the
    /// temporaries are then made beside their targets.
    pub fn with_pool(fs: VaultFs<'a>, dir: &Path) -> Result<Self> {
        match Self::pooled(fs, dir) {
            Err(Error::Refused { .. }) => Ok(Self::new(fs)),
            other => other,
        }
    }

    fn pooled(fs: VaultFs<'a>, dir: &Path) -> Result<Self> {
        fs.create_dir_all(dir, crate::fsutil::PRIVATE_DIR)?;
        let fd = fs
            .open_dir(dir)?
            .ok_or_else(|| Error::io(dir, io::ErrorKind::NotFound.into()))?;
        let pool = read_dir_fd(&fd, dir)?
            .into_iter()
            .filter(|(_, t)| *t == EntryType::File)
            .map(|(n, _)| n)
            .collect();
        Ok(Batch {
            fs,
            staged: Vec::new(),
            pool,
            pool_dir: Some((Arc::new(fd), dir.to_owned())),
            dirs: BTreeMap::new(),
        })
    }

    fn dir(&mut self, dir: &Path) -> Result<Arc<OwnedFd>> {
        if let Some(d) = self.dirs.get(dir) {
            return Ok(d.clone());
        }
        let comps = self.fs.components(dir)?;
        let (fd, _) = self
            .fs
            .open_dir_parts(&comps, Some(0o755))?
            .ok_or_else(|| Error::io(dir, io::ErrorKind::NotFound.into()))?;
        let fd = Arc::new(fd);
        self.dirs.insert(dir.to_owned(), fd.clone());
        Ok(fd)
    }

    /// Stages many files, written in parallel.
    pub fn write_all(&mut self, files: Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
        use rayon::prelude::*;
        let _t = crate::trace::phase("batch: write temporaries");
        // Where each goes, and which temporary it is written to.
        let mut plan = Vec::with_capacity(files.len());
        for (path, _) in &files {
            let name = path
                .file_name()
                .ok_or_else(|| refused(path, "has no file name"))?
                .to_owned();
            let parent = path.parent().unwrap_or(self.fs.root);
            let dir = self.dir(parent)?;
            check_replaceable(&dir, &name, path)?;
            let (tmp_dir, tmp, reuse) = match (&self.pool_dir, self.pool.pop()) {
                (Some((p, _)), Some(spare)) => (p.clone(), spare, true),
                (Some((p, _)), None) => (p.clone(), temp_name(OsStr::new("spare"))?, false),
                (None, _) => (dir.clone(), temp_name(&name)?, false),
            };
            plan.push((tmp_dir, tmp, reuse, dir, name));
        }
        let written: Vec<Result<()>> = files
            .par_iter()
            .zip(plan.par_iter())
            .map(|((path, contents), (tmp_dir, tmp, reuse, _, _))| {
                write_temp(tmp_dir, tmp, contents, *reuse, path)
            })
            .collect();
        let mut first_err = None;
        for ((path, _), ((tmp_dir, tmp, _, dir, name), res)) in
            files.into_iter().zip(plan.into_iter().zip(written))
        {
            match res {
                Ok(()) => self.staged.push(Staged {
                    tmp_dir,
                    tmp,
                    dir,
                    name,
                    path,
                }),
                Err(e) => {
                    let _ = rustix::fs::unlinkat(&tmp_dir, &tmp, AtFlags::empty());
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Makes the staged files durable and moves them into place, in the
    /// order they were staged.
    pub fn commit(mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let t = crate::trace::phase("batch: sync");
        if self.staged.len() <= FSYNC_EACH_UP_TO {
            for s in &self.staged {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&*s.tmp_dir, &s.tmp, flags, Mode::empty())
                    .map_err(|e| io_err(&s.path, e))?;
                rustix::fs::fsync(&fd).map_err(|e| io_err(&s.path, e))?;
            }
        } else {
            self.fs.sync_filesystem()?;
        }
        drop(t);
        let _t = crate::trace::phase("batch: move into place");
        let mut dirs: BTreeMap<PathBuf, Arc<OwnedFd>> = BTreeMap::new();
        let pooled = self.pool_dir.is_some();
        for s in std::mem::take(&mut self.staged) {
            // The target may have changed since it was staged: check again.
            let existing = match rustix::fs::statat(&*s.dir, &s.name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(EntryType::of(FileType::from_raw_mode(st.st_mode))),
                Err(_) => None,
            };
            match existing {
                None | Some(EntryType::File) => {}
                Some(t) => {
                    let _ = rustix::fs::unlinkat(&*s.tmp_dir, &s.tmp, AtFlags::empty());
                    return Err(refused(&s.path, t.refusal()));
                }
            }
            // With a pool, an existing target swaps names with its
            // replacement: the old inode becomes a spare.
            let swapped =
                pooled && existing.is_some() && exchange(&s.tmp_dir, &s.tmp, &s.dir, &s.name);
            if !swapped {
                rustix::fs::renameat(&*s.tmp_dir, &s.tmp, &*s.dir, &s.name)
                    .map_err(|e| io_err(&s.path, e))?;
            }
            if let Some(d) = s.path.parent() {
                dirs.insert(d.to_owned(), s.dir.clone());
            }
        }
        if let Some((fd, p)) = &self.pool_dir {
            dirs.insert(p.clone(), fd.clone());
        }
        if dirs.len() > 64 {
            self.fs.sync_filesystem()
        } else {
            dirs.iter()
                .try_for_each(|(p, d)| rustix::fs::fsync(&**d).map_err(|e| io_err(p, e)))
        }
    }
}

/// Writes a whole temporary file: a new one (created with the public mode)
/// or a pool spare, overwritten from the start and cut to the new length (a
/// truncate to zero first would free its blocks only to allocate them
/// again). A spare must be a regular file with a single link.
fn write_temp(
    dir: &OwnedFd,
    name: &OsStr,
    contents: &[u8],
    reuse: bool,
    target: &Path,
) -> Result<()> {
    let mut flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if !reuse {
        flags |= OFlags::CREATE | OFlags::EXCL;
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::from_raw_mode(crate::fsutil::PUBLIC_FILE),
    )
    .map_err(|e| io_err(target, e))?;
    if reuse {
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(target, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink != 1 {
            return Err(refused(
                Path::new(name),
                "a spare file in .local/spare is not a plain regular file",
            ));
        }
    }
    let mut f = File::from(fd);
    f.write_all(contents)
        .and_then(|()| {
            if reuse {
                f.set_len(contents.len() as u64)
            } else {
                Ok(())
            }
        })
        .map_err(|e| Error::io(target, e))
}

/// Atomically swaps two existing names; false if the system cannot (the
/// caller then renames).
fn exchange(a_dir: &OwnedFd, a: &OsStr, b_dir: &OwnedFd, b: &OsStr) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    {
        rustix::fs::renameat_with(a_dir, a, b_dir, b, rustix::fs::RenameFlags::EXCHANGE).is_ok()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
    {
        let _ = (a_dir, a, b_dir, b);
        false
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // Uncommitted temporaries are ciphertext or public metadata. Beside
        // their targets they would linger as orphans; in the pool they are spares.
        if self.pool_dir.is_none() {
            for s in &self.staged {
                let _ = rustix::fs::unlinkat(&*s.tmp_dir, &s.tmp, AtFlags::empty());
            }
        }
    }
}
