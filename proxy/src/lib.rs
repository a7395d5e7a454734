//! The agent-vault broker: an HTTPS proxy that terminates agents' TLS with
//! the vault's own CA, injects the credential of the service a request is
//! for, verifies the upstream, scrubs every injected value out of the
//! response and audits the request. Agents never hold the values.
// One system call has no safe wrapper in a crate: `sched.rs` makes it,
// with the only `allow`.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod admin;
pub mod audit;
mod authority;
pub mod body;
mod broker;
pub mod ca;
mod error;
pub mod export;
pub mod follow;
mod forward;
mod freshness;
mod handoff;
mod head;
mod health;
mod limits;
pub mod listener;
pub mod lru;
pub mod metrics;
pub mod net;
pub mod oauth;
mod passthrough;
pub mod problem;
mod ratelimit;
mod reply;
pub mod run;
mod sched;
pub mod server;
mod sigv4;
mod tunnel;
mod upstream;
mod websocket;

/// The certificate library [`ca::CaError`] carries errors of.
pub use rcgen;
pub use run::{run, serve_unix};
pub use server::{Broker, Options, ProxyError, serve};
