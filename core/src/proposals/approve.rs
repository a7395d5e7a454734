//! An owner's decision: approve (everything in one journaled operation and
//! one commit, with the signed decision) or deny (the signed decision alone).

use age::secrecy::ExposeSecret;

use crate::crypto::{self, SecretValue};
use crate::error::{Error, Result};
use crate::keystore::KeySource;
use crate::vault::Vault;
use crate::writer::{Change, SetOptions};

use super::decision::{self, Decision, Verdict};
use super::model::{Action, MAX_MESSAGE_CHARS};
use super::{Plan, Values, decidable, find, owner_writer, plan};

/// Approves proposal `id` (`ID` or `AGENT/ID`) with the owner key `key`:
/// verifies it (signature, caps, not expired, not decided), and applies
/// every slot, service and `use` grant, with the signed decision, in one
/// journaled operation and one commit. Each `set` slot takes its value from
/// `values`, else from the value the agent supplied (decrypted with the
/// owner key); a `set` slot with neither refuses the approval, as does a
/// value for a path that is not a `set` slot. Returns what was applied.
pub fn approve(vault: &Vault, key: &KeySource, id: &str, mut values: Values) -> Result<Plan> {
    let mut w = owner_writer(vault, key)?;
    let manifest = w.manifest().clone();
    let (v, status) = find(vault, &manifest, id)?;
    let p = v.proposal;
    decidable(&p, &status)?;
    let services = w.services()?;
    let plan = plan::make(vault, &manifest, &services, &p);
    if !plan.problems.is_empty() {
        return Err(Error::Proposal(format!(
            "proposal {} of {} cannot be applied to the vault as it is: {}",
            p.id,
            p.agent,
            plan.problems.join("; ")
        )));
    }
    if let Some(extra) = values.keys().find(|k| {
        !p.slots
            .iter()
            .any(|s| s.path == **k && s.action == Action::Set)
    }) {
        return Err(Error::InvalidInput(format!(
            "a value was given for {extra}, which proposal {} does not ask to set",
            p.id
        )));
    }
    let mut held: Vec<(crate::names::SecretPath, SecretValue, SetOptions)> = Vec::new();
    for s in p.slots.iter().filter(|s| s.action == Action::Set) {
        let value = match (values.remove(&s.path), &s.value) {
            (Some(v), _) => v,
            (None, Some(armored)) => crypto::decrypt(
                &[&w.id],
                armored.as_bytes(),
                std::path::Path::new(&format!(
                    "the value of slot {} in proposal {}",
                    s.path, p.id
                )),
            )?,
            // An OAuth slot is connected after approval (the owner's page
            // leads to its connect flow; `oauth set` does it in a terminal):
            // nothing to set now.
            (None, None) if s.kind == super::model::SlotKind::Oauth => continue,
            (None, None) => {
                return Err(Error::InvalidInput(format!(
                    "slot {} needs a value: {} (give it on standard input, from a file, or on the page)",
                    s.path,
                    if s.obtain.is_empty() {
                        "the agent did not say where to obtain it"
                    } else {
                        &s.obtain
                    }
                )));
            }
        };
        let opts = SetOptions {
            expires: None,
            description: (!s.description.is_empty()).then(|| s.description.clone()),
        };
        held.push((s.path.clone(), value, opts));
    }
    let new_services = (!p.services.is_empty()).then(|| {
        let mut all = services.clone();
        for s in &p.services {
            all.services.insert(s.name.clone(), s.service.clone());
        }
        all
    });
    let d = Decision::sign(
        vault.id(),
        &p.id,
        &p.agent,
        &v.signed.sha256(),
        Verdict::Approved,
        "",
        w.owner(),
        w.signing_key(),
    );
    let change = Change {
        to_connect: p
            .slots
            .iter()
            .filter(|s| s.kind == super::model::SlotKind::Oauth && s.action == Action::Set)
            .filter(|s| !held.iter().any(|(h, _, _)| *h == s.path))
            .map(|s| s.path.clone())
            .collect(),
        op: format!("approve proposal {} of {}", p.id, p.agent),
        set: held
            .iter()
            .map(|(p, v, o)| (p.clone(), v.expose_secret().as_slice(), o.clone()))
            .collect(),
        remove: p
            .slots
            .iter()
            .filter(|s| s.action == Action::Delete)
            .map(|s| s.path.clone())
            .collect(),
        services: new_services,
        grants: plan
            .grants
            .iter()
            .map(|g| (g.agent.clone(), g.group.clone()))
            .collect(),
        files: vec![(
            decision::rel_path(&p.agent, &p.id),
            String::from_utf8_lossy(&crate::yaml::to_yaml(&d)).into_owned(),
        )],
    };
    w.apply(change)?;
    Ok(plan)
}

/// Denies proposal `id` with the owner key `key`: a decision signed by the
/// owner, with `reason` for the agent to read, committed to the vault.
pub fn deny(vault: &Vault, key: &KeySource, id: &str, reason: &str) -> Result<()> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_MESSAGE_CHARS {
        return Err(Error::InvalidInput(format!(
            "a denial needs a reason of 1 to {MAX_MESSAGE_CHARS} characters, for the agent to read"
        )));
    }
    let mut w = owner_writer(vault, key)?;
    let manifest = w.manifest().clone();
    let (v, status) = find(vault, &manifest, id)?;
    decidable(&v.proposal, &status)?;
    let p = &v.proposal;
    let d = Decision::sign(
        vault.id(),
        &p.id,
        &p.agent,
        &v.signed.sha256(),
        Verdict::Denied,
        reason,
        w.owner(),
        w.signing_key(),
    );
    w.write_files(
        format!("deny proposal {} of {}", p.id, p.agent),
        vec![(
            decision::rel_path(&p.agent, &p.id),
            String::from_utf8_lossy(&crate::yaml::to_yaml(&d)).into_owned(),
        )],
    )
}
