//! The agent-vault MCP server: how Claude Desktop, Claude Code, Cursor and
//! other MCP clients reach a vault. It speaks MCP over stdio and offers six
//! tools: `agent_vault_list`, `agent_vault_get` (values of `read` groups
//! only), `agent_vault_request` (an HTTPS request through the broker, which
//! injects what the agent may `use` but never see), `agent_vault_whoami`, and
//! `agent_vault_propose` / `agent_vault_proposal_status` (ask the owners for
//! access; a human approves).
//!
//! The server holds the agent's key in memory; tool results never carry key
//! material, and failures (not authorized, not found, host not allowed,
//! upstream error) are tool results with `isError` whose messages never
//! contain a value. Logs go to stderr.
//!
//! ```no_run
//! use agent_vault_core::{KeySource, KeyStore, Vault};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vault = Vault::find(std::path::Path::new("."), KeyStore::from_env()?)?;
//! let opts = agent_vault_mcp::Options::default();
//! agent_vault_mcp::serve_stdio(vault, KeySource::resolve(None), opts)?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod audit;
mod fail;
mod propose;
mod renew;
pub mod request;
pub mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use agent_vault_core::live::LiveReader;
use agent_vault_core::reader::Reader;
use agent_vault_core::secrecy::ExposeSecret;
use agent_vault_core::{Error as CoreError, GroupName, KeySource, Mode, Role, SecretPath, Vault};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

use crate::fail::Fail;

pub use tools::tools;

/// The default cut for response bodies: 100 KiB.
pub const DEFAULT_MAX_BODY: usize = 100 * 1024;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Refuse `agent_vault_get` for every secret (the model sees no value).
    pub no_reveal: bool,
    /// The broker's address (`HOST:PORT`), for `agent_vault_request`.
    pub broker: Option<String>,
    /// The agent's broker token (`agent-vault token issue`).
    pub token: Option<String>,
    /// Response bodies are cut at this many bytes.
    pub max_body: usize,
    /// Append one JSON line per tool call to this file.
    pub audit: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            no_reveal: false,
            broker: None,
            token: None,
            max_body: DEFAULT_MAX_BODY,
            audit: None,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The vault could not be opened with the key.
    Vault(CoreError),
    /// The audit log could not be opened.
    Audit(PathBuf, std::io::Error),
    /// The MCP transport failed.
    Transport(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Vault(e) => write!(f, "{e}"),
            Error::Audit(p, e) => write!(f, "cannot open the audit log {}: {e}", p.display()),
            Error::Transport(e) => write!(f, "MCP over stdio failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Error::Vault(e)
    }
}

/// The server: one vault, one key.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    /// The vault and the key, followed while the vault changes (looked at
    /// on every tool call).
    live: LiveReader,
    opts: Options,
    agent: String,
    audit: audit::AuditLog,
    /// The broker client, built on first use (it needs the vault's CA) and
    /// again whenever the server's own token is due for renewal.
    broker: renew::Renewing<Arc<request::Broker>>,
}

impl Server {
    /// Opens the vault with the key (checking that it is an owner's or an
    /// agent's) and the audit log.
    pub fn new(vault: Vault, key: KeySource, opts: Options) -> Result<Self, Error> {
        let live = LiveReader::open(vault, &key, std::time::Duration::ZERO)?;
        let agent = match live.last().role() {
            Role::Agent(a) => a.to_string(),
            Role::Owner(o) => format!("owner:{o}"),
            Role::Broker => "broker".to_owned(),
        };
        let audit = audit::AuditLog::open(opts.audit.as_deref())
            .map_err(|e| Error::Audit(opts.audit.clone().unwrap_or_default(), e))?;
        Ok(Server {
            inner: Arc::new(Inner {
                live,
                opts,
                agent,
                audit,
                broker: renew::Renewing::new(),
            }),
        })
    }

