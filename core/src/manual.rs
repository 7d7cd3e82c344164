//! The UTCP 1.x data model: manuals, tools, call templates and auth, wire-compatible
//! with python-utcp 1.x JSON. Legacy 0.1 manuals are migrated on load.
//!
//! Each call-template struct types the fields the runtime uses and keeps every other
//! field in `extra`, so a manual survives a parse/serialize round trip unchanged.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::json::json_kind;

pub const UTCP_VERSION: &str = "1.0.1";

fn default_utcp_version() -> String {
    UTCP_VERSION.to_string()
}
fn default_manual_version() -> String {
    "1.0.0".to_string()
}
fn default_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}
fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A UTCP manual: a versioned list of tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manual {
    #[serde(default = "default_utcp_version")]
    pub utcp_version: String,
    #[serde(default = "default_manual_version")]
    pub manual_version: String,
    pub tools: Vec<Tool>,
    /// Keys python-utcp would reject (`info`, vendor extensions): kept, not fatal.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// Schema definitions the tools' schemas reference as `#/$defs/<name>`, held once
    /// per manual (OpenAPI components) instead of copied into every tool.
    #[serde(skip)]
    pub shared_defs: Option<std::sync::Arc<SharedDefs>>,
    /// The URL the manual was fetched from, when its tools' targets are bound by that
    /// origin (docs/design.md §11): their calls may not reach anything more local,
    /// by redirect or by a name that resolves there. Set by registration, never read
    /// from the document.
    #[serde(skip)]
    pub fetched_from: Option<String>,
}

/// Definitions shared by a manual's tool schemas, with their reference graph so a
/// tool's closure is found without rescanning the definitions.
///
/// A definition read from an OpenAPI JSON file or URL stays raw JSON text until a tool
/// schema that reaches it is asked for (to validate a call, to list the tool): component
/// schemas are most of what registering a large spec would build (GitHub's: see
/// docs/benchmarks.md), and a host uses a few tools' schemas. Each is parsed, rewritten
/// and scanned once, on first use.
#[derive(Debug, Default)]
pub struct SharedDefs {
    /// In document order; a repeated name keeps its first place and its last value.
    defs: Vec<(String, SharedDef)>,
    index: HashMap<String, usize>,
    /// The `$ref` prefix a raw definition's references are rewritten from, to `#/$defs/`.
    ref_prefix: String,
}

#[derive(Debug)]
struct SharedDef {
    raw: Option<Box<RawValue>>,
    parsed: OnceLock<ParsedDef>,
}

#[derive(Debug)]
struct ParsedDef {
    /// `{}` when the raw text could not be read (`error`).
    value: Value,
    /// The names its schema references directly, sorted.
    refs: Vec<String>,
    /// Why the raw text could not be read: it nests deeper than serde_json's recursion
    /// limit (the parser that held it back checked everything else).
    error: Option<String>,
}

impl SharedDefs {
    /// Empty; raw definitions added later have their `ref_prefix` references rewritten.
    pub fn new(ref_prefix: &str) -> SharedDefs {
        SharedDefs { ref_prefix: ref_prefix.to_string(), ..SharedDefs::default() }
    }

    /// Add a built definition; its `ref_prefix` references are rewritten now.
    pub fn insert(&mut self, name: String, def: Value) {
        let parsed = rewritten(def, &self.ref_prefix);
        self.put(name, SharedDef { raw: None, parsed: OnceLock::from(parsed) });
    }

    /// Add a definition as raw JSON text, parsed on first use.
    pub fn insert_raw(&mut self, name: String, raw: Box<RawValue>) {
        self.put(name, SharedDef { raw: Some(raw), parsed: OnceLock::new() });
    }

