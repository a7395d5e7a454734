//! The shared half of the SDKs against real vaults made with core's API (no
//! CLI): failure kinds and codes, the neutral metadata view, a session's
//! get/list/refresh, and a clone of a local bare repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use agent_vault_core::git::remote::{self, CloneError};
use agent_vault_core::model::{Mode, SecretMeta};
use agent_vault_core::secrecy::ExposeSecret;
use agent_vault_core::sync::PullOutcome;
use agent_vault_core::writer::{SetOptions, Writer};
use agent_vault_core::{
    AgentName, Error, GroupName, KeySource, KeyStore, OwnerName, Role, SecretPath, Vault,
};
use agent_vault_sdk_common::convert::{self, outcome_name};
use agent_vault_sdk_common::{
    Failure, Kind, MetadataView, Options, SecretInfo, Session, agent_vault_core, clone_dir,
    is_git_url, utf8,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A vault in a temp dir, made and written through core: an owner, an
/// agent `bot` with `read` on `app` and `use` on `ops`.
struct Made {
    tmp: tempfile::TempDir,
    keys: KeyStore,
    root: PathBuf,
    owner_key: PathBuf,
    bot_key: PathBuf,
}

impl Made {
    fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let keys = KeyStore::at(tmp.path().join("home"));
        let report = agent_vault_core::init::init(
            &tmp.path().join("vault"),
            "alice".parse::<OwnerName>()?,
            keys.clone(),
        )?;
        let root = report.vault.root().to_path_buf();
        let owner_key = report.owner_key;
        let made = Made {
            tmp,
            keys,
            root,
            owner_key,
            bot_key: PathBuf::new(),
        };
        made.set("app/api-key", b"sk_live_first")?;
        made.set("app/db/password", b"hunter2")?;
        made.set("ops/token", b"ops-secret")?;
        let bot: AgentName = "bot".parse()?;
        let vault = made.vault()?;
        let mut w = Writer::open(&vault, &made.owner())?;
        let bot_key = w.add_agent(&bot)?;
        w.grant(&bot, &"app".parse::<GroupName>()?, Mode::Read)?;
        w.grant(&bot, &"ops".parse::<GroupName>()?, Mode::Use)?;
        Ok(Made { bot_key, ..made })
    }

    fn vault(&self) -> agent_vault_core::Result<Vault> {
        Vault::open(&self.root, self.keys.clone())
    }

    fn owner(&self) -> KeySource {
        KeySource::File(self.owner_key.clone())
    }

    fn set(&self, path: &str, value: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
        let vault = self.vault()?;
        let mut w = Writer::open(&vault, &self.owner())?;
        w.set(&path.parse::<SecretPath>()?, value, &SetOptions::default())?;
        Ok(())
    }

    fn revoke(&self, agent: &str, group: &str) -> TestResult {
        let vault = self.vault()?;
        let mut w = Writer::open(&vault, &self.owner())?;
        w.revoke(&agent.parse()?, &group.parse()?)?;
        Ok(())
    }

    fn open(&self, repo: &str, key: &Path) -> Result<Session, Failure> {
        Session::open_with(
            Options {
                repo: repo.to_owned(),
                key_path: Some(key.to_path_buf()),
                key_str: None,
                auto_pull: false,
            },
            self.keys.clone(),
        )
    }

    fn open_local(&self, key: &Path) -> Result<Session, Failure> {
        self.open(&self.root.display().to_string(), key)
    }
}

