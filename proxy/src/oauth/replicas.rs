//! OAuth state between broker replicas that follow one remote
//! (`proxy --pull-interval`). The git push is the compare-and-swap (see
//! `agent_vault_core::sync::publish_state`): the replica whose push of its
//! new state lands owns that refresh, and the others pull it. A replica
//! whose refresh the provider refuses as `invalid_grant` may have used a
//! refresh token another replica already rotated: it pulls, and goes on
//! from the state it finds before giving up.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agent_vault_core::broker::oauth_state;
use agent_vault_core::sync::{Published, publish_state, pull_fast_forward};
use agent_vault_core::{SecretPath, Vault};

/// How a broker that follows its remote shares its OAuth state: the lock
/// on its clone (shared with the follow thread's pulls) and how long a
/// fetch or push may take.
#[derive(Clone)]
pub(crate) struct Publisher {
    lock: Arc<Mutex<()>>,
    timeout: Duration,
}

impl Publisher {
    pub(crate) fn new(lock: Arc<Mutex<()>>, timeout: Duration) -> Self {
        Publisher { lock, timeout }
    }

    /// Commits and pushes the state of `path` (already written), from a
    /// blocking thread. What became of it, or why it could not be pushed
    /// (the remote's failure by kind, never its URL).
    pub(crate) async fn publish(
        &self,
        vault: Vault,
        path: &SecretPath,
    ) -> Result<Published, String> {
        let files = oauth_state::state_files(&vault, path);
        let message = format!("agent-vault broker: OAuth state of {path}");
        self.blocking(move |timeout| publish_state(&vault, &files, &message, timeout))
            .await
    }

    /// Brings the clone up to date with the remote now (as the follow
    /// thread does every interval).
    pub(crate) async fn pull(&self, vault: Vault) -> Result<(), String> {
        self.blocking(move |timeout| pull_fast_forward(&vault, timeout).map(drop))
            .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Duration) -> agent_vault_core::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let (lock, timeout) = (self.lock.clone(), self.timeout);
        tokio::task::spawn_blocking(move || {
            let _clone = lock.lock().unwrap_or_else(PoisonError::into_inner);
            f(timeout).map_err(|e| crate::freshness::reason(&e))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
