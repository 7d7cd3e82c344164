//! Result post-processors, as python-utcp's `filter_dict` and `limit_strings`.

use serde_json::{Map, Value};

use crate::config::PostProcessor;

/// Apply every post-processor whose scope covers `tool` (full name) of `manual`, in order.
pub fn apply(processors: &[PostProcessor], tool: &str, manual: &str, mut result: Value) -> Value {
    for p in processors {
        result = match p {
            PostProcessor::FilterDict { exclude_keys, only_include_keys, scope } if scope.applies(tool, manual) => {
                if let Some(keys) = exclude_keys.as_deref().filter(|k| !k.is_empty()) {
                    result = exclude(result, keys);
                }
                match only_include_keys.as_deref().filter(|k| !k.is_empty()) {
                    Some(keys) => only_include(result, keys),
                    None => result,
                }
            }
            PostProcessor::LimitStrings { limit, scope } if scope.applies(tool, manual) => {
                limit_strings(result, *limit)
            }
            _ => result,
        };
    }
    result
}

fn non_empty(v: &Value) -> bool {
    match v {
        Value::Object(o) => !o.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}

/// Drop `keys` at every depth; lists lose items that became empty containers.
fn exclude(value: Value, keys: &[String]) -> Value {
    match value {
        Value::Object(obj) => Value::Object(
            obj.into_iter().filter(|(k, _)| !keys.contains(k)).map(|(k, v)| (k, exclude(v, keys))).collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| exclude(v, keys)).filter(non_empty).collect()),
        other => other,
    }
}

/// Keep only `keys` (at any depth) and the containers leading to them.
fn only_include(value: Value, keys: &[String]) -> Value {
    match value {
        Value::Object(obj) => {
            let mut out = Map::new();
            for (k, v) in obj {
                if keys.contains(&k) {
                    let v = if v.is_object() { only_include(v, keys) } else { v };
                    out.insert(k, v);
                } else {
                    let v = only_include(v, keys);
                    if (v.is_object() || v.is_array()) && non_empty(&v) {
                        out.insert(k, v);
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| only_include(v, keys))
                .filter(|v| (v.is_object() || v.is_array()) && non_empty(v))
                .collect(),
        ),
        other => other,
    }
}

/// Cut every string to `limit` characters.
fn limit_strings(value: Value, limit: usize) -> Value {
    match value {
        Value::String(s) => match s.char_indices().nth(limit) {
            Some((i, _)) => Value::String(s[..i].to_string()),
            None => Value::String(s),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(|v| limit_strings(v, limit)).collect()),
        Value::Object(obj) => Value::Object(obj.into_iter().map(|(k, v)| (k, limit_strings(v, limit))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn procs(v: Value) -> Vec<PostProcessor> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn filter_dict_exclude_and_include() {
        let data = json!({"a": 1, "secret": 2, "nested": {"secret": 3, "b": [ {"secret": 4}, {"c": 5} ]}});
        let p = procs(json!([{"tool_post_processor_type": "filter_dict", "exclude_keys": ["secret"]}]));
        assert_eq!(apply(&p, "m.t", "m", data.clone()), json!({"a": 1, "nested": {"b": [{"c": 5}]}}));
        let p = procs(json!([{"tool_post_processor_type": "filter_dict", "only_include_keys": ["c", "a"]}]));
        assert_eq!(apply(&p, "m.t", "m", data.clone()), json!({"a": 1, "nested": {"b": [{"c": 5}]}}));
        let p = procs(
            json!([{"tool_post_processor_type": "filter_dict", "exclude_keys": ["a"], "exclude_tools": ["m.t"]}]),
        );
        assert_eq!(apply(&p, "m.t", "m", data.clone()), data);
    }

    #[test]
    fn limit_strings_cuts_by_characters() {
        let p = procs(json!([{"tool_post_processor_type": "limit_strings", "limit": 3}]));
        assert_eq!(
            apply(&p, "m.t", "m", json!({"s": "héllo", "l": ["abcd", 12345]})),
            json!({"s": "hél", "l": ["abc", 12345]})
        );
        assert_eq!(apply(&p, "m.t", "m", json!("ab")), json!("ab"));
    }
}
