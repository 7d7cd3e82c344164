//! The HTTP adapters: OpenAI-compatible chat completions and Anthropic messages.
//!
//! Both go through the engine's pooled client and `net::send` (plain `http://` only
//! to loopback unless `planner.allow_insecure_http`, private addresses as for tool
//! calls, redirects re-checked, the key header dropped when a redirect leaves the
//! origin). One completion is bounded by `planner.timeout`, retries included; 429,
//! 5xx and transport failures are retried up to `max_retries` times with full-jitter
//! backoff or the server's `Retry-After`. The key is never formatted into an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::{LlmClient, LlmRequest, LlmResponse, PlannerConfig, ResponseFormat, Usage, planner_error};
use crate::error::{Error, ErrorCode, Result};
use crate::transport::net::{self, NetPolicy};

/// How much of a refusing server's body an error quotes.
const EXCERPT: usize = 300;
/// Fenced blocks tried when the answer is not JSON as a whole.
const MAX_BLOCKS: usize = 8;

/// What one POST gave: a 2xx JSON body, or a status the caller may react to.
enum Answer {
    Ok(Value),
    Refused { status: u16, excerpt: String },
}

/// A JSON POST endpoint with retries, a deadline and a bounded body.
struct Endpoint {
    client: reqwest::Client,
    policy: NetPolicy,
    url: url::Url,
    /// (name, value, sensitive).
    headers: Vec<(HeaderName, HeaderValue, bool)>,
    /// Redacted from quoted bodies.
    secret: Option<String>,
    provider: &'static str,
    timeout: Duration,
    max_retries: u32,
    max_response_size: u64,
}

impl Endpoint {
    fn new(
        config: &PlannerConfig,
        provider: &'static str,
        path: &str,
        client: reqwest::Client,
        allow_private: bool,
    ) -> Result<Endpoint> {
        let base = config.base_url.trim_end_matches('/');
        let url = url::Url::parse(&format!("{base}{path}"))
            .map_err(|e| Error::InvalidArgument(format!("config planner.base_url '{base}' is not a valid URL: {e}")))?;
        let policy = NetPolicy { allow_insecure_http: config.allow_insecure_http, allow_private };
        net::check_url(&url, policy).map_err(|e| match e {
            Error::Security(m) => {
                Error::Security(format!("planner.base_url: {m} (or set planner.allow_insecure_http)"))
            }
            other => other,
        })?;
        Ok(Endpoint {
            client,
            policy,
            url,
            headers: Vec::new(),
            secret: None,
            provider,
            timeout: config.timeout,
            max_retries: config.max_retries,
            max_response_size: config.max_response_size,
        })
    }

    fn header(&mut self, name: &'static str, value: &str, sensitive: bool) -> Result<()> {
        let mut v = HeaderValue::from_str(value).map_err(|_| {
            // Never quote the value: it may be the key.
            Error::InvalidArgument(format!("planner: the value for header {name} is not a valid header value"))
        })?;
        v.set_sensitive(sensitive);
        self.headers.push((HeaderName::from_static(name), v, sensitive));
        Ok(())
    }

