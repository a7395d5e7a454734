//! `agent-vault ui`: the owner's local web page for proposals, and its
//! webhook.
//!
//! - `server.rs`: the hyper server, the Host check, security headers, router
//! - `session.rs`: the one-time login token, session cookies, CSRF tokens
//! - `form.rs`: a form body read into zeroized buffers
//! - `html.rs`, `pages.rs`, `audit.rs`: server-rendered HTML, everything from
//!   an agent escaped; `style.css` is served from the binary
//! - `connect.rs`: connecting an OAuth credential (Authorization Code with
//!   PKCE through a loopback redirect to this page)
//! - `store.rs`: the vault side (core's proposals API), blocking calls
//! - `webhook.rs`: a Slack-compatible POST for each new proposal

mod audit;
mod connect;
mod form;
mod html;
mod pages;
mod server;
mod session;
mod store;
mod webhook;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agent_vault_core::KeySource;
use agent_vault_core::writer::Writer;

use crate::output::{CliError, CliResult};

/// What `agent-vault ui` was asked.
pub(crate) struct UiOptions {
    /// The vault's directory.
    pub(crate) root: PathBuf,
    /// The owner key.
    pub(crate) key: KeySource,
    /// Where to listen (a loopback address; port 0 for any).
    pub(crate) listen: SocketAddr,
    /// The webhook URL given on the command line.
    pub(crate) webhook: Option<String>,
    /// The broker's audit log, for the audit page.
    pub(crate) audit: Option<PathBuf>,
    /// Extra CA certificates to trust for OAuth token endpoints.
    pub(crate) upstream_ca: Option<PathBuf>,
    /// Allow OAuth token endpoints on private addresses.
    pub(crate) allow_private_endpoints: bool,
}

/// Serves the page until Ctrl-C.
pub(crate) fn run(opts: UiOptions) -> CliResult<ExitCode> {
    if !opts.listen.ip().is_loopback() {
        return Err(CliError::Msg(
            format!("--listen {} is not a loopback address", opts.listen),
            Some("the page serves only this machine: use 127.0.0.1:PORT (or [::1]:PORT)".into()),
        ));
    }
    let owner = store::Owner {
        root: opts.root,
        key: opts.key,
    };
    // Only an owner may approve: refuse any other key now, not at the first click.
    let vault = owner.vault().map_err(|e| CliError::Msg(e, None))?;
    Writer::open(&vault, &owner.key)?;
    let webhook_url = opts
        .webhook
        .or_else(|| vault.config().ui.as_ref().and_then(|u| u.webhook.clone()));
    let hook = webhook_url
        .as_deref()
        .map(webhook::Webhook::new)
        .transpose()
        .map_err(|e| {
            CliError::Msg(
                e,
                Some("pass --webhook https://… or set ui.webhook in config.yaml".into()),
            )
        })?;
    drop(vault);

    let listener = std::net::TcpListener::bind(opts.listen).map_err(|e| {
        CliError::Msg(
            format!("cannot listen on {}: {e}", opts.listen),
            Some("choose another port with --listen 127.0.0.1:PORT, or leave it out for any free port".into()),
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Msg(format!("cannot read the listening address: {e}"), None))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| CliError::Msg(format!("cannot set up the listener: {e}"), None))?;
    let (sessions, login) = session::Sessions::new()
        .map_err(|e| CliError::Msg(format!("no randomness for the login token: {e}"), None))?;
    let tokens = agent_vault_proxy::oauth::TokenClient::new(
        opts.upstream_ca.as_deref(),
        opts.allow_private_endpoints,
    )
    .map_err(|e| CliError::Msg(e.to_string(), None))?;
    let app = Arc::new(server::App {
        addr,
        sessions,
        owner: Arc::new(owner),
        audit: opts.audit,
        connect: connect::Connect::new(tokens),
    });
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "agent-vault ui: serving {}", app.base());
        let _ = writeln!(
            out,
            "open this login URL (it works once): {}/login?t={}",
            app.base(),
            login.as_str()
        );
        if let Some(h) = &hook {
            let _ = writeln!(out, "webhook: {} for each new proposal", h.describe());
        }
        let _ = writeln!(out, "press Ctrl-C to stop");
        let _ = out.flush();
    }
    drop(login);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Msg(format!("cannot start the runtime: {e}"), None))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| CliError::Msg(format!("cannot set up the listener: {e}"), None))?;
        if let Some(h) = hook {
            tokio::spawn(webhook::watch(app.clone(), h));
        }
        tokio::select! {
            () = server::serve(app, listener) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}
