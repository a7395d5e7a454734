//! The vault's files as data: `config.yaml`, `manifest.yaml`, `manifest.sig`
//! and each secret's `.meta.yaml`, with the signatures over them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, OwnerSigningKey};
use crate::error::{Error, Result};
use crate::names::{AgentName, GroupName, OwnerName, SecretPath};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

const MANIFEST_DOMAIN: &str = "agent-vault/v1/manifest";
const SECRET_DOMAIN: &str = "agent-vault/v1/secret";
const SECRET_DOMAIN_V2: &str = "agent-vault/v2/secret";

/// The largest YAML document this build parses (a vault file of any kind).
pub const MAX_YAML_BYTES: usize = 4 << 20;
/// The deepest nesting of collections a YAML document may have. Our files
/// nest five levels at most; the limit only keeps a hostile document from
/// costing the parser time before anything is verified.
pub const MAX_YAML_DEPTH: usize = 32;

/// Parses YAML, naming the file in the error. The document's size and
/// nesting are bounded before the parser sees it ([`check_yaml_shape`]).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    check_yaml_shape(bytes).map_err(|why| Error::corrupt(path, why))?;
    serde_yaml_ng::from_slice(bytes).map_err(|e| Error::corrupt(path, format!("malformed: {e}")))
}

/// A cheap, linear pre-scan of a YAML document that refuses one larger than
/// [`MAX_YAML_BYTES`] or nested deeper than [`MAX_YAML_DEPTH`] (block
/// indentation levels, compact `- ` / `? ` entries and flow brackets
/// together), before the real parser spends time on it. It over-counts
/// rather than under-counts: a plain scalar such as `a:[b` may count as
/// nesting, which no file of ours has.
pub fn check_yaml_shape(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() > MAX_YAML_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_YAML_BYTES} this build reads",
            bytes.len()
        ));
    }
    let too_deep = || format!("nested more than {MAX_YAML_DEPTH} levels deep");
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut quote = Quote::None;
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut block_scalar: Option<usize> = None;
    for line in bytes.split(|&b| b == b'\n') {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let rest = &line[indent..];
        let blank = rest.iter().all(u8::is_ascii_whitespace);
        if let Some(opened) = block_scalar {
            if blank || indent > opened {
                continue;
            }
            block_scalar = None;
        }
        if quote == Quote::None && (blank || rest.starts_with(b"#")) {
            continue;
        }
        let mut depth = indents.len();
        let mut i = 0;
        if quote == Quote::None && flow == 0 {
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            depth = indents.len();
            // Compact nesting on one line: `- - - x`, `? - x`.
            while i + 1 < rest.len() && matches!(rest[i], b'-' | b'?') && rest[i + 1] == b' ' {
                depth += 1;
                i += 2;
                while rest.get(i) == Some(&b' ') {
                    i += 1;
                }
            }
        }
        if depth + flow > MAX_YAML_DEPTH {
            return Err(too_deep());
        }
        let mut prev: Option<u8> = if i == 0 { None } else { Some(b' ') };
        let mut last_token_start = i;
        while i < rest.len() {
            let b = rest[i];
            match quote {
                Quote::Single => {
                    if b == b'\'' {
                        if rest.get(i + 1) == Some(&b'\'') {
                            i += 1; // `''` is a quote inside the string
                        } else {
                            quote = Quote::None;
                        }
                    }
                }
                Quote::Double => {
                    if b == b'\\' {
                        i += 1;
                    } else if b == b'"' {
                        quote = Quote::None;
                    }
                }
                Quote::None => {
                    if b == b'#' && matches!(prev, None | Some(b' ' | b'\t')) {
                        break;
                    }
                    let token_start =
                        matches!(prev, None | Some(b' ' | b'\t' | b'[' | b'{' | b',' | b':'));
                    if token_start && b != b' ' {
                        last_token_start = i;
                    }
                    match b {
                        b'\'' if token_start => quote = Quote::Single,
                        b'"' if token_start => quote = Quote::Double,
                        b'[' | b'{' if token_start => {
                            flow += 1;
                            if depth + flow > MAX_YAML_DEPTH {
                                return Err(too_deep());
                            }
                        }
                        b']' | b'}' if flow > 0 => flow -= 1,
                        _ => {}
                    }
                }
            }
            prev = Some(b);
            i += 1;
        }
        if quote == Quote::None && flow == 0 {
            // A block scalar (`key: |`, `- >-`): its lines are text, not nesting.
            let token = &rest[last_token_start.min(rest.len())..i.min(rest.len())];
            let token = token.trim_ascii_end();
            if matches!(token.first(), Some(b'|' | b'>'))
                && token[1..]
                    .iter()
                    .all(|c| matches!(c, b'+' | b'-' | b'0'..=b'9'))
            {
                block_scalar = Some(indent);
            }
        }
    }
    Ok(())
}

