//! Landlock, the second layer (and the fallback without namespaces): no
//! access at all under the hidden paths, and TCP connections to one port
//! only. Landlock grants rather than denies, so every other path is granted:
//! each entry of each directory on the way down to a hidden path, except
//! the entries that lead to one. The directories on the way themselves may
//! be listed, but nothing new can be made directly in them.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, path_beneath_rules,
};

/// The newest Landlock this code knows; older kernels enforce what they can
/// (said in the result).
const ABI_USED: ABI = ABI::V5;

/// Restricts this thread and what it starts from now on. `Ok` says what is
/// enforced; `Err` when nothing could be.
pub fn restrict(hidden: &[PathBuf], tcp_port: u16) -> Result<String, String> {
    let hidden: Vec<PathBuf> = hidden
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    let all = AccessFs::from_all(ABI_USED);
    let err = |e: landlock::RulesetError| format!("Landlock: {e}");
    let granted = granted_paths(&hidden);
    let status = Ruleset::default()
        .handle_access(all)
        .map_err(err)?
        .handle_access(AccessNet::ConnectTcp)
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(&granted, all))
        .map_err(err)?
        .add_rule(PathBeneath::new(
            PathFd::new("/").map_err(|e| format!("Landlock: {e}"))?,
            AccessFs::ReadDir,
        ))
        .map_err(err)?
        .add_rule(NetPort::new(tcp_port, AccessNet::ConnectTcp))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    let what = format!(
        "reads under {} hidden path(s) denied, TCP only to port {tcp_port}",
        hidden.len()
    );
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(what),
        RulesetStatus::PartiallyEnforced => Ok(format!(
            "{what} (partly: this kernel's Landlock is older than ABI {})",
            ABI_USED as i32
        )),
        RulesetStatus::NotEnforced => Err("not supported by this kernel".into()),
    }
}

/// Every path to grant: for each directory from `/` down to a hidden path,
/// its entries that neither are nor lead to a hidden path.
fn granted_paths(hidden: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(Path::new("/"), hidden, &mut out);
    out
}

fn walk(dir: &Path, hidden: &[PathBuf], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if hidden.iter().any(|h| h == &path) {
            continue;
        }
        let leads_to_hidden = hidden.iter().any(|h| h.starts_with(&path));
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if leads_to_hidden && is_dir {
            walk(&path, hidden, out);
        } else {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_everything_but_the_way_to_a_hidden_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/keys")).unwrap();
        std::fs::create_dir_all(root.join("a/other")).unwrap();
        std::fs::write(root.join("a/file"), "x").unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        let mut out = Vec::new();
        walk(&root, &[root.join("a/keys")], &mut out);
        out.sort();
        assert_eq!(
            out,
            vec![root.join("a/file"), root.join("a/other"), root.join("b")]
        );
    }
}
