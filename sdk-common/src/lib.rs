//! The language-neutral half of the agent-vault SDKs (Python and Node): a
//! vault opened once with a key, whose verified reader is cached and rebuilt
//! only when the manifest files change, so a warm `get` reads a handful of
//! small files and does no manifest parsing or signature check of its own.
//!
//! Everything here goes through `agent-vault-core`: the format, the crypto
//! and the access rules have one implementation, shared with the CLI.
//!
//! A [`Session`] is `Send + Sync`: one open vault may serve many threads.
//! Reads take a shared lock; [`Session::pull`] and [`Session::close`] take
//! it exclusively.
//!
//! The crate is split by job: [`session`] (the open vault), [`failure`]
//! (what an error is to an SDK), [`convert`] (core's types as plain views the
//! SDKs map to Python or JavaScript). Cloning a git URL is core's
//! ([`agent_vault_core::git::remote::clone`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod convert;
pub mod failure;
pub mod session;

pub use agent_vault_core;
pub use agent_vault_core::git::remote::is_git_url;
pub use convert::{AgentInfo, MetadataView, Principal, SecretInfo, utf8};
pub use failure::{Failure, Kind, Result};
pub use jiff;
pub use session::{Options, Session, clone_dir};

#[cfg(test)]
mod tests {
    use super::*;
    use agent_vault_core::Error;

    #[test]
    fn urls_and_paths() {
        for u in [
            "https://example.invalid/v.git",
            "file:///tmp/v.git",
            "ssh://git@host/v",
            "git@host:team/vault.git",
        ] {
            assert!(is_git_url(u), "{u}");
        }
        for p in [".", "/tmp/vault", "vault", "dir/with@at:colon", "./a:b"] {
            assert!(!is_git_url(p), "{p}");
        }
    }

    #[test]
    fn codes_are_stable() {
        let e = Failure::from(Error::SecretNotFound("a/b".into()));
        assert_eq!(e.kind.code(), "SECRET_NOT_FOUND");
        assert_eq!(e.message, "no secret a/b");
        let e = Failure::from(Error::UnknownKey);
        assert_eq!(e.kind.code(), "NOT_AUTHORIZED");
    }
}
