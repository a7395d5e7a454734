//! Whether the broker can serve: what the admin listener's `GET /healthz`
//! answers (`crate::admin`).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Whether the broker can serve. It can once it has started (its vault
/// loaded and verified) until some check reports that it cannot: each
/// check is named, so several can report apart (the fleet's "remote not
/// reached for too long", say) and `/healthz` lists every failing one.
#[derive(Debug, Default)]
pub struct Health {
    failing: Mutex<BTreeMap<&'static str, String>>,
}

impl Health {
    /// The check `check` fails, for this reason (one line; names, never
    /// values): `/healthz` answers 503 until it passes again.
    pub fn fail(&self, check: &'static str, reason: impl Into<String>) {
        self.lock().insert(check, reason.into());
    }

    /// The check `check` passes (again).
    pub fn pass(&self, check: &'static str) {
        self.lock().remove(check);
    }

    /// The checks failing now, with their reasons; empty when healthy.
    pub fn failing(&self) -> BTreeMap<&'static str, String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        // A map replaced entry by entry: a poisoned one is still whole.
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_fail_and_pass_apart() {
        let h = Health::default();
        assert!(h.failing().is_empty());
        h.fail("remote", "not reached for 10m");
        h.fail("other", "x");
        h.pass("other");
        assert_eq!(
            h.failing().into_iter().collect::<Vec<_>>(),
            vec![("remote", "not reached for 10m".to_owned())]
        );
        h.pass("remote");
        assert!(h.failing().is_empty());
    }
}
