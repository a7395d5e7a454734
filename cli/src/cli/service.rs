//! The arguments of `service`.

use clap::{Args, Subcommand};

/// `service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Add (or replace) a service.
    Add(Box<ServiceAddArgs>),
    /// List services.
    List,
    /// Remove a service.
    Rm {
        /// The service.
        name: String,
    },
    /// Show or change a service's rate limits, or the vault's defaults (per agent and service, per broker instance).
    Limits(ServiceLimitsArgs),
}

/// Rate limits, per agent and service (`service add`, `service limits`).
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// Requests per second each agent may send to the service (may be fractional: 0.5).
    #[arg(long, value_name = "N")]
    pub rps: Option<f64>,
    /// Requests at once after a quiet spell (default: one second's worth of --rps).
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// Requests each agent may have in flight at once (a streaming response counts until it ends).
    #[arg(long, value_name = "N")]
    pub in_flight: Option<u32>,
}

/// Arguments of `service limits`: without a change, the limits are shown.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "default"])))]
pub struct ServiceLimitsArgs {
    /// The service.
    pub name: Option<String>,
    /// The vault's defaults: every service takes each limit it does not set from them.
    #[arg(long)]
    pub default: bool,
    /// Remove the limits first (with no other option: no limits left).
    #[arg(long)]
    pub clear: bool,
    /// The limits to set; the others are kept.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Arguments of `service add`. Exactly one way to authenticate.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("auth").required(true).args(["template", "bearer", "basic", "header", "query", "passthrough", "tunnel", "sigv4"])))]
#[command(group(clap::ArgGroup::new("template_keys").args(["secret", "access_key_id"])))]
pub struct ServiceAddArgs {
    /// The service's name.
    pub name: String,
    /// A built-in template: github, stripe, openai, anthropic, slack, shopify (with --secret); s3, bedrock (with --region and the AWS keys).
    #[arg(long, requires = "template_keys")]
    pub template: Option<String>,
    /// The secret a template uses.
    #[arg(long, value_name = "GROUP/NAME")]
    pub secret: Option<String>,
    /// Authorization: Bearer SECRET.
    #[arg(long, value_name = "GROUP/NAME")]
    pub bearer: Option<String>,
    /// Authorization: Basic, the user (or API key) secret; --pass for a password secret.
    #[arg(long, value_name = "GROUP/NAME")]
    pub basic: Option<String>,
    /// The password secret of --basic.
    #[arg(long, value_name = "GROUP/NAME", requires = "basic")]
    pub pass: Option<String>,
    /// A header and its value template: 'x-api-key={{group/name}}'.
    #[arg(long, value_name = "NAME=TEMPLATE")]
    pub header: Option<String>,
    /// A query parameter: 'api_key=group/name'.
    #[arg(long, value_name = "PARAM=GROUP/NAME")]
    pub query: Option<String>,
    /// Allow the hosts through with nothing injected.
    #[arg(long)]
    pub passthrough: bool,
    /// Pass CONNECT through without interception (the agent sees the upstream's own certificate); nothing is injected.
    #[arg(long, conflicts_with_all = ["substitute", "placeholders", "paths", "methods", "allow_http"])]
    pub tunnel: bool,
    /// AWS Signature Version 4: the broker signs each request with --access-key-id and --secret-access-key.
    #[arg(long, requires = "access_key_id")]
    pub sigv4: bool,
    /// The secret holding the AWS access key id (--sigv4, --template s3|bedrock).
    #[arg(long, value_name = "GROUP/NAME", requires = "secret_access_key")]
    pub access_key_id: Option<String>,
    /// The secret holding the AWS secret access key.
    #[arg(long, value_name = "GROUP/NAME", requires = "access_key_id")]
    pub secret_access_key: Option<String>,
    /// The secret holding an AWS session token (temporary credentials).
    #[arg(long, value_name = "GROUP/NAME", requires = "access_key_id")]
    pub session_token: Option<String>,
    /// The AWS region signed for (--sigv4: default read from the host).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// The AWS service name signed for (--sigv4: default read from the host).
    #[arg(long, value_name = "NAME", requires = "sigv4")]
    pub aws_service: Option<String>,
    /// A host pattern (api.example.com, *.example.com, host:port); repeatable. Templates bring their own.
    #[arg(long = "host", value_name = "PATTERN")]
    pub hosts: Vec<String>,
    /// A path prefix the service covers; repeatable (default: all).
    #[arg(long = "path", value_name = "PREFIX")]
    pub paths: Vec<String>,
    /// A method the service allows; repeatable (default: all).
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
    /// A secret that `{{secret:group/name}}` placeholders may name; repeatable.
    #[arg(long = "substitute", value_name = "GROUP/NAME")]
    pub substitute: Vec<String>,
    /// A placeholder string replaced by a secret: 'PLACEHOLDER=group/name'; repeatable.
    #[arg(long = "placeholder", value_name = "STRING=GROUP/NAME")]
    pub placeholders: Vec<String>,
    /// Allow plain-http:// requests to these hosts.
    #[arg(long)]
    pub allow_http: bool,
    /// Rate limits (replacing a service without them keeps its old ones).
    #[command(flatten)]
    pub limits: LimitArgs,
}
