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
            if let Some(i) = line.find("http://") {
                if line.contains("/login?t=") {
                    login = Some(line[i..].trim().to_owned());
                    break;
                }
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
