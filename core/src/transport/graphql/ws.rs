//! GraphQL subscriptions over a WebSocket with the `graphql-transport-ws` subprotocol
//! (the protocol of the `graphql-ws` npm library; docs/architecture.md, "GraphQL tools").
//!
//! Opening ([`subscribe`], on the caller's task, bounded by the call's timeout): the
//! template's `url` with `http` → `ws` and `https` → `wss`, checked and connected by
//! `websocket::open` (the `websocket` transport's address rules, guarded resolution,
//! rustls config and handshake auth), with the template's `headers`, the `header_fields`
//! arguments and the auth on the handshake request; then `connection_init`, whose
//! payload repeats those headers, `connection_ack` awaited (a `ping` before it is
//! answered), and one `subscribe` with the document, the variables and `operationName`.
//!
//! Then a reader task (spawned on the runtime that opened the subscription) owns the
//! socket and hands items to the caller's stream through a small channel:
//! - `next` yields its payload's `data` (the shape a query returns); a `next` with
//!   `errors` yields `TOOL_FAILED` with the messages, `error` too; both end the stream;
//! - `complete` ends the stream; `ping` is answered with `pong`;
//! - a socket closed before `complete` is `TRANSPORT` (`TOOL_FAILED` for the protocol's
//!   4400–4499 closes, such as 4403 Forbidden), with the close code and reason.
//!
//! When the caller drops the stream (a `break`, a plain call's timeout) the task sends
//! `complete` for the subscription and closes the socket, as graphql-ws clients do; so
//! does an error it reports while the server may still be sending. Waiting for an item
//! has no timeout of its own: a subscription may be quiet for long (cancel the call or
//! drop the stream to stop it). Frames are capped at `calls.max_response_size`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::header::HeaderName;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::super::websocket::{self, Caller, Handshake, Socket};
use super::super::{ItemStream, Transports, net, origin_cap};
use crate::error::{Error, Result};
use crate::manual::{Auth, GraphqlTemplate};
use crate::registry::RegisteredTool;

/// The subprotocol (graphql-ws 5+, async-graphql, Apollo, strawberry, ariadne).
pub const SUBPROTOCOL: &str = "graphql-transport-ws";

/// The id of the one operation each socket carries.
const OPERATION_ID: &str = "1";

/// Whether a template is called as a subscription: its `operation_type` says so, or it
/// has none and its `query` document starts with `subscription`.
pub(crate) fn is_subscription(tpl: &GraphqlTemplate) -> bool {
    match tpl.operation_type.as_deref() {
        Some(kind) => kind == "subscription",
        None => tpl.query.as_deref().is_some_and(|q| first_keyword(q) == "subscription"),
    }
}

/// The first word of a GraphQL document, past whitespace, commas and `#` comments.
fn first_keyword(document: &str) -> &str {
    let mut rest = document;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == '\u{feff}');
        match rest.strip_prefix('#') {
            Some(comment) => rest = comment.split_once('\n').map_or("", |(_, after)| after),
            None => break,
        }
    }
    let end = rest.find(|c: char| !(c == '_' || c.is_ascii_alphanumeric())).unwrap_or(rest.len());
    &rest[..end]
}

/// The WebSocket URL of a GraphQL endpoint: `http` → `ws`, `https` → `wss`; `ws` and
/// `wss` as given.
fn ws_url(who: &str, raw: &str) -> Result<String> {
    let url = url::Url::parse(raw)
        .map_err(|e| Error::InvalidManual(format!("{who}: graphql template `url` '{raw}' is not a URL: {e}")))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(Error::InvalidManual(format!(
                "{who}: graphql template `url` must be an http(s):// or ws(s):// URL for a subscription, found '{other}:'"
            )));
        }
    };
    // `set_scheme` refuses http → ws: rebuild the (normalised) text instead.
    Ok(format!("{scheme}{}", &url.as_str()[url.scheme().len()..]))
}

