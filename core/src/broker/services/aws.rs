//! AWS Signature Version 4 as a service's way to authenticate: which
//! secrets hold the keys, the signing scope (region and AWS service name,
//! configured or read from the host), and the S3 and Bedrock templates. The
//! signing itself is the proxy's (with the `aws-sigv4` crate); this is the
//! model and the pure rules.

use age::secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};

use crate::crypto::SecretValue;
use crate::error::Result;
use crate::names::SecretPath;

use super::{Auth, Service};

/// `auth: {sigv4: …}`: the broker removes the agent's signature and signs
/// each request with these keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sigv4 {
    /// The secret holding the access key id (`AKIA…`).
    pub access_key_id: SecretPath,
    /// The secret holding the secret access key.
    pub secret_access_key: SecretPath,
    /// The secret holding a session token, for temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<SecretPath>,
    /// The region signed for (default: read from the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The AWS service name signed for (default: read from the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// What a request is signed for: the credential scope's region and service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `us-east-1`.
    pub region: String,
    /// `s3`, `bedrock`, `sqs`…
    pub service: String,
}

impl Scope {
    /// Whether the S3 rules apply: the path signed as sent (no second
    /// percent-encoding, no normalisation) and `x-amz-content-sha256` always
    /// sent.
    pub fn is_s3(&self) -> bool {
        self.service == "s3" || self.service == "s3express" || self.service == "s3-outposts"
    }
}

impl Sigv4 {
    /// The secrets it names: key id, secret key, session token.
    pub fn secrets(&self) -> Vec<SecretPath> {
        [&self.access_key_id, &self.secret_access_key]
            .into_iter()
            .chain(self.session_token.as_ref())
            .cloned()
            .collect()
    }

    /// The scope for a request to `host`: what the service says, the rest
    /// read from the host (`s3.us-east-1.amazonaws.com`,
    /// `bucket.s3.eu-west-1.amazonaws.com`,
    /// `bedrock-runtime.us-west-2.amazonaws.com`). `None` when neither says.
    pub fn scope(&self, host: &str) -> Option<Scope> {
        let from_host = scope_from_host(host);
        let region = self
            .region
            .clone()
            .or_else(|| from_host.as_ref().map(|s| s.region.clone()))?;
        let service = self
            .service
            .clone()
            .or_else(|| from_host.map(|s| s.service))?;
        Some(Scope { region, service })
    }

    pub(super) fn validate(&self) -> std::result::Result<(), String> {
        let word = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        for (what, v) in [("region", &self.region), ("AWS service", &self.service)] {
            if let Some(v) = v
                && !word(v)
            {
                return Err(format!(
                    "invalid {what} {v:?}: lower-case letters, digits and '-'"
                ));
            }
        }
        Ok(())
    }
}

