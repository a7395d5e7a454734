//! The whole proposal loop of issue 14, every part real: an agent on its own
//! clone of a bare remote (served by `git daemon`) proposes through its MCP
//! server's `agent_vault_propose` (driven by the Python `mcp` client); the
//! owner's `sync` brings the proposal; the owner approves on `agent-vault
//! ui` in headless Chromium (log in through the one-time URL, open the
//! proposal, type the value, approve) and syncs; the agent's next pull sees
//! the grant, and its brokered request (`agent_vault_request`) reaches the
//! upstream with the value injected and comes back scrubbed.
//! Also: expiry, seen by the agent and refused to the owner.

use std::path::Path;
use std::process::Command;

use crate::broker::{start_broker_with, upstream};
use crate::harness::*;
use crate::remotes;
use crate::ui::{Ui, drive};

const VALUE: &str = "sk-live-LOOP-typed-in-the-page-4c1d";

/// Calls MCP tools in one session of the agent's server (`agent-vault mcp`
/// in `dir`, with the agent's key and key store): each call's result as
/// `{"is_error", "text"}`.
fn mcp(
    env: &Env,
    dir: &Path,
    home: &Path,
    key: &Path,
    calls: serde_json::Value,
    server_args: &[&str],
) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/mcp_call.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(BIN)
        .arg(dir)
        .arg(calls.to_string())
        .args(server_args)
        .env("AGENT_VAULT_HOME", home)
        .env("AGENT_VAULT_KEY", key)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", env.tmp.path().join("gitconfig"))
        .env_remove("AGENT_VAULT_DIR")
        .env_remove("AGENT_VAULT_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mcp_call.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A result's text, which must not be an error.
fn ok_text(r: &serde_json::Value) -> String {
    assert_eq!(r["is_error"], false, "{r}");
    r["text"].as_str().unwrap().to_owned()
}

#[test]
fn proposal_loop_mcp_propose_sync_approve_in_chromium_pull_and_brokered_request() {
    let env = Env::new();
    let srv = env.tmp.path().join("srv");
    let bare = srv.join("vault.git");
    std::fs::create_dir_all(&bare).unwrap();
    let daemon = remotes::git_daemon(&srv);
    let url = format!("git://127.0.0.1:{}/vault.git", daemon.port);
    assert!(
        env.git_in(&bare, &["init", "--bare", "-q"])
            .status
            .success()
    );
    env.git(&["remote", "add", "origin", &url]);
    env.set("other/x", b"not-for-bot");
    let bot = env.add_agent("bot");
    env.ok(&["broker", "init"]);
    env.ok(&["push"]);
    let agent = env.tmp.path().join("agent");
    let clone = env.git_in(
        env.tmp.path(),
        &["clone", "-q", &url, agent.to_str().unwrap()],
    );
    assert!(clone.status.success(), "{}", stderr(&clone));
    let ahome = env.tmp.path().join("agent-home");
    let (_up, up_port, up_ca, up_log) = upstream(env.tmp.path());
    let host = format!("127.0.0.1:{up_port}");

    // The agent proposes through its MCP server; the proposal goes to the
    // remote on its branch, and nothing of the vault changes.
    let r = mcp(
        &env,
        &agent,
        &ahome,
        &bot,
        serde_json::json!([["agent_vault_propose", {
            "message": "I need the weather API for the forecast task",
            "services": [{"name": "weather", "hosts": [host],
                          "auth": "bearer", "secret": "weather/key"}],
            "slots": [{"secret": "weather/key", "description": "weather API key",
                       "obtain": "https://weather.test/account/keys"}],
        }]]),
        &[],
    );
    let proposed: serde_json::Value = serde_json::from_str(&ok_text(&r[0])).unwrap();
    assert_eq!(proposed["status"], "pending", "{proposed}");
    let pid = proposed["id"].as_str().unwrap().to_owned();
    let refs = env.git_in(&bare, &["for-each-ref", "--format=%(refname)"]);
    assert!(
        String::from_utf8_lossy(&refs.stdout).contains("refs/heads/agent-vault/proposals/bot"),
        "the proposal branch is on the remote"
    );

    // The owner's sync brings it; the owner approves on the page.
    env.ok(&["sync"]);
    assert!(
        env.ok(&["proposals", "list"])
            .stdout
            .windows(pid.len())
            .any(|w| w == pid.as_bytes())
    );
    let ui = Ui::start(&env, &env.vault, &[]);
    let pages = env.tmp.path().join("pages");
    std::fs::create_dir_all(&pages).unwrap();
    let values = serde_json::json!([VALUE]).to_string();
    let r = drive(
        &["approve", &ui.login, &pid, pages.to_str().unwrap()],
        &[("UI_VALUES", &values)],
    );
    assert_eq!(r["url"], format!("{}/", ui.base), "{r}");
    assert_eq!(r["fits_phone_width"], true, "{r}");
    let after = std::fs::read_to_string(pages.join("after.html")).unwrap();
    assert!(
        after.contains(&format!("Approved proposal {pid}")),
        "{after}"
    );
    drop(ui);
    env.ok(&["sync"]);

    // The broker serves the new service (the owner's side, as deployed).
    let ca = up_ca.to_str().unwrap();
    let (_broker, port) = start_broker_with(
        &env,
        &["--allow-private-upstreams", "--upstream-ca", ca],
        &[],
    );
    let broker = format!("127.0.0.1:{port}");

    // The agent's next pull (its MCP server pulls on start): the status is
    // approved, the grant is `use`, and the brokered request gets the value
    // injected upstream and scrubbed on the way back.
    let r = mcp(
        &env,
        &agent,
        &ahome,
        &bot,
        serde_json::json!([
            ["agent_vault_proposal_status", {"id": pid}],
            ["agent_vault_whoami", {}],
            ["agent_vault_request", {"method": "GET", "url": format!("https://{host}/echo")}],
            ["agent_vault_get", {"secret": "weather/key"}],
        ]),
        &["--broker", &broker],
    );
    let status = ok_text(&r[0]);
    assert!(status.contains("approved"), "{status}");
    let whoami: serde_json::Value = serde_json::from_str(&ok_text(&r[1])).unwrap();
    assert_eq!(whoami["groups"]["weather"], "use", "{whoami}");
    let answer = ok_text(&r[2]);
    assert!(answer.contains("[REDACTED:weather/key]"), "{answer}");
    assert_eq!(
        r[3]["is_error"], true,
        "a use grant reads nothing: {}",
        r[3]
    );
    let seen = std::fs::read_to_string(&up_log).unwrap();
    assert!(
        seen.contains(&format!("Bearer {VALUE}")),
        "the upstream got the value: {seen}"
    );
    for x in &r {
        assert!(!x["text"].as_str().unwrap().contains(VALUE), "{x}");
    }
    for name in ["list", "proposal", "after"] {
        let page = std::fs::read_to_string(pages.join(format!("{name}.html"))).unwrap();
        assert!(!page.contains(VALUE), "{name}");
    }
    // In the agent's clone, on the remote and in every file of the test
    // (but the upstream's own log), the value is nowhere in plain text.
    let all = env.git_in(&bare, &["log", "--all", "-p", "--format=%B"]);
    assert!(!String::from_utf8_lossy(&all.stdout).contains(VALUE));
    let leaks: Vec<_> = found_in_files(env.tmp.path(), VALUE.as_bytes())
        .into_iter()
        .filter(|p| p != &up_log)
        .collect();
    assert!(leaks.is_empty(), "{leaks:?}");
}

#[test]
fn an_expired_proposal_says_expired_to_the_agent_and_cannot_be_approved() {
    let env = Env::new();
    let bot = env.add_agent("bot");
    let bot = bot.to_str().unwrap();
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
    let out = env.ok(&[
        "--key",
        bot,
        "propose",
        "--slot",
        "a/b",
        "--expires",
        &soon.to_string(),
    ]);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let st = env.ok(&["--key", bot, "proposals", "status", &id]);
    assert!(String::from_utf8_lossy(&st.stdout).contains("pending"));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let st = env.ok(&["--key", bot, "proposals", "status", &id]);
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("expired"),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    let list = env.json(&["proposals", "list"]);
    assert_eq!(
        list["proposals"][0]["status"]["status"], "expired",
        "{list}"
    );
    let e = env.fail(&["proposals", "approve", &id]);
    assert!(e.contains("expired"), "{e}");
}
