//! The broker's state: the vault as last read (grants, services,
//! revocations), the injection plans made from it, the CA that mints the
//! leaves agents see, the upstream side and the audit log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use agent_vault_core::broker::inject::Plan;
use agent_vault_core::broker::oauth::OAuthCredential;
use agent_vault_core::broker::scrub::{Redaction, Scrubber};
use agent_vault_core::broker::services::Services;
use agent_vault_core::broker::token::TokenKey;
use agent_vault_core::crypto::SecretValue;
use agent_vault_core::live::{LiveReader, RECHECK};
use agent_vault_core::model::{Manifest, Mode};
use agent_vault_core::reader::Reader;
use agent_vault_core::secrecy::{ExposeSecret, SecretBox};
use agent_vault_core::{KeySource, SecretPath, Vault};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::audit::AuditLog;
use crate::ca::{CaError, Minter};
use crate::error::ProxyError;
use crate::freshness::Freshness;
use crate::health::Health;
use crate::limits::Limits;
use crate::lru::{LEAF_CACHE, LEAF_MAX_AGE, Lru};
use crate::metrics::{Metrics, ServiceMeter};
use crate::oauth::{Publisher, RefreshFailed, Refresher, StateCtx, TokenClient};
use crate::ratelimit::RateLimits;
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
    /// Count requests, refusals and the rest in [`Broker::metrics`] (for
    /// `proxy --admin`); off, counting costs nothing.
    pub metrics: bool,
    /// Follow the vault's remote (`--pull-interval`, `--max-stale`); started
    /// by [`crate::follow::start`].
    pub follow: Option<crate::freshness::Follow>,
    /// TLS on the listener (`--tls-cert`/`--tls-key`, `--tls-name`).
    pub tls: Option<crate::listener::ListenerTls>,
    /// Log pipelines the audit records go to as well (`--audit-otlp`,
    /// `--audit-syslog`).
    pub exports: Vec<crate::export::Sink>,
}

/// The vault as the broker last read it: core's reader on a manifest and
/// services list that verified, and the injection plans made from it.
pub(crate) struct Snapshot {
    /// The broker's reader: it keeps opened group keys, checked signatures
    /// and values between requests (core's read cache), so a request costs
    /// no public-key operation once warm.
    reader: Arc<Reader>,
    pub(crate) services: Services,
    /// The services' rate limits, counted per (agent, service).
    pub(crate) rates: RateLimits,
    /// Injection plans by service, then agent, with when they were made
    /// (two levels, so a lookup by `&str` allocates nothing).
    plans: Mutex<HashMap<String, HashMap<String, MadePlan>>>,
}

/// A plan, when it was made, and for a plan with OAuth credentials the
/// refresh generation it was made at and when its first token is due.
struct MadePlan {
    at: Instant,
    plan: Arc<Prepared>,
    oauth: Option<(u64, Option<i64>)>,
}

/// Why no plan could be made.
#[derive(Debug)]
pub(crate) enum PlanFailure {
    /// Core's refusal (a grant, a missing or unsigned secret).
    Core(agent_vault_core::Error),
    /// An OAuth credential could not be refreshed.
    OAuth(RefreshFailed),
}

/// A plan and the scrubbers for its values, made once with it (a scrubber's
/// patterns cost microseconds to build; each response takes a fresh copy
/// that shares them).
pub(crate) struct Prepared {
    pub(crate) plan: Plan,
    /// `[REDACTED:group/name]` in heads, bodies and trailers.
    pub(crate) scrub: Scrubber,
    /// Same-length masks, for WebSocket frames.
    pub(crate) mask: Scrubber,
    /// The markers' scrubber with every pattern lower-cased, for header
    /// names (they arrive lower-cased).
    pub(crate) names: Scrubber,
    /// The plan's secrets by name, as each request's audit record lists them.
    pub(crate) secret_names: Vec<String>,
    /// The service's metric handles, looked up once with the plan.
    pub(crate) meter: ServiceMeter,
}

