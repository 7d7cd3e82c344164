//! The `http` transport, and the request building `sse` / `streamable_http` share.
//!
//! Arguments map onto the request as in python-utcp: `{name}` in the URL takes the
//! argument `name`, `header_fields` go to headers, `body_field` (default `body`
//! for `http`) is the body, everything else goes to the query string, serialised
//! with the OpenAPI `style`/`explode` the converter recorded in `x-utp-parameters`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::net::{self, Body, NetPolicy, RequestSpec};
use super::{Transports, arg_text, excerpt};
use crate::error::{Error, Result};
use crate::json::json_kind;
use crate::manual::{Auth, HttpTemplate, RequestFields};
use crate::registry::RegisteredTool;

/// How much of an error response body a `TOOL_FAILED` message quotes.
const BODY_EXCERPT: usize = 512;

/// What a request is built from: the HTTP-family template's fields.
pub struct RequestTemplate<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub content_type: Option<&'a str>,
    pub request: &'a RequestFields,
    pub body_field: Option<&'a str>,
    pub extra: &'a Map<String, Value>,
    pub auth: Option<&'a Auth>,
}

pub(crate) async fn call(
    t: &Transports,
    tool: &RegisteredTool,
    tpl: &HttpTemplate,
    args: Map<String, Value>,
    timeout: Duration,
) -> Result<Value> {
    let rt = RequestTemplate {
        url: &tpl.url,
        method: &tpl.http_method,
        content_type: Some(&tpl.content_type),
        request: &tpl.request,
        // python-utcp's HttpCallTemplate defaults body_field to "body".
        body_field: Some(tpl.request.body_field.as_deref().unwrap_or("body")),
        extra: &tpl.extra,
        auth: tpl.common.auth.as_ref(),
    };
    let mut spec = build_request(tool, &rt, args)?;
    spec.timeout = Some(timeout);
    let response = send_with_auth(t, tool, rt.auth, spec).await?;
    read_result(t, tool, response).await
}

/// Send with the template's auth applied; with OAuth2, a 401 drops the cached
/// token and the request is sent once more with a fresh one.
pub(crate) async fn send_with_auth(
    t: &Transports,
    tool: &RegisteredTool,
    auth: Option<&Auth>,
    mut spec: RequestSpec,
) -> Result<reqwest::Response> {
    let (client, cap) = t.client_for(tool)?;
    spec.redirect_locality_cap = cap;
    let policy = t.policy();
    // Only an OAuth2 request may be sent twice; the others need no copy.
    let retry = matches!(auth, Some(Auth::OAuth2 { .. })).then(|| spec.clone());
    let mut first = spec;
    apply_auth(t, auth, &mut first, false).await.map_err(|e| name_tool(tool, e))?;
    let response = net::send(&client, policy, first).await.map_err(|e| name_tool(tool, e))?;
    if let Some(mut retry) = retry.filter(|_| response.status() == reqwest::StatusCode::UNAUTHORIZED) {
        apply_auth(t, auth, &mut retry, true).await.map_err(|e| name_tool(tool, e))?;
        return net::send(&client, policy, retry).await.map_err(|e| name_tool(tool, e));
    }
    Ok(response)
}

fn name_tool(tool: &RegisteredTool, e: Error) -> Error {
    let prefix = format!("tool '{}': ", tool.name);
    match e {
        Error::Transport(m) => Error::Transport(format!("{prefix}{m}")),
        Error::Security(m) => Error::Security(format!("{prefix}{m}")),
        Error::Timeout(m) => Error::Timeout(format!("{prefix}{m}")),
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{prefix}{m}")),
        Error::ToolFailed { message, status, retry_after } => {
            Error::ToolFailed { message: format!("{prefix}{message}"), status, retry_after }
        }
        other => other,
    }
}

