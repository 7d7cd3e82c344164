//! Calling tools: one module per call-template type, and what they share (the
//! pooled HTTP client, the OAuth token cache, native handlers, limits).
//!
//! The engine resolves the tool, substitutes variables and validates arguments;
//! a transport gets a ready template and the arguments and performs the call.

pub mod cli;
pub mod file;
pub mod graphql;
pub(crate) mod here;
pub use here::{BlockingCall, CallThread, host_callbacks_here, poll_with_callbacks, run_host_callback};
pub mod http;
pub mod mcp;
pub mod net;
pub mod post;
pub mod socket;
pub mod sse;
pub mod websocket;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::Stream;
use futures_util::future::BoxFuture;
use parking_lot::RwLock;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::manual::{CallTemplate, Tool};
use crate::registry::RegisteredTool;

/// A host function behind a `native` tool: gets the (validated) arguments object.
pub type NativeHandler = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value>> + Send + Sync>;

/// The items of a streaming call (`sse`, `streamable_http`, `websocket`, GraphQL
/// subscriptions; one item for the others).
pub type ItemStream = Pin<Box<dyn Stream<Item = Result<Value>> + Send>>;

tokio::task_local! {
    /// Where the progress notifications of the call being run go (`tool.progress`).
    static PROGRESS: Option<mcp::ProgressSink>;
}

/// Run `call` (a transport call) with its progress notifications going to `sink`.
pub async fn with_progress<F: std::future::Future>(sink: Option<mcp::ProgressSink>, call: F) -> F::Output {
    PROGRESS.scope(sink, call).await
}

fn current_progress() -> Option<mcp::ProgressSink> {
    PROGRESS.try_with(Clone::clone).ok().flatten()
}

/// Per-engine state the transports share.
pub struct Transports {
    pub(crate) config: Arc<Config>,
    client: OnceLock<std::result::Result<reqwest::Client, String>>,
    /// Clients for the tools of manuals fetched from a public / a private address:
    /// their resolvers refuse anything more local (`net::GuardedResolver::cap`).
    capped_clients: [OnceLock<std::result::Result<reqwest::Client, String>>; 2],
    /// Tells threads that drove calls of this engine on their own runtime (`here`) which
    /// of their clients is this engine's, and when it is gone.
    id: u64,
    alive: Arc<()>,
    /// Blocking host calls in progress (`here::BlockingCall`).
    blocking_calls: std::sync::atomic::AtomicUsize,
    pub(crate) tokens: http::TokenCache,
    natives: RwLock<HashMap<String, NativeHandler>>,
    pub(crate) file_root: PathBuf,
    /// The live MCP servers of `mcp` tools.
    pub(crate) mcp: mcp::Sessions,
    /// Open `websocket` tool sockets (`keep_alive`).
    pub(crate) websockets: websocket::Pool,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports").field("natives", &self.natives.read().len()).finish()
    }
}

impl Transports {
    pub fn new(config: Arc<Config>) -> Transports {
        let file_root = match (&config.calls.file_root, &config.base_dir) {
            (Some(root), _) => config.resolve_path(root),
            (None, Some(base)) => base.clone(),
            (None, None) => PathBuf::from("."),
        };
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Transports {
            config,
            client: OnceLock::new(),
            capped_clients: [OnceLock::new(), OnceLock::new()],
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            alive: Arc::new(()),
            blocking_calls: std::sync::atomic::AtomicUsize::new(0),
            tokens: http::TokenCache::default(),
            natives: RwLock::new(HashMap::new()),
            file_root,
            mcp: mcp::Sessions::default(),
            websockets: websocket::Pool::default(),
        }
    }

