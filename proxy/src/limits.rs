//! The broker's time limits: how long an agent may take to send a request's
//! head, to finish the TLS handshake inside a tunnel, and how long a tunnel
//! may stay idle. Below both the broker's state and the tunnel that applies
//! them.

use std::time::Duration;

/// How long an agent may take to send a request's head to the proxy (the
/// `CONNECT`, or a plain-http request), counted from when the broker starts
/// waiting for it: a connection that sends nothing, or half a request, is
/// closed after this. No token is needed to hold a connection this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the TLS handshake inside a tunnel may take, counted from the
/// broker's answer to the `CONNECT`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a tunnel may stay open with no request in flight (between
/// keep-alive requests, or before its first one) before the broker closes
/// it. A request in flight, a streaming response, an open WebSocket keep
/// it open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Sets all three time limits to this many milliseconds (tests use it so
/// a limit is reached in a second, not in ten). Not for production use.
const TIME_LIMIT_ENV: &str = "AGENT_VAULT_BROKER_TIME_LIMIT_MS";

/// The broker's time limits (see the constants above).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header: Duration,
    pub(crate) handshake: Duration,
    pub(crate) idle: Duration,
}

impl Limits {
    pub(crate) fn from_env() -> Self {
        match std::env::var(TIME_LIMIT_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
        {
            Some(ms) => Limits {
                header: Duration::from_millis(ms),
                handshake: Duration::from_millis(ms),
                idle: Duration::from_millis(ms),
            },
            None => Limits {
                header: HEADER_TIMEOUT,
                handshake: HANDSHAKE_TIMEOUT,
                idle: IDLE_TIMEOUT,
            },
        }
    }
}
