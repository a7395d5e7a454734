//! OAuth credentials in the broker: the current access token of each
//! credential, refreshed before it is within five minutes of expiry, once
//! per credential however many requests wait (one lock per credential,
//! held across the refresh: the requests behind it find the new token).
//!
//! What the provider gives (a rotated refresh token, the new access token)
//! is written as the broker's state (`core::broker::oauth_state`) and read
//! back when the broker starts, so a restart uses the newest refresh token.
//! Every access token injected is remembered so that responses keep being
//! scrubbed of it after it is replaced.

mod endpoint;
mod replicas;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_vault_core::broker::oauth::{OAuthCredential, due, refresh_at};
use agent_vault_core::broker::oauth_state::{self, EARLIER_KEPT, OAuthState};
use agent_vault_core::crypto::{Identity, SecretValue};
use agent_vault_core::model::Manifest;
use agent_vault_core::sync::Published;
use agent_vault_core::{SecretPath, Vault};
use dashmap::DashMap;
use zeroize::Zeroizing;

pub use endpoint::{Granted, OAuthError, TokenClient};
pub(crate) use replicas::Publisher;

/// After a failed refresh, the provider is not asked again for this long
/// (the requests meanwhile get the same answer, or the still-valid token).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Where a credential's state is read and written: the vault, the broker's
/// key, the manifest (whose owners the state is encrypted to).
pub(crate) struct StateCtx<'a> {
    pub(crate) vault: &'a Vault,
    pub(crate) identity: &'a Identity,
    pub(crate) manifest: &'a Manifest,
    /// Set when the broker follows its remote: new state is pushed.
    pub(crate) publish: Option<Publisher>,
}

/// A credential's tokens now.
pub(crate) struct Current {
    /// The access token to inject.
    pub(crate) access: SecretValue,
    /// What to scrub besides it: every access token held before, the
    /// refresh token and the client secret (never injected, but a token
    /// endpoint on the service's own host could be made to echo them).
    pub(crate) scrub_also: Vec<SecretValue>,
    /// When the access token is due for a refresh (Unix seconds).
    pub(crate) refresh_at: Option<i64>,
}

/// What the broker holds for one credential.
#[derive(Default)]
struct Cell {
    /// SHA-256 (hex) of the owner-set value this continues from; empty
    /// until first used.
    base: String,
    refresh: Zeroizing<String>,
    access: Option<Zeroizing<String>>,
    expires_at: Option<i64>,
    /// When this broker was granted the access token (`None` for one read
    /// back from the vault): a short-lived token is due halfway.
    granted_at: Option<i64>,
    earlier: Vec<Zeroizing<String>>,
    /// The last failed refresh, and why.
    failed: Option<(Instant, String)>,
}

/// Every OAuth credential the broker has used.
pub(crate) struct Refresher {
    client: TokenClient,
    cells: DashMap<SecretPath, Arc<tokio::sync::Mutex<Cell>>>,
    /// Bumped by every refresh: a plan made before it may hold an old token.
    generation: AtomicU64,
}

/// Why a credential has no access token to inject (names, never values).
#[derive(Debug)]
pub(crate) struct RefreshFailed {
    /// `group/name`.
    pub(crate) credential: String,
    /// The provider's or the network's part.
    pub(crate) why: String,
}

impl std::fmt::Display for RefreshFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the OAuth credential {} could not be refreshed: {}; an owner connects it again (agent-vault oauth set {})",
            self.credential, self.why, self.credential
        )
    }
}

fn secret(s: &str) -> SecretValue {
    agent_vault_core::secrecy::SecretBox::new(Box::new(s.as_bytes().to_vec()))
}

