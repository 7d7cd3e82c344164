//! The planner against real HTTP servers on 127.0.0.1 speaking the OpenAI
//! chat-completions and Anthropic messages protocols, answering from scripted
//! transcripts; and the offline planner.

mod support;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::Loopback;
use utp_core::planner::PlanOptions;
use utp_core::workflow::RunOptions;
use utp_core::{Engine, ErrorCode, HistoryFilter, ManualSource, NativeHandler};

const SECRET: &str = "s3cr3t-value-xyz";
const API_KEY: &str = "sk-test-key-123";

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    OpenAi,
    Anthropic,
}

/// One scripted answer.
#[derive(Clone)]
enum Reply {
    /// 200 with this text as the model's message.
    Text(String),
    /// This status, an optional Retry-After, this body.
    Status(u16, Option<&'static str>, Value),
    /// Never answer.
    Hang,
}

/// A request the server got.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    raw: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

struct Llm {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Serves while the test holds it.
    _server: Loopback,
}

impl Llm {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

/// A model server answering from `script` in order (the last answer repeats).
async fn llm(protocol: Protocol, script: Vec<Reply>) -> Llm {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let log = seen.clone();
    let server = Loopback::start(move |req| {
        let (log, script) = (log.clone(), script.clone());
        async move { answer(protocol, req, &log, &script).await }
    })
    .await;
    Llm { port: server.port, seen, _server: server }
}

async fn answer(
    protocol: Protocol,
    req: Request<hyper::body::Incoming>,
    log: &Mutex<Vec<Seen>>,
    script: &Mutex<VecDeque<Reply>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let headers =
        req.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let raw = String::from_utf8_lossy(&bytes).to_string();
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    log.lock().push(Seen { path, headers, body, raw });
    let reply = {
        let mut s = script.lock();
        if s.len() > 1 { s.pop_front() } else { s.front().cloned() }
    };
    let json = |status: u16, body: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    match reply {
        Some(Reply::Text(text)) => match protocol {
            Protocol::OpenAi => json(
                200,
                json!({"id": "chatcmpl-1", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}),
            ),
            Protocol::Anthropic => json(
                200,
                json!({"id": "msg_1", "type": "message", "role": "assistant",
                       "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": 50, "output_tokens": 10}}),
            ),
        },
        Some(Reply::Status(status, retry_after, body)) => {
            let mut r = json(status, body);
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            r
        }
        Some(Reply::Hang) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            json(200, json!({}))
        }
        None => json(500, json!({"error": "no script"})),
    }
}

fn native(f: impl Fn(Value) -> utp_core::Result<Value> + Send + Sync + 'static) -> NativeHandler {
    let f = Arc::new(f);
    Arc::new(move |args| {
        let f = f.clone();
        async move { f(args) }.boxed()
    })
}

/// An engine whose planner talks to `server`; shop tools (native) and a vault tool
/// whose HTTP template carries `${SECRET_TOKEN}`.
async fn engine(protocol: Protocol, server: &Llm, planner: Value, extra: Value) -> Engine {
    let mut section = match protocol {
        Protocol::OpenAi => json!({"provider": "openai", "base_url": format!("http://127.0.0.1:{}/v1", server.port)}),
        Protocol::Anthropic => {
            json!({"provider": "anthropic", "base_url": format!("http://127.0.0.1:{}", server.port)})
        }
    };
    section["model"] = "test-model".into();
    section["api_key"] = "${OPENAI_API_KEY}".into();
    for (k, v) in planner.as_object().cloned().unwrap_or_default() {
        section[k] = v;
    }
    let mut config =
        json!({"planner": section, "variables": {"OPENAI_API_KEY": API_KEY, "vault_SECRET_TOKEN": SECRET}});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        config[k] = v;
    }
    let e = Engine::from_json(config).unwrap();
    shop_tools(&e);
    e.register_manual(
        ManualSource::Inline(json!({"tools": [{
            "name": "readSecret", "description": "Read a secret document from the vault",
            "inputs": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
            "tool_call_template": {"call_template_type": "http", "http_method": "GET",
                "url": "https://vault.example/doc", "headers": {"Authorization": "Bearer ${SECRET_TOKEN}"}}}]})),
        Some("vault"),
    )
    .await
    .unwrap();
    e
}

