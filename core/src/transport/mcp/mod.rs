//! `mcp` tools: MCP servers over stdio (child processes), Streamable HTTP or the older
//! HTTP+SSE transport, through the official Rust SDK (`rmcp`), in either protocol era
//! (docs/architecture.md, "MCP tools").
//!
//! A manual call template of type `mcp` names its servers in `config.mcpServers`,
//! as python-utcp writes it. Registration connects to each server, lists its tools
//! (following `nextCursor`) and names them `<manual>.<server>.<tool>`. Calls reuse one
//! live connection per server, shared and multiplexed; a server that died is
//! started again on the next call (after a backoff when it keeps dying).
//! `Engine::close` ends every child.

mod config;
mod http;
mod legacy_sse;
mod result;
mod stdio;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientRequest, ProgressNotificationParam,
    ProtocolVersion, ReadResourceRequestParams, ServerJsonRpcMessage, ServerNotification, ServerResult,
    SubscriptionFilter,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, Transport};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt};
use serde_json::{Map, Value};

pub use config::{HttpServer, Server, servers};
pub use result::unwrap_result;

use super::net::{OriginClass, RequestSpec};
use super::{ItemStream, Transports};
use crate::error::{Error, ErrorCode, Result};
use crate::manual::{Auth, McpTemplate, Tool};
use crate::registry::RegisteredTool;

/// Where a call's progress notifications go (`{"progress", "total", "message"}`).
pub type ProgressSink = Arc<dyn Fn(Value) + Send + Sync>;

/// The calls of one connection waiting for progress, by their progress token.
type ProgressRoutes = Arc<parking_lot::Mutex<HashMap<rmcp::model::ProgressToken, ProgressSink>>>;

/// What the engine hears from its MCP servers outside any call.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// `notifications/tools/list_changed`: list that server's tools again.
    ToolsChanged { manual: String, server: String },
    /// A server is being started again after it ended (`tool.transport`).
    Restarting { manual: String, server: String, attempt: u32, delay: Duration },
}

/// The engine's listener for [`Notice`]s.
pub type NoticeSink = Arc<dyn Fn(Notice) + Send + Sync>;

/// The prefix python-utcp gives the tool that reads a resource.
const RESOURCE_PREFIX: &str = "resource_";
/// Where a resource tool keeps its resource's URI.
const RESOURCE_URI: &str = "x-mcp-resource-uri";

/// The client side of one connection: tells the engine when the server's tools change.
#[derive(Clone)]
struct Handler {
    manual: Arc<str>,
    server: Arc<str>,
    notices: Option<NoticeSink>,
}

impl ClientHandler for Handler {
    // Progress is routed by `ProgressFirst`, as it is read.
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(notices) = &self.notices {
            notices(Notice::ToolsChanged { manual: self.manual.to_string(), server: self.server.to_string() });
        }
    }
}

/// One live connection: the SDK's client, and the child behind it for stdio servers.
struct Session {
    client: RunningService<RoleClient, Handler>,
    child: Option<parking_lot::Mutex<tokio::process::Child>>,
    progress: ProgressRoutes,
    /// The `subscriptions/listen` of a new-era server (its `list_changed` comes only there).
    _listening: Option<AbortOnDrop>,
}

impl Session {
    /// Open a session over `transport` (progress routed as it is read, `ProgressFirst`),
    /// and listen for `list_changed` when the server needs asking.
    async fn serve<T: Transport<RoleClient> + 'static>(
        handler: &Handler,
        transport: T,
        lifecycle: ClientLifecycleMode,
        child: Option<tokio::process::Child>,
    ) -> std::result::Result<Session, rmcp::service::ClientInitializeError> {
        let progress = ProgressRoutes::default();
        let transport = ProgressFirst { inner: transport, progress: progress.clone() };
        let client = match handler.clone().serve_with_lifecycle(transport, lifecycle).await {
            Ok(client) => client,
            Err(e) => {
                // A child that started but gave no session goes with its group.
                if let Some(mut child) = child {
                    stdio::kill(&mut child);
                }
                return Err(e);
            }
        };
        Ok(Session {
            _listening: listen(&client, handler),
            client,
            child: child.map(parking_lot::Mutex::new),
            progress,
        })
    }

    /// A stdio child that exits closes its stdout, which ends the transport: no need
    /// to ask the kernel on every call.
    fn is_alive(&self) -> bool {
        !self.client.is_transport_closed()
    }

    /// Let a session go without waiting (on the runtime, where `end` would block).
    fn abandon(&self) {
        self.client.cancellation_token().cancel();
        if let Some(child) = &self.child {
            stdio::kill(&mut child.lock());
        }
    }

    /// Close the connection (a stdio child's stdin; an HTTP session is deleted by the
    /// SDK's worker) and end the child within `grace`.
    fn end(&self, grace: Duration) {
        self.client.cancellation_token().cancel();
        if let Some(child) = &self.child {
            stdio::end(&mut child.lock(), grace);
        }
    }
}

