//! MCP over the older HTTP+SSE transport (protocol 2024-11-05), which rmcp 3.x has no
//! client for, on the same plumbing as Streamable HTTP ([`EngineHttp`]).
//!
//! The client GETs the server's URL as an event stream; its first `endpoint` event
//! names the URL to POST JSON-RPC messages to (relative to the stream's URL, and
//! refused with `SECURITY` unless it has the same origin and passes the network rules
//! of `http` tools). Every message of the server (responses, notifications, requests)
//! arrives as a `message` event on that stream; a POST is answered `202 Accepted`.
//!
//! Threads: rmcp's service task owns the transport. `receive` reads the stream on it;
//! each `send` is a future of its own (rmcp spawns it), so POSTs run concurrently and
//! may reach the server in another order than sent, as with Streamable HTTP. When
//! the stream ends (server gone, `sse_read_timeout` of silence) `receive` returns
//! `None`: rmcp closes the session and the next call opens another.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::StatusCode;
use rmcp::model::ServerJsonRpcMessage;
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::common::http_header::{EVENT_STREAM_MIME_TYPE, JSON_MIME_TYPE};
use sse_stream::{Error as SseError, Sse};

use super::http::{self, EngineHttp};
use crate::error::{Error, Result};
use crate::transport::net::{self, Body};

/// One open HTTP+SSE connection: the event stream, and where to POST.
pub(super) struct LegacySse {
    http: EngineHttp,
    /// The `endpoint` the server named (checked).
    endpoint: url::Url,
    events: Option<BoxStream<'static, std::result::Result<Sse, SseError>>>,
}

/// GET `url` as an event stream and wait (up to `timeout`) for its `endpoint` event.
pub(super) async fn connect(http: &EngineHttp, url: &url::Url, timeout: Duration) -> Result<LegacySse> {
    let shown = net::redact(url);
    let spec = http.spec(reqwest::Method::GET, url.clone(), EVENT_STREAM_MIME_TYPE);
    let opening = async {
        let response = net::send(&http.client, http.policy, spec).await?;
        http::auth_challenge(&response).map_err(streamable)?;
        let status = response.status();
        if !status.is_success() {
            let body = http::read_limited(response, 4096).await.unwrap_or_default();
            let body = super::super::excerpt(&String::from_utf8_lossy(&body), 200);
            return Err(Error::Transport(format!("HTTP+SSE: GET {shown}: HTTP {status}: {body}")));
        }
        match http::media_type(&response).as_deref() {
            Some(EVENT_STREAM_MIME_TYPE) => {}
            other => {
                return Err(Error::Transport(format!(
                    "HTTP+SSE: GET {shown} answered {}, not an event stream",
                    other.unwrap_or("no content type")
                )));
            }
        }
        let mut events = http.events(response);
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| Error::Transport(format!("HTTP+SSE: the event stream of {shown}: {e}")))?;
            if event.event.as_deref() == Some("endpoint") {
                let endpoint = endpoint_url(url, event.data.as_deref().unwrap_or_default(), http.policy)?;
                return Ok(LegacySse { http: http.clone(), endpoint, events: Some(events) });
            }
        }
        Err(Error::Transport(format!("HTTP+SSE: the event stream of {shown} ended before its `endpoint` event")))
    };
    tokio::time::timeout(timeout, opening)
        .await
        .map_err(|_| Error::Timeout(format!("HTTP+SSE: {shown} sent no `endpoint` event within {timeout:?}")))?
}

/// Where the server's `endpoint` event says to POST: `data` resolved against the
/// stream's URL, of the same origin (scheme, host, port), and allowed by the network
/// rules (the server could otherwise send our messages and credentials elsewhere).
pub(super) fn endpoint_url(sse_url: &url::Url, data: &str, policy: net::NetPolicy) -> Result<url::Url> {
    let endpoint = endpoint(sse_url, data)?;
    net::check_url(&endpoint, policy)?;
    Ok(endpoint)
}

fn endpoint(sse_url: &url::Url, data: &str) -> Result<url::Url> {
    let data = data.trim();
    if data.is_empty() {
        return Err(Error::Transport("HTTP+SSE: the server's `endpoint` event is empty".into()));
    }
    let endpoint = sse_url.join(data).map_err(|e| {
        Error::Transport(format!("HTTP+SSE: the server's endpoint '{}' is not a URL: {e}", excerpt(data)))
    })?;
    if endpoint.origin() != sse_url.origin() {
        return Err(Error::Security(format!(
            "HTTP+SSE: the server's endpoint {} is not of the origin of {}: refused",
            net::redact(&endpoint),
            net::redact(sse_url)
        )));
    }
    Ok(endpoint)
}

fn excerpt(text: &str) -> String {
    super::super::excerpt(text, 200)
}

