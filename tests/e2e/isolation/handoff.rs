//! The listener hand-off of `run --isolate`: the broker accepts CMD's
//! connections on a listener init made inside the network namespace, with
//! the token the supervisor outside mints and renews (nothing inside holds
//! one); git and a long-running Node CLI through it; no renewal while the
//! supervisor is stopped; hostile hand-offs on the broker's socket.

use super::*;

/// A file to appear, within `limit`.
fn wait_for(path: &Path, limit: Duration) {
    wait_until(limit, || path.exists());
    assert!(path.exists(), "{} never appeared", path.display());
}

/// A directory the test user may write.
fn shared_dir(s: &Iso, name: &str) -> PathBuf {
    let dir = s.env.tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    chown_all(&dir);
    dir
}

#[test]
fn git_clones_over_https_from_inside_isolation() {
    let s = setup();
    let tmp = s.env.tmp.path();
    let root = tmp.join("git-root");
    std::fs::create_dir_all(&root).unwrap();
    let work = tmp.join("git-work");
    let git = |dir: &Path, args: &[&str]| {
        let out = s.env.git_in(dir, args);
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    };
    git(tmp, &["init", "-q", "-b", "main", "git-work"]);
    std::fs::write(work.join("README.txt"), "cloned from inside\n").unwrap();
    git(&work, &["add", "README.txt"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(
        tmp,
        &["clone", "-q", "--bare", "git-work", "git-root/repo.git"],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/git_https_server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([
            tmp.join("up.pem"),
            tmp.join("up.key"),
            root,
            tmp.join("git.log"),
        ])
        .arg("Bearer tok_REAL_VALUE_123")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Proc(child);
    let host = format!("127.0.0.1:{}", line.trim());
    s.ok(&[
        "service",
        "add",
        "gitsvc",
        "--bearer",
        "api/token",
        "--host",
        &host,
    ]);
    let dest = shared_dir(&s, "clones");
    // The broker picks the service up within moments.
    let script = format!(
        "for i in 1 2 3 4 5 6; do git clone -q https://{host}/repo.git {dest}/c$i && break; sleep 0.5; done; \
         cat {dest}/c*/README.txt; env | grep -i '^https_proxy=' | sed 's/^/proxy-env=/'",
        dest = dest.display()
    );
    let o = s.isolated(&["--isolate"], &script);
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("cloned from inside"), "{text}");
    // No token in what CMD sees.
    assert!(
        text.contains("proxy-env=HTTPS_PROXY=http://127.0.0.1:"),
        "{text}"
    );
    assert!(!text.contains('@'), "{text}");
}

#[test]
fn a_long_running_node_cli_outlives_its_token() {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/node/node_modules");
    assert!(
        modules.join("undici/package.json").is_file(),
        "run scripts/test-all.sh first"
    );
    let s = setup();
    let copy = s.env.tmp.path().join("node_modules");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(&modules)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(cp.status.success());
    chown_all(&copy);
    // A fetch every 0.3 s for 8 s, on tokens that live 3 s: every one
    // succeeds only if the supervisor renews the broker's token (the
    // tunnels undici keeps open included).
    let script = format!(
        r#"NODE_PATH={modules} node -e '
const {{ ProxyAgent }} = require("undici");
const fs = require("fs");
const dispatcher = new ProxyAgent({{
  uri: process.env.HTTPS_PROXY,
  requestTls: {{ ca: fs.readFileSync(process.env.NODE_EXTRA_CA_CERTS) }},
}});
(async () => {{
  let ok = 0; const bad = [];
  const end = Date.now() + 8000;
  while (Date.now() < end) {{
    try {{
      const r = await fetch("{url}", {{ dispatcher }});
      const t = await r.text();
      if (r.status === 200 && t.includes("[REDACTED:api/token]")) ok++;
      else bad.push(r.status + " " + t.slice(0, 200));
    }} catch (e) {{ bad.push(String((e && e.cause) || e)); }}
    await new Promise(r => setTimeout(r, 300));
  }}
  console.log("ok=" + ok + " bad=" + bad.length);
  for (const b of bad.slice(0, 5)) console.log("bad: " + b);
}})();'"#,
        modules = copy.display(),
        url = s.url("/node-long"),
    );
    let o = s.isolated(&["--ttl", "3s", "--isolate"], &script);
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    let ok: usize = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ok="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(text.contains(" bad=0"), "{text}");
    assert!(ok >= 15, "{text}");
    assert!(!text.contains("tok_REAL"), "{text}");
}

/// A tunnel service (bytes passed through, not intercepted) from inside
/// isolation: the broker re-checks an open tunnel every second against the
/// session's newest token, so one connection held for 8 s on tokens that
/// live 3 s carries every request; the agent's TLS reaches the upstream's
/// own certificate.
#[test]
fn a_held_pass_through_tunnel_outlives_its_token() {
    let s = setup();
    let host = format!("localhost:{}", s.up_port);
    s.ok(&["service", "add", "model", "--tunnel", "--host", &host]);
    // The running broker looks at the services again within RECHECK (250 ms).
    std::thread::sleep(Duration::from_millis(600));
    let ca = s.env.tmp.path().join("up-ca.pem");
    let script = format!(
        r#"python3 -c '
import http.client, os, ssl, time, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
ctx = ssl.create_default_context(cafile="{ca}")
ctx.check_hostname = False  # the certificate names 127.0.0.1
c = http.client.HTTPSConnection(proxy.hostname, proxy.port, context=ctx, timeout=10)
c.set_tunnel("localhost", {up})
c.connect()
c.auto_open = 0  # one connection: a cut is a failure, not a new tunnel
ok, bad = 0, []
end = time.time() + 8
while time.time() < end:
    try:
        c.request("GET", "/held")
        r = c.getresponse()
        r.read()
        ok += r.status == 200
    except Exception as e:
        bad.append(type(e).__name__)
        break
    time.sleep(0.3)
print("ok=%d bad=%d %s" % (ok, len(bad), bad))
'"#,
        ca = ca.display(),
        up = s.up_port,
    );
    let o = s.isolated(&["--ttl", "3s", "--isolate"], &script);
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains(" bad=0"), "{text}");
    let ok: usize = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ok="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(ok >= 15, "{text}");
    // Passed through: the upstream saw the agent's requests, no credential.
    let saw = s.upstream_saw();
    assert_eq!(saw.matches("/held").count(), ok, "{saw}");
    assert!(!saw.contains("tok_REAL"), "{saw}");
}

#[test]
fn a_stopped_supervisor_renews_nothing_and_nothing_inside_can() {
    let s = setup();
    let d = shared_dir(&s, "signals");
    let url = s.url("/stop");
    let script = format!(
        r#"
curl -sS -m 5 {url} -o /dev/null -w 'first=%{{http_code}}\n'
touch {d}/stop-me; while [ ! -e {d}/stopped ]; do sleep 0.1; done
curl -sS -m 5 {url} -o /dev/null -w 'stopped=%{{http_code}} connect=%{{http_connect}}\n'
{bin} token issue bot --ttl 10m >/dev/null 2>&1 && echo renewed=YES
touch {d}/cont-me; while [ ! -e {d}/continued ]; do sleep 0.1; done
curl -sS -m 5 {url} -o /dev/null -w 'resumed=%{{http_code}}\n'
echo done
"#,
        d = d.display(),
        bin = binary().display(),
    );
    let socket = s.socket.to_string_lossy().into_owned();
    let child = s
        .cmd(&[
            "run",
            "--agent",
            "bot",
            "--socket",
            &socket,
            "--ttl",
            "3s",
            "--isolate",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    wait_for(&d.join("stop-me"), Duration::from_secs(15));
    let signal = |sig: &str| {
        let o = Command::new("kill").args([sig, &pid]).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    signal("-STOP");
    // Past the token's lifetime, with no one to renew it.
    std::thread::sleep(Duration::from_millis(4500));
    std::fs::write(d.join("stopped"), "").unwrap();
    wait_for(&d.join("cont-me"), Duration::from_secs(15));
    signal("-CONT");
    std::thread::sleep(Duration::from_millis(700));
    std::fs::write(d.join("continued"), "").unwrap();
    let o = child.wait_with_output().unwrap();
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("first=200"), "{text}");
    assert!(text.contains("connect=407"), "{text}");
    assert!(!text.contains("renewed=YES"), "{text}");
    assert!(
        text.contains("resumed=200") && text.contains("done"),
        "{text}"
    );
}

#[test]
fn hostile_handoffs_are_refused_and_the_broker_carries_on() {
    let s = setup();
    let token = String::from_utf8(s.ok(&["token", "issue", "bot", "--ttl", "10m"]).stdout)
        .unwrap()
        .trim()
        .to_owned();
    let script = s.env.tmp.path().join("handoff_client.py");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/handoff_client.py"),
        &script,
    )
    .unwrap();
    chown_all(&script);
    let mut py = Command::new("python3");
    // A second agent, whose token a supervisor for bot must not pass on.
    s.ok(&["add-agent", "eve"]);
    let eve = String::from_utf8(s.ok(&["token", "issue", "eve", "--ttl", "10m"]).stdout)
        .unwrap()
        .trim()
        .to_owned();
    py.arg(&script)
        .arg(&s.socket)
        .args([token.as_str(), &s.url("/handed"), eve.as_str()])
        .stdin(Stdio::null());
    if let Some((uid, gid)) = user() {
        py.uid(uid).gid(gid);
    }
    let o = py.output().unwrap();
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    for hostile in [
        "no-fd",
        "two-fds",
        "socketpair",
        "file",
        "unlistened",
        "not-loopback",
        "bad-token",
        "long-line",
    ] {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{hostile}=")))
            .unwrap_or_else(|| panic!("{hostile}: {text}"));
        assert!(
            line.starts_with("refused: ") || line.starts_with("closed"),
            "{hostile}: {text}"
        );
    }
    assert!(
        text.contains("garbage=refused: ") || text.contains("garbage=closed"),
        "{text}"
    );
    // An honest one: served with no token from the client, a wrong one ignored.
    assert!(text.contains("honest=ok"), "{text}");
    assert!(text.contains("fetch=200:True"), "{text}");
    assert!(text.contains("fetch-wrong-auth=200:True"), "{text}");
    // Its control connection closed: the listener is gone.
    assert!(text.contains("after-close=refused"), "{text}");
    // A renewal for another agent ends that session.
    assert!(text.contains("second=ok"), "{text}");
    assert!(text.contains("second-fetch=200:True"), "{text}");
    assert!(text.contains("other-agent-renewal=refused"), "{text}");
    // The broker carries on, for TCP agents and for run --isolate.
    let o = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "5",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("-x")
        .arg(format!("http://bot:{token}@127.0.0.1:{}", s.broker_port))
        .arg(s.url("/after"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "{}", stderr(&o));
    let o = s.isolated(
        &["--isolate"],
        &format!(
            "curl -sS -m 5 {} -o /dev/null -w 'brokered=%{{http_code}}\\n'",
            s.url("/x")
        ),
    );
    assert!(out(&o).contains("brokered=200"), "{}", out(&o));
}