/// How often a server has been started again lately: the backoff before the next start.
#[derive(Clone, Copy)]
struct Restarts {
    count: u32,
    last: Instant,
}

/// After this long without a restart a server's backoff starts over.
const RESTART_WINDOW: Duration = Duration::from_secs(60);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);

/// The live servers of an engine, by (manual, server). The map's lock is never held
/// across an await, so `close` (sync) always finds every server.
#[derive(Default)]
pub struct Sessions {
    /// By manual, then server: a call finds its session without allocating a key.
    live: parking_lot::Mutex<HashMap<String, HashMap<String, Arc<Session>>>>,
    restarts: parking_lot::Mutex<HashMap<(String, String), Restarts>>,
    notices: OnceLock<NoticeSink>,
    /// What stdio servers wrote to stdout that was not JSON-RPC, by (manual, server).
    garbage: parking_lot::Mutex<HashMap<(String, String), stdio::Garbage>>,
    /// Set by `close`: no server is started after it.
    closed: std::sync::atomic::AtomicBool,
}

/// What a session is opened with, beyond the server itself.
struct Connect<'a> {
    manual: &'a str,
    server: &'a str,
    auth: Option<&'a Auth>,
    cap: Option<OriginClass>,
    /// Fetch a new OAuth2 token rather than the cached one (the last was refused).
    fresh_token: bool,
}

impl Sessions {
    /// Where notices go; set once, by the engine.
    pub fn set_notices(&self, sink: NoticeSink) {
        let _ = self.notices.set(sink);
    }

