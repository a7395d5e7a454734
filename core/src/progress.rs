//! Progress of long work (import, rekey, remove-owner, a migration, the
//! rotation of a merge). Core draws nothing: it tells the [`Progress`] a
//! program installed once with [`install`] (the CLI draws a bar on a
//! terminal); with none installed the calls cost one atomic load.

use std::sync::{Arc, OnceLock};

/// Where progress goes. Called from worker threads: implementations are
/// `Send + Sync` and cheap.
pub trait Progress: Send + Sync {
    /// Work described by `what` begins, `total` steps long.
    fn begin(&self, what: &str, total: u64);
    /// `n` more steps are done.
    fn advance(&self, n: u64);
    /// The work ended (finished or failed).
    fn end(&self);
}

static SINK: OnceLock<Arc<dyn Progress>> = OnceLock::new();

/// Installs the process's progress sink; only the first call counts.
pub fn install(sink: Arc<dyn Progress>) {
    let _ = SINK.set(sink);
}

/// A piece of long work being reported; ends when dropped, so an early
/// return (an error) ends it too.
pub(crate) struct Task(Option<&'static Arc<dyn Progress>>);

impl Task {
    /// Begins reporting `what`, `total` steps long (nothing if there is no
    /// sink, or too little work to be worth a bar).
    pub(crate) fn begin(what: &str, total: usize) -> Self {
        const WORTH_A_BAR: usize = 64;
        let sink = SINK.get().filter(|_| total >= WORTH_A_BAR);
        if let Some(s) = sink {
            s.begin(what, total as u64);
        }
        Task(sink)
    }

    /// One more step done.
    pub(crate) fn step(&self) {
        if let Some(s) = self.0 {
            s.advance(1);
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.end();
        }
    }
}
