//! python-utcp compatibility cases of issue 26 (3 to 7), each against the real path:
//! config `manual_call_templates`, relative OAuth2 token URLs, OpenAPI examples, inline
//! YAML manuals and JSON Schema keywords in `text` tools. Servers are real, on loopback.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use utp_core::{CallOptions, Config, Engine, ErrorCode, ManualSource};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn manual(tool: &str, content: &str) -> Value {
    json!({"utcp_version": "1.0.1", "manual_version": "1.0.0", "tools": [
        {"name": tool, "description": "a text tool", "inputs": {"type": "object"},
         "tool_call_template": {"call_template_type": "text", "content": content}}]})
}

// ---- case 3: manual_call_templates ----

#[test]
fn manual_call_templates_register_every_supported_kind() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("local.utcp.json"), manual("hello", "from a file").to_string()).unwrap();
    std::fs::write(dir.path().join("printed.json"), manual("printed", "from a command").to_string()).unwrap();
    // The manual server wants the key the template sends, filled from a variable namespaced by the template's name.
    let port = support::blocking::serve(|request| match (request.path(), request.header("x-api-key")) {
        ("/utcp", Some("k-123")) => (200, manual("fetched", "from a URL").to_string()),
        ("/utcp", _) => (401, "{\"error\": \"no key\"}".into()),
        _ => (404, "{}".into()),
    });
    let config_text = format!(
        r#"
variables: {{remote__api_KEY: k-123}}
manual_call_templates:
  - name: remote_api
    call_template_type: http
    url: http://127.0.0.1:{port}/utcp
    headers: {{X-Api-Key: "${{KEY}}"}}
    allowed_communication_protocols: [http, text]
  - name: local
    call_template_type: file
    file_path: local.utcp.json
  - name: inline
    call_template_type: text
    content: |
      tools:
        - name: echo
          tool_call_template: {{call_template_type: text, content: inline yaml}}
  - name: printed
    call_template_type: cli
    commands: [{{command: "cat {}"}}]
"#,
        dir.path().join("printed.json").display()
    );
    let path = dir.path().join("utcp_config.yaml");
    std::fs::write(&path, config_text).unwrap();
    let rt = runtime();
    let engine = rt.block_on(Engine::open(Config::load(&path).unwrap())).unwrap();
    assert_eq!(engine.manuals(), vec!["inline", "local", "printed", "remote_api"]);
    for (tool, expected) in [
        ("remote_api.fetched", "from a URL"),
        ("local.hello", "from a file"),
        ("inline.echo", "inline yaml"),
        ("printed.printed", "from a command"),
    ] {
        let out = rt.block_on(engine.call_tool(tool, json!({}), CallOptions::default())).unwrap();
        assert_eq!(out, json!(expected), "{tool}");
    }
}

#[test]
fn manual_call_templates_failures_name_the_key() {
    let bad = Config::from_value(json!({"manual_call_templates": {"call_template_type": "http"}})).unwrap_err();
    assert_eq!(bad.code(), ErrorCode::InvalidArgument);
    assert!(bad.to_string().contains("`manual_call_templates` must be a list"), "{bad}");
    let bad = Config::from_value(json!({"manual_call_templates": [{"name": "w", "call_template_type": "http"}]}))
        .unwrap_err();
    assert!(bad.to_string().contains("`manual_call_templates[0]` ('w'): invalid http template"), "{bad}");

    // Valid in shape but failing at start: the error still says which entry.
    let port = support::blocking::serve(|_| (404, "{}".into()));
    let config = Config::from_value(json!({"manual_call_templates": [
        {"name": "gone", "call_template_type": "http", "url": format!("http://127.0.0.1:{port}/utcp")}]}))
    .unwrap();
    let err = runtime().block_on(Engine::open(config)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport);
    assert!(err.to_string().starts_with("manual_call_templates[0] ('gone'): "), "{err}");
}

