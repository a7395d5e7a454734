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

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags};

use crate::error::Error;

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

mod batch;
mod listing;
mod tracked;
mod vault_fs;

pub use batch::Batch;
pub use tracked::{TRACKED_LOCAL, ensure_local_untracked, tracked_gitlinks, tracked_local};
pub use vault_fs::VaultFs;

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{CWD, Mode};
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
