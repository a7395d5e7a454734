//! The vault side of the page: the owner's vault opened for each action,
//! and core's proposals API turned into the plain views the pages render.
//! Every call here is blocking (core has no async); the pages run them on
//! tokio's blocking pool.

use std::path::PathBuf;

use agent_vault_core::proposals::{self, Action, Proposal, SlotKind, Status};
use agent_vault_core::secrecy::SecretBox;
use agent_vault_core::writer::Writer;
use agent_vault_core::{KeySource, KeyStore, SecretPath, Vault};

/// How the page opens the owner's vault: its root and the owner's key.
pub(crate) struct Owner {
    /// The vault's directory.
    pub(crate) root: PathBuf,
    /// The owner key.
    pub(crate) key: KeySource,
}

impl Owner {
    /// The vault, opened afresh (so each action sees the files as they are).
    pub(crate) fn vault(&self) -> Result<Vault, String> {
        let keys = KeyStore::from_env().map_err(err)?;
        Vault::find(&self.root, keys).map_err(err)
    }
}

/// A core error as one line for the page (core's messages never carry a
/// value), with its hint.
pub(crate) fn err(e: agent_vault_core::Error) -> String {
    match e.hint() {
        Some(h) => format!("{e} ({h})"),
        None => e.to_string(),
    }
}

/// A pending proposal in the list.
pub(crate) struct Summary {
    /// `ID`, or `AGENT/ID` (what core's `load` takes).
    pub(crate) id: String,
    pub(crate) agent: String,
    pub(crate) first_line: String,
    pub(crate) created: jiff::Timestamp,
    pub(crate) expires: jiff::Timestamp,
}

/// A service approving would add or replace.
pub(crate) struct ServiceLine {
    pub(crate) name: String,
    pub(crate) hosts: Vec<String>,
    pub(crate) old_hosts: Vec<String>,
    pub(crate) auth: String,
    pub(crate) secrets: Vec<String>,
    pub(crate) replaces: bool,
}

/// A grant approving would give.
pub(crate) struct GrantLine {
    pub(crate) agent: String,
    pub(crate) group: String,
    pub(crate) mode: String,
    pub(crate) new_group: bool,
}

/// A credential slot.
pub(crate) struct SlotLine {
    pub(crate) path: String,
    pub(crate) description: String,
    pub(crate) obtain: String,
    /// `set` or `delete`.
    pub(crate) action: String,
    /// `static` or `oauth`.
    pub(crate) kind: String,
    /// The secret exists now (a `set` replaces it).
    pub(crate) exists: bool,
    /// The owner must type a value (a `set` slot without the agent's own).
    pub(crate) needs_value: bool,
    /// The agent supplied the value itself (encrypted to the owners).
    pub(crate) agent_value: bool,
}

/// What approving a proposal would change.
pub(crate) struct Plan {
    pub(crate) summary: Summary,
    pub(crate) status: String,
    /// Who decided and why (a denial's reason), when decided.
    pub(crate) decided: Option<String>,
    pub(crate) message: String,
    pub(crate) services: Vec<ServiceLine>,
    pub(crate) grants: Vec<GrantLine>,
    pub(crate) slots: Vec<SlotLine>,
    /// Why approving would fail now.
    pub(crate) problems: Vec<String>,
}

/// A value typed into the page, for one slot.
pub(crate) type SlotValue = (String, SecretBox<Vec<u8>>);

fn summary(p: &Proposal, id: String) -> Summary {
    Summary {
        id,
        agent: p.agent.to_string(),
        first_line: first_line(&p.message),
        created: p.created,
        expires: p.expires,
    }
}

/// The pending proposals, oldest first. An id two agents share is given as
/// `AGENT/ID`.
pub(crate) fn pending(owner: &Owner) -> Result<Vec<Summary>, String> {
    let vault = owner.vault()?;
    let listing = proposals::list(&vault).map_err(err)?;
    let all = &listing.proposals;
    Ok(all
        .iter()
        .filter(|(_, s)| *s == Status::Pending)
        .map(|(p, _)| {
            let shared = all.iter().filter(|(q, _)| q.id == p.id).count() > 1;
            let id = if shared {
                format!("{}/{}", p.agent, p.id)
            } else {
                p.id.to_string()
            };
            summary(p, id)
        })
        .collect())
}

