//! The services list's rate limits, enforced: for each (agent, service)
//! pair a GCRA bucket (`governor`: requests per second with a burst) and a
//! count of requests in flight (a semaphore whose permit the request holds
//! until its response body ends, or its WebSocket closes). Counted in this
//! broker instance's memory: replicas count apart.
//!
//! Built with each snapshot of the services list; a service whose limits
//! did not change keeps its counts across a re-read. A request looks its
//! service up once (a map by name), then its agent (a sharded map); no
//! lock is held across an await, and nothing is allocated once the pair
//! has been seen.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agent_vault_core::broker::services::{Applied, Services};
use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Every limited service's counters, by service name.
#[derive(Default)]
pub(crate) struct RateLimits {
    by_service: HashMap<String, Arc<ServiceLimiter>>,
}

/// One service's limits and its agents' counters.
struct ServiceLimiter {
    applied: Applied,
    quota: Option<Quota>,
    /// Where each limit was set: the service's own field, or the defaults.
    rate_from_default: bool,
    in_flight_from_default: bool,
    agents: DashMap<String, Slot>,
}

/// One (agent, service) pair's counters.
struct Slot {
    rate: Option<DefaultDirectRateLimiter>,
    in_flight: Option<Arc<Semaphore>>,
}

/// A request let through: holds its place among those in flight until
/// dropped.
#[must_use = "the request counts as in flight until this is dropped"]
pub(crate) struct Admitted {
    _held: Option<OwnedSemaphorePermit>,
}

/// Which limit a request reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) agent: String,
    pub(crate) service: String,
    pub(crate) kind: LimitKind,
    /// Whole seconds to wait before trying again (at least 1).
    pub(crate) retry_after: u64,
}

/// The limit reached, as the answer describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LimitKind {
    /// Requests per second with a burst (`5 requests/s, burst 10`).
    Rate { text: String, from_default: bool },
    /// Requests in flight.
    InFlight { max: u32, from_default: bool },
}

impl RateLimits {
    /// The limiters for a services list: those of `previous` kept for every
    /// service whose limits are the same, new ones for the rest.
    pub(crate) fn new(services: &Services, previous: Option<&RateLimits>) -> Self {
        let mut by_service = HashMap::new();
        for (name, svc) in &services.services {
            // The list verified, so its limits did too; a service whose
            // limits cannot be read is unlimited here as in the check.
            let Ok(Some(applied)) = services.limits_for(svc) else {
                continue;
            };
            let rate_from_default = svc.limits.rps.is_none() && svc.limits.burst.is_none();
            let in_flight_from_default = svc.limits.in_flight.is_none();
            let kept = previous.and_then(|p| p.by_service.get(name)).filter(|l| {
                l.applied.same(&applied)
                    && l.rate_from_default == rate_from_default
                    && l.in_flight_from_default == in_flight_from_default
            });
            let limiter = match kept {
                Some(l) => l.clone(),
                None => Arc::new(ServiceLimiter {
                    applied,
                    quota: applied.rate.and_then(|r| {
                        Quota::with_period(r.interval()).map(|q| q.allow_burst(r.burst))
                    }),
                    rate_from_default,
                    in_flight_from_default,
                    agents: DashMap::new(),
                }),
            };
            by_service.insert(name.clone(), limiter);
        }
        RateLimits { by_service }
    }

    /// Whether `agent` may send one more request to `service` now: let
    /// through (its place in flight held by what is returned), or which
    /// limit it reached and how long to wait.
    pub(crate) fn admit(&self, service: &str, agent: &str) -> Result<Admitted, Limited> {
        // No limits anywhere (the common case): not even a lookup.
        if self.by_service.is_empty() {
            return Ok(Admitted { _held: None });
        }
        let Some(l) = self.by_service.get(service) else {
            return Ok(Admitted { _held: None });
        };
        // Looked up by `&str`; the name is copied once, for a new pair.
        let slot = match l.agents.get(agent) {
            Some(slot) => slot,
            None => l
                .agents
                .entry(agent.to_owned())
                .or_insert_with(|| l.slot())
                .downgrade(),
        };
        let limited = |kind: LimitKind, retry_after: u64| Limited {
            agent: agent.to_owned(),
            service: service.to_owned(),
            kind,
            retry_after,
        };
        // In flight first: a place is given back if the rate refuses, a
        // token of the bucket would not be.
        let permit = match &slot.in_flight {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let max = l.applied.in_flight.map_or(0, |n| n.get());
                    let kind = LimitKind::InFlight {
                        max,
                        from_default: l.in_flight_from_default,
                    };
                    return Err(limited(kind, 1));
                }
            },
            None => None,
        };
        if let Some(rate) = &slot.rate
            && let Err(not_until) = rate.check()
        {
            let wait = not_until.wait_time_from(rate.clock().now());
            let kind = LimitKind::Rate {
                text: Applied {
                    rate: l.applied.rate,
                    in_flight: None,
                }
                .to_string(),
                from_default: l.rate_from_default,
            };
            return Err(limited(kind, retry_seconds(wait)));
        }
        Ok(Admitted { _held: permit })
    }
}

