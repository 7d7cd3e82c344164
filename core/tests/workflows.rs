//! Workflows end to end: validation, data between steps, `if`, parallel branches,
//! retries against a real loopback HTTP server (fail N times, hang, 429 with
//! Retry-After), fallbacks for policy denials, breakers, cancel/suspend/resume,
//! approvals and session state.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::Response;
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::Loopback;
use utp_core::workflow::{RunOptions, WorkflowSource};
use utp_core::{Engine, ErrorCode, HistoryFilter, ManualSource, NativeHandler};

/// A loopback server: `/flaky/<key>/<n>` fails with 503 n times per key then answers;
/// `/busy/<key>` answers 429 with Retry-After: 1 once; `/hang` never answers; `/ok` answers.
async fn server() -> Loopback {
    let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    Loopback::start(move |req| {
        let hits = hits.clone();
        let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
        async move { answer(&hits, req.uri().path(), key).await }
    })
    .await
}

async fn answer(
    hits: &Mutex<HashMap<String, usize>>,
    path: &str,
    idempotency_key: Option<String>,
) -> Response<Full<Bytes>> {
    let reply = |status: u16, body: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let count = |key: &str| {
        let mut h = hits.lock();
        let n = h.entry(key.to_string()).or_default();
        *n += 1;
        *n
    };
    match parts.as_slice() {
        ["flaky", key, fails] => {
            let n = count(key);
            if n <= fails.parse::<usize>().unwrap_or(0) {
                reply(503, json!({"error": "try again"}))
            } else {
                reply(200, json!({"count": 7, "attempt": n}))
            }
        }
        ["busy", key] => {
            if count(key) == 1 {
                Response::builder().status(429).header("retry-after", "1").body(Full::new(Bytes::new())).unwrap()
            } else {
                reply(200, json!({"ok": true}))
            }
        }
        ["down"] => reply(500, json!({"error": "down"})),
        ["idem", key] => {
            if count(key) == 1 {
                reply(503, json!({"error": "again"}))
            } else {
                reply(200, json!({"idempotency_key": idempotency_key}))
            }
        }
        ["hang"] => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            reply(200, json!({}))
        }
        _ => reply(200, json!({"ok": true})),
    }
}

fn http_tool(name: &str, url: String) -> Value {
    json!({"name": name, "inputs": {"type": "object", "properties": {"sku": {"type": "string"}}},
           "tool_call_template": {"call_template_type": "http", "http_method": "GET", "url": url}})
}

fn native(f: impl Fn(Value) -> utp_core::Result<Value> + Send + Sync + 'static) -> NativeHandler {
    let f = Arc::new(f);
    Arc::new(move |args| {
        let f = f.clone();
        async move { f(args) }.boxed()
    })
}

