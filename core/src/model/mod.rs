//! The vault's files as data: `config.yaml`, `manifest.yaml`, `manifest.sig`
//! and each secret's `.meta.yaml`, with the signatures over them.

use serde::{Deserialize, Serialize};

mod config;
mod manifest;
mod meta;

pub use crate::yaml::{MAX_YAML_BYTES, MAX_YAML_DEPTH, check_yaml_shape, parse_yaml, to_yaml};
pub use config::{BrokerConfig, Config, DEFAULT_MAX_TTL, UiConfig, valid_vault_id};
pub use manifest::{
    AgentEntry, BrokerEntry, GroupEntry, Manifest, ManifestSig, OwnerEntry, Revocations,
};
pub use meta::{MetaFields, MetaTrust, SecretMeta};

/// The on-disk format this build writes: 2, group keyrings and lazy
/// revocation (see [`crate::keyring`]).
pub const FORMAT_VERSION: u32 = 2;

/// The oldest format this build reads. An owner's first write moves a
/// version 1 vault to [`FORMAT_VERSION`] (`writer::migrate`).
pub const OLDEST_FORMAT: u32 = 1;

/// Whether this build reads format `v`.
pub fn format_supported(v: u32) -> bool {
    (OLDEST_FORMAT..=FORMAT_VERSION).contains(&v)
}

/// What an agent may do with a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decrypt the group's secrets with its own key.
    Read,
    /// Have them injected by the broker; never see them.
    Use,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Read => "read",
            Mode::Use => "use",
        })
    }
}

/// Text from a vault file (a description, a name) made safe to print: every
/// control character (terminal escapes, carriage returns, newlines, C1
/// controls) and every bidirectional override is shown escaped (`\u{1b}`,
/// `\n`), so a file cannot move the cursor, clear the screen or fake a line
/// of output.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}