    /// End every server (the engine is closing).
    pub fn close(&self, grace: Duration) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = self.live.lock().drain().flat_map(|(_, s)| s.into_values()).collect();
        for session in sessions {
            session.end(grace);
        }
    }

    /// End the servers of `manual` (it was removed).
    pub fn close_manual(&self, manual: &str) {
        let ended: Vec<Arc<Session>> =
            self.live.lock().remove(manual).into_iter().flat_map(|s| s.into_values()).collect();
        for session in ended {
            session.abandon();
        }
    }

    /// The slot where `at`'s server's stdout garbage goes, emptied for a new start.
    fn garbage_slot(&self, at: &Connect<'_>) -> stdio::Garbage {
        let key = (at.manual.to_string(), at.server.to_string());
        let slot = self.garbage.lock().entry(key).or_default().clone();
        slot.lock().take();
        slot
    }

    /// The first non-JSON-RPC line `server` of `manual` wrote to stdout, if any.
    fn garbage(&self, manual: &str, server: &str) -> Option<String> {
        let slot = self.garbage.lock().get(&(manual.to_string(), server.to_string())).cloned()?;
        slot.lock().clone()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Take the session of `at`'s server out of the map if it is `session` (or any, with
    /// `None`), returning it.
    fn take(&self, at: &Connect<'_>, session: Option<&Arc<Session>>) -> Option<Arc<Session>> {
        let mut live = self.live.lock();
        let servers = live.get_mut(at.manual)?;
        if session.is_some_and(|s| !servers.get(at.server).is_some_and(|live| Arc::ptr_eq(live, s))) {
            return None;
        }
        servers.remove(at.server)
    }

    /// Drop `session` of `at`'s server (so that the next call opens another).
    fn forget(&self, at: &Connect<'_>, session: &Arc<Session>) {
        if let Some(dropped) = self.take(at, Some(session)) {
            dropped.abandon();
        }
    }

    /// The session of `at`'s server (one of `template`'s), opened if none is alive. Two
    /// calls that find it gone may both open one: the first to come back keeps its own,
    /// the other's is ended.
    async fn session(&self, t: &Transports, at: &Connect<'_>, template: &McpTemplate) -> Result<Arc<Session>> {
        let restarting = {
            let live = self.live.lock();
            match live.get(at.manual).and_then(|servers| servers.get(at.server)) {
                Some(session) if session.is_alive() => return Ok(session.clone()),
                Some(_) => true,
                None => false,
            }
        };
        if restarting && let Some(dead) = self.take(at, None) {
            dead.abandon();
        }
        let Some((_, server)) = servers(template)?.into_iter().find(|(name, _)| name == at.server) else {
            return Err(Error::InvalidManual(format!("mcp template: no server '{}'", at.server)));
        };
        let key = (at.manual.to_string(), at.server.to_string());
        let closed = || Error::InvalidArgument("the engine is closed".into());
        if self.is_closed() {
            return Err(closed());
        }
        if restarting {
            self.back_off(&key).await;
        }
        let started = Arc::new(self.open(t, at, &server).await?);
        let kept = {
            let mut live = self.live.lock();
            let servers = live.entry(key.0).or_default();
            match servers.get(at.server) {
                Some(other) if other.is_alive() => other.clone(),
                _ => {
                    servers.insert(key.1, started.clone());
                    started.clone()
                }
            }
        };
        if !Arc::ptr_eq(&kept, &started) {
            started.abandon();
        }
        // `close` ran while this server started: it found the map without it.
        if self.is_closed() {
            if let Some(session) = self.take(at, None) {
                session.abandon();
            }
            return Err(closed());
        }
        Ok(kept)
    }

    /// [`Sessions::session`], once more with a new OAuth2 token when the server refused
    /// the one it was given (HTTP 401).
    async fn session_with_auth(
        &self,
        t: &Transports,
        at: &mut Connect<'_>,
        template: &McpTemplate,
    ) -> Result<Arc<Session>> {
        match self.session(t, at, template).await {
            Err(e) if unauthorized(&e) && matches!(at.auth, Some(Auth::OAuth2 { .. })) && !at.fresh_token => {
                at.fresh_token = true;
                self.session(t, at, template).await
            }
            other => other,
        }
    }

    /// Wait before starting a server that ended: nothing the first time, then doubling
    /// from 100 ms up to 5 s while it keeps ending within a minute. Says so (`tool.transport`).
    async fn back_off(&self, key: &(String, String)) {
        let (attempt, delay) = {
            let mut restarts = self.restarts.lock();
            let now = Instant::now();
            let entry = restarts.entry(key.clone()).or_insert(Restarts { count: 0, last: now });
            if now.duration_since(entry.last) > RESTART_WINDOW {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = now;
            let delay = match entry.count {
                1 => Duration::ZERO,
                n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 2)).min(MAX_RESTART_DELAY),
            };
            (entry.count, delay)
        };
        tracing::warn!(manual = %key.0, server = %key.1, attempt, ?delay, "mcp server ended; starting it again");
        if let Some(notices) = self.notices.get() {
            notices(Notice::Restarting { manual: key.0.clone(), server: key.1.clone(), attempt, delay });
        }
        tokio::time::sleep(delay).await;
    }

    /// Connect to `server`, new protocol era first (`server/discover`), falling back to
    /// the `initialize` handshake when the server answers as a legacy one.
    async fn open(&self, t: &Transports, at: &Connect<'_>, server: &Server) -> Result<Session> {
        let handler =
            Handler { manual: at.manual.into(), server: at.server.into(), notices: self.notices.get().cloned() };
        let lifecycle = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        };
        let no_session = |e: &dyn std::fmt::Display| {
            Error::with_code(
                ErrorCode::Transport,
                format!("mcp server '{}' ({}): no MCP session: {e}", at.server, server.describe()),
            )
        };
        match server {
            Server::Stdio(spec) => {
                let (child, stdout, stdin) =
                    stdio::spawn(&t.config.calls.cli_env_allowlist, at.manual, at.server, spec)?;
                let max_line = usize::try_from(t.config.calls.max_response_size).unwrap_or(usize::MAX);
                let transport = stdio::StdioTransport::new(stdout, stdin, self.garbage_slot(at), max_line);
                Session::serve(&handler, transport, lifecycle, Some(child)).await.map_err(|e| no_session(&e))
            }
            Server::Http(spec) => {
                let (http, url) = http_client(t, at, spec).await?;
                // Streamable HTTP first, unless the config says `"transport": "sse"`;
                // the older HTTP+SSE transport when that POST is refused with a 4xx
                // (the backwards-compatibility rule of the MCP spec).
                let mut refused = None;
                if !spec.legacy_sse {
                    let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                    config.max_sse_event_size = http.max_event;
                    let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
                    match Session::serve(&handler, transport, lifecycle.clone(), None).await {
                        Ok(session) => return Ok(session),
                        Err(e) => match http.refused.get() {
                            None => return Err(no_session(&e)),
                            Some(status) => {
                                tracing::info!(manual = %at.manual, server = %at.server, %status,
                                    "mcp server refused Streamable HTTP; trying the HTTP+SSE transport");
                                refused = Some(*status);
                            }
                        },
                    }
                }
                let context = match refused {
                    None => format!("mcp server '{}' ({})", at.server, server.describe()),
                    Some(status) => format!(
                        "mcp server '{}' ({}): Streamable HTTP refused with HTTP {status}, then HTTP+SSE",
                        at.server,
                        server.describe()
                    ),
                };
                let transport =
                    legacy_sse::connect(&http, &url, spec.timeout).await.map_err(|e| e.with_context(&context))?;
                Session::serve(&handler, transport, lifecycle, None)
                    .await
                    .map_err(|e| Error::with_code(ErrorCode::Transport, format!("{context}: no MCP session: {e}")))
            }
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// The engine's HTTP client for `spec`, with the server's headers and the template's
/// auth (an api key in the query goes into the URL, which is returned).
async fn http_client(t: &Transports, at: &Connect<'_>, spec: &HttpServer) -> Result<(http::EngineHttp, url::Url)> {
    super::net::check_url(&spec.url, t.policy())?;
    let mut request = RequestSpec::new(reqwest::Method::POST, spec.url.clone());
    request.redirect_locality_cap = at.cap;
    super::http::apply_auth(t, at.auth, &mut request, at.fresh_token).await?;
    let mut headers = Vec::new();
    for (name, value) in &spec.headers {
        let bad = |what: &str| {
            Error::InvalidManual(format!("mcp template: config.mcpServers.{}.headers.{name}: {what}", at.server))
        };
        let header_name =
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("not a header name"))?;
        let mut header_value = reqwest::header::HeaderValue::from_str(value).map_err(|_| bad("not a header value"))?;
        // A server's own headers carry its credentials: dropped when a redirect leaves it.
        header_value.set_sensitive(true);
        headers.push((header_name, header_value, true));
    }
    // The template's auth wins over a header of the same name.
    headers.retain(|(name, _, _)| !request.headers.iter().any(|(n, _, _)| n == name));
    headers.extend(request.headers);
    let calls = &t.config.calls;
    let client = http::EngineHttp {
        client: t.capped_client(at.cap)?,
        policy: t.policy(),
        cap: at.cap,
        headers: Arc::new(headers),
        idle: spec.sse_read_timeout,
        max_body: usize::try_from(calls.max_response_size).unwrap_or(usize::MAX),
        max_event: usize::try_from(calls.max_event_size).unwrap_or(usize::MAX),
        refused: Default::default(),
    };
    Ok((client, request.url))
}

