//! `agent_vault._native`: the Python binding of agent-vault, over the same
//! Rust core as the CLI. The pure-Python package `agent_vault` re-exports it.
//!
//! Reads run with the GIL released; one `Vault` may be shared by threads
//! (the session inside takes a shared lock per read).

use std::path::PathBuf;

use agent_vault_sdk_common::agent_vault_core::secrecy::{ExposeSecret, SecretString};
use agent_vault_sdk_common::{self as common, Failure, Kind, MetadataView, Options, Session};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeWarning};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

create_exception!(
    agent_vault,
    VaultError,
    PyException,
    "Base class of every agent-vault error. `code` is a stable string, `hint` what to do."
);
create_exception!(
    agent_vault,
    VaultNotFoundError,
    VaultError,
    "No vault at the path."
);
create_exception!(
    agent_vault,
    SecretNotFoundError,
    VaultError,
    "No such secret."
);
create_exception!(
    agent_vault,
    NotAuthorizedError,
    VaultError,
    "The key may not read this secret (not granted, use-only, or an unknown key)."
);
create_exception!(
    agent_vault,
    ManifestError,
    VaultError,
    "The manifest is not signed by a trusted owner."
);
create_exception!(
    agent_vault,
    InvalidNameError,
    VaultError,
    "A group or secret name breaks the naming rule."
);

fn to_py(f: Failure) -> PyErr {
    let err = match f.kind {
        Kind::VaultNotFound => VaultNotFoundError::new_err(f.message),
        Kind::SecretNotFound => SecretNotFoundError::new_err(f.message),
        Kind::NotAuthorized => NotAuthorizedError::new_err(f.message),
        Kind::Manifest => ManifestError::new_err(f.message),
        Kind::InvalidName => InvalidNameError::new_err(f.message),
        Kind::Vault => VaultError::new_err(f.message),
    };
    Python::attach(|py| {
        let v = err.value(py);
        let _ = v.setattr("code", f.kind.code());
        let _ = v.setattr("hint", f.hint);
    });
    err
}

/// Expands a leading `~/` the way the shell would.
fn expand_home(p: PathBuf) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p,
    }
}

/// Who the key belongs to.
#[pyclass(module = "agent_vault", frozen, get_all)]
#[derive(Clone)]
struct Principal {
    /// `"owner"` or `"agent"`.
    role: &'static str,
    /// The owner's or agent's name.
    name: String,
}

#[pymethods]
impl Principal {
    fn __repr__(&self) -> String {
        format!("Principal(role={:?}, name={:?})", self.role, self.name)
    }
    fn __eq__(&self, other: &Self) -> bool {
        self.role == other.role && self.name == other.name
    }
}

/// An agent and its grants.
#[pyclass(module = "agent_vault", frozen, get_all)]
struct AgentInfo {
    /// The agent's name.
    name: String,
    /// Its age recipient (public).
    recipient: String,
    /// Group → `"read"` or `"use"`.
    grants: Py<PyDict>,
}

#[pymethods]
impl AgentInfo {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "AgentInfo(name={:?}, grants={})",
            self.name,
            self.grants
                .bind(py)
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_default()
        )
    }
}

/// One secret's metadata; never its value.
#[pyclass(module = "agent_vault", frozen, get_all)]
struct SecretMetadata {
    /// `group/name`.
    path: String,
    /// The group.
    group: String,
    /// The name within the group.
    name: String,
    /// When it was first set (UTC), or None if the metadata is unreadable.
    created: Option<Py<PyAny>>,
    /// When its value last changed (UTC).
    updated: Option<Py<PyAny>>,
    /// When it expires, if it does.
    expires: Option<Py<PyAny>>,
    /// Its description.
    description: Option<String>,
    /// The group key generation it is encrypted to.
    generation: Option<u64>,
    /// Why the metadata could not be read, if it could not.
    error: Option<String>,
}

#[pymethods]
impl SecretMetadata {
    fn __repr__(&self) -> String {
        match &self.error {
            None => format!(
                "SecretMetadata(path={:?}, generation={}, description={:?})",
                self.path,
                self.generation.unwrap_or_default(),
                self.description
            ),
            Some(e) => format!("SecretMetadata(path={:?}, error={e:?})", self.path),
        }
    }
}

/// An agent-vault vault opened with a key.
///
/// `Vault(repo_path, key_path=None, key_str=None, auto_pull=True)`
#[pyclass(module = "agent_vault", frozen)]
struct Vault {
    session: Session,
}

impl Vault {
    fn warn(&self, py: Python<'_>) {
        for w in self.session.take_warnings() {
            let cat = py.get_type::<PyRuntimeWarning>();
            if let Ok(msg) = std::ffi::CString::new(w) {
                let _ = PyErr::warn(py, &cat, &msg, 1);
            }
        }
    }
}

