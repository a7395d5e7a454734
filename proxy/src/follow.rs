//! Following the vault's remote (`proxy --pull-interval`): a broker on its
//! own machine fetches and fast-forwards its clone itself, through core's
//! verified pull (every incoming commit checked as every reader checks it;
//! fast-forward only), and takes the change at once, so an owner's
//! revocation reaches it within the interval. With `--max-stale`, a broker
//! that has not brought its clone up to date with the remote for that long
//! refuses every request ([`Freshness::stale`], answered as the problem
//! `vault-stale`) and `/healthz` says so, until it has again: it fails
//! closed rather than serve grants that may have been revoked.
//!
//! "Up to date" means the remote was reached *and* its branch is ours: a
//! commit the pull refuses (unsigned, diverged) keeps the broker from every
//! later change too, so it counts as not reached.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use agent_vault_core::sync::{PullOutcome, pull_fast_forward};

use crate::broker::Broker;
use crate::error::ProxyError;

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
    fn timeout(&self) -> Duration {
        self.interval.clamp(
            Duration::from_secs(5),
            agent_vault_core::sync::DEFAULT_TIMEOUT,
        )
    }
}

/// When the broker was last up to date with its remote, and why not since.
#[derive(Debug)]
pub(crate) struct Freshness {
    follow: Follow,
    started: Instant,
    /// When the last pull found the clone up to date (ms after `started`).
    synced_ms: AtomicU64,
    /// Why the pulls since then failed (names and paths, never a value).
    why: Mutex<String>,
    /// Whether `/healthz` was told the broker is stale.
    reported: AtomicBool,
}

impl Freshness {
    pub(crate) fn new(follow: Follow) -> Self {
        Freshness {
            follow,
            started: Instant::now(),
            synced_ms: AtomicU64::new(0),
            why: Mutex::new(String::new()),
            reported: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn synced(&self) {
        self.synced_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn failed(&self, why: String) {
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

/// One pull: fetch, verify, fast-forward; the broker takes a change at
/// once. `Err`: why the clone is not up to date with the remote.
fn pull_once(b: &Broker, follow: &Follow) -> Result<(), String> {
    match pull_fast_forward(b.vault(), follow.timeout()) {
        Ok(PullOutcome::UpToDate) => Ok(()),
        Ok(PullOutcome::FastForward) => {
            b.refresh();
            Ok(())
        }
        Ok(PullOutcome::NoRemote) => Err(NO_REMOTE.into()),
        Ok(PullOutcome::Merged { .. }) => Err("a pull merged, which a broker never does".into()),
        Err(e) => Err(e.to_string()),
    }
}

const NO_REMOTE: &str = "the vault's repository has no remote";

/// Pulls once now (a broker started from an old clone catches up before it
/// serves), then every interval from a thread of its own for as long as the
/// broker lives. A vault with no remote is an error; a remote that cannot
/// be reached now is not (the broker starts on its verified clone, and
/// `--max-stale` counts from now): its reason is returned, to be shown.
pub fn start(broker: &Arc<Broker>) -> Result<Option<String>, ProxyError> {
    let Some(fresh) = broker.freshness() else {
        return Ok(None);
    };
    let follow = fresh.follow;
    let first = pull_once(broker, &follow);
    // Counted from the start either way: the clone verified when it was opened.
    fresh.synced();
    match &first {
        Err(why) if why == NO_REMOTE => return Err(ProxyError::NoRemote),
        Err(why) => fresh.failed(why.clone()),
        Ok(()) => {}
    }
    let weak: Weak<Broker> = Arc::downgrade(broker);
    std::thread::Builder::new()
        .name("broker-follow".into())
        .spawn(move || {
            loop {
                std::thread::sleep(follow.interval);
                let Some(b) = weak.upgrade() else { return };
                let Some(fresh) = b.freshness() else { return };
                match pull_once(&b, &follow) {
                    Ok(()) => fresh.synced(),
                    Err(why) => fresh.failed(why),
                }
                // Tell /healthz as soon as the state changes, without waiting
                // for a request.
                let _ = fresh.stale(b.health());
            }
        })
        .map_err(ProxyError::Thread)?;
    Ok(first.err())
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
