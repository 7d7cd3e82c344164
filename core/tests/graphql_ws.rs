//! GraphQL subscriptions (graphql-transport-ws) against a real server the tests start on
//! 127.0.0.1: async-graphql's schema and its `http::WebSocket` protocol driver behind one
//! hyper endpoint that answers introspection POSTs and upgrades to WebSocket. Discovery
//! lists Subscription fields; streams yield items in order; a plain call returns them
//! all; errors; dropping a stream (or a plain call's timeout) sends `complete`; auth
//! reaches the handshake and `connection_init`; the address rules apply.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::{WebSocket as GqlWebSocket, WebSocketProtocols, WsMessage};
use async_graphql::{Context, Data, Object, Schema, SimpleObject, Subscription};
use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::Loopback;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use utp_core::{CallOptions, Engine, ErrorCode, ManualSource};

struct Query;

#[Object]
impl Query {
    async fn version(&self) -> &str {
        "1.0"
    }
}

#[derive(SimpleObject)]
struct Tick {
    n: i32,
    label: String,
}

/// The credential `connection_init` carried (`Authorization`), as the server read it.
struct Who(String);

struct Subscription;

#[Subscription]
impl Subscription {
    /// Counts from 1 to `to`, then completes.
    async fn count(&self, to: i32) -> impl Stream<Item = i32> {
        futures_util::stream::iter(1..=to)
    }
    /// Ticks until the client stops it.
    async fn ticks(&self) -> impl Stream<Item = Tick> {
        futures_util::stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some((Tick { n, label: format!("tick {n}") }, n + 1))
        })
    }
    /// One value, then an error.
    async fn failing(&self) -> impl Stream<Item = async_graphql::Result<i32>> {
        futures_util::stream::iter([Ok(1), Err(async_graphql::Error::new("the sensor broke"))])
    }
    /// Who the connection was initialised as.
    async fn whoami(&self, ctx: &Context<'_>) -> impl Stream<Item = String> {
        let who = ctx.data::<Who>().map(|w| w.0.clone()).unwrap_or_default();
        futures_util::stream::iter([who])
    }
}

type SubsSchema = Schema<Query, async_graphql::EmptyMutation, Subscription>;

/// What the server saw.
#[derive(Default)]
struct Seen {
    /// Each WebSocket handshake's headers.
    handshakes: Vec<hyper::HeaderMap>,
    /// Each `connection_init` payload.
    inits: Vec<Value>,
    /// Every message clients sent, in order.
    messages: Vec<Value>,
}

struct Server {
    loopback: Loopback,
    seen: Arc<Mutex<Seen>>,
}

impl Server {
    fn url(&self) -> String {
        self.loopback.url("/graphql")
    }

    /// The client messages of one `type` so far.
    fn messages_of(&self, kind: &str) -> Vec<Value> {
        self.seen.lock().messages.iter().filter(|m| m["type"] == kind).cloned().collect()
    }

    /// Wait (up to 10 s: a deadline for a failing test, not a timing assertion) until
    /// `n` `complete` messages arrived.
    async fn until_completes(&self, n: usize) -> usize {
        for _ in 0..1000 {
            if self.messages_of("complete").len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.messages_of("complete").len()
    }
}

fn reply(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", "application/json").body(Full::new(body.into())).unwrap()
}

/// `/graphql`: POSTs are executed (introspection, queries); a WebSocket upgrade asking
/// for graphql-transport-ws is served by async-graphql's protocol driver. A
/// `connection_init` whose `Authorization` is `Bearer denied` is refused.
async fn server() -> Server {
    let schema: SubsSchema = Schema::build(Query, async_graphql::EmptyMutation, Subscription).finish();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = seen.clone();
    let loopback = Loopback::start(move |mut req: Request<hyper::body::Incoming>| {
        let (schema, seen) = (schema.clone(), state.clone());
        async move {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let request: async_graphql::Request = serde_json::from_slice(&body).unwrap();
                return reply(200, serde_json::to_vec(&schema.execute(request).await).unwrap());
            };
            seen.lock().handshakes.push(req.headers().clone());
            let asked = req.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !asked.split(',').any(|p| p.trim() == "graphql-transport-ws") {
                return reply(400, "graphql-transport-ws only");
            }
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let io = hyper_util::rt::TokioIo::new(upgraded);
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                serve_socket(socket, schema, seen).await;
            });
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-accept", accept)
                .header("sec-websocket-protocol", "graphql-transport-ws")
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    })
    .await;
    Server { loopback, seen }
}

