//! The servers of an `mcp` call template: `config.mcpServers`, as python-utcp 1.2
//! writes it (`command` + `args` / `env` / `cwd`, or `url` + `headers` / `timeout` /
//! `sse_read_timeout`), with @utcp/sdk's `transport: "stdio" | "http"` key accepted too,
//! and `transport: "sse"` (as python-utcp's users write servers of the older HTTP+SSE
//! transport; its mcp-use client reaches them by falling back, as we do without the key).

use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::manual::McpTemplate;

/// A server started as a child process, spoken to over its stdio.
#[derive(Debug, Clone, PartialEq)]
pub struct StdioServer {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
}

/// A server reached over Streamable HTTP (or, failing that, the older HTTP+SSE transport).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpServer {
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    /// Bounds a request that is not a tool call (handshake, listing); python-utcp's 30 s default.
    pub timeout: Duration,
    /// How long a server's event stream may stay silent; python-utcp's 300 s default.
    pub sse_read_timeout: Duration,
    /// `"transport": "sse"`: the older HTTP+SSE transport straight away, without
    /// trying Streamable HTTP first.
    pub legacy_sse: bool,
}

/// How one server of a template is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Server {
    Stdio(StdioServer),
    Http(HttpServer),
}

impl Server {
    /// What names the server in messages: its command or its URL (credentials hidden).
    pub fn describe(&self) -> String {
        match self {
            Server::Stdio(s) => s.command.clone(),
            Server::Http(h) => crate::transport::net::redact(&h.url),
        }
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SSE_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// The servers of `template`, in the order written. Errors name the key at fault.
pub fn servers(template: &McpTemplate) -> Result<Vec<(String, Server)>> {
    let Some(servers) = template.config.get("mcpServers").and_then(Value::as_object) else {
        return Err(bad("`config.mcpServers` must be an object of servers".into()));
    };
    let mut out = Vec::new();
    for (name, spec) in servers {
        if name.is_empty() || name.contains('.') {
            return Err(bad(format!("server name '{name}' must be non-empty and without '.'")));
        }
        let Some(spec) = spec.as_object() else {
            return Err(bad(format!("config.mcpServers.{name} must be an object")));
        };
        let at = |key: &str| format!("config.mcpServers.{name}.{key}");
        let server = match spec.get("transport").and_then(Value::as_str) {
            Some("http" | "streamable-http" | "streamable_http") => http_server(spec, &at, false)?,
            Some("sse") => http_server(spec, &at, true)?,
            Some("stdio") => stdio_server(spec, &at)?,
            Some(other) => {
                return Err(bad(format!("{} '{other}' is not one of stdio, http, sse", at("transport"))));
            }
            None if spec.contains_key("url") => http_server(spec, &at, false)?,
            None => stdio_server(spec, &at)?,
        };
        out.push((name.clone(), server));
    }
    if out.is_empty() {
        return Err(bad("`config.mcpServers` names no server".into()));
    }
    Ok(out)
}

fn bad(what: String) -> Error {
    Error::InvalidManual(format!("mcp template: {what}"))
}

type Spec = serde_json::Map<String, Value>;

fn stdio_server(spec: &Spec, at: &dyn Fn(&str) -> String) -> Result<Server> {
    let Some(command) = spec.get("command").and_then(Value::as_str).filter(|c| !c.is_empty()) else {
        return Err(bad(format!("{} must be a non-empty string", at("command"))));
    };
    let args = match spec.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad(format!("{} must hold strings", at("args")))))
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad(format!("{} must be a list of strings", at("args")))),
    };
    let cwd = match spec.get("cwd") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad(format!("{} must be a string", at("cwd")))),
    };
    Ok(Server::Stdio(StdioServer { command: command.to_string(), args, env: string_map(spec, "env", at)?, cwd }))
}

