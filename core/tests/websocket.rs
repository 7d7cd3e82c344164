//! `websocket` tools and manuals against real tokio-tungstenite servers on 127.0.0.1
//! that each test starts and stops: discovery, message templates, response formats,
//! keep-alive reuse and reconnection, timeouts, the frame cap, handshake auth, streams
//! and bad template fields.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use utp_core::{CallOptions, Config, Engine, ErrorCode, ManualSource};

/// What the server saw.
#[derive(Default)]
struct Seen {
    /// Connections accepted (handshakes completed).
    connections: usize,
    /// Each handshake's path and headers.
    handshakes: Vec<(String, http::HeaderMap)>,
    /// Each text message received, in order.
    messages: Vec<String>,
}

/// A WebSocket server on an ephemeral loopback port; behaviour by request path. Stops
/// when dropped.
struct Server {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, state.clone(), port));
            }
        });
        Server { port, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    fn connections(&self) -> usize {
        self.seen.lock().connections
    }

    fn messages(&self) -> Vec<String> {
        self.seen.lock().messages.clone()
    }
}

/// The manual `/manual` serves: two websocket tools and an http one (left out: a manual
/// discovered over a WebSocket keeps only `websocket` tools by default).
fn served_manual(port: u16) -> Value {
    json!({"utcp_version": "1.0.1", "manual_version": "1.0.0", "tools": [
        {"name": "echo", "description": "echoes its arguments",
         "inputs": {"type": "object", "properties": {"text": {"type": "string"}}},
         "tool_call_template": {"call_template_type": "websocket", "url": format!("ws://127.0.0.1:{port}/echo"),
                                "response_format": "json"}},
        {"name": "command", "description": "a text protocol",
         "inputs": {"type": "object", "properties": {"cmd": {"type": "string"}, "n": {"type": "integer"}}},
         "tool_call_template": {"call_template_type": "websocket", "url": format!("ws://127.0.0.1:{port}/echo"),
                                "message": "CMD:UTCP_ARG_cmd_UTCP_ARG;N:UTCP_ARG_n_UTCP_ARG", "response_format": "json"}},
        {"name": "web", "tool_call_template": {"call_template_type": "http", "url": format!("http://127.0.0.1:{port}/")}},
    ]})
}

