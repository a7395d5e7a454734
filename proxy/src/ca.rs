//! The broker's certificate authority.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::lru::{LEAF_CACHE, LEAF_MAX_AGE, Lru};

/// A CA failure.
#[derive(Debug)]
#[non_exhaustive]
pub enum CaError {
    /// Generating or parsing a key or certificate failed.
    Cert(rcgen::Error),
    /// The leaf cache's lock was poisoned (a thread panicked holding it).
    Poisoned,
}

impl std::fmt::Display for CaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaError::Cert(e) => write!(f, "certificate: {e}"),
            CaError::Poisoned => f.write_str("certificate: cache poisoned"),
        }
    }
}

impl std::error::Error for CaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CaError::Cert(e) => Some(e),
            CaError::Poisoned => None,
        }
    }
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        CaError::Cert(e)
    }
}

/// How long a leaf the CA mints is valid.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A new CA for a vault: the certificate (public) and its private key, PEM.
/// The key is returned in a zeroizing buffer for the caller to encrypt.
pub fn generate(vault_id: &str) -> Result<(String, zeroize::Zeroizing<String>), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!(
            "agent-vault broker CA {}",
            &vault_id[..vault_id.len().min(12)]
        ),
    );
    dn.push(DnType::OrganizationName, "agent-vault");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(5 * 365 * 24 * 3600);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Mints leaf certificates for hosts, signed by the CA: each with its own
/// key, valid for a day, cached (at most [`LEAF_CACHE`] hosts, each for
/// [`LEAF_MAX_AGE`]) so a host's leaf is minted once.
pub struct Minter {
    issuer: Issuer<'static, KeyPair>,
    cache: Mutex<Lru<(String, String)>>,
    minted: AtomicU64,
}

impl Minter {
    /// A minter from the CA certificate and key (PEM).
    pub fn new(ca_cert_pem: &str, ca_key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, key)?;
        Ok(Minter {
            issuer,
            cache: Mutex::new(Lru::new(LEAF_CACHE, LEAF_MAX_AGE)),
            minted: AtomicU64::new(0),
        })
    }

    /// The leaf for `host`: (certificate PEM, key PEM).
    pub fn leaf(&self, host: &str) -> Result<(String, String), CaError> {
        let host = host.to_ascii_lowercase();
        // Held while minting: the first CONNECTs to a host often arrive
        // together on both runtimes, and each would mint its own leaf. A
        // mint takes well under a millisecond and happens once per host.
        let mut cache = self.cache.lock().map_err(|_| CaError::Poisoned)?;
        if let Some(hit) = cache.get(&host) {
            return Ok(hit);
        }
        let pair = self.mint(std::slice::from_ref(&host))?;
        self.minted.fetch_add(1, Ordering::Relaxed);
        cache.insert(host, pair.clone());
        Ok(pair)
    }

    /// A leaf for all of `names` (host names or IP addresses), valid for a
    /// day, with a key of its own, not cached: (certificate PEM, key PEM).
    /// The broker's own listener (`proxy --tls-name`) takes one, and a new
    /// one before it expires.
    pub fn mint(&self, names: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.to_ascii_lowercase().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time_now();
        params.not_before = now - Duration::from_secs(300);
        params.not_after = now + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// How many leaves were minted (not served from the cache).
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_mints_cached_leaves() {
        let (cert, key) = generate("0123456789abcdef").unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        let m = Minter::new(&cert, &key).unwrap();
        let (a, _) = m.leaf("api.example.com").unwrap();
        let (b, _) = m.leaf("API.example.com").unwrap();
        assert_eq!(a, b);
        m.leaf("127.0.0.1").unwrap();
        assert_eq!(m.minted(), 2);
    }
}
