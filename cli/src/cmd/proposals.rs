//! `agent-vault proposals list|show|approve|deny|status`: owners decide on
//! agents' proposals; agents ask where theirs stand. Values for approval
//! come from files or standard input, never argv, and are never printed.

use std::io::BufRead;
use std::process::ExitCode;

use agent_vault_core::proposals::{self, Plan, Proposal, Status, Values};
use agent_vault_core::secrecy::SecretBox;
use agent_vault_core::sync as core_sync;
use serde_json::{Value, json};

use super::Ctx;
use super::propose::value_from_file;
use crate::cli::ProposalsCommand;
use crate::output::{self, CliError, CliResult, clean, line, note};

/// Runs a `proposals` subcommand.
pub(super) fn run(ctx: &Ctx, cmd: ProposalsCommand) -> CliResult<ExitCode> {
    match cmd {
        ProposalsCommand::List { pending } => list(ctx, pending),
        ProposalsCommand::Show { id } => show(ctx, &id),
        ProposalsCommand::Approve { id, values } => approve(ctx, &id, &values),
        ProposalsCommand::Deny { id, reason } => deny(ctx, &id, &reason),
        ProposalsCommand::Status { id } => status(ctx, &id),
    }
}

fn status_json(s: &Status) -> Value {
    match s {
        Status::Pending | Status::Expired => json!({"status": s.word()}),
        Status::Approved { by, at } => {
            json!({"status": s.word(), "by": by.to_string(), "at": at.to_string()})
        }
        Status::Denied { reason, by, at } => json!({
            "status": s.word(), "by": by.to_string(), "at": at.to_string(), "reason": reason,
        }),
    }
}

fn status_text(p: &Proposal, s: &Status) -> String {
    match s {
        Status::Pending => format!("pending (expires {})", p.expires),
        Status::Expired => format!("expired at {}", p.expires),
        Status::Approved { by, at } => format!("approved by {by} at {at}"),
        Status::Denied { reason, by, at } => {
            format!("denied by {by} at {at}: {}", clean(reason))
        }
    }
}

