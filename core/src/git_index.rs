//! A few entries of git's index changed in place. libgit2 reads the whole
//! index into a sorted map (validating every path, verifying its checksum
//! with collision-detecting SHA-1), then writes it whole with another such
//! hash: for a vault of 10,000 secrets (20,000 entries, 2 MB) that was the
//! larger part of a `set`. Here the index is spliced as bytes: the entries
//! before and after ours copied as they are, ours replaced, inserted or
//! removed, and one plain SHA-1 over the result, written through git's own
//! `index.lock` protocol. Anything this does not handle (no index yet,
//! version 4's compressed paths, a split or sparse index, a conflict on one
//! of our paths, a SHA-256 repository) answers `false`, and the caller
//! takes libgit2's way.
//!
//! Extensions: `TREE` (the cache of tree ids) is kept with the trees above
//! our paths invalidated, as git does; `REUC` is kept; the other optional
//! ones (untracked cache, offset tables, fsmonitor) describe the file as it
//! was and are dropped, which git accepts and rebuilds.

use std::io::Write;
use std::path::Path;

use git2::Oid;
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};

/// An index entry's stat data and blob, or `None` to remove the path.
pub(crate) type Change<'a> = (&'a str, Option<(Oid, &'a std::fs::Metadata)>);

const HEADER: usize = 12;
const HASH: usize = 20;

/// Applies `changes` (sorted or not, each path once) to `git_dir`'s index,
/// with a trailing hash of zeros if `skip_hash` (git's `index.skipHash`).
/// `Ok(false)`: the index is in a form handled only by libgit2; nothing
/// was written.
pub(crate) fn update(git_dir: &Path, changes: &[Change<'_>], skip_hash: bool) -> Result<bool> {
    let path = git_dir.join("index");
    if !path.exists() {
        return Ok(false);
    }
    // git's protocol: whoever creates index.lock owns the index until it
    // renames the lock over it (or removes it). Taken before the index is
    // read, so no other writer's index is overwritten with ours.
    let lock = git_dir.join("index.lock");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock)
        .map_err(|e| Error::Git(format!("cannot lock git's index ({}): {e}", lock.display())))?;
    let done = splice_locked(&path, &lock, f, changes, skip_hash);
    if !matches!(done, Ok(Spliced::Renamed)) {
        let _ = std::fs::remove_file(&lock);
    }
    done.map(|d| d != Spliced::NotHandled)
}

/// What [`splice_locked`] did.
#[derive(PartialEq, Eq)]
enum Spliced {
    /// Nothing: an index only libgit2 handles.
    NotHandled,
    /// Our entries written over their old selves in the index itself.
    InPlace,
    /// A new index written to the lock and renamed over the old one.
    Renamed,
}

fn splice_locked(
    path: &Path,
    lock: &Path,
    f: std::fs::File,
    changes: &[Change<'_>],
    skip_hash: bool,
) -> Result<Spliced> {
    let t = crate::trace::phase("git index: read");
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    drop(t);
    if skip_hash && let Some(patches) = in_place(&bytes, changes) {
        let _t = crate::trace::phase("git index: written in place");
        use std::os::unix::fs::FileExt;
        let index = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        for (at, entry) in &patches {
            index
                .write_all_at(entry, *at as u64)
                .map_err(|e| Error::io(path, e))?;
        }
        return Ok(Spliced::InPlace);
    }
    let t = crate::trace::phase("git index: splice");
    let Some(plan) = splice(&bytes, changes) else {
        return Ok(Spliced::NotHandled);
    };
    drop(t);
    let _t = crate::trace::phase("git index: write and rename");
    plan.write_to(&bytes, f, skip_hash)
        .and_then(|()| std::fs::rename(lock, path))
        .map_err(|e| Error::io(path, e))?;
    Ok(Spliced::Renamed)
}

/// Where each of `changes` can be written over its old entry in the index
/// itself, when all of them can: each replaces a stage-0 entry of the same
/// path whose new encoding is exactly as long (so only its stat data, id
/// and mode change, at the same offset), the trailing hash is zeros (so
/// nothing else changes), and the extensions are only a cache tree whose
/// trees above our paths are already invalid (as the last splice left
/// them) and resolve-undo records. A `revoke` or `grant` on a big vault
/// then writes a few hundred bytes, not 2 MB. `None`: splice instead.
fn in_place(bytes: &[u8], changes: &[Change<'_>]) -> Option<Vec<(usize, Vec<u8>)>> {
    if bytes.len() < HEADER + HASH || bytes[bytes.len() - HASH..] != [0; HASH] {
        return None;
    }
    let body = &bytes[..bytes.len() - HASH];
    let mut sorted: Vec<&Change<'_>> = changes.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut walk = Walk::new(body)?;
    let mut patches = Vec::with_capacity(sorted.len());
    for (path, new) in sorted {
        let (oid, md) = (*new)?;
        let path = path.as_bytes();
        while let Some(e) = walk.peek().filter(|e| e.path < path) {
            walk.advance(&e);
        }
        let at = walk.at;
        let old = walk.peek().filter(|e| e.path == path && e.stage == 0)?;
        let mut entry = Vec::with_capacity(old.end - at);
        encode(&mut entry, path, oid, md)?;
        if entry.len() != old.end - at || body[at + 60..at + 62] != entry[60..62] {
            return None;
        }
        walk.advance(&old);
        if walk.peek().is_some_and(|e| e.path == path) {
            return None; // other stages of the same path
        }
        patches.push((at, entry));
    }
    let end = walk.finish()?;
    let mut ext = &body[end..];
    while !ext.is_empty() {
        let len = be32(ext, 4)? as usize;
        let data = ext.get(8..8 + len)?;
        match ext.get(..4)? {
            b"TREE" if invalidate_tree(data, changes)? == data => {}
            b"REUC" => {}
            _ => return None,
        }
        ext = &ext[8 + len..];
    }
    Some(patches)
}

/// One entry's place in the index bytes.
struct Entry<'b> {
    end: usize,
    path: &'b [u8],
    stage: u16,
    mode: u32,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The entries of an index's bytes (without its checksum), in order. Each
/// entry is found from the one before by the path length in its flags, so
/// a walk costs a few reads per entry and allocates nothing. An entry that
/// does not fit, or a version other than 2 or 3, ends the walk with
/// [`Walk::bad`] set.
struct Walk<'b> {
    body: &'b [u8],
    at: usize,
    left: usize,
    bad: bool,
}

impl<'b> Walk<'b> {
    fn new(body: &'b [u8]) -> Option<Self> {
        if body.len() < HEADER || &body[..4] != b"DIRC" {
            return None;
        }
        if !(2..=3).contains(&be32(body, 4)?) {
            return None;
        }
        Some(Walk {
            body,
            at: HEADER,
            left: be32(body, 8)? as usize,
            bad: false,
        })
    }

    fn entry(&self) -> Option<Entry<'b>> {
        let (body, at) = (self.body, self.at);
        let flags = u16::from_be_bytes(body.get(at + 60..at + 62)?.try_into().ok()?);
        let fixed = if flags & 0x4000 != 0 { 64 } else { 62 };
        let name_start = at + fixed;
        let len = match usize::from(flags & 0xfff) {
            // 0xfff: the path is that long or longer; its NUL ends it.
            0xfff => body.get(name_start..)?.iter().position(|&c| c == 0)?,
            n => n,
        };
        if body.get(name_start + len) != Some(&0) {
            return None;
        }
        let end = at + ((fixed + len + 8) & !7);
        if end > body.len() {
            return None;
        }
        Some(Entry {
            end,
            path: &body[name_start..name_start + len],
            stage: (flags >> 12) & 3,
            mode: be32(body, at + 24)?,
        })
    }

    /// The entry at the walk's place, if any is left.
    fn peek(&mut self) -> Option<Entry<'b>> {
        if self.left == 0 || self.bad {
            return None;
        }
        let e = self.entry();
        self.bad = e.is_none();
        e
    }

    /// Steps past `e`, the entry [`Walk::peek`] gave.
    fn advance(&mut self, e: &Entry<'_>) {
        self.at = e.end;
        self.left -= 1;
    }

    /// Where the entries end (and the extensions start), walking what is
    /// left; `None` if an entry does not fit.
    fn finish(mut self) -> Option<usize> {
        while self.next().is_some() {}
        (!self.bad).then_some(self.at)
    }
}