/// Shop tools (native): getInventory returns a count, setInventory echoes,
/// queueUpdate records what it queued.
fn shop(config: Value) -> (Engine, Arc<Mutex<Vec<String>>>) {
    let e = Engine::from_json(config).unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let sku = json!({"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]});
    let set = json!({"type": "object", "properties": {"sku": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
                     "required": ["sku", "count"]});
    let l = log.clone();
    e.register_tool(
        "shop.getInventory",
        native(move |a| {
            l.lock().push(format!("get {}", a["sku"].as_str().unwrap_or("")));
            Ok(json!({"sku": a["sku"], "count": 4}))
        }),
        Some(sku.clone()),
        None,
        "",
        vec![],
    )
    .unwrap();
    let l = log.clone();
    e.register_tool(
        "shop.setInventory",
        native(move |a| {
            l.lock().push(format!("set {} {}", a["sku"].as_str().unwrap_or(""), a["count"]));
            Ok(json!({"sku": a["sku"], "count": a["count"]}))
        }),
        Some(set),
        None,
        "",
        vec![],
    )
    .unwrap();
    let l = log.clone();
    e.register_tool(
        "shop.queueUpdate",
        native(move |a| {
            l.lock().push(format!("queue {}", a["sku"].as_str().unwrap_or("")));
            Ok(json!({"queued": true}))
        }),
        Some(sku),
        None,
        "",
        vec![],
    )
    .unwrap();
    (e, log)
}

fn restock() -> Value {
    json!({
        "name": "restock",
        "inputs": {"sku": {"type": "string"}, "extra": {"type": "integer", "default": 100}},
        "steps": [
            {"id": "stock", "tool": "shop.getInventory", "args": {"sku": "${{ inputs.sku }}"}},
            {"id": "update", "tool": "shop.setInventory", "depends_on": ["stock"],
             "if": "steps.stock.output.count < 10",
             "args": {"sku": "${{ inputs.sku }}", "count": "${{ steps.stock.output.count + inputs.extra }}"},
             "on_error": {"fallback": {"tool": "shop.queueUpdate", "args": {"sku": "${{ inputs.sku }}"}}}},
            {"id": "note", "tool": "shop.getInventory", "depends_on": ["update"], "args": {"sku": "note-${{ inputs.sku }}"}}
        ],
        "outputs": {"new_count": "${{ steps.update.output.count }}", "label": "sku ${{ inputs.sku }}"}
    })
}

async fn run(e: &Engine, wf: Value, inputs: Value) -> Value {
    e.run_workflow(WorkflowSource::Definition(wf), inputs, RunOptions::default()).await.unwrap().to_json()
}

fn kinds_for(e: &Engine, execution: &str) -> Vec<String> {
    let filter = HistoryFilter { execution_id: Some(execution.into()), ..HistoryFilter::default() };
    e.history(&filter)
        .iter()
        .map(|ev| format!("{}{}", ev.kind(), ev.step_id.as_deref().map(|s| format!(":{s}")).unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn data_flows_between_steps_with_types_kept() {
    let (e, log) = shop(json!({}));
    let r = run(&e, restock(), json!({"sku": "A1"})).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["outputs"], json!({"new_count": 104, "label": "sku A1"}));
    assert_eq!(r["steps"]["update"]["output"]["count"], 104, "a whole-string expression keeps its number type");
    assert_eq!(r["steps"]["update"]["attempts"], 1);
    assert_eq!(*log.lock(), ["get A1", "set A1 104", "get note-A1"]);
    let id = r["execution_id"].as_str().unwrap();
    let kinds = kinds_for(&e, id);
    assert_eq!(kinds.first().map(String::as_str), Some("workflow.started"));
    assert_eq!(kinds.last().map(String::as_str), Some("workflow.completed"));
    assert!(kinds.contains(&"step.completed:update".to_string()), "{kinds:?}");
    // The record is kept and listed.
    assert_eq!(e.execution(id).unwrap().to_json()["status"], "completed");
    let listed = e.executions(Some("completed"), None).unwrap().iter().map(|r| r.to_json()).collect::<Vec<_>>();
    assert!(listed.iter().any(|x| x["execution_id"] == id && x["steps"]["update"].get("output").is_none()));
    assert_eq!(e.executions(Some("bogus"), None).unwrap_err().code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn false_conditions_skip_the_step_and_its_dependants() {
    let (e, log) = shop(json!({}));
    let mut wf = restock();
    wf["steps"][1]["if"] = json!("steps.stock.output.count > 10");
    let r = run(&e, wf, json!({"sku": "A1"})).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["steps"]["update"]["status"], "skipped");
    assert!(r["steps"]["update"]["note"].as_str().unwrap().contains("condition"));
    assert_eq!(r["steps"]["note"]["status"], "skipped");
    assert!(r["steps"]["note"]["note"].as_str().unwrap().contains("'update'"), "{r}");
    assert_eq!(r["outputs"]["new_count"], Value::Null);
    assert!(r["warnings"][0].as_str().unwrap().contains("outputs.new_count"), "{r}");
    assert_eq!(*log.lock(), ["get A1"]);
}

#[tokio::test]
async fn invalid_definitions_are_refused_before_anything_runs() {
    let (e, log) = shop(json!({}));
    let cases = [
        (json!({"name": "x", "steps": []}), "at least one step"),
        (json!({"name": "x", "steps": [{"id": "a", "tool": "shop.nope"}]}), "no tool named 'shop.nope'"),
        (
            json!({"name": "x", "steps": [{"id": "a", "tool": "shop.getInventory", "args": {"sku": "1"}},
                                       {"id": "a", "tool": "shop.getInventory", "args": {"sku": "1"}}]}),
            "two steps have the id 'a'",
        ),
        (
            json!({"name": "x", "steps": [{"id": "a", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["zz"]}]}),
            "no step has the id 'zz'",
        ),
        (
            json!({"name": "x", "steps": [
            {"id": "a", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["c"]},
            {"id": "b", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["a"]},
            {"id": "c", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["b"]}]}),
            "cycle",
        ),
        (
            json!({"name": "x", "steps": [{"id": "a", "tool": "shop.setInventory", "args": {"sku": "1", "count": -5}}]}),
            "/count",
        ),
        (json!({"name": "x", "steps": [{"id": "a", "tool": "shop.setInventory", "args": {"sku": "1"}}]}), "count"),
        (
            json!({"name": "x", "steps": [{"id": "a", "tool": "shop.getInventory", "args": {"sku": "${{ inputs.sku + }}"}}]}),
            "steps.a.args.sku",
        ),
        (
            json!({"name": "x", "steps": [
            {"id": "a", "tool": "shop.getInventory", "args": {"sku": "1"}},
            {"id": "b", "tool": "shop.getInventory", "args": {"sku": "${{ steps.a.output.sku }}"}}]}),
            "not among the steps it depends on",
        ),
        (
            json!({"name": "x", "steps": [{"id": "a", "tool": "shop.getInventory", "args": {"sku": "1"}, "retry": {"max_attempts": 0}}]}),
            "max_attempts",
        ),
        (
            json!({"name": "x", "steps": [{"id": "a", "tool": "shop.getInventory", "args": {"sku": "1"}, "on_error": "explode"}]}),
            "on_error",
        ),
        (json!({"name": "x", "bogus": 1, "steps": [{"id": "a", "tool": "shop.getInventory"}]}), "bogus"),
    ];
    for (wf, needle) in cases {
        let err =
            e.run_workflow(WorkflowSource::Definition(wf.clone()), json!({}), RunOptions::default()).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ValidationFailed, "{wf}: {err}");
        assert!(err.to_string().contains(needle), "{wf}: expected '{needle}' in: {err}");
    }
    // The cycle is named in order.
    let err = e.workflow(WorkflowSource::Definition(cases_cycle())).unwrap_err().to_string();
    assert!(err.contains("a → b → c → a") || err.contains("b → c → a → b") || err.contains("c → a → b → c"), "{err}");
    // Inputs are checked too.
    let err = e
        .run_workflow(WorkflowSource::Definition(restock()), json!({"sku": 5}), RunOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed, "{err}");
    let err =
        e.run_workflow(WorkflowSource::Definition(restock()), json!({}), RunOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("sku"), "{err}");
    // YAML text and files.
    let yaml = "name: y\nsteps:\n  - id: a\n    tool: shop.getInventory\n    args: {sku: \"${{ inputs.sku }}\"}\ninputs: {sku: {type: string}}\n";
    let r = e
        .run_workflow(WorkflowSource::from_text(yaml), json!({"sku": "Y"}), RunOptions::default())
        .await
        .unwrap()
        .to_json();
    assert_eq!(r["status"], "completed");
    let err = e.workflow(WorkflowSource::from_text("/nonexistent/wf.yaml")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert_eq!(*log.lock(), ["get Y"], "nothing ran for the invalid ones");
}

fn cases_cycle() -> Value {
    json!({"name": "x", "steps": [
        {"id": "a", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["c"]},
        {"id": "b", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["a"]},
        {"id": "c", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["b"]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_runs_its_middle_steps_concurrently() {
    let e = Engine::from_json(json!({})).unwrap();
    let times: Arc<Mutex<HashMap<String, (Instant, Instant)>>> = Arc::default();
    for name in ["a", "b", "c", "d"] {
        let times = times.clone();
        let handler: NativeHandler = Arc::new(move |args| {
            let times = times.clone();
            async move {
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(150)).await;
                times.lock().insert(args["id"].as_str().unwrap_or("").to_string(), (start, Instant::now()));
                Ok(json!({"id": args["id"]}))
            }
            .boxed()
        });
        e.register_tool(&format!("t.{name}"), handler, None, None, "", vec![]).unwrap();
    }
    let wf = json!({"name": "diamond", "steps": [
        {"id": "a", "tool": "t.a", "args": {"id": "a"}},
        {"id": "b", "tool": "t.b", "args": {"id": "b"}, "depends_on": ["a"]},
        {"id": "c", "tool": "t.c", "args": {"id": "c"}, "depends_on": ["a"]},
        {"id": "d", "tool": "t.d", "args": {"id": "${{ steps.b.output.id + steps.c.output.id }}"}, "depends_on": ["b", "c"]}
    ]});
    let r = run(&e, wf, json!({})).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["steps"]["d"]["output"]["id"], "bc");
    {
        let t = times.lock();
        let (b, c, a, d) = (t["b"], t["c"], t["a"], t["bc"]);
        assert!(b.0 < c.1 && c.0 < b.1, "b and c overlap in time");
        assert!(b.0 >= a.1 && c.0 >= a.1, "the middle starts after a");
        assert!(d.0 >= b.1 && d.0 >= c.1, "d starts after both");
    }

    // max_parallel: 1 serialises them.
    times.lock().clear();
    let wf = json!({"name": "serial", "max_parallel": 1, "steps": [
        {"id": "b", "tool": "t.b", "args": {"id": "b"}}, {"id": "c", "tool": "t.c", "args": {"id": "c"}}]});
    run(&e, wf, json!({})).await;
    let t = times.lock();
    assert!(t["b"].1 <= t["c"].0 || t["c"].1 <= t["b"].0, "max_parallel 1 never overlaps");
}

#[tokio::test]
async fn retries_until_success_and_honour_retry_after() {
    let s = server().await;
    let base = format!("http://127.0.0.1:{}", s.port);
    let e = Engine::from_json(json!({})).unwrap();
    e.register_manual(
        ManualSource::Inline(json!({"tools": [
            http_tool("flaky", format!("{base}/flaky/k1/2")),
            http_tool("busy", format!("{base}/busy/k2")),
            http_tool("down", format!("{base}/down")),
        ]})),
        Some("api"),
    )
    .await
    .unwrap();
    let retry = json!({"max_attempts": 4, "initial_delay": "20ms", "factor": 2, "max_delay": "100ms"});
    let wf = json!({"name": "r", "steps": [
        {"id": "flaky", "tool": "api.flaky", "retry": retry},
        {"id": "busy", "tool": "api.busy", "retry": retry}
    ]});
    let started = Instant::now();
    let r = run(&e, wf, json!({})).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["steps"]["flaky"]["attempts"], 3);
    assert_eq!(r["steps"]["flaky"]["output"]["attempt"], 3);
    assert_eq!(r["steps"]["busy"]["attempts"], 2);
    assert!(started.elapsed() >= Duration::from_millis(950), "Retry-After: 1 was honoured ({:?})", started.elapsed());
    let kinds = kinds_for(&e, r["execution_id"].as_str().unwrap());
    assert_eq!(kinds.iter().filter(|k| *k == "step.retrying:flaky").count(), 2, "{kinds:?}");

    // A template that names an idempotency header gets `<execution_id>:<step_id>` on every attempt.
    let mut idem = http_tool("idem", format!("{base}/idem/k3"));
    idem["tool_call_template"]["idempotency_header"] = json!("Idempotency-Key");
    e.register_manual(ManualSource::Inline(json!({"tools": [idem]})), Some("idem")).await.unwrap();
    let wf = json!({"name": "i", "steps": [{"id": "pay", "tool": "idem.idem", "retry": retry}]});
    let r = run(&e, wf, json!({})).await;
    let expected = format!("{}:pay", r["execution_id"].as_str().unwrap());
    assert_eq!(r["steps"]["pay"]["output"]["idempotency_key"], expected.as_str(), "{r}");
    assert_eq!(r["steps"]["pay"]["attempts"], 2);

    // Out of attempts: the step fails with the last error and the run fails.
    let wf = json!({"name": "r2", "steps": [{"id": "down", "tool": "api.down", "retry": {"max_attempts": 2, "initial_delay": "10ms"}}]});
    let r = run(&e, wf, json!({})).await;
    assert_eq!(r["status"], "failed");
    assert_eq!(r["steps"]["down"]["attempts"], 2);
    assert_eq!(r["error"]["code"], "TOOL_FAILED");
}

#[tokio::test]
async fn policy_denials_are_not_retried_and_fall_back() {
    let config = json!({"permissions": {"shop": {"allowed_actions": ["getInventory", "queueUpdate"]}}});
    let (e, log) = shop(config);
    let mut wf = restock();
    wf["steps"][1]["retry"] = json!({"max_attempts": 5, "initial_delay": "10ms"});
    let r = run(&e, wf.clone(), json!({"sku": "A1"})).await;
    assert_eq!(r["status"], "completed", "{r}");
    let update = &r["steps"]["update"];
    assert_eq!(update["status"], "succeeded");
    assert_eq!(update["output"], json!({"queued": true}), "the fallback's result is the step's output");
    assert_eq!(update["attempts"], 2, "one denied attempt (never retried) and the fallback");
    assert!(update["note"].as_str().unwrap().contains("PERMISSION_DENIED"), "{update}");
    assert_eq!(*log.lock(), ["get A1", "queue A1", "get note-A1"]);
    // The denial is audited with the execution and step that made the call.
    let denied = e.history(&HistoryFilter { kind: Some("policy.denied".into()), ..HistoryFilter::default() });
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].execution_id.as_deref(), r["execution_id"].as_str());
    assert_eq!((denied[0].step_id.as_deref(), denied[0].workflow.as_deref()), (Some("update"), Some("restock")));
    let called = e.history(&HistoryFilter { kind: Some("tool.called".into()), ..HistoryFilter::default() });
    assert!(called.iter().all(|ev| ev.execution_id.as_deref() == r["execution_id"].as_str()));

    // on_error: continue records the failure and carries on; fail (default) stops the run.
    wf["steps"][1]["on_error"] = json!("continue");
    let r = run(&e, wf.clone(), json!({"sku": "B"})).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["steps"]["update"]["status"], "failed");
    assert_eq!(r["steps"]["update"]["error"]["code"], "PERMISSION_DENIED");
    assert_eq!(r["steps"]["note"]["status"], "succeeded");
    wf["steps"][1].as_object_mut().unwrap().remove("on_error");
    let r = run(&e, wf, json!({"sku": "C"})).await;
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error"]["code"], "PERMISSION_DENIED");
    assert_eq!(r["steps"]["note"]["status"], "skipped");
}

#[tokio::test]
async fn cancelling_a_hung_step_returns_quickly() {
    let s = server().await;
    let e = Engine::from_json(json!({})).unwrap();
    e.register_manual(
        ManualSource::Inline(json!({"tools": [http_tool("hang", format!("http://127.0.0.1:{}/hang", s.port))]})),
        Some("api"),
    )
    .await
    .unwrap();
    let wf = json!({"name": "h", "steps": [{"id": "hang", "tool": "api.hang", "timeout": "30s"}]});
    let exec = e.start_workflow(WorkflowSource::Definition(wf.clone()), json!({}), RunOptions::default()).unwrap();
    while e.execution(&exec.id).unwrap().to_json()["steps"]["hang"]["status"] != "running" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    assert!(e.cancel(&exec.id).unwrap());
    let r = e.wait_execution(&exec.id).await.unwrap().to_json();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(100), "cancel took {took:?}");
    assert_eq!(r["status"], "cancelled");
    assert_eq!(r["steps"]["hang"]["error"]["code"], "CANCELLED");
    assert!(!e.cancel(&exec.id).unwrap(), "cancelling a finished run is a no-op");
    assert_eq!(e.cancel("exe_nope").unwrap_err().code(), ErrorCode::NotFound);

    // A workflow timeout cancels the running call and fails the run with TIMEOUT.
    let mut wf = wf;
    wf["timeout"] = json!("150ms");
    let started = Instant::now();
    let r = run(&e, wf, json!({})).await;
    assert_eq!((r["status"].as_str(), r["error"]["code"].as_str()), (Some("failed"), Some("TIMEOUT")), "{r}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn suspended_runs_start_no_new_steps_until_resumed() {
    let e = Engine::from_json(json!({})).unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let handler: NativeHandler = Arc::new(move |_| {
        let g = g.clone();
        async move {
            let _ = g.acquire().await.map(|p| p.forget());
            Ok(json!(1))
        }
        .boxed()
    });
    e.register_tool("t.wait", handler, None, None, "", vec![]).unwrap();
    e.register_tool("t.ok", native(|_| Ok(json!(2))), None, None, "", vec![]).unwrap();
    let wf = json!({"name": "s", "steps": [{"id": "first", "tool": "t.wait"}, {"id": "second", "tool": "t.ok", "depends_on": ["first"]}]});
    let exec = e.start_workflow(WorkflowSource::Definition(wf), json!({}), RunOptions::default()).unwrap();
    while e.execution(&exec.id).unwrap().to_json()["steps"]["first"]["status"] != "running" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(e.suspend(&exec.id).unwrap());
    assert_eq!(e.execution(&exec.id).unwrap().to_json()["status"], "suspended");
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = e.execution(&exec.id).unwrap().to_json();
    assert_eq!(
        (r["steps"]["first"]["status"].as_str(), r["steps"]["second"]["status"].as_str()),
        (Some("succeeded"), Some("pending"))
    );
    assert!(e.resume(&exec.id).unwrap());
    let r = e.wait_execution(&exec.id).await.unwrap().to_json();
    assert_eq!(r["status"], "completed");
    let kinds = kinds_for(&e, &exec.id);
    assert!(
        kinds.contains(&"workflow.suspended".to_string()) && kinds.contains(&"workflow.resumed".to_string()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn escalated_steps_wait_for_approval() {
    let (e, log) = shop(json!({"security": {"levels": {"shop.setInventory": "restricted"}}}));
    let exec =
        e.start_workflow(WorkflowSource::Definition(restock()), json!({"sku": "A1"}), RunOptions::default()).unwrap();
    let approval = loop {
        let r = e.execution(&exec.id).unwrap().to_json();
        if r["status"] == "waiting_approval" {
            break r["steps"]["update"]["approval_id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(*log.lock(), ["get A1"]);
    e.approve(&approval, true, None).unwrap();
    let r = e.wait_execution(&exec.id).await.unwrap().to_json();
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["steps"]["update"]["attempts"], 1);
    assert_eq!(*log.lock(), ["get A1", "set A1 104", "get note-A1"]);
}

#[tokio::test]
async fn session_state_is_read_and_written_by_steps() {
    let (e, _) = shop(json!({}));
    let wf = json!({"name": "st", "steps": [
        {"id": "stock", "tool": "shop.getInventory", "args": {"sku": "${{ has(state.last) ? state.last : 'none' }}"},
         "set_state": {"last": "${{ steps.stock.output.sku + '!' }}"}}]});
    let opts = RunOptions { tenant: Some("acme".into()), session: Some("s1".into()), ..RunOptions::default() };
    let r = e.run_workflow(WorkflowSource::Definition(wf.clone()), json!({}), opts.clone()).await.unwrap().to_json();
    assert_eq!(r["steps"]["stock"]["output"]["sku"], "none", "{r}");
    assert_eq!(e.session_state(Some("acme"), Some("s1")), json!({"last": "none!"}));
    let r = e.run_workflow(WorkflowSource::Definition(wf), json!({}), opts).await.unwrap().to_json();
    assert_eq!(r["steps"]["stock"]["output"]["sku"], "none!");
    assert_eq!(r["session_id"], "s1");
    assert_eq!(e.executions(None, Some("s1")).unwrap().len(), 2);
    assert_eq!(e.session_state(Some("other"), Some("s1")), json!({}), "state is per (tenant, session)");
}

#[tokio::test]
async fn breakers_open_after_failures_and_close_after_a_probe() {
    let calls = Arc::new(AtomicUsize::new(0));
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let config =
        json!({"breakers": {"default": {"min_calls": 3, "failure_ratio": 0.5, "window": "10s", "open_for": "200ms"}}});
    let e = Engine::from_json(config).unwrap();
    let (c, h) = (calls.clone(), healthy.clone());
    e.register_tool(
        "t.flaky",
        native(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            if h.load(Ordering::SeqCst) { Ok(json!("ok")) } else { Err(utp_core::Error::tool_failed("boom")) }
        }),
        None,
        None,
        "",
        vec![],
    )
    .unwrap();
    let wf = json!({"name": "b", "steps": [{"id": "x", "tool": "t.flaky"}]});
    for _ in 0..3 {
        assert_eq!(run(&e, wf.clone(), json!({})).await["status"], "failed");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Open: the tool is not called.
    let r = run(&e, wf.clone(), json!({})).await;
    assert!(r["error"]["message"].as_str().unwrap().contains("circuit breaker open"), "{r}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(run(&e, wf.clone(), json!({})).await["status"], "completed", "half-open probe succeeds");
    assert_eq!(run(&e, wf, json!({})).await["status"], "completed");
    let opened = e.history(&HistoryFilter { kind: Some("breaker.*".into()), ..HistoryFilter::default() });
    let kinds: Vec<&str> = opened.iter().map(|ev| ev.kind()).collect();
    assert_eq!(kinds, ["breaker.opened", "breaker.closed"]);
}

#[tokio::test]
async fn intents_route_to_workflows_and_handlers() {
    use utp_core::{IntentContext, IntentTarget};
    let (e, log) = shop(json!({}));
    e.register_intent_workflow("restock", WorkflowSource::Definition(restock())).unwrap();
    let handler: utp_core::IntentHandler = Arc::new(|ctx: IntentContext, params: Value| {
        async move {
            if params["fail"] == true {
                return Err(utp_core::Error::tool_failed("the handler gave up"));
            }
            let seen = ctx.state()["count"].as_i64().unwrap_or(0);
            ctx.set_state("count", json!(seen + 1));
            let stock =
                ctx.engine().call_tool("shop.getInventory", json!({"sku": params["sku"]}), Default::default()).await?;
            Ok(json!({"seen_before": seen, "stock": stock["count"], "execution": ctx.execution_id}))
        }
        .boxed()
    });
    e.register_intent("lookup", IntentTarget::Handler(handler.clone())).unwrap();
    assert_eq!(
        e.register_intent("lookup", IntentTarget::Handler(handler.clone())).unwrap_err().code(),
        ErrorCode::AlreadyExists
    );
    assert_eq!(e.register_intent(" ", IntentTarget::Handler(handler)).unwrap_err().code(), ErrorCode::InvalidArgument);
    assert_eq!(e.intents(), ["lookup", "restock"]);

    let r = e.submit_intent("restock", json!({"sku": "Q"}), Some("acme"), Some("s9")).await.unwrap();
    assert_eq!(
        (r["intent"].as_str(), r["status"].as_str(), r["tenant"].as_str()),
        (Some("restock"), Some("completed"), Some("acme"))
    );
    let r = e.submit_intent("lookup", json!({"sku": "Q"}), Some("acme"), Some("s9")).await.unwrap();
    assert_eq!(
        (r["status"].as_str(), r["output"]["seen_before"].as_i64(), r["output"]["stock"].as_i64()),
        (Some("completed"), Some(0), Some(4))
    );
    assert_eq!(r["output"]["execution"], r["execution_id"]);
    let r = e.submit_intent("lookup", json!({"sku": "Q"}), Some("acme"), Some("s9")).await.unwrap();
    assert_eq!(r["output"]["seen_before"], 1, "state is shared by the session's requests");
    let r = e.submit_intent("lookup", json!({"fail": true}), None, None).await.unwrap();
    assert_eq!((r["status"].as_str(), r["error"]["code"].as_str()), (Some("failed"), Some("TOOL_FAILED")));
    assert_eq!(e.submit_intent("nope", json!({}), None, None).await.unwrap_err().code(), ErrorCode::NotFound);
    let err = e.submit_intent("restock", json!({"sku": 1}), None, None).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    assert!(e.unregister_intent("lookup"));
    assert!(!e.unregister_intent("lookup"));
    assert_eq!(
        log.lock().iter().filter(|l| l.starts_with("get Q")).count(),
        3,
        "one by the workflow, two by the handler"
    );
}
