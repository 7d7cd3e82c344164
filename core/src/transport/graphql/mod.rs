//! The `graphql` transport, wire-compatible with python-utcp's `utcp-gql` plugin.
//!
//! A call is one JSON POST of `{"query", "variables", "operationName"}` through the
//! `http` transport's machinery: the engine's pooled client, the template's auth
//! (`http::send_with_auth`), redirects re-checked, the address rules and the manual's
//! origin cap, the response size cap. Nothing is introspected per call.
//!
//! - A template with `query` sends that document as written: its `$name`s are
//!   GraphQL's variables, never the engine's (`vars::Variables::substitute_template`).
//! - Without one, the operation is built here: the tool's root field, the arguments
//!   given as variables (typed by `variable_types`, else by the tool's input schema),
//!   and the template's `selection_set`, which discovery stores.
//! - The result is the response's `data` (what python-utcp returns); a non-empty
//!   `errors` is `TOOL_FAILED` with the messages, saying when partial data came too.
//!
//! - A subscription (`operation_type: "subscription"`) goes over a WebSocket with the
//!   `graphql-transport-ws` subprotocol instead (`graphql/ws.rs`): a stream yields each
//!   `data`; a plain call returns the list of them once the server completes.
//!
//! Discovery ([`discover`]) runs the standard introspection query once and builds one
//! tool per root Query, Mutation and Subscription field: inputs from the arguments,
//! outputs and a default selection set from the return type, to [`SELECTION_DEPTH`]
//! levels.

mod ws;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderValue;
use serde_json::{Map, Value, json};

use super::net::{self, Body, RequestSpec};
use super::{ItemStream, Transports, arg_text, excerpt, http};
use crate::error::{Error, Result};
use crate::manual::{CallTemplate, GraphqlTemplate, Tool, is_graphql_name};
use crate::registry::RegisteredTool;

/// How many object levels a default selection set (and the output schema) reaches.
pub const SELECTION_DEPTH: usize = 3;
/// How many input-object levels an input schema spells out (deeper: any object).
const INPUT_DEPTH: usize = 6;
/// How much of a non-GraphQL answer an error quotes.
const BODY_EXCERPT: usize = 300;

/// The standard introspection query, trimmed to what discovery reads. Type references
/// nest seven levels deep, as graphql-js's `getIntrospectionQuery` does.
const INTROSPECTION_QUERY: &str = "query IntrospectionQuery { __schema { \
queryType { name } mutationType { name } subscriptionType { name } \
types { kind name description \
fields { name description args { name description type { ...TypeRef } defaultValue } type { ...TypeRef } } \
inputFields { name description type { ...TypeRef } defaultValue } \
enumValues { name description } possibleTypes { name } } } } \
fragment TypeRef on __Type { kind name ofType { kind name ofType { kind name ofType { kind name \
ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }";

pub(crate) async fn call(
    t: &Transports,
    tool: &RegisteredTool,
    tpl: &GraphqlTemplate,
    args: Map<String, Value>,
    timeout: Duration,
) -> Result<Value> {
    let (body, header_args) = request(tool, tpl, args)?;
    if ws::is_subscription(tpl) {
        // A plain call of a subscription: every item until `complete`, as a list (the
        // call's timeout bounds it all; dropping the stream stops the subscription).
        let stream = ws::subscribe(t, tool, tpl, body, &header_args, timeout).await?;
        return super::sse::collect(stream, false).await;
    }
    let response = post(t, tool, tpl, &Value::Object(body), &header_args, timeout).await?;
    read_response(t, tool, response).await
}

/// Open a stream of a `graphql` tool: a subscription's items as they come
/// (`graphql/ws.rs`); a query or mutation yields its one result.
pub(crate) async fn call_stream(
    t: &Transports,
    tool: &RegisteredTool,
    tpl: &GraphqlTemplate,
    args: Map<String, Value>,
    timeout: Duration,
) -> Result<ItemStream> {
    if !ws::is_subscription(tpl) {
        let value = call(t, tool, tpl, args, timeout).await?;
        return Ok(Box::pin(futures_util::stream::once(async move { Ok(value) })));
    }
    let (body, header_args) = request(tool, tpl, args)?;
    ws::subscribe(t, tool, tpl, body, &header_args, timeout).await
}

/// `header_fields` arguments as (header name, text).
type HeaderArgs = Vec<(String, String)>;

