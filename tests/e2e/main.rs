//! End-to-end tests of the `agent-vault` binary against real git, the real
//! `age` CLI and real processes. One test binary for the workspace's CLI.

#![allow(clippy::unwrap_used)]

mod harness;

mod access;
mod agent_tokens;
mod audit_log;
mod basics;
mod broker;
mod demo_isolated;
mod fanout;
mod faults;
mod fleet;
mod fleet_audit;
mod fleet_lb;
mod fleet_tls;
mod format_v2;
mod hook;
mod hostile_broker;
mod hostile_trust;
mod hostile_vault;
mod interop;
mod isolation;
mod limits;
mod metrics;
mod oauth;
mod oauth_connect;
mod oauth_replicas;
mod owners;
mod problems;
mod proposals;
mod proposals_loop;
mod remotes;
mod scrub_transforms;
mod services;
mod sigv4;
mod sync;
mod ui;