fn git(dir: &Path, args: &[&str]) -> TestResult {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn text(s: &Session, path: &str) -> Result<String, Failure> {
    let v = s.get(path)?;
    Ok(utf8(path, &v)?.to_owned())
}

fn kind_of(e: Error) -> (Kind, &'static str) {
    let f = Failure::from(e);
    (f.kind, f.kind.code())
}

#[test]
fn every_core_error_has_its_kind_and_code() {
    let io = || std::io::Error::other("boom");
    let cases: Vec<(Error, Kind, &str)> = vec![
        (
            Error::VaultNotFound("/nowhere".into()),
            Kind::VaultNotFound,
            "VAULT_NOT_FOUND",
        ),
        (
            Error::SecretNotFound("a/b".into()),
            Kind::SecretNotFound,
            "SECRET_NOT_FOUND",
        ),
        (
            Error::NotGranted {
                agent: "bot".into(),
                group: "app".into(),
            },
            Kind::NotAuthorized,
            "NOT_AUTHORIZED",
        ),
        (
            Error::UseOnly {
                agent: "bot".into(),
                group: "ops".into(),
            },
            Kind::NotAuthorized,
            "NOT_AUTHORIZED",
        ),
        (Error::UnknownKey, Kind::NotAuthorized, "NOT_AUTHORIZED"),
        (Error::NotOwner, Kind::NotAuthorized, "NOT_AUTHORIZED"),
        (
            Error::UnsignedManifest("bad signature".into()),
            Kind::Manifest,
            "MANIFEST",
        ),
        (
            Error::InvalidName {
                kind: "group",
                name: "Bad!".into(),
                rule: "lowercase",
            },
            Kind::InvalidName,
            "INVALID_NAME",
        ),
        (Error::io("/x", io()), Kind::Vault, "VAULT"),
        (Error::corrupt("/x", "truncated"), Kind::Vault, "VAULT"),
        (
            Error::Decrypt {
                path: "/x".into(),
                reason: "no key".into(),
            },
            Kind::Vault,
            "VAULT",
        ),
        (
            Error::UnsignedSecret {
                path: "a/b".into(),
                reason: "bad".into(),
            },
            Kind::Vault,
            "VAULT",
        ),
        (Error::Git("x".into()), Kind::Vault, "VAULT"),
        (
            Error::Remote {
                remote: "origin".into(),
                url: "file:///x".into(),
                failure: remote::Failure::Unreachable,
                message: "cannot reach it".into(),
                hint: "check".into(),
            },
            Kind::Vault,
            "VAULT",
        ),
        (Error::GroupNotFound("g".into()), Kind::Vault, "VAULT"),
        (Error::InvalidInput("no".into()), Kind::Vault, "VAULT"),
    ];
    for (e, kind, code) in cases {
        let shown = format!("{e:?}");
        assert_eq!(kind_of(e), (kind, code), "{shown}");
    }
    // The message is core's, the hint core's.
    let e = Error::UnknownKey;
    let (msg, hint) = (e.to_string(), e.hint());
    let f = Failure::from(e);
    assert_eq!(f.message, msg);
    assert_eq!(f.to_string(), msg);
    assert_eq!(f.hint, hint);
    assert!(f.hint.is_some());
}

#[test]
fn clone_errors_have_their_kinds() {
    let failed = CloneError::Failed {
        url: "file:///x.git".into(),
        failure: remote::Failure::Unreachable,
        detail: "fatal: not a repository".into(),
    };
    let f = Failure::from(failed);
    assert_eq!(f.kind, Kind::VaultNotFound);
    assert_eq!(
        f.message,
        "git clone file:///x.git failed: fatal: not a repository"
    );
    assert_eq!(
        f.hint.as_deref(),
        Some("check the URL and that `git clone` of it works in a shell")
    );
    let place = CloneError::Place {
        url: "u".into(),
        dest: "/d".into(),
    };
    assert_eq!(Failure::from(place).kind, Kind::Vault);
    let dir = CloneError::Dir(Error::io("/d", std::io::Error::other("denied")));
    let f = Failure::from(dir);
    assert_eq!((f.kind, f.message.as_str()), (Kind::Vault, "/d: denied"));
}

#[test]
fn metadata_views() -> TestResult {
    let t1: jiff::Timestamp = "2026-01-02T03:04:05Z".parse()?;
    let t2: jiff::Timestamp = "2026-02-03T04:05:06Z".parse()?;
    let meta = SecretMeta {
        created: t1,
        updated: t2,
        expires: Some(t2),
        description: Some("the API key".into()),
        ciphertext_sha256: "00".into(),
        generation: 3,
        signing_key: String::new(),
        signature: String::new(),
        signed: 2,
    };
    let info = SecretInfo {
        path: "app/api-key".into(),
        group: "app".into(),
        name: "api-key".into(),
        meta: Ok(meta),
    };
    assert_eq!(
        MetadataView::from(info),
        MetadataView {
            path: "app/api-key".into(),
            group: "app".into(),
            name: "api-key".into(),
            created: Some(t1),
            updated: Some(t2),
            expires: Some(t2),
            description: Some("the API key".into()),
            generation: Some(3),
            error: None,
        }
    );
    let broken = SecretInfo {
        path: "app/x".into(),
        group: "app".into(),
        name: "x".into(),
        meta: Err("unreadable".into()),
    };
    let v = MetadataView::from(broken);
    assert_eq!(v.error.as_deref(), Some("unreadable"));
    assert_eq!(
        (v.created, v.updated, v.expires, v.generation),
        (None, None, None, None)
    );
    assert_eq!(v.description, None);

    assert_eq!(convert::mode_name(Mode::Read), "read");
    assert_eq!(convert::mode_name(Mode::Use), "use");
    assert_eq!(outcome_name(&PullOutcome::NoRemote), "no-remote");
    assert_eq!(outcome_name(&PullOutcome::UpToDate), "up-to-date");
    assert_eq!(outcome_name(&PullOutcome::FastForward), "fast-forward");
    let p = agent_vault_sdk_common::Principal::from(&Role::Agent("bot".parse()?));
    assert_eq!((p.role, p.name.as_str()), ("agent", "bot"));
    let p = agent_vault_sdk_common::Principal::from(&Role::Owner("alice".parse()?));
    assert_eq!((p.role, p.name.as_str()), ("owner", "alice"));
    Ok(())
}

#[test]
fn a_session_reads_lists_and_follows_changes() -> TestResult {
    let m = Made::new()?;
    let s = m.open_local(&m.bot_key)?;
    assert_eq!(s.root(), m.root.as_path());
    assert_eq!(text(&s, "app/api-key")?, "sk_live_first");
    assert_eq!(s.get("app/db/password")?.expose_secret(), b"hunter2");
    let who = s.whoami()?;
    assert_eq!((who.role, who.name.as_str()), ("agent", "bot"));

    // use-only, missing, malformed
    let e = s.get("ops/token").err().ok_or("ops/token was readable")?;
    assert_eq!(e.kind.code(), "NOT_AUTHORIZED");
    assert!(e.hint.is_some());
    let e = s.get("app/none").err().ok_or("app/none exists")?;
    assert_eq!(e.kind, Kind::SecretNotFound);
    let e = s.get("App/Bad!").err().ok_or("a bad name parsed")?;
    assert_eq!(e.kind, Kind::InvalidName);

    let agents = s.list_agents()?;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].name, "bot");
    assert_eq!(
        agents[0].grants,
        vec![("app".to_owned(), "read"), ("ops".to_owned(), "use")]
    );

    let all: Vec<MetadataView> = s
        .list_secrets(None)?
        .into_iter()
        .map(MetadataView::from)
        .collect();
    let paths: Vec<&str> = all.iter().map(|v| v.path.as_str()).collect();
    assert_eq!(paths, ["app/api-key", "app/db/password", "ops/token"]);
    assert!(all.iter().all(|v| v.error.is_none() && v.created.is_some()));
    assert_eq!(all[1].group, "app");
    assert_eq!(all[1].name, "db/password");
    let ops = s.list_secrets(Some("ops"))?;
    assert_eq!(ops.len(), 1);
    let e = s
        .list_secrets(Some("Bad!"))
        .err()
        .ok_or("a bad group parsed")?;
    assert_eq!(e.kind, Kind::InvalidName);

    // A new value is seen by the open session.
    m.set("app/api-key", b"sk_live_second")?;
    assert_eq!(text(&s, "app/api-key")?, "sk_live_second");
    // A revoke (the manifest changes): the reader is rebuilt and access goes.
    m.revoke("bot", "app")?;
    let e = s.get("app/api-key").err().ok_or("read after the revoke")?;
    assert_eq!(e.kind, Kind::NotAuthorized);
    assert!(s.list_agents()?[0].grants.iter().all(|(g, _)| g != "app"));

    // Not UTF-8: an error naming the secret, never the value.
    m.set("app/blob", &[0xff, 0xfe])?;
    let o = m.open_local(&m.owner_key)?;
    let v = o.get("app/blob")?;
    let e = utf8("app/blob", &v).err().ok_or("0xff decoded")?;
    assert_eq!(e.kind, Kind::Vault);
    assert!(e.message.contains("app/blob") && e.message.contains("offset 0"));

    // A session with no remote pulls nothing.
    assert_eq!(o.pull()?, "no-remote");

    s.close();
    assert!(s.is_closed());
    let e = s.get("app/db/password").err().ok_or("read after close")?;
    assert_eq!(
        (e.kind, e.message.as_str()),
        (Kind::Vault, "this vault is closed")
    );
    Ok(())
}

