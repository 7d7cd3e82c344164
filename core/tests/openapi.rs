//! OpenAPI 2.0 / 3.0 / 3.1 conformance on small specs that cover each conversion rule.

use serde_json::{Value, json};
use utp_core::openapi::{ConvertOptions, convert};
use utp_core::{Engine, ManualSource};

fn tools_of(spec: &Value, opts: &ConvertOptions) -> Value {
    convert(spec.clone(), opts).unwrap().to_value()["tools"].clone()
}

fn find<'a>(tools: &'a Value, name: &str) -> &'a Value {
    tools.as_array().unwrap().iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("no tool {name}: {tools:#}"))
}

fn petstore_30(version: &str) -> Value {
    json!({
        "openapi": version,
        "info": {"title": "Pet Store", "version": "2.1.0"},
        "servers": [{"url": "https://{region}.pets.example/{base}", "variables": {
            "region": {"default": "eu"}, "base": {"default": "v2"}}}],
        "security": [{"apiKey": []}],
        "paths": {
            "/pets": {
                "parameters": [{"name": "X-Trace", "in": "header", "schema": {"type": "string"}}],
                "get": {
                    "operationId": "list-pets", "summary": "List pets", "tags": ["pets"],
                    "parameters": [
                        {"name": "tags", "in": "query", "style": "form", "explode": false,
                         "schema": {"type": "array", "items": {"type": "string"}}},
                        {"name": "limit", "in": "query", "required": true, "schema": {"type": "integer"}},
                        {"$ref": "#/components/parameters/Page"}
                    ],
                    "responses": {"200": {"description": "ok", "content": {"application/json": {
                        "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Pet"}}}}}}
                },
                "post": {
                    "summary": "Create a pet",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/NewPet"}}}},
                    "responses": {"201": {"$ref": "#/components/responses/PetCreated"}}
                }
            },
            "/pets/{petId}": {
                "get": {"operationId": "getPet", "description": "Info for a pet",
                        "parameters": [{"name": "petId", "in": "path", "schema": {"type": "string"}},
                                       {"name": "session", "in": "cookie", "schema": {"type": "string"}}],
                        "responses": {"default": {"description": "x", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Pet"}}}}}},
                "delete": {"responses": {"204": {"description": "gone"}}, "security": [{"basicAuth": []}]},
                "put": {"operationId": "updatePet", "requestBody": {"content": {
                    "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}},
                    "security": [{"oauth": []}]}
            },
            "/upload": {"post": {"operationId": "upload", "requestBody": {"content": {"multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}}}}}},
            "/anything": {"head": {}, "options": {}, "trace": {}, "patch": {}}
        },
        "components": {
            "parameters": {"Page": {"name": "page", "in": "query", "schema": {"type": "integer"}}},
            "responses": {"PetCreated": {"description": "created", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Pet"}}}}},
            "schemas": {
                "Pet": {"type": "object", "properties": {"id": {"type": "integer"}, "owner": {"$ref": "#/components/schemas/Owner"},
                        "children": {"type": "array", "items": {"$ref": "#/components/schemas/Pet"}}}},
                "Owner": {"type": "object", "properties": {"name": {"type": "string"}, "pets": {"type": "array",
                          "items": {"$ref": "#/components/schemas/Pet"}}}},
                "NewPet": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
                           "owner": {"$ref": "#/components/schemas/Owner"}}},
                "Unused": {"type": "string"}
            },
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "name": "X-API-Key", "in": "header"},
                "bearer": {"type": "http", "scheme": "bearer"},
                "basicAuth": {"type": "http", "scheme": "basic"},
                "oauth": {"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": "https://auth.pets.example/token", "scopes": {}}}}
            }
        }
    })
}

#[test]
fn openapi_3_operations_names_urls_and_params() {
    for version in ["3.0.3", "3.1.0"] {
        let tools = tools_of(&petstore_30(version), &ConvertOptions::default());
        assert_eq!(tools.as_array().unwrap().len(), 10, "{version}: one tool per operation, none dropped");
        let list = find(&tools, "list_pets");
        assert_eq!(list["description"], "List pets");
        assert_eq!(list["tags"], json!(["pets"]));
        let tpl = &list["tool_call_template"];
        assert_eq!(tpl["url"], "https://eu.pets.example/v2/pets");
        assert_eq!(tpl["http_method"], "GET");
        assert_eq!(tpl["header_fields"], json!(["X-Trace"]));
        assert_eq!(tpl["x-utp-parameters"]["tags"], json!({"in": "query", "style": "form", "explode": false}));
        let props = &list["inputs"]["properties"];
        for p in ["tags", "limit", "page", "X-Trace"] {
            assert!(props.get(p).is_some(), "{version}: missing param {p}");
        }
        assert_eq!(list["inputs"]["required"], json!(["limit"]));
        assert_eq!(list["outputs"]["items"]["$ref"], "#/$defs/Pet");
        let defs = list["outputs"]["$defs"].as_object().unwrap();
        assert!(defs.contains_key("Pet") && defs.contains_key("Owner") && !defs.contains_key("Unused"));
        assert_eq!(defs["Owner"]["properties"]["pets"]["items"]["$ref"], "#/$defs/Pet");

        // Synthesized name for an operation without operationId; request body with nested refs.
        let create = find(&tools, "post_pets");
        assert_eq!(create["tool_call_template"]["body_field"], "body");
        assert_eq!(create["inputs"]["properties"]["body"]["$ref"], "#/$defs/NewPet");
        assert_eq!(create["inputs"]["required"], json!(["body"]));
        assert!(create["inputs"]["$defs"].get("Owner").is_some(), "nested ref kept as $defs");
        assert_eq!(create["outputs"]["$ref"], "#/$defs/Pet", "response $ref followed");

        let get = find(&tools, "getPet");
        assert_eq!(get["description"], "Info for a pet");
        assert_eq!(get["tool_call_template"]["url"], "https://eu.pets.example/v2/pets/{petId}");
        assert_eq!(get["inputs"]["required"], json!(["petId"]), "path params are required");
        assert_eq!(get["tool_call_template"]["x-utp-parameters"]["session"]["in"], "cookie");
        assert_eq!(get["outputs"]["$ref"], "#/$defs/Pet", "default response used");

        assert_eq!(
            find(&tools, "updatePet")["tool_call_template"]["content_type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(find(&tools, "upload")["tool_call_template"]["content_type"], "multipart/form-data");
        for m in ["head", "options", "trace", "patch"] {
            assert_eq!(find(&tools, &format!("{m}_anything"))["tool_call_template"]["http_method"], m.to_uppercase());
        }
    }
}

#[test]
fn openapi_3_auth_is_one_variable_set_per_scheme() {
    let tools = tools_of(&petstore_30("3.1.0"), &ConvertOptions::default());
    let auth = |name: &str| find(&tools, name)["tool_call_template"]["auth"].clone();
    assert_eq!(
        auth("list_pets"),
        json!({"auth_type": "api_key", "api_key": "${APIKEY}", "var_name": "X-API-Key", "location": "header"})
    );
    assert_eq!(auth("getPet"), auth("list_pets"), "global security applies, same variable");
    assert_eq!(
        auth("post_pets"),
        json!({"auth_type": "api_key", "api_key": "Bearer ${BEARER_TOKEN}", "var_name": "Authorization", "location": "header"})
    );
    assert_eq!(
        auth("delete_pets_petId"),
        json!({"auth_type": "basic", "username": "${BASICAUTH_USERNAME}", "password": "${BASICAUTH_PASSWORD}"})
    );
    assert_eq!(auth("updatePet")["auth_type"], "oauth2");
    assert_eq!(auth("updatePet")["token_url"], "https://auth.pets.example/token");
    assert_eq!(auth("updatePet")["client_id"], "${OAUTH_CLIENT_ID}");
}

#[test]
fn swagger_2_host_base_path_body_and_form() {
    let spec = json!({
        "swagger": "2.0",
        "info": {"title": "Legacy Shop", "version": "1.0"},
        "host": "shop.example", "basePath": "/api/v1", "schemes": ["http", "https"],
        "securityDefinitions": {"key": {"type": "apiKey", "name": "api_key", "in": "query"},
                                "cc": {"type": "oauth2", "flow": "application", "tokenUrl": "https://shop.example/oauth"}},
        "paths": {
            "/orders/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "type": "integer"}],
                "get": {"operationId": "getOrder", "security": [{"key": []}],
                        "parameters": [{"name": "fields", "in": "query", "type": "array", "items": {"type": "string"}, "collectionFormat": "csv"}],
                        "responses": {"200": {"description": "ok", "schema": {"$ref": "#/definitions/Order"}}}},
                "put": {"operationId": "putOrder", "security": [{"cc": []}],
                        "parameters": [{"name": "order", "in": "body", "required": true, "schema": {"$ref": "#/definitions/Order"}}]}
            },
            "/avatar": {"post": {"consumes": ["multipart/form-data"],
                "parameters": [{"name": "image", "in": "formData", "type": "file", "required": true}]}}
        },
        "definitions": {"Order": {"type": "object", "properties": {"id": {"type": "integer"}, "lines": {"type": "array", "items": {"$ref": "#/definitions/Line"}}}},
                        "Line": {"type": "object", "properties": {"sku": {"type": "string"}}}}
    });
    let tools = tools_of(&spec, &ConvertOptions::default());
    let get = find(&tools, "getOrder");
    assert_eq!(get["tool_call_template"]["url"], "https://shop.example/api/v1/orders/{id}");
    assert_eq!(get["inputs"]["properties"]["id"], json!({"type": "integer"}));
    assert_eq!(get["tool_call_template"]["x-utp-parameters"]["fields"]["collectionFormat"], "csv");
    assert_eq!(get["outputs"]["$ref"], "#/$defs/Order");
    assert!(get["outputs"]["$defs"].get("Line").is_some());
    assert_eq!(get["tool_call_template"]["auth"]["location"], "query");
    let put = find(&tools, "putOrder");
    assert_eq!(put["inputs"]["properties"]["body"]["$ref"], "#/$defs/Order");
    assert_eq!(put["inputs"]["required"], json!(["id", "body"]));
    assert_eq!(put["tool_call_template"]["auth"]["token_url"], "https://shop.example/oauth");
    let avatar = find(&tools, "post_avatar");
    assert_eq!(avatar["tool_call_template"]["content_type"], "multipart/form-data");
    assert_eq!(avatar["inputs"]["properties"]["body"]["required"], json!(["image"]));

    let overridden = tools_of(&spec, &ConvertOptions { base_url: Some("http://127.0.0.1:9/".into()), spec_url: None });
    assert_eq!(find(&overridden, "getOrder")["tool_call_template"]["url"], "http://127.0.0.1:9/orders/{id}");
}

#[test]
fn hostile_specs_error_or_convert_without_hanging() {
    // A $ref cycle through responses and a self-referencing parameter.
    let spec = json!({"openapi": "3.0.0", "paths": {"/a": {"get": {
        "parameters": [{"$ref": "#/components/parameters/P"}],
        "responses": {"200": {"$ref": "#/components/responses/R"}}}}},
        "components": {"parameters": {"P": {"$ref": "#/components/parameters/P"}},
                       "responses": {"R": {"$ref": "#/components/responses/R"}}}});
    let tools = tools_of(&spec, &ConvertOptions::default());
    assert_eq!(tools.as_array().unwrap().len(), 1);
    assert!(convert(json!({"openapi": "4.0"}), &ConvertOptions::default()).is_err());
    assert!(convert(json!({"openapi": "3.0.0", "paths": []}), &ConvertOptions::default()).is_err());
    assert_eq!(
        tools_of(&json!({"swagger": "2.0", "paths": {"/x": 5, "/y": {"get": 7}}}), &ConvertOptions::default()),
        json!([])
    );
}

#[test]
fn engine_registers_openapi_by_title_and_discovery_converts_files() {
    let engine = Engine::from_json(json!({"openapi": {"base_urls": {"Pet_Store": "http://127.0.0.1:1"}}})).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tools = rt.block_on(engine.register_manual(ManualSource::Inline(petstore_30("3.1.0")), None)).unwrap();
    assert!(tools.contains(&"Pet_Store.list_pets".to_string()), "{tools:?}");
    assert_eq!(
        engine.tool("Pet_Store.getPet").unwrap().to_value()["tool_call_template"]["url"],
        "http://127.0.0.1:1/pets/{petId}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("petstore.json"), petstore_30("3.0.3").to_string()).unwrap();
    let report = rt.block_on(engine.discover(dir.path().to_str().unwrap())).unwrap();
    assert_eq!(report.registered(), ["petstore"]);
    // Both manuals hold the same operations: the best hit is a post_pets either way.
    let best = &engine.search_tools("create a pet", 1, &[])[0].name;
    assert!(best.ends_with(".post_pets"), "{best}");
}

#[test]
fn refs_into_paths_still_resolve_when_operations_are_moved() {
    // Bundlers (Redocly) point later operations at parts of earlier ones; the
    // converter must not have moved those parts out of the document first.
    let spec = json!({"openapi": "3.0.0", "paths": {
        "/a": {"get": {"operationId": "a", "parameters": [{"name": "q", "in": "query", "schema": {"type": "integer"}}],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "boolean"}}}}}}},
        "/b": {"post": {"operationId": "b", "parameters": [{"$ref": "#/paths/~1a/get/parameters/0"}],
            "requestBody": {"$ref": "#/paths/~1a/get/requestBody"},
            "responses": {"201": {"$ref": "#/paths/~1a/get/responses/200"}}}},
        "/c": {"$ref": "#/paths/~1a"}
    }});
    let tools = tools_of(&spec, &ConvertOptions::default());
    assert_eq!(tools.as_array().unwrap().len(), 3, "{tools:#}");
    // The same through a chain: operation -> component -> a part of an operation.
    let chained = json!({"openapi": "3.0.0", "paths": {
        "/a": spec["paths"]["/a"].clone(),
        "/d": {"get": {"operationId": "d", "parameters": [{"$ref": "#/components/parameters/Q"}],
            "requestBody": {"$ref": "#/components/requestBodies/B"},
            "responses": {"200": {"$ref": "#/components/responses/R"}}}}},
        "components": {"parameters": {"Q": {"$ref": "#/paths/~1a/get/parameters/0"}},
            "requestBodies": {"B": {"$ref": "#/components/requestBodies/B2"}},
            "responses": {"R": {"$ref": "#/paths/~1a/get/responses/200"}}}});
    let mut chained = chained;
    chained["components"]["requestBodies"]["B2"] = json!({"$ref": "#/paths/~1a/get/requestBody"});
    let chained_tools = tools_of(&chained, &ConvertOptions::default());
    let d = find(&chained_tools, "d");
    assert_eq!(d["inputs"]["properties"]["q"]["type"], "integer", "{d:#}");
    assert_eq!(d["inputs"]["properties"]["body"]["type"], "object");
    assert_eq!(d["outputs"]["type"], "boolean");
    for name in ["a", "b", "a_2"] {
        let t = find(&tools, name);
        assert_eq!(t["inputs"]["properties"]["q"]["type"], "integer", "{name}: {t:#}");
        assert_eq!(t["inputs"]["properties"]["body"]["type"], "object", "{name}");
        assert_eq!(t["outputs"]["type"], "boolean", "{name}");
    }
    // Without such refs the operations move: the same results.
    let plain = json!({"openapi": "3.0.0", "paths": {"/a": spec["paths"]["/a"].clone()}});
    assert_eq!(find(&tools_of(&plain, &ConvertOptions::default()), "a"), find(&tools, "a"));
}

