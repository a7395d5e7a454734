//! The arguments of `propose` and `proposals`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Arguments of `propose`: one service and one slot by flags, or any number
/// in a YAML file (`--file`).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("auth").args(["template", "bearer", "basic", "header", "query", "passthrough", "tunnel"])))]
pub struct ProposeArgs {
    /// A YAML draft: message, expires, services (name + service as in services.yaml), slots (path, description, obtain, action, kind).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The message to the owner: what you need and why.
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
    /// When the proposal lapses: a date, a timestamp or a span (default 7d, at most 30d).
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    /// A service to add, named NAME; takes --host and one way to authenticate, as `service add` does.
    #[arg(long = "service", value_name = "NAME", requires = "auth")]
    pub service: Option<String>,
    /// A built-in template (github, stripe, openai, anthropic, slack, shopify) with --secret.
    #[arg(long, requires = "service")]
    pub template: Option<String>,
    /// The secret a template uses.
    #[arg(long, value_name = "GROUP/NAME", requires = "template")]
    pub secret: Option<String>,
    /// Authorization: Bearer SECRET.
    #[arg(long, value_name = "GROUP/NAME", requires = "service")]
    pub bearer: Option<String>,
    /// Authorization: Basic, the user (or API key) secret.
    #[arg(long, value_name = "GROUP/NAME", requires = "service")]
    pub basic: Option<String>,
    /// The password secret of --basic.
    #[arg(long, value_name = "GROUP/NAME", requires = "basic")]
    pub pass: Option<String>,
    /// A header and its value template: 'x-api-key={{group/name}}'.
    #[arg(long, value_name = "NAME=TEMPLATE", requires = "service")]
    pub header: Option<String>,
    /// A query parameter: 'api_key=group/name'.
    #[arg(long, value_name = "PARAM=GROUP/NAME", requires = "service")]
    pub query: Option<String>,
    /// Allow the hosts through with nothing injected.
    #[arg(long, requires = "service")]
    pub passthrough: bool,
    /// Pass CONNECT through without interception; nothing is injected.
    #[arg(long, requires = "service")]
    pub tunnel: bool,
    /// A host pattern of the service; repeatable.
    #[arg(long = "host", value_name = "PATTERN", requires = "service")]
    pub hosts: Vec<String>,
    /// A path prefix the service covers; repeatable (default: all).
    #[arg(long = "path", value_name = "PREFIX", requires = "service")]
    pub paths: Vec<String>,
    /// A method the service allows; repeatable (default: all).
    #[arg(long = "method", value_name = "METHOD", requires = "service")]
    pub methods: Vec<String>,
    /// A credential slot: the secret the owner sets (or deletes).
    #[arg(long, value_name = "GROUP/NAME")]
    pub slot: Option<String>,
    /// What the slot's credential is for.
    #[arg(long, value_name = "TEXT", requires = "slot")]
    pub description: Option<String>,
    /// Where and how the owner obtains it.
    #[arg(long, value_name = "TEXT", requires = "slot")]
    pub obtain: Option<String>,
    /// Ask to delete the secret instead of setting it.
    #[arg(long, requires = "slot", conflicts_with = "value_stdin")]
    pub delete: bool,
    /// The credential is OAuth (client id and secret, refresh token) rather than a static value.
    #[arg(long, requires = "slot")]
    pub oauth: bool,
    /// A value you obtained yourself for --slot, read from standard input (encrypted to the owners).
    #[arg(long, requires = "slot")]
    pub value_stdin: bool,
    /// A value you obtained yourself, from a file: GROUP/NAME=@FILE (encrypted to the owners); repeatable.
    #[arg(long = "value", value_name = "GROUP/NAME=@FILE")]
    pub values: Vec<String>,
    /// The agent whose key to use, from this machine's key store (default: --key or AGENT_VAULT_KEY).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
}

/// `proposals` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProposalsCommand {
    /// List proposals: id, agent, status, age, message; forged or unreadable ones apart.
    List {
        /// Only pending ones.
        #[arg(long)]
        pending: bool,
    },
    /// Show a proposal and what approving it would change.
    Show {
        /// The proposal's id (or AGENT/ID).
        id: String,
    },
    /// Approve: every slot, service and grant in one signed commit (values from --value or standard input).
    Approve {
        /// The proposal's id (or AGENT/ID).
        id: String,
        /// A slot's value from a file: GROUP/NAME=@FILE (repeatable). Other slots read standard input, one line each, in the order `show` lists them.
        #[arg(long = "value", value_name = "GROUP/NAME=@FILE")]
        values: Vec<String>,
    },
    /// Deny, with a reason the agent reads.
    Deny {
        /// The proposal's id (or AGENT/ID).
        id: String,
        /// Why (the agent reads it).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Where a proposal stands: pending, approved, denied or expired.
    Status {
        /// The proposal's id (or AGENT/ID).
        id: String,
    },
}
