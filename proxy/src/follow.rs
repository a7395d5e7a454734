//! Following the vault's remote (`proxy --pull-interval`): a broker on its
//! own machine fetches and fast-forwards its clone itself, through core's
//! verified pull (every incoming commit checked as every reader checks it;
//! fast-forward only), and takes the change at once, so an owner's
//! revocation reaches it within the interval. With `--max-stale`, a broker
//! that has not brought its clone up to date with the remote for that long
//! refuses every request (answered as the problem `vault-stale`) and
//! `/healthz` says so (the check [`CHECK`]), until it has again: it fails
//! closed rather than serve grants that may have been revoked. The state
//! is kept in `crate::freshness`; this module is the thread that pulls.

use std::sync::{Arc, Weak};

use agent_vault_core::sync::{PullOutcome, pull_fast_forward};

use crate::broker::Broker;
use crate::error::ProxyError;
pub use crate::freshness::{CHECK, Follow};

/// One pull: fetch, verify, fast-forward; the broker takes a change at
/// once. `Err`: why the clone is not up to date with the remote.
fn pull_once(b: &Broker, follow: &Follow) -> Result<(), String> {
    let lock = b.freshness().map(|f| f.clone_lock.clone());
    let _clone = lock
        .as_ref()
        .map(|l| l.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    match pull_fast_forward(b.vault(), follow.timeout()) {
        Ok(PullOutcome::UpToDate) => Ok(()),
        Ok(PullOutcome::FastForward) => {
            b.refresh();
            Ok(())
        }
        Ok(PullOutcome::NoRemote) => Err(NO_REMOTE.into()),
        Ok(PullOutcome::Merged { .. }) => Err("a pull merged, which a broker never does".into()),
        Err(e) => Err(crate::freshness::reason(&e)),
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
