//! The planner (docs/design.md §10): a natural-language request becomes a validated workflow
//! (docs/design.md §7).
//!
//! - [`LlmClient`] is the extension point: adapters for OpenAI-compatible chat
//!   completions ([`OpenAiClient`]: OpenAI, Ollama, vLLM, llama.cpp server) and the
//!   Anthropic messages API ([`AnthropicClient`]); a host may pass its own client in
//!   [`PlanOptions::client`].
//! - [`prompt`] assembles what the model sees: the request, candidate tools from the
//!   search index (bounded, schemas compacted), session state keys, the workflow
//!   JSON schema and the rules. Never a template, a variable's value or a key.
//! - `Engine::plan` (in `engine/planner.rs`) asks, parses, validates with `Engine::workflow`,
//!   and sends validation errors back for at most `max_repairs` rounds.
//! - [`offline`] builds simple chains from the search index and the tools' schemas
//!   without a model, and says plainly when a model is needed.

mod client;
pub mod offline;
pub mod prompt;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::config::parse_duration;
use crate::error::{Error, ErrorCode, Result};
use crate::registry::{Catalogue, RegisteredTool};
use crate::workflow::Workflow;

pub(crate) use client::resolve_secret;
pub use client::{AnthropicClient, OpenAiClient, extract_json};

/// Who wrote a message of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LlmMessage {
    pub role: Role,
    pub content: String,
}

impl LlmMessage {
    pub fn user(content: impl Into<String>) -> LlmMessage {
        LlmMessage { role: Role::User, content: content.into() }
    }

    pub fn assistant(content: impl Into<String>) -> LlmMessage {
        LlmMessage { role: Role::Assistant, content: content.into() }
    }
}

/// One completion request: a system prompt, the conversation so far, and the JSON
/// schema the answer should follow (used where the server supports it).
#[derive(Debug, Clone)]
pub struct LlmRequest {
    pub system: String,
    pub messages: Vec<LlmMessage>,
    pub schema: Option<Value>,
    pub max_tokens: u32,
}

/// Tokens a completion cost, as the server reported them (0 when it did not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(other.completion_tokens);
    }

    pub fn to_value(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        })
    }
}

/// A model's answer: its text, the JSON in it when there is some, and the usage.
#[derive(Debug, Clone, Default)]
pub struct LlmResponse {
    pub text: String,
    pub json: Option<Value>,
    pub usage: Usage,
}

/// A language model the planner can ask. Object-safe; implement it to plug in any
/// model (the bindings wrap host callbacks in it).
pub trait LlmClient: Send + Sync {
    /// Complete the conversation. Errors: `TIMEOUT`, `TRANSPORT`, `PLANNER` (the
    /// server refused or answered something unusable); never with a key in them.
    fn complete(&self, request: LlmRequest) -> BoxFuture<'_, Result<LlmResponse>>;
    /// `openai`, `anthropic`, or the host's name for it (for `workflow.planned`).
    fn provider(&self) -> &str;
    fn model(&self) -> &str;
}

/// Which planner runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Offline,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Offline => "offline",
        }
    }
}

/// How an OpenAI-compatible server is asked for JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// `response_format: {type: json_schema, json_schema: {name, schema}}`.
    JsonSchema,
    /// `response_format: {type: json_object}` (default).
    JsonObject,
    /// No `response_format`: the JSON is taken from the text.
    None,
}

/// The `planner` config section.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    pub provider: Provider,
    pub base_url: String,
    pub model: String,
    /// As written (`${OPENAI_API_KEY}`); resolved when a request is sent.
    pub api_key: Option<String>,
    /// Bounds one completion, its retries included.
    pub timeout: Duration,
    pub max_retries: u32,
    pub max_repairs: u32,
    pub max_tools: usize,
    pub max_tokens: u32,
    pub response_format: ResponseFormat,
    /// Plain `http://` beyond loopback.
    pub allow_insecure_http: bool,
    /// Cap on a model's HTTP answer (bytes).
    pub max_response_size: u64,
}

