//! The `websocket` transport, wire-compatible with python-utcp 1.2's `utcp-websocket`
//! plugin (docs/architecture.md, "WebSocket tools").
//!
//! A call sends one text frame (the `message` template filled with the arguments, or
//! the arguments as JSON) and returns the first data frame that comes back, decoded by
//! `response_format`. A stream (`call_stream`) reads frames until the peer sends
//! `{"type": "stream_end"}` or closes. Discovery sends `{"type": "utcp"}` and waits for
//! a frame holding `{"tools": [...]}`.
//!
//! Sockets. With `keep_alive` (the default, as in python-utcp) the engine keeps one
//! socket per manual, URL and handshake (subprotocol, headers, auth) in [`Pool`]. A call
//! takes the socket out of its slot for the whole exchange, so calls to one socket run
//! one after the other (the protocol has no correlation id a reply must carry); the
//! socket goes back only after a clean exchange. A call abandoned midway (timeout,
//! cancellation, an error) drops its socket, so a late reply can never be taken as the
//! answer to the next call. A pooled socket found closed, or whose first send fails, is
//! reopened once. Without `keep_alive` each call opens and closes its own socket.
//!
//! Addresses follow the http transport's rules (`net.rs`): `wss://` anywhere, `ws://` only
//! to loopback unless `calls.allow_insecure_http`; names resolve through the same guard
//! (private addresses refused unless allowed, nothing more local than where the tool's
//! manual came from); the handshake follows no redirect. Every frame, and every message
//! reassembled from frames, is capped at `calls.max_response_size`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{FutureExt, SinkExt, StreamExt};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::net::{self, GuardedResolver, NetPolicy, OriginClass, RequestSpec};
use super::{ItemStream, Transports, arg_text, excerpt, http, origin_cap};
use crate::error::{Error, Result};
use crate::json::json_kind;
use crate::manual::{Auth, WebsocketTemplate};
use crate::registry::RegisteredTool;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How much of a refused handshake's body an error quotes.
const BODY_EXCERPT: usize = 256;

/// python-utcp's discovery request.
const DISCOVERY_MESSAGE: &str = r#"{"type":"utcp"}"#;

/// The sockets `keep_alive` templates share: one slot per manual, URL and handshake.
#[derive(Default)]
pub struct Pool {
    slots: parking_lot::Mutex<HashMap<String, Arc<AsyncMutex<Option<Socket>>>>>,
}

impl Pool {
    fn slot(&self, key: String) -> Arc<AsyncMutex<Option<Socket>>> {
        self.slots.lock().entry(key).or_default().clone()
    }

    /// Close the sockets of `manual`'s tools (the manual was removed or replaced).
    pub(crate) fn forget_manual(&self, manual: &str) {
        let prefix = format!("{manual}\n");
        self.slots.lock().retain(|key, _| !key.starts_with(&prefix));
    }
}

/// How a frame becomes a result (`response_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// No `response_format`, or `text`: the frame's text (python-utcp returns it as is).
    Text,
    /// The frame parsed as JSON; a frame that is not JSON is returned as text (as python-utcp).
    Json,
    /// Text frames as text, binary frames as `{"base64": ...}`.
    Raw,
}

/// A template's fields, checked.
struct Settings<'a> {
    url: url::Url,
    message: Option<&'a Value>,
    protocol: Option<&'a str>,
    keep_alive: bool,
    format: Format,
    headers: Vec<(HeaderName, HeaderValue)>,
    auth: Option<&'a Auth>,
}

/// Who is connecting, for messages (`tool 'm.t'` / `manual 'm'`), and the locality cap.
pub(crate) struct Caller {
    pub(crate) who: String,
    pub(crate) cap: Option<OriginClass>,
}

/// What a handshake sends: shared by `websocket` tools and GraphQL subscriptions
/// (`graphql/ws.rs`), so both connect under the same rules.
pub(crate) struct Handshake<'a> {
    /// A `ws://` or `wss://` URL [`check_url`] accepted.
    pub(crate) url: &'a url::Url,
    /// The subprotocol asked for (`Sec-WebSocket-Protocol`); the server must agree to it.
    pub(crate) protocol: Option<&'a str>,
    pub(crate) headers: &'a [(HeaderName, HeaderValue)],
    pub(crate) auth: Option<&'a Auth>,
}