/// A server of the stateless era sends `notifications/tools/list_changed` only on a
/// `subscriptions/listen` stream: open one (in the background) and hand what it
/// brings to the handler. A legacy-era server sends it unasked.
fn listen(client: &RunningService<RoleClient, Handler>, handler: &Handler) -> Option<AbortOnDrop> {
    let info = client.peer().peer_info()?;
    let new_era = info.protocol_version >= ProtocolVersion::V_2026_07_28;
    let announces = info.capabilities.tools.as_ref().and_then(|tools| tools.list_changed) == Some(true);
    if !new_era || !announces {
        return None;
    }
    let (peer, handler) = (client.peer().clone(), handler.clone());
    Some(AbortOnDrop(tokio::spawn(async move {
        let filter = SubscriptionFilter::builder().tools_list_changed().build();
        let mut subscription = match peer.listen(filter).await {
            Ok(subscription) => subscription,
            Err(e) => {
                tracing::info!(manual = %handler.manual, server = %handler.server, "mcp subscriptions/listen refused: {e}");
                return;
            }
        };
        while let Ok(Some(notification)) = subscription.next().await {
            if matches!(notification, ServerNotification::ToolListChangedNotification(_))
                && let Some(notices) = &handler.notices
            {
                notices(Notice::ToolsChanged {
                    manual: handler.manual.to_string(),
                    server: handler.server.to_string(),
                });
            }
        }
    })))
}

