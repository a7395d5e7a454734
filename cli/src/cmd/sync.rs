//! Sharing the vault through git: `sync`, `pull`, `push`, `resolve`, and
//! git's merge driver.

use std::path::Path;
use std::process::ExitCode;

use agent_vault_core::SecretPath;
use agent_vault_core::sync as core_sync;
use agent_vault_core::writer::Writer;
use serde_json::json;

use super::{Ctx, done, parse};
use crate::output::{self, CliResult, line};

/// `sync`.
pub(super) fn sync(ctx: &Ctx) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let outcome = Writer::open(&vault, &ctx.key_source())?.sync(core_sync::DEFAULT_TIMEOUT)?;
    report_pull(ctx, &outcome.pull, Some(outcome.pushed))
}

/// `pull`.
pub(super) fn pull(ctx: &Ctx) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    // An owner merges; anyone else (an agent's clone) only fast-forwards.
    let outcome = match Writer::open(&vault, &ctx.key_source()) {
        Ok(mut w) => w.pull(core_sync::DEFAULT_TIMEOUT)?,
        Err(agent_vault_core::Error::NotOwner | agent_vault_core::Error::NoKey { .. }) => {
            core_sync::pull_fast_forward(&vault, core_sync::DEFAULT_TIMEOUT)?
        }
        Err(e) => return Err(e.into()),
    };
    report_pull(ctx, &outcome, None)
}

/// `push`.
pub(super) fn push(ctx: &Ctx) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let pushed = Writer::open(&vault, &ctx.key_source())?.push(core_sync::DEFAULT_TIMEOUT)?;
    done(
        ctx,
        if pushed {
            "pushed"
        } else {
            "the vault has no remote"
        },
    )
}

/// `resolve`.
pub(super) fn resolve(ctx: &Ctx, path: &str, theirs: bool) -> CliResult<ExitCode> {
    let p: SecretPath = parse(path)?;
    let vault = ctx.vault()?;
    Writer::open(&vault, &ctx.key_source())?.resolve(&p, theirs)?;
    let side = if theirs { "their" } else { "our" };
    done(ctx, &format!("{path}: kept {side} value"))
}

/// `merge-driver` (hidden; git calls it).
pub(super) fn merge_driver(base: &Path, ours: &Path, theirs: &Path) -> CliResult<ExitCode> {
    if core_sync::merge_driver(base, ours, theirs)? {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

fn report_pull(
    ctx: &Ctx,
    pull: &core_sync::PullOutcome,
    pushed: Option<bool>,
) -> CliResult<ExitCode> {
    let (what, conflicts) = match pull {
        core_sync::PullOutcome::NoRemote => ("the vault has no remote", &[][..]),
        core_sync::PullOutcome::UpToDate => ("up to date with the remote", &[][..]),
        core_sync::PullOutcome::FastForward => {
            ("brought in the remote's changes (fast-forward)", &[][..])
        }
        core_sync::PullOutcome::Merged { conflicts } => {
            ("merged the remote's changes", conflicts.as_slice())
        }
    };
    if ctx.json {
        output::json(&json!({"pull": what, "conflicts": conflicts, "pushed": pushed}))?;
        return Ok(ExitCode::SUCCESS);
    }
    line(what)?;
    for c in conflicts {
        line(format!(
            "conflict: {c} was changed on both sides; ours is kept — `agent-vault resolve {c} --theirs` takes theirs, `--ours` keeps ours"
        ))?;
    }
    if pushed == Some(true) {
        line("pushed")?;
    }
    Ok(ExitCode::SUCCESS)
}
