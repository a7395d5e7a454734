//! A group's keyring (format version 2): `groups/<group>.key.age` holds the
//! group's identity of every generation, newest first, as one age identity
//! file (`# public key: …` comment, then the `AGE-SECRET-KEY-1…` line, per
//! generation) encrypted to the group's current readers.
//!
//! Revocation is lazy: it adds a generation to this one file and rewrites
//! no secret, so a secret stays encrypted to whichever generation it was set
//! at. Because the plaintext is an ordinary age identity file, the two-step
//! `age` recipe (`age -d -i <(age -d -i OWNER_KEY G.key.age) NAME.age`) opens
//! a value of any generation. A version 1 key file (one identity) is a
//! keyring of one, so it is read as it is.

use age::secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use zeroize::Zeroizing;

use crate::crypto::{self, Identity, Recipient};
use crate::error::{Error, Result};

/// The most generations a keyring may hold: a bound on what a planted file
/// can make a reader try, far above any real vault's revocations.
const MAX_GENERATIONS: usize = 4096;

/// A group's identities, newest first. No `Debug`: it holds private keys.
pub struct Keyring(Vec<Identity>);

impl Keyring {
    /// A keyring of one fresh identity (a new group).
    pub fn generate() -> Self {
        Keyring(vec![Identity::generate()])
    }

    /// Decrypts a keyring file with any of `ids`.
    pub fn open(ids: &[&Identity], ciphertext: &[u8], path: &Path) -> Result<Self> {
        let plain = crypto::decrypt(ids, ciphertext, path)?;
        let text = std::str::from_utf8(plain.expose_secret())
            .map_err(|_| Error::corrupt(path, "does not hold age identities"))?;
        Self::parse(text, path)
    }

    /// Parses the text of an identity file with one or more identities.
    fn parse(text: &str, path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with("AGE-SECRET-KEY-1") {
                if out.len() == MAX_GENERATIONS {
                    return Err(Error::corrupt(path, "holds too many group keys"));
                }
                out.push(Identity::parse(line, &source)?);
            }
        }
        if out.is_empty() {
            return Err(Error::corrupt(path, "does not hold an age identity"));
        }
        Ok(Keyring(out))
    }

    /// The newest identity: the one new values are encrypted to.
    pub fn newest(&self) -> &Identity {
        &self.0[0]
    }

    /// Every identity, newest first.
    pub fn all(&self) -> Vec<&Identity> {
        self.0.iter().collect()
    }

    /// How many generations it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none (never true of an opened keyring).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This keyring with `newest` in front.
    pub fn with_newest(mut self, newest: Identity) -> Self {
        self.0.insert(0, newest);
        self
    }

    /// Adds the identities of `other` this keyring lacks, after its own (a
    /// merge: the other side's generations).
    pub fn absorb(&mut self, other: Keyring) {
        // Each recipient derived once: a keyring can hold thousands.
        let mut have: std::collections::HashSet<String> =
            self.0.iter().map(|k| k.recipient().as_string()).collect();
        for id in other.0 {
            if have.insert(id.recipient().as_string()) {
                self.0.push(id);
            }
        }
    }

    /// The keyring as an age identity file, in one buffer wiped on drop
    /// (sized first, so no grown-out-of copy is left unwiped).
    fn to_text(&self) -> Zeroizing<String> {
        let parts: Vec<SecretString> = self.0.iter().map(Identity::to_file_contents).collect();
        let len = parts.iter().map(|p| p.expose_secret().len()).sum();
        let mut s = Zeroizing::new(String::with_capacity(len));
        for p in &parts {
            s.push_str(p.expose_secret());
        }
        s
    }

    /// Encrypts the keyring to `recipients`.
    pub fn seal(&self, recipients: &[&Recipient]) -> Result<Vec<u8>> {
        crypto::encrypt(recipients, self.to_text().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_and_a_version_1_file_is_a_keyring_of_one() {
        let owner = Identity::generate();
        let r = owner.recipient();
        let (a, b) = (Identity::generate(), Identity::generate());
        let (ra, rb) = (a.recipient().as_string(), b.recipient().as_string());
        // A version 1 key file: one identity as `encrypt_identity` writes it.
        let v1 = crypto::encrypt_identity(&[&r], &a).unwrap();
        let ring = Keyring::open(&[&owner], &v1, Path::new("g")).unwrap();
        assert_eq!(ring.len(), 1);
        let ring = ring.with_newest(b);
        let ct = ring.seal(&[&r]).unwrap();
        let back = Keyring::open(&[&owner], &ct, Path::new("g")).unwrap();
        let got: Vec<String> = back
            .all()
            .iter()
            .map(|i| i.recipient().as_string())
            .collect();
        assert_eq!(got, vec![rb.clone(), ra.clone()]);
        // A version 1 reader takes the first identity: the newest.
        let first = crypto::decrypt_identity(&[&owner], &ct, Path::new("g")).unwrap();
        assert_eq!(first.recipient().as_string(), rb);
        // Absorbing is a union, no duplicates.
        let mut merged = Keyring::open(&[&owner], &ct, Path::new("g")).unwrap();
        merged.absorb(Keyring::open(&[&owner], &v1, Path::new("g")).unwrap());
        assert_eq!(merged.len(), 2);
        assert!(Keyring::open(&[&Identity::generate()], &ct, Path::new("g")).is_err());
    }
}