    /// Runs one tool call; every failure is a result with `is_error`.
    pub async fn call(
        &self,
        name: &str,
        args: Option<serde_json::Map<String, Value>>,
    ) -> CallToolResult {
        let args = Value::Object(args.unwrap_or_default());
        let (subject, result) = match name {
            tools::LIST => (None, self.list(args)),
            tools::GET => {
                let subject = args
                    .get("secret")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                (subject, self.get(args))
            }
            tools::REQUEST => {
                let subject = args
                    .get("url")
                    .and_then(Value::as_str)
                    .and_then(|u| request::parse_url(u).ok())
                    .map(|t| t.authority());
                (subject, self.request(args).await)
            }
            tools::WHOAMI => (None, self.whoami(args)),
            tools::PROPOSE => (None, self.propose(args)),
            tools::PROPOSAL_STATUS => (None, self.proposal_status(args)),
            other => (None, Err(Fail::NoTool(other.to_owned()))),
        };
        let key = if name == tools::REQUEST {
            "host"
        } else {
            "secret"
        };
        self.inner.audit.record(
            name,
            &self.inner.agent,
            key,
            subject.as_deref(),
            result.is_ok(),
        );
        match result {
            Ok(Output::Json(v)) => {
                let text = serde_json::to_string_pretty(&v).unwrap_or_default();
                CallToolResult::success(vec![ContentBlock::text(text)])
            }
            Ok(Output::Text(t)) => CallToolResult::success(vec![ContentBlock::text(t)]),
            Err(fail) => {
                let msg = fail.to_string();
                eprintln!("agent-vault mcp: {name}: {msg}");
                CallToolResult::error(vec![ContentBlock::text(msg)])
            }
        }
    }

    /// The reader on the vault's files as they are now.
    fn reader(&self) -> Result<Arc<Reader>, Fail> {
        Ok(self.inner.live.current()?)
    }

    /// The grant the key holds on a group: owners read everything.
    fn mode(reader: &Reader, group: &GroupName) -> Option<Mode> {
        agent_vault_core::access::granted(reader.manifest(), reader.role(), group)
    }

    fn list(&self, args: Value) -> Result<Output, Fail> {
        let a: tools::ListArgs = parse_args(tools::LIST, args)?;
        let group: Option<GroupName> = match &a.group {
            Some(g) => Some(g.parse().map_err(Fail::Core)?),
            None => None,
        };
        let reader = self.reader()?;
        if let Some(g) = &group {
            if !reader.manifest().groups.contains_key(g) {
                return Err(Fail::NoGroup(g.clone()));
            }
            if Self::mode(&reader, g).is_none() {
                return Err(Fail::NoGrantOnGroup {
                    agent: self.inner.agent.clone(),
                    group: g.clone(),
                });
            }
        }
        let mut out = Vec::new();
        for info in reader.vault().list(group.as_ref())? {
            let Some(mode) = Self::mode(&reader, info.path.group()) else {
                continue;
            };
            let mut entry = json!({
                "secret": info.path.to_string(),
                "group": info.path.group().to_string(),
                "access": mode.to_string(),
            });
            match &info.meta {
                Ok(m) => {
                    // Text from a file anyone with push access can edit: no
                    // control characters reach the agent, and it is told
                    // whether an owner signed it.
                    entry["description"] = json!(
                        m.description
                            .as_deref()
                            .map(|d| agent_vault_core::model::printable(d).into_owned())
                    );
                    entry["metadata_signed"] = json!(info.metadata_signed);
                    entry["expires"] = json!(m.expires.map(|t| t.to_string()));
                    entry["expired"] =
                        json!(m.expires.is_some_and(|t| t <= jiff::Timestamp::now()));
                }
                Err(e) => entry["error"] = json!(agent_vault_core::model::printable(e)),
            }
            out.push(entry);
        }
        Ok(Output::Json(json!({
            "agent": self.inner.agent,
            "secrets": out,
            "note": "access \"read\": agent_vault_get returns the value; \"use\": only agent_vault_request can use it",
        })))
    }

    fn get(&self, args: Value) -> Result<Output, Fail> {
        let a: tools::GetArgs = parse_args(tools::GET, args)?;
        let path: SecretPath = a.secret.parse().map_err(Fail::SecretName)?;
        if self.inner.opts.no_reveal {
            return Err(Fail::NoReveal(path));
        }
        match self.inner.live.get(&path) {
            Ok(v) => Ok(Output::Text(
                String::from_utf8_lossy(v.expose_secret()).into_owned(),
            )),
            Err(CoreError::UseOnly { group, .. }) => Err(Fail::UseOnly { path, group }),
            Err(CoreError::NotGranted { group, .. }) => Err(Fail::NotGranted {
                agent: self.inner.agent.clone(),
                path,
                group,
            }),
            Err(CoreError::SecretNotFound(_)) => Err(Fail::SecretNotFound(path)),
            Err(e) => Err(e.into()),
        }
    }

