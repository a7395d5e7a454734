//! The one way to touch vault files. Everything below a vault's root (the
//! directory holding `.agent-vault`) comes from git, so anyone with push
//! access chose it: every read and write of a vault file goes through
//! [`VaultFs`], which
//!
//! - never follows a symbolic link: each directory below the root is opened
//!   with `O_NOFOLLOW` relative to its parent's descriptor, and the file
//!   itself with `O_NOFOLLOW`, so no link anywhere on the way is followed and
//!   nothing can be swapped in between a check and the use;
//! - reads regular files only (`O_NONBLOCK` and a type check on the opened
//!   descriptor: a FIFO cannot hang a read, a device cannot stream forever);
//! - reads at most a cap that depends on the kind of file ([`Kind`]), so no
//!   file can exhaust memory;
//! - writes through a temporary file in the target's own directory and a
//!   rename, refusing a target that is a link or a special file;
//! - walks directories without descending into links.
//!
//! Every refusal is an [`Error::Refused`] naming the path, never the content.
//!
//! Machine-private state lives in `.agent-vault/.local/`. It must never come
//! from git: [`tracked_local`] lists the entries that git tracks there, and
//! nothing under `.local/` is trusted while there is one.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};

use crate::error::{Error, Result};

/// The directory inside the vault root that holds everything.
pub const VAULT_DIR: &str = ".agent-vault";
/// Local, untracked state: the lock and the journal of a half-finished operation.
pub const LOCAL_DIR: &str = ".local";

/// The largest secret value `set` accepts.
pub const MAX_VALUE: usize = 1 << 20;

/// What a file is, which decides how large it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// `config.yaml`.
    Config,
    /// `manifest.yaml`.
    Manifest,
    /// `manifest.sig`.
    Signature,
    /// `services.yaml`.
    Services,
    /// A secret's `.meta.yaml`.
    Metadata,
    /// A secret's `.age` file: a value of at most [`MAX_VALUE`], armored.
    Secret,
    /// A group key file (`groups/<group>.key.age`, `.next`, a merge's copies).
    GroupKey,
    /// An agent's or the broker's `public.key`.
    PublicKey,
    /// An escrowed private key, the broker's token and CA keys, its CA certificate.
    KeyFile,
    /// `.local/journal.json`.
    Journal,
    /// Other machine-private state under `.local/` (conflicts, caches, stamps).
    Local,
    /// Any other file the tool reads or commits (`.gitignore`, …).
    Other,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

impl Kind {
    /// The most bytes a file of this kind may hold.
    pub const fn cap(self) -> u64 {
        match self {
            Kind::Config | Kind::Signature | Kind::Metadata => 64 * KIB,
            Kind::PublicKey => 4 * KIB,
            Kind::Manifest | Kind::Services | Kind::GroupKey | Kind::KeyFile => MIB,
            // Armored: 4/3 of the value, plus age's headers and tags.
            Kind::Secret => 2 * MIB,
            Kind::Journal => 256 * MIB,
            Kind::Local => 64 * MIB,
            Kind::Other => 16 * MIB,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Config => "config.yaml",
            Kind::Manifest => "manifest",
            Kind::Signature => "manifest signature",
            Kind::Services => "services list",
            Kind::Metadata => "secret's metadata file",
            Kind::Secret => "secret file",
            Kind::GroupKey => "group key file",
            Kind::PublicKey => "public key file",
            Kind::KeyFile => "key file",
            Kind::Journal => "journal",
            Kind::Local => "local state file",
            Kind::Other => "file",
        }
    }

    /// The kind of a file by its absolute path: by its place below
    /// `.agent-vault` if it is there, else [`Kind::Other`].
    pub fn of_path(path: &Path) -> Kind {
        let mut comps = path.iter();
        match comps.position(|c| c == VAULT_DIR) {
            Some(_) => Kind::of(Path::new(comps.as_path())),
            None => Kind::Other,
        }
    }

