//! `mcp` servers over Streamable HTTP that misbehave: every answer a clear error with a
//! stable code, never a hang, a crash or a request sent where the rules forbid it. The
//! servers are hand-written on purpose (a real SDK does none of this); the well-behaved
//! servers of both eras are tested from Python and Node (tests/mcp/).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde_json::{Value, json};
use support::Loopback;
use utp_core::{Config, Engine, ErrorCode, ManualSource};

fn template(url: &str) -> Value {
    json!({"name": "m", "call_template_type": "mcp", "config": {"mcpServers": {"srv": {"url": url, "sse_read_timeout": 0.5}}}})
}

fn answer(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", content_type).body(Full::new(body.into())).unwrap()
}

/// Register an MCP manual at `url` with `config` and return the error.
async fn refused(config: Value, url: &str) -> utp_core::Error {
    let engine = Engine::new(Config::from_value(config).unwrap()).unwrap();
    let registered = engine.register_manual(ManualSource::Inline(template(url)), None).await;
    let err = registered.expect_err("a misbehaving server registers nothing");
    assert!(engine.tools().is_empty());
    engine.close(Duration::from_secs(1));
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_are_not_mcp_are_transport_errors_not_hangs() {
    let quick = json!({"calls": {"default_timeout": "10s"}});
    type Respond = fn() -> Response<Full<Bytes>>;
    let cases: Vec<(&str, Respond, &str)> = vec![
        ("an html page", || answer(200, "text/html", "<html>hello</html>"), "content type"),
        ("broken json", || answer(200, "application/json", "{not json"), "JSON"),
        ("a server error", || answer(500, "text/plain", "boom"), "500"),
        ("a json array", || answer(200, "application/json", "[1, 2, 3]"), ""),
    ];
    for (what, respond, says) in cases {
        let server = Loopback::start(move |_req| async move { respond() }).await;
        let err = refused(quick.clone(), &server.url("/mcp")).await;
        assert_eq!(err.code(), ErrorCode::Transport, "{what}: {err}");
        assert!(err.to_string().contains("'srv'"), "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_events_over_the_engines_caps_are_refused() {
    let big = "x".repeat(64 * 1024);
    let body = Bytes::from(format!("{{\"jsonrpc\": \"2.0\", \"id\": 0, \"result\": {{\"pad\": \"{big}\"}}}}"));
    let server = Loopback::start(move |_req| {
        let body = body.clone();
        async move { answer(200, "application/json", body) }
    })
    .await;
    let small = json!({"calls": {"default_timeout": "10s", "max_response_size": 4096, "max_event_size": 4096}});
    let err = refused(small.clone(), &server.url("/mcp")).await;
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    assert!(err.to_string().contains("4096"), "{err}");

    let event = Bytes::from(format!("event: message\ndata: {big}\n\n"));
    let server = Loopback::start(move |_req| {
        let event = event.clone();
        async move { answer(200, "text/event-stream", event) }
    })
    .await;
    let err = refused(small, &server.url("/mcp")).await;
    assert!(matches!(err.code(), ErrorCode::Transport | ErrorCode::Timeout), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_of_a_post_to_another_origin_is_refused_and_nothing_is_sent_there() {
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let elsewhere = Loopback::start(move |_req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { answer(200, "application/json", "{}") }
    })
    .await;
    let target = elsewhere.url("/mcp");
    let server = Loopback::start(move |_req| {
        let target = target.clone();
        async move { Response::builder().status(307).header("location", target).body(Full::new(Bytes::new())).unwrap() }
    })
    .await;
    let err = refused(json!({"calls": {"default_timeout": "10s"}}), &server.url("/mcp")).await;
    assert!(err.to_string().contains("another origin"), "{err}");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the request body never went to the other origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_fails_registration_with_timeout_naming_it() {
    let server = Loopback::start(move |_req| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        answer(200, "text/event-stream", "")
    })
    .await;
    let started = std::time::Instant::now();
    let err = refused(json!({"calls": {"default_timeout": "1s"}}), &server.url("/mcp")).await;
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(err.to_string().contains("'srv'"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());
}