fn bad_field(who: &str, field: &str, problem: impl std::fmt::Display) -> Error {
    Error::InvalidManual(format!("{who}: websocket template field `{field}` {problem}"))
}

fn settings<'a>(who: &str, tpl: &'a WebsocketTemplate, policy: NetPolicy) -> Result<Settings<'a>> {
    let extra = &tpl.extra;
    let field = |name: &str| extra.get(name).filter(|v| !v.is_null());
    let url = check_url(who, &tpl.url, policy)?;
    let message = match field("message") {
        None => None,
        Some(v @ (Value::String(_) | Value::Object(_))) => Some(v),
        Some(other) => {
            return Err(bad_field(
                who,
                "message",
                format!("must be a string or an object, found {}", json_kind(other)),
            ));
        }
    };
    let protocol = match field("protocol") {
        None => None,
        Some(Value::String(p)) if !p.is_empty() && HeaderValue::from_str(p).is_ok() => Some(p.as_str()),
        Some(other) => return Err(bad_field(who, "protocol", format!("must be a subprotocol name, found {other}"))),
    };
    let keep_alive = match field("keep_alive") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(bad_field(who, "keep_alive", format!("must be true or false, found {other}"))),
    };
    let format = match field("response_format") {
        None => Format::Text,
        Some(Value::String(f)) if f == "text" => Format::Text,
        Some(Value::String(f)) if f == "json" => Format::Json,
        Some(Value::String(f)) if f == "raw" => Format::Raw,
        Some(other) => {
            return Err(bad_field(
                who,
                "response_format",
                format!("must be \"json\", \"text\" or \"raw\", found {other}"),
            ));
        }
    };
    let mut headers = Vec::new();
    match field("headers") {
        None => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                if value.is_object() || value.is_array() {
                    return Err(bad_field(
                        who,
                        "headers",
                        format!("'{name}' must be text, found {}", json_kind(value)),
                    ));
                }
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad_field(who, "headers", format!("'{name}' is not a valid header name")))?;
                let mut v = HeaderValue::from_str(&arg_text(value)).map_err(|_| {
                    bad_field(who, "headers", format!("'{name}' holds characters a header cannot carry"))
                })?;
                // After variable substitution a header may hold a secret.
                v.set_sensitive(true);
                headers.push((n, v));
            }
        }
        Some(other) => {
            return Err(bad_field(
                who,
                "headers",
                format!("must be an object of header names, found {}", json_kind(other)),
            ));
        }
    }
    Ok(Settings { url, message, protocol, keep_alive, format, headers, auth: tpl.common.auth.as_ref() })
}

impl Settings<'_> {
    fn handshake(&self) -> Handshake<'_> {
        Handshake { url: &self.url, protocol: self.protocol, headers: &self.headers, auth: self.auth }
    }
}

/// `wss://` anywhere; `ws://` to loopback only unless `allow_insecure_http`; an IP literal
/// must not be private unless allowed (names are checked when they resolve).
pub(crate) fn check_url(who: &str, raw: &str, policy: NetPolicy) -> Result<url::Url> {
    let url = url::Url::parse(raw).map_err(|e| bad_field(who, "url", format!("'{raw}' is not a URL: {e}")))?;
    let http_scheme = match url.scheme() {
        "wss" => "https",
        "ws" if policy.allow_insecure_http || net::is_loopback(&url) => "http",
        "ws" => {
            return Err(Error::Security(format!(
                "{who}: refusing plain ws:// to {}: use wss:// (plain ws:// is allowed only to loopback, or with \
                 calls.allow_insecure_http)",
                url.host_str().unwrap_or("?")
            )));
        }
        other => return Err(bad_field(who, "url", format!("must be a ws:// or wss:// URL, found '{other}:'"))),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad_field(who, "url", format!("'{}' has no host", net::redact(&url))));
    }
    // The address rules are the http transport's: check the same URL as http(s).
    let mut as_http = url.clone();
    as_http.set_scheme(http_scheme).map_err(|()| bad_field(who, "url", "cannot be checked as an address"))?;
    net::check_url(&as_http, policy).map_err(|e| match e {
        Error::Security(m) => Error::Security(format!("{who}: {m}")),
        other => bad_field(who, "url", other.to_string()),
    })?;
    Ok(url)
}

