//! Phase timings on stderr when `AGENT_VAULT_TRACE` is set: where the time
//! of a command goes, without a profiler. Prints names and durations only.

use std::sync::OnceLock;
use std::time::Instant;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("AGENT_VAULT_TRACE").is_some())
}

/// Measures a phase until dropped.
pub struct Phase {
    label: &'static str,
    start: Option<Instant>,
}

/// Starts timing a phase.
pub fn phase(label: &'static str) -> Phase {
    Phase {
        label,
        start: enabled().then(Instant::now),
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(s) = self.start {
            eprintln!(
                "agent-vault trace: {:>9.3} ms  {}",
                s.elapsed().as_secs_f64() * 1e3,
                self.label
            );
        }
    }
}
