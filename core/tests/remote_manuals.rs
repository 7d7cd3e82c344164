//! Manuals fetched from a URL keep only the tools the host allows (docs/design.md §11,
//! issue 26 case 2): their own type (`http`) unless `discovery.allowed_communication_protocols`
//! names others, and never local execution (`cli`, `file`, ...) without
//! `discovery.allow_remote_local_execution`. Served from a real loopback server; the
//! rule on where a remote manual's tools may point is unit-tested in `admission.rs`
//! (a public origin cannot be served honestly from a test).

mod support;

use std::path::Path;

use serde_json::{Value, json};
use utp_core::events::HistoryFilter;
use utp_core::{CallOptions, Engine, ErrorCode, ManualSource};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A manual offering an `http` tool, a `cli` tool that would create `marker`, and a `text` tool.
fn mixed_manual(port: u16, marker: &Path) -> String {
    json!({"utcp_version": "1.0.1", "manual_version": "1.0.0", "tools": [
        {"name": "fetch", "description": "an http tool",
         "tool_call_template": {"call_template_type": "http", "url": format!("http://127.0.0.1:{port}/data")}},
        {"name": "run", "description": "a cli tool",
         "tool_call_template": {"call_template_type": "cli",
            "commands": [{"command": format!("touch {}", marker.display())}]}},
        {"name": "note", "description": "a text tool",
         "tool_call_template": {"call_template_type": "text", "content": "hello"}},
    ]})
    .to_string()
}

fn cli_only_manual(marker: &Path) -> String {
    json!({"tools": [{"name": "run", "tool_call_template": {"call_template_type": "cli",
        "commands": [{"command": format!("touch {}", marker.display())}]}}]})
    .to_string()
}

/// Serves `/mixed/utcp`, `/cli/utcp` and `/data` on loopback until dropped.
struct ManualServer {
    port: u16,
}

impl ManualServer {
    fn start(marker: &Path) -> ManualServer {
        let marker = marker.to_path_buf();
        let port_cell = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
        let cell = port_cell.clone();
        let port = support::blocking::serve(move |request| match request.target.as_str() {
            "/mixed/utcp" => (200, mixed_manual(*cell.get().unwrap_or(&0), &marker)),
            "/cli/utcp" => (200, cli_only_manual(&marker)),
            "/data" => (200, "{\"ok\": true}".into()),
            _ => (404, "not found".into()),
        });
        port_cell.set(port).unwrap();
        ManualServer { port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn refused_of(engine: &Engine) -> Value {
    let events = engine.history(&HistoryFilter::default().kind("manual.registered"));
    events.last().map(|e| e.data["refused"].clone()).unwrap_or(Value::Null)
}

#[test]
fn a_manual_from_a_url_keeps_only_its_own_type() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let server = ManualServer::start(&marker);
    let rt = runtime();
    let engine = Engine::from_json(json!({})).unwrap();

    let tools = rt.block_on(engine.register_manual(ManualSource::Url(server.url("/mixed")), Some("m"))).unwrap();
    assert_eq!(tools, ["m.fetch"]);
    let err = rt.block_on(engine.call_tool("m.run", json!({}), CallOptions::default())).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(!marker.exists(), "the cli tool ran");
    // The http tool works.
    let out = rt.block_on(engine.call_tool("m.fetch", json!({}), CallOptions::default())).unwrap();
    assert_eq!(out, json!({"ok": true}));

    // The event says what was left out and why.
    let refused = refused_of(&engine);
    let names: Vec<&str> = refused.as_array().unwrap().iter().map(|r| r["tool"].as_str().unwrap()).collect();
    assert_eq!(names, ["run", "note"]);
    assert_eq!(refused[0]["call_template_type"], "cli");
    assert!(refused[0]["reason"].as_str().unwrap().contains("allowed_communication_protocols"), "{refused}");
}

#[test]
fn a_manual_whose_every_tool_is_refused_is_a_security_error() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let server = ManualServer::start(&marker);
    let rt = runtime();
    let engine = Engine::from_json(json!({})).unwrap();
    let err = rt.block_on(engine.register_manual(ManualSource::Url(server.url("/cli")), Some("c"))).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security, "{err}");
    assert!(err.to_string().contains("'run'"), "{err}");
    assert!(engine.manuals().is_empty());
    assert!(!marker.exists());
}

#[test]
fn allowing_cli_is_not_enough_without_the_local_execution_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let server = ManualServer::start(&marker);
    let rt = runtime();
    let config = json!({"discovery": {"allowed_communication_protocols": ["http", "cli", "text"]}});
    let engine = Engine::from_json(config).unwrap();
    let tools = rt.block_on(engine.register_manual(ManualSource::Url(server.url("/mixed")), Some("m"))).unwrap();
    assert_eq!(tools, ["m.fetch", "m.note"]);
    let refused = refused_of(&engine);
    assert_eq!(refused[0]["tool"], "run");
    assert!(refused[0]["reason"].as_str().unwrap().contains("allow_remote_local_execution"), "{refused}");
    assert!(!marker.exists());
}

#[test]
fn the_host_can_opt_in_to_local_execution() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let server = ManualServer::start(&marker);
    let rt = runtime();
    let config = json!({"discovery": {"allowed_communication_protocols": ["http", "cli"],
        "allow_remote_local_execution": true}});
    let engine = Engine::from_json(config).unwrap();
    let tools = rt.block_on(engine.register_manual(ManualSource::Url(server.url("/mixed")), Some("m"))).unwrap();
    assert_eq!(tools, ["m.fetch", "m.run"]);
    rt.block_on(engine.call_tool("m.run", json!({}), CallOptions::default())).unwrap();
    assert!(marker.exists());
}

#[test]
fn manuals_the_host_gives_itself_are_not_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let rt = runtime();
    let engine = Engine::from_json(json!({})).unwrap();
    let inline: Value = serde_json::from_str(&mixed_manual(1, &marker)).unwrap();
    let tools = rt.block_on(engine.register_manual(ManualSource::Inline(inline), Some("local"))).unwrap();
    assert_eq!(tools, ["local.fetch", "local.run", "local.note"]);
    assert_eq!(refused_of(&engine), Value::Null);
}
