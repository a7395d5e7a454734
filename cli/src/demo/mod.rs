//! `agent-vault demo`: the main job end to end on a throwaway vault, with its
//! own key store, removed afterwards. An agent with a `use` grant cannot read
//! the secret, yet a request it sends through the broker reaches an upstream
//! with the real value, and the upstream's echo of it comes back scrubbed.
//! Everything runs in this process, on 127.0.0.1: the upstream (an HTTPS echo
//! API, `upstream.rs`), the broker, and the agent's HTTPS client.

mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use agent_vault_core::broker::services::{Auth, Service};
use agent_vault_core::secrecy::ExposeSecret;
use agent_vault_core::writer::{SetOptions, Writer};
use agent_vault_core::{KeySource, KeyStore, Mode, SecretPath, Vault, init};

use crate::output::{CliError, CliResult, line};

/// The throwaway secret (a made-up key: the demo prints none of it).
const VALUE: &[u8] = b"sk_demo_0123456789";

pub fn run() -> CliResult<ExitCode> {
    let base = std::env::temp_dir().join(format!("agent-vault-demo-{}", std::process::id()));
    let result = steps(&base);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn fail(what: impl std::fmt::Display) -> CliError {
    CliError::Msg(format!("the demo failed: {what}"), None)
}

fn steps(base: &Path) -> CliResult<ExitCode> {
    let keys = KeyStore::at(base.join("home"));
    let r = init::init(&base.join("vault"), "demo-owner".parse()?, keys.clone())?;
    let vault = r.vault;
    line(format!(
        "1. init: vault {} in {}",
        vault.id(),
        vault.root().display()
    ))?;
    let owner = KeySource::File(r.owner_key.clone());
    let mut w = Writer::open(&vault, &owner)?;
    let agent = "demo-bot".parse()?;
    let agent_key = w.add_agent(&agent)?;
    line("2. add-agent demo-bot: key pair made, private key escrowed to the owner")?;
    let path: SecretPath = "payments/api-key".parse()?;
    w.set(
        &path,
        VALUE,
        &SetOptions {
            description: Some("demo payment key".into()),
            ..SetOptions::default()
        },
    )?;
    line(format!(
        "3. set payments/api-key ({} bytes, age-encrypted to group payments)",
        VALUE.len()
    ))?;
    w.grant(&agent, &"payments".parse()?, Mode::Use)?;
    line("4. grant demo-bot use on payments: it may send the key through the broker, not read it")?;
    drop(w);
    match agent_vault_core::Reader::open(&vault, &KeySource::File(agent_key))?.get(&path) {
        Err(e) => line(format!(
            "5. get payments/api-key as demo-bot: refused ({e})"
        ))?,
        Ok(_) => return Err(fail("demo-bot could read a secret it may only use")),
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))?;
    let ok = runtime.block_on(brokered(base, &vault, &owner, &path))?;

    let report = agent_vault_core::check::check(&vault, None);
    line(format!(
        "9. check: {} secret(s), {} finding(s)",
        report.secrets,
        report.findings.len()
    ))?;
    if !ok || report.has_errors() {
        return Err(fail("see the steps above"));
    }
    line(
        "demo complete: the agent used a key it could not read; the throwaway vault and keys are removed",
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Steps 6–8: the broker, the upstream, and the agent's request. True when
/// the upstream received the real value and the agent saw none of it.
async fn brokered(
    base: &Path,
    vault: &Vault,
    owner: &KeySource,
    path: &SecretPath,
) -> CliResult<bool> {
    let echo = upstream::start().await.map_err(fail)?;
    let (ca_cert, ca_key) =
        agent_vault_proxy::ca::generate(vault.id()).map_err(|e| fail(format!("the CA: {e}")))?;
    let mut w = Writer::open(vault, owner)?;
    let broker_key = w.init_broker(&ca_cert, &ca_key)?;
    let host = format!("127.0.0.1:{}", echo.port);
    let mut services = agent_vault_core::broker::services::Services::load(vault)?;
    services.services.insert(
        "payments".into(),
        Service::new(vec![host.clone()], Auth::Bearer(path.clone())),
    );
    w.set_services(&services, "service add payments")?;
    drop(w);
    line(format!(
        "6. broker init; service payments: requests to https://{host} get `Authorization: Bearer <payments/api-key>`"
    ))?;

    let upstream_ca = base.join("upstream-ca.pem");
    std::fs::write(&upstream_ca, &echo.ca_pem)
        .map_err(|e| fail(format!("cannot write {}: {e}", upstream_ca.display())))?;
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let opts = agent_vault_proxy::Options {
        listen,
        upstream_ca: Some(upstream_ca),
        allow_private_upstreams: true,
        audit: None,
        key: Some(broker_key),
        metrics: false,
    };
    let broker = Arc::new(
        agent_vault_proxy::Broker::new(vault.clone(), &opts).map_err(|e| fail(e.to_string()))?,
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| fail(format!("the broker cannot listen on 127.0.0.1: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| fail(format!("the broker cannot listen on 127.0.0.1: {e}")))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(agent_vault_proxy::serve(broker, listener, async {
        let _ = stopped.await;
    }));

    let identity = vault.keys().load(owner, vault.id())?;
    let (token, _) = agent_vault_core::broker::issue_token(
        vault,
        &identity,
        &vault.manifest()?,
        &"demo-bot".parse()?,
        600,
        &[],
        None,
    )?;
    line(format!(
        "7. broker on {addr}; token issued to demo-bot for 10 minutes"
    ))?;

    let client = agent_vault_mcp::request::Broker::new(
        addr.to_string(),
        "demo-bot",
        &token,
        vault.ca_cert()?.as_slice(),
    )
    .map_err(fail)?;
    let target =
        agent_vault_mcp::request::parse_url(&format!("https://{host}/v1/echo")).map_err(fail)?;
    let seen =
        agent_vault_mcp::request::send(&client, &target, "GET", &BTreeMap::new(), None, 64 * 1024)
            .await
            .map_err(fail)?;
    let _ = stop.send(());
    let _ = server.await;

    let expected = format!("Bearer {}", String::from_utf8_lossy(VALUE));
    let upstream_got = echo
        .received
        .lock()
        .ok()
        .and_then(|r| r.as_ref().map(|v| v.expose_secret() == expected))
        .unwrap_or(false);
    let leaked = seen
        .body
        .contains(std::str::from_utf8(VALUE).unwrap_or_default());
    line(format!(
        "8. demo-bot: GET https://{host}/v1/echo through the broker: {}",
        seen.status
    ))?;
    line(format!(
        "   the upstream received: Authorization: Bearer <{} bytes>, {}",
        VALUE.len(),
        if upstream_got {
            "the real value"
        } else {
            "NOT the value"
        }
    ))?;
    line(format!(
        "   demo-bot saw the echo: {}",
        seen.body.trim_end()
    ))?;
    Ok(seen.status == 200 && upstream_got && !leaked && seen.body.contains("[REDACTED:"))
}
