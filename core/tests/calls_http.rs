//! call_tool over http, sse and streamable_http against a real HTTP server on
//! 127.0.0.1 that the tests start and stop.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};
use support::Loopback;
use utp_core::{CallOptions, CallThread, Engine, ErrorCode, ManualSource};

#[derive(Default)]
struct State {
    tokens_issued: AtomicUsize,
    port: AtomicUsize,
}

struct Server {
    loopback: Loopback,
    port: u16,
    state: Arc<State>,
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", content_type).body(Full::new(body.into())).unwrap()
}

fn redirect(status: u16, to: &str) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("location", to).body(Full::new(Bytes::new())).unwrap()
}

async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: serde_json::Map<String, Value> =
        req.headers().iter().map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("")))).collect();
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let port = state.port.load(Ordering::SeqCst);
    let echo = || {
        let body_text = String::from_utf8_lossy(&body).to_string();
        reply(
            200,
            "application/json",
            json!({"method": method, "path": path, "query": query, "headers": headers,
                   "content_type": content_type, "body": body_text})
            .to_string(),
        )
    };
    match path.as_str() {
        "/text" => reply(200, "text/plain; charset=utf-8", "hello text"),
        "/fail" => reply(500, "text/plain", "internal kaboom"),
        "/busy" => Response::builder().status(429).header("retry-after", "7").body(Full::new(Bytes::new())).unwrap(),
        "/busy-date" => Response::builder()
            .status(503)
            .header("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        "/missing" => reply(404, "application/json", "{\"error\": \"no such thing\"}"),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            echo()
        }
        "/redirect" => redirect(302, "/echo/after"),
        "/redirect-307" => redirect(307, "/echo/after307"),
        // Same server, other origin (host name differs): credentials must not follow.
        "/redirect-cross" => redirect(302, &format!("http://localhost:{port}/echo/cross")),
        "/redirect-private" => redirect(302, "http://10.1.2.3/x"),
        "/redirect-loop" => redirect(302, "/redirect-loop"),
        "/token" => {
            let form = String::from_utf8_lossy(&body).to_string();
            if form.contains("client_secret=s3cret") && form.contains("grant_type=client_credentials") {
                let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
                reply(
                    200,
                    "application/json",
                    json!({"access_token": format!("tok-{n}"), "expires_in": 3600, "token_type": "bearer"}).to_string(),
                )
            } else {
                reply(401, "application/json", "{\"error\": \"invalid_client\"}")
            }
        }
        // The first token issued is "revoked": 401 once, then the fresh one works.
        "/protected" => {
            if auth.starts_with("Bearer tok-") && auth != "Bearer tok-1" {
                reply(200, "application/json", json!({"ok": true, "auth": auth}).to_string())
            } else {
                reply(401, "application/json", "{\"error\": \"expired\"}")
            }
        }
        "/sse" => reply(
            200,
            "text/event-stream",
            "event: tick\ndata: {\"n\": 1}\n\n: comment\n\nevent: other\ndata: skip me\n\nevent: tick\r\ndata: {\"n\": 2}\r\n\r\ndata: plain text\n\n",
        ),
        "/sse-big" => reply(200, "text/event-stream", format!("data: {}\n\n", "x".repeat(3000))),
        "/sse-wrong-type" => reply(200, "application/json", "{}"),
        "/ndjson" => reply(200, "application/x-ndjson", "{\"a\": 1}\n\n{\"a\": 2}\n{\"a\": 3}"),
        "/ndjson-bad" => reply(200, "application/x-ndjson", "{\"a\": 1}\nnot json\n"),
        "/stream-json" => reply(200, "application/json", "{\"whole\": true}"),
        "/binary" => reply(200, "application/octet-stream", vec![0u8, 159, 146, 150]),
        _ => echo(),
    }
}

async fn server() -> Server {
    let state = Arc::new(State::default());
    let st = state.clone();
    let loopback = Loopback::start(move |req| handle(st.clone(), req)).await;
    // Set before any request: the test only calls once it has the port.
    state.port.store(loopback.port as usize, Ordering::SeqCst);
    Server { port: loopback.port, loopback, state }
}

async fn engine_with(config: Value, tools: Value) -> Engine {
    let e = Engine::from_json(config).unwrap();
    e.register_manual(ManualSource::Inline(json!({"name": "api", "tools": tools})), None).await.unwrap();
    e
}

