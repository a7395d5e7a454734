//! Agents and their grants: `add-agent`, `remove-agent`, `list-agents`,
//! `recover-agent`, `upgrade-agent`, `restore-agent`, `grant`, `revoke`.

use std::path::Path;
use std::process::ExitCode;

use agent_vault_core::writer::{Exposure, Writer};
use agent_vault_core::{AgentName, GroupName, Mode};
use serde_json::json;

use super::{Ctx, parse};
use crate::cli::ModeArg;
use crate::output::{self, CliResult, line};

/// `add-agent`.
pub(super) fn add(ctx: &Ctx, name: &str) -> CliResult<ExitCode> {
    let a: AgentName = parse(name)?;
    let vault = ctx.vault()?;
    let mut w = Writer::open(&vault, &ctx.key_source())?;
    let key = w.add_agent(&a)?;
    let recipient = w.manifest().agents[&a].recipient.clone();
    if ctx.json {
        output::json(&json!({"agent": name, "recipient": recipient, "key_file": key}))?;
    } else {
        line(format!("added agent {name} ({recipient})"))?;
        line(format!(
            "its key: {} — hand it to the agent (AGENT_VAULT_KEY or --key)",
            key.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `remove-agent`.
pub(super) fn remove(ctx: &Ctx, name: &str) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let mut w = Writer::open(&vault, &ctx.key_source())?;
    let exposures = w.remove_agent(&parse(name)?)?;
    print_exposures(ctx, &exposures, &format!("removed agent {name}"))
}

/// `list-agents`.
pub(super) fn list(ctx: &Ctx) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let m = vault.manifest()?;
    if ctx.json {
        let agents: Vec<_> = m
            .agents
            .iter()
            .map(|(a, e)| {
                let grants: serde_json::Map<String, serde_json::Value> = m
                    .grants
                    .get(a)
                    .map(|g| {
                        g.iter()
                            .map(|(g, mode)| (g.to_string(), json!(mode)))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({"name": a, "recipient": e.recipient, "signing_key": e.signing_key, "grants": grants})
            })
            .collect();
        output::json(&json!(agents))?;
    } else if m.agents.is_empty() {
        line("no agents; add one with `agent-vault add-agent NAME`")?;
    } else {
        for a in m.agents.keys() {
            let grants: Vec<String> = m
                .grants
                .get(a)
                .map(|g| g.iter().map(|(g, mode)| format!("{g}:{mode}")).collect())
                .unwrap_or_default();
            let grants = if grants.is_empty() {
                "(no grants)".to_owned()
            } else {
                grants.join(" ")
            };
            line(format!("{a:<20} {grants}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `recover-agent`.
pub(super) fn recover(ctx: &Ctx, name: &str) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let mut w = Writer::open(&vault, &ctx.key_source())?;
    let key = w.recover_agent(&parse(name)?)?;
    if ctx.json {
        output::json(&json!({"agent": name, "key_file": key}))?;
    } else {
        line(format!("agent {name} has a new key: {}", key.display()))?;
        line("the groups it can read were rotated; its old key opens nothing written from now on")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `upgrade-agent`.
pub(super) fn upgrade(ctx: &Ctx, names: &[String]) -> CliResult<ExitCode> {
    let only = names
        .iter()
        .map(|n| parse(n))
        .collect::<CliResult<Vec<AgentName>>>()?;
    let vault = ctx.vault()?;
    let mut w = Writer::open(&vault, &ctx.key_source())?;
    let upgraded = w.upgrade_agents(&only)?;
    if ctx.json {
        output::json(&json!({"upgraded": upgraded}))?;
    } else if upgraded.is_empty() {
        line("every agent has a token-signing key already")?;
    } else {
        for a in &upgraded {
            line(format!(
                "agent {a} has a token-signing key: it mints its own tokens now"
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `restore-agent`.
pub(super) fn restore(ctx: &Ctx, name: &str, to: &Path) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let w = Writer::open(&vault, &ctx.key_source())?;
    w.restore_agent(&parse(name)?, to)?;
    if !ctx.json {
        line(format!(
            "wrote agent {name}'s key to {} (mode 0600)",
            to.display()
        ))?;
    } else {
        output::json(&json!({"agent": name, "key_file": to}))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `grant`.
pub(super) fn grant(ctx: &Ctx, agent: &str, group: &str, mode: ModeArg) -> CliResult<ExitCode> {
    let (a, g): (AgentName, GroupName) = (parse(agent)?, parse(group)?);
    let mode = match mode {
        ModeArg::Read => Mode::Read,
        ModeArg::Use => Mode::Use,
    };
    let vault = ctx.vault()?;
    let outcome = Writer::open(&vault, &ctx.key_source())?.grant(&a, &g, mode)?;
    if ctx.json {
        output::json(&json!({
            "agent": agent, "group": group, "mode": mode, "previous": outcome.previous,
            "exposure": outcome.exposure.as_ref().map(exposure_json),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    match outcome.previous {
        Some(p) if p == mode => line(format!("{agent} already has {mode} on {group}"))?,
        _ => line(format!("granted {agent} {mode} on group {group}"))?,
    }
    if let Some(e) = &outcome.exposure {
        print_exposure_text(e)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `revoke`.
pub(super) fn revoke(ctx: &Ctx, agent: &str, group: &str) -> CliResult<ExitCode> {
    let (a, g): (AgentName, GroupName) = (parse(agent)?, parse(group)?);
    let vault = ctx.vault()?;
    let e = Writer::open(&vault, &ctx.key_source())?.revoke(&a, &g)?;
    print_exposures(ctx, &[e], &format!("revoked {agent} on {group}"))
}

fn exposure_json(e: &Exposure) -> serde_json::Value {
    json!({
        "agent": e.agent, "group": e.group, "could_read": e.could_read,
        "secrets": e.secrets, "in_history": e.in_history, "skipped": e.skipped,
    })
}

fn print_exposure_text(e: &Exposure) -> CliResult<()> {
    if !e.could_read {
        return line(format!(
            "{} only had use of group {}: it never held its values; nothing to rotate upstream",
            e.agent, e.group
        ));
    }
    // Written at once, as one string: a revoke on a big group lists
    // thousands of values.
    use std::fmt::Write as _;
    let mut out =
        String::with_capacity(512 + (e.secrets.len() + e.in_history.len() + e.skipped.len()) * 24);
    let list = |out: &mut String, names: &[String]| {
        for s in names {
            let _ = write!(out, "\n  {s}");
        }
    };
    let _ = write!(
        out,
        "group {}'s key was rotated: values set from now on are out of {}'s reach.\n\
         {} could read these values, and may have kept them: they are exposed until you rotate them upstream and `set` them again (revocation cannot un-leak a value; `agent-vault check` lists every exposed value):",
        e.group, e.agent, e.agent
    );
    list(&mut out, &e.secrets);
    if !e.in_history.is_empty() {
        out.push_str("\nand these, removed since but still readable in git history:");
        list(&mut out, &e.in_history);
    }
    if e.secrets.is_empty() && e.in_history.is_empty() {
        out.push_str("\n  (none: the group holds no secrets)");
    }
    if !e.skipped.is_empty() {
        out.push_str("\nleft as they were, because no owner signed them (`agent-vault check` lists them; remove them, or set them again):");
        list(&mut out, &e.skipped);
    }
    line(out)
}

fn print_exposures(ctx: &Ctx, exposures: &[Exposure], headline: &str) -> CliResult<ExitCode> {
    if ctx.json {
        output::json(
            &json!({"message": headline, "exposure": exposures.iter().map(exposure_json).collect::<Vec<_>>()}),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    line(headline)?;
    for e in exposures {
        print_exposure_text(e)?;
    }
    Ok(ExitCode::SUCCESS)
}
