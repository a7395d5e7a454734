//! `init`: a new vault, its git repository if there is none, the owner key,
//! the pre-commit hook and the `.gitignore` lines that keep key material out.

use std::path::{Path, PathBuf};

use crate::crypto::Identity;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::git::VaultRepo;
use crate::keystore::{self, KeyStore, TrustPins};
use crate::model::{self, Config, FORMAT_VERSION, Manifest, ManifestSig, OwnerEntry};
use crate::names::OwnerName;
use crate::vault::{VAULT_DIR, Vault};

/// The pre-commit hook script installed by `init`.
pub const PRE_COMMIT_HOOK: &str = include_str!("../hooks/pre-commit");
/// The file name the hook script is installed under, beside `pre-commit`.
pub const HOOK_SCRIPT_NAME: &str = "agent-vault-pre-commit";

const VAULT_GITIGNORE: &str = "# agent-vault: local state and unfinished writes never go into git\n.local/\n.tmp-*\n*.key.age.next\n";
const ROOT_GITIGNORE_MARK: &str = "# agent-vault: keep private key material out of git";
const ROOT_GITIGNORE: &str = "# agent-vault: keep private key material out of git\n*.agekey\nowner.key\nprivate.key\nkeys.txt\n.agent-vault-home/\n";

/// What `init` made.
#[derive(Debug)]
pub struct InitReport {
    /// The new vault.
    pub vault: Vault,
    /// The owner's private key file.
    pub owner_key: PathBuf,
    /// The installed hook script, if the vault is in a git repository with hooks.
    pub hook: Option<PathBuf>,
    /// Whether a git repository was created.
    pub created_repo: bool,
}

/// Creates a vault in `dir` (created if missing) owned by `owner`.
pub fn init(dir: &Path, owner: OwnerName, keys: KeyStore) -> Result<InitReport> {
    fsutil::create_dir_all(dir, 0o755)?;
    let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let vdir = root.join(VAULT_DIR);
    let fs = crate::vfs::VaultFs::new(&root);
    if fs.entry_type(&vdir.join("config.yaml"))?.is_some() {
        return Err(Error::AlreadyInitialized(root));
    }
    let (repo, created_repo) = match VaultRepo::discover(&root)? {
        Some(r) => (r, false),
        None => (VaultRepo::init(&root)?, true),
    };

    let mut rnd = [0u8; 16];
    getrandom::fill(&mut rnd).map_err(|e| Error::InvalidInput(format!("no randomness: {e}")))?;
    let vault_id = hex::encode(rnd);
    let owner_key = keys.owner_key_path(&vault_id);
    let id = Identity::generate();
    keystore::write_private_key(&owner_key, &id)?;

    let config = Config {
        format: FORMAT_VERSION,
        vault_id: vault_id.clone(),
        expiry_warning_days: 30,
        auto_pull: true,
        pull_interval_seconds: 60,
        pull_timeout_seconds: 5,
        token_max_ttl_seconds: crate::model::DEFAULT_MAX_TTL,
        ui: None,
        broker: None,
    };
    let signing = id.signing_key();
    let mut manifest = Manifest {
        format: FORMAT_VERSION,
        vault_id: vault_id.clone(),
        owners: Default::default(),
        agents: Default::default(),
        groups: Default::default(),
        grants: Default::default(),
        broker: None,
        revoked: Default::default(),
    };
    manifest.owners.insert(
        owner.clone(),
        OwnerEntry {
            recipient: id.recipient().as_string(),
            signing_key: signing.public(),
        },
    );
    fs.create_dir_all(&vdir, 0o755)?;
    let mbytes = model::to_yaml(&manifest);
    let sig = ManifestSig::sign(&owner, &signing, &vault_id, &mbytes, b"");
    let files = [
        (vdir.join(".gitignore"), VAULT_GITIGNORE.as_bytes().to_vec()),
        (
            vdir.join(".gitattributes"),
            crate::git::merge::GITATTRIBUTES.as_bytes().to_vec(),
        ),
        (vdir.join("manifest.yaml"), mbytes),
        (vdir.join("manifest.sig"), model::to_yaml(&sig)),
        // Last: the vault exists once config.yaml does.
        (vdir.join("config.yaml"), model::to_yaml(&config)),
    ];
    for (p, b) in &files {
        fs.write_atomic(p, b, fsutil::PUBLIC_FILE)?;
    }
    keys.set_trust(&TrustPins {
        vault_id: vault_id.clone(),
        owners: [(owner, signing.public())].into_iter().collect(),
    })?;

    let gitignore = repo.workdir().join(".gitignore");
    let tree = crate::vfs::VaultFs::new(repo.workdir());
    let mut ignore = tree
        .read_optional(&gitignore, crate::vfs::Kind::Other)?
        .unwrap_or_default();
    if !String::from_utf8_lossy(&ignore).contains(ROOT_GITIGNORE_MARK) {
        if !ignore.is_empty() && !ignore.ends_with(b"\n") {
            ignore.push(b'\n');
        }
        ignore.extend_from_slice(ROOT_GITIGNORE.as_bytes());
        tree.write_atomic(&gitignore, &ignore, fsutil::PUBLIC_FILE)?;
    }
    let hook = install_hook(&repo)?;
    crate::git::merge::register_merge_driver(&repo)?;

    let mut paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    paths.push(gitignore);
    repo.commit_paths(&paths, "agent-vault: init vault")?;

    let vault = Vault::from_parts(root, config, keys);
    // A new vault here replaces whatever this machine pinned for the directory.
    vault.pin_repository()?;
    Ok(InitReport {
        vault,
        owner_key,
        hook: Some(hook),
        created_repo,
    })
}

/// Installs the hook script beside the repository's `pre-commit` hook
/// (honouring `core.hooksPath`) and makes `pre-commit` call it: a new
/// `pre-commit` if there is none, one added line if there is.
pub fn install_hook(repo: &VaultRepo) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let hooks_dir = match repo.repo().config()?.get_path("core.hooksPath") {
        Ok(p) if p.is_absolute() => p,
        Ok(p) => repo.workdir().join(p),
        Err(_) => repo.repo().path().join("hooks"),
    };
    fsutil::create_dir_all(&hooks_dir, 0o755)?;
    let script = hooks_dir.join(HOOK_SCRIPT_NAME);
    fsutil::write_atomic(&script, PRE_COMMIT_HOOK.as_bytes(), 0o755)?;
    let pre_commit = hooks_dir.join("pre-commit");
    let call =
        format!("\"$(dirname \"$0\")/{HOOK_SCRIPT_NAME}\" || exit 1  # added by agent-vault\n");
    match fsutil::read_optional(&pre_commit)? {
        None => {
            let body = format!("#!/bin/sh\n{call}");
            fsutil::write_atomic(&pre_commit, body.as_bytes(), 0o755)?;
        }
        Some(existing) => {
            let text = String::from_utf8_lossy(&existing).into_owned();
            if !text.contains(HOOK_SCRIPT_NAME) {
                // Our check runs first, so an existing hook that ends in
                // `exit 0` cannot skip it; the rest of the hook is kept as is.
                let new = match text.split_once('\n') {
                    Some((first, rest)) if first.starts_with("#!") => {
                        format!("{first}\n{call}{rest}")
                    }
                    _ => format!("{call}{text}"),
                };
                let mode = std::fs::metadata(&pre_commit)
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0o755)
                    | 0o111;
                fsutil::write_atomic(&pre_commit, new.as_bytes(), mode)?;
            }
        }
    }
    Ok(script)
}