#[pymethods]
impl Vault {
    #[new]
    #[pyo3(signature = (repo_path, key_path=None, key_str=None, auto_pull=true))]
    fn new(
        py: Python<'_>,
        repo_path: PathBuf,
        key_path: Option<PathBuf>,
        key_str: Option<String>,
        auto_pull: bool,
    ) -> PyResult<Self> {
        let opts = Options {
            repo: repo_path.to_string_lossy().into_owned(),
            key_path: key_path.map(expand_home),
            key_str: key_str.map(SecretString::from),
            auto_pull,
        };
        let session = py.detach(|| Session::open(opts)).map_err(to_py)?;
        let v = Vault { session };
        v.warn(py);
        Ok(v)
    }

    /// The secret's value as text (UTF-8).
    fn get<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyString>> {
        let value = py.detach(|| self.session.get(path)).map_err(to_py);
        self.warn(py);
        let value = value?;
        let text = common::utf8(path, &value).map_err(to_py)?;
        Ok(PyString::new(py, text))
    }

    /// The secret's value as bytes, exactly as set.
    fn get_bytes<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyBytes>> {
        let value = py.detach(|| self.session.get(path)).map_err(to_py);
        self.warn(py);
        let value = value?;
        Ok(PyBytes::new(py, value.expose_secret()))
    }

    /// Secrets (of one group, or all) with their metadata, sorted by path.
    #[pyo3(signature = (group=None))]
    fn list_secrets(&self, py: Python<'_>, group: Option<&str>) -> PyResult<Vec<SecretMetadata>> {
        let infos = py
            .detach(|| self.session.list_secrets(group))
            .map_err(to_py)?;
        let conv = |t: jiff::Timestamp| -> PyResult<Py<PyAny>> {
            Ok(t.into_pyobject(py)?.into_any().unbind())
        };
        let mut out = Vec::with_capacity(infos.len());
        for i in infos {
            let m = MetadataView::from(i);
            out.push(SecretMetadata {
                path: m.path,
                group: m.group,
                name: m.name,
                created: m.created.map(conv).transpose()?,
                updated: m.updated.map(conv).transpose()?,
                expires: m.expires.map(conv).transpose()?,
                description: m.description,
                generation: m.generation,
                error: m.error,
            });
        }
        Ok(out)
    }

    /// The agents and their grants (from the verified manifest).
    fn list_agents(&self, py: Python<'_>) -> PyResult<Vec<AgentInfo>> {
        let agents = py.detach(|| self.session.list_agents()).map_err(to_py)?;
        agents
            .into_iter()
            .map(|a| {
                let grants = PyDict::new(py);
                for (g, m) in a.grants {
                    grants.set_item(g, m)?;
                }
                Ok(AgentInfo {
                    name: a.name,
                    recipient: a.recipient,
                    grants: grants.unbind(),
                })
            })
            .collect()
    }

    /// Fetches and fast-forwards the vault's git clone. Returns
    /// `"no-remote"`, `"up-to-date"` or `"fast-forward"`.
    fn pull(&self, py: Python<'_>) -> PyResult<&'static str> {
        py.detach(|| self.session.pull()).map_err(to_py)
    }

    /// Who the key belongs to.
    fn whoami(&self, py: Python<'_>) -> PyResult<Principal> {
        let p = py.detach(|| self.session.whoami()).map_err(to_py)?;
        Ok(Principal {
            role: p.role,
            name: p.name,
        })
    }

    /// Drops the key (zeroized) and the reader; later calls raise VaultError.
    fn close(&self) {
        self.session.close();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.session.is_closed()
    }

    /// The directory holding `.agent-vault`.
    #[getter]
    fn root(&self) -> PathBuf {
        self.session.root().to_path_buf()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.session.close();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "Vault({:?}, root={:?}{})",
            self.session.origin(),
            self.session.root().display().to_string(),
            if self.session.is_closed() {
                ", closed"
            } else {
                ""
            }
        )
    }
}

/// The native module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Vault>()?;
    m.add_class::<SecretMetadata>()?;
    m.add_class::<AgentInfo>()?;
    m.add_class::<Principal>()?;
    m.add("VaultError", py.get_type::<VaultError>())?;
    m.add("VaultNotFoundError", py.get_type::<VaultNotFoundError>())?;
    m.add("SecretNotFoundError", py.get_type::<SecretNotFoundError>())?;
    m.add("NotAuthorizedError", py.get_type::<NotAuthorizedError>())?;
    m.add("ManifestError", py.get_type::<ManifestError>())?;
    m.add("InvalidNameError", py.get_type::<InvalidNameError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
