//! What the model is told: a system prompt with the workflow shape and the rules,
//! and a user message with the request, the candidate tools and the context.
//!
//! Only tools' names, descriptions, tags and input/output schemas are sent (compacted
//! and bounded), never call templates: a template may hold `${VAR}` references whose
//! values are secrets, and its URL or command is none of the model's business.
//! Inputs and session state are described by their keys and JSON types, not values.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::hits;
use crate::registry::{Catalogue, RegisteredTool};

/// A description longer than this is cut.
const MAX_DESCRIPTION: usize = 300;
/// A description inside a schema longer than this is cut.
const MAX_SCHEMA_DESCRIPTION: usize = 120;
/// Schemas deeper than this are cut to `{}`.
const MAX_SCHEMA_DEPTH: usize = 6;
/// `$defs` larger than this (serialized) are dropped.
const MAX_DEFS: usize = 4_000;
/// One tool's entry is at most this large (its schemas are dropped beyond).
const MAX_TOOL: usize = 6_000;
/// The tools section is at most this large.
pub const MAX_TOOLS_SECTION: usize = 32_000;
/// Session state keys listed.
const MAX_STATE_KEYS: usize = 50;

/// The JSON Schema of the answer (docs/design.md §7 shape), also sent as `response_format`.
pub fn workflow_schema() -> Value {
    json!({
        "type": "object",
        "required": ["name", "steps"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "description": "short snake_case name"},
            "description": {"type": "string"},
            "inputs": {
                "type": "object",
                "description": "input name -> JSON Schema of that input (e.g. {\"type\": \"string\"}), for values the request does not give",
                "additionalProperties": {"type": "object"}
            },
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["id", "tool"],
                    "additionalProperties": false,
                    "properties": {
                        "id": {"type": "string", "description": "letters, digits, _ or -; unique"},
                        "tool": {"type": "string", "description": "a full tool name from the list"},
                        "args": {"type": "object", "description": "arguments; values may be ${{ expressions }}"},
                        "depends_on": {"type": "array", "items": {"type": "string"}},
                        "if": {"type": "string", "description": "a condition expression (without ${{ }}); the step is skipped when false"},
                        "retry": {
                            "type": "object",
                            "properties": {"max_attempts": {"type": "integer"}, "initial_delay": {"type": "string"}}
                        },
                        "on_error": {"description": "\"fail\" (default), \"continue\", or {\"fallback\": {\"tool\": ..., \"args\": {...}}}"},
                        "timeout": {"type": "string", "description": "e.g. 30s"}
                    }
                }
            },
            "outputs": {
                "type": "object",
                "description": "output name -> ${{ expression }}",
                "additionalProperties": true
            }
        }
    })
}

/// The system prompt: the task, the answer's shape and the rules.
pub fn system_prompt() -> String {
    let schema = serde_json::to_string(&workflow_schema()).unwrap_or_default();
    format!(
        "You plan workflows for the UTP runtime. Turn the user's request into ONE workflow that calls the listed tools.\n\
         \n\
         Answer with a single JSON object and nothing else (no prose, no code fences). Its JSON Schema:\n\
         {schema}\n\
         \n\
         Rules:\n\
         1. Use only the tools listed, by their full name (`manual.tool`). Never invent a tool.\n\
         2. Give each tool the arguments its input schema requires, with the right JSON types.\n\
         3. Values come from `${{{{ expression }}}}` strings: `inputs.<name>` (declare every input you read in \
         `inputs` with a JSON Schema), `steps.<id>.output` (the result of an earlier step; the reading step must list \
         it in `depends_on`), `state.<key>` (session state). A string that is exactly one expression keeps the \
         expression's JSON type. Expressions are CEL: `a + 1`, `x.size()`, `cond ? a : b`.\n\
         4. Put values the request states as literal arguments; anything else the run needs becomes a workflow input.\n\
         5. `if` is a bare expression (no `${{{{ }}}}`); a step whose `if` is false is skipped.\n\
         6. Steps without dependencies between them run in parallel; order them with `depends_on`.\n\
         7. `outputs` maps names to `${{{{ }}}}` expressions over the steps' outputs.\n\
         8. If the request cannot be done with these tools, still answer with JSON: the closest workflow you can make."
    )
}

/// The candidate tools: search hits for the request first, then the other tools,
/// at most `max_tools` and [`MAX_TOOLS_SECTION`] bytes.
pub fn candidate_tools(catalogue: &Catalogue, request: &str, max_tools: usize) -> Vec<Arc<RegisteredTool>> {
    let mut tools = hits(catalogue, request, max_tools);
    if tools.len() < max_tools {
        for t in hits(catalogue, "", 0) {
            if tools.len() >= max_tools {
                break;
            }
            if !tools.iter().any(|c| c.name == t.name) {
                tools.push(t);
            }
        }
    }
    tools
}

