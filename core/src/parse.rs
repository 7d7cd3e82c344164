//! Bounded parsing of JSON and YAML documents (manuals, specs, configs, workflows).
//!
//! JSON nesting is bounded by serde_json's recursion limit (128); YAML nesting by
//! serde_yaml_ng's recursion limit, and alias expansion ("billion laughs") by its
//! repetition limit. Both give errors, never unbounded memory or stack.

use std::cell::RefCell;
use std::path::Path;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Which syntax a document is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Yaml,
}

/// Guess the syntax from the file extension, else from the first non-blank byte.
pub fn syntax_of(bytes: &[u8], path: Option<&Path>) -> Syntax {
    let ext = path.and_then(|p| p.extension()).and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => Syntax::Json,
        Some("yaml" | "yml") => Syntax::Yaml,
        _ => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{' | b'[') => Syntax::Json,
            _ => Syntax::Yaml,
        },
    }
}

/// Parse a JSON or YAML document into a JSON value.
///
/// An OpenAPI document (its first key is `openapi` or `swagger`) is read without the
/// parts the converter never uses, a large share of real specs (GitHub's object-valued
/// `examples`, Graph's `x-ms-docs-grouped-path`; sizes in docs/benchmarks.md): not
/// building them saves allocation and freeing time and memory. Left out:
/// object-valued `examples` anywhere (media-type and component examples; array-valued
/// JSON Schema `examples` and `example` are kept); the top-level `webhooks`,
/// `x-webhooks`, `tags` and `externalDocs`; in path items, vendor extensions (`x-*`),
/// `summary` and `description`; in operations, vendor extensions and `externalDocs`.
/// Every other document is read whole.
pub fn parse_document(bytes: &[u8], path: Option<&Path>) -> Result<Value, String> {
    parse(bytes, path, false).map(|(value, _)| value)
}

/// Like [`parse_document`], but an OpenAPI JSON document's schema definitions
/// (`/components/schemas/*`, `/definitions/*`) are not built: they come back as raw JSON
/// text, left out of the value, for [`crate::openapi::convert_spec`] to parse only when a
/// tool's schema reaches them. They are over half of what a spec like GitHub's would build.
pub fn parse_spec_document(bytes: &[u8], path: Option<&Path>) -> Result<(Value, SpecParts), String> {
    parse(bytes, path, true)
}

/// What [`parse_spec_document`] gives besides the value: schema definitions held back
/// as raw JSON text, in document order, and whether a `$ref` names another document.
#[derive(Debug, Default)]
pub struct SpecParts {
    /// Some `$ref` does not start with `#`: it names another file or a URL. Found in the
    /// built part as it is read and by a substring search of the held-back text (which
    /// may say yes for a `"$ref"` inside a string, never no for a real one unless its key
    /// is written with escapes).
    pub external_refs: bool,
    /// The members of `/definitions` (Swagger 2.0), when it is an object.
    pub definitions: Option<Vec<(String, Box<RawValue>)>>,
    /// The members of `/components/schemas` (OpenAPI 3.x), when it is an object.
    pub component_schemas: Option<Vec<(String, Box<RawValue>)>>,
}

/// Which container of schema definitions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    Definitions,
    ComponentSchemas,
}

/// Parse one raw definition held back by [`parse_spec_document`], leaving out what the
/// whole-spec parse leaves out of schemas.
pub(crate) fn parse_spec_fragment(raw: &str) -> Result<Value, String> {
    let scratch = Scratch::default();
    let mut de = serde_json::Deserializer::from_str(raw);
    ValueSeed { at: At::Spec, scratch: &scratch }.deserialize(&mut de).map_err(|e| format!("invalid JSON: {e}"))
}