    /// The engine's one pooled HTTP client, built on first use (no TLS setup in `Engine::new`);
    /// on a thread that drives this engine's call itself, that thread's client (`here`).
    pub fn client(&self) -> Result<reqwest::Client> {
        if let Some(client) = here::thread_client(self) {
            return client;
        }
        let allow_private = self.config.calls.allow_private_networks;
        self.client
            .get_or_init(|| net::build_client(allow_private, None))
            .as_ref()
            .cloned()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))
    }

    /// The client for `tool`'s calls and the locality cap for their redirects: the
    /// engine's client, uncapped, unless the tool's manual was fetched from a public or
    /// private address; then nothing more local than that address is reached, by a
    /// redirect or by a name that resolves there (docs/design.md §11).
    pub fn client_for(&self, tool: &RegisteredTool) -> Result<(reqwest::Client, Option<net::OriginClass>)> {
        let cap = origin_cap(tool);
        Ok((self.capped_client(cap)?, cap))
    }

    /// The client whose resolver refuses addresses more local than `cap` (none: the
    /// engine's client; loopback caps nothing).
    pub fn capped_client(&self, cap: Option<net::OriginClass>) -> Result<reqwest::Client> {
        let cap = match cap {
            None | Some(net::OriginClass::Loopback) => return self.client(),
            Some(cap) => cap,
        };
        let slot = &self.capped_clients[usize::from(cap == net::OriginClass::Private)];
        let allow_private = self.config.calls.allow_private_networks;
        slot.get_or_init(|| net::build_client(allow_private, Some(cap)))
            .as_ref()
            .cloned()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))
    }

    /// The network policy for tool calls.
    pub fn policy(&self) -> net::NetPolicy {
        net::NetPolicy {
            allow_insecure_http: self.config.calls.allow_insecure_http,
            allow_private: self.config.calls.allow_private_networks,
        }
    }

    pub fn set_native(&self, name: &str, handler: NativeHandler) {
        self.natives.write().insert(name.to_string(), handler);
    }

    pub fn remove_natives_of(&self, manual: &str) {
        let prefix = format!("{manual}.");
        self.natives.write().retain(|k, _| !k.starts_with(&prefix));
    }

    fn native(&self, name: &str) -> Option<NativeHandler> {
        self.natives.read().get(name).cloned()
    }

    /// Call `tool` with its (substituted) `template` and validated `args`.
    pub async fn call(
        &self,
        tool: &RegisteredTool,
        template: &CallTemplate,
        args: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Value> {
        match template {
            CallTemplate::Native(_) => {
                let handler = self.native(&tool.name).ok_or_else(|| {
                    Error::NotFound(format!(
                        "native tool '{}' has no handler in this engine (register one with register_tool)",
                        tool.name
                    ))
                })?;
                handler(Value::Object(args)).await.map_err(|e| match e {
                    // A handler's own error keeps its code; INTERNAL from a host becomes TOOL_FAILED.
                    Error::Internal(m) => Error::tool_failed(format!("tool '{}': {m}", tool.name)),
                    other => other,
                })
            }
            CallTemplate::Http(t) => Box::pin(http::call(self, tool, t, args, timeout)).await,
            CallTemplate::Cli(t) => Box::pin(cli::call(self, tool, t, args, timeout)).await,
            CallTemplate::Graphql(t) => Box::pin(graphql::call(self, tool, t, args, timeout)).await,
            CallTemplate::Text(t) => Box::pin(file::call_text(self, tool, t)).await,
            CallTemplate::File(t) => Box::pin(file::call_file(self, tool, t)).await,
            CallTemplate::Sse(_) | CallTemplate::StreamableHttp(_) => {
                let (stream, single) = Box::pin(sse::open(self, tool, template, args, timeout)).await?;
                sse::collect(stream, single).await
            }
            CallTemplate::Mcp(t) => Box::pin(mcp::call(self, tool, t, args, current_progress().as_ref())).await,
            CallTemplate::Tcp(t) => Box::pin(socket::call(self, tool, socket::Protocol::Tcp, t, args)).await,
            CallTemplate::Udp(t) => Box::pin(socket::call(self, tool, socket::Protocol::Udp, t, args)).await,
            CallTemplate::Websocket(t) => Box::pin(websocket::call(self, tool, t, args, timeout)).await,
            other => Err(unsupported(tool, other)),
        }
    }

    /// Open a stream of results. Non-streaming templates yield their one result.
    /// Run `template` once with no arguments, bounded by `calls.default_timeout`: how a
    /// python-utcp manual call template of type `cli` yields its manual.
    pub async fn run_template(&self, manual: &str, template: &CallTemplate) -> Result<Value> {
        let tool = Tool {
            name: "manual".into(),
            description: String::new(),
            inputs: Value::Object(Map::new()),
            outputs: Value::Object(Map::new()),
            tags: Vec::new(),
            average_response_size: None,
            tool_call_template: template.clone(),
            extra: Map::new(),
        };
        let tool = RegisteredTool::detached(manual, tool);
        let timeout = self.config.calls.default_timeout;
        match tokio::time::timeout(timeout, self.call(&tool, template, Map::new(), timeout)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(format!("manual '{manual}': its call template took over {timeout:?}"))),
        }
    }

    pub async fn call_stream(
        &self,
        tool: &RegisteredTool,
        template: &CallTemplate,
        args: Map<String, Value>,
        timeout: Duration,
    ) -> Result<ItemStream> {
        match template {
            CallTemplate::Sse(_) | CallTemplate::StreamableHttp(_) => {
                Ok(Box::pin(sse::open(self, tool, template, args, timeout)).await?.0)
            }
            CallTemplate::Websocket(t) => Box::pin(websocket::call_stream(self, tool, t, args, timeout)).await,
            CallTemplate::Mcp(t) => Box::pin(mcp::call_stream(self, tool, t, args, current_progress())).await,
            CallTemplate::Graphql(t) => Box::pin(graphql::call_stream(self, tool, t, args, timeout)).await,
            _ => {
                let value = Box::pin(self.call(tool, template, args, timeout)).await?;
                Ok(Box::pin(futures_util::stream::once(async move { Ok(value) })))
            }
        }
    }
}

