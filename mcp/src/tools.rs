//! The tools: their names, descriptions (written for a model) and argument
//! types, from which the JSON schemas are generated.

use std::collections::BTreeMap;
use std::sync::Arc;

use rmcp::model::{JsonObject, Tool};
use schemars::JsonSchema;
use serde::Deserialize;

/// `agent_vault_list`.
pub const LIST: &str = "agent_vault_list";
/// `agent_vault_get`.
pub const GET: &str = "agent_vault_get";
/// `agent_vault_request`.
pub const REQUEST: &str = "agent_vault_request";
/// `agent_vault_whoami`.
pub const WHOAMI: &str = "agent_vault_whoami";

/// Arguments of `agent_vault_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only this group's secrets (e.g. "github"). Omit to list every group this agent has a grant on.
    #[serde(default)]
    pub group: Option<String>,
}

/// Arguments of `agent_vault_get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetArgs {
    /// The secret's path, GROUP/NAME (e.g. "github/token"), as agent_vault_list shows it.
    pub secret: String,
}

/// Arguments of `agent_vault_request`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestArgs {
    /// The HTTP method: GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS.
    pub method: String,
    /// The full https:// URL. Its host must be one a vault service names (agent_vault_whoami lists them). May contain {{secret:GROUP/NAME}} placeholders in the path.
    pub url: String,
    /// Request headers, name to value. Values may contain {{secret:GROUP/NAME}} placeholders. Do not set the service's credential header: the broker adds it.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Query parameters, name to value, added to the URL's own. Values may contain {{secret:GROUP/NAME}} placeholders.
    #[serde(default)]
    pub query: Option<BTreeMap<String, String>>,
    /// The request body as text (e.g. JSON). May contain {{secret:GROUP/NAME}} placeholders.
    #[serde(default)]
    pub body: Option<String>,
}

/// Arguments of `agent_vault_whoami` (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhoamiArgs {}

const LIST_DESC: &str = "List the secrets this agent has access to in the agent-vault: \
for each, its path (GROUP/NAME), group, description, expiry, and access: \"read\" (agent_vault_get \
returns the value) or \"use\" (the value can only be used through agent_vault_request, never seen). \
Never returns values.";

const GET_DESC: &str = "Return the value of one secret, by path GROUP/NAME. Works only for \
secrets with \"read\" access in agent_vault_list. For \"use\" secrets, do not ask for the value: \
call agent_vault_request with a {{secret:GROUP/NAME}} placeholder or let the service's credential \
be injected. Treat the value as confidential: do not print or log it.";

const REQUEST_DESC: &str = "Send an HTTPS request through the agent-vault broker, which adds \
the matching service's credential (e.g. the Authorization header) and fills \
{{secret:GROUP/NAME}} placeholders in the path, query, headers and body. Use this to call an API \
with a key you may use but not read. Only hosts that a vault service names are reachable \
(agent_vault_whoami lists the services). Returns the status, headers and body (cut at a size \
limit); any credential value echoed back is scrubbed.";

const WHOAMI_DESC: &str = "Who this agent is in the agent-vault: its name, the groups it has \
access to with the mode (\"read\" or \"use\"), and the services (hosts) agent_vault_request can \
reach for it. Call this first to learn what is available.";

fn schema<T: JsonSchema>() -> Arc<JsonObject> {
    let schema = schemars::schema_for!(T);
    match serde_json::to_value(schema) {
        Ok(serde_json::Value::Object(o)) => Arc::new(o),
        _ => Arc::new(JsonObject::new()),
    }
}

/// Every tool, with its JSON schema.
pub fn tools() -> Vec<Tool> {
    vec![
        Tool::new(LIST, LIST_DESC, schema::<ListArgs>()),
        Tool::new(GET, GET_DESC, schema::<GetArgs>()),
        Tool::new(REQUEST, REQUEST_DESC, schema::<RequestArgs>()),
        Tool::new(WHOAMI, WHOAMI_DESC, schema::<WhoamiArgs>()),
    ]
}
