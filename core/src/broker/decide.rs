//! The broker's decision about a request, made here once: may the token
//! reach the host at all ([`admit`], at `CONNECT`), which service a request
//! falls under ([`route`], for every request in a tunnel), and do the
//! agent's grants cover the secrets that service injects ([`grants`], what
//! the injection plan checks). The broker calls [`admit`] and [`route`];
//! `agent-vault explain` calls [`explain`], which is those three in the
//! broker's order, so explain cannot disagree with the broker. A refusal
//! names what an owner would run to allow the request. Never a value.

use crate::access;
use crate::broker::services::{Applied, PathRefusal, Service, Services, normalize_path};
use crate::model::{Manifest, Mode};
use crate::names::SecretPath;

/// The start of every problem type the broker answers with
/// (`urn:agent-vault:problem:host-not-covered`): a name, not a page to
/// fetch (RFC 9457 allows a URI that is not dereferenced).
pub const PROBLEM_TYPE_BASE: &str = "urn:agent-vault:problem:";

/// The header that names the reason on every answer the broker makes
/// itself (and never on an upstream's: the broker removes it from those).
pub const ERROR_HEADER: &str = "agent-vault-error";

/// Where a request goes: the host (lower case, IPv6 without brackets), the
/// port and the scheme.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The host.
    pub host: &'a str,
    /// The port.
    pub port: u16,
    /// https (a `CONNECT` tunnel), or plain http.
    pub https: bool,
}

impl Destination<'_> {
    /// `host` for the scheme's default port, else `host:port`: how a
    /// service's host pattern names it.
    fn pattern(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        match (self.port == default, self.host.contains(':')) {
            (true, _) => self.host.to_owned(),
            (false, false) => format!("{}:{}", self.host, self.port),
            (false, true) => format!("[{}]:{}", self.host, self.port),
        }
    }
}

/// Why the broker refuses a request. The message says what an owner (or
/// the agent) would do to have it allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No service the token may use names the host (and port) for this
    /// scheme.
    HostNotCovered {
        /// `host` or `host:port`, as a service's `--host` would name it.
        host: String,
        /// Services that name the host but the token may not use (it was
        /// issued for other services).
        outside_token: Vec<String>,
    },
    /// Services the token may use name the host, but none allows plain
    /// `http://`.
    PlainHttp {
        /// `host:port`.
        host: String,
        /// The services that name the host.
        services: Vec<String>,
    },
    /// The path is ambiguous (`%2e%2e`, `%2f`…) and no service without a
    /// path prefix covers the host.
    PathAmbiguous(PathRefusal),
    /// Services name the host, but none allows the method.
    MethodNotAllowed {
        /// The method.
        method: String,
        /// `host` or `host:port`.
        host: String,
        /// Each service naming the host, with the methods it allows.
        allowed: Vec<(String, Vec<String>)>,
    },
    /// Services name the host and allow the method, but none covers the
    /// path.
    PathNotAllowed {
        /// The method.
        method: String,
        /// The path, normalised.
        path: String,
        /// `host` or `host:port`.
        host: String,
        /// Each service naming the host and allowing the method, with the
        /// path prefixes it covers.
        allowed: Vec<(String, Vec<String>)>,
    },
    /// The service injects a secret of a group the agent has no grant on.
    NotGranted {
        /// The agent.
        agent: String,
        /// The service.
        service: String,
        /// The group.
        group: String,
    },
}

impl Refusal {
    /// A stable short name for the reason (`host-not-covered`…): the end
    /// of the broker's problem type and its `agent-vault-error` header.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::HostNotCovered { .. } => "host-not-covered",
            Refusal::PlainHttp { .. } => "plain-http-not-allowed",
            Refusal::PathAmbiguous(_) => "path-ambiguous",
            Refusal::MethodNotAllowed { .. } => "method-not-allowed",
            Refusal::PathNotAllowed { .. } => "path-not-allowed",
            Refusal::NotGranted { .. } => "not-granted",
        }
    }
}

