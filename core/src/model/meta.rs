//! Each secret's `.meta.yaml` and the owner's signature over it.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, OwnerSigningKey};
use crate::error::{Error, Result};
use crate::names::SecretPath;

use super::Manifest;

const SECRET_DOMAIN: &str = "agent-vault/v1/secret";
const SECRET_DOMAIN_V2: &str = "agent-vault/v2/secret";

/// A secret's `.meta.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretMeta {
    /// When the secret was first set.
    pub created: jiff::Timestamp,
    /// When its value last changed.
    pub updated: jiff::Timestamp,
    /// When it expires, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<jiff::Timestamp>,
    /// A human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// SHA-256 (hex) of the `.age` file's bytes.
    pub ciphertext_sha256: String,
    /// The group key generation the value is encrypted to.
    pub generation: u64,
    /// The signing owner's Ed25519 public key, base64.
    pub signing_key: String,
    /// Signature over (vault id, path, ciphertext hash, generation) and, from
    /// `signed: 2` on, the timestamps, expiry and description too.
    pub signature: String,
    /// What [`SecretMeta::signature`] covers: absent (1) in metadata written
    /// before agent-vault 0.3, whose description and expiry are unverified;
    /// 2 when every field is signed.
    #[serde(default = "legacy_signed", skip_serializing_if = "is_legacy_signed")]
    pub signed: u32,
}

fn legacy_signed() -> u32 {
    1
}

fn is_legacy_signed(v: &u32) -> bool {
    *v == 1
}

/// The metadata signature version this build writes.
const META_SIGNED: u32 = 2;

fn secret_message(vault_id: &str, path: &SecretPath, hash: &str, generation: u64) -> Vec<u8> {
    format!("{vault_id}\0{path}\0{hash}\0{generation}").into_bytes()
}

/// The version-2 message: the version-1 message, then every other field,
/// each delimited or length-prefixed so no two metadata share a message.
fn secret_message_v2(
    vault_id: &str,
    path: &SecretPath,
    hash: &str,
    generation: u64,
    f: &MetaFields,
) -> Vec<u8> {
    let mut m = secret_message(vault_id, path, hash, generation);
    let expires = f
        .expires
        .map(|t| t.as_nanosecond().to_string())
        .unwrap_or_else(|| "-".into());
    m.extend_from_slice(
        format!(
            "\0{}\0{}\0{expires}\0",
            f.created.as_nanosecond(),
            f.updated.as_nanosecond()
        )
        .as_bytes(),
    );
    match &f.description {
        None => m.push(b'-'),
        Some(d) => {
            m.extend_from_slice(format!("{}:", d.len()).as_bytes());
            m.extend_from_slice(d.as_bytes());
        }
    }
    m
}

/// The unsigned part of a secret's metadata.
#[derive(Debug, Clone)]
pub struct MetaFields {
    /// When the secret was first set.
    pub created: jiff::Timestamp,
    /// When its value last changed.
    pub updated: jiff::Timestamp,
    /// Expiry.
    pub expires: Option<jiff::Timestamp>,
    /// Description.
    pub description: Option<String>,
}

/// How far a secret's metadata is covered by an owner's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaTrust {
    /// Every field is signed (`signed: 2`).
    Signed,
    /// Old metadata: the value's hash is signed, the description and expiry
    /// are not; an owner's next write of the secret (or `repair`) signs them.
    Legacy,
}

impl SecretMeta {
    /// Signs new metadata for `ciphertext`, covering every field.
    pub fn sign(
        fields: MetaFields,
        key: &OwnerSigningKey,
        vault_id: &str,
        path: &SecretPath,
        ciphertext: &[u8],
        generation: u64,
    ) -> Self {
        let hash = crypto::sha256_hex(ciphertext);
        let signature = key.sign(
            SECRET_DOMAIN_V2,
            &secret_message_v2(vault_id, path, &hash, generation, &fields),
        );
        SecretMeta {
            created: fields.created,
            updated: fields.updated,
            expires: fields.expires,
            description: fields.description,
            ciphertext_sha256: hash,
            generation,
            signing_key: key.public(),
            signature,
            signed: META_SIGNED,
        }
    }

    /// The descriptive fields.
    pub fn fields(&self) -> MetaFields {
        MetaFields {
            created: self.created,
            updated: self.updated,
            expires: self.expires,
            description: self.description.clone(),
        }
    }

    /// Checks the signature over the metadata as it stands (with its stored
    /// ciphertext hash, so without reading the value), and that an owner of
    /// `owners` made it. For `list` and `check`; a read uses [`Self::verify`].
    pub fn verify_signature(
        &self,
        vault_id: &str,
        path: &SecretPath,
        owners: &Manifest,
    ) -> Result<MetaTrust> {
        let fail = |reason: &str| Error::UnsignedSecret {
            path: path.to_string(),
            reason: reason.to_owned(),
        };
        if !self.signed_by_owner_of(owners) {
            return Err(fail("its signing key is not an owner's"));
        }
        let (domain, msg, trust) = match self.signed {
            1 => (
                SECRET_DOMAIN,
                secret_message(vault_id, path, &self.ciphertext_sha256, self.generation),
                MetaTrust::Legacy,
            ),
            2 => (
                SECRET_DOMAIN_V2,
                secret_message_v2(
                    vault_id,
                    path,
                    &self.ciphertext_sha256,
                    self.generation,
                    &self.fields(),
                ),
                MetaTrust::Signed,
            ),
            _ => {
                return Err(fail(
                    "its signature is of a kind this agent-vault does not know",
                ));
            }
        };
        if !crypto::verify(&self.signing_key, domain, &msg, &self.signature) {
            return Err(fail(
                "bad signature (its metadata — value hash, expiry or description — was changed \
                 without an owner's key)",
            ));
        }
        Ok(trust)
    }

    /// Whether the key that signed this metadata is an owner's in `owners`.
    fn signed_by_owner_of(&self, owners: &Manifest) -> bool {
        owners
            .owners
            .values()
            .any(|o| o.signing_key == self.signing_key)
    }

    /// Verifies the metadata against the ciphertext, the owner keys and the
    /// generations that are acceptable now. Says whether the description
    /// and expiry are signed too ([`MetaTrust`]).
    pub fn verify(
        &self,
        vault_id: &str,
        path: &SecretPath,
        ciphertext: &[u8],
        owners: &Manifest,
        generations: &[u64],
    ) -> Result<MetaTrust> {
        let fail = |reason: &str| Error::UnsignedSecret {
            path: path.to_string(),
            reason: reason.to_owned(),
        };
        if !self.signed_by_owner_of(owners) {
            return Err(fail("its signing key is not an owner's"));
        }
        if crypto::sha256_hex(ciphertext) != self.ciphertext_sha256 {
            return Err(fail("the encrypted file does not match its signed hash"));
        }
        if !generations.contains(&self.generation) {
            return Err(fail("it is encrypted to an outdated group key"));
        }
        self.verify_signature(vault_id, path, owners)
    }
}
