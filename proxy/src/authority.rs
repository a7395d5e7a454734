//! The tunnel's host, held to: a request inside a tunnel must name the host
//! and port the tunnel was opened to (no domain fronting).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

/// Why a request's `Host` or `:authority` was refused.
#[derive(Debug)]
pub(crate) enum AuthorityError {
    /// It names another host or port than the tunnel's.
    Misdirected {
        /// The tunnel's host.
        host: String,
        /// The tunnel's port.
        port: u16,
        /// What the request named.
        named: String,
    },
    /// More than one `Host` header.
    SeveralHosts,
    /// A `Host` header that is not text.
    MalformedHost,
}

impl AuthorityError {
    /// The status the agent gets: 421 Misdirected Request, or 400.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            AuthorityError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            AuthorityError::SeveralHosts | AuthorityError::MalformedHost => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for AuthorityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthorityError::Misdirected { host, port, named } => {
                let shown: String = named.chars().take(100).collect();
                write!(
                    f,
                    "this connection goes to {host}:{port}; a request for {shown:?} is refused (Host and :authority must name the host the tunnel was opened to)"
                )
            }
            AuthorityError::SeveralHosts => f.write_str("more than one Host header"),
            AuthorityError::MalformedHost => f.write_str("a malformed Host header"),
        }
    }
}

/// Refuses a request whose `Host` or `:authority` (or absolute-form
/// target) names anything but the host and port the tunnel was opened to.
pub(crate) fn pinned_authority(
    req: &Request<Incoming>,
    host: &str,
    port: u16,
) -> Result<(), AuthorityError> {
    let misdirected = |named: &str| AuthorityError::Misdirected {
        host: host.to_owned(),
        port,
        named: named.to_owned(),
    };
    if let Some(a) = req.uri().authority()
        && !same_authority(a.as_str(), host, port)
    {
        return Err(misdirected(a.as_str()));
    }
    let mut hosts = req.headers().get_all(hyper::header::HOST).iter();
    if let Some(h) = hosts.next() {
        if hosts.next().is_some() {
            return Err(AuthorityError::SeveralHosts);
        }
        let Ok(h) = h.to_str() else {
            return Err(AuthorityError::MalformedHost);
        };
        if !same_authority(h, host, port) {
            return Err(misdirected(h));
        }
    }
    Ok(())
}

/// Whether `authority` (`host`, `host:port`, `[v6]:port`) names `host`
/// (lower case, IPv6 without brackets) and, if it has a port, `port`.
/// Case and a trailing dot do not count; user information does.
pub fn same_authority(authority: &str, host: &str, port: u16) -> bool {
    let Ok(a) = authority.parse::<hyper::http::uri::Authority>() else {
        return false;
    };
    if a.as_str().contains('@') {
        return false;
    }
    let named = a.host().trim_start_matches('[').trim_end_matches(']');
    named
        .trim_end_matches('.')
        .eq_ignore_ascii_case(host.trim_end_matches('.'))
        && a.port_u16().is_none_or(|p| p == port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tunnels_host_is_the_same_authority() {
        for a in [
            "api.example.com",
            "API.Example.com",
            "api.example.com.",
            "api.example.com:443",
        ] {
            assert!(same_authority(a, "api.example.com", 443), "{a}");
        }
        assert!(same_authority("[::1]:8443", "::1", 8443));
        assert!(same_authority("127.0.0.1:8443", "127.0.0.1", 8443));
        for a in [
            "evil.example.com",
            "api.example.com:444",
            "api.example.com.evil.com",
            "user@api.example.com",
            "api.example.com@evil.com",
            "api.example.com/x",
            "api.example.com evil",
            "",
            ":443",
        ] {
            assert!(!same_authority(a, "api.example.com", 443), "{a}");
        }
    }

    proptest::proptest! {
        #[test]
        fn an_authority_accepted_names_the_tunnels_host(
            a in "[a-zA-Z0-9.:@\\[\\]%/ -]{0,40}",
            port in proptest::prelude::any::<u16>(),
        ) {
            // Never panics; accepted only if what it names is the host.
            if same_authority(&a, "api.example.com", port) {
                let parsed: hyper::http::uri::Authority = a.parse().unwrap();
                proptest::prop_assert!(parsed.host().trim_end_matches('.').eq_ignore_ascii_case("api.example.com"));
                proptest::prop_assert!(parsed.port_u16().is_none_or(|p| p == port));
                proptest::prop_assert!(!a.contains('@'));
            }
            let _ = same_authority(&a, &a, port);
        }
    }
}
