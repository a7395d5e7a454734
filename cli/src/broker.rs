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

/// The broker's address as `proxy env` and `run` take it: `HOST:PORT`
/// (plain HTTP) or `https://HOST:PORT` (a broker started with TLS).
/// Returns the URL scheme and the address.
fn proxy_address(proxy: &str) -> CliResult<(&'static str, &str)> {
    let (scheme, addr) = match proxy.split_once("://") {
        None => ("http", proxy),
        Some(("http", a)) => ("http", a),
        Some(("https", a)) => ("https", a),
        Some((other, _)) => {
            return Err(CliError::Msg(
                format!("--proxy {proxy:?}: the scheme {other:?} is neither http nor https"),
                Some("give HOST:PORT, or https://HOST:PORT for a broker started with TLS".into()),
            ));
        }
    };
    let addr = addr.trim_end_matches('/');
    if addr.is_empty() || addr.contains(['/', '@']) {
        return Err(CliError::Msg(
            format!("--proxy {proxy:?} is not HOST:PORT"),
            Some("give HOST:PORT, or https://HOST:PORT for a broker started with TLS".into()),
        ));
    }
    Ok((scheme, addr))
}

/// The environment an agent's processes need: the proxy with the token,
/// and the CA in every variable common clients read. With an https proxy,
/// `AGENT_VAULT_PROXY_CA` names the CA that verifies the broker itself
/// (`proxy_ca`, else the vault's CA, which minted the listener's
/// certificate); the bundle in the common variables holds it too, so
/// clients that take one bundle for both (Python requests) verify both.
fn agent_env(
    vault: &Vault,
    key: &agent_vault_core::KeySource,
    agent: &str,
    ttl: &str,
    proxy: &str,
    proxy_ca: Option<&std::path::Path>,
) -> CliResult<Vec<(String, String)>> {
    let (scheme, addr) = proxy_address(proxy)?;
    let token = issue(vault, key, agent, ttl)?;
    // The CA goes to a file of its own, beside the vault's local state.
    let local = vault.dir().join(".local");
    let mut ca_path = write_ca(vault, &local)?;
    let url = format!("{scheme}://{agent}:{token}@{addr}");
    let mut env = vec![
        ("HTTPS_PROXY".into(), url.clone()),
        ("https_proxy".into(), url.clone()),
        ("HTTP_PROXY".into(), url.clone()),
        ("http_proxy".into(), url),
        ("NO_PROXY".into(), String::new()),
        ("no_proxy".into(), String::new()),
        ("NODE_USE_ENV_PROXY".into(), "1".into()),
    ];
    if scheme == "https" {
        let proxy_ca_path = match proxy_ca {
            Some(file) => {
                let theirs = std::fs::read(file).map_err(|e| {
                    CliError::Msg(
                        format!("cannot read --proxy-ca {}: {e}", file.display()),
                        None,
                    )
                })?;
                let mut bundle = vault.ca_cert()?;
                if !bundle.ends_with(b"\n") {
                    bundle.push(b'\n');
                }
                bundle.extend_from_slice(&theirs);
                ca_path = local.join("broker-ca-bundle.pem");
                std::fs::write(&ca_path, &bundle)
                    .map_err(|e| CliError::Msg(format!("cannot write the CA file: {e}"), None))?;
                file.to_path_buf()
            }
            None => ca_path.clone(),
        };
        env.push((
            "AGENT_VAULT_PROXY_CA".into(),
            proxy_ca_path.display().to_string(),
        ));
    }
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
    if let Some(ProxySub::Env {
        agent,
        ttl,
        proxy,
        proxy_ca,
    }) = args.sub
    {
        for (k, v) in agent_env(&vault, key, &agent, &ttl, &proxy, proxy_ca.as_deref())? {
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
    let follow = follow(&vault, &args)?;
    let tls = listener_tls(&args);
    let exports = exports(&args)?;
    let opts = agent_vault_proxy::Options {
        listen,
        upstream_ca: args.upstream_ca,
        allow_private_upstreams: args.allow_private_upstreams,
        audit: args.audit,
        key: key_flag,
        metrics: admin.is_some(),
        follow,
        tls: tls.clone(),
        exports,
    };
    let cannot = |e: agent_vault_proxy::ProxyError| {
        CliError::Msg(format!("cannot start the broker: {e}"), None)
    };
    let broker = Arc::new(agent_vault_proxy::Broker::new(vault, &opts).map_err(cannot)?);
    let first_pull = agent_vault_proxy::follow::start(&broker).map_err(cannot)?;
    let admin = admin.map(|a| start_admin(&broker, a)).transpose()?;
    let unix = args.unix.clone();
    agent_vault_proxy::run(
        broker.clone(),
        listen,
        args.unix.as_deref(),
        None,
        |bound| {
            let with = if tls.is_some() { " with TLS" } else { "" };
            match &unix {
                Some(path) => note(format!(
                    "broker listening{with} on {bound} and {}",
                    path.display()
                )),
                None => note(format!("broker listening{with} on {bound}")),
            }
            if let Some(admin) = admin {
                note(format!(
                    "admin listening on {admin} (GET /healthz, GET /metrics)"
                ));
            }
            if let Some(f) = follow {
                let closed = f.max_stale.map_or(
                    "never failing closed: set --max-stale".to_owned(),
                    |m| format!("failing closed after {}s without it", m.as_secs_f64()),
                );
                note(format!(
                    "following the vault's remote every {}s ({closed})",
                    f.interval.as_secs_f64()
                ));
            }
            if let Some(why) = &first_pull {
                note(format!(
                    "cannot bring the vault up to date from its remote now, serving the local clone: {why}"
                ));
            }
        },
    )
    .map_err(|e| {
        let hint = matches!(e, agent_vault_proxy::ProxyError::Listen { .. })
            .then(|| "is another broker running there? pick another --listen".to_owned());
        CliError::Msg(e.to_string(), hint)
    })?;
    // Every exported record delivered or counted dropped, and said so.
    for (sink, t) in broker.close_exports(std::time::Duration::from_secs(5)) {
        let why = t
            .last_failure
            .filter(|_| t.dropped > 0)
            .map(|w| format!(" (last failure: {w})"))
            .unwrap_or_default();
        note(format!(
            "audit export {sink}: {} delivered, {} dropped{why}",
            t.delivered, t.dropped
        ));
    }
    // A host's leaf is minted once and cached: this counts them.
    note(format!(
        "broker stopped ({} leaf certificate(s) minted)",
        broker.leaves_minted()
    ));
    Ok(ExitCode::SUCCESS)
}

/// A span like 30s or 500ms as a duration.
fn span(flag: &str, text: &str) -> CliResult<std::time::Duration> {
    text.parse::<jiff::Span>()
        .ok()
        .and_then(|s| {
            s.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
                .ok()
        })
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            CliError::Msg(
                format!("{flag} {text:?} is not a span of time"),
                Some("use a span like 500ms, 30s or 5m".into()),
            )
        })
}