    /// The kind of a file by its path relative to `.agent-vault`.
    pub fn of(rel: &Path) -> Kind {
        let parts: Vec<&str> = rel.iter().filter_map(OsStr::to_str).collect();
        let name = parts.last().copied().unwrap_or("");
        match parts.as_slice() {
            ["config.yaml"] => Kind::Config,
            ["manifest.yaml"] => Kind::Manifest,
            ["manifest.sig"] => Kind::Signature,
            ["services.yaml"] => Kind::Services,
            [".local", "journal.json"] => Kind::Journal,
            [".local", ..] => Kind::Local,
            ["groups", _] => Kind::GroupKey,
            ["secrets", ..] if name.ends_with(".meta.yaml") => Kind::Metadata,
            ["secrets", ..] if name.ends_with(".age") => Kind::Secret,
            [_, _, "public.key"] | ["broker", "public.key"] => Kind::PublicKey,
            ["agents", _, _] | ["broker", _] => Kind::KeyFile,
            _ => Kind::Other,
        }
    }
}

/// What a directory entry is, never following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device.
    Special,
}

impl EntryType {
    fn of(ft: FileType) -> Self {
        match ft {
            FileType::RegularFile => EntryType::File,
            FileType::Directory => EntryType::Dir,
            FileType::Symlink => EntryType::Symlink,
            _ => EntryType::Special,
        }
    }

    /// Why an entry of this type is refused where a file is expected.
    pub fn refusal(self) -> &'static str {
        match self {
            EntryType::Symlink => {
                "is a symbolic link; the vault never follows links below its directory"
            }
            EntryType::Special => {
                "is a special file (a FIFO, socket or device), not a regular file"
            }
            EntryType::Dir => "is a directory where a file is expected",
            EntryType::File => "is a file where a directory is expected",
        }
    }
}