fn parse(bytes: &[u8], path: Option<&Path>, hold_back_schemas: bool) -> Result<(Value, SpecParts), String> {
    let syntax = syntax_of(bytes, path);
    let what = match syntax {
        Syntax::Json => "JSON",
        Syntax::Yaml => "YAML",
    };
    // One UTF-8 check of the whole buffer; serde_json's `from_str` then skips the
    // per-string checks `from_slice` would make.
    let text = std::str::from_utf8(bytes).map_err(|e| format!("invalid {what}: not UTF-8 ({e})"))?;
    // Raw text needs serde_json's deserializer: YAML definitions are built as values.
    let scratch = Scratch { hold_back_schemas: hold_back_schemas && syntax == Syntax::Json, ..Scratch::default() };
    let seed =
        ValueSeed { at: if looks_like_openapi(text, syntax) { At::SpecRoot } else { At::Whole }, scratch: &scratch };
    let value = match syntax {
        Syntax::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let value = seed.deserialize(&mut de).map_err(|e| format!("invalid JSON: {e}"))?;
            de.end().map_err(|e| format!("invalid JSON: {e}"))?;
            value
        }
        Syntax::Yaml => {
            seed.deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(|e| format!("invalid YAML: {e}"))?
        }
    };
    let mut parts = scratch.parts.into_inner();
    let held_back = [&parts.definitions, &parts.component_schemas];
    let raw_external = held_back.into_iter().flatten().flatten().any(|(_, raw)| names_another_document(raw.get()));
    parts.external_refs = scratch.external_refs.get() || raw_external;
    Ok((value, parts))
}

/// Whether JSON text has a `"$ref": "<not #...>"` member (see `SpecParts::external_refs`).
fn names_another_document(text: &str) -> bool {
    memchr::memmem::find_iter(text.as_bytes(), br#""$ref""#).any(|at| {
        let rest = text[at + 6..].trim_start();
        rest.strip_prefix(':')
            .map(str::trim_start)
            .and_then(|v| v.strip_prefix('"'))
            .is_some_and(|v| !v.starts_with('#'))
    })
}

/// The members that make a document OpenAPI (3.x) or Swagger (2.0): the rule is
/// [`crate::openapi::is_openapi`]; the parser sniffs for them in the text.
pub(crate) const OPENAPI_MARKERS: [&str; 2] = ["openapi", "swagger"];

/// True when the document's first key is one of [`OPENAPI_MARKERS`] (where every spec
/// we have seen puts it). A spec that puts it later is simply read whole. Only the
/// exact key counts: a document read the lean way is always one that
/// [`crate::openapi::is_openapi`] then takes for a spec.
fn looks_like_openapi(text: &str, syntax: Syntax) -> bool {
    let first_key = match syntax {
        Syntax::Json => text.trim_start().strip_prefix('{').map(str::trim_start).and_then(|t| t.strip_prefix('"')),
        Syntax::Yaml => text
            .lines()
            .map(str::trim_start)
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("---") && !l.starts_with('%'))
            .map(|l| l.trim_start_matches(['"', '\''])),
    };
    let ends_key = |rest: &str| match syntax {
        Syntax::Json => rest.starts_with('"'),
        Syntax::Yaml => rest.trim_start_matches(['"', '\'']).trim_start().starts_with(':'),
    };
    first_key.is_some_and(|k| OPENAPI_MARKERS.iter().any(|m| k.strip_prefix(m).is_some_and(ends_key)))
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// Where in the document a value sits, for what may be left out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    /// Not an OpenAPI document: everything is kept.
    Whole,
    /// The root of an OpenAPI document.
    SpecRoot,
    /// The `paths` object.
    Paths,
    /// One path item.
    PathItem,
    /// One operation.
    Operation,
    /// The `components` object.
    Components,
    /// A container of schema definitions: held back as raw text when asked to.
    Schemas(Container),
    /// Anywhere else in an OpenAPI document.
    Spec,
}

impl At {
    /// Where the value of `key` sits, or `None` when it is left out (unbuilt).
    fn child(self, key: &str) -> Option<At> {
        let vendor = key.starts_with("x-");
        match self {
            At::Whole => Some(At::Whole),
            At::SpecRoot => match key {
                "webhooks" | "x-webhooks" | "tags" | "externalDocs" => None,
                "paths" => Some(At::Paths),
                "components" => Some(At::Components),
                "definitions" => Some(At::Schemas(Container::Definitions)),
                _ => Some(At::Spec),
            },
            At::Paths => Some(At::PathItem),
            At::PathItem if vendor || key == "summary" || key == "description" => None,
            At::PathItem if METHODS.contains(&key) => Some(At::Operation),
            At::Operation if vendor || key == "externalDocs" => None,
            At::Components if key == "schemas" => Some(At::Schemas(Container::ComponentSchemas)),
            At::PathItem | At::Operation | At::Components | At::Schemas(_) | At::Spec => Some(At::Spec),
        }
    }
}

