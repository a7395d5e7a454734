//! `services.yaml`: the broker's services — which hosts a credential may go
//! to, how it is presented, which secrets may be substituted into requests.
//! Signed together with the manifest (`manifest.sig` covers both), so someone
//! with push access alone cannot redirect a credential to their own host.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model;
use crate::names::SecretPath;
use crate::vault::Vault;

mod aws;
mod limits;
mod path;

pub use aws::{
    AGENT_SIGNATURE_HEADERS, AWS_TEMPLATES, AwsKeys, Scope, Sigv4, aws_template, scope_from_host,
    without_presigned_params,
};
pub use limits::{Applied, Limits, MAX_RPS, MIN_RPS, Rate};
#[cfg(test)]
use path::decode_escapes;
pub use path::{PathRefusal, normalize_path};

/// How a service's credential is presented upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// `Authorization: Bearer VALUE`.
    Bearer(SecretPath),
    /// `Authorization: Basic base64(USER:PASS)`; without a password secret,
    /// the user secret alone (`USER:`), as Stripe expects.
    Basic {
        /// The user (or API key) secret.
        user: SecretPath,
        /// The password secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pass: Option<SecretPath>,
    },
    /// A header whose value is a template: `{{group/name}}` stands for a value.
    Header {
        /// The header's name.
        name: String,
        /// Its value, with `{{group/name}}` placeholders.
        template: String,
    },
    /// A query parameter.
    Query {
        /// The parameter's name.
        param: String,
        /// The secret.
        secret: SecretPath,
    },
    /// Allowed through, nothing injected (placeholders may still be substituted).
    Passthrough,
    /// AWS Signature Version 4: the agent's signature removed, the request
    /// signed with the keys from the vault.
    Sigv4(Sigv4),
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Host patterns: `api.github.com`, `*.example.com`, `host:port`.
    pub hosts: Vec<String>,
    /// Path prefixes the service covers (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Methods the service allows (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// How the credential is presented.
    pub auth: Auth,
    /// Secrets that `{{secret:group/name}}` placeholders in headers, path,
    /// query and body may name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretPath>,
    /// Configured placeholder strings, replaced by a secret's value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub placeholders: BTreeMap<String, SecretPath>,
    /// Whether plain-`http://` requests are allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
    /// A tunnel: `CONNECT` passed through without TLS interception, so the
    /// agent sees the upstream's own certificate. Nothing is injected, so
    /// it names no secret (auth `passthrough`, no substitutions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tunnel: bool,
    /// Rate limits, per (agent, service) pair and per broker instance;
    /// fields left unset come from the file's `default_limits`.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    /// The vault's default limits: every service that is not a tunnel takes
    /// each field it does not set itself from these.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub default_limits: Limits,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
}

/// Whether a service name is acceptable: like agent and group names.
pub fn valid_service_name(name: &str) -> bool {
    name.parse::<crate::names::GroupName>().is_ok()
}

impl Services {
    /// The vault's services list, verified with the manifest's signature
    /// (which covers it).
    pub fn load(vault: &Vault) -> Result<Self> {
        let (mbytes, services, sig) = vault.manifest_files()?;
        vault.verify_manifest(&mbytes, sig.as_deref(), &services, true)?;
        Services::parse(&vault.services_path(), &services)
    }