/// The request of a call, `{"query", "variables", "operationName"}`, and the arguments
/// that go to headers instead.
fn request(
    tool: &RegisteredTool,
    tpl: &GraphqlTemplate,
    mut args: Map<String, Value>,
) -> Result<(Map<String, Value>, HeaderArgs)> {
    // python-utcp sends `header_fields` arguments as headers, not as variables.
    let mut header_args = Vec::new();
    for name in tpl.header_fields.iter().flatten() {
        if let Some(v) = args.shift_remove(name).filter(|v| !v.is_null()) {
            header_args.push((name.clone(), arg_text(&v)));
        }
    }
    let document = match &tpl.query {
        Some(query) => query.clone(),
        None => build_operation(tool, tpl, &args)?,
    };
    let mut body = Map::new();
    body.insert("query".into(), Value::String(document));
    body.insert("variables".into(), Value::Object(args));
    if let Some(name) = &tpl.operation_name {
        body.insert("operationName".into(), Value::String(name.clone()));
    }
    Ok((body, header_args))
}

/// POST one GraphQL request with the template's headers and auth.
async fn post(
    t: &Transports,
    tool: &RegisteredTool,
    tpl: &GraphqlTemplate,
    body: &Value,
    header_args: &[(String, String)],
    timeout: Duration,
) -> Result<reqwest::Response> {
    let url = url::Url::parse(&tpl.url)
        .map_err(|e| Error::InvalidManual(format!("tool '{}': `url` '{}' is not a URL: {e}", tool.name, tpl.url)))?;
    let mut spec = RequestSpec::new(reqwest::Method::POST, url);
    let header =
        |name: &str, value: &str, sensitive: bool| super::http::tool_header(&tool.name, name, value, sensitive);
    // Fixed headers may hold secrets after substitution: sensitive, as for `http`.
    for (k, v) in tpl.headers.iter().flatten() {
        spec.headers.push(header(k, &arg_text(v), true)?);
    }
    for (k, v) in header_args {
        spec.headers.push(header(k, v, false)?);
    }
    spec.headers.push((
        reqwest::header::ACCEPT,
        HeaderValue::from_static("application/graphql-response+json, application/json;q=0.9"),
        false,
    ));
    spec.body = Body::Bytes {
        content_type: "application/json".into(),
        data: Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
    };
    spec.timeout = Some(timeout);
    http::send_with_auth(t, tool, tpl.common.auth.as_ref(), spec).await
}

/// A GraphQL response: `data`, or `TOOL_FAILED` with the `errors`. A non-2xx status
/// fails as an `http` tool's does (a GraphQL-over-HTTP 4xx quotes its errors there).
async fn read_response(t: &Transports, tool: &RegisteredTool, response: reqwest::Response) -> Result<Value> {
    if !response.status().is_success() {
        return http::read_result(t, tool, response).await;
    }
    let url = net::redact(response.url());
    let body = http::read_capped(t, tool, response).await?;
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(&body).ok();
    let Some(mut answer) = parsed.filter(|a| a.contains_key("data") || a.contains_key("errors")) else {
        return Err(Error::Transport(format!(
            "tool '{}': the answer from {url} is not a GraphQL response (a JSON object with `data` or `errors`): {}",
            tool.name,
            excerpt(String::from_utf8_lossy(&body).trim(), BODY_EXCERPT)
        )));
    };
    let data = answer.remove("data").unwrap_or(Value::Null);
    match answer.get("errors") {
        Some(Value::Array(errors)) if !errors.is_empty() => {
            Err(graphql_errors(&format!("tool '{}'", tool.name), &url, errors, &data))
        }
        _ => Ok(data),
    }
}

/// `TOOL_FAILED` with every GraphQL error's message and path (`who`: `tool 'm.t'`).
pub(super) fn graphql_errors(who: &str, url: &str, errors: &[Value], data: &Value) -> Error {
    let messages: Vec<String> = errors
        .iter()
        .map(|e| {
            let message = e.get("message").and_then(Value::as_str).map_or_else(|| e.to_string(), str::to_string);
            match e.get("path").and_then(Value::as_array) {
                Some(path) if !path.is_empty() => {
                    let path: Vec<String> = path.iter().map(arg_text).collect();
                    format!("{message} (at {})", path.join("."))
                }
                _ => message,
            }
        })
        .collect();
    let mut text = format!("{who}: GraphQL errors from {url}: {}", messages.join("; "));
    if let Value::Object(fields) = data {
        let partial: Vec<&str> = fields.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k.as_str()).collect();
        if !partial.is_empty() {
            let _ = write!(text, " (partial data came back for: {})", partial.join(", "));
        }
    }
    Error::tool_failed(excerpt(&text, 2000))
}

