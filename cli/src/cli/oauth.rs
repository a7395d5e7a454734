//! The arguments of `oauth`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// OAuth credentials.
#[derive(Debug, Subcommand)]
pub enum OauthCommand {
    /// Store an OAuth credential; its refresh token is tried at the token endpoint at once and refused if the provider refuses it.
    Set(Box<OauthSetArgs>),
    /// The provider presets (--provider) and their endpoints.
    Presets,
    /// What is known of an OAuth credential (owner key): its client, and the broker's state (verified), never a token.
    Status {
        /// GROUP/NAME.
        path: String,
    },
}

/// Arguments of `oauth set`. Secrets come from files or standard input,
/// never from the command line.
#[derive(Debug, Args)]
pub struct OauthSetArgs {
    /// GROUP/NAME.
    pub path: String,
    /// A provider preset that fills in the URLs: github, google, slack, microsoft.
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// The client id.
    #[arg(long, value_name = "ID")]
    pub client_id: String,
    /// Read the client secret from this file (- for standard input); none for a public client.
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// Read the refresh token from this file (default: standard input).
    #[arg(long, value_name = "FILE")]
    pub refresh_token_file: Option<PathBuf>,
    /// The token endpoint (https://); from --provider if not given.
    #[arg(long, value_name = "URL", required_unless_present = "provider")]
    pub token_url: Option<String>,
    /// The authorization endpoint (https://), for connecting on the owner's page.
    #[arg(long, value_name = "URL")]
    pub authorization_url: Option<String>,
    /// A scope to ask for (repeat for more).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// What the credential is for.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Extra CA certificates (PEM) to trust for the token endpoint.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Allow a token endpoint on a private, loopback or link-local address.
    #[arg(long)]
    pub allow_private_endpoints: bool,
}