impl std::ops::Deref for Prepared {
    type Target = Plan;
    fn deref(&self) -> &Plan {
        &self.plan
    }
}

impl Snapshot {
    /// A snapshot; the counters of `previous` kept for each service whose
    /// limits did not change.
    fn new(reader: Arc<Reader>, services: Services, previous: Option<&Snapshot>) -> Self {
        Snapshot {
            reader,
            rates: RateLimits::new(&services, previous.map(|p| &p.rates)),
            services,
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// The verified manifest: grants, revocations.
    pub(crate) fn manifest(&self) -> &Manifest {
        self.reader.manifest()
    }
}

/// The running broker.
pub struct Broker {
    /// The vault as it changes, looked at once per [`RECHECK`].
    live: LiveReader,
    pub(crate) token_key: TokenKey,
    minter: Minter,
    snapshot: RwLock<Arc<Snapshot>>,
    pub(crate) upstreams: Upstreams,
    leaf_configs: Mutex<Lru<Arc<rustls::ServerConfig>>>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) allow_private: bool,
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
    health: Health,
    /// OAuth credentials' access tokens, refreshed when due.
    oauth: Refresher,
    /// When the broker was last up to date with its remote (`None`: it
    /// does not follow one).
    freshness: Option<Freshness>,
    /// The listener's TLS, if it speaks TLS.
    listener_tls: Option<Arc<rustls::ServerConfig>>,
    /// The audit exports (also in `audit`), closed when the broker stops.
    exports: Vec<Arc<crate::export::Exporter>>,
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
        // The vault as it changes: its manifest and services list as they
        // verify now, then as the live reader finds them.
        let live = LiveReader::with_identity(vault, id, RECHECK).map_err(|e| match e {
            agent_vault_core::Error::UnknownKey => ProxyError::Open(e),
            e => ProxyError::Manifest(e),
        })?;
        let first = live.last();
        let services = first
            .services()
            .map_err(|e| ProxyError::Services(e.to_string()))?
            .clone();
        let (vault, id) = (live.vault(), first.identity());
        let token_key =
            agent_vault_core::broker::token_key(vault, id).map_err(ProxyError::TokenKey)?;
        let ca_key = agent_vault_core::broker::ca_key(vault, id).map_err(ProxyError::CaKey)?;
        let ca_cert = String::from_utf8(vault.ca_cert().map_err(ProxyError::CaCert)?)
            .map_err(ProxyError::CaCertText)?;
        let minter = Minter::new(&ca_cert, &ca_key).map_err(ProxyError::Ca)?;
        let listener_tls = opts
            .tls
            .as_ref()
            .map(|t| crate::listener::server_config(t, &ca_cert, &ca_key))
            .transpose()?;

        let upstreams =
            Upstreams::new(opts.upstream_ca.as_deref()).map_err(ProxyError::Upstream)?;
        // Token endpoints are reached like upstreams: the same roots, the
        // same rule for private addresses.
        let oauth = Refresher::new(
            TokenClient::new(opts.upstream_ca.as_deref(), opts.allow_private_upstreams)
                .map_err(ProxyError::Upstream)?,
        );
        let metrics = if opts.metrics {
            Metrics::on()
        } else {
            Metrics::off()
        };
        metrics.services(services.services.keys().map(String::as_str));
        let audit =
            AuditLog::open(opts.audit.as_deref()).map_err(|source| ProxyError::AuditLog {
                path: opts.audit.clone().unwrap_or_default(),
                source,
            })?;
        let exports = opts
            .exports
            .iter()
            .map(|sink| {
                crate::export::Exporter::start(sink.clone(), opts.upstream_ca.as_deref(), &metrics)
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let forwards = exports
            .iter()
            .map(|e| e.clone() as Arc<dyn crate::audit::Forward>)
            .collect();
        Ok(Broker {
            token_key,
            minter,
            snapshot: RwLock::new(Arc::new(Snapshot::new(first, services, None))),
            live,
            upstreams,
            leaf_configs: Mutex::new(Lru::new(LEAF_CACHE, LEAF_MAX_AGE)),
            audit: Arc::new(audit.counted(metrics.clone()).exporting(forwards)),
            exports,
            allow_private: opts.allow_private_upstreams,
            limits: Limits::from_env(),
            metrics,
            health: Health::default(),
            oauth,
            freshness: opts.follow.map(Freshness::new),
            listener_tls,
        })
    }

    /// The vault the broker serves (its clone, when it follows a remote).
    pub(crate) fn vault(&self) -> &Vault {
        self.live.vault()
    }

    /// Takes the vault's files as they are now (the follower just moved
    /// them), rather than at the next look.
    pub(crate) fn refresh(&self) {
        if let Ok(reader) = self.live.refresh() {
            self.install(reader);
        }
    }

    /// When the broker was last up to date with its remote, if it follows one.
    pub(crate) fn freshness(&self) -> Option<&Freshness> {
        self.freshness.as_ref()
    }

    /// Why every request must be refused now (fail closed: the broker has
    /// not been up to date with its remote for longer than `--max-stale`).
    pub(crate) fn stale(&self) -> Option<String> {
        self.freshness.as_ref()?.stale(&self.health)
    }

    /// Stops the audit exports, giving each until `deadline` to send what
    /// it holds; each sink's final totals (see [`crate::export`]).
    pub fn close_exports(
        &self,
        deadline: std::time::Duration,
    ) -> Vec<(&'static str, crate::export::Totals)> {
        // All stop taking records first, so they send what they hold at
        // the same time.
        self.exports.iter().for_each(|e| e.stop());
        let until = Instant::now() + deadline;
        self.exports
            .iter()
            .map(|e| (e.sink().name(), e.close(until)))
            .collect()
    }

    /// The listener's TLS configuration, if it speaks TLS.
    pub fn listener_tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.listener_tls.as_ref()
    }

    /// The current grants, services and revocations: the live reader's,
    /// which looks at the vault's files at most once per [`RECHECK`]. Only a
    /// manifest and services list that verify replace the old ones.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        // A panic elsewhere cannot leave a half-written snapshot (it is
        // replaced whole), so a poisoned lock's value is still good.
        let current = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Values may have changed without a new reader (a `set` touches no
        // manifest file): plans are re-made after RECHECK (see `plan`).
        let Ok(Some(reader)) = self.live.changed_since(&current.reader) else {
            return current;
        };
        self.install(reader).unwrap_or(current)
    }

    /// Makes `reader` the current snapshot (if its services list verifies
    /// and it is not the current one already); the snapshot now.
    fn install(&self, reader: Arc<Reader>) -> Option<Arc<Snapshot>> {
        let services = reader.services().cloned().ok()?;
        let mut slot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&slot.reader, &reader) {
            *slot = Arc::new(Snapshot::new(reader, services, Some(&**slot)));
        }
        Some(slot.clone())
    }

