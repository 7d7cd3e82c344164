//! `sse` and `streamable_http`: streaming results.
//!
//! A reader task parses the response body and hands items to the caller's stream
//! through a small channel; when the caller drops the stream the task ends and
//! the connection is released. Events and lines are bounded in size
//! (`calls.max_event_size`). SSE reconnects as python-utcp does: only after an
//! established stream drops with an error, never when the call sent a body, at
//! most 5 times, waiting `retry_timeout` (or the server's `retry:`), capped at 60 s,
//! with `Last-Event-ID`. Redirects are not followed for SSE handshakes.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::HeaderValue;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::http::{self, RequestTemplate};
use super::net::{self, Body};
use super::{ItemStream, Transports};
use crate::error::{Error, Result};
use crate::manual::CallTemplate;
use crate::registry::RegisteredTool;

const MAX_RECONNECT_ATTEMPTS: u32 = 5;
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(60);

/// Open the stream. The flag is true when the response is one JSON document
/// (`streamable_http` answering `application/json`): `call_tool` returns it as is.
pub(crate) async fn open(
    t: &Transports,
    tool: &RegisteredTool,
    template: &CallTemplate,
    args: Map<String, Value>,
    timeout: Duration,
) -> Result<(ItemStream, bool)> {
    let max_event = t.config.calls.max_event_size as usize;
    let (tx, rx) = mpsc::channel::<Result<Value>>(16);
    let single;
    match template {
        CallTemplate::Sse(tpl) => {
            let method = tpl.extra.get("http_method").and_then(Value::as_str).unwrap_or("GET");
            let rt = RequestTemplate {
                url: &tpl.url,
                method,
                content_type: Some("application/json"),
                request: &tpl.request,
                body_field: tpl.request.body_field.as_deref(),
                extra: &tpl.extra,
                auth: tpl.common.auth.as_ref(),
            };
            let mut spec = http::build_request(tool, &rt, args)?;
            if !matches!(spec.body, Body::None) && spec.method == reqwest::Method::GET {
                spec.method = reqwest::Method::POST;
            }
            spec.follow_redirects = false;
            spec.headers.push((reqwest::header::ACCEPT, HeaderValue::from_static("text/event-stream"), false));
            let reconnect =
                tpl.extra.get("reconnect").and_then(Value::as_bool).unwrap_or(true) && matches!(spec.body, Body::None);
            let retry = tpl
                .extra
                .get("retry_timeout")
                .and_then(Value::as_u64)
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(30));
            let response = handshake(t, tool, rt.auth, spec.clone(), timeout).await?;
            let media = http::content_type(&response);
            if http::media_type(&media) != "text/event-stream" {
                return Err(Error::Transport(format!(
                    "tool '{}': expected a text/event-stream response, got '{}'",
                    tool.name,
                    if media.is_empty() { "no Content-Type" } else { media.as_str() }
                )));
            }
            // Reconnects reuse the request with the credentials already applied.
            let mut again = spec;
            if reconnect {
                http::apply_auth(t, rt.auth, &mut again, false).await?;
            }
            let (client, cap) = t.client_for(tool)?;
            again.redirect_locality_cap = cap;
            let reader = SseReader {
                client,
                policy: t.policy(),
                spec: again,
                event_type: tpl.event_type.clone(),
                reconnect,
                retry,
                max_event,
                tool: tool.name.clone(),
            };
            tokio::spawn(reader.run(response, tx));
            single = false;
        }
        CallTemplate::StreamableHttp(tpl) => {
            let rt = RequestTemplate {
                url: &tpl.url,
                method: &tpl.http_method,
                content_type: tpl.content_type.as_deref(),
                request: &tpl.request,
                body_field: tpl.request.body_field.as_deref(),
                extra: &tpl.extra,
                auth: tpl.common.auth.as_ref(),
            };
            let spec = http::build_request(tool, &rt, args)?;
            let response = handshake(t, tool, rt.auth, spec, timeout).await?;
            let media = http::content_type(&response);
            let media = http::media_type(&media).to_string();
            let name = tool.name.clone();
            if matches!(
                media.as_str(),
                "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" | "application/json-seq"
            ) {
                tokio::spawn(read_lines(response, tx, max_event, name));
                single = false;
            } else if media == "text/event-stream" {
                let mut parser = SseParser::new(max_event);
                tokio::spawn(async move {
                    let mut body = response.bytes_stream();
                    loop {
                        let chunk = tokio::select! {
                            c = body.next() => c,
                            _ = tx.closed() => return,
                        };
                        match chunk {
                            None => return,
                            Some(Err(e)) => {
                                let _ = tx.send(Err(body_error(&name, e))).await;
                                return;
                            }
                            Some(Ok(bytes)) => {
                                let mut events = Vec::new();
                                if let Err(e) = parser.feed(&bytes, &mut events) {
                                    let _ = tx.send(Err(event_error(&name, e))).await;
                                    return;
                                }
                                for ev in events.into_iter().filter_map(|e| e.data) {
                                    if tx.send(Ok(parse_data(ev))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                });
                single = false;
            } else if media.contains("json") {
                let value = http::read_result(t, tool, response).await?;
                let _ = tx.send(Ok(value)).await;
                single = true;
            } else {
                tokio::spawn(read_text_chunks(response, tx, name));
                single = false;
            }
        }
        _ => return Err(Error::Internal("sse::open called for a non-streaming template".into())),
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok((Box::pin(stream), single))
}

/// Collect a stream for `call_tool`: the items as a list (the one document when `single`).
pub(crate) async fn collect(mut stream: ItemStream, single: bool) -> Result<Value> {
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item?);
    }
    if single {
        return Ok(items.pop().unwrap_or(Value::Null));
    }
    Ok(Value::Array(items))
}

/// Send the request; the handshake (until headers arrive) is bounded by `timeout`;
/// a non-2xx answer is `TOOL_FAILED` with a body excerpt.
async fn handshake(
    t: &Transports,
    tool: &RegisteredTool,
    auth: Option<&crate::manual::Auth>,
    spec: net::RequestSpec,
    timeout: Duration,
) -> Result<reqwest::Response> {
    let response = tokio::time::timeout(timeout, http::send_with_auth(t, tool, auth, spec))
        .await
        .map_err(|_| Error::Timeout(format!("tool '{}': no response within {timeout:?}", tool.name)))??;
    let status = response.status();
    if status.is_redirection() {
        return Err(Error::Transport(format!(
            "tool '{}': the stream endpoint answered a {status} redirect; redirects are not followed for streams, point the template at the final URL",
            tool.name
        )));
    }
    if !status.is_success() {
        let url = net::redact(response.url());
        let retry_after = http::retry_after_header(response.headers());
        let body = tokio::time::timeout(timeout, response.bytes()).await.ok().and_then(|r| r.ok()).unwrap_or_default();
        return Err(http::failed(tool, status, &url, &body[..body.len().min(64 * 1024)], retry_after));
    }
    Ok(response)
}

fn body_error(tool: &str, e: reqwest::Error) -> Error {
    Error::Transport(format!("tool '{tool}': stream broke: {}", e.without_url()))
}

fn event_error(tool: &str, e: String) -> Error {
    Error::Transport(format!("tool '{tool}': {e}"))
}

/// Event data: JSON when it parses, else the text.
fn parse_data(data: String) -> Value {
    serde_json::from_str(&data).unwrap_or(Value::String(data))
}

/// One parsed SSE event.
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// Incremental `text/event-stream` parser with bounded lines and events.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    current: SseEvent,
    data: Vec<String>,
    data_len: usize,
    max: usize,
    pending_cr: bool,
}

impl SseParser {
    pub fn new(max: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            current: SseEvent::default(),
            data: Vec::new(),
            data_len: 0,
            max,
            pending_cr: false,
        }
    }

    /// Feed bytes; completed events are pushed to `out`. An over-long line or event is an error.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> std::result::Result<(), String> {
        for &b in bytes {
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    continue; // CRLF: the CR already ended the line
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.pending_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out)?;
                }
                _ => {
                    if self.line.len() >= self.max {
                        return Err(format!("an SSE line is over the {} byte cap (calls.max_event_size)", self.max));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> std::result::Result<(), String> {
        if line.is_empty() {
            let mut ev = std::mem::take(&mut self.current);
            if !self.data.is_empty() {
                ev.data = Some(std::mem::take(&mut self.data).join("\n"));
            }
            self.data_len = 0;
            if ev != SseEvent::default() {
                out.push(ev);
            }
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.current.event = Some(value.to_string()),
            "data" => {
                self.data_len += value.len() + 1;
                if self.data_len > self.max {
                    return Err(format!("an SSE event is over the {} byte cap (calls.max_event_size)", self.max));
                }
                self.data.push(value.to_string());
            }
            "id" if !value.contains('\0') => self.current.id = Some(value.to_string()),
            "retry" if !value.is_empty() && value.len() <= 18 && value.bytes().all(|c| c.is_ascii_digit()) => {
                self.current.retry = value.parse().ok();
            }
            _ => {}
        }
        Ok(())
    }
}

struct SseReader {
    client: reqwest::Client,
    policy: net::NetPolicy,
    spec: net::RequestSpec,
    event_type: Option<String>,
    reconnect: bool,
    retry: Duration,
    max_event: usize,
    tool: String,
}

impl SseReader {
    async fn run(mut self, first: reqwest::Response, tx: mpsc::Sender<Result<Value>>) {
        let mut response = first;
        let mut last_id: Option<String> = None;
        let mut attempts = 0u32;
        loop {
            let mut parser = SseParser::new(self.max_event);
            let mut body = response.bytes_stream();
            let broke = loop {
                let chunk = tokio::select! {
                    c = body.next() => c,
                    _ = tx.closed() => return,
                };
                match chunk {
                    None => return, // clean end: the call is complete
                    Some(Err(e)) => break body_error(&self.tool, e),
                    Some(Ok(bytes)) => {
                        let mut events = Vec::new();
                        if let Err(e) = parser.feed(&bytes, &mut events) {
                            let _ = tx.send(Err(event_error(&self.tool, e))).await;
                            return;
                        }
                        for ev in events {
                            if let Some(id) = ev.id {
                                last_id = (!id.is_empty()).then_some(id);
                            }
                            if let Some(r) = ev.retry {
                                self.retry = Duration::from_millis(r);
                            }
                            let Some(data) = ev.data else { continue };
                            let ty = ev.event.as_deref().unwrap_or("message");
                            if self.event_type.as_deref().is_some_and(|want| want != ty) {
                                continue;
                            }
                            if tx.send(Ok(parse_data(data))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            // The established stream dropped: reconnect or report.
            let mut last_error = broke;
            loop {
                attempts += 1;
                if !self.reconnect || attempts > MAX_RECONNECT_ATTEMPTS {
                    let _ = tx.send(Err(last_error)).await;
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.retry.min(MAX_RECONNECT_DELAY)) => {}
                    _ = tx.closed() => return,
                }
                let mut spec = self.spec.clone();
                if let Some(id) = &last_id {
                    if let Ok(v) = HeaderValue::from_str(id) {
                        spec.headers.push((reqwest::header::HeaderName::from_static("last-event-id"), v, false));
                    }
                }
                match net::send(&self.client, self.policy, spec).await {
                    Ok(r) if r.status().is_success() => {
                        response = r;
                        break;
                    }
                    Ok(r) => {
                        last_error =
                            Error::Transport(format!("tool '{}': reconnect answered HTTP {}", self.tool, r.status()))
                    }
                    Err(e) => last_error = e,
                }
            }
        }
    }
}

/// NDJSON: one JSON value per line; blank lines skipped; lines bounded.
async fn read_lines(response: reqwest::Response, tx: mpsc::Sender<Result<Value>>, max: usize, tool: String) {
    let mut body = response.bytes_stream();
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &[u8]| -> Option<Result<Value>> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(
            serde_json::from_str(text)
                .map_err(|e| Error::Transport(format!("tool '{tool}': a line of the NDJSON stream is not JSON: {e}"))),
        )
    };
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = tx.closed() => return,
        };
        let bytes: Bytes = match chunk {
            None => {
                if let Some(item) = emit(&line) {
                    let _ = tx.send(item).await;
                }
                return;
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(body_error(&tool, e))).await;
                return;
            }
            Some(Ok(b)) => b,
        };
        for &b in bytes.iter() {
            if b == b'\n' {
                let done = std::mem::take(&mut line);
                if let Some(item) = emit(&done) {
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            } else {
                if line.len() >= max {
                    let _ = tx
                        .send(Err(Error::Transport(format!(
                            "tool '{tool}': an NDJSON line is over the {max} byte cap (calls.max_event_size)"
                        ))))
                        .await;
                    return;
                }
                line.push(b);
            }
        }
    }
}

/// Other content: text chunks as they arrive (UTF-8 sequences never split).
async fn read_text_chunks(response: reqwest::Response, tx: mpsc::Sender<Result<Value>>, tool: String) {
    let mut body = response.bytes_stream();
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = tx.closed() => return,
        };
        match chunk {
            None => {
                if !carry.is_empty() {
                    let _ = tx.send(Ok(Value::String(String::from_utf8_lossy(&carry).into_owned()))).await;
                }
                return;
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(body_error(&tool, e))).await;
                return;
            }
            Some(Ok(bytes)) => {
                carry.extend_from_slice(&bytes);
                let valid = match std::str::from_utf8(&carry) {
                    Ok(_) => carry.len(),
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    Err(_) => carry.len(), // invalid, not merely cut: send lossily
                };
                let rest = carry.split_off(valid);
                let text = String::from_utf8_lossy(&carry).into_owned();
                carry = rest;
                if !text.is_empty() && tx.send(Ok(Value::String(text))).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_across_chunks_and_line_endings() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        p.feed(b"event: tick\ndata: {\"n\"", &mut out).unwrap();
        p.feed(b": 1}\r\nid: 7\r\n\r\n: keep-alive\n\ndata: a\ndata: b\n\n", &mut out).unwrap();
        p.feed(b"retry: 100\n\n", &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].event.as_deref(), Some("tick"));
        assert_eq!(out[0].data.as_deref(), Some("{\"n\": 1}"));
        assert_eq!(out[0].id.as_deref(), Some("7"));
        assert_eq!(out[1].data.as_deref(), Some("a\nb"));
        assert_eq!(out[2].retry, Some(100));
    }

    #[test]
    fn bounded_event_size() {
        let mut p = SseParser::new(8);
        let mut out = Vec::new();
        assert!(p.feed(b"data: 0123456789\n", &mut out).is_err());
        let mut p = SseParser::new(12);
        p.feed(b"data: 01234\ndata: 01234\n", &mut out).unwrap();
        assert!(p.feed(b"data: 01234\n", &mut out).is_err());
    }
}
