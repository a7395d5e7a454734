//! The demo's agent: `agent-vault __demo-agent URL`, a separate process that
//! sends one GET through the proxy in `HTTPS_PROXY` (trusting the CA in
//! `SSL_CERT_FILE`) and prints the status and the body it got. The demo
//! starts it isolated as `run --isolate` would (`crate::isolate`), or, where
//! the machine allows no isolation at all, as a plain child process.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, ExitCode, Stdio};

use crate::isolate::{Enforced, Level, Minter, Plan};
use crate::output::{CliError, CliResult};

/// The hidden subcommand.
pub const AGENT: &str = "__demo-agent";

/// What the agent printed, and how it ran.
pub struct Seen {
    /// One line: `isolated: …` or `not isolated: WHY`.
    pub isolation: String,
    /// Its HTTP status (0: it printed none).
    pub status: u16,
    /// Everything it printed after the status line.
    pub body: String,
}

/// How to start the agent.
pub struct Start<'a> {
    /// The URL it requests.
    pub url: String,
    /// The broker's Unix socket (for the listener hand-off).
    pub socket: std::path::PathBuf,
    /// The broker's TCP address (Landlock-only, or no isolation).
    pub proxy_tcp: String,
    /// The CA file's variables.
    pub env: Vec<(String, String)>,
    /// Key directories to hide from it.
    pub hide_dirs: Vec<std::path::PathBuf>,
    /// Mints demo-bot's token.
    pub mint: Box<dyn FnMut() -> CliResult<String> + 'a>,
}

/// Runs the agent isolated as far as this machine allows; without any
/// isolation when none starts, and says which.
pub fn run(mut start: Start<'_>) -> CliResult<Seen> {
    let err = |e: std::io::Error| CliError::Msg(format!("the demo's agent: {e}"), None);
    let exe = std::env::current_exe().map_err(err)?;
    let plan = Plan {
        hide_dirs: start.hide_dirs.clone(),
        hide_files: Vec::new(),
        socket: start.socket.clone(),
        proxy_tcp: start.proxy_tcp.clone(),
        env: start.env.clone(),
        env_remove: ["AGENT_VAULT_KEY", "AGENT_VAULT_TOKEN"]
            .map(String::from)
            .to_vec(),
        command: vec![
            exe.display().to_string(),
            AGENT.to_owned(),
            start.url.clone(),
        ],
        level: Level::BestEffort,
        force_fallback: std::env::var_os(crate::isolate::FORCE_FALLBACK).is_some(),
    };
    let (mut reader, writer) = std::io::pipe().map_err(err)?;
    let reading = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        out
    });
    let minter = Minter {
        mint: Box::new(&mut start.mint),
        agent: "demo-bot".into(),
        ttl: std::time::Duration::from_secs(600),
    };
    let supervised = crate::isolate::supervise_with(&plan, minter, Stdio::from(writer));
    let printed = reading.join().unwrap_or_default();
    let (isolation, printed) = match supervised {
        Ok((_, Some(Enforced::Namespaces))) => (
            "isolated: user, mount, PID and network namespaces".to_owned(),
            printed,
        ),
        Ok((_, Some(Enforced::LandlockOnly))) => ("isolated: Landlock only".to_owned(), printed),
        Ok((_, Some(Enforced::Nothing(why)))) => (format!("not isolated: {why}"), printed),
        // The agent did not start: it runs once more, as a plain child.
        Ok((_, None)) => plain(&exe, &mut start, "the isolation did not start (see above)")?,
        Err(CliError::Msg(why, _)) => plain(&exe, &mut start, &why)?,
        Err(CliError::Core(e)) => plain(&exe, &mut start, &e.to_string())?,
    };
    let text = String::from_utf8_lossy(&printed);
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    Ok(Seen {
        isolation,
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    })
}

/// The agent as a plain child process, its token in `HTTPS_PROXY` (as
/// `agent-vault run` gives it).
fn plain(exe: &std::path::Path, start: &mut Start<'_>, why: &str) -> CliResult<(String, Vec<u8>)> {
    let token = (start.mint)()?;
    let proxy = format!("http://demo-bot:{token}@{}", start.proxy_tcp);
    let out = Command::new(exe)
        .arg(AGENT)
        .arg(&start.url)
        .envs(start.env.iter().cloned())
        .env("HTTPS_PROXY", proxy)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| CliError::Msg(format!("cannot start the demo's agent: {e}"), None))?;
    Ok((format!("not isolated: {why}"), out.stdout))
}

/// Runs the hidden subcommand; `None` when argv names another.
pub fn entry() -> Option<ExitCode> {
    if std::env::args_os().nth(1)? != AGENT {
        return None;
    }
    Some(match request() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-vault: error: the demo's agent: {e}");
            ExitCode::FAILURE
        }
    })
}

/// The agent's one request, printed: the status on a line, then the body.
fn request() -> Result<(), String> {
    let url = std::env::args().nth(2).ok_or("no URL given")?;
    let proxy = std::env::var("HTTPS_PROXY").map_err(|_| "no HTTPS_PROXY")?;
    let rest = proxy
        .strip_prefix("http://")
        .ok_or("HTTPS_PROXY is not an http:// URL")?
        .trim_end_matches('/');
    // Isolated, the proxy holds the token: what is sent here is ignored.
    let (agent, token, addr) = match rest.rsplit_once('@') {
        Some((userinfo, addr)) => {
            let (agent, token) = userinfo.split_once(':').ok_or("HTTPS_PROXY has no token")?;
            (agent, token, addr)
        }
        None => ("demo-bot", "none", rest),
    };
    let ca_file = std::env::var("SSL_CERT_FILE").map_err(|_| "no SSL_CERT_FILE")?;
    let ca = std::fs::read(&ca_file).map_err(|e| format!("cannot read {ca_file}: {e}"))?;
    let client = agent_vault_mcp::request::Broker::new(addr.to_owned(), agent, token, &ca)
        .map_err(|e| e.to_string())?;
    let target = agent_vault_mcp::request::parse_url(&url).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let seen = runtime
        .block_on(agent_vault_mcp::request::send(
            &client,
            &target,
            "GET",
            &BTreeMap::new(),
            None,
            64 * 1024,
        ))
        .map_err(|e| e.to_string())?;
    println!("{}\n{}", seen.status, seen.body);
    Ok(())
}
