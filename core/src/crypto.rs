//! age encryption, owner signing keys and the signatures over the manifest
//! and each secret's metadata.

use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use age::secrecy::{ExposeSecret, SecretBox, SecretString};
use age::x25519;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A secret value: bytes, zeroized on drop, never printed.
pub type SecretValue = SecretBox<Vec<u8>>;

/// An age X25519 identity (a private key). No `Debug`, no `Display`.
pub struct Identity(x25519::Identity);

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        Identity(x25519::Identity::generate())
    }

    /// Parses the text of an age identity file or a bare `AGE-SECRET-KEY-1…`
    /// string. `source` names where it came from, for the error.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let bad = || Error::BadKey {
            source: source.to_owned(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .ok_or_else(bad)?;
        x25519::Identity::from_str(line)
            .map(Identity)
            .map_err(|_| bad())
    }

    /// Reads an identity file.
    pub fn read_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
        Self::parse(&text, &path.display().to_string())
    }

    /// The public recipient, `age1…`.
    pub fn recipient(&self) -> Recipient {
        Recipient(self.0.to_public())
    }

    /// The identity as an age identity file (`# public key: …` header and the
    /// secret line), as `age-keygen` writes it.
    pub fn to_file_contents(&self) -> SecretString {
        let key = self.0.to_string();
        SecretString::from(format!(
            "# public key: {}\n{}\n",
            self.recipient(),
            key.expose_secret()
        ))
    }

    /// The bare `AGE-SECRET-KEY-1…` string.
    pub fn to_secret_string(&self) -> SecretString {
        self.0.to_string()
    }

    /// The owner's Ed25519 signing key, derived from this identity with
    /// HKDF-SHA256 under a domain-separation label, so one backed-up age key
    /// is all an owner needs.
    pub fn signing_key(&self) -> OwnerSigningKey {
        OwnerSigningKey(self.derive_ed25519(OWNER_SIGNING_LABEL))
    }

    /// An agent's Ed25519 signing key (for the tokens it mints itself),
    /// derived from its identity like an owner's but under a label of its
    /// own: the same age key never yields the same signing key for both.
    pub fn agent_signing_key(&self) -> AgentSigningKey {
        AgentSigningKey(self.derive_ed25519(AGENT_SIGNING_LABEL))
    }

    /// The broker's Ed25519 signing key (for the OAuth state it writes,
    /// `broker/state/`), derived from the broker's identity under a label
    /// of its own, so it never equals an owner's or an agent's key.
    pub fn broker_signing_key(&self) -> AgentSigningKey {
        AgentSigningKey(self.derive_ed25519(BROKER_SIGNING_LABEL))
    }

    fn derive_ed25519(&self, label: &[u8]) -> SigningKey {
        let ikm = self.0.to_string();
        let hk =
            hkdf::Hkdf::<Sha256>::new(Some(b"agent-vault/v1/salt"), ikm.expose_secret().as_bytes());
        let mut seed = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        hk.expand(label, seed.as_mut()).unwrap_or_default();
        SigningKey::from_bytes(&seed)
    }
}

const OWNER_SIGNING_LABEL: &[u8] = b"agent-vault/v1/owner-signing-key/ed25519";
const AGENT_SIGNING_LABEL: &[u8] = b"agent-vault/v1/agent-signing-key/ed25519";
const BROKER_SIGNING_LABEL: &[u8] = b"agent-vault/v1/broker-signing-key/ed25519";

/// An age X25519 recipient (a public key).
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient(x25519::Recipient);

impl Recipient {
    /// The `age1…` string.
    pub fn as_string(&self) -> String {
        self.0.to_string()
    }
}

impl FromStr for Recipient {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        x25519::Recipient::from_str(s.trim())
            .map(Recipient)
            .map_err(|_| Error::InvalidInput(format!("{s:?} is not an age X25519 recipient")))
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An owner's Ed25519 signing key.
pub struct OwnerSigningKey(SigningKey);

impl OwnerSigningKey {
    /// The public half, base64.
    pub fn public(&self) -> String {
        B64.encode(self.0.verifying_key().as_bytes())
    }