/// A transport that hands progress notifications to the calls waiting for them as
/// they are read: in wire order, so before the result that follows them (the SDK runs
/// its handler of a notification later, on a task of its own, which could lose the race).
struct ProgressFirst<T> {
    inner: T,
    progress: ProgressRoutes,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for ProgressFirst<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: rmcp::service::TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<rmcp::service::RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await?;
        if let ServerJsonRpcMessage::Notification(n) = &message
            && let ServerNotification::ProgressNotification(p) = &n.notification
        {
            let sink = self.progress.lock().get(&p.params.progress_token).cloned();
            if let Some(sink) = sink {
                sink(progress_value(&p.params));
            }
        }
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

/// A call's entry in [`ProgressRoutes`], removed when the call ends or is dropped.
struct ProgressRoute<'a> {
    routes: &'a ProgressRoutes,
    token: rmcp::model::ProgressToken,
}

impl Drop for ProgressRoute<'_> {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.token);
    }
}

/// A request of ours still in flight when its caller goes away (timeout, cancel):
/// the server is told with `notifications/cancelled`.
struct CancelOnDrop {
    peer: Option<Peer<RoleClient>>,
    id: rmcp::model::RequestId,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(peer) = self.peer.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let params = CancelledNotificationParam::new(Some(self.id.clone()), Some("cancelled by the caller".into()));
        runtime.spawn(async move {
            let _ = peer.notify_cancelled(params).await;
        });
    }
}

/// Send `request` and wait for its result, handing progress notifications to `progress`.
async fn request(session: &Session, request: ClientRequest, progress: Option<&ProgressSink>) -> Result<ServerResult> {
    let peer = session.client.peer().clone();
    let handle = peer.send_request_with_option(request, PeerRequestOptions::no_options()).await.map_err(service)?;
    let mut guard = CancelOnDrop { peer: Some(peer), id: handle.id.clone() };
    // Registered after the send: a server takes longer to answer than this takes.
    let _route = progress.map(|sink| {
        session.progress.lock().insert(handle.progress_token.clone(), sink.clone());
        ProgressRoute { routes: &session.progress, token: handle.progress_token.clone() }
    });
    let result = handle.await_response().await;
    guard.peer = None;
    result.map_err(service)
}

fn progress_value(update: &ProgressNotificationParam) -> Value {
    let mut value = Map::new();
    value.insert("progress".into(), update.progress.into());
    if let Some(total) = update.total {
        value.insert("total".into(), total.into());
    }
    if let Some(message) = &update.message {
        value.insert("message".into(), message.clone().into());
    }
    Value::Object(value)
}

fn service(e: ServiceError) -> Error {
    Error::with_code(ErrorCode::Transport, e.to_string())
}

/// Whether `e` says the server refused our credentials (HTTP 401).
/// rmcp says "Auth required" for a 401 with a challenge; our HTTP clients write every
/// refused status as "HTTP <code> <reason>" (a bare "401" could be part of a port).
fn unauthorized(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("Auth required") || text.contains("HTTP 401")
}

/// List the tools of every server of `template` as tools of manual `manual`
/// (`<server>.<tool>`, each keeping `template` as its call template), and with
/// `register_resources_as_tools`, a `<server>.resource_<name>` tool per resource.
pub async fn list_tools(
    t: &Transports,
    manual: &str,
    template: &McpTemplate,
    call_template: &crate::manual::CallTemplate,
    timeout: Duration,
) -> Result<Vec<Tool>> {
    let mut tools = Vec::new();
    for (server, spec) in servers(template)? {
        tools.extend(list_server_tools(t, manual, template, call_template, &server, &spec, timeout).await?);
    }
    Ok(tools)
}

