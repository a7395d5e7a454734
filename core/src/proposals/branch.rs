//! Proposals on git: each agent's proposals are files on the branch
//! `agent-vault/proposals/<agent>` of the vault's repository
//! (`proposals/<id>.yaml` and `proposals/<id>.sig`), committed without
//! touching the working tree, the index or HEAD, and pushed when the vault
//! has a remote. An owner's `sync` fetches every such branch to
//! `refs/remotes/<remote>/agent-vault/proposals/<agent>`.
//!
//! Everything on these branches is hostile (anyone with push access can
//! write there): they are never checked out or merged; only blobs named
//! `proposals/<id>.yaml` / `.sig` are read, sizes checked before their
//! contents, and each proposal is verified by its agent's signature before
//! it is believed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use git2::{FileMode, Oid, Repository, Signature, build::TreeUpdateBuilder};

use crate::error::{Error, Result};
use crate::git::VaultRepo;
use crate::git::remote::{self, Failure, PROPOSALS_PREFIX, Upstream};
use crate::names::AgentName;

use super::model::{MAX_FILE_BYTES, ProposalId};
use super::signed::{MAX_SIG_BYTES, SignedProposal};

/// The most proposal files read from one branch.
const MAX_FILES_PER_BRANCH: usize = 1000;

/// A proposal file found on a branch (not yet verified).
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub agent: AgentName,
    pub id: ProposalId,
    pub signed: SignedProposal,
}

/// What could not be read from a branch, and why.
#[derive(Debug, Clone)]
pub(crate) struct Unreadable {
    pub where_: String,
    pub reason: String,
}

fn local_ref(agent: &AgentName) -> String {
    format!("refs/heads/{PROPOSALS_PREFIX}{agent}")
}

fn tracking_ref(remote: &str, agent: &AgentName) -> String {
    format!("refs/remotes/{remote}/{PROPOSALS_PREFIX}{agent}")
}

/// Reads a blob at `path` of `tree`, if it is a regular file no larger than `cap`.
fn capped_blob(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    path: &str,
    cap: usize,
) -> Option<Vec<u8>> {
    let e = tree.get_path(Path::new(path)).ok()?;
    if e.filemode() != i32::from(FileMode::Blob) {
        return None;
    }
    let (size, kind) = repo.odb().ok()?.read_header(e.id()).ok()?;
    if kind != git2::ObjectType::Blob || size > cap {
        return None;
    }
    repo.find_blob(e.id()).ok().map(|b| b.content().to_vec())
}

/// The proposal files of one commit's tree: id → files.
fn files_of(repo: &Repository, commit: Oid) -> Result<BTreeMap<ProposalId, SignedProposal>> {
    let tree = repo.find_commit(commit)?.tree()?;
    let mut out = BTreeMap::new();
    let Ok(dir) = tree.get_path(Path::new("proposals")) else {
        return Ok(out);
    };
    let Ok(dir) = repo.find_tree(dir.id()) else {
        return Ok(out);
    };
    for e in dir.iter().take(MAX_FILES_PER_BRANCH) {
        let Some(id) = e.name().ok().and_then(ProposalId::of_yaml_file) else {
            continue;
        };
        let yaml = capped_blob(repo, &tree, &format!("proposals/{id}.yaml"), MAX_FILE_BYTES);
        let sig = capped_blob(repo, &tree, &format!("proposals/{id}.sig"), MAX_SIG_BYTES);
        out.insert(
            id,
            SignedProposal {
                yaml: yaml.unwrap_or_default(),
                sig: sig.unwrap_or_default(),
            },
        );
    }
    Ok(out)
}

