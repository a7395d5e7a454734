//! The command line, defined once: help, man pages and shell completions are
//! all generated from these types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod oauth;
mod proposals;
mod service;

pub use oauth::{OauthCommand, OauthSetArgs};
pub use proposals::{ProposalsCommand, ProposeArgs};
pub use service::{LimitArgs, ServiceAddArgs, ServiceCommand, ServiceLimitsArgs};

/// Let AI agents use API keys, tokens and passwords without holding them.
///
/// Secrets are age-encrypted in a git repository; each agent gets exactly the
/// access it needs: `read` (decrypt with its own key) or `use` (have the
/// broker inject it, never seeing it).
#[derive(Debug, Parser)]
#[command(
    name = "agent-vault",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The vault's directory (default: the nearest one at or above the current directory).
    #[arg(long, global = true, value_name = "DIR", env = "AGENT_VAULT_DIR")]
    pub vault: Option<PathBuf>,

    /// Key file to open the vault with (default: AGENT_VAULT_KEY, then this vault's owner key).
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,

    /// Never contact the vault's git remote (no automatic pull on reads).
    #[arg(long, global = true)]
    pub offline: bool,

    /// No progress bars (they are drawn on standard error only when it is a terminal).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: a large variant (`proxy`'s flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a vault: git repository (if none), owner key, pre-commit hook, .gitignore lines.
    Init {
        /// Where to create it.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The owner's name in the manifest (default: $USER, or "owner").
        #[arg(long)]
        owner: Option<String>,
    },
    /// Add an agent: a new key pair, escrowed to the owners; the key file lands in $AGENT_VAULT_HOME.
    AddAgent {
        /// The agent's name: a-z, 0-9, '_' and '-'.
        name: String,
    },
    /// Remove an agent; every group it could read is rotated.
    RemoveAgent {
        /// The agent.
        name: String,
    },
    /// List agents and their grants.
    ListAgents,
    /// Give an agent a new key pair (lost or leaked key); groups it can read are rotated.
    RecoverAgent {
        /// The agent.
        name: String,
    },
    /// Add token-signing keys for agents made before them (each opened from its escrow).
    UpgradeAgent {
        /// Only this agent (repeatable; default: every agent without a signing key).
        #[arg(long = "agent", value_name = "NAME")]
        agents: Vec<String>,
    },
    /// Write an agent's private key, recovered from escrow, to a file (created 0600).
    RestoreAgent {
        /// The agent.
        name: String,
        /// The new key file; never overwritten.
        #[arg(long, value_name = "PATH")]
        to: PathBuf,
    },
    /// Set a secret from VALUE, --from-file, or standard input (bytes as given: no newline added or stripped).
    Set(SetArgs),
    /// Write a secret's value to standard output, exactly its bytes.
    Get {
        /// GROUP/NAME.
        path: String,
    },
    /// List secrets: names and metadata, never values.
    List {
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Remove a secret.
    Rm {
        /// GROUP/NAME.
        path: String,
    },
    /// Import a dotenv file (KEY=VALUE lines) into a group: one lock, one commit.
    Import {
        /// The group.
        group: String,
        /// The dotenv file, or - for standard input.
        file: PathBuf,
    },
    /// Grant an agent read (decrypt) or use (broker only) access to a group.
    Grant {
        /// The agent.
        agent: String,
        /// The group.
        group: String,
        /// read: the agent decrypts values; use: only the broker injects them.
        #[arg(long, value_enum, default_value_t = ModeArg::Read)]
        mode: ModeArg,
    },
    /// Revoke an agent's access to a group; rotates the group key and lists what to rotate upstream.
    Revoke {
        /// The agent.
        agent: String,
        /// The group.
        group: String,
    },
    /// Rotate every group key and re-encrypt every secret.
    Rekey {
        /// Only show what would be re-encrypted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Fetch, merge and push: bring in the remote's changes and send ours.
    Sync,
    /// Fetch and merge the remote's changes.
    Pull,
    /// Push this vault's commits (fails if the remote moved: run sync).
    Push,
    /// Settle a secret changed on both sides of a merge: keep ours, or take theirs.
    Resolve {
        /// GROUP/NAME.
        path: String,
        /// Keep this side's value.
        #[arg(long, conflicts_with = "theirs", required_unless_present = "theirs")]
        ours: bool,
        /// Take the other side's value.
        #[arg(long)]
        theirs: bool,
    },
    /// The broker: its key and certificate authority.
    #[command(subcommand)]
    Broker(BrokerCommand),
    /// Run the broker: an HTTPS proxy that injects credentials agents never see.
    Proxy(ProxyArgs),
    /// Serve MCP on stdio for an agent (Claude Desktop, Claude Code, Cursor): list, get, request, whoami.
    Mcp(McpArgs),
    /// Run a command as an agent, its HTTPS going through the broker with a fresh token.
    Run {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// The token's lifetime.
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// The broker's address (https://HOST:PORT for a broker started with TLS).
        #[arg(long, default_value = "127.0.0.1:14322")]
        proxy: String,
        /// The CA that signed the broker's own certificate (`proxy --tls-cert`); default: the vault's CA.
        #[arg(long, value_name = "FILE")]
        proxy_ca: Option<PathBuf>,
        /// Run the command where the only way out is the broker and no key is in reach
        /// (namespaces and Landlock; `required`: refuse to start without both).
        #[arg(long, value_name = "LEVEL", num_args = 0..=1, default_missing_value = "on", value_parser = ["on", "required"])]
        isolate: Option<String>,
        /// The broker's Unix socket (`proxy --unix PATH`), where `run --isolate` hands the broker its listener.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Read the broker's audit log.
    Audit {
        /// The audit log (as given to `proxy --audit`).
        file: PathBuf,
        /// Only this agent's requests.
        #[arg(long)]
        agent: Option<String>,
        /// Only requests since this time (a timestamp, a date, or a span back from now: 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only what the broker refused or failed, counted by host and reason.
        #[arg(long)]
        denied: bool,
    },
    /// Say what the broker would do with a request: the service and secrets, or why it is refused.
    Explain {
        /// The agent making the request.
        #[arg(long)]
        agent: String,
        /// A token limited to these services (repeatable; default: every service, as `run` issues).
        #[arg(long = "service", value_name = "NAME")]
        services: Vec<String>,
        /// The HTTP method.
        method: String,
        /// The URL: https://HOST/PATH?QUERY, with :PORT after the host if not 443 (or http:// for plain http).
        url: String,
    },
    /// Serve the owner's page on 127.0.0.1: review, approve or deny agents' proposals (owner key).
    Ui(UiArgs),
    /// OAuth credentials the broker refreshes itself: set one (its refresh token tried at once), its status, the provider presets.
    #[command(subcommand)]
    Oauth(OauthCommand),
    /// Short-lived broker tokens for agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The broker's CA certificate, for agents to trust.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Broker services: which hosts a credential goes to, and how.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Ask the owners for a service or credential (agent key): prints the proposal's id.
    Propose(Box<ProposeArgs>),
    /// Owners decide on agents' proposals: list, show, approve, deny; status for agents.
    #[command(subcommand)]
    Proposals(ProposalsCommand),
    /// Git's merge driver for manifest.yaml (registered by init): merges entry by entry.
    #[command(hide = true)]
    MergeDriver {
        /// The common ancestor's version.
        base: PathBuf,
        /// Ours: the result is written here.
        ours: PathBuf,
        /// Theirs.
        theirs: PathBuf,
    },
    /// Generate an owner key pair for joining a vault; prints what an owner passes to add-owner.
    Keygen {
        /// Where to write the private key (created 0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Add an owner (every group key and escrowed agent key is re-encrypted to include it).
    AddOwner {
        /// The owner's name.
        name: String,
        /// The owner's age recipient (age1…), as `keygen` printed it.
        recipient: String,
        /// The owner's signing key, as `keygen` printed it.
        #[arg(long, value_name = "KEY")]
        signing_key: String,
    },
    /// Remove an owner: every agent gets a new key pair and every group is rotated.
    RemoveOwner {
        /// The owner's name.
        name: String,
    },
    /// List owners.
    ListOwners,
    /// Show who changed the vault (or one secret), and when, from git.
    Log {
        /// Only this secret (GROUP/NAME).
        path: Option<String>,
    },
    /// List every secret an agent could ever decrypt, at any commit: what to rotate after a compromise.
    Exposure {
        /// The agent.
        agent: String,
    },
    /// Check signatures, expiry, orphaned and mismatched files, key permissions, unfinished operations.
    Check,
    /// Complete an interrupted operation and remove the debris of interrupted writes.
    Repair,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (one per command) into a directory.
    Man {
        /// The directory.
        #[arg(default_value = "man")]
        dir: PathBuf,
    },
    /// Run the main job end to end on a throwaway vault: init, an agent, a secret, a `use` grant, and a request through the broker whose value the agent never sees.
    Demo,
}

/// Arguments of `ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Where to listen: a loopback address and port (default: 127.0.0.1 and any free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// POST a Slack-compatible message here for each new proposal (default: ui.webhook in config.yaml).
    #[arg(
        long,
        value_name = "URL",
        env = "AGENT_VAULT_UI_WEBHOOK",
        hide_env_values = true
    )]
    pub webhook: Option<String>,
    /// The broker's audit log (as given to `proxy --audit`), for the audit page.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for OAuth token endpoints (connecting on the page).
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Allow OAuth token endpoints on private, loopback or link-local addresses.
    #[arg(long)]
    pub allow_private_endpoints: bool,
}