fn list(items: &[(String, Vec<String>)]) -> String {
    items
        .iter()
        .map(|(s, v)| format!("{s}: {}", v.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::HostNotCovered {
                host,
                outside_token,
            } if !outside_token.is_empty() => write!(
                f,
                "no service this token may use covers {host}; {} name it, but the token was \
                 issued for other services: use a token that includes them \
                 (`agent-vault token issue AGENT --service {}`)",
                outside_token.join(", "),
                outside_token[0]
            ),
            Refusal::HostNotCovered { host, .. } => write!(
                f,
                "no service this token may use covers {host}; an owner can add one with \
                 `agent-vault service add NAME --host {host} --bearer GROUP/NAME` \
                 (or --header, --basic, --query, --passthrough)"
            ),
            Refusal::PlainHttp { host, services } => write!(
                f,
                "no service this token may use allows plain http to {host}; use https://, \
                 or an owner re-adds {} with `--allow-http` (`agent-vault service add {} ... \
                 --allow-http`)",
                services.join(", "),
                services.first().map(String::as_str).unwrap_or("NAME")
            ),
            Refusal::PathAmbiguous(why) => write!(f, "{why}"),
            Refusal::MethodNotAllowed {
                method,
                host,
                allowed,
            } => write!(
                f,
                "no service this token may use allows {method} on {host} (allowed: {}); an \
                 owner can allow it by adding the service again with `--method {method}` \
                 (`agent-vault service add NAME ... --method {method}` replaces it)",
                list(allowed)
            ),
            Refusal::PathNotAllowed {
                method,
                path,
                host,
                allowed,
            } => write!(
                f,
                "no service this token may use covers {method} {path} on {host} (path \
                 prefixes: {}); an owner can allow it by adding the service again with \
                 `--path PREFIX` (`agent-vault service add NAME ... --path PREFIX` replaces it)",
                list(allowed)
            ),
            Refusal::NotGranted {
                agent,
                service,
                group,
            } => write!(
                f,
                "service {service} injects secrets of group {group}, and agent {agent} may not \
                 use that group; an owner can grant it with `agent-vault grant {agent} {group} \
                 --mode use`"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// Whether a token that may use the services `may_use` allows may reach
/// `dest` at all: some such service names the host for the scheme.
pub fn admit(
    services: &Services,
    dest: &Destination<'_>,
    may_use: impl Fn(&str) -> bool,
) -> Result<(), Refusal> {
    if services.covers(dest.host, dest.port, dest.https, &may_use) {
        return Ok(());
    }
    Err(uncovered(services, dest, &may_use))
}

/// Why no service the token may use names `dest`.
fn uncovered(
    services: &Services,
    dest: &Destination<'_>,
    may_use: &impl Fn(&str) -> bool,
) -> Refusal {
    let naming = |https: bool| -> Vec<String> {
        services
            .services
            .iter()
            .filter(|(_, s)| s.host_matches(dest.host, dest.port, https))
            .map(|(n, _)| n.clone())
            .collect()
    };
    if !dest.https {
        // Named for https (on this port, or on 443 for port 80) by a
        // service the token may use.
        let https_too: Vec<String> = services
            .services
            .iter()
            .filter(|(n, s)| {
                may_use(n)
                    && (s.host_matches(dest.host, dest.port, true)
                        || (dest.port == 80 && s.host_matches(dest.host, 443, true)))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if !https_too.is_empty() {
            return Refusal::PlainHttp {
                host: format!("{}:{}", dest.host, dest.port),
                services: https_too,
            };
        }
    }
    Refusal::HostNotCovered {
        host: dest.pattern(),
        outside_token: naming(dest.https),
    }
}

/// A request target (path and query, as the agent sent it) split into what
/// is matched and sent, and the path normalised (or why it cannot be):
/// `/allowed/../admin` is `/admin`; an ambiguous one (`%2e%2e`, `%2f`) is
/// sent as it is and is under no path prefix.
pub fn target(raw_pq: &str) -> (String, Result<String, PathRefusal>) {
    let (raw_path, query) = match raw_pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw_pq, None),
    };
    let normal = normalize_path(raw_path);
    let pq = match (&normal, query) {
        (Ok(p), Some(q)) => format!("{p}?{q}"),
        (Ok(p), None) => p.clone(),
        // Only a service with no path prefix can match it: sent as it is.
        (Err(_), _) => raw_pq.to_owned(),
    };
    (pq, normal)
}

/// The service a request falls under: the first (by name) the token may
/// use whose host, method and path prefix match; `pq` and `normal` are
/// what [`target`] made of the request's target.
pub fn route<'s>(
    services: &'s Services,
    dest: &Destination<'_>,
    method: &str,
    pq: &str,
    normal: &Result<String, PathRefusal>,
    may_use: impl Fn(&str) -> bool,
) -> Result<(&'s str, &'s Service), Refusal> {
    if let Some(found) = services.find(dest.host, dest.port, dest.https, method, pq, &may_use) {
        return Ok(found);
    }
    let path = match normal {
        Err(why) => return Err(Refusal::PathAmbiguous(why.clone())),
        Ok(p) => p,
    };
    let naming: Vec<(&String, &Service)> = services
        .services
        .iter()
        .filter(|(n, s)| may_use(n) && s.host_matches(dest.host, dest.port, dest.https))
        .collect();
    if naming.is_empty() {
        return Err(uncovered(services, dest, &may_use));
    }
    let allows = |s: &Service| {
        s.methods.is_empty() || s.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    };
    let with_method: Vec<(String, Vec<String>)> = naming
        .iter()
        .filter(|(_, s)| allows(s))
        .map(|(n, s)| ((*n).clone(), s.paths.clone()))
        .collect();
    if with_method.is_empty() {
        return Err(Refusal::MethodNotAllowed {
            method: method.to_owned(),
            host: dest.pattern(),
            allowed: naming
                .iter()
                .map(|(n, s)| ((*n).clone(), s.methods.clone()))
                .collect(),
        });
    }
    Err(Refusal::PathNotAllowed {
        method: method.to_owned(),
        path: path.clone(),
        host: dest.pattern(),
        allowed: with_method,
    })
}

/// The secrets `service` injects or substitutes, if `agent` may use every
/// one of their groups (the check the injection plan makes for each).
pub fn grants(
    manifest: &Manifest,
    agent: &str,
    name: &str,
    service: &Service,
) -> Result<Vec<SecretPath>, Refusal> {
    let secrets = service.all_secrets();
    for s in &secrets {
        if access::check_agent(manifest, agent, s.group(), Mode::Use).is_err() {
            return Err(Refusal::NotGranted {
                agent: agent.to_owned(),
                service: name.to_owned(),
                group: s.group().to_string(),
            });
        }
    }
    Ok(secrets)
}

/// A request the broker would forward.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    /// The service it falls under.
    pub service: String,
    /// The path as matched and sent (normalised), with the query.
    pub sent: String,
    /// The secrets injected or substituted, by name.
    pub secrets: Vec<SecretPath>,
    /// The rate limits the request counts against (per agent and service,
    /// per broker instance; over them: 429), or `None`: unlimited.
    pub limits: Option<Applied>,
}

/// What the broker would do with `method` to `dest` at the target `raw_pq`
/// for `agent` holding a token for the services `may_use` allows: the
/// service and secrets, or the refusal. Addresses (private ones, DNS) and
/// the secrets' presence are the broker's to check when it runs.
pub fn explain(
    services: &Services,
    manifest: &Manifest,
    agent: &str,
    may_use: impl Fn(&str) -> bool,
    dest: &Destination<'_>,
    method: &str,
    raw_pq: &str,
) -> Result<Allowed, Refusal> {
    admit(services, dest, &may_use)?;
    let (pq, normal) = target(raw_pq);
    let (name, service) = route(services, dest, method, &pq, &normal, &may_use)?;
    let secrets = grants(manifest, agent, name, service)?;
    Ok(Allowed {
        service: name.to_owned(),
        sent: pq,
        secrets,
        // The list verified, limits included; as the broker, unlimited if not.
        limits: services.limits_for(service).ok().flatten(),
    })
}

#[cfg(test)]
mod tests;
