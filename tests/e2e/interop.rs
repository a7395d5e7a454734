//! The Debian `age` CLI reads what agent-vault writes, and agent-vault reads
//! what the `age` CLI writes, binary and armored.

use std::process::Command;

use agent_vault_core::crypto::Identity;
use agent_vault_core::model::{MetaFields, SecretMeta};

use crate::harness::*;

fn age_available() {
    assert!(
        have("age"),
        "the `age` CLI is needed (apt-get install age); .ci/run installs it"
    );
}

fn bash(script: &str) -> std::process::Output {
    Command::new("bash").arg("-c").arg(script).output().unwrap()
}

#[test]
fn age_cli_recovers_secrets_with_the_two_step_command() {
    age_available();
    let env = Env::new();
    let value: Vec<u8> = (0..=255u8).rev().collect();
    env.set("stripe/api-key", &value);
    let d = env.vault.join(".agent-vault");
    let script = format!(
        "age -d -i <(age -d -i '{}' '{}/groups/stripe.key.age') '{}/secrets/stripe/'_*/api-key.age",
        env.owner_key().display(),
        d.display(),
        d.display()
    );
    let out = bash(&script);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, value);
    // An agent with a read grant can do the same with its own key.
    let bot = env.add_agent("bot");
    env.ok(&["grant", "bot", "stripe"]);
    let out = bash(&script.replacen(
        &env.owner_key().display().to_string(),
        &bot.display().to_string(),
        1,
    ));
    assert_eq!(out.stdout, value, "{}", stderr(&out));
    // The escrowed agent key opens with the owner key alone.
    let out = Command::new("age")
        .args(["-d", "-i"])
        .arg(env.owner_key())
        .arg(d.join("agents/bot/private.key.escrow"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, std::fs::read(&bot).unwrap());
}

#[test]
fn agent_vault_reads_what_the_age_cli_encrypted() {
    age_available();
    let env = Env::new();
    env.set("g/placeholder", b"x");
    let recipient = group_recipient(&env, "g");
    let owner = Identity::read_file(&env.owner_key()).unwrap();
    let vault_id = env.vault_id();
    let d = env.vault.join(".agent-vault");
    let value: &[u8] = b"\x00binary\xffvalue\n";
    let plain = env.tmp.path().join("plain");
    std::fs::write(&plain, value).unwrap();
    for (name, armor) in [("binary", false), ("armored", true)] {
        // Where the README says an owner puts it: the name's bucket.
        let age_file = d.join(secret_file("g", name, ".age"));
        std::fs::create_dir_all(age_file.parent().unwrap()).unwrap();
        let mut c = Command::new("age");
        c.args(["-r", &recipient, "-o"]).arg(&age_file);
        if armor {
            c.arg("-a");
        }
        let out = c.arg(&plain).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        if armor {
            assert!(
                std::fs::read_to_string(&age_file)
                    .unwrap()
                    .starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
            );
        }
        // An owner vouches for the file it encrypted with the age CLI.
        let ct = std::fs::read(&age_file).unwrap();
        let now = agent_vault_core::model::MetaFields {
            created: "2026-01-01T00:00:00Z".parse().unwrap(),
            updated: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires: None,
            description: None,
        };
        let path = format!("g/{name}").parse().unwrap();
        let meta = SecretMeta::sign(
            MetaFields { ..now },
            &owner.signing_key(),
            &vault_id,
            &path,
            &ct,
            1,
        );
        std::fs::write(
            d.join(secret_file("g", name, ".meta.yaml")),
            serde_yaml_meta(&meta),
        )
        .unwrap();
        assert_eq!(env.get(&format!("g/{name}")), value);
    }
    // A group key file re-encrypted (armored) by the age CLI still opens.
    let gk = env.vault.join(".agent-vault/groups/g.key.age");
    let owner_recipient = owner.recipient().to_string();
    let script = format!(
        "age -d -i '{k}' '{gk}' | age -a -r {owner_recipient} -o '{gk}.new' && mv '{gk}.new' '{gk}'",
        k = env.owner_key().display(),
        gk = gk.display()
    );
    let out = bash(&script);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.get("g/armored"), value);
    assert_eq!(env.get("g/placeholder"), b"x");
}

fn serde_yaml_meta(meta: &SecretMeta) -> Vec<u8> {
    agent_vault_core::model::to_yaml(meta)
}