#[test]
fn what_the_parser_leaves_out_of_a_spec_does_not_change_the_manual() {
    let spec = json!({"openapi": "3.1.0", "info": {"title": "T", "version": "1"},
        "tags": [{"name": "t"}], "externalDocs": {"url": "https://x"}, "x-webhooks": {"w": {"post": {}}},
        "webhooks": {"w": {"post": {"operationId": "hook"}}},
        "paths": {"/a": {"summary": "s", "description": "d", "x-ms-docs-grouped-path": ["/b"],
            "get": {"operationId": "a", "summary": "Get A", "externalDocs": {"url": "https://x"}, "x-ms-pageable": {},
                "parameters": [{"name": "q", "in": "query", "x-ms-docs-key-type": "k", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok", "content": {"application/json": {
                    "examples": {"one": {"value": {"a": 1}}}, "schema": {"$ref": "#/components/schemas/A"}}}}}}}},
        "components": {"schemas": {"A": {"type": "object", "examples": [{"a": 1}], "x-kept": true}},
            "examples": {"e": {"value": 1}}}});
    let parsed = utp_core::parse::parse_document(spec.to_string().as_bytes(), None).unwrap();
    assert!(parsed.get("tags").is_none() && parsed.get("x-webhooks").is_none() && parsed.get("webhooks").is_none());
    assert!(parsed["paths"]["/a"].get("x-ms-docs-grouped-path").is_none());
    assert!(parsed["paths"]["/a"]["get"].get("x-ms-pageable").is_none());
    assert_eq!(parsed["components"]["schemas"]["A"]["x-kept"], true, "schemas are kept whole");
    let whole = convert(spec, &ConvertOptions::default()).unwrap();
    let pruned = convert(parsed, &ConvertOptions::default()).unwrap();
    assert_eq!(whole.to_value(), pruned.to_value());
}