fn shop_tools(e: &Engine) {
    let sku = json!({"type": "object", "properties": {"sku": {"type": "string", "description": "Stock keeping unit"}},
                     "required": ["sku"]});
    let set = json!({"type": "object", "properties": {"sku": {"type": "string"}, "count": {"type": "integer"}},
                     "required": ["sku", "count"]});
    e.register_tool(
        "shop.getInventory",
        native(|a| Ok(json!({"sku": a["sku"], "count": 3}))),
        Some(sku),
        Some(json!({"type": "object", "properties": {"count": {"type": "integer"}}})),
        "Get the stock count of a product",
        vec!["inventory".into()],
    )
    .unwrap();
    e.register_tool(
        "shop.setInventory",
        native(|a| Ok(json!({"sku": a["sku"], "count": a["count"]}))),
        Some(set),
        None,
        "Set the stock count of a product",
        vec!["inventory".into()],
    )
    .unwrap();
}

fn restock_plan() -> Value {
    json!({
        "name": "restock",
        "inputs": {"sku": {"type": "string"}},
        "steps": [
            {"id": "stock", "tool": "shop.getInventory", "args": {"sku": "${{ inputs.sku }}"}},
            {"id": "update", "tool": "shop.setInventory", "depends_on": ["stock"],
             "args": {"sku": "${{ inputs.sku }}", "count": "${{ steps.stock.output.count + 100 }}"}}
        ],
        "outputs": {"new_count": "${{ steps.update.output.count }}"}
    })
}

fn events_json(e: &Engine) -> String {
    let all = e.history(&HistoryFilter::default());
    serde_json::to_string(&all.iter().map(|ev| ev.to_value()).collect::<Vec<_>>()).unwrap()
}

#[tokio::test]
async fn openai_valid_plan_then_run() {
    let s = llm(Protocol::OpenAi, vec![Reply::Text(restock_plan().to_string())]).await;
    let e = engine(Protocol::OpenAi, &s, json!({}), json!({})).await;
    let plan = e.plan("restock product sku when low", PlanOptions::default()).await.unwrap();
    assert_eq!(plan.rounds, 1);
    assert_eq!((plan.usage.prompt_tokens, plan.usage.completion_tokens), (100, 20));
    assert_eq!(plan.definition["name"], "restock");
    assert_eq!(plan.workflow.steps.len(), 2);
    assert_eq!((plan.provider.as_str(), plan.model.as_str()), ("openai", "test-model"));

    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.header("authorization"), Some(format!("Bearer {API_KEY}").as_str()));
    assert_eq!(req.body["model"], "test-model");
    assert_eq!(req.body["response_format"]["type"], "json_object");
    assert_eq!(req.body["messages"][0]["role"], "system");
    let system = req.body["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("depends_on") && system.contains("${{"), "{system}");
    let user = req.body["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("restock product sku when low"), "{user}");
    assert!(user.contains("shop.getInventory") && user.contains("shop.setInventory"), "{user}");

    // workflow.planned carries the request, provider, model, rounds, usage and definition.
    let planned = e.history(&HistoryFilter { kind: Some("workflow.planned".into()), ..HistoryFilter::default() });
    assert_eq!(planned.len(), 1);
    let d = &planned[0].data;
    assert_eq!(
        (d["provider"].as_str(), d["model"].as_str(), d["rounds"].as_u64()),
        (Some("openai"), Some("test-model"), Some(1))
    );
    assert_eq!(d["usage"], json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}));
    assert_eq!(d["definition"], restock_plan());
    assert_eq!(d["request"], "restock product sku when low");
    assert_eq!(planned[0].workflow.as_deref(), Some("restock"));

    // run_request: plan + run; the record carries the plan.
    let r = e.run_request("restock product sku when low", json!({"sku": "A1"}), RunOptions::default()).await.unwrap();
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["outputs"]["new_count"], 103);
    assert_eq!(r["plan"]["definition"]["name"], "restock");
    assert_eq!(r["plan"]["usage"]["total_tokens"], 120);
    // The caller's inputs are described by name and type, never by value.
    let last = s.seen().pop().unwrap();
    assert!(last.raw.contains("sku (string)"), "{}", last.raw);
    assert!(!last.raw.contains("A1"), "{}", last.raw);
}

#[tokio::test]
async fn openai_json_schema_format_and_fenced_answers() {
    let fenced = format!("Here is the plan:\n```json\n{}\n```\n", restock_plan());
    let s = llm(Protocol::OpenAi, vec![Reply::Text(fenced)]).await;
    let e = engine(Protocol::OpenAi, &s, json!({"response_format": "json_schema"}), json!({})).await;
    let plan = e.plan("restock", PlanOptions::default()).await.unwrap();
    assert_eq!(plan.definition["name"], "restock");
    let body = &s.seen()[0].body;
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["schema"]["required"], json!(["name", "steps"]));
}

