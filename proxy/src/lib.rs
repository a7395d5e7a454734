//! The agent-vault broker. Today: its certificate authority — the CA the
//! broker terminates agents' TLS with, and the per-host leaf certificates it
//! mints (each with its own key, cached, short-lived).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod ca;
