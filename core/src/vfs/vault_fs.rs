//! [`VaultFs`]: every read and write of a vault file, never through a link,
//! regular files only, each read capped by its [`Kind`].

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};

use crate::error::{Error, Result};

use super::{DIR_FLAGS, EntryType, Kind, io_err, refused};

/// A vault's file tree, anchored at its root: the directory holding
/// `.agent-vault` (or a repository's working tree). Paths handed to it are
/// absolute paths below the root; no component below the root may be a link.
#[derive(Debug, Clone, Copy)]
pub struct VaultFs<'a> {
    pub(super) root: &'a Path,
}

impl<'a> VaultFs<'a> {
    /// The tree below `root` (a canonical path: links above the root are the
    /// user's own choice and are followed).
    pub fn new(root: &'a Path) -> Self {
        VaultFs { root }
    }

    /// The components of `path` below the root.
    pub(super) fn components<'p>(&self, path: &'p Path) -> Result<Vec<&'p OsStr>> {
        let rel = path.strip_prefix(self.root).map_err(|_| {
            refused(
                path,
                format!("is outside the vault's tree ({})", self.root.display()),
            )
        })?;
        rel.components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(refused(path, "is not a plain path below the vault")),
            })
            .collect()
    }

    /// Opens the directory `comps` below the root, one component at a time
    /// without following links; with `create`, makes the missing ones.
    /// `None` if a component is missing (and not created).
    pub(super) fn open_dir_parts(
        &self,
        comps: &[&OsStr],
        create: Option<u32>,
    ) -> Result<Option<(OwnedFd, PathBuf)>> {
        let mut fd = rustix::fs::openat(
            CWD,
            self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(self.root, e))?;
        let mut at = self.root.to_path_buf();
        for c in comps {
            at.push(c);
            let next = match rustix::fs::openat(&fd, *c, DIR_FLAGS, Mode::empty()) {
                Ok(d) => d,
                Err(rustix::io::Errno::NOENT) => match create {
                    None => return Ok(None),
                    Some(mode) => {
                        match rustix::fs::mkdirat(&fd, *c, Mode::from_raw_mode(mode)) {
                            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                            Err(e) => return Err(io_err(&at, e)),
                        }
                        rustix::fs::openat(&fd, *c, DIR_FLAGS, Mode::empty())
                            .map_err(|e| self.explain(&fd, c, &at, e))?
                    }
                },
                Err(e) => return Err(self.explain(&fd, c, &at, e)),
            };
            fd = next;
        }
        Ok(Some((fd, at)))
    }

    /// Turns a failed no-follow open into a refusal that says what is there.
    fn explain(&self, dir: &OwnedFd, name: &OsStr, path: &Path, e: rustix::io::Errno) -> Error {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let t = EntryType::of(FileType::from_raw_mode(st.st_mode));
                if t == EntryType::Dir {
                    io_err(path, e)
                } else {
                    refused(path, t.refusal())
                }
            }
            Err(_) => io_err(path, e),
        }
    }

    /// Opens the directory holding `path` and returns it with the file name.
    fn parent_of<'p>(
        &self,
        path: &'p Path,
        create: Option<u32>,
    ) -> Result<Option<(OwnedFd, &'p OsStr)>> {
        let comps = self.components(path)?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(refused(path, "is the vault's root, not a file"));
        };
        Ok(self
            .open_dir_parts(dirs, create)?
            .map(|(fd, _)| (fd, *name)))
    }

    /// Opens a directory below the root (`None` if it does not exist).
    pub fn open_dir(&self, dir: &Path) -> Result<Option<OwnedFd>> {
        let comps = self.components(dir)?;
        Ok(self.open_dir_parts(&comps, None)?.map(|(fd, _)| fd))
    }

    /// What is at `path`, without following a link (`None`: nothing).
    pub fn entry_type(&self, path: &Path) -> Result<Option<EntryType>> {
        let Some((dir, name)) = self.parent_of(path, None)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(EntryType::of(FileType::from_raw_mode(st.st_mode)))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err(path, e)),
        }
    }

    /// Whether a regular file is at `path`; a link or special file there is refused.
    pub fn is_file(&self, path: &Path) -> Result<bool> {
        match self.entry_type(path)? {
            None => Ok(false),
            Some(EntryType::File) => Ok(true),
            Some(t) => Err(refused(path, t.refusal())),
        }
    }

    /// When the regular file at `path` was last modified (`None`: no file).
    pub fn modified(&self, path: &Path) -> Result<Option<std::time::SystemTime>> {
        match self.open_file(path)? {
            None => Ok(None),
            Some(f) => f
                .metadata()
                .and_then(|m| m.modified())
                .map(Some)
                .map_err(|e| Error::io(path, e)),
        }
    }

    /// Opens the regular file at `path` for reading (`None`: no file).
    fn open_file(&self, path: &Path) -> Result<Option<File>> {
        let Some((dir, name)) = self.parent_of(path, None)? else {
            return Ok(None);
        };
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(self.explain(&dir, name, path, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(path, e))?;
        let t = EntryType::of(FileType::from_raw_mode(st.st_mode));
        if t != EntryType::File {
            return Err(refused(path, t.refusal()));
        }
        Ok(Some(File::from(fd)))
    }

    /// Reads a regular file of `kind`, at most its cap (`None`: no file).
    pub fn read_optional(&self, path: &Path, kind: Kind) -> Result<Option<Vec<u8>>> {
        match self.open_file(path)? {
            None => Ok(None),
            Some(f) => read_capped(f, path, kind).map(|(b, _)| Some(b)),
        }
    }

    /// Reads a regular file of `kind`, at most its cap.
    pub fn read(&self, path: &Path, kind: Kind) -> Result<Vec<u8>> {
        self.read_optional(path, kind)?.ok_or_else(|| {
            Error::io(
                path,
                io::Error::new(io::ErrorKind::NotFound, "No such file or directory"),
            )
        })
    }

    /// Reads a regular file with its metadata (taken from the open file).
    pub fn read_with_metadata(
        &self,
        path: &Path,
        kind: Kind,
    ) -> Result<Option<(Vec<u8>, std::fs::Metadata)>> {
        match self.open_file(path)? {
            None => Ok(None),
            Some(f) => read_capped(f, path, kind).map(Some),
        }
    }

    /// Creates the directory `dir` and its missing parents below the root.
    pub fn create_dir_all(&self, dir: &Path, mode: u32) -> Result<()> {
        let comps = self.components(dir)?;
        self.open_dir_parts(&comps, Some(mode)).map(|_| ())
    }

    /// Atomically replaces `path` with `contents`: a temporary file in the
    /// same directory (created with `mode`), fsync, rename, fsync of the
    /// directory. The directory (created if missing) and every one above it
    /// must be real directories; the target must be absent or a regular file.
    pub fn write_atomic(&self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        self.replace(path, contents, mode, true)
    }

    /// Like [`VaultFs::write_atomic`], without waiting for the disk: for a
    /// cache, which may be lost (then rebuilt) but is never seen half
    /// written.
    pub(crate) fn write_unsynced(&self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        self.replace(path, contents, mode, false)
    }

    fn replace(&self, path: &Path, contents: &[u8], mode: u32, sync: bool) -> Result<()> {
        let Some((dir, name)) = self.parent_of(path, Some(0o755))? else {
            return Err(refused(path, "its directory cannot be created"));
        };
        check_replaceable(&dir, name, path)?;
        let tmp = temp_name(name)?;
        let fd = rustix::fs::openat(
            &dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| io_err(path, e))?;
        let mut f = File::from(fd);
        let written = f
            .write_all(contents)
            .and_then(|()| if sync { f.sync_all() } else { Ok(()) });
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
            return Err(Error::io(path, e));
        }
        drop(f);
        if let Err(e) = rustix::fs::renameat(&dir, &tmp, &dir, name) {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
            return Err(io_err(path, e));
        }
        if !sync {
            return Ok(());
        }
        rustix::fs::fsync(&dir).map_err(|e| io_err(path, e))
    }

    /// Opens (creating it, mode 0644) a file to lock: never through a link.
    pub fn open_lock_file(&self, path: &Path) -> Result<File> {
        let Some((dir, name)) = self.parent_of(path, Some(0o755))? else {
            return Err(refused(path, "its directory cannot be created"));
        };
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| self.explain(&dir, name, path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(path, e))?;
        let t = EntryType::of(FileType::from_raw_mode(st.st_mode));
        if t != EntryType::File {
            return Err(refused(path, t.refusal()));
        }
        Ok(File::from(fd))
    }

    /// Removes the file (or link) at `path` if there is one, and syncs its
    /// directory. A link is removed, never followed.
    pub fn remove_file(&self, path: &Path) -> Result<()> {
        let Some((dir, name)) = self.parent_of(path, None)? else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => rustix::fs::fsync(&dir).map_err(|e| io_err(path, e)),
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(path, e)),
        }
    }

    /// Removes the directory `dir` if it is empty; false if it is not (or
    /// is missing, or is not a directory).
    pub fn remove_empty_dir(&self, dir: &Path) -> bool {
        match self.parent_of(dir, None) {
            Ok(Some((parent, name))) => {
                rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR).is_ok()
            }
            _ => false,
        }
    }

    /// Removes `dir` and everything below it, never following a link (a
    /// link is removed as an entry). Missing: nothing to do.
    pub fn remove_dir_all(&self, dir: &Path) -> Result<()> {
        match self.entry_type(dir)? {
            None => return Ok(()),
            Some(EntryType::Dir) => {}
            Some(_) => return self.remove_file(dir),
        }
        if let Some(entries) = self.read_dir(dir)? {
            for (name, t) in entries {
                let p = dir.join(&name);
                if t == EntryType::Dir {
                    self.remove_dir_all(&p)?;
                } else {
                    self.remove_file(&p)?;
                }
            }
        }
        let Some((parent, name)) = self.parent_of(dir, None)? else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(dir, e)),
        }
    }

    /// Renames a regular file within the tree (both names' directories must
    /// exist and be real directories).
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let Some((fdir, fname)) = self.parent_of(from, None)? else {
            return Err(Error::io(from, io::ErrorKind::NotFound.into()));
        };
        let Some((tdir, tname)) = self.parent_of(to, None)? else {
            return Err(Error::io(to, io::ErrorKind::NotFound.into()));
        };
        check_replaceable(&tdir, tname, to)?;
        rustix::fs::renameat(&fdir, fname, &tdir, tname).map_err(|e| io_err(to, e))?;
        rustix::fs::fsync(&tdir).map_err(|e| io_err(to, e))
    }

    /// Gives the regular file `from` a second name `to` (replacing a file
    /// there; `to`'s directories are created), without copying it and
    /// without syncing: a caller moving many files syncs the file system
    /// once ([`VaultFs::sync_filesystem`]) before relying on them.
    pub fn link_unsynced(&self, from: &Path, to: &Path) -> Result<()> {
        let Some((fdir, fname)) = self.parent_of(from, None)? else {
            return Err(Error::io(from, io::ErrorKind::NotFound.into()));
        };
        let st = rustix::fs::statat(&fdir, fname, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(from, e))?;
        let t = EntryType::of(FileType::from_raw_mode(st.st_mode));
        if t != EntryType::File {
            return Err(refused(from, t.refusal()));
        }
        let Some((tdir, tname)) = self.parent_of(to, Some(0o755))? else {
            return Err(refused(to, "its directory cannot be created"));
        };
        check_replaceable(&tdir, tname, to)?;
        let tmp = temp_name(tname)?;
        rustix::fs::linkat(&fdir, fname, &tdir, &tmp, AtFlags::empty())
            .map_err(|e| io_err(to, e))?;
        rustix::fs::renameat(&tdir, &tmp, &tdir, tname).map_err(|e| {
            let _ = rustix::fs::unlinkat(&tdir, &tmp, AtFlags::empty());
            io_err(to, e)
        })
    }

    /// Removes the file (or link) at `path` if there is one, without
    /// syncing its directory (see [`VaultFs::link_unsynced`]).
    pub fn remove_file_unsynced(&self, path: &Path) -> Result<()> {
        let Some((dir, name)) = self.parent_of(path, None)? else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(path, e)),
        }
    }

    /// The entries of directory `dir` with their types, links not followed,
    /// sorted by name (`None`: no such directory). A link or file at `dir`
    /// itself is refused.
    pub fn read_dir(&self, dir: &Path) -> Result<Option<Vec<(OsString, EntryType)>>> {
        let Some(fd) = self.open_dir(dir)? else {
            return Ok(None);
        };
        read_dir_fd(&fd, dir).map(Some)
    }

    /// Every entry below `dir` (directories too, then their entries), as
    /// paths relative to it, in order; `None` if `dir` does not exist. A
    /// link is listed as one, never entered.
    pub fn read_tree(&self, dir: &Path) -> Result<Option<Vec<(PathBuf, EntryType)>>> {
        let Some(fd) = self.open_dir(dir)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        read_tree_fd(&fd, dir, &mut out, Path::new(""))?;
        Ok(Some(out))
    }

    /// Flushes the file system holding the root to disk.
    pub fn sync_filesystem(&self) -> Result<()> {
        let f = File::open(self.root).map_err(|e| Error::io(self.root, e))?;
        rustix::fs::syncfs(&f).map_err(|e| io_err(self.root, e))
    }
}