    /// Signs `message` under `domain`; returns the base64 signature.
    pub fn sign(&self, domain: &str, message: &[u8]) -> String {
        B64.encode(self.0.sign(&framed(domain, message)).to_bytes())
    }
}

/// An agent's Ed25519 signing key (see [`Identity::agent_signing_key`]);
/// the broker's is of the same kind ([`Identity::broker_signing_key`]).
pub struct AgentSigningKey(SigningKey);

impl AgentSigningKey {
    /// The public half, base64 (as the manifest's agent entry holds it).
    pub fn public(&self) -> String {
        B64.encode(self.0.verifying_key().as_bytes())
    }

    /// Signs `message` under `domain`; returns the raw 64-byte signature.
    pub fn sign_raw(&self, domain: &str, message: &[u8]) -> [u8; 64] {
        self.0.sign(&framed(domain, message)).to_bytes()
    }
}

/// Domain separation: a signature for one purpose never verifies for another.
fn framed(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 1 + message.len());
    m.extend_from_slice(domain.as_bytes());
    m.push(0);
    m.extend_from_slice(message);
    m
}

/// Whether `public` is a base64 Ed25519 public key.
pub fn valid_signing_key(public: &str) -> bool {
    B64.decode(public)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .is_some_and(|b| VerifyingKey::from_bytes(&b).is_ok())
}

/// Verifies a base64 signature by a base64 public key.
pub fn verify(public: &str, domain: &str, message: &[u8], signature: &str) -> bool {
    let Ok(sig) = B64.decode(signature) else {
        return false;
    };
    verify_raw(public, domain, message, &sig)
}

/// Verifies a raw signature (64 bytes) by a base64 public key.
pub fn verify_raw(public: &str, domain: &str, message: &[u8], signature: &[u8]) -> bool {
    let Ok(pk) = B64.decode(public) else {
        return false;
    };
    let Ok(pk) = <[u8; 32]>::try_from(pk.as_slice()) else {
        return false;
    };
    let Ok(vk) = VerifyingKey::from_bytes(&pk) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    vk.verify_strict(&framed(domain, message), &sig).is_ok()
        && vk.verify(&framed(domain, message), &sig).is_ok()
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Encrypts `plaintext` to `recipients` as a binary age file.
pub fn encrypt(recipients: &[&Recipient], plaintext: &[u8]) -> Result<Vec<u8>> {
    let enc =
        age::Encryptor::with_recipients(recipients.iter().map(|r| &r.0 as &dyn age::Recipient))
            .map_err(|e| Error::InvalidInput(format!("cannot encrypt: {e}")))?;
    let mut out = Vec::with_capacity(plaintext.len() + 200);
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| Error::InvalidInput(format!("cannot encrypt: {e}")))?;
    w.write_all(plaintext)
        .and_then(|()| w.finish().map(|_| ()))
        .map_err(|e| Error::InvalidInput(format!("cannot encrypt: {e}")))?;
    Ok(out)
}

/// Decrypts an age file (binary or ASCII-armored) with any of `identities`.
/// `path` names the file in errors.
pub fn decrypt(identities: &[&Identity], ciphertext: &[u8], path: &Path) -> Result<SecretValue> {
    let fail = |reason: String| Error::Decrypt {
        path: path.to_owned(),
        reason,
    };
    let reader = age::armor::ArmoredReader::new(ciphertext);
    let dec = age::Decryptor::new_buffered(reader).map_err(|e| fail(describe(&e)))?;
    let mut r = dec
        .decrypt(identities.iter().map(|i| &i.0 as &dyn age::Identity))
        .map_err(|e| fail(describe(&e)))?;
    let mut out = Vec::new();
    if let Err(e) = r.read_to_end(&mut out) {
        zeroize::Zeroize::zeroize(&mut out);
        return Err(fail(format!("the file is truncated or corrupted ({e})")));
    }
    Ok(SecretBox::new(Box::new(out)))
}