/// `broker` subcommands.
#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Create the broker's key (escrowed to the owners) and its CA (key stored encrypted in the vault).
    Init,
}

/// Arguments of `proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// `env`: print the environment an agent needs, as shell exports.
    #[command(subcommand)]
    pub sub: Option<ProxySub>,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:14322")]
    pub listen: String,
    /// Also listen on this Unix socket (for `run --isolate`; made readable and writable by this user only).
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for upstreams.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Allow upstreams on private, loopback and link-local addresses.
    #[arg(long)]
    pub allow_private_upstreams: bool,
    /// Append one JSON line per request to this file.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// Serve GET /healthz and GET /metrics (Prometheus text format) on this address, plain HTTP, apart from the proxy.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<String>,
    /// Fetch and fast-forward the vault's clone from its remote this often (e.g. 30s), verified as every reader does [config.yaml: broker.pull_interval_seconds].
    #[arg(long, value_name = "SPAN")]
    pub pull_interval: Option<String>,
    /// Refuse requests (fail closed) after this long without being up to date with the remote (needs --pull-interval) [config.yaml: broker.max_stale_seconds].
    #[arg(long, value_name = "SPAN")]
    pub max_stale: Option<String>,
    /// Speak TLS on the listener with this certificate chain (PEM; with --tls-key).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls_name"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Speak TLS on the listener with a certificate the vault's CA mints for this name or IP address (repeatable).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Vec<String>,
    /// Also send audit records as OpenTelemetry logs over OTLP/HTTP (JSON) to this URL (http://collector:4318/v1/logs).
    #[arg(long, value_name = "URL")]
    pub audit_otlp: Option<String>,
    /// Also send audit records as RFC 5424 syslog to udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH (repeatable).
    #[arg(long, value_name = "TARGET")]
    pub audit_syslog: Vec<String>,
}

