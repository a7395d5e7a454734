//! What the broker refuses, before and after: `explain` (what the broker
//! would do with a request, decided by core's `broker::decide`, the
//! functions the broker itself calls) and `audit --denied` (what it
//! refused, counted by host and reason).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use agent_vault_core::AgentName;
use agent_vault_core::broker::decide::{self, Destination};
use agent_vault_core::broker::services::{Applied, Services};
use agent_vault_core::broker::token::Claims;
use agent_vault_proxy::audit::Record;
use agent_vault_proxy::problem::{Reason, route_status};
use serde_json::json;

use super::{Ctx, parse};
use crate::output::{self, CliError, CliResult, clean, line};

/// `explain --agent A METHOD URL`: exit 0 when the broker would forward
/// the request, 1 when it would refuse it.
pub(super) fn explain(
    ctx: &Ctx,
    agent: &str,
    services: &[String],
    method: &str,
    url: &str,
) -> CliResult<ExitCode> {
    let bad_url = |why: String| {
        CliError::Msg(
            format!("cannot read the URL {url:?}: {why}"),
            Some("give an absolute URL: https://host[:port]/path?query".into()),
        )
    };
    let uri: hyper::Uri = url.parse().map_err(|e| bad_url(format!("{e}")))?;
    let https = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        _ => return Err(bad_url("it must start with https:// or http://".into())),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| bad_url("it names no host".into()))?;
    // The host and port as the broker reads a CONNECT or an absolute URL.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let name: AgentName = parse(agent)?;
    let vault = ctx.vault()?;
    let manifest = vault.manifest()?;
    if !manifest.agents.contains_key(&name) {
        return Err(CliError::Msg(
            format!("there is no agent {name}"),
            Some("`agent-vault list-agents` shows the agents".into()),
        ));
    }
    let list = Services::load(&vault)?;
    // The token `run` would issue (or `token issue --service …`): its
    // scope is decided by the broker's own `Claims::may_use`.
    let token = Claims {
        id: String::new(),
        agent: agent.to_owned(),
        services: services.to_vec(),
        session: None,
        iat: 0,
        exp: 0,
    };
    let dest = Destination {
        host: &host,
        port,
        https,
    };
    let asked =
        json!({"agent": agent, "method": method, "host": host, "port": port, "https": https});
    match decide::explain(
        &list,
        &manifest,
        agent,
        |n| token.may_use(n),
        &dest,
        method,
        pq,
    ) {
        Ok(allowed) => {
            let secrets: Vec<String> = allowed.secrets.iter().map(|s| s.to_string()).collect();
            if ctx.json {
                let mut v = asked;
                v["allowed"] = json!(true);
                v["service"] = json!(allowed.service);
                v["path"] = json!(allowed.sent);
                v["secrets"] = json!(secrets);
                v["limits"] = limits_json(allowed.limits);
                output::json(&v)?;
            } else {
                line(format!("allowed: {} {}", clean(method), clean(url)))?;
                line(format!("  service: {}", allowed.service))?;
                line(format!("  sent as: {}", clean(&allowed.sent)))?;
                line(format!(
                    "  secrets: {}",
                    if secrets.is_empty() {
                        "none (nothing injected)".to_owned()
                    } else {
                        secrets.join(", ")
                    }
                ))?;
                line(limits_line(allowed.limits))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            let reason = Reason::of(&refusal);
            let status = route_status(&refusal).as_u16();
            if ctx.json {
                let mut v = asked;
                v["allowed"] = json!(false);
                v["status"] = json!(status);
                v["reason"] = json!(reason.name());
                v["type"] = json!(reason.type_uri());
                v["title"] = json!(reason.title());
                v["detail"] = json!(refusal.to_string());
                output::json(&v)?;
            } else {
                line(format!("refused: {} {}", clean(method), clean(url)))?;
                line(format!(
                    "  {status} {} ({})",
                    reason.name(),
                    reason.type_uri()
                ))?;
                line(format!("  {}", clean(&refusal.to_string())))?;
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// The rate limits a request counts against, as `--json` gives them.
fn limits_json(limits: Option<Applied>) -> serde_json::Value {
    match limits {
        Some(l) => json!({
            "rps": l.rate.map(|r| r.per_second),
            "burst": l.rate.map(|r| r.burst.get()),
            "in_flight": l.in_flight.map(|n| n.get()),
            "per": "agent and service, per broker instance",
            "over": 429,
        }),
        None => serde_json::Value::Null,
    }
}

/// `  limits: 5 requests/s, burst 10, 4 in flight, per agent, …`.
fn limits_line(limits: Option<Applied>) -> String {
    match limits {
        Some(l) => {
            format!("  limits: {l}, per agent, per broker instance; over it: 429 rate-limited")
        }
        None => "  limits: none (unlimited)".to_owned(),
    }
}

/// One line of `audit --denied`: refusals of one reason for one host.
#[derive(Default)]
struct Denied {
    count: u64,
    statuses: BTreeSet<u16>,
    agents: BTreeSet<String>,
    last: Option<jiff::Timestamp>,
}

/// `audit --denied`: the records of requests the broker answered itself,
/// counted by host (with its port, unless the scheme's default) and reason,
/// most frequent first.
pub(super) fn denied(ctx: &Ctx, records: &[Record]) -> CliResult<ExitCode> {
    let mut by: BTreeMap<(String, String), Denied> = BTreeMap::new();
    for r in records {
        let Some(reason) = &r.reason else { continue };
        let host = match r.port {
            Some(p) if p != 443 && p != 80 => format!("{}:{p}", r.host),
            _ => r.host.clone(),
        };
        let d = by.entry((host, reason.clone())).or_default();
        d.count += 1;
        d.statuses.insert(r.status);
        if !r.agent.is_empty() {
            d.agents.insert(r.agent.clone());
        }
        d.last = d.last.max(Some(r.time));
    }
    let mut rows: Vec<((String, String), Denied)> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
    if ctx.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|((host, reason), d)| {
                json!({"host": host, "reason": reason, "count": d.count,
                       "statuses": d.statuses, "agents": d.agents, "last": d.last})
            })
            .collect();
        output::json(&json!(v))?;
        return Ok(ExitCode::SUCCESS);
    }
    for ((host, reason), d) in &rows {
        let statuses: Vec<String> = d.statuses.iter().map(u16::to_string).collect();
        line(format!(
            "{:>6}  {}  {} ({})  agents: {}",
            d.count,
            clean(host),
            clean(reason),
            statuses.join(", "),
            if d.agents.is_empty() {
                "unknown".to_owned()
            } else {
                clean(&d.agents.iter().cloned().collect::<Vec<_>>().join(", ")).into_owned()
            }
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
