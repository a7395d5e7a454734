//! `check`: everything that can be wrong with a vault, reported by kind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::crypto::{self, Identity};
use crate::error::Error as VaultError;
use crate::fsutil;
use crate::journal::Txn;
use crate::layout::{self, SecretFile};
use crate::model::{self, Manifest};
use crate::names::{AgentName, GroupName, ProposalId, SecretPath};
use crate::vault::{LOCAL_DIR, Vault};
use crate::vfs::{EntryType, Kind};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Needs action; `check` exits non-zero.
    Error,
    /// Worth knowing.
    Warning,
}

/// One thing `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code: `manifest-signature`, `unsigned-secret`, `expired`,
    /// `expiring`, `exposed` (set before a revocation: rotate it), `orphan`, `mismatch`, `missing`, `loose-permissions`,
    /// `half-finished`, `group-key`, `unsafe-file` (a link or special file
    /// below `.agent-vault`), `oversize`, `tracked-local` (git tracks an
    /// entry under `.agent-vault/.local/`), `foreign-journal`.
    pub kind: &'static str,
    /// The file, secret, agent or group concerned.
    pub subject: String,
    /// What is wrong, and what to do.
    pub message: String,
}

/// The result of `check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The vault id.
    pub vault_id: String,
    /// Secrets examined.
    pub secrets: usize,
    /// Findings, errors first.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

struct Findings(Vec<Finding>);

impl Findings {
    fn push(
        &mut self,
        severity: Severity,
        kind: &'static str,
        subject: impl ToString,
        message: impl Into<String>,
    ) {
        self.0.push(Finding {
            severity,
            kind,
            subject: subject.to_string(),
            message: message.into(),
        });
    }
}

/// Checks the vault. With the owner's identity, also checks that every
/// group key opens and matches the manifest.
pub fn check(vault: &Vault, owner: Option<&Identity>) -> CheckReport {
    let mut f = Findings(Vec::new());
    let tracked = local_state(vault, owner, &mut f);
    let Some(manifest) = read_manifest(vault, &mut f) else {
        return finish(vault, f.0, 0);
    };
    agents(vault, &manifest, &mut f);
    groups(vault, &manifest, owner, &mut f);
    let mut secrets = files(vault, &manifest, &mut f);
    secrets.sort();
    f.0.extend(each_secret(vault, &manifest, &secrets));
    if tracked.is_empty() {
        conflicts(vault, &mut f);
    }
    permissions(vault, &mut f);
    finish(vault, f.0, secrets.len())
}

