//! The broker's state: the vault as last read (grants, services,
//! revocations), the injection plans made from it, the CA that mints the
//! leaves agents see, the upstream side and the audit log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use agent_vault_core::broker::inject::Plan;
use agent_vault_core::broker::services::Services;
use agent_vault_core::broker::token::TokenKey;
use agent_vault_core::model::{Manifest, Mode};
use agent_vault_core::{KeySource, SecretPath, Vault};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::audit::AuditLog;
use crate::ca::{CaError, Minter};
use crate::error::ProxyError;
use crate::limits::Limits;
use crate::lru::{LEAF_CACHE, LEAF_MAX_AGE, Lru};
use crate::upstream::Upstreams;

/// How the proxy is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Extra CA certificates (PEM) to trust for upstreams.
    pub upstream_ca: Option<PathBuf>,
    /// Allow upstreams on private, loopback and link-local addresses.
    pub allow_private_upstreams: bool,
    /// The audit log file.
    pub audit: Option<PathBuf>,
    /// The broker's key file (default: the vault's in the key store).
    pub key: Option<PathBuf>,
}

/// The vault as the broker last read it.
pub(crate) struct Snapshot {
    pub(crate) manifest: Manifest,
    pub(crate) services: Services,
    stamp: Option<(SystemTime, SystemTime)>,
    /// The broker's reader on this manifest: it keeps opened group keys,
    /// checked signatures and values between requests (core's read cache),
    /// so a request costs no public-key operation once warm.
    reader: Arc<agent_vault_core::reader::Reader<'static>>,
    /// When `stamp` was last compared with the files (ms after `Broker::started`).
    checked_ms: AtomicU64,
    /// Injection plans by service, then agent, with when they were made
    /// (two levels, so a lookup by `&str` allocates nothing).
    plans: Mutex<HashMap<String, HashMap<String, MadePlan>>>,
}

/// A plan and when it was made.
type MadePlan = (Instant, Arc<Plan>);

/// How long the broker goes on with what it read from the vault's files
/// before it looks at them again: grants, services and revocations (by the
/// manifest's and the services list's times), and secret values (plans are
/// re-made). So a change reaches a running broker within this time, and a
/// request on a warm broker makes no file system call at all.
const RECHECK: Duration = Duration::from_millis(250);

impl Snapshot {
    fn new(
        manifest: Manifest,
        services: Services,
        stamp: Option<(SystemTime, SystemTime)>,
        reader: agent_vault_core::reader::Reader<'static>,
        now_ms: u64,
    ) -> Self {
        Snapshot {
            manifest,
            services,
            stamp,
            reader: Arc::new(reader),
            checked_ms: AtomicU64::new(now_ms),
            plans: Mutex::new(HashMap::new()),
        }
    }
}

/// The running broker.
pub struct Broker {
    vault: Vault,
    pub(crate) token_key: TokenKey,
    minter: Minter,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The clock `Snapshot::checked_ms` counts from.
    started: Instant,
    pub(crate) upstreams: Upstreams,
    leaf_configs: Mutex<Lru<Arc<rustls::ServerConfig>>>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) allow_private: bool,
    pub(crate) limits: Limits,
}

fn stamp(vault: &Vault) -> Option<(SystemTime, SystemTime)> {
    let m = |f: &str| {
        std::fs::metadata(vault.dir().join(f))
            .and_then(|m| m.modified())
            .ok()
    };
    Some((
        m("manifest.sig")?,
        m("services.yaml").unwrap_or(SystemTime::UNIX_EPOCH),
    ))
}

impl Broker {
    /// Opens the vault with the broker key, the token key and the CA.
    pub fn new(vault: Vault, opts: &Options) -> Result<Self, ProxyError> {
        let key_source = KeySource::File(
            opts.key
                .clone()
                .unwrap_or_else(|| vault.keys().vault_dir(vault.id()).join("broker.key")),
        );
        let id = vault
            .keys()
            .load(&key_source, vault.id())
            .map_err(ProxyError::NoBrokerKey)?;
        let manifest = vault.manifest().map_err(ProxyError::Manifest)?;
        let services = Services::load(&vault).map_err(ProxyError::Services)?;
        let token_key =
            agent_vault_core::broker::token_key(&vault, &id).map_err(ProxyError::TokenKey)?;
        let ca_key = agent_vault_core::broker::ca_key(&vault, &id).map_err(ProxyError::CaKey)?;
        let ca_cert = String::from_utf8(vault.ca_cert().map_err(ProxyError::CaCert)?)
            .map_err(ProxyError::CaCertText)?;
        let minter = Minter::new(&ca_cert, &ca_key).map_err(ProxyError::Ca)?;

        let upstreams =
            Upstreams::new(opts.upstream_ca.as_deref()).map_err(ProxyError::Upstream)?;
        let s = stamp(&vault);
        // The reader borrows the vault for as long as the broker runs: one
        // small allocation, leaked on purpose, for the life of the process.
        let forever: &'static Vault = Box::leak(Box::new(vault.clone()));
        let reader = forever
            .reader(&key_source)
            .and_then(|r| r.with_manifest(manifest.clone()))
            .map_err(ProxyError::Open)?;
        Ok(Broker {
            token_key,
            minter,
            snapshot: RwLock::new(Arc::new(Snapshot::new(manifest, services, s, reader, 0))),
            started: Instant::now(),
            upstreams,
            leaf_configs: Mutex::new(Lru::new(LEAF_CACHE, LEAF_MAX_AGE)),
            audit: Arc::new(AuditLog::open(opts.audit.as_deref()).map_err(|source| {
                ProxyError::AuditLog {
                    path: opts.audit.clone().unwrap_or_default(),
                    source,
                }
            })?),
            allow_private: opts.allow_private_upstreams,
            limits: Limits::from_env(),
            vault,
        })
    }

