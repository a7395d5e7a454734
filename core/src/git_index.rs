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

/// Applies `changes` (sorted or not, each path once) to `git_dir`'s index.
/// `Ok(false)`: the index is in a form handled only by libgit2; nothing
/// was written.
pub(crate) fn update(git_dir: &Path, changes: &[Change<'_>]) -> Result<bool> {
    let path = git_dir.join("index");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let Some(out) = splice(&bytes, changes) else {
        return Ok(false);
    };
    // git's protocol: whoever creates index.lock owns the index until it
    // renames the lock over it.
    let lock = git_dir.join("index.lock");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock)
        .map_err(|e| Error::Git(format!("cannot lock git's index ({}): {e}", lock.display())))?;
    let written = f.write_all(&out).and_then(|()| f.flush());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&lock, &path)) {
        let _ = std::fs::remove_file(&lock);
        return Err(Error::io(&path, e));
    }
    Ok(true)
}

/// One entry's place in the index bytes.
struct Entry<'b> {
    start: usize,
    end: usize,
    path: &'b [u8],
    stage: u16,
    mode: u32,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The entries of an index's bytes (without its checksum) and where its
/// extensions start; `None` for a version or shape we do not read.
fn parse(body: &[u8]) -> Option<(Vec<Entry<'_>>, usize)> {
    if body.len() < HEADER || &body[..4] != b"DIRC" {
        return None;
    }
    let version = be32(body, 4)?;
    if !(2..=3).contains(&version) {
        return None;
    }
    let count = be32(body, 8)? as usize;
    let mut entries = Vec::with_capacity(count.min(body.len() / 62));
    let mut at = HEADER;
    for _ in 0..count {
        let flags = u16::from_be_bytes(body.get(at + 60..at + 62)?.try_into().ok()?);
        let fixed = if flags & 0x4000 != 0 { 64 } else { 62 };
        let name_start = at + fixed;
        let nul = body.get(name_start..)?.iter().position(|&c| c == 0)?;
        let end = at + ((fixed + nul + 8) & !7);
        if end > body.len() {
            return None;
        }
        entries.push(Entry {
            start: at,
            end,
            path: &body[name_start..name_start + nul],
            stage: (flags >> 12) & 3,
            mode: be32(body, at + 24)?,
        });
        at = end;
    }
    Some((entries, at))
}

/// The paths and modes of the index entries under `prefix` (or equal to
/// it without its trailing `/`), read without libgit2 loading the whole
/// index; `None` if there is no index this reads (the caller asks
/// libgit2).
pub(crate) fn entries_under(git_dir: &Path, prefix: &str) -> Result<Option<Vec<(String, u32)>>> {
    let path = git_dir.join("index");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let Some((entries, _)) = bytes
        .len()
        .checked_sub(HASH)
        .and_then(|n| parse(&bytes[..n]))
    else {
        return Ok(None);
    };
    let exact = prefix.trim_end_matches('/').as_bytes();
    let start = entries.partition_point(|e| e.path < exact);
    Ok(Some(
        entries[start..]
            .iter()
            .take_while(|e| e.path.starts_with(exact))
            .filter(|e| e.path == exact || e.path.starts_with(prefix.as_bytes()))
            .map(|e| (String::from_utf8_lossy(e.path).into_owned(), e.mode))
            .collect(),
    ))
}

/// The new index's bytes, or `None` if this index is not one we splice.
fn splice(bytes: &[u8], changes: &[Change<'_>]) -> Option<Vec<u8>> {
    if bytes.len() < HEADER + HASH || &bytes[..4] != b"DIRC" {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - HASH);
    if Sha1::digest(body).as_slice() != sum {
        return None;
    }
    let (entries, at) = parse(body)?;
    let extensions = extensions(&body[at..], changes)?;

    let mut sorted: Vec<&Change<'_>> = changes.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = Vec::with_capacity(bytes.len() + changes.len() * 128);
    out.extend_from_slice(&bytes[..HEADER]);
    let mut n = 0u32;
    let mut i = 0;
    for (path, new) in sorted {
        let path = path.as_bytes();
        let pos = entries.partition_point(|e| e.path < path);
        if pos < i {
            return None; // the same path twice
        }
        for e in &entries[i..pos] {
            out.extend_from_slice(&body[e.start..e.end]);
            n += 1;
        }
        i = pos;
        while let Some(e) = entries.get(i).filter(|e| e.path == path) {
            if e.stage != 0 {
                return None; // a conflict: libgit2 settles those
            }
            i += 1;
        }
        if let Some((oid, md)) = new {
            encode(&mut out, path, *oid, md)?;
            n += 1;
        }
    }
    for e in &entries[i..] {
        out.extend_from_slice(&body[e.start..e.end]);
        n += 1;
    }
    out[8..12].copy_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&extensions);
    let sum = Sha1::digest(&out);
    out.extend_from_slice(&sum);
    Some(out)
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
        assert!(update(&d.join(".git"), &changes).unwrap());
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
        // A corrupt index is not spliced either.
        let mut corrupt = bytes;
        corrupt[HEADER + 1] ^= 1;
        assert!(splice(&corrupt, &changes).is_none());
    }
}
