//! An MCP server built with the official Rust SDK, for `core/tests/mcp.rs`,
//! `bindings-python/tests/` and `bench/mcp/`.
//!
//! Tools (13): `add` and `multiply` (structured results, with an output schema), `echo`,
//! `shout`, `reverse`, `concat` and `length` (text, no output schema), `noop` (no
//! content), `image` (an image item), `fail` (`isError`), `sleep` (waits `ms`), `crash`
//! (the process exits mid-call), `pid` (the server's process id). `MCP_TEST_TOOLS_PAGE`
//! set to N pages `tools/list` N tools at a time. Only the cases the tests need.
//!
//! Usage: `mcp_test_server [--http 127.0.0.1:PORT [--stateless]] [--output-schemas]`.
//! - Without `--http`: stdio.
//! - `--http ADDR`: Streamable HTTP at `http://ADDR/mcp` (rmcp's `StreamableHttpService`
//!   over hyper's HTTP/1.1 server). The first stdout line is `listening http://IP:PORT/mcp`,
//!   with the bound port when PORT is 0. By default legacy clients (before 2026-07-28)
//!   get sessions (`Mcp-Session-Id` after `initialize`); `--stateless` serves every request
//!   on its own, with JSON responses (the 2026-07-28 era is always served statelessly).
//! - `--output-schemas`: every tool has an output schema and every successful result
//!   carries `structuredContent` (`{"result": x}`, x the text or the content), for clients
//!   that need it: python-utcp 1.2 registers no tool from a server where one tool lacks an
//!   output schema, and the official Python client then checks each result against it.
//!
//! Both modes run on one thread (tokio's current-thread runtime), so a benchmark can pin
//! the server to one core and read its CPU time.