    /// POST `body`, retrying 429/5xx/transport failures within the deadline.
    async fn post(&self, body: &Value) -> Result<Answer> {
        let data = bytes::Bytes::from(serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?);
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut attempt = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.timed_out());
            }
            let mut spec = net::RequestSpec::new(reqwest::Method::POST, self.url.clone());
            spec.headers = self.headers.clone();
            spec.body = net::Body::Bytes { content_type: "application/json".into(), data: data.clone() };
            spec.timeout = Some(remaining);
            let outcome = match tokio::time::timeout(remaining, self.once(spec)).await {
                Err(_) => return Err(self.timed_out()),
                Ok(outcome) => outcome,
            };
            let (delay, last) = match outcome {
                Ok((status, _, body)) if (200..300).contains(&status) => {
                    let value: Value = serde_json::from_slice(&body).map_err(|e| {
                        planner_error(format!("{}: the server's answer is not JSON: {e}", self.provider))
                    })?;
                    return Ok(Answer::Ok(value));
                }
                Ok((status, retry_after, body)) if status == 429 || (500..600).contains(&status) => {
                    let excerpt = self.excerpt(&body);
                    if attempt >= self.max_retries {
                        return Err(self.refused(status, &excerpt));
                    }
                    (retry_after.unwrap_or_else(|| backoff(attempt)), format!("HTTP {status}"))
                }
                Ok((status, _, body)) => return Ok(Answer::Refused { status, excerpt: self.excerpt(&body) }),
                Err(e) if e.code() == ErrorCode::Timeout => return Err(self.timed_out()),
                Err(e) if e.code() == ErrorCode::Transport && attempt < self.max_retries => {
                    (backoff(attempt), e.to_string())
                }
                Err(e) => return Err(e),
            };
            if Instant::now() + delay >= deadline {
                return Err(Error::Timeout(format!(
                    "planner: {} at {} failed ({last}); the next retry (in {delay:?}) would pass planner.timeout ({:?})",
                    self.provider,
                    net::redact(&self.url),
                    self.timeout
                )));
            }
            tracing::debug!(provider = self.provider, attempt, ?delay, "planner: retrying ({last})");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One request: status, Retry-After, the body (bounded).
    async fn once(&self, spec: net::RequestSpec) -> Result<(u16, Option<Duration>, Vec<u8>)> {
        let mut response = net::send(&self.client, self.policy, spec).await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e6)
            .map(Duration::from_secs_f64);
        let max = self.max_response_size;
        let too_big =
            || planner_error(format!("{}: the answer is over planner.max_response_size ({max} bytes)", self.provider));
        if response.content_length().is_some_and(|n| n > max) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| net::request_error(&reqwest::Method::POST, &self.url, e))?
        {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, retry_after, body))
    }

    fn timed_out(&self) -> Error {
        Error::Timeout(format!(
            "planner: {} at {} gave no answer within planner.timeout ({:?})",
            self.provider,
            net::redact(&self.url),
            self.timeout
        ))
    }

    fn refused(&self, status: u16, excerpt: &str) -> Error {
        planner_error(format!("{} at {} answered HTTP {status}: {excerpt}", self.provider, net::redact(&self.url)))
    }

    /// The server's error message (or the start of its body), the key redacted.
    fn excerpt(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/error/message").or_else(|| v.get("error")).or_else(|| v.get("message")).cloned())
            .map(|m| match m {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .unwrap_or_else(|| text.into_owned());
        let mut message = match &self.secret {
            Some(secret) if !secret.is_empty() => message.replace(secret.as_str(), "[redacted]"),
            _ => message,
        };
        if message.len() > EXCERPT {
            let mut end = EXCERPT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        if message.trim().is_empty() { "(no body)".into() } else { message }
    }
}

/// Full-jitter exponential backoff: up to 250 ms × 2^attempt, capped at 8 s.
fn backoff(attempt: u32) -> Duration {
    let cap = (250u64 << attempt.min(5)).min(8000);
    Duration::from_millis(fastrand::u64(cap / 4..=cap))
}

/// The JSON object in a model's answer: the whole text, else a fenced code block,
/// else the text from the first `{` to the last `}`.
pub fn extract_json(text: &str) -> std::result::Result<Value, String> {
    let trimmed = text.trim();
    let first = match serde_json::from_str::<Value>(trimmed) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut rest = trimmed;
    for _ in 0..MAX_BLOCKS {
        let Some(open) = rest.find("```") else { break };
        let after = &rest[open + 3..];
        let Some(close) = after.find("```") else { break };
        let block = &after[..close];
        // Skip the info string (`json`) on the fence's line.
        let body = block.split_once('\n').map_or(block, |(info, body)| if info.contains('{') { block } else { body });
        if let Ok(v) = serde_json::from_str::<Value>(body.trim()) {
            return Ok(v);
        }
        rest = &after[close + 3..];
    }
    if let (Some(start), Some(end)) = (trimmed.find('{'), trimmed.rfind('}')) {
        if start < end {
            match serde_json::from_str::<Value>(&trimmed[start..=end]) {
                Ok(v) => return Ok(v),
                Err(e) => return Err(format!("the answer is not valid JSON: {e}")),
            }
        }
    }
    if trimmed.is_empty() {
        return Err("the answer is empty".into());
    }
    Err(format!("the answer holds no JSON object: {first}"))
}

fn text_and_json(text: String, usage: Usage) -> LlmResponse {
    let json = extract_json(&text).ok();
    LlmResponse { text, json, usage }
}

fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// OpenAI-compatible chat completions: `POST {base_url}/chat/completions`.
pub struct OpenAiClient {
    endpoint: Endpoint,
    model: String,
    format: ResponseFormat,
    /// The server refused `response_format` once: leave it out from now on.
    format_refused: AtomicBool,
    /// The server refused `max_tokens` once: send `max_completion_tokens`.
    max_tokens_refused: AtomicBool,
}

impl OpenAiClient {
    /// `api_key` is the resolved key (sent as `Authorization: Bearer`); `client` the
    /// HTTP client to use (the engine's); `allow_private` as `calls.allow_private_networks`.
    pub fn new(
        config: &PlannerConfig,
        api_key: Option<String>,
        client: reqwest::Client,
        allow_private: bool,
    ) -> Result<OpenAiClient> {
        let mut endpoint = Endpoint::new(config, "openai", "/chat/completions", client, allow_private)?;
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            endpoint.header("authorization", &format!("Bearer {key}"), true)?;
            endpoint.secret = Some(key);
        }
        Ok(OpenAiClient {
            endpoint,
            model: config.model.clone(),
            format: config.response_format,
            format_refused: AtomicBool::new(false),
            max_tokens_refused: AtomicBool::new(false),
        })
    }

    fn body(&self, request: &LlmRequest) -> Value {
        let mut messages = vec![json!({"role": "system", "content": request.system})];
        messages.extend(request.messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})));
        let mut body = json!({"model": self.model, "messages": messages});
        let tokens_key =
            if self.max_tokens_refused.load(Ordering::Relaxed) { "max_completion_tokens" } else { "max_tokens" };
        body[tokens_key] = request.max_tokens.into();
        if !self.format_refused.load(Ordering::Relaxed) {
            match (self.format, &request.schema) {
                (ResponseFormat::JsonSchema, Some(schema)) => {
                    body["response_format"] =
                        json!({"type": "json_schema", "json_schema": {"name": "workflow", "schema": schema}});
                }
                (ResponseFormat::JsonSchema | ResponseFormat::JsonObject, _) => {
                    body["response_format"] = json!({"type": "json_object"});
                }
                (ResponseFormat::None, _) => {}
            }
        }
        body
    }

    async fn ask(&self, request: LlmRequest) -> Result<LlmResponse> {
        let mut answer = self.endpoint.post(&self.body(&request)).await?;
        // A server that does not know `response_format` or `max_tokens` says so with a
        // 400: ask again without it (and remember), once each.
        for _ in 0..2 {
            let Answer::Refused { status: 400, excerpt } = &answer else { break };
            let lower = excerpt.to_ascii_lowercase();
            let format = lower.contains("response_format")
                && self.format != ResponseFormat::None
                && !self.format_refused.swap(true, Ordering::Relaxed);
            let tokens =
                !format && lower.contains("max_tokens") && !self.max_tokens_refused.swap(true, Ordering::Relaxed);
            if !format && !tokens {
                break;
            }
            tracing::info!(format, tokens, "planner: the server refused a parameter; asking again without it");
            answer = self.endpoint.post(&self.body(&request)).await?;
        }
        let value = match answer {
            Answer::Ok(v) => v,
            Answer::Refused { status, excerpt } => return Err(self.endpoint.refused(status, &excerpt)),
        };
        let usage = value
            .get("usage")
            .map(|u| Usage {
                prompt_tokens: count(u, "prompt_tokens"),
                completion_tokens: count(u, "completion_tokens"),
            })
            .unwrap_or_default();
        let message = value.pointer("/choices/0/message");
        match message.and_then(|m| m.get("content")).and_then(Value::as_str) {
            Some(text) => Ok(text_and_json(text.to_string(), usage)),
            None => {
                let why = match message.and_then(|m| m.get("refusal")).and_then(Value::as_str) {
                    Some(r) => format!("the model refused: {}", r.chars().take(EXCERPT).collect::<String>()),
                    None => "no choices[0].message.content in the answer".into(),
                };
                Err(planner_error(format!("openai ({}): {why}", self.model)))
            }
        }
    }
}