#[test]
fn opening_fails_with_its_kind() -> TestResult {
    let m = Made::new()?;
    let empty = m.tmp.path().join("empty");
    std::fs::create_dir(&empty)?;
    let e = m
        .open(&empty.display().to_string(), &m.bot_key)
        .err()
        .ok_or("opened a dir with no vault")?;
    assert_eq!(e.kind, Kind::VaultNotFound);
    // A key of no owner or agent of this vault.
    let other = Made::new()?;
    let e = m
        .open_local(&other.owner_key)
        .err()
        .ok_or("opened with a stranger's key")?;
    assert_eq!(e.kind, Kind::NotAuthorized);
    // Both key options at once.
    let e = Session::open_with(
        Options {
            repo: m.root.display().to_string(),
            key_path: Some(m.bot_key.clone()),
            key_str: Some("x".to_owned().into()),
            auto_pull: false,
        },
        m.keys.clone(),
    )
    .err()
    .ok_or("took two keys")?;
    assert_eq!(e.kind, Kind::Vault);
    Ok(())
}

#[test]
fn a_git_url_is_cloned_once_and_pulled() -> TestResult {
    let m = Made::new()?;
    let bare = m.tmp.path().join("remote.git");
    git(
        m.tmp.path(),
        &[
            "clone",
            "--bare",
            "-q",
            &m.root.display().to_string(),
            "remote.git",
        ],
    )?;
    git(
        &m.root,
        &["remote", "add", "origin", &bare.display().to_string()],
    )?;
    let url = format!("file://{}", bare.display());
    assert!(is_git_url(&url));

    let s = m.open(&url, &m.bot_key)?;
    let dir = clone_dir(&m.keys, &url);
    assert!(dir.starts_with(m.keys.root().join("clones")));
    assert_eq!(s.root().canonicalize()?, dir.canonicalize()?);
    assert_eq!(s.origin(), url);
    assert_eq!(text(&s, "app/api-key")?, "sk_live_first");

    // A change pushed upstream comes in with pull.
    m.set("app/api-key", b"sk_live_pushed")?;
    git(&m.root, &["push", "-q", "origin", "HEAD"])?;
    assert_eq!(s.pull()?, "fast-forward");
    assert_eq!(text(&s, "app/api-key")?, "sk_live_pushed");
    assert_eq!(s.pull()?, "up-to-date");

    // A second open uses the clone already there.
    let again = m.open(&url, &m.bot_key)?;
    assert_eq!(again.root(), s.root());
    Ok(())
}