use std::convert::Infallible;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorData, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{SessionManager, StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

#[derive(Clone, Copy)]
struct TestServer {
    output_schemas: bool,
}

fn tools(output_schemas: bool) -> Vec<Value> {
    let object = |props: Value| json!({"type": "object", "properties": props});
    let text = |name: &str| json!({name: {"type": "string"}});
    let structured = |ty: &str| object(json!({"result": {"type": ty}}));
    let mut all = vec![
        json!({"name": "add", "description": "Add two numbers", "inputSchema": object(json!({"a": {"type": "number"}, "b": {"type": "number"}})),
               "outputSchema": structured("number")}),
        json!({"name": "multiply", "description": "Multiply two numbers", "inputSchema": object(json!({"a": {"type": "number"}, "b": {"type": "number"}})),
               "outputSchema": structured("number")}),
        json!({"name": "echo", "description": "Echo a text", "inputSchema": object(text("text"))}),
        json!({"name": "shout", "description": "The text in capitals", "inputSchema": object(text("text"))}),
        json!({"name": "reverse", "description": "The text reversed", "inputSchema": object(text("text"))}),
        json!({"name": "concat", "description": "a then b", "inputSchema": object(json!({"a": {"type": "string"}, "b": {"type": "string"}}))}),
        json!({"name": "length", "description": "The number of characters of the text", "inputSchema": object(text("text"))}),
        json!({"name": "noop", "description": "Does nothing", "inputSchema": object(json!({}))}),
        json!({"name": "image", "description": "A one-pixel image", "inputSchema": object(json!({}))}),
        json!({"name": "fail", "description": "Always fails", "inputSchema": object(json!({}))}),
        json!({"name": "sleep", "description": "Sleeps ms milliseconds", "inputSchema": object(json!({"ms": {"type": "integer"}}))}),
        json!({"name": "crash", "description": "Exits the server", "inputSchema": object(json!({}))}),
        json!({"name": "pid", "description": "The server's process id", "inputSchema": object(json!({}))}),
    ];
    if output_schemas {
        for tool in &mut all {
            if tool.get("outputSchema").is_none() {
                tool["outputSchema"] = object(json!({"result": {}}));
            }
        }
    }
    all
}

impl TestServer {
    fn result(&self, mut value: Value) -> Result<CallToolResponse, ErrorData> {
        if self.output_schemas && value.get("structuredContent").is_none() && value.get("isError").is_none() {
            let content = &value["content"];
            let inner = match content.as_array().map(Vec::as_slice) {
                Some([one]) if one["type"] == "text" => one["text"].clone(),
                _ => content.clone(),
            };
            value["structuredContent"] = json!({"result": inner});
        }
        let result: CallToolResult =
            serde_json::from_value(value).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(CallToolResponse::Complete(result))
    }
}

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let all = tools(self.output_schemas);
        let page: usize = std::env::var("MCP_TEST_TOOLS_PAGE").ok().and_then(|p| p.parse().ok()).unwrap_or(all.len());
        let start: usize = request.and_then(|r| r.cursor).and_then(|c| c.parse().ok()).unwrap_or(0);
        let end = (start + page).min(all.len());
        let mut listed = json!({"tools": all[start.min(end)..end]});
        if end < all.len() {
            listed["nextCursor"] = json!(end.to_string());
        }
        serde_json::from_value(listed).map_err(|e| ErrorData::internal_error(e.to_string(), None))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let number = |k: &str| args.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let string = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let text = |t: String| self.result(json!({"content": [{"type": "text", "text": t}]}));
        let structured = |x: f64| {
            self.result(
                json!({"content": [{"type": "text", "text": x.to_string()}], "structuredContent": {"result": x}}),
            )
        };
        match request.name.as_ref() {
            "add" => structured(number("a") + number("b")),
            "multiply" => structured(number("a") * number("b")),
            "echo" => text(string("text")),
            "shout" => text(string("text").to_uppercase()),
            "reverse" => text(string("text").chars().rev().collect()),
            "concat" => text(string("a") + &string("b")),
            "length" => text(string("text").chars().count().to_string()),
            "noop" => self.result(json!({"content": []})),
            "image" => {
                self.result(json!({"content": [{"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}]}))
            }
            "fail" => self.result(json!({"content": [{"type": "text", "text": "the tool broke"}], "isError": true})),
            "sleep" => {
                tokio::time::sleep(std::time::Duration::from_millis(number("ms") as u64)).await;
                text("slept".to_owned())
            }
            "crash" => std::process::exit(3),
            "pid" => text(std::process::id().to_string()),
            other => Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        }
    }
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("mcp_test_server: {message}");
    std::process::exit(1);
}

async fn serve_stdio(server: TestServer) {
    let service = match server.serve(rmcp::transport::stdio()).await {
        Ok(service) => service,
        Err(e) => fail(e),
    };
    let _ = service.waiting().await;
}

/// Streamable HTTP at `/mcp` (rmcp answers any path; clients are given `/mcp`).
async fn serve_http(server: TestServer, addr: &str, stateless: bool) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| fail(format!("bind {addr}: {e}")));
    let bound = listener.local_addr().unwrap_or_else(|e| fail(e));
    let mut config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(["localhost".to_owned(), "127.0.0.1".into(), "::1".into(), bound.ip().to_string()])
        .with_sse_keep_alive(None);
    if stateless {
        config = config.with_legacy_session_mode(false).with_json_response(true);
    }
    println!("listening http://{bound}/mcp");
    if stateless {
        let sessions = Arc::new(NeverSessionManager::default());
        accept(listener, StreamableHttpService::new(move || Ok(server), sessions, config)).await
    } else {
        let sessions = Arc::new(LocalSessionManager::default());
        accept(listener, StreamableHttpService::new(move || Ok(server), sessions, config)).await
    }
}

/// One hyper HTTP/1.1 connection task per accepted socket, each request handed to rmcp.
async fn accept<M: SessionManager>(listener: tokio::net::TcpListener, service: StreamableHttpService<TestServer, M>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("mcp_test_server: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.handle(request).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, handler).await;
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut http, mut stateless, mut output_schemas) = (None, false, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--http" => http = Some(args.next().unwrap_or_else(|| fail("--http needs an address, 127.0.0.1:PORT"))),
            "--stateless" => stateless = true,
            "--output-schemas" => output_schemas = true,
            other => fail(format!("unknown argument {other:?}")),
        }
    }
    let server = TestServer { output_schemas };
    match http {
        Some(addr) => serve_http(server, &addr, stateless).await,
        None if stateless => fail("--stateless goes with --http"),
        None => serve_stdio(server).await,
    }
}