/// The pool key: the socket's manual, URL and everything its handshake sends.
fn pool_key(manual: &str, s: &Settings<'_>) -> String {
    let headers: Vec<(&str, &[u8])> = s.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    let auth = s.auth.map(|a| serde_json::to_string(a).unwrap_or_default()).unwrap_or_default();
    format!("{manual}\n{}\n{}\n{headers:?}\n{auth}", s.url, s.protocol.unwrap_or(""))
}

/// The engine-wide TLS setup for `wss://`: ring and the webpki roots, as reqwest's client.
fn tls_config() -> Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::Internal(format!("cannot set up TLS for wss://: {e}")))
}

/// Open a socket for a `websocket` tool or manual.
async fn connect(t: &Transports, caller: &Caller, s: &Settings<'_>) -> Result<Socket> {
    Ok(open(t, caller, &s.handshake()).await?.0)
}

/// Open a socket: guarded resolution, TCP, TLS for `wss://`, the handshake with the
/// headers, subprotocol and auth of `s`. With OAuth2, a 401 fetches a fresh token and
/// the handshake is tried once more. Also returns the headers the auth added (the
/// credentials as sent), for protocols that repeat them in a first message.
pub(crate) async fn open(
    t: &Transports,
    caller: &Caller,
    s: &Handshake<'_>,
) -> Result<(Socket, Vec<(HeaderName, HeaderValue)>)> {
    match handshake(t, caller, s, false).await {
        Err(Error::ToolFailed { status: Some(401), .. }) if matches!(s.auth, Some(Auth::OAuth2 { .. })) => {
            handshake(t, caller, s, true).await
        }
        other => other,
    }
}

async fn handshake(
    t: &Transports,
    caller: &Caller,
    s: &Handshake<'_>,
    fresh_token: bool,
) -> Result<(Socket, Vec<(HeaderName, HeaderValue)>)> {
    let who = &caller.who;
    let shown = net::redact(s.url);
    let host = s.url.host_str().unwrap_or_default();
    let port = s.url.port_or_known_default().unwrap_or(443);
    let policy = t.policy();
    let guard = GuardedResolver { allow_private: policy.allow_private, cap: caller.cap };
    let addrs = guard.resolve(host, port).await.map_err(|e| prefixed(who, e))?;
    let mut tcp = None;
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        let cause = last_error.map(|e| e.to_string()).unwrap_or_default();
        Error::Transport(format!("{who}: cannot connect to {shown}: {cause}"))
    })?;
    let _ = tcp.set_nodelay(true);

    // Auth as the http transport applies it (an api key in the query goes into the URL).
    let mut spec = RequestSpec::new(reqwest::Method::GET, s.url.clone());
    spec.redirect_locality_cap = caller.cap;
    http::apply_auth(t, s.auth, &mut spec, fresh_token).await.map_err(|e| prefixed(who, e))?;
    let mut request = spec
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| bad_field(who, "url", format!("cannot start a handshake with it: {e}")))?;
    let headers = request.headers_mut();
    headers.insert(
        reqwest::header::USER_AGENT,
        HeaderValue::from_static(concat!("utp-runtime/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in s.headers {
        headers.insert(name.clone(), value.clone());
    }
    let mut auth_headers = Vec::with_capacity(spec.headers.len());
    for (name, value, _) in spec.headers {
        headers.insert(name.clone(), value.clone());
        auth_headers.push((name, value));
    }
    if let Some(protocol) = s.protocol {
        if let Ok(v) = HeaderValue::from_str(protocol) {
            headers.insert(reqwest::header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    let connector = if s.url.scheme() == "wss" { Connector::Rustls(tls_config()?) } else { Connector::Plain };
    let max = usize::try_from(t.config.calls.max_response_size).unwrap_or(usize::MAX);
    let config = WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max));
    let (socket, _response) =
        tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(config), Some(connector))
            .await
            .map_err(|e| ws_error(who, &shown, max, e))?;
    Ok((socket, auth_headers))
}

fn prefixed(who: &str, e: Error) -> Error {
    match e {
        Error::Transport(m) => Error::Transport(format!("{who}: {m}")),
        Error::Security(m) => Error::Security(format!("{who}: {m}")),
        Error::Timeout(m) => Error::Timeout(format!("{who}: {m}")),
        Error::InvalidManual(m) => Error::InvalidManual(format!("{who}: {m}")),
        Error::ToolFailed { message, status, retry_after } => {
            Error::ToolFailed { message: format!("{who}: {message}"), status, retry_after }
        }
        other => other,
    }
}

/// A tungstenite error as ours: a refused handshake is `TOOL_FAILED` with its status,
/// an oversized frame and everything else on the wire is `TRANSPORT`.
pub(crate) fn ws_error(who: &str, url: &str, max: usize, e: tungstenite::Error) -> Error {
    use tungstenite::error::{CapacityError, ProtocolError};
    match e {
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, .. }) => Error::Transport(format!(
            "{who}: a message of {size} bytes from {url} is over the {max} byte cap (calls.max_response_size)"
        )),
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let mut message = format!("{who}: the WebSocket handshake with {url} was refused: HTTP {status}");
            if !body.trim().is_empty() {
                message.push_str(": ");
                message.push_str(&excerpt(body.trim(), BODY_EXCERPT));
            }
            Error::ToolFailed { message, status: Some(status.as_u16()), retry_after: None }
        }
        tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(e)) => {
            Error::Transport(format!("{who}: {url} did not agree to the template's subprotocol: {e}"))
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Error::Transport(format!("{who}: {url} closed the socket abruptly (no closing handshake)"))
        }
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            Error::Transport(format!("{who}: {url} closed the socket"))
        }
        other => Error::Transport(format!("{who}: WebSocket {url}: {other}")),
    }
}