/// Specs whose definitions reference one another in every way the converter rewrites:
/// cycles, escaped `\/` in a ref and `\u0024ref` as a key, a repeated name, a ref into a
/// definition's inside, an unused definition, object-valued examples.
const TANGLED_30: &str = r##"{"openapi": "3.0.3", "info": {"title": "Tangled", "version": "1"},
  "paths": {"/a/{id}": {"post": {"operationId": "post_a",
    "parameters": [{"name": "id", "in": "path", "schema": {"$ref": "#/components/schemas/C"}}],
    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/D"}}}},
    "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/G"}}}}}}},
   "/plain": {"get": {"operationId": "plain", "parameters": [{"name": "q", "in": "query", "required": true, "schema": {"type": "string"}}],
    "responses": {"200": {"description": "ok"}}}}},
  "components": {"schemas": {
    "A": {"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}, "x": {"type": "integer"}}},
    "B": {"type": "array", "items": {"$ref": "#/components/schemas/A"}, "examples": {"one": {"value": []}}},
    "C": {"allOf": [{"$ref": "#\/components\/schemas\/A"}, {"type": "string", "description": "quote \" and \\ and \n"}]},
    "D": {"type": "object", "properties": {"e": {"\u0024ref": "#/components/schemas/F"}}},
    "E": {"type": "null"},
    "F": {"type": "string"},
    "G": {"$ref": "#/components/schemas/A/properties/x"},
    "F": {"type": "integer", "enum": [1, 2]}}}}"##;

