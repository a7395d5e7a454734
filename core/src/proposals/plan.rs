//! What approving a proposal would change, as plain data a page or a
//! terminal renders: services added or replaced (with their hosts), grants
//! added, slots set or deleted, and the problems that would make approval
//! fail against the vault as it is now.

use std::collections::{BTreeMap, BTreeSet};

use crate::broker::services::{Auth, Service, Services};
use crate::model::{Manifest, Mode};
use crate::names::{AgentName, GroupName, SecretPath};
use crate::vault::Vault;

use super::model::{Action, Proposal, SlotKind};

/// A service as approving would leave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// The service's name.
    pub name: String,
    /// Whether it replaces a service of the same name.
    pub replaces: bool,
    /// The hosts the replaced service had (empty when new).
    pub old_hosts: Vec<String>,
    /// Its hosts.
    pub hosts: Vec<String>,
    /// How it authenticates: bearer, basic, header, query, passthrough, sigv4 (tunnel: `tunnel`).
    pub auth: String,
    /// The secrets it injects or substitutes.
    pub secrets: Vec<SecretPath>,
    /// The service as it would be written.
    pub service: Service,
}

/// A grant approving would add (a proposal only ever adds `use`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantPlan {
    /// The agent.
    pub agent: AgentName,
    /// The group.
    pub group: GroupName,
    /// The mode (always `use`).
    pub mode: Mode,
    /// Whether the group is new (its first secret comes with this approval).
    pub new_group: bool,
}

/// A slot as approving would apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// The secret.
    pub path: SecretPath,
    /// Set or delete.
    pub action: Action,
    /// Static or OAuth.
    pub kind: SlotKind,
    /// What it is for (the agent's words).
    pub description: String,
    /// Where and how to obtain it (the agent's words).
    pub obtain: String,
    /// Whether the secret exists now (a `set` replaces its value).
    pub exists: bool,
    /// Whether the agent supplied the value (encrypted to the owners); an
    /// owner's value given at approval takes precedence.
    pub agent_value: bool,
}

/// What approving would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The proposing agent.
    pub agent: AgentName,
    /// Services added or replaced.
    pub services: Vec<ServicePlan>,
    /// Grants added.
    pub grants: Vec<GrantPlan>,
    /// Slots.
    pub slots: Vec<SlotPlan>,
    /// Why approving would fail now (empty: it would apply).
    pub problems: Vec<String>,
}

impl Plan {
    /// The `set` slots with no value from the agent: the owner must supply these.
    pub fn values_needed(&self) -> Vec<&SecretPath> {
        self.slots
            .iter()
            .filter(|s| s.action == Action::Set && !s.agent_value && s.kind != SlotKind::Oauth)
            .map(|s| &s.path)
            .collect()
    }

    /// The OAuth credentials to connect once approved (`oauth set`, or
    /// the owner's page, which leads there from the approval).
    pub fn to_connect(&self) -> Vec<&SecretPath> {
        self.slots
            .iter()
            .filter(|s| s.action == Action::Set && !s.agent_value && s.kind == SlotKind::Oauth)
            .map(|s| &s.path)
            .collect()
    }
}

fn auth_word(s: &Service) -> &'static str {
    if s.tunnel {
        return "tunnel";
    }
    match &s.auth {
        Auth::Bearer(_) => "bearer",
        Auth::Basic { .. } => "basic",
        Auth::Header { .. } => "header",
        Auth::Query { .. } => "query",
        Auth::Passthrough => "passthrough",
        Auth::Sigv4(_) => "sigv4",
    }
}

/// The plan of `p` against `manifest` and `services` (the verified ones),
/// with the secrets' presence read from `vault`.
pub(crate) fn make(vault: &Vault, manifest: &Manifest, services: &Services, p: &Proposal) -> Plan {
    let mut problems = Vec::new();
    let exists = |path: &SecretPath| {
        manifest.groups.contains_key(path.group())
            && vault
                .fs()
                .is_file(&vault.secret_age_path(path))
                .unwrap_or(false)
    };
    let slots: Vec<SlotPlan> = p
        .slots
        .iter()
        .map(|s| SlotPlan {
            path: s.path.clone(),
            action: s.action,
            kind: s.kind,
            description: s.description.clone(),
            obtain: s.obtain.clone(),
            exists: exists(&s.path),
            agent_value: s.value.is_some(),
        })
        .collect();
    let setting: BTreeSet<&SecretPath> = slots
        .iter()
        .filter(|s| s.action == Action::Set)
        .map(|s| &s.path)
        .collect();
    let deleting: BTreeSet<&SecretPath> = slots
        .iter()
        .filter(|s| s.action == Action::Delete)
        .map(|s| &s.path)
        .collect();
    for s in slots
        .iter()
        .filter(|s| s.action == Action::Delete && !s.exists)
    {
        problems.push(format!(
            "slot {} deletes a secret the vault does not have",
            s.path
        ));
    }
    let mut after: BTreeMap<String, Service> = services.services.clone();
    let mut plans = Vec::new();
    for ps in &p.services {
        let old = services.services.get(&ps.name);
        let secrets = ps.service.all_secrets();
        for sec in &secrets {
            if deleting.contains(sec) || (!setting.contains(sec) && !exists(sec)) {
                problems.push(format!(
                    "service {} names {sec}, which is neither a secret of the vault nor set by this proposal",
                    ps.name
                ));
            }
        }
        plans.push(ServicePlan {
            name: ps.name.clone(),
            replaces: old.is_some(),
            old_hosts: old.map(|o| o.hosts.clone()).unwrap_or_default(),
            hosts: ps.service.hosts.clone(),
            auth: auth_word(&ps.service).to_owned(),
            secrets,
            service: ps.service.clone(),
        });
        after.insert(ps.name.clone(), ps.service.clone());
    }
    for (name, svc) in &after {
        if p.services.iter().any(|s| &s.name == name) {
            continue;
        }
        for sec in svc.all_secrets() {
            if deleting.contains(&sec) {
                problems.push(format!(
                    "slot {sec} deletes a secret that service {name} still uses"
                ));
            }
        }
    }
    // `use` on every group the proposal sets a value in or a service draws on,
    // unless the agent already holds a grant there.
    let mut groups: BTreeSet<GroupName> = setting.iter().map(|s| s.group().clone()).collect();
    for sp in &plans {
        groups.extend(sp.secrets.iter().map(|s| s.group().clone()));
    }
    let grants = groups
        .into_iter()
        .filter(|g| manifest.grant(&p.agent, g).is_none())
        .map(|g| GrantPlan {
            agent: p.agent.clone(),
            new_group: !manifest.groups.contains_key(&g),
            group: g,
            mode: Mode::Use,
        })
        .collect();
    Plan {
        agent: p.agent.clone(),
        services: plans,
        grants,
        slots,
        problems,
    }
}
