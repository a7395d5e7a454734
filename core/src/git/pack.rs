//! Writes many blobs into a git repository as one pack. libgit2 stores each
//! new object as a loose file (a file created per object), and its in-memory
//! alternative re-scans the pack directory for every object it is given and
//! searches for deltas that encrypted files never have. A pack of whole,
//! compressed blobs is all a bulk commit needs; libgit2's indexer then
//! checks it and writes its index.

use std::io::Write;

use flate2::Compression;
use flate2::write::ZlibEncoder;
use git2::{ObjectType, Odb, Oid};
use rayon::prelude::*;
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};

/// The git object type number of a blob in a pack.
const OBJ_BLOB: u8 = 3;

/// Stores `blobs` in the repository's object database as one pack and
/// returns their ids, in order.
pub fn write_blobs(odb: &Odb<'_>, blobs: &[&[u8]]) -> Result<Vec<Oid>> {
    let count = u32::try_from(blobs.len())
        .map_err(|_| Error::Git("too many objects for one pack".into()))?;
    let entries: Vec<(Oid, Vec<u8>)> = blobs
        .par_iter()
        .map(|b| {
            let oid = Oid::hash_object(ObjectType::Blob, b)?;
            let mut entry = object_header(OBJ_BLOB, b.len());
            let mut z = ZlibEncoder::new(entry, Compression::fast());
            z.write_all(b)
                .map_err(|e| Error::Git(format!("cannot compress: {e}")))?;
            entry = z
                .finish()
                .map_err(|e| Error::Git(format!("cannot compress: {e}")))?;
            Ok((oid, entry))
        })
        .collect::<Result<_>>()?;
    let mut pack =
        Vec::with_capacity(12 + entries.iter().map(|(_, e)| e.len()).sum::<usize>() + 20);
    pack.extend_from_slice(b"PACK");
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&count.to_be_bytes());
    for (_, e) in &entries {
        pack.extend_from_slice(e);
    }
    let sum = Sha1::digest(&pack);
    pack.extend_from_slice(&sum);
    let mut writer = odb.packwriter()?;
    writer
        .write_all(&pack)
        .map_err(|e| Error::Git(format!("cannot write pack: {e}")))?;
    writer.commit()?;
    Ok(entries.into_iter().map(|(oid, _)| oid).collect())
}

/// A pack entry header: type and size, the size in little-endian groups of
/// seven bits after the first four.
fn object_header(kind: u8, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut size = size;
    let mut byte = (kind << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size > 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_blobs_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let odb = repo.odb().unwrap();
        let blobs: Vec<Vec<u8>> = (0..300)
            .map(|i: u32| (0..(i * 37 % 5000)).map(|j| (j * 7 + i) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        let oids = write_blobs(&odb, &refs).unwrap();
        for (oid, b) in oids.iter().zip(&blobs) {
            assert_eq!(repo.find_blob(*oid).unwrap().content(), b.as_slice());
        }
        assert_eq!(object_header(3, 15), vec![0x3f]);
        assert_eq!(object_header(3, 16), vec![0xb0, 0x01]);
    }
}