fn http_tool(name: &str, template: Value) -> Value {
    let mut tpl = json!({"call_template_type": "http"});
    tpl.as_object_mut().unwrap().extend(template.as_object().unwrap().clone());
    json!({"name": name, "inputs": {"type": "object"}, "tool_call_template": tpl})
}

async fn call(e: &Engine, name: &str, args: Value) -> utp_core::Result<Value> {
    e.call_tool(name, args, CallOptions::default()).await
}

#[tokio::test]
async fn http_requests_map_arguments() {
    let s = server().await;
    let base = format!("http://127.0.0.1:{}", s.port);
    let e = engine_with(
        json!({"variables": {"api_TOKEN": "var-secret"}}),
        json!([
            http_tool("get", json!({"url": format!("{base}/items/{{id}}"), "header_fields": ["X-Trace"],
                "headers": {"X-Fixed": "Bearer ${TOKEN}"}})),
            http_tool("styled", json!({"url": format!("{base}/styled"),
                "x-utp-parameters": {"ids": {"in": "query", "explode": false}, "filter": {"in": "query", "style": "deepObject"},
                                      "session": {"in": "cookie"}, "X-Req": {"in": "header"}}})),
            http_tool("post", json!({"url": format!("{base}/things"), "http_method": "POST"})),
            http_tool("form", json!({"url": format!("{base}/form"), "http_method": "POST",
                "content_type": "application/x-www-form-urlencoded", "body_field": "payload"})),
            http_tool("multi", json!({"url": format!("{base}/multi"), "http_method": "POST", "content_type": "multipart/form-data"})),
            http_tool("text", json!({"url": format!("{base}/text")})),
            http_tool("binary", json!({"url": format!("{base}/binary")}))
        ]),
    )
    .await;
    let r = call(
        &e,
        "api.get",
        json!({"id": "a/b c", "X-Trace": "t1", "q": "x y", "flag": true, "tags": ["a", "b"], "none": null}),
    )
    .await
    .unwrap();
    assert_eq!(r["method"], "GET");
    assert_eq!(r["path"], "/items/a%2Fb%20c");
    assert_eq!(r["query"], "q=x+y&flag=true&tags=a&tags=b");
    assert_eq!(r["headers"]["x-trace"], "t1");
    assert_eq!(r["headers"]["x-fixed"], "Bearer var-secret");

    let r = call(&e, "api.styled", json!({"ids": [1, 2], "filter": {"a": 1}, "session": "s1", "X-Req": "r"}))
        .await
        .unwrap();
    assert_eq!(r["query"], "ids=1%2C2&filter%5Ba%5D=1");
    assert_eq!(r["headers"]["cookie"], "session=s1");
    assert_eq!(r["headers"]["x-req"], "r");

    let r = call(&e, "api.post", json!({"body": {"name": "n", "n": 1}, "extra": 5})).await.unwrap();
    assert_eq!(r["method"], "POST");
    assert_eq!(r["content_type"], "application/json");
    assert_eq!(serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap(), json!({"name": "n", "n": 1}));
    assert_eq!(r["query"], "extra=5");

    let r = call(&e, "api.form", json!({"payload": {"a": "1 2", "b": true}})).await.unwrap();
    assert_eq!(r["body"], "a=1+2&b=true");
    let r = call(&e, "api.multi", json!({"body": {"field": "value"}})).await.unwrap();
    assert!(r["content_type"].as_str().unwrap().starts_with("multipart/form-data; boundary="));
    assert!(r["body"].as_str().unwrap().contains("name=\"field\"\r\n\r\nvalue"));

    assert_eq!(call(&e, "api.text", json!({})).await.unwrap(), json!("hello text"));
    assert_eq!(call(&e, "api.binary", json!({})).await.unwrap()["base64"], "AJ+Slg==");

    let err = call(&e, "api.get", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    assert!(err.to_string().contains("'id'"), "{err}");
    let err = call(&e, "api.get", json!({"id": 1, "X-Trace": "a\nb"})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
}

#[tokio::test]
async fn http_errors_carry_status_and_excerpt_never_secrets() {
    let s = server().await;
    let base = format!("http://127.0.0.1:{}", s.port);
    let e = engine_with(
        json!({"variables": {"api_KEY": "sk-very-secret"}, "calls": {"default_timeout": "300ms"}}),
        json!([
            http_tool(
                "fail",
                json!({"url": format!("{base}/fail"),
                "auth": {"auth_type": "api_key", "api_key": "${KEY}", "var_name": "key", "location": "query"}})
            ),
            http_tool("missing", json!({"url": format!("{base}/missing")})),
            http_tool("busy", json!({"url": format!("{base}/busy")})),
            http_tool("busy_date", json!({"url": format!("{base}/busy-date")})),
            http_tool("slow", json!({"url": format!("{base}/slow")})),
            http_tool("closed", json!({"url": "http://127.0.0.1:1/nothing"})),
            http_tool("plain", json!({"url": "http://example.com/x"})),
            http_tool("meta", json!({"url": "https://169.254.169.254/latest/meta-data"})),
            http_tool("private_name", json!({"url": "https://10.0.0.7/x"}))
        ]),
    )
    .await;
    let err = call(&e, "api.fail", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed);
    assert_eq!(err.http_status(), Some(500));
    let msg = err.to_string();
    assert!(msg.contains("internal kaboom") && msg.contains("500"), "{msg}");
    assert!(!msg.contains("sk-very-secret"), "secret leaked: {msg}");
    assert_eq!(err.retry_after(), None);
    let err = call(&e, "api.missing", json!({})).await.unwrap_err();
    assert_eq!(err.http_status(), Some(404));
    assert!(err.to_string().contains("no such thing"));
    // Retry-After is kept for the executor's retries: delta-seconds, or an HTTP date (past → 0).
    let err = call(&e, "api.busy", json!({})).await.unwrap_err();
    assert_eq!((err.http_status(), err.retry_after()), (Some(429), Some(Duration::from_secs(7))));
    let err = call(&e, "api.busy_date", json!({})).await.unwrap_err();
    assert_eq!((err.http_status(), err.retry_after()), (Some(503), Some(Duration::ZERO)));
    assert_eq!(call(&e, "api.slow", json!({})).await.unwrap_err().code(), ErrorCode::Timeout);
    assert_eq!(call(&e, "api.closed", json!({})).await.unwrap_err().code(), ErrorCode::Transport);
    for t in ["api.plain", "api.meta", "api.private_name"] {
        assert_eq!(call(&e, t, json!({})).await.unwrap_err().code(), ErrorCode::Security, "{t}");
    }
}

#[tokio::test]
async fn redirects_are_rechecked_and_drop_credentials_across_origins() {
    let s = server().await;
    let base = format!("http://127.0.0.1:{}", s.port);
    let auth = json!({"auth_type": "api_key", "api_key": "k-123", "var_name": "X-Api-Key", "location": "header"});
    let e = engine_with(
        json!({}),
        json!([
            http_tool("same", json!({"url": format!("{base}/redirect"), "auth": auth})),
            http_tool("keep", json!({"url": format!("{base}/redirect-307"), "http_method": "POST", "auth": auth})),
            http_tool(
                "cross",
                json!({"url": format!("{base}/redirect-cross"), "auth": auth,
                "headers": {"X-Custom": "c"}})
            ),
            http_tool("private", json!({"url": format!("{base}/redirect-private")})),
            http_tool("loop", json!({"url": format!("{base}/redirect-loop")}))
        ]),
    )
    .await;
    let r = call(&e, "api.same", json!({})).await.unwrap();
    assert_eq!((r["path"].as_str(), r["headers"]["x-api-key"].as_str()), (Some("/echo/after"), Some("k-123")));
    let r = call(&e, "api.keep", json!({"body": {"x": 1}})).await.unwrap();
    assert_eq!((r["method"].as_str(), r["body"].as_str()), (Some("POST"), Some("{\"x\":1}")));
    let r = call(&e, "api.cross", json!({})).await.unwrap();
    assert_eq!(r["path"], "/echo/cross");
    assert!(r["headers"].get("x-api-key").is_none(), "credential crossed origins: {r}");
    assert!(r["headers"].get("x-custom").is_none(), "template header crossed origins: {r}");
    assert_eq!(call(&e, "api.private", json!({})).await.unwrap_err().code(), ErrorCode::Security);
    let err = call(&e, "api.loop", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("redirects"), "{err}");
}

/// Two loopback ports are two origins. Origin A only redirects; origin B records every
/// request that reaches it. A body (a tool's payload, an OAuth2 client secret) and the
/// credentials never reach B: 307/308 with a body are refused, 303 becomes a bare GET.
#[tokio::test]
async fn redirects_never_carry_a_body_or_a_secret_to_another_origin() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let b = Loopback::start(move |req: Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let line = format!("{} {} key={}", req.method(), req.uri().path(), req.headers().contains_key("x-api-key"));
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            log.lock().unwrap().push(format!("{line} body={}", String::from_utf8_lossy(&body)));
            reply(200, "application/json", json!({"reached": line}).to_string())
        }
    })
    .await;
    let to = b.url("");
    let a = Loopback::start(move |req: Request<hyper::body::Incoming>| {
        let to = to.clone();
        async move {
            match req.uri().path() {
                "/token-307" => redirect(307, &format!("{to}/token")),
                "/post-308" => redirect(308, &format!("{to}/post")),
                "/post-303" => redirect(303, &format!("{to}/after303")),
                "/get-307" => redirect(307, &format!("{to}/get")),
                _ => reply(404, "text/plain", "no"),
            }
        }
    })
    .await;
    let key = json!({"auth_type": "api_key", "api_key": "k-123", "var_name": "X-Api-Key", "location": "header"});
    let e = engine_with(
        json!({}),
        json!([
            http_tool("oauth", json!({"url": a.url("/anything"),
                "auth": {"auth_type": "oauth2", "token_url": a.url("/token-307"), "client_id": "id", "client_secret": "s3cret"}})),
            http_tool("post308", json!({"url": a.url("/post-308"), "http_method": "POST", "auth": key})),
            http_tool("post303", json!({"url": a.url("/post-303"), "http_method": "POST", "auth": key})),
            http_tool("get307", json!({"url": a.url("/get-307"), "auth": key}))
        ]),
    )
    .await;
    let err = call(&e, "api.oauth", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security, "{err}");
    assert!(err.to_string().contains("307 redirect to another origin"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    let err = call(&e, "api.post308", json!({"body": {"card": "4111"}})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security, "{err}");
    let r = call(&e, "api.post303", json!({"body": {"card": "4111"}})).await.unwrap();
    assert_eq!(r["reached"], "GET /after303 key=false");
    let r = call(&e, "api.get307", json!({})).await.unwrap();
    assert_eq!(r["reached"], "GET /get key=false");
    assert_eq!(*seen.lock().unwrap(), ["GET /after303 key=false body=", "GET /get key=false body="]);
}

#[tokio::test]
async fn auth_basic_and_oauth2_with_retry_on_401() {
    let s = server().await;
    let base = format!("http://127.0.0.1:{}", s.port);
    let e = engine_with(
        json!({"variables": {"api_SECRET": "s3cret"}}),
        json!([
            http_tool("basic", json!({"url": format!("{base}/echo"), "auth": {"auth_type": "basic", "username": "u", "password": "p"}})),
            http_tool("cookie", json!({"url": format!("{base}/echo"), "auth": {"auth_type": "api_key", "api_key": "c1", "var_name": "sid", "location": "cookie"}})),
            http_tool("oauth", json!({"url": format!("{base}/protected"),
                "auth": {"auth_type": "oauth2", "token_url": format!("{base}/token"), "client_id": "id", "client_secret": "${SECRET}"}})),
            http_tool("oauth_bad", json!({"url": format!("{base}/protected"),
                "auth": {"auth_type": "oauth2", "token_url": format!("{base}/token"), "client_id": "id", "client_secret": "wrong"}}))
        ]),
    )
    .await;
    let r = call(&e, "api.basic", json!({})).await.unwrap();
    assert_eq!(r["headers"]["authorization"], "Basic dTpw");
    let r = call(&e, "api.cookie", json!({})).await.unwrap();
    assert_eq!(r["headers"]["cookie"], "sid=c1");
    // tok-1 is refused with 401: one retry with a fresh token succeeds.
    let r = call(&e, "api.oauth", json!({})).await.unwrap();
    assert_eq!(r["auth"], "Bearer tok-2");
    assert_eq!(s.state.tokens_issued.load(Ordering::SeqCst), 2);
    // The cached token is reused.
    call(&e, "api.oauth", json!({})).await.unwrap();
    assert_eq!(s.state.tokens_issued.load(Ordering::SeqCst), 2);
    let err = call(&e, "api.oauth_bad", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed);
    assert!(!err.to_string().contains("wrong"), "{err}");
}

fn stream_tool(name: &str, ty: &str, template: Value) -> Value {
    let mut tpl = json!({"call_template_type": ty});
    tpl.as_object_mut().unwrap().extend(template.as_object().unwrap().clone());
    json!({"name": name, "tool_call_template": tpl})
}

#[tokio::test]
async fn sse_and_streamable_http() {
    let s = server().await;
    let base = format!("http://127.0.0.1:{}", s.port);
    let e = engine_with(
        json!({"calls": {"max_event_size": 1024}}),
        json!([
            stream_tool("all", "sse", json!({"url": format!("{base}/sse")})),
            stream_tool("ticks", "sse", json!({"url": format!("{base}/sse"), "event_type": "tick"})),
            stream_tool("big", "sse", json!({"url": format!("{base}/sse-big")})),
            stream_tool("wrong", "sse", json!({"url": format!("{base}/sse-wrong-type")})),
            stream_tool("failing", "sse", json!({"url": format!("{base}/fail")})),
            stream_tool("redirected", "sse", json!({"url": format!("{base}/redirect")})),
            stream_tool("nd", "streamable_http", json!({"url": format!("{base}/ndjson")})),
            stream_tool("nd_bad", "streamable_http", json!({"url": format!("{base}/ndjson-bad")})),
            stream_tool("whole", "streamable_http", json!({"url": format!("{base}/stream-json")})),
            stream_tool("txt", "streamable_http", json!({"url": format!("{base}/text")})),
            stream_tool("sse_via_stream", "streamable_http", json!({"url": format!("{base}/sse")}))
        ]),
    )
    .await;
    assert_eq!(call(&e, "api.all", json!({})).await.unwrap(), json!([{"n": 1}, "skip me", {"n": 2}, "plain text"]));
    assert_eq!(call(&e, "api.ticks", json!({})).await.unwrap(), json!([{"n": 1}, {"n": 2}]));
    let mut stream = e.call_tool_stream("api.ticks", json!({}), CallOptions::default()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), json!({"n": 1}));
    assert_eq!(stream.next().await.unwrap().unwrap(), json!({"n": 2}));
    assert!(stream.next().await.is_none());
    let err = call(&e, "api.big", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("1024 byte cap"), "{err}");
    assert_eq!(call(&e, "api.wrong", json!({})).await.unwrap_err().code(), ErrorCode::Transport);
    assert_eq!(call(&e, "api.failing", json!({})).await.unwrap_err().http_status(), Some(500));
    assert_eq!(call(&e, "api.redirected", json!({})).await.unwrap_err().code(), ErrorCode::Transport);

    assert_eq!(call(&e, "api.nd", json!({})).await.unwrap(), json!([{"a": 1}, {"a": 2}, {"a": 3}]));
    let items: Vec<_> = e.call_tool_stream("api.nd", json!({}), CallOptions::default()).await.unwrap().collect().await;
    assert_eq!(items.len(), 3);
    assert_eq!(call(&e, "api.nd_bad", json!({})).await.unwrap_err().code(), ErrorCode::Transport);
    assert_eq!(call(&e, "api.whole", json!({})).await.unwrap(), json!({"whole": true}));
    assert_eq!(call(&e, "api.txt", json!({})).await.unwrap(), json!(["hello text"]));
    assert_eq!(
        call(&e, "api.sse_via_stream", json!({})).await.unwrap(),
        json!([{"n": 1}, "skip me", {"n": 2}, "plain text"])
    );

    // A non-streaming tool streams its one result.
    let e2 = engine_with(json!({}), json!([http_tool("t", json!({"url": format!("{base}/text")}))])).await;
    let items: Vec<_> = e2.call_tool_stream("api.t", json!({}), CallOptions::default()).await.unwrap().collect().await;
    assert_eq!(items.len(), 1);
}

