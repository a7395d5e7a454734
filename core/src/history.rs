//! What git history says about a vault: who changed what and when (`log`),
//! and every secret an agent could ever decrypt (`exposure`). These are the
//! only readers that open git; `get` and `list` never do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use git2::{Oid, Repository, Sort, Tree};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layout::{self, SecretFile};
use crate::model::{self, Manifest, Mode, SecretMeta};
use crate::names::{AgentName, GroupName, SecretPath};
use crate::vault::Vault;

/// One commit that changed the vault.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Commit id.
    pub commit: String,
    /// Author name and e-mail.
    pub author: String,
    /// Commit time.
    pub time: jiff::Timestamp,
    /// The commit message's first line.
    pub message: String,
    /// How many vault files it changed.
    pub files_changed: usize,
}

/// A secret an agent could decrypt, and where in history.
#[derive(Debug, Clone, Serialize)]
pub struct Exposed {
    /// The secret.
    pub secret: String,
    /// The first commit holding a version the agent could decrypt.
    pub first_commit: String,
    /// The last such commit.
    pub last_commit: String,
    /// Whether the current version is among them.
    pub at_head: bool,
}

struct History {
    repo: Repository,
    /// The vault directory relative to the working tree.
    rel: std::path::PathBuf,
}

impl History {
    fn open(vault: &Vault) -> Result<Self> {
        let repo = Repository::discover(vault.root())?;
        let workdir = repo
            .workdir()
            .ok_or_else(|| Error::Git("the vault's repository has no working tree".into()))?
            .canonicalize()
            .map_err(|e| Error::io(vault.root(), e))?;
        let rel = vault
            .dir()
            .strip_prefix(&workdir)
            .map_err(|_| Error::Git("the vault is outside its repository".into()))?
            .to_owned();
        Ok(History { repo, rel })
    }

    /// Commits reachable from HEAD, oldest first.
    fn commits(&self) -> Result<Vec<Oid>> {
        let mut walk = self.repo.revwalk()?;
        match self.repo.head() {
            Ok(_) => walk.push_head()?,
            Err(_) => return Ok(Vec::new()),
        }
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
        Ok(walk.collect::<std::result::Result<_, _>>()?)
    }

    fn entry_id(&self, tree: &Tree<'_>, rel: &Path) -> Option<Oid> {
        let full = if rel.as_os_str().is_empty() {
            self.rel.clone()
        } else {
            self.rel.join(rel)
        };
        tree.get_path(&full).ok().map(|e| e.id())
    }

    fn blob(&self, id: Oid) -> Option<Vec<u8>> {
        self.repo.find_blob(id).ok().map(|b| b.content().to_vec())
    }
}

/// The commits that changed the vault (or only `path`), newest first.
pub fn log(vault: &Vault, path: Option<&SecretPath>) -> Result<Vec<LogEntry>> {
    let h = History::open(vault)?;
    // Each file in either layout: the migration that moved it is no change.
    let files: Vec<[std::path::PathBuf; 2]> = match path {
        Some(p) => [SecretFile::Value, SecretFile::Meta]
            .map(|f| layout::rels_any(p, f).map(|r| Path::new("secrets").join(r)))
            .into(),
        None => vec![[std::path::PathBuf::new(), std::path::PathBuf::new()]],
    };
    let ids = |tree: &git2::Tree<'_>| -> Vec<Option<Oid>> {
        files
            .iter()
            .map(|[a, b]| h.entry_id(tree, a).or_else(|| h.entry_id(tree, b)))
            .collect()
    };
    let mut out = Vec::new();
    for oid in h.commits()? {
        let c = h.repo.find_commit(oid)?;
        let tree = c.tree()?;
        let now = ids(&tree);
        let before: Vec<Option<Oid>> = match c.parents().next() {
            Some(p) => ids(&p.tree()?),
            None => vec![None; files.len()],
        };
        if now == before {
            continue;
        }
        let files_changed = match path {
            Some(_) => now.iter().zip(&before).filter(|(a, b)| a != b).count(),
            None => {
                let old = match c.parents().next() {
                    Some(p) => h
                        .entry_id(&p.tree()?, Path::new(""))
                        .map(|id| h.repo.find_tree(id))
                        .transpose()?,
                    None => None,
                };
                let new = now[0].map(|id| h.repo.find_tree(id)).transpose()?;
                h.repo
                    .diff_tree_to_tree(old.as_ref(), new.as_ref(), None)?
                    .deltas()
                    .len()
            }
        };
        let author = c.author();
        out.push(LogEntry {
            commit: oid.to_string(),
            author: format!(
                "{} <{}>",
                author.name().unwrap_or("?"),
                author.email().unwrap_or("?")
            ),
            time: jiff::Timestamp::from_second(c.time().seconds())
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            message: c.summary().ok().flatten().unwrap_or("").to_owned(),
            files_changed,
        });
    }
    out.reverse();
    Ok(out)
}