    async fn request(&self, args: Value) -> Result<Output, Fail> {
        let a: tools::RequestArgs = parse_args(tools::REQUEST, args)?;
        let mut target = request::parse_url(&a.url)?;
        let reader = self.reader()?;
        let services = reader.services()?;
        if !services.knows_host(&target.host, target.port, true) {
            let hosts: Vec<String> = services
                .services
                .values()
                .flat_map(|s| s.hosts.iter().cloned())
                .collect();
            return Err(Fail::HostNotAllowed {
                authority: target.authority(),
                hosts,
            });
        }
        let broker = self.broker()?;
        if let Some(q) = &a.query {
            request::add_query(&mut target.path_and_query, q);
        }
        let resp = request::send(
            &broker,
            &target,
            &a.method,
            &a.headers.unwrap_or_default(),
            a.body,
            self.inner.opts.max_body,
        )
        .await?;
        Ok(Output::Json(
            serde_json::to_value(&resp).unwrap_or(Value::Null),
        ))
    }

    /// The broker client with a token that is good now: the pasted one,
    /// or one minted with the agent's own key, renewed before it expires.
    fn broker(&self) -> Result<Arc<request::Broker>, Fail> {
        let inner = &self.inner;
        let now = jiff::Timestamp::now().as_second();
        inner.broker.get(now, || {
            let addr = inner.opts.broker.clone().ok_or(Fail::NoBroker)?;
            let (token, lease) = match &inner.opts.token {
                Some(t) => (t.clone(), None),
                None => {
                    let (t, lease) = self.own_token()?;
                    (t, Some(lease))
                }
            };
            let ca = inner.live.vault().ca_cert()?;
            let broker = request::Broker::new(addr, &inner.agent, &token, &ca)?;
            Ok((Arc::new(broker), lease))
        })
    }

    /// A token minted with the agent's own key (`avt2`): no owner needed.
    fn own_token(&self) -> Result<(String, renew::Lease), Fail> {
        let reader = self.reader()?;
        let Role::Agent(agent) = reader.role() else {
            return Err(Fail::NoToken {
                agent: self.inner.agent.clone(),
            });
        };
        let vault = reader.vault();
        let ttl = renew::own_ttl(vault.config().token_max_ttl_seconds);
        let (token, claims) = agent_vault_core::broker::issue_agent_token(
            vault,
            reader.identity(),
            reader.manifest(),
            agent,
            ttl,
            &[],
            None,
        )?;
        Ok((token, renew::Lease::new(claims.iat, claims.exp)))
    }

    fn whoami(&self, args: Value) -> Result<Output, Fail> {
        let _: tools::WhoamiArgs = parse_args(tools::WHOAMI, args)?;
        let reader = self.reader()?;
        let m = reader.manifest();
        let groups: BTreeMap<String, String> = m
            .groups
            .keys()
            .filter_map(|g| Self::mode(&reader, g).map(|mode| (g.to_string(), mode.to_string())))
            .collect();
        let services = reader.services()?;
        let usable: Vec<Value> = services
            .services
            .iter()
            .filter(|(_, s)| {
                s.all_secrets()
                    .iter()
                    .all(|p| Self::mode(&reader, p.group()).is_some())
            })
            .map(|(name, s)| {
                json!({
                    "service": name,
                    "hosts": s.hosts,
                    "paths": s.paths,
                    "methods": s.methods,
                    "placeholders": s.secrets.iter().map(|p| format!("{{{{secret:{p}}}}}")).collect::<Vec<_>>(),
                })
            })
            .collect();
        let role = match reader.role() {
            Role::Owner(_) => "owner",
            Role::Agent(_) => "agent",
            Role::Broker => "broker",
        };
        Ok(Output::Json(json!({
            "agent": self.inner.agent,
            "role": role,
            "groups": groups,
            "services": usable,
            "reveal": !self.inner.opts.no_reveal,
            "broker": self.inner.opts.broker,
        })))
    }
}

/// A tool's successful output.
enum Output {
    Json(Value),
    Text(String),
}

fn parse_args<T: serde::de::DeserializeOwned>(tool: &'static str, args: Value) -> Result<T, Fail> {
    serde_json::from_value(args).map_err(|source| Fail::Args { tool, source })
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "agent-vault",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "agent-vault holds this agent's secrets. Call agent_vault_whoami or \
                 agent_vault_list first. Read a value with agent_vault_get only when access is \
                 \"read\"; for \"use\" secrets call agent_vault_request, which sends the HTTPS \
                 request through the broker that injects the credential. When what you need is \
                 not covered, ask with agent_vault_propose; a human approves.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(self.call(&request.name, request.arguments).await.into())
    }
}

/// Serves MCP over stdin/stdout until the client closes it.
pub fn serve_stdio(vault: Vault, key: KeySource, opts: Options) -> Result<(), Error> {
    let server = Server::new(vault, key, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Transport(e.to_string()))?;
    rt.block_on(async move {
        eprintln!(
            "agent-vault: MCP server for {} on stdio",
            server.inner.agent
        );
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        running
            .waiting()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(())
    })
}