impl Refresher {
    pub(crate) fn new(client: TokenClient) -> Self {
        Refresher {
            client,
            cells: DashMap::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// Bumped by every refresh.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The credential's access token, refreshed first if it is due. `owner`
    /// is the owner-set value (the credential's JSON), already verified.
    pub(crate) async fn current(
        &self,
        path: &SecretPath,
        owner: &[u8],
        ctx: &StateCtx<'_>,
    ) -> Result<Current, RefreshFailed> {
        let fail = |why: String| RefreshFailed {
            credential: path.to_string(),
            why,
        };
        let cred =
            OAuthCredential::parse(&path.to_string(), owner).map_err(|e| fail(e.to_string()))?;
        let cell = self.cells.entry(path.clone()).or_default().clone();
        let mut c = cell.lock().await;
        let base = agent_vault_core::crypto::sha256_hex(owner);
        if c.base != base {
            start(&mut c, base.clone(), &cred, path, ctx);
        }
        let now = jiff::Timestamp::now().as_second();
        let still_valid = c.access.is_some() && c.expires_at.is_none_or(|e| e > now + 5);
        let recently_failed = c
            .failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RETRY_AFTER_FAILURE)
            .map(|(_, why)| why.clone());
        if c.access.is_none() || due(refresh_at(c.expires_at, c.granted_at), now) {
            match recently_failed {
                Some(why) if !still_valid => return Err(fail(why)),
                Some(_) => {}
                None => match self.refresh(&mut c, &cred, path, &base, ctx).await {
                    Ok(granted) => {
                        if granted && let Some(p) = ctx.publish.clone() {
                            publish_later(p, ctx.vault.clone(), path.clone(), cell.clone());
                        }
                    }
                    Err(e) if still_valid => {
                        // Said by name, never a token: the operator learns
                        // before requests start failing.
                        eprintln!(
                            "agent-vault proxy: refreshing the OAuth credential {path} failed ({e}); \
                             its access token is used until it expires"
                        );
                        c.failed = Some((Instant::now(), e.to_string()));
                    }
                    Err(e) => {
                        c.failed = Some((Instant::now(), e.to_string()));
                        return Err(fail(e.to_string()));
                    }
                },
            }
        }
        let access = c
            .access
            .as_deref()
            .map(|a| secret(a))
            .ok_or_else(|| fail("no access token".into()))?;
        Ok(Current {
            access,
            scrub_also: c
                .earlier
                .iter()
                .map(|t| secret(t))
                .chain([secret(&c.refresh), secret(&cred.client_secret)])
                .collect(),
            refresh_at: refresh_at(c.expires_at, c.granted_at),
        })
    }

    /// Asks the provider for a new access token; whether it granted one
    /// (`false`: the remote's state had one that is not due). A broker
    /// following its remote that is refused `invalid_grant` pulls first:
    /// another replica may have spent this refresh token and published what
    /// it was given, and that newer state is used (refreshed again only if
    /// it is due too).
    async fn refresh(
        &self,
        c: &mut Cell,
        cred: &OAuthCredential,
        path: &SecretPath,
        base: &str,
        ctx: &StateCtx<'_>,
    ) -> Result<bool, OAuthError> {
        let refused = match self.client.refresh(&cred.client(), &c.refresh).await {
            Ok(g) => {
                self.granted(c, g);
                persist(c, path, ctx);
                return Ok(true);
            }
            Err(e) => e,
        };
        let (Some(p), OAuthError::Refused { error, .. }) = (&ctx.publish, &refused) else {
            return Err(refused);
        };
        if error != "invalid_grant" {
            return Err(refused);
        }
        // The replica that spent it pushes what it was given moments after
        // the provider answered it: pull until that arrives, for a while.
        let spent = c.refresh.clone();
        for pause in [0, 250, 500, 1000] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if p.pull(ctx.vault.clone()).await.is_ok() {
                start(c, base.to_owned(), cred, path, ctx);
            }
            if *c.refresh != *spent {
                break;
            }
        }
        if *c.refresh == *spent {
            return Err(refused);
        }
        let now = jiff::Timestamp::now().as_second();
        if c.access.is_some() && !due(refresh_at(c.expires_at, c.granted_at), now) {
            return Ok(false);
        }
        let g = self.client.refresh(&cred.client(), &c.refresh).await?;
        self.granted(c, g);
        persist(c, path, ctx);
        Ok(true)
    }

