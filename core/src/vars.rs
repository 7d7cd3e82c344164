//! `${VAR}` / `$VAR` substitution with the UTCP namespace rule.
//!
//! A variable `VAR` used by manual `my_api` is looked up as `my__api_VAR` (each `_`
//! of the manual name doubled, then `_`), first in config `variables`, then in the
//! dotenv files of `load_variables_from` (parsed once, when the engine starts), then
//! in the process environment. Errors name that exact key and the manual.
//! JSON Schema's own `$` keywords (`$ref`, `$schema`, `$id`, `$defs`, ...: see
//! [`SCHEMA_KEYWORDS`]) are never variables, written bare in a string or as a key's
//! name, so a JSON document in a `text` tool or a schema in a template stays as written.
//! The braced form `${schema}` is always a variable.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::config::{Config, VariableLoader};
use crate::error::{Error, Result};
use crate::manual::Tool;

#[derive(Debug, Default)]
pub struct Variables {
    config: Map<String, Value>,
    dotenv: Vec<HashMap<String, String>>,
}

impl Variables {
    pub fn new(config: &Config) -> Result<Variables> {
        let mut dotenv = Vec::new();
        for loader in &config.load_variables_from {
            match loader {
                VariableLoader::Dotenv { env_file_path } => {
                    let path = config.resolve_path(env_file_path);
                    let iter = dotenvy::from_path_iter(&path).map_err(|e| {
                        Error::InvalidArgument(format!("cannot read dotenv file {}: {e}", path.display()))
                    })?;
                    let mut vars = HashMap::new();
                    for item in iter {
                        let (k, v) = item.map_err(|e| {
                            Error::InvalidArgument(format!("invalid dotenv file {}: {e}", path.display()))
                        })?;
                        vars.insert(k, v);
                    }
                    dotenv.push(vars);
                }
            }
        }
        Ok(Variables { config: config.variables.clone(), dotenv })
    }

    /// The value of `var` for `manual`, by the UTCP lookup order.
    pub fn lookup(&self, manual: &str, var: &str) -> Result<String> {
        let key = namespaced(manual, var);
        self.get(&key).ok_or_else(|| Error::VariableNotFound { variable: key, manual: manual.to_string() })
    }