#[tokio::test]
async fn a_server_without_response_format_is_asked_again_without_it() {
    let s = llm(
        Protocol::OpenAi,
        vec![
            Reply::Status(400, None, json!({"error": {"message": "Unrecognized request argument: response_format"}})),
            Reply::Text(restock_plan().to_string()),
        ],
    )
    .await;
    let e = engine(Protocol::OpenAi, &s, json!({}), json!({})).await;
    e.plan("restock", PlanOptions::default()).await.unwrap();
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].body.get("response_format").is_some());
    assert!(seen[1].body.get("response_format").is_none());
}

#[tokio::test]
async fn an_invalid_plan_is_repaired_after_feedback() {
    let mut bad = restock_plan();
    bad["steps"][1]["tool"] = "shop.updateStock".into();
    let s = llm(Protocol::OpenAi, vec![Reply::Text(bad.to_string()), Reply::Text(restock_plan().to_string())]).await;
    let e = engine(Protocol::OpenAi, &s, json!({}), json!({})).await;
    let plan = e.plan("restock", PlanOptions::default()).await.unwrap();
    assert_eq!(plan.rounds, 2);
    assert_eq!((plan.usage.prompt_tokens, plan.usage.completion_tokens), (200, 40));
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    let messages = seen[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "system, request, the model's answer, the feedback");
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["content"], bad.to_string());
    assert_eq!(messages[3]["role"], "user");
    let feedback = messages[3]["content"].as_str().unwrap();
    assert!(feedback.contains("steps.update.tool: no tool named 'shop.updateStock' is registered"), "{feedback}");
    let planned = e.history(&HistoryFilter { kind: Some("workflow.planned".into()), ..HistoryFilter::default() });
    assert_eq!(planned[0].data["rounds"], 2);
}

#[tokio::test]
async fn a_model_that_never_plans_validly_is_a_planner_error() {
    let mut bad = restock_plan();
    bad["steps"][0]["tool"] = "shop.nope".into();
    let huge: Vec<Value> = (0..10_000).map(|i| json!({"id": format!("s{i}"), "tool": "shop.getInventory"})).collect();
    let script = vec![
        Reply::Text("I'd be glad to help! First, check the stock.".into()),
        Reply::Text(json!({"name": "big", "steps": huge}).to_string()),
        Reply::Text(format!("{}{}", "{\"a\":".repeat(5000), "}".repeat(5000))),
        Reply::Text(bad.to_string()),
    ];
    let s = llm(Protocol::OpenAi, script).await;
    let e = engine(Protocol::OpenAi, &s, json!({"max_repairs": 3}), json!({})).await;
    let err = e.plan("restock", PlanOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Planner, "{err}");
    let message = err.to_string();
    assert!(message.contains("no tool named 'shop.nope'"), "the last validation errors: {message}");
    assert!(message.contains("4 round(s)"), "{message}");
    let seen = s.seen();
    assert_eq!(seen.len(), 4, "exactly max_repairs + 1 requests");
    let feedback = |i: usize| {
        seen[i].body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string()
    };
    assert!(feedback(1).contains("no JSON"), "{}", feedback(1));
    assert!(feedback(2).contains("at most 1000"), "{}", feedback(2));
    assert!(feedback(3).contains("not valid JSON"), "{}", feedback(3));
    assert!(e.history(&HistoryFilter { kind: Some("workflow.planned".into()), ..HistoryFilter::default() }).is_empty());
}