    fn put(&mut self, name: String, def: SharedDef) {
        match self.index.get(&name) {
            Some(&i) => self.defs[i].1 = def,
            None => {
                self.index.insert(name.clone(), self.defs.len());
                self.defs.push((name, def));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.defs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// One definition, parsed if it was raw (`{}` if its text could not be read).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.parsed(name).map(|p| &p.value)
    }

    /// The names one definition references directly, sorted.
    pub fn refs(&self, name: &str) -> Option<&[String]> {
        self.parsed(name).map(|p| p.refs.as_slice())
    }

    /// Every definition in document order, each parsed if it was raw.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.defs.iter().map(|(name, def)| (name.as_str(), &self.parse(def).value))
    }

    fn parsed(&self, name: &str) -> Option<&ParsedDef> {
        self.index.get(name).map(|&i| self.parse(&self.defs[i].1))
    }

    fn parse<'d>(&self, def: &'d SharedDef) -> &'d ParsedDef {
        def.parsed.get_or_init(|| {
            let raw = def.raw.as_ref().map_or("{}", |r| r.get());
            match crate::parse::parse_spec_fragment(raw) {
                Ok(value) => rewritten(value, &self.ref_prefix),
                Err(e) => ParsedDef { value: Value::Object(Map::new()), refs: Vec::new(), error: Some(e) },
            }
        })
    }

    /// Names of `#/$defs/<name>` references in `schema` (not following them).
    pub fn direct_refs(schema: &Value, out: &mut Vec<String>) {
        match schema {
            Value::Object(obj) => {
                if let Some(name) = obj.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
                    out.push(name.to_string());
                }
                for (k, v) in obj {
                    if k != "$ref" && k != "$defs" {
                        SharedDefs::direct_refs(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| SharedDefs::direct_refs(v, out)),
            _ => {}
        }
    }

    /// `schema` with the transitive closure of the definitions it references
    /// attached as `$defs` (cycle-safe). Unchanged when it references none. A
    /// definition whose text could not be read is attached as `{}`.
    pub fn attach(&self, schema: &Value) -> Value {
        self.attach_checked(schema).unwrap_or_else(|(attached, _)| attached)
    }

    /// [`SharedDefs::attach`], or an error naming a definition of the closure whose raw
    /// text could not be read (with the schema `attach` returns).
    pub fn attach_checked(&self, schema: &Value) -> std::result::Result<Value, (Value, String)> {
        let mut queue = Vec::new();
        SharedDefs::direct_refs(schema, &mut queue);
        if queue.is_empty() || !schema.is_object() {
            return Ok(schema.clone());
        }
        let mut defs = Map::new();
        let mut error = None;
        while let Some(name) = queue.pop() {
            if defs.contains_key(&name) {
                continue;
            }
            let value = match self.parsed(&name) {
                Some(def) => {
                    queue.extend(def.refs.iter().filter(|n| !defs.contains_key(*n)).cloned());
                    if let (Some(e), None) = (&def.error, &error) {
                        error = Some(format!("schema '{name}' cannot be read: {e}"));
                    }
                    def.value.clone()
                }
                None => Value::Object(Map::new()),
            };
            defs.insert(name, value);
        }
        let mut out = schema.clone();
        out["$defs"] = Value::Object(defs);
        match error {
            None => Ok(out),
            Some(e) => Err((out, e)),
        }
    }
}

/// A definition with its `prefix` references rewritten to `#/$defs/`, and the names
/// it references directly, sorted.
fn rewritten(mut value: Value, prefix: &str) -> ParsedDef {
    let mut refs = std::collections::BTreeSet::new();
    rewrite_refs(&mut value, prefix, &mut |r| {
        if !refs.contains(r) {
            refs.insert(r.to_string());
        }
    });
    ParsedDef { value, refs: refs.into_iter().collect(), error: None }
}

/// Same names, definitions (compared parsed) and references, in the same order.
impl PartialEq for SharedDefs {
    fn eq(&self, other: &SharedDefs) -> bool {
        self.len() == other.len()
            && self.iter().eq(other.iter())
            && self.defs.iter().all(|(name, _)| self.refs(name) == other.refs(name))
    }
}

/// Rewrite `$ref`s that start with `prefix` (`#/components/schemas/`, `#/definitions/`)
/// to `#/$defs/<name>` in place, telling `on_ref` each name.
pub(crate) fn rewrite_refs(v: &mut Value, prefix: &str, on_ref: &mut impl FnMut(&str)) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(prefix) {
                    on_ref(name);
                    r.replace_range(..prefix.len(), "#/$defs/");
                }
            }
            for (k, child) in obj.iter_mut() {
                if matches!(child, Value::Object(_) | Value::Array(_)) && k != "$ref" {
                    rewrite_refs(child, prefix, on_ref);
                }
            }
        }
        Value::Array(items) => {
            for i in items.iter_mut().filter(|i| matches!(i, Value::Object(_) | Value::Array(_))) {
                rewrite_refs(i, prefix, on_ref);
            }
        }
        _ => {}
    }
}

