//! `agent-vault service add|list|rm`.

use std::process::ExitCode;

use agent_vault_core::broker::services::{self, Auth, Service, Sigv4};
use agent_vault_core::writer::Writer;
use agent_vault_core::{KeySource, SecretPath, Vault};
use serde_json::json;

use crate::cli::{ServiceAddArgs, ServiceCommand};
use crate::output::{self, CliError, CliResult, line};

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
    Ok(svc)
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
                for (name, svc) in &all.services {
                    line(format!("{name:<16} {}", describe(svc)))?;
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
            let svc = build(&args)?;
            let mut w = Writer::open(vault, key)?;
            let mut all = w.services()?;
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
    }
    Ok(ExitCode::SUCCESS)
}
