//! `check`: everything that can be wrong with a vault, reported by kind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::crypto::{self, Identity};
use crate::error::Error as VaultError;
use crate::fsutil;
use crate::journal::Txn;
use crate::model::{self, Manifest};
use crate::names::{AgentName, GroupName, SecretPath};
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
    /// `expiring`, `orphan`, `mismatch`, `missing`, `loose-permissions`,
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
    use Severity::{Error, Warning};
    let mut f = Findings(Vec::new());
    let rel = |p: &Path| {
        p.strip_prefix(vault.root())
            .unwrap_or(p)
            .display()
            .to_string()
    };

    let fs = vault.fs();

    // Machine-private state that git tracks: nothing under `.local/` is
    // trusted then, so no journal is read (nor offered to `repair`).
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
        Err(e) => f.push(Error, "unsafe-file", rel(vault.dir()), e.to_string()),
    }
    if tracked.is_empty() {
        match Txn::peek(vault) {
            Ok(None) => {}
            Ok(Some(op)) => {
                let verdict = owner.map(|id| Txn::read(vault, &id.signing_key().public()));
                match verdict {
                    Some(Err(e)) => f.push(Error, "foreign-journal", rel(&vault.journal_path()), e.to_string()),
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
                rel(&vault.journal_path()),
                e.to_string(),
            ),
        }
    }

    // The manifest: verified if possible, else parsed as is for the rest.
    let manifest: Option<Manifest> = match vault.manifest() {
        Ok(m) => Some(m),
        Err(e) => {
            let kind = match e {
                VaultError::Refused { .. } => "unsafe-file",
                _ => "manifest-signature",
            };
            f.push(Error, kind, "manifest.yaml", e.to_string());
            fs.read(&vault.manifest_path(), Kind::Manifest)
                .ok()
                .and_then(|b| model::parse_yaml(&vault.manifest_path(), &b).ok())
        }
    };
    let Some(manifest) = manifest else {
        return finish(vault, f.0, 0);
    };

    // Agents and groups named by the manifest have their files.
    for (a, entry) in &manifest.agents {
        let dir = vault.agent_dir(a);
        match fs.read_optional(&dir.join("public.key"), Kind::PublicKey) {
            Ok(Some(b)) if String::from_utf8_lossy(&b).trim() == entry.recipient => {}
            Ok(Some(_)) => f.push(
                Error,
                "mismatch",
                rel(&dir.join("public.key")),
                "differs from the agent's recipient in the manifest",
            ),
            Err(e @ VaultError::Refused { .. }) => f.push(
                Error,
                "unsafe-file",
                rel(&dir.join("public.key")),
                e.to_string(),
            ),
            _ => f.push(
                Error,
                "missing",
                rel(&dir.join("public.key")),
                format!("agent {a} has no public key file"),
            ),
        }
        if !matches!(fs.entry_type(&dir.join("private.key.escrow")), Ok(Some(_))) {
            f.push(
                Warning,
                "missing",
                rel(&dir.join("private.key.escrow")),
                format!("agent {a}'s key is not escrowed; `restore-agent` cannot recover it"),
            );
        }
    }
    for (g, entry) in &manifest.groups {
        let p = vault.group_key_path(g);
        match (fs.read_optional(&p, Kind::GroupKey), owner) {
            (Err(e @ VaultError::Refused { .. }), _) => {
                f.push(Error, "unsafe-file", rel(&p), e.to_string())
            }
            (Ok(None), _) | (Err(_), _) => f.push(
                Error,
                "missing",
                rel(&p),
                format!("group {g} has no key file"),
            ),
            (Ok(Some(ct)), Some(id)) => match crypto::decrypt_identity(&[id], &ct, &p) {
                Ok(gid) if gid.recipient().as_string() == entry.recipient => {}
                Ok(_) => f.push(
                    Error,
                    "group-key",
                    rel(&p),
                    format!("group {g}'s key does not match its recipient in the manifest"),
                ),
                Err(e) => f.push(Error, "group-key", rel(&p), e.to_string()),
            },
            _ => {}
        }
    }

    // Every file under .agent-vault is accounted for, at any depth.
    let mut secrets: Vec<SecretPath> = Vec::new();
    let mut metas: BTreeSet<PathBuf> = BTreeSet::new();
    let mut ages: BTreeSet<PathBuf> = BTreeSet::new();
    let mut stack = vec![vault.dir().to_owned()];
    while let Some(dir) = stack.pop() {
        // Links are never followed: a linked directory is reported, not walked.
        let entries = match fs.read_dir(&dir) {
            Ok(Some(entries)) => entries,
            Ok(None) => continue,
            Err(e) => {
                f.push(Error, "unsafe-file", rel(&dir), e.to_string());
                continue;
            }
        };
        for (name, t) in entries {
            let p = dir.join(&name);
            let is_dir = t == EntryType::Dir;
            let r = p.strip_prefix(vault.dir()).unwrap_or(&p).to_path_buf();
            let parts: Vec<&str> = r.iter().filter_map(|c| c.to_str()).collect();
            if matches!(t, EntryType::Symlink | EntryType::Special) {
                f.push(Error, "unsafe-file", rel(&p), t.refusal());
                continue;
            }
            if parts.first() == Some(&LOCAL_DIR) {
                // Machine-private: only links and special files are reported.
                if is_dir {
                    stack.push(p);
                }
                continue;
            }
            if !is_dir {
                let cap = Kind::of(&r).cap();
                if let Ok(md) = std::fs::symlink_metadata(&p)
                    && md.is_file()
                    && md.len() > cap
                {
                    f.push(
                        Error,
                        "oversize",
                        rel(&p),
                        format!("{} bytes: more than the {cap} a file of its kind may hold; readers refuse it", md.len()),
                    );
                    continue;
                }
            }
            if is_dir {
                let known = match parts.as_slice() {
                    ["agents"] | ["groups"] | ["secrets"] | ["broker"] => true,
                    ["agents", a] => a
                        .parse::<AgentName>()
                        .map(|a| manifest.agents.contains_key(&a))
                        .unwrap_or(false),
                    ["secrets", g, ..] => g
                        .parse::<GroupName>()
                        .map(|g| manifest.groups.contains_key(&g))
                        .unwrap_or(false),
                    _ => false,
                };
                if known {
                    stack.push(p);
                } else {
                    f.push(
                        Warning,
                        "orphan",
                        rel(&p),
                        "a directory the manifest does not account for",
                    );
                }
                continue;
            }
            let name = parts.last().copied().unwrap_or("");
            let ok = match parts.as_slice() {
                ["config.yaml"]
                | ["manifest.yaml"]
                | ["manifest.sig"]
                | ["services.yaml"]
                | [".gitignore"]
                | [".gitattributes"] => true,
                ["agents", _, "public.key"] | ["agents", _, "private.key.escrow"] => true,
                [
                    "broker",
                    "public.key" | "private.key.escrow" | "ca.crt" | "ca.key.age" | "token.key.age",
                ] => manifest.broker.is_some(),
                ["groups", file] => file
                    .strip_suffix(".key.age")
                    .and_then(|g| g.parse::<GroupName>().ok())
                    .is_some_and(|g| manifest.groups.contains_key(&g)),
                ["secrets", _, ..] if name.starts_with(fsutil::TEMP_PREFIX) => false,
                ["secrets", _, ..] if name.ends_with(".meta.yaml") => {
                    metas.insert(p.clone());
                    true
                }
                ["secrets", g, rest @ ..] if name.ends_with(".age") => {
                    let joined = rest.join("/");
                    match g.parse::<GroupName>().ok().and_then(|g| {
                        SecretPath::new(g, joined.strip_suffix(".age").unwrap_or(&joined)).ok()
                    }) {
                        Some(sp) => {
                            ages.insert(p.clone());
                            secrets.push(sp);
                            true
                        }
                        None => false,
                    }
                }
                _ => false,
            };
            if !ok {
                let what = if name.starts_with(fsutil::TEMP_PREFIX) {
                    "an unfinished write left by an interrupted command; `agent-vault repair` removes it"
                } else if name.ends_with(".key.age.next") {
                    "a rotated group key of an interrupted operation; `agent-vault repair` settles it"
                } else {
                    "a file the manifest does not account for"
                };
                f.push(Warning, "orphan", rel(&p), what);
            }
        }
    }
    for m in &metas {
        let s = m.to_string_lossy();
        let age = PathBuf::from(format!(
            "{}.age",
            s.strip_suffix(".meta.yaml").unwrap_or(&s)
        ));
        if !ages.contains(&age) {
            f.push(Warning, "orphan", rel(m), "metadata without a secret");
        }
    }

    // Each secret: signed by an owner, current generation, expiry.
    let now = jiff::Timestamp::now();
    let warn_after = now
        .checked_add(jiff::SignedDuration::from_hours(
            24 * i64::from(vault.config().expiry_warning_days),
        ))
        .unwrap_or(now);
    secrets.sort();
    let per_secret: Vec<Vec<Finding>> = secrets
        .par_iter()
        .map(|sp| {
            let mut out = Findings(Vec::new());
            let ct = match fs.read(&vault.secret_age_path(sp), Kind::Secret) {
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
            let gens = manifest
                .groups
                .get(sp.group())
                .map(|g| vec![g.generation])
                .unwrap_or_default();
            match meta.verify(vault.id(), sp, &ct, &manifest, &gens) {
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
        })
        .collect();
    f.0.extend(per_secret.into_iter().flatten());

    if tracked.is_empty()
        && let Ok(unresolved) = crate::git::merge::unresolved(vault)
    {
        for s in unresolved {
            f.push(
                Warning,
                "conflict",
                &s,
                format!("changed on both sides of a merge; ours is kept: `agent-vault resolve {s} --ours` or `--theirs`"),
            );
        }
    }
    for (p, mode) in vault.keys().loose_permissions(vault.id()) {
        f.push(
            Error,
            "loose-permissions",
            p.display(),
            format!("mode {mode:o}: others can read it; run `chmod go-rwx` on it"),
        );
    }
    finish(vault, f.0, secrets.len())
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
