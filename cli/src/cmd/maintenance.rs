//! Keeping the vault sound: `check`, `repair`, `rekey`.

use std::process::ExitCode;

use agent_vault_core::check::{self, Severity};
use agent_vault_core::writer::Writer;
use serde_json::json;

use super::Ctx;
use crate::output::{self, CliResult, line, note};

/// `check`.
pub(super) fn check(ctx: &Ctx) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    // The owner key, when this machine has one, lets check open every group key.
    let owner = vault.keys().load(&ctx.key_source(), vault.id()).ok();
    let report = check::check(&vault, owner.as_ref());
    if ctx.json {
        output::json(&serde_json::to_value(&report).unwrap_or_default())?;
    } else {
        for f in &report.findings {
            let sev = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            line(format!(
                "{sev}: [{}] {}: {}",
                f.kind,
                output::clean(&f.subject),
                output::clean(&f.message)
            ))?;
        }
        let errors = report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        let warnings = report.findings.len() - errors;
        line(format!(
            "checked {} secret(s): {errors} error(s), {warnings} warning(s)",
            report.secrets
        ))?;
    }
    if report.has_errors() {
        note("check found errors");
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// `repair`.
pub(super) fn repair(ctx: &Ctx) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    // Under the writer's lock: no other command has writes in flight.
    let mut w = Writer::open(&vault, &ctx.key_source())?;
    let recovered = w.recovered().map(str::to_owned);
    let (resigned, _) = w.resign_metadata()?;
    let removed = check::remove_temp_files(&vault);
    drop(w);
    if ctx.json {
        output::json(
            &json!({"completed": recovered, "temp_files_removed": removed,
            "metadata_resigned": resigned.iter().map(|p| p.to_string()).collect::<Vec<_>>()}),
        )?;
    } else {
        if !resigned.is_empty() {
            line(format!(
                "signed the description and expiry of {} secret(s) written before they were signed",
                resigned.len()
            ))?;
        }
        match recovered {
            Some(op) => line(format!("completed the interrupted operation: {op}"))?,
            None => line("no interrupted operation")?,
        }
        if removed > 0 {
            line(format!("removed {removed} unfinished write(s)"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `rekey`.
pub(super) fn rekey(ctx: &Ctx, dry_run: bool) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let report = Writer::open(&vault, &ctx.key_source())?.rekey(dry_run)?;
    if ctx.json {
        output::json(&json!({"dry_run": dry_run, "groups": report}))?;
    } else {
        let verb = if dry_run {
            "would re-encrypt"
        } else {
            "re-encrypted"
        };
        for (g, n) in &report {
            line(format!("group {g}: new key, {verb} {n} secret(s)"))?;
        }
        if report.is_empty() {
            line("no groups yet")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