/// Serializes to YAML.
pub fn to_yaml<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain data structures cannot fail.
    serde_yaml_ng::to_string(value)
        .unwrap_or_default()
        .into_bytes()
}

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
        if c.format != FORMAT_VERSION {
            return Err(Error::corrupt(
                path,
                format!(
                    "format version {} is not supported by this agent-vault (it reads {FORMAT_VERSION})",
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

/// An owner in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerEntry {
    /// age recipient.
    pub recipient: String,
    /// Ed25519 public key (base64) derived from the owner's age identity.
    pub signing_key: String,
}

/// An agent in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// age recipient.
    pub recipient: String,
}

/// A group in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// The group key's age recipient; every secret of the group is encrypted to it.
    pub recipient: String,
    /// Incremented each time the group key is rotated.
    pub generation: u64,
}

/// `manifest.yaml`: who is who and who may do what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// On-disk format version.
    pub format: u32,
    /// Must equal `config.yaml`'s.
    pub vault_id: String,
    /// Owners by name.
    pub owners: BTreeMap<OwnerName, OwnerEntry>,
    /// Agents by name.
    #[serde(default)]
    pub agents: BTreeMap<AgentName, AgentEntry>,
    /// Groups by name.
    #[serde(default)]
    pub groups: BTreeMap<GroupName, GroupEntry>,
    /// Grants: agent → group → mode.
    #[serde(default)]
    pub grants: BTreeMap<AgentName, BTreeMap<GroupName, Mode>>,
    /// The broker, once `broker init` made it: it can open the groups some
    /// agent may `use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerEntry>,
    /// Revoked broker tokens.
    #[serde(default, skip_serializing_if = "Revocations::is_empty")]
    pub revoked: Revocations,
}

/// Revoked tokens: by id, by agent (issued before a time), by session, or all
/// issued before a time. Kept in the signed manifest, so a push cannot undo one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    /// Token ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// Agent → tokens issued at or before this time (Unix seconds) are revoked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, i64>,
    /// Session ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<String>,
    /// Every token issued at or before this time is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_before: Option<i64>,
}

impl Revocations {
    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        *self == Revocations::default()
    }

    /// Whether a token is revoked, given its id, its agent, its session (if
    /// any) and when it was issued (Unix seconds).
    pub fn covers(&self, id: &str, agent: &str, session: Option<&str>, iat: i64) -> bool {
        self.tokens.iter().any(|t| t == id)
            || self.agents.get(agent).is_some_and(|t| iat <= *t)
            || session.is_some_and(|s| self.sessions.iter().any(|x| x == s))
            || self.all_before.is_some_and(|t| iat <= t)
    }
}

/// The broker in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerEntry {
    /// The broker's age recipient.
    pub recipient: String,
    /// SHA-256 (hex) of `broker/ca.crt`: the signed manifest vouches for the CA.
    pub ca_sha256: String,
}

impl Manifest {
    /// The mode an agent holds on a group, if any.
    pub fn grant(&self, agent: &AgentName, group: &GroupName) -> Option<Mode> {
        self.grants.get(agent).and_then(|g| g.get(group)).copied()
    }

    /// Agents holding `read` on the group.
    pub fn readers(&self, group: &GroupName) -> impl Iterator<Item = &AgentName> {
        self.grants
            .iter()
            .filter(move |(_, g)| g.get(group) == Some(&Mode::Read))
            .map(|(a, _)| a)
    }

    /// Every recipient the group key must be encrypted to: the owners and
    /// the agents that may read the group.
    pub fn group_key_recipients(&self, group: &GroupName) -> Result<Vec<crypto::Recipient>> {
        let mut out = Vec::new();
        for o in self.owners.values() {
            out.push(o.recipient.parse()?);
        }
        for a in self.readers(group) {
            let entry = self
                .agents
                .get(a)
                .ok_or_else(|| Error::AgentNotFound(a.to_string()))?;
            out.push(entry.recipient.parse()?);
        }
        if let Some(b) = &self.broker
            && self.used(group)
        {
            out.push(b.recipient.parse()?);
        }
        Ok(out)
    }

    /// Whether some agent may `use` the group (so the broker must open it).
    pub fn used(&self, group: &GroupName) -> bool {
        self.grants
            .values()
            .any(|g| g.get(group) == Some(&Mode::Use))
    }

    /// The group entry or a not-found error.
    pub fn group(&self, group: &GroupName) -> Result<&GroupEntry> {
        self.groups
            .get(group)
            .ok_or_else(|| Error::GroupNotFound(group.to_string()))
    }

