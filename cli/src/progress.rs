//! Progress bars on standard error for core's long work (import, rekey,
//! remove-owner, a big sync's verification and rotation): drawn with
//! `indicatif` only when standard error is a terminal, never with `--quiet`
//! or `--json`, so scripts and logs see nothing.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use agent_vault_core::progress::{self, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar of the work in progress, if any.
struct Bars(Mutex<Option<ProgressBar>>);

impl Progress for Bars {
    fn begin(&self, what: &str, total: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})") {
            bar.set_style(style.progress_chars("=> "));
        }
        // Only a name of ours: never a value.
        bar.set_message(what.to_owned());
        if let Ok(mut cur) = self.0.lock()
            && let Some(old) = cur.replace(bar)
        {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64) {
        if let Ok(cur) = self.0.lock()
            && let Some(bar) = cur.as_ref()
        {
            bar.inc(n);
        }
    }

    fn end(&self) {
        if let Ok(mut cur) = self.0.lock()
            && let Some(bar) = cur.take()
        {
            bar.finish_and_clear();
        }
    }
}

/// Installs the bars if standard error is a terminal and output is neither
/// quiet nor JSON.
pub fn install(quiet: bool, json: bool) {
    if quiet || json || !std::io::stderr().is_terminal() {
        return;
    }
    progress::install(Arc::new(Bars(Mutex::new(None))));
}
