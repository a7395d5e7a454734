//! `agent-vault proxy`, `proxy env` and `run`.

use std::process::ExitCode;
use std::sync::Arc;

use agent_vault_core::{AgentName, Vault};

use crate::cli::{ProxyArgs, ProxySub};
use crate::output::{CliError, CliResult, line, note};

/// Parses a span like 15m into seconds.
pub fn ttl_seconds(ttl: &str) -> CliResult<i64> {
    ttl.parse::<jiff::Span>()
        .ok()
        .and_then(|s| {
            s.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
                .ok()
        })
        .map(|d| d.as_secs())
        .ok_or_else(|| {
            CliError::Msg(
                format!("cannot read the span {ttl:?}"),
                Some("use a span like 15m, 2h or 1d".into()),
            )
        })
}

/// A fresh token for `agent`: an owner's (`avt1`) with an owner key, or
/// one the agent mints itself (`avt2`) with only its own key (see [`mint`]).
fn issue(
    vault: &Vault,
    key: &agent_vault_core::KeySource,
    agent: &str,
    ttl: &str,
) -> CliResult<String> {
    let a: AgentName = agent.parse()?;
    let (token, _) = mint(vault, key, &a, ttl_seconds(ttl)?, &[], None)?;
    Ok(token)
}

/// Mints a token for `agent` with the key `key` names; with none named,
/// this vault's owner key, or else the agent's own key in the key store.
/// An owner key issues `avt1`, the agent's own key `avt2`.
pub fn mint(
    vault: &Vault,
    key: &agent_vault_core::KeySource,
    agent: &AgentName,
    ttl_seconds: i64,
    services: &[String],
    session: Option<String>,
) -> CliResult<(String, agent_vault_core::broker::token::Claims)> {
    let id = vault.keys().load_for_agent(key, vault.id(), agent)?;
    let manifest = vault.manifest()?;
    Ok(agent_vault_core::broker::issue_any(
        vault,
        &id,
        &manifest,
        agent,
        ttl_seconds,
        services,
        session,
    )?)
}

/// Writes the vault's CA (public data) to `dir/broker-ca.pem`.
fn write_ca(vault: &Vault, dir: &std::path::Path) -> CliResult<std::path::PathBuf> {
    let ca = vault.ca_cert()?;
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Msg(format!("cannot write the CA file: {e}"), None))?;
    let ca_path = dir.join("broker-ca.pem");
    std::fs::write(&ca_path, &ca)
        .map_err(|e| CliError::Msg(format!("cannot write the CA file: {e}"), None))?;
    Ok(ca_path)
}

/// The variables common clients read the CA from, all naming `ca_path`.
pub(crate) fn ca_env(ca_path: &std::path::Path) -> Vec<(String, String)> {
    let ca = ca_path.display().to_string();
    [
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
    ]
    .iter()
    .map(|v| ((*v).to_owned(), ca.clone()))
    .collect()
}

/// The environment an agent's processes need: the proxy with the token,
/// and the CA in every variable common clients read.
fn agent_env(
    vault: &Vault,
    key: &agent_vault_core::KeySource,
    agent: &str,
    ttl: &str,
    proxy: &str,
) -> CliResult<Vec<(String, String)>> {
    let token = issue(vault, key, agent, ttl)?;
    // The CA goes to a file of its own, beside the vault's local state.
    let ca_path = write_ca(vault, &vault.dir().join(".local"))?;
    let url = format!("http://{agent}:{token}@{proxy}");
    let mut env = vec![
        ("HTTPS_PROXY".into(), url.clone()),
        ("https_proxy".into(), url.clone()),
        ("HTTP_PROXY".into(), url.clone()),
        ("http_proxy".into(), url),
        ("NO_PROXY".into(), String::new()),
        ("no_proxy".into(), String::new()),
        ("NODE_USE_ENV_PROXY".into(), "1".into()),
    ];
    env.extend(ca_env(&ca_path));
    Ok(env)
}

