//! A small harness: each test gets its own temp directory with a key store
//! (`home/`) and a vault (`vault/`), and runs the built binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_agent-vault");

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    pub vault: PathBuf,
}

impl Env {
    /// A fresh vault owned by "alice".
    pub fn new() -> Self {
        let env = Self::empty();
        env.ok(&["init", ".", "--owner", "alice"]);
        env
    }

    /// A temp dir with an empty key store and no vault yet.
    pub fn empty() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        let vault = tmp.path().join("vault");
        std::fs::create_dir_all(&vault).expect("mkdir");
        Env { tmp, home, vault }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(&self.vault)
            .env("AGENT_VAULT_HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.tmp.path().join("gitconfig"))
            .env_remove("AGENT_VAULT_KEY")
            .env_remove("AGENT_VAULT_DIR");
        c
    }

    /// A command run in another clone, with another key store.
    pub fn run_in(&self, dir: &Path, home: &Path, args: &[&str]) -> Output {
        self.cmd(args)
            .current_dir(dir)
            .env("AGENT_VAULT_HOME", home)
            .stdin(Stdio::null())
            .output()
            .expect("spawn")
    }

    /// `git` in any directory, with this test's git config.
    pub fn git_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.tmp.path().join("gitconfig"))
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git")
    }

    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args, b"");
        assert!(
            out.status.success(),
            "agent-vault {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args, b"");
        assert!(
            !out.status.success(),
            "agent-vault {args:?} should have failed; stdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn set(&self, path: &str, value: &[u8]) {
        let out = self.run(&["set", path], value);
        assert!(
            out.status.success(),
            "set {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn get(&self, path: &str) -> Vec<u8> {
        self.ok(&["get", path]).stdout
    }

    pub fn get_as(&self, key: &Path, path: &str) -> Output {
        self.run(&["get", path, "--key", key.to_str().expect("utf8")], b"")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_slice(&self.ok(&a).stdout).expect("json")
    }

    pub fn vault_id(&self) -> String {
        let cfg =
            std::fs::read_to_string(self.vault.join(".agent-vault/config.yaml")).expect("config");
        cfg.lines()
            .find_map(|l| l.strip_prefix("vault_id: "))
            .expect("vault_id")
            .trim()
            .to_owned()
    }

    pub fn owner_key(&self) -> PathBuf {
        self.home
            .join("keys")
            .join(self.vault_id())
            .join("owner.key")
    }

    /// The vault CA's certificate (what agents trust for the broker's
    /// leaves), written to `broker-ca.pem` in the test's directory.
    pub fn broker_ca(&self) -> PathBuf {
        let file = self.tmp.path().join("broker-ca.pem");
        std::fs::write(&file, self.ok(&["ca", "cert"]).stdout).unwrap();
        file
    }

    /// Adds an agent and returns its key file.
    pub fn add_agent(&self, name: &str) -> PathBuf {
        let v = self.json(&["add-agent", name]);
        PathBuf::from(v["key_file"].as_str().expect("key_file"))
    }

    /// A bare repository at `srv/vault.git` (over `file://`) made the
    /// vault's `origin`, and the vault pushed to it; its path.
    pub fn push_to_bare(&self) -> PathBuf {
        let bare = self.tmp.path().join("srv/vault.git");
        std::fs::create_dir_all(&bare).unwrap();
        let init = self.git_in(&bare, &["init", "--bare", "-q"]);
        assert!(init.status.success(), "git init --bare");
        self.git(&[
            "remote",
            "add",
            "origin",
            &format!("file://{}", bare.display()),
        ]);
        let out = self.run(&["push"], b"");
        assert!(
            out.status.success(),
            "push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bare
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = self.git_out(args);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn git_out(&self, args: &[&str]) -> Output {
        self.git_in(&self.vault, args)
    }

    /// Every file below `dir` with its contents, for before/after comparisons.
    pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(b) = std::fs::read(&p) {
                    out.push((p, b));
                }
            }
        }
        out.sort();
        out
    }
}

/// A group's public recipient, from the manifest (anyone can read it).
pub fn group_recipient(env: &Env, group: &str) -> String {
    let m = std::fs::read_to_string(env.vault.join(".agent-vault/manifest.yaml")).unwrap();
    let mut lines = m.lines().skip_while(|l| !l.starts_with("groups:"));
    lines
        .find(|l| l.trim() == format!("{group}:"))
        .and_then(|_| lines.find_map(|l| l.trim().strip_prefix("recipient: ").map(str::to_owned)))
        .unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Copies what is in `from` into `to` (which exists), as `cp -a` does:
/// modes, times and links kept.
pub fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .args([
            "-a",
            &format!("{}/.", from.display()),
            &to.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Whether `needle` occurs in any file below `dir`.
pub fn found_in_files(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    Env::snapshot(dir)
        .into_iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle))
        .map(|(p, _)| p)
        .collect()
}

pub fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// `tests/e2e/node/node_modules`, where undici is (scripts/test-all.sh runs
/// `npm install` there); fails the test clearly when it is missing.
pub fn node_modules() -> PathBuf {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/node/node_modules");
    assert!(
        modules.join("undici/package.json").is_file(),
        "undici is not installed in {}: run scripts/test-all.sh (or `npm install --no-audit --no-fund` in tests/e2e/node) first",
        modules.display()
    );
    modules
}

/// Where format 2 keeps a secret's file, relative to `.agent-vault/`:
/// `secrets/<group>/_<xx>/<name><suffix>`, `xx` the first byte of the
/// name's SHA-256 in hex. Computed here on its own (not by core) so that
/// the documented recipe is what the tests check.
pub fn secret_file(group: &str, name: &str, suffix: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_bytes());
    format!("secrets/{group}/_{:02x}/{name}{suffix}", h[0])
}
