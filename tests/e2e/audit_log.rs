//! `agent-vault audit` reads the broker's audit log through the broker's
//! own record type (`agent_vault_proxy::audit::Record`): what it prints,
//! what it filters, and that a line that is not a record is skipped.

use serde_json::json;

use crate::harness::Env;

/// A request that was brokered, as the broker writes it.
const BROKERED: &str = r#"{"time":"2026-01-02T03:04:05.678Z","agent":"bot","token_id":"t1","service":"api","method":"GET","host":"api.example.com","path":"/v1","status":200,"bytes_in":1,"bytes_out":2,"duration_ms":3,"secrets":["api/token","api/user"]}"#;

/// A request refused before a service matched (no service, no secrets).
const REFUSED: &str = r#"{"time":"2026-03-01T00:00:00Z","agent":"other","token_id":"t2","service":"","method":"POST","host":"evil.example","path":"/x","status":403,"bytes_in":0,"bytes_out":0,"duration_ms":0,"secrets":[]}"#;

#[test]
fn audit_reads_the_brokers_records() {
    let env = Env::empty();
    let log = env.tmp.path().join("audit.jsonl");
    // A blank line, a line of another log (the MCP server's) and a line
    // torn by a crash sit between and after the records.
    std::fs::write(
        &log,
        format!("{BROKERED}\n\n{{\"time\":\"2026-02-01T00:00:00Z\",\"tool\":\"agent_vault_get\",\"agent\":\"bot\",\"ok\":true}}\n{REFUSED}\n{{\"time\":\"2026-"),
    )
    .unwrap();
    let log = log.to_str().unwrap();

    let out = env.ok(&["audit", log]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2026-01-02T03:04:05.678Z bot api GET api.example.com/v1 -> 200 (3 ms) [api/token, api/user]\n\
         2026-03-01T00:00:00Z other  POST evil.example/x -> 403 (0 ms) []\n"
    );

    let brokered: serde_json::Value = serde_json::from_str(BROKERED).unwrap();
    let refused: serde_json::Value = serde_json::from_str(REFUSED).unwrap();
    assert_eq!(
        env.json(&["audit", log]),
        json!([brokered.clone(), refused.clone()])
    );
    assert_eq!(
        env.json(&["audit", log, "--agent", "bot"]),
        json!([brokered])
    );
    assert_eq!(
        env.json(&["audit", log, "--since", "2026-02-01"]),
        json!([refused])
    );
    assert_eq!(env.json(&["audit", log, "--agent", "nobody"]), json!([]));
}

/// `--since` with a span counts back from now, and a value it cannot read
/// is named as `--since` (it used to count forward and say `--expires`).
#[test]
fn audit_since_a_span_counts_back() {
    let env = Env::empty();
    let log = env.tmp.path().join("audit.jsonl");
    let now = jiff::Timestamp::now();
    let old = now - jiff::SignedDuration::from_hours(48);
    let recent = now - jiff::SignedDuration::from_mins(30);
    let record = |t: jiff::Timestamp| BROKERED.replace("2026-01-02T03:04:05.678Z", &t.to_string());
    std::fs::write(&log, format!("{}\n{}\n", record(old), record(recent))).unwrap();
    let log = log.to_str().unwrap();
    let count = |since: &str| {
        env.json(&["audit", log, "--since", since])
            .as_array()
            .map(Vec::len)
    };
    assert_eq!(count("1h"), Some(1));
    assert_eq!(count("3d"), Some(2));
    let err = env.fail(&["audit", log, "--since", "yesterday-ish"]);
    assert!(err.contains("--since"), "{err}");
    assert!(!err.contains("--expires"), "{err}");
}