    /// Takes in what the provider granted.
    fn granted(&self, c: &mut Cell, g: Granted) {
        if let Some(old) = c.access.take() {
            remember(c, old);
        }
        c.access = Some(Zeroizing::new(g.access_token.clone()));
        c.expires_at = g.expires_at;
        c.granted_at = Some(jiff::Timestamp::now().as_second());
        if let Some(r) = &g.refresh_token {
            c.refresh = Zeroizing::new(r.clone());
        }
        c.failed = None;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Keeps an access token that was injected, to scrub it later.
fn remember(c: &mut Cell, token: Zeroizing<String>) {
    if !c.earlier.iter().any(|t| **t == *token) {
        c.earlier.push(token);
    }
    if c.earlier.len() > EARLIER_KEPT {
        c.earlier.remove(0);
    }
}

/// (Re)starts a cell from the owner's value, then the broker's state if it
/// continues from that same value. Tokens injected before stay remembered.
fn start(
    c: &mut Cell,
    base: String,
    cred: &OAuthCredential,
    path: &SecretPath,
    ctx: &StateCtx<'_>,
) {
    if let Some(old) = c.access.take() {
        remember(c, old);
    }
    c.refresh = Zeroizing::new(cred.refresh_token.clone());
    c.access = cred.access_token.clone().map(Zeroizing::new);
    c.expires_at = cred.expires_at;
    c.granted_at = None;
    c.failed = None;
    match oauth_state::read(ctx.vault, ctx.identity, path) {
        Ok(Some(s)) if s.base == base => {
            if let Some(old) = c.access.take() {
                remember(c, old);
            }
            for t in &s.earlier {
                remember(c, Zeroizing::new(t.clone()));
            }
            c.refresh = Zeroizing::new(s.refresh_token.clone());
            c.access = Some(Zeroizing::new(s.access_token.clone()));
            c.expires_at = s.expires_at;
        }
        Ok(_) => {}
        Err(e) => eprintln!(
            "agent-vault proxy: the OAuth state of {path} is unreadable ({e}); using the owner's value"
        ),
    }
    c.base = base;
}

/// Pushes the state just written, in the background (requests go on with
/// the new token meanwhile). Another replica's push landing first means
/// this one lost the swap: the cell starts again from the state pulled, at
/// the next request (the token it was given stays scrubbed).
fn publish_later(
    p: replicas::Publisher,
    vault: Vault,
    path: SecretPath,
    cell: Arc<tokio::sync::Mutex<Cell>>,
) {
    tokio::spawn(async move {
        match p.publish(vault, &path).await {
            Ok(Published::Lost) => cell.lock().await.base.clear(),
            Ok(_) => {}
            Err(why) => eprintln!(
                "agent-vault proxy: the OAuth state of {path} was not pushed ({why}); \
                 this broker goes on with it and pushes at its next refresh"
            ),
        }
    });
}

/// Writes the cell as the broker's state; a failure is said (by name) and
/// the broker carries on with what it holds in memory.
fn persist(c: &Cell, path: &SecretPath, ctx: &StateCtx<'_>) {
    let Some(access) = &c.access else { return };
    let state = OAuthState {
        base: c.base.clone(),
        refresh_token: (*c.refresh).clone(),
        access_token: (**access).clone(),
        expires_at: c.expires_at,
        earlier: c.earlier.iter().map(|t| (**t).clone()).collect(),
    };
    if let Err(e) = oauth_state::write(ctx.vault, ctx.identity, ctx.manifest, path, &state) {
        eprintln!("agent-vault proxy: cannot write the OAuth state of {path}: {e}");
    }
}
