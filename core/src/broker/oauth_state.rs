//! The broker's state for an OAuth credential: the refresh token the
//! provider rotated to, the current access token and its expiry, and the
//! access tokens injected before (so they stay scrubbed after a restart).
//!
//! On disk: `broker/state/<group>/<name>.age` (a standard age file,
//! encrypted to the broker and every owner) and beside it `<name>.sig`,
//! the broker's signature (its derived signing key) over the vault id, the
//! credential's path and the SHA-256 of the `.age` file. Only this module
//! accepts a broker signature, and only for this state: a secret's value
//! is trusted on an owner's signature alone (`model::meta`), so a broker
//! key can never stand in for an owner.

use std::path::PathBuf;

use age::secrecy::ExposeSecret;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::crypto::{self, Identity, Recipient};
use crate::error::{Error, Result};
use crate::model::Manifest;
use crate::names::SecretPath;
use crate::vault::Vault;
use crate::vfs::Kind;

/// The signature's domain: a broker's signature for anything else never
/// verifies here, and this one verifies nowhere else.
const STATE_DOMAIN: &str = "agent-vault/v1/oauth-state";

/// How many earlier access tokens are kept to scrub.
pub const EARLIER_KEPT: usize = 64;

/// What the broker knows of a credential beyond what the owner set.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OAuthState {
    /// SHA-256 (hex) of the owner-set value this state continues from:
    /// when an owner sets the credential again, the state is ignored.
    pub base: String,
    /// The refresh token to use next.
    pub refresh_token: String,
    /// The current access token.
    pub access_token: String,
    /// When it expires (Unix seconds), if the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Access tokens injected before the current one, oldest first, at
    /// most [`EARLIER_KEPT`].
    #[serde(default)]
    pub earlier: Vec<String>,
}

impl Drop for OAuthState {
    fn drop(&mut self) {
        self.refresh_token.zeroize();
        self.access_token.zeroize();
        for t in &mut self.earlier {
            t.zeroize();
        }
    }
}

/// The detached signature file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateSig {
    signing_key: String,
    signature: String,
}

/// `broker/state/<group>/<name>.age`.
pub fn state_path(vault: &Vault, path: &SecretPath) -> PathBuf {
    vault
        .broker_dir()
        .join("state")
        .join(path.group().as_str())
        .join(format!("{}.age", path.name()))
}

fn sig_path(vault: &Vault, path: &SecretPath) -> PathBuf {
    state_path(vault, path).with_extension("sig")
}

/// Both files of a credential's state (`.age` and `.sig`): what a broker
/// replica commits and pushes.
pub fn state_files(vault: &Vault, path: &SecretPath) -> [PathBuf; 2] {
    [state_path(vault, path), sig_path(vault, path)]
}

fn message(vault_id: &str, path: &SecretPath, ciphertext: &[u8]) -> Vec<u8> {
    format!("{vault_id}\0{path}\0{}", crypto::sha256_hex(ciphertext)).into_bytes()
}

/// Writes the state, encrypted to the broker and the owners of `manifest`
/// and signed with `broker`'s derived key. The `.age` file is replaced
/// before its signature: a crash between the two leaves a state that does
/// not verify, which readers ignore (the owner's value is used instead).
pub fn write(
    vault: &Vault,
    broker: &Identity,
    manifest: &Manifest,
    path: &SecretPath,
    state: &OAuthState,
) -> Result<()> {
    let mut recipients: Vec<Recipient> = vec![broker.recipient()];
    for o in manifest.owners.values() {
        recipients.push(o.recipient.parse()?);
    }
    let refs: Vec<&Recipient> = recipients.iter().collect();
    let plain = zeroize::Zeroizing::new(
        serde_json::to_vec(state)
            .map_err(|e| Error::InvalidInput(format!("cannot encode OAuth state: {e}")))?,
    );
    let ct = crypto::encrypt(&refs, &plain)?;
    let key = broker.broker_signing_key();
    let sig = StateSig {
        signing_key: key.public(),
        signature: base64::engine::general_purpose::STANDARD
            .encode(key.sign_raw(STATE_DOMAIN, &message(vault.id(), path, &ct))),
    };
    let sig = serde_json::to_vec(&sig)
        .map_err(|e| Error::InvalidInput(format!("cannot encode a signature: {e}")))?;
    let fs = vault.fs();
    let age = state_path(vault, path);
    if let Some(dir) = age.parent() {
        fs.create_dir_all(dir, 0o755)?;
    }
    fs.write_atomic(&age, &ct, 0o644)?;
    fs.write_atomic(&sig_path(vault, path), &sig, 0o644)
}

/// Reads the state with the broker's identity: `None` when there is none,
/// or when it does not verify as signed by this broker's key (a state
/// someone else wrote is never used; the owner's value is).
pub fn read(vault: &Vault, broker: &Identity, path: &SecretPath) -> Result<Option<OAuthState>> {
    read_with(vault, &broker.broker_signing_key().public(), broker, path)
}