#[tokio::test]
async fn openapi_tools_are_called_with_their_styles() {
    let s = server().await;
    let spec = json!({
        "openapi": "3.0.0", "info": {"title": "pets", "version": "1"},
        "servers": [{"url": format!("http://127.0.0.1:{}", s.port)}],
        "paths": {"/pets/{petId}": {"get": {"operationId": "getPet", "parameters": [
            {"name": "petId", "in": "path", "required": true, "schema": {"type": "integer"}},
            {"name": "fields", "in": "query", "style": "form", "explode": false, "schema": {"type": "array", "items": {"type": "string"}}},
            {"name": "verbose", "in": "query", "schema": {"type": "boolean"}}
        ], "responses": {"200": {"description": "ok"}}}}}
    });
    let e = Engine::from_json(json!({})).unwrap();
    e.register_manual(ManualSource::Inline(spec), None).await.unwrap();
    let r = call(&e, "pets.getPet", json!({"petId": 7, "fields": ["a", "b"], "verbose": false})).await.unwrap();
    assert_eq!(r["path"], "/pets/7");
    assert_eq!(r["query"], "fields=a%2Cb&verbose=false");
    let err = call(&e, "pets.getPet", json!({"petId": "seven"})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    assert!(err.to_string().contains("/petId"), "{err}");
}

/// `api.get` (the echo) and `api.slow` (answers after 10 s) on the server at `port`.
fn get_and_slow(port: u16) -> Value {
    json!([
        http_tool("get", json!({"url": format!("http://127.0.0.1:{port}/echo")})),
        http_tool("slow", json!({"url": format!("http://127.0.0.1:{port}/slow")}))
    ])
}

#[test]
fn calls_driven_on_the_calling_thread_use_its_runtime_and_a_client_per_engine() {
    // The server runs on a runtime of its own; the test thread runs none.
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let srv = server_rt.block_on(server());
    let tools = get_and_slow(srv.port);
    let make = || server_rt.block_on(engine_with(json!({}), tools.clone()));
    let (a, b) = (make(), make());
    let here = |e: &Engine, name: &str, args: Value, options: CallOptions| {
        e.block_on_here(e.call_tool(name, args, options)).expect("this thread runs no runtime")
    };
    for i in 0..5 {
        let got = here(&a, "api.get", json!({"i": i}), CallOptions::default()).unwrap();
        assert_eq!(got["query"], format!("i={i}"));
        assert_eq!(here(&b, "api.get", json!({"j": i}), CallOptions::default()).unwrap()["query"], format!("j={i}"));
    }
    // A timeout and a cancellation work on this thread's runtime too.
    let options = CallOptions { timeout: Some(Duration::from_millis(100)), ..CallOptions::default() };
    assert_eq!(here(&b, "api.slow", json!({}), options).unwrap_err().code(), ErrorCode::Timeout);
    // The engine gone, the other keeps its own client; so does another thread.
    drop(a);
    assert_eq!(here(&b, "api.get", json!({"k": 1}), CallOptions::default()).unwrap()["query"], "k=1");
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(here(&b, "api.get", json!({"t": 2}), CallOptions::default()).unwrap()["query"], "t=2"));
    });
    // Not on a thread that runs a runtime: the caller then uses its own.
    let err = server_rt.block_on(async { b.block_on_here(async {}) }).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert!(err.to_string().contains("already runs a tokio runtime"), "{err}");
    drop(srv); // stops the server
}