    /// The value of `key` exactly as named (no manual namespace), by the same order:
    /// config `variables`, the dotenv files, the environment. For settings that belong
    /// to no manual, such as the planner's API key.
    pub fn get(&self, key: &str) -> Option<String> {
        if let Some(v) = self.config.get(key) {
            return Some(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        if let Some(v) = self.dotenv.iter().find_map(|d| d.get(key)) {
            return Some(v.clone());
        }
        std::env::var(key).ok()
    }

    /// A copy of `value` with every variable in its strings replaced.
    pub fn substitute(&self, manual: &str, value: &Value) -> Result<Value> {
        Ok(match value {
            Value::String(s) => Value::String(self.substitute_str(manual, s)?),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.substitute(manual, v)).collect::<Result<_>>()?)
            }
            Value::Object(obj) => {
                let mut out = Map::with_capacity(obj.len());
                for (k, v) in obj {
                    let v = if is_schema_keyword_key(k) { v.clone() } else { self.substitute(manual, v)? };
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }

    /// A copy of a call template (as JSON) with its variables replaced, except in the
    /// fields that hold another language's text ([`verbatim_key`]).
    pub fn substitute_template(&self, manual: &str, template: &Value) -> Result<Value> {
        let Some(key) = verbatim_key(template) else { return self.substitute(manual, template) };
        let mut template = template.clone();
        let kept = template.as_object_mut().and_then(|t| t.remove(key));
        let mut done = self.substitute(manual, &template)?;
        if let (Some(kept), Some(obj)) = (kept, done.as_object_mut()) {
            obj.insert(key.to_string(), kept);
        }
        Ok(done)
    }

    pub fn substitute_str(&self, manual: &str, s: &str) -> Result<String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some((before, var, after)) = next_variable(rest) {
            out.push_str(before);
            match var {
                Some(name) => out.push_str(&self.lookup(manual, name)?),
                None => out.push('$'),
            }
            rest = after;
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// JSON Schema keywords that start with `$` (2020-12, 2019-09 and draft-07 together).
/// Bare `$schema` in a string is the keyword, not the variable `schema`; the value of a
/// key named so is left untouched.
pub const SCHEMA_KEYWORDS: [&str; 11] = [
    "ref",
    "schema",
    "id",
    "defs",
    "comment",
    "anchor",
    "dynamicRef",
    "dynamicAnchor",
    "vocabulary",
    "recursiveRef",
    "recursiveAnchor",
];

/// Whether an object key names a JSON Schema keyword (`"$ref"`, `"$schema"`...).
fn is_schema_keyword_key(key: &str) -> bool {
    key.strip_prefix('$').is_some_and(|k| SCHEMA_KEYWORDS.contains(&k))
}

/// The key a variable of `manual` is looked up under.
pub fn namespaced(manual: &str, var: &str) -> String {
    format!("{}_{var}", manual.replace('_', "__"))
}

/// Split at the next `$`: text before, the variable name (None for a lone `$` or a
/// bare JSON Schema keyword such as `$ref`), and the text after it.
fn next_variable(s: &str) -> Option<(&str, Option<&str>, &str)> {
    let at = s.find('$')?;
    let (before, tail) = (&s[..at], &s[at + 1..]);
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if let Some(inner) = tail.strip_prefix('{') {
        if let Some(end) = inner.find('}') {
            let name = &inner[..end];
            if !name.is_empty() && name.chars().all(is_name) {
                return Some((before, Some(name), &inner[end + 1..]));
            }
        }
        return Some((before, None, tail));
    }
    let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
    let name = &tail[..end];
    if name.is_empty() || SCHEMA_KEYWORDS.contains(&name) {
        // `$ref`, `$schema`... stay as written: push the name back as plain text.
        return Some((before, None, tail));
    }
    Some((before, Some(name), &tail[end..]))
}

/// Variable names (not namespaced) referenced anywhere in `value`'s strings.
pub fn referenced(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some((_, var, after)) = next_variable(rest) {
                if let Some(v) = var {
                    out.insert(v.to_string());
                }
                rest = after;
            }
        }
        Value::Array(items) => items.iter().for_each(|v| referenced(v, out)),
        Value::Object(obj) => {
            obj.iter().filter(|(k, _)| !is_schema_keyword_key(k)).for_each(|(_, v)| referenced(v, out))
        }
        _ => {}
    }
}

/// The field of a call template that is never substituted: a `graphql` template's
/// `query` is a GraphQL document, whose `$id`s are GraphQL's own variables.
fn verbatim_key(template: &Value) -> Option<&'static str> {
    (template.get("call_template_type").and_then(Value::as_str) == Some("graphql")).then_some("query")
}

/// The namespaced variables the call templates of `tools` need, sorted.
pub fn required_variables<'a>(manual: &str, tools: impl IntoIterator<Item = &'a Tool>) -> Vec<String> {
    let mut names = BTreeSet::new();
    for tool in tools {
        let mut template = serde_json::to_value(&tool.tool_call_template).unwrap_or(Value::Null);
        if let (Some(key), Some(obj)) = (verbatim_key(&template), template.as_object_mut()) {
            obj.remove(key);
        }
        referenced(&template, &mut names);
    }
    names.into_iter().map(|v| namespaced(manual, &v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(config: Value) -> Variables {
        Variables::new(&Config::from_value(config).unwrap()).unwrap()
    }

    #[test]
    fn namespace_rule_matches_utcp() {
        assert_eq!(namespaced("my_api", "KEY"), "my__api_KEY");
        assert_eq!(namespaced("weather", "API_KEY"), "weather_API_KEY");
    }

    #[test]
    fn substitutes_both_forms_and_leaves_ref() {
        let v = vars(json!({"variables": {"my__api_KEY": "k1", "my__api_HOST": "h", "my__api_PORT": 8080}}));
        let out = v
            .substitute(
                "my_api",
                &json!({"url": "https://${HOST}:$PORT/x", "h": ["Bearer $KEY"], "$ref": "#/$defs/X", "s": "$ref and $", "n": 1}),
            )
            .unwrap();
        assert_eq!(
            out,
            json!({"url": "https://h:8080/x", "h": ["Bearer k1"], "$ref": "#/$defs/X", "s": "$ref and $", "n": 1})
        );
    }

    #[test]
    fn json_schema_keywords_are_not_variables() {
        let v = vars(json!({"variables": {"m_NAME": "n"}}));
        let doc = r##"{"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x", "$defs": {"a": {"$anchor": "a", "$comment": "c"}}, "$ref": "#/$defs/a", "t": "$NAME"}"##;
        let out = v.substitute_str("m", doc).unwrap();
        assert_eq!(out, doc.replace("$NAME", "n"));
        let keyed = v.substitute("m", &json!({"$schema": "$x", "$id": "${y}", "s": "${NAME}"})).unwrap();
        assert_eq!(keyed, json!({"$schema": "$x", "$id": "${y}", "s": "n"}));
        // Braces make it a variable, keyword or not; a near-keyword is a variable.
        assert_eq!(v.substitute_str("m", "${schema}").unwrap_err().code(), crate::ErrorCode::VariableNotFound);
        assert_eq!(v.substitute_str("m", "$schemas").unwrap_err().code(), crate::ErrorCode::VariableNotFound);
        let mut names = BTreeSet::new();
        referenced(&json!({"content": doc, "$defs": {"x": "$HIDDEN"}}), &mut names);
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["NAME".to_string()]);
    }

    #[test]
    fn missing_variable_names_namespaced_key() {
        let v = vars(json!({}));
        let err = v.substitute_str("my_api", "${UTP_TEST_SURELY_UNSET}").unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::VariableNotFound);
        assert!(err.to_string().contains("my__api_UTP_TEST_SURELY_UNSET"), "{err}");
    }

    #[test]
    fn lookup_order_config_then_dotenv_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join(".env");
        std::fs::write(&env_file, "m_A=from_dotenv\nm_B=from_dotenv\n").unwrap();
        let v = vars(json!({
            "variables": {"m_A": "from_config"},
            "load_variables_from": [{"variable_loader_type": "dotenv", "env_file_path": env_file}]
        }));
        assert_eq!(v.lookup("m", "A").unwrap(), "from_config");
        assert_eq!(v.lookup("m", "B").unwrap(), "from_dotenv");
        // SAFETY of the test: a variable name no other test uses.
        unsafe { std::env::set_var("m_UTP_VARS_TEST_C", "from_env") };
        assert_eq!(v.lookup("m", "UTP_VARS_TEST_C").unwrap(), "from_env");
    }

    #[test]
    fn missing_dotenv_file_is_a_clear_error() {
        let c = Config::from_value(json!({"load_variables_from": [
            {"variable_loader_type": "dotenv", "env_file_path": "/nonexistent/.env"}]}))
        .unwrap();
        let err = Variables::new(&c).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/.env"), "{err}");
    }

    #[test]
    fn unterminated_and_odd_forms_do_not_panic() {
        let v = vars(json!({}));
        for s in ["${", "${}", "$", "$$", "${a b}", "price: 5$", "€$€"] {
            assert_eq!(v.substitute_str("m", s).unwrap(), s);
        }
    }

    #[test]
    fn required_variables_of_tools() {
        let m = crate::manual::Manual::from_value(json!({"tools": [{"name": "t", "inputs": {"$ref": "$X"},
            "tool_call_template": {"call_template_type": "http", "url": "https://${HOST}/",
            "auth": {"auth_type": "api_key", "api_key": "$API_KEY"}}}]}))
        .unwrap();
        assert_eq!(required_variables("my_api", &m.tools), ["my__api_API_KEY", "my__api_HOST"]);
    }
}