#[tokio::test]
async fn max_repairs_bounds_the_requests() {
    let mut bad = restock_plan();
    bad["steps"][0]["tool"] = "shop.nope".into();
    let s = llm(Protocol::Anthropic, vec![Reply::Text(bad.to_string())]).await;
    let e = engine(Protocol::Anthropic, &s, json!({"max_repairs": 2}), json!({})).await;
    let err = e.plan("restock", PlanOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Planner);
    assert!(err.to_string().contains("shop.nope"), "{err}");
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn a_model_that_does_not_answer_times_out() {
    let s = llm(Protocol::OpenAi, vec![Reply::Hang]).await;
    let e = engine(Protocol::OpenAi, &s, json!({"timeout": "300ms"}), json!({})).await;
    let started = Instant::now();
    let err = e.plan("restock", PlanOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(err.to_string().contains("planner.timeout"), "{err}");
}

#[tokio::test]
async fn anthropic_429_with_retry_after_then_success() {
    let s = llm(
        Protocol::Anthropic,
        vec![
            Reply::Status(
                429,
                Some("1"),
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
            ),
            Reply::Text(restock_plan().to_string()),
        ],
    )
    .await;
    let e = engine(Protocol::Anthropic, &s, json!({}), json!({})).await;
    let started = Instant::now();
    let plan = e.plan("restock", PlanOptions::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After honoured: {:?}", started.elapsed());
    assert_eq!((plan.provider.as_str(), plan.rounds), ("anthropic", 1));
    assert_eq!((plan.usage.prompt_tokens, plan.usage.completion_tokens), (50, 10));
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    let req = &seen[1];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("x-api-key"), Some(API_KEY));
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert!(req.header("authorization").is_none());
    assert!(req.body["system"].as_str().unwrap().contains("JSON"));
    assert_eq!(req.body["max_tokens"], 4096);
    assert_eq!(req.body["messages"][0]["role"], "user");
}

#[tokio::test]
async fn a_retry_after_beyond_the_timeout_fails_at_once() {
    let s = llm(Protocol::OpenAi, vec![Reply::Status(503, Some("30"), json!({"error": "busy"}))]).await;
    let e = engine(Protocol::OpenAi, &s, json!({"timeout": "2s"}), json!({})).await;
    let started = Instant::now();
    let err = e.plan("restock", PlanOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(s.seen().len(), 1);
}

#[tokio::test]
async fn secrets_never_reach_the_model_events_or_errors() {
    let s = llm(
        Protocol::OpenAi,
        vec![
            Reply::Text(restock_plan().to_string()),
            Reply::Status(401, None, json!({"error": {"message": format!("Incorrect API key provided: {API_KEY}")}})),
        ],
    )
    .await;
    let e = engine(Protocol::OpenAi, &s, json!({}), json!({})).await;
    e.set_session_value(None, Some("s1"), "token_hint", json!(SECRET));
    let options = PlanOptions { session: Some("s1".into()), ..PlanOptions::default() };
    e.plan("read the secret document from the vault", options.clone()).await.unwrap();
    let err = e.plan("read the secret document from the vault", options).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Planner);
    assert!(err.to_string().contains("HTTP 401") && err.to_string().contains("[redacted]"), "{err}");
    assert!(!err.to_string().contains(API_KEY), "{err}");
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    for req in &seen {
        assert!(!req.raw.contains(SECRET), "a secret reached the model: {}", req.raw);
        assert!(!req.raw.contains(API_KEY));
        assert!(!req.raw.contains("vault.example"), "templates are never sent: {}", req.raw);
        assert!(req.raw.contains("vault.readSecret"));
        assert!(req.raw.contains("token_hint (string)"), "session state keys are sent: {}", req.raw);
    }
    let events = events_json(&e);
    assert!(!events.contains(SECRET) && !events.contains(API_KEY), "{events}");
}

#[tokio::test]
async fn a_forbidden_tool_is_planned_and_denied_visibly_at_run_time() {
    let s = llm(Protocol::OpenAi, vec![Reply::Text(restock_plan().to_string())]).await;
    let permissions = json!({"permissions": {"shop": {"allowed_actions": ["getInventory"]}}});
    let e = engine(Protocol::OpenAi, &s, json!({}), permissions).await;
    let plan = e.plan("restock", PlanOptions::default()).await.unwrap();
    assert_eq!(plan.definition["steps"][1]["tool"], "shop.setInventory", "the plan is produced");
    let r = e.run_request("restock", json!({"sku": "A1"}), RunOptions::default()).await.unwrap();
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["steps"]["stock"]["status"], "succeeded");
    assert_eq!(r["steps"]["update"]["status"], "failed");
    assert_eq!(r["steps"]["update"]["error"]["code"], "PERMISSION_DENIED");
    let denied = e.history(&HistoryFilter { kind: Some("policy.denied".into()), ..HistoryFilter::default() });
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].tool.as_deref(), Some("shop.setInventory"));
    assert_eq!(denied[0].step_id.as_deref(), Some("update"));
}

#[tokio::test]
async fn plain_http_to_a_remote_model_is_refused() {
    let e = Engine::from_json(
        json!({"planner": {"provider": "openai", "model": "m", "base_url": "http://models.example/v1"}}),
    )
    .unwrap();
    shop_tools(&e);
    let err = e.plan("restock", PlanOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security, "{err}");
    let e = Engine::from_json(
        json!({"planner": {"provider": "openai", "model": "m", "api_key": "${UTP_PLANNER_TEST_MISSING}"}}),
    )
    .unwrap();
    shop_tools(&e);
    let err = e.plan("restock", PlanOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Planner);
    assert!(err.to_string().contains("UTP_PLANNER_TEST_MISSING"), "{err}");
}