async fn serve_socket<S>(socket: WebSocketStream<S>, schema: SubsSchema, seen: Arc<Mutex<Seen>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, stream) = socket.split();
    let record = seen.clone();
    let incoming = stream.filter_map(move |message| {
        let record = record.clone();
        async move {
            let Ok(Message::Text(text)) = message else { return None };
            let text = text.as_str().to_string();
            record.lock().messages.push(serde_json::from_str(&text).unwrap_or(Value::Null));
            Some(text)
        }
    });
    let mut protocol = GqlWebSocket::new(schema, Box::pin(incoming), WebSocketProtocols::GraphQLWS).on_connection_init(
        move |payload| {
            seen.lock().inits.push(payload.clone());
            async move {
                let auth = payload.get("Authorization").and_then(Value::as_str).unwrap_or("").to_string();
                if auth == "Bearer denied" {
                    return Err(async_graphql::Error::new("denied by the test server"));
                }
                let mut data = Data::default();
                data.insert(Who(auth));
                Ok(data)
            }
        },
    );
    while let Some(message) = protocol.next().await {
        let sent = match message {
            WsMessage::Text(text) => sink.send(Message::text(text)).await,
            WsMessage::Close(code, reason) => {
                let frame = CloseFrame { code: code.into(), reason: reason.into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

fn manual(url: &str, tools: Value) -> ManualSource {
    let tools: Vec<Value> = tools
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, extra)| {
            let mut tpl = json!({"call_template_type": "graphql", "url": url, "operation_type": "subscription"});
            tpl.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({"name": name, "inputs": {"type": "object"}, "tool_call_template": tpl})
        })
        .collect();
    ManualSource::Inline(json!({"name": "subs", "tools": tools}))
}

async fn items(e: &Engine, name: &str, args: Value) -> Vec<utp_core::Result<Value>> {
    e.call_tool_stream(name, args, CallOptions::default()).await.unwrap().collect().await
}

#[tokio::test]
async fn discovery_lists_subscriptions_and_their_streams_yield_data_in_order() {
    let s = server().await;
    let e = Engine::from_json(json!({})).unwrap();
    let template = json!({"name": "live", "call_template_type": "graphql", "url": s.url()});
    let mut tools = e.register_manual(ManualSource::Inline(template), None).await.unwrap();
    tools.sort();
    assert_eq!(tools, ["live.count", "live.failing", "live.ticks", "live.version", "live.whoami"]);
    let ticks = e.tool("live.ticks").unwrap().to_value();
    assert_eq!(ticks["tool_call_template"]["operation_type"], "subscription");
    assert_eq!(ticks["tool_call_template"]["selection_set"], "{ n label }");
    assert_eq!(ticks["tags"], json!(["graphql", "subscription"]));
    assert_eq!(ticks["outputs"]["type"], "array", "a plain call returns the list of items");
    assert_eq!(ticks["outputs"]["items"]["properties"]["ticks"]["properties"]["n"]["type"], "integer");
    let count = e.tool("live.count").unwrap().to_value();
    assert_eq!(count["tool_call_template"]["variable_types"], json!({"to": "Int!"}));
    assert_eq!(count["inputs"]["required"], json!(["to"]));
    assert_eq!(e.tool("live.version").unwrap().to_value()["tool_call_template"]["operation_type"], "query");

    // A stream: each `next`'s data, in order, then the end at `complete`.
    let got: Vec<Value> = items(&e, "live.count", json!({"to": 3})).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, [json!({"count": 1}), json!({"count": 2}), json!({"count": 3})]);
    let subscribe = s.messages_of("subscribe").pop().unwrap();
    assert_eq!(subscribe["payload"]["variables"], json!({"to": 3}));
    assert_eq!(subscribe["payload"]["query"], "subscription($to: Int!) { count(to: $to) }");
    // A plain call: the list of every item until `complete`.
    let all = e.call_tool("live.count", json!({"to": 2}), CallOptions::default()).await.unwrap();
    assert_eq!(all, json!([{"count": 1}, {"count": 2}]));
    assert_eq!(e.call_tool("live.count", json!({"to": 0}), CallOptions::default()).await.unwrap(), json!([]));
    // Queries of the same manual still go over HTTP.
    let version = e.call_tool("live.version", json!({}), CallOptions::default()).await.unwrap();
    assert_eq!(version, json!({"version": "1.0"}));
    // Every handshake asked for the subprotocol; the client never had to stop a
    // subscription that completed.
    assert!(s.seen.lock().handshakes.iter().all(|h| h["sec-websocket-protocol"] == "graphql-transport-ws"));
    assert_eq!(s.messages_of("complete").len(), 0);
}

#[tokio::test]
async fn dropping_a_stream_or_a_plain_calls_timeout_sends_complete() {
    let s = server().await;
    let e = Engine::from_json(json!({})).unwrap();
    e.register_manual(manual(&s.url(), json!({"ticks": {"selection_set": "{ n label }"}})), None).await.unwrap();
    let mut stream = e.call_tool_stream("subs.ticks", json!({}), CallOptions::default()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), json!({"ticks": {"n": 0, "label": "tick 0"}}));
    assert_eq!(stream.next().await.unwrap().unwrap()["ticks"]["n"], 1);
    drop(stream);
    assert_eq!(s.until_completes(1).await, 1, "breaking out of the stream stops the subscription");
    let subscribe_id = s.messages_of("subscribe")[0]["id"].clone();
    assert_eq!(s.messages_of("complete")[0]["id"], subscribe_id);

    // A subscription that never completes: the plain call times out, and stops it.
    let options = CallOptions { timeout: Some(Duration::from_millis(300)), ..CallOptions::default() };
    let err = e.call_tool("subs.ticks", json!({}), options).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert_eq!(s.until_completes(2).await, 2);
}