const TANGLED_20: &str = r##"{"swagger": "2.0", "info": {"title": "Tangled 2", "version": "1"}, "host": "127.0.0.1:1",
  "paths": {"/o": {"post": {"operationId": "post_o",
    "parameters": [{"name": "body", "in": "body", "required": true, "schema": {"$ref": "#/definitions/Order"}}],
    "responses": {"200": {"description": "ok", "schema": {"type": "array", "items": {"$ref": "#/definitions/Line"}}}}}}},
  "definitions": {"Order": {"type": "object", "required": ["lines"], "properties": {"lines": {"type": "array", "items": {"$ref": "#/definitions/Line"}}}},
    "Line": {"type": "object", "properties": {"order": {"$ref": "#/definitions/Order"}, "sku": {"type": "string"}}}}}"##;

#[test]
fn held_back_definitions_convert_like_built_ones() {
    use utp_core::openapi::{Spec, convert_spec};
    use utp_core::parse::{parse_document, parse_spec_document};
    for text in [TANGLED_30, TANGLED_20] {
        let built = convert(parse_document(text.as_bytes(), None).unwrap(), &ConvertOptions::default()).unwrap();
        let (doc, parts) = parse_spec_document(text.as_bytes(), None).unwrap();
        assert!(parts.component_schemas.is_some() || parts.definitions.is_some(), "held back");
        let held_back = convert_spec(Spec { doc, parts }, &ConvertOptions::default()).unwrap();
        // Tools with their closures attached, then every definition and its references.
        assert_eq!(built.to_value(), held_back.to_value());
        assert_eq!(built.shared_defs, held_back.shared_defs);
    }
    let (doc, parts) = parse_spec_document(TANGLED_30.as_bytes(), None).unwrap();
    let manual = convert_spec(Spec { doc, parts }, &ConvertOptions::default()).unwrap();
    let defs = manual.shared_defs.as_deref().unwrap();
    assert_eq!(defs.iter().map(|(name, _)| name).collect::<Vec<_>>(), ["A", "B", "C", "D", "E", "F", "G"]);
    assert_eq!(defs.get("F").unwrap(), &json!({"type": "integer", "enum": [1, 2]}), "the last of a repeated name");
    assert_eq!(defs.refs("C").unwrap(), ["A"], "an escaped `\\/` in a ref");
    assert_eq!(defs.refs("D").unwrap(), ["F"], "`\\u0024ref` is `$ref`");
    assert_eq!(defs.get("G").unwrap()["$ref"], "#/$defs/A/properties/x");
    let post = manual.to_value()["tools"].as_array().unwrap().iter().find(|t| t["name"] == "post_a").cloned().unwrap();
    let mut reached: Vec<_> = post["inputs"]["$defs"].as_object().unwrap().keys().cloned().collect();
    reached.sort();
    assert_eq!(reached, ["A", "B", "C", "D", "F"], "E is reached by no tool");
}