fn streamable(e: rmcp::transport::streamable_http_client::StreamableHttpError<Error>) -> Error {
    match e {
        rmcp::transport::streamable_http_client::StreamableHttpError::Client(e) => e,
        other => Error::Transport(format!("HTTP+SSE: {other}")),
    }
}

impl LegacySse {
    /// POST `message` to the endpoint; any 2xx (202 as a rule) is accepted.
    async fn post(http: EngineHttp, endpoint: url::Url, message: TxJsonRpcMessage<RoleClient>) -> Result<()> {
        let body = serde_json::to_vec(&message)
            .map_err(|e| Error::Internal(format!("HTTP+SSE: a message has no JSON form: {e}")))?;
        let mut spec = http.spec(reqwest::Method::POST, endpoint.clone(), "application/json, text/event-stream");
        spec.body = Body::Bytes { content_type: JSON_MIME_TYPE.into(), data: Bytes::from(body) };
        let response = net::send(&http.client, http.policy, spec).await?;
        http::auth_challenge(&response).map_err(streamable)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = http::read_limited(response, 4096).await.unwrap_or_default();
        let body = excerpt(&String::from_utf8_lossy(&body));
        // A 404 names a session the server no longer knows: the stream is gone too.
        let gone = if status == StatusCode::NOT_FOUND { " (the server ended the session)" } else { "" };
        Err(Error::Transport(format!("HTTP+SSE: POST {}: HTTP {status}{gone}: {body}", net::redact(&endpoint))))
    }
}

impl Transport<RoleClient> for LegacySse {
    type Error = Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send + 'static {
        let (http, endpoint) = (self.http.clone(), self.endpoint.clone());
        let open = self.events.is_some();
        async move {
            if !open {
                return Err(Error::Transport("HTTP+SSE: the connection is closed".into()));
            }
            Self::post(http, endpoint, item).await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let events = self.events.as_mut()?;
        loop {
            let event = match events.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    tracing::info!(endpoint = %net::redact(&self.endpoint), "mcp HTTP+SSE stream failed: {e}");
                    break;
                }
                None => break,
            };
            // An event without a name is a `message` (the SSE default).
            if !matches!(event.event.as_deref(), None | Some("message")) {
                continue;
            }
            let Some(data) = event.data.as_deref() else { continue };
            match serde_json::from_str::<ServerJsonRpcMessage>(data) {
                Ok(message) => return Some(message),
                Err(e) => {
                    tracing::warn!(endpoint = %net::redact(&self.endpoint), "mcp HTTP+SSE: a message event is not JSON-RPC: {e}");
                }
            }
        }
        self.events = None;
        None
    }

    async fn close(&mut self) -> std::result::Result<(), Self::Error> {
        // Dropping the stream closes the GET: the server ends the session.
        self.events = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn policy() -> net::NetPolicy {
        net::NetPolicy { allow_insecure_http: false, allow_private: false }
    }

    #[test]
    fn the_endpoint_resolves_against_the_stream_url_within_its_origin() {
        let sse = url::Url::parse("http://127.0.0.1:8000/mcp/sse?k=v").unwrap();
        for (data, expected) in [
            ("/messages/?session_id=ab12", "http://127.0.0.1:8000/messages/?session_id=ab12"),
            ("messages?session_id=1", "http://127.0.0.1:8000/mcp/messages?session_id=1"),
            (" http://127.0.0.1:8000/post \n", "http://127.0.0.1:8000/post"),
            ("//127.0.0.1:8000/x", "http://127.0.0.1:8000/x"),
        ] {
            assert_eq!(endpoint_url(&sse, data, policy()).unwrap().as_str(), expected, "{data}");
        }
    }

    #[test]
    fn an_endpoint_of_another_origin_is_refused() {
        let sse = url::Url::parse("https://mcp.example.com/sse").unwrap();
        for data in [
            "https://evil.example.com/messages",
            "http://mcp.example.com/messages",
            "https://mcp.example.com:8443/messages",
            "//evil.example.com/messages",
            "http://127.0.0.1:8000/messages",
        ] {
            let e = endpoint_url(&sse, data, policy()).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Security, "{data}: {e}");
        }
        assert_eq!(endpoint_url(&sse, "/messages", policy()).unwrap().as_str(), "https://mcp.example.com/messages");
        for data in ["", "  ", "http://[::1"] {
            assert_eq!(endpoint_url(&sse, data, policy()).unwrap_err().code(), ErrorCode::Transport, "{data}");
        }
    }

    #[test]
    fn an_endpoint_of_the_same_origin_still_follows_the_network_rules() {
        // The stream itself came over plain http to a public host (allowed then):
        // the endpoint goes through the same check.
        let sse = url::Url::parse("http://mcp.example.com/sse").unwrap();
        let e = endpoint_url(&sse, "/messages", policy()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Security, "{e}");
        let open = net::NetPolicy { allow_insecure_http: true, allow_private: false };
        assert!(endpoint_url(&sse, "/messages", open).is_ok());
    }
}
