//! A directory tree's listing remembered between commands, each directory's
//! part trusted only while the directory is unchanged.
//!
//! A `revoke` lists the group's secrets as exposed: for 10,000 secrets that
//! was reading 256 bucket directories, most of the command's time. A
//! directory's change time (`ctime`) moves whenever an entry is added,
//! removed or renamed in it, and no one can set it back (unlike `mtime`):
//! a directory whose inode, `mtime` and `ctime` are those recorded with its
//! listing still has that listing, and costs one `stat` instead of opening
//! and reading it. Nested directories are checked each on their own (a
//! change below does not touch the parent's times).
//!
//! As git does with its index, a listing taken while its directory's times
//! are too recent to tell a later change in the same clock tick apart is
//! not remembered ("racy"): that directory is read again next time.
//!
//! The cache is machine-private state under `.local/` (never from git) and
//! only ever a shortcut: unreadable or of another shape, it is ignored and
//! rebuilt; it is rewritten without fsync, since losing it costs one full
//! read.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, Stat};
use serde::{Deserialize, Serialize};

use crate::error::Result;

use super::vault_fs::read_dir_fd;
use super::{DIR_FLAGS, EntryType, Kind, VaultFs, io_err};

/// How recent a directory's times may be for its listing to be remembered.
const RACY: Duration = Duration::from_secs(2);

/// A directory's identity and times: `[inode, mtime s, mtime ns, ctime s,
/// ctime ns]`.
type Stamp = [i64; 5];

/// The listing in memory, as the cache file holds it: a directory's
/// entries read from the file are one string borrowed from its bytes
/// (10,000 names are not 10,000 allocations, nor 10,000 JSON values to
/// parse; a string JSON had to escape is copied), those read from a
/// directory are owned.
#[derive(Serialize, Deserialize, Default)]
struct Cache<'a> {
    /// By directory, relative to the tree's top (`""` for the top itself).
    #[serde(borrow)]
    dirs: BTreeMap<Cow<'a, str>, Listed<'a>>,
}

#[derive(Serialize, Deserialize)]
struct Listed<'a> {
    stamp: Stamp,
    /// Entries kept, each its type code (one digit) and its name, joined
    /// by `/` (which no name holds).
    #[serde(borrow)]
    entries: Cow<'a, str>,
}

impl<'a> Cache<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The entries of a [`Listed`]: (name, type). What no directory read
/// gives (an empty name, `.`, `..`) is passed over: the file is ours, but
/// a walk never leaves its tree on the word of a file.
fn entries(joined: &str) -> impl Iterator<Item = (&str, EntryType)> {
    joined.split('/').filter_map(|item| {
        let (c, name) = item.split_at_checked(1)?;
        if matches!(name, "" | "." | "..") {
            return None;
        }
        let t = of_code(c.as_bytes()[0].wrapping_sub(b'0'));
        Some((name, t))
    })
}

fn stamp(st: &Stat) -> Stamp {
    [
        st.st_ino as i64,
        st.st_mtime,
        st.st_mtime_nsec as i64,
        st.st_ctime,
        st.st_ctime_nsec as i64,
    ]
}

fn code(t: EntryType) -> u8 {
    match t {
        EntryType::File => 0,
        EntryType::Dir => 1,
        EntryType::Symlink => 2,
        EntryType::Special => 3,
    }
}

fn of_code(c: u8) -> EntryType {
    match c {
        0 => EntryType::File,
        1 => EntryType::Dir,
        2 => EntryType::Symlink,
        _ => EntryType::Special,
    }
}

struct Walk<'a, 'c> {
    old: Cache<'c>,
    new: Cache<'c>,
    /// The time (seconds, nanoseconds since the epoch) before which a
    /// directory's times are old enough to remember its listing.
    settled: (i64, i64),
    keep: &'a dyn Fn(&str, &str) -> bool,
    reread: bool,
    emit: &'a mut dyn FnMut(&str, &str, EntryType),
}