pub(super) fn read_dir_fd(fd: &OwnedFd, dir: &Path) -> Result<Vec<(OsString, EntryType)>> {
    let mut out = Vec::new();
    // One getdents call reads a few hundred entries into this buffer (std's
    // and rustix's `Dir` start at a few hundred bytes, and `Dir::read_from`
    // reopens the directory first): a listing of 256 buckets was mostly
    // system calls.
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut rd = rustix::fs::RawDir::new(fd, &mut buf);
    while let Some(e) = rd.next() {
        let e = e.map_err(|e| io_err(dir, e))?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let t = match e.file_type() {
            FileType::Unknown => rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| EntryType::of(FileType::from_raw_mode(st.st_mode)))
                .map_err(|err| io_err(&dir.join(name), err))?,
            ft => EntryType::of(ft),
        };
        out.push((name.to_owned(), t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every entry below the directory `fd` (at `dir`), each directory entered
/// by descriptor from its parent (no link followed, no path walked from the
/// root again): paths relative to `dir`, `/`-separated, in order.
fn read_tree_fd(
    fd: &OwnedFd,
    dir: &Path,
    out: &mut Vec<(PathBuf, EntryType)>,
    rel: &Path,
) -> Result<()> {
    for (name, t) in read_dir_fd(fd, dir)? {
        let rel = rel.join(&name);
        if t == EntryType::Dir {
            let path = dir.join(&name);
            let sub = rustix::fs::openat(fd, name.as_os_str(), DIR_FLAGS, Mode::empty())
                .map_err(|e| io_err(&path, e))?;
            out.push((rel.clone(), t));
            read_tree_fd(&sub, &path, out, &rel)?;
        } else {
            out.push((rel, t));
        }
    }
    Ok(())
}

/// A target may be replaced if it is absent or a regular file.
pub(super) fn check_replaceable(dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => match EntryType::of(FileType::from_raw_mode(st.st_mode)) {
            EntryType::File => Ok(()),
            t => Err(refused(path, t.refusal())),
        },
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Reads an open regular file: at most `kind`'s cap plus one byte, so a
/// file that grows while it is read is caught too.
fn read_capped(f: File, path: &Path, kind: Kind) -> Result<(Vec<u8>, std::fs::Metadata)> {
    let cap = kind.cap();
    let md = f.metadata().map_err(|e| Error::io(path, e))?;
    let too_big = || {
        refused(
            path,
            format!(
                "is larger than a {} may be ({} bytes at most)",
                kind.name(),
                cap
            ),
        )
    };
    if md.len() > cap {
        return Err(too_big());
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > cap {
        return Err(too_big());
    }
    Ok((buf, md))
}

/// The prefix of every temporary file (see [`crate::fsutil::TEMP_PREFIX`]).
pub(super) fn temp_name(file: &OsStr) -> Result<OsString> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd)
        .map_err(|e| Error::io(Path::new(file), io::Error::other(e.to_string())))?;
    let keep: String = file.to_string_lossy().chars().take(32).collect();
    Ok(OsString::from(format!(
        "{}{}-{keep}",
        crate::fsutil::TEMP_PREFIX,
        hex::encode(rnd)
    )))
}
