//! `mcp` tools: MCP servers run as child processes over stdio, through the
//! official Rust SDK (`rmcp`), in either protocol era (docs/architecture.md, "MCP tools").
//!
//! A manual call template of type `mcp` names its servers in `config.mcpServers`,
//! as python-utcp writes it. Registration starts each server, lists its tools
//! (following `nextCursor`) and names them `<manual>.<server>.<tool>`. Calls reuse one
//! live connection per server, shared and multiplexed; a server that died is
//! started again on the next call. `Engine::close` ends every child.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::{RoleClient, RunningService};
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::error::{Error, ErrorCode, Result};
use crate::manual::{McpTemplate, Tool};
use crate::registry::RegisteredTool;

/// Bytes of a server's stderr kept in the engine's log, per server start.
const STDERR_LOG_CAP: usize = 64 * 1024;

/// How a server is started: `config.mcpServers.<name>` of an `mcp` template.
#[derive(Debug, Clone, PartialEq)]
pub struct StdioServer {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
}

/// The servers of an `mcp` template, in the order written. Errors name the key at fault.
pub fn servers(template: &McpTemplate) -> Result<Vec<(String, StdioServer)>> {
    let bad = |what: String| Error::InvalidManual(format!("mcp template: {what}"));
    let Some(servers) = template.config.get("mcpServers").and_then(Value::as_object) else {
        return Err(bad("`config.mcpServers` must be an object of servers".into()));
    };
    let mut out = Vec::new();
    for (name, spec) in servers {
        if name.is_empty() || name.contains('.') {
            return Err(bad(format!("server name '{name}' must be non-empty and without '.'")));
        }
        let at = |key: &str| format!("config.mcpServers.{name}.{key}");
        let Some(spec) = spec.as_object() else {
            return Err(bad(format!("config.mcpServers.{name} must be an object")));
        };
        let transport = spec.get("transport").and_then(Value::as_str);
        if spec.contains_key("url") || transport == Some("http") {
            return Err(Error::with_code(
                ErrorCode::Transport,
                format!(
                    "mcp server '{name}': Streamable HTTP servers (`url`) cannot be called yet; stdio servers (`command`) can"
                ),
            ));
        }
        let Some(command) = spec.get("command").and_then(Value::as_str).filter(|c| !c.is_empty()) else {
            return Err(bad(format!("{} must be a non-empty string", at("command"))));
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            match spec.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| bad(format!("{} must hold strings", at(key))))
                    })
                    .collect(),
                Some(_) => Err(bad(format!("{} must be a list of strings", at(key)))),
            }
        };
        let env = match spec.get("env") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(vars)) => vars
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                    _ => Err(bad(format!("{} must be a string", at(&format!("env.{k}"))))),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad(format!("{} must be an object", at("env")))),
        };
        let cwd = match spec.get("cwd") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad(format!("{} must be a string", at("cwd")))),
        };
        out.push((name.clone(), StdioServer { command: command.to_string(), args: strings("args")?, env, cwd }));
    }
    if out.is_empty() {
        return Err(bad("`config.mcpServers` names no server".into()));
    }
    Ok(out)
}

/// One running server: the SDK's client and the child behind it.
struct Session {
    client: RunningService<RoleClient, ()>,
    child: parking_lot::Mutex<tokio::process::Child>,
}

impl Session {
    fn is_alive(&self) -> bool {
        !self.client.is_transport_closed() && matches!(self.child.lock().try_wait(), Ok(None))
    }

    /// Let a session go without waiting: cancel the client and kill the child's group;
    /// tokio reaps the child (`kill_on_drop`). For use on the runtime, where `end` would block.
    fn abandon(&self) {
        self.client.cancellation_token().cancel();
        let mut child = self.child.lock();
        if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = child.start_kill();
    }

