//! `mcp` tools over stdio against a real MCP server built with the official Rust SDK
//! (`examples/mcp_test_server.rs`, which `cargo test` builds next to this test).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use utp_core::{CallOptions, Config, Engine, ErrorCode, ManualSource};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// target/<profile>/examples/mcp_test_server, from target/<profile>/deps/<this test>.
fn server_path() -> String {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples");
    let path = dir.join("mcp_test_server");
    assert!(path.exists(), "{} is missing: cargo test builds the examples", path.display());
    path.display().to_string()
}

fn template(name: &str, servers: Value) -> Value {
    json!({"name": name, "call_template_type": "mcp", "config": {"mcpServers": servers}})
}

fn engine(config: Value) -> Engine {
    Engine::new(Config::from_value(config).unwrap()).unwrap()
}

fn call(rt: &tokio::runtime::Runtime, e: &Engine, name: &str, args: Value) -> utp_core::Result<Value> {
    rt.block_on(e.call_tool(name, args, CallOptions::default()))
}

fn alive(pid: i32) -> bool {
    // A reaped child is gone; a zombie would still answer kill(0).
    unsafe { libc_kill(pid, 0) == 0 }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn tools_register_as_manual_server_tool_and_results_unwrap_like_python_utcp() {
    let rt = runtime();
    let e = engine(json!({}));
    let servers = json!({"calc": {"command": server_path()}});
    let mut tools = rt.block_on(e.register_manual(ManualSource::Inline(template("calc", servers)), None)).unwrap();
    tools.sort();
    assert_eq!(
        tools,
        [
            "calc.calc.add",
            "calc.calc.concat",
            "calc.calc.crash",
            "calc.calc.echo",
            "calc.calc.fail",
            "calc.calc.image",
            "calc.calc.length",
            "calc.calc.multiply",
            "calc.calc.noop",
            "calc.calc.pid",
            "calc.calc.reverse",
            "calc.calc.shout",
            "calc.calc.sleep"
        ]
    );
    let add = e.tool("calc.calc.add").unwrap();
    assert_eq!(add.tool.outputs["properties"]["result"]["type"], "number");
    assert_eq!(e.tool("calc.calc.echo").unwrap().tool.outputs, json!({}), "no outputSchema: still registered");

    assert_eq!(call(&rt, &e, "calc.calc.add", json!({"a": 2, "b": 3})).unwrap(), json!(5.0));
    assert_eq!(call(&rt, &e, "calc.calc.echo", json!({"text": "hi"})).unwrap(), json!("hi"));
    assert_eq!(call(&rt, &e, "calc.calc.echo", json!({"text": "[1, 2]"})).unwrap(), json!([1, 2]));
    let image = call(&rt, &e, "calc.calc.image", json!({})).unwrap();
    assert_eq!(image["mimeType"], "image/png");
    let failed = call(&rt, &e, "calc.calc.fail", json!({})).unwrap_err();
    assert_eq!(failed.code(), ErrorCode::ToolFailed);
    assert!(failed.to_string().contains("the tool broke"), "{failed}");
    // Schema validation runs before the server sees anything.
    let invalid = call(&rt, &e, "calc.calc.add", json!({"a": "two"})).unwrap_err();
    assert_eq!(invalid.code(), ErrorCode::ValidationFailed);
    e.close(Duration::from_secs(1));
}

#[test]
fn calls_share_one_server_process_and_run_concurrently() {
    let rt = runtime();
    let e = engine(json!({}));
    rt.block_on(e.register_manual(ManualSource::Inline(template("m", json!({"s": {"command": server_path()}}))), None))
        .unwrap();
    let pid = call(&rt, &e, "m.s.pid", json!({})).unwrap();
    let results = rt.block_on(async {
        let calls = (0..8).map(|_| e.call_tool("m.s.sleep", json!({"ms": 100}), CallOptions::default()));
        futures_util::future::join_all(calls).await
    });
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|v| v == "slept")), "{results:?}");
    assert_eq!(call(&rt, &e, "m.s.pid", json!({})).unwrap(), pid, "one server for every call");
    let pid = pid.as_i64().unwrap() as i32;
    assert!(alive(pid));
    e.close(Duration::from_secs(1));
    assert!(!alive(pid), "close ends the server and reaps it");
    let after = call(&rt, &e, "m.s.pid", json!({})).unwrap_err();
    assert_eq!(after.code(), ErrorCode::InvalidArgument, "{after}");
}