/// Builds a `serde_json::Value` like its own `Deserialize`, leaving out what `At`
/// says to. Nesting limits stay those of the underlying parser.
///
/// Members and items are first pushed on a scratch stack shared by the whole parse,
/// then moved into a map or vector of exactly their number: growing maps and vectors
/// one member at a time was a fifth of the parse (reallocation, rehashing) and left
/// a quarter of their capacity unused.
#[derive(Clone, Copy)]
struct ValueSeed<'s> {
    at: At,
    scratch: &'s Scratch,
}

#[derive(Default)]
struct Scratch {
    members: RefCell<Vec<(String, Value)>>,
    items: RefCell<Vec<Value>>,
    hold_back_schemas: bool,
    parts: RefCell<SpecParts>,
    external_refs: std::cell::Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor { seed: self, maps: Maps::Build }).map(|v| v.unwrap_or(Value::Null))
    }
}

/// The value of an `examples` key: `None` when it is an object (skipped unbuilt).
struct ExamplesSeed<'s>(ValueSeed<'s>);

impl<'de> DeserializeSeed<'de> for ExamplesSeed<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Value>, D::Error> {
        deserializer.deserialize_any(ValueVisitor { seed: self.0, maps: Maps::Skip })
    }
}

/// The value of a schema container: `None` when it is an object, whose members are
/// then held back as raw text in `Scratch::parts`.
struct SchemasSeed<'s>(ValueSeed<'s>, Container);

impl<'de> DeserializeSeed<'de> for SchemasSeed<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Value>, D::Error> {
        deserializer.deserialize_any(ValueVisitor { seed: self.0, maps: Maps::HoldBack(self.1) })
    }
}

/// What a visitor does with a map.
#[derive(Clone, Copy)]
enum Maps {
    Build,
    /// Skip it unbuilt.
    Skip,
    /// Keep its members as raw text (serde_json's deserializer only).
    HoldBack(Container),
}

/// `None` only for a skipped or held-back map.
struct ValueVisitor<'s> {
    seed: ValueSeed<'s>,
    maps: Maps,
}

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Value::String(v)))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.seed.deserialize(deserializer).map(Some)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let scratch = self.seed.scratch;
        let seed = ValueSeed { at: if self.seed.at == At::Whole { At::Whole } else { At::Spec }, scratch };
        let start = scratch.items.borrow().len();
        let items = loop {
            match seq.next_element_seed(seed) {
                Ok(Some(item)) => scratch.items.borrow_mut().push(item),
                Ok(None) => break scratch.items.borrow_mut().split_off(start),
                Err(e) => {
                    scratch.items.borrow_mut().truncate(start);
                    return Err(e);
                }
            }
        };
        Ok(Some(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        match self.maps {
            Maps::Build => {}
            Maps::Skip => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            Maps::HoldBack(container) => {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(key) = map.next_key::<String>()? {
                    members.push((key, map.next_value::<Box<RawValue>>()?));
                }
                let mut raw = self.seed.scratch.parts.borrow_mut();
                // A repeated container key replaces the earlier one, as in a built value.
                match container {
                    Container::Definitions => raw.definitions = Some(members),
                    Container::ComponentSchemas => raw.component_schemas = Some(members),
                }
                return Ok(None);
            }
        }
        let scratch = self.seed.scratch;
        let start = scratch.members.borrow().len();
        let filled = self.fill_map(&mut map);
        let mut members = scratch.members.borrow_mut();
        if let Err(e) = filled {
            members.truncate(start);
            return Err(e);
        }
        let mut object = Map::with_capacity(members.len() - start);
        for (key, value) in members.drain(start..) {
            object.insert(key, value);
        }
        Ok(Some(Value::Object(object)))
    }
}

