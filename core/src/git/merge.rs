//! The manifest merged entry by entry: the three-way merge itself, git's
//! merge driver for `manifest.yaml`, the one unsigned manifest an owner may
//! sign without looking (a plain `git merge`'s), and the record of secrets
//! changed on both sides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil;
use crate::git::VaultRepo;
use crate::git::pull::{blob_at, vault_rel};
use crate::model::{self, Manifest, Mode};
use crate::names::{AgentName, GroupName};
use crate::vault::Vault;
use crate::vfs::Kind;

/// State kept between `pull` and `resolve` for secrets changed on both sides.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Conflicts {
    /// Secret path → the commit holding their version.
    pub(crate) secrets: BTreeMap<String, String>,
}

fn conflicts_path(vault: &Vault) -> PathBuf {
    vault
        .dir()
        .join(crate::vault::LOCAL_DIR)
        .join("conflicts.yaml")
}

pub(crate) fn read_conflicts(vault: &Vault) -> Result<Conflicts> {
    let p = conflicts_path(vault);
    Ok(match vault.fs().read_optional(&p, Kind::Local)? {
        Some(b) => model::parse_yaml(&p, &b)?,
        None => Conflicts::default(),
    })
}

pub(crate) fn write_conflicts(vault: &Vault, c: &Conflicts) -> Result<()> {
    let p = conflicts_path(vault);
    if c.secrets.is_empty() {
        return vault.fs().remove_file(&p);
    }
    vault
        .fs()
        .write_atomic(&p, &model::to_yaml(c), fsutil::PUBLIC_FILE)
}

/// Secrets changed on both sides of a merge and not yet resolved.
pub fn unresolved(vault: &Vault) -> Result<Vec<String>> {
    Ok(read_conflicts(vault)?.secrets.into_keys().collect())
}

