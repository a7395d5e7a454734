//! `config.yaml`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::yaml::parse_yaml;

use super::{FORMAT_VERSION, format_supported};

/// `config.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// On-disk format version.
    pub format: u32,
    /// The vault's random id; names its key directory under `$AGENT_VAULT_HOME`.
    pub vault_id: String,
    /// Secrets expiring within this many days are reported by `check`.
    #[serde(default = "default_warn_days")]
    pub expiry_warning_days: u32,
    /// Whether reads pull from the remote first (at most once per interval).
    #[serde(default = "default_true")]
    pub auto_pull: bool,
    /// The interval of automatic pulls.
    #[serde(default = "default_pull_interval")]
    pub pull_interval_seconds: u64,
    /// How long an automatic pull may take before the read goes on without it.
    #[serde(default = "default_pull_timeout")]
    pub pull_timeout_seconds: u64,
    /// The longest a broker token may live.
    #[serde(default = "default_max_ttl")]
    pub token_max_ttl_seconds: i64,
    /// Settings of the owner's page (`agent-vault ui`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<UiConfig>,
    /// Settings of the broker (`agent-vault proxy`); its flags win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerConfig>,
}

/// `broker:` in `config.yaml`: how a broker on another machine follows the
/// vault's remote. `proxy --pull-interval` and `--max-stale` win. This file
/// is not signed: someone with push access can change it, so a broker that
/// must fail closed whatever the repository says takes its flags.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// How often the broker fetches and fast-forwards its clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_interval_seconds: Option<u64>,
    /// After this long without reaching the remote, the broker refuses
    /// requests (fails closed) until it reaches it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stale_seconds: Option<u64>,
}

/// `ui:` in `config.yaml`: the owner's page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// Where to POST a Slack-compatible message for each new proposal
    /// (`ui --webhook` wins). This file is in the repository every agent
    /// clones: a webhook whose URL is itself a secret belongs on the
    /// command line or in `AGENT_VAULT_UI_WEBHOOK` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// The longest a token may live unless `config.yaml` says otherwise.
pub const DEFAULT_MAX_TTL: i64 = 24 * 3600;

fn default_max_ttl() -> i64 {
    DEFAULT_MAX_TTL
}

fn default_warn_days() -> u32 {
    30
}

fn default_true() -> bool {
    true
}

fn default_pull_interval() -> u64 {
    60
}

fn default_pull_timeout() -> u64 {
    5
}

/// Whether a vault id is safe to use as a directory name.
pub fn valid_vault_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Config {
    /// Parses and validates `config.yaml`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let c: Config = parse_yaml(path, bytes)?;
        if !format_supported(c.format) {
            return Err(Error::corrupt(
                path,
                format!(
                    "format version {} is not supported by this agent-vault (it reads up to {FORMAT_VERSION})",
                    c.format
                ),
            ));
        }
        if !valid_vault_id(&c.vault_id) {
            return Err(Error::corrupt(path, "invalid vault_id"));
        }
        Ok(c)
    }
}