/// Read a response: non-2xx is `TOOL_FAILED` with the status and a body excerpt;
/// JSON content types parse as JSON, text as a string, other bytes as base64.
pub(crate) async fn read_result(t: &Transports, tool: &RegisteredTool, response: reqwest::Response) -> Result<Value> {
    let status = response.status();
    let content_type = content_type(&response);
    if status.is_success() {
        return Ok(decode(&content_type, read_capped(t, tool, response).await?));
    }
    let url = net::redact(response.url());
    let retry_after = retry_after_header(response.headers());
    let body = read_capped(t, tool, response).await?;
    Err(failed(tool, status, &url, &body, retry_after))
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3); a date in the
/// past is zero, anything unreadable is ignored.
pub(crate) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<std::time::Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(std::time::Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(text).ok()?;
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(std::time::Duration::try_from(wait).unwrap_or_default())
}

pub(crate) fn failed(
    tool: &RegisteredTool,
    status: reqwest::StatusCode,
    url: &str,
    body: &[u8],
    retry_after: Option<std::time::Duration>,
) -> Error {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut message = format!("tool '{}': HTTP {status} from {url}", tool.name);
    if !text.is_empty() {
        message.push_str(": ");
        message.push_str(&excerpt(text, BODY_EXCERPT));
    }
    Error::ToolFailed { message, status: Some(status.as_u16()), retry_after }
}

pub(crate) fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The media type without parameters.
pub(crate) fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

pub(crate) async fn read_capped(
    t: &Transports,
    tool: &RegisteredTool,
    mut response: reqwest::Response,
) -> Result<Vec<u8>> {
    let max = t.config.calls.max_response_size;
    if response.content_length().is_some_and(|n| n > max) {
        return Err(too_large(tool, response.url(), max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| name_tool(tool, net::request_error(&reqwest::Method::GET, response.url(), e)))?
    {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(too_large(tool, response.url(), max));
        }
        if body.is_empty() {
            // Most bodies arrive in one chunk: take it whole.
            body = Vec::from(chunk);
        } else {
            body.extend_from_slice(&chunk);
        }
    }
    Ok(body)
}

fn too_large(tool: &RegisteredTool, url: &url::Url, max: u64) -> Error {
    Error::Transport(format!(
        "tool '{}': response from {} is over the {max} byte cap (calls.max_response_size)",
        tool.name,
        net::redact(url)
    ))
}

fn decode(content_type: &str, body: Vec<u8>) -> Value {
    let media = media_type(content_type);
    if body.is_empty() {
        return Value::Null;
    }
    if media.contains("json") {
        if let Ok(v) = serde_json::from_slice(&body) {
            return v;
        }
    }
    match String::from_utf8(body) {
        Ok(text) => Value::String(text),
        Err(e) => serde_json::json!({
            "content_type": media,
            "base64": base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
        }),
    }
}

/// Parameter metadata the OpenAPI converter recorded (`x-utp-parameters`).
#[derive(Default, Clone, Copy)]
struct ParamMeta<'a> {
    location: Option<&'a str>,
    style: Option<&'a str>,
    explode: Option<bool>,
    collection_format: Option<&'a str>,
}

fn param_meta<'a>(extra: &'a Map<String, Value>, name: &str) -> ParamMeta<'a> {
    let Some(p) = extra.get("x-utp-parameters").and_then(|m| m.get(name)) else { return ParamMeta::default() };
    ParamMeta {
        location: p.get("in").and_then(Value::as_str),
        style: p.get("style").and_then(Value::as_str),
        explode: p.get("explode").and_then(Value::as_bool),
        collection_format: p.get("collectionFormat").and_then(Value::as_str),
    }
}

