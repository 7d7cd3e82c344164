//! Workflow definitions (docs/design.md §7): parsed from YAML/JSON, then validated against
//! the tool catalogue and compiled once, before any step runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::expr::{Condition, Template};
use super::retry::RetrySpec;
use crate::config::parse_duration;
use crate::error::{Error, Result};
use crate::registry::Catalogue;
use crate::schema::check_literal_args;

/// Steps of one execution that may run at once, unless the workflow says otherwise.
pub const DEFAULT_MAX_PARALLEL: usize = 8;
/// Bounds that keep a hostile definition from costing more than it says.
const MAX_STEPS: usize = 1000;

/// The definition as written (docs/design.md §7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowSpec {
    name: String,
    #[serde(default)]
    description: String,
    /// Input name → JSON Schema of that input (plus `default`).
    #[serde(default)]
    inputs: BTreeMap<String, Value>,
    #[serde(default)]
    max_parallel: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
    steps: Vec<StepSpec>,
    #[serde(default)]
    outputs: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    id: String,
    tool: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default, rename = "if")]
    condition: Option<String>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    retry: Option<RetrySpec>,
    #[serde(default)]
    on_error: Option<Value>,
    /// Session state keys to write when the step succeeds (`${{ }}` may read `steps.<this>.output`).
    #[serde(default)]
    set_state: Map<String, Value>,
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Duration>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    v.map(|v| parse_duration(&v)).transpose().map_err(serde::de::Error::custom)
}

/// What a failed step does to its execution.
pub enum OnError {
    /// The execution fails (default).
    Fail,
    /// The step is recorded as failed; dependants run, seeing its `output` as null.
    Continue,
    /// Another tool is called instead; its result becomes the step's output.
    Fallback { tool: String, args: Template },
}

/// A validated, compiled step.
pub struct Step {
    pub id: String,
    pub tool: String,
    pub description: String,
    /// Indexes of the steps this one waits for.
    pub deps: Vec<usize>,
    pub condition: Option<Condition>,
    pub args: Template,
    pub timeout: Option<Duration>,
    pub retry: RetrySpec,
    pub on_error: OnError,
    pub set_state: Vec<(String, Template)>,
}

/// A validated, compiled workflow: cheap to share between executions.
pub struct Workflow {
    pub name: String,
    pub description: String,
    /// The definition as given (JSON), kept for records and the store.
    pub definition: Value,
    input_schema: Option<jsonschema::Validator>,
    input_defaults: Map<String, Value>,
    pub max_parallel: usize,
    pub timeout: Option<Duration>,
    pub steps: Vec<Step>,
    /// For each step, the steps that wait for it.
    pub dependants: Vec<Vec<usize>>,
    pub outputs: Vec<(String, Template)>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow").field("name", &self.name).field("steps", &self.steps.len()).finish()
    }
}

impl Workflow {
    /// Parse YAML or JSON text (bounded like manuals).
    pub fn parse_text(text: &str, catalogue: &Catalogue) -> Result<Arc<Workflow>> {
        let value = crate::parse::parse_document(text.as_bytes(), None)
            .map_err(|e| Error::InvalidArgument(format!("workflow: {e}")))?;
        Workflow::compile(value, catalogue)
    }

    /// Validate `definition` against the catalogue's tools and compile its expressions.
    /// Every problem found is listed (`VALIDATION_FAILED`), each pointing at its step
    /// and field.
    pub fn compile(definition: Value, catalogue: &Catalogue) -> Result<Arc<Workflow>> {
        if !definition.is_object() {
            return Err(Error::InvalidArgument("a workflow definition is a mapping with `name` and `steps`".into()));
        }
        let spec: WorkflowSpec = serde_json::from_value(definition.clone())
            .map_err(|e| Error::ValidationFailed(format!("workflow definition: {e}")))?;
        let name = spec.name.clone();
        let mut problems = Vec::new();
        let workflow = build(spec, definition, catalogue, &mut problems);
        match workflow {
            Some(w) if problems.is_empty() => Ok(Arc::new(w)),
            _ => Err(Error::ValidationFailed(format!("workflow '{name}' is invalid: {}", problems.join("; ")))),
        }
    }

