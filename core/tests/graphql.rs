//! `graphql` tools against a real GraphQL server (async-graphql) that the tests start
//! on 127.0.0.1: discovery by introspection, queries and mutations with built
//! operations and explicit documents, errors, bad templates and timeouts.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_graphql::{EmptySubscription, Enum, ID, InputObject, Object, Schema, SimpleObject};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};
use support::Loopback;
use utp_core::{CallOptions, Engine, ErrorCode, ManualSource};

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
enum Role {
    Admin,
    Member,
}

#[derive(SimpleObject, Clone)]
struct Address {
    city: String,
    zip: Option<String>,
}

#[derive(Clone)]
struct User {
    id: ID,
    name: String,
    role: Role,
    tags: Vec<String>,
    address: Address,
}

/// A user of the directory.
#[Object]
impl User {
    async fn id(&self) -> &ID {
        &self.id
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn role(&self) -> Role {
        self.role
    }
    async fn tags(&self) -> &[String] {
        &self.tags
    }
    async fn address(&self) -> &Address {
        &self.address
    }
    /// Cyclic: the default selection set must stop at its depth.
    async fn friends(&self) -> Vec<User> {
        vec![alice()]
    }
    /// Needs an argument: left out of default selections.
    async fn greeting(&self, word: String) -> String {
        format!("{word}, {}", self.name)
    }
}

#[derive(InputObject)]
struct AddressInput {
    city: String,
    zip: Option<String>,
}

#[derive(InputObject)]
struct NewUser {
    name: String,
    #[graphql(default_with = "Role::Member")]
    role: Role,
    tags: Option<Vec<String>>,
    address: Option<AddressInput>,
}

fn alice() -> User {
    User {
        id: ID::from("1"),
        name: "Alice".into(),
        role: Role::Admin,
        tags: vec!["ops".into()],
        address: Address { city: "Paris".into(), zip: None },
    }
}

struct Query;

#[Object]
impl Query {
    /// One user by id.
    async fn user(&self, id: ID) -> Option<User> {
        (id.as_str() == "1").then(alice)
    }
    /// Users, optionally of one role.
    async fn users(&self, role: Option<Role>, #[graphql(default = 10)] limit: i32) -> Vec<User> {
        let all = vec![alice(), User { id: ID::from("2"), name: "Bob".into(), role: Role::Member, ..alice() }];
        all.into_iter().filter(|u| role.is_none_or(|r| r == u.role)).take(limit.max(0) as usize).collect()
    }
    async fn add(&self, a: i32, b: i32) -> i32 {
        a + b
    }
    /// Always fails.
    async fn broken(&self, reason: String) -> async_graphql::Result<Option<String>> {
        Err(async_graphql::Error::new(format!("broken on purpose: {reason}")))
    }
}

struct Mutation;

#[Object]
impl Mutation {
    /// Create a user.
    async fn create_user(&self, input: NewUser) -> User {
        let address = input.address.map(|a| Address { city: a.city, zip: a.zip });
        User {
            id: ID::from("3"),
            name: input.name,
            role: input.role,
            tags: input.tags.unwrap_or_default(),
            address: address.unwrap_or(Address { city: "nowhere".into(), zip: None }),
        }
    }
}

type DirectorySchema = Schema<Query, Mutation, EmptySubscription>;

struct Server {
    loopback: Loopback,
    requests: Arc<AtomicUsize>,
    last_body: Arc<parking_lot::Mutex<Value>>,
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", content_type).body(Full::new(body.into())).unwrap()
}

/// The GraphQL server at `/graphql`; `/down` answers 503, `/html` a web page,
/// `/big` a response over any small cap.
async fn server() -> Server {
    let schema: DirectorySchema = Schema::build(Query, Mutation, EmptySubscription).finish();
    let requests = Arc::new(AtomicUsize::new(0));
    let last_body = Arc::new(parking_lot::Mutex::new(Value::Null));
    let (count, last) = (requests.clone(), last_body.clone());
    let loopback = Loopback::start(move |req: Request<hyper::body::Incoming>| {
        let (schema, count, last) = (schema.clone(), count.clone(), last.clone());
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            let path = req.uri().path().to_string();
            let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            match path.as_str() {
                "/secured" if key.as_deref() != Some("k-1") => return reply(401, "text/plain", "no key"),
                "/down" => return reply(503, "text/plain", "maintenance"),
                "/html" => return reply(200, "text/html", "<html>not graphql</html>"),
                "/big" => return reply(200, "application/json", format!("{{\"data\":\"{}\"}}", "x".repeat(4096))),
                _ => {}
            }
            *last.lock() = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let request: async_graphql::Request = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return reply(400, "application/json", json!({"errors": [{"message": e.to_string()}]}).to_string());
                }
            };
            let response = schema.execute(request).await;
            reply(200, "application/json", serde_json::to_vec(&response).unwrap())
        }
    })
    .await;
    Server { loopback, requests, last_body }
}