#[test]
fn a_registered_file_keeps_its_definitions_raw_until_used_and_matches_the_inline_spec() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tangled.json");
    std::fs::write(&file, TANGLED_30).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let from_file = Engine::from_json(json!({})).unwrap();
    rt.block_on(from_file.register_manual(ManualSource::Path(file), Some("t"))).unwrap();
    let inline = Engine::from_json(json!({})).unwrap();
    let value: Value = serde_json::from_str(TANGLED_30).unwrap();
    rt.block_on(inline.register_manual(ManualSource::Inline(value), Some("t"))).unwrap();
    for name in ["t.post_a", "t.plain"] {
        let (a, b) = (from_file.tool(name).unwrap().to_value(), inline.tool(name).unwrap().to_value());
        // serde_json reads the whole spec, object-valued examples included; the engine's
        // parser leaves those out. Nothing else may differ.
        let strip = |mut v: Value| {
            if let Some(b) = v.pointer_mut("/inputs/$defs/B") {
                b.as_object_mut().unwrap().remove("examples");
            }
            v
        };
        assert_eq!(strip(a), strip(b), "{name}");
    }
    // Validation reads the raw definitions: a wrong type deep in the closure is found.
    let err = rt
        .block_on(from_file.call_tool(
            "t.post_a",
            json!({"id": "x", "body": {"e": "not an integer"}}),
            Default::default(),
        ))
        .unwrap_err();
    assert_eq!(err.code(), utp_core::ErrorCode::ValidationFailed, "{err}");
    assert!(err.to_string().contains("/body/e"), "{err}");
}