#[test]
fn calls_on_a_call_thread_share_its_runtime_and_its_own_connections() {
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let srv = server_rt.block_on(server());
    let tools = get_and_slow(srv.port);
    let engine = server_rt.block_on(engine_with(json!({}), tools));
    let thread = CallThread::start("utp-call-test").unwrap();
    // Run a call there and wait for its result on this thread.
    let on_thread = |name: &'static str, args: Value, options: CallOptions| {
        let (tx, rx) = std::sync::mpsc::channel();
        let e = engine.clone();
        thread.spawn(async move {
            let _ = tx.send(e.call_tool(name, args, options).await);
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("the call thread answers")
    };
    for i in 0..5 {
        let got = on_thread("api.get", json!({"i": i}), CallOptions::default()).unwrap();
        assert_eq!(got["query"], format!("i={i}"));
    }
    // A task counts as in flight until it ends, a moment after it sent its result.
    let none_in_flight = || {
        let waited = std::time::Instant::now();
        while thread.in_flight() > 0 && waited.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        thread.in_flight() == 0
    };
    // Sequential calls there reuse one connection of the thread's own client...
    assert_eq!(srv.loopback.connections(), 1);
    assert!(none_in_flight());
    // ...and a call on the engine's runtime uses the engine's client, not that one.
    server_rt.block_on(call(&engine, "api.get", json!({}))).unwrap();
    assert_eq!(srv.loopback.connections(), 2);
    // Timers run there: a timeout fires.
    let options = CallOptions { timeout: Some(Duration::from_millis(100)), ..CallOptions::default() };
    assert_eq!(on_thread("api.slow", json!({}), options).unwrap_err().code(), ErrorCode::Timeout);
    // Many at once: each gets its own result, and the count of calls in flight comes back to 0.
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..50 {
        let (e, tx) = (engine.clone(), tx.clone());
        thread.spawn(async move {
            let _ = tx.send((i, e.call_tool("api.get", json!({"n": i}), CallOptions::default()).await));
        });
    }
    for _ in 0..50 {
        let (i, got) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got.unwrap()["query"], format!("n={i}"));
    }
    assert!(none_in_flight());
    // A panic ends its own future only; the thread goes on.
    thread.spawn(async { panic!("a bug in one call") });
    assert_eq!(on_thread("api.get", json!({"after": 1}), CallOptions::default()).unwrap()["query"], "after=1");
}