/// `query Name($a: T, ...) { field(a: $a, ...) selection }` for the arguments given.
fn build_operation(tool: &RegisteredTool, tpl: &GraphqlTemplate, args: &Map<String, Value>) -> Result<String> {
    let field = tool.tool.name.rsplit('.').next().unwrap_or_default();
    if !is_graphql_name(field) {
        return Err(Error::InvalidManual(format!(
            "tool '{}': without a `query`, the tool's name is the root field, and '{field}' is not a GraphQL name",
            tool.name
        )));
    }
    let mut definitions = Vec::with_capacity(args.len());
    let mut passed = Vec::with_capacity(args.len());
    for name in args.keys() {
        if !is_graphql_name(name) {
            return Err(Error::ValidationFailed(format!(
                "tool '{}': argument '{name}' is not a GraphQL name ([_A-Za-z][_0-9A-Za-z]*)",
                tool.name
            )));
        }
        let ty = match tpl.variable_types.as_ref().and_then(|types| types.get(name)) {
            Some(ty) => ty.clone(),
            None => type_from_schema(&tool.tool.inputs, name).ok_or_else(|| {
                Error::InvalidManual(format!(
                    "tool '{}': argument '{name}' has no GraphQL type: give it in the template's `variable_types`",
                    tool.name
                ))
            })?,
        };
        definitions.push(format!("${name}: {ty}"));
        passed.push(format!("{name}: ${name}"));
    }
    let mut doc = String::from(tpl.operation_type.as_deref().unwrap_or("query"));
    if let Some(name) = &tpl.operation_name {
        doc.push(' ');
        doc.push_str(name);
    }
    if !definitions.is_empty() {
        let _ = write!(doc, "({})", definitions.join(", "));
    }
    let _ = write!(doc, " {{ {field}");
    if !passed.is_empty() {
        let _ = write!(doc, "({})", passed.join(", "));
    }
    if let Some(selection) = tpl.selection_set.as_deref().filter(|s| !s.trim().is_empty()) {
        doc.push(' ');
        doc.push_str(selection);
    }
    doc.push_str(" }");
    Ok(doc)
}

/// A variable's GraphQL type from the input schema: JSON Schema scalars (and lists of
/// them) map onto the built-in scalars, `!` when required; an argument the schema does
/// not describe is a `String` (python-utcp's default); an object needs `variable_types`.
fn type_from_schema(inputs: &Value, name: &str) -> Option<String> {
    fn scalar(schema: &Value) -> Option<String> {
        let ty = match schema.get("type") {
            Some(Value::String(t)) => t.as_str(),
            // `["string", "null"]` and the like: the first non-null type.
            Some(Value::Array(types)) => types.iter().filter_map(Value::as_str).find(|t| *t != "null")?,
            _ if schema.get("enum").is_some() => "string",
            _ => return None,
        };
        Some(match ty {
            "string" => "String".into(),
            "integer" => "Int".into(),
            "number" => "Float".into(),
            "boolean" => "Boolean".into(),
            "array" => format!("[{}]", scalar(schema.get("items")?)?),
            _ => return None,
        })
    }
    let Some(schema) = inputs.get("properties").and_then(|p| p.get(name)) else { return Some("String".into()) };
    let ty = scalar(schema)?;
    let required = inputs.get("required").and_then(Value::as_array).is_some_and(|r| r.iter().any(|v| v == name));
    Some(if required { format!("{ty}!") } else { ty })
}

