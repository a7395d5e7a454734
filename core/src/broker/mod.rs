//! Everything broker-specific that core owns: the broker's identity (its
//! token and CA keys, opened from the vault), agent tokens, the services
//! list with its path rules, and the injection engine. The broker process
//! itself lives in the `agent-vault-proxy` crate.

pub mod agent_token;
pub mod decide;
pub mod identity;
pub mod inject;
pub mod oauth;
pub mod oauth_state;
pub mod scrub;
pub mod services;
pub mod token;

pub use identity::*;