#[test]
fn a_definition_too_deep_to_read_fails_only_the_calls_that_reach_it() {
    let deep = format!("{}{}", "{\"allOf\": [".repeat(200), "]}".repeat(200));
    let spec = format!(
        r##"{{"openapi": "3.0.0", "info": {{"title": "Deep", "version": "1"}}, "servers": [{{"url": "http://127.0.0.1:1"}}],
        "paths": {{"/deep": {{"post": {{"operationId": "deep", "requestBody": {{"content": {{"application/json": {{"schema": {{"$ref": "#/components/schemas/Deep"}}}}}}}},
            "responses": {{"200": {{"description": "ok"}}}}}}}},
          "/fine": {{"get": {{"operationId": "fine", "parameters": [{{"name": "q", "in": "query", "required": true, "schema": {{"type": "string"}}}}],
            "responses": {{"200": {{"description": "ok"}}}}}}}}}},
        "components": {{"schemas": {{"Deep": {deep}}}}}}}"##
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deep.json");
    std::fs::write(&file, &spec).unwrap();
    let engine = Engine::from_json(json!({})).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Held back, the definition is not read at registration (serde_json skips a raw value
    // without a depth limit); read alone, it hits serde_json's recursion limit.
    rt.block_on(engine.register_manual(ManualSource::Path(file), Some("d"))).unwrap();
    let err = rt.block_on(engine.call_tool("d.deep", json!({"body": {}}), Default::default())).unwrap_err();
    assert_eq!(err.code(), utp_core::ErrorCode::InvalidManual, "{err}");
    assert!(
        err.to_string().contains("schema 'Deep' cannot be read") && err.to_string().contains("recursion limit"),
        "{err}"
    );
    // Listing it still works (the unreadable definition shows as `{}`), and a tool that
    // does not reach it validates as usual.
    assert_eq!(engine.tool("d.deep").unwrap().to_value()["inputs"]["$defs"]["Deep"], json!({}));
    let err = rt.block_on(engine.call_tool("d.fine", json!({}), Default::default())).unwrap_err();
    assert_eq!(err.code(), utp_core::ErrorCode::ValidationFailed, "{err}");
}