/// The tools of one server (see [`list_tools`]).
pub async fn list_server_tools(
    t: &Transports,
    manual: &str,
    template: &McpTemplate,
    call_template: &crate::manual::CallTemplate,
    server: &str,
    spec: &Server,
    timeout: Duration,
) -> Result<Vec<Tool>> {
    let resources_too = template.extra.get("register_resources_as_tools").and_then(Value::as_bool) == Some(true);
    let mut at = Connect { manual, server, auth: template.common.auth.as_ref(), cap: None, fresh_token: false };
    let listing = async {
        let session = t.mcp.session_with_auth(t, &mut at, template).await?;
        let listed = |what: &str, e: ServiceError| {
            Error::with_code(ErrorCode::Transport, format!("mcp server '{server}': {what} failed: {e}"))
        };
        let tools = session.client.list_all_tools().await.map_err(|e| listed("tools/list", e))?;
        let resources = match resources_too {
            true => session.client.list_all_resources().await.map_err(|e| listed("resources/list", e))?,
            false => Vec::new(),
        };
        Ok::<_, Error>((tools, resources))
    };
    let (listed, resources) = tokio::time::timeout(timeout, listing).await.map_err(|_| {
        let shown = spec.describe();
        match t.mcp.garbage(manual, server) {
            Some(line) => Error::with_code(
                ErrorCode::Transport,
                format!(
                    "mcp server '{server}' ({shown}) wrote what is not JSON-RPC to stdout ('{line}') and listed no tools within {timeout:?}"
                ),
            ),
            None => Error::Timeout(format!("mcp server '{server}' ({shown}) did not list its tools within {timeout:?}")),
        }
    })??;
    let tool = |name: String, description: String, inputs: Value, outputs: Value| Tool {
        // Prefixed with the manual so that registration, which strips a leading
        // `<manual>.`, keeps `<server>.<tool>` even when server and manual share a name.
        name: format!("{manual}.{server}.{name}"),
        description,
        inputs,
        outputs,
        tags: Vec::new(),
        average_response_size: None,
        tool_call_template: call_template.clone(),
        extra: Map::new(),
    };
    let mut tools = Vec::new();
    for listed_tool in listed {
        let raw = serde_json::to_value(&listed_tool)
            .map_err(|e| Error::Internal(format!("mcp server '{server}': a tool has no JSON form: {e}")))?;
        let field = |key: &str| raw.get(key).cloned();
        tools.push(tool(
            listed_tool.name.to_string(),
            field("description").and_then(|d| d.as_str().map(str::to_string)).unwrap_or_default(),
            field("inputSchema").unwrap_or_else(|| Value::Object(Map::new())),
            // A tool without `outputSchema` still registers (python-utcp 1.2 registers none then).
            field("outputSchema").unwrap_or_else(|| Value::Object(Map::new())),
        ));
    }
    for resource in resources {
        let description = resource.description.clone().unwrap_or_else(|| resource.name.clone());
        tools.push(tool(
            format!("{RESOURCE_PREFIX}{}", resource.name),
            format!("Read resource: {description}. URI: {}", resource.uri),
            serde_json::json!({"type": "object", "properties": {}, "required": []}),
            serde_json::json!({"type": "object", "properties": {"contents": {"type": "array", "description": "Resource contents"}}}),
        ));
        if let Some(added) = tools.last_mut() {
            added.extra.insert(RESOURCE_URI.into(), resource.uri.clone().into());
        }
    }
    Ok(tools)
}

/// Where a tool lives (its server's name) and what to send it.
struct Target<'a> {
    server: &'a str,
    request: ClientRequest,
}

fn target(tool: &RegisteredTool, args: Map<String, Value>) -> Result<Target<'_>> {
    let Some((server, remote_name)) = tool.tool.name.split_once('.') else {
        return Err(Error::InvalidManual(format!(
            "tool '{}': an mcp tool is named <manual>.<server>.<tool>",
            tool.name
        )));
    };
    let request = match tool.tool.extra.get(RESOURCE_URI).and_then(Value::as_str) {
        Some(uri) => ClientRequest::ReadResourceRequest(rmcp::model::ReadResourceRequest::new(
            ReadResourceRequestParams::new(uri),
        )),
        None => {
            let params = CallToolRequestParams::new(remote_name.to_string()).with_arguments(args);
            ClientRequest::CallToolRequest(CallToolRequest::new(params))
        }
    };
    Ok(Target { server, request })
}