    /// Parses `services.yaml`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Ok(Services::default());
        }
        let s: Services = model::parse_yaml(path, bytes)?;
        s.check().map_err(|e| Error::corrupt(path, e))?;
        Ok(s)
    }

    /// Checks every service: names, host patterns, paths, header templates,
    /// limits (with the defaults).
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(Error::InvalidInput)
    }

    fn check(&self) -> std::result::Result<(), String> {
        self.default_limits
            .applied()
            .map_err(|e| format!("default_limits: {e}"))?;
        for (name, svc) in &self.services {
            svc.validate(name)?;
            self.limits_for(svc)
                .map_err(|e| format!("service {name}: limits: {e}"))?;
        }
        Ok(())
    }

    /// The limits a service's requests are held to: its own, each field
    /// it leaves unset taken from the defaults (none for a tunnel, whose
    /// requests the broker does not see). `None`: unlimited.
    pub fn limits_for(&self, svc: &Service) -> std::result::Result<Option<Applied>, String> {
        if svc.tunnel {
            return Ok(None);
        }
        svc.limits.or(self.default_limits).applied()
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.services.is_empty() && self.default_limits.is_empty() {
            return Vec::new();
        }
        model::to_yaml(self)
    }

    /// The service for a request, if any: the first (by name) that
    /// `may_use` allows and whose host pattern, path prefix and method match.
    pub fn find(
        &self,
        host: &str,
        port: u16,
        scheme_https: bool,
        method: &str,
        path: &str,
        may_use: impl Fn(&str) -> bool,
    ) -> Option<(&str, &Service)> {
        self.services
            .iter()
            .find(|(n, s)| may_use(n) && s.matches(host, port, scheme_https, method, path))
            .map(|(n, s)| (n.as_str(), s))
    }

    /// Whether any service that `may_use` allows covers the host.
    pub fn covers(
        &self,
        host: &str,
        port: u16,
        scheme_https: bool,
        may_use: impl Fn(&str) -> bool,
    ) -> bool {
        self.services
            .iter()
            .any(|(n, s)| may_use(n) && s.host_matches(host, port, scheme_https))
    }

    /// The tunnel service for a `CONNECT` to `host:port`, if it is to be
    /// passed through: a tunnel service that `may_use` allows covers it, and
    /// no service that intercepts does (where one injects, the broker must
    /// see the requests).
    pub fn tunnel_for(
        &self,
        host: &str,
        port: u16,
        may_use: impl Fn(&str) -> bool,
    ) -> Option<&str> {
        let mut covering = self
            .services
            .iter()
            .filter(|(n, s)| may_use(n) && s.host_matches(host, port, true));
        let first_tunnel = covering.clone().find(|(_, s)| s.tunnel)?;
        if covering.any(|(_, s)| !s.tunnel) {
            return None;
        }
        Some(first_tunnel.0.as_str())
    }

    /// Whether any service names this host (and port), whatever the path.
    pub fn knows_host(&self, host: &str, port: u16, scheme_https: bool) -> bool {
        self.services
            .values()
            .any(|s| s.host_matches(host, port, scheme_https))
    }
}

fn host_pattern_matches(pattern: &str, host: &str, port: u16, default_port: u16) -> bool {
    let (pat_host, pat_port) = match pattern.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => {
            (h, p.parse::<u16>().ok())
        }
        _ => (pattern, None),
    };
    if pat_port.unwrap_or(default_port) != port {
        return false;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pat = pat_host.to_ascii_lowercase();
    match pat.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == pat,
    }
}

impl Service {
    fn validate(&self, name: &str) -> std::result::Result<(), String> {
        if !valid_service_name(name) {
            return Err(format!("invalid service name {name:?}"));
        }
        if self.hosts.is_empty() {
            return Err(format!("service {name} names no host"));
        }
        for h in &self.hosts {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(' ') {
                return Err(format!("service {name}: invalid host pattern {h:?}"));
            }
        }
        for p in &self.paths {
            if !p.starts_with('/') {
                return Err(format!(
                    "service {name}: path prefix {p:?} must start with /"
                ));
            }
        }
        self.validate_kind(name)?;
        if let Auth::Header { name: h, template } = &self.auth {
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("service {name}: invalid header name {h:?}"));
            }
            template_secrets(template).map_err(|e| format!("service {name}: {e}"))?;
        }
        Ok(())
    }

    /// Whether a host (and port) is one of this service's.
    pub fn host_matches(&self, host: &str, port: u16, scheme_https: bool) -> bool {
        if !scheme_https && !self.allow_http {
            return false;
        }
        let default_port = if scheme_https { 443 } else { 80 };
        self.hosts
            .iter()
            .any(|p| host_pattern_matches(p, host, port, default_port))
    }

    /// A service for these hosts: every path and method, https only,
    /// nothing to substitute.
    pub fn new(hosts: Vec<String>, auth: Auth) -> Service {
        Service {
            hosts,
            paths: Vec::new(),
            methods: Vec::new(),
            auth,
            secrets: Vec::new(),
            placeholders: BTreeMap::new(),
            allow_http: false,
            tunnel: false,
            limits: Limits::default(),
        }
    }

    /// Whether a request falls under this service.
    pub fn matches(
        &self,
        host: &str,
        port: u16,
        scheme_https: bool,
        method: &str,
        path: &str,
    ) -> bool {
        self.host_matches(host, port, scheme_https)
            && (self.paths.is_empty() || self.paths.iter().any(|p| path_has_prefix(path, p)))
            && (self.methods.is_empty()
                || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
    }

    /// Every secret this service may inject or substitute.
    pub fn all_secrets(&self) -> Vec<SecretPath> {
        let mut out: Vec<SecretPath> = match &self.auth {
            Auth::Bearer(s) => vec![s.clone()],
            Auth::Basic { user, pass } => {
                std::iter::once(user.clone()).chain(pass.clone()).collect()
            }
            Auth::Header { template, .. } => template_secrets(template).unwrap_or_default(),
            Auth::Query { secret, .. } => vec![secret.clone()],
            Auth::Passthrough => Vec::new(),
            Auth::Sigv4(aws) => aws.secrets(),
        };
        out.extend(self.secrets.iter().cloned());
        out.extend(self.placeholders.values().cloned());
        out.sort();
        out.dedup();
        out
    }
}

