//! One function per command: parse names, call the core, print.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agent_vault_core::check::{self, Severity};
use agent_vault_core::secrecy::ExposeSecret;
use agent_vault_core::writer::{Exposure, SetOptions};
use agent_vault_core::{
    AgentName, GroupName, KeySource, KeyStore, Mode, OwnerName, SecretPath, Vault,
};
use agent_vault_core::{init, sync};
use clap::CommandFactory;
use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::{Cli, Command, ModeArg, SetArgs};
use crate::output::{self, CliError, CliResult, line, note};

/// Context shared by the commands.
struct Ctx {
    vault_dir: Option<PathBuf>,
    key: Option<PathBuf>,
    json: bool,
    offline: bool,
}

impl Ctx {
    fn vault(&self) -> CliResult<Vault> {
        let keys = KeyStore::from_env()?;
        Ok(match &self.vault_dir {
            Some(d) => Vault::find(d, keys)?,
            None => {
                let cwd = std::env::current_dir().map_err(|e| {
                    CliError::Msg(format!("cannot read the current directory: {e}"), None)
                })?;
                Vault::find(&cwd, keys)?
            }
        })
    }

    fn key_source(&self) -> KeySource {
        KeySource::resolve(self.key.clone())
    }
}

fn parse<T: std::str::FromStr<Err = agent_vault_core::Error>>(s: &str) -> CliResult<T> {
    Ok(s.parse::<T>()?)
}