/// Call `tool` (`<manual>.<server>.<tool>`) on its server; progress goes to `progress`.
pub async fn call(
    t: &Transports,
    tool: &RegisteredTool,
    template: &McpTemplate,
    args: Map<String, Value>,
    progress: Option<&ProgressSink>,
) -> Result<Value> {
    let Target { server, request: message } = target(tool, args)?;
    let auth = template.common.auth.as_ref();
    let oauth2 = matches!(auth, Some(Auth::OAuth2 { .. }));
    let mut at = Connect { manual: &tool.manual, server, auth, cap: super::origin_cap(tool), fresh_token: false };
    // Only an OAuth2 call may be sent twice (a refused token); the others need no copy.
    let mut again = oauth2.then(|| message.clone());
    let mut message = Some(message);
    let outcome = loop {
        let session = t.mcp.session_with_auth(t, &mut at, template).await?;
        let Some(sent) = message.take() else { return Err(Error::Internal("mcp: no request to send".into())) };
        match request(&session, sent, progress).await {
            // An expired OAuth2 token: once more, with a new one.
            Err(e) if unauthorized(&e) && !at.fresh_token && again.is_some() => {
                t.mcp.forget(&at, &session);
                at.fresh_token = true;
                message = again.take();
            }
            other => break other,
        }
    };
    finish(&tool.name, server, outcome)
}

/// A call's outcome as the tool's value (see [`unwrap_result`]).
fn finish(tool: &str, server: &str, outcome: Result<ServerResult>) -> Result<Value> {
    let result = outcome.map_err(|e| match e {
        Error::Transport(m) => Error::Transport(format!("tool '{tool}': mcp server '{server}': {m}")),
        other => other,
    })?;
    let no_json = |e: serde_json::Error| Error::Internal(format!("tool '{tool}': the result has no JSON form: {e}"));
    match result {
        ServerResult::CallToolResult(r) => unwrap_result(tool, serde_json::to_value(r).map_err(no_json)?),
        ServerResult::ReadResourceResult(r) => serde_json::to_value(r).map(strip_nulls).map_err(no_json),
        other => unwrap_result(tool, serde_json::to_value(other).map_err(no_json)?),
    }
}

/// `value` without `null` members, at every depth (what an SDK leaves unset).
fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// Call `tool` as a stream: its progress notifications as items
/// (`{"progress", "total", "message"}`), then its result. Dropping the stream
/// cancels the call (`notifications/cancelled`); `progress` hears every update too.
pub async fn call_stream(
    t: &Transports,
    tool: &RegisteredTool,
    template: &McpTemplate,
    args: Map<String, Value>,
    progress: Option<ProgressSink>,
) -> Result<ItemStream> {
    let Target { server, request: message } = target(tool, args)?;
    let auth = template.common.auth.as_ref();
    let mut at = Connect { manual: &tool.manual, server, auth, cap: super::origin_cap(tool), fresh_token: false };
    let session = t.mcp.session_with_auth(t, &mut at, template).await?;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Result<Value>>();
    let updates = sender.clone();
    let sink: ProgressSink = Arc::new(move |update: Value| {
        if let Some(progress) = &progress {
            progress(update.clone());
        }
        let _ = updates.send(Ok(update));
    });
    let (tool_name, server) = (tool.name.clone(), server.to_string());
    let task = tokio::spawn(async move {
        let outcome = request(&session, message, Some(&sink)).await;
        let _ = sender.send(finish(&tool_name, &server, outcome));
    });
    let abort = AbortOnDrop(task);
    // The stream ends when the task has sent the result and dropped both senders.
    Ok(Box::pin(futures_util::stream::unfold((receiver, abort), |(mut receiver, abort)| async move {
        let item = receiver.recv().await?;
        Some((item, (receiver, abort)))
    })))
}

/// Ends the call's task when its stream is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