impl Service {
    /// What a tunnel or a SigV4 service may not be combined with.
    fn validate_kind(&self, name: &str) -> std::result::Result<(), String> {
        let substitutes = !self.secrets.is_empty() || !self.placeholders.is_empty();
        if self.tunnel {
            if self.auth != Auth::Passthrough || substitutes {
                return Err(format!(
                    "service {name}: a tunnel is not intercepted, so nothing can be injected: it names no secret (auth passthrough, no --substitute or --placeholder)"
                ));
            }
            if !self.paths.is_empty() || !self.methods.is_empty() || self.allow_http {
                return Err(format!(
                    "service {name}: a tunnel is not intercepted, so the broker cannot hold it to paths or methods, and it is https only"
                ));
            }
            if !self.limits.is_empty() {
                return Err(format!(
                    "service {name}: a tunnel is not intercepted, so the broker cannot count its requests: it takes no limits"
                ));
            }
        }
        if let Auth::Sigv4(aws) = &self.auth {
            aws.validate().map_err(|e| format!("service {name}: {e}"))?;
            if substitutes {
                return Err(format!(
                    "service {name}: a SigV4 service signs the request as sent; it takes no --substitute or --placeholder"
                ));
            }
        }
        Ok(())
    }
}

/// `/v1/x` is under `/v1` and `/v1/`, not `/v10`. Only a path that
/// [`normalize_path`] leaves as it is can be under a prefix: `/v1/../admin`
/// or `/v1/%2e%2e/admin` is under none.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    let under = path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')));
    under && normalize_path(path).is_ok_and(|n| n == path)
}

/// One piece of a header template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    /// Text sent as it is.
    Text(&'a str),
    /// `{{group/name}}` or `{{secret:group/name}}`: the secret's value.
    Secret(SecretPath),
}

/// A template split into text and the secrets it names.
pub fn template_parts(template: &str) -> std::result::Result<Vec<TemplatePart<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(TemplatePart::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ in {template:?}"))?;
        let inner = after[..end].trim();
        let inner = inner.strip_prefix("secret:").unwrap_or(inner);
        out.push(TemplatePart::Secret(
            inner.parse::<SecretPath>().map_err(|e| e.to_string())?,
        ));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(TemplatePart::Text(rest));
    }
    Ok(out)
}

/// The secrets a template names: `{{group/name}}` or `{{secret:group/name}}`.
pub fn template_secrets(template: &str) -> std::result::Result<Vec<SecretPath>, String> {
    Ok(template_parts(template)?
        .into_iter()
        .filter_map(|p| match p {
            TemplatePart::Secret(s) => Some(s),
            TemplatePart::Text(_) => None,
        })
        .collect())
}

/// Built-in services: the usual way each API takes its key.
pub fn template(kind: &str, secret: &SecretPath) -> Option<Service> {
    let svc = |hosts: &[&str], auth: Auth| {
        Service::new(hosts.iter().map(|h| (*h).to_owned()).collect(), auth)
    };
    let s = secret.clone();
    Some(match kind {
        "github" => svc(
            &["api.github.com", "uploads.github.com", "github.com"],
            Auth::Bearer(s),
        ),
        "stripe" => svc(&["api.stripe.com", "files.stripe.com"], Auth::Bearer(s)),
        "openai" => svc(&["api.openai.com"], Auth::Bearer(s)),
        "anthropic" => svc(
            &["api.anthropic.com"],
            Auth::Header {
                name: "x-api-key".into(),
                template: format!("{{{{{s}}}}}"),
            },
        ),
        "slack" => svc(&["slack.com", "api.slack.com"], Auth::Bearer(s)),
        "shopify" => svc(
            &["*.myshopify.com"],
            Auth::Header {
                name: "X-Shopify-Access-Token".into(),
                template: format!("{{{{{s}}}}}"),
            },
        ),
        _ => return None,
    })
}