async fn serve(stream: tokio::net::TcpStream, seen: Arc<Mutex<Seen>>, port: u16) {
    let mut path = String::new();
    let record = seen.clone();
    // The callback's type is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        path = request.uri().path().to_string();
        record.lock().handshakes.push((path.clone(), request.headers().clone()));
        let required = match path.as_str() {
            "/auth" => Some("Basic dTpw"),
            // The token the OAuth2 test's token endpoint issues second: the first is "expired".
            "/bearer" => Some("Bearer tok-2"),
            _ => None,
        };
        if let Some(required) = required {
            let auth = request.headers().get("authorization").and_then(|v| v.to_str().ok());
            if auth != Some(required) {
                let refusal = http::Response::builder().status(401).body(Some("who are you".to_string())).unwrap();
                return Err(refusal);
            }
        }
        if let Some(protocol) = request.headers().get("sec-websocket-protocol") {
            if path == "/proto" {
                response.headers_mut().insert("sec-websocket-protocol", protocol.clone());
            }
        }
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    seen.lock().connections += 1;
    let connection = seen.lock().connections;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else { continue };
        let text = text.as_str().to_string();
        seen.lock().messages.push(text.clone());
        let reply = |v: Value| Message::text(v.to_string());
        let sent = match path.as_str() {
            _ if text == r#"{"type":"utcp"}"# && path == "/manual" => {
                // Noise first: discovery skips frames that are not a manual.
                let _ = ws.send(Message::text("hello")).await;
                ws.send(reply(served_manual(port))).await
            }
            "/echo" | "/auth" | "/bearer" | "/proto" => {
                ws.send(reply(json!({"got": text, "connection": connection}))).await
            }
            "/plain" => ws.send(Message::text(format!("plain:{text}"))).await,
            "/binary" => ws.send(Message::binary(vec![0xff, 0x00, 0x01])).await,
            "/drop" => {
                let _ = ws.send(reply(json!({"got": text, "connection": connection}))).await;
                let _ = ws.close(None).await;
                return;
            }
            "/hangup" => return,
            "/silent" => continue,
            "/big" => ws.send(Message::text("x".repeat(4096))).await,
            "/stream" => {
                let frames = [
                    json!({"type": "tool_response", "result": 1}),
                    json!({"type": "tool_response", "result": "not ours", "request_id": "call_other_9"}),
                    json!({"note": "a frame of no known type"}),
                    json!({"type": "tool_response", "result": {"done": true}}),
                    json!({"type": "stream_end"}),
                ];
                let mut result = Ok(());
                for frame in frames {
                    result = ws.send(reply(frame)).await;
                }
                result
            }
            "/stream-error" => {
                let _ = ws.send(reply(json!({"type": "tool_response", "result": 1}))).await;
                ws.send(reply(json!({"type": "tool_error", "error": "the widget broke"}))).await
            }
            _ => ws.send(Message::text("unknown path")).await,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// An engine with `manual` (tools over `ws://127.0.0.1:{port}/...`) registered as `ws`.
async fn engine_with(tools: Value, config: Value) -> Engine {
    let engine = Engine::from_json(config).unwrap();
    let manual = json!({"name": "ws", "tools": tools});
    engine.register_manual(ManualSource::Inline(manual), None).await.unwrap();
    engine
}

fn tool(name: &str, template: Value) -> Value {
    json!({"name": name, "inputs": {"type": "object"}, "tool_call_template": template})
}

fn ws_template(url: String, extra: Value) -> Value {
    let mut template = json!({"call_template_type": "websocket", "url": url});
    for (k, v) in extra.as_object().unwrap() {
        template[k] = v.clone();
    }
    template
}

async fn call(engine: &Engine, name: &str, args: Value) -> utp_core::Result<Value> {
    engine.call_tool(name, args, CallOptions::default()).await
}

#[tokio::test]
async fn discovery_registers_the_websocket_tools_of_the_served_manual() {
    let server = Server::start().await;
    let config = Config::from_value(json!({"manual_call_templates": [
        {"name": "live", "call_template_type": "websocket", "url": server.url("/manual")}]}))
    .unwrap();
    let engine = Engine::open(config).await.unwrap();
    let names: Vec<String> = engine.tools().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["live.command", "live.echo"], "the http tool is left out");
    assert_eq!(server.messages(), [r#"{"type":"utcp"}"#]);

    // Without a message template the arguments go as JSON; with one, filled.
    let out = call(&engine, "live.echo", json!({"text": "hi \"there\""})).await.unwrap();
    assert_eq!(out["got"], json!(r#"{"text":"hi \"there\""}"#));
    let out = call(&engine, "live.command", json!({"cmd": "go", "n": 3})).await.unwrap();
    assert_eq!(out["got"], json!("CMD:go;N:3"));
    assert_eq!(out["connection"], json!(2), "the two tools share one socket; discovery had its own");

    // The template's allowed_communication_protocols can let the http tool in.
    let config = Config::from_value(json!({"manual_call_templates": [
        {"name": "all", "call_template_type": "websocket", "url": server.url("/manual"),
         "allowed_communication_protocols": ["websocket", "http"]}]}))
    .unwrap();
    let engine = Engine::open(config).await.unwrap();
    assert_eq!(engine.tools().len(), 3);
}

#[tokio::test]
async fn discovery_failures_are_clear() {
    let server = Server::start().await;
    // A server that answers discovery with no manual: TIMEOUT naming the manual.
    let config = Config::from_value(json!({"manual_call_templates": [
        {"name": "quiet", "call_template_type": "websocket", "url": server.url("/silent"), "timeout": 1}]}))
    .unwrap();
    let err = Engine::open(config).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(err.to_string().contains("manual 'quiet'"), "{err}");
    // Nothing listening: TRANSPORT.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = Config::from_value(json!({"manual_call_templates": [
        {"name": "gone", "call_template_type": "websocket", "url": format!("ws://127.0.0.1:{port}/")}]}))
    .unwrap();
    let err = Engine::open(config).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    // Plain ws:// beyond loopback: SECURITY before any connection.
    let config = Config::from_value(json!({"manual_call_templates": [
        {"name": "far", "call_template_type": "websocket", "url": "ws://example.com/utcp"}]}))
    .unwrap();
    let err = Engine::open(config).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security, "{err}");
}

