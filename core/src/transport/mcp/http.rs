//! MCP over Streamable HTTP through the engine's own HTTP client.
//!
//! rmcp drives the protocol (both eras, sessions, the optional GET stream, resumption
//! with `Last-Event-ID`); this module is its [`StreamableHttpClient`]: each request goes
//! through `net::send` on the engine's pooled reqwest 0.12 client, so the rules of
//! `http` tools hold (HTTPS or loopback, private addresses refused by the guarded
//! resolver, every redirect re-checked, credentials dropped when a redirect leaves the
//! origin), and every body is bounded by `calls.max_response_size` /
//! `calls.max_event_size`. rmcp's own reqwest client (0.13, a second TLS stack) is not built.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ErrorData, ServerJsonRpcMessage};
use rmcp::transport::common::http_header::{
    EVENT_STREAM_MIME_TYPE, HEADER_LAST_EVENT_ID, HEADER_SESSION_ID, JSON_MIME_TYPE,
};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, HttpStatusError, InsufficientScopeError, StreamableHttpClient, StreamableHttpError,
    StreamableHttpPostResponse,
};
use sse_stream::{Error as SseError, Sse, SseStream};

use super::super::net::{self, Body, NetPolicy, OriginClass, RequestSpec};
use crate::error::Error;

type HttpResult<T> = std::result::Result<T, StreamableHttpError<Error>>;

/// The engine's HTTP client, with what every request to one MCP server carries.
#[derive(Clone)]
pub(super) struct EngineHttp {
    pub client: reqwest::Client,
    pub policy: NetPolicy,
    /// A remote manual's servers reach nothing more local than the manual's origin.
    pub cap: Option<OriginClass>,
    /// The server's `headers` and the template's `auth`: (name, value, sensitive).
    pub headers: Arc<Vec<(HeaderName, HeaderValue, bool)>>,
    /// How long an event stream may stay silent (`sse_read_timeout`).
    pub idle: Duration,
    pub max_body: usize,
    pub max_event: usize,
    /// Set when a POST without a session is answered with a 4xx (not 401/403) that
    /// carries no JSON-RPC error: the URL is not a Streamable HTTP endpoint, and the
    /// older HTTP+SSE transport is tried (see `legacy_sse`).
    pub refused: Arc<OnceLock<StatusCode>>,
}

impl EngineHttp {
    /// A request to `url` with the server's headers and auth, accepting `accept`.
    pub(super) fn spec(&self, method: reqwest::Method, url: url::Url, accept: &'static str) -> RequestSpec {
        let mut spec = RequestSpec::new(method, url);
        spec.redirect_locality_cap = self.cap;
        spec.headers.extend(self.headers.iter().cloned());
        spec.headers.push((ACCEPT, HeaderValue::from_static(accept), false));
        spec
    }

    fn request(
        &self,
        method: reqwest::Method,
        uri: &str,
        session_id: Option<&str>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<RequestSpec> {
        let url = url::Url::parse(uri)
            .map_err(|e| StreamableHttpError::Client(Error::InvalidManual(format!("mcp url '{uri}': {e}"))))?;
        let mut spec = self.spec(method, url, "application/json, text/event-stream");
        for (name, value) in custom_headers {
            spec.headers.push((name, value, false));
        }
        if let Some(id) = session_id {
            let value = HeaderValue::from_str(id).map_err(|_| {
                StreamableHttpError::UnexpectedServerResponse(Cow::Borrowed("the session id is not a header value"))
            })?;
            spec.headers.push((HeaderName::from_static("mcp-session-id"), value, true));
        }
        Ok(spec)
    }

    async fn send(&self, spec: RequestSpec) -> HttpResult<reqwest::Response> {
        net::send(&self.client, self.policy, spec).await.map_err(StreamableHttpError::Client)
    }

    /// An event stream: each event bounded by `max_event`, the stream by `idle`.
    pub(super) fn events(&self, response: reqwest::Response) -> BoxStream<'static, Result<Sse, SseError>> {
        let bytes = bounded(response, self.max_event, self.idle);
        SseStream::from_bytes_stream(bytes).boxed()
    }
}