/// The names of the built-in templates.
pub const TEMPLATES: &[&str] = &[
    "github",
    "stripe",
    "openai",
    "anthropic",
    "slack",
    "shopify",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_path_matching() {
        let s = template("github", &"github/token".parse().unwrap()).unwrap();
        assert!(s.matches("api.github.com", 443, true, "GET", "/repos"));
        assert!(s.matches("API.GitHub.com.", 443, true, "GET", "/"));
        assert!(
            !s.matches("api.github.com", 80, false, "GET", "/"),
            "plain http is off"
        );
        assert!(!s.matches("api.github.com", 8443, true, "GET", "/"));
        assert!(!s.matches("api.github.com.evil.com", 443, true, "GET", "/"));
        let shop = template("shopify", &"shop/token".parse().unwrap()).unwrap();
        assert!(shop.host_matches("acme.myshopify.com", 443, true));
        assert!(!shop.host_matches("myshopify.com", 443, true));
        assert!(!shop.host_matches("acme.myshopify.com.evil", 443, true));
        let mut local = s.clone();
        local.hosts = vec!["127.0.0.1:8443".into()];
        local.paths = vec!["/v1".into()];
        local.methods = vec!["POST".into()];
        assert!(local.matches("127.0.0.1", 8443, true, "post", "/v1/x?y=1"));
        assert!(!local.matches("127.0.0.1", 8443, true, "POST", "/v10"));
        assert!(!local.matches("127.0.0.1", 8443, true, "GET", "/v1"));
    }

    #[test]
    fn file_round_trip_and_validation() {
        let mut all = Services::default();
        for t in TEMPLATES {
            all.services.insert(
                (*t).to_owned(),
                template(t, &format!("{t}/key").parse().unwrap()).unwrap(),
            );
        }
        let bytes = all.to_bytes();
        assert_eq!(Services::parse(Path::new("s"), &bytes).unwrap(), all);
        assert_eq!(
            template_secrets("Bearer {{a/b}} {{secret:c/d.e}}")
                .unwrap()
                .len(),
            2
        );
        assert!(template_secrets("{{../x}}").is_err());
        assert!(
            Services::parse(
                Path::new("s"),
                b"services:\n  x:\n    hosts: []\n    auth: passthrough\n"
            )
            .is_err()
        );
    }

    #[test]
    fn tunnels_and_sigv4_in_the_file() {
        // A file written before either existed loads as it did.
        let old = b"services:\n  gh:\n    hosts: [api.github.com]\n    auth: passthrough\n";
        let s = Services::parse(Path::new("s"), old).unwrap();
        assert!(!s.services["gh"].tunnel);
        assert!(
            !String::from_utf8_lossy(&s.to_bytes()).contains("tunnel"),
            "nothing new is written for it"
        );
        // A tunnel round-trips, and is the CONNECT answer only where no
        // intercepting service covers the host.
        let mut all = s.clone();
        let mut tunnel = Service::new(vec!["api.anthropic.com".into()], Auth::Passthrough);
        tunnel.tunnel = true;
        all.services.insert("model".into(), tunnel.clone());
        let bytes = all.to_bytes();
        assert!(String::from_utf8_lossy(&bytes).contains("tunnel: true"));
        assert_eq!(Services::parse(Path::new("s"), &bytes).unwrap(), all);
        assert_eq!(
            all.tunnel_for("api.anthropic.com", 443, |_| true),
            Some("model")
        );
        assert_eq!(
            all.tunnel_for("api.anthropic.com", 443, |n| n != "model"),
            None
        );
        assert_eq!(all.tunnel_for("api.anthropic.com", 8443, |_| true), None);
        assert_eq!(all.tunnel_for("api.github.com", 443, |_| true), None);
        let mut both = all.clone();
        both.services.insert(
            "anthropic".into(),
            template("anthropic", &"a/key".parse().unwrap()).unwrap(),
        );
        assert_eq!(both.tunnel_for("api.anthropic.com", 443, |_| true), None);
        assert_eq!(
            both.tunnel_for("api.anthropic.com", 443, |n| n == "model"),
            Some("model")
        );
        // A tunnel names no secret and takes no paths.
        for (yaml, why) in [
            ("auth: !bearer a/b\n    tunnel: true", "names no secret"),
            (
                "auth: passthrough\n    secrets: [a/b]\n    tunnel: true",
                "names no secret",
            ),
            (
                "auth: passthrough\n    paths: [/v1]\n    tunnel: true",
                "paths or methods",
            ),
            (
                "auth: !sigv4 {access_key_id: a/id, secret_access_key: a/key}\n    placeholders: {X: a/b}",
                "no --substitute",
            ),
            (
                "auth: !sigv4 {access_key_id: a/id, secret_access_key: a/key, region: Bad Region}",
                "invalid region",
            ),
        ] {
            let text = format!("services:\n  t:\n    hosts: [h.example]\n    {yaml}\n");
            let err = Services::parse(Path::new("s"), text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{yaml}: {err}");
        }
        let ok = "services:\n  t:\n    hosts: [h.example]\n    auth: !sigv4 {access_key_id: a/id, secret_access_key: a/key, session_token: a/tok}\n";
        let s = Services::parse(Path::new("s"), ok.as_bytes()).unwrap();
        assert_eq!(s.services["t"].all_secrets().len(), 3);
    }

    #[test]
    fn refusals_say_why() {
        use PathRefusal::*;
        for (raw, refusal, text) in [
            ("a", NoLeadingSlash, "the request path must start with /"),
            (
                "/%2f",
                EncodedSlash,
                "the request path has an encoded / (%2F), which servers read differently; refused",
            ),
            (
                "/%5c",
                EncodedBackslash,
                "the request path has an encoded backslash (%5C), which servers read differently; refused",
            ),
            (
                "/%00",
                EncodedNul,
                "the request path has an encoded NUL (%00), which servers read differently; refused",
            ),
            (
                "/%zz",
                MalformedEscape,
                "the request path has a malformed %-escape",
            ),
            (
                "/a\\b",
                Backslash,
                "the request path has a backslash, which some servers read as /; refused",
            ),
            (
                "/a\u{1}",
                Control,
                "the request path has a control character; refused",
            ),
            (
                "/%2e%2e/x",
                EncodedDot,
                "the request path has a dot segment written with %-escapes (%2e); refused",
            ),
            (
                "/..;x/",
                DotLike,
                "the request path has a segment some servers read as . or .. (dots with parameters, blanks or escapes); refused",
            ),
            (
                "/a%252eb",
                DoubleEncoded("%252E"),
                "the request path has a double-encoded character (%252E); refused",
            ),
        ] {
            let got = normalize_path(raw).unwrap_err();
            assert_eq!(got, refusal, "{raw:?}");
            assert_eq!(got.to_string(), text, "{raw:?}");
        }
    }

    #[test]
    fn paths_are_normalised_or_refused() {
        for (raw, normal) in [
            ("/", "/"),
            ("/allowed/x", "/allowed/x"),
            ("/allowed/../admin", "/admin"),
            ("/allowed/./x/../y", "/allowed/y"),
            ("/allowed//x", "/allowed/x"),
            ("//allowed///x/", "/allowed/x/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/../../x", "/x"),
            ("/allowed/%7e%41%2D", "/allowed/~A-"),
            ("/allowed/a%2eb", "/allowed/a.b"),
            ("/allowed/%3b%20%e2%82%ac", "/allowed/%3B%20%E2%82%AC"),
            ("/allowed/€", "/allowed/%E2%82%AC"),
            (
                "/allowed/{{secret:api/user}}",
                "/allowed/{{secret:api/user}}",
            ),
            ("/allowed/x;y=1", "/allowed/x;y=1"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Ok(normal), "{raw}");
        }
        for raw in [
            "/allowed/%2e%2e/admin",
            "/allowed/%2E%2E/admin",
            "/allowed/.%2e/admin",
            "/allowed/%2e/x",
            "/allowed/..%2fadmin",
            "/allowed%2f..%2fadmin",
            "/allowed/%5c..%5cadmin",
            "/allowed\\..\\admin",
            "/allowed/%00",
            "/allowed/..;/admin",
            "/allowed/..;x/admin",
            "/allowed/..%3b/admin",
            "/allowed/..%20/admin",
            "/allowed/.../admin",
            "/allowed/%252e%252e/admin",
            "/allowed/%25%32%65%25%32%65/admin",
            "/allowed/%252fadmin",
            "/allowed/%",
            "/allowed/%4",
            "/allowed/%zz",
            "/allowed/\u{1}",
            "allowed",
            "",
            "*",
        ] {
            assert!(normalize_path(raw).is_err(), "{raw:?} was accepted");
        }
        let mut svc = template("github", &"g/t".parse().unwrap()).unwrap();
        svc.paths = vec!["/allowed".into()];
        assert!(svc.matches("api.github.com", 443, true, "GET", "/allowed/x?a=../b"));
        for escape in [
            "/allowed/../admin",
            "/allowed/%2e%2e/admin",
            "/allowed//x",
            "/allowed/./x",
        ] {
            assert!(
                !svc.matches("api.github.com", 443, true, "GET", escape),
                "{escape}: only a normalised path is under a prefix"
            );
        }
    }

    /// Pieces a hostile path is made of.
    fn hostile_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just("//".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E".to_owned()),
            Just("%2f".to_owned()),
            Just("%5C".to_owned()),
            Just("\\".to_owned()),
            Just("%00".to_owned()),
            Just(";".to_owned()),
            Just("%3b".to_owned()),
            Just("%25".to_owned()),
            Just("%".to_owned()),
            Just("%20".to_owned()),
            Just("%41".to_owned()),
            Just("2e".to_owned()),
            Just("2f".to_owned()),
            Just("admin".to_owned()),
            Just("allowed".to_owned()),
            Just("é".to_owned()),
            "[a-z0-9%./;~]{1,4}",
            any::<char>().prop_map(|c| c.to_string()),
        ];
        prop::collection::vec(piece, 0..16).prop_map(|v| v.concat())
    }

    /// How a lenient upstream could read a path: every escape decoded
    /// twice, `\` as `/`, parameters and trailing blanks cut off each
    /// segment, a segment of dots read as `.` or `..`, empty segments
    /// merged, dot segments resolved.
    fn upstream_view(path: &str) -> Vec<Vec<u8>> {
        let decoded = decode_escapes(&decode_escapes(path.as_bytes()));
        let mut out: Vec<Vec<u8>> = Vec::new();
        for seg in decoded.split(|&c| c == b'/' || c == b'\\') {
            let name = seg.split(|&c| c == b';').next().unwrap_or(&[]);
            let name = name.trim_ascii_end();
            if name.is_empty() {
                continue;
            }
            if name.iter().all(|&c| c == b'.') {
                if name.len() > 1 {
                    out.pop();
                }
                continue;
            }
            out.push(seg.to_vec());
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        #[test]
        fn normalisation_never_panics_and_is_idempotent(raw in hostile_path()) {
            for raw in [raw.clone(), format!("/{raw}"), format!("/allowed/{raw}")] {
                if let Ok(n) = normalize_path(&raw) {
                    proptest::prop_assert!(n.starts_with('/'), "{raw:?} -> {n:?}");
                    proptest::prop_assert!(
                        n.split('/').all(|s| s != "." && s != ".."),
                        "{raw:?} -> {n:?}"
                    );
                    proptest::prop_assert!(!n.contains("//"), "{raw:?} -> {n:?}");
                    proptest::prop_assert_eq!(normalize_path(&n), Ok(n.clone()), "{:?}", raw);
                }
            }
        }

        #[test]
        fn a_path_under_a_prefix_stays_under_it_upstream(raw in hostile_path()) {
            let mut svc = template("github", &"g/t".parse().unwrap()).unwrap();
            svc.paths = vec!["/allowed".into()];
            for raw in [format!("/allowed/{raw}"), format!("/allowed{raw}"), format!("/{raw}")] {
                let Ok(n) = normalize_path(&raw) else { continue };
                if svc.matches("api.github.com", 443, true, "GET", &n) {
                    let seen = upstream_view(&n);
                    proptest::prop_assert!(
                        seen.first().map(|s| s.as_slice()) == Some(&b"allowed"[..]),
                        "{raw:?} -> {n:?}, which an upstream could read as {:?}",
                        seen.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect::<Vec<_>>()
                    );
                }
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(raw in ".*") {
            let _ = normalize_path(&raw);
            let _ = normalize_path(&format!("/{raw}"));
        }
    }
}
