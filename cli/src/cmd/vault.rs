//! The vault's secrets: `init`, `set`, `get`, `list`, `rm`, `import`.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use agent_vault_core::init;
use agent_vault_core::live::LiveReader;
use agent_vault_core::secrecy::ExposeSecret;
use agent_vault_core::writer::{SetOptions, Writer};
use agent_vault_core::{GroupName, KeyStore, OwnerName, SecretPath};
use serde_json::json;
use zeroize::Zeroizing;

use super::{Ctx, done, parse, parse_expiry};
use crate::cli::SetArgs;
use crate::output::{self, CliError, CliResult, line, note};

/// `init`.
pub(super) fn init(ctx: &Ctx, dir: &Path, owner: Option<String>) -> CliResult<ExitCode> {
    let owner = owner
        .or_else(|| std::env::var("USER").ok())
        .map(|o| o.to_lowercase())
        .filter(|o| o.parse::<OwnerName>().is_ok())
        .unwrap_or_else(|| "owner".into());
    let r = init::init(dir, parse(&owner)?, KeyStore::from_env()?)?;
    if ctx.json {
        output::json(&json!({
            "vault_id": r.vault.id(),
            "root": r.vault.root(),
            "owner": owner,
            "owner_key": r.owner_key,
            "hook": r.hook,
            "created_git_repository": r.created_repo,
        }))?;
    } else {
        line(format!(
            "created vault {} in {}",
            r.vault.id(),
            r.vault.root().display()
        ))?;
        line(format!(
            "owner {owner}'s key: {} (back it up; it opens everything)",
            r.owner_key.display()
        ))?;
        if let Some(h) = r.hook {
            line(format!(
                "pre-commit hook blocking private keys: {}",
                h.display()
            ))?;
        }
        line(
            "next: agent-vault set GROUP/NAME, agent-vault add-agent NAME, agent-vault grant NAME GROUP",
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `set`.
pub(super) fn set(ctx: &Ctx, args: SetArgs) -> CliResult<ExitCode> {
    let path: SecretPath = parse(&args.path)?;
    let opts = SetOptions {
        expires: args.expires.as_deref().map(parse_expiry).transpose()?,
        description: args.description,
    };
    let value: Zeroizing<Vec<u8>> = match (args.value, args.from_file) {
        (Some(v), _) => Zeroizing::new(v.into_bytes()),
        (None, Some(f)) => Zeroizing::new(
            std::fs::read(&f)
                .map_err(|e| CliError::Msg(format!("cannot read {}: {e}", f.display()), None))?,
        ),
        (None, None) => {
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::Msg(format!("cannot read standard input: {e}"), None))?;
            buf
        }
    };
    let vault = ctx.vault()?;
    Writer::open(&vault, &ctx.key_source())?.set(&path, &value, &opts)?;
    done(ctx, &format!("set {path} ({} bytes)", value.len()))
}

/// `get`.
pub(super) fn get(ctx: &Ctx, path: &str) -> CliResult<ExitCode> {
    let path: SecretPath = parse(path)?;
    let vault = ctx.vault()?;
    if !ctx.offline
        && let Some(warning) = agent_vault_core::sync::auto_pull(&vault)
    {
        note(warning);
    }
    // Core's live reader waits out a writer in the middle of an operation.
    let live = LiveReader::open(vault, &ctx.key_source(), std::time::Duration::ZERO)?;
    let value = live.get(&path)?;
    output::stdout_bytes(value.expose_secret())?;
    Ok(ExitCode::SUCCESS)
}

/// `list`.
pub(super) fn list(ctx: &Ctx, group: Option<&str>) -> CliResult<ExitCode> {
    let group: Option<GroupName> = group.map(parse).transpose()?;
    let vault = ctx.vault()?;
    let infos = vault.list(group.as_ref())?;
    if ctx.json {
        let items: Vec<_> = infos
            .iter()
            .map(|i| match &i.meta {
                Ok(m) => json!({
                    "path": i.path, "group": i.path.group(), "name": i.path.name(),
                    "created": m.created, "updated": m.updated, "expires": m.expires,
                    "description": m.description, "generation": m.generation,
                    "metadata_signed": i.metadata_signed,
                }),
                Err(e) => json!({"path": i.path, "group": i.path.group(), "name": i.path.name(), "error": e}),
            })
            .collect();
        output::json(&json!(items))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for i in &infos {
        match &i.meta {
            Ok(m) => {
                let exp = m
                    .expires
                    .map(|e| format!("expires {}", e.strftime("%Y-%m-%d")))
                    .unwrap_or_default();
                let desc = output::clean(m.description.as_deref().unwrap_or(""));
                let unverified =
                    if (m.expires.is_some() || m.description.is_some()) && !i.metadata_signed {
                        "(unverified) "
                    } else {
                        ""
                    };
                out.push_str(
                    format!("{:<40} {:<18} {unverified}{desc}", i.path.to_string(), exp).trim_end(),
                );
                out.push('\n');
            }
            Err(e) => out.push_str(&format!(
                "{:<40} (unreadable metadata: {})\n",
                i.path.to_string(),
                output::clean(e)
            )),
        }
    }
    if infos.is_empty() {
        out.push_str("no secrets; add one with `agent-vault set GROUP/NAME`\n");
    }
    output::stdout_bytes(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `rm`.
pub(super) fn rm(ctx: &Ctx, path: &str) -> CliResult<ExitCode> {
    let path: SecretPath = parse(path)?;
    let vault = ctx.vault()?;
    Writer::open(&vault, &ctx.key_source())?.remove_secret(&path)?;
    done(ctx, &format!("removed {path}"))
}

/// `import`.
pub(super) fn import(ctx: &Ctx, group: &str, file: &Path) -> CliResult<ExitCode> {
    let group: GroupName = parse(group)?;
    let input = Zeroizing::new(if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| CliError::Msg(format!("cannot read standard input: {e}"), None))?;
        b
    } else {
        std::fs::read(file)
            .map_err(|e| CliError::Msg(format!("cannot read {}: {e}", file.display()), None))?
    });
    let entries = agent_vault_core::dotenv::parse(&input)?;
    if entries.is_empty() {
        return Err(CliError::Msg(
            format!("{} holds no KEY=VALUE lines", file.display()),
            None,
        ));
    }
    let items = entries
        .iter()
        .map(|e| {
            Ok((
                SecretPath::new(group.clone(), &e.key)?,
                e.value.as_slice(),
                SetOptions::default(),
            ))
        })
        .collect::<agent_vault_core::Result<Vec<_>>>()?;
    let n = items.len();
    let vault = ctx.vault()?;
    Writer::open(&vault, &ctx.key_source())?
        .set_many(items, format!("import {n} secrets into {group}"))?;
    done(ctx, &format!("imported {n} secret(s) into group {group}"))
}