    /// End the child: close its stdin (the SDK's cancel), then SIGTERM, then SIGKILL,
    /// reaping it so no zombie is left.
    fn end(&self, grace: Duration) {
        self.client.cancellation_token().cancel();
        let mut child = self.child.lock();
        let deadline = std::time::Instant::now() + grace;
        if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        }
        while std::time::Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = child.start_kill();
        for _ in 0..500 {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The live servers of an engine, by (manual, server). The map's lock is never held
/// across an await, so `close` (sync) always finds every server.
#[derive(Default)]
pub struct Sessions {
    live: parking_lot::Mutex<HashMap<(String, String), Arc<Session>>>,
    /// Set by `close`: no server is started after it.
    closed: std::sync::atomic::AtomicBool,
}

impl Sessions {
    /// End every server (the engine is closing).
    pub fn close(&self, grace: Duration) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = self.live.lock().drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.end(grace);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The session of `server`, started if none is alive. Two calls that find it gone
    /// may both start one: the first to come back keeps its own, the other's is ended.
    async fn session(
        &self,
        env_allowlist: &[String],
        manual: &str,
        server: &str,
        spec: &StdioServer,
    ) -> Result<Arc<Session>> {
        let key = (manual.to_string(), server.to_string());
        {
            let mut live = self.live.lock();
            match live.get(&key) {
                Some(session) if session.is_alive() => return Ok(session.clone()),
                Some(_) => {
                    tracing::warn!(manual, server, "mcp server ended; starting it again");
                    if let Some(dead) = live.remove(&key) {
                        dead.abandon();
                    }
                }
                None => {}
            }
        }
        let closed = || Error::InvalidArgument("the engine is closed".into());
        if self.is_closed() {
            return Err(closed());
        }
        let started = Arc::new(start(env_allowlist, manual, server, spec).await?);
        let kept = {
            let mut live = self.live.lock();
            match live.get(&key) {
                Some(other) if other.is_alive() => other.clone(),
                _ => {
                    live.insert(key.clone(), started.clone());
                    started.clone()
                }
            }
        };
        if !Arc::ptr_eq(&kept, &started) {
            started.abandon();
        }
        // `close` ran while this server started: it found the map without it.
        if self.is_closed() {
            if let Some(session) = self.live.lock().remove(&key) {
                session.abandon();
            }
            return Err(closed());
        }
        Ok(kept)
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// Start `spec` (no shell; the environment cleared and rebuilt from the allowlist and
/// the server's `env`) and open an MCP client on its stdio, new era first.
async fn start(env_allowlist: &[String], manual: &str, server: &str, spec: &StdioServer) -> Result<Session> {
    let mut command = tokio::process::Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .envs(env_allowlist.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))))
        .envs(spec.env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &spec.cwd {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|e| {
        Error::with_code(ErrorCode::Transport, format!("mcp server '{server}': cannot run '{}': {e}", spec.command))
    })?;
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(Error::Internal("mcp: the child's stdio is not piped".into()));
    };
    tokio::spawn(log_stderr(manual.to_string(), server.to_string(), stderr));
    let lifecycle = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    };
    let session = Session {
        client: match ().serve_with_lifecycle((stdout, stdin), lifecycle).await {
            Ok(client) => client,
            Err(e) => {
                let _ = child.start_kill();
                return Err(Error::with_code(
                    ErrorCode::Transport,
                    format!("mcp server '{server}' ({}): no MCP session: {e}", spec.command),
                ));
            }
        },
        child: parking_lot::Mutex::new(child),
    };
    Ok(session)
}

/// Copy a server's stderr into the engine's log, up to [`STDERR_LOG_CAP`] bytes.
async fn log_stderr(manual: String, server: String, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    let mut logged = 0usize;
    while let Ok(Some(line)) = lines.next_line().await {
        if logged < STDERR_LOG_CAP {
            logged += line.len() + 1;
            tracing::info!(manual = %manual, server = %server, "mcp stderr: {line}");
        }
    }
}

