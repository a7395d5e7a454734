//! The vault's history in git: `log`, `exposure`.

use std::process::ExitCode;

use agent_vault_core::{AgentName, SecretPath};

use super::{Ctx, parse};
use crate::output::{self, CliResult, line};

/// `log`.
pub(super) fn log(ctx: &Ctx, path: Option<&str>) -> CliResult<ExitCode> {
    let path: Option<SecretPath> = path.map(parse).transpose()?;
    let vault = ctx.vault()?;
    let entries = agent_vault_core::history::log(&vault, path.as_ref())?;
    if ctx.json {
        output::json(&serde_json::to_value(&entries).unwrap_or_default())?;
    } else {
        for e in &entries {
            line(format!(
                "{} {} {} ({} file(s)) {}",
                &e.commit[..12],
                e.time.strftime("%Y-%m-%d %H:%M"),
                e.author,
                e.files_changed,
                e.message
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `exposure`.
pub(super) fn exposure(ctx: &Ctx, agent: &str) -> CliResult<ExitCode> {
    let a: AgentName = parse(agent)?;
    let vault = ctx.vault()?;
    let exposed = agent_vault_core::history::exposure(&vault, &a)?;
    if ctx.json {
        output::json(&serde_json::to_value(&exposed).unwrap_or_default())?;
    } else if exposed.is_empty() {
        line(format!("{agent} could never decrypt any secret"))?;
    } else {
        line(format!(
            "{agent} could decrypt these secrets (rotate them upstream if it is compromised):"
        ))?;
        for e in &exposed {
            let now = if e.at_head { " (current value)" } else { "" };
            line(format!(
                "  {:<40} commits {}..{}{now}",
                e.secret, e.first_commit, e.last_commit
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