impl VaultFs<'_> {
    /// Lists the entries below `dir` that `keep` accepts (asked with the
    /// directory's path relative to `dir`, `""` for `dir` itself, and the
    /// entry's name; directories are always entered and not listed),
    /// handing each to `emit` as (its directory relative to `dir`, its
    /// name, its type), each directory's part read again only if it
    /// changed since `cache` recorded it: `keep` is asked only about
    /// entries read, and what it accepted is remembered. `false` if `dir`
    /// does not exist. Names that are not UTF-8 are left out. A link is
    /// listed as one, never entered. The order is the cache's, not sorted.
    pub fn read_tree_cached(
        &self,
        dir: &Path,
        cache: &Path,
        keep: &dyn Fn(&str, &str) -> bool,
        emit: &mut dyn FnMut(&str, &str, EntryType),
    ) -> Result<bool> {
        let Some(fd) = self.open_dir(dir)? else {
            return Ok(false);
        };
        let bytes = self.read_optional(cache, Kind::Local).ok().flatten();
        let old = bytes.as_deref().and_then(Cache::parse).unwrap_or_default();
        let settled = (SystemTime::now() - RACY)
            .duration_since(UNIX_EPOCH)
            .map_or((0, 0), |d| {
                (d.as_secs() as i64, i64::from(d.subsec_nanos()))
            });
        let mut walk = Walk {
            old,
            new: Cache::default(),
            settled,
            keep,
            reread: false,
            emit,
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(dir, e))?;
        walk.visit(Some(fd), stamp(&st), dir, "")?;
        if walk.reread
            && let Ok(bytes) = serde_json::to_vec(&walk.new)
        {
            // A shortcut only: a failure to remember it costs nothing now.
            let _ = self.write_unsynced(cache, &bytes, crate::fsutil::PUBLIC_FILE);
        }
        Ok(true)
    }
}

