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
/// `agent_vault_propose`.
pub const PROPOSE: &str = "agent_vault_propose";
/// `agent_vault_proposal_status`.
pub const PROPOSAL_STATUS: &str = "agent_vault_proposal_status";

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

/// A service in `agent_vault_propose`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposedServiceArgs {
    /// The service's name: a-z, 0-9, '_' and '-' (e.g. "github").
    pub name: String,
    /// Host patterns the service covers (e.g. ["api.github.com"], "*.example.com").
    pub hosts: Vec<String>,
    /// How the credential is presented: "bearer" (Authorization: Bearer), "basic", "header", "query" or "passthrough" (nothing injected).
    pub auth: String,
    /// The secret injected, GROUP/NAME (bearer, basic's user, query). Usually a slot of this proposal.
    #[serde(default)]
    pub secret: Option<String>,
    /// The password secret of "basic", GROUP/NAME.
    #[serde(default)]
    pub password_secret: Option<String>,
    /// The header's name for "header" (e.g. "x-api-key").
    #[serde(default)]
    pub header: Option<String>,
    /// The header's value for "header", with {{GROUP/NAME}} where the secret goes (e.g. "{{example/key}}").
    #[serde(default)]
    pub template: Option<String>,
    /// The query parameter's name for "query" (e.g. "api_key").
    #[serde(default)]
    pub param: Option<String>,
    /// Path prefixes the service covers (default: all).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods it allows (default: all).
    #[serde(default)]
    pub methods: Vec<String>,
}

/// A credential slot in `agent_vault_propose`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposedSlotArgs {
    /// The secret, GROUP/NAME (e.g. "github/token").
    pub secret: String,
    /// What the credential is for.
    #[serde(default)]
    pub description: String,
    /// Where and how the human obtains it (a URL, the scopes it needs).
    #[serde(default)]
    pub obtain: String,
    /// "set" (default) or "delete".
    #[serde(default)]
    pub action: Option<String>,
    /// "static" (default: an API key, a password) or "oauth".
    #[serde(default)]
    pub kind: Option<String>,
    /// Only if you obtained the credential yourself: its value. It is encrypted to the vault's owners at once and never stored in plain text. Omit it otherwise: the human supplies it.
    #[serde(default)]
    pub value: Option<String>,
}

/// Arguments of `agent_vault_propose`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeArgs {
    /// To the human who decides: what you need, and why (at most 2,000 characters).
    pub message: String,
    /// Services to add (at most 10).
    #[serde(default)]
    pub services: Vec<ProposedServiceArgs>,
    /// Credentials to set or delete (at most 10).
    #[serde(default)]
    pub slots: Vec<ProposedSlotArgs>,
    /// Days until the proposal lapses if no one decides (default 7, at most 30).
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// Arguments of `agent_vault_proposal_status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposalStatusArgs {
    /// The proposal's id, as agent_vault_propose returned it.
    pub id: String,
}

const PROPOSE_DESC: &str = "Ask the human owners of the agent-vault for access you do not have: \
a service (hosts and how the credential is injected) and the credential slots it needs (which \
secret, what it is for, where the human can obtain it). Call this when a request you need is \
refused because no service covers the host or you have no grant for the secret \
(agent_vault_request fails with host not allowed / not granted), or when a credential is missing \
or must be removed. A human must approve before anything changes: this tool changes nothing by \
itself and returns a proposal id at once. Do not retry the request until \
agent_vault_proposal_status says \"approved\". Never put a value in the message; give a value \
only in a slot, and only if you obtained it yourself (it is encrypted to the owners).";

const PROPOSAL_STATUS_DESC: &str = "Where a proposal made with agent_vault_propose stands: \
\"pending\" (no human has decided yet: wait, do not propose again), \"approved\" (the access \
is in place: retry your request), \"denied\" (with the human's reason: do not retry the same \
proposal) or \"expired\". Fetches the vault's latest state first.";

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
        Tool::new(PROPOSE, PROPOSE_DESC, schema::<ProposeArgs>()),
        Tool::new(
            PROPOSAL_STATUS,
            PROPOSAL_STATUS_DESC,
            schema::<ProposalStatusArgs>(),
        ),
    ]
}
