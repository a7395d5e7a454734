//! `agent-vault demo`: the main job end to end on a throwaway vault, with its
//! own key store, removed afterwards. An agent with a `use` grant cannot read
//! the secret, yet a request it sends through the broker reaches an upstream
//! with the real value, and the upstream's echo of it comes back scrubbed.
//! On 127.0.0.1, in this process: the upstream (an HTTPS echo API,
//! `upstream.rs`) and the broker; the agent is a process of its own
//! (`agent.rs`), isolated as `run --isolate` isolates a command where the
//! machine allows it, and the demo says in one line how it ran.

mod agent;
mod upstream;

pub use agent::entry as agent_entry;

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
    let ok = brokered(&runtime, base, &vault, &owner, &path)?;
    drop(runtime);

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

/// Steps 6–8: the broker, the upstream, and the agent's request, sent by a
/// process of its own, isolated where this machine allows it. True when the
/// upstream received the real value and the agent saw none of it.
fn brokered(
    runtime: &tokio::runtime::Runtime,
    base: &Path,
    vault: &Vault,
    owner: &KeySource,
    path: &SecretPath,
) -> CliResult<bool> {
    let echo = runtime.block_on(upstream::start()).map_err(fail)?;
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

    let write = |name: &str, data: &[u8]| {
        let file = base.join(name);
        std::fs::write(&file, data)
            .map_err(|e| fail(format!("cannot write {}: {e}", file.display())))
            .map(|()| file)
    };
    let upstream_ca = write("upstream-ca.pem", echo.ca_pem.as_bytes())?;
    let broker_ca = write("broker-ca.pem", &vault.ca_cert()?)?;
    let socket = base.join("broker.sock");
    let served = serve(runtime, vault, broker_key, upstream_ca, &socket)?;
    let addr = served.addr;

    let identity = vault.keys().load(owner, vault.id())?;
    let manifest = vault.manifest()?;
    let bot = "demo-bot".parse()?;
    let mint = || -> CliResult<String> {
        let (token, _) = agent_vault_core::broker::issue_token(
            vault,
            &identity,
            &manifest,
            &bot,
            600,
            &[],
            None,
        )?;
        Ok(token)
    };
    line(format!(
        "7. broker on {addr}; demo-bot's tokens (10 minutes) come from this process"
    ))?;

    let seen = agent::run(agent::Start {
        url: format!("https://{host}/v1/echo"),
        socket,
        proxy_tcp: addr.to_string(),
        env: crate::broker::ca_env(&broker_ca),
        hide_dirs: vec![
            vault.keys().root().to_path_buf(),
            vault.dir().join(".local"),
        ],
        mint: Box::new(mint),
    })?;
    let _ = served.stop.send(true);
    for task in served.tasks {
        let _ = runtime.block_on(task);
    }

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
        "8. demo-bot, a process of its own: GET https://{host}/v1/echo through the broker: {}",
        seen.status
    ))?;
    line(format!("   {}", seen.isolation))?;
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

/// The demo's broker, serving on the runtime.
struct Served {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

/// Starts the broker on 127.0.0.1 and on the Unix socket `socket`.
fn serve(
    runtime: &tokio::runtime::Runtime,
    vault: &Vault,
    broker_key: std::path::PathBuf,
    upstream_ca: std::path::PathBuf,
    socket: &Path,
) -> CliResult<Served> {
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let opts = agent_vault_proxy::Options {
        listen,
        upstream_ca: Some(upstream_ca),
        allow_private_upstreams: true,
        audit: None,
        key: Some(broker_key),
        metrics: false,
        follow: None,
        tls: None,
        exports: Vec::new(),
    };
    let broker = Arc::new(
        agent_vault_proxy::Broker::new(vault.clone(), &opts).map_err(|e| fail(e.to_string()))?,
    );
    // On TCP, and on a Unix socket for the isolated agent's hand-off.
    let (listener, unix) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await;
        let unix = tokio::net::UnixListener::bind(socket);
        (listener, unix)
    });
    let listener =
        listener.map_err(|e| fail(format!("the broker cannot listen on 127.0.0.1: {e}")))?;
    let unix = unix.map_err(|e| {
        fail(format!(
            "the broker cannot listen on {}: {e}",
            socket.display()
        ))
    })?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| fail(format!("cannot protect {}: {e}", socket.display())))?;
    let addr = listener
        .local_addr()
        .map_err(|e| fail(format!("the broker cannot listen on 127.0.0.1: {e}")))?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tcp = agent_vault_proxy::serve(broker.clone(), listener, stopped(stopping.clone()));
    let server = runtime.spawn(async move {
        let _ = tcp.await;
    });
    let unix_server = runtime.spawn(agent_vault_proxy::serve_unix(
        broker,
        unix,
        stopped(stopping),
    ));
    Ok(Served {
        addr,
        stop,
        tasks: [server, unix_server],
    })
}