impl<'c> Walk<'_, 'c> {
    /// Lists the top directory, open as `fd`, whose stamp is `st`.
    fn visit(&mut self, fd: Option<OwnedFd>, st: Stamp, path: &Path, rel: &str) -> Result<()> {
        self.visit_in(fd, None, st, path, rel)
    }

    /// Lists the directory `rel` at `path`, whose stamp is `st`: open as
    /// `fd`, or opened from `parent` by name when it must be read.
    fn visit_in(
        &mut self,
        mut fd: Option<OwnedFd>,
        parent: Option<(BorrowedFd<'_>, &OsStr)>,
        st: Stamp,
        path: &Path,
        rel: &str,
    ) -> Result<()> {
        let open = |fd: &mut Option<OwnedFd>| -> Result<()> {
            if fd.is_none() {
                let (p, name) = parent.expect("a directory below the top has a parent");
                let d = rustix::fs::openat(p, name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| io_err(path, e))?;
                *fd = Some(d);
            }
            Ok(())
        };
        let (stamp_now, entries) = match self.old.dirs.remove(rel).filter(|l| l.stamp == st) {
            Some(l) => (Some(l.stamp), l.entries),
            None => {
                open(&mut fd)?;
                let dir = fd.as_ref().expect("opened above");
                // Times taken before the read: a change while it reads
                // moves them past what is recorded.
                let now = stamp(&rustix::fs::fstat(dir).map_err(|e| io_err(path, e))?);
                let mut entries = String::new();
                for (n, t) in read_dir_fd(dir, path)? {
                    let Some(n) = n.to_str() else { continue };
                    if t == EntryType::Dir || (self.keep)(rel, n) {
                        if !entries.is_empty() {
                            entries.push('/');
                        }
                        entries.push(char::from(b'0' + code(t)));
                        entries.push_str(n);
                    }
                }
                let entries = Cow::Owned(entries);
                self.reread = true;
                let settled = (now[1], now[2]) < self.settled && (now[3], now[4]) < self.settled;
                (settled.then_some(now), entries)
            }
        };
        let mut remember = stamp_now;
        for (name, t) in self::entries(&entries) {
            if t != EntryType::Dir {
                (self.emit)(rel, name, t);
                continue;
            }
            // A child directory is looked at from this one's descriptor,
            // opened only now when the listing came from the cache.
            open(&mut fd)?;
            let me = fd.as_ref().expect("opened above").as_fd();
            let sub_path = path.join(name);
            match rustix::fs::statat(me, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(sub)
                    if EntryType::of(FileType::from_raw_mode(sub.st_mode)) == EntryType::Dir =>
                {
                    let child = if rel.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{rel}/{name}")
                    };
                    let at = Some((me, OsStr::new(name)));
                    self.visit_in(None, at, stamp(&sub), &sub_path, &child)?;
                }
                // Replaced since it was listed: what is there now, and
                // this directory is read again next time.
                Ok(sub) => {
                    if (self.keep)(rel, name) {
                        (self.emit)(
                            rel,
                            name,
                            EntryType::of(FileType::from_raw_mode(sub.st_mode)),
                        );
                    }
                    remember = None;
                    self.reread = true;
                }
                Err(rustix::io::Errno::NOENT) => {
                    remember = None;
                    self.reread = true;
                }
                Err(e) => return Err(io_err(&sub_path, e)),
            }
        }
        if let Some(stamp) = remember {
            self.new
                .dirs
                .insert(Cow::Owned(rel.to_owned()), Listed { stamp, entries });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(root: &Path, cache: &Path) -> Vec<(String, EntryType)> {
        let fs = VaultFs::new(root);
        let mut got = Vec::new();
        let found = fs
            .read_tree_cached(
                &root.join("g"),
                cache,
                &|_: &str, n: &str| n.ends_with(".age"),
                &mut |dir: &str, n: &str, t| {
                    let rel = if dir.is_empty() {
                        n.to_owned()
                    } else {
                        format!("{dir}/{n}")
                    };
                    got.push((rel, t));
                },
            )
            .unwrap();
        assert!(found);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        got
    }

    /// The cache file as a test edits it.
    fn read_cache(cache: &Path) -> Cache<'static> {
        let bytes = std::fs::read(cache).unwrap().leak();
        Cache::parse(bytes).unwrap()
    }

    fn names(l: &[(String, EntryType)]) -> Vec<&str> {
        l.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// A name JSON must escape is remembered and listed like any other
    /// (the cache copies it rather than borrowing it).
    #[test]
    fn a_name_json_escapes_is_remembered_too() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let cache = root.join(".local/listing.json");
        for f in ["_00/q\"uote\\.age", "_00/plain.age"] {
            let p = root.join("g").join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        let want = ["_00/plain.age", "_00/q\"uote\\.age"];
        assert_eq!(names(&list(&root, &cache)), want);
        std::thread::sleep(RACY + Duration::from_millis(200));
        assert_eq!(names(&list(&root, &cache)), want);
        let cached = read_cache(&cache);
        assert!(cached.dirs["_00"].entries.contains("q\"uote"));
        assert_eq!(names(&list(&root, &cache)), want);
    }

    /// A directory unchanged since it was listed is not read again (a name
    /// planted in its cached listing shows), and every kind of change to a
    /// directory, nested ones too, is seen at once.
    #[test]
    fn an_unchanged_directory_comes_from_the_cache_and_every_change_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let cache = root.join(".local/listing.json");
        for f in [
            "_00/a.age",
            "_00/a.meta.yaml",
            "_01/b.age",
            "_01/db/c.age",
            "_02/d.age",
        ] {
            let p = root.join("g").join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        // Fresh directories are racy: read, not remembered.
        let want = ["_00/a.age", "_01/b.age", "_01/db/c.age", "_02/d.age"];
        assert_eq!(names(&list(&root, &cache)), want);
        assert!(read_cache(&cache).dirs.is_empty());
        std::thread::sleep(RACY + Duration::from_millis(200));
        assert_eq!(names(&list(&root, &cache)), want);
        let mut cached = read_cache(&cache);
        assert_eq!(
            cached.dirs.len(),
            5,
            "{:?}",
            cached.dirs.keys().collect::<Vec<_>>()
        );
        // Plant names: shown while their directories are unchanged.
        for d in ["_00", "_01/db", "_02"] {
            let l = cached.dirs.get_mut(d).unwrap();
            l.entries = format!("{}/0planted.age", l.entries).into();
        }
        // A planted way out of the tree is not taken.
        let top = cached.dirs.get_mut("").unwrap();
        top.entries = format!("{}/1../1./0", top.entries).into();
        std::fs::write(&cache, serde_json::to_vec(&cached).unwrap()).unwrap();
        assert_eq!(
            names(&list(&root, &cache)),
            [
                "_00/a.age",
                "_00/planted.age",
                "_01/b.age",
                "_01/db/c.age",
                "_01/db/planted.age",
                "_02/d.age",
                "_02/planted.age"
            ]
        );
        // A file added in a nested directory, one removed, one replaced by
        // a link, and a new bucket.
        std::fs::write(root.join("g/_01/db/e.age"), "x").unwrap();
        std::fs::remove_file(root.join("g/_00/a.age")).unwrap();
        std::fs::remove_file(root.join("g/_02/d.age")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("g/_02/d.age")).unwrap();
        std::fs::create_dir(root.join("g/_03")).unwrap();
        std::fs::write(root.join("g/_03/f.age"), "x").unwrap();
        let got = list(&root, &cache);
        assert_eq!(
            names(&got),
            [
                "_01/b.age",
                "_01/db/c.age",
                "_01/db/e.age",
                "_02/d.age",
                "_03/f.age"
            ]
        );
        assert!(got.contains(&("_02/d.age".into(), EntryType::Symlink)));
        // A directory replaced by a file, and a garbled cache: read again.
        std::fs::remove_dir_all(root.join("g/_01/db")).unwrap();
        std::fs::write(root.join("g/_01/db"), "x").unwrap();
        std::fs::write(&cache, "{not json").unwrap();
        assert_eq!(
            names(&list(&root, &cache)),
            ["_01/b.age", "_02/d.age", "_03/f.age"]
        );
    }
}