    /// The run's inputs: defaults filled in, then checked against the declared inputs.
    pub fn resolve_inputs(&self, inputs: Value) -> Result<Value> {
        let mut map = match inputs {
            Value::Null => Map::new(),
            Value::Object(m) => m,
            _ => return Err(Error::InvalidArgument(format!("workflow '{}': inputs must be an object", self.name))),
        };
        for (k, v) in &self.input_defaults {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let value = Value::Object(map);
        if let Some(schema) = &self.input_schema {
            let problems: Vec<String> = schema
                .iter_errors(&value)
                .take(20)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    format!("{}: {}", if at.is_empty() { "/" } else { &at }, e.masked_with("value"))
                })
                .collect();
            if !problems.is_empty() {
                return Err(Error::ValidationFailed(format!(
                    "workflow '{}': inputs do not match: {}",
                    self.name,
                    problems.join("; ")
                )));
            }
        }
        Ok(value)
    }
}

fn build(spec: WorkflowSpec, definition: Value, catalogue: &Catalogue, problems: &mut Vec<String>) -> Option<Workflow> {
    if spec.name.trim().is_empty() {
        problems.push("name: a workflow needs a name".into());
    }
    if spec.steps.is_empty() {
        problems.push("steps: a workflow needs at least one step".into());
    }
    if spec.steps.len() > MAX_STEPS {
        problems.push(format!("steps: {} steps, at most {MAX_STEPS}", spec.steps.len()));
        return None;
    }
    let max_parallel = spec.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL);
    if max_parallel == 0 {
        problems.push("max_parallel: must be at least 1".into());
    }
    let (input_schema, input_defaults) = input_schema(&spec.inputs, problems);

    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, s) in spec.steps.iter().enumerate() {
        if s.id.trim().is_empty() || !s.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            problems.push(format!("steps[{i}]: id '{}' must be letters, digits, '_' or '-'", s.id));
        }
        if index.insert(s.id.clone(), i).is_some() {
            problems.push(format!("steps[{i}]: two steps have the id '{}'", s.id));
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(spec.steps.len());
    for s in &spec.steps {
        let mut own = Vec::new();
        for d in &s.depends_on {
            match index.get(d.as_str()) {
                Some(&j) if !own.contains(&j) => own.push(j),
                Some(_) => {}
                None => problems.push(format!("steps.{}.depends_on: no step has the id '{d}'", s.id)),
            }
        }
        deps.push(own);
    }
    if let Some(cycle) = find_cycle(&deps) {
        let names: Vec<&str> = cycle.iter().map(|&i| spec.steps[i].id.as_str()).collect();
        problems.push(format!("steps: dependency cycle {}", names.join(" → ")));
        return None;
    }
    let ancestors = ancestors(&deps);

    let mut steps = Vec::with_capacity(spec.steps.len());
    for (i, s) in spec.steps.into_iter().enumerate() {
        let at = format!("steps.{}", s.id);
        let readable = |refs: Vec<String>, field: &str, problems: &mut Vec<String>| {
            for r in refs {
                match index.get(r.as_str()) {
                    Some(&j) if ancestors[i].contains(&j) => {}
                    Some(&j) if j == i && field.starts_with("set_state") => {}
                    Some(_) => problems.push(format!(
                        "{at}.{field}: reads steps.{r}, which is not among the steps it depends on (add it to depends_on)"
                    )),
                    None => problems.push(format!("{at}.{field}: reads steps.{r}, but no step has that id")),
                }
            }
        };
        let condition = s.condition.as_deref().and_then(|c| match Condition::compile(c, &format!("{at}.if")) {
            Ok(c) => {
                readable(c.referenced_steps(), "if", problems);
                Some(c)
            }
            Err(e) => {
                problems.push(e);
                None
            }
        });
        let raw_args = s.args.unwrap_or_else(|| Value::Object(Map::new()));
        let args = compile_template(&raw_args, &format!("{at}.args"), problems);
        if let Some(t) = &args {
            readable(t.referenced_steps(), "args", problems);
        }
        check_tool(catalogue, &at, &s.tool, &raw_args, args.as_ref(), problems);
        let retry = match s.retry {
            Some(r) => {
                if let Err(e) = r.validate() {
                    problems.push(format!("{at}.retry: {e}"));
                }
                r
            }
            None => RetrySpec { max_attempts: 1, ..RetrySpec::default() },
        };
        let on_error = on_error(s.on_error, &at, catalogue, problems, &mut |refs, p| readable(refs, "on_error", p));
        let mut set_state = Vec::new();
        for (key, value) in s.set_state {
            if let Some(t) = compile_template(&value, &format!("{at}.set_state.{key}"), problems) {
                readable(t.referenced_steps(), &format!("set_state.{key}"), problems);
                set_state.push((key, t));
            }
        }
        if let (Some(args), Some(on_error)) = (args, on_error) {
            steps.push(Step {
                id: s.id,
                tool: s.tool,
                description: s.description,
                deps: deps[i].clone(),
                condition,
                args,
                timeout: s.timeout,
                retry,
                on_error,
                set_state,
            });
        }
    }
    let mut outputs = Vec::new();
    for (key, value) in spec.outputs {
        if let Some(t) = compile_template(&value, &format!("outputs.{key}"), problems) {
            for r in t.referenced_steps() {
                if !index.contains_key(r.as_str()) {
                    problems.push(format!("outputs.{key}: reads steps.{r}, but no step has that id"));
                }
            }
            outputs.push((key, t));
        }
    }
    if !problems.is_empty() {
        return None;
    }
    let mut dependants = vec![Vec::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        for &d in &s.deps {
            dependants[d].push(i);
        }
    }
    Some(Workflow {
        name: spec.name,
        description: spec.description,
        definition,
        input_schema,
        input_defaults,
        max_parallel: max_parallel.max(1),
        timeout: spec.timeout,
        steps,
        dependants,
        outputs,
    })
}

