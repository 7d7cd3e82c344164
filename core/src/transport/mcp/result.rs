//! `tools/call` results as python-utcp hands them over.

use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};

/// A `tools/call` result as python-utcp hands it over: `structuredContent` (its inner
/// value when it is exactly `{"result": x}`), else the content (one item → the item,
/// several → a list; text that is JSON is parsed). `isError` is an error, not a value.
pub fn unwrap_result(tool: &str, raw: Value) -> Result<Value> {
    let Value::Object(mut result) = raw else {
        return Err(Error::with_code(
            ErrorCode::Transport,
            format!("tool '{tool}': the server's result is not an object"),
        ));
    };
    let content: Vec<Value> = match result.remove("content") {
        Some(Value::Array(items)) => items.into_iter().map(content_item).collect(),
        _ => Vec::new(),
    };
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        let text: Vec<String> = content
            .iter()
            .map(|c| match c {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        return Err(Error::tool_failed(format!("tool '{tool}' failed: {}", text.join("\n"))));
    }
    if let Some(structured) = result.remove("structuredContent") {
        return Ok(match structured {
            Value::Object(mut map) if map.len() == 1 && map.contains_key("result") => {
                map.remove("result").unwrap_or(Value::Null)
            }
            other => other,
        });
    }
    let mut content = content;
    Ok(match content.len() {
        0 => Value::Null,
        1 => content.remove(0),
        _ => Value::Array(content),
    })
}

/// One content item: text as its value (parsed when it is JSON), anything else
/// (image, audio, resource) as the object the server sent, `mimeType` included and
/// `null` members (an SDK's unset `annotations`, `_meta`) left out.
fn content_item(item: Value) -> Value {
    match item {
        Value::Object(map) if map.get("type").and_then(Value::as_str) == Some("text") => {
            let text = map.get("text").and_then(Value::as_str).unwrap_or_default();
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_unwrap_as_python_utcp_does() {
        let text = |t: &str| json!({"type": "text", "text": t});
        assert_eq!(unwrap_result("t", json!({"content": [text("hi")]})).unwrap(), json!("hi"));
        assert_eq!(unwrap_result("t", json!({"content": [text("{\"a\": 1}")]})).unwrap(), json!({"a": 1}));
        assert_eq!(unwrap_result("t", json!({"content": [text("1"), text("x")]})).unwrap(), json!([1, "x"]));
        assert_eq!(unwrap_result("t", json!({"content": []})).unwrap(), Value::Null);
        assert_eq!(
            unwrap_result("t", json!({"content": [text("5")], "structuredContent": {"result": 5}})).unwrap(),
            json!(5)
        );
        assert_eq!(
            unwrap_result("t", json!({"content": [], "structuredContent": {"a": 1, "result": 2}})).unwrap(),
            json!({"a": 1, "result": 2})
        );
        let image = json!({"type": "image", "data": "AAAA", "mimeType": "image/png"});
        let sent =
            json!({"type": "image", "data": "AAAA", "mimeType": "image/png", "annotations": null, "_meta": null});
        assert_eq!(unwrap_result("t", json!({"content": [sent]})).unwrap(), image);
        let e = unwrap_result("t", json!({"content": [text("boom")], "isError": true})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ToolFailed);
        assert!(e.to_string().contains("boom"), "{e}");
    }
}
