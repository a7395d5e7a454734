//! `agent-vault service add|list|rm|limits`.

use std::process::ExitCode;

use agent_vault_core::broker::services::{self, Auth, Limits, Service, Services, Sigv4};
use agent_vault_core::writer::Writer;
use agent_vault_core::{KeySource, SecretPath, Vault};
use serde_json::json;

use crate::cli::{LimitArgs, ServiceAddArgs, ServiceCommand, ServiceLimitsArgs};
use crate::output::{self, CliError, CliResult, line, note};

fn secret(s: &str) -> CliResult<SecretPath> {
    Ok(s.parse::<SecretPath>()?)
}

fn split_pair<'a>(s: &'a str, what: &str) -> CliResult<(&'a str, &'a str)> {
    s.split_once('=')
        .ok_or_else(|| CliError::Msg(format!("{what} takes NAME=VALUE, got {s:?}"), None))
}

/// The AWS keys named on the command line, with `--region` and
/// `--aws-service`.
fn aws_keys(a: &ServiceAddArgs) -> CliResult<Option<Sigv4>> {
    let (Some(id), Some(key)) = (&a.access_key_id, &a.secret_access_key) else {
        return Ok(None);
    };
    Ok(Some(Sigv4 {
        access_key_id: secret(id)?,
        secret_access_key: secret(key)?,
        session_token: a.session_token.as_deref().map(secret).transpose()?,
        region: a.region.clone(),
        service: a.aws_service.clone(),
    }))
}

fn from_template(t: &str, a: &ServiceAddArgs) -> CliResult<Service> {
    let aws = services::AWS_TEMPLATES.contains(&t);
    let templates = || {
        Some(format!(
            "templates: {}, {}",
            services::TEMPLATES.join(", "),
            services::AWS_TEMPLATES.join(", ")
        ))
    };
    match (aws, &a.secret, aws_keys(a)?, &a.region) {
        (true, _, Some(keys), Some(region)) => services::aws_template(t, region, keys)
            .ok_or_else(|| CliError::Msg(format!("no template {t:?}"), templates())),
        (true, _, _, _) => Err(CliError::Msg(
            format!("--template {t} needs --region and the AWS keys"),
            Some(format!(
                "agent-vault service add NAME --template {t} --region us-east-1 --access-key-id aws/access-key-id --secret-access-key aws/secret-access-key"
            )),
        )),
        (false, Some(s), None, None) => services::template(t, &secret(s)?)
            .ok_or_else(|| CliError::Msg(format!("no template {t:?}"), templates())),
        (false, _, _, _) => Err(CliError::Msg(
            format!("--template {t} takes --secret GROUP/NAME only"),
            templates(),
        )),
    }
}

pub(crate) fn build(a: &ServiceAddArgs) -> CliResult<Service> {
    if (a.region.is_some() || a.access_key_id.is_some()) && !a.sigv4 && a.template.is_none() {
        return Err(CliError::Msg(
            "--region and the AWS keys are for --sigv4 and the s3 and bedrock templates".into(),
            None,
        ));
    }
    let mut svc = match &a.template {
        Some(t) => from_template(t, a)?,
        None => {
            let auth = if let Some(b) = &a.bearer {
                Auth::Bearer(secret(b)?)
            } else if let Some(u) = &a.basic {
                Auth::Basic {
                    user: secret(u)?,
                    pass: a.pass.as_deref().map(secret).transpose()?,
                }
            } else if let Some(h) = &a.header {
                let (name, template) = split_pair(h, "--header")?;
                Auth::Header {
                    name: name.trim().to_owned(),
                    template: template.to_owned(),
                }
            } else if let Some(q) = &a.query {
                let (param, s) = split_pair(q, "--query")?;
                Auth::Query {
                    param: param.to_owned(),
                    secret: secret(s)?,
                }
            } else if let (true, Some(keys)) = (a.sigv4, aws_keys(a)?) {
                Auth::Sigv4(keys)
            } else {
                Auth::Passthrough
            };
            let mut svc = Service::new(Vec::new(), auth);
            svc.tunnel = a.tunnel;
            svc
        }
    };
    if !a.hosts.is_empty() {
        svc.hosts = a.hosts.clone();
    }
    if svc.hosts.is_empty() {
        return Err(CliError::Msg(
            "a service needs at least one --host".into(),
            None,
        ));
    }
    svc.paths = a.paths.clone();
    svc.methods = a.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
    svc.secrets = a
        .substitute
        .iter()
        .map(|s| secret(s))
        .collect::<CliResult<_>>()?;
    for p in &a.placeholders {
        let (placeholder, s) = split_pair(p, "--placeholder")?;
        svc.placeholders.insert(placeholder.to_owned(), secret(s)?);
    }
    svc.allow_http = a.allow_http;
    svc.limits = a.limits.applied_to(Limits::default());
    Ok(svc)
}

impl LimitArgs {
    /// `base` with the fields given on the command line set.
    fn applied_to(&self, base: Limits) -> Limits {
        Limits {
            rps: self.rps.or(base.rps),
            burst: self.burst.or(base.burst),
            in_flight: self.in_flight.or(base.in_flight),
        }
    }

    fn is_empty(&self) -> bool {
        self.rps.is_none() && self.burst.is_none() && self.in_flight.is_none()
    }
}

/// What the broker holds a service's requests to: `5 requests/s, burst 10,
/// 4 in flight, per agent (vault default)`, or `unlimited`.
fn applied(all: &Services, svc: &Service) -> String {
    match all.limits_for(svc) {
        Ok(Some(a)) => {
            let from = if svc.limits.is_empty() {
                " (the vault's defaults)"
            } else if svc.limits.or(all.default_limits) != svc.limits {
                " (with the vault's defaults)"
            } else {
                ""
            };
            format!("{a}, per agent{from}")
        }
        Ok(None) => "unlimited".into(),
        Err(e) => format!("not valid: {e}"),
    }
}