fn describe(e: &age::DecryptError) -> String {
    match e {
        age::DecryptError::NoMatchingKeys => "it is not encrypted to the key given".into(),
        age::DecryptError::InvalidHeader | age::DecryptError::InvalidMac => {
            "the file is truncated or corrupted (bad age header)".into()
        }
        age::DecryptError::Io(_) => "the file is truncated or corrupted".into(),
        other => format!("the file is truncated or corrupted ({other})"),
    }
}

/// Decrypts an age file that holds an age identity (a group key or an
/// escrowed agent key).
pub fn decrypt_identity(
    identities: &[&Identity],
    ciphertext: &[u8],
    path: &Path,
) -> Result<Identity> {
    let plain = decrypt(identities, ciphertext, path)?;
    let text = std::str::from_utf8(plain.expose_secret())
        .map_err(|_| Error::corrupt(path, "does not hold an age identity"))?;
    Identity::parse(text, &path.display().to_string())
}

/// Encrypts an identity (as an identity file) to recipients.
pub fn encrypt_identity(recipients: &[&Recipient], id: &Identity) -> Result<Vec<u8>> {
    encrypt(recipients, id.to_file_contents().expose_secret().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_signatures() {
        let id = Identity::generate();
        let r = id.recipient();
        let ct = encrypt(&[&r], b"\x00\xffbinary\n").unwrap();
        let pt = decrypt(&[&id], &ct, Path::new("x")).unwrap();
        assert_eq!(pt.expose_secret().as_slice(), b"\x00\xffbinary\n");
        let other = Identity::generate();
        assert!(decrypt(&[&other], &ct, Path::new("x")).is_err());
        assert!(decrypt(&[&id], &ct[..ct.len() - 3], Path::new("x")).is_err());

        let sk = id.signing_key();
        assert_eq!(
            sk.public(),
            id.signing_key().public(),
            "derivation is stable"
        );
        assert_ne!(sk.public(), other.signing_key().public());
        let sig = sk.sign("d1", b"msg");
        assert!(verify(&sk.public(), "d1", b"msg", &sig));
        assert!(!verify(&sk.public(), "d2", b"msg", &sig));
        assert!(!verify(&sk.public(), "d1", b"msh", &sig));
        assert!(!verify(&other.signing_key().public(), "d1", b"msg", &sig));
    }

    #[test]
    fn agent_signing_key_is_derived_and_domain_separated() {
        let id = Identity::generate();
        let a = id.agent_signing_key();
        assert_eq!(a.public(), id.agent_signing_key().public(), "deterministic");
        // The same age key never gives the owner's signing key.
        assert_ne!(a.public(), id.signing_key().public());
        assert_ne!(
            a.public(),
            Identity::generate().agent_signing_key().public()
        );
        assert!(valid_signing_key(&a.public()));
        // Parsed again from its file, the identity derives the same key.
        let back = Identity::parse(id.to_file_contents().expose_secret(), "t").unwrap();
        assert_eq!(back.agent_signing_key().public(), a.public());
        let sig = a.sign_raw("d1", b"msg");
        assert!(verify_raw(&a.public(), "d1", b"msg", &sig));
        assert!(!verify_raw(&a.public(), "d2", b"msg", &sig));
        assert!(!verify_raw(&a.public(), "d1", b"msh", &sig));
        assert!(!verify_raw(&id.signing_key().public(), "d1", b"msg", &sig));
        assert!(!verify_raw(&a.public(), "d1", b"msg", &sig[..63]));
    }

    #[test]
    fn identity_file_roundtrip() {
        let id = Identity::generate();
        let text = id.to_file_contents();
        let back = Identity::parse(text.expose_secret(), "t").unwrap();
        assert_eq!(back.recipient(), id.recipient());
        assert!(Identity::parse("nothing here", "t").is_err());
    }
}