#[tokio::test]
async fn graphql_errors_fail_the_stream_with_their_messages() {
    let s = server().await;
    let e = Engine::from_json(json!({})).unwrap();
    let tools = json!({
        "failing": {},
        "bad_doc": {"query": "subscription { nope }"},
        // No `operation_type`: the document says subscription.
        "by_document": {"operation_type": null, "query": "subscription Two { count(to: 2) }", "operation_name": "Two"},
    });
    e.register_manual(manual(&s.url(), tools), None).await.unwrap();
    let got = items(&e, "subs.failing", json!({})).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].as_ref().unwrap(), &json!({"failing": 1}));
    let err = got[1].as_ref().unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed, "{err}");
    assert!(err.to_string().contains("the sensor broke (at failing)"), "{err}");

    let err = e.call_tool("subs.bad_doc", json!({}), CallOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed, "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    let got = e.call_tool("subs.by_document", json!({}), CallOptions::default()).await.unwrap();
    assert_eq!(got, json!([{"count": 1}, {"count": 2}]));
    assert_eq!(s.messages_of("subscribe").last().unwrap()["payload"]["operationName"], "Two");
}

#[tokio::test]
async fn auth_and_headers_reach_the_handshake_and_connection_init() {
    let s = server().await;
    let e = Engine::from_json(json!({"variables": {"subs_TOKEN": "t-1"}})).unwrap();
    let auth =
        |key: &str| json!({"auth_type": "api_key", "api_key": key, "var_name": "Authorization", "location": "header"});
    let tools = json!({
        "whoami": {"auth": auth("Bearer ${TOKEN}"), "headers": {"X-Tenant": "acme"}, "header_fields": ["trace"]},
        "denied": {"auth": auth("Bearer denied"), "query": "subscription { whoami }"},
    });
    e.register_manual(manual(&s.url(), tools), None).await.unwrap();
    let got = e.call_tool("subs.whoami", json!({"trace": "tr-9"}), CallOptions::default()).await.unwrap();
    assert_eq!(got, json!([{"whoami": "Bearer t-1"}]), "the server read the credential from connection_init");
    let init = s.seen.lock().inits[0].clone();
    assert_eq!(init["Authorization"], "Bearer t-1");
    assert_eq!(init["X-Tenant"], "acme");
    assert_eq!(init["trace"], "tr-9");
    assert_eq!(init["headers"]["Authorization"], "Bearer t-1");
    let handshake = s.seen.lock().handshakes[0].clone();
    assert_eq!(handshake["authorization"], "Bearer t-1");
    assert_eq!(handshake["x-tenant"], "acme");
    assert_eq!(handshake["trace"], "tr-9");
    assert!(s.messages_of("subscribe")[0]["payload"]["variables"].get("trace").is_none());

    // A server that refuses the connection_init: the call fails with its reason.
    let err = e.call_tool("subs.denied", json!({}), CallOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("denied by the test server"), "{err}");
    assert!(err.to_string().contains("before acknowledging the connection"), "{err}");
}

#[tokio::test]
async fn subscriptions_follow_the_network_rules_of_http_tools() {
    let e = Engine::from_json(json!({})).unwrap();
    let tools = json!({
        "private": {"url": "https://10.0.0.1/graphql", "query": "subscription { a }"},
        "plain": {"url": "http://example.com/graphql", "query": "subscription { a }"},
        "ftp": {"url": "ftp://127.0.0.1/graphql", "query": "subscription { a }"},
    });
    e.register_manual(manual("http://127.0.0.1:9/", tools), None).await.unwrap();
    let err = e.call_tool_stream("subs.private", json!({}), CallOptions::default()).await.err().unwrap();
    assert_eq!(err.code(), ErrorCode::Security, "{err}");
    let err = e.call_tool("subs.plain", json!({}), CallOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security, "plain ws:// beyond loopback: {err}");
    let err = e.call_tool("subs.ftp", json!({}), CallOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidManual, "{err}");

    // With private networks allowed, the address passes the rules (and nothing listens).
    let open = Engine::from_json(json!({"calls": {"allow_private_networks": true, "default_timeout": "2s"}})).unwrap();
    open.register_manual(manual("http://127.0.0.1:9/", json!({"gone": {"query": "subscription { a }"}})), None)
        .await
        .unwrap();
    let err = open.call_tool("subs.gone", json!({}), CallOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
}