impl ValueVisitor<'_> {
    /// Push the members of `map` that are kept on the scratch stack.
    fn fill_map<'de, A: MapAccess<'de>>(&self, map: &mut A) -> Result<(), A::Error> {
        let scratch = self.seed.scratch;
        while let Some(key) = map.next_key::<String>()? {
            match self.seed.at.child(&key) {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(at @ At::Schemas(container)) if scratch.hold_back_schemas => {
                    if let Some(value) = map.next_value_seed(SchemasSeed(ValueSeed { at, scratch }, container))? {
                        scratch.members.borrow_mut().push((key, value));
                    }
                }
                Some(at) if at != At::Whole && key == "examples" => {
                    if let Some(value) = map.next_value_seed(ExamplesSeed(ValueSeed { at, scratch }))? {
                        scratch.members.borrow_mut().push((key, value));
                    }
                }
                Some(at) => {
                    let value = map.next_value_seed(ValueSeed { at, scratch })?;
                    if at != At::Whole && key == "$ref" && value.as_str().is_some_and(|r| !r.starts_with('#')) {
                        scratch.external_refs.set(true);
                    }
                    scratch.members.borrow_mut().push((key, value));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_document_that_starts_with_an_openapi_marker_is_read_the_lean_way() {
        // The top-level `tags` is one of the parts left out of a spec.
        let tags = |text: &str, name: &str| {
            parse_document(text.as_bytes(), Some(Path::new(name))).unwrap().get("tags").cloned()
        };
        assert_eq!(tags(r#"{"openapi": "3.0.0", "tags": [1]}"#, "a.json"), None);
        assert_eq!(tags("'swagger': '2.0'\ntags: [1]\n", "a.yaml"), None);
        assert_eq!(tags("openapi : 3.1.0\ntags: [1]\n", "a.yaml"), None);
        // A key that only begins like one is not OpenAPI: the document is read whole.
        assert_eq!(tags(r#"{"openapi_notes": "x", "tools": [], "tags": [1]}"#, "a.json"), Some(serde_json::json!([1])));
        assert_eq!(tags("swaggerish: 1\ntags: [1]\n", "a.yaml"), Some(serde_json::json!([1])));
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut prev = "a";
        for n in names {
            doc.push_str(&format!(
                "{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
            prev = n;
        }
        let err = parse_document(doc.as_bytes(), Some(Path::new("x.yaml"))).unwrap_err();
        assert!(err.contains("YAML"), "{err}");
    }

    #[test]
    fn deep_json_is_refused() {
        let doc = "[".repeat(100_000) + &"]".repeat(100_000);
        let err = parse_document(doc.as_bytes(), None).unwrap_err();
        assert!(err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn deep_yaml_is_refused() {
        let doc = "[".repeat(100_000) + &"]".repeat(100_000);
        let err = parse_document(doc.as_bytes(), Some(Path::new("x.yaml"))).unwrap_err();
        assert!(err.contains("YAML"), "{err}");
    }

    #[test]
    fn openapi_examples_maps_are_left_out_but_schema_examples_kept() {
        let spec = r#"{"openapi": "3.1.0", "paths": {"/a": {"get": {"responses": {"200": {"content": {
            "application/json": {"examples": {"big": {"value": [1, 2, 3]}},
            "schema": {"type": "integer", "examples": [1, 2], "example": 3}}}}}}}},
            "components": {"examples": {"x": {"value": {"deep": true}}}}}"#;
        let v = parse_document(spec.as_bytes(), None).unwrap();
        let media = &v["paths"]["/a"]["get"]["responses"]["200"]["content"]["application/json"];
        assert!(media.get("examples").is_none(), "{media}");
        assert_eq!(media["schema"]["examples"], serde_json::json!([1, 2]));
        assert_eq!(media["schema"]["example"], 3);
        assert!(v["components"].get("examples").is_none());
        let yaml = "# spec\nswagger: '2.0'\nx:\n  examples: {a: 1}\n  200: {examples: [1]}\n";
        let v = parse_document(yaml.as_bytes(), Some(Path::new("s.yaml"))).unwrap();
        assert!(v["x"].get("examples").is_none(), "{v}");
        assert_eq!(v["x"]["200"]["examples"], serde_json::json!([1]));
    }

    #[test]
    fn other_documents_are_read_whole() {
        let manual = r#"{"tools": [], "openapi": "3.0.0", "examples": {"kept": 1}}"#;
        let v = parse_document(manual.as_bytes(), None).unwrap();
        assert_eq!(v["examples"]["kept"], 1);
        assert_eq!(
            parse_document(b"{\"a\": [1.5, -2, null, true]}", None).unwrap(),
            serde_json::json!({"a": [1.5, -2, null, true]})
        );
        let err = parse_document(b"{\"a\": 1} trailing", None).unwrap_err();
        assert!(err.contains("trailing"), "{err}");
        let err = parse_document(b"{\"a\": \"\xff\"}", None).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn values_equal_serde_json_s_own() {
        let doc = r#"{"a": [], "b": {}, "c": [[1, [2, {"d": [3, {}]}]], {"e": null}], "a": {"dup": [1e3, -0.5]},
            "f": "\u00e9\n", "g": [{"x": 1, "y": 2, "x": 3}], "h": 18446744073709551615, "i": -9223372036854775808}"#;
        let ours = parse_document(doc.as_bytes(), None).unwrap();
        let theirs: Value = serde_json::from_str(doc).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(ours.to_string(), theirs.to_string(), "same key order");
        let yaml = "a: [1, {b: [2, 3]}, []]\nc: {d: {}, e: [x, y]}\n";
        assert_eq!(
            parse_document(yaml.as_bytes(), Some(Path::new("x.yml"))).unwrap(),
            serde_json::json!({"a": [1, {"b": [2, 3]}, []], "c": {"d": {}, "e": ["x", "y"]}})
        );
    }

    #[test]
    fn truncated_and_malformed_specs_are_errors() {
        let spec = r#"{"openapi": "3.0.0", "paths": {"/a": {"get": {"parameters": [{"name": "q", "in": "query"}],
            "responses": {"200": {"content": {"application/json": {"examples": {"x": {"value": [1]}}, "schema": {"type": "string"}}}}}}}}}"#;
        assert!(parse_document(spec.as_bytes(), None).is_ok());
        for cut in 1..spec.len() {
            if let Ok(v) = parse_document(&spec.as_bytes()[..cut], None) {
                panic!("a spec cut at {cut} parsed: {v}");
            }
        }
        for bad in [
            r#"{"openapi": "3.0.0", "paths": {"/a": {"get": [1, 2,]}}}"#,
            r#"{"openapi": "3.0.0", "paths": {"/a": {"x-y": {"a" 1}}}}"#,
            r#"{"swagger": "2.0", "paths": {"/a": {"get": {"examples": {"a": tru}}}}}"#,
        ] {
            let err = parse_document(bad.as_bytes(), None).unwrap_err();
            assert!(err.starts_with("invalid JSON") && err.contains("line 1"), "{err}");
        }
        let deep = format!(
            r#"{{"openapi": "3.0.0", "paths": {{"/a": {{"get": {}{}}}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(parse_document(deep.as_bytes(), None).unwrap_err().contains("recursion limit"));
    }

    #[test]
    fn spec_schemas_are_held_back_as_raw_text() {
        let spec = r##"{"openapi": "3.1.0", "paths": {},
            "components": {"parameters": {"p": {"name": "p", "in": "query"}},
                "schemas": {"A": {"type": "object", "examples": {"x": 1}, "properties": {"b": {"$ref": "#/components/schemas/B"}}},
                    "B": [1, {"c": "d"}] , "A": true}},
            "definitions": {"D": {"type": "string"}}}"##;
        let (value, raw) = parse_spec_document(spec.as_bytes(), None).unwrap();
        assert!(value["components"].get("schemas").is_none() && value.get("definitions").is_none(), "{value}");
        assert_eq!(value["components"]["parameters"]["p"]["in"], "query", "other components are built");
        let texts = |members: &Option<Vec<(String, Box<RawValue>)>>| -> Vec<(String, String)> {
            members.iter().flatten().map(|(k, v)| (k.clone(), v.get().to_string())).collect()
        };
        let a =
            r##"{"type": "object", "examples": {"x": 1}, "properties": {"b": {"$ref": "#/components/schemas/B"}}}"##;
        // Every member, repeats too, exactly as written: `SharedDefs` keeps the last of a name.
        assert_eq!(
            texts(&raw.component_schemas),
            [("A".into(), a.into()), ("B".into(), r#"[1, {"c": "d"}]"#.into()), ("A".into(), "true".into())]
        );
        assert_eq!(texts(&raw.definitions), [("D".to_string(), r#"{"type": "string"}"#.to_string())]);
        // A fragment is built as the whole spec would have built it: object-valued examples left out.
        let whole = parse_document(spec.replace(r#", "A": true"#, "").as_bytes(), None).unwrap();
        assert_eq!(parse_spec_fragment(a).unwrap(), whole["components"]["schemas"]["A"]);
        assert!(parse_spec_fragment(a).unwrap().get("examples").is_none());
        // A repeated container replaces the earlier one, as in a built value.
        let (_, raw) =
            parse_spec_document(br#"{"swagger": "2.0", "definitions": {"X": {}}, "definitions": {"Y": {}}}"#, None)
                .unwrap();
        assert_eq!(texts(&raw.definitions), [("Y".to_string(), "{}".to_string())]);
        // Not an object: built, not held back.
        let (value, raw) =
            parse_spec_document(br#"{"openapi": "3.0.0", "components": {"schemas": [1]}}"#, None).unwrap();
        assert_eq!(value["components"]["schemas"], serde_json::json!([1]));
        assert!(raw.component_schemas.is_none());
    }

    #[test]
    fn yaml_and_other_documents_hold_nothing_back() {
        let yaml = "openapi: 3.0.0\ncomponents:\n  schemas:\n    A: {type: string}\n";
        let (value, raw) = parse_spec_document(yaml.as_bytes(), Some(Path::new("s.yaml"))).unwrap();
        assert_eq!(value["components"]["schemas"]["A"]["type"], "string");
        assert!(raw.component_schemas.is_none() && raw.definitions.is_none());
        let manual = br#"{"tools": [], "definitions": {"A": {}}, "components": {"schemas": {"B": {}}}}"#;
        let (value, raw) = parse_spec_document(manual, None).unwrap();
        assert_eq!(value["definitions"]["A"], serde_json::json!({}));
        assert!(raw.component_schemas.is_none() && raw.definitions.is_none());
    }

    #[test]
    fn held_back_schemas_are_still_checked_and_bounded() {
        // Held back, a definition is still checked as JSON...
        for bad in [
            r#"{"openapi": "3.0.0", "components": {"schemas": {"A": {"a" 1}}}}"#,
            r#"{"swagger": "2.0", "definitions": {"A": [1,]}}"#,
            r#"{"openapi": "3.0.0", "components": {"schemas": {"A": {"b": "\x"}}}}"#,
        ] {
            let err = parse_spec_document(bad.as_bytes(), None).unwrap_err();
            assert!(err.starts_with("invalid JSON"), "{err}");
        }
        // ...but not for depth (serde_json skips a raw value without a limit): reading
        // it alone is where the recursion limit applies, an error and not a crash.
        let deep = format!(
            r#"{{"openapi": "3.0.0", "components": {{"schemas": {{"A": {}{}}}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let (_, raw) = parse_spec_document(deep.as_bytes(), None).unwrap();
        let (_, text) = &raw.component_schemas.unwrap()[0];
        assert!(parse_spec_fragment(text.get()).unwrap_err().contains("recursion limit"));
    }

    #[test]
    fn sniffs_syntax() {
        assert_eq!(syntax_of(b"  {\"a\":1}", None), Syntax::Json);
        assert_eq!(syntax_of(b"a: 1", None), Syntax::Yaml);
        assert_eq!(syntax_of(b"{}", Some(Path::new("m.yml"))), Syntax::Yaml);
    }
}
