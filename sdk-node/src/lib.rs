//! The Node binding of agent-vault (napi-rs), over the same Rust core as the
//! CLI. `index.js` wraps it: error classes with a stable `code`, warnings
//! through `process.emitWarning`.
//!
//! `get`/`getBuffer`/`pull` run on libuv's thread pool (napi `AsyncTask`),
//! never on the event loop; one `Vault` serves concurrent promises (the
//! session inside takes a shared lock per read).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use agent_vault_sdk_common::agent_vault_core::crypto::SecretValue;
use agent_vault_sdk_common::agent_vault_core::secrecy::{ExposeSecret, SecretString};
use agent_vault_sdk_common::{self as common, Failure, MetadataView, Options, Session};
use napi::bindgen_prelude::*;
use napi_derive::napi;

/// Failures cross into JavaScript as a marked JSON reason that `index.js`
/// turns into an error class with `code`, `message` and `hint`.
fn to_napi(f: Failure) -> Error {
    let body = serde_json::json!({
        "code": f.kind.code(),
        "message": f.message,
        "hint": f.hint,
    });
    Error::new(Status::GenericFailure, format!("AGENT_VAULT_ERROR{body}"))
}

/// Options of `new Vault(...)`.
#[napi(object)]
pub struct VaultOptions {
    /// A directory in (or under) the vault, or a git URL to clone.
    pub repo_path: String,
    /// A key file.
    pub key_path: Option<String>,
    /// A raw `AGE-SECRET-KEY-1…` (or a key file's path), kept in memory only.
    pub key_str: Option<String>,
    /// Pull before reads, at most once per interval (default true).
    pub auto_pull: Option<bool>,
}

/// Who the key belongs to.
#[napi(object)]
pub struct Principal {
    /// `"owner"` or `"agent"`.
    pub role: String,
    /// The name.
    pub name: String,
}

/// An agent and its grants.
#[napi(object)]
pub struct AgentInfo {
    /// The agent's name.
    pub name: String,
    /// Its age recipient (public).
    pub recipient: String,
    /// Group → `"read"` or `"use"`.
    pub grants: BTreeMap<String, String>,
}

/// One secret's metadata; never its value. Timestamps are RFC 3339 strings
/// exactly as `agent-vault list --json` prints them.
#[napi(object)]
pub struct SecretMetadata {
    /// `group/name`.
    pub path: String,
    /// The group.
    pub group: String,
    /// The name within the group.
    pub name: String,
    /// When it was first set.
    pub created: Option<String>,
    /// When its value last changed.
    pub updated: Option<String>,
    /// When it expires, if it does.
    pub expires: Option<String>,
    /// Its description.
    pub description: Option<String>,
    /// The group key generation it is encrypted to.
    pub generation: Option<i64>,
    /// Why the metadata could not be read, if it could not.
    pub error: Option<String>,
}

/// A secret read on the thread pool.
pub struct GetText {
    session: Arc<Session>,
    path: String,
}

impl Task for GetText {
    type Output = SecretValue;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        self.session.get(&self.path).map_err(to_napi)
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        common::utf8(&self.path, &output)
            .map(str::to_owned)
            .map_err(to_napi)
    }
}

/// A secret read as bytes on the thread pool.
pub struct GetBytes {
    session: Arc<Session>,
    path: String,
}

impl Task for GetBytes {
    type Output = SecretValue;
    type JsValue = Buffer;

    fn compute(&mut self) -> Result<Self::Output> {
        self.session.get(&self.path).map_err(to_napi)
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(Buffer::from(output.expose_secret().to_vec()))
    }
}

/// A fetch and fast-forward on the thread pool.
pub struct Pull {
    session: Arc<Session>,
}

impl Task for Pull {
    type Output = &'static str;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        self.session.pull().map_err(to_napi)
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output.to_owned())
    }
}

/// The native vault; `index.js` wraps it.
#[napi]
pub struct NativeVault {
    session: Arc<Session>,
}

#[napi]
impl NativeVault {
    /// Opens the vault (clones a git URL first), loads the key, verifies the manifest.
    #[napi(constructor)]
    pub fn new(opts: VaultOptions) -> Result<Self> {
        let session = Session::open(Options {
            repo: opts.repo_path,
            key_path: opts.key_path.map(PathBuf::from),
            key_str: opts.key_str.map(SecretString::from),
            auto_pull: opts.auto_pull.unwrap_or(true),
        })
        .map_err(to_napi)?;
        Ok(NativeVault {
            session: Arc::new(session),
        })
    }

    /// The value as UTF-8 text, read off the event loop.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn get(&self, path: String) -> AsyncTask<GetText> {
        AsyncTask::new(GetText {
            session: self.session.clone(),
            path,
        })
    }

    /// The value as bytes, read off the event loop.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn get_buffer(&self, path: String) -> AsyncTask<GetBytes> {
        AsyncTask::new(GetBytes {
            session: self.session.clone(),
            path,
        })
    }

    /// Fetch and fast-forward, off the event loop.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn pull(&self) -> AsyncTask<Pull> {
        AsyncTask::new(Pull {
            session: self.session.clone(),
        })
    }

    /// Secrets with metadata.
    #[napi]
    pub fn list_secrets(&self, group: Option<String>) -> Result<Vec<SecretMetadata>> {
        let infos = self
            .session
            .list_secrets(group.as_deref())
            .map_err(to_napi)?;
        Ok(infos
            .into_iter()
            .map(MetadataView::from)
            .map(|m| SecretMetadata {
                path: m.path,
                group: m.group,
                name: m.name,
                created: m.created.map(|t| t.to_string()),
                updated: m.updated.map(|t| t.to_string()),
                expires: m.expires.map(|t| t.to_string()),
                description: m.description,
                generation: m.generation.and_then(|g| i64::try_from(g).ok()),
                error: m.error,
            })
            .collect())
    }

    /// Agents and their grants.
    #[napi]
    pub fn list_agents(&self) -> Result<Vec<AgentInfo>> {
        Ok(self
            .session
            .list_agents()
            .map_err(to_napi)?
            .into_iter()
            .map(|a| AgentInfo {
                name: a.name,
                recipient: a.recipient,
                grants: a
                    .grants
                    .into_iter()
                    .map(|(g, m)| (g, m.to_owned()))
                    .collect(),
            })
            .collect())
    }

    /// Who the key belongs to.
    #[napi]
    pub fn whoami(&self) -> Result<Principal> {
        let p = self.session.whoami().map_err(to_napi)?;
        Ok(Principal {
            role: p.role.to_owned(),
            name: p.name,
        })
    }

    /// Drops the key (zeroized) and the reader.
    #[napi]
    pub fn close(&self) {
        self.session.close();
    }

    /// Whether `close()` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.session.is_closed()
    }

    /// The directory holding `.agent-vault`.
    #[napi(getter)]
    pub fn root(&self) -> String {
        self.session.root().display().to_string()
    }

    /// What the vault was opened from.
    #[napi(getter)]
    pub fn origin(&self) -> String {
        self.session.origin().to_owned()
    }

    /// Warnings since the last call (an unreachable remote).
    #[napi]
    pub fn take_warnings(&self) -> Vec<String> {
        self.session.take_warnings()
    }
}