impl StreamableHttpClient for EngineHttp {
    type Error = Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<StreamableHttpPostResponse> {
        let session_attached = session_id.is_some();
        let mut spec = self.request(reqwest::Method::POST, &uri, session_id.as_deref(), custom_headers)?;
        let body = serde_json::to_vec(&message)?;
        spec.body = Body::Bytes { content_type: JSON_MIME_TYPE.into(), data: Bytes::from(body) };
        let response = self.send(spec).await?;
        let status = response.status();
        auth_challenge(&response)?;
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == StatusCode::NOT_FOUND && session_attached {
            return Err(StreamableHttpError::SessionExpired);
        }
        let content_type = media_type(&response);
        let new_session = response.headers().get(HEADER_SESSION_ID).and_then(|v| v.to_str().ok()).map(str::to_string);
        let awaits_nothing = !matches!(message, ClientJsonRpcMessage::Request(_));
        if !status.is_success() {
            let status_error = status_error(&response);
            let body = read_limited(response, self.max_body).await?;
            let text = String::from_utf8_lossy(&body).into_owned();
            if let Some(answer) = legacy_discover_answer(&message, session_attached, status, &text) {
                return Ok(answer);
            }
            if content_type.as_deref() == Some(JSON_MIME_TYPE)
                && let Ok(error @ ServerJsonRpcMessage::Error(_)) = serde_json::from_slice(&body)
            {
                return Ok(StreamableHttpPostResponse::Json(error, new_session));
            }
            if let Some(error) = status_error {
                return Err(error.into());
            }
            if !session_attached && !matches!(status.as_u16(), 401 | 403) && status.is_client_error() {
                let _ = self.refused.set(status);
            }
            let shown = super::super::excerpt(&text, 200);
            return Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!("HTTP {status}: {shown}"))));
        }
        match content_type.as_deref() {
            Some(EVENT_STREAM_MIME_TYPE) => Ok(StreamableHttpPostResponse::Sse(self.events(response), new_session)),
            Some(JSON_MIME_TYPE) => {
                let body = read_limited(response, self.max_body).await?;
                match serde_json::from_slice::<ServerJsonRpcMessage>(&body) {
                    Ok(parsed) => Ok(StreamableHttpPostResponse::Json(parsed, new_session)),
                    Err(_) if awaits_nothing => Ok(StreamableHttpPostResponse::Accepted),
                    Err(e) => Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!(
                        "the server's JSON is not a JSON-RPC message: {e}"
                    )))),
                }
            }
            // A notification or response needs nothing back: any 2xx will do.
            _ if awaits_nothing => Ok(StreamableHttpPostResponse::Accepted),
            other => Err(StreamableHttpError::UnexpectedContentType(other.map(str::to_string))),
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<()> {
        let spec = self.request(reqwest::Method::DELETE, &uri, Some(&session_id), custom_headers)?;
        let response = self.send(spec).await?;
        // 405: the server keeps sessions until they expire; nothing to do.
        if response.status().is_success() || response.status() == StatusCode::METHOD_NOT_ALLOWED {
            return Ok(());
        }
        Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!(
            "DELETE of the session: HTTP {}",
            response.status()
        ))))
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<BoxStream<'static, Result<Sse, SseError>>> {
        let mut spec = self.request(reqwest::Method::GET, &uri, session_id.as_deref(), custom_headers)?;
        if let Some(id) = last_event_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
            spec.headers.push((HeaderName::from_static("last-event-id"), id, false));
        }
        debug_assert!(HEADER_LAST_EVENT_ID.eq_ignore_ascii_case("last-event-id"));
        let response = self.send(spec).await?;
        if response.status() == StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        auth_challenge(&response)?;
        if let Some(error) = status_error(&response) {
            return Err(error.into());
        }
        if !response.status().is_success() {
            return Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!(
                "GET stream: HTTP {}",
                response.status()
            ))));
        }
        match media_type(&response).as_deref() {
            Some(EVENT_STREAM_MIME_TYPE | JSON_MIME_TYPE) => Ok(self.events(response)),
            other => Err(StreamableHttpError::UnexpectedContentType(other.map(str::to_string))),
        }
    }
}

