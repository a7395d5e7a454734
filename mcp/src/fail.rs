//! A tool's failure: a tool result with `is_error`, whose message a model
//! can act on (what went wrong, what to call or ask for instead). Never a
//! value.

use agent_vault_core::broker::decide::PROBLEM_TYPE_BASE;
use agent_vault_core::{Error as CoreError, GroupName, SecretPath};

use crate::request::{RequestError, UrlError};
use crate::tools;

/// Why a tool call failed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A failure of the vault (with its hint).
    Core(CoreError),
    /// A failure of the vault that the reader keeps (its services list did
    /// not verify), described with its hint.
    Kept(String),
    /// The arguments do not fit the tool's input schema.
    Args {
        /// The tool.
        tool: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// No tool of that name.
    NoTool(String),
    /// `agent_vault_list` for a group that does not exist.
    NoGroup(GroupName),
    /// `agent_vault_list` for a group the agent has no grant on.
    NoGrantOnGroup {
        /// The agent.
        agent: String,
        /// The group.
        group: GroupName,
    },
    /// `agent_vault_get` with a name that is not GROUP/NAME.
    SecretName(CoreError),
    /// `agent_vault_get` on a server started with `--no-reveal`.
    NoReveal(SecretPath),
    /// `agent_vault_get` for a secret the agent may only use.
    UseOnly {
        /// The secret.
        path: SecretPath,
        /// Its group.
        group: String,
    },
    /// `agent_vault_get` for a secret in a group the agent has no grant on.
    NotGranted {
        /// The agent.
        agent: String,
        /// The secret.
        path: SecretPath,
        /// Its group.
        group: String,
    },
    /// `agent_vault_get` for a secret that does not exist.
    SecretNotFound(SecretPath),
    /// `agent_vault_request`'s URL is not one it sends.
    Url(UrlError),
    /// `agent_vault_request` to a host no service names.
    HostNotAllowed {
        /// `host:port` asked for.
        authority: String,
        /// The hosts services name.
        hosts: Vec<String>,
    },
    /// `agent_vault_request` on a server started without `--broker`.
    NoBroker,
    /// `agent_vault_request` on a server without a broker token.
    NoToken {
        /// The agent.
        agent: String,
    },
    /// The request through the broker failed.
    Request(RequestError),
}

impl From<CoreError> for Fail {
    fn from(e: CoreError) -> Self {
        Fail::Core(e)
    }
}

impl From<&CoreError> for Fail {
    fn from(e: &CoreError) -> Self {
        Fail::Kept(describe(e))
    }
}

impl From<UrlError> for Fail {
    fn from(e: UrlError) -> Self {
        Fail::Url(e)
    }
}

impl From<RequestError> for Fail {
    fn from(e: RequestError) -> Self {
        Fail::Request(e)
    }
}

/// A vault error with its hint, as a model sees it.
fn describe(e: &CoreError) -> String {
    match e.hint() {
        Some(h) => format!("{e} ({h})"),
        None => e.to_string(),
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Core(e) => f.write_str(&describe(e)),
            Fail::Kept(text) => f.write_str(text),
            Fail::Args { tool, source } => write!(
                f,
                "invalid arguments for {tool}: {source}; see the tool's input schema"
            ),
            Fail::NoTool(other) => write!(
                f,
                "there is no tool {other:?}; the tools are {}, {}, {} and {}",
                tools::LIST,
                tools::GET,
                tools::REQUEST,
                tools::WHOAMI
            ),
            Fail::NoGroup(g) => write!(
                f,
                "there is no group {g}; call {} without a group to see every secret",
                tools::LIST
            ),
            Fail::NoGrantOnGroup { agent, group: g } => write!(
                f,
                "this agent has no grant on group {g}; an owner can give one with \
                 `agent-vault grant {agent} {g} --mode read|use`",
            ),
            Fail::SecretName(e) => write!(
                f,
                "{}; a secret is named GROUP/NAME, as {} shows",
                describe(e),
                tools::LIST
            ),
            Fail::NoReveal(path) => write!(
                f,
                "this server runs with --no-reveal: no secret value is returned. To use {path}, \
                 call {} with a {{{{secret:{path}}}}} placeholder or to a service that injects it",
                tools::REQUEST
            ),
            Fail::UseOnly { path, group } => write!(
                f,
                "{path} is use-only for this agent (group {group}): its value is never shown. \
                 Call {} instead: the broker injects the service's credential, and a \
                 {{{{secret:{path}}}}} placeholder in a header, the query or the body is filled in",
                tools::REQUEST
            ),
            Fail::NotGranted { agent, path, group } => write!(
                f,
                "this agent has no grant on group {group}, so {path} is out of reach; {} shows \
                 what it can use. An owner can grant access with `agent-vault grant {agent} {group} \
                 --mode read|use`",
                tools::LIST,
            ),
            Fail::SecretNotFound(path) => write!(
                f,
                "there is no secret {path}; {} shows the secrets there are",
                tools::LIST
            ),
            Fail::Url(e) => write!(f, "{e}"),
            Fail::HostNotAllowed { authority, hosts } => write!(
                f,
                "{authority} is not a host any vault service names, so the broker will not reach it. \
                 Reachable hosts: {}. An owner adds one with `agent-vault service add`\ntype: \
                 {PROBLEM_TYPE_BASE}host-not-covered",
                if hosts.is_empty() {
                    "none".to_owned()
                } else {
                    hosts.join(", ")
                }
            ),
            Fail::NoBroker => write!(
                f,
                "{} needs the broker: the MCP server was started without --broker \
                 HOST:PORT; ask the user to add it (and AGENT_VAULT_TOKEN) to the \
                 server's configuration",
                tools::REQUEST
            ),
            Fail::NoToken { agent } => write!(
                f,
                "{} needs a broker token: AGENT_VAULT_TOKEN is not set for the MCP \
                 server and its key is not an agent's; start it with the agent's key, \
                 or an owner issues a token with `agent-vault token issue {agent}`",
                tools::REQUEST,
            ),
            Fail::Request(e) => write!(f, "{e}"),
        }
    }
}