/// A socket in use by one call, and the pool slot it goes back to after a clean exchange.
struct Lease {
    socket: Socket,
    slot: Option<OwnedMutexGuard<Option<Socket>>>,
    /// Taken from the pool rather than opened for this call.
    reused: bool,
}

impl Lease {
    /// The exchange ended cleanly: a pooled socket goes back, any other is closed.
    async fn finish(mut self) {
        match self.slot.take() {
            Some(mut slot) => *slot = Some(self.socket),
            None => {
                let _ = self.socket.close(None).await;
            }
        }
    }
}

/// Whether a pooled socket is still usable: frames that arrived while it was idle are
/// read (and dropped: no call is waiting for them); a close or an error means it is not.
fn still_open(socket: &mut Socket) -> bool {
    loop {
        match socket.next().now_or_never() {
            None => return true,
            Some(Some(Ok(Message::Close(_)))) | Some(Some(Err(_))) | Some(None) => return false,
            Some(Some(Ok(_))) => {}
        }
    }
}

/// A socket for one exchange: the pooled one when alive, else a new one.
async fn lease(t: &Transports, manual: &str, caller: &Caller, s: &Settings<'_>) -> Result<Lease> {
    if !s.keep_alive {
        return Ok(Lease { socket: connect(t, caller, s).await?, slot: None, reused: false });
    }
    let mut slot = t.websockets.slot(pool_key(manual, s)).lock_owned().await;
    if let Some(mut socket) = slot.take() {
        if still_open(&mut socket) {
            return Ok(Lease { socket, slot: Some(slot), reused: true });
        }
    }
    let socket = connect(t, caller, s).await?;
    Ok(Lease { socket, slot: Some(slot), reused: false })
}

/// Send `text`; a reused socket whose send fails is replaced once.
async fn send(t: &Transports, caller: &Caller, s: &Settings<'_>, lease: &mut Lease, text: &str) -> Result<()> {
    let shown = net::redact(&s.url);
    let max = usize::try_from(t.config.calls.max_response_size).unwrap_or(usize::MAX);
    match lease.socket.send(Message::text(text)).await {
        Ok(()) => Ok(()),
        Err(_) if lease.reused => {
            lease.socket = connect(t, caller, s).await?;
            lease.reused = false;
            lease.socket.send(Message::text(text)).await.map_err(|e| ws_error(&caller.who, &shown, max, e))
        }
        Err(e) => Err(ws_error(&caller.who, &shown, max, e)),
    }
}