impl<'b> Iterator for Walk<'b> {
    type Item = Entry<'b>;

    fn next(&mut self) -> Option<Entry<'b>> {
        let e = self.peek()?;
        self.advance(&e);
        Some(e)
    }
}

/// The paths and modes of the index entries under `prefix` (or equal to
/// it without its trailing `/`), read without libgit2 loading the whole
/// index; `None` if there is no index this reads (the caller asks
/// libgit2).
pub(crate) fn entries_under(git_dir: &Path, prefix: &str) -> Result<Option<Vec<(String, u32)>>> {
    use std::io::Read;
    let path = git_dir.join("index");
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
        Err(e) => return Err(Error::io(&path, e)),
    };
    // Entries are sorted by path, and the prefix asked for (`.local/` of a
    // vault at the top of its repository) usually comes early: its range
    // is in the first bytes of a 2 MB index. The rest is read only when the
    // walk gets there.
    let mut bytes = Vec::new();
    let mut want = 64 * 1024;
    loop {
        let got = (&mut f)
            .take((want - bytes.len()) as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&path, e))?;
        let whole = bytes.len() < want || got == 0;
        // Never the last 20 bytes read: they may be the checksum.
        let Some(body) = bytes.len().checked_sub(HASH).map(|n| &bytes[..n]) else {
            return Ok(None);
        };
        match walk_under(body, prefix) {
            Some(Some(found)) => return Ok(Some(found)),
            // Past the bytes read (or a broken index, once read whole).
            None | Some(None) if whole => return Ok(None),
            _ => want = want.saturating_mul(8),
        }
    }
}