#[test]
fn manual_call_template_keeps_its_own_allowed_protocols() {
    // A text tool is not `http`: a manual fetched from a URL keeps it only when allowed,
    // here by the template's own allowed_communication_protocols.
    let port = support::blocking::serve(|request| match request.path() {
        "/utcp" => (200, manual("note", "kept").to_string()),
        _ => (404, "{}".into()),
    });
    let url = format!("http://127.0.0.1:{port}/utcp");
    let refused = Config::from_value(json!({"manual_call_templates": [
        {"name": "plain", "call_template_type": "http", "url": url}]}))
    .unwrap();
    let err = runtime().block_on(Engine::open(refused)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security, "{err}");
    let allowed = Config::from_value(json!({"manual_call_templates": [
        {"name": "plain", "call_template_type": "http", "url": url, "allowed_communication_protocols": ["http", "text"]}]}))
    .unwrap();
    let engine = runtime().block_on(Engine::open(allowed)).unwrap();
    assert_eq!(engine.tools().iter().map(|t| t.name.clone()).collect::<Vec<_>>(), vec!["plain.note"]);
}

// ---- case 4: relative OAuth2 token URLs ----

fn spec_with_token_url(token_url: &str) -> String {
    json!({"openapi": "3.0.3", "info": {"title": "Secured", "version": "1"},
        "paths": {"/data": {"get": {"operationId": "getData", "security": [{"oauth": []}],
            "responses": {"200": {"description": "ok"}}}}},
        "components": {"securitySchemes": {"oauth": {"type": "oauth2",
            "flows": {"clientCredentials": {"tokenUrl": token_url, "scopes": {}}}}}}})
    .to_string()
}

#[test]
fn relative_token_url_resolves_against_the_spec_url_and_works() {
    let token_requests = Arc::new(AtomicUsize::new(0));
    let seen = token_requests.clone();
    let port = support::blocking::serve(move |request| match request.path() {
        "/specs/openapi.json" => (200, spec_with_token_url("/oauth/token")),
        "/oauth/token" if request.body_text().contains("client_id=cid") => {
            seen.fetch_add(1, Ordering::SeqCst);
            (200, "{\"access_token\": \"tok\", \"token_type\": \"bearer\", \"expires_in\": 60}".into())
        }
        "/data" if request.header("authorization") == Some("Bearer tok") => (200, "{\"ok\": true}".into()),
        _ => (404, "{}".into()),
    });
    let config = Config::from_value(
        json!({"variables": {"secured_OAUTH_CLIENT_ID": "cid", "secured_OAUTH_CLIENT_SECRET": "s"}}),
    )
    .unwrap();
    let rt = runtime();
    let engine = Engine::new(config).unwrap();
    let url = format!("http://127.0.0.1:{port}/specs/openapi.json");
    rt.block_on(engine.register_manual(ManualSource::Url(url), Some("secured"))).unwrap();
    let tool = engine.tool("secured.getData").unwrap().to_value();
    assert_eq!(
        tool["tool_call_template"]["auth"]["token_url"],
        json!(format!("http://127.0.0.1:{port}/oauth/token")),
        "resolved at conversion"
    );
    let out = rt.block_on(engine.call_tool("secured.getData", json!({}), CallOptions::default())).unwrap();
    assert_eq!(out, json!({"ok": true}));
    assert_eq!(token_requests.load(Ordering::SeqCst), 1);
}

#[test]
fn network_relative_token_url_takes_the_spec_scheme_and_obeys_the_remote_rules() {
    let other = support::blocking::serve(|_| (404, "{}".into()));
    let port = support::blocking::serve(move |request| match request.path() {
        "/same-host" => (200, spec_with_token_url(&format!("//127.0.0.1:{other}/oauth/token"))),
        _ => (404, "{}".into()),
    });
    let engine = Engine::new(Config::default()).unwrap();
    let url = format!("http://127.0.0.1:{port}/same-host");
    runtime().block_on(engine.register_manual(ManualSource::Url(url), Some("s"))).unwrap();
    let tool = engine.tool("s.getData").unwrap().to_value();
    assert_eq!(tool["tool_call_template"]["auth"]["token_url"], json!(format!("http://127.0.0.1:{other}/oauth/token")));
}

// ---- case 5: OpenAPI examples ----