fn http_server(spec: &Spec, at: &dyn Fn(&str) -> String, legacy_sse: bool) -> Result<Server> {
    let Some(raw) = spec.get("url").and_then(Value::as_str).filter(|u| !u.is_empty()) else {
        return Err(bad(format!("{} must be a non-empty string", at("url"))));
    };
    let url = url::Url::parse(raw).map_err(|e| bad(format!("{} is not a URL: {e}", at("url"))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!("{} must be an http(s) URL", at("url"))));
    }
    let seconds = |key: &str, default: Duration| -> Result<Duration> {
        match spec.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad(format!("{} must be a number of seconds in (0, 86400]", at(key)))),
        }
    };
    Ok(Server::Http(HttpServer {
        url,
        headers: string_map(spec, "headers", at)?,
        timeout: seconds("timeout", DEFAULT_TIMEOUT)?,
        sse_read_timeout: seconds("sse_read_timeout", DEFAULT_SSE_READ_TIMEOUT)?,
        legacy_sse,
    }))
}

/// An object of strings (`env`, `headers`); numbers and booleans are written as text.
fn string_map(spec: &Spec, key: &str, at: &dyn Fn(&str) -> String) -> Result<Vec<(String, String)>> {
    match spec.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(vars)) => vars
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                _ => Err(bad(format!("{} must be a string", at(&format!("{key}.{k}"))))),
            })
            .collect(),
        Some(_) => Err(bad(format!("{} must be an object", at(key)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::{Map, json};

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
        let Server::Stdio(s) = &servers[0].1 else { panic!("{:?}", servers[0].1) };
        assert_eq!(s.args, vec!["-m", "calc"]);
        assert_eq!(s.env, vec![("A".to_string(), "1".to_string()), ("N".to_string(), "2".to_string())]);
        assert_eq!(s.cwd.as_deref(), Some("/tmp"));
    }

    #[test]
    fn http_servers_read_python_utcp_and_sdk_config() {
        let t = template(json!({"mcpServers": {
            "a": {"url": "http://127.0.0.1:9/mcp", "headers": {"X-K": "v"}, "timeout": 5, "sse_read_timeout": 0.5},
            "b": {"transport": "http", "url": "https://example.com/mcp"},
            "c": {"transport": "sse", "url": "http://127.0.0.1:9/sse"},
        }}));
        let servers = servers(&t).unwrap();
        let Server::Http(a) = &servers[0].1 else { panic!() };
        assert_eq!(a.url.as_str(), "http://127.0.0.1:9/mcp");
        assert_eq!(a.headers, vec![("X-K".to_string(), "v".to_string())]);
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert_eq!(a.sse_read_timeout, Duration::from_millis(500));
        let Server::Http(b) = &servers[1].1 else { panic!() };
        assert_eq!(b.timeout, DEFAULT_TIMEOUT);
        assert!(!a.legacy_sse && !b.legacy_sse);
        let Server::Http(c) = &servers[2].1 else { panic!() };
        assert!(c.legacy_sse);
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
            (json!({"mcpServers": {"s": {"url": "ftp://h/x"}}}), "config.mcpServers.s.url"),
            (json!({"mcpServers": {"s": {"url": "not a url"}}}), "config.mcpServers.s.url"),
            (json!({"mcpServers": {"s": {"transport": "http"}}}), "config.mcpServers.s.url"),
            (json!({"mcpServers": {"s": {"url": "http://h/", "timeout": -1}}}), "config.mcpServers.s.timeout"),
            (json!({"mcpServers": {"s": {"url": "http://h/", "headers": {"A": {}}}}}), "config.mcpServers.s.headers.A"),
            (json!({"mcpServers": {"s": {"transport": "pigeon", "command": "x"}}}), "config.mcpServers.s.transport"),
        ] {
            let e = servers(&template(config)).unwrap_err();
            assert!(e.to_string().contains(names), "{e}");
            assert_eq!(e.code(), ErrorCode::InvalidManual);
        }
    }
}