/// The next text or binary frame (control frames are answered by tungstenite and
/// skipped), or `None` when the peer closed the socket.
async fn next_data(socket: &mut Socket, who: &str, url: &str, max: usize) -> Result<Option<Message>> {
    loop {
        match socket.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(Some(m)),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(tungstenite::Error::ConnectionClosed)) => return Ok(None),
            Some(Err(e)) => return Err(ws_error(who, url, max, e)),
        }
    }
}

/// Call `tool`: send one frame, return the first frame that comes back.
pub(crate) async fn call(
    t: &Transports,
    tool: &RegisteredTool,
    tpl: &WebsocketTemplate,
    args: Map<String, Value>,
    timeout: Duration,
) -> Result<Value> {
    let caller = Caller { who: format!("tool '{}'", tool.name), cap: origin_cap(tool) };
    let s = settings(&caller.who, tpl, t.policy())?;
    let text = message_text(&caller.who, s.message, &args, None)?;
    let deadline = Instant::now() + timeout;
    let shown = net::redact(&s.url);
    let max = usize::try_from(t.config.calls.max_response_size).unwrap_or(usize::MAX);
    let exchange = async {
        let mut lease = lease(t, &tool.manual, &caller, &s).await?;
        send(t, &caller, &s, &mut lease, &text).await?;
        match next_data(&mut lease.socket, &caller.who, &shown, max).await? {
            Some(frame) => {
                lease.finish().await;
                Ok(decode(s.format, frame))
            }
            None => Err(Error::Transport(format!("{}: {shown} closed the socket before answering", caller.who))),
        }
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| Error::Timeout(format!("{}: no answer from {shown} within {timeout:?}", caller.who)))?
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(0);

/// Open a stream: send one frame, then yield frames until `{"type": "stream_end"}` or
/// the peer closes. `{"type": "tool_response", "result": x}` yields `x`;
/// `{"type": "tool_error", "error": e}` ends the stream with `TOOL_FAILED`; a frame
/// tagged with another call's `request_id` is skipped; any other frame is yielded as
/// `response_format` decodes it. `timeout` bounds the wait for each frame.
pub(crate) async fn call_stream(
    t: &Transports,
    tool: &RegisteredTool,
    tpl: &WebsocketTemplate,
    args: Map<String, Value>,
    timeout: Duration,
) -> Result<ItemStream> {
    let caller = Caller { who: format!("tool '{}'", tool.name), cap: origin_cap(tool) };
    let s = settings(&caller.who, tpl, t.policy())?;
    let short = tool.name.rsplit('.').next().unwrap_or(&tool.name);
    let request_id = format!("call_{short}_{}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed));
    let text = message_text(&caller.who, s.message, &args, Some(&request_id))?;
    let shown = net::redact(&s.url);
    let max = usize::try_from(t.config.calls.max_response_size).unwrap_or(usize::MAX);
    let opened = async {
        let mut lease = lease(t, &tool.manual, &caller, &s).await?;
        send(t, &caller, &s, &mut lease, &text).await?;
        Ok::<_, Error>(lease)
    };
    let lease = tokio::time::timeout(timeout, opened)
        .await
        .map_err(|_| Error::Timeout(format!("{}: could not send to {shown} within {timeout:?}", caller.who)))??;
    let state =
        StreamState { lease: Some(lease), who: caller.who, url: shown, max, format: s.format, request_id, timeout };
    Ok(Box::pin(futures_util::stream::unfold(state, |mut state| async move {
        let item = state.next_item().await?;
        Some((item, state))
    })))
}

struct StreamState {
    /// `None` once the stream has ended.
    lease: Option<Lease>,
    who: String,
    url: String,
    max: usize,
    format: Format,
    request_id: String,
    timeout: Duration,
}

impl StreamState {
    async fn next_item(&mut self) -> Option<Result<Value>> {
        loop {
            let lease = self.lease.as_mut()?;
            let frame =
                match tokio::time::timeout(self.timeout, next_data(&mut lease.socket, &self.who, &self.url, self.max))
                    .await
                {
                    Ok(Ok(Some(frame))) => frame,
                    // The peer closed: the stream ends (as python-utcp's generator does).
                    Ok(Ok(None)) => {
                        self.lease = None;
                        return None;
                    }
                    Ok(Err(e)) => {
                        self.lease = None;
                        return Some(Err(e));
                    }
                    Err(_) => {
                        self.lease = None;
                        let (who, url, timeout) = (&self.who, &self.url, self.timeout);
                        return Some(Err(Error::Timeout(format!("{who}: no frame from {url} within {timeout:?}"))));
                    }
                };
            let parsed = frame_json(&frame);
            let object = parsed.as_ref().and_then(Value::as_object);
            let tagged = object.and_then(|o| o.get("request_id")).filter(|id| !id.is_null() && *id != "");
            if tagged.is_some_and(|id| id.as_str() != Some(self.request_id.as_str())) {
                continue;
            }
            match object.and_then(|o| o.get("type")).and_then(Value::as_str) {
                Some("stream_end") => {
                    self.end_cleanly().await;
                    return None;
                }
                Some("tool_response") => {
                    return Some(Ok(object.and_then(|o| o.get("result")).cloned().unwrap_or(Value::Null)));
                }
                Some("tool_error") => {
                    let error =
                        object.and_then(|o| o.get("error")).map(arg_text).unwrap_or_else(|| "unknown error".into());
                    self.end_cleanly().await;
                    return Some(Err(Error::tool_failed(format!("{}: {error}", self.who))));
                }
                _ => return Some(Ok(decode(self.format, frame))),
            }
        }
    }

    /// The exchange is over and the socket is in a known state: it may be reused.
    async fn end_cleanly(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.finish().await;
        }
    }
}

fn frame_json(frame: &Message) -> Option<Value> {
    match frame {
        Message::Text(text) => serde_json::from_str(text.as_str()).ok(),
        Message::Binary(bytes) => serde_json::from_slice(bytes).ok(),
        _ => None,
    }
}

/// A data frame as a result, by `response_format`.
fn decode(format: Format, frame: Message) -> Value {
    let base64 = |bytes: &[u8]| json!({"base64": base64::engine::general_purpose::STANDARD.encode(bytes)});
    match (format, frame) {
        (Format::Json, frame) if frame_json(&frame).is_some() => frame_json(&frame).unwrap_or(Value::Null),
        (_, Message::Text(text)) => Value::String(text.as_str().to_string()),
        (Format::Raw, Message::Binary(bytes)) => base64(&bytes),
        (_, Message::Binary(bytes)) => match std::str::from_utf8(&bytes) {
            Ok(text) => Value::String(text.to_string()),
            Err(_) => base64(&bytes),
        },
        (_, _) => Value::Null,
    }
}

const OPEN: &str = "UTCP_ARG_";
const CLOSE: &str = "_UTCP_ARG";

/// The frame a call sends: the `message` template filled with the arguments, or the
/// arguments as JSON. `request_id` (streams) fills a `UTCP_ARG_request_id_UTCP_ARG`
/// placeholder when no argument of that name exists.
fn message_text(
    who: &str,
    template: Option<&Value>,
    args: &Map<String, Value>,
    request_id: Option<&str>,
) -> Result<String> {
    let lookup = |name: &str| -> Option<Value> {
        args.get(name).cloned().or_else(|| (name == "request_id").then(|| request_id.map(Value::from)).flatten())
    };
    match template {
        None => Ok(Value::Object(args.clone()).to_string()),
        Some(Value::String(text)) => {
            // A template that looks like JSON gets string arguments JSON-escaped, so an
            // argument cannot break out of the string it is placed in (as python-utcp).
            let json_context = text.trim_start().starts_with(['{', '[']);
            fill_text(who, text, &lookup, json_context)
        }
        Some(template) => Ok(fill_value(who, template, &lookup)?.unwrap_or(Value::Null).to_string()),
    }
}

/// Placeholders inside text: strings as they are (JSON-escaped in a JSON context),
/// other values as JSON. A placeholder without its argument is an error.
fn fill_text(who: &str, text: &str, lookup: &dyn Fn(&str) -> Option<Value>, json_context: bool) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        let name = &after[..end];
        out.push_str(&rest[..start]);
        let value = lookup(name).ok_or_else(|| {
            Error::ValidationFailed(format!("{who}: the message template needs the argument '{name}'"))
        })?;
        match value {
            Value::String(s) if json_context => {
                let quoted = Value::String(s).to_string();
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
            other => out.push_str(&arg_text(&other)),
        }
        rest = &after[end + CLOSE.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// An object template: a string that is exactly one placeholder becomes the argument's
/// value, typed (a missing optional argument drops its key); other strings are filled
/// as text. `None`: a lone placeholder whose argument is absent.
fn fill_value(who: &str, template: &Value, lookup: &dyn Fn(&str) -> Option<Value>) -> Result<Option<Value>> {
    Ok(Some(match template {
        Value::String(s) => {
            if let Some(name) = lone_placeholder(s) {
                return Ok(lookup(name));
            }
            Value::String(fill_text(who, s, lookup, false)?)
        }
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                if let Some(filled) = fill_value(who, v, lookup)? {
                    out.insert(k.clone(), filled);
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| fill_value(who, i, lookup).map(|v| v.unwrap_or(Value::Null)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    }))
}

fn lone_placeholder(s: &str) -> Option<&str> {
    let name = s.strip_prefix(OPEN)?.strip_suffix(CLOSE)?;
    (!name.is_empty() && !name.contains(OPEN) && !name.contains(CLOSE)).then_some(name)
}

/// Discovery for a manual call template of type `websocket`: send `{"type": "utcp"}` on
/// a socket of its own and return the first frame holding `{"tools": [...]}` (frames that
/// are not JSON or hold no `tools` are skipped, as python-utcp does). The socket is closed after.
pub(crate) async fn discover(
    t: &Transports,
    manual: &str,
    tpl: &WebsocketTemplate,
    timeout: Duration,
) -> Result<Value> {
    let caller = Caller { who: format!("manual '{manual}'"), cap: None };
    let s = settings(&caller.who, tpl, t.policy())?;
    let shown = net::redact(&s.url);
    let max = usize::try_from(t.config.calls.max_response_size).unwrap_or(usize::MAX);
    let exchange = async {
        let mut socket = connect(t, &caller, &s).await?;
        socket.send(Message::text(DISCOVERY_MESSAGE)).await.map_err(|e| ws_error(&caller.who, &shown, max, e))?;
        loop {
            let Some(frame) = next_data(&mut socket, &caller.who, &shown, max).await? else {
                return Err(Error::Transport(format!(
                    "{}: {shown} closed the socket before sending its manual ({{\"tools\": [...]}})",
                    caller.who
                )));
            };
            if let Some(manual @ Value::Object(_)) = frame_json(&frame) {
                if manual.get("tools").is_some_and(Value::is_array) {
                    let _ = socket.close(None).await;
                    return Ok(manual);
                }
            }
        }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        Error::Timeout(format!("{}: no manual ({{\"tools\": [...]}}) from {shown} within {timeout:?}", caller.who))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn messages_fill_as_python_utcp_where_it_is_safe() {
        let a = args(json!({"q": "say \"hi\"", "n": 5, "o": {"k": [1]}}));
        assert_eq!(message_text("t", None, &a, None).unwrap(), r#"{"q":"say \"hi\"","n":5,"o":{"k":[1]}}"#);
        let text = json!("CMD:UTCP_ARG_q_UTCP_ARG;N:UTCP_ARG_n_UTCP_ARG");
        assert_eq!(message_text("t", Some(&text), &a, None).unwrap(), "CMD:say \"hi\";N:5");
        let json_text = json!(r#"{"q": "UTCP_ARG_q_UTCP_ARG", "n": UTCP_ARG_n_UTCP_ARG}"#);
        let sent = message_text("t", Some(&json_text), &a, None).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&sent).unwrap(), json!({"q": "say \"hi\"", "n": 5}));
        let object = json!({"action": "go", "q": "UTCP_ARG_q_UTCP_ARG", "n": "UTCP_ARG_n_UTCP_ARG",
            "label": "n=UTCP_ARG_n_UTCP_ARG", "missing": "UTCP_ARG_absent_UTCP_ARG", "list": ["UTCP_ARG_o_UTCP_ARG"]});
        let sent: Value = serde_json::from_str(&message_text("t", Some(&object), &a, None).unwrap()).unwrap();
        assert_eq!(sent, json!({"action": "go", "q": "say \"hi\"", "n": 5, "label": "n=5", "list": [{"k": [1]}]}));
        let err = message_text("m.t", Some(&json!("x UTCP_ARG_absent_UTCP_ARG")), &a, None).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::ValidationFailed);
        assert!(err.to_string().contains("'absent'"), "{err}");
        let id = json!({"id": "UTCP_ARG_request_id_UTCP_ARG"});
        assert_eq!(message_text("t", Some(&id), &a, Some("call_t_1")).unwrap(), r#"{"id":"call_t_1"}"#);
    }

    #[test]
    fn frames_decode_by_response_format() {
        let text = || Message::text(r#"{"a":1}"#);
        assert_eq!(decode(Format::Json, text()), json!({"a": 1}));
        assert_eq!(decode(Format::Text, text()), json!(r#"{"a":1}"#));
        assert_eq!(decode(Format::Raw, text()), json!(r#"{"a":1}"#));
        assert_eq!(decode(Format::Json, Message::text("plain")), json!("plain"));
        let binary = Message::binary(vec![0xff, 0x00]);
        assert_eq!(decode(Format::Text, binary.clone()), json!({"base64": "/wA="}));
        assert_eq!(decode(Format::Raw, Message::binary(b"ok".to_vec())), json!({"base64": "b2s="}));
        assert_eq!(decode(Format::Text, Message::binary(b"ok".to_vec())), json!("ok"));
    }

    /// The tool of a manual fetched from a public host may not reach loopback, by a name
    /// that resolves there or by an IP literal: refused before any connection.
    #[test]
    fn a_remote_manuals_tool_cannot_reach_loopback() {
        let t = Transports::new(std::sync::Arc::new(crate::config::Config::default()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for url in ["ws://localhost:9/x", "ws://127.0.0.1:9/x"] {
            let template: crate::manual::CallTemplate =
                serde_json::from_value(json!({"call_template_type": "websocket", "url": url})).unwrap();
            let mut tool = RegisteredTool::detached(
                "m",
                serde_json::from_value(json!({"name": "t", "tool_call_template": template})).unwrap(),
            );
            tool.fetched_from = Some("https://tools.example.com/utcp".into());
            let err = rt.block_on(t.call(&tool, &template, Map::new(), Duration::from_secs(5))).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::Security, "{url}: {err}");
            assert!(err.to_string().contains("more local than"), "{err}");
        }
    }

    #[test]
    fn urls_follow_the_http_rules() {
        let strict = NetPolicy::default();
        assert!(check_url("t", "ws://127.0.0.1:9/x", strict).is_ok());
        assert!(check_url("t", "ws://localhost:9/x", strict).is_ok());
        assert!(check_url("t", "wss://example.com/x", strict).is_ok());
        let err = check_url("t", "ws://example.com/x", strict).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Security);
        assert!(check_url("t", "ws://example.com/x", NetPolicy { allow_insecure_http: true, ..strict }).is_ok());
        assert_eq!(check_url("t", "wss://10.0.0.1/x", strict).unwrap_err().code(), crate::ErrorCode::Security);
        assert_eq!(check_url("t", "wss://169.254.169.254/", strict).unwrap_err().code(), crate::ErrorCode::Security);
        let err = check_url("t", "http://127.0.0.1/x", strict).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::InvalidManual);
        assert!(err.to_string().contains("`url`"), "{err}");
        assert_eq!(check_url("t", "not a url", strict).unwrap_err().code(), crate::ErrorCode::InvalidManual);
    }
}