/// The region and signing name an AWS endpoint's host implies:
/// `SERVICE.REGION.amazonaws.com` (with any bucket or account labels in
/// front). `bedrock-runtime` and `bedrock-agent-runtime` sign as `bedrock`.
pub fn scope_from_host(host: &str) -> Option<Scope> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let mut labels = rest.rsplit('.');
    let region = labels.next()?;
    let endpoint = labels.next()?;
    if !looks_like_region(region) {
        return None;
    }
    let service = match endpoint {
        e if e.starts_with("bedrock") => "bedrock",
        e => e,
    };
    Some(Scope {
        region: region.to_owned(),
        service: service.to_owned(),
    })
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`.
fn looks_like_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts
            .last()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The names of the AWS templates (`--template s3 --region R`).
pub const AWS_TEMPLATES: &[&str] = &["s3", "bedrock"];

/// A built-in AWS service: S3 (path and virtual-hosted style) or Bedrock
/// (control plane and runtime) in one region, signed with these keys.
pub fn aws_template(kind: &str, region: &str, keys: Sigv4) -> Option<Service> {
    let hosts: Vec<String> = match kind {
        "s3" => vec![
            format!("s3.{region}.amazonaws.com"),
            format!("*.s3.{region}.amazonaws.com"),
        ],
        "bedrock" => vec![
            format!("bedrock.{region}.amazonaws.com"),
            format!("bedrock-runtime.{region}.amazonaws.com"),
        ],
        _ => return None,
    };
    let service = if kind == "s3" { "s3" } else { "bedrock" };
    Some(Service::new(
        hosts,
        Auth::Sigv4(Sigv4 {
            region: Some(region.to_owned()),
            service: Some(service.to_owned()),
            ..keys
        }),
    ))
}

/// The headers of an agent's own SigV4 signature that every SigV4 plan
/// strips (with `authorization`, which every plan strips).
/// `x-amz-content-sha256` is not among them: it says how the agent chose to
/// sign the payload (`UNSIGNED-PAYLOAD`, a hash), so the signer reads it
/// and then replaces it.
pub const AGENT_SIGNATURE_HEADERS: &[&str] = &["x-amz-date", "x-amz-security-token"];

/// Query parameters of a presigned URL: the agent's signature, removed
/// before the broker signs in headers.
pub const AGENT_SIGNATURE_PARAMS: &[&str] = &[
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-security-token",
    "x-amz-signedheaders",
    "x-amz-signature",
];

/// The path and query without a presigned URL's signature parameters.
pub fn without_presigned_params(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let name = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
            !kv.is_empty() && !AGENT_SIGNATURE_PARAMS.contains(&name.as_str())
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// The keys a [`Sigv4`] service signs with, read from the vault for one
/// agent. No `Debug`; zeroized on drop.
pub struct AwsKeys {
    /// How it was configured (paths, region, service).
    pub config: Sigv4,
    access_key_id: SecretBox<Vec<u8>>,
    secret_access_key: SecretBox<Vec<u8>>,
    session_token: Option<SecretBox<Vec<u8>>>,
}

impl AwsKeys {
    /// Reads the keys with `resolve` (which enforces the agent's grants).
    pub fn resolve(
        config: &Sigv4,
        resolve: &dyn Fn(&SecretPath) -> Result<SecretValue>,
    ) -> Result<Self> {
        let copy = |v: SecretValue| SecretBox::new(Box::new(v.expose_secret().clone()));
        Ok(AwsKeys {
            config: config.clone(),
            access_key_id: copy(resolve(&config.access_key_id)?),
            secret_access_key: copy(resolve(&config.secret_access_key)?),
            session_token: config
                .session_token
                .as_ref()
                .map(|p| resolve(p).map(copy))
                .transpose()?,
        })
    }

    /// Each value with the secret it came from (to scrub responses of).
    pub fn values(&self) -> Vec<(&SecretPath, &[u8])> {
        let mut out = vec![
            (
                &self.config.access_key_id,
                self.access_key_id.expose_secret().as_slice(),
            ),
            (
                &self.config.secret_access_key,
                self.secret_access_key.expose_secret().as_slice(),
            ),
        ];
        if let (Some(p), Some(v)) = (&self.config.session_token, &self.session_token) {
            out.push((p, v.expose_secret().as_slice()));
        }
        out
    }

    /// The access key id.
    pub fn access_key_id(&self) -> &[u8] {
        self.access_key_id.expose_secret()
    }

    /// The secret access key.
    pub fn secret_access_key(&self) -> &[u8] {
        self.secret_access_key.expose_secret()
    }

    /// The session token, if the service names one.
    pub fn session_token(&self) -> Option<&[u8]> {
        self.session_token
            .as_ref()
            .map(|t| t.expose_secret().as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Sigv4 {
        Sigv4 {
            access_key_id: "aws/id".parse().unwrap(),
            secret_access_key: "aws/secret".parse().unwrap(),
            session_token: None,
            region: None,
            service: None,
        }
    }

    #[test]
    fn scope_from_the_host_or_the_service() {
        for (host, region, service) in [
            ("s3.us-east-1.amazonaws.com", "us-east-1", "s3"),
            ("my-bucket.s3.eu-west-1.amazonaws.com", "eu-west-1", "s3"),
            (
                "bedrock-runtime.us-west-2.amazonaws.com",
                "us-west-2",
                "bedrock",
            ),
            ("bedrock.us-west-2.amazonaws.com.", "us-west-2", "bedrock"),
            ("sqs.us-gov-west-1.amazonaws.com", "us-gov-west-1", "sqs"),
            ("s3.cn-north-1.amazonaws.com.cn", "cn-north-1", "s3"),
        ] {
            let s = scope_from_host(host).unwrap();
            assert_eq!(
                (s.region.as_str(), s.service.as_str()),
                (region, service),
                "{host}"
            );
        }
        for host in [
            "example.com",
            "s3.amazonaws.com",
            "amazonaws.com.evil.com",
            "127.0.0.1",
            "s3.notaregion.amazonaws.com",
        ] {
            assert_eq!(scope_from_host(host), None, "{host}");
        }
        assert_eq!(keys().scope("127.0.0.1"), None);
        let mut k = keys();
        k.region = Some("eu-north-1".into());
        k.service = Some("s3".into());
        let s = k.scope("127.0.0.1").unwrap();
        assert!(s.is_s3());
        assert_eq!(s.region, "eu-north-1");
        let mut k = keys();
        k.region = Some("us-east-2".into());
        assert_eq!(
            k.scope("bedrock-runtime.us-west-2.amazonaws.com").unwrap(),
            Scope {
                region: "us-east-2".into(),
                service: "bedrock".into()
            }
        );
    }

    #[test]
    fn templates_and_validation() {
        let s3 = aws_template("s3", "us-east-1", keys()).unwrap();
        assert!(s3.host_matches("s3.us-east-1.amazonaws.com", 443, true));
        assert!(s3.host_matches("bucket.s3.us-east-1.amazonaws.com", 443, true));
        assert!(!s3.host_matches("s3.us-east-2.amazonaws.com", 443, true));
        assert_eq!(s3.all_secrets().len(), 2);
        let br = aws_template("bedrock", "us-west-2", keys()).unwrap();
        assert!(br.host_matches("bedrock-runtime.us-west-2.amazonaws.com", 443, true));
        assert!(aws_template("github", "us-east-1", keys()).is_none());
        let mut bad = keys();
        bad.region = Some("US East".into());
        assert!(bad.validate().is_err());
    }

    #[test]
    fn presigned_params_removed() {
        assert_eq!(
            without_presigned_params(
                "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F&versionId=3&X-Amz-Signature=ab"
            ),
            "/b/k?versionId=3"
        );
        assert_eq!(without_presigned_params("/b/k?X-Amz-Date=1"), "/b/k");
        assert_eq!(without_presigned_params("/b?list-type=2"), "/b?list-type=2");
        assert_eq!(without_presigned_params("/b"), "/b");
    }
}