    /// The current grants, services and revocations; re-read when the
    /// vault's files changed (looked at once per [`RECHECK`]).
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        // A panic elsewhere cannot leave a half-written snapshot (it is
        // replaced whole), so a poisoned lock's value is still good.
        let current = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = current.checked_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < RECHECK.as_millis() as u64
            // One request looks; the others go on with what is current.
            || current
                .checked_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return current;
        }
        let now = stamp(&self.vault);
        if now == current.stamp {
            // Values may have changed (a `set` touches neither file):
            // plans are re-made from the files after RECHECK (see `plan`).
            return current;
        }
        // Only a manifest and services list that verify replace the old ones.
        match (self.vault.manifest(), Services::load(&self.vault)) {
            (Ok(manifest), Ok(services)) => {
                let Ok(reader) = current.reader.with_manifest(manifest.clone()) else {
                    return current;
                };
                let fresh = Arc::new(Snapshot::new(manifest, services, now, reader, now_ms));
                *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                fresh
            }
            _ => current,
        }
    }

    /// The injection plan for `service` on behalf of `agent`: made from the
    /// vault's values (only those the agent's grants cover), then kept for
    /// [`RECHECK`], so a warm request reads no file and decrypts nothing.
    pub(crate) fn plan(
        &self,
        snap: &Snapshot,
        name: &str,
        service: &agent_vault_core::broker::services::Service,
        agent: &str,
    ) -> Result<Arc<Plan>, agent_vault_core::Error> {
        if let Ok(plans) = snap.plans.lock()
            && let Some((made, plan)) = plans.get(name).and_then(|by_agent| by_agent.get(agent))
            && made.elapsed() < RECHECK
        {
            return Ok(plan.clone());
        }
        let agent_name: Option<agent_vault_core::AgentName> = agent.parse().ok();
        let resolve = |p: &SecretPath| {
            let granted = agent_name
                .as_ref()
                .and_then(|a| snap.manifest.grant(a, p.group()))
                .is_some_and(|m| matches!(m, Mode::Use | Mode::Read));
            if !granted {
                return Err(agent_vault_core::Error::NotGranted {
                    agent: agent.to_owned(),
                    group: p.group().to_string(),
                });
            }
            snap.reader.get(p)
        };
        let plan = Arc::new(Plan::new(service, &resolve)?);
        if let Ok(mut plans) = snap.plans.lock() {
            plans
                .entry(name.to_owned())
                .or_default()
                .insert(agent.to_owned(), (Instant::now(), plan.clone()));
        }
        Ok(plan)
    }

    /// Leaves minted so far (a host's leaf is minted once).
    pub fn leaves_minted(&self) -> u64 {
        self.minter.minted()
    }

    /// The TLS configuration agents see for `host`: a leaf minted by the
    /// vault's CA, kept in a small cache.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, LeafError> {
        if let Some(c) = self
            .leaf_configs
            .lock()
            .map_err(|_| LeafError::Poisoned)?
            .get(host)
        {
            return Ok(c);
        }
        let (cert, key) = self.minter.leaf(host).map_err(LeafError::Mint)?;
        let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).map_err(LeafError::Pem)?];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(LeafError::Pem)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(LeafError::Tls)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(LeafError::Tls)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        self.leaf_configs
            .lock()
            .map_err(|_| LeafError::Poisoned)?
            .insert(host.to_owned(), cfg.clone());
        Ok(cfg)
    }
}

/// Why no leaf could be served for a host.
#[derive(Debug)]
pub(crate) enum LeafError {
    /// The cache's lock was poisoned.
    Poisoned,
    /// The CA could not mint the leaf.
    Mint(CaError),
    /// The minted leaf did not parse.
    Pem(rustls::pki_types::pem::Error),
    /// rustls refused the leaf.
    Tls(rustls::Error),
}

impl std::fmt::Display for LeafError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeafError::Poisoned => f.write_str("the leaf cache is poisoned"),
            LeafError::Mint(e) => write!(f, "{e}"),
            LeafError::Pem(e) => write!(f, "{e}"),
            LeafError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LeafError {}
