//! `agent-vault ui`: the owner's page, driven by headless Chromium through
//! Selenium and attacked with plain HTTP (tests/e2e/ui_driver.py), and its
//! webhook, received by a small Python server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::harness::Env;

fn driver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/ui_driver.py")
}

/// A running `agent-vault ui`, stopped on drop.
pub(crate) struct Ui {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub(crate) login: String,
    pub(crate) base: String,
    pub(crate) stderr: PathBuf,
}

impl Ui {
    pub(crate) fn start(env: &Env, dir: &Path, extra: &[&str]) -> Ui {
        let stderr = env
            .tmp
            .path()
            .join(format!("ui-stderr-{}.log", std::process::id()));
        let stderr = unique(stderr);
        let mut args = vec!["ui"];
        args.extend_from_slice(extra);
        let mut child = env
            .cmd(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut login = None;
        let mut seen = String::new();
        for _ in 0..10 {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            seen.push_str(&line);
            if let Some(i) = line.find("http://")
                && line.contains("/login?t=")
            {
                login = Some(line[i..].trim().to_owned());
                break;
            }
        }
        let Some(login) = login else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ui printed no login URL; stdout:\n{seen}\nstderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        let base = login.split("/login").next().unwrap().to_owned();
        Ui {
            child,
            _stdout: out,
            login,
            base,
            stderr,
        }
    }

    pub(crate) fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique(p: PathBuf) -> PathBuf {
    let mut n = 0;
    let mut candidate = p.clone();
    while candidate.exists() {
        n += 1;
        candidate = p.with_extension(format!("{n}.log"));
    }
    candidate
}

/// Runs the driver; its stdout as JSON.
pub(crate) fn drive(args: &[&str], envs: &[(&str, &str)]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(driver())
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ui_driver.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ui_driver.py {args:?} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn ui_login_works_once_and_every_form_needs_session_csrf_and_our_host() {
    let env = Env::new();
    let ui = Ui::start(&env, &env.vault, &[]);
    let f = drive(&["attacks", &ui.login], &[]);
    // Without a session: the "use the login URL" page, nothing else.
    assert_eq!(f["no_cookie_get"], 401, "{f}");
    // DNS rebinding: another name for 127.0.0.1 is refused, even with the token…
    assert_eq!(f["foreign_host_login"], 421, "{f}");
    assert_eq!(f["wrong_token"], 403, "{f}");
    // …which therefore still works once here.
    assert_eq!(f["login"], 303, "{f}");
    assert_eq!(f["location"], "/", "{f}");
    let cookie = f["set_cookie"].as_str().unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert_eq!(f["reuse"], 403, "a login URL works once: {f}");
    assert_eq!(f["list"], 200, "{f}");
    assert_eq!(
        f["headers"]["content-security-policy"],
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    assert_eq!(f["headers"]["x-content-type-options"], "nosniff");
    assert_eq!(f["headers"]["referrer-policy"], "no-referrer");
    assert_eq!(f["headers"]["cache-control"], "no-store");
    assert_eq!(f["csrf_len"], 43, "{f}");
    assert_eq!(f["foreign_host_session"], 421, "{f}");
    assert_eq!(f["localhost_host"], 200, "{f}");
    assert_eq!(f["post_no_cookie"], 401, "{f}");
    assert_eq!(f["post_no_csrf"], 403, "{f}");
    assert_eq!(f["post_wrong_csrf"], 403, "{f}");
    assert_eq!(f["post_foreign_origin"], 403, "{f}");
    assert_eq!(f["post_foreign_host"], 421, "{f}");
    // None of those refused posts logged the session out…
    assert_eq!(f["still_in"], 200, "{f}");
    // …and the real form does.
    assert_eq!(f["logout"], 303, "{f}");
    assert_eq!(f["after_logout"], 401, "{f}");
    assert_eq!(f["css"], 200, "{f}");
    // The server's log names paths, never the login token or a query.
    let token = ui.login.split("t=").nth(1).unwrap();
    let log = ui.stderr_text();
    assert!(log.contains("GET /login"), "{log}");
    assert!(!log.contains(token), "{log}");
}

#[test]
fn ui_refuses_a_non_loopback_address_and_a_non_owner_key() {
    let env = Env::new();
    let err = env.fail(&["ui", "--listen", "0.0.0.0:0"]);
    assert!(err.contains("not a loopback address"), "{err}");
    let key = env.add_agent("bot");
    let err = env.fail(&["ui", "--key", key.to_str().unwrap()]);
    assert!(err.contains("error"), "{err}");
    let err = env.fail(&["ui", "--webhook", "ftp://example.com/x"]);
    assert!(err.contains("http:// or https://"), "{err}");
}

/// Proposes as `agent` (its key file `key`) through core's API, as
/// `agent-vault propose` does: a bearer service on `host` and one `set` slot
/// `slot`. Returns the proposal's id.
fn propose(env: &Env, key: &Path, message: &str, host: &str, slot: &str) -> String {
    use agent_vault_core::broker::services::{Auth, Service};
    use agent_vault_core::proposals::{self, Action, Draft, ProposedService, Slot, SlotKind};
    use agent_vault_core::{KeySource, KeyStore, Vault};
    let vault = Vault::find(&env.vault, KeyStore::at(&env.home)).unwrap();
    let id = vault
        .keys()
        .load(&KeySource::File(key.to_path_buf()), vault.id())
        .unwrap();
    let draft = Draft {
        message: message.into(),
        expires: None,
        services: vec![ProposedService {
            name: host.split('.').next().unwrap().into(),
            service: Service::new(vec![host.into()], Auth::Bearer(slot.parse().unwrap())),
        }],
        slots: vec![Slot {
            path: slot.parse().unwrap(),
            description: "the API key <b>for</b> the service".into(),
            obtain: "https://example.com/settings/keys".into(),
            action: Action::Set,
            kind: SlotKind::Static,
            value: None,
        }],
    };
    proposals::submit(&vault, &id, draft, proposals::Values::new())
        .unwrap()
        .proposal
        .id
        .to_string()
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.html"))).unwrap()
}

#[test]
fn ui_approve_in_chromium_sets_the_value_and_the_grant_and_never_shows_it() {
    let env = Env::new();
    let key = env.add_agent("bot");
    let hostile = "Please <script>alert('pwned')</script> approve\nsecond line";
    let pid = propose(&env, &key, hostile, "api.example.com", "example/key");
    let ui = Ui::start(&env, &env.vault, &[]);
    let out = env.tmp.path().join("pages");
    std::fs::create_dir_all(&out).unwrap();
    let value = "sk-live-TYPED-IN-THE-PAGE-31337";
    let values = serde_json::json!([value]).to_string();
    let r = drive(
        &["approve", &ui.login, &pid, out.to_str().unwrap()],
        &[("UI_VALUES", &values)],
    );
    assert_eq!(r["url"], format!("{}/", ui.base), "{r}");
    // The list showed the proposal; the agent's markup is text, never a tag.
    let list = read(&out, "list");
    assert!(list.contains(&pid), "{list}");
    let page = read(&out, "proposal");
    assert!(page.contains("&lt;script&gt;alert"), "{page}");
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("api.example.com"), "{page}");
    assert!(page.contains("bearer"), "{page}");
    assert!(page.contains("https://example.com/settings/keys"), "{page}");
    assert!(page.contains("&lt;b&gt;for&lt;/b&gt;"), "{page}");
    let after = read(&out, "after");
    assert!(
        after.contains(&format!("Approved proposal {pid}")),
        "{after}"
    );
    // The vault has the value and the grant…
    assert_eq!(env.get("example/key"), value.as_bytes());
    let agents = env.json(&["list-agents"]);
    assert_eq!(agents[0]["grants"]["example"], "use", "{agents}");
    // …and no page, and nothing the server logged, has the value.
    for name in ["list", "proposal", "after"] {
        assert!(!read(&out, name).contains(value), "{name}");
    }
    let log = ui.stderr_text();
    assert!(log.contains("POST /p/"), "{log}");
    assert!(!log.contains(value), "{log}");
}

#[test]
fn ui_deny_with_a_reason_the_agent_reads() {
    let env = Env::new();
    let key = env.add_agent("bot");
    let pid = propose(&env, &key, "need it", "api.example.com", "example/key");
    let ui = Ui::start(&env, &env.vault, &[]);
    let out = env.tmp.path().join("pages");
    std::fs::create_dir_all(&out).unwrap();
    let r = drive(
        &[
            "deny",
            &ui.login,
            &pid,
            "use the sandbox key instead",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r["url"], format!("{}/", ui.base), "{r}");
    let after = read(&out, "after");
    assert!(after.contains(&format!("Denied proposal {pid}")), "{after}");
    // The agent reads the reason; nothing was set or granted.
    let status = agent_vault_core::proposals::load(
        &agent_vault_core::Vault::find(&env.vault, agent_vault_core::KeyStore::at(&env.home))
            .unwrap(),
        &pid,
    )
    .unwrap()
    .1;
    match status {
        agent_vault_core::proposals::Status::Denied { reason, .. } => {
            assert_eq!(reason, "use the sandbox key instead")
        }
        s => panic!("{s:?}"),
    }
    assert!(env.fail(&["get", "example/key"]).contains("error"));
}

#[test]
fn ui_webhook_gets_one_message_per_proposal_and_no_value() {
    let env = Env::new();
    let key = env.add_agent("bot");
    let portfile = env.tmp.path().join("hook.port");
    let log = env.tmp.path().join("hook.log");
    let mut receiver = Command::new("python3")
        .arg(driver())
        .args(["webhook", portfile.to_str().unwrap(), log.to_str().unwrap()])
        .spawn()
        .unwrap();
    let mut port = String::new();
    for _ in 0..100 {
        if let Ok(p) = std::fs::read_to_string(&portfile) {
            port = p;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let first = propose(
        &env,
        &key,
        "first <!channel> one\nmore",
        "a.example.com",
        "a/key",
    );
    let hook = format!("http://127.0.0.1:{port}/services/T0/B0/SECRETPATH");
    let ui = Ui::start(&env, &env.vault, &["--webhook", &hook]);
    let wait_for = |n: usize| {
        for _ in 0..100 {
            let lines = std::fs::read_to_string(&log).unwrap_or_default();
            if lines.lines().count() >= n {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("webhook got fewer than {n}: {}", ui.stderr_text());
    };
    wait_for(1);
    // A new proposal while the page runs: one more message, the first not again.
    let second = propose(&env, &key, "second", "b.example.com", "b/key");
    wait_for(2);
    std::thread::sleep(std::time::Duration::from_secs(7));
    let lines = std::fs::read_to_string(&log).unwrap();
    let _ = receiver.kill();
    let _ = receiver.wait();
    let msgs: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(msgs.len(), 2, "{lines}");
    let t0 = msgs[0]["text"].as_str().unwrap();
    let t1 = msgs[1]["text"].as_str().unwrap();
    assert!(t0.contains(&first) && t0.contains("bot"), "{t0}");
    assert!(t0.contains(&format!("{}/p/{first}", ui.base)), "{t0}");
    assert!(t0.contains("&lt;!channel&gt;"), "{t0}");
    assert!(!t0.contains("more"), "only the first line: {t0}");
    assert!(t1.contains(&second), "{t1}");
    let token = ui.login.split("t=").nth(1).unwrap();
    assert!(!lines.contains(token), "{lines}");
    // The webhook URL's path (Slack's secret) is never printed.
    assert!(!ui.stderr_text().contains("SECRETPATH"));
}
