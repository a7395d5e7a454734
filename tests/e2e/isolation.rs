//! `run --isolate`, end to end, as people run agents: as an ordinary user
//! (CI runs as root, so the test makes one and drops to it), with a real
//! HTTPS upstream, the real broker on a Unix socket, and clients this
//! project did not write (curl, Python, Node) inside.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::broker::{Proc, wait_until};
use crate::harness::*;

mod handoff;

const USER: &str = "avt-isolate";

/// The ordinary user the test runs as (made once), or `None` when the test
/// already runs as one.
pub(crate) fn user() -> Option<(u32, u32)> {
    static USER_IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER_IDS.get_or_init(|| {
        let me = Command::new("id").arg("-u").output().expect("id");
        if String::from_utf8_lossy(&me.stdout).trim() != "0" {
            return None;
        }
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh", USER])
            .output();
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").args([flag, USER]).output().expect("id");
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .expect("the test user exists")
        };
        Some((id("-u"), id("-g")))
    })
}

/// This binary, where the test user can run it (the checkout may sit
/// under a directory only root enters).
pub(crate) fn binary() -> &'static Path {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        // Copies left by earlier runs (their process gone) are removed.
        for entry in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("avt-isolate-bin-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = std::env::temp_dir().join(format!("avt-isolate-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("agent-vault");
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    })
}

struct Iso {
    env: Env,
    _upstream: Proc,
    up_port: u16,
    upstream_log: PathBuf,
    _broker: Proc,
    broker_port: u16,
    socket: PathBuf,
}

