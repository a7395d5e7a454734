//! Destinations: resolving a host once and pinning the address (no DNS
//! rebinding between check and use), and refusing private addresses.

use std::net::{IpAddr, SocketAddr};

/// Whether an address is loopback, private, link-local (incl. cloud
/// metadata at 169.254.169.254), unspecified or otherwise not public.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64/10 shared
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link-local
        }
    }
}

/// Why a destination was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResolveError {
    /// The name did not resolve.
    Lookup {
        /// The host.
        host: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// The name resolved to no address.
    NoAddress {
        /// The host.
        host: String,
    },
    /// Some address is private, loopback or link-local, and those are not
    /// allowed.
    Private {
        /// The host.
        host: String,
    },
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Lookup { host, source } => write!(f, "cannot resolve {host}: {source}"),
            ResolveError::NoAddress { host } => write!(f, "{host} has no address"),
            ResolveError::Private { host } => write!(
                f,
                "{host} resolves to a private, loopback or link-local address; the broker refuses those (--allow-private-upstreams allows them)"
            ),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Resolves `host:port` to one address to use for the whole tunnel.
pub async fn resolve(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<SocketAddr, ResolveError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ResolveError::Lookup {
            host: host.to_owned(),
            source,
        })?
        .collect();
    let first = addrs
        .first()
        .copied()
        .ok_or_else(|| ResolveError::NoAddress {
            host: host.to_owned(),
        })?;
    if !allow_private && addrs.iter().any(|a| is_private(a.ip())) {
        return Err(ResolveError::Private {
            host: host.to_owned(),
        });
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "140.82.112.3", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