/// Runs the command.
pub fn run(cli: Cli) -> CliResult<ExitCode> {
    let ctx = Ctx {
        vault_dir: cli.vault,
        key: cli.key,
        json: cli.json,
        offline: cli.offline,
    };
    match cli.command {
        Command::Init { dir, owner } => init_vault(&ctx, &dir, owner),
        Command::AddAgent { name } => add_agent(&ctx, &name),
        Command::RemoveAgent { name } => {
            let vault = ctx.vault()?;
            let mut w = vault.writer(&ctx.key_source())?;
            let exposures = w.remove_agent(&parse(&name)?)?;
            print_exposures(&ctx, &exposures, &format!("removed agent {name}"))
        }
        Command::ListAgents => list_agents(&ctx),
        Command::RecoverAgent { name } => {
            let vault = ctx.vault()?;
            let mut w = vault.writer(&ctx.key_source())?;
            let key = w.recover_agent(&parse(&name)?)?;
            if ctx.json {
                output::json(&json!({"agent": name, "key_file": key}))?;
            } else {
                line(format!("agent {name} has a new key: {}", key.display()))?;
                line(
                    "the groups it can read were rotated; its old key opens nothing written from now on",
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::RestoreAgent { name, to } => {
            let vault = ctx.vault()?;
            let w = vault.writer(&ctx.key_source())?;
            w.restore_agent(&parse(&name)?, &to)?;
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
        Command::Set(args) => set(&ctx, args),
        Command::Get { path } => {
            let path: SecretPath = parse(&path)?;
            let vault = ctx.vault()?;
            if !ctx.offline
                && let Some(warning) = agent_vault_core::sync::auto_pull(&vault)
            {
                note(warning);
            }
            // A writer in the middle of an operation (its journal exists)
            // may have written the manifest but not yet its signature, or a
            // rotated key but not yet the manifest: wait for it, briefly.
            let mut tries = 0;
            let value = loop {
                match vault.reader(&ctx.key_source()).and_then(|r| r.get(&path)) {
                    Err(
                        agent_vault_core::Error::UnsignedManifest(_)
                        | agent_vault_core::Error::UnsignedSecret { .. }
                        | agent_vault_core::Error::Decrypt { .. },
                    ) if vault.has_pending_operation() && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    other => break other?,
                }
            };
            output::stdout_bytes(value.expose_secret())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List { group } => list(&ctx, group.as_deref()),
        Command::Rm { path } => {
            let path: SecretPath = parse(&path)?;
            let vault = ctx.vault()?;
            vault.writer(&ctx.key_source())?.remove_secret(&path)?;
            done(&ctx, &format!("removed {path}"))
        }
        Command::Import { group, file } => import(&ctx, &group, &file),
        Command::Grant { agent, group, mode } => grant(&ctx, &agent, &group, mode),
        Command::Revoke { agent, group } => {
            let (a, g): (AgentName, GroupName) = (parse(&agent)?, parse(&group)?);
            let vault = ctx.vault()?;
            let e = vault.writer(&ctx.key_source())?.revoke(&a, &g)?;
            print_exposures(&ctx, &[e], &format!("revoked {agent} on {group}"))
        }
        Command::Rekey { dry_run } => {
            let vault = ctx.vault()?;
            let report = vault.writer(&ctx.key_source())?.rekey(dry_run)?;
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
        Command::Sync => {
            let vault = ctx.vault()?;
            let outcome = vault
                .writer(&ctx.key_source())?
                .sync(sync::DEFAULT_TIMEOUT)?;
            report_pull(&ctx, &outcome.pull, Some(outcome.pushed))
        }
        Command::Pull => {
            let vault = ctx.vault()?;
            // An owner merges; anyone else (an agent's clone) only fast-forwards.
            let outcome = match vault.writer(&ctx.key_source()) {
                Ok(mut w) => w.pull(sync::DEFAULT_TIMEOUT)?,
                Err(agent_vault_core::Error::NotOwner | agent_vault_core::Error::NoKey { .. }) => {
                    sync::pull_fast_forward(&vault, sync::DEFAULT_TIMEOUT)?
                }
                Err(e) => return Err(e.into()),
            };
            report_pull(&ctx, &outcome, None)
        }
        Command::Push => {
            let vault = ctx.vault()?;
            let pushed = vault
                .writer(&ctx.key_source())?
                .push(sync::DEFAULT_TIMEOUT)?;
            done(
                &ctx,
                if pushed {
                    "pushed"
                } else {
                    "the vault has no remote"
                },
            )
        }
        Command::Resolve {
            path,
            ours: _,
            theirs,
        } => {
            let p: SecretPath = parse(&path)?;
            let vault = ctx.vault()?;
            vault.writer(&ctx.key_source())?.resolve(&p, theirs)?;
            let side = if theirs { "their" } else { "our" };
            done(&ctx, &format!("{path}: kept {side} value"))
        }
        Command::Broker(crate::cli::BrokerCommand::Init) => {
            let vault = ctx.vault()?;
            let (cert, key) = agent_vault_proxy::ca::generate(vault.id())
                .map_err(|e| CliError::Msg(format!("cannot make the CA: {e}"), None))?;
            let path = vault.writer(&ctx.key_source())?.init_broker(&cert, &key)?;
            if ctx.json {
                output::json(
                    &json!({"broker_key": path, "ca_cert": vault.broker_dir().join("ca.crt")}),
                )?;
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
        Command::Audit { file, agent, since } => {
            let since = since.as_deref().map(parse_expiry).transpose()?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Msg(format!("cannot read {}: {e}", file.display()), None))?;
            let mut records = Vec::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if agent.as_deref().is_some_and(|a| r["agent"] != a) {
                    continue;
                }
                if let Some(t) = since {
                    let at = r["time"]
                        .as_str()
                        .and_then(|s| s.parse::<jiff::Timestamp>().ok());
                    if at.is_none_or(|at| at < t) {
                        continue;
                    }
                }
                records.push(r);
            }
            if ctx.json {
                output::json(&json!(records))?;
            } else {
                for r in &records {
                    let secrets: Vec<&str> = r["secrets"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                        .unwrap_or_default();
                    line(format!(
                        "{} {} {} {} {}{} -> {} ({} ms) [{}]",
                        r["time"].as_str().unwrap_or("?"),
                        r["agent"].as_str().unwrap_or("?"),
                        r["service"].as_str().unwrap_or("-"),
                        r["method"].as_str().unwrap_or("?"),
                        r["host"].as_str().unwrap_or("?"),
                        r["path"].as_str().unwrap_or(""),
                        r["status"],
                        r["duration_ms"],
                        secrets.join(", ")
                    ))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Proxy(args) => {
            let vault = ctx.vault()?;
            crate::broker::proxy(vault, &ctx.key_source(), ctx.key.clone(), args)
        }
        Command::Mcp(args) => {
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
        Command::Run {
            agent,
            ttl,
            proxy,
            command,
        } => {
            let vault = ctx.vault()?;
            crate::broker::run(vault, &ctx.key_source(), &agent, &ttl, &proxy, &command)
        }
        Command::Token(crate::cli::TokenCommand::Issue {
            agent,
            ttl,
            services,
            session,
        }) => {
            let a: AgentName = parse(&agent)?;
            let ttl = crate::broker::ttl_seconds(&ttl)?;
            let vault = ctx.vault()?;
            let owner = vault.keys().load(&ctx.key_source(), vault.id())?;
            let manifest = vault.manifest()?;
            let (token, claims) = agent_vault_core::broker::issue_token(
                &vault, &owner, &manifest, &a, ttl, &services, session,
            )?;
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
        Command::Token(crate::cli::TokenCommand::Revoke {
            id,
            agent,
            session,
            all,
        }) => {
            let vault = ctx.vault()?;
            let mut w = vault.writer(&ctx.key_source())?;
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
            done(&ctx, &format!("revoked {what}"))
        }
        Command::Ca(crate::cli::CaCommand::Cert) => {
            let vault = ctx.vault()?;
            output::stdout_bytes(&vault.ca_cert()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Service(cmd) => {
            crate::service::run(&ctx_vault(&ctx)?, &ctx_source(&ctx), ctx.json, cmd)
        }
        Command::MergeDriver { base, ours, theirs } => {
            if sync::merge_driver(&base, &ours, &theirs)? {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Keygen { out } => keygen(&ctx, &out),
        Command::AddOwner {
            name,
            recipient,
            signing_key,
        } => {
            let n: OwnerName = parse(&name)?;
            let r: agent_vault_core::crypto::Recipient = parse(&recipient)?;
            let vault = ctx.vault()?;
            vault
                .writer(&ctx.key_source())?
                .add_owner(&n, &r, &signing_key)?;
            done(
                &ctx,
                &format!(
                    "added owner {name}: every group key and escrowed agent key now opens for it"
                ),
            )
        }
        Command::RemoveOwner { name } => {
            let n: OwnerName = parse(&name)?;
            let vault = ctx.vault()?;
            let keys = vault.writer(&ctx.key_source())?.remove_owner(&n)?;
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
        Command::ListOwners => {
            let vault = ctx.vault()?;
            let m = vault.manifest()?;
            if ctx.json {
                let owners: Vec<_> = m
                    .owners
                    .iter()
                    .map(|(n, o)| json!({"name": n, "recipient": o.recipient, "signing_key": o.signing_key}))
                    .collect();
                output::json(&json!(owners))?;
            } else {
                for (n, o) in &m.owners {
                    line(format!("{n:<20} {}", o.recipient))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Log { path } => {
            let path: Option<SecretPath> = path.as_deref().map(parse).transpose()?;
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
        Command::Exposure { agent } => {
            let a: AgentName = parse(&agent)?;
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
        Command::Check => check_vault(&ctx),
        Command::Repair => {
            let vault = ctx.vault()?;
            // Under the writer's lock: no other command has writes in flight.
            let mut w = vault.writer(&ctx.key_source())?;
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
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "agent-vault", &mut buf);
            output::stdout_bytes(&buf)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => man(&dir),
        Command::Demo => crate::demo::run(),
    }
}

fn ctx_vault(ctx: &Ctx) -> CliResult<Vault> {
    ctx.vault()
}

fn ctx_source(ctx: &Ctx) -> KeySource {
    ctx.key_source()
}

fn report_pull(ctx: &Ctx, pull: &sync::PullOutcome, pushed: Option<bool>) -> CliResult<ExitCode> {
    let (what, conflicts) = match pull {
        sync::PullOutcome::NoRemote => ("the vault has no remote", &[][..]),
        sync::PullOutcome::UpToDate => ("up to date with the remote", &[][..]),
        sync::PullOutcome::FastForward => {
            ("brought in the remote's changes (fast-forward)", &[][..])
        }
        sync::PullOutcome::Merged { conflicts } => {
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

fn done(ctx: &Ctx, msg: &str) -> CliResult<ExitCode> {
    if ctx.json {
        output::json(&json!({"ok": true, "message": msg}))?;
    } else {
        line(msg)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn init_vault(ctx: &Ctx, dir: &Path, owner: Option<String>) -> CliResult<ExitCode> {
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

fn add_agent(ctx: &Ctx, name: &str) -> CliResult<ExitCode> {
    let a: AgentName = parse(name)?;
    let vault = ctx.vault()?;
    let mut w = vault.writer(&ctx.key_source())?;
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

fn keygen(ctx: &Ctx, out: &Path) -> CliResult<ExitCode> {
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

fn list_agents(ctx: &Ctx) -> CliResult<ExitCode> {
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
                json!({"name": a, "recipient": e.recipient, "grants": grants})
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

fn parse_expiry(s: &str) -> CliResult<jiff::Timestamp> {
    let bad = || {
        CliError::Msg(
            format!("cannot read --expires {s:?}"),
            Some("use a date (2027-01-31), a timestamp (2027-01-31T12:00:00Z) or a span (90d, 12h, 2w)".into()),
        )
    };
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp())
            .map_err(|_| bad());
    }
    if let Ok(span) = s.parse::<jiff::Span>() {
        return jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .checked_add(span)
            .map(|z| z.timestamp())
            .map_err(|_| bad());
    }
    Err(bad())
}

fn set(ctx: &Ctx, args: SetArgs) -> CliResult<ExitCode> {
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
    vault.writer(&ctx.key_source())?.set(&path, &value, &opts)?;
    done(ctx, &format!("set {path} ({} bytes)", value.len()))
}

fn list(ctx: &Ctx, group: Option<&str>) -> CliResult<ExitCode> {
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

fn import(ctx: &Ctx, group: &str, file: &Path) -> CliResult<ExitCode> {
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
    vault
        .writer(&ctx.key_source())?
        .set_many(items, format!("import {n} secrets into {group}"))?;
    done(ctx, &format!("imported {n} secret(s) into group {group}"))
}

fn grant(ctx: &Ctx, agent: &str, group: &str, mode: ModeArg) -> CliResult<ExitCode> {
    let (a, g): (AgentName, GroupName) = (parse(agent)?, parse(group)?);
    let mode = match mode {
        ModeArg::Read => Mode::Read,
        ModeArg::Use => Mode::Use,
    };
    let vault = ctx.vault()?;
    let outcome = vault.writer(&ctx.key_source())?.grant(&a, &g, mode)?;
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
    line(format!(
        "group {}'s key was rotated: values set from now on are out of {}'s reach.",
        e.group, e.agent
    ))?;
    line(format!(
        "{} could read these values, and may have kept them — rotate them upstream (revocation cannot un-leak a value):",
        e.agent
    ))?;
    for s in &e.secrets {
        line(format!("  {s}"))?;
    }
    if !e.in_history.is_empty() {
        line("and these, removed since but still readable in git history:")?;
        for s in &e.in_history {
            line(format!("  {s}"))?;
        }
    }
    if e.secrets.is_empty() && e.in_history.is_empty() {
        line("  (none: the group holds no secrets)")?;
    }
    if !e.skipped.is_empty() {
        line(
            "left as they were, because no owner signed them (`agent-vault check` lists them; remove them, or set them again):",
        )?;
        for s in &e.skipped {
            line(format!("  {s}"))?;
        }
    }
    Ok(())
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

fn check_vault(ctx: &Ctx) -> CliResult<ExitCode> {
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

fn man(dir: &Path) -> CliResult<ExitCode> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Msg(format!("cannot create {}: {e}", dir.display()), None))?;
    let write = |cmd: clap::Command, name: String| -> CliResult<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .map_err(|e| CliError::Msg(format!("cannot render man page: {e}"), None))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buf)
            .map_err(|e| CliError::Msg(format!("cannot write {}: {e}", path.display()), None))
    };
    let root = Cli::command();
    let mut n = 0;
    for sub in root.get_subcommands() {
        let name = format!("agent-vault-{}", sub.get_name());
        write(sub.clone().name(name.clone()), name)?;
        n += 1;
    }
    write(root, "agent-vault".into())?;
    line(format!("wrote {} man pages to {}", n + 1, dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