impl ServiceLimiter {
    /// A new pair's counters: a full bucket, nothing in flight.
    fn slot(&self) -> Slot {
        Slot {
            rate: self.quota.map(governor::RateLimiter::direct),
            in_flight: self
                .applied
                .in_flight
                .map(|n| Arc::new(Semaphore::new(n.get() as usize))),
        }
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
fn retry_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Limited {
            agent,
            service,
            kind,
            retry_after,
        } = self;
        let (what, flag, from_default) = match kind {
            LimitKind::Rate { text, from_default } => (
                format!(
                    "agent {agent} reached the rate limit of service {service} ({text}); try again in {retry_after} s"
                ),
                "--rps N --burst N",
                *from_default,
            ),
            LimitKind::InFlight { max, from_default } => (
                format!(
                    "agent {agent} has {max} requests in flight to service {service}, its limit; try again when one has ended"
                ),
                "--in-flight N",
                *from_default,
            ),
        };
        let set = if from_default {
            format!(
                "the vault's default limits; an owner can raise them with `agent-vault service limits --default {flag}`, or for this service alone with `agent-vault service limits {service} {flag}`"
            )
        } else {
            format!("an owner can raise it with `agent-vault service limits {service} {flag}`")
        };
        write!(
            f,
            "{what} (limits count per agent and service, on each broker instance; {set})"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_vault_core::broker::services::{Auth, Limits, Service};

    fn services(limits: Limits, defaults: Limits) -> Services {
        let mut svc = Service::new(vec!["a.example".into()], Auth::Passthrough);
        svc.limits = limits;
        let mut s = Services {
            default_limits: defaults,
            ..Services::default()
        };
        s.services.insert("api".into(), svc);
        s.services.insert(
            "free".into(),
            Service::new(vec!["b.example".into()], Auth::Passthrough),
        );
        s
    }

    #[test]
    fn a_burst_then_429_per_agent() {
        let own = Limits {
            rps: Some(0.5),
            burst: Some(3),
            in_flight: None,
        };
        let r = RateLimits::new(&services(own, Limits::default()), None);
        for _ in 0..3 {
            assert!(r.admit("api", "bot").is_ok());
        }
        let refused = r.admit("api", "bot").err().unwrap();
        assert!(matches!(refused.kind, LimitKind::Rate { .. }));
        assert!((1..=2).contains(&refused.retry_after), "{refused:?}");
        let text = refused.to_string();
        assert!(
            text.contains("0.5 requests/s, burst 3")
                && text.contains("`agent-vault service limits api --rps N --burst N`"),
            "{text}"
        );
        // Another agent has its own bucket; a service without limits none.
        assert!(r.admit("api", "other").is_ok());
        for _ in 0..100 {
            assert!(r.admit("free", "bot").is_ok());
        }
    }

    #[test]
    fn in_flight_is_held_until_dropped() {
        let defaults = Limits {
            rps: None,
            burst: None,
            in_flight: Some(2),
        };
        let r = RateLimits::new(&services(Limits::default(), defaults), None);
        let a = r.admit("free", "bot").ok().unwrap();
        let b = r.admit("free", "bot").ok().unwrap();
        let refused = r.admit("free", "bot").err().unwrap();
        assert_eq!(refused.retry_after, 1);
        assert!(
            refused
                .to_string()
                .contains("service limits --default --in-flight N"),
            "{refused}"
        );
        assert!(r.admit("free", "other").is_ok());
        drop(a);
        let c = r.admit("free", "bot").ok().unwrap();
        drop((b, c));
    }

    #[test]
    fn counts_survive_a_reread_unless_the_limits_changed() {
        let own = Limits {
            rps: Some(1.0),
            burst: Some(1),
            in_flight: None,
        };
        let list = services(own, Limits::default());
        let first = RateLimits::new(&list, None);
        assert!(first.admit("api", "bot").is_ok());
        let same = RateLimits::new(&list, Some(&first));
        assert!(same.admit("api", "bot").is_err(), "the bucket was kept");
        let raised = Limits {
            burst: Some(2),
            ..own
        };
        let changed = RateLimits::new(&services(raised, Limits::default()), Some(&same));
        assert!(changed.admit("api", "bot").is_ok(), "a new bucket");
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_seconds(Duration::ZERO), 1);
        assert_eq!(retry_seconds(Duration::from_millis(10)), 1);
        assert_eq!(retry_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_seconds(Duration::from_millis(2001)), 3);
    }
}