#[tokio::test]
async fn response_formats_and_message_templates() {
    let server = Server::start().await;
    let engine = engine_with(
        json!([
            tool("as_json", ws_template(server.url("/echo"), json!({"response_format": "json"}))),
            tool("as_text", ws_template(server.url("/echo"), json!({"response_format": "text"}))),
            tool("as_default", ws_template(server.url("/echo"), json!({}))),
            tool("not_json", ws_template(server.url("/plain"), json!({"response_format": "json"}))),
            tool("binary_raw", ws_template(server.url("/binary"), json!({"response_format": "raw"}))),
            tool(
                "object_message",
                ws_template(
                    server.url("/echo"),
                    json!({"response_format": "json",
                "message": {"op": "add", "a": "UTCP_ARG_a_UTCP_ARG", "label": "a=UTCP_ARG_a_UTCP_ARG",
                            "opt": "UTCP_ARG_missing_UTCP_ARG"}})
                )
            ),
            tool(
                "json_text_message",
                ws_template(
                    server.url("/echo"),
                    json!({"response_format": "json",
                "message": "{\"q\": \"UTCP_ARG_q_UTCP_ARG\"}"})
                )
            ),
        ]),
        json!({}),
    )
    .await;
    let out = call(&engine, "ws.as_json", json!({"x": 1})).await.unwrap();
    assert_eq!(out["got"], json!(r#"{"x":1}"#));
    let text = call(&engine, "ws.as_text", json!({"x": 1})).await.unwrap();
    assert!(text.as_str().unwrap().starts_with(r#"{"got":"#), "{text}");
    let default = call(&engine, "ws.as_default", json!({"x": 1})).await.unwrap();
    assert!(default.is_string(), "no response_format: the frame's text, as python-utcp: {default}");
    assert_eq!(call(&engine, "ws.not_json", json!({"x": 1})).await.unwrap(), json!(r#"plain:{"x":1}"#));
    assert_eq!(call(&engine, "ws.binary_raw", json!({})).await.unwrap(), json!({"base64": "/wAB"}));

    let out = call(&engine, "ws.object_message", json!({"a": 2})).await.unwrap();
    let sent: Value = serde_json::from_str(out["got"].as_str().unwrap()).unwrap();
    assert_eq!(sent, json!({"op": "add", "a": 2, "label": "a=2"}), "typed values; a missing argument drops its key");
    // A quote in an argument cannot break out of a JSON-shaped string template.
    let out = call(&engine, "ws.json_text_message", json!({"q": "x\", \"admin\": true, \"y\": \""})).await.unwrap();
    let sent: Value = serde_json::from_str(out["got"].as_str().unwrap()).unwrap();
    assert_eq!(sent, json!({"q": "x\", \"admin\": true, \"y\": \""}));
}

#[tokio::test]
async fn keep_alive_reuses_one_socket_and_reconnects_after_a_drop() {
    let server = Server::start().await;
    let engine = engine_with(
        json!([
            tool("kept", ws_template(server.url("/echo"), json!({"response_format": "json"}))),
            tool("fresh", ws_template(server.url("/echo"), json!({"response_format": "json", "keep_alive": false}))),
            tool("dropping", ws_template(server.url("/drop"), json!({"response_format": "json"}))),
        ]),
        json!({}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(call(&engine, "ws.kept", json!({})).await.unwrap()["connection"], json!(1));
    }
    assert_eq!(server.connections(), 1);
    for expected in [2, 3] {
        assert_eq!(call(&engine, "ws.fresh", json!({})).await.unwrap()["connection"], json!(expected));
    }
    // Concurrent calls on one pooled socket take turns: every call gets its own answer.
    let calls = (0..8).map(|i| call(&engine, "ws.kept", json!({"i": i})));
    for (i, out) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
        assert_eq!(out.unwrap()["got"], json!(format!("{{\"i\":{i}}}")));
    }

    // The server closes the socket after each answer: the next call opens a new one.
    let first = call(&engine, "ws.dropping", json!({})).await.unwrap()["connection"].clone();
    // Between the calls the server's close arrives (a message already sent is never sent twice).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = call(&engine, "ws.dropping", json!({})).await.unwrap()["connection"].clone();
    assert_ne!(first, second, "a dead pooled socket is reopened");
}

#[tokio::test]
async fn silence_hangups_and_oversized_frames_are_errors() {
    let server = Server::start().await;
    let engine = engine_with(
        json!([
            tool("silent", ws_template(server.url("/silent"), json!({"timeout": 0.3}))),
            tool("hangup", ws_template(server.url("/hangup"), json!({}))),
            tool("big", ws_template(server.url("/big"), json!({}))),
            tool("kept", ws_template(server.url("/echo"), json!({"response_format": "json"}))),
        ]),
        json!({"calls": {"max_response_size": 1024}}),
    )
    .await;
    let started = std::time::Instant::now();
    let err = call(&engine, "ws.silent", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = call(&engine, "ws.hangup", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    assert!(err.to_string().contains("closed the socket"), "{err}");
    let err = call(&engine, "ws.big", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    assert!(err.to_string().contains("calls.max_response_size"), "{err}");

    // A call the engine abandons (its own timeout) does not leave its late answer for the next call.
    let short = CallOptions { timeout: Some(Duration::from_millis(1)), ..CallOptions::default() };
    let _ = engine.call_tool("ws.kept", json!({"n": "abandoned"}), short).await;
    let out = call(&engine, "ws.kept", json!({"n": "next"})).await.unwrap();
    assert_eq!(out["got"], json!(r#"{"n":"next"}"#));
}

#[tokio::test]
async fn handshake_carries_auth_headers_and_subprotocol() {
    let server = Server::start().await;
    let engine = engine_with(
        json!([
            tool(
                "authed",
                ws_template(
                    server.url("/auth"),
                    json!({"response_format": "json",
                "auth": {"auth_type": "basic", "username": "u", "password": "p"},
                "headers": {"X-Trace": "t-1"}})
                )
            ),
            tool(
                "keyed",
                ws_template(
                    server.url("/echo"),
                    json!({"response_format": "json",
                "auth": {"auth_type": "api_key", "api_key": "k-9", "var_name": "X-Api-Key", "location": "header"}})
                )
            ),
            tool("anonymous", ws_template(server.url("/auth"), json!({}))),
            tool("proto", ws_template(server.url("/proto"), json!({"protocol": "utcp-v1", "response_format": "json"}))),
            tool("proto_refused", ws_template(server.url("/echo"), json!({"protocol": "utcp-v1"}))),
        ]),
        json!({}),
    )
    .await;
    call(&engine, "ws.authed", json!({})).await.unwrap();
    call(&engine, "ws.keyed", json!({})).await.unwrap();
    call(&engine, "ws.proto", json!({})).await.unwrap();
    let handshakes = server.seen.lock().handshakes.clone();
    let headers_of = |path: &str| handshakes.iter().find(|(p, _)| p == path).map(|(_, h)| h.clone()).unwrap();
    assert_eq!(headers_of("/auth")["authorization"], "Basic dTpw");
    assert_eq!(headers_of("/auth")["x-trace"], "t-1");
    assert_eq!(headers_of("/echo")["x-api-key"], "k-9");
    assert_eq!(headers_of("/proto")["sec-websocket-protocol"], "utcp-v1");

    let err = call(&engine, "ws.anonymous", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed, "{err}");
    assert!(err.to_string().contains("HTTP 401") && err.to_string().contains("who are you"), "{err}");
    let err = call(&engine, "ws.proto_refused", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    assert!(err.to_string().contains("subprotocol"), "{err}");
}

#[tokio::test]
async fn oauth2_tokens_go_on_the_handshake_and_a_401_fetches_a_fresh_one() {
    let server = Server::start().await;
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let tokens = support::Loopback::start(move |_request| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let body = json!({"access_token": format!("tok-{n}"), "expires_in": 3600}).to_string();
            hyper::Response::builder()
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap()
        }
    })
    .await;
    let engine = engine_with(
        json!([tool(
            "bearer",
            ws_template(
                server.url("/bearer"),
                json!({"response_format": "json",
            "auth": {"auth_type": "oauth2", "token_url": tokens.url("/token"), "client_id": "c", "client_secret": "s"}})
            )
        )]),
        json!({}),
    )
    .await;
    let out = call(&engine, "ws.bearer", json!({})).await.unwrap();
    assert_eq!(out["got"], json!("{}"));
    assert_eq!(issued.load(Ordering::SeqCst), 2, "tok-1 was refused with 401, tok-2 accepted");
}

#[tokio::test]
async fn streams_end_at_stream_end_and_fail_at_tool_error() {
    let server = Server::start().await;
    let engine = engine_with(
        json!([
            tool("stream", ws_template(server.url("/stream"), json!({"response_format": "json"}))),
            tool("failing", ws_template(server.url("/stream-error"), json!({"response_format": "json"}))),
        ]),
        json!({}),
    )
    .await;
    let items: Vec<Value> = engine
        .call_tool_stream("ws.stream", json!({}), CallOptions::default())
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert_eq!(items, [json!(1), json!({"note": "a frame of no known type"}), json!({"done": true})]);
    // The socket went back to the pool after stream_end: a second stream reuses it.
    let again: Vec<_> =
        engine.call_tool_stream("ws.stream", json!({}), CallOptions::default()).await.unwrap().collect().await;
    assert_eq!(again.len(), 3);
    assert_eq!(server.connections(), 1);

    let mut failing = engine.call_tool_stream("ws.failing", json!({}), CallOptions::default()).await.unwrap();
    assert_eq!(failing.next().await.unwrap().unwrap(), json!(1));
    let err = failing.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed, "{err}");
    assert!(err.to_string().contains("the widget broke"), "{err}");
    assert!(failing.next().await.is_none());
}

#[tokio::test]
async fn bad_template_fields_name_the_field() {
    let server = Server::start().await;
    let url = server.url("/echo");
    let cases = [
        (json!({"response_format": "xml"}), ErrorCode::InvalidManual, "`response_format`"),
        (json!({"keep_alive": "yes"}), ErrorCode::InvalidManual, "`keep_alive`"),
        (json!({"message": 5}), ErrorCode::InvalidManual, "`message`"),
        (json!({"protocol": ""}), ErrorCode::InvalidManual, "`protocol`"),
        (json!({"headers": {"X-A": {"nested": 1}}}), ErrorCode::InvalidManual, "`headers`"),
        (json!({"headers": {"bad name": "v"}}), ErrorCode::InvalidManual, "`headers`"),
        (json!({"headers": ["X-A"]}), ErrorCode::InvalidManual, "`headers`"),
        (json!({"message": "UTCP_ARG_absent_UTCP_ARG"}), ErrorCode::ValidationFailed, "'absent'"),
    ];
    let tools: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (extra, _, _))| tool(&format!("t{i}"), ws_template(url.clone(), extra.clone())))
        .collect();
    let mut tools = tools;
    tools.push(tool("http_url", ws_template(server.url("/echo").replace("ws://", "http://"), json!({}))));
    tools.push(tool("far", ws_template("ws://example.com/x".into(), json!({}))));
    tools.push(tool("private", ws_template("wss://10.1.2.3/x".into(), json!({}))));
    tools.push(tool("tls_to_plain", ws_template(server.url("/echo").replace("ws://", "wss://"), json!({}))));
    let engine = engine_with(json!(tools), json!({})).await;
    for (i, (_, code, needle)) in cases.iter().enumerate() {
        let err = call(&engine, &format!("ws.t{i}"), json!({})).await.unwrap_err();
        assert_eq!(err.code(), *code, "case {i}: {err}");
        assert!(err.to_string().contains(needle) && err.to_string().contains(&format!("ws.t{i}")), "case {i}: {err}");
    }
    let err = call(&engine, "ws.http_url", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidManual, "{err}");
    assert!(err.to_string().contains("`url`"), "{err}");
    assert_eq!(call(&engine, "ws.far", json!({})).await.unwrap_err().code(), ErrorCode::Security);
    assert_eq!(call(&engine, "ws.private", json!({})).await.unwrap_err().code(), ErrorCode::Security);
    // TLS towards a plain server fails cleanly (the rustls setup itself works).
    let err = call(&engine, "ws.tls_to_plain", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    // A template timeout that is not a duration.
    let engine = engine_with(json!([tool("slow", ws_template(url, json!({"timeout": "soon"})))]), json!({})).await;
    let err = call(&engine, "ws.slow", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("timeout"), "{err}");
    assert_eq!(server.messages(), Vec::<String>::new(), "no bad template sent anything");
}
