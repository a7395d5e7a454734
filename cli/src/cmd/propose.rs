//! `agent-vault propose`: an agent asks the owners for a service or a
//! credential. Values the agent obtained itself come from standard input or
//! a file (never argv) and are encrypted to the owners before they are written.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use agent_vault_core::crypto::Identity;
use agent_vault_core::proposals::{self, Action, Draft, ProposedService, Slot, SlotKind, Values};
use agent_vault_core::secrecy::SecretBox;
use agent_vault_core::{AgentName, KeySource, SecretPath, Vault};
use clap::Parser;
use serde_json::json;

use super::{Ctx, parse, parse_expiry};
use crate::cli::{ProposeArgs, ServiceAddArgs};
use crate::output::{self, CliError, CliResult, line, note};

/// `service add`'s arguments, parsed from the flags `propose` was given, so
/// a proposed service is built exactly as `service add` builds one.
#[derive(Parser)]
#[command(name = "propose")]
struct AsServiceAdd {
    #[command(flatten)]
    args: ServiceAddArgs,
}

fn service(a: &ProposeArgs) -> CliResult<Option<ProposedService>> {
    let Some(name) = &a.service else {
        return Ok(None);
    };
    let mut argv: Vec<String> = vec!["propose".into(), name.clone()];
    let mut opt = |flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            argv.push(format!("--{flag}={v}"));
        }
    };
    opt("template", &a.template);
    opt("secret", &a.secret);
    opt("bearer", &a.bearer);
    opt("basic", &a.basic);
    opt("pass", &a.pass);
    opt("header", &a.header);
    opt("query", &a.query);
    for (flag, on) in [("--passthrough", a.passthrough), ("--tunnel", a.tunnel)] {
        if on {
            argv.push(flag.into());
        }
    }
    for (flag, vs) in [
        ("host", &a.hosts),
        ("path", &a.paths),
        ("method", &a.methods),
    ] {
        argv.extend(vs.iter().map(|v| format!("--{flag}={v}")));
    }
    let parsed = AsServiceAdd::try_parse_from(argv).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("invalid service flags");
        CliError::Msg(
            format!("--service {name}: {}", first.trim_start_matches("error: ")),
            None,
        )
    })?;
    Ok(Some(ProposedService {
        name: name.clone(),
        service: crate::service::build(&parsed.args)?,
    }))
}

/// A value `GROUP/NAME=@FILE`, read from the file.
pub(super) fn value_from_file(
    spec: &str,
) -> CliResult<(SecretPath, agent_vault_core::crypto::SecretValue)> {
    let (path, file) = spec
        .split_once("=@")
        .ok_or_else(|| {
            CliError::Msg(
                format!("--value takes GROUP/NAME=@FILE, got {:?}", output::clean(spec)),
                Some("a value is never given on the command line; put it in a file (or use standard input)".into()),
            )
        })?;
    let bytes = std::fs::read(Path::new(file))
        .map_err(|e| CliError::Msg(format!("cannot read {file}: {e}"), None))?;
    Ok((parse(path)?, SecretBox::new(Box::new(bytes))))
}

fn read_stdin() -> CliResult<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| CliError::Msg(format!("cannot read standard input: {e}"), None))?;
    Ok(buf)
}

/// The agent's key: `--key` / AGENT_VAULT_KEY, or `--agent NAME`'s key in
/// this machine's key store.
fn agent_key(ctx: &Ctx, vault: &Vault, agent: Option<&str>) -> CliResult<Identity> {
    let source = ctx.key_source();
    if let (KeySource::OwnerDefault, Some(a)) = (&source, agent) {
        let a: AgentName = parse(a)?;
        let path = vault.keys().agent_key_path(vault.id(), &a);
        return Ok(Identity::read_file(&path)?);
    }
    if let KeySource::OwnerDefault = source {
        return Err(CliError::Msg(
            "propose needs the agent's key".into(),
            Some(
                "pass --key FILE, set AGENT_VAULT_KEY, or name the agent with --agent NAME".into(),
            ),
        ));
    }
    Ok(vault.keys().load(&source, vault.id())?)
}

fn draft(a: &ProposeArgs) -> CliResult<(Draft, Values)> {
    let mut d = match &a.file {
        Some(f) => {
            let bytes = std::fs::read(f)
                .map_err(|e| CliError::Msg(format!("cannot read {}: {e}", f.display()), None))?;
            Draft::parse(f, &bytes)?
        }
        None => Draft::default(),
    };
    if let Some(m) = &a.message {
        d.message = m.clone();
    }
    if let Some(e) = &a.expires {
        d.expires = Some(parse_expiry(e)?);
    }
    d.services.extend(service(a)?);
    let mut values = Values::new();
    if let Some(path) = &a.slot {
        let path: SecretPath = parse(path)?;
        d.slots.push(Slot {
            path: path.clone(),
            description: a.description.clone().unwrap_or_default(),
            obtain: a.obtain.clone().unwrap_or_default(),
            action: if a.delete {
                Action::Delete
            } else {
                Action::Set
            },
            kind: if a.oauth {
                SlotKind::Oauth
            } else {
                SlotKind::Static
            },
            value: None,
        });
        if a.value_stdin {
            values.insert(path, SecretBox::new(Box::new(read_stdin()?)));
        }
    }
    for spec in &a.values {
        let (p, v) = value_from_file(spec)?;
        values.insert(p, v);
    }
    Ok((d, values))
}

/// `propose`.
pub(super) fn propose(ctx: &Ctx, a: &ProposeArgs) -> CliResult<ExitCode> {
    let (draft, values) = draft(a)?;
    let vault = ctx.vault()?;
    let key = agent_key(ctx, &vault, a.agent.as_deref())?;
    if !ctx.offline
        && let Some(warning) = agent_vault_core::sync::auto_pull(&vault)
    {
        note(warning);
    }
    let done = proposals::submit(&vault, &key, draft, values)?;
    let p = &done.proposal;
    if ctx.json {
        output::json(&json!({
            "id": p.id.to_string(),
            "agent": p.agent.to_string(),
            "expires": p.expires.to_string(),
            "pushed": done.pushed,
        }))?;
    } else {
        line(p.id.to_string())?;
        note(format!(
            "proposal {} of {} {}; an owner decides (`agent-vault proposals status {}` shows where it stands)",
            p.id,
            p.agent,
            if done.pushed {
                "pushed to the vault's remote"
            } else {
                "written to this repository's proposal branch"
            },
            p.id
        ));
    }
    Ok(ExitCode::SUCCESS)
}