fn compile_template(value: &Value, at: &str, problems: &mut Vec<String>) -> Option<Template> {
    Template::compile(value, at).map_err(|e| problems.push(e)).ok()
}

/// The tool must be registered and the literal arguments must fit its schema.
fn check_tool(
    catalogue: &Catalogue,
    at: &str,
    tool: &str,
    raw_args: &Value,
    args: Option<&Template>,
    problems: &mut Vec<String>,
) {
    let Some(registered) = catalogue.tool(tool) else {
        problems.push(format!("{at}.tool: no tool named '{tool}' is registered"));
        return;
    };
    let Some(args) = args else { return };
    if !raw_args.is_object() {
        problems.push(format!("{at}.args: must be a mapping of argument names to values"));
        return;
    }
    // Arguments an expression fills (anywhere inside them) are checked when the step
    // runs; the literal rest is checked now.
    let (mut skeleton, mut computed) = (args.literal_skeleton(), Vec::new());
    if let (Value::Object(raw), Value::Object(literal)) = (raw_args, &mut skeleton) {
        for (k, v) in raw {
            if contains_expression(v) {
                literal.remove(k);
                computed.push(k.clone());
            }
        }
    }
    match check_literal_args(registered, &skeleton, &computed) {
        Ok(v) if v.is_empty() => {}
        Ok(v) => problems.push(format!("{at}.args: do not match the input schema of '{tool}': {}", v.join(", "))),
        Err(e) => problems.push(format!("{at}.tool: {e}")),
    }
}

fn contains_expression(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("${{"),
        Value::Array(items) => items.iter().any(contains_expression),
        Value::Object(map) => map.values().any(contains_expression),
        _ => false,
    }
}

fn on_error(
    spec: Option<Value>,
    at: &str,
    catalogue: &Catalogue,
    problems: &mut Vec<String>,
    readable: &mut dyn FnMut(Vec<String>, &mut Vec<String>),
) -> Option<OnError> {
    let bad = |problems: &mut Vec<String>| {
        problems.push(format!("{at}.on_error: expected fail, continue or {{fallback: {{tool, args}}}}"));
        None
    };
    match spec {
        None => Some(OnError::Fail),
        Some(Value::String(s)) if s == "fail" => Some(OnError::Fail),
        Some(Value::String(s)) if s == "continue" => Some(OnError::Continue),
        Some(Value::Object(m)) if m.len() == 1 && m.contains_key("fallback") => {
            let Some(Value::Object(f)) = m.get("fallback") else { return bad(problems) };
            let Some(Value::String(tool)) = f.get("tool") else {
                problems.push(format!("{at}.on_error.fallback: needs a `tool`"));
                return None;
            };
            if let Some(k) = f.keys().find(|k| *k != "tool" && *k != "args") {
                problems.push(format!("{at}.on_error.fallback: unknown key '{k}' (expected tool, args)"));
            }
            let raw_args = f.get("args").cloned().unwrap_or_else(|| Value::Object(Map::new()));
            let args = compile_template(&raw_args, &format!("{at}.on_error.fallback.args"), problems)?;
            readable(args.referenced_steps(), problems);
            check_tool(catalogue, &format!("{at}.on_error.fallback"), tool, &raw_args, Some(&args), problems);
            Some(OnError::Fallback { tool: tool.clone(), args })
        }
        Some(_) => bad(problems),
    }
}