/// Reads the state as an owner: the broker's key is opened from its escrow
/// (`broker/private.key.escrow`, encrypted to the owners) and must be the
/// broker the signed manifest names; its derived key must have signed the
/// state. `None` when there is no state or it does not verify.
pub fn read_as_owner(
    vault: &Vault,
    owner: &Identity,
    manifest: &Manifest,
    path: &SecretPath,
) -> Result<Option<OAuthState>> {
    let Some(entry) = &manifest.broker else {
        return Ok(None);
    };
    let escrow = vault.broker_dir().join("private.key.escrow");
    let ct = vault.fs().read(&escrow, Kind::KeyFile)?;
    let broker = crypto::decrypt_identity(&[owner], &ct, &escrow)?;
    if broker.recipient().as_string() != entry.recipient {
        return Err(Error::corrupt(
            &escrow,
            "not the key of the broker the manifest names",
        ));
    }
    read_with(vault, &broker.broker_signing_key().public(), owner, path)
}

fn read_with(
    vault: &Vault,
    signer: &str,
    reader: &Identity,
    path: &SecretPath,
) -> Result<Option<OAuthState>> {
    let fs = vault.fs();
    let age = state_path(vault, path);
    let (Some(ct), Some(sig)) = (
        fs.read_optional(&age, Kind::Secret)?,
        fs.read_optional(&sig_path(vault, path), Kind::Metadata)?,
    ) else {
        return Ok(None);
    };
    let Ok(sig) = serde_json::from_slice::<StateSig>(&sig) else {
        return Ok(None);
    };
    if sig.signing_key != signer
        || !crypto::verify(
            signer,
            STATE_DOMAIN,
            &message(vault.id(), path, &ct),
            &sig.signature,
        )
    {
        return Ok(None);
    }
    let plain = crypto::decrypt(&[reader], &ct, &age)?;
    serde_json::from_slice(plain.expose_secret())
        .map(Some)
        .map_err(|_| Error::corrupt(&age, "not OAuth state"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::KeyStore;

    fn state(refresh: &str) -> OAuthState {
        OAuthState {
            base: "b".into(),
            refresh_token: refresh.into(),
            access_token: "at".into(),
            expires_at: Some(1),
            earlier: vec!["old".into()],
        }
    }

    #[test]
    fn round_trip_and_forgeries_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = KeyStore::at(tmp.path().join("home"));
        let made =
            crate::init::init(&tmp.path().join("v"), "alice".parse().unwrap(), keys).unwrap();
        let (vault, broker) = (&made.vault, Identity::generate());
        let owner = Identity::read_file(&made.owner_key).unwrap();
        let manifest = crate::reader::Reader::open(
            vault,
            &crate::keystore::KeySource::File(made.owner_key.clone()),
        )
        .unwrap()
        .manifest()
        .clone();
        let path: SecretPath = "api/gh".parse().unwrap();
        assert!(read(vault, &broker, &path).unwrap().is_none());
        write(vault, &broker, &manifest, &path, &state("r1")).unwrap();
        let back = read(vault, &broker, &path).unwrap().unwrap();
        assert_eq!(back.refresh_token, "r1");
        assert_eq!(back.earlier, ["old"]);
        // Encrypted to the owners too (an owner can recover it with age).
        let ct = std::fs::read(state_path(vault, &path)).unwrap();
        assert!(crypto::decrypt(&[&owner], &ct, &state_path(vault, &path)).is_ok());

        // State written (and signed) by another key: not this broker's.
        let other = Identity::generate();
        write(vault, &other, &manifest, &path, &state("r-evil")).unwrap();
        assert!(read(vault, &broker, &path).unwrap().is_none());
        // This broker's signature on other bytes: refused.
        write(vault, &broker, &manifest, &path, &state("r2")).unwrap();
        let sig = std::fs::read(sig_path(vault, &path)).unwrap();
        write(vault, &other, &manifest, &path, &state("r-evil")).unwrap();
        std::fs::write(sig_path(vault, &path), sig).unwrap();
        assert!(read(vault, &broker, &path).unwrap().is_none());
    }

    #[test]
    fn a_state_signature_is_not_an_owner_signature() {
        // The same key and message under the secret's domain do not verify
        // as state, nor the state's under any other domain.
        let id = Identity::generate();
        let key = id.broker_signing_key();
        let msg = b"v\0g/n\0abc";
        let sig = base64::engine::general_purpose::STANDARD.encode(key.sign_raw(STATE_DOMAIN, msg));
        assert!(crypto::verify(&key.public(), STATE_DOMAIN, msg, &sig));
        assert!(!crypto::verify(
            &key.public(),
            "agent-vault/v2/secret",
            msg,
            &sig
        ));
        // The broker's key differs from the owner key and agent key of
        // the same identity.
        assert_ne!(key.public(), id.signing_key().public());
        assert_ne!(key.public(), id.agent_signing_key().public());
    }
}