/// Build the request for `args` (already validated). Errors name the tool.
pub fn build_request(
    tool: &RegisteredTool,
    rt: &RequestTemplate<'_>,
    mut args: Map<String, Value>,
) -> Result<RequestSpec> {
    let method = reqwest::Method::from_bytes(rt.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Error::InvalidManual(format!("tool '{}': '{}' is not an HTTP method", tool.name, rt.method)))?;

    // Path parameters.
    let mut url_text = String::with_capacity(rt.url.len());
    let mut rest = rt.url;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        let name = &rest[open + 1..open + close];
        url_text.push_str(&rest[..open]);
        let value = args.shift_remove(name).filter(|v| !v.is_null()).ok_or_else(|| {
            Error::ValidationFailed(format!("tool '{}': the URL needs the path parameter '{name}'", tool.name))
        })?;
        let meta = param_meta(rt.extra, name);
        url_text.push_str(&path_value(name, &value, meta));
        rest = &rest[open + close + 1..];
    }
    url_text.push_str(rest);
    let url =
        parse_url(&url_text).map_err(|e| Error::InvalidManual(format!("tool '{}': invalid URL: {e}", tool.name)))?;

    let mut spec = RequestSpec::new(method, url);
    let header = |name: &str, value: &str, sensitive: bool| tool_header(&tool.name, name, value, sensitive);

    // Fixed headers (after variable substitution they may hold secrets: sensitive).
    if let Some(headers) = &rt.request.headers {
        for (k, v) in headers {
            spec.headers.push(header(k, &arg_text(v), true)?);
        }
    }
    // Header fields.
    for name in rt.request.header_fields.iter().flatten() {
        if let Some(v) = args.shift_remove(name).filter(|v| !v.is_null()) {
            spec.headers.push(header(name, &simple(&v, false), false)?);
        }
    }
    // Body.
    let body_value = rt.body_field.and_then(|f| args.shift_remove(f)).filter(|v| !v.is_null());
    if let Some(body) = body_value {
        spec.body = encode_body(tool, rt.content_type.unwrap_or("application/json"), body)?;
    }
    // The rest: query (or header/cookie when the spec says so).
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut cookies: Vec<String> = Vec::new();
    for (name, value) in args {
        if value.is_null() {
            continue;
        }
        let meta = param_meta(rt.extra, &name);
        match meta.location {
            Some("header") => spec.headers.push(header(&name, &simple(&value, meta.explode.unwrap_or(false)), false)?),
            Some("cookie") => cookies.push(format!("{name}={}", simple(&value, false))),
            _ => query_pairs(&name, &value, meta, &mut pairs),
        }
    }
    if !pairs.is_empty() {
        let mut q = spec.url.query_pairs_mut();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
    }
    if !cookies.is_empty() {
        spec.headers.push(header("cookie", &cookies.join("; "), false)?);
    }
    Ok(spec)
}

/// `Url::parse`, remembering the last URL this thread parsed: a tool called again and
/// again sends to the same URL, and a parse (IDNA host mapping included) costs more than
/// the copy.
fn parse_url(text: &str) -> std::result::Result<url::Url, url::ParseError> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<url::Url>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(url) = last.as_ref().filter(|u| u.as_str() == text) {
            return Ok(url.clone());
        }
        let url = url::Url::parse(text)?;
        *last = Some(url.clone());
        Ok(url)
    })
}

/// A scalar as text: booleans `true`/`false`, numbers as written, strings raw.
fn scalar(v: &Value) -> String {
    arg_text(v)
}

/// OpenAPI `simple` style (path and header default).
fn simple(v: &Value, explode: bool) -> String {
    match v {
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(obj) => obj
            .iter()
            .map(|(k, v)| if explode { format!("{k}={}", scalar(v)) } else { format!("{k},{}", scalar(v)) })
            .collect::<Vec<_>>()
            .join(","),
        other => scalar(other),
    }
}

fn path_value(name: &str, v: &Value, meta: ParamMeta<'_>) -> String {
    const PATH_SEGMENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b',');
    let explode = meta.explode.unwrap_or(false);
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string();
    match meta.style.unwrap_or("simple") {
        "label" => {
            let sep = if explode { "." } else { "," };
            match v {
                Value::Array(items) => {
                    format!(".{}", items.iter().map(|i| enc(&scalar(i))).collect::<Vec<_>>().join(sep))
                }
                other => format!(".{}", enc(&simple(other, explode))),
            }
        }
        "matrix" => match v {
            Value::Array(items) if explode => {
                items.iter().map(|i| format!(";{name}={}", enc(&scalar(i)))).collect::<Vec<_>>().join("")
            }
            other => format!(";{name}={}", enc(&simple(other, explode))),
        },
        _ => match v {
            Value::Array(items) => items.iter().map(|i| enc(&scalar(i))).collect::<Vec<_>>().join(","),
            other => enc(&simple(other, explode)),
        },
    }
}