impl LlmClient for OpenAiClient {
    fn complete(&self, request: LlmRequest) -> BoxFuture<'_, Result<LlmResponse>> {
        Box::pin(self.ask(request))
    }

    fn provider(&self) -> &str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.model
    }
}

/// The Anthropic messages API: `POST {base_url}/v1/messages`.
pub struct AnthropicClient {
    endpoint: Endpoint,
    model: String,
}

impl AnthropicClient {
    pub fn new(
        config: &PlannerConfig,
        api_key: Option<String>,
        client: reqwest::Client,
        allow_private: bool,
    ) -> Result<AnthropicClient> {
        let mut endpoint = Endpoint::new(config, "anthropic", "/v1/messages", client, allow_private)?;
        endpoint.header("anthropic-version", "2023-06-01", false)?;
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            endpoint.header("x-api-key", &key, true)?;
            endpoint.secret = Some(key);
        }
        Ok(AnthropicClient { endpoint, model: config.model.clone() })
    }

    async fn ask(&self, request: LlmRequest) -> Result<LlmResponse> {
        let messages: Vec<Value> =
            request.messages.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect();
        let body = json!({
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": request.system,
            "messages": messages,
        });
        let value = match self.endpoint.post(&body).await? {
            Answer::Ok(v) => v,
            Answer::Refused { status, excerpt } => return Err(self.endpoint.refused(status, &excerpt)),
        };
        let usage = value
            .get("usage")
            .map(|u| Usage { prompt_tokens: count(u, "input_tokens"), completion_tokens: count(u, "output_tokens") })
            .unwrap_or_default();
        let Some(blocks) = value.get("content").and_then(Value::as_array) else {
            return Err(planner_error(format!("anthropic ({}): no `content` in the answer", self.model)));
        };
        let text: String = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("");
        Ok(text_and_json(text, usage))
    }
}

