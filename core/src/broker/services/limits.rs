//! Rate limits in the services list: requests per second with a burst, and
//! requests in flight, set on a service or as the vault's defaults (which a
//! service's own fields override one by one). The broker counts them per
//! (agent, service) pair and per broker instance; this is only the model.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The lowest rate a service may set: one request in 1000 seconds.
pub const MIN_RPS: f64 = 0.001;

/// The highest rate a service may set (above it, a limit means nothing).
pub const MAX_RPS: f64 = 1_000_000.0;

/// Limits as written in `services.yaml` (on a service, or the vault's
/// `default_limits`): each field optional.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per second, refilled steadily (may be fractional: `0.5` is
    /// one every two seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<f64>,
    /// How many requests may come at once after a quiet spell (the
    /// bucket's size); without it, one second's worth (`rps` rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Requests in flight at once; a streaming response counts until its
    /// body ends, a WebSocket until it closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
}

/// `rps` compared by its bits: a total equality (the file's value, exactly).
impl PartialEq for Limits {
    fn eq(&self, other: &Self) -> bool {
        self.rps.map(f64::to_bits) == other.rps.map(f64::to_bits)
            && self.burst == other.burst
            && self.in_flight == other.in_flight
    }
}

impl Eq for Limits {}

impl Limits {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.rps.is_none() && self.burst.is_none() && self.in_flight.is_none()
    }

    /// These limits with each field they leave unset taken from `defaults`.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            rps: self.rps.or(defaults.rps),
            burst: self.burst.or(defaults.burst),
            in_flight: self.in_flight.or(defaults.in_flight),
        }
    }

    /// Each field in its range (the fields alone; see [`Limits::applied`]
    /// for how they combine).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rps) = self.rps {
            if !rps.is_finite() || rps <= 0.0 {
                return Err(format!(
                    "rps must be a number more than 0 (got {rps}); to lift a limit, clear it"
                ));
            }
            if !(MIN_RPS..=MAX_RPS).contains(&rps) {
                return Err(format!(
                    "rps must be between {MIN_RPS} (one request in 1000 s) and {MAX_RPS} (got {rps})"
                ));
            }
        }
        if self.burst == Some(0) {
            return Err("burst must be at least 1 (got 0)".into());
        }
        if self.in_flight == Some(0) {
            return Err("in_flight must be at least 1 (got 0)".into());
        }
        Ok(())
    }

    /// The limits that apply, when these are a service's own merged with
    /// the defaults: `None` when nothing is limited. A burst without a
    /// rate is refused (the bucket refills at `rps`).
    pub fn applied(&self) -> Result<Option<Applied>, String> {
        self.validate()?;
        let rate = match (self.rps, self.burst) {
            (None, None) => None,
            (None, Some(b)) => {
                return Err(format!(
                    "burst {b} needs rps (the bucket refills at rps requests per second): set rps too"
                ));
            }
            (Some(per_second), burst) => {
                let burst = burst
                    .or_else(|| Some(per_second.ceil() as u32))
                    .and_then(NonZeroU32::new)
                    .unwrap_or(NonZeroU32::MIN);
                Some(Rate { per_second, burst })
            }
        };
        let in_flight = self.in_flight.and_then(NonZeroU32::new);
        Ok((rate.is_some() || in_flight.is_some()).then_some(Applied { rate, in_flight }))
    }
}

/// A rate: requests per second with a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests per second (validated: between [`MIN_RPS`] and [`MAX_RPS`]).
    pub per_second: f64,
    /// The bucket's size.
    pub burst: NonZeroU32,
}

impl Rate {
    /// The time one request's allowance takes to come back (`1 / rps`).
    pub fn interval(&self) -> Duration {
        Duration::try_from_secs_f64(1.0 / self.per_second).unwrap_or(Duration::from_secs(1000))
    }
}

/// The limits a service's requests are held to, per (agent, service) pair
/// and per broker instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied {
    /// Requests per second with a burst, if limited.
    pub rate: Option<Rate>,
    /// Requests in flight, if limited.
    pub in_flight: Option<NonZeroU32>,
}

impl Applied {
    /// Whether both would limit alike: the broker keeps a service's counts
    /// across a re-read of the services list when this holds.
    pub fn same(&self, other: &Applied) -> bool {
        self.in_flight == other.in_flight
            && match (self.rate, other.rate) {
                (Some(a), Some(b)) => {
                    a.per_second.to_bits() == b.per_second.to_bits() && a.burst == b.burst
                }
                (None, None) => true,
                _ => false,
            }
    }
}

/// `5 requests/s, burst 10, 4 in flight`.
impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        if let Some(r) = self.rate {
            let unit = if r.per_second == 1.0 {
                "request"
            } else {
                "requests"
            };
            write!(f, "{} {unit}/s, burst {}", r.per_second, r.burst)?;
            sep = ", ";
        }
        if let Some(n) = self.in_flight {
            write!(f, "{sep}{n} in flight")?;
        }
        Ok(())
    }
}

