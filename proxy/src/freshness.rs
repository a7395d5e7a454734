//! When the broker was last up to date with the vault's remote, and whether
//! it must fail closed (`--max-stale`): the state [`crate::follow`]'s
//! thread keeps and every request asks (`Broker::stale`). Below the broker.
//!
//! "Up to date" means the remote was reached *and* its branch is ours: a
//! commit the pull refuses (unsigned, diverged) keeps the broker from every
//! later change too, so it counts as not reached.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The `/healthz` check that fails while the broker is stale.
pub const CHECK: &str = "remote";

/// How the broker follows its remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follow {
    /// How often to fetch and fast-forward.
    pub interval: Duration,
    /// After this long without being up to date with the remote, refuse
    /// requests; `None`: never (serve the last verified state).
    pub max_stale: Option<Duration>,
}

impl Follow {
    /// How long one fetch may take: the interval, at least 5 s and at most
    /// core's default (30 s). A hung remote does not delay failing closed:
    /// staleness is measured by the clock, not by the pulls.
    pub(crate) fn timeout(&self) -> Duration {
        self.interval.clamp(
            Duration::from_secs(5),
            agent_vault_core::sync::DEFAULT_TIMEOUT,
        )
    }
}

/// When the broker was last up to date with its remote, and why not since.
#[derive(Debug)]
pub(crate) struct Freshness {
    pub(crate) follow: Follow,
    started: Instant,
    /// When the last pull found the clone up to date (ms after `started`).
    synced_ms: AtomicU64,
    /// Why the pulls since then failed (names and paths, never a value).
    why: Mutex<String>,
    /// Whether `/healthz` was told the broker is stale.
    reported: AtomicBool,
    /// Held by whatever runs git in the broker's clone (a pull, the
    /// publishing of OAuth state), so one never sees the other's half.
    pub(crate) clone_lock: Arc<Mutex<()>>,
}

impl Freshness {
    pub(crate) fn new(follow: Follow) -> Self {
        Freshness {
            follow,
            started: Instant::now(),
            synced_ms: AtomicU64::new(0),
            why: Mutex::new(String::new()),
            reported: AtomicBool::new(false),
            clone_lock: Arc::new(Mutex::new(())),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn synced(&self) {
        self.synced_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, why: String) {
        *self.why.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    /// Why the broker must refuse requests now: it has not been up to date
    /// with its remote for longer than `--max-stale`. One clock read and
    /// one atomic load when fresh.
    pub(crate) fn stale(&self, health: &crate::health::Health) -> Option<String> {
        let max = self.follow.max_stale?;
        let age = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.synced_ms.load(Ordering::Relaxed)),
        );
        if age <= max {
            if self.reported.swap(false, Ordering::Relaxed) {
                health.pass(CHECK);
            }
            return None;
        }
        let why = self
            .why
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let why = if why.is_empty() {
            "no pull has finished yet".to_owned()
        } else {
            why
        };
        let reason = format!(
            "not up to date with the vault's remote for over {}s (--max-stale); last failure: {why}",
            max.as_secs_f64()
        );
        let detail = format!(
            "the broker has not been up to date with the vault's remote for {}s (--max-stale {}s) and \
             refuses rather than use grants that may have been revoked; last failure: {why}",
            age.as_secs(),
            max.as_secs_f64()
        );
        if !self.reported.swap(true, Ordering::Relaxed) {
            health.fail(CHECK, reason);
        }
        Some(detail)
    }
}

/// Why a pull failed, as agents may read it (it goes into the stale
/// refusal's detail and `/healthz`): a remote's failure by its kind only,
/// never its URL (which can hold a credential) or git's own output.
pub(crate) fn reason(e: &agent_vault_core::Error) -> String {
    use agent_vault_core::RemoteFailure;
    match e {
        agent_vault_core::Error::Remote {
            remote, failure, ..
        } => {
            let kind = match failure {
                RemoteFailure::Auth => "refused the broker's credentials",
                RemoteFailure::Unreachable => "could not be reached",
                _ => "failed",
            };
            format!("the remote {remote} {kind}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;

    #[test]
    fn stale_after_max_then_fresh_again() {
        let f = Freshness::new(Follow {
            interval: Duration::from_millis(10),
            max_stale: Some(Duration::from_millis(30)),
        });
        let h = Health::default();
        f.synced();
        assert!(f.stale(&h).is_none());
        f.failed("cannot reach origin".into());
        std::thread::sleep(Duration::from_millis(60));
        let why = f.stale(&h).expect("stale");
        assert!(why.contains("cannot reach origin"), "{why}");
        assert!(h.failing().contains_key(CHECK));
        f.synced();
        assert!(f.stale(&h).is_none());
        assert!(h.failing().is_empty());
    }

    #[test]
    fn without_max_stale_never_stale() {
        let f = Freshness::new(Follow {
            interval: Duration::from_millis(10),
            max_stale: None,
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(f.stale(&Health::default()).is_none());
    }
}
