//! The offline planner: no model, a few deterministic rules.
//!
//! 1. The request is split into clauses at "then", ";" and "after that"
//!    (at most [`MAX_CLAUSES`]). Each clause's goal is its best search hit. A clause
//!    without a hit means the planner cannot map the request: it says a model is needed.
//! 2. Each required input of a goal tool is filled, in this order, by
//!    a. a `name=value` (or `name="value"`) pair written in the request;
//!    b. a caller input of that name (`PlanOptions::inputs`);
//!    c. the output property of that name (and a compatible type) of a step already
//!    in the plan, latest first (`${{ steps.<id>.output.<name> }}`, plus `depends_on`);
//!    d. a producer: another search hit of the request whose output schema has that
//!    property, added before the goal (its own required inputs filled the same way,
//!    at most [`MAX_DEPTH`] levels);
//!    e. else a workflow input of that name, with the property's type and description.
//! 3. Optional inputs are left out. The workflow's output `result` is the last step's output.
//! 4. The plan is validated like any workflow; any problem is a `PLANNER` error.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{PlanOptions, hits, planner_error};
use crate::error::Result;
use crate::registry::{Catalogue, RegisteredTool};

pub const MAX_CLAUSES: usize = 5;
pub const MAX_DEPTH: usize = 3;
/// Search hits considered as producers.
const PRODUCERS: usize = 20;

/// What to say when the request needs a model.
pub fn needs_model(why: &str) -> crate::error::Error {
    planner_error(format!(
        "the offline planner cannot plan this request: {why}. A model is needed: configure one in the config's \
         `planner` section, e.g. `planner: {{provider: openai, model: gpt-4o-mini, api_key: \"${{OPENAI_API_KEY}}\"}}` \
         (or provider: anthropic; any OpenAI-compatible server such as Ollama or vLLM works with `base_url`)"
    ))
}

/// Split a request into its clauses.
pub fn clauses(request: &str) -> Vec<String> {
    let mut text = format!(" {} ", request.replace(['\n', '\r'], " "));
    for sep in [";", " and then ", " after that ", ", then ", " then "] {
        // Case-insensitive split on ASCII separators: lower-case a copy to find them.
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        loop {
            let lower = rest.to_ascii_lowercase();
            match lower.find(sep) {
                Some(i) => {
                    out.push_str(&rest[..i]);
                    out.push('\u{1}');
                    rest = &rest[i + sep.len()..];
                }
                None => {
                    out.push_str(rest);
                    break;
                }
            }
        }
        text = out;
    }
    text.split('\u{1}').map(str::trim).filter(|c| !c.is_empty()).take(MAX_CLAUSES).map(str::to_string).collect()
}

/// `name=value` pairs written in the request (values: JSON when they parse, else text).
pub fn given_values(request: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let mut rest = request;
    while let Some(eq) = rest.find('=') {
        let before = &rest[..eq];
        let name_start = before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        let name = &before[name_start..];
        let after = &rest[eq + 1..];
        let (raw, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].trim_end_matches([',', '.', ';']), &after[end..])
        };
        if !name.is_empty() && !raw.is_empty() && out.len() < 50 {
            let quoted = after.starts_with('"');
            let value = if quoted {
                Value::String(raw.to_string())
            } else {
                serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
            };
            out.insert(name.to_string(), value);
        }
        rest = next;
    }
    out
}

fn schema_type(schema: Option<&Value>) -> Option<&str> {
    schema.and_then(|s| s.get("type")).and_then(Value::as_str)
}

/// An output of type `have` may feed an input of type `want`.
fn compatible(have: Option<&str>, want: Option<&str>) -> bool {
    match (have, want) {
        (Some(h), Some(w)) => h == w || (h == "integer" && w == "number"),
        _ => true,
    }
}

fn required(tool: &RegisteredTool) -> Vec<(String, Option<Value>)> {
    let inputs = tool.to_value().get("inputs").cloned().unwrap_or(Value::Null);
    let names: Vec<String> = inputs
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    names.into_iter().map(|n| (n.clone(), inputs.get("properties").and_then(|p| p.get(&n)).cloned())).collect()
}

fn output_property(tool: &RegisteredTool, name: &str) -> Option<Value> {
    let outputs = tool.to_value().get("outputs").cloned()?;
    outputs.get("properties").and_then(|p| p.get(name)).cloned()
}

/// A planned step: id, tool, arguments, dependencies.
type PlannedStep = (String, Arc<RegisteredTool>, Map<String, Value>, Vec<String>);

struct Builder<'a> {
    given: Map<String, Value>,
    caller_inputs: Map<String, Value>,
    producers: Vec<Arc<RegisteredTool>>,
    steps: Vec<PlannedStep>,
    inputs: Map<String, Value>,
    catalogue: &'a Catalogue,
}