/// One tool of a manual. `name` is the name inside the manual; the registry
/// prefixes it with the manual's name (`manual.tool`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_schema")]
    pub inputs: Value,
    #[serde(default = "empty_object")]
    pub outputs: Value,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_response_size: Option<u64>,
    pub tool_call_template: CallTemplate,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How a tool is called, by `call_template_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call_template_type", rename_all = "snake_case")]
pub enum CallTemplate {
    Http(HttpTemplate),
    Sse(SseTemplate),
    StreamableHttp(StreamableHttpTemplate),
    Cli(CliTemplate),
    Text(TextTemplate),
    File(FileTemplate),
    Mcp(McpTemplate),
    Websocket(WebsocketTemplate),
    Tcp(SocketTemplate),
    Udp(SocketTemplate),
    Graphql(GraphqlTemplate),
    /// A function of the host language (Rust closure, Python, JS or C callback).
    Native(NativeTemplate),
    /// A sandboxed WebAssembly module.
    Wasm(WasmTemplate),
}

/// The call-template types this runtime knows, as they appear on the wire.
pub const CALL_TEMPLATE_TYPES: [&str; 13] = [
    "http",
    "sse",
    "streamable_http",
    "cli",
    "text",
    "file",
    "mcp",
    "websocket",
    "tcp",
    "udp",
    "graphql",
    "native",
    "wasm",
];

impl CallTemplate {
    /// Whether a call always waits for the network or a process (it never finishes in
    /// its first poll): the bindings then hand it to the runtime without polling it on
    /// the host's thread.
    pub fn does_io(&self) -> bool {
        !matches!(self, CallTemplate::Text(_) | CallTemplate::File(_) | CallTemplate::Native(_) | CallTemplate::Wasm(_))
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            CallTemplate::Http(_) => "http",
            CallTemplate::Sse(_) => "sse",
            CallTemplate::StreamableHttp(_) => "streamable_http",
            CallTemplate::Cli(_) => "cli",
            CallTemplate::Text(_) => "text",
            CallTemplate::File(_) => "file",
            CallTemplate::Mcp(_) => "mcp",
            CallTemplate::Websocket(_) => "websocket",
            CallTemplate::Tcp(_) => "tcp",
            CallTemplate::Udp(_) => "udp",
            CallTemplate::Graphql(_) => "graphql",
            CallTemplate::Native(_) => "native",
            CallTemplate::Wasm(_) => "wasm",
        }
    }

    /// The fields every template carries: `name`, `auth`, `allowed_communication_protocols`.
    pub fn common(&self) -> &TemplateCommon {
        match self {
            CallTemplate::Http(t) => &t.common,
            CallTemplate::Sse(t) => &t.common,
            CallTemplate::StreamableHttp(t) => &t.common,
            CallTemplate::Websocket(t) => &t.common,
            CallTemplate::Graphql(t) => &t.common,
            CallTemplate::Cli(t) => &t.common,
            CallTemplate::Text(t) => &t.common,
            CallTemplate::File(t) => &t.common,
            CallTemplate::Mcp(t) => &t.common,
            CallTemplate::Tcp(t) | CallTemplate::Udp(t) => &t.common,
            CallTemplate::Native(t) => &t.common,
            CallTemplate::Wasm(t) => &t.common,
        }
    }

    /// [`CallTemplate::common`], to change.
    pub fn common_mut(&mut self) -> &mut TemplateCommon {
        match self {
            CallTemplate::Http(t) => &mut t.common,
            CallTemplate::Sse(t) => &mut t.common,
            CallTemplate::StreamableHttp(t) => &mut t.common,
            CallTemplate::Websocket(t) => &mut t.common,
            CallTemplate::Graphql(t) => &mut t.common,
            CallTemplate::Cli(t) => &mut t.common,
            CallTemplate::Text(t) => &mut t.common,
            CallTemplate::File(t) => &mut t.common,
            CallTemplate::Mcp(t) => &mut t.common,
            CallTemplate::Tcp(t) | CallTemplate::Udp(t) => &mut t.common,
            CallTemplate::Native(t) => &mut t.common,
            CallTemplate::Wasm(t) => &mut t.common,
        }
    }

    /// The template's auth, for the types that carry one.
    pub fn auth(&self) -> Option<&Auth> {
        self.common().auth.as_ref()
    }
}

/// Fields every call template may carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateCommon {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_communication_protocols: Option<Vec<String>>,
}

/// How arguments map onto an HTTP request, shared by `http`, `sse` and `streamable_http`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestFields {
    /// Fixed headers (values may hold variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Map<String, Value>>,
    /// The argument sent as the request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_field: Option<String>,
    /// Arguments sent as headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_fields: Option<Vec<String>>,
}

fn default_get() -> String {
    "GET".into()
}
fn default_json() -> String {
    "application/json".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub url: String,
    #[serde(default = "default_get")]
    pub http_method: String,
    #[serde(default = "default_json")]
    pub content_type: String,
    #[serde(flatten)]
    pub request: RequestFields,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SseTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(flatten)]
    pub request: RequestFields,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamableHttpTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub url: String,
    #[serde(default = "default_get")]
    pub http_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(flatten)]
    pub request: RequestFields,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One command of a CLI template. Arguments are passed as argv, never through a shell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CliCommand {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_to_final_output: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CliTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub commands: Vec<CliCommand>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub content: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub file_path: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub config: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebsocketTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub url: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `tcp` and `udp` share their shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub host: String,
    pub port: u16,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// python-utcp's `utcp-gql` fields, plus `selection_set` (ours: the default selection
/// discovery builds from the root field's return type). Shapes are checked by
/// [`check_graphql_shape`] before serde, so errors name the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphqlTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    pub url: String,
    /// `query` (python-utcp's default), `mutation` or `subscription`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Map<String, Value>>,
    /// Arguments sent as request headers, not as variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_fields: Option<Vec<String>>,
    /// A GraphQL document sent as written (never variable-substituted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// GraphQL types of the arguments (`{"id": "ID!"}`) for a built operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable_types: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_set: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NativeTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WasmTemplate {
    #[serde(flatten)]
    pub common: TemplateCommon,
    /// Path or URL of the module.
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_api_key_var() -> String {
    "X-Api-Key".into()
}
fn default_header() -> String {
    "header".into()
}

/// Authentication, by `auth_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "auth_type", rename_all = "snake_case")]
pub enum Auth {
    ApiKey {
        api_key: String,
        #[serde(default = "default_api_key_var")]
        var_name: String,
        /// `header`, `query` or `cookie`.
        #[serde(default = "default_header")]
        location: String,
    },
    Basic {
        username: String,
        password: String,
    },
    #[serde(rename = "oauth2")]
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

const AUTH_TYPES: [&str; 3] = ["api_key", "basic", "oauth2"];
const API_KEY_LOCATIONS: [&str; 3] = ["header", "query", "cookie"];

/// The name a manual is registered under: letters, digits and `_` only.
pub fn sanitize_name(raw: &str) -> String {
    let mut out: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

impl Manual {
    /// A manual with no tools, of the current UTCP version.
    pub fn empty() -> Manual {
        Manual {
            utcp_version: UTCP_VERSION.to_string(),
            manual_version: "1.0.0".to_string(),
            tools: Vec::new(),
            extra: Map::new(),
            shared_defs: None,
            fetched_from: None,
        }
    }

    /// Parse a manual from JSON, migrating a legacy 0.1 manual first.
    ///
    /// Errors name the tool and field that is wrong, and for an unknown
    /// `call_template_type`, the type itself.
    pub fn from_value(mut value: Value) -> Result<Manual> {
        let Some(obj) = value.as_object_mut() else {
            return Err(Error::InvalidManual(format!(
                "a manual must be a JSON object with a `tools` list, found {}",
                json_kind(&value)
            )));
        };
        if is_legacy(obj) {
            migrate_legacy(obj)?;
        }
        let tools = match obj.get("tools") {
            Some(Value::Array(tools)) => tools,
            Some(other) => {
                return Err(Error::InvalidManual(format!("`tools` must be a list, found {}", json_kind(other))));
            }
            None => return Err(Error::InvalidManual("manual has no `tools` list".into())),
        };
        for (i, tool) in tools.iter().enumerate() {
            check_tool_shape(i, tool)?;
        }
        serde_json::from_value(value).map_err(|e| Error::InvalidManual(format!("invalid manual: {e}")))
    }

    /// The manual as UTCP JSON. With shared definitions, each tool's schemas carry
    /// the closure they reference as `$defs`, so every tool stands on its own.
    pub fn to_value(&self) -> Value {
        // Serializing our own types to a Value cannot fail: all map keys are strings.
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let (Some(defs), Some(Value::Array(tools))) = (&self.shared_defs, v.get_mut("tools")) {
            for tool in tools {
                for key in ["inputs", "outputs"] {
                    if let Some(schema) = tool.get(key) {
                        let attached = defs.attach(schema);
                        tool[key] = attached;
                    }
                }
            }
        }
        v
    }
}

/// Pre-checks that give errors naming the tool, before serde's generic ones.
fn check_tool_shape(index: usize, tool: &Value) -> Result<()> {
    let Some(t) = tool.as_object() else {
        return Err(Error::InvalidManual(format!("tools[{index}] must be an object, found {}", json_kind(tool))));
    };
    let name = match t.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.as_str(),
        _ => return Err(Error::InvalidManual(format!("tools[{index}] has no `name` string"))),
    };
    let template = match t.get("tool_call_template") {
        Some(Value::Object(tpl)) => tpl,
        Some(other) => {
            return Err(Error::InvalidManual(format!(
                "tool '{name}': `tool_call_template` must be an object, found {}",
                json_kind(other)
            )));
        }
        None => return Err(Error::InvalidManual(format!("tool '{name}' has no `tool_call_template`"))),
    };
    match template.get("call_template_type") {
        Some(Value::String(ty)) if CALL_TEMPLATE_TYPES.contains(&ty.as_str()) => {}
        Some(Value::String(ty)) => {
            return Err(Error::InvalidManual(format!(
                "tool '{name}': unknown call_template_type '{ty}' (known: {})",
                CALL_TEMPLATE_TYPES.join(", ")
            )));
        }
        _ => {
            return Err(Error::InvalidManual(format!(
                "tool '{name}': `tool_call_template` has no `call_template_type` string"
            )));
        }
    }
    if let Some(auth) = template.get("auth").filter(|a| !a.is_null()) {
        check_auth_shape(name, auth)?;
    }
    if template.get("call_template_type").and_then(Value::as_str) == Some("graphql") {
        check_graphql_shape(template)
            .map_err(|e| Error::InvalidManual(format!("tool '{name}': graphql template: {e}")))?;
    }
    // Let serde type-check this tool alone so the error names it.
    serde_json::from_value::<Tool>(tool.clone())
        .map(|_| ())
        .map_err(|e| Error::InvalidManual(format!("tool '{name}': {e}")))
}

fn check_auth_shape(tool: &str, auth: &Value) -> Result<()> {
    let ty = auth.get("auth_type").and_then(Value::as_str).unwrap_or("");
    if !AUTH_TYPES.contains(&ty) {
        return Err(Error::InvalidManual(format!(
            "tool '{tool}': unknown auth_type '{ty}' (known: {})",
            AUTH_TYPES.join(", ")
        )));
    }
    if ty == "api_key" {
        if let Some(loc) = auth.get("location").and_then(Value::as_str) {
            if !API_KEY_LOCATIONS.contains(&loc) {
                return Err(Error::InvalidManual(format!(
                    "tool '{tool}': api_key location '{loc}' is not one of header, query, cookie"
                )));
            }
        }
    }
    Ok(())
}

/// The shapes of a `graphql` template's fields, each error naming its field. The
/// names and types that go into a built GraphQL document are checked here too, so a
/// template cannot inject text into one.
pub fn check_graphql_shape(template: &Map<String, Value>) -> std::result::Result<(), String> {
    let present = |key: &str| template.get(key).filter(|v| !v.is_null());
    let string = |key: &str| -> std::result::Result<Option<&str>, String> {
        match present(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("`{key}` must be a string, found {}", json_kind(other))),
        }
    };
    if string("url")?.is_none() {
        return Err("`url` (the GraphQL endpoint) is required".into());
    }
    if let Some(kind) = string("operation_type")? {
        if !["query", "mutation", "subscription"].contains(&kind) {
            return Err(format!("`operation_type` must be query, mutation or subscription, found '{kind}'"));
        }
    }
    if let Some(name) = string("operation_name")? {
        if !is_graphql_name(name) {
            return Err(format!("`operation_name` '{name}' is not a GraphQL name ([_A-Za-z][_0-9A-Za-z]*)"));
        }
    }
    if string("query")?.is_some_and(|q| q.trim().is_empty()) {
        return Err("`query` is empty: give a GraphQL document or leave it out".into());
    }
    string("selection_set")?;
    if let Some(types) = present("variable_types") {
        let Value::Object(types) = types else {
            return Err(format!("`variable_types` must be an object of GraphQL types, found {}", json_kind(types)));
        };
        for (var, ty) in types {
            if !is_graphql_name(var) {
                return Err(format!("`variable_types`: '{var}' is not a GraphQL name"));
            }
            match ty.as_str() {
                Some(t) if is_graphql_type(t) => {}
                _ => {
                    return Err(format!(
                        "`variable_types.{var}` must be a GraphQL type such as \"ID!\" or \"[String]\", found {ty}"
                    ));
                }
            }
        }
    }
    if let Some(fields) = present("header_fields") {
        let ok = fields.as_array().is_some_and(|items| items.iter().all(Value::is_string));
        if !ok {
            return Err(format!("`header_fields` must be a list of argument names, found {fields}"));
        }
    }
    if let Some(headers) = present("headers").filter(|h| !h.is_object()) {
        return Err(format!("`headers` must be an object, found {}", json_kind(headers)));
    }
    Ok(())
}

