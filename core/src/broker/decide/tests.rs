use super::*;

/// `api` (GET and POST under /v1 on api.example.com, injecting `api/token`),
/// `admin` (DELETE on api.example.com, injecting `ops/key`), `web`
/// (api.example.com over plain http too, nothing injected) and `other`
/// (other.example.com:8443). Agent `bot` may use `api`; `ro` holds nothing.
fn fixture() -> (Services, Manifest) {
    let services: Services = serde_json::from_value(serde_json::json!({"services": {
        "api": {"hosts": ["api.example.com"], "paths": ["/v1"], "methods": ["GET", "POST"],
                "auth": {"bearer": "api/token"}},
        "admin": {"hosts": ["api.example.com"], "methods": ["DELETE"],
                  "auth": {"bearer": "ops/key"}},
        "web": {"hosts": ["www.example.com"], "auth": "passthrough", "allow_http": true},
        "other": {"hosts": ["other.example.com:8443"], "auth": "passthrough"},
    }}))
    .unwrap();
    let manifest: Manifest = serde_json::from_value(serde_json::json!({
        "format": crate::model::FORMAT_VERSION, "vault_id": "v", "owners": {},
        "grants": {"bot": {"api": "use"}},
    }))
    .unwrap();
    (services, manifest)
}

fn https(host: &str) -> Destination<'_> {
    Destination {
        host,
        port: 443,
        https: true,
    }
}

fn all(_: &str) -> bool {
    true
}

#[test]
fn allowed_names_the_service_and_its_secrets() {
    let (s, m) = fixture();
    let got = explain(
        &s,
        &m,
        "bot",
        all,
        &https("api.example.com"),
        "GET",
        "/v1/a/../b?x=1",
    )
    .unwrap();
    assert_eq!(got.service, "api");
    assert_eq!(got.sent, "/v1/b?x=1");
    assert_eq!(
        got.secrets,
        vec!["api/token".parse::<SecretPath>().unwrap()]
    );
    // Nothing injected: allowed, no secret.
    let got = explain(&s, &m, "ro", all, &https("www.example.com"), "PUT", "/").unwrap();
    assert_eq!((got.service.as_str(), got.secrets.len()), ("web", 0));
}

#[test]
fn each_refusal_says_why() {
    let (s, m) = fixture();
    let why =
        |agent: &str, may: &dyn Fn(&str) -> bool, d: Destination<'_>, method: &str, pq: &str| {
            explain(&s, &m, agent, may, &d, method, pq).unwrap_err()
        };
    let r = why("bot", &all, https("evil.example.net"), "GET", "/");
    assert_eq!(r.reason(), "host-not-covered");
    assert!(r.to_string().contains("--host evil.example.net"), "{r}");
    // A port the service does not name.
    let r = why(
        "bot",
        &all,
        Destination {
            host: "other.example.com",
            port: 443,
            https: true,
        },
        "GET",
        "/",
    );
    assert_eq!(r.reason(), "host-not-covered");
    // Named, but by a service the token was not issued for.
    let only_web = |n: &str| n == "web";
    let r = why("bot", &only_web, https("api.example.com"), "GET", "/v1");
    assert_eq!(
        r,
        Refusal::HostNotCovered {
            host: "api.example.com".into(),
            outside_token: vec!["admin".into(), "api".into()]
        }
    );
    let r = why("bot", &all, https("api.example.com"), "PUT", "/v1/x");
    assert_eq!(r.reason(), "method-not-allowed");
    assert!(
        r.to_string().contains("api: GET, POST") && r.to_string().contains("--method PUT"),
        "{r}"
    );
    let r = why("bot", &all, https("api.example.com"), "GET", "/v2/x");
    assert_eq!(r.reason(), "path-not-allowed");
    assert!(
        r.to_string().contains("GET /v2/x") && r.to_string().contains("api: /v1"),
        "{r}"
    );
    // Under /v1 only as written: `..` leaves it.
    let r = why("bot", &all, https("api.example.com"), "GET", "/v1/../v2");
    assert_eq!(r.reason(), "path-not-allowed");
    let r = why(
        "bot",
        &all,
        https("api.example.com"),
        "GET",
        "/v1/%2e%2e/admin",
    );
    assert_eq!(r.reason(), "path-ambiguous");
    let r = why("bot", &all, https("api.example.com"), "DELETE", "/x");
    assert_eq!(
        r,
        Refusal::NotGranted {
            agent: "bot".into(),
            service: "admin".into(),
            group: "ops".into()
        }
    );
    assert!(
        r.to_string()
            .contains("agent-vault grant bot ops --mode use"),
        "{r}"
    );
    let plain = |host| Destination {
        host,
        port: 80,
        https: false,
    };
    let r = why("bot", &all, plain("api.example.com"), "GET", "/v1");
    assert_eq!(r.reason(), "plain-http-not-allowed");
    assert!(explain(&s, &m, "bot", all, &plain("www.example.com"), "GET", "/").is_ok());
    let r = why("bot", &all, plain("nowhere.example.com"), "GET", "/");
    assert_eq!(r.reason(), "host-not-covered");
}

#[test]
fn the_target_is_split_as_the_broker_sends_it() {
    assert_eq!(
        target("/a//b/./c?q=1"),
        ("/a/b/c?q=1".into(), Ok("/a/b/c".into()))
    );
    let (pq, normal) = target("/a/%2e%2e/b?q");
    assert_eq!(pq, "/a/%2e%2e/b?q");
    assert!(normal.is_err());
}

#[test]
fn explain_names_the_limits_a_request_counts_against() {
    let (mut s, m) = fixture();
    let req = |s: &Services| {
        explain(s, &m, "bot", all, &https("api.example.com"), "GET", "/v1/x")
            .unwrap()
            .limits
            .map(|l| l.to_string())
    };
    assert_eq!(req(&s), None, "no limits and no defaults: unlimited");
    s.default_limits.in_flight = Some(4);
    assert_eq!(req(&s).as_deref(), Some("4 in flight"));
    if let Some(api) = s.services.get_mut("api") {
        api.limits.rps = Some(5.0);
        api.limits.burst = Some(10);
    }
    assert_eq!(
        req(&s).as_deref(),
        Some("5 requests/s, burst 10, 4 in flight")
    );
}