/// Default cap on a model's HTTP answer.
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 4 * 1024 * 1024;

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            provider: Provider::Offline,
            base_url: String::new(),
            model: String::new(),
            api_key: None,
            timeout: Duration::from_secs(30),
            max_retries: 2,
            max_repairs: 2,
            max_tools: 12,
            max_tokens: 4096,
            response_format: ResponseFormat::JsonObject,
            allow_insecure_http: false,
            max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
        }
    }
}

const KNOWN_KEYS: [&str; 12] = [
    "provider",
    "base_url",
    "model",
    "api_key",
    "timeout",
    "max_retries",
    "max_repairs",
    "max_tools",
    "max_tokens",
    "response_format",
    "allow_insecure_http",
    "max_response_size",
];

impl PlannerConfig {
    /// From the config's `planner` section (`None`: the offline planner).
    pub fn from_value(section: Option<&Value>) -> Result<PlannerConfig> {
        let bad = |m: String| Error::InvalidArgument(format!("config planner: {m}"));
        let mut c = PlannerConfig::default();
        let Some(section) = section.filter(|v| !v.is_null()) else { return Ok(c) };
        let Some(map) = section.as_object() else {
            return Err(bad("must be a mapping (provider, base_url, model, api_key, ...)".into()));
        };
        if let Some(k) = map.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(bad(format!("unknown key '{k}' (known: {})", KNOWN_KEYS.join(", "))));
        }
        let text = |k: &str| -> Result<Option<String>> {
            match map.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("{k} must be a string"))),
            }
        };
        let number = |k: &str, max: u64| -> Result<Option<u64>> {
            match map.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n <= max => Ok(Some(n)),
                    _ => Err(bad(format!("{k} must be a whole number from 0 to {max}"))),
                },
            }
        };
        c.provider = match text("provider")?.as_deref() {
            None | Some("openai") => Provider::OpenAi,
            Some("anthropic") => Provider::Anthropic,
            Some("offline") => Provider::Offline,
            Some(other) => return Err(bad(format!("provider '{other}' is not one of openai, anthropic, offline"))),
        };
        c.base_url = text("base_url")?.unwrap_or_else(|| match c.provider {
            Provider::OpenAi => "https://api.openai.com/v1".into(),
            Provider::Anthropic => "https://api.anthropic.com".into(),
            Provider::Offline => String::new(),
        });
        c.model = text("model")?.unwrap_or_default();
        if c.provider != Provider::Offline && c.model.trim().is_empty() {
            return Err(bad(format!("provider {} needs a `model`", c.provider.as_str())));
        }
        c.api_key = text("api_key")?;
        if let Some(t) = map.get("timeout") {
            c.timeout = parse_duration(t).map_err(|e| bad(format!("timeout: {e}")))?;
            if c.timeout.is_zero() {
                return Err(bad("timeout must be more than 0".into()));
            }
        }
        c.max_retries = number("max_retries", 10)?.map_or(c.max_retries, |n| n as u32);
        c.max_repairs = number("max_repairs", 10)?.map_or(c.max_repairs, |n| n as u32);
        c.max_tools = number("max_tools", 200)?.map_or(c.max_tools, |n| n as usize);
        if c.max_tools == 0 {
            return Err(bad("max_tools must be at least 1".into()));
        }
        c.max_tokens = number("max_tokens", 1_000_000)?.map_or(c.max_tokens, |n| n as u32);
        c.max_response_size = number("max_response_size", 1 << 30)?.unwrap_or(c.max_response_size);
        c.response_format = match text("response_format")?.as_deref() {
            None | Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => ResponseFormat::JsonSchema,
            Some("none") => ResponseFormat::None,
            Some(other) => {
                return Err(bad(format!("response_format '{other}' is not one of json_schema, json_object, none")));
            }
        };
        c.allow_insecure_http = match map.get("allow_insecure_http") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("allow_insecure_http must be true or false".into())),
        };
        Ok(c)
    }
}