/// A GraphQL Name: `[_A-Za-z][_0-9A-Za-z]*`.
pub fn is_graphql_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A GraphQL type reference: `Name`, `[Type]`, either followed by `!`.
pub fn is_graphql_type(s: &str) -> bool {
    let s = s.trim();
    let s = s.strip_suffix('!').unwrap_or(s).trim_end();
    match s.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').is_some_and(is_graphql_type),
        None => is_graphql_name(s),
    }
}

/// A 0.1 manual has tools with `tool_provider` instead of `tool_call_template`.
fn is_legacy(obj: &Map<String, Value>) -> bool {
    obj.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| tools.iter().any(|t| t.get("tool_provider").is_some()))
}

/// Rewrite a 0.1 manual into the 1.x shape, in place.
fn migrate_legacy(obj: &mut Map<String, Value>) -> Result<()> {
    if !obj.contains_key("manual_version") {
        if let Some(v) = obj.remove("version") {
            obj.insert("manual_version".into(), v);
        }
    }
    obj.entry("utcp_version").or_insert_with(|| Value::String(UTCP_VERSION.into()));
    let Some(Value::Array(tools)) = obj.get_mut("tools") else { return Ok(()) };
    for tool in tools.iter_mut() {
        let Some(t) = tool.as_object_mut() else { continue };
        let Some(provider) = t.remove("tool_provider") else { continue };
        let Value::Object(mut p) = provider else {
            let name = t.get("name").and_then(Value::as_str).unwrap_or("?");
            return Err(Error::InvalidManual(format!("tool '{name}': `tool_provider` must be an object")));
        };
        if let Some(ty) = p.remove("provider_type") {
            let ty = match ty.as_str() {
                Some("http_stream") => Value::String("streamable_http".into()),
                Some("text") if p.contains_key("file_path") => Value::String("file".into()),
                _ => ty,
            };
            p.insert("call_template_type".into(), ty);
        }
        // CLI 0.1: one `command_name` string → 1.x `commands` list.
        if let Some(Value::String(cmd)) = p.remove("command_name") {
            p.insert("commands".into(), serde_json::json!([{ "command": cmd }]));
        }
        t.insert("tool_call_template".into(), Value::Object(p));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn http_manual() -> Value {
        json!({
            "utcp_version": "1.0.1",
            "manual_version": "2.0.0",
            "info": {"title": "weather"},
            "tools": [{
                "name": "get_weather",
                "description": "Current weather for a city",
                "inputs": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "outputs": {"type": "object"},
                "tags": ["weather"],
                "tool_call_template": {
                    "call_template_type": "http",
                    "url": "https://api.example.com/weather",
                    "http_method": "GET",
                    "headers": {"Accept": "application/json"},
                    "body_field": "payload",
                    "header_fields": ["X-Trace"],
                    "auth": {"auth_type": "api_key", "api_key": "${API_KEY}", "var_name": "X-Key", "location": "header"},
                    "timeout": 30
                }
            }]
        })
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let v = http_manual();
        let m = Manual::from_value(v.clone()).unwrap();
        assert_eq!(m.tools[0].tool_call_template.type_name(), "http");
        let back = m.to_value();
        assert_eq!(back["info"], v["info"]);
        assert_eq!(back["tools"][0]["tool_call_template"]["timeout"], json!(30));
        let CallTemplate::Http(http) = &m.tools[0].tool_call_template else { unreachable!() };
        assert_eq!(http.request.body_field.as_deref(), Some("payload"));
        assert_eq!(http.request.header_fields.as_deref(), Some(&["X-Trace".to_string()][..]));
        assert_eq!(back["tools"][0]["tool_call_template"]["headers"], json!({"Accept": "application/json"}));
        assert_eq!(back["tools"][0]["tool_call_template"]["auth"], v["tools"][0]["tool_call_template"]["auth"]);
        assert_eq!(Manual::from_value(back).unwrap(), m);
    }

    #[test]
    fn every_template_type_parses() {
        let templates = [
            json!({"call_template_type": "http", "url": "https://x"}),
            json!({"call_template_type": "sse", "url": "https://x", "event_type": "m"}),
            json!({"call_template_type": "streamable_http", "url": "https://x"}),
            json!({"call_template_type": "cli", "commands": [{"command": "echo UTCP_ARG_msg_UTCP_END"}]}),
            json!({"call_template_type": "text", "content": "{}"}),
            json!({"call_template_type": "file", "file_path": "./m.json"}),
            json!({"call_template_type": "mcp", "config": {"mcpServers": {}}}),
            json!({"call_template_type": "websocket", "url": "wss://x"}),
            json!({"call_template_type": "tcp", "host": "127.0.0.1", "port": 9000}),
            json!({"call_template_type": "udp", "host": "127.0.0.1", "port": 9000}),
            json!({"call_template_type": "graphql", "url": "https://x/graphql"}),
            json!({"call_template_type": "native"}),
            json!({"call_template_type": "wasm", "module": "tool.wasm"}),
        ];
        for (tpl, ty) in templates.iter().zip(CALL_TEMPLATE_TYPES) {
            let m = Manual::from_value(json!({"tools": [{"name": "t", "tool_call_template": tpl}]}))
                .unwrap_or_else(|e| panic!("{ty}: {e}"));
            assert_eq!(m.tools[0].tool_call_template.type_name(), ty);
            let out = &m.to_value()["tools"][0]["tool_call_template"];
            for (k, v) in tpl.as_object().unwrap() {
                assert_eq!(&out[k], v, "{ty}.{k}");
            }
            assert_eq!(Manual::from_value(m.to_value()).unwrap(), m);
        }
    }

    #[test]
    fn unknown_template_type_names_type_and_tool() {
        let err = Manual::from_value(json!({"tools": [
            {"name": "beam", "tool_call_template": {"call_template_type": "teleport"}}
        ]}))
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("teleport") && msg.contains("beam"), "{msg}");
        assert_eq!(err.code(), crate::ErrorCode::InvalidManual);
    }

    #[test]
    fn missing_field_names_the_tool() {
        let err = Manual::from_value(json!({"tools": [
            {"name": "fetch", "tool_call_template": {"call_template_type": "http"}}
        ]}))
        .unwrap_err()
        .to_string();
        assert!(err.contains("fetch") && err.contains("url"), "{err}");
    }

    #[test]
    fn bad_auth_is_rejected() {
        let err = Manual::from_value(json!({"tools": [{"name": "t", "tool_call_template": {
            "call_template_type": "http", "url": "https://x", "auth": {"auth_type": "kerberos"}}}]}))
        .unwrap_err()
        .to_string();
        assert!(err.contains("kerberos"), "{err}");
        let err = Manual::from_value(json!({"tools": [{"name": "t", "tool_call_template": {
            "call_template_type": "http", "url": "https://x",
            "auth": {"auth_type": "api_key", "api_key": "k", "location": "body"}}}]}))
        .unwrap_err()
        .to_string();
        assert!(err.contains("body"), "{err}");
    }

    #[test]
    fn non_manuals_are_rejected() {
        assert!(Manual::from_value(json!([1, 2])).is_err());
        assert!(Manual::from_value(json!({"tools": 3})).is_err());
        assert!(Manual::from_value(json!({"name": "x"})).is_err());
        assert!(Manual::from_value(json!({"tools": [7]})).is_err());
    }

    #[test]
    fn legacy_manual_is_migrated() {
        let legacy = json!({
            "version": "0.1.0",
            "name": "old",
            "tools": [
                {"name": "a", "description": "", "inputs": {}, "outputs": {}, "tags": [],
                 "tool_provider": {"provider_type": "http", "name": "old", "url": "http://127.0.0.1/a", "http_method": "POST"}},
                {"name": "b", "tool_provider": {"provider_type": "http_stream", "url": "http://127.0.0.1/b"}},
                {"name": "c", "tool_provider": {"provider_type": "cli", "command_name": "echo hi"}},
                {"name": "d", "tool_provider": {"provider_type": "text", "file_path": "./d.json"}}
            ]
        });
        let m = Manual::from_value(legacy).unwrap();
        assert_eq!(m.manual_version, "0.1.0");
        let types: Vec<_> = m.tools.iter().map(|t| t.tool_call_template.type_name()).collect();
        assert_eq!(types, ["http", "streamable_http", "cli", "file"]);
        let CallTemplate::Cli(cli) = &m.tools[2].tool_call_template else { unreachable!() };
        assert_eq!(cli.commands[0].command, "echo hi");
        let CallTemplate::Http(http) = &m.tools[0].tool_call_template else { unreachable!() };
        assert_eq!(http.http_method, "POST");
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("api.github.com"), "api_github_com");
        assert_eq!(sanitize_name("my-api v2"), "my_api_v2");
        assert_eq!(sanitize_name(""), "_");
    }
}
