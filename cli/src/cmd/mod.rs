//! The commands, one module per family and one function per command; `run`
//! matches the command and calls its function.

mod agents;
mod broker;
mod docs;
mod explain;
mod history;
mod maintenance;
mod oauth;
mod owners;
mod proposals;
mod propose;
mod sync;
mod vault;

use std::path::PathBuf;
use std::process::ExitCode;

use agent_vault_core::{KeySource, KeyStore, Vault};
use serde_json::json;

use crate::cli::{BrokerCommand, CaCommand, Cli, Command};
use crate::output::{self, CliError, CliResult, line};

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

/// Runs the command.
pub fn run(cli: Cli) -> CliResult<ExitCode> {
    let ctx = Ctx {
        vault_dir: cli.vault,
        key: cli.key,
        json: cli.json,
        offline: cli.offline,
    };
    match cli.command {
        Command::Init { dir, owner } => vault::init(&ctx, &dir, owner),
        Command::Set(args) => vault::set(&ctx, args),
        Command::Get { path } => vault::get(&ctx, &path),
        Command::List { group } => vault::list(&ctx, group.as_deref()),
        Command::Rm { path } => vault::rm(&ctx, &path),
        Command::Import { group, file } => vault::import(&ctx, &group, &file),
        Command::AddAgent { name } => agents::add(&ctx, &name),
        Command::RemoveAgent { name } => agents::remove(&ctx, &name),
        Command::ListAgents => agents::list(&ctx),
        Command::RecoverAgent { name } => agents::recover(&ctx, &name),
        Command::RestoreAgent { name, to } => agents::restore(&ctx, &name, &to),
        Command::UpgradeAgent { agents } => agents::upgrade(&ctx, &agents),
        Command::Grant { agent, group, mode } => agents::grant(&ctx, &agent, &group, mode),
        Command::Revoke { agent, group } => agents::revoke(&ctx, &agent, &group),
        Command::Keygen { out } => owners::keygen(&ctx, &out),
        Command::AddOwner {
            name,
            recipient,
            signing_key,
        } => owners::add(&ctx, &name, &recipient, &signing_key),
        Command::RemoveOwner { name } => owners::remove(&ctx, &name),
        Command::ListOwners => owners::list(&ctx),
        Command::Sync => sync::sync(&ctx),
        Command::Pull => sync::pull(&ctx),
        Command::Push => sync::push(&ctx),
        Command::Resolve { path, theirs, .. } => sync::resolve(&ctx, &path, theirs),
        Command::MergeDriver { base, ours, theirs } => sync::merge_driver(&base, &ours, &theirs),
        Command::Log { path } => history::log(&ctx, path.as_deref()),
        Command::Exposure { agent } => history::exposure(&ctx, &agent),
        Command::Check => maintenance::check(&ctx),
        Command::Repair => maintenance::repair(&ctx),
        Command::Rekey { dry_run } => maintenance::rekey(&ctx, dry_run),
        Command::Broker(BrokerCommand::Init) => broker::init(&ctx),
        Command::Proxy(args) => broker::proxy(&ctx, args),
        Command::Mcp(args) => broker::mcp(&ctx, args),
        Command::Run {
            agent,
            ttl,
            proxy,
            proxy_ca,
            isolate,
            socket,
            command,
        } => {
            let isolate = isolate.map(|level| crate::broker::Isolate {
                required: level == "required",
                socket,
            });
            let proxy = (proxy.as_str(), proxy_ca.as_deref());
            broker::run(&ctx, &agent, &ttl, proxy, isolate, &command)
        }
        Command::Audit {
            file,
            agent,
            since,
            denied,
        } => broker::audit(&ctx, &file, agent.as_deref(), since.as_deref(), denied),
        Command::Explain {
            agent,
            services,
            method,
            url,
        } => explain::explain(&ctx, &agent, &services, &method, &url),
        Command::Ui(args) => ui(&ctx, args),
        Command::Oauth(cmd) => oauth::run(&ctx, cmd),
        Command::Token(cmd) => broker::token(&ctx, cmd),
        Command::Ca(CaCommand::Cert) => broker::ca_cert(&ctx),
        Command::Service(cmd) => broker::service(&ctx, cmd),
        Command::Propose(args) => propose::propose(&ctx, &args),
        Command::Proposals(cmd) => proposals::run(&ctx, cmd),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { dir } => docs::man(&dir),
        Command::Demo => crate::demo::run(),
    }
}

/// `ui`: the owner's page, served until Ctrl-C.
fn ui(ctx: &Ctx, args: crate::cli::UiArgs) -> CliResult<ExitCode> {
    let root = ctx.vault()?.root().to_path_buf();
    crate::ui::run(crate::ui::UiOptions {
        root,
        key: ctx.key_source(),
        listen: args.listen,
        webhook: args.webhook,
        audit: args.audit,
        upstream_ca: args.upstream_ca,
        allow_private_endpoints: args.allow_private_endpoints,
    })
}

fn parse<T: std::str::FromStr<Err = agent_vault_core::Error>>(s: &str) -> CliResult<T> {
    Ok(s.parse::<T>()?)
}

fn done(ctx: &Ctx, msg: &str) -> CliResult<ExitCode> {
    if ctx.json {
        output::json(&json!({"ok": true, "message": msg}))?;
    } else {
        line(msg)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_expiry(s: &str) -> CliResult<jiff::Timestamp> {
    parse_when("--expires", s, Direction::Ahead)
}

/// `audit --since`: a span counts back from now (`--since 2h` is two hours ago).
fn parse_since(s: &str) -> CliResult<jiff::Timestamp> {
    parse_when("--since", s, Direction::Back)
}

/// Which way a span counts from now.
#[derive(Clone, Copy)]
enum Direction {
    Ahead,
    Back,
}

/// A date, a timestamp, or a span from now, read for `flag`.
fn parse_when(flag: &str, s: &str, direction: Direction) -> CliResult<jiff::Timestamp> {
    let bad = || {
        CliError::Msg(
            format!("cannot read {flag} {s:?}"),
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
        let span = match direction {
            Direction::Ahead => span,
            Direction::Back => span.negate(),
        };
        return jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .checked_add(span)
            .map(|z| z.timestamp())
            .map_err(|_| bad());
    }
    Err(bad())
}