/// Query serialisation by OpenAPI style/explode (3.x) or collectionFormat (2.0).
/// Without metadata: arrays repeat the key, objects are sent as JSON text.
fn query_pairs(name: &str, v: &Value, meta: ParamMeta<'_>, out: &mut Vec<(String, String)>) {
    let has_meta =
        meta.style.is_some() || meta.explode.is_some() || meta.collection_format.is_some() || meta.location.is_some();
    match v {
        Value::Array(items) => {
            let joined = |sep: &str| items.iter().map(scalar).collect::<Vec<_>>().join(sep);
            let sep = match (meta.collection_format, meta.style) {
                (Some("multi"), _) => None,
                (Some("ssv"), _) => Some(" "),
                (Some("tsv"), _) => Some("\t"),
                (Some("pipes"), _) => Some("|"),
                (Some(_), _) => Some(","), // csv, the 2.0 default
                (None, Some("spaceDelimited")) if meta.explode != Some(true) => Some(" "),
                (None, Some("pipeDelimited")) if meta.explode != Some(true) => Some("|"),
                (None, _) if meta.explode == Some(false) => Some(","),
                _ => None, // form, explode (the 3.x default), and no metadata
            };
            match sep {
                Some(sep) => out.push((name.to_string(), joined(sep))),
                None => out.extend(items.iter().map(|i| (name.to_string(), scalar(i)))),
            }
        }
        Value::Object(obj) => match (meta.style, meta.explode) {
            (Some("deepObject"), _) => {
                out.extend(obj.iter().map(|(k, v)| (format!("{name}[{k}]"), scalar(v))));
            }
            (_, Some(false)) => out.push((name.to_string(), simple(v, false))),
            _ if has_meta => out.extend(obj.iter().map(|(k, v)| (k.clone(), scalar(v)))),
            _ => out.push((name.to_string(), v.to_string())),
        },
        other => out.push((name.to_string(), scalar(other))),
    }
}

fn encode_body(tool: &RegisteredTool, content_type: &str, body: Value) -> Result<Body> {
    let media = media_type(content_type).to_ascii_lowercase();
    let form_fields = |body: &Value| -> Result<Vec<(String, String)>> {
        let Value::Object(obj) = body else {
            return Err(Error::ValidationFailed(format!(
                "tool '{}': a {media} body must be an object of fields, found {}",
                tool.name,
                json_kind(body)
            )));
        };
        let mut out = Vec::new();
        for (k, v) in obj {
            match v {
                Value::Null => {}
                Value::Array(items) => out.extend(items.iter().map(|i| (k.clone(), arg_text(i)))),
                other => out.push((k.clone(), arg_text(other))),
            }
        }
        Ok(out)
    };
    Ok(match media.as_str() {
        "application/x-www-form-urlencoded" => {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in form_fields(&body)? {
                ser.append_pair(&k, &v);
            }
            Body::Bytes { content_type: content_type.to_string(), data: Bytes::from(ser.finish()) }
        }
        "multipart/form-data" => Body::Multipart(form_fields(&body)?),
        m if m.contains("json") || m.is_empty() => Body::Bytes {
            content_type: if m.is_empty() { "application/json".into() } else { content_type.to_string() },
            data: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        },
        _ => match body {
            Value::String(s) => Body::Bytes { content_type: content_type.to_string(), data: Bytes::from(s) },
            other => Body::Bytes {
                content_type: content_type.to_string(),
                data: Bytes::from(serde_json::to_vec(&other).unwrap_or_default()),
            },
        },
    })
}