impl Iso {
    /// A command of the tool as the test user, in the vault.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(binary());
        c.args(args)
            .current_dir(&self.env.vault)
            .env("AGENT_VAULT_HOME", &self.env.home)
            .env("HOME", self.env.tmp.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.env.tmp.path().join("gitconfig"))
            .env_remove("AGENT_VAULT_KEY")
            .env_remove("AGENT_VAULT_DIR")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = user() {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn ok(&self, args: &[&str]) -> Output {
        let o = self.cmd(args).output().expect("spawn");
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    }

    /// `run --isolate` of a shell script, as the test user.
    fn isolated(&self, extra: &[&str], script: &str) -> Output {
        let socket = self.socket.to_string_lossy().into_owned();
        let proxy = format!("127.0.0.1:{}", self.broker_port);
        let mut args = vec![
            "run", "--agent", "bot", "--proxy", &proxy, "--socket", &socket,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        self.cmd(&args).output().expect("spawn")
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.up_port)
    }

    fn upstream_saw(&self) -> String {
        std::fs::read_to_string(&self.upstream_log).unwrap_or_default()
    }
}

fn chown_all(path: &Path) {
    if let Some((uid, gid)) = user() {
        let o = Command::new("chown")
            .args(["-R", &format!("{uid}:{gid}")])
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

fn setup() -> Iso {
    let env = Env::empty();
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (up, up_port, upstream_ca, upstream_log) = crate::broker::upstream(env.tmp.path());
    chown_all(env.tmp.path());
    let mut iso = Iso {
        env,
        _upstream: up,
        up_port,
        upstream_log,
        _broker: Proc(Command::new("true").spawn().unwrap()),
        broker_port: 0,
        socket: PathBuf::new(),
    };
    iso.ok(&["init", ".", "--owner", "alice"]);
    iso.ok(&["add-agent", "bot"]);
    let set = iso
        .cmd(&["set", "api/token"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"tok_REAL_VALUE_123")?;
            c.wait()
        })
        .unwrap();
    assert!(set.success());
    iso.ok(&["grant", "bot", "api", "--mode", "use"]);
    iso.ok(&["broker", "init"]);
    let host = format!("127.0.0.1:{up_port}");
    iso.ok(&[
        "service",
        "add",
        "api",
        "--bearer",
        "api/token",
        "--host",
        &host,
    ]);
    iso.socket = iso.env.tmp.path().join("broker.sock");
    let socket = iso.socket.to_string_lossy().into_owned();
    let ca = upstream_ca.to_string_lossy().into_owned();
    let mut child = iso
        .cmd(&[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--unix",
            &socket,
            "--allow-private-upstreams",
            "--upstream-ca",
            &ca,
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "broker listening on 127.0.0.1:PORT and PATH"
    iso.broker_port = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("broker did not start: {line}"));
    iso._broker = Proc(child);
    iso
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn an_isolated_agent_reaches_the_broker_and_nothing_else() {
    let s = setup();
    let keys = s.env.home.to_string_lossy().into_owned();
    let vault_id = s.env.vault_id();
    let script = format!(
        r#"
echo "uid=$(id -u)"
echo "procs=$(ls /proc | grep -c '^[0-9]')"
grep -l -s -e '[-]-listen' /proc/[0-9]*/cmdline | head -1 | sed 's/^/outside-process=/'
curl -sS -m 5 {url} -H 'Authorization: Bearer fake' -o /dev/null -w 'brokered=%{{http_code}}\n'
curl -sS -m 5 {url} | head -c 300; echo
curl -sS -m 3 --noproxy '*' {url} -o /dev/null && echo direct=REACHED
env -u HTTPS_PROXY -u https_proxy curl -sS -m 3 {url} -o /dev/null && echo noproxy=REACHED
getent hosts example.com && echo dns=RESOLVED
for f in {keys}/keys/{vault_id}/owner.key {keys}/keys/{vault_id}/broker.key {keys}/keys/{vault_id}/agents/bot.key; do
  cat "$f" 2>/dev/null | grep -q AGE-SECRET-KEY && echo "key=READ $f"
done
grep -rqs AGE-SECRET-KEY {keys} && echo keystore=READ
cat /proc/1/environ >/dev/null 2>&1 && echo init-environ=READ
{agent_vault} token issue bot >/dev/null 2>&1 && echo token=ISSUED
python3 -c "import requests,os; r=requests.get('{url}/py'); print('python', r.status_code, r.text[:200])"
echo done
"#,
        url = s.url("/echo"),
        agent_vault = binary().display(),
    );
    let o = s.isolated(&["--isolate"], &script);
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("isolation: user, mount, PID and network namespaces"),
        "{text}"
    );
    if let Some((uid, _)) = user() {
        assert!(text.contains(&format!("uid={uid}")), "{text}");
    }
    assert!(text.contains("brokered=200"), "{text}");
    assert!(text.contains("[REDACTED:api/token]"), "{text}");
    assert!(!text.contains("tok_REAL"), "{text}");
    assert!(s.upstream_saw().contains("Bearer tok_REAL_VALUE_123"));
    for refused in [
        "direct=REACHED",
        "noproxy=REACHED",
        "dns=RESOLVED",
        "key=READ",
        "keystore=READ",
        "init-environ=READ",
        "token=ISSUED",
        "outside-process=",
    ] {
        assert!(!text.contains(refused), "{refused}: {text}");
    }
    let procs: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(procs < 10, "{text}");
    assert!(
        text.contains("python 200") && text.contains("done"),
        "{text}"
    );
}

#[test]
fn node_fetch_works_inside_isolation() {
    let modules = node_modules();
    let s = setup();
    // node_modules where the test user can read it.
    let copy = s.env.tmp.path().join("node_modules");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(&modules)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(cp.status.success());
    chown_all(&copy);
    let script = format!(
        r#"NODE_PATH={modules} node -e '
const {{ ProxyAgent }} = require("undici");
const fs = require("fs");
const u = new URL(process.env.HTTPS_PROXY);
const dispatcher = new ProxyAgent({{
  uri: "http://" + u.host,
  token: "Basic " + Buffer.from(decodeURIComponent(u.username) + ":" + decodeURIComponent(u.password)).toString("base64"),
  requestTls: {{ ca: fs.readFileSync(process.env.NODE_EXTRA_CA_CERTS) }},
}});
fetch("{url}", {{ dispatcher }}).then(async r => console.log("node", r.status, await r.text()))
  .catch(e => {{ console.error(e); process.exit(1); }});'"#,
        modules = copy.display(),
        url = s.url("/node"),
    );
    let o = s.isolated(&["--isolate"], &script);
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("node 200") && text.contains("[REDACTED:api/token]"),
        "{text}"
    );
    assert!(!text.contains("tok_REAL"), "{text}");
}

/// The token lives outside: the supervisor renews it (a request after the
/// first token expired goes through), nothing inside can mint one.
#[test]
fn the_supervisor_renews_the_token_and_nothing_inside_can() {
    let s = setup();
    let script = format!(
        "curl -sS -m 5 {url} -o /dev/null -w 'first=%{{http_code}}\\n'; sleep 3; \
         curl -sS -m 5 {url} -o /dev/null -w 'later=%{{http_code}}\\n'; \
         {bin} token issue bot --ttl 10m >/dev/null 2>&1 && echo renewed=YES; echo done",
        url = s.url("/t"),
        bin = binary().display(),
    );
    let o = s.isolated(&["--ttl", "2s", "--isolate"], &script);
    let text = out(&o);
    assert!(text.contains("first=200"), "{text}");
    assert!(text.contains("later=200"), "{text}");
    assert!(
        !text.contains("renewed=YES") && text.contains("done"),
        "{text}"
    );
}

#[test]
fn killing_the_supervisor_ends_everything_inside() {
    let s = setup();
    // A sleep no other test runs: its length is this test's pid.
    let marker = format!("sleep 400{}.5", std::process::id());
    let socket = s.socket.to_string_lossy().into_owned();
    let script = format!("{marker} & {marker}");
    let mut child = s
        .cmd(&[
            "run",
            "--agent",
            "bot",
            "--socket",
            &socket,
            "--isolate",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let inside = || {
        Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    wait_until(Duration::from_secs(10), inside);
    assert!(inside(), "the command did not start");
    child.kill().unwrap();
    let _ = child.wait();
    let took = wait_until(Duration::from_secs(5), || !inside());
    assert!(
        !inside(),
        "still running {took:?} after the supervisor was killed"
    );
}

#[test]
fn the_landlock_fallback_denies_keys_and_every_port_but_the_brokers() {
    let s = setup();
    let keys = s.env.home.to_string_lossy().into_owned();
    let vault_id = s.env.vault_id();
    let script = format!(
        r#"
curl -sS -m 5 {url} -o /dev/null -w 'brokered=%{{http_code}}\n'
curl -sS -m 3 --noproxy '*' {url} -o /dev/null && echo direct=REACHED
cat {keys}/keys/{vault_id}/owner.key 2>/dev/null | grep -q AGE-SECRET-KEY && echo key=READ
cat /proc/$PPID/root{keys}/keys/{vault_id}/owner.key 2>/dev/null | grep -q AGE-SECRET-KEY && echo key-via-proc=READ
echo done
"#,
        url = s.url("/fallback"),
    );
    let o = s
        .cmd(&[
            "run",
            "--agent",
            "bot",
            "--proxy",
            &format!("127.0.0.1:{}", s.broker_port),
            "--socket",
            &s.socket.to_string_lossy(),
            "--isolate",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("AGENT_VAULT_ISOLATE_FALLBACK", "1")
        .output()
        .unwrap();
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("Landlock only"), "{text}");
    assert!(
        text.contains("brokered=200") && text.contains("done"),
        "{text}"
    );
    for refused in ["direct=REACHED", "key=READ", "key-via-proc=READ"] {
        assert!(!text.contains(refused), "{refused}: {text}");
    }

    // `--isolate=required` will not start on the fallback alone.
    let o = s
        .cmd(&[
            "run",
            "--agent",
            "bot",
            "--socket",
            &s.socket.to_string_lossy(),
            "--isolate=required",
            "--",
            "true",
        ])
        .env("AGENT_VAULT_ISOLATE_FALLBACK", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        out(&o).contains("--isolate=required refuses"),
        "{}",
        out(&o)
    );

    // No broker socket there: refused before anything starts.
    let missing = s.env.tmp.path().join("no-broker.sock");
    let o = s
        .cmd(&[
            "run",
            "--agent",
            "bot",
            "--socket",
            &missing.to_string_lossy(),
            "--isolate",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(out(&o).contains("no broker socket at"), "{}", out(&o));
}