/// What approving `id` would change (and where it stands).
pub(crate) fn plan(owner: &Owner, id: &str) -> Result<Plan, String> {
    let vault = owner.vault()?;
    let (p, status) = proposals::load(&vault, id).map_err(err)?;
    let plan = proposals::plan(&vault, &p).map_err(err)?;
    let decided = match &status {
        Status::Approved { by, at } => Some(format!("approved by {by} at {at}")),
        Status::Denied { reason, by, at } => Some(format!("denied by {by} at {at}: {reason}")),
        _ => None,
    };
    Ok(Plan {
        summary: summary(&p, id.to_owned()),
        status: status.word().to_owned(),
        decided,
        message: p.message.clone(),
        services: plan
            .services
            .iter()
            .map(|s| ServiceLine {
                name: s.name.clone(),
                hosts: s.hosts.clone(),
                old_hosts: s.old_hosts.clone(),
                auth: s.auth.clone(),
                secrets: s.secrets.iter().map(ToString::to_string).collect(),
                replaces: s.replaces,
            })
            .collect(),
        grants: plan
            .grants
            .iter()
            .map(|g| GrantLine {
                agent: g.agent.to_string(),
                group: g.group.to_string(),
                mode: g.mode.to_string(),
                new_group: g.new_group,
            })
            .collect(),
        slots: plan
            .slots
            .iter()
            .map(|s| SlotLine {
                path: s.path.to_string(),
                description: s.description.clone(),
                obtain: s.obtain.clone(),
                action: s.action.to_string(),
                kind: s.kind.to_string(),
                exists: s.exists,
                // An OAuth slot is connected after approval, not typed.
                needs_value: s.action == Action::Set && !s.agent_value && s.kind != SlotKind::Oauth,
                agent_value: s.agent_value,
            })
            .collect(),
        problems: plan.problems.clone(),
    })
}

/// Approves `id` with the values typed for its slots; a line saying what
/// was done.
pub(crate) fn approve(owner: &Owner, id: &str, values: Vec<SlotValue>) -> Result<String, String> {
    let vault = owner.vault()?;
    let mut map = proposals::Values::new();
    for (path, value) in values {
        let path: SecretPath = path.parse().map_err(err)?;
        map.insert(path, value);
    }
    let plan = proposals::approve(&vault, &owner.key, id, map).map_err(err)?;
    Ok(format!(
        "Approved proposal {id} of {}: {} slot(s), {} service(s), {} grant(s) applied in one commit. \
         Run `agent-vault sync` to push it to the agents.",
        plan.agent,
        plan.slots.len(),
        plan.services.len(),
        plan.grants.len()
    ))
}

/// Denies `id`, with a reason the agent reads.
pub(crate) fn deny(owner: &Owner, id: &str, reason: &str) -> Result<(), String> {
    let vault = owner.vault()?;
    proposals::deny(&vault, &owner.key, id, reason).map_err(err)
}

/// `agent-vault sync` from the page: fetch (the agents' proposals too),
/// merge, push. A line saying what happened.
pub(crate) fn sync(owner: &Owner) -> Result<String, String> {
    let vault = owner.vault()?;
    let outcome = Writer::open(&vault, &owner.key)
        .and_then(|mut w| w.sync(agent_vault_core::sync::DEFAULT_TIMEOUT))
        .map_err(err)?;
    Ok(if outcome.pushed {
        "Synced with the remote: fetched, merged and pushed.".into()
    } else {
        "Synced: this vault has no remote to push to.".into()
    })
}

/// The first line of a message, at most 200 characters.
pub(crate) fn first_line(message: &str) -> String {
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut s: String = line.trim().chars().take(200).collect();
    if line.trim().chars().count() > 200 {
        s.push('…');
    }
    s
}