/// Arguments of `mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Never return a secret's value (agent_vault_get is refused); requests still work.
    #[arg(long)]
    pub no_reveal: bool,
    /// The broker's address, for agent_vault_request (the token from AGENT_VAULT_TOKEN).
    #[arg(long, value_name = "HOST:PORT")]
    pub broker: Option<String>,
    /// Cut response bodies of agent_vault_request at this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100 * 1024)]
    pub max_body: usize,
    /// Append one JSON line per tool call to this file.
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
}

/// `proxy` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProxySub {
    /// Print HTTPS_PROXY, the CA variables and NO_PROXY for an agent, with a fresh token.
    Env {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// The token's lifetime.
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// The broker's address (https://HOST:PORT for a broker started with TLS).
        #[arg(long, default_value = "127.0.0.1:14322")]
        proxy: String,
        /// The CA that signed the broker's own certificate (`proxy --tls-cert`); default: the vault's CA.
        #[arg(long, value_name = "FILE")]
        proxy_ca: Option<PathBuf>,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token for an agent (printed on standard output).
    Issue {
        /// The agent.
        agent: String,
        /// How long it lives: 15m, 2h, 1d (at most token_max_ttl_seconds).
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// Limit it to these services (repeatable; default: all the agent's grants allow).
        #[arg(long = "service", value_name = "NAME")]
        services: Vec<String>,
        /// A session or task id, to revoke together.
        #[arg(long)]
        session: Option<String>,
    },
    /// Revoke tokens: by id, by agent, by session, or all.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "agent", "session", "all"])))]
    Revoke {
        /// A token id.
        #[arg(long)]
        id: Option<String>,
        /// Every token of this agent issued until now.
        #[arg(long)]
        agent: Option<String>,
        /// Every token of this session.
        #[arg(long)]
        session: Option<String>,
        /// Every token issued until now.
        #[arg(long)]
        all: bool,
    },
}

/// `ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM).
    Cert,
}

/// Arguments of `set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// GROUP/NAME.
    pub path: String,
    /// The value (visible to other local users in the process list: prefer stdin or --from-file).
    pub value: Option<String>,
    /// Read the value from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "value")]
    pub from_file: Option<PathBuf>,
    /// When it expires: a date (2027-01-31), a timestamp (2027-01-31T12:00:00Z) or a span (90d, 12h).
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    /// What the secret is for.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// Grant modes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Decrypt with the agent's own key.
    Read,
    /// Injected by the broker; never seen.
    Use,
}