/// List the tools of every server of `template`, as tools of manual `manual`
/// (`<server>.<tool>`, each keeping `template` as its call template).
pub async fn list_tools(
    sessions: &Sessions,
    env_allowlist: &[String],
    manual: &str,
    template: &McpTemplate,
    call_template: &crate::manual::CallTemplate,
    timeout: Duration,
) -> Result<Vec<Tool>> {
    let mut tools = Vec::new();
    for (server, spec) in servers(template)? {
        let listing = async {
            let session = sessions.session(env_allowlist, manual, &server, &spec).await?;
            session.client.list_all_tools().await.map_err(|e| {
                Error::with_code(ErrorCode::Transport, format!("mcp server '{server}': tools/list failed: {e}"))
            })
        };
        let listed = tokio::time::timeout(timeout, listing).await.map_err(|_| {
            Error::Timeout(format!(
                "mcp server '{server}' ({}) did not list its tools within {timeout:?}",
                spec.command
            ))
        })??;
        for tool in listed {
            let raw = serde_json::to_value(&tool)
                .map_err(|e| Error::Internal(format!("mcp server '{server}': a tool has no JSON form: {e}")))?;
            let field = |key: &str| raw.get(key).cloned();
            tools.push(Tool {
                // Prefixed with the manual so that registration, which strips a leading
                // `<manual>.`, keeps `<server>.<tool>` even when server and manual share a name.
                name: format!("{manual}.{server}.{}", tool.name),
                description: field("description").and_then(|d| d.as_str().map(str::to_string)).unwrap_or_default(),
                inputs: field("inputSchema").unwrap_or_else(|| Value::Object(Map::new())),
                // A tool without `outputSchema` still registers (python-utcp 1.2 registers none then).
                outputs: field("outputSchema").unwrap_or_else(|| Value::Object(Map::new())),
                tags: Vec::new(),
                average_response_size: None,
                tool_call_template: call_template.clone(),
                extra: Map::new(),
            });
        }
    }
    Ok(tools)
}

/// Call `tool` (`<manual>.<server>.<tool>`) on its server.
pub async fn call(
    sessions: &Sessions,
    env_allowlist: &[String],
    tool: &RegisteredTool,
    template: &McpTemplate,
    args: Map<String, Value>,
) -> Result<Value> {
    let Some((server, remote_name)) = tool.tool.name.split_once('.') else {
        return Err(Error::InvalidManual(format!(
            "tool '{}': an mcp tool is named <manual>.<server>.<tool>",
            tool.name
        )));
    };
    let Some((_, spec)) = servers(template)?.into_iter().find(|(name, _)| name == server) else {
        return Err(Error::InvalidManual(format!("tool '{}': its template has no server '{server}'", tool.name)));
    };
    let session = sessions.session(env_allowlist, &tool.manual, server, &spec).await?;
    let params = CallToolRequestParams::new(remote_name.to_string()).with_arguments(args);
    let result = session.client.call_tool(params).await.map_err(|e| {
        Error::with_code(ErrorCode::Transport, format!("tool '{}': mcp server '{server}': {e}", tool.name))
    })?;
    let raw = serde_json::to_value(&result)
        .map_err(|e| Error::Internal(format!("tool '{}': the result has no JSON form: {e}", tool.name)))?;
    unwrap_result(&tool.name, raw)
}