/// Introspect the endpoint of `template` (a manual call template of type `graphql`)
/// and return the UTCP manual it describes: one tool per root Query, Mutation and
/// Subscription field, each with `template`'s fields plus its `operation_type`, `variable_types`
/// and `selection_set`. `manual` names the manual in errors.
pub async fn discover(
    t: &Transports,
    manual: &str,
    template: &CallTemplate,
    fetched_from: &str,
    timeout: Duration,
) -> Result<Value> {
    let CallTemplate::Graphql(tpl) = template else {
        return Err(Error::Internal("graphql discovery needs a graphql template".into()));
    };
    let base = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(obj) = base.as_object() {
        crate::manual::check_graphql_shape(obj)
            .map_err(|e| Error::InvalidArgument(format!("manual '{manual}': graphql template: {e}")))?;
    }
    if tpl.operation_type.as_deref() == Some("subscription") || tpl.query.is_some() {
        return Err(Error::InvalidArgument(format!(
            "manual '{manual}': a graphql manual call template introspects its endpoint: it takes no `query` and no subscription `operation_type`"
        )));
    }
    let probe = Tool {
        name: "introspection".into(),
        description: String::new(),
        inputs: json!({}),
        outputs: json!({}),
        tags: Vec::new(),
        average_response_size: None,
        tool_call_template: template.clone(),
        extra: Map::new(),
    };
    let mut probe = RegisteredTool::detached(manual, probe);
    // The request gets the locality cap of the endpoint itself, as a manual fetch does.
    probe.fetched_from = Some(fetched_from.into());
    let body = json!({"query": INTROSPECTION_QUERY, "operationName": "IntrospectionQuery", "variables": {}});
    let response = post(t, &probe, tpl, &body, &[], timeout).await?;
    let data = read_response(t, &probe, response).await?;
    let schema = data.get("__schema").ok_or_else(|| {
        Error::InvalidManual(format!("manual '{manual}': the introspection answer from {} has no `__schema`", tpl.url))
    })?;
    let mut base = base;
    if let Some(obj) = base.as_object_mut() {
        obj.remove("operation_name");
        obj.remove("variable_types");
        obj.remove("selection_set");
    }
    build_manual(schema, &base).map_err(|e| Error::InvalidManual(format!("manual '{manual}': {e}")))
}

/// The manual an introspected `__schema` describes; `base` is the manual call template
/// every tool's template starts from.
fn build_manual(schema: &Value, base: &Value) -> std::result::Result<Value, String> {
    let types: HashMap<&str, &Value> = schema
        .get("types")
        .and_then(Value::as_array)
        .ok_or("the introspection answer has no `types` list")?
        .iter()
        .filter_map(|t| Some((t.get("name")?.as_str()?, t)))
        .collect();
    let schema_types = SchemaTypes { types };
    let mut tools = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let roots = [("queryType", "query"), ("mutationType", "mutation"), ("subscriptionType", "subscription")];
    for (root, operation) in roots {
        let Some(root_name) = schema.get(root).and_then(|r| r.get("name")).and_then(Value::as_str) else { continue };
        let root_type = schema_types
            .get(root_name)
            .ok_or_else(|| format!("the {operation} root type '{root_name}' is not in `types`"))?;
        for field in root_type.get("fields").and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = field.get("name").and_then(Value::as_str).filter(|n| is_graphql_name(n)) else { continue };
            if !seen.insert(name.to_string()) {
                tracing::warn!(
                    field = name,
                    operation,
                    "GraphQL root field named like one listed before it: left out (tool names must be unique)"
                );
                continue;
            }
            tools.push(schema_types.tool(name, field, operation, base));
        }
    }
    Ok(json!({"utcp_version": crate::manual::UTCP_VERSION, "manual_version": "1.0.0", "tools": tools}))
}

struct SchemaTypes<'a> {
    types: HashMap<&'a str, &'a Value>,
}