/// Options of one `plan` call.
#[derive(Clone, Default)]
pub struct PlanOptions {
    pub tenant: Option<String>,
    /// Session whose state keys the model is told about.
    pub session: Option<String>,
    /// The inputs the caller will run the plan with: their names and JSON types are
    /// sent (never their values), and the offline planner uses them.
    pub inputs: Option<Value>,
    /// Use this model instead of the configured one.
    pub client: Option<Arc<dyn LlmClient>>,
}

impl std::fmt::Debug for PlanOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanOptions")
            .field("tenant", &self.tenant)
            .field("session", &self.session)
            .field("client", &self.client.as_ref().map(|c| c.provider().to_string()))
            .finish()
    }
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct PlannedWorkflow {
    /// The workflow definition (docs/design.md §7 JSON).
    pub definition: Value,
    /// The same, compiled: run it with `WorkflowSource::Compiled`.
    pub workflow: Arc<Workflow>,
    pub provider: String,
    pub model: String,
    /// Completions asked (1 + repairs); 0 for the offline planner.
    pub rounds: u32,
    pub usage: Usage,
}

impl PlannedWorkflow {
    /// `{definition, provider, model, rounds, usage}`.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("definition".into(), self.definition.clone());
        m.insert("provider".into(), self.provider.clone().into());
        m.insert("model".into(), self.model.clone().into());
        m.insert("rounds".into(), self.rounds.into());
        m.insert("usage".into(), self.usage.to_value());
        Value::Object(m)
    }
}

/// A workflow definition as YAML (what `utp plan` prints).
pub fn to_yaml(value: &Value) -> Result<String> {
    serde_yaml_ng::to_string(value).map_err(|e| Error::Internal(format!("cannot write YAML: {e}")))
}

/// Search hits for `query`, best first (`limit == 0` is unlimited; an empty query lists every tool by name).
fn hits(catalogue: &Catalogue, query: &str, limit: usize) -> Vec<Arc<RegisteredTool>> {
    catalogue.search(query, limit, &[]).into_iter().map(|(tool, _)| tool).collect()
}

pub(crate) fn planner_error(message: impl Into<String>) -> Error {
    Error::with_code(ErrorCode::Planner, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trips() {
        let wf = json!({"name": "w", "steps": [{"id": "a", "tool": "m.t",
            "args": {"x": "${{ inputs.x }}", "y": "${{ steps.a.output.count + 1 }}", "n": 3}}]});
        let yaml = to_yaml(&wf).unwrap();
        assert_eq!(crate::parse::parse_document(yaml.as_bytes(), None).unwrap(), wf, "{yaml}");
    }

    #[test]
    fn config_defaults_and_errors() {
        let c = PlannerConfig::from_value(None).unwrap();
        assert_eq!(c.provider, Provider::Offline);
        let c = PlannerConfig::from_value(Some(&json!({"model": "m", "timeout": "2s", "max_repairs": 1}))).unwrap();
        assert_eq!((c.provider, c.timeout, c.max_repairs), (Provider::OpenAi, Duration::from_secs(2), 1));
        assert_eq!(c.base_url, "https://api.openai.com/v1");
        assert_eq!(c.response_format, ResponseFormat::JsonObject);
        for bad in [
            json!({"provider": "openai"}),
            json!({"provider": "x", "model": "m"}),
            json!({"model": "m", "timeout": "soon"}),
            json!({"model": "m", "max_tools": 0}),
            json!({"model": "m", "api_kee": "x"}),
            json!({"model": "m", "response_format": "xml"}),
            json!([1]),
        ] {
            assert!(PlannerConfig::from_value(Some(&bad)).is_err(), "{bad}");
        }
    }
}