/// Put the template's credentials on the request (all marked sensitive).
pub(crate) async fn apply_auth(
    t: &Transports,
    auth: Option<&Auth>,
    spec: &mut RequestSpec,
    refresh: bool,
) -> Result<()> {
    let sensitive = |name: &str, value: &str| -> Result<(HeaderName, HeaderValue, bool)> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::InvalidManual(format!("auth: '{name}' is not a valid header name")))?;
        let mut v = HeaderValue::from_str(value).map_err(|_| {
            Error::InvalidManual(format!("auth: the credential for '{name}' is not a valid header value"))
        })?;
        v.set_sensitive(true);
        Ok((n, v, true))
    };
    match auth {
        None => {}
        Some(Auth::ApiKey { api_key, var_name, location }) => match location.as_str() {
            "query" => {
                spec.url.query_pairs_mut().append_pair(var_name, api_key);
            }
            "cookie" => spec.headers.push(sensitive("cookie", &format!("{var_name}={api_key}"))?),
            _ => spec.headers.push(sensitive(var_name, api_key)?),
        },
        Some(Auth::Basic { username, password }) => {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            spec.headers.push(sensitive("authorization", &format!("Basic {token}"))?);
        }
        Some(Auth::OAuth2 { token_url, client_id, client_secret, scope }) => {
            // The token request inherits the request's locality cap (a remote manual's tool).
            let cap = spec.redirect_locality_cap;
            let client = OAuthClient { token_url, client_id, client_secret, scope: scope.as_deref() };
            let token = t.tokens.token(t, cap, &client, refresh).await?;
            spec.headers.push(sensitive("authorization", &format!("Bearer {token}"))?);
        }
    }
    Ok(())
}

/// OAuth2 client-credentials tokens, cached per (token URL, client id, secret,
/// scope) until shortly before they expire. The key lives in memory only.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String, String, String), CachedToken>>,
}

#[derive(Clone)]
struct CachedToken {
    access: String,
    refresh: Option<String>,
    expires: Option<Instant>,
}

/// An OAuth2 client as a template names it: the token cache's key.
#[derive(Clone, Copy)]
struct OAuthClient<'a> {
    token_url: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    scope: Option<&'a str>,
}

/// Tokens are renewed this long before they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