/// A `tools/call` result as python-utcp hands it over: `structuredContent` (its inner
/// value when it is exactly `{"result": x}`), else the content (one item → the item,
/// several → a list; text that is JSON is parsed). `isError` is an error, not a value.
pub fn unwrap_result(tool: &str, raw: Value) -> Result<Value> {
    let Value::Object(mut result) = raw else {
        return Err(Error::with_code(
            ErrorCode::Transport,
            format!("tool '{tool}': the server's result is not an object"),
        ));
    };
    let content: Vec<Value> = match result.remove("content") {
        Some(Value::Array(items)) => items.into_iter().map(content_item).collect(),
        _ => Vec::new(),
    };
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        let text: Vec<String> = content
            .iter()
            .map(|c| match c {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        return Err(Error::tool_failed(format!("tool '{tool}' failed: {}", text.join("\n"))));
    }
    if let Some(structured) = result.remove("structuredContent") {
        return Ok(match structured {
            Value::Object(mut map) if map.len() == 1 && map.contains_key("result") => {
                map.remove("result").unwrap_or(Value::Null)
            }
            other => other,
        });
    }
    let mut content = content;
    Ok(match content.len() {
        0 => Value::Null,
        1 => content.remove(0),
        _ => Value::Array(content),
    })
}

/// One content item: text as its value (parsed when it is JSON), anything else
/// (image, audio, resource) as the object the server sent, `mimeType` included and
/// `null` members (an SDK's unset `annotations`, `_meta`) left out.
fn content_item(item: Value) -> Value {
    match item {
        Value::Object(map) if map.get("type").and_then(Value::as_str) == Some("text") => {
            let text = map.get("text").and_then(Value::as_str).unwrap_or_default();
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(config: Value) -> McpTemplate {
        McpTemplate { common: Default::default(), config, extra: Map::new() }
    }

    #[test]
    fn servers_read_python_utcp_config() {
        let t = template(
            json!({"mcpServers": {"calc": {"command": "python3", "args": ["-m", "calc"], "env": {"A": "1", "N": 2}, "cwd": "/tmp"}}}),
        );
        let servers = servers(&t).unwrap();
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].0, "calc");
        assert_eq!(servers[0].1.args, vec!["-m", "calc"]);
        assert_eq!(servers[0].1.env, vec![("A".to_string(), "1".to_string()), ("N".to_string(), "2".to_string())]);
        assert_eq!(servers[0].1.cwd.as_deref(), Some("/tmp"));
    }

    #[test]
    fn bad_server_configs_name_the_key() {
        for (config, names) in [
            (json!({}), "config.mcpServers"),
            (json!({"mcpServers": {}}), "names no server"),
            (json!({"mcpServers": {"s": {"args": []}}}), "config.mcpServers.s.command"),
            (json!({"mcpServers": {"s": {"command": "x", "args": "-v"}}}), "config.mcpServers.s.args"),
            (json!({"mcpServers": {"s": {"command": "x", "env": {"A": []}}}}), "config.mcpServers.s.env.A"),
            (json!({"mcpServers": {"a.b": {"command": "x"}}}), "server name 'a.b'"),
        ] {
            let e = servers(&template(config)).unwrap_err();
            assert!(e.to_string().contains(names), "{e}");
            assert_eq!(e.code(), ErrorCode::InvalidManual);
        }
        let e = servers(&template(json!({"mcpServers": {"s": {"url": "http://127.0.0.1:1/mcp"}}}))).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Transport);
    }

    #[test]
    fn results_unwrap_as_python_utcp_does() {
        let text = |t: &str| json!({"type": "text", "text": t});
        assert_eq!(unwrap_result("t", json!({"content": [text("hi")]})).unwrap(), json!("hi"));
        assert_eq!(unwrap_result("t", json!({"content": [text("{\"a\": 1}")]})).unwrap(), json!({"a": 1}));
        assert_eq!(unwrap_result("t", json!({"content": [text("1"), text("x")]})).unwrap(), json!([1, "x"]));
        assert_eq!(unwrap_result("t", json!({"content": []})).unwrap(), Value::Null);
        assert_eq!(
            unwrap_result("t", json!({"content": [text("5")], "structuredContent": {"result": 5}})).unwrap(),
            json!(5)
        );
        assert_eq!(
            unwrap_result("t", json!({"content": [], "structuredContent": {"a": 1, "result": 2}})).unwrap(),
            json!({"a": 1, "result": 2})
        );
        let image = json!({"type": "image", "data": "AAAA", "mimeType": "image/png"});
        let sent =
            json!({"type": "image", "data": "AAAA", "mimeType": "image/png", "annotations": null, "_meta": null});
        assert_eq!(unwrap_result("t", json!({"content": [sent]})).unwrap(), image);
        let e = unwrap_result("t", json!({"content": [text("boom")], "isError": true})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ToolFailed);
        assert!(e.to_string().contains("boom"), "{e}");
    }
}
