//! The proxy: `CONNECT host:port` with a token, TLS terminated with a leaf
//! for that host, each request matched to a service, the agent's
//! credentials stripped and the real one injected, the upstream verified,
//! and every injected value scrubbed from the response.
//!
//! By stage: accepting and authenticating in `tunnel`, forwarding one
//! request in `forward` (its audit record a guard from [`crate::audit`]),
//! upstream connections (pool and TLS) in `upstream`, the time limits in
//! `limits`, the broker's state (below tunnel and forward) in
//! `broker`. This module is their public face.

pub use crate::authority::same_authority;
pub use crate::broker::{Broker, Options};
pub use crate::error::ProxyError;
pub use crate::limits::{HANDSHAKE_TIMEOUT, HEADER_TIMEOUT, IDLE_TIMEOUT};
pub use crate::tunnel::{serve, serve_agent, serve_stream};
pub use crate::upstream::SetupError;