    /// The injection plan for `service` on behalf of `agent`: made from the
    /// vault's values (only those the agent's grants cover), then kept for
    /// [`RECHECK`], so a warm request reads no file and decrypts nothing.
    /// An OAuth credential gives its current access token (refreshed first
    /// when due), and the plan scrubs every earlier one too; such a plan is
    /// made again once any credential was refreshed or its own is due.
    pub(crate) async fn plan(
        &self,
        snap: &Snapshot,
        name: &str,
        service: &agent_vault_core::broker::services::Service,
        agent: &str,
    ) -> Result<Arc<Prepared>, PlanFailure> {
        let now = jiff::Timestamp::now().as_second();
        let generation = self.oauth.generation();
        if let Ok(plans) = snap.plans.lock()
            && let Some(made) = plans.get(name).and_then(|by_agent| by_agent.get(agent))
            && made.at.elapsed() < RECHECK
            && made
                .oauth
                .is_none_or(|(g, due)| g == generation && due.is_none_or(|d| now < d))
        {
            return Ok(made.plan.clone());
        }
        // Boxed: making a plan (an OAuth refresh among it) is a large
        // future, and every request's future would carry its size, moved
        // as the request is handed along; a kept plan needs none of it.
        Box::pin(self.make_plan(snap, name, service, agent, generation)).await
    }