async fn engine_with(config: Value) -> Engine {
    Engine::from_json(config).unwrap()
}

async fn call(e: &Engine, name: &str, args: Value) -> utp_core::Result<Value> {
    e.call_tool(name, args, CallOptions::default()).await
}

#[tokio::test]
async fn discovery_registers_one_tool_per_root_field_with_schemas_and_selections() {
    let s = server().await;
    let e = engine_with(json!({})).await;
    let template = json!({"name": "directory", "call_template_type": "graphql", "url": s.loopback.url("/graphql")});
    let mut tools = e.register_manual(ManualSource::Inline(template), None).await.unwrap();
    tools.sort();
    assert_eq!(
        tools,
        ["directory.add", "directory.broken", "directory.createUser", "directory.user", "directory.users"]
    );

    let user = e.tool("directory.user").unwrap().to_value();
    assert_eq!(user["description"], "One user by id.");
    assert_eq!(user["inputs"]["properties"]["id"]["type"], json!(["string", "integer"]));
    assert_eq!(user["inputs"]["required"], json!(["id"]));
    let tpl = &user["tool_call_template"];
    assert_eq!(tpl["operation_type"], "query");
    assert_eq!(tpl["variable_types"], json!({"id": "ID!"}));
    let selection = tpl["selection_set"].as_str().unwrap();
    assert!(selection.starts_with("{ id name role tags address { city zip } friends {"), "{selection}");
    assert!(!selection.contains("greeting"), "fields that need arguments are left out: {selection}");
    // Depth-bounded: friends' friends' friends are not selected.
    assert_eq!(selection.matches("friends").count(), 2, "{selection}");
    let outputs = &user["outputs"]["properties"]["user"];
    assert_eq!(outputs["properties"]["role"]["enum"], json!(["ADMIN", "MEMBER"]));
    assert_eq!(outputs["properties"]["tags"]["type"], "array");
    assert_eq!(outputs["properties"]["address"]["properties"]["city"]["type"], "string");

    let users = e.tool("directory.users").unwrap().to_value();
    assert_eq!(users["inputs"]["properties"]["role"]["enum"], json!(["ADMIN", "MEMBER"]));
    assert_eq!(users["inputs"]["properties"]["limit"]["type"], "integer");
    assert!(users["inputs"].get("required").is_none(), "a defaulted or nullable argument is optional");

    let create = e.tool("directory.createUser").unwrap().to_value();
    assert_eq!(create["tool_call_template"]["operation_type"], "mutation");
    assert_eq!(create["tool_call_template"]["variable_types"], json!({"input": "NewUser!"}));
    let input = &create["inputs"]["properties"]["input"];
    assert_eq!(input["type"], "object");
    assert_eq!(input["required"], json!(["name"]), "role has a default, tags and address are nullable");
    assert_eq!(input["properties"]["tags"]["items"]["type"], "string");
    assert_eq!(input["properties"]["address"]["properties"]["city"]["type"], "string");
    assert_eq!(input["additionalProperties"], false);
    // One introspection request, and none per call afterwards.
    assert_eq!(s.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn queries_and_mutations_are_called_with_built_operations() {
    let s = server().await;
    let e = engine_with(json!({
        "manual_call_templates": [{"name": "dir", "call_template_type": "graphql", "url": s.loopback.url("/graphql")}]
    }))
    .await;
    e.register_configured_manuals().await.unwrap();
    let before = s.requests.load(Ordering::SeqCst);

    let got = call(&e, "dir.user", json!({"id": "1"})).await.unwrap();
    assert_eq!(got["user"]["name"], "Alice");
    assert_eq!(got["user"]["address"], json!({"city": "Paris", "zip": null}));
    assert_eq!(got["user"]["friends"][0]["name"], "Alice");
    let sent = s.last_body.lock().clone();
    assert_eq!(sent["variables"], json!({"id": "1"}));
    assert!(sent["query"].as_str().unwrap().starts_with("query($id: ID!) { user(id: $id) {"), "{sent}");

    // Optional arguments not given are not declared.
    let got = call(&e, "dir.users", json!({"role": "MEMBER"})).await.unwrap();
    assert_eq!(got["users"].as_array().unwrap().len(), 1);
    assert_eq!(got["users"][0]["name"], "Bob");
    assert_eq!(call(&e, "dir.add", json!({"a": 2, "b": 40})).await.unwrap(), json!({"add": 42}));

    let got =
        call(&e, "dir.createUser", json!({"input": {"name": "Carol", "tags": ["new"], "address": {"city": "Oslo"}}}))
            .await
            .unwrap();
    assert_eq!(got["createUser"]["name"], "Carol");
    assert_eq!(got["createUser"]["role"], "MEMBER");
    assert_eq!(got["createUser"]["address"]["city"], "Oslo");
    assert!(s.last_body.lock()["query"].as_str().unwrap().starts_with("mutation($input: NewUser!)"));
    assert_eq!(s.requests.load(Ordering::SeqCst) - before, 4, "one request per call");

    // Arguments are validated against the introspected schema before any request.
    let err = call(&e, "dir.createUser", json!({"input": {"name": "D", "colour": "red"}})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    let err = call(&e, "dir.users", json!({"role": "OWNER"})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    assert_eq!(s.requests.load(Ordering::SeqCst) - before, 4);
}

fn gql_manual(url: &str, tools: Value) -> ManualSource {
    let tools: Vec<Value> = tools
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, extra)| {
            let mut tpl = json!({"call_template_type": "graphql", "url": url});
            tpl.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({"name": name, "inputs": {"type": "object"}, "tool_call_template": tpl})
        })
        .collect();
    ManualSource::Inline(json!({"name": "api", "tools": tools}))
}

#[tokio::test]
async fn an_explicit_query_keeps_its_graphql_variables() {
    let s = server().await;
    // `api_id` and `api_who` exist: a python-utcp-style substitution would rewrite the
    // query's `$id` / `$who`. Headers still get the engine's variables.
    let e = engine_with(json!({"variables": {"api_id": "HIJACKED", "api_who": "HIJACKED", "api_TOKEN": "t-1"}})).await;
    let query = "query GetUser($who: ID!) { user(id: $who) { id name } }";
    e.register_manual(
        gql_manual(
            &s.loopback.url("/graphql"),
            json!({
                "get_user": {"query": query, "operation_name": "GetUser", "headers": {"X-Token": "${TOKEN}"}},
                "add": {"variable_types": {"a": "Int!", "b": "Int!"}},
            }),
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(e.required_variables("api").unwrap(), ["api_TOKEN"], "a GraphQL document needs no engine variables");
    let got = call(&e, "api.get_user", json!({"who": "1"})).await.unwrap();
    assert_eq!(got, json!({"user": {"id": "1", "name": "Alice"}}));
    let sent = s.last_body.lock().clone();
    assert_eq!(sent["query"], query);
    assert_eq!(sent["operationName"], "GetUser");
    assert_eq!(sent["variables"], json!({"who": "1"}));
    // A python-utcp manual without a query: typed by `variable_types`.
    assert_eq!(call(&e, "api.add", json!({"a": 1, "b": 2})).await.unwrap(), json!({"add": 3}));
}

#[tokio::test]
async fn graphql_and_http_errors_fail_the_call() {
    let s = server().await;
    let e = engine_with(json!({"calls": {"max_response_size": 1024}})).await;
    let partial = "{ user(id: \"1\") { name } broken(reason: \"x\") }";
    e.register_manual(
        gql_manual(
            &s.loopback.url("/graphql"),
            json!({
                "broken": {"variable_types": {"reason": "String!"}},
                "partial": {"query": partial},
                "bad_doc": {"query": "{ nope }"},
            }),
        ),
        None,
    )
    .await
    .unwrap();
    let err = call(&e, "api.broken", json!({"reason": "tests"})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed, "{err}");
    assert!(err.to_string().contains("broken on purpose: tests (at broken)"), "{err}");
    let err = call(&e, "api.partial", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed);
    assert!(err.to_string().contains("partial data came back for: user"), "{err}");
    let err = call(&e, "api.bad_doc", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed);
    assert!(err.to_string().contains("nope"), "{err}");

    let other = |path: &str| gql_manual(&s.loopback.url(path), json!({"t": {"query": "{ add(a: 1, b: 1) }"}}));
    let e2 = engine_with(json!({"calls": {"max_response_size": 1024}})).await;
    e2.register_manual(other("/down"), Some("down")).await.unwrap();
    e2.register_manual(other("/html"), Some("html")).await.unwrap();
    e2.register_manual(other("/big"), Some("big")).await.unwrap();
    let err = call(&e2, "down.t", json!({})).await.unwrap_err();
    assert_eq!((err.code(), err.http_status()), (ErrorCode::ToolFailed, Some(503)), "{err}");
    assert!(err.to_string().contains("maintenance"));
    let err = call(&e2, "html.t", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport);
    assert!(err.to_string().contains("not a GraphQL response"), "{err}");
    let err = call(&e2, "big.t", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport);
    assert!(err.to_string().contains("byte cap"), "{err}");
}

#[tokio::test]
async fn bad_template_fields_are_named() {
    let e = engine_with(json!({})).await;
    let cases = [
        (json!({"operation_type": "delete"}), "`operation_type` must be query, mutation or subscription"),
        (json!({"variable_types": {"id": "ID!!"}}), "`variable_types.id` must be a GraphQL type"),
        (json!({"variable_types": {"id; drop": "ID"}}), "'id; drop' is not a GraphQL name"),
        (json!({"operation_name": "Get User"}), "`operation_name` 'Get User' is not a GraphQL name"),
        (json!({"query": 7}), "`query` must be a string"),
        (json!({"query": "  "}), "`query` is empty"),
        (json!({"header_fields": "x"}), "`header_fields` must be a list"),
        (json!({"url": null}), "`url` (the GraphQL endpoint) is required"),
    ];
    for (extra, message) in cases {
        let err =
            e.register_manual(gql_manual("http://127.0.0.1:9/graphql", json!({"t": extra})), None).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidManual, "{err}");
        assert!(err.to_string().contains("tool 't': graphql template") && err.to_string().contains(message), "{err}");
    }
    // As manual call templates: in config, and inline.
    let err = Engine::from_json(json!({"manual_call_templates": [
        {"name": "g", "call_template_type": "graphql", "url": "http://127.0.0.1:9/", "operation_type": "read"}
    ]}))
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("('g'): invalid graphql template: `operation_type`"), "{err}");
    let inline = |t: Value| ManualSource::Inline(t);
    let err = e.register_manual(inline(json!({"call_template_type": "graphql"})), Some("g")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("`url`"), "{err}");
    let err = e
        .register_manual(
            inline(json!({"call_template_type": "graphql", "url": "http://127.0.0.1:9/", "query": "{ a }"})),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("takes no `query`"), "{err}");
    let err = e
        .register_manual(inline(json!({"call_template_type": "graphql", "url": "http://example.com/graphql"})), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security, "plain http beyond loopback: {err}");

    // At call time: an argument that cannot be a GraphQL variable, one without a type,
    // and a subscription to a closed port.
    e.register_manual(
        gql_manual("http://127.0.0.1:9/graphql", json!({"plain": {}, "sub": {"operation_type": "subscription"}})),
        Some("bad"),
    )
    .await
    .unwrap();
    let err = call(&e, "bad.plain", json!({"not-a-name": 1})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    assert!(err.to_string().contains("'not-a-name' is not a GraphQL name"), "{err}");
    // A subscription goes over a WebSocket (core/tests/graphql_ws.rs): nothing listens here.
    let err = call(&e, "bad.sub", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport);
    assert!(err.to_string().contains("cannot connect to ws://127.0.0.1:9/graphql"), "{err}");
}

#[tokio::test]
async fn an_object_argument_needs_a_variable_type() {
    let e = engine_with(json!({})).await;
    let manual = json!({"name": "typed", "tools": [{
        "name": "createUser",
        "inputs": {"type": "object", "properties": {"input": {"type": "object"}}},
        "tool_call_template": {"call_template_type": "graphql", "url": "http://127.0.0.1:9/graphql", "operation_type": "mutation"}
    }]});
    e.register_manual(ManualSource::Inline(manual), None).await.unwrap();
    let err = call(&e, "typed.createUser", json!({"input": {"name": "x"}})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidManual);
    assert!(err.to_string().contains("argument 'input' has no GraphQL type"), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let silent = Loopback::start(|_req: Request<hyper::body::Incoming>| async {
        std::future::pending::<()>().await;
        reply(200, "application/json", "{}")
    })
    .await;
    let e = engine_with(json!({})).await;
    let url = silent.url("/graphql");
    let err = e
        .register_manual(
            ManualSource::Inline(json!({"call_template_type": "graphql", "url": url, "timeout": "300ms"})),
            Some("silent"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");

    e.register_manual(gql_manual(&url, json!({"t": {"query": "{ a }"}})), None).await.unwrap();
    let options = CallOptions { timeout: Some(Duration::from_millis(300)), ..CallOptions::default() };
    let started = std::time::Instant::now();
    let err = e.call_tool("api.t", json!({}), options).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn auth_reaches_introspection_and_calls_and_variables_fill_it() {
    let s = server().await;
    let e = engine_with(json!({"variables": {"sec_KEY": "k-1"}})).await;
    let template = json!({
        "name": "sec", "call_template_type": "graphql", "url": s.loopback.url("/secured"),
        "auth": {"auth_type": "api_key", "api_key": "${KEY}", "var_name": "X-Api-Key", "location": "header"}
    });
    e.register_manual(ManualSource::Inline(template.clone()), None).await.unwrap();
    assert_eq!(call(&e, "sec.add", json!({"a": 1, "b": 1})).await.unwrap(), json!({"add": 2}));

    let without = engine_with(json!({"variables": {"sec_KEY": "wrong"}})).await;
    let err = without.register_manual(ManualSource::Inline(template), None).await.unwrap_err();
    assert_eq!((err.code(), err.http_status()), (ErrorCode::ToolFailed, Some(401)), "{err}");
}

#[tokio::test]
async fn a_server_that_closes_mid_response_is_a_transport_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"data\":";
            let _ = stream.write_all(head.as_bytes()).await;
            drop(stream);
        }
    });
    let e = engine_with(json!({})).await;
    let url = format!("http://127.0.0.1:{port}/graphql");
    e.register_manual(gql_manual(&url, json!({"t": {"query": "{ a }"}})), None).await.unwrap();
    let err = call(&e, "api.t", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    let err = e
        .register_manual(ManualSource::Inline(json!({"call_template_type": "graphql", "url": url})), Some("cut"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    peer.abort();
}

#[tokio::test]
async fn a_redirect_may_not_carry_the_document_to_another_origin() {
    let s = server().await;
    let target = s.loopback.url("/graphql").replace("127.0.0.1", "localhost");
    let bouncer = Loopback::start(move |_req: Request<hyper::body::Incoming>| {
        let target = target.clone();
        async move { Response::builder().status(307).header("location", target).body(Full::new(Bytes::new())).unwrap() }
    })
    .await;
    let e = engine_with(json!({})).await;
    e.register_manual(gql_manual(&bouncer.url("/graphql"), json!({"t": {"query": "{ add(a: 1, b: 2) }"}})), None)
        .await
        .unwrap();
    let err = call(&e, "api.t", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security, "{err}");
}