/// `inputs: {sku: {type: string}, qty: {type: integer, default: 1}}` → one object
/// schema (inputs without a default are required) and the defaults.
fn input_schema(
    inputs: &BTreeMap<String, Value>,
    problems: &mut Vec<String>,
) -> (Option<jsonschema::Validator>, Map<String, Value>) {
    if inputs.is_empty() {
        return (None, Map::new());
    }
    let mut defaults = Map::new();
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, schema) in inputs {
        let mut schema = match schema {
            Value::Object(m) => m.clone(),
            Value::Null => Map::new(),
            _ => {
                problems.push(format!("inputs.{name}: expected a JSON Schema mapping like {{type: string}}"));
                continue;
            }
        };
        match schema.remove("default") {
            Some(d) => {
                defaults.insert(name.clone(), d);
            }
            None => required.push(Value::String(name.clone())),
        }
        schema.remove("description");
        properties.insert(name.clone(), Value::Object(schema));
    }
    let schema = serde_json::json!({"type": "object", "properties": properties, "required": required});
    match jsonschema::validator_for(&schema) {
        Ok(v) => (Some(v), defaults),
        Err(e) => {
            problems.push(format!("inputs: not a valid JSON Schema: {e}"));
            (None, defaults)
        }
    }
}

/// A cycle in the dependency graph, as step indexes from a step back to itself.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    // Iterative DFS (no recursion: a hostile definition may chain 1000 steps).
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; deps.len()];
    for start in 0..deps.len() {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&d) = deps[node].get(*next) {
                *next += 1;
                match mark[d] {
                    Mark::New => {
                        mark[d] = Mark::Open;
                        stack.push((d, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|&(n, _)| n == d).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|&(n, _)| n).collect();
                        cycle.push(d);
                        // Reported in the direction of execution: a dependency before its dependant.
                        cycle.reverse();
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

/// For each step, every step it depends on directly or transitively (the graph is acyclic).
fn ancestors(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut out: Vec<Option<Vec<usize>>> = vec![None; deps.len()];
    for start in 0..deps.len() {
        let mut stack = vec![start];
        while let Some(&node) = stack.last() {
            if out[node].is_some() {
                stack.pop();
                continue;
            }
            let pending: Vec<usize> = deps[node].iter().copied().filter(|&d| out[d].is_none()).collect();
            if pending.is_empty() {
                let mut all: Vec<usize> = Vec::new();
                for &d in &deps[node] {
                    all.push(d);
                    all.extend(out[d].iter().flatten().copied());
                }
                all.sort_unstable();
                all.dedup();
                out[node] = Some(all);
                stack.pop();
            } else {
                stack.extend(pending);
            }
        }
    }
    out.into_iter().map(Option::unwrap_or_default).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_and_named_in_order() {
        // 0 ← 1 ← 2 ← 0 (2 depends on 1, 1 on 0, 0 on 2)
        let deps = vec![vec![2], vec![0], vec![1]];
        let cycle = find_cycle(&deps).unwrap();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4);
        assert!(find_cycle(&[vec![], vec![0], vec![0, 1]]).is_none());
        assert_eq!(find_cycle(&[vec![0]]), Some(vec![0, 0]));
        // A long chain does not overflow the stack.
        let chain: Vec<Vec<usize>> = (0..1000).map(|i| if i == 0 { vec![] } else { vec![i - 1] }).collect();
        assert!(find_cycle(&chain).is_none());
        assert_eq!(ancestors(&chain)[999].len(), 999);
    }

    #[test]
    fn ancestors_are_transitive() {
        let deps = vec![vec![], vec![0], vec![0], vec![1, 2]];
        let a = ancestors(&deps);
        assert_eq!(a[3], vec![0, 1, 2]);
        assert_eq!(a[1], vec![0]);
        assert!(a[0].is_empty());
    }
}