/// Open the subscription of `tool`: connect, initialise, subscribe; the rest is read by a
/// task of its own (module docs). `timeout` bounds the opening.
pub(crate) async fn subscribe(
    t: &Transports,
    tool: &RegisteredTool,
    tpl: &GraphqlTemplate,
    request: Map<String, Value>,
    header_args: &[(String, String)],
    timeout: Duration,
) -> Result<ItemStream> {
    let caller = Caller { who: format!("tool '{}'", tool.name), cap: origin_cap(tool) };
    let url = websocket::check_url(&caller.who, &ws_url(&caller.who, &tpl.url)?, t.policy())?;
    let shown = net::redact(&url);
    let max = usize::try_from(t.config.calls.max_response_size).unwrap_or(usize::MAX);

    // Headers of the handshake, and (by the names the template gives) of `connection_init`.
    let mut headers = Vec::new();
    let mut init = Map::new();
    let fixed = tpl.headers.iter().flatten().map(|(k, v)| (k.as_str(), super::arg_text(v), true));
    let from_args = header_args.iter().map(|(k, v)| (k.as_str(), v.clone(), false));
    for (name, value, sensitive) in fixed.chain(from_args) {
        let (n, v, _) = super::http::tool_header(&tool.name, name, &value, sensitive)?;
        headers.push((n, v));
        init.insert(name.to_string(), Value::String(value));
    }
    let handshake =
        Handshake { url: &url, protocol: Some(SUBPROTOCOL), headers: &headers, auth: tpl.common.auth.as_ref() };
    let auth = tpl.common.auth.as_ref();
    let opening = async {
        let (socket, auth_headers) = websocket::open(t, &caller, &handshake).await?;
        for (name, value) in &auth_headers {
            if let Ok(text) = value.to_str() {
                init.insert(payload_name(name, auth), Value::String(text.to_string()));
            }
        }
        // Flat (`connectionParams` read as headers: Apollo, graphql-ws servers) and under
        // `headers` (Hasura and others).
        let mut payload = init.clone();
        if !init.is_empty() {
            payload.insert("headers".into(), Value::Object(init));
        }
        let mut reader = Reader { socket, who: caller.who.clone(), url: shown.clone(), max };
        reader.send(json!({"type": "connection_init", "payload": payload})).await?;
        reader.await_ack().await?;
        let subscribe = json!({"id": OPERATION_ID, "type": "subscribe", "payload": request});
        reader.send(subscribe).await?;
        Ok::<_, Error>(reader)
    };
    let reader = tokio::time::timeout(timeout, opening).await.map_err(|_| {
        Error::Timeout(format!("{}: the subscription at {shown} was not acknowledged within {timeout:?}", caller.who))
    })??;
    let (tx, rx) = mpsc::channel::<Result<Value>>(16);
    tokio::spawn(reader.run(tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(Box::pin(stream))
}

/// A credential header's name in `connection_init`: `Authorization` for basic and
/// OAuth2, the template's own spelling of an api key's `var_name`.
fn payload_name(name: &HeaderName, auth: Option<&Auth>) -> String {
    match auth {
        Some(Auth::ApiKey { var_name, .. }) if var_name.eq_ignore_ascii_case(name.as_str()) => var_name.clone(),
        _ if name == reqwest::header::AUTHORIZATION => "Authorization".into(),
        _ if name == reqwest::header::COOKIE => "Cookie".into(),
        _ => name.as_str().to_string(),
    }
}

/// What one frame said.
enum Frame {
    /// A protocol message (a JSON object with a `type`).
    Message(Map<String, Value>),
    /// The socket closed (with the peer's close frame, when it sent one).
    Closed(Option<CloseFrame>),
}

struct Reader {
    socket: Socket,
    who: String,
    url: String,
    max: usize,
}

impl Reader {
    async fn send(&mut self, message: Value) -> Result<()> {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .map_err(|e| websocket::ws_error(&self.who, &self.url, self.max, e))
    }

    /// The next protocol message, or the close.
    async fn next(&mut self) -> Result<Frame> {
        loop {
            let text = match self.socket.next().await {
                Some(Ok(Message::Text(text))) => text.as_str().to_string(),
                Some(Ok(Message::Binary(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
                Some(Ok(Message::Close(frame))) => return Ok(Frame::Closed(frame)),
                Some(Ok(_)) => continue,
                None | Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => {
                    return Ok(Frame::Closed(None));
                }
                Some(Err(e)) => return Err(websocket::ws_error(&self.who, &self.url, self.max, e)),
            };
            return match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(message)) if message.get("type").is_some_and(Value::is_string) => {
                    Ok(Frame::Message(message))
                }
                _ => Err(Error::Transport(format!(
                    "{}: {} sent a message that is not graphql-transport-ws (a JSON object with a `type`): {}",
                    self.who,
                    self.url,
                    super::excerpt(&text, 200)
                ))),
            };
        }
    }

    /// Wait for `connection_ack`, answering pings.
    async fn await_ack(&mut self) -> Result<()> {
        loop {
            match self.next().await? {
                Frame::Message(m) => match kind(&m) {
                    "connection_ack" => return Ok(()),
                    "ping" => self.send(json!({"type": "pong"})).await?,
                    "pong" => {}
                    other => {
                        return Err(Error::Transport(format!(
                            "{}: {} sent '{other}' before acknowledging the connection",
                            self.who, self.url
                        )));
                    }
                },
                Frame::Closed(frame) => return Err(self.closed(frame.as_ref(), "before acknowledging the connection")),
            }
        }
    }

    /// The error for a socket closed before the subscription completed.
    fn closed(&self, frame: Option<&CloseFrame>, when: &str) -> Error {
        let (who, url) = (&self.who, &self.url);
        let Some(frame) = frame else {
            return Error::Transport(format!("{who}: {url} closed the socket {when}"));
        };
        let code = u16::from(frame.code);
        let reason = frame.reason.as_str();
        let message = format!("{who}: {url} closed the socket {when}: {code} {reason}");
        // graphql-transport-ws closes for what the client sent (4400 bad request, 4401
        // unauthorized, 4403 forbidden, 4429 too many initialisation requests...).
        if (4400..4500).contains(&code) { Error::tool_failed(message) } else { Error::Transport(message) }
    }

    /// Read until `complete`, an error, or the caller leaves.
    async fn run(mut self, tx: mpsc::Sender<Result<Value>>) {
        loop {
            let frame = tokio::select! {
                frame = self.next() => frame,
                () = tx.closed() => return self.complete().await,
            };
            let message = match frame {
                Ok(Frame::Message(m)) => m,
                Ok(Frame::Closed(frame)) => {
                    let _ = tx.send(Err(self.closed(frame.as_ref(), "before the subscription completed"))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return self.complete().await;
                }
            };
            let ours = message.get("id").and_then(Value::as_str) == Some(OPERATION_ID);
            match kind(&message) {
                "next" if ours => {
                    let mut payload = match message.get("payload") {
                        Some(Value::Object(payload)) => payload.clone(),
                        _ => Map::new(),
                    };
                    let data = payload.remove("data").unwrap_or(Value::Null);
                    match payload.get("errors") {
                        Some(Value::Array(errors)) if !errors.is_empty() => {
                            let error = super::graphql_errors(&self.who, &self.url, errors, &data);
                            let _ = tx.send(Err(error)).await;
                            return self.complete().await;
                        }
                        _ => {
                            if tx.send(Ok(data)).await.is_err() {
                                return self.complete().await;
                            }
                        }
                    }
                }
                "error" if ours => {
                    let errors = match message.get("payload") {
                        Some(Value::Array(errors)) => errors.clone(),
                        Some(other) => vec![other.clone()],
                        None => Vec::new(),
                    };
                    let error = super::graphql_errors(&self.who, &self.url, &errors, &Value::Null);
                    let _ = tx.send(Err(error)).await;
                    return self.close().await;
                }
                "complete" if ours => return self.close().await,
                "ping" => {
                    if let Err(e) = self.send(json!({"type": "pong"})).await {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                // Pongs, messages of other ids, types this client does not use.
                _ => {}
            }
        }
    }

    /// Stop the subscription (`complete`), then close the socket.
    async fn complete(mut self) {
        let _ = self.send(json!({"id": OPERATION_ID, "type": "complete"})).await;
        self.close().await;
    }

    async fn close(mut self) {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = tokio::time::timeout(Duration::from_secs(5), self.socket.close(Some(frame))).await;
    }
}

fn kind(message: &Map<String, Value>) -> &str {
    message.get("type").and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_told_by_operation_type_or_document() {
        let tpl = |v: Value| -> GraphqlTemplate { serde_json::from_value(v).unwrap() };
        assert!(is_subscription(&tpl(json!({"url": "http://x/", "operation_type": "subscription"}))));
        assert!(!is_subscription(&tpl(json!({"url": "http://x/", "operation_type": "query"}))));
        assert!(!is_subscription(&tpl(json!({"url": "http://x/"}))));
        let doc = "# ticks\n  subscription Ticks { ticks }";
        assert!(is_subscription(&tpl(json!({"url": "http://x/", "query": doc}))));
        assert!(!is_subscription(&tpl(json!({"url": "http://x/", "query": "{ subscription }"}))));
        assert!(!is_subscription(&tpl(json!({"url": "http://x/", "query": doc, "operation_type": "query"}))));
        assert_eq!(first_keyword(" ,\n#a\n#b\nquery Q { a }"), "query");
        assert_eq!(first_keyword("#only a comment"), "");
    }

    #[test]
    fn endpoint_urls_map_to_websocket_urls() {
        assert_eq!(ws_url("t", "http://127.0.0.1:8/graphql?x=1").unwrap(), "ws://127.0.0.1:8/graphql?x=1");
        assert_eq!(ws_url("t", "https://api.example.com/graphql").unwrap(), "wss://api.example.com/graphql");
        assert_eq!(ws_url("t", "HTTPS://api.example.com/").unwrap(), "wss://api.example.com/");
        assert_eq!(ws_url("t", "wss://api.example.com/subs").unwrap(), "wss://api.example.com/subs");
        assert_eq!(ws_url("t", "ftp://x/").unwrap_err().code(), crate::ErrorCode::InvalidManual);
        assert_eq!(ws_url("t", "nope").unwrap_err().code(), crate::ErrorCode::InvalidManual);
    }

    #[test]
    fn credentials_keep_their_spelling_in_connection_init() {
        let key = Auth::ApiKey { api_key: "k".into(), var_name: "X-Api-Key".into(), location: "header".into() };
        assert_eq!(payload_name(&HeaderName::from_static("x-api-key"), Some(&key)), "X-Api-Key");
        let basic = Auth::Basic { username: "u".into(), password: "p".into() };
        assert_eq!(payload_name(&reqwest::header::AUTHORIZATION, Some(&basic)), "Authorization");
        assert_eq!(payload_name(&reqwest::header::COOKIE, Some(&key)), "Cookie");
    }
}