fn age(p: &Proposal) -> String {
    let secs = jiff::Timestamp::now().as_second() - p.created.as_second();
    match secs {
        s if s < 3600 => format!("{}m", s.max(0) / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn first_line(s: &str, max: usize) -> String {
    let l = s.lines().next().unwrap_or("");
    let cut: String = l.chars().take(max).collect();
    if cut.len() < l.len() || s.lines().nth(1).is_some() {
        format!("{}…", clean(&cut))
    } else {
        clean(&cut).into_owned()
    }
}

fn list(ctx: &Ctx, pending_only: bool) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let listing = proposals::list(&vault)?;
    let shown: Vec<&(Proposal, Status)> = listing
        .proposals
        .iter()
        .filter(|(_, s)| !pending_only || *s == Status::Pending)
        .collect();
    if ctx.json {
        output::json(&json!({
            "proposals": shown.iter().map(|(p, s)| json!({
                "id": p.id.to_string(), "agent": p.agent.to_string(),
                "created": p.created.to_string(), "expires": p.expires.to_string(),
                "message": p.message, "status": status_json(s),
            })).collect::<Vec<_>>(),
            "refused": listing.refused.iter().map(|r| json!({
                "agent": r.agent, "id": r.id, "reason": r.reason,
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if shown.is_empty() {
        line("no proposals (an owner's `agent-vault sync` fetches the agents' proposals)")?;
    }
    for (p, s) in shown {
        line(format!(
            "{}  {:<16} {:<9} {:>4}  {}",
            p.id,
            p.agent,
            s.word(),
            age(p),
            first_line(&p.message, 60)
        ))?;
    }
    for r in &listing.refused {
        note(format!("refused {} {}: {}", r.agent, r.id, r.reason));
    }
    Ok(ExitCode::SUCCESS)
}

fn plan_json(plan: &Plan) -> Value {
    json!({
        "services": plan.services.iter().map(|s| json!({
            "name": s.name, "replaces": s.replaces, "old_hosts": s.old_hosts, "hosts": s.hosts,
            "auth": s.auth, "secrets": s.secrets.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "grants": plan.grants.iter().map(|g| json!({
            "agent": g.agent.to_string(), "group": g.group.to_string(), "mode": g.mode.to_string(),
            "new_group": g.new_group,
        })).collect::<Vec<_>>(),
        "slots": plan.slots.iter().map(|s| json!({
            "path": s.path.to_string(), "action": s.action.to_string(), "kind": s.kind.to_string(),
            "description": s.description, "obtain": s.obtain, "exists": s.exists,
            "agent_value": s.agent_value,
        })).collect::<Vec<_>>(),
        "problems": plan.problems,
    })
}

fn print_plan(plan: &Plan) -> CliResult<()> {
    for s in &plan.services {
        let what = if s.replaces {
            format!("replaces the service on {}", s.old_hosts.join(", "))
        } else {
            "new".into()
        };
        line(format!(
            "  service {} ({what}): {} ({})",
            clean(&s.name),
            clean(&s.hosts.join(", ")),
            s.auth
        ))?;
    }
    for g in &plan.grants {
        let new = if g.new_group { " (new group)" } else { "" };
        line(format!(
            "  grant   {} {} on {}{new}",
            g.agent, g.mode, g.group
        ))?;
    }
    for s in &plan.slots {
        let from = match (s.action, s.agent_value) {
            (proposals::Action::Delete, _) => "",
            (_, true) => ", value from the agent (encrypted to the owners)",
            (_, false) => ", value from you",
        };
        let exists = if s.exists { "replaces" } else { "new" };
        line(format!(
            "  slot    {} {} ({}, {exists}{from})",
            s.action, s.path, s.kind
        ))?;
        if !s.description.is_empty() {
            line(format!("          what:   {}", clean(&s.description)))?;
        }
        if !s.obtain.is_empty() {
            line(format!("          obtain: {}", clean(&s.obtain)))?;
        }
    }
    for p in &plan.problems {
        line(format!("  problem {}", clean(p)))?;
    }
    Ok(())
}

fn show(ctx: &Ctx, id: &str) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let (p, s) = proposals::load(&vault, id)?;
    let plan = proposals::plan(&vault, &p)?;
    if ctx.json {
        output::json(&json!({
            "id": p.id.to_string(), "agent": p.agent.to_string(),
            "created": p.created.to_string(), "expires": p.expires.to_string(),
            "message": p.message, "status": status_json(&s), "plan": plan_json(&plan),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    line(format!("proposal {} of agent {}", p.id, p.agent))?;
    line(format!("  created {}, {}", p.created, status_text(&p, &s)))?;
    for l in p.message.lines() {
        line(format!("  > {}", clean(l)))?;
    }
    line("approving would:")?;
    print_plan(&plan)?;
    Ok(ExitCode::SUCCESS)
}

/// The values for approval: `--value` files, then one line of standard
/// input for each other slot the owner must fill, in the plan's order.
fn values(plan: &Plan, specs: &[String]) -> CliResult<Values> {
    let mut values = Values::new();
    for spec in specs {
        let (p, v) = value_from_file(spec)?;
        values.insert(p, v);
    }
    let missing: Vec<_> = plan
        .values_needed()
        .into_iter()
        .filter(|p| !values.contains_key(*p))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(values);
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(CliError::Msg(
            format!(
                "values needed for {}, and standard input is a terminal (it would echo them)",
                missing
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(
                "pipe them in, one line per slot in the order `proposals show` lists them, \
                 give each with --value GROUP/NAME=@FILE, or approve on the page (`agent-vault ui`)"
                    .into(),
            ),
        ));
    }
    let mut stdin = std::io::stdin().lock();
    for path in missing {
        let mut buf = Vec::new();
        stdin
            .read_until(b'\n', &mut buf)
            .map_err(|e| CliError::Msg(format!("cannot read standard input: {e}"), None))?;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.is_empty() {
            zeroize::Zeroize::zeroize(&mut buf);
            return Err(CliError::Msg(
                format!("no value for {path} on standard input"),
                Some("one line per slot, in the order `proposals show` lists them".into()),
            ));
        }
        values.insert(path, SecretBox::new(Box::new(buf)));
    }
    Ok(values)
}

fn approve(ctx: &Ctx, id: &str, specs: &[String]) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let p = proposals::verify(&vault, id)?;
    let plan = proposals::plan(&vault, &p)?;
    let values = values(&plan, specs)?;
    let values_given: Vec<_> = values.keys().cloned().collect();
    let applied = proposals::approve(&vault, &ctx.key_source(), id, values)?;
    let set = applied
        .slots
        .iter()
        .filter(|s| s.action == proposals::Action::Set)
        .count();
    let mut msg = format!(
        "approved proposal {} of {}: {set} secret(s) set, {} deleted, {} service(s), {} grant(s); \
         `agent-vault sync` sends it to the agent",
        p.id,
        p.agent,
        applied.slots.len() - set,
        applied.services.len(),
        applied.grants.len()
    );
    for path in plan.to_connect() {
        if !values_given.contains(path) {
            msg.push_str(&format!(
                "\nconnect the OAuth credential {path}: `agent-vault oauth set {path} …` or on the page (`agent-vault ui`)"
            ));
        }
    }
    super::done(ctx, &msg)
}

fn deny(ctx: &Ctx, id: &str, reason: &str) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    proposals::deny(&vault, &ctx.key_source(), id, reason)?;
    super::done(
        ctx,
        &format!("denied proposal {id}; `agent-vault sync` sends the reason to the agent"),
    )
}

fn status(ctx: &Ctx, id: &str) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    // The owners' decisions arrive with the vault's branch: fetch it now.
    if !ctx.offline
        && let Err(e) = core_sync::pull_fast_forward(&vault, core_sync::DEFAULT_TIMEOUT)
    {
        note(format!(
            "not updated from the remote, showing the local copy: {e}"
        ));
    }
    let (p, s) = proposals::status(&vault, id)?;
    if ctx.json {
        let mut v = status_json(&s);
        v["id"] = json!(p.id.to_string());
        v["agent"] = json!(p.agent.to_string());
        output::json(&v)?;
    } else {
        line(status_text(&p, &s))?;
    }
    Ok(ExitCode::SUCCESS)
}
