//! Examples of an OpenAPI parameter or request body, kept as JSON Schema `examples`.
//!
//! OpenAPI writes them in several places: a schema's `example` (an OpenAPI keyword,
//! not JSON Schema), a schema's `examples` list, a parameter's or media type's
//! `example`, their `examples` map of Example Objects (`{summary, value}`), and
//! Swagger 2's `x-example`. All of them end up in the schema's `examples` list, in that
//! order, de-duplicated, and type-aware: an example that does not fit the schema's
//! `type` is converted when it can be without loss (`"5"` for an integer becomes `5`,
//! `5` for a string becomes `"5"`) and dropped otherwise. Nested schemas (`properties`,
//! `items`, `allOf`...) get their `example` moved to `examples` the same way.

use serde_json::{Map, Value};

/// Gather `extra` examples (from the parameter or media type, already resolved) and
/// the schema's own into `schema.examples`, then do the same in its nested schemas.
pub(super) fn fold_into(schema: &mut Value, extra: Vec<Value>) {
    fold(schema, extra);
    if let Some(obj) = schema.as_object_mut() {
        for_each_subschema(obj, &mut |sub| fold_nested(sub));
    }
}

/// The examples of a parameter or media type object: `example`, then the `value` of
/// each entry of `examples` (`resolve` follows an entry's `$ref`), then `x-example`.
pub(super) fn declared<'v>(holder: &'v Map<String, Value>, resolve: impl Fn(&'v Value) -> &'v Value) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(v) = holder.get("example") {
        out.push(v.clone());
    }
    if let Some(Value::Object(named)) = holder.get("examples") {
        out.extend(named.values().filter_map(|e| resolve(e).get("value")).cloned());
    }
    if let Some(v) = holder.get("x-example") {
        out.push(v.clone());
    }
    out
}

fn fold_nested(schema: &mut Value) {
    fold(schema, Vec::new());
    if let Some(obj) = schema.as_object_mut() {
        for_each_subschema(obj, &mut |sub| fold_nested(sub));
    }
}

fn fold(schema: &mut Value, extra: Vec<Value>) {
    let Some(obj) = schema.as_object_mut() else { return };
    if extra.is_empty() && !obj.contains_key("example") && !obj.contains_key("examples") {
        return;
    }
    let mut candidates = Vec::new();
    if let Some(v) = obj.swap_remove("example") {
        candidates.push(v);
    }
    match obj.swap_remove("examples") {
        Some(Value::Array(list)) => candidates.extend(list),
        // OpenAPI 3.0 schemas have no `examples`; a map here is a mistake: its values.
        Some(Value::Object(map)) => candidates.extend(map.into_iter().map(|(_, v)| v)),
        Some(other) => candidates.push(other),
        None => {}
    }
    candidates.extend(extra);
    let ty = obj.get("type").cloned();
    let mut kept: Vec<Value> = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let Some(value) = fit(ty.as_ref(), candidate) else { continue };
        if !kept.contains(&value) {
            kept.push(value);
        }
    }
    if !kept.is_empty() {
        obj.insert("examples".into(), Value::Array(kept));
    }
}

/// `value` as an instance of `ty` (a type name or a list of them), or None.
fn fit(ty: Option<&Value>, value: Value) -> Option<Value> {
    let types: Vec<&str> = match ty {
        None => return Some(value),
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        Some(_) => return Some(value),
    };
    if types.iter().any(|t| is_instance(t, &value)) {
        return Some(value);
    }
    types.iter().find_map(|t| convert(t, &value))
}

fn is_instance(ty: &str, value: &Value) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

/// A lossless conversion of a scalar written with the wrong JSON type.
fn convert(ty: &str, value: &Value) -> Option<Value> {
    match (ty, value) {
        ("string", Value::Number(n)) => Some(Value::String(n.to_string())),
        ("string", Value::Bool(b)) => Some(Value::String(b.to_string())),
        ("integer", Value::String(s)) => s.trim().parse::<i64>().ok().map(Value::from),
        ("number", Value::String(s)) => {
            let n: serde_json::Number = s.trim().parse().ok()?;
            Some(Value::Number(n))
        }
        ("boolean", Value::String(s)) => match s.trim() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    }
}

/// Call `f` on each schema nested directly in `schema`.
fn for_each_subschema(schema: &mut Map<String, Value>, f: &mut impl FnMut(&mut Value)) {
    for (key, value) in schema.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" => {
                if let Value::Object(map) = value {
                    map.values_mut().for_each(&mut *f);
                }
            }
            "items" | "additionalProperties" | "not" | "contains" | "propertyNames" | "if" | "then" | "else" => {
                match value {
                    Value::Array(list) => list.iter_mut().for_each(&mut *f),
                    other => f(other),
                }
            }
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                if let Value::Array(list) = value {
                    list.iter_mut().for_each(&mut *f);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn gathers_converts_and_dedupes() {
        let mut schema = json!({"type": "integer", "example": 5, "examples": [5, "6", "x", 7.0]});
        fold_into(&mut schema, vec![json!("5"), json!(8)]);
        assert_eq!(schema, json!({"type": "integer", "examples": [5, 6, 7.0, 8]}));
    }

    #[test]
    fn strings_and_untyped() {
        let mut s = json!({"type": "string"});
        fold_into(&mut s, vec![json!(12), json!(true), json!({"a": 1}), json!("12")]);
        assert_eq!(s, json!({"type": "string", "examples": ["12", "true"]}));
        let mut any = json!({});
        fold_into(&mut any, vec![json!({"a": 1}), json!({"a": 1})]);
        assert_eq!(any, json!({"examples": [{"a": 1}]}));
        let mut none = json!({"type": "boolean"});
        fold_into(&mut none, vec![json!("maybe")]);
        assert_eq!(none, json!({"type": "boolean"}), "nothing that fits: no examples key");
    }

    #[test]
    fn nested_schemas_and_declared_examples() {
        let mut body = json!({"type": "object", "properties": {
            "n": {"type": "number", "example": "1.5"},
            "example": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string", "example": "red"}}
        }});
        fold_into(&mut body, Vec::new());
        assert_eq!(body["properties"]["n"], json!({"type": "number", "examples": [1.5]}));
        assert_eq!(body["properties"]["example"], json!({"type": "string"}), "a property named example stays");
        assert_eq!(body["properties"]["tags"]["items"]["examples"], json!(["red"]));

        let holder = json!({"example": 1, "examples": {"a": {"value": 2}, "b": {"$ref": "#/x"}, "c": {"summary": "no value"}}, "x-example": 3});
        let target = json!({"value": 4});
        let got = declared(holder.as_object().unwrap(), |e| if e.get("$ref").is_some() { &target } else { e });
        assert_eq!(got, vec![json!(1), json!(2), json!(4), json!(3)]);
    }
}
