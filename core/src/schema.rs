//! Argument validation against a tool's `inputs` JSON Schema.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::registry::RegisteredTool;

pub(crate) fn compile_schema(schema: &Value) -> std::result::Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| e.to_string())
}

/// At most this many violations are listed in a `VALIDATION_FAILED` message.
const MAX_VIOLATIONS: usize = 20;

/// The tool's compiled `inputs` validator (compiled once per tool, with the manual's
/// shared `$defs` attached).
fn tool_validator(tool: &RegisteredTool) -> Result<&jsonschema::Validator> {
    let validator = tool.validator.get_or_init(|| {
        let schema = match &tool.shared_defs {
            Some(defs) => defs.attach_checked(&tool.tool.inputs).map_err(|(_, e)| e)?,
            None => tool.tool.inputs.clone(),
        };
        compile_schema(&schema).map(Arc::new)
    });
    validator
        .as_deref()
        .map_err(|e| Error::InvalidManual(format!("tool '{}': its inputs are not a valid JSON Schema: {e}", tool.name)))
}

/// Violations of `instance` as `<JSON pointer>: <reason>` lines (values masked: they
/// may be secrets), at most `MAX_VIOLATIONS` plus a count of the rest. `ignore`
/// drops violations the caller knows about.
fn violations(
    validator: &jsonschema::Validator,
    instance: &Value,
    ignore: impl Fn(&jsonschema::ValidationError<'_>) -> bool,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut total = 0usize;
    for e in validator.iter_errors(instance).filter(|e| !ignore(e)) {
        total += 1;
        if lines.len() < MAX_VIOLATIONS {
            let pointer = e.instance_path().to_string();
            let at = if pointer.is_empty() { "/".to_string() } else { pointer };
            lines.push(format!("{at}: {}", e.masked_with("value")));
        }
    }
    if total > lines.len() {
        lines.push(format!("... and {} more", total - lines.len()));
    }
    lines
}

/// Check `args` against the tool's `inputs`. Every violation is listed with its JSON pointer.
pub(crate) fn validate_args(tool: &RegisteredTool, args: &Map<String, Value>) -> Result<()> {
    let validator = tool_validator(tool)?;
    let instance = Value::Object(args.clone());
    if validator.is_valid(&instance) {
        return Ok(());
    }
    let lines = violations(validator, &instance, |_| false);
    Err(Error::ValidationFailed(format!(
        "tool '{}': arguments do not match its input schema: {}",
        tool.name,
        lines.join("; ")
    )))
}

/// Check the literal part of a workflow step's arguments before it runs: `skeleton`
/// holds the literal values; `computed` names the top-level arguments an expression
/// fills at run time (their absence is not a violation). Returns the violations.
pub(crate) fn check_literal_args(tool: &RegisteredTool, skeleton: &Value, computed: &[String]) -> Result<Vec<String>> {
    let validator = tool_validator(tool)?;
    if validator.is_valid(skeleton) {
        return Ok(Vec::new());
    }
    Ok(violations(validator, skeleton, |e| match e.kind() {
        jsonschema::error::ValidationErrorKind::Required { property } => {
            e.instance_path().to_string().is_empty()
                && property.as_str().is_some_and(|p| computed.iter().any(|c| c == p))
        }
        _ => false,
    }))
}