/// `rps 5, burst 10, in_flight 4` (the fields set, as the file names them).
impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = self.rps {
            parts.push(format!("rps {r}"));
        }
        if let Some(b) = self.burst {
            parts.push(format!("burst {b}"));
        }
        if let Some(n) = self.in_flight {
            parts.push(format!("in_flight {n}"));
        }
        if parts.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(rps: Option<f64>, burst: Option<u32>, in_flight: Option<u32>) -> Limits {
        Limits {
            rps,
            burst,
            in_flight,
        }
    }

    #[test]
    fn fields_are_checked() {
        for (bad, why) in [
            (l(Some(0.0), None, None), "more than 0"),
            (l(Some(-1.0), None, None), "more than 0"),
            (l(Some(f64::NAN), None, None), "more than 0"),
            (l(Some(f64::INFINITY), None, None), "more than 0"),
            (l(Some(0.0001), None, None), "between 0.001"),
            (l(Some(2e6), None, None), "between 0.001"),
            (l(Some(1.0), Some(0), None), "burst must be at least 1"),
            (l(None, None, Some(0)), "in_flight must be at least 1"),
            (l(None, Some(3), None), "burst 3 needs rps"),
        ] {
            let err = bad.applied().unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert_eq!(l(None, None, None).applied(), Ok(None));
    }

    #[test]
    fn a_burst_defaults_to_a_seconds_worth() {
        let a = l(Some(2.5), None, None).applied().unwrap().unwrap();
        let rate = a.rate.unwrap();
        assert_eq!(rate.burst.get(), 3);
        assert_eq!(rate.interval(), Duration::from_millis(400));
        let slow = l(Some(0.5), None, Some(2)).applied().unwrap().unwrap();
        assert_eq!(slow.rate.unwrap().burst.get(), 1);
        assert_eq!(slow.rate.unwrap().interval(), Duration::from_secs(2));
        assert_eq!(slow.to_string(), "0.5 requests/s, burst 1, 2 in flight");
        let only = l(None, None, Some(4)).applied().unwrap().unwrap();
        assert_eq!(only.rate, None);
        assert_eq!(only.to_string(), "4 in flight");
    }

    #[test]
    fn a_services_fields_override_the_defaults_one_by_one() {
        let defaults = l(Some(10.0), Some(20), Some(4));
        let own = l(Some(1.0), None, None);
        let merged = own.or(defaults);
        assert_eq!(merged, l(Some(1.0), Some(20), Some(4)));
        assert_eq!(Limits::default().or(defaults), defaults);
        assert_eq!(own.or(Limits::default()), own);
        let a = merged.applied().unwrap().unwrap();
        assert_eq!(a.to_string(), "1 request/s, burst 20, 4 in flight");
        assert!(a.same(&merged.applied().unwrap().unwrap()));
        assert!(!a.same(&defaults.applied().unwrap().unwrap()));
        // A burst alone on a service takes the default's rate.
        let burst_only = l(None, Some(5), None).or(defaults);
        assert_eq!(
            burst_only.applied().unwrap().unwrap().to_string(),
            "10 requests/s, burst 5, 4 in flight"
        );
        assert_eq!(merged.to_string(), "rps 1, burst 20, in_flight 4");
        assert_eq!(Limits::default().to_string(), "none");
    }

    #[test]
    fn the_file_reads_writes_and_refuses_limits() {
        use crate::broker::services::Services;
        use std::path::Path;
        let parse = |yaml: &str| Services::parse(Path::new("services.yaml"), yaml.as_bytes());
        // A file from before limits reads as unlimited, and writes no limit.
        let old = "services:\n  gh:\n    hosts: [api.github.com]\n    auth: passthrough\n";
        let s = parse(old).unwrap();
        assert_eq!(s.limits_for(&s.services["gh"]), Ok(None));
        assert!(!String::from_utf8_lossy(&s.to_bytes()).contains("limit"));
        // Defaults apply to a service that sets none, field by field to one
        // that sets some, and never to a tunnel.
        let text = "default_limits:\n  rps: 10\n  in_flight: 4\nservices:\n  a:\n    hosts: [a.example]\n    auth: passthrough\n  b:\n    hosts: [b.example]\n    auth: passthrough\n    limits:\n      rps: 0.5\n      burst: 2\n  t:\n    hosts: [t.example]\n    auth: passthrough\n    tunnel: true\n";
        let s = parse(text).unwrap();
        let of = |n: &str| s.limits_for(&s.services[n]).unwrap().map(|a| a.to_string());
        assert_eq!(
            of("a").as_deref(),
            Some("10 requests/s, burst 10, 4 in flight")
        );
        assert_eq!(
            of("b").as_deref(),
            Some("0.5 requests/s, burst 2, 4 in flight")
        );
        assert_eq!(of("t"), None);
        assert_eq!(
            parse(String::from_utf8_lossy(&s.to_bytes()).as_ref()).unwrap(),
            s
        );
        // Defaults alone are written (and read) even with no service.
        let only = Services {
            default_limits: l(Some(1.0), None, None),
            ..Services::default()
        };
        assert_eq!(
            parse(String::from_utf8_lossy(&only.to_bytes()).as_ref()).unwrap(),
            only
        );
        for (yaml, why) in [
            (
                "default_limits: {rps: 0}\nservices: {}\n",
                "default_limits: rps must be a number more than 0",
            ),
            (
                "services:\n  a:\n    hosts: [a.example]\n    auth: passthrough\n    limits: {burst: 0, rps: 1}\n",
                "service a: limits: burst must be at least 1",
            ),
            (
                "services:\n  a:\n    hosts: [a.example]\n    auth: passthrough\n    limits: {in_flight: 0}\n",
                "service a: limits: in_flight must be at least 1",
            ),
            (
                "services:\n  a:\n    hosts: [a.example]\n    auth: passthrough\n    limits: {burst: 5}\n",
                "service a: limits: burst 5 needs rps",
            ),
            (
                "services:\n  a:\n    hosts: [a.example]\n    auth: passthrough\n    limits: {rps: 1, per_hour: 5}\n",
                "per_hour",
            ),
            (
                "services:\n  t:\n    hosts: [t.example]\n    auth: passthrough\n    tunnel: true\n    limits: {rps: 1}\n",
                "it takes no limits",
            ),
        ] {
            let err = parse(yaml).unwrap_err().to_string();
            assert!(err.contains(why), "{yaml}: {err}");
        }
    }
}