/// The entries under `prefix` in `body`: `None` if `body` is not an index
/// this reads, `Some(None)` if the walk ran out of bytes before it left
/// the prefix's range.
fn walk_under(body: &[u8], prefix: &str) -> Option<Option<Vec<(String, u32)>>> {
    let mut walk = Walk::new(body)?;
    let exact = prefix.trim_end_matches('/').as_bytes();
    let mut found = Vec::new();
    for e in walk.by_ref() {
        if e.path.starts_with(exact) {
            if e.path == exact || e.path.starts_with(prefix.as_bytes()) {
                found.push((String::from_utf8_lossy(e.path).into_owned(), e.mode));
            }
        } else if e.path > exact {
            return Some(Some(found));
        }
    }
    Some((!walk.bad).then_some(found))
}

/// The new index as pieces: runs of the old index's bytes kept as they
/// are, and new bytes (our entries, the header, the extensions).
struct Plan {
    pieces: Vec<Piece>,
}

enum Piece {
    Old(std::ops::Range<usize>),
    New(Vec<u8>),
}

impl Plan {
    /// Writes the new index and its checksum (zeros if `skip_hash`) to `f`
    /// (the lock file), straight from the old index's bytes: no second
    /// copy of them.
    fn write_to(&self, old: &[u8], f: std::fs::File, skip_hash: bool) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(64 * 1024, f);
        let mut sum = Sha1::new();
        for piece in &self.pieces {
            let bytes = match piece {
                Piece::Old(r) => &old[r.clone()],
                Piece::New(b) => b.as_slice(),
            };
            if !skip_hash {
                sum.update(bytes);
            }
            f.write_all(bytes)?;
        }
        if skip_hash {
            f.write_all(&[0; HASH])?;
        } else {
            f.write_all(&sum.finalize())?;
        }
        f.flush()
    }
}