/// Every secret `agent` could ever decrypt, at any commit: the versions
/// encrypted to a group key generation that the agent was given (a `read`
/// grant at some commit), wherever in history they stand. The list to
/// rotate after an agent is compromised.
pub fn exposure(vault: &Vault, agent: &AgentName) -> Result<Vec<Exposed>> {
    let h = History::open(vault)?;
    let commits = h.commits()?;
    // 1. The (group, generation) keyrings the agent held.
    let mut held: BTreeSet<(GroupName, u64)> = BTreeSet::new();
    let mut seen_manifests = BTreeSet::new();
    for oid in &commits {
        let tree = h.repo.find_commit(*oid)?.tree()?;
        let Some(mid) = h.entry_id(&tree, Path::new("manifest.yaml")) else {
            continue;
        };
        if !seen_manifests.insert(mid) {
            continue;
        }
        let Some(bytes) = h.blob(mid) else { continue };
        let Ok(m) = model::parse_yaml::<Manifest>(Path::new("manifest.yaml"), &bytes) else {
            continue;
        };
        for (g, mode) in m.grants.get(agent).into_iter().flatten() {
            if *mode == Mode::Read
                && let Some(entry) = m.groups.get(g)
            {
                held.insert((g.clone(), entry.generation));
            }
        }
    }
    let groups: BTreeSet<&GroupName> = held.iter().map(|(g, _)| g).collect();
    // 2. Every version of every secret of those groups, by the generation
    //    its metadata names.
    let mut generation_of: HashMap<Oid, Option<u64>> = HashMap::new();
    let mut found: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut listed: HashMap<Oid, Vec<(String, Oid)>> = HashMap::new();
    let mut at_head: BTreeSet<String> = BTreeSet::new();
    for (i, oid) in commits.iter().enumerate() {
        let tree = h.repo.find_commit(*oid)?.tree()?;
        for g in &groups {
            let Some(gid) = h.entry_id(&tree, &Path::new("secrets").join(g.as_str())) else {
                continue;
            };
            let metas = match listed.entry(gid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    let mut metas = Vec::new();
                    h.repo
                        .find_tree(gid)?
                        .walk(git2::TreeWalkMode::PreOrder, |dir, e| {
                            if let Some(n) = e.name().ok().filter(|n| n.ends_with(".meta.yaml"))
                                && let Some((p, _)) = layout::parse(&format!("{g}/{dir}{n}"))
                            {
                                metas.push((p.to_string(), e.id()));
                            }
                            git2::TreeWalkResult::Ok
                        })?;
                    slot.insert(metas)
                }
            };
            for (secret, meta_id) in metas.iter() {
                let generation = *generation_of.entry(*meta_id).or_insert_with(|| {
                    h.blob(*meta_id)
                        .and_then(|b| model::parse_yaml::<SecretMeta>(Path::new("meta"), &b).ok())
                        .map(|m| m.generation)
                });
                let Some(generation) = generation else {
                    continue;
                };
                // A keyring of generation N holds every one before it
                // (format 2; for format 1 this over-reports, never under).
                let g_at = |n: u64| ((*g).clone(), n);
                if held
                    .range(g_at(generation)..=g_at(u64::MAX))
                    .next()
                    .is_some()
                {
                    let short = oid.to_string()[..12].to_owned();
                    found
                        .entry(secret.clone())
                        .and_modify(|(_, last)| *last = short.clone())
                        .or_insert((short.clone(), short));
                    if i + 1 == commits.len() {
                        at_head.insert(secret.clone());
                    }
                }
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|(secret, (first_commit, last_commit))| Exposed {
            at_head: at_head.contains(&secret),
            secret,
            first_commit,
            last_commit,
        })
        .collect())
}
