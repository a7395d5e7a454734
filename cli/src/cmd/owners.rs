//! Owners: `keygen`, `add-owner`, `remove-owner`, `list-owners`.

use std::path::Path;
use std::process::ExitCode;

use agent_vault_core::OwnerName;
use agent_vault_core::writer::Writer;
use serde_json::json;

use super::{Ctx, done, parse};
use crate::output::{self, CliResult, line};

/// `keygen`.
pub(super) fn keygen(ctx: &Ctx, out: &Path) -> CliResult<ExitCode> {
    if out.exists() {
        return Err(agent_vault_core::Error::Exists(out.to_owned()).into());
    }
    let id = agent_vault_core::crypto::Identity::generate();
    agent_vault_core::keystore::write_private_key(out, &id)?;
    let recipient = id.recipient().to_string();
    let signing = id.signing_key().public();
    if ctx.json {
        output::json(&json!({"key_file": out, "recipient": recipient, "signing_key": signing}))?;
    } else {
        line(format!(
            "wrote {} (mode 0600; back it up: it will open every secret)",
            out.display()
        ))?;
        line(format!("recipient:   {recipient}"))?;
        line(format!("signing key: {signing}"))?;
        line("ask an owner to run:")?;
        line(format!(
            "  agent-vault add-owner NAME {recipient} --signing-key {signing}"
        ))?;
        line("then use the vault with --key FILE (or AGENT_VAULT_KEY)")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `add-owner`.
pub(super) fn add(
    ctx: &Ctx,
    name: &str,
    recipient: &str,
    signing_key: &str,
) -> CliResult<ExitCode> {
    let n: OwnerName = parse(name)?;
    let r: agent_vault_core::crypto::Recipient = parse(recipient)?;
    let vault = ctx.vault()?;
    Writer::open(&vault, &ctx.key_source())?.add_owner(&n, &r, signing_key)?;
    done(
        ctx,
        &format!("added owner {name}: every group key and escrowed agent key now opens for it"),
    )
}

/// `remove-owner`.
pub(super) fn remove(ctx: &Ctx, name: &str) -> CliResult<ExitCode> {
    let n: OwnerName = parse(name)?;
    let vault = ctx.vault()?;
    let keys = Writer::open(&vault, &ctx.key_source())?.remove_owner(&n)?;
    if ctx.json {
        let keys: Vec<_> = keys
            .iter()
            .map(|(a, k)| json!({"agent": a, "key_file": k}))
            .collect();
        output::json(&json!({"removed": name, "new_agent_keys": keys}))?;
    } else {
        line(format!("removed owner {name}; every group key was rotated"))?;
        for (a, k) in &keys {
            line(format!(
                "agent {a} has a new key (its old one was escrowed to {name}): {}",
                k.display()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `list-owners`.
pub(super) fn list(ctx: &Ctx) -> CliResult<ExitCode> {
    let vault = ctx.vault()?;
    let m = vault.manifest()?;
    if ctx.json {
        let owners: Vec<_> = m
            .owners
            .iter()
            .map(
                |(n, o)| json!({"name": n, "recipient": o.recipient, "signing_key": o.signing_key}),
            )
            .collect();
        output::json(&json!(owners))?;
    } else {
        for (n, o) in &m.owners {
            line(format!("{n:<20} {}", o.recipient))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
