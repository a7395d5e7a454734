//! Talking to a vault's git remote. The transport is the system `git`, so
//! everything the user set up for git works as it does for git: ssh-agent,
//! `~/.ssh/config`, key files, credential helpers, `insteadOf` rewrites. Only
//! commands that go to the network start it; nothing secret is ever in its
//! arguments (remote names, URLs and branch names only), and it never prompts.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use git2::{Oid, Repository};

use crate::error::{Error, Result};

/// A remote and the branch the vault follows there.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The remote's name (`origin`).
    pub remote: String,
    /// Its URL, for messages.
    pub url: String,
    /// The local branch.
    pub branch: String,
    /// The branch on the remote.
    pub remote_branch: String,
}

impl Upstream {
    /// The remote-tracking ref the fetch updates.
    pub fn tracking_ref(&self) -> String {
        format!("refs/remotes/{}/{}", self.remote, self.remote_branch)
    }
}

/// The upstream of the current branch: its configured upstream, else the
/// only remote (or `origin`) and a branch of the same name. `None` when the
/// repository has no remote.
pub fn upstream(repo: &Repository) -> Result<Option<Upstream>> {
    let head = match repo.head() {
        Ok(h) => h,
        Err(_) => match repo.find_reference("HEAD")?.symbolic_target()? {
            // An unborn branch (a fresh clone of an empty remote).
            Some(t) => {
                return upstream_for(repo, t.trim_start_matches("refs/heads/"));
            }
            None => return Ok(None),
        },
    };
    let branch = head.shorthand()?.to_owned();
    if !head.is_branch() {
        return Err(Error::Git(
            "HEAD is detached; check out the vault's branch to sync".into(),
        ));
    }
    upstream_for(repo, &branch)
}

fn upstream_for(repo: &Repository, branch: &str) -> Result<Option<Upstream>> {
    let cfg = repo.config()?;
    let configured = cfg.get_string(&format!("branch.{branch}.remote")).ok();
    let remotes = repo.remotes()?;
    let names: Vec<String> = remotes
        .iter()
        .flatten()
        .flatten()
        .map(str::to_owned)
        .collect();
    let remote = match configured {
        Some(r) => r,
        None if names.iter().any(|n| n == "origin") => "origin".to_owned(),
        None if names.len() == 1 => names[0].clone(),
        None if names.is_empty() => return Ok(None),
        None => {
            return Err(Error::Git(format!(
                "the vault has several remotes ({}) and branch {branch} follows none; run `git branch --set-upstream-to REMOTE/{branch}`",
                names.join(", ")
            )));
        }
    };
    let remote_branch = cfg
        .get_string(&format!("branch.{branch}.merge"))
        .ok()
        .map(|m| m.trim_start_matches("refs/heads/").to_owned())
        .unwrap_or_else(|| branch.to_owned());
    let url = repo
        .find_remote(&remote)
        .ok()
        .and_then(|r| r.url().ok().map(str::to_owned))
        .unwrap_or_default();
    Ok(Some(Upstream {
        remote,
        url,
        branch: branch.to_owned(),
        remote_branch,
    }))
}

/// Whether the repository's config names any remote, read without opening
/// git (the automatic pull of `get` checks this on every read).
pub fn has_remote_cheap(git_dir: &Path) -> bool {
    std::fs::read_to_string(git_dir.join("config"))
        .map(|c| c.contains("[remote \""))
        .unwrap_or(false)
}

pub use crate::error::RemoteFailure as Failure;

fn classify(stderr: &str) -> Failure {
    let s = stderr.to_lowercase();
    if s.contains("authentication failed")
        || s.contains("permission denied")
        || s.contains("could not read username")
        || s.contains("could not read password")
        || s.contains("invalid username or password")
        || s.contains("403")
        || s.contains("401")
        || s.contains("terminal prompts disabled")
    {
        Failure::Auth
    } else if s.contains("[rejected]")
        || s.contains("non-fast-forward")
        || s.contains("fetch first")
    {
        Failure::Rejected
    } else if s.contains("could not resolve")
        || s.contains("connection refused")
        || s.contains("unable to access")
        || s.contains("does not appear to be a git repository")
        || s.contains("could not read from remote")
        || s.contains("timed out")
        || s.contains("unable to connect")
        || s.contains("no such file or directory")
        || s.contains("not found")
    {
        Failure::Unreachable
    } else {
        Failure::Other
    }
}