/// Every proposal file on this repository's proposal branches, local and
/// fetched (the first found of an agent's id wins: the local branch, then
/// the remotes'), and what could not be read.
pub(crate) fn found(repo: &VaultRepo) -> Result<(Vec<Found>, Vec<Unreadable>)> {
    let r = repo.repo();
    let mut seen: BTreeMap<(AgentName, ProposalId), SignedProposal> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for glob in [
        format!("refs/heads/{PROPOSALS_PREFIX}*"),
        format!("refs/remotes/*/{PROPOSALS_PREFIX}*"),
    ] {
        for reference in r.references_glob(&glob)? {
            let reference = reference?;
            let name = reference.name().unwrap_or_default().to_owned();
            let Some(agent) = name.rsplit('/').next().map(str::parse::<AgentName>) else {
                continue;
            };
            let Ok(agent) = agent else {
                unreadable.push(Unreadable {
                    where_: crate::model::printable(&name).into_owned(),
                    reason: "the branch does not name a valid agent".into(),
                });
                continue;
            };
            let Some(oid) = reference.target() else {
                continue;
            };
            let files = match files_of(r, oid) {
                Ok(f) => f,
                Err(e) => {
                    unreadable.push(Unreadable {
                        where_: name.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            for (id, signed) in files {
                seen.entry((agent.clone(), id)).or_insert(signed);
            }
        }
    }
    let found = seen
        .into_iter()
        .map(|((agent, id), signed)| Found { agent, id, signed })
        .collect();
    Ok((found, unreadable))
}

fn signature(r: &Repository) -> Result<Signature<'static>> {
    match r.signature() {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Ok(Signature::now("agent-vault", "agent-vault@localhost")?),
    }
}

/// Commits the proposal onto the agent's branch: on top of the remote's
/// tip when there is one (with the local branch's files kept when the two
/// diverged), never touching HEAD, the index or the working tree.
fn commit_on_branch(
    repo: &VaultRepo,
    agent: &AgentName,
    id: &ProposalId,
    signed: &SignedProposal,
    remote_tip: Option<Oid>,
) -> Result<Oid> {
    let r = repo.repo();
    let local = r.refname_to_id(&local_ref(agent)).ok();
    let (base, other) = match (local, remote_tip) {
        (None, None) => (None, None),
        (Some(l), None) => (Some(l), None),
        (None, Some(t)) => (Some(t), None),
        (Some(l), Some(t)) if l == t || r.graph_descendant_of(l, t)? => (Some(l), None),
        (Some(l), Some(t)) if r.graph_descendant_of(t, l)? => (Some(t), None),
        (Some(l), Some(t)) => (Some(t), Some(l)),
    };
    let base_tree = match base {
        Some(b) => r.find_commit(b)?.tree()?,
        None => r.find_tree(r.treebuilder(None)?.write()?)?,
    };
    let mut update = TreeUpdateBuilder::new();
    if let Some(o) = other {
        let theirs = files_of(r, base.unwrap_or(o))?;
        for (oid, files) in files_of(r, o)? {
            if !theirs.contains_key(&oid) {
                put(r, &mut update, &oid, &files)?;
            }
        }
    }
    put(r, &mut update, id, signed)?;
    let tree = r.find_tree(update.create_updated(r, &base_tree)?)?;
    let parents: Vec<git2::Commit<'_>> = base
        .into_iter()
        .chain(other)
        .map(|o| r.find_commit(o))
        .collect::<std::result::Result<_, _>>()?;
    let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
    let sig = signature(r)?;
    let oid = r.commit(
        None,
        &sig,
        &sig,
        &format!("agent-vault: proposal {id} of {agent}"),
        &tree,
        &parents,
    )?;
    r.reference(
        &local_ref(agent),
        oid,
        true,
        &format!("agent-vault: proposal {id}"),
    )?;
    Ok(oid)
}

fn put(
    r: &Repository,
    update: &mut TreeUpdateBuilder,
    id: &ProposalId,
    signed: &SignedProposal,
) -> Result<()> {
    let odb = r.odb()?;
    for (ext, bytes) in [("yaml", &signed.yaml), ("sig", &signed.sig)] {
        let oid = odb.write(git2::ObjectType::Blob, bytes)?;
        update.upsert(format!("proposals/{id}.{ext}"), oid, FileMode::Blob);
    }
    Ok(())
}

/// Puts a signed proposal on the agent's branch and, when the vault has a
/// remote, pushes the branch (fetching and retrying when someone pushed
/// meanwhile). Returns whether it was pushed.
pub(crate) fn publish(
    repo: &VaultRepo,
    agent: &AgentName,
    id: &ProposalId,
    signed: &SignedProposal,
    timeout: Duration,
) -> Result<bool> {
    let up = remote::upstream(repo.repo())?;
    let Some(up) = up else {
        commit_on_branch(repo, agent, id, signed, None)?;
        return Ok(false);
    };
    for _ in 0..3 {
        let tip = fetch_agent_branch(repo, &up, agent, timeout)?;
        commit_on_branch(repo, agent, id, signed, tip)?;
        let spec = format!("{0}:{0}", local_ref(agent));
        match remote::push_refspec(repo.workdir(), &up, &spec, timeout) {
            Ok(()) => return Ok(true),
            Err(Error::Remote {
                failure: Failure::Rejected,
                ..
            }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Git(format!(
        "the proposal branch {PROPOSALS_PREFIX}{agent} kept moving on {}; the proposal is on \
         the local branch: run `agent-vault propose` again later",
        up.remote
    )))
}

/// Fetches the remote's branch of `agent`; returns its tip, if it has one.
pub(crate) fn fetch_agent_branch(
    repo: &VaultRepo,
    up: &Upstream,
    agent: &AgentName,
    timeout: Duration,
) -> Result<Option<Oid>> {
    let tracking = tracking_ref(&up.remote, agent);
    let spec = format!("+refs/heads/{PROPOSALS_PREFIX}{agent}:{tracking}");
    remote::fetch_refspec(repo.workdir(), up, &spec, timeout)?;
    Ok(repo.repo().refname_to_id(&tracking).ok())
}
