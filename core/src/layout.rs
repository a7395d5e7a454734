//! Where a secret's files stand under `secrets/`, by format version.
//!
//! Format 1 keeps a group's secrets in one directory:
//! `secrets/<group>/<name>.age`. Git stores a directory as one tree object,
//! so every `set` rewrote a tree of two entries per secret of the group
//! (20,000 entries, ~1 MB, for 10,000 secrets). Format 2 fans them out:
//! `secrets/<group>/_<xx>/<name>.age`, where `xx` is the first byte of the
//! SHA-256 of the name (relative to its group), in hex. A `set` then rewrites
//! the group's tree of at most 256 buckets and one bucket of a few dozen
//! entries, whatever the vault's size up to ~100,000 secrets per group.
//!
//! A bucket's name starts with `_`, which no name segment may: a path can
//! never be read as both layouts, so readers of git trees (history, pull
//! verification, merge) accept either and a tree that spans the migration
//! reads as one history. A file in a bucket that is not its name's bucket
//! belongs nowhere and is never read as a secret.

use std::path::PathBuf;

use crate::names::{GroupName, SecretPath};

/// The first format whose secrets are fanned out.
pub const FANOUT_FORMAT: u32 = 2;

/// The two files of a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFile {
    /// `<name>.age`: the value.
    Value,
    /// `<name>.meta.yaml`: its signed metadata.
    Meta,
}

impl SecretFile {
    /// The file name's suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            SecretFile::Value => ".age",
            SecretFile::Meta => ".meta.yaml",
        }
    }
}

/// The bucket directory (`_xx`) of a name within its group.
pub fn bucket(name: &str) -> String {
    // Only the first byte is needed: no 64-digit hex string per name.
    use sha2::Digest;
    format!("_{:02x}", sha2::Sha256::digest(name.as_bytes())[0])
}

/// Whether `dir` is shaped like a bucket directory (`_` and two lowercase
/// hex digits).
pub fn is_bucket(dir: &str) -> bool {
    dir.len() == 3
        && dir.starts_with('_')
        && dir[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A path within a group past its bucket directory, if it starts with one
/// (format 2), else the path itself (format 1).
pub fn past_bucket(rel: &str) -> &str {
    match rel.split_once('/') {
        Some((b, rest)) if is_bucket(b) => rest,
        _ => rel,
    }
}

/// The path of one of a secret's files relative to `secrets/`, in the
/// layout of format `format`.
pub fn rel(format: u32, p: &SecretPath, file: SecretFile) -> PathBuf {
    let name = format!("{}{}", p.name(), file.suffix());
    let g = PathBuf::from(p.group().as_str());
    if format >= FANOUT_FORMAT {
        g.join(bucket(p.name())).join(name)
    } else {
        g.join(name)
    }
}

/// Both layouts' paths of a file, relative to `secrets/`: what a reader of
/// a git tree that may predate the migration looks for.
pub fn rels_any(p: &SecretPath, file: SecretFile) -> [PathBuf; 2] {
    [rel(FANOUT_FORMAT, p, file), rel(1, p, file)]
}

/// Reads a path relative to `secrets/` (`/`-separated) as a secret's file,
/// in either layout: `None` for anything else, including a file in a
/// bucket that is not its name's.
pub fn parse(rel: &str) -> Option<(SecretPath, SecretFile)> {
    let (stem, file) = if let Some(s) = rel.strip_suffix(".meta.yaml") {
        (s, SecretFile::Meta)
    } else {
        (rel.strip_suffix(".age")?, SecretFile::Value)
    };
    let (g, rest) = stem.split_once('/')?;
    let g: GroupName = g.parse().ok()?;
    let name = match rest.split_once('/') {
        Some((b, name)) if b.starts_with('_') => {
            if !is_bucket(b) || bucket(name) != b {
                return None;
            }
            name
        }
        _ => rest,
    };
    Some((SecretPath::new(g, name).ok()?, file))
}

/// The secret whose value file is at `rel` (relative to its group's
/// directory, `/`-separated) when that is the place format `format` gives
/// its name; `None` for any other file. What [`placed`] answers for a
/// value file, hashing the name once: a listing calls this per file.
pub fn value_at(format: u32, group: &GroupName, rel: &str) -> Option<SecretPath> {
    let stem = rel.strip_suffix(SecretFile::Value.suffix())?;
    let name = if format >= FANOUT_FORMAT {
        let (b, name) = stem.split_once('/')?;
        if !is_bucket(b) || bucket(name) != b {
            return None;
        }
        name
    } else {
        stem
    };
    // A v1 name never starts with `_` (no segment may), so a bucket
    // directory is never read as one.
    SecretPath::new(group.clone(), name).ok()
}

/// Like [`parse`], only for a file at the place format `format` gives
/// its name.
pub fn placed(format: u32, rel: &str) -> Option<(SecretPath, SecretFile)> {
    parse(rel).filter(|(p, f)| self::rel(format, p, *f) == std::path::Path::new(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(s: &str) -> SecretPath {
        s.parse().unwrap()
    }

    #[test]
    fn both_layouts_parse_and_a_wrong_bucket_does_not() {
        let p = sp("g/db/password");
        let b = bucket("db/password");
        assert!(is_bucket(&b));
        for (format, want) in [
            (1, "g/db/password.age".to_string()),
            (2, format!("g/{b}/db/password.age")),
        ] {
            let r = rel(format, &p, SecretFile::Value);
            assert_eq!(r.to_str().unwrap(), want);
            assert_eq!(parse(&want), Some((p.clone(), SecretFile::Value)));
        }
        let meta = format!("g/{b}/db/password.meta.yaml");
        assert_eq!(parse(&meta), Some((p.clone(), SecretFile::Meta)));
        let other = if b == "_00" { "_01" } else { "_00" };
        assert_eq!(parse(&format!("g/{other}/db/password.age")), None);
        assert_eq!(parse(&format!("g/{b}/../x.age")), None);
        assert_eq!(parse("g/_zz/x.age"), None);
        assert_eq!(parse("g/x.txt"), None);
        let g: GroupName = "g".parse().unwrap();
        for format in [1, 2] {
            for rel in [
                format!("{b}/db/password.age"),
                "db/password.age".into(),
                meta.clone(),
            ] {
                let want = placed(format, &format!("g/{rel}")).map(|(p, _)| p);
                let want = want.filter(|_| rel.ends_with(".age"));
                assert_eq!(value_at(format, &g, &rel), want, "{format} {rel}");
            }
        }
        assert_eq!(value_at(2, &g, &format!("{other}/db/password.age")), None);
        // `_` never starts a name segment: a bucket is never a v1 name.
        assert!(SecretPath::new("g".parse().unwrap(), "_00/x").is_err());
    }
}