/// `proxy`.
pub fn proxy(
    vault: Vault,
    key: &agent_vault_core::KeySource,
    key_flag: Option<std::path::PathBuf>,
    args: ProxyArgs,
) -> CliResult<ExitCode> {
    if let Some(ProxySub::Env { agent, ttl, proxy }) = args.sub {
        for (k, v) in agent_env(&vault, key, &agent, &ttl, &proxy)? {
            line(format!("export {k}='{v}'"))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let listen: std::net::SocketAddr = args
        .listen
        .parse()
        .map_err(|_| CliError::Msg(format!("--listen {:?} is not HOST:PORT", args.listen), None))?;
    let admin = match &args.admin {
        Some(a) => Some(
            a.parse::<std::net::SocketAddr>()
                .map_err(|_| CliError::Msg(format!("--admin {a:?} is not HOST:PORT"), None))?,
        ),
        None => None,
    };
    let opts = agent_vault_proxy::Options {
        listen,
        upstream_ca: args.upstream_ca,
        allow_private_upstreams: args.allow_private_upstreams,
        audit: args.audit,
        key: key_flag,
        metrics: admin.is_some(),
    };
    let broker = Arc::new(
        agent_vault_proxy::Broker::new(vault, &opts)
            .map_err(|e| CliError::Msg(format!("cannot start the broker: {e}"), None))?,
    );
    let admin = admin.map(|a| start_admin(&broker, a)).transpose()?;
    let unix = args.unix.clone();
    agent_vault_proxy::run(
        broker.clone(),
        listen,
        args.unix.as_deref(),
        None,
        |bound| {
            match &unix {
                Some(path) => note(format!(
                    "broker listening on {bound} and {}",
                    path.display()
                )),
                None => note(format!("broker listening on {bound}")),
            }
            if let Some(admin) = admin {
                note(format!(
                    "admin listening on {admin} (GET /healthz, GET /metrics)"
                ));
            }
        },
    )
    .map_err(|e| {
        let hint = matches!(e, agent_vault_proxy::ProxyError::Listen { .. })
            .then(|| "is another broker running there? pick another --listen".to_owned());
        CliError::Msg(e.to_string(), hint)
    })?;
    // A host's leaf is minted once and cached: this counts them.
    note(format!(
        "broker stopped ({} leaf certificate(s) minted)",
        broker.leaves_minted()
    ));
    Ok(ExitCode::SUCCESS)
}

/// Binds `proxy --admin`'s listener and serves /healthz and /metrics on
/// it; returns the bound address.
fn start_admin(
    broker: &Arc<agent_vault_proxy::Broker>,
    addr: std::net::SocketAddr,
) -> CliResult<std::net::SocketAddr> {
    use agent_vault_proxy::admin;
    let fail = |e: agent_vault_proxy::ProxyError| {
        CliError::Msg(
            e.to_string(),
            Some("is something else listening there? pick another --admin".into()),
        )
    };
    let (listener, bound) = admin::bind(addr).map_err(fail)?;
    admin::spawn(broker.clone(), listener).map_err(fail)?;
    Ok(bound)
}

/// `run`.
pub fn run(
    vault: Vault,
    key: &agent_vault_core::KeySource,
    agent: &str,
    ttl: &str,
    proxy: &str,
    command: &[String],
) -> CliResult<ExitCode> {
    let env = agent_env(&vault, key, agent, ttl, proxy)?;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| CliError::Msg("run needs a command".into(), None))?;
    let status = std::process::Command::new(program)
        .args(args)
        .envs(env)
        .status()
        .map_err(|e| CliError::Msg(format!("cannot run {program}: {e}"), None))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// `run --isolate[=required] --socket PATH`.
pub struct Isolate {
    /// Refuse to start without namespaces and Landlock.
    pub required: bool,
    /// The broker's Unix socket.
    pub socket: Option<std::path::PathBuf>,
}

/// `run --isolate`: the command where the only way out is the broker (see
/// `crate::isolate`). The key store, `.local/` and the key file are hidden;
/// the CA goes to a directory of its own, removed afterwards.
#[allow(clippy::too_many_arguments)]
pub fn run_isolated(
    vault: Vault,
    key: &agent_vault_core::KeySource,
    key_file: Option<&std::path::Path>,
    agent: &str,
    ttl: &str,
    proxy: &str,
    isolate: Isolate,
    command: &[String],
) -> CliResult<ExitCode> {
    let socket = isolate.socket.ok_or_else(|| {
        CliError::Msg(
            "run --isolate needs the broker's Unix socket".into(),
            Some(
                "start the broker with `agent-vault proxy --unix PATH` and pass `--socket PATH`"
                    .into(),
            ),
        )
    })?;
    // Without the broker's socket there is no one to hand the listener to.
    let is_socket = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        .unwrap_or(false);
    if !is_socket {
        return Err(CliError::Msg(
            format!("no broker socket at {}", socket.display()),
            Some("start the broker with `agent-vault proxy --unix PATH` first".into()),
        ));
    }
    let lifetime = std::time::Duration::from_secs(ttl_seconds(ttl)?.max(1).unsigned_abs());
    let scratch = std::env::temp_dir().join(format!("agent-vault-run-{}", std::process::id()));
    let ca_path = write_ca(&vault, &scratch)?;
    let mut hide_files: Vec<std::path::PathBuf> =
        key_file.map(|k| k.to_path_buf()).into_iter().collect();
    if let Ok(k) = std::env::var("AGENT_VAULT_KEY")
        && !k.starts_with("AGE-SECRET-KEY-")
    {
        hide_files.push(k.into());
    }
    let plan = crate::isolate::Plan {
        hide_dirs: vec![
            vault.keys().root().to_path_buf(),
            vault.dir().join(".local"),
        ],
        hide_files,
        socket,
        proxy_tcp: proxy.to_owned(),
        env: ca_env(&ca_path),
        env_remove: ["AGENT_VAULT_KEY", "AGENT_VAULT_TOKEN"]
            .map(String::from)
            .to_vec(),
        command: command.to_vec(),
        level: if isolate.required {
            crate::isolate::Level::Required
        } else {
            crate::isolate::Level::BestEffort
        },
        force_fallback: std::env::var_os(crate::isolate::FORCE_FALLBACK).is_some(),
    };
    // The supervisor mints the first token and renews it while CMD runs.
    let minter = crate::isolate::Minter {
        mint: Box::new(|| issue(&vault, key, agent, ttl)),
        agent: agent.to_owned(),
        ttl: lifetime,
    };
    let result = crate::isolate::supervise(&plan, minter);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