/// geo.cityOfIp (ip → city) and weather.forecast (city → temp_c): native tools.
fn chain_engine() -> Engine {
    let e = Engine::from_json(json!({})).unwrap();
    e.register_tool(
        "geo.cityOfIp",
        native(|a| Ok(json!({"city": if a["ip"] == "8.8.8.8" { "Mountain View" } else { "Paris" }}))),
        Some(json!({"type": "object", "properties": {"ip": {"type": "string", "description": "IPv4 address"}}, "required": ["ip"]})),
        Some(json!({"type": "object", "properties": {"city": {"type": "string"}}})),
        "Find which city an IP address is located in",
        vec![],
    )
    .unwrap();
    e.register_tool(
        "weather.forecast",
        native(|a| Ok(json!({"city": a["city"], "temp_c": 21.5}))),
        Some(json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]})),
        Some(json!({"type": "object", "properties": {"temp_c": {"type": "number"}}})),
        "Weather forecast for a city",
        vec!["weather".into()],
    )
    .unwrap();
    e.register_tool(
        "mail.send",
        native(|_| Ok(json!({"sent": true}))),
        Some(json!({"type": "object", "properties": {"to": {"type": "string"}, "body": {"type": "string"}}, "required": ["to", "body"]})),
        None,
        "Send an email",
        vec![],
    )
    .unwrap();
    e
}

#[tokio::test]
async fn offline_planner_chains_tools_by_schema() {
    let e = chain_engine();
    // One clause: the goal (forecast) needs `city`, which the IP lookup produces.
    let plan = e.plan("weather forecast for the city of an IP address", PlanOptions::default()).await.unwrap();
    assert_eq!((plan.provider.as_str(), plan.rounds), ("offline", 0));
    assert_eq!(plan.usage, Default::default());
    let steps = plan.definition["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{}", plan.definition);
    assert_eq!(steps[0]["tool"], "geo.cityOfIp");
    assert_eq!(steps[0]["args"]["ip"], "${{ inputs.ip }}");
    assert_eq!(steps[1]["tool"], "weather.forecast");
    assert_eq!(steps[1]["args"], json!({"city": "${{ steps.cityOfIp.output.city }}"}));
    assert_eq!(steps[1]["depends_on"], json!(["cityOfIp"]));
    assert_eq!(plan.definition["inputs"]["ip"]["type"], "string");
    let r = e
        .run_workflow(
            utp_core::workflow::WorkflowSource::Compiled(plan.workflow.clone()),
            json!({"ip": "8.8.8.8"}),
            RunOptions::default(),
        )
        .await
        .unwrap()
        .to_json();
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["outputs"]["result"]["city"], "Mountain View");

    // Clauses with "then", and a value written in the request.
    let plan =
        e.plan("find the city of ip=1.2.3.4 then get the weather forecast", PlanOptions::default()).await.unwrap();
    let steps = plan.definition["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{}", plan.definition);
    assert_eq!(steps[0]["args"]["ip"], "1.2.3.4");
    assert!(plan.definition.get("inputs").is_none(), "{}", plan.definition);
    let r = e
        .run_request("find the city of ip=1.2.3.4 then get the weather forecast", json!({}), RunOptions::default())
        .await
        .unwrap();
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["outputs"]["result"], json!({"city": "Paris", "temp_c": 21.5}));
    assert_eq!(r["plan"]["provider"], "offline");
    let planned = e.history(&HistoryFilter { kind: Some("workflow.planned".into()), ..HistoryFilter::default() });
    assert_eq!(planned.len(), 3);
    assert_eq!(planned[0].data["provider"], "offline");
}

#[tokio::test]
async fn offline_planner_says_plainly_when_a_model_is_needed() {
    let e = chain_engine();
    let err = e.plan("book a flight to Lisbon", PlanOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Planner);
    let message = err.to_string();
    assert!(message.contains("A model is needed") && message.contains("planner:"), "{message}");
    assert!(message.contains("book a flight to Lisbon"), "{message}");
    let empty = Engine::from_json(json!({"planner": {"provider": "offline"}})).unwrap();
    let err = empty.plan("weather", PlanOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Planner);
    assert!(err.to_string().contains("no tools are registered"), "{err}");
    assert_eq!(e.plan("  ", PlanOptions::default()).await.unwrap_err().code(), ErrorCode::InvalidArgument);
}

/// The bindings run these futures on multi-thread runtimes: they must stay `Send`.
#[test]
fn plan_futures_are_send() {
    fn assert_send<T: Send>(_: T) {}
    let e = Engine::from_json(json!({})).unwrap();
    assert_send(e.plan("x", PlanOptions::default()));
    assert_send(e.run_request("x", json!({}), RunOptions::default()));
}