/// A spec split over files as editors and bundlers lay them out: parameters, responses, a
/// path item and schemas in other files, refs inside them relative to those files, a
/// recursive schema (`#` of its own file) and a file pointing back at the spec.
fn split_spec(dir: &std::path::Path, main_as_json: bool) -> std::path::PathBuf {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("params.yaml", "id: {name: id, in: path, required: true, schema: {$ref: '#/Id'}}\nId: {type: integer}\n");
    write(
        "responses.yaml",
        "PetOk:\n  description: ok\n  content: {application/json: {schema: {$ref: 'schemas/pet.json'}}}\n",
    );
    let name = if main_as_json { "openapi.json" } else { "openapi.yaml" };
    let pet = json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
        "tag": {"$ref": "tag.json"}, "parent": {"$ref": "#"}, "owner": {"$ref": format!("../{name}#/components/schemas/Error")}}});
    write("schemas/pet.json", &pet.to_string());
    write("schemas/tag.json", r#"{"type": "string", "enum": ["a", "b"]}"#);
    write(
        "paths/owners.yaml",
        "get:\n  operationId: listOwners\n  parameters: [{name: q, in: query, required: true, schema: {$ref: '../schemas/tag.json'}}]\n  responses: {'200': {description: ok}}\n",
    );
    let main = json!({"openapi": "3.0.3", "info": {"title": "Split", "version": "1"}, "servers": [{"url": "http://127.0.0.1:1"}],
        "paths": {
            "/pets/{id}": {"parameters": [{"$ref": "params.yaml#/id"}],
                "get": {"operationId": "getPet", "responses": {"200": {"$ref": "responses.yaml#/PetOk"}}},
                "put": {"operationId": "putPet", "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "schemas/pet.json"}}}}, "responses": {"204": {"description": "done"}}}},
            "/owners": {"$ref": "paths/owners.yaml"}},
        "components": {"schemas": {"Error": {"type": "object", "properties": {"pet": {"$ref": "schemas/pet.json"}, "code": {"type": "integer"}}}}}});
    let text = if main_as_json { main.to_string() } else { serde_yaml_ng::to_string(&main).unwrap() };
    write(name, &text);
    dir.join(name)
}

#[test]
fn relative_file_refs_are_brought_into_the_spec() {
    for main_as_json in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let spec = split_spec(dir.path(), main_as_json);
        let engine = Engine::from_json(json!({})).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut tools = rt.block_on(engine.register_manual(ManualSource::Path(spec), Some("s"))).unwrap();
        tools.sort();
        assert_eq!(tools, ["s.getPet", "s.listOwners", "s.putPet"]);
        let get = engine.tool("s.getPet").unwrap().to_value();
        assert_eq!(get["inputs"]["properties"]["id"], json!({"$ref": "#/$defs/Id"}), "{get:#}");
        assert_eq!(get["inputs"]["$defs"]["Id"], json!({"type": "integer"}));
        assert_eq!(get["inputs"]["required"], json!(["id"]), "the path-level parameter from params.yaml");
        assert_eq!(get["outputs"]["$ref"], "#/$defs/pet");
        let pet = &get["outputs"]["$defs"]["pet"];
        assert_eq!(pet["properties"]["tag"], json!({"$ref": "#/$defs/tag"}));
        assert_eq!(pet["properties"]["parent"], json!({"$ref": "#/$defs/pet"}), "`#` of its own file: recursive");
        assert_eq!(pet["properties"]["owner"], json!({"$ref": "#/$defs/Error"}), "back into the spec");
        assert_eq!(get["outputs"]["$defs"]["Error"]["properties"]["pet"], json!({"$ref": "#/$defs/pet"}));
        let owners = engine.tool("s.listOwners").unwrap().to_value();
        assert_eq!(owners["inputs"]["properties"]["q"], json!({"$ref": "#/$defs/tag"}), "a path item from a file");
        // The schemas from files validate calls.
        let call = |tool: &str, args: Value| rt.block_on(engine.call_tool(tool, args, Default::default())).unwrap_err();
        let err = call("s.getPet", json!({"id": "seven"}));
        assert_eq!(err.code(), utp_core::ErrorCode::ValidationFailed, "{err}");
        let err = call("s.putPet", json!({"id": 7, "body": {"name": "rex", "tag": "z"}}));
        assert!(err.to_string().contains("/body/tag"), "{err}");
        let err = call("s.listOwners", json!({"q": "c"}));
        assert!(err.to_string().contains("/q"), "{err}");
    }
}

#[test]
fn relative_file_refs_that_cannot_be_followed_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("spec");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(dir.path().join("outside.yaml"), "type: string\n").unwrap();
    std::fs::write(inner.join("loop.yaml"), "$ref: 'loop.yaml'\n").unwrap();
    std::fs::write(inner.join("no_pointer.yaml"), "a: 1\n").unwrap();
    // A link inside the directory to a file outside it is outside.
    std::os::unix::fs::symlink(dir.path().join("outside.yaml"), inner.join("link.yaml")).unwrap();
    let engine = Engine::from_json(json!({})).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (i, (schema_ref, param_ref, expected)) in [
        ("../outside.yaml", None, "outside the spec's directory"),
        ("link.yaml", None, "outside the spec's directory"),
        ("missing.yaml", None, "missing.yaml"),
        ("/etc/hostname", None, "only relative file refs"),
        ("https://example.com/pet.json", None, "only relative file refs"),
        ("no_pointer.yaml#/b", None, "nothing at '#/b'"),
        ("no_pointer.yaml#/a", Some("loop.yaml"), "objects from files inside one another"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut op = json!({"operationId": "x", "responses": {"200": {"description": "ok", "content": {"application/json": {
            "schema": {"$ref": schema_ref}}}}}});
        if let Some(p) = param_ref {
            op["parameters"] = json!([{"$ref": p}]);
        }
        let spec = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/x": {"get": op}}});
        let path = inner.join(format!("spec{i}.json"));
        std::fs::write(&path, spec.to_string()).unwrap();
        let err = rt.block_on(engine.register_manual(ManualSource::Path(path), None)).unwrap_err();
        assert_eq!(err.code(), utp_core::ErrorCode::InvalidManual, "{schema_ref}: {err}");
        assert!(err.to_string().contains(expected), "{schema_ref}: {err}");
    }
    assert!(engine.tools().is_empty());
}

#[test]
fn a_spec_file_with_odd_containers_and_external_refs_is_an_error_or_a_manual_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.json"), r#"{"type": "string"}"#).unwrap();
    let engine = Engine::from_json(json!({})).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The schemas are held back from the first `components`, which a second one replaces.
    for (i, text) in [
        r#"{"openapi": "3.0.0", "components": {"schemas": {"A": {"$ref": "s.json"}}}, "components": [1], "paths": {}}"#,
        r#"{"swagger": "2.0", "definitions": {"A": {"$ref": "s.json"}}, "definitions": 5, "paths": {}}"#,
        r#"{"openapi": "3.0.0", "components": {"schemas": {"A": {"$ref": "s.json"}}}, "paths": {"/a": {"$ref": "s.json#/x"}}}"#,
    ]
    .iter()
    .enumerate()
    {
        let path = dir.path().join(format!("odd{i}.json"));
        std::fs::write(&path, text).unwrap();
        if let Err(e) = rt.block_on(engine.register_manual(ManualSource::Path(path), None)) {
            assert_eq!(e.code(), utp_core::ErrorCode::InvalidManual, "{text}: {e}");
        }
    }
}
