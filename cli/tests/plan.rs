//! `utp plan` and `utp do` against an OpenAI-protocol server on 127.0.0.1 (written
//! here, answering from a script), and with the offline planner.

// The loopback server shared with core's integration tests; this test uses part of it.
#[allow(dead_code)]
#[path = "../../core/tests/support/blocking.rs"]
mod loopback;

use std::collections::VecDeque;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

const KEY: &str = "sk-cli-test-key";

/// A loopback HTTP/1.1 server: `/v1/chat/completions` answers the scripted model
/// texts in order (the last repeats); `/city` and `/forecast` and the shop paths are tools.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

fn server(script: Vec<String>) -> Server {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let script = Mutex::new(VecDeque::from(script));
    let log = seen.clone();
    let port = loopback::serve(move |request| {
        log.lock().unwrap().push((request.target.clone(), request.body_text()));
        let answer = match request.path() {
            "/v1/chat/completions" => {
                let text = {
                    let mut s = script.lock().unwrap();
                    if s.len() > 1 { s.pop_front() } else { s.front().cloned() }
                };
                json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text.unwrap_or_default()}}],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 7}})
            }
            "/city" => json!({"city": "Paris"}),
            "/forecast" => json!({"temp_c": 21.5}),
            "/inventory" => json!({"count": 3}),
            _ => json!({"ok": true}),
        };
        (200, answer.to_string())
    });
    Server { port, seen }
}