impl Builder<'_> {
    fn step_id(&self, tool: &RegisteredTool) -> String {
        let base: String = tool
            .tool
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .take(40)
            .collect();
        let base = if base.is_empty() { "step".to_string() } else { base };
        let mut id = base.clone();
        let mut n = 2;
        while self.steps.iter().any(|(s, ..)| *s == id) {
            id = format!("{base}_{n}");
            n += 1;
        }
        id
    }

    /// Add `tool` (its producers first); returns its step id.
    fn add(&mut self, tool: Arc<RegisteredTool>, depth: usize) -> String {
        let mut args = Map::new();
        let mut deps: Vec<String> = Vec::new();
        for (name, schema) in required(&tool) {
            let want = schema_type(schema.as_ref()).map(str::to_string);
            if let Some(v) = self.given.get(&name) {
                args.insert(name, v.clone());
                continue;
            }
            if self.caller_inputs.contains_key(&name) {
                self.declare_input(&name, schema.as_ref());
                args.insert(name.clone(), format!("${{{{ inputs.{name} }}}}").into());
                continue;
            }
            let earlier = self.steps.iter().rev().find_map(|(id, t, ..)| {
                let prop = output_property(t, &name)?;
                compatible(schema_type(Some(&prop)), want.as_deref()).then(|| id.clone())
            });
            if let Some(id) = earlier {
                args.insert(name.clone(), format!("${{{{ steps.{id}.output.{name} }}}}").into());
                if !deps.contains(&id) {
                    deps.push(id);
                }
                continue;
            }
            let producer = (depth < MAX_DEPTH)
                .then(|| {
                    self.producers.iter().find(|p| {
                        p.name != tool.name
                            && !self.steps.iter().any(|(_, t, ..)| t.name == p.name)
                            && output_property(p, &name)
                                .is_some_and(|prop| compatible(schema_type(Some(&prop)), want.as_deref()))
                    })
                })
                .flatten()
                .cloned();
            if let Some(p) = producer {
                let id = self.add(p, depth + 1);
                args.insert(name.clone(), format!("${{{{ steps.{id}.output.{name} }}}}").into());
                deps.push(id);
                continue;
            }
            self.declare_input(&name, schema.as_ref());
            args.insert(name.clone(), format!("${{{{ inputs.{name} }}}}").into());
        }
        let id = self.step_id(&tool);
        self.steps.push((id.clone(), tool, args, deps));
        id
    }

    fn declare_input(&mut self, name: &str, schema: Option<&Value>) {
        let mut decl = Map::new();
        if let Some(t) = schema.and_then(|s| s.get("type")).filter(|t| t.is_string() || t.is_array()) {
            decl.insert("type".into(), t.clone());
        }
        if let Some(d) = schema.and_then(|s| s.get("description")).and_then(Value::as_str) {
            decl.insert("description".into(), d.chars().take(200).collect::<String>().into());
        }
        self.inputs.entry(name.to_string()).or_insert(Value::Object(decl));
    }
}

fn workflow_name(request: &str) -> String {
    let words: Vec<String> = request
        .split_whitespace()
        .filter(|w| !w.contains('='))
        .flat_map(|w| w.split(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !w.is_empty())
        .take(5)
        .map(str::to_ascii_lowercase)
        .collect();
    if words.is_empty() { "plan".into() } else { words.join("_") }
}

/// Build a workflow definition for `request`, or say why a model is needed.
pub fn plan(catalogue: &Catalogue, request: &str, options: &PlanOptions, max_tools: usize) -> Result<Value> {
    if request.trim().is_empty() {
        return Err(crate::error::Error::InvalidArgument(
            "the request is empty: say what the workflow should do".into(),
        ));
    }
    if hits(catalogue, "", 1).is_empty() {
        return Err(needs_model("no tools are registered (register manuals first)"));
    }
    let given = given_values(request);
    let mut builder = Builder {
        given,
        caller_inputs: options.inputs.as_ref().and_then(Value::as_object).cloned().unwrap_or_default(),
        producers: hits(catalogue, request, PRODUCERS.max(max_tools)),
        steps: Vec::new(),
        inputs: Map::new(),
        catalogue,
    };
    for clause in clauses(request) {
        let Some(goal) = hits(builder.catalogue, &clause, 1).into_iter().next() else {
            return Err(needs_model(&format!("no registered tool matches '{clause}'")));
        };
        if builder.steps.iter().any(|(_, t, ..)| t.name == goal.name) {
            continue; // already there (as another clause's producer)
        }
        builder.add(goal, 0);
    }
    let Some((last, ..)) = builder.steps.last() else {
        return Err(needs_model("the request names nothing to do"));
    };
    let outputs = json!({"result": format!("${{{{ steps.{last}.output }}}}")});
    let steps: Vec<Value> = builder
        .steps
        .iter()
        .map(|(id, tool, args, deps)| {
            let mut s = json!({"id": id, "tool": tool.name, "args": args});
            if !deps.is_empty() {
                s["depends_on"] = json!(deps);
            }
            s
        })
        .collect();
    let mut definition = json!({
        "name": workflow_name(request),
        "description": format!("Planned offline from: {}", request.chars().take(200).collect::<String>()),
        "steps": steps,
        "outputs": outputs,
    });
    if !builder.inputs.is_empty() {
        definition["inputs"] = Value::Object(builder.inputs);
    }
    Ok(definition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_and_values() {
        assert_eq!(clauses("find the city Then get weather; send mail"), ["find the city", "get weather", "send mail"]);
        assert_eq!(clauses("one thing"), ["one thing"]);
        let v = given_values("weather for city=Paris days=3 note=\"a b\", x=");
        assert_eq!(v["city"], "Paris");
        assert_eq!(v["days"], 3);
        assert_eq!(v["note"], "a b");
        assert!(!v.contains_key("x"));
        assert_eq!(workflow_name("Get the weather, city=Paris"), "get_the_weather");
    }
}