fn remote_error(up: &Upstream, failure: Failure, detail: &str) -> Error {
    let what = match failure {
        Failure::Auth => "authentication failed",
        Failure::Unreachable => "cannot reach it",
        Failure::Rejected => "it has changes this vault does not (push rejected)",
        Failure::Other => "git failed",
    };
    let hint = match failure {
        Failure::Auth => {
            "check the credentials git uses for it: ssh-agent / ~/.ssh/config for ssh, a credential helper for https (`git ls-remote REMOTE` shows the same failure)"
        }
        Failure::Unreachable => "check the URL (`git remote -v`) and the network",
        Failure::Rejected => "run `agent-vault sync` to merge and push",
        Failure::Other => "run the git command by hand to see more",
    };
    let detail: String = detail
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ");
    Error::Remote {
        remote: up.remote.clone(),
        url: up.url.clone(),
        failure,
        message: format!("{what}: {detail}"),
        hint: hint.to_owned(),
    }
}

/// Runs `git` in `workdir` with a deadline; never prompts for input.
fn git(workdir: &Path, args: &[&str], timeout: Duration) -> Result<(bool, String)> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(workdir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Git(format!("cannot run git: {e}")))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::Git(e.to_string()))? {
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut err);
            }
            return Ok((status.success(), err));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((false, format!("timed out after {} s", timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fetches the upstream branch; returns its commit, or `None` if the remote
/// has no such branch yet.
pub fn fetch(
    workdir: &Path,
    repo: &Repository,
    up: &Upstream,
    timeout: Duration,
) -> Result<Option<Oid>> {
    let refspec = format!("+refs/heads/{}:{}", up.remote_branch, up.tracking_ref());
    let (ok, err) = git(
        workdir,
        &["fetch", "--quiet", "--no-tags", &up.remote, &refspec],
        timeout,
    )?;
    if !ok {
        if err.contains("couldn't find remote ref") {
            return Ok(None);
        }
        return Err(remote_error(up, classify(&err), &err));
    }
    Ok(repo.refname_to_id(&up.tracking_ref()).ok())
}

/// Pushes HEAD to the upstream branch.
pub fn push(workdir: &Path, up: &Upstream, timeout: Duration) -> Result<()> {
    let refspec = format!("HEAD:refs/heads/{}", up.remote_branch);
    let (ok, err) = git(workdir, &["push", "--quiet", &up.remote, &refspec], timeout)?;
    if ok {
        return Ok(());
    }
    Err(remote_error(up, classify(&err), &err))
}

/// The prefix of the branches proposals travel on:
/// `agent-vault/proposals/<agent>`, never the vault's own branch.
pub const PROPOSALS_PREFIX: &str = "agent-vault/proposals/";

/// Fetches with one refspec (forced, as given); a remote that lacks the
/// ref is not an error.
pub fn fetch_refspec(
    workdir: &Path,
    up: &Upstream,
    refspec: &str,
    timeout: Duration,
) -> Result<()> {
    let (ok, err) = git(
        workdir,
        &["fetch", "--quiet", "--no-tags", &up.remote, refspec],
        timeout,
    )?;
    if ok || err.contains("couldn't find remote ref") {
        return Ok(());
    }
    Err(remote_error(up, classify(&err), &err))
}

/// Brings every proposal branch of the remote to
/// `refs/remotes/<remote>/agent-vault/proposals/<agent>`. What arrives there
/// is never checked out or merged: proposals are read from it, each
/// verified by its agent's signature.
pub fn fetch_proposals(workdir: &Path, up: &Upstream, timeout: Duration) -> Result<()> {
    let refspec = format!(
        "+refs/heads/{PROPOSALS_PREFIX}*:refs/remotes/{}/{PROPOSALS_PREFIX}*",
        up.remote
    );
    fetch_refspec(workdir, up, &refspec, timeout)
}

/// Pushes one refspec (never forced).
pub fn push_refspec(workdir: &Path, up: &Upstream, refspec: &str, timeout: Duration) -> Result<()> {
    let (ok, err) = git(workdir, &["push", "--quiet", &up.remote, refspec], timeout)?;
    if ok {
        return Ok(());
    }
    Err(remote_error(up, classify(&err), &err))
}

/// Whether `repo` names a git remote (a URL, or scp-like `user@host:path`)
/// rather than a local directory.
pub fn is_git_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    // scp-like `user@host:path`
    match (repo.find('@'), repo.find(':'), repo.find('/')) {
        (Some(at), Some(colon), slash) => at < colon && slash.is_none_or(|s| colon < s),
        _ => false,
    }
}

/// Why [`clone`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloneError {
    /// `git` could not be started.
    Spawn {
        /// The URL.
        url: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// `git clone` ran and failed: the URL holds no repository, cannot be
    /// reached, or refused our credentials.
    Failed {
        /// The URL.
        url: String,
        /// What kind of failure, from git's message.
        failure: Failure,
        /// git's message.
        detail: String,
    },
    /// The directory the clone goes in could not be made.
    Dir(Error),
    /// The finished clone could not be moved to its place, and no other
    /// process put one there.
    Place {
        /// The URL.
        url: String,
        /// Where the clone was to go.
        dest: std::path::PathBuf,
    },
}

impl CloneError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            CloneError::Failed { .. } => {
                Some("check the URL and that `git clone` of it works in a shell".into())
            }
            CloneError::Dir(e) => e.hint(),
            CloneError::Spawn { .. } | CloneError::Place { .. } => None,
        }
    }
}

