//! An MCP server over stdio, built with the official Rust SDK, for `core/tests/mcp.rs`.
//!
//! Tools: `add` (structured result, with an output schema), `echo` (text, no output
//! schema), `image` (an image item), `fail` (`isError`), `sleep` (waits `ms`), `crash`
//! (the process exits mid-call), `pid` (the server's process id). `MCP_TEST_TOOLS_PAGE`
//! set to N pages `tools/list` N tools at a time. Only the cases the test needs.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorData, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

#[derive(Clone)]
struct TestServer;

fn tools() -> Vec<Value> {
    let object = |props: Value| json!({"type": "object", "properties": props});
    vec![
        json!({"name": "add", "description": "Add two numbers", "inputSchema": object(json!({"a": {"type": "number"}, "b": {"type": "number"}})),
               "outputSchema": object(json!({"result": {"type": "number"}}))}),
        json!({"name": "echo", "description": "Echo a text", "inputSchema": object(json!({"text": {"type": "string"}}))}),
        json!({"name": "image", "description": "A one-pixel image", "inputSchema": object(json!({}))}),
        json!({"name": "fail", "description": "Always fails", "inputSchema": object(json!({}))}),
        json!({"name": "sleep", "description": "Sleeps ms milliseconds", "inputSchema": object(json!({"ms": {"type": "integer"}}))}),
        json!({"name": "crash", "description": "Exits the server", "inputSchema": object(json!({}))}),
        json!({"name": "pid", "description": "The server's process id", "inputSchema": object(json!({}))}),
    ]
}

fn result(value: Value) -> Result<CallToolResponse, ErrorData> {
    let result: CallToolResult =
        serde_json::from_value(value).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    Ok(CallToolResponse::Complete(result))
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
        let all = tools();
        let page: usize = std::env::var("MCP_TEST_TOOLS_PAGE").ok().and_then(|p| p.parse().ok()).unwrap_or(all.len());
        let start: usize = request.and_then(|r| r.cursor).and_then(|c| c.parse().ok()).unwrap_or(0);
        let end = (start + page).min(all.len());
        let mut listed = json!({"tools": all[start..end]});
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
        match request.name.as_ref() {
            "add" => {
                let sum = number("a") + number("b");
                result(
                    json!({"content": [{"type": "text", "text": sum.to_string()}], "structuredContent": {"result": sum}}),
                )
            }
            "echo" => {
                let text = args.get("text").and_then(Value::as_str).unwrap_or_default();
                result(json!({"content": [{"type": "text", "text": text}]}))
            }
            "image" => result(json!({"content": [{"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}]})),
            "fail" => result(json!({"content": [{"type": "text", "text": "the tool broke"}], "isError": true})),
            "sleep" => {
                tokio::time::sleep(std::time::Duration::from_millis(number("ms") as u64)).await;
                result(json!({"content": [{"type": "text", "text": "slept"}]}))
            }
            "crash" => std::process::exit(3),
            "pid" => result(json!({"content": [{"type": "text", "text": std::process::id().to_string()}]})),
            other => Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let service = match TestServer.serve(rmcp::transport::stdio()).await {
        Ok(service) => service,
        Err(e) => {
            eprintln!("mcp_test_server: {e}");
            std::process::exit(1);
        }
    };
    let _ = service.waiting().await;
}