/// How to splice `changes` into the index `bytes`, or `None` if this index
/// is not one we splice.
fn splice(bytes: &[u8], changes: &[Change<'_>]) -> Option<Plan> {
    if bytes.len() < HEADER + HASH {
        return None;
    }
    // The old checksum is not verified, as git itself does not verify it
    // when it reads the index to change it (only `git fsck` does): the
    // index is this machine's own file, and hashing 2 MB once more was a
    // tenth of a `set` on a big vault. Its shape is checked entry by entry.
    let body = &bytes[..bytes.len() - HASH];
    let mut walk = Walk::new(body)?;
    let mut sorted: Vec<&Change<'_>> = changes.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut pieces = vec![Piece::New(Vec::new())]; // the header, once counted
    let mut count = i64::from(be32(body, 8)?);
    // The start of the run of old entries not yet written.
    let mut run = HEADER;
    let mut last: Option<&[u8]> = None;
    for (path, new) in sorted {
        let path = path.as_bytes();
        if last == Some(path) {
            return None; // the same path twice
        }
        last = Some(path);
        while let Some(e) = walk.peek().filter(|e| e.path < path) {
            walk.advance(&e);
        }
        let here = walk.at;
        while let Some(e) = walk.peek().filter(|e| e.path == path) {
            if e.stage != 0 {
                return None; // a conflict: libgit2 settles those
            }
            walk.advance(&e);
            count -= 1;
        }
        pieces.push(Piece::Old(run..here));
        if let Some((oid, md)) = new {
            let mut entry = Vec::with_capacity(path.len() + 72);
            encode(&mut entry, path, *oid, md)?;
            pieces.push(Piece::New(entry));
            count += 1;
        }
        run = walk.at;
    }
    let end = walk.finish()?;
    pieces.push(Piece::Old(run..end));
    let mut header = bytes[..HEADER].to_vec();
    header[8..12].copy_from_slice(&u32::try_from(count).ok()?.to_be_bytes());
    pieces[0] = Piece::New(header);
    pieces.push(Piece::New(extensions(&body[end..], changes)?));
    Some(Plan { pieces })
}

/// A version 2 entry for a regular file (stage 0, no extended flags).
fn encode(out: &mut Vec<u8>, path: &[u8], oid: Oid, md: &std::fs::Metadata) -> Option<()> {
    use std::os::unix::fs::MetadataExt;
    if path.contains(&0) || oid.as_bytes().len() != HASH {
        return None;
    }
    let start = out.len();
    for v in [
        md.ctime() as u32,
        md.ctime_nsec() as u32,
        md.mtime() as u32,
        md.mtime_nsec() as u32,
        md.dev() as u32,
        md.ino() as u32,
        0o100644,
        md.uid(),
        md.gid(),
        md.size() as u32,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(oid.as_bytes());
    out.extend_from_slice(&(path.len().min(0xfff) as u16).to_be_bytes());
    out.extend_from_slice(path);
    let len = (62 + path.len() + 8) & !7;
    out.resize(start + len, 0);
    Some(())
}

/// The extensions to keep, or `None` if one we do not know is required.
fn extensions(mut ext: &[u8], changes: &[Change<'_>]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while !ext.is_empty() {
        let sig = ext.get(..4)?;
        let len = be32(ext, 4)? as usize;
        let data = ext.get(8..8 + len)?;
        match sig {
            b"TREE" => {
                let tree = invalidate_tree(data, changes)?;
                out.extend_from_slice(b"TREE");
                out.extend_from_slice(&u32::try_from(tree.len()).ok()?.to_be_bytes());
                out.extend_from_slice(&tree);
            }
            b"REUC" => out.extend_from_slice(&ext[..8 + len]),
            // Optional (upper case): describes the old file; dropped.
            s if s[0].is_ascii_uppercase() => {}
            _ => return None,
        }
        ext = &ext[8 + len..];
    }
    Some(out)
}

/// The cache-tree extension with every tree above a changed path marked
/// invalid (entry count -1, no id), as git does when it changes an entry.
fn invalidate_tree(data: &[u8], changes: &[Change<'_>]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut at = 0;
    // The stack of (directory prefix, subtrees still to read below it).
    let mut stack: Vec<(Vec<u8>, usize)> = Vec::new();
    while at < data.len() {
        let nul = data[at..].iter().position(|&c| c == 0)?;
        let name = &data[at..at + nul];
        let lf = data[at + nul..].iter().position(|&c| c == b'\n')? + at + nul;
        let counts = std::str::from_utf8(&data[at + nul + 1..lf]).ok()?;
        let (entries, subtrees) = counts.split_once(' ')?;
        let entries: i64 = entries.parse().ok()?;
        let subtrees: usize = subtrees.parse().ok()?;
        let mut next = lf + 1;
        if entries >= 0 {
            next += HASH;
        }
        if next > data.len() {
            return None;
        }
        while stack.last().is_some_and(|(_, left)| *left == 0) {
            stack.pop();
        }
        let mut prefix = match stack.last_mut() {
            Some((p, left)) => {
                *left -= 1;
                let mut p = p.clone();
                p.extend_from_slice(name);
                p.push(b'/');
                p
            }
            None => Vec::new(), // the root
        };
        let touched = changes
            .iter()
            .any(|(p, _)| p.as_bytes().starts_with(&prefix));
        out.extend_from_slice(name);
        out.push(0);
        if touched && entries >= 0 {
            out.extend_from_slice(format!("-1 {subtrees}\n").as_bytes());
        } else {
            out.extend_from_slice(&data[at + nul + 1..next]);
        }
        stack.push((std::mem::take(&mut prefix), subtrees));
        at = next;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Spliced entries read back by git itself: staged as intended, the
    /// user's staged file kept, and the cache tree above them invalidated
    /// (or `git write-tree` would answer the old tree).
    #[test]
    fn git_reads_a_spliced_index_and_its_cache_tree_is_invalidated() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git(d, &["init", "-q"]);
        for (f, c) in [
            ("a.txt", "a"),
            ("d/b.txt", "b"),
            ("d/e/c.txt", "c"),
            ("z.txt", "z"),
        ] {
            std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            std::fs::write(d.join(f), c).unwrap();
        }
        git(d, &["add", "-A"]);
        git(d, &["commit", "-qm", "one"]);
        // The user stages a change of their own.
        std::fs::write(d.join("z.txt"), "user").unwrap();
        git(d, &["add", "z.txt"]);
        // Ours: a changed file, a new one, a removed one.
        std::fs::write(d.join("d/b.txt"), "b2").unwrap();
        std::fs::write(d.join("d/new.txt"), "n").unwrap();
        std::fs::remove_file(d.join("a.txt")).unwrap();
        let repo = git2::Repository::open(d).unwrap();
        let blob = |f: &str| repo.blob(&std::fs::read(d.join(f)).unwrap()).unwrap();
        let (b, n) = (blob("d/b.txt"), blob("d/new.txt"));
        let (mb, mn) = (
            std::fs::metadata(d.join("d/b.txt")).unwrap(),
            std::fs::metadata(d.join("d/new.txt")).unwrap(),
        );
        let changes: Vec<Change<'_>> = vec![
            ("d/new.txt", Some((n, &mn))),
            ("a.txt", None),
            ("d/b.txt", Some((b, &mb))),
        ];
        assert!(update(&d.join(".git"), &changes, false).unwrap());
        let status = git(d, &["status", "--porcelain"]);
        assert_eq!(status, "D  a.txt\nM  d/b.txt\nA  d/new.txt\nM  z.txt\n");
        let tree = git(d, &["write-tree"]);
        let listed = git(d, &["ls-tree", "-r", "--name-only", tree.trim()]);
        assert_eq!(listed, "d/b.txt\nd/e/c.txt\nd/new.txt\nz.txt\n");
        let shown = git(d, &["show", &format!("{}:d/b.txt", tree.trim())]);
        assert_eq!(shown, "b2");
        // A conflict on one of our paths is left to libgit2.
        let bytes = std::fs::read(d.join(".git/index")).unwrap();
        let mut conflicted = bytes.clone();
        let at = HEADER; // the first entry: d/b.txt
        conflicted[at + 60] |= 0x10;
        let n = conflicted.len() - HASH;
        let sum = Sha1::digest(&conflicted[..n]);
        conflicted[n..].copy_from_slice(&sum);
        assert!(splice(&bytes, &changes).is_some());
        assert!(splice(&conflicted, &changes).is_none());
        // Nor is an index whose entries do not fit.
        let mut corrupt = bytes;
        corrupt[8..12].copy_from_slice(&1_000_000u32.to_be_bytes()); // the entry count
        assert!(splice(&corrupt, &changes).is_none());
    }

    /// Splices at the first entry, the last, between entries and past the
    /// end, adding, replacing and removing, read back by git: the same
    /// entries as libgit2 writes for the same changes.
    #[test]
    fn splices_anywhere_in_the_index_agree_with_libgit2() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git(d, &["init", "-q"]);
        let mut files: Vec<String> = (0..40).map(|i| format!("d{}/f{i:02}.txt", i % 3)).collect();
        files.push("a.txt".into());
        files.push(format!("z/{}.txt", "long".repeat(40)));
        for f in &files {
            std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            std::fs::write(d.join(f), f).unwrap();
        }
        git(d, &["add", "-A"]);
        git(d, &["commit", "-qm", "one"]);
        let repo = git2::Repository::open(d).unwrap();
        let pristine = std::fs::read(d.join(".git/index")).unwrap();
        let cases: &[&[(&str, bool)]] = &[
            &[("a.txt", false)],
            &[("0first.txt", true)],
            &[("zz/last.txt", true), ("a.txt", true)],
            &[
                ("d1/f01.txt", false),
                ("d1/f04.txt", true),
                ("d1/f05.txt", true),
            ],
            &[
                ("d2/f02.txt", true),
                ("d0/new.txt", true),
                ("z/x.txt", true),
            ],
        ];
        for (i, case) in cases.iter().enumerate() {
            // With the trailing hash, and without (index.skipHash).
            let skip = i % 2 == 1;
            for (f, keep) in *case {
                if *keep {
                    std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
                    std::fs::write(d.join(f), format!("{f} changed")).unwrap();
                }
            }
            let mds: Vec<Option<(Oid, std::fs::Metadata)>> = case
                .iter()
                .map(|(f, keep)| {
                    keep.then(|| {
                        let oid = repo.blob(&std::fs::read(d.join(f)).unwrap()).unwrap();
                        (oid, std::fs::metadata(d.join(f)).unwrap())
                    })
                })
                .collect();
            let changes: Vec<Change<'_>> = case
                .iter()
                .zip(&mds)
                .map(|((f, _), m)| (*f, m.as_ref().map(|(o, md)| (*o, md))))
                .collect();
            // libgit2's way, on the pristine index.
            std::fs::write(d.join(".git/index"), &pristine).unwrap();
            let mut index = repo.index().unwrap();
            index.read(true).unwrap();
            for (f, m) in case.iter().zip(&mds) {
                match m {
                    None => index.remove_path(Path::new(f.0)).unwrap(),
                    Some((oid, _)) => {
                        let mut e = index.get_path(Path::new("a.txt"), 0).unwrap();
                        e.id = *oid;
                        e.path = f.0.as_bytes().to_vec();
                        e.flags = f.0.len() as u16;
                        index.add(&e).unwrap();
                    }
                }
            }
            index.write().unwrap();
            let theirs = git(d, &["ls-files", "-s"]);
            // Ours.
            std::fs::write(d.join(".git/index"), &pristine).unwrap();
            assert!(update(&d.join(".git"), &changes, skip).unwrap(), "{case:?}");
            assert_eq!(git(d, &["ls-files", "-s"]), theirs, "{case:?}");
            // libgit2 verifies the checksum as it reads (zeros: none).
            let mut ours = repo.index().unwrap();
            ours.read(true).unwrap();
            assert_eq!(ours.len(), index.len(), "{case:?}");
            let bytes = std::fs::read(d.join(".git/index")).unwrap();
            assert_eq!(bytes[bytes.len() - HASH..] == [0; HASH], skip, "{case:?}");
            // And git, which checks it in fsck (zeros: since 2.40).
            if !skip || crate::git::remote::git_version().is_some_and(|v| v >= (2, 40)) {
                git(d, &["fsck", "--no-dangling", "--no-progress"]);
            }
        }
    }

    /// An index larger than the first read: a prefix early, late, absent
    /// and past the end reads the same entries as libgit2 lists.
    #[test]
    fn entries_under_reads_as_much_of_a_big_index_as_it_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git(d, &["init", "-q"]);
        for dir in ["a", "m", "z"] {
            std::fs::create_dir_all(d.join(dir)).unwrap();
            for i in 0..1000 {
                std::fs::write(d.join(format!("{dir}/file-{i:04}.txt")), "x").unwrap();
            }
        }
        git(d, &["add", "-A"]);
        assert!(std::fs::metadata(d.join(".git/index")).unwrap().len() > 3 * 64 * 1024);
        let repo = git2::Repository::open(d).unwrap();
        let index = repo.index().unwrap();
        for prefix in ["a/", "m/", "z/", "q/", "zz/", "a/file-0999.txt/"] {
            let theirs: Vec<(String, u32)> = index
                .iter()
                .filter(|e| {
                    e.path.starts_with(prefix.as_bytes())
                        || e.path == prefix.trim_end_matches('/').as_bytes()
                })
                .map(|e| (String::from_utf8(e.path).unwrap(), e.mode))
                .collect();
            let ours = entries_under(&d.join(".git"), prefix).unwrap().unwrap();
            assert_eq!(ours, theirs, "{prefix}");
        }
    }

    /// A change that only replaces entries is written over them in the
    /// index itself once the trailing hash is zeros and the trees above
    /// them are already invalid; anything else is spliced into a new file.
    /// Either way git and libgit2 read what libgit2 itself would write.
    #[test]
    fn replacing_entries_writes_them_in_place_when_nothing_else_changes() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git(d, &["init", "-q"]);
        for f in ["a.txt", "d/b.txt", "d/e/c.txt", "z.txt"] {
            std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            std::fs::write(d.join(f), f).unwrap();
        }
        git(d, &["add", "-A"]);
        git(d, &["commit", "-qm", "one"]); // a valid cache tree
        let repo = git2::Repository::open(d).unwrap();
        let inode = || std::fs::metadata(d.join(".git/index")).unwrap().ino();
        let mut n = 0;
        let mut replace = |f: &str| -> bool {
            n += 1;
            std::fs::write(d.join(f), format!("{f} {n}")).unwrap();
            let oid = repo.blob(&std::fs::read(d.join(f)).unwrap()).unwrap();
            let md = std::fs::metadata(d.join(f)).unwrap();
            let before = inode();
            assert!(update(&d.join(".git"), &[(f, Some((oid, &md)))], true).unwrap());
            let staged = git(d, &["ls-files", "-s", f]);
            assert!(staged.contains(&oid.to_string()), "{staged}");
            let mut index = repo.index().unwrap();
            index.read(true).unwrap();
            assert_eq!(index.len(), 4);
            before == inode()
        };
        // The first: a real trailing hash and a valid cache tree, spliced.
        assert!(!replace("d/b.txt"));
        // Then in place: the trees above are invalid now.
        assert!(replace("d/b.txt"));
        assert!(replace("z.txt"));
        // git makes the cache tree valid again: spliced once more.
        git(d, &["write-tree"]);
        assert!(!replace("d/e/c.txt"));
        assert!(replace("d/e/c.txt"));
        // What git commits from this index is what is on disk.
        git(d, &["commit", "-qam", "two"]);
        assert_eq!(git(d, &["status", "--porcelain"]), "");
        assert_eq!(git(d, &["show", "HEAD:d/e/c.txt"]), "d/e/c.txt 5");
    }
}