/// The locality cap of `tool`'s calls: the class of the address its manual was fetched
/// from, unless that is loopback (or the manual is the host's own): then none.
pub(crate) fn origin_cap(tool: &RegisteredTool) -> Option<net::OriginClass> {
    tool.fetched_from.as_deref().and_then(net::locality_cap)
}

fn unsupported(tool: &RegisteredTool, template: &CallTemplate) -> Error {
    Error::with_code(
        crate::error::ErrorCode::Transport,
        format!(
            "tool '{}': call_template_type '{}' cannot be called yet (supported: http, sse, streamable_http, graphql, cli, text, file, native, mcp, websocket, tcp, udp)",
            tool.name,
            template.type_name()
        ),
    )
}

/// The template's own timeout (`timeout` key), if any. Numbers follow python-utcp:
/// milliseconds for `streamable_http` (its default is 60000), `tcp` and `udp` (30000),
/// seconds elsewhere;
/// strings take units ("500ms", "30s").
pub fn template_timeout(template: &CallTemplate) -> Result<Option<Duration>> {
    let (extra, millis) = match template {
        CallTemplate::Http(t) => (&t.extra, false),
        CallTemplate::Sse(t) => (&t.extra, false),
        CallTemplate::StreamableHttp(t) => (&t.extra, true),
        CallTemplate::Cli(t) => (&t.extra, false),
        CallTemplate::Native(t) => (&t.extra, false),
        CallTemplate::Tcp(t) | CallTemplate::Udp(t) => (&t.extra, true),
        CallTemplate::Websocket(t) => (&t.extra, false),
        CallTemplate::Graphql(t) => (&t.extra, false),
        _ => return Ok(None),
    };
    let Some(v) = extra.get("timeout").filter(|v| !v.is_null()) else { return Ok(None) };
    let v = match (v, millis) {
        (Value::Number(n), true) => Value::from(n.as_f64().unwrap_or(0.0) / 1000.0),
        _ => v.clone(),
    };
    crate::config::parse_duration(&v).map(Some).map_err(|e| Error::InvalidManual(format!("template `timeout`: {e}")))
}

/// An argument as text: strings raw, everything else as JSON.
pub(crate) fn arg_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The first `max` characters of `text`, marked when cut.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