/// `--pull-interval` and `--max-stale`, else `broker:` in `config.yaml`.
fn follow(vault: &Vault, args: &ProxyArgs) -> CliResult<Option<agent_vault_proxy::follow::Follow>> {
    let cfg = vault.config().broker.clone().unwrap_or_default();
    let secs = |s: Option<u64>| s.filter(|s| *s > 0).map(std::time::Duration::from_secs);
    let interval = match &args.pull_interval {
        Some(t) => Some(span("--pull-interval", t)?),
        None => secs(cfg.pull_interval_seconds),
    };
    let max_stale = match &args.max_stale {
        Some(t) => Some(span("--max-stale", t)?),
        None => secs(cfg.max_stale_seconds),
    };
    match (interval, max_stale) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(CliError::Msg(
            "--max-stale needs --pull-interval: a broker that does not follow its remote is never up to date with it".into(),
            Some("add --pull-interval 30s (or broker.pull_interval_seconds in config.yaml)".into()),
        )),
        (Some(interval), max_stale) => {
            if max_stale.is_some_and(|m| m < interval) {
                return Err(CliError::Msg(
                    "--max-stale is shorter than --pull-interval: the broker would refuse between two pulls".into(),
                    Some("give --max-stale a few pull intervals".into()),
                ));
            }
            Ok(Some(agent_vault_proxy::follow::Follow {
                interval,
                max_stale,
            }))
        }
    }
}

/// `--audit-otlp` and `--audit-syslog`.
fn exports(args: &ProxyArgs) -> CliResult<Vec<agent_vault_proxy::export::Sink>> {
    use agent_vault_proxy::export::{Sink, syslog::Target};
    let bad = |e: agent_vault_proxy::ProxyError| CliError::Msg(e.to_string(), None);
    let mut sinks: Vec<Sink> = args.audit_otlp.iter().cloned().map(Sink::Otlp).collect();
    for t in &args.audit_syslog {
        sinks.push(Sink::Syslog(Target::parse(t).map_err(bad)?));
    }
    Ok(sinks)
}

/// `--tls-cert`/`--tls-key`, or `--tls-name`.
fn listener_tls(args: &ProxyArgs) -> Option<agent_vault_proxy::listener::ListenerTls> {
    use agent_vault_proxy::listener::ListenerTls;
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ListenerTls::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ if !args.tls_name.is_empty() => Some(ListenerTls::Minted(args.tls_name.clone())),
        _ => None,
    }
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
    (proxy, proxy_ca): (&str, Option<&std::path::Path>),
    command: &[String],
) -> CliResult<ExitCode> {
    let env = agent_env(&vault, key, agent, ttl, proxy, proxy_ca)?;
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
