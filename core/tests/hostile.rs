//! Arbitrary input to every parser and public entry point of this layer: errors
//! with stable codes, never a panic.

use proptest::prelude::*;
use serde_json::{Value, json};
use utp_core::{Engine, ErrorCode, Manual, ManualSource};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z_$.{}]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "tools",
            "name",
            "tool_call_template",
            "call_template_type",
            "http",
            "cli",
            "url",
            "auth",
            "auth_type",
            "api_key",
            "tool_provider",
            "provider_type",
            "commands",
            "${X}",
            "$ref",
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "tools",
                        "name",
                        "description",
                        "inputs",
                        "tags",
                        "tool_call_template",
                        "call_template_type",
                        "url",
                        "http_method",
                        "auth",
                        "auth_type",
                        "location",
                        "commands",
                        "command",
                        "tool_provider",
                        "provider_type",
                        "command_name",
                        "file_path",
                        "content",
                        "utcp_version",
                        "x",
                    ]),
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// Schema definitions that reference one another (whole, inside, missing, cyclic).
fn arb_schemas() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            "#/components/schemas/A",
            "#/components/schemas/B",
            "#/components/schemas/C/properties/x",
            "#/components/schemas/Missing",
            "#/paths/~1a",
            "string",
            "$ref",
            "a \"quoted\" \\ string",
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    let schema = leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "$ref",
                        "type",
                        "properties",
                        "items",
                        "allOf",
                        "examples",
                        "x",
                        "$defs"
                    ]),
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    });
    prop::collection::vec((prop::sample::select(vec!["A", "B", "C", "D"]), schema), 0..5)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn manual_parser_never_panics(v in arb_json()) {
        if let Err(e) = Manual::from_value(v) {
            prop_assert_eq!(e.code(), ErrorCode::InvalidManual);
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn registration_of_arbitrary_values_is_all_or_nothing(v in arb_json()) {
        let engine = Engine::from_json(json!({})).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        match rt.block_on(engine.register_manual(ManualSource::Inline(v), Some("m"))) {
            Ok(names) => prop_assert_eq!(names.len(), engine.tools().len()),
            Err(_) => prop_assert!(engine.tools().is_empty() && engine.manuals().is_empty()),
        }
    }

    #[test]
    fn document_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = utp_core::parse::parse_document(&bytes, None);
        let _ = utp_core::parse::parse_document(&bytes, Some(std::path::Path::new("x.yaml")));
        let _ = utp_core::parse::parse_document(&bytes, Some(std::path::Path::new("x.json")));
        let _ = utp_core::parse::parse_spec_document(&bytes, None);
    }

    #[test]
    fn held_back_definitions_convert_like_built_ones(schemas in arb_schemas(), swagger2 in any::<bool>()) {
        use utp_core::openapi::{ConvertOptions, Spec, convert, convert_spec};
        use utp_core::parse::{parse_document, parse_spec_document};
        let root = if swagger2 { "#/definitions/" } else { "#/components/schemas/" };
        let schema = json!({"$ref": format!("{root}A")});
        let mut spec = json!({"info": {"title": "t", "version": "1"}, "paths": {"/a": {"post": {"operationId": "a",
            "parameters": [{"name": "q", "in": "query", "schema": schema}], "responses": {"200": {"description": "ok",
            "schema": schema, "content": {"application/json": {"schema": schema}}}}}}}});
        // Every `$ref` the strategy wrote points into the 3.x container; 2.0 specs get theirs.
        let text = schemas.to_string();
        let schemas: Value = serde_json::from_str(&if swagger2 { text.replace("#/components/schemas/", root) } else { text }).unwrap();
        if swagger2 {
            spec = json!({"swagger": "2.0", "info": spec["info"], "paths": spec["paths"], "definitions": schemas});
        } else {
            spec = json!({"openapi": "3.1.0", "info": spec["info"], "paths": spec["paths"], "components": {"schemas": schemas}});
        }
        let text = spec.to_string();
        let built = convert(parse_document(text.as_bytes(), None).unwrap(), &ConvertOptions::default()).unwrap();
        let (doc, parts) = parse_spec_document(text.as_bytes(), None).unwrap();
        let held_back = convert_spec(Spec { doc, parts }, &ConvertOptions::default()).unwrap();
        prop_assert_eq!(built.to_value(), held_back.to_value());
        prop_assert_eq!(built.shared_defs, held_back.shared_defs);
    }

    #[test]
    fn manual_source_and_search_never_panic(s in "\\PC{0,40}") {
        let _ = ManualSource::from_text(&s);
        let engine = Engine::from_json(json!({})).unwrap();
        prop_assert!(engine.search_tools(&s, 5, std::slice::from_ref(&s)).is_empty());
        prop_assert!(engine.tool(&s).is_err());
    }

    #[test]
    fn substitution_never_panics(s in "[a-zA-Z0-9_${} .]{0,40}") {
        let vars = Engine::from_json(json!({"variables": {"m_X": "1"}})).unwrap();
        let _ = vars.variables().substitute_str("m", &s);
    }
}