/// The response's media type, lower case, without parameters.
pub(super) fn media_type(response: &reqwest::Response) -> Option<String> {
    let raw = response.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    Some(raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// A 401 or 403 with a `WWW-Authenticate` challenge, as rmcp's errors for it.
pub(super) fn auth_challenge(response: &reqwest::Response) -> HttpResult<()> {
    let Some(header) = response.headers().get(WWW_AUTHENTICATE).and_then(|h| h.to_str().ok()) else {
        return Ok(());
    };
    match response.status() {
        StatusCode::UNAUTHORIZED => Err(StreamableHttpError::AuthRequired(AuthRequiredError::new(header.into()))),
        StatusCode::FORBIDDEN => {
            Err(StreamableHttpError::InsufficientScope(InsufficientScopeError::new(header.into(), None)))
        }
        _ => Ok(()),
    }
}

/// 429 and 5xx carry their status (and a short `Retry-After`) to rmcp's retry logic.
fn status_error(response: &reqwest::Response) -> Option<HttpStatusError> {
    let status = response.status();
    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
        return None;
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_string);
    Some(HttpStatusError::new(status.as_u16(), retry_after))
}

/// A legacy server rejects `server/discover` (sent without a session) with a 4xx that
/// may not echo the request id (the Python SDK answers `"id": "server-error"`). Answer
/// the lifecycle with an error for that id, keeping the server's own JSON-RPC error
/// when it sent one, so that it falls back to the `initialize` handshake.
fn legacy_discover_answer(
    message: &ClientJsonRpcMessage,
    session_attached: bool,
    status: StatusCode,
    body: &str,
) -> Option<StreamableHttpPostResponse> {
    if session_attached || !status.is_client_error() || matches!(status.as_u16(), 401 | 403) {
        return None;
    }
    let ClientJsonRpcMessage::Request(request) = message else { return None };
    if !matches!(request.request, ClientRequest::DiscoverRequest(_)) {
        return None;
    }
    let error = match serde_json::from_str::<ServerJsonRpcMessage>(body) {
        Ok(ServerJsonRpcMessage::Error(error)) => error.error,
        _ => ErrorData::invalid_request(format!("server/discover rejected with HTTP {status}"), None),
    };
    Some(StreamableHttpPostResponse::Json(ServerJsonRpcMessage::error(error, Some(request.id.clone())), None))
}

/// The whole body, refused past `max` bytes.
pub(super) async fn read_limited(response: reqwest::Response, max: usize) -> HttpResult<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| StreamableHttpError::Client(Error::Transport(e.to_string())))?;
        if body.len() + chunk.len() > max {
            return Err(StreamableHttpError::ResponseBodyTooLarge { max_size: max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The bytes of an event stream, ended with an error when one event grows past
/// `max_event` bytes or nothing arrives for `idle`.
fn bounded(
    response: reqwest::Response,
    max_event: usize,
    idle: Duration,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    struct State {
        chunks: BoxStream<'static, reqwest::Result<Bytes>>,
        /// Bytes since the last blank line, and whether the last byte ended a line.
        pending: usize,
        at_line_start: bool,
        failed: bool,
    }
    let state = State { chunks: response.bytes_stream().boxed(), pending: 0, at_line_start: true, failed: false };
    futures_util::stream::unfold(state, move |mut s| async move {
        if s.failed {
            return None;
        }
        let item = match tokio::time::timeout(idle, s.chunks.next()).await {
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the server's event stream sent nothing for {idle:?} (sse_read_timeout)"),
            )),
            Ok(None) => return None,
            Ok(Some(Err(e))) => Err(std::io::Error::other(e.to_string())),
            Ok(Some(Ok(chunk))) => {
                for &byte in chunk.iter() {
                    match byte {
                        b'\n' if s.at_line_start => s.pending = 0,
                        b'\n' => s.at_line_start = true,
                        b'\r' => {}
                        _ => {
                            s.at_line_start = false;
                            s.pending += 1;
                        }
                    }
                }
                if s.pending > max_event {
                    Err(std::io::Error::other(format!("an event of the server is over {max_event} bytes")))
                } else {
                    Ok(chunk)
                }
            }
        };
        s.failed = item.is_err();
        Some((item, s))
    })
    .boxed()
}
