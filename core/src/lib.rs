//! The agent-vault library: names, the on-disk format, age encryption, the
//! access model, signatures, git and locking. No async runtime, no network.
//!
//! ```no_run
//! use agent_vault_core::{KeySource, KeyStore, Reader, Vault};
//!
//! # fn main() -> agent_vault_core::Result<()> {
//! let vault = Vault::find(std::path::Path::new("."), KeyStore::from_env()?)?;
//! let reader = Reader::open(&vault, &KeySource::resolve(None))?;
//! let value = reader.get(&"stripe/api-key".parse()?)?;
//! # let _ = value;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod access;
pub mod broker;
pub mod check;
pub mod crypto;
pub mod dotenv;
pub(crate) mod error;
pub mod fsutil;
pub mod git;
pub(crate) mod git_index;
pub mod history;
pub mod init;
pub(crate) mod journal;
pub mod keyring;
pub mod keystore;
pub mod layout;
pub mod live;
pub mod model;
pub(crate) mod names;
pub mod progress;
pub mod proposals;
pub mod reader;
pub mod sync;
pub(crate) mod trace;
pub(crate) mod vault;
pub(crate) mod vfs;
pub mod writer;
pub(crate) mod yaml;

pub use age;
pub use age::secrecy;
pub use error::{Error, RemoteFailure, Result};
pub use keystore::{KeySource, KeyStore};
pub use model::Mode;
pub use names::{AgentName, GroupName, OwnerName, ProposalId, SecretPath};
pub use reader::Reader;
pub use vault::{Role, SecretInfo, Vault};