#[test]
fn core_clone_is_whole_or_absent() -> TestResult {
    let m = Made::new()?;
    let url = format!("file://{}", m.root.display());
    let dest = m.tmp.path().join("c").join("one");
    remote::clone(&url, &dest)?;
    assert!(dest.join(".agent-vault").join("config.yaml").is_file());
    // Cloning again onto a finished clone keeps it (another process won).
    remote::clone(&url, &dest)?;
    assert!(dest.join(".git").is_dir());
    let leftovers: Vec<_> = std::fs::read_dir(m.tmp.path().join("c"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, ["one"]);

    // A URL with no repository: typed, with git's message, and nothing left behind.
    let gone = format!("file://{}", m.tmp.path().join("none.git").display());
    let dest = m.tmp.path().join("d").join("two");
    let e = remote::clone(&gone, &dest)
        .err()
        .ok_or("cloned a missing repo")?;
    match &e {
        CloneError::Failed { url, detail, .. } => {
            assert_eq!(url, &gone);
            assert!(!detail.is_empty());
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }
    assert!(
        e.to_string()
            .starts_with(&format!("git clone {gone} failed: "))
    );
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(m.tmp.path().join("d"))?.count(), 0);
    // Into core's error: a remote failure with the same hint.
    let core = Error::from(e);
    assert!(matches!(core, Error::Remote { .. }), "{core:?}");
    assert_eq!(
        core.hint().as_deref(),
        Some("check the URL and that `git clone` of it works in a shell")
    );

    // Through a session: VAULT_NOT_FOUND naming git clone.
    let e = m
        .open(&gone, &m.bot_key)
        .err()
        .ok_or("opened a missing URL")?;
    assert_eq!(e.kind.code(), "VAULT_NOT_FOUND");
    assert!(e.message.contains("git clone"), "{}", e.message);
    Ok(())
}