#[test]
fn openapi_examples_are_kept_as_json_schema_examples() {
    let spec = json!({"openapi": "3.0.3", "info": {"title": "Shop", "version": "1"},
        "servers": [{"url": "https://shop.example.com"}],
        "components": {"examples": {"big": {"value": 500}}},
        "paths": {"/items/{id}": {"put": {"operationId": "putItem",
            "parameters": [
                {"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "example": 7},
                 "example": "7", "examples": {"small": {"value": 1}, "big": {"$ref": "#/components/examples/big"}}},
                {"name": "q", "in": "query", "schema": {"type": "string"}, "example": 42}],
            "requestBody": {"content": {"application/json": {
                "schema": {"type": "object", "properties": {"n": {"type": "number", "example": 1.5}}},
                "example": {"n": 2},
                "examples": {"one": {"summary": "same again", "value": {"n": 2}}, "other": {"value": {"n": 3}}}}}},
            "responses": {"200": {"description": "ok"}}}}}});
    let engine = Engine::new(Config::default()).unwrap();
    runtime().block_on(engine.register_manual(ManualSource::Inline(spec), Some("shop"))).unwrap();
    let inputs = engine.tool("shop.putItem").unwrap().to_value()["inputs"].clone();
    assert_eq!(inputs["properties"]["id"]["examples"], json!([7, 1, 500]), "typed, de-duplicated, refs followed");
    assert!(inputs["properties"]["id"].get("example").is_none(), "OpenAPI's `example` becomes `examples`");
    assert_eq!(inputs["properties"]["q"]["examples"], json!(["42"]));
    assert_eq!(inputs["properties"]["body"]["examples"], json!([{"n": 2}, {"n": 3}]));
    assert_eq!(inputs["properties"]["body"]["properties"]["n"]["examples"], json!([1.5]));
}

// ---- case 6: inline YAML manuals ----

#[test]
fn inline_yaml_and_json_text_register_as_manuals() {
    let rt = runtime();
    let engine = Engine::new(Config::default()).unwrap();
    let yaml =
        "name: notes\ntools:\n  - name: hi\n    tool_call_template: {call_template_type: text, content: hi there}\n";
    let tools = rt.block_on(engine.register_manual(ManualSource::from_text(yaml).unwrap(), None)).unwrap();
    assert_eq!(tools, vec!["notes.hi"]);
    let one_line = "{name: flow, tools: [{name: t, tool_call_template: {call_template_type: text, content: x}}]}";
    assert!(matches!(ManualSource::from_text(one_line).unwrap(), ManualSource::Inline(_)), "YAML flow mapping");
    let spec = "openapi: 3.0.3\ninfo: {title: Tiny, version: '1'}\nservers: [{url: 'https://tiny.example.com'}]\npaths:\n  /ping: {get: {operationId: ping, responses: {'200': {description: ok}}}}\n";
    let tools = rt.block_on(engine.register_manual(ManualSource::from_text(spec).unwrap(), None)).unwrap();
    assert_eq!(tools, vec!["Tiny.ping"]);

    // Not a manual, not a path: the errors say what forms are accepted or which file is missing.
    let err = ManualSource::from_text("- just\n- a list\n").unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidManual);
    assert!(err.to_string().contains("must be a mapping"), "{err}");
    let err = ManualSource::from_text("tools: [unclosed\n  x").unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidManual);
    let long = "x".repeat(5000);
    let err = rt.block_on(engine.register_manual(ManualSource::from_text(&long).unwrap(), None)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
}

// ---- case 7: JSON Schema keywords in text tools ----

#[test]
fn text_tool_holding_a_json_schema_is_returned_as_written() {
    let schema_text = r##"{"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:x", "$ref": "#/$defs/item", "$defs": {"item": {"$anchor": "item", "$comment": "c", "type": "string"}}}"##;
    let rt = runtime();
    let engine = Engine::new(Config::from_value(json!({"variables": {"m_WHO": "you"}})).unwrap()).unwrap();
    let mut m = manual("schema", schema_text);
    m["tools"].as_array_mut().unwrap().push(
        json!({"name": "greet", "tool_call_template": {"call_template_type": "text", "content": "hello $WHO, see $schema"}}),
    );
    rt.block_on(engine.register_manual(ManualSource::Inline(m), Some("m"))).unwrap();
    let out = rt.block_on(engine.call_tool("m.schema", json!({}), CallOptions::default())).unwrap();
    assert_eq!(out, json!(schema_text));
    let out = rt.block_on(engine.call_tool("m.greet", json!({}), CallOptions::default())).unwrap();
    assert_eq!(out, json!("hello you, see $schema"));
    assert_eq!(engine.required_variables("m").unwrap(), vec!["m_WHO"]);
}