    /// [`Broker::plan`] when no kept plan will do: made, and kept.
    async fn make_plan(
        &self,
        snap: &Snapshot,
        name: &str,
        service: &agent_vault_core::broker::services::Service,
        agent: &str,
        generation: u64,
    ) -> Result<Arc<Prepared>, PlanFailure> {
        let read = |p: &SecretPath| {
            agent_vault_core::access::check_agent(snap.manifest(), agent, p.group(), Mode::Use)?;
            snap.reader.get(p)
        };
        // First the owners' values; an OAuth credential among them is
        // noted, and the plan made again with its access token.
        let found = std::sync::Mutex::new(Vec::<(SecretPath, SecretValue)>::new());
        let noting = |p: &SecretPath| {
            let v = read(p)?;
            if OAuthCredential::is_oauth(v.expose_secret())
                && let Ok(mut f) = found.lock()
                && !f.iter().any(|(q, _)| q == p)
            {
                f.push((
                    p.clone(),
                    SecretBox::new(Box::new(v.expose_secret().clone())),
                ));
            }
            Ok(v)
        };
        let mut plan = Plan::new(service, &noting).map_err(PlanFailure::Core)?;
        let found = found.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut oauth = None;
        if !found.is_empty() {
            let ctx = StateCtx {
                vault: snap.reader.vault(),
                identity: snap.reader.identity(),
                manifest: snap.manifest(),
                publish: self
                    .freshness()
                    .map(|f| Publisher::new(f.clone_lock.clone(), f.follow.timeout())),
            };
            let mut tokens = Vec::new();
            let mut due: Option<i64> = None;
            for (p, v) in &found {
                let cur = self
                    .oauth
                    .current(p, v.expose_secret(), &ctx)
                    .await
                    .map_err(PlanFailure::OAuth)?;
                due = match (due, cur.refresh_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                tokens.push((p.clone(), cur));
            }
            let with_tokens = |p: &SecretPath| match tokens.iter().find(|(q, _)| q == p) {
                Some((_, cur)) => Ok(SecretBox::new(Box::new(cur.access.expose_secret().clone()))),
                None => read(p),
            };
            plan = Plan::new(service, &with_tokens).map_err(PlanFailure::Core)?;
            for (p, cur) in &tokens {
                for t in &cur.scrub_also {
                    plan.also_scrub(p, t.expose_secret());
                }
            }
            // The generation from before the tokens were taken: a refresh
            // since (this plan's own included) retires the plan at once, so
            // it never outlives a token the provider has replaced.
            oauth = Some((generation, due));
        }
        let scrub = Scrubber::for_plan(&plan, Redaction::Marker);
        let plan = Arc::new(Prepared {
            names: scrub.folded(),
            scrub,
            mask: Scrubber::for_plan(&plan, Redaction::SameLength),
            secret_names: plan.secrets().iter().map(|s| s.to_string()).collect(),
            meter: self.metrics.for_service(name),
            plan,
        });
        if let Ok(mut plans) = snap.plans.lock() {
            plans.entry(name.to_owned()).or_default().insert(
                agent.to_owned(),
                MadePlan {
                    at: Instant::now(),
                    plan: plan.clone(),
                    oauth,
                },
            );
        }
        Ok(plan)
    }

    /// The longest an agent's own token may live (`token_max_ttl_seconds`).
    pub(crate) fn max_token_ttl(&self) -> i64 {
        self.live.vault().config().token_max_ttl_seconds
    }

    /// Leaves minted so far (a host's leaf is minted once).
    pub fn leaves_minted(&self) -> u64 {
        self.minter.minted()
    }

    /// The broker's metrics (counting only if [`Options::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the broker can serve: what `GET /healthz` answers. A
    /// feature that finds it cannot (a remote not reached for too long)
    /// reports it here, and clears it when it can again.
    pub fn health(&self) -> &Health {
        &self.health
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
        self.metrics.leaf_minted();
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