    /// Checks internal consistency: names referenced by grants exist, keys parse.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if self.format != FORMAT_VERSION {
            return Err(Error::corrupt(path, "unsupported format version"));
        }
        if self.owners.is_empty() {
            return Err(Error::corrupt(path, "no owners"));
        }
        for (a, gs) in &self.grants {
            if !self.agents.contains_key(a) {
                return Err(Error::corrupt(path, format!("grant for unknown agent {a}")));
            }
            for g in gs.keys() {
                if !self.groups.contains_key(g) {
                    return Err(Error::corrupt(path, format!("grant on unknown group {g}")));
                }
            }
        }
        let recipients = self
            .owners
            .values()
            .map(|o| &o.recipient)
            .chain(self.agents.values().map(|a| &a.recipient))
            .chain(self.broker.iter().map(|b| &b.recipient))
            .chain(self.groups.values().map(|g| &g.recipient));
        for r in recipients {
            r.parse::<crypto::Recipient>()
                .map_err(|_| Error::corrupt(path, format!("invalid recipient {r:?}")))?;
        }
        Ok(())
    }
}

/// `manifest.sig`: an owner's signature over the manifest and services list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSig {
    /// The signing owner's name.
    pub signer: OwnerName,
    /// The owner's Ed25519 public key, base64.
    pub signing_key: String,
    /// Ed25519 signature, base64.
    pub signature: String,
}

fn manifest_message(vault_id: &str, manifest: &[u8], services: &[u8]) -> Vec<u8> {
    format!(
        "{vault_id}\0{}\0{}",
        crypto::sha256_hex(manifest),
        crypto::sha256_hex(services)
    )
    .into_bytes()
}

impl ManifestSig {
    /// Signs the manifest and services bytes.
    pub fn sign(
        signer: &OwnerName,
        key: &OwnerSigningKey,
        vault_id: &str,
        manifest: &[u8],
        services: &[u8],
    ) -> Self {
        ManifestSig {
            signer: signer.clone(),
            signing_key: key.public(),
            signature: key.sign(
                MANIFEST_DOMAIN,
                &manifest_message(vault_id, manifest, services),
            ),
        }
    }

    /// Whether the signature verifies over these bytes (the signer's trust is
    /// checked separately).
    pub fn verifies(&self, vault_id: &str, manifest: &[u8], services: &[u8]) -> bool {
        crypto::verify(
            &self.signing_key,
            MANIFEST_DOMAIN,
            &manifest_message(vault_id, manifest, services),
            &self.signature,
        )
    }
}

/// A secret's `.meta.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretMeta {
    /// When the secret was first set.
    pub created: jiff::Timestamp,
    /// When its value last changed.
    pub updated: jiff::Timestamp,
    /// When it expires, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<jiff::Timestamp>,
    /// A human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// SHA-256 (hex) of the `.age` file's bytes.
    pub ciphertext_sha256: String,
    /// The group key generation the value is encrypted to.
    pub generation: u64,
    /// The signing owner's Ed25519 public key, base64.
    pub signing_key: String,
    /// Signature over (vault id, path, ciphertext hash, generation) and, from
    /// `signed: 2` on, the timestamps, expiry and description too.
    pub signature: String,
    /// What [`SecretMeta::signature`] covers: absent (1) in metadata written
    /// before agent-vault 0.3, whose description and expiry are unverified;
    /// 2 when every field is signed.
    #[serde(default = "legacy_signed", skip_serializing_if = "is_legacy_signed")]
    pub signed: u32,
}

fn legacy_signed() -> u32 {
    1
}
fn is_legacy_signed(v: &u32) -> bool {
    *v == 1
}

/// The metadata signature version this build writes.
const META_SIGNED: u32 = 2;

fn secret_message(vault_id: &str, path: &SecretPath, hash: &str, generation: u64) -> Vec<u8> {
    format!("{vault_id}\0{path}\0{hash}\0{generation}").into_bytes()
}

/// The version-2 message: the version-1 message, then every other field,
/// each delimited or length-prefixed so no two metadata share a message.
fn secret_message_v2(
    vault_id: &str,
    path: &SecretPath,
    hash: &str,
    generation: u64,
    f: &MetaFields,
) -> Vec<u8> {
    let mut m = secret_message(vault_id, path, hash, generation);
    let expires = f
        .expires
        .map(|t| t.as_nanosecond().to_string())
        .unwrap_or_else(|| "-".into());
    m.extend_from_slice(
        format!(
            "\0{}\0{}\0{expires}\0",
            f.created.as_nanosecond(),
            f.updated.as_nanosecond()
        )
        .as_bytes(),
    );
    match &f.description {
        None => m.push(b'-'),
        Some(d) => {
            m.extend_from_slice(format!("{}:", d.len()).as_bytes());
            m.extend_from_slice(d.as_bytes());
        }
    }
    m
}