pub(crate) fn describe(svc: &Service) -> String {
    let auth = match &svc.auth {
        Auth::Bearer(s) => format!("bearer {s}"),
        Auth::Basic { user, pass } => match pass {
            Some(p) => format!("basic {user} {p}"),
            None => format!("basic {user}"),
        },
        Auth::Header { name, template } => format!("header {name}: {template}"),
        Auth::Query { param, secret } => format!("query {param}={secret}"),
        Auth::Passthrough if svc.tunnel => "tunnel, not intercepted".into(),
        Auth::Passthrough => "passthrough".into(),
        Auth::Sigv4(k) => {
            let mut text = format!("sigv4 {} {}", k.access_key_id, k.secret_access_key);
            if let Some(t) = &k.session_token {
                text.push_str(&format!(" {t}"));
            }
            for (what, v) in [("region", &k.region), ("service", &k.service)] {
                if let Some(v) = v {
                    text.push_str(&format!(", {what} {v}"));
                }
            }
            text
        }
    };
    format!("{} ({auth})", svc.hosts.join(", "))
}

/// Runs a `service` subcommand.
pub fn run(vault: &Vault, key: &KeySource, json: bool, cmd: ServiceCommand) -> CliResult<ExitCode> {
    match cmd {
        ServiceCommand::List => {
            let all = services::Services::load(vault)?;
            if json {
                output::json(&serde_json::to_value(&all.services).unwrap_or_default())?;
            } else if all.services.is_empty() {
                line(
                    "no services; add one with `agent-vault service add NAME --template github --secret github/token`",
                )?;
            } else {
                if !all.default_limits.is_empty() {
                    line(format!("default limits: {}", all.default_limits))?;
                }
                for (name, svc) in &all.services {
                    let limits = match all.limits_for(svc) {
                        Ok(None) => String::new(),
                        _ => format!("; limits: {}", applied(&all, svc)),
                    };
                    line(format!("{name:<16} {}{limits}", describe(svc)))?;
                }
            }
        }
        ServiceCommand::Add(args) => {
            if !services::valid_service_name(&args.name) {
                return Err(CliError::Msg(
                    format!("invalid service name {:?}", args.name),
                    Some("1 to 63 characters of a-z, 0-9, '_' and '-'".into()),
                ));
            }
            let mut svc = build(&args)?;
            let mut w = Writer::open(vault, key)?;
            let mut all = w.services()?;
            // Replaced without limit options: the old service's limits stay.
            if let Some(old) = all.services.get(&args.name)
                && args.limits.is_empty()
                && !old.limits.is_empty()
                && !svc.tunnel
            {
                svc.limits = old.limits;
                note(format!(
                    "service {} keeps its limits ({}); `agent-vault service limits {} --clear` removes them",
                    args.name, old.limits, args.name
                ));
            }
            let text = describe(&svc);
            all.services.insert(args.name.clone(), svc);
            w.set_services(&all, &format!("service add {}", args.name))?;
            if json {
                output::json(&json!({"service": args.name, "added": true}))?;
            } else {
                line(format!("service {}: {text}", args.name))?;
            }
        }
        ServiceCommand::Rm { name } => {
            let mut w = Writer::open(vault, key)?;
            let mut all = w.services()?;
            if all.services.remove(&name).is_none() {
                return Err(CliError::Msg(format!("no service {name}"), None));
            }
            w.set_services(&all, &format!("service rm {name}"))?;
            if json {
                output::json(&json!({"service": name, "removed": true}))?;
            } else {
                line(format!("removed service {name}"))?;
            }
        }
        ServiceCommand::Limits(args) => limits(vault, key, json, &args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `service limits NAME|--default [--clear] [--rps N] [--burst N]
/// [--in-flight N]`: shows the limits, or changes them (signed with the
/// manifest like any change of the services list).
fn limits(vault: &Vault, key: &KeySource, json: bool, args: &ServiceLimitsArgs) -> CliResult<()> {
    let changes = args.clear || !args.limits.is_empty();
    let mut writer = if changes {
        Some(Writer::open(vault, key)?)
    } else {
        None
    };
    let mut all = match &writer {
        Some(w) => w.services()?,
        None => Services::load(vault)?,
    };
    let service = args.name.as_deref().filter(|_| !args.default);
    let slot: &mut Limits = match service {
        Some(name) => {
            &mut all
                .services
                .get_mut(name)
                .ok_or_else(|| {
                    CliError::Msg(
                        format!("no service {name}"),
                        Some("`agent-vault service list` shows the services".into()),
                    )
                })?
                .limits
        }
        None => &mut all.default_limits,
    };
    if changes {
        let base = if args.clear { Limits::default() } else { *slot };
        *slot = args.limits.applied_to(base);
    }
    let own = *slot;
    if let Some(w) = writer.as_mut() {
        let op = format!("service limits {}", service.unwrap_or("--default"));
        w.set_services(&all, &op)?;
    }
    let shown = service
        .and_then(|name| all.services.get(name))
        .map(|svc| applied(&all, svc));
    let what = match service {
        Some(name) => format!("service {name} limits"),
        None => "default limits".to_owned(),
    };
    if json {
        output::json(&json!({"service": service, "default": service.is_none(),
            "limits": own, "applied": shown, "changed": changes}))?;
        return Ok(());
    }
    line(format!("{what}: {own}"))?;
    match shown.as_deref() {
        Some("unlimited") => line("  applied: unlimited")?,
        Some(shown) => line(format!(
            "  applied: {shown}; per broker instance; over it: 429 rate-limited"
        ))?,
        None => {}
    }
    Ok(())
}