impl TokenCache {
    async fn token(
        &self,
        t: &Transports,
        cap: Option<net::OriginClass>,
        client: &OAuthClient<'_>,
        force_new: bool,
    ) -> Result<String> {
        let OAuthClient { token_url, client_id, client_secret, scope } = *client;
        let key =
            (token_url.to_string(), client_id.to_string(), client_secret.to_string(), scope.unwrap_or("").to_string());
        let cached = self.tokens.lock().get(&key).cloned();
        if let Some(c) = &cached {
            if !force_new && c.expires.is_none_or(|e| Instant::now() < e) {
                return Ok(c.access.clone());
            }
        }
        if force_new {
            self.tokens.lock().remove(&key);
        }
        // An expired token with a refresh token: try the refresh grant first.
        let mut fresh = None;
        if let Some(refresh) = cached.as_ref().and_then(|c| c.refresh.clone()) {
            let mut form =
                vec![("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", client_id)];
            form.push(("client_secret", client_secret));
            fresh = self.fetch(t, cap, token_url, &form, None).await.ok();
        }
        let token = match fresh {
            Some(tok) => tok,
            None => {
                let mut form = vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", client_secret),
                ];
                if let Some(s) = scope {
                    form.push(("scope", s));
                }
                // Credentials in the body first, then HTTP Basic (as python-utcp).
                match self.fetch(t, cap, token_url, &form, None).await {
                    Ok(tok) => tok,
                    Err(first) => {
                        let basic =
                            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{client_secret}"));
                        let form: Vec<_> =
                            form.into_iter().filter(|(k, _)| *k == "grant_type" || *k == "scope").collect();
                        self.fetch(t, cap, token_url, &form, Some(&basic)).await.map_err(|_| first)?
                    }
                }
            }
        };
        let access = token.access.clone();
        self.tokens.lock().insert(key, token);
        Ok(access)
    }

    async fn fetch(
        &self,
        t: &Transports,
        cap: Option<net::OriginClass>,
        token_url: &str,
        form: &[(&str, &str)],
        basic: Option<&str>,
    ) -> Result<CachedToken> {
        let url = url::Url::parse(token_url)
            .map_err(|e| Error::InvalidManual(format!("oauth2 token_url is not a URL: {e}")))?;
        // Scoped: the serializer is not `Sync`, and kept alive across the awaits below it
        // would make every `call_tool` future non-`Send`.
        let form_body = {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in form {
                ser.append_pair(k, v);
            }
            ser.finish()
        };
        let mut spec = RequestSpec::new(reqwest::Method::POST, url.clone());
        spec.body =
            Body::Bytes { content_type: "application/x-www-form-urlencoded".into(), data: Bytes::from(form_body) };
        spec.headers.push((reqwest::header::ACCEPT, HeaderValue::from_static("application/json"), false));
        if let Some(b) = basic {
            let mut v = HeaderValue::from_str(&format!("Basic {b}"))
                .map_err(|_| Error::InvalidManual("oauth2 client credentials are not valid header text".into()))?;
            v.set_sensitive(true);
            spec.headers.push((reqwest::header::AUTHORIZATION, v, true));
        }
        spec.timeout = Some(t.config.calls.default_timeout);
        let policy: NetPolicy = t.policy();
        spec.redirect_locality_cap = cap;
        let mut response = net::send(&t.capped_client(cap)?, policy, spec).await?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| net::request_error(&reqwest::Method::POST, &url, e))?
        {
            if body.len() + chunk.len() > 1024 * 1024 {
                return Err(Error::Transport(format!(
                    "oauth2 token response from {} is over 1 MiB",
                    net::redact(&url)
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            // The token endpoint's body may echo credentials: report the status only.
            return Err(Error::ToolFailed {
                message: format!("oauth2 token request to {} failed: HTTP {status}", net::redact(&url)),
                status: Some(status.as_u16()),
                retry_after: None,
            });
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| Error::Transport(format!("oauth2 token response from {} is not JSON", net::redact(&url))))?;
        let access = v.get("access_token").and_then(Value::as_str).ok_or_else(|| {
            Error::Transport(format!("oauth2 token response from {} has no access_token", net::redact(&url)))
        })?;
        let expires = v
            .get("expires_in")
            .and_then(|e| e.as_f64().or_else(|| e.as_str().and_then(|s| s.parse().ok())))
            .map(|secs| {
                let life = Duration::from_secs_f64(secs.clamp(0.0, 1e9));
                Instant::now() + life.saturating_sub(EXPIRY_MARGIN.min(life / 2))
            });
        Ok(CachedToken {
            access: access.to_string(),
            refresh: v.get("refresh_token").and_then(Value::as_str).map(str::to_string),
            expires,
        })
    }
}

/// A header of `tool`'s request: `VALIDATION_FAILED` naming the tool and header when the
/// name or value cannot be sent (a newline in a substituted value, say). `sensitive`
/// keeps the value out of logs and debug output.
pub(crate) fn tool_header(
    tool: &str,
    name: &str,
    value: &str,
    sensitive: bool,
) -> Result<(HeaderName, HeaderValue, bool)> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Error::ValidationFailed(format!("tool '{tool}': '{name}' is not a valid header name")))?;
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        Error::ValidationFailed(format!(
            "tool '{tool}': the value of header '{name}' holds characters a header cannot carry (e.g. a newline)"
        ))
    })?;
    v.set_sensitive(sensitive);
    Ok((n, v, sensitive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_remembered_url_is_what_a_fresh_parse_gives() {
        for text in [
            "HTTP://Example.COM:80/a/../b?q=1",
            "http://example.com/b?q=1",
            "http://127.0.0.1:8/x",
            "not a url",
            "http://example.com/b?q=1",
        ] {
            for _ in 0..2 {
                assert_eq!(parse_url(text), url::Url::parse(text), "{text}");
            }
        }
    }

    /// The tool of a manual fetched from a public host whose URL names a host that
    /// resolves to loopback (`localhost` here, through the resolver as any name): the call
    /// is refused, while the same tool from a loopback-served manual goes through.
    #[test]
    fn a_remote_manuals_tool_cannot_reach_loopback_through_a_name() {
        let port = crate::transport::net::empty_json_server();
        let template: crate::manual::CallTemplate = serde_json::from_value(
            json!({"call_template_type": "http", "url": format!("http://localhost:{port}/x"), "http_method": "GET"}),
        )
        .unwrap();
        let tool = |from: &str| {
            let mut tool = RegisteredTool::detached(
                "m",
                serde_json::from_value(json!({"name": "t", "tool_call_template": template})).unwrap(),
            );
            tool.fetched_from = Some(from.into());
            tool
        };
        let t = Transports::new(std::sync::Arc::new(crate::config::Config::default()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let timeout = Duration::from_secs(5);
        for from in ["https://tools.example.com/utcp", "http://10.1.2.3/utcp"] {
            let err = rt.block_on(t.call(&tool(from), &template, Map::new(), timeout)).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::Security, "{from}: {err}");
            assert!(err.to_string().contains("more local than"), "{err}");
        }
        let ok = rt.block_on(t.call(&tool(&format!("http://127.0.0.1:{port}/utcp")), &template, Map::new(), timeout));
        assert_eq!(ok.unwrap(), json!("{}"), "no content type: the body as text");
    }

    fn pairs(name: &str, v: Value, meta: Value) -> Vec<(String, String)> {
        let extra: Map<String, Value> = serde_json::from_value(json!({"x-utp-parameters": {name: meta}})).unwrap();
        let mut out = Vec::new();
        query_pairs(name, &v, param_meta(&extra, name), &mut out);
        out
    }

    fn p(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn query_styles() {
        assert_eq!(pairs("id", json!([1, 2]), json!({"in": "query"})), p(&[("id", "1"), ("id", "2")]));
        assert_eq!(pairs("id", json!([1, 2]), json!({"in": "query", "explode": false})), p(&[("id", "1,2")]));
        assert_eq!(pairs("id", json!([1, 2]), json!({"in": "query", "style": "pipeDelimited"})), p(&[("id", "1|2")]));
        assert_eq!(
            pairs("id", json!([1, 2]), json!({"in": "query", "collectionFormat": "multi"})),
            p(&[("id", "1"), ("id", "2")])
        );
        assert_eq!(pairs("id", json!([1, 2]), json!({"in": "query", "collectionFormat": "csv"})), p(&[("id", "1,2")]));
        assert_eq!(pairs("f", json!(true), json!({})), p(&[("f", "true")]));
        assert_eq!(
            pairs("o", json!({"a": 1, "b": "x"}), json!({"in": "query", "style": "deepObject"})),
            p(&[("o[a]", "1"), ("o[b]", "x")])
        );
        assert_eq!(pairs("o", json!({"a": 1, "b": "x"}), json!({"in": "query"})), p(&[("a", "1"), ("b", "x")]));
        assert_eq!(pairs("o", json!({"a": 1}), json!({"in": "query", "explode": false})), p(&[("o", "a,1")]));
        let mut out = Vec::new();
        query_pairs("o", &json!({"a": 1}), ParamMeta::default(), &mut out);
        assert_eq!(out, p(&[("o", "{\"a\":1}")]));
    }

    #[test]
    fn path_styles() {
        let m = ParamMeta::default();
        assert_eq!(path_value("p", &json!("a b/c"), m), "a%20b%2Fc");
        assert_eq!(path_value("p", &json!([1, 2]), m), "1,2");
        assert_eq!(path_value("p", &json!([1, 2]), ParamMeta { style: Some("label"), ..m }), ".1,2");
        assert_eq!(path_value("p", &json!(5), ParamMeta { style: Some("matrix"), ..m }), ";p=5");
    }
}