/// A tool as the model sees it: name, description, tags, compacted schemas.
pub fn describe_tool(tool: &RegisteredTool) -> Value {
    let full = tool.to_value();
    let mut m = Map::new();
    m.insert("name".into(), tool.name.clone().into());
    let description = cut(&tool.tool.description, MAX_DESCRIPTION);
    if !description.is_empty() {
        m.insert("description".into(), description.into());
    }
    if !tool.tool.tags.is_empty() {
        m.insert("tags".into(), tool.tool.tags.iter().take(10).map(|t| cut(t, 40)).collect::<Vec<_>>().into());
    }
    for key in ["inputs", "outputs"] {
        if let Some(schema) = full.get(key).filter(|s| s.as_object().is_some_and(|o| !o.is_empty())) {
            m.insert(key.into(), compact_schema(schema, 0));
        }
    }
    let mut v = Value::Object(m);
    if serde_json::to_string(&v).map_or(0, |s| s.len()) > MAX_TOOL {
        if let Some(o) = v.as_object_mut() {
            o.remove("outputs");
            let inputs = o.get("inputs").map(required_only);
            if let Some(inputs) = inputs {
                o.insert("inputs".into(), inputs);
            }
        }
    }
    v
}

/// Only the required properties' names and types, when a schema is too large.
fn required_only(schema: &Value) -> Value {
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let mut props = Map::new();
    for name in required.iter().take(30) {
        let t = schema.pointer(&format!("/properties/{}", name.replace('~', "~0").replace('/', "~1")));
        let ty = t.and_then(|t| t.get("type")).cloned().unwrap_or(Value::Null);
        props.insert(cut(name, 80), if ty.is_null() { json!({}) } else { json!({"type": ty}) });
    }
    json!({"type": "object", "properties": props, "required": required.iter().take(30).collect::<Vec<_>>()})
}

/// A schema without what the model does not need: long descriptions cut, examples,
/// titles and comments dropped, depth bounded, large `$defs` dropped.
pub fn compact_schema(schema: &Value, depth: usize) -> Value {
    if depth > MAX_SCHEMA_DEPTH {
        return json!({});
    }
    match schema {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o {
                match k.as_str() {
                    "examples" | "example" | "title" | "$comment" | "$schema" | "$id" | "readOnly" | "writeOnly"
                    | "deprecated" | "externalDocs" | "xml" => {}
                    "description" => {
                        if let Some(s) = v.as_str() {
                            out.insert(k.clone(), cut(s, MAX_SCHEMA_DESCRIPTION).into());
                        }
                    }
                    "$defs" | "definitions" => {
                        let compacted = compact_schema(v, depth + 1);
                        if serde_json::to_string(&compacted).map_or(usize::MAX, |s| s.len()) <= MAX_DEFS {
                            out.insert(k.clone(), compacted);
                        }
                    }
                    "enum" => {
                        if let Some(items) = v.as_array() {
                            out.insert(k.clone(), items.iter().take(20).cloned().collect::<Vec<_>>().into());
                        }
                    }
                    _ => {
                        out.insert(k.clone(), compact_schema(v, depth + 1));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().take(50).map(|v| compact_schema(v, depth + 1)).collect()),
        Value::String(s) => cut(s, MAX_SCHEMA_DESCRIPTION).into(),
        other => other.clone(),
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The JSON type of a value, for describing inputs and state without their values.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The first user message: the request, the tools, the inputs and session state keys.
pub fn user_prompt(
    tools: &[Arc<RegisteredTool>],
    request: &str,
    inputs: Option<&Value>,
    state: Option<&Value>,
) -> String {
    let mut section = String::new();
    for tool in tools {
        let line = serde_json::to_string(&describe_tool(tool)).unwrap_or_default();
        if !section.is_empty() && section.len() + line.len() > MAX_TOOLS_SECTION {
            break;
        }
        section.push_str(&line);
        section.push('\n');
    }
    let mut text = format!("Request:\n{}\n\nTools (one JSON object per line):\n{section}", request.trim());
    if let Some(Value::Object(inputs)) = inputs.filter(|v| v.as_object().is_some_and(|o| !o.is_empty())) {
        let described: Vec<String> = inputs.iter().take(50).map(|(k, v)| format!("{k} ({})", json_type(v))).collect();
        text.push_str(&format!(
            "\nThe run will be given these inputs (read them as inputs.<name> and declare them in `inputs`): {}\n",
            described.join(", ")
        ));
    }
    if let Some(Value::Object(state)) = state.filter(|v| v.as_object().is_some_and(|o| !o.is_empty())) {
        let described: Vec<String> =
            state.iter().take(MAX_STATE_KEYS).map(|(k, v)| format!("{k} ({})", json_type(v))).collect();
        text.push_str(&format!("\nSession state keys (read them as state.<key>): {}\n", described.join(", ")));
    }
    text.push_str("\nAnswer with the workflow JSON only.");
    text
}

/// The follow-up after an answer that did not validate.
pub fn repair_prompt(problems: &str) -> String {
    format!(
        "That workflow is not valid. The problems:\n{}\n\nAnswer with the corrected workflow JSON only, using only the listed tools.",
        cut(problems, 8_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_compacted() {
        let long = "x".repeat(1000);
        let s = json!({"type": "object", "title": "T", "examples": [1],
            "properties": {"a": {"type": "string", "description": long}},
            "$defs": {"big": {"enum": (0..5000).collect::<Vec<_>>()}}});
        let c = compact_schema(&s, 0);
        assert!(c.get("title").is_none() && c.get("examples").is_none());
        assert!(c["properties"]["a"]["description"].as_str().unwrap().len() < 200);
        assert!(c["$defs"]["big"]["enum"].as_array().unwrap().len() <= 20);
        let mut deep = json!({"type": "string"});
        for _ in 0..50 {
            deep = json!({"type": "object", "properties": {"x": deep}});
        }
        assert!(serde_json::to_string(&compact_schema(&deep, 0)).unwrap().len() < 400);
    }
}