impl SchemaTypes<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.types.get(name).copied()
    }

    fn tool(&self, name: &str, field: &Value, operation: &str, base: &Value) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        let mut variable_types = Map::new();
        for arg in field.get("args").and_then(Value::as_array).into_iter().flatten() {
            let (Some(arg_name), Some(ty)) = (arg.get("name").and_then(Value::as_str), arg.get("type")) else {
                continue;
            };
            let mut schema = self.input_schema(ty, INPUT_DEPTH);
            describe(&mut schema, arg);
            properties.insert(arg_name.into(), schema);
            variable_types.insert(arg_name.into(), Value::String(type_text(ty)));
            if is_non_null(ty) && arg.get("defaultValue").is_none_or(Value::is_null) {
                required.push(Value::String(arg_name.into()));
            }
        }
        let return_type = field.get("type").unwrap_or(&Value::Null);
        let (selection, output) = self.output(return_type, SELECTION_DEPTH);
        let mut template = base.clone();
        if let Some(obj) = template.as_object_mut() {
            obj.insert("operation_type".into(), Value::String(operation.into()));
            obj.insert("variable_types".into(), Value::Object(variable_types));
            if let Some(selection) = selection {
                obj.insert("selection_set".into(), Value::String(selection));
            }
        }
        let mut inputs = json!({"type": "object", "properties": properties});
        if !required.is_empty() {
            inputs["required"] = Value::Array(required);
        }
        // The call returns `data`, which holds the root field; a subscription's call, the
        // list of every `data` until it completes (a stream yields them one by one).
        let data = json!({"type": "object", "properties": {name: output}});
        let outputs = if operation == "subscription" { json!({"type": "array", "items": data}) } else { data };
        json!({
            "name": name,
            "description": field.get("description").and_then(Value::as_str).unwrap_or_default(),
            "inputs": inputs,
            "outputs": outputs,
            "tags": ["graphql", operation],
            "tool_call_template": template,
        })
    }

    /// The JSON Schema of an input type (arguments, input-object fields).
    fn input_schema(&self, ty: &Value, depth: usize) -> Value {
        match kind(ty) {
            "NON_NULL" => self.input_schema(of_type(ty), depth),
            "LIST" => json!({"type": "array", "items": self.input_schema(of_type(ty), depth)}),
            _ => {
                let Some(named) = ty.get("name").and_then(Value::as_str).and_then(|n| self.get(n)) else {
                    return json!({});
                };
                match kind(named) {
                    "ENUM" => enum_schema(named),
                    "INPUT_OBJECT" if depth > 0 => {
                        let mut properties = Map::new();
                        let mut required = Vec::new();
                        for f in named.get("inputFields").and_then(Value::as_array).into_iter().flatten() {
                            let (Some(n), Some(t)) = (f.get("name").and_then(Value::as_str), f.get("type")) else {
                                continue;
                            };
                            let mut schema = self.input_schema(t, depth - 1);
                            describe(&mut schema, f);
                            properties.insert(n.into(), schema);
                            if is_non_null(t) && f.get("defaultValue").is_none_or(Value::is_null) {
                                required.push(Value::String(n.into()));
                            }
                        }
                        let mut schema =
                            json!({"type": "object", "properties": properties, "additionalProperties": false});
                        if !required.is_empty() {
                            schema["required"] = Value::Array(required);
                        }
                        describe(&mut schema, named);
                        schema
                    }
                    "INPUT_OBJECT" => json!({"type": "object"}),
                    _ => scalar_schema(named),
                }
            }
        }
    }

    /// The selection set of an output type (None for a leaf) and the schema of what
    /// that selection returns, to `depth` object levels.
    fn output(&self, ty: &Value, depth: usize) -> (Option<String>, Value) {
        match kind(ty) {
            "NON_NULL" => self.output(of_type(ty), depth),
            "LIST" => {
                let (selection, items) = self.output(of_type(ty), depth);
                (selection, json!({"type": "array", "items": items}))
            }
            _ => {
                let Some(named) = ty.get("name").and_then(Value::as_str).and_then(|n| self.get(n)) else {
                    return (None, json!({}));
                };
                match kind(named) {
                    "OBJECT" | "INTERFACE" => {
                        let (selection, schema) = self.object_selection(named, depth);
                        (Some(selection), schema)
                    }
                    "UNION" => {
                        let mut selection = String::from("{ __typename");
                        let mut variants = Vec::new();
                        for possible in named.get("possibleTypes").and_then(Value::as_array).into_iter().flatten() {
                            let Some(variant) = possible.get("name").and_then(Value::as_str).and_then(|n| self.get(n))
                            else {
                                continue;
                            };
                            let name = variant.get("name").and_then(Value::as_str).unwrap_or_default();
                            let (fields, schema) = self.object_selection(variant, depth);
                            let _ = write!(selection, " ... on {name} {fields}");
                            variants.push(schema);
                        }
                        selection.push_str(" }");
                        (Some(selection), json!({"anyOf": variants}))
                    }
                    "ENUM" => (None, enum_schema(named)),
                    _ => (None, scalar_schema(named)),
                }
            }
        }
    }

    /// `{ a b c { d } }` for an object or interface type: its fields that need no
    /// argument, objects only while `depth` lasts; `__typename` when nothing else fits.
    fn object_selection(&self, named: &Value, depth: usize) -> (String, Value) {
        let mut parts = Vec::new();
        let mut properties = Map::new();
        for f in named.get("fields").and_then(Value::as_array).into_iter().flatten() {
            let (Some(name), Some(ty)) = (f.get("name").and_then(Value::as_str), f.get("type")) else { continue };
            let needs_argument =
                f.get("args").and_then(Value::as_array).into_iter().flatten().any(|a| {
                    a.get("type").is_some_and(is_non_null) && a.get("defaultValue").is_none_or(Value::is_null)
                });
            if needs_argument || !is_graphql_name(name) {
                continue;
            }
            if self.is_leaf(ty) {
                let (_, mut schema) = self.output(ty, depth);
                describe(&mut schema, f);
                parts.push(name.to_string());
                properties.insert(name.into(), schema);
            } else if depth > 1 {
                let (selection, mut schema) = self.output(ty, depth - 1);
                describe(&mut schema, f);
                parts.push(format!("{name} {}", selection.unwrap_or_default()));
                properties.insert(name.into(), schema);
            }
        }
        if parts.is_empty() {
            parts.push("__typename".into());
            properties.insert("__typename".into(), json!({"type": "string"}));
        }
        let mut schema = json!({"type": "object", "properties": properties});
        describe(&mut schema, named);
        (format!("{{ {} }}", parts.join(" ")), schema)
    }

    fn is_leaf(&self, ty: &Value) -> bool {
        match kind(ty) {
            "NON_NULL" | "LIST" => self.is_leaf(of_type(ty)),
            "SCALAR" | "ENUM" => true,
            _ => ty
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| self.get(n))
                .is_some_and(|t| matches!(kind(t), "SCALAR" | "ENUM")),
        }
    }
}

