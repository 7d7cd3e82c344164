//! Describing JSON values in messages.

use serde_json::Value;

/// The kind of a JSON value with its article, for messages such as "must be an
/// object, found an array": `null`, `a boolean`, `a number`, `a string`, `an array`,
/// `an object`. Every message that names what it found uses these words.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
