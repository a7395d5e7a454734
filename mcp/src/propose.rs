//! `agent_vault_propose` and `agent_vault_proposal_status`: the agent asks
//! the owners for access, and later asks where its proposal stands. The
//! proposal is signed with the agent's key and pushed to the vault's remote
//! like `agent-vault propose` does; a value the agent hands over is
//! encrypted to the owners before anything is written.

use std::collections::BTreeMap;

use agent_vault_core::broker::services::{Auth, Service};
use agent_vault_core::proposals::{self, Action, Draft, ProposedService, Slot, SlotKind, Status};
use agent_vault_core::secrecy::SecretBox;
use agent_vault_core::{Error as CoreError, SecretPath};
use serde_json::{Value, json};

use crate::fail::Fail;
use crate::tools::{self, ProposeArgs, ProposedServiceArgs, ProposedSlotArgs};
use crate::{Output, Server, parse_args};

fn invalid(msg: String) -> Fail {
    Fail::Core(CoreError::InvalidInput(msg))
}

fn secret(s: &Option<String>, what: &str, service: &str) -> Result<SecretPath, Fail> {
    let s = s
        .as_deref()
        .ok_or_else(|| invalid(format!("service {service}: auth {what} needs \"secret\"")))?;
    Ok(s.parse()?)
}

fn service(a: ProposedServiceArgs) -> Result<ProposedService, Fail> {
    let name = a.name.clone();
    let auth = match a.auth.as_str() {
        "bearer" => Auth::Bearer(secret(&a.secret, "bearer", &name)?),
        "basic" => Auth::Basic {
            user: secret(&a.secret, "basic", &name)?,
            pass: a.password_secret.as_deref().map(str::parse).transpose()?,
        },
        "header" => match (a.header, a.template) {
            (Some(name), Some(template)) => Auth::Header { name, template },
            _ => {
                return Err(invalid(format!(
                    "service {name}: auth header needs \"header\" and \"template\""
                )));
            }
        },
        "query" => Auth::Query {
            param: a
                .param
                .ok_or_else(|| invalid(format!("service {name}: auth query needs \"param\"")))?,
            secret: secret(&a.secret, "query", &name)?,
        },
        "passthrough" => Auth::Passthrough,
        other => {
            return Err(invalid(format!(
                "service {name}: auth {other:?} is not one of bearer, basic, header, query, passthrough"
            )));
        }
    };
    let mut svc = Service::new(a.hosts, auth);
    svc.paths = a.paths;
    svc.methods = a.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
    Ok(ProposedService { name, service: svc })
}

fn slot(a: ProposedSlotArgs) -> Result<(Slot, Option<String>), Fail> {
    let path: SecretPath = a.secret.parse()?;
    let action = match a.action.as_deref() {
        None | Some("set") => Action::Set,
        Some("delete") => Action::Delete,
        Some(other) => {
            return Err(invalid(format!(
                "slot {path}: action {other:?} is not set or delete"
            )));
        }
    };
    let kind = match a.kind.as_deref() {
        None | Some("static") => SlotKind::Static,
        Some("oauth") => SlotKind::Oauth,
        Some(other) => {
            return Err(invalid(format!(
                "slot {path}: kind {other:?} is not static or oauth"
            )));
        }
    };
    Ok((
        Slot {
            path,
            description: a.description,
            obtain: a.obtain,
            action,
            kind,
            value: None,
        },
        a.value,
    ))
}

fn status_json(id: &str, s: &Status) -> Value {
    let mut v = json!({"id": id, "status": s.word()});
    match s {
        Status::Approved { by, at } => {
            v["by"] = json!(by.to_string());
            v["at"] = json!(at.to_string());
            v["next"] = json!(
                "the access is in place: retry your request (agent_vault_whoami lists the services)"
            );
        }
        Status::Denied { reason, by, at } => {
            v["by"] = json!(by.to_string());
            v["at"] = json!(at.to_string());
            v["reason"] = json!(agent_vault_core::model::printable(reason));
            v["next"] = json!("do not retry this proposal; read the reason");
        }
        Status::Pending => v["next"] = json!("a human has not decided yet; check again later"),
        Status::Expired => {
            v["next"] = json!("no one decided in time; propose again if you still need it")
        }
    }
    v
}

impl Server {
    pub(crate) fn propose(&self, args: Value) -> Result<Output, Fail> {
        let a: ProposeArgs = parse_args(tools::PROPOSE, args)?;
        let mut draft = Draft {
            message: a.message,
            ..Draft::default()
        };
        if let Some(days) = a.expires_in_days {
            let span = jiff::SignedDuration::from_hours(24 * i64::from(days.min(3650)));
            draft.expires = Some(
                jiff::Timestamp::now()
                    .checked_add(span)
                    .map_err(|e| invalid(format!("expires_in_days: {e}")))?,
            );
        }
        for s in a.services {
            draft.services.push(service(s)?);
        }
        let mut values = BTreeMap::new();
        for s in a.slots {
            let (slot, value) = slot(s)?;
            if let Some(v) = value {
                values.insert(slot.path.clone(), SecretBox::new(Box::new(v.into_bytes())));
            }
            draft.slots.push(slot);
        }
        let reader = self.reader()?;
        let done = tokio::task::block_in_place(|| {
            proposals::submit(reader.vault(), reader.identity(), draft, values)
        })?;
        let p = &done.proposal;
        Ok(Output::Json(json!({
            "id": p.id.to_string(),
            "status": "pending",
            "expires": p.expires.to_string(),
            "sent": done.pushed,
            "next": "a human must approve it; call agent_vault_proposal_status with this id later",
        })))
    }

    pub(crate) fn proposal_status(&self, args: Value) -> Result<Output, Fail> {
        let a: tools::ProposalStatusArgs = parse_args(tools::PROPOSAL_STATUS, args)?;
        let reader = self.reader()?;
        let vault = reader.vault();
        let pulled = tokio::task::block_in_place(|| {
            agent_vault_core::sync::pull_fast_forward(
                vault,
                agent_vault_core::sync::DEFAULT_TIMEOUT,
            )
        });
        if let Err(e) = pulled {
            eprintln!("agent-vault mcp: not updated from the remote: {e}");
        }
        let (p, s) = proposals::status(vault, &a.id)?;
        Ok(Output::Json(status_json(p.id.as_str(), &s)))
    }
}