impl std::fmt::Display for CloneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloneError::Spawn { url, source } => {
                write!(f, "cannot run git to clone {url}: {source}")
            }
            CloneError::Failed { url, detail, .. } => write!(f, "git clone {url} failed: {detail}"),
            CloneError::Dir(e) => e.fmt(f),
            CloneError::Place { url, dest } => write!(
                f,
                "cannot put the clone of {url} in place at {}",
                dest.display()
            ),
        }
    }
}

impl std::error::Error for CloneError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CloneError::Spawn { source, .. } => Some(source),
            CloneError::Dir(e) => Some(e),
            CloneError::Failed { .. } | CloneError::Place { .. } => None,
        }
    }
}

impl From<CloneError> for Error {
    fn from(e: CloneError) -> Self {
        match e {
            CloneError::Dir(e) => e,
            CloneError::Failed {
                url,
                failure,
                detail,
            } => Error::Remote {
                remote: "origin".into(),
                url,
                failure,
                message: format!("git clone failed: {detail}"),
                hint: "check the URL and that `git clone` of it works in a shell".into(),
            },
            other => Error::Git(other.to_string()),
        }
    }
}

/// Clones `url` into `dest` (whose parent is created, mode 0700). The clone
/// is made beside `dest` and renamed into place, so `dest` is either absent
/// or a whole clone; when another process put a clone there first, theirs is
/// kept. Like fetch and push, git never prompts (`GIT_TERMINAL_PROMPT=0`, no
/// stdin) and only the URL and the path are in its arguments.
pub fn clone(url: &str, dest: &Path) -> Result<(), CloneError> {
    let parent = dest.parent().ok_or_else(|| CloneError::Place {
        url: url.to_owned(),
        dest: dest.to_path_buf(),
    })?;
    crate::fsutil::create_dir_all(parent, 0o700).map_err(CloneError::Dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{}-{nanos}", std::process::id()));
    let out = Command::new("git")
        .args(["clone", "--quiet", "--"])
        .arg(url)
        .arg(&tmp)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CloneError::Spawn {
            url: url.to_owned(),
            source,
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(CloneError::Failed {
            url: url.to_owned(),
            failure: classify(&detail),
            detail,
        });
    }
    if std::fs::rename(&tmp, dest).is_err() {
        // Another process cloned it first: use theirs.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dest.join(".git").exists() {
            return Err(CloneError::Place {
                url: url.to_owned(),
                dest: dest.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// The version of the `git` on `PATH` (major, minor), if it runs.
pub(crate) fn git_version() -> Option<(u32, u32)> {
    let out = Command::new("git")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// `git version 2.39.5` (or `2.47.3.windows.1`…) as (2, 39).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.trim().strip_prefix("git version ")?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod version_tests {
    use super::parse_version;

    #[test]
    fn git_versions_are_read() {
        assert_eq!(parse_version("git version 2.39.5\n"), Some((2, 39)));
        assert_eq!(parse_version("git version 2.47.3.windows.1"), Some((2, 47)));
        assert_eq!(parse_version("not git"), None);
    }
}