fn refused(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
    Error::Refused {
        path: path.into(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path, e: rustix::io::Errno) -> Error {
    Error::io(path, e.into())
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A vault's file tree, anchored at its root: the directory holding
/// `.agent-vault` (or a repository's working tree). Paths handed to it are
/// absolute paths below the root; no component below the root may be a link.
#[derive(Debug, Clone, Copy)]
pub struct VaultFs<'a> {
    root: &'a Path,
}

impl<'a> VaultFs<'a> {
    /// The tree below `root` (a canonical path: links above the root are the
    /// user's own choice and are followed).
    pub fn new(root: &'a Path) -> Self {
        VaultFs { root }
    }

    /// The components of `path` below the root.
    fn components<'p>(&self, path: &'p Path) -> Result<Vec<&'p OsStr>> {
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
    fn open_dir_parts(
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
        if let Err(e) = f.write_all(contents).and_then(|()| f.sync_all()) {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
            return Err(Error::io(path, e));
        }
        drop(f);
        if let Err(e) = rustix::fs::renameat(&dir, &tmp, &dir, name) {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
            return Err(io_err(path, e));
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

    /// The entries of directory `dir` with their types, links not followed,
    /// sorted by name (`None`: no such directory). A link or file at `dir`
    /// itself is refused.
    pub fn read_dir(&self, dir: &Path) -> Result<Option<Vec<(OsString, EntryType)>>> {
        let Some(fd) = self.open_dir(dir)? else {
            return Ok(None);
        };
        read_dir_fd(&fd, dir).map(Some)
    }

    /// Flushes the file system holding the root to disk.
    pub fn sync_filesystem(&self) -> Result<()> {
        let f = File::open(self.root).map_err(|e| Error::io(self.root, e))?;
        rustix::fs::syncfs(&f).map_err(|e| io_err(self.root, e))
    }
}

fn read_dir_fd(fd: &OwnedFd, dir: &Path) -> Result<Vec<(OsString, EntryType)>> {
    let mut out = Vec::new();
    let rd = rustix::fs::Dir::read_from(fd).map_err(|e| io_err(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| io_err(dir, e))?;
        let name = OsStr::from_bytes(e.file_name().to_bytes()).to_owned();
        if name == "." || name == ".." {
            continue;
        }
        let t = match e.file_type() {
            FileType::Unknown => {
                rustix::fs::statat(fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| EntryType::of(FileType::from_raw_mode(st.st_mode)))
                    .map_err(|err| io_err(&dir.join(&name), err))?
            }
            ft => EntryType::of(ft),
        };
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A target may be replaced if it is absent or a regular file.
fn check_replaceable(dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<()> {
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
fn temp_name(file: &OsStr) -> Result<OsString> {
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

// ---- machine-private state --------------------------------------------------

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
    let mut found = BTreeSet::new();
    let index = repo.index()?;
    for e in index.iter() {
        if e.path.starts_with(prefix.as_bytes()) || e.path == local.as_os_str().as_bytes() {
            found.insert(String::from_utf8_lossy(&e.path).into_owned());
        }
    }
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
    let mut found = Vec::new();
    for e in repo.index()?.iter() {
        if e.path.starts_with(prefix.as_bytes()) && e.mode & 0o170000 == GITLINK {
            found.push(String::from_utf8_lossy(&e.path).into_owned());
        }
    }
    Ok(found)
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

// ---- bulk writes ------------------------------------------------------------

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

    /// Stages `contents` for `path` (creating the parent directory).
    pub fn write(&mut self, path: &Path, contents: &[u8]) -> Result<()> {
        self.write_all(vec![(path.to_owned(), contents.to_vec())])
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
        let t = crate::trace::phase("batch: syncfs");
        self.fs.sync_filesystem()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn pooled_batch_replaces_files_and_keeps_spares() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let vfs = VaultFs::new(&root);
        let pool = root.join("pool");
        let a = root.join("d/a");
        let b = root.join("d/b");
        let mut batch = Batch::with_pool(vfs, &pool).unwrap();
        batch
            .write_all(vec![
                (a.clone(), b"a1".to_vec()),
                (b.clone(), b"b1".to_vec()),
            ])
            .unwrap();
        batch.commit().unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"a1");
        assert_eq!(
            fs::read_dir(&pool).unwrap().count(),
            0,
            "new files consumed their temporaries"
        );
        // Replacing: the old inodes become spares.
        let mut batch = Batch::with_pool(vfs, &pool).unwrap();
        batch
            .write_all(vec![
                (a.clone(), b"a2".to_vec()),
                (b.clone(), b"b2-longer".to_vec()),
            ])
            .unwrap();
        batch.commit().unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"a2");
        assert_eq!(fs::read(&b).unwrap(), b"b2-longer");
        assert_eq!(fs::read_dir(&pool).unwrap().count(), 2);
        // And are reused, truncated, next time.
        let mut batch = Batch::with_pool(vfs, &pool).unwrap();
        batch.write_all(vec![(b.clone(), b"b3".to_vec())]).unwrap();
        batch.commit().unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"b3");
        assert_eq!(fs::read_dir(&pool).unwrap().count(), 2);
    }

    #[test]
    fn links_and_special_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("sub")).unwrap();
        let root = root.canonicalize().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("key"), b"AGE-SECRET-KEY-1XYZ").unwrap();
        std::os::unix::fs::symlink(outside.join("key"), root.join("sub/link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
        let vfs = VaultFs::new(&root);
        for p in [
            root.join("sub/link"),
            root.join("dirlink/key"),
            root.join("zero"),
        ] {
            let e = vfs.read(&p, Kind::Metadata).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::Refused { .. }), "{msg}");
            assert!(!msg.contains("AGE-SECRET-KEY"), "{msg}");
        }
        // Writes through a linked directory or over a link are refused.
        assert!(
            vfs.write_atomic(&root.join("dirlink/new"), b"x", 0o644)
                .is_err()
        );
        assert!(
            vfs.write_atomic(&root.join("sub/link"), b"x", 0o644)
                .is_err()
        );
        assert!(!outside.join("new").exists());
        assert_eq!(
            fs::read(outside.join("key")).unwrap(),
            b"AGE-SECRET-KEY-1XYZ"
        );
        // Removing a linked directory's contents is refused; the link itself goes.
        assert!(vfs.remove_file(&root.join("dirlink/key")).is_err());
        vfs.remove_dir_all(&root.join("dirlink")).unwrap();
        assert!(outside.join("key").exists());
        // Oversize: read at most the cap.
        fs::write(root.join("big"), vec![b'a'; 5000]).unwrap();
        assert!(matches!(
            vfs.read(&root.join("big"), Kind::PublicKey),
            Err(Error::Refused { .. })
        ));
    }

    #[test]
    fn a_fifo_does_not_hang_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let fifo = root.join("fifo");
        rustix::fs::mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        let vfs = VaultFs::new(&root);
        assert!(matches!(
            vfs.read(&fifo, Kind::Secret),
            Err(Error::Refused { .. })
        ));
        assert!(vfs.open_lock_file(&fifo).is_err());
    }
}