fn kind(ty: &Value) -> &str {
    ty.get("kind").and_then(Value::as_str).unwrap_or_default()
}

fn of_type(ty: &Value) -> &Value {
    ty.get("ofType").unwrap_or(&Value::Null)
}

fn is_non_null(ty: &Value) -> bool {
    kind(ty) == "NON_NULL"
}

/// A type reference as GraphQL writes it: `[ID!]!`.
fn type_text(ty: &Value) -> String {
    match kind(ty) {
        "NON_NULL" => format!("{}!", type_text(of_type(ty))),
        "LIST" => format!("[{}]", type_text(of_type(ty))),
        _ => ty.get("name").and_then(Value::as_str).unwrap_or("String").to_string(),
    }
}

fn scalar_schema(named: &Value) -> Value {
    let mut schema = match named.get("name").and_then(Value::as_str).unwrap_or_default() {
        "Int" => json!({"type": "integer"}),
        "Float" => json!({"type": "number"}),
        "String" => json!({"type": "string"}),
        "Boolean" => json!({"type": "boolean"}),
        // GraphQL accepts an ID as a string or an integer.
        "ID" => json!({"type": ["string", "integer"]}),
        // A custom scalar: any JSON value, described.
        _ => json!({}),
    };
    describe(&mut schema, named);
    schema
}

fn enum_schema(named: &Value) -> Value {
    let values: Vec<Value> = named
        .get("enumValues")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").cloned())
        .collect();
    let mut schema = json!({"type": "string", "enum": values});
    describe(&mut schema, named);
    schema
}

/// Copy `from`'s GraphQL description onto `schema`, when it has one.
fn describe(schema: &mut Value, from: &Value) {
    if let (Some(text), Some(obj)) = (from.get("description").and_then(Value::as_str), schema.as_object_mut()) {
        if !text.is_empty() && !obj.contains_key("description") {
            obj.insert("description".into(), Value::String(text.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_text_spells_wrappers() {
        let ty = json!({"kind": "NON_NULL", "ofType": {"kind": "LIST", "ofType": {"kind": "NON_NULL", "ofType": {"kind": "SCALAR", "name": "ID"}}}});
        assert_eq!(type_text(&ty), "[ID!]!");
    }

    #[test]
    fn schema_types_map_to_graphql_types() {
        let inputs = json!({"type": "object", "properties": {
            "n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
            "obj": {"type": "object"}}, "required": ["n"]});
        assert_eq!(type_from_schema(&inputs, "n").as_deref(), Some("Int!"));
        assert_eq!(type_from_schema(&inputs, "tags").as_deref(), Some("[String]"));
        assert_eq!(type_from_schema(&inputs, "obj"), None);
        assert_eq!(type_from_schema(&inputs, "unknown").as_deref(), Some("String"));
    }
}
