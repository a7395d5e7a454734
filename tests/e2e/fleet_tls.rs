//! Issue 16, item 2: TLS on the broker's listener, with a certificate the
//! vault's CA mints (`--tls-name`) or the owner's own (`--tls-cert`), used by
//! curl (`--proxy https://…`, `--proxy-cacert`), Python requests (through
//! `agent-vault run --proxy https://…`) and Node (undici's `ProxyAgent`).

use std::process::{Command, Output};

use crate::fleet::{Team, VALUE, curl_status, team};
use crate::harness::*;
/// `proxy env --proxy https://…`: the variables, parsed from its exports.
fn env_vars(team: &Team, args: &[&str]) -> Vec<(String, String)> {
    let out = team
        .env
        .ok(&[&["proxy", "env", "--agent", "bot"], args].concat());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

fn var<'a>(vars: &'a [(String, String)], name: &str) -> &'a str {
    &vars
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
}

/// curl through an https proxy with the variables `proxy env` printed.
fn curl_tls(team: &Team, vars: &[(String, String)], path: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-"])
        .args(["--proxy", var(vars, "HTTPS_PROXY")])
        .args(["--proxy-cacert", var(vars, "AGENT_VAULT_PROXY_CA")])
        .args(["--cacert", var(vars, "CURL_CA_BUNDLE")])
        .arg(team.url(path))
        .output()
        .expect("curl")
}

#[test]
fn tls_listener_minted_by_the_vault_ca_with_curl_python_and_node() {
    let t = team();
    let r = t.replica(
        "replica-tls",
        &["--tls-name", "127.0.0.1", "--tls-name", "broker.internal"],
    );
    assert!(
        r.log
            .lock()
            .unwrap()
            .contains("broker listening with TLS on")
    );
    let proxy = format!("https://127.0.0.1:{}", r.port);
    let vars = env_vars(&t, &["--proxy", &proxy]);
    let url = var(&vars, "HTTPS_PROXY");
    assert!(
        url.starts_with("https://bot:") && url.ends_with(&format!("@127.0.0.1:{}", r.port)),
        "{url}"
    );
    // The vault's CA minted the listener's certificate: the same file.
    assert_eq!(
        var(&vars, "AGENT_VAULT_PROXY_CA"),
        var(&vars, "CURL_CA_BUNDLE")
    );

    // curl: --proxy https://…, --proxy-cacert.
    let out = curl_tls(&t, &vars, "/v1/curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains("x-echo-auth: Bearer [REDACTED:api/token]")
            || text
                .to_ascii_lowercase()
                .contains("x-echo-auth: bearer [redacted:api/token]"),
        "{text}"
    );
    assert!(!text.contains(VALUE));
    // Not in cleartext: a plain-HTTP client to the TLS listener gets nothing.
    let plain = curl_status(&t, r.port, "/v1/plain");
    assert_eq!(plain.1, 0, "{plain:?}");
    // Without the CA, curl refuses the broker's certificate.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--proxy", url])
        .args(["--cacert", var(&vars, "CURL_CA_BUNDLE")])
        .arg(t.url("/v1/untrusted"))
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));

    // Python requests, through `agent-vault run --proxy https://…`.
    let script = format!(
        "import requests\nr = requests.get('{}')\nprint(r.status_code, r.headers.get('X-Echo-Auth'), {VALUE:?} in r.text)",
        t.url("/v1/py")
    );
    let out = t.env.run(
        &[
            "run", "--agent", "bot", "--proxy", &proxy, "--", "python3", "-c", &script,
        ],
        b"",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert_eq!(stdout.trim(), "200 Bearer [REDACTED:api/token] False");

    // Node: undici's ProxyAgent to an https proxy.
    let modules = node_modules();
    let dir = modules.parent().unwrap().to_owned();
    let script = r#"
const fs = require('fs');
const { ProxyAgent } = require('undici');
const e = process.env;
const u = new URL(e.HTTPS_PROXY);
const dispatcher = new ProxyAgent({
  uri: u.origin,
  token: 'Basic ' + Buffer.from(decodeURIComponent(u.username) + ':' + decodeURIComponent(u.password)).toString('base64'),
  proxyTls: { ca: fs.readFileSync(e.AGENT_VAULT_PROXY_CA), servername: 'broker.internal' },
  requestTls: { ca: fs.readFileSync(e.NODE_EXTRA_CA_CERTS) },
});
(async () => {
  const r = await fetch(e.TARGET_URL, { dispatcher });
  console.log(r.status);
  console.log(r.headers.get('x-echo-auth'));
})().catch((err) => { console.error(err); process.exit(1); });
"#;
    let out = Command::new("node")
        .args(["-e", script])
        .current_dir(&dir)
        .env("NODE_PATH", &modules)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("NODE_USE_ENV_PROXY")
        .env("TARGET_URL", t.url("/v1/node"))
        .output()
        .expect("node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["200", "Bearer [REDACTED:api/token]"],
        "{text}"
    );
    let saw = std::fs::read_to_string(&t.upstream_log).unwrap_or_default();
    for p in ["/v1/curl", "/v1/py", "/v1/node"] {
        assert!(saw.contains(p), "{p} never reached the upstream: {saw}");
    }
}

/// `--tls-cert/--tls-key` from the owner's own CA; `proxy env --proxy-ca`
/// names it, and the bundle the common variables name holds both CAs.
#[test]
fn tls_listener_with_the_owners_certificate() {
    let t = team();
    let dir = t.env.tmp.path();
    let (ca, ca_key) = agent_vault_proxy::ca::generate("owners-own-ca").unwrap();
    let minter = agent_vault_proxy::ca::Minter::new(&ca, &ca_key).unwrap();
    let (cert, key) = minter.leaf("127.0.0.1").unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join("own-ca.pem"),
        dir.join("listener.pem"),
        dir.join("listener.key"),
    );
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let r = t.replica(
        "replica-own",
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    let proxy = format!("https://127.0.0.1:{}", r.port);
    let vars = env_vars(
        &t,
        &["--proxy", &proxy, "--proxy-ca", ca_file.to_str().unwrap()],
    );
    assert_eq!(
        var(&vars, "AGENT_VAULT_PROXY_CA"),
        ca_file.to_str().unwrap()
    );
    let out = curl_tls(&t, &vars, "/v1/own");
    assert!(out.status.success(), "{}", stderr(&out));
    // Python requests takes one bundle for the proxy and the upstream.
    let script = format!(
        "import requests\nprint(requests.get('{}').status_code)",
        t.url("/v1/own-py")
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "{}",
        stderr(&out)
    );
    // The vault's CA alone does not verify this broker.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--proxy",
            var(&vars, "HTTPS_PROXY"),
        ])
        .args(["--proxy-cacert", t.broker_ca.to_str().unwrap()])
        .args(["--cacert", t.broker_ca.to_str().unwrap()])
        .arg(t.url("/v1/wrong-ca"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
    // Bad flags are named.
    let err = t
        .env
        .fail(&["proxy", "--tls-cert", cert_file.to_str().unwrap()]);
    assert!(err.contains("--tls-key"), "{err}");
    let err = t.env.fail(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        "/nowhere.pem",
        "--tls-key",
        key_file.to_str().unwrap(),
    ]);
    assert!(err.contains("/nowhere.pem"), "{err}");
    let err = t
        .env
        .fail(&["proxy", "env", "--agent", "bot", "--proxy", "ftp://x:1"]);
    assert!(err.contains("neither http nor https"), "{err}");
}