impl LlmClient for AnthropicClient {
    fn complete(&self, request: LlmRequest) -> BoxFuture<'_, Result<LlmResponse>> {
        Box::pin(self.ask(request))
    }

    fn provider(&self) -> &str {
        "anthropic"
    }

    fn model(&self) -> &str {
        &self.model
    }
}

/// `raw` with every `${NAME}` replaced from config `variables`, the dotenv files of
/// `load_variables_from`, then the environment (names as written, not namespaced:
/// the key belongs to no manual). A missing variable is an error naming it; a value
/// never appears in one.
pub(crate) fn resolve_secret(variables: &crate::vars::Variables, raw: &str) -> Result<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        let Some(end) = tail.find('}') else {
            out.push_str(&rest[at..]);
            rest = "";
            break;
        };
        let name = &tail[..end];
        out.push_str(&lookup(variables, name)?);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(variables: &crate::vars::Variables, name: &str) -> Result<String> {
    variables.get(name).ok_or_else(|| {
        planner_error(format!(
            "planner.api_key: variable '{name}' is not set (config `variables`, a dotenv file or the environment)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_found_in_prose_and_fences() {
        assert_eq!(extract_json(" {\"a\": 1} ").unwrap()["a"], 1);
        assert_eq!(extract_json("Here:\n```json\n{\"a\": 2}\n```\nDone").unwrap()["a"], 2);
        assert_eq!(extract_json("```\n{\"a\": 3}\n```").unwrap()["a"], 3);
        assert_eq!(extract_json("Sure! {\"a\": 4} hope it helps").unwrap()["a"], 4);
        assert!(extract_json("no json here").is_err());
        assert!(extract_json("").is_err());
        let deep = "[".repeat(100_000);
        assert!(extract_json(&deep).is_err());
        let deep_obj = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert!(extract_json(&deep_obj).is_err());
    }

    #[test]
    fn secrets_resolve_from_variables() {
        let config = crate::config::Config::from_value(json!({"variables": {"K": "v1"}})).unwrap();
        let variables = crate::vars::Variables::new(&config).unwrap();
        assert_eq!(resolve_secret(&variables, "${K}").unwrap(), "v1");
        assert_eq!(resolve_secret(&variables, "plain").unwrap(), "plain");
        let e = resolve_secret(&variables, "${UTP_TEST_SURELY_MISSING_VAR}").unwrap_err();
        assert_eq!(e.code(), ErrorCode::Planner);
        assert!(e.to_string().contains("UTP_TEST_SURELY_MISSING_VAR"));
    }
}