/// Three-way merge of a map: a side's change wins over no change; when
/// both changed an entry differently, ours wins.
fn merge_map<K: Ord + Clone, V: PartialEq + Clone>(
    base: &BTreeMap<K, V>,
    ours: &BTreeMap<K, V>,
    theirs: &BTreeMap<K, V>,
) -> BTreeMap<K, V> {
    let keys: BTreeSet<&K> = base
        .keys()
        .chain(ours.keys())
        .chain(theirs.keys())
        .collect();
    let mut out = BTreeMap::new();
    for k in keys {
        let (b, o, t) = (base.get(k), ours.get(k), theirs.get(k));
        let pick = if o == t || t == b {
            o
        } else if o == b {
            t
        } else {
            o
        };
        if let Some(v) = pick {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Revocations only accumulate: a merge keeps every one of both sides.
fn merge_revocations(
    a: &crate::model::Revocations,
    b: &crate::model::Revocations,
) -> crate::model::Revocations {
    let mut out = a.clone();
    for t in &b.tokens {
        if !out.tokens.contains(t) {
            out.tokens.push(t.clone());
        }
    }
    for (agent, t) in &b.agents {
        let e = out.agents.entry(agent.clone()).or_insert(*t);
        *e = (*e).max(*t);
    }
    for s in &b.sessions {
        if !out.sessions.contains(s) {
            out.sessions.push(s.clone());
        }
    }
    out.all_before = a.all_before.max(b.all_before);
    out
}

/// The manifest both sides' changes lead to.
pub fn merge_manifests(base: Option<&Manifest>, ours: &Manifest, theirs: &Manifest) -> Manifest {
    let empty = Manifest {
        format: ours.format,
        vault_id: ours.vault_id.clone(),
        owners: BTreeMap::new(),
        agents: BTreeMap::new(),
        groups: BTreeMap::new(),
        grants: BTreeMap::new(),
        broker: None,
        revoked: Default::default(),
    };
    let base = base.unwrap_or(&empty);
    let flat = |m: &Manifest| -> BTreeMap<(AgentName, GroupName), Mode> {
        m.grants
            .iter()
            .flat_map(|(a, gs)| {
                gs.iter()
                    .map(move |(g, mode)| ((a.clone(), g.clone()), *mode))
            })
            .collect()
    };
    let mut merged = Manifest {
        format: ours.format.max(theirs.format),
        vault_id: ours.vault_id.clone(),
        owners: merge_map(&base.owners, &ours.owners, &theirs.owners),
        agents: merge_map(&base.agents, &ours.agents, &theirs.agents),
        groups: merge_map(&base.groups, &ours.groups, &theirs.groups),
        grants: BTreeMap::new(),
        // When both sides changed the broker (both ran `broker init`), the
        // merge keeps our broker/ files (a conflicting file keeps ours), so
        // the manifest must name our broker too.
        broker: if ours.broker != base.broker || theirs.broker == base.broker {
            ours.broker.clone()
        } else {
            theirs.broker.clone()
        },
        revoked: merge_revocations(&ours.revoked, &theirs.revoked),
    };
    for ((a, g), mode) in merge_map(&flat(base), &flat(ours), &flat(theirs)) {
        if merged.agents.contains_key(&a) && merged.groups.contains_key(&g) {
            merged.grants.entry(a).or_default().insert(g, mode);
        }
    }
    merged
}

/// The manifest of a merge that plain `git merge` made (through the merge
/// driver `init` registers): returned when HEAD is a merge whose parents'
/// manifests are both signed by trusted owners and the committed manifest is
/// exactly their entry-by-entry merge — the one unsigned manifest an owner
/// may sign without looking. Group keys must not have diverged (a rotation
/// on either side needs `agent-vault sync`).
pub fn git_merged_manifest(vault: &Vault) -> Result<Option<Manifest>> {
    let Some(repo) = VaultRepo::discover(vault.root())? else {
        return Ok(None);
    };
    let rel = vault_rel(vault, &repo)?;
    let r = repo.repo();
    let Ok(head) = r.head().and_then(|h| h.peel_to_commit()) else {
        return Ok(None);
    };
    if head.parent_count() != 2 {
        return Ok(None);
    }
    let current = vault.fs().read(&vault.manifest_path(), Kind::Manifest)?;
    if blob_at(r, &head.tree()?, &rel.join("manifest.yaml")).as_deref() != Some(current.as_slice())
    {
        return Ok(None);
    }
    let mut sides = Vec::new();
    for parent in head.parents() {
        let t = parent.tree()?;
        let m = blob_at(r, &t, &rel.join("manifest.yaml")).unwrap_or_default();
        let sig = blob_at(r, &t, &rel.join("manifest.sig"));
        let services = blob_at(r, &t, &rel.join("services.yaml")).unwrap_or_default();
        match vault.verify_manifest(&m, sig.as_deref(), &services, false) {
            Ok(m) => sides.push(m),
            Err(_) => return Ok(None),
        }
    }
    let base = r.merge_base(head.parent_id(0)?, head.parent_id(1)?)?;
    let base_m: Option<Manifest> =
        blob_at(r, &r.find_commit(base)?.tree()?, &rel.join("manifest.yaml"))
            .and_then(|b| model::parse_yaml(Path::new("manifest.yaml"), &b).ok());
    let merged = merge_manifests(base_m.as_ref(), &sides[0], &sides[1]);
    let now: Manifest = model::parse_yaml(&vault.manifest_path(), &current)?;
    let diverged = merged.groups.iter().any(|(g, e)| {
        sides
            .iter()
            .any(|s| s.groups.get(g).is_some_and(|x| x.recipient != e.recipient))
    });
    Ok((now == merged && !diverged).then_some(merged))
}

/// The lines `init` (and every pull) puts in `.agent-vault/.gitattributes`
/// and the repository's config, so that plain `git pull` merges the
/// manifest entry by entry.
pub const GITATTRIBUTES: &str = "# agent-vault: merge the manifest entry by entry; the next agent-vault command re-signs it\nmanifest.yaml merge=agent-vault-manifest\nmanifest.sig merge=agent-vault-ours\n*.age binary\n";

/// Registers the manifest merge driver in the repository's config.
pub fn register_merge_driver(repo: &VaultRepo) -> Result<()> {
    let mut cfg = repo.repo().config()?;
    let key = "merge.agent-vault-manifest.driver";
    if cfg.get_string(key).is_err() {
        cfg.set_str(
            "merge.agent-vault-manifest.name",
            "agent-vault manifest (entry by entry)",
        )?;
        cfg.set_str(key, "agent-vault merge-driver %O %A %B")?;
        // The signature is made anew for the merged manifest: keep ours meanwhile.
        cfg.set_str(
            "merge.agent-vault-ours.name",
            "agent-vault: keep ours until re-signed",
        )?;
        cfg.set_str("merge.agent-vault-ours.driver", "true")?;
    }
    Ok(())
}

/// The merge driver: merges three manifest files entry by entry into
/// `ours`. Returns false (a conflict for git) if one does not parse.
pub fn merge_driver(base: &Path, ours: &Path, theirs: &Path) -> Result<bool> {
    let read = |p: &Path| -> Option<Manifest> {
        let b = std::fs::read(p).ok()?;
        model::parse_yaml(p, &b).ok()
    };
    let (Some(o), Some(t)) = (read(ours), read(theirs)) else {
        return Ok(false);
    };
    let merged = merge_manifests(read(base).as_ref(), &o, &t);
    fsutil::write_atomic(ours, &model::to_yaml(&merged), fsutil::PUBLIC_FILE)?;
    Ok(true)
}