#[test]
fn a_timed_out_call_leaves_the_server_serving_and_a_crashed_server_restarts() {
    let rt = runtime();
    let e = engine(json!({}));
    rt.block_on(e.register_manual(ManualSource::Inline(template("m", json!({"s": {"command": server_path()}}))), None))
        .unwrap();
    let options = CallOptions { timeout: Some(Duration::from_millis(100)), ..Default::default() };
    let late = rt.block_on(e.call_tool("m.s.sleep", json!({"ms": 5000}), options)).unwrap_err();
    assert_eq!(late.code(), ErrorCode::Timeout);
    let pid = call(&rt, &e, "m.s.pid", json!({})).unwrap();

    let crashed = call(&rt, &e, "m.s.crash", json!({})).unwrap_err();
    assert_eq!(crashed.code(), ErrorCode::Transport, "{crashed}");
    let restarted = call(&rt, &e, "m.s.pid", json!({})).unwrap();
    assert_ne!(restarted, pid, "the next call started the server again");
    e.close(Duration::from_secs(1));
}

#[test]
fn paginated_listings_are_followed_and_the_server_env_is_passed() {
    let rt = runtime();
    let e = engine(json!({}));
    let servers = json!({"paged": {"command": server_path(), "env": {"MCP_TEST_TOOLS_PAGE": "2"}}});
    let tools = rt.block_on(e.register_manual(ManualSource::Inline(template("m", servers)), None)).unwrap();
    assert_eq!(tools.len(), 13, "{tools:?}");
    e.close(Duration::from_secs(1));
}

#[test]
fn servers_that_cannot_start_or_never_answer_fail_registration_naming_the_server() {
    let rt = runtime();
    let e = engine(json!({"calls": {"default_timeout": "500ms"}}));
    let missing = json!({"gone": {"command": "/nonexistent/mcp-server"}});
    let err = rt.block_on(e.register_manual(ManualSource::Inline(template("m", missing)), None)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport);
    assert!(err.to_string().contains("'gone'"), "{err}");

    let silent = json!({"mute": {"command": "sleep", "args": ["30"]}});
    let err = rt.block_on(e.register_manual(ManualSource::Inline(template("m", silent)), None)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(err.to_string().contains("'mute'"), "{err}");
    assert!(e.tools().is_empty(), "a failed registration registers nothing");

    let bad = json!({"name": "m", "call_template_type": "mcp", "config": {"mcpServers": {"s": {"args": []}}}});
    let err = rt.block_on(e.register_manual(ManualSource::Inline(bad), None)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidManual);
    assert!(err.to_string().contains("config.mcpServers.s.command"), "{err}");
    e.close(Duration::from_secs(1));
}

#[test]
fn config_manual_call_templates_register_mcp_servers() {
    let rt = runtime();
    let e = engine(json!({"manual_call_templates": [template("calc", json!({"calc": {"command": server_path()}}))]}));
    let names = rt.block_on(e.register_configured_manuals()).unwrap();
    assert_eq!(names, ["calc"]);
    assert_eq!(call(&rt, &e, "calc.calc.add", json!({"a": 1, "b": 1})).unwrap(), json!(2.0));
    e.close(Duration::from_secs(1));
}

#[test]
fn a_server_writing_garbage_to_stdout_is_a_transport_error_naming_it() {
    let rt = runtime();
    let e = engine(json!({"calls": {"default_timeout": "2s"}}));
    let noisy = json!({"noisy": {"command": "sh", "args": ["-c", "echo 'Server ready!'; echo '{not json'; sleep 30"]}});
    let err = rt.block_on(e.register_manual(ManualSource::Inline(template("m", noisy)), None)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    assert!(err.to_string().contains("'noisy'"), "{err}");
    assert!(e.tools().is_empty());
    e.close(Duration::from_secs(1));
}

#[test]
fn a_server_that_keeps_crashing_is_restarted_with_a_backoff_and_tool_transport_events() {
    let rt = runtime();
    let e = engine(json!({}));
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let handler: utp_core::events::EventHandler = std::sync::Arc::new(move |event| {
        sink.lock().push(event.data.clone());
        Ok(())
    });
    e.subscribe("tool.transport", handler).unwrap();
    rt.block_on(e.register_manual(ManualSource::Inline(template("m", json!({"s": {"command": server_path()}}))), None))
        .unwrap();
    for _ in 0..3 {
        let crashed = call(&rt, &e, "m.s.crash", json!({})).unwrap_err();
        assert_eq!(crashed.code(), ErrorCode::Transport, "{crashed}");
    }
    call(&rt, &e, "m.s.pid", json!({})).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while seen.lock().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = seen.lock();
    let attempts: Vec<_> = seen.iter().map(|d| (d["attempt"].clone(), d["delay_ms"].clone())).collect();
    assert_eq!(attempts, [(json!(1), json!(0)), (json!(2), json!(100)), (json!(3), json!(200))]);
    assert_eq!(seen[0]["manual"], "m");
    assert_eq!(seen[0]["server"], "s");
    assert_eq!(seen[0]["action"], "restart");
    drop(seen);
    e.close(Duration::from_secs(1));
}