fn utp_in(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_utp")).args(args).current_dir(cwd).output().expect("run utp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Manuals with http tools on the server: shop (getInventory, setInventory) and
/// geo/weather (cityOfIp → city → forecast).
fn manuals(dir: &Path, port: u16) {
    let tool = |name: &str, path: &str, description: &str, inputs: Value, outputs: Value| {
        json!({"name": name, "description": description, "inputs": inputs, "outputs": outputs,
               "tool_call_template": {"call_template_type": "http", "http_method": "GET",
                                      "url": format!("http://127.0.0.1:{port}{path}")}})
    };
    let sku = json!({"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]});
    let set = json!({"type": "object", "properties": {"sku": {"type": "string"}, "count": {"type": "integer"}}, "required": ["sku", "count"]});
    let shop = json!({"tools": [
        tool("getInventory", "/inventory", "Get the stock count of a product", sku, json!({"type": "object", "properties": {"count": {"type": "integer"}}})),
        tool("setInventory", "/set", "Set the stock count of a product", set, json!({}))]});
    std::fs::write(dir.join("shop.utcp.json"), shop.to_string()).unwrap();
    let geo = json!({"tools": [tool("cityOfIp", "/city", "Find which city an IP address is located in",
        json!({"type": "object", "properties": {"ip": {"type": "string"}}, "required": ["ip"]}),
        json!({"type": "object", "properties": {"city": {"type": "string"}}}))]});
    std::fs::write(dir.join("geo.utcp.json"), geo.to_string()).unwrap();
    let weather = json!({"tools": [tool("forecast", "/forecast", "Weather forecast for a city",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        json!({"type": "object", "properties": {"temp_c": {"type": "number"}}}))]});
    std::fs::write(dir.join("weather.utcp.json"), weather.to_string()).unwrap();
}

fn restock() -> Value {
    json!({"name": "restock", "inputs": {"sku": {"type": "string"}},
           "steps": [
             {"id": "stock", "tool": "shop.getInventory", "args": {"sku": "${{ inputs.sku }}"}},
             {"id": "update", "tool": "shop.setInventory", "depends_on": ["stock"],
              "args": {"sku": "${{ inputs.sku }}", "count": "${{ steps.stock.output.count + 100 }}"}}],
           "outputs": {"new_count": "${{ steps.stock.output.count + 100 }}"}})
}

/// A working directory with the manuals and a config naming the model server.
fn setup(s: &Server) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    manuals(&dir.path().join("tools"), s.port);
    let config = json!({
        "planner": {"provider": "openai", "base_url": format!("http://127.0.0.1:{}/v1", s.port), "model": "test-model",
                    "api_key": "${PLANNER_KEY}"},
        "variables": {"PLANNER_KEY": KEY},
        "discovery": {"paths": ["tools"]}
    });
    std::fs::write(dir.path().join("utp.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn plan_prints_the_workflow_as_yaml_or_json() {
    let s = server(vec![restock().to_string()]);
    let dir = setup(&s);
    let (code, out, err) = utp_in(dir.path(), &["plan", "restock a product"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("name: restock") && out.contains("tool: shop.getInventory"), "{out}");
    assert!(out.contains("inputs.sku"), "{out}");
    assert!(err.contains("planned by openai test-model in 1 round(s), 18 tokens"), "{err}");
    let (code, out, err) = utp_in(dir.path(), &["plan", "restock a product", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, restock());
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(_, body)| !body.contains(KEY) && body.contains("shop.setInventory")));
    assert!(!dir.path().join(".utp").exists(), "plan records nothing");
}

#[test]
fn do_plans_shows_and_runs_recorded_in_the_store() {
    let s = server(vec![restock().to_string()]);
    let dir = setup(&s);
    // Without --yes and without a terminal, nothing runs.
    let (code, out, err) = utp_in(dir.path(), &["do", "restock a product", "--input", "sku=A1"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("--yes") && err.contains("name: restock"), "{err}");
    assert!(!s.seen.lock().unwrap().iter().any(|(p, _)| p.starts_with("/inventory")));

    let (code, out, err) = utp_in(dir.path(), &["do", "restock a product", "-i", "sku=A1", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let outputs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outputs, json!({"new_count": 103}));
    assert!(err.contains("tool: shop.setInventory") && err.contains("completed"), "{err}");
    let seen = s.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(p, _)| p.starts_with("/inventory?sku=A1")), "{seen:?}");
    assert!(
        !seen.iter().filter(|(p, _)| p.contains("chat")).any(|(_, b)| b.contains("A1")),
        "input values are not sent"
    );

    let (code, out, _) = utp_in(dir.path(), &["executions", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{out}");
    assert_eq!((list[0]["workflow"].as_str(), list[0]["status"].as_str()), (Some("restock"), Some("completed")));
}

#[test]
fn plan_reports_a_model_that_never_plans_validly() {
    let mut bad = restock();
    bad["steps"][0]["tool"] = "shop.nope".into();
    let s = server(vec![bad.to_string()]);
    let dir = setup(&s);
    let (code, out, err) = utp_in(dir.path(), &["plan", "restock"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("[PLANNER]") && err.contains("shop.nope") && err.contains("3 round(s)"), "{err}");
    assert!(!err.contains(KEY));
}

#[test]
fn offline_planner_plans_and_runs_chains_and_says_when_a_model_is_needed() {
    let s = server(vec![]);
    let dir = tempfile::tempdir().unwrap();
    manuals(dir.path(), s.port);
    let tools = dir.path().to_str().unwrap();
    let (code, out, err) =
        utp_in(dir.path(), &["plan", "weather forecast for the city of an IP address", "--from", tools]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("geo.cityOfIp") && out.contains("weather.forecast"), "{out}");
    assert!(out.contains("steps.cityOfIp.output.city") && out.contains("inputs.ip"), "{out}");
    assert!(err.contains("offline planner"), "{err}");

    let (code, out, err) = utp_in(
        dir.path(),
        &[
            "--db",
            "memory",
            "do",
            "find the city of ip=1.2.3.4 then get the weather forecast",
            "--yes",
            "--from",
            tools,
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let outputs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outputs["result"], json!({"temp_c": 21.5}));

    let (code, _, err) = utp_in(dir.path(), &["plan", "book a flight to Lisbon", "--from", tools]);
    assert_eq!(code, 1);
    assert!(err.contains("[PLANNER]") && err.contains("A model is needed") && err.contains("planner:"), "{err}");
}