/// `p` relative to the vault's root, for a finding's subject.
fn rel(vault: &Vault, p: &Path) -> String {
    p.strip_prefix(vault.root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Machine-private state that git tracks (then nothing under `.local/` is
/// trusted, so no journal is read, nor offered to `repair`), submodules,
/// and an interrupted operation's journal. Returns what git tracks under
/// `.local/`.
fn local_state(vault: &Vault, owner: Option<&Identity>, f: &mut Findings) -> Vec<String> {
    use Severity::Error;
    let tracked = match crate::vfs::tracked_local(vault.dir()) {
        Ok(t) => t,
        Err(e) => vec![e.to_string()],
    };
    for t in &tracked {
        f.push(Error, "tracked-local", t, crate::vfs::TRACKED_LOCAL);
    }
    match crate::vfs::tracked_gitlinks(vault.dir()) {
        Ok(gitlinks) => {
            for path in gitlinks {
                f.push(
                    Error,
                    "unsafe-file",
                    path,
                    "git tracks a submodule (gitlink) here, which no owner writes; remove it with `git rm`",
                );
            }
        }
        Err(e) => f.push(Error, "unsafe-file", rel(vault, vault.dir()), e.to_string()),
    }
    if tracked.is_empty() {
        journal(vault, owner, f);
    }
    tracked
}

/// An interrupted operation, and whether its journal is this owner's.
fn journal(vault: &Vault, owner: Option<&Identity>, f: &mut Findings) {
    use Severity::Error;
    match Txn::peek(vault) {
        Ok(None) => {}
        Ok(Some(op)) => {
            let verdict = owner.map(|id| Txn::read(vault, &id.signing_key().public()));
            match verdict {
                Some(Err(e)) => f.push(
                    Error,
                    "foreign-journal",
                    rel(vault, &vault.journal_path()),
                    e.to_string(),
                ),
                Some(Ok(_)) => f.push(
                    Error,
                    "half-finished",
                    &op,
                    format!(
                        "the operation `{op}` was interrupted; `agent-vault repair` (or any command that changes the vault) completes it"
                    ),
                ),
                None => f.push(
                    Error,
                    "half-finished",
                    &op,
                    format!(
                        "the operation `{op}` was interrupted; the owner whose command it was completes it with `agent-vault repair`"
                    ),
                ),
            }
        }
        Err(e) => f.push(
            Error,
            "unsafe-file",
            rel(vault, &vault.journal_path()),
            e.to_string(),
        ),
    }
}

/// The manifest: verified if possible, else parsed as is for the rest.
fn read_manifest(vault: &Vault, f: &mut Findings) -> Option<Manifest> {
    match vault.manifest() {
        Ok(m) => Some(m),
        Err(e) => {
            let kind = match e {
                VaultError::Refused { .. } => "unsafe-file",
                _ => "manifest-signature",
            };
            f.push(Severity::Error, kind, "manifest.yaml", e.to_string());
            vault
                .fs()
                .read(&vault.manifest_path(), Kind::Manifest)
                .ok()
                .and_then(|b| model::parse_yaml(&vault.manifest_path(), &b).ok())
        }
    }
}

/// Agents named by the manifest have their public key (the one the
/// manifest names) and an escrowed private key.
fn agents(vault: &Vault, manifest: &Manifest, f: &mut Findings) {
    use Severity::{Error, Warning};
    let fs = vault.fs();
    for (a, entry) in &manifest.agents {
        let dir = vault.agent_dir(a);
        match fs.read_optional(&dir.join("public.key"), Kind::PublicKey) {
            Ok(Some(b)) if String::from_utf8_lossy(&b).trim() == entry.recipient => {}
            Ok(Some(_)) => f.push(
                Error,
                "mismatch",
                rel(vault, &dir.join("public.key")),
                "differs from the agent's recipient in the manifest",
            ),
            Err(e @ VaultError::Refused { .. }) => f.push(
                Error,
                "unsafe-file",
                rel(vault, &dir.join("public.key")),
                e.to_string(),
            ),
            _ => f.push(
                Error,
                "missing",
                rel(vault, &dir.join("public.key")),
                format!("agent {a} has no public key file"),
            ),
        }
        if !matches!(fs.entry_type(&dir.join("private.key.escrow")), Ok(Some(_))) {
            f.push(
                Warning,
                "missing",
                rel(vault, &dir.join("private.key.escrow")),
                format!("agent {a}'s key is not escrowed; `restore-agent` cannot recover it"),
            );
        }
    }
}

/// Groups named by the manifest have their key file; with the owner's
/// identity, each key opens and matches the manifest's recipient.
fn groups(vault: &Vault, manifest: &Manifest, owner: Option<&Identity>, f: &mut Findings) {
    use Severity::Error;
    for (g, entry) in &manifest.groups {
        let p = vault.group_key_path(g);
        match (vault.fs().read_optional(&p, Kind::GroupKey), owner) {
            (Err(e @ VaultError::Refused { .. }), _) => {
                f.push(Error, "unsafe-file", rel(vault, &p), e.to_string())
            }
            (Ok(None), _) | (Err(_), _) => f.push(
                Error,
                "missing",
                rel(vault, &p),
                format!("group {g} has no key file"),
            ),
            (Ok(Some(ct)), Some(id)) => match crypto::decrypt_identity(&[id], &ct, &p) {
                Ok(gid) if gid.recipient().as_string() == entry.recipient => {}
                Ok(_) => f.push(
                    Error,
                    "group-key",
                    rel(vault, &p),
                    format!("group {g}'s key does not match its recipient in the manifest"),
                ),
                Err(e) => f.push(Error, "group-key", rel(vault, &p), e.to_string()),
            },
            _ => {}
        }
    }
}

/// Every file under `.agent-vault` is accounted for, at any depth: links,
/// special files, oversize files and orphans are reported. Returns the
/// secrets found.
fn files(vault: &Vault, manifest: &Manifest, f: &mut Findings) -> Vec<SecretPath> {
    use Severity::{Error, Warning};
    let fs = vault.fs();
    let mut found = Found::default();
    let mut stack = vec![vault.dir().to_owned()];
    while let Some(dir) = stack.pop() {
        // Links are never followed: a linked directory is reported, not walked.
        let entries = match fs.read_dir(&dir) {
            Ok(Some(entries)) => entries,
            Ok(None) => continue,
            Err(e) => {
                f.push(Error, "unsafe-file", rel(vault, &dir), e.to_string());
                continue;
            }
        };
        for (name, t) in entries {
            let p = dir.join(&name);
            let is_dir = t == EntryType::Dir;
            let r = p.strip_prefix(vault.dir()).unwrap_or(&p).to_path_buf();
            let parts: Vec<&str> = r.iter().filter_map(|c| c.to_str()).collect();
            if matches!(t, EntryType::Symlink | EntryType::Special) {
                f.push(Error, "unsafe-file", rel(vault, &p), t.refusal());
                continue;
            }
            if parts.first() == Some(&LOCAL_DIR) {
                // Machine-private: only links and special files are reported.
                if is_dir {
                    stack.push(p);
                }
                continue;
            }
            if !is_dir && oversize(vault, &p, &r, f) {
                continue;
            }
            if is_dir {
                if known_dir(manifest, &parts) {
                    stack.push(p);
                } else {
                    f.push(
                        Warning,
                        "orphan",
                        rel(vault, &p),
                        "a directory the manifest does not account for",
                    );
                }
                continue;
            }
            if !found.file(manifest, vault.layout_format(), &parts, &p) {
                f.push(Warning, "orphan", rel(vault, &p), orphan_reason(&parts));
            }
        }
    }
    for m in &found.metas {
        let s = m.to_string_lossy();
        let age = PathBuf::from(format!(
            "{}.age",
            s.strip_suffix(".meta.yaml").unwrap_or(&s)
        ));
        if !found.ages.contains(&age) {
            f.push(
                Warning,
                "orphan",
                rel(vault, m),
                "metadata without a secret",
            );
        }
    }
    found.secrets
}

/// Whether the file at `p` (`r` below the vault directory) is larger than
/// a file of its kind may be; reported if so.
fn oversize(vault: &Vault, p: &Path, r: &Path, f: &mut Findings) -> bool {
    let cap = Kind::of(r).cap();
    if let Ok(md) = std::fs::symlink_metadata(p)
        && md.is_file()
        && md.len() > cap
    {
        f.push(
            Severity::Error,
            "oversize",
            rel(vault, p),
            format!(
                "{} bytes: more than the {cap} a file of its kind may hold; readers refuse it",
                md.len()
            ),
        );
        return true;
    }
    false
}

/// Whether a directory (by its parts below the vault directory) is one the
/// manifest accounts for.
fn known_dir(manifest: &Manifest, parts: &[&str]) -> bool {
    match parts {
        ["agents"] | ["groups"] | ["secrets"] | ["broker"] | ["decisions"] => true,
        ["decisions", a] => a.parse::<AgentName>().is_ok(), // proposals' decisions
        ["agents", a] => a
            .parse::<AgentName>()
            .map(|a| manifest.agents.contains_key(&a))
            .unwrap_or(false),
        ["secrets", g, ..] => g
            .parse::<GroupName>()
            .map(|g| manifest.groups.contains_key(&g))
            .unwrap_or(false),
        _ => false,
    }
}

/// Why a file the manifest does not account for is there, as far as its
/// name tells.
fn orphan_reason(parts: &[&str]) -> &'static str {
    let name = parts.last().copied().unwrap_or("");
    if name.starts_with(fsutil::TEMP_PREFIX) {
        "an unfinished write left by an interrupted command; `agent-vault repair` removes it"
    } else if name.ends_with(".key.age.next") {
        "a rotated group key of an interrupted operation; `agent-vault repair` settles it"
    } else if parts.first() == Some(&"secrets") && name.ends_with(".age") | name.ends_with(".yaml")
    {
        "not where this vault's layout puts a secret of that name: never read as one"
    } else {
        "a file the manifest does not account for"
    }
}

/// The secrets and metadata files met on the walk.
#[derive(Default)]
struct Found {
    secrets: Vec<SecretPath>,
    metas: BTreeSet<PathBuf>,
    ages: BTreeSet<PathBuf>,
}

impl Found {
    /// Whether the file at `p` (by its parts below the vault directory) is
    /// one the manifest accounts for; secrets and metadata are noted.
    fn file(&mut self, manifest: &Manifest, format: u32, parts: &[&str], p: &Path) -> bool {
        let name = parts.last().copied().unwrap_or("");
        match parts {
            ["config.yaml"]
            | ["manifest.yaml"]
            | ["manifest.sig"]
            | ["services.yaml"]
            | [".gitignore"]
            | [".gitattributes"] => true,
            ["agents", _, "public.key"] | ["agents", _, "private.key.escrow"] => true,
            ["decisions", _, f] => ProposalId::of_yaml_file(f).is_some(),
            [
                "broker",
                "public.key" | "private.key.escrow" | "ca.crt" | "ca.key.age" | "token.key.age",
            ] => manifest.broker.is_some(),
            ["groups", file] => file
                .strip_suffix(".key.age")
                .and_then(|g| g.parse::<GroupName>().ok())
                .is_some_and(|g| manifest.groups.contains_key(&g)),
            ["secrets", _, ..] if name.starts_with(fsutil::TEMP_PREFIX) => false,
            // Only where this vault's layout puts the name (not another
            // bucket, not the other format's place): never read otherwise.
            // (Each path is met once: `insert` answers true.)
            ["secrets", rest @ ..] => match layout::placed(format, &rest.join("/")) {
                Some((sp, SecretFile::Value)) => {
                    self.secrets.push(sp);
                    self.ages.insert(p.to_owned())
                }
                Some((_, SecretFile::Meta)) => self.metas.insert(p.to_owned()),
                None => false,
            },
            _ => false,
        }
    }
}

/// Each secret (in parallel): signed by an owner, current generation,
/// expiry.
fn each_secret(vault: &Vault, manifest: &Manifest, secrets: &[SecretPath]) -> Vec<Finding> {
    let now = jiff::Timestamp::now();
    let warn_after = now
        .checked_add(jiff::SignedDuration::from_hours(
            24 * i64::from(vault.config().expiry_warning_days),
        ))
        .unwrap_or(now);
    let per_secret: Vec<Vec<Finding>> = secrets
        .par_iter()
        .map(|sp| secret(vault, manifest, sp, now, warn_after))
        .collect();
    per_secret.into_iter().flatten().collect()
}

/// One secret: its file, its metadata's signature, its expiry.
fn secret(
    vault: &Vault,
    manifest: &Manifest,
    sp: &SecretPath,
    now: jiff::Timestamp,
    warn_after: jiff::Timestamp,
) -> Vec<Finding> {
    use Severity::{Error, Warning};
    let mut out = Findings(Vec::new());
    let ct = match vault.fs().read(&vault.secret_age_path(sp), Kind::Secret) {
        Ok(b) => b,
        Err(e @ VaultError::Refused { .. }) => {
            out.push(Error, "unsafe-file", sp, e.to_string());
            return out.0;
        }
        Err(e) => {
            out.push(Error, "missing", sp, e.to_string());
            return out.0;
        }
    };
    let meta = match vault.secret_meta(sp) {
        Ok(m) => m,
        Err(e @ VaultError::Refused { .. }) => {
            out.push(Error, "unsafe-file", sp, e.to_string());
            return out.0;
        }
        Err(_) => {
            out.push(
                Error,
                "unsigned-secret",
                sp,
                "its metadata file is missing or malformed; `get` refuses it",
            );
            return out.0;
        }
    };
    let group = manifest.groups.get(sp.group());
    let gens = group.map(|g| g.generations()).unwrap_or_default();
    if group.is_some_and(|g| meta.generation < g.generation) {
        let why = "set before a revocation of its group: rotate it upstream, then `set` it again";
        out.push(Warning, "exposed", sp, why);
    }
    match meta.verify(vault.id(), sp, &ct, manifest, &gens) {
        Err(e) => out.push(
            Error,
            "unsigned-secret",
            sp,
            format!("{e}; `get` refuses it"),
        ),
        Ok(crate::model::MetaTrust::Legacy) => out.push(
            Warning,
            "unsigned-metadata",
            sp,
            "its description and expiry are not covered by an owner's signature \
             (metadata written before 0.3); an owner's `agent-vault repair` signs them",
        ),
        Ok(crate::model::MetaTrust::Signed) => {}
    }
    if let Some(exp) = meta.expires {
        if exp <= now {
            out.push(Error, "expired", sp, format!("expired {exp}"));
        } else if exp <= warn_after {
            out.push(Warning, "expiring", sp, format!("expires {exp}"));
        }
    }
    out.0
}

/// Secrets changed on both sides of a merge.
fn conflicts(vault: &Vault, f: &mut Findings) {
    if let Ok(unresolved) = crate::git::merge::unresolved(vault) {
        for s in unresolved {
            f.push(
                Severity::Warning,
                "conflict",
                &s,
                format!("changed on both sides of a merge; ours is kept: `agent-vault resolve {s} --ours` or `--theirs`"),
            );
        }
    }
}

/// Key files others can read.
fn permissions(vault: &Vault, f: &mut Findings) {
    for (p, mode) in vault.keys().loose_permissions(vault.id()) {
        f.push(
            Severity::Error,
            "loose-permissions",
            p.display(),
            format!("mode {mode:o}: others can read it; run `chmod go-rwx` on it"),
        );
    }
}

fn finish(vault: &Vault, mut findings: Vec<Finding>, secrets: usize) -> CheckReport {
    findings.sort_by(|a, b| (a.severity, &a.subject).cmp(&(b.severity, &b.subject)));
    CheckReport {
        vault_id: vault.id().to_owned(),
        secrets,
        findings,
    }
}

/// Removes the debris of interrupted writes (temporary files) below the
/// vault directory, leaving the spare files kept in `.local`. Returns how
/// many were removed.
pub fn remove_temp_files(vault: &Vault) -> usize {
    let local = vault.dir().join(LOCAL_DIR);
    let mut n = 0;
    let mut stack = vec![vault.dir().to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if p != local {
                    stack.push(p);
                }
            } else if e
                .file_name()
                .to_string_lossy()
                .starts_with(fsutil::TEMP_PREFIX)
                && std::fs::remove_file(&p).is_ok()
            {
                n += 1;
            }
        }
    }
    n
}