/// The unsigned part of a secret's metadata.
#[derive(Debug, Clone)]
pub struct MetaFields {
    /// When the secret was first set.
    pub created: jiff::Timestamp,
    /// When its value last changed.
    pub updated: jiff::Timestamp,
    /// Expiry.
    pub expires: Option<jiff::Timestamp>,
    /// Description.
    pub description: Option<String>,
}

/// How far a secret's metadata is covered by an owner's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaTrust {
    /// Every field is signed (`signed: 2`).
    Signed,
    /// Old metadata: the value's hash is signed, the description and expiry
    /// are not; an owner's next write of the secret (or `repair`) signs them.
    Legacy,
}

impl SecretMeta {
    /// Signs new metadata for `ciphertext`, covering every field.
    pub fn sign(
        fields: MetaFields,
        key: &OwnerSigningKey,
        vault_id: &str,
        path: &SecretPath,
        ciphertext: &[u8],
        generation: u64,
    ) -> Self {
        let hash = crypto::sha256_hex(ciphertext);
        let signature = key.sign(
            SECRET_DOMAIN_V2,
            &secret_message_v2(vault_id, path, &hash, generation, &fields),
        );
        SecretMeta {
            created: fields.created,
            updated: fields.updated,
            expires: fields.expires,
            description: fields.description,
            ciphertext_sha256: hash,
            generation,
            signing_key: key.public(),
            signature,
            signed: META_SIGNED,
        }
    }

    /// The descriptive fields.
    pub fn fields(&self) -> MetaFields {
        MetaFields {
            created: self.created,
            updated: self.updated,
            expires: self.expires,
            description: self.description.clone(),
        }
    }

    /// Checks the signature over the metadata as it stands (with its stored
    /// ciphertext hash, so without reading the value), and that an owner of
    /// `owners` made it. For `list` and `check`; a read uses [`Self::verify`].
    pub fn verify_signature(
        &self,
        vault_id: &str,
        path: &SecretPath,
        owners: &Manifest,
    ) -> Result<MetaTrust> {
        let fail = |reason: &str| Error::UnsignedSecret {
            path: path.to_string(),
            reason: reason.to_owned(),
        };
        if !self.signed_by_owner_of(owners) {
            return Err(fail("its signing key is not an owner's"));
        }
        let (domain, msg, trust) = match self.signed {
            1 => (
                SECRET_DOMAIN,
                secret_message(vault_id, path, &self.ciphertext_sha256, self.generation),
                MetaTrust::Legacy,
            ),
            2 => (
                SECRET_DOMAIN_V2,
                secret_message_v2(
                    vault_id,
                    path,
                    &self.ciphertext_sha256,
                    self.generation,
                    &self.fields(),
                ),
                MetaTrust::Signed,
            ),
            _ => {
                return Err(fail(
                    "its signature is of a kind this agent-vault does not know",
                ));
            }
        };
        if !crypto::verify(&self.signing_key, domain, &msg, &self.signature) {
            return Err(fail(
                "bad signature (its metadata — value hash, expiry or description — was changed \
                 without an owner's key)",
            ));
        }
        Ok(trust)
    }

    /// Whether the key that signed this metadata is an owner's in `owners`.
    fn signed_by_owner_of(&self, owners: &Manifest) -> bool {
        owners
            .owners
            .values()
            .any(|o| o.signing_key == self.signing_key)
    }

    /// Verifies the metadata against the ciphertext, the owner keys and the
    /// generations that are acceptable now. Says whether the description
    /// and expiry are signed too ([`MetaTrust`]).
    pub fn verify(
        &self,
        vault_id: &str,
        path: &SecretPath,
        ciphertext: &[u8],
        owners: &Manifest,
        generations: &[u64],
    ) -> Result<MetaTrust> {
        let fail = |reason: &str| Error::UnsignedSecret {
            path: path.to_string(),
            reason: reason.to_owned(),
        };
        if !self.signed_by_owner_of(owners) {
            return Err(fail("its signing key is not an owner's"));
        }
        if crypto::sha256_hex(ciphertext) != self.ciphertext_sha256 {
            return Err(fail("the encrypted file does not match its signed hash"));
        }
        if !generations.contains(&self.generation) {
            return Err(fail("it is encrypted to an outdated group key"));
        }
        self.verify_signature(vault_id, path, owners)
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
