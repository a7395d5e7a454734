//! `agent-vault demo`: the main job end to end on a throwaway vault, with
//! its own key store, removed afterwards.

use std::process::ExitCode;

use agent_vault_core::secrecy::ExposeSecret;
use agent_vault_core::writer::SetOptions;
use agent_vault_core::{KeySource, KeyStore, Mode, init};

use crate::output::{CliError, CliResult, line};

pub fn run() -> CliResult<ExitCode> {
    let base = std::env::temp_dir().join(format!("agent-vault-demo-{}", std::process::id()));
    let result = steps(&base);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn steps(base: &std::path::Path) -> CliResult<ExitCode> {
    let keys = KeyStore::at(base.join("home"));
    let r = init::init(&base.join("vault"), "demo-owner".parse()?, keys.clone())?;
    let vault = r.vault;
    line(format!(
        "1. init: vault {} in {}",
        vault.id(),
        vault.root().display()
    ))?;
    let owner = KeySource::File(r.owner_key.clone());
    let mut w = vault.writer(&owner)?;
    let agent = "demo-bot".parse()?;
    let agent_key = w.add_agent(&agent)?;
    line("2. add-agent demo-bot: key pair made, private key escrowed to the owner")?;
    let path = "payments/api-key".parse()?;
    w.set(
        &path,
        b"sk_demo_0123456789",
        &SetOptions {
            description: Some("demo payment key".into()),
            ..SetOptions::default()
        },
    )?;
    line("3. set payments/api-key (18 bytes, age-encrypted to group payments)")?;
    w.grant(&agent, &"payments".parse()?, Mode::Read)?;
    line("4. grant demo-bot read on payments")?;
    drop(w);
    let value = agent_vault_core::Reader::open(&vault, &KeySource::File(agent_key))?.get(&path)?;
    let ok = value.expose_secret().as_slice() == b"sk_demo_0123456789";
    line(format!(
        "5. get payments/api-key as demo-bot: {} bytes, {}",
        value.expose_secret().len(),
        if ok {
            "matches what was set"
        } else {
            "DOES NOT MATCH"
        }
    ))?;
    let report = agent_vault_core::check::check(&vault, None);
    line(format!(
        "6. check: {} secret(s), {} finding(s)",
        report.secrets,
        report.findings.len()
    ))?;
    if !ok || report.has_errors() {
        return Err(CliError::Msg("the demo failed".into(), None));
    }
    line("demo complete: the throwaway vault and keys are removed")?;
    Ok(ExitCode::SUCCESS)
}
