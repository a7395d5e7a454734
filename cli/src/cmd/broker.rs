//! The broker and what agents use through it: `broker init`, `proxy`, `mcp`,
//! `run`, `audit`, `token issue|revoke`, `ca cert`, `service`. The longer
//! ones live in `crate::broker` and `crate::service`.

use std::path::Path;
use std::process::ExitCode;

use agent_vault_core::AgentName;
use agent_vault_core::writer::Writer;
use serde_json::json;

use super::{Ctx, done, parse, parse_since};
use crate::cli::{McpArgs, ProxyArgs, ServiceCommand, TokenCommand};
use crate::output::{self, CliError, CliResult, line, note};

/// `broker init`.
pub(super) fn init(ctx: &Ctx) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let (cert, key) = agent_vault_proxy::ca::generate(vault.id())
        .map_err(|e| CliError::Msg(format!("cannot make the CA: {e}"), None))?;
    let path = Writer::open(&vault, &ctx.key_source())?.init_broker(&cert, &key)?;
    if ctx.json {
        output::json(&json!({"broker_key": path, "ca_cert": vault.broker_dir().join("ca.crt")}))?;
    } else {
        line(format!(
            "broker key: {} (copy it to the broker host; escrowed to the owners)",
            path.display()
        ))?;
        line(format!(
            "CA certificate: {} (agents trust it; `agent-vault ca cert` prints it)",
            vault.broker_dir().join("ca.crt").display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `proxy`.
pub(super) fn proxy(ctx: &Ctx, args: ProxyArgs) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    crate::broker::proxy(vault, &ctx.key_source(), ctx.key.clone(), args)
}

/// `mcp`.
pub(super) fn mcp(ctx: &Ctx, args: McpArgs) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    if !ctx.offline
        && let Some(warning) = agent_vault_core::sync::auto_pull(&vault)
    {
        note(warning);
    }
    let opts = agent_vault_mcp::Options {
        no_reveal: args.no_reveal,
        broker: args.broker,
        token: std::env::var("AGENT_VAULT_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
        max_body: args.max_body,
        audit: args.audit,
    };
    match agent_vault_mcp::serve_stdio(vault, ctx.key_source(), opts) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(agent_vault_mcp::Error::Vault(e)) => Err(e.into()),
        Err(e) => Err(CliError::Msg(e.to_string(), None)),
    }
}

/// `run`.
pub(super) fn run(
    ctx: &Ctx,
    agent: &str,
    ttl: &str,
    (proxy, proxy_ca): (&str, Option<&Path>),
    isolate: Option<crate::broker::Isolate>,
    command: &[String],
) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let key = ctx.key_source();
    match isolate {
        None => crate::broker::run(vault, &key, agent, ttl, (proxy, proxy_ca), command),
        Some(isolate) => crate::broker::run_isolated(
            vault,
            &key,
            ctx.key.as_deref(),
            agent,
            ttl,
            proxy,
            isolate,
            command,
        ),
    }
}

/// `audit`.
pub(super) fn audit(
    ctx: &Ctx,
    file: &Path,
    agent: Option<&str>,
    since: Option<&str>,
    denied: bool,
) -> CliResult<ExitCode> {
    let since = since.map(parse_since).transpose()?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Msg(format!("cannot read {}: {e}", file.display()), None))?;
    let records: Vec<agent_vault_proxy::audit::Record> = agent_vault_proxy::audit::records(&text)
        .filter(|r| agent.is_none_or(|a| r.agent == a))
        .filter(|r| since.is_none_or(|t| r.time >= t))
        .collect();
    if denied {
        return super::explain::denied(ctx, &records);
    }
    if ctx.json {
        output::json(&json!(records))?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in &records {
        line(format!(
            "{} {} {} {} {}{} -> {}{} ({} ms) [{}]",
            r.time,
            r.agent,
            r.service,
            r.method,
            r.host,
            r.path,
            r.status,
            r.reason
                .as_deref()
                .map(|why| format!(" {why}"))
                .unwrap_or_default(),
            r.duration_ms,
            r.secrets.join(", ")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `token issue|revoke`.
pub(super) fn token(ctx: &Ctx, cmd: TokenCommand) -> CliResult<ExitCode> {
    match cmd {
        TokenCommand::Issue {
            agent,
            ttl,
            services,
            session,
        } => token_issue(ctx, &agent, &ttl, &services, session),
        TokenCommand::Revoke {
            id,
            agent,
            session,
            all,
        } => token_revoke(ctx, id, agent, session, all),
    }
}

/// `token issue`.
fn token_issue(
    ctx: &Ctx,
    agent: &str,
    ttl: &str,
    services: &[String],
    session: Option<String>,
) -> CliResult<ExitCode> {
    let a: AgentName = parse(agent)?;
    let ttl = crate::broker::ttl_seconds(ttl)?;
    let vault = ctx.vault()?;
    let (token, claims) =
        crate::broker::mint(&vault, &ctx.key_source(), &a, ttl, services, session)?;
    if ctx.json {
        output::json(
            &json!({"token": token, "id": claims.id, "agent": claims.agent, "services": claims.services,
            "session": claims.session, "expires": claims.exp}),
        )?;
    } else {
        line(token)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `token revoke`.
fn token_revoke(
    ctx: &Ctx,
    id: Option<String>,
    agent: Option<String>,
    session: Option<String>,
    all: bool,
) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let mut w = Writer::open(&vault, &ctx.key_source())?;
    let now = jiff::Timestamp::now().as_second();
    let what = match (&id, &agent, &session) {
        (Some(i), _, _) => format!("token {i}"),
        (_, Some(a), _) => format!("the tokens of agent {a}"),
        (_, _, Some(s)) => format!("the tokens of session {s}"),
        _ => "every token".to_owned(),
    };
    w.revoke_tokens(
        |r| {
            if let Some(i) = id {
                r.tokens.push(i);
            }
            if let Some(a) = agent {
                r.agents.insert(a, now);
            }
            if let Some(s) = session {
                r.sessions.push(s);
            }
            if all {
                r.all_before = Some(now);
            }
        },
        &format!("token revoke {what}"),
    )?;
    done(ctx, &format!("revoked {what}"))
}

/// `ca cert`.
pub(super) fn ca_cert(ctx: &Ctx) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    output::stdout_bytes(&vault.ca_cert()?)?;
    Ok(ExitCode::SUCCESS)
}

/// `service add|list|rm`.
pub(super) fn service(ctx: &Ctx, cmd: ServiceCommand) -> CliResult<ExitCode> {
    crate::service::run(&ctx.vault()?, &ctx.key_source(), ctx.json, cmd)
}
