//! The tools' JSON schemas against the committed snapshots in
//! `tests/schemas/`. `AGENT_VAULT_UPDATE_SCHEMAS=1` rewrites them.

use std::path::Path;

#[test]
fn tool_schemas_match_the_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemas");
    let update = std::env::var_os("AGENT_VAULT_UPDATE_SCHEMAS").is_some();
    let tools = agent_vault_mcp::tools();
    assert_eq!(tools.len(), 6);
    for tool in tools {
        let got = serde_json::Value::Object(tool.input_schema.as_ref().clone());
        let path = dir.join(format!("{}.json", tool.name));
        if update {
            let text = serde_json::to_string_pretty(&got).expect("serializable") + "\n";
            std::fs::write(&path, text).expect("write the snapshot");
        }
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("the snapshot exists"))
                .expect("the snapshot is JSON");
        assert_eq!(
            got,
            want,
            "{}'s schema changed; AGENT_VAULT_UPDATE_SCHEMAS=1 updates {}",
            tool.name,
            path.display()
        );
        assert!(
            tool.description.as_deref().is_some_and(|d| d.len() > 80),
            "{} needs a description written for a model",
            tool.name
        );
    }
}
