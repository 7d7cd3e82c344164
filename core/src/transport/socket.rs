//! `tcp` and `udp` tools, wire-compatible with python-utcp 1.2's `utcp-socket` plugin
//! (docs/architecture.md, "tcp and udp tools").
//!
//! A call opens one connection (TCP) or one socket (UDP), sends one request built from
//! the arguments and reads one response, all on the caller's task and under the
//! engine's deadline for the call (the template's `timeout`, in milliseconds as
//! python-utcp reads it): nothing is pooled, nothing outlives the call.
//!
//! The template's fields are read once per call into [`SocketOptions`]; a bad field is
//! `INVALID_MANUAL` naming it. Every response is bounded: by the template's
//! `max_response_size`, at most `calls.max_response_size`. Addresses follow the
//! rules of `http` tools (`net`): loopback, or a host listed in
//! `calls.allowed_socket_hosts`; private addresses refused unless
//! `calls.allow_private_networks`; never more local than where the manual was fetched.

use std::net::SocketAddr;

use base64::Engine as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{Transports, net};
use crate::error::{Error, Result};
use crate::manual::{CallTemplate, SocketTemplate};
use crate::registry::RegisteredTool;

/// Which of the two template types a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

const OPEN: &str = "UTCP_ARG_";
const CLOSE: &str = "_UTCP_ARG";
/// Where a response's cap comes from, for the errors.
const CAP_FIELDS: &str = " (the template's max_response_size, at most calls.max_response_size)";
/// The most one UDP datagram can carry.
const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    LengthPrefix,
    Delimiter,
    FixedLength,
    /// Read until the server closes the connection (python-utcp's default).
    #[default]
    Stream,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endian {
    #[default]
    Big,
    Little,
}

/// How response bytes become the call's result (`response_byte_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteFormat {
    /// `null`: the bytes as `{"base64": "..."}`.
    Raw,
    Utf8,
    Ascii,
    Latin1,
}

/// A `tcp` or `udp` template's fields, typed, with python-utcp's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketOptions {
    pub request_data_format: RequestFormat,
    pub request_data_template: Option<String>,
    pub response_byte_format: ByteFormat,
    pub framing_strategy: Framing,
    pub length_prefix_bytes: u8,
    pub length_prefix_endian: Endian,
    /// The delimiter's bytes, escapes interpreted when asked.
    pub message_delimiter: Vec<u8>,
    pub fixed_message_length: Option<u64>,
    /// The template's own cap, else `calls.max_response_size`.
    pub max_response_size: u64,
    pub number_of_response_datagrams: u32,
}

impl SocketOptions {
    /// Read `template`'s fields; `engine_cap` bounds a response when it sets no
    /// `max_response_size`. Errors name the field.
    pub fn parse(protocol: Protocol, template: &SocketTemplate, engine_cap: u64) -> Result<SocketOptions> {
        let extra = &template.extra;
        let kind = protocol.name();
        let bad = |field: &str, why: String| Error::InvalidManual(format!("{kind} template field `{field}`: {why}"));
        let request_data_format = field(kind, extra, "request_data_format")?.unwrap_or_default();
        let request_data_template: Option<String> = field(kind, extra, "request_data_template")?;
        let response_byte_format = match extra.get("response_byte_format") {
            None => ByteFormat::Utf8,
            Some(Value::Null) => ByteFormat::Raw,
            Some(Value::String(name)) => byte_format(name).ok_or_else(|| {
                bad(
                    "response_byte_format",
                    format!("'{name}' is not a supported encoding (utf-8, ascii, latin-1, or null for raw bytes)"),
                )
            })?,
            Some(other) => {
                return Err(bad(
                    "response_byte_format",
                    format!("expected an encoding name or null, found {}", crate::json::json_kind(other)),
                ));
            }
        };
        let framing_strategy = field(kind, extra, "framing_strategy")?.unwrap_or_default();
        let length_prefix_bytes: u8 = field(kind, extra, "length_prefix_bytes")?.unwrap_or(4);
        if ![1, 2, 4, 8].contains(&length_prefix_bytes) {
            return Err(bad("length_prefix_bytes", format!("expected 1, 2, 4 or 8, found {length_prefix_bytes}")));
        }
        let length_prefix_endian = field(kind, extra, "length_prefix_endian")?.unwrap_or_default();
        let interpret: bool = field(kind, extra, "interpret_escape_sequences")?.unwrap_or(true);
        let delimiter: String = field(kind, extra, "message_delimiter")?.unwrap_or_default();
        // python-utcp: an empty delimiter means NUL.
        let delimiter = if delimiter.is_empty() { "\0".to_string() } else { delimiter };
        let delimiter = match interpret {
            true => interpret_escapes(&delimiter).map_err(|e| bad("message_delimiter", e))?,
            false => delimiter,
        };
        if delimiter.is_empty() {
            return Err(bad("message_delimiter", "the delimiter is empty once its escapes are read".into()));
        }
        let fixed_message_length: Option<u64> = field(kind, extra, "fixed_message_length")?;
        let own_cap: Option<u64> = field(kind, extra, "max_response_size")?;
        if own_cap == Some(0) {
            return Err(bad("max_response_size", "must be at least 1".into()));
        }
        // The host's cap is a ceiling a manual cannot raise.
        let max_response_size = own_cap.map_or(engine_cap, |own| own.min(engine_cap));
        let number_of_response_datagrams: u32 = field(kind, extra, "number_of_response_datagrams")?.unwrap_or(1);
        if protocol == Protocol::Tcp && framing_strategy == Framing::FixedLength {
            match fixed_message_length {
                None | Some(0) => {
                    return Err(bad(
                        "fixed_message_length",
                        "framing_strategy 'fixed_length' needs a length of at least 1".into(),
                    ));
                }
                Some(n) if n > max_response_size => {
                    return Err(bad(
                        "fixed_message_length",
                        format!("{n} bytes is over the response cap of {max_response_size}{CAP_FIELDS}"),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(SocketOptions {
            request_data_format,
            request_data_template,
            response_byte_format,
            framing_strategy,
            length_prefix_bytes,
            length_prefix_endian,
            message_delimiter: delimiter.into_bytes(),
            fixed_message_length,
            max_response_size,
            number_of_response_datagrams,
        })
    }
}

/// One optional field, typed; `null` is absent. The error names the field.
fn field<T: DeserializeOwned>(kind: &str, extra: &Map<String, Value>, name: &str) -> Result<Option<T>> {
    match extra.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|e| Error::InvalidManual(format!("{kind} template field `{name}`: {e}"))),
    }
}

/// The encodings of Python's codec registry that we decode, by Python's names and
/// aliases (case, `-`, `_` and spaces as Python's lookup normalises them).
fn byte_format(name: &str) -> Option<ByteFormat> {
    let normal: String =
        name.trim().to_ascii_lowercase().chars().map(|c| if c == '-' || c == ' ' { '_' } else { c }).collect();
    match normal.as_str() {
        "utf_8" | "utf8" | "u8" | "utf" | "cp65001" => Some(ByteFormat::Utf8),
        "ascii" | "us_ascii" | "646" => Some(ByteFormat::Ascii),
        "latin_1" | "latin1" | "latin" | "l1" | "iso_8859_1" | "iso8859_1" | "8859" | "cp819" => {
            Some(ByteFormat::Latin1)
        }
        _ => None,
    }
}

/// Python's `unicode_escape` reading of a delimiter (`"\\n"` → newline, `"\\x00"` → NUL,
/// `\ooo`, `\uXXXX`, `\UXXXXXXXX`), applied to characters: unlike python-utcp, a
/// non-ASCII character written as itself stays itself (python-utcp re-reads its UTF-8
/// bytes as Latin-1). An unknown escape is kept as written, as Python does.
pub fn interpret_escapes(text: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else { return Err("a lone `\\` ends the delimiter".into()) };
        let simple = match e {
            '\\' => Some('\\'),
            '\'' => Some('\''),
            '"' => Some('"'),
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'f' => Some('\x0c'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\x0b'),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            continue;
        }
        match e {
            '\n' => {}
            '0'..='7' => {
                let mut code = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            code = code * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(code).ok_or_else(|| format!("octal escape {code:o} is not a character"))?);
            }
            'x' | 'u' | 'U' => {
                let digits = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = chars.by_ref().take(digits).collect();
                let code = (hex.len() == digits && hex.chars().all(|h| h.is_ascii_hexdigit()))
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| format!("`\\{e}` needs {digits} hex digits, found '{hex}'"))?;
                out.push(char::from_u32(code).ok_or_else(|| format!("`\\{e}{hex}` is not a character"))?);
            }
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// The request text python-utcp sends for `args`: `json.dumps(args)` in `json` format;
/// in `text` format the template with each `UTCP_ARG_<name>_UTCP_ARG` replaced (strings
/// raw, other values as `json.dumps` writes them), or without a template the values
/// joined by spaces.
pub fn request_text(options: &SocketOptions, args: &Map<String, Value>) -> String {
    match (options.request_data_format, options.request_data_template.as_deref()) {
        (RequestFormat::Json, _) => python_json(&Value::Object(args.clone())),
        (RequestFormat::Text, Some(template)) if !template.is_empty() => fill(template, args),
        (RequestFormat::Text, _) => args.values().map(python_str).collect::<Vec<_>>().join(" "),
    }
}

/// Replace every placeholder in one pass, so a value holding a placeholder is sent as
/// written (python-utcp replaces argument by argument, so one argument's value can be
/// filled by the next). A placeholder of an argument not given becomes empty.
fn fill(template: &str, args: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        out.push_str(&rest[..start]);
        match args.get(&after[..end]) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&python_json(other)),
        }
        rest = &after[end + CLOSE.len()..];
    }
    out.push_str(rest);
    out
}

/// A value as Python's `str()` writes it, for the scalars a server written for
/// python-utcp expects (`True`, `None`); containers as `json.dumps` writes them.
fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => python_json(other),
    }
}

/// JSON as Python's `json.dumps` writes it by default: `", "` and `": "` separators,
/// non-ASCII escaped as `\uXXXX`, so a server sees the bytes python-utcp sends.
pub fn python_json(v: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Writing a Value into a Vec cannot fail.
    let _ = serde::Serialize::serialize(v, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(&mut self, w: &mut W, fragment: &str) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Call a `tcp` or `udp` tool: one request, one response.
pub(crate) async fn call(
    t: &Transports,
    tool: &RegisteredTool,
    protocol: Protocol,
    template: &SocketTemplate,
    args: Map<String, Value>,
) -> Result<Value> {
    let named = |e: Error| e.with_context(&format!("tool '{}'", tool.name));
    let options = SocketOptions::parse(protocol, template, t.config.calls.max_response_size).map_err(named)?;
    let addrs = resolve(t, protocol, template, tool.fetched_from.as_deref()).await.map_err(named)?;
    let request = request_text(&options, &args).into_bytes();
    let target = format!("{}:{}", template.host, template.port);
    let response = match protocol {
        Protocol::Tcp => tcp_exchange(&addrs, &options, &request, &target).await,
        Protocol::Udp => udp_exchange(&addrs, &options, &request, &target).await,
    }
    .map_err(named)?;
    Ok(decode(options.response_byte_format, response))
}

/// python-utcp's manual discovery over `tcp` or `udp`: send `{"type": "utcp"}` framed as
/// the template says, and read the reply as a UTCP manual (text in any
/// `response_byte_format`). A tool without a `tool_call_template` gets the manual's
/// template, as python-utcp gives it. Returns the manual and the `tcp://host:port`
/// origin its tools are admitted under (docs/design.md §11).
pub(crate) async fn discover_manual(t: &Transports, manual: &str, template: &CallTemplate) -> Result<(Value, String)> {
    let (protocol, socket_template) = match template {
        CallTemplate::Tcp(s) => (Protocol::Tcp, s),
        CallTemplate::Udp(s) => (Protocol::Udp, s),
        other => return Err(Error::Internal(format!("not a socket template: {}", other.type_name()))),
    };
    let at = |e: Error| e.with_context(&format!("manual '{manual}'"));
    let options = SocketOptions::parse(protocol, socket_template, t.config.calls.max_response_size).map_err(at)?;
    // The host's own config names the template: no origin caps it.
    let addrs = resolve(t, protocol, socket_template, None).await.map_err(at)?;
    let request = python_json(&serde_json::json!({"type": "utcp"})).into_bytes();
    let target = format!("{}:{}", socket_template.host, socket_template.port);
    let timeout = super::template_timeout(template)?.unwrap_or(t.config.calls.default_timeout);
    let exchange = async {
        match protocol {
            Protocol::Tcp => tcp_exchange(&addrs, &options, &request, &target).await,
            Protocol::Udp => udp_exchange(&addrs, &options, &request, &target).await,
        }
    };
    let reply = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Timeout(format!("no manual from {target} within {timeout:?}")))
        .and_then(|r| r)
        .map_err(at)?;
    let mut value: Value = serde_json::from_slice(&reply)
        .map_err(|e| Error::InvalidManual(format!("manual '{manual}': the reply from {target} is not JSON: {e}")))?;
    let own =
        serde_json::to_value(template).map_err(|e| Error::Internal(format!("cannot serialise a template: {e}")))?;
    if let Some(tools) = value.get_mut("tools").and_then(Value::as_array_mut) {
        for tool in tools.iter_mut().filter_map(Value::as_object_mut) {
            if tool.get("tool_call_template").is_none_or(Value::is_null) {
                tool.insert("tool_call_template".into(), own.clone());
            }
        }
    }
    let host = socket_template.host.trim();
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    Ok((value, format!("tcp://{host}:{}", socket_template.port)))
}

/// The addresses `template`'s host may be reached at, by the rules of `http` tools;
/// `fetched_from`: the URL its manual came from, if any.
async fn resolve(
    t: &Transports,
    protocol: Protocol,
    template: &SocketTemplate,
    fetched_from: Option<&str>,
) -> Result<Vec<SocketAddr>> {
    let calls = &t.config.calls;
    let host = template.host.trim();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(Error::InvalidManual(format!("{} template field `host`: empty", protocol.name())));
    }
    let loopback = net::bare_host_class(host) == net::OriginClass::Loopback;
    if !loopback && !calls.allowed_socket_hosts.iter().any(|h| h.trim().eq_ignore_ascii_case(host)) {
        return Err(Error::Security(format!(
            "refusing {} to {host}: {} tools reach loopback, or hosts listed in calls.allowed_socket_hosts",
            protocol.name(),
            protocol.name()
        )));
    }
    // Like http tools: nothing more local than where the tool's manual was fetched from.
    let cap = fetched_from.and_then(net::locality_cap);
    net::GuardedResolver { allow_private: calls.allow_private_networks, cap }.resolve(host, template.port).await
}

async fn tcp_exchange(addrs: &[SocketAddr], options: &SocketOptions, request: &[u8], target: &str) -> Result<Vec<u8>> {
    let io = |what: &str, e: std::io::Error| Error::Transport(format!("tcp {target}: {what}: {e}"));
    let framed = frame_request(options, request)?;
    let mut stream = tokio::net::TcpStream::connect(addrs).await.map_err(|e| io("cannot connect", e))?;
    let _ = stream.set_nodelay(true);
    stream.write_all(&framed).await.map_err(|e| io("cannot send the request", e))?;
    read_response(&mut stream, options).await.map_err(|e| match e {
        ReadError::Io(e) => io("reading the response", e),
        ReadError::Protocol(m) => Error::Transport(format!("tcp {target}: {m}")),
    })
}

/// The request with its framing: a length prefix or the delimiter; nothing for
/// `fixed_length` and `stream` (as python-utcp sends them).
pub fn frame_request(options: &SocketOptions, request: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(request.len() + 8);
    match options.framing_strategy {
        Framing::LengthPrefix => {
            let width = usize::from(options.length_prefix_bytes);
            let len = request.len() as u64;
            if width < 8 && len >> (8 * width) != 0 {
                return Err(Error::InvalidArgument(format!(
                    "the request is {len} bytes, more than a {width}-byte length prefix can say"
                )));
            }
            let bytes = match options.length_prefix_endian {
                Endian::Big => len.to_be_bytes()[8 - width..].to_vec(),
                Endian::Little => len.to_le_bytes()[..width].to_vec(),
            };
            out.extend_from_slice(&bytes);
            out.extend_from_slice(request);
        }
        Framing::Delimiter => {
            out.extend_from_slice(request);
            out.extend_from_slice(&options.message_delimiter);
        }
        Framing::FixedLength | Framing::Stream => out.extend_from_slice(request),
    }
    Ok(out)
}

#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// The peer broke the framing: closed mid-frame, sent too much.
    Protocol(String),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

/// Read one framed response, never holding more than `max_response_size` bytes (one
/// read's worth past it for the delimiter search).
pub async fn read_response<R: AsyncRead + Unpin>(
    reader: &mut R,
    options: &SocketOptions,
) -> std::result::Result<Vec<u8>, ReadError> {
    let max = options.max_response_size;
    let over = |announced: Option<u64>| {
        let announced = announced.map(|n| format!(": {n} bytes announced")).unwrap_or_default();
        ReadError::Protocol(format!("the response is over the {max} byte cap{CAP_FIELDS}{announced}"))
    };
    match options.framing_strategy {
        Framing::LengthPrefix => {
            let width = usize::from(options.length_prefix_bytes);
            let mut prefix = [0u8; 8];
            let got = read_up_to(reader, &mut prefix[..width]).await?;
            if got < width {
                return Err(ReadError::Protocol(format!(
                    "the connection closed inside the length prefix ({got} of {width} bytes)"
                )));
            }
            let len = match options.length_prefix_endian {
                Endian::Big => prefix[..width].iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)),
                Endian::Little => prefix[..width].iter().rev().fold(0u64, |n, b| (n << 8) | u64::from(*b)),
            };
            if len > max {
                return Err(over(Some(len)));
            }
            read_exactly(reader, len).await
        }
        Framing::FixedLength => read_exactly(reader, options.fixed_message_length.unwrap_or(0)).await,
        Framing::Stream => {
            let mut body = Vec::new();
            reader.take(max.saturating_add(1)).read_to_end(&mut body).await?;
            if body.len() as u64 > max {
                return Err(over(None));
            }
            Ok(body)
        }
        Framing::Delimiter => {
            let delimiter = &options.message_delimiter;
            let finder = memchr::memmem::Finder::new(delimiter);
            let mut body: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = reader.read(&mut chunk).await?;
                if n == 0 {
                    return Err(ReadError::Protocol(format!(
                        "the connection closed before the message delimiter ({} bytes read)",
                        body.len()
                    )));
                }
                // Search from where a delimiter split across reads could start.
                let from = body.len().saturating_sub(delimiter.len() - 1);
                body.extend_from_slice(&chunk[..n]);
                if let Some(at) = finder.find(&body[from..]) {
                    body.truncate(from + at);
                    if body.len() as u64 > max {
                        return Err(over(None));
                    }
                    return Ok(body);
                }
                if body.len() as u64 > max.saturating_add(delimiter.len() as u64) {
                    return Err(over(None));
                }
            }
        }
    }
}

/// Exactly `len` bytes, or an error saying how many came before the peer closed.
async fn read_exactly<R: AsyncRead + Unpin>(reader: &mut R, len: u64) -> std::result::Result<Vec<u8>, ReadError> {
    let mut body = Vec::with_capacity(usize::try_from(len.min(64 * 1024)).unwrap_or(0));
    reader.take(len).read_to_end(&mut body).await?;
    if (body.len() as u64) < len {
        return Err(ReadError::Protocol(format!("the connection closed mid-frame ({} of {len} bytes)", body.len())));
    }
    Ok(body)
}

/// Fill `buf` unless the peer closes first; how many bytes came.
async fn read_up_to<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]).await? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Send one datagram and gather `number_of_response_datagrams` replies, concatenated.
/// The socket is connected, so only the target's own replies are read (python-utcp
/// compares the sender's IP only, and counts a stray datagram as one of the replies).
async fn udp_exchange(addrs: &[SocketAddr], options: &SocketOptions, request: &[u8], target: &str) -> Result<Vec<u8>> {
    let io = |what: &str, e: std::io::Error| Error::Transport(format!("udp {target}: {what}: {e}"));
    let Some(&addr) = addrs.first() else {
        return Err(Error::Transport(format!("udp {target}: no address to send to")));
    };
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(local).await.map_err(|e| io("cannot open a socket", e))?;
    socket.connect(addr).await.map_err(|e| io("cannot connect", e))?;
    socket.send(request).await.map_err(|e| io("cannot send the request", e))?;
    let wanted = options.number_of_response_datagrams;
    let max = options.max_response_size;
    let mut body = Vec::new();
    let mut datagram = vec![0u8; MAX_DATAGRAM];
    for i in 0..wanted {
        let n = socket
            .recv(&mut datagram)
            .await
            .map_err(|e| io(&format!("waiting for datagram {} of {wanted}", i + 1), e))?;
        if body.len() as u64 + n as u64 > max {
            return Err(Error::Transport(format!("udp {target}: the response is over the {max} byte cap{CAP_FIELDS}")));
        }
        body.extend_from_slice(&datagram[..n]);
    }
    Ok(body)
}

/// Response bytes as the call's result: text in the template's encoding; raw bytes (a
/// `null` format, or text that does not decode, where python-utcp returns `bytes`) as
/// `{"base64": "..."}`.
pub fn decode(format: ByteFormat, bytes: Vec<u8>) -> Value {
    let raw = |bytes: &[u8]| serde_json::json!({"base64": base64::engine::general_purpose::STANDARD.encode(bytes)});
    match format {
        ByteFormat::Raw => raw(&bytes),
        ByteFormat::Utf8 => match String::from_utf8(bytes) {
            Ok(text) => Value::String(text),
            Err(e) => raw(e.as_bytes()),
        },
        ByteFormat::Ascii if bytes.is_ascii() => Value::String(bytes.into_iter().map(char::from).collect()),
        ByteFormat::Ascii => raw(&bytes),
        ByteFormat::Latin1 => Value::String(bytes.into_iter().map(char::from).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(fields: Value) -> Result<SocketOptions> {
        let mut t = serde_json::json!({"host": "127.0.0.1", "port": 9});
        if let (Some(t), Value::Object(f)) = (t.as_object_mut(), fields) {
            t.extend(f);
        }
        let template: SocketTemplate = serde_json::from_value(t).map_err(|e| Error::InvalidManual(e.to_string()))?;
        SocketOptions::parse(Protocol::Tcp, &template, 1000)
    }

    #[test]
    fn defaults_are_python_utcps() {
        let o = options(serde_json::json!({})).unwrap();
        assert_eq!(o.request_data_format, RequestFormat::Json);
        assert_eq!(o.response_byte_format, ByteFormat::Utf8);
        assert_eq!(o.framing_strategy, Framing::Stream);
        assert_eq!((o.length_prefix_bytes, o.length_prefix_endian), (4, Endian::Big));
        assert_eq!(o.message_delimiter, b"\0");
        assert_eq!(o.max_response_size, 1000);
        assert_eq!(o.number_of_response_datagrams, 1);
        // A template may lower the host's cap, not raise it.
        assert_eq!(options(serde_json::json!({"max_response_size": 10})).unwrap().max_response_size, 10);
        assert_eq!(options(serde_json::json!({"max_response_size": 1u64 << 40})).unwrap().max_response_size, 1000);
    }

    #[test]
    fn bad_fields_are_named() {
        for (fields, name) in [
            (serde_json::json!({"framing_strategy": "lines"}), "framing_strategy"),
            (serde_json::json!({"length_prefix_bytes": 3}), "length_prefix_bytes"),
            (serde_json::json!({"length_prefix_endian": "middle"}), "length_prefix_endian"),
            (serde_json::json!({"request_data_format": "xml"}), "request_data_format"),
            (serde_json::json!({"response_byte_format": "ebcdic"}), "response_byte_format"),
            (serde_json::json!({"response_byte_format": 8}), "response_byte_format"),
            (serde_json::json!({"message_delimiter": "\\x4"}), "message_delimiter"),
            (serde_json::json!({"message_delimiter": "ab\\"}), "message_delimiter"),
            (serde_json::json!({"framing_strategy": "fixed_length"}), "fixed_message_length"),
            (
                serde_json::json!({"framing_strategy": "fixed_length", "fixed_message_length": 5000}),
                "fixed_message_length",
            ),
            (serde_json::json!({"max_response_size": -1}), "max_response_size"),
            (serde_json::json!({"interpret_escape_sequences": "yes"}), "interpret_escape_sequences"),
        ] {
            let e = options(fields.clone()).expect_err(&fields.to_string());
            assert_eq!(e.code(), crate::error::ErrorCode::InvalidManual, "{fields}");
            assert!(e.to_string().contains(&format!("`{name}`")), "{fields}: {e}");
        }
    }

    #[test]
    fn escapes_read_as_python_reads_them() {
        assert_eq!(interpret_escapes(r"\r\n").unwrap(), "\r\n");
        assert_eq!(interpret_escapes(r"\x00\0\101\u00e9\U0001F600").unwrap(), "\0\0Aé😀");
        assert_eq!(interpret_escapes(r"a\qb").unwrap(), r"a\qb");
        assert_eq!(interpret_escapes("é|").unwrap(), "é|");
        let literal = options(serde_json::json!({"message_delimiter": "\\n", "interpret_escape_sequences": false}));
        assert_eq!(literal.unwrap().message_delimiter, b"\\n");
    }

    #[test]
    fn requests_are_written_as_python_utcp_writes_them() {
        let args: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"b": "é", "a": [1, {"x": true}], "n": null})).unwrap();
        let json = options(serde_json::json!({})).unwrap();
        assert_eq!(request_text(&json, &args), r#"{"b": "\u00e9", "a": [1, {"x": true}], "n": null}"#);
        let plain = options(serde_json::json!({"request_data_format": "text"})).unwrap();
        assert_eq!(request_text(&plain, &args), r#"é [1, {"x": true}] None"#);
        let templated = options(serde_json::json!({
            "request_data_format": "text",
            "request_data_template": "GET UTCP_ARG_b_UTCP_ARG UTCP_ARG_a_UTCP_ARG UTCP_ARG_missing_UTCP_ARG!"
        }))
        .unwrap();
        assert_eq!(request_text(&templated, &args), r#"GET é [1, {"x": true}] !"#);
        let mut sneaky = Map::new();
        sneaky.insert("a".into(), Value::from("UTCP_ARG_b_UTCP_ARG"));
        sneaky.insert("b".into(), Value::from("secret"));
        let t =
            options(serde_json::json!({"request_data_format": "text", "request_data_template": "UTCP_ARG_a_UTCP_ARG"}));
        assert_eq!(request_text(&t.unwrap(), &sneaky), "UTCP_ARG_b_UTCP_ARG");
    }

    #[test]
    fn length_prefixes_and_their_limits() {
        let o = options(
            serde_json::json!({"framing_strategy": "length_prefix", "length_prefix_bytes": 2, "length_prefix_endian": "little"}),
        );
        assert_eq!(frame_request(&o.unwrap(), b"abc").unwrap(), b"\x03\x00abc");
        let o = options(serde_json::json!({"framing_strategy": "length_prefix", "length_prefix_bytes": 1})).unwrap();
        let e = frame_request(&o, &[b'x'; 256]).unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::InvalidArgument);
        let o = options(serde_json::json!({"framing_strategy": "length_prefix", "length_prefix_bytes": 8})).unwrap();
        assert_eq!(frame_request(&o, b"a").unwrap(), b"\0\0\0\0\0\0\0\x01a");
    }

    #[tokio::test]
    async fn a_manual_fetched_from_a_public_address_cannot_reach_loopback() {
        // The cap of http tools: the addresses a name resolves to are filtered by it.
        let template: SocketTemplate =
            serde_json::from_value(serde_json::json!({"host": "localhost", "port": 9})).unwrap();
        let transports = Transports::new(std::sync::Arc::new(crate::config::Config::default()));
        assert!(resolve(&transports, Protocol::Tcp, &template, None).await.is_ok());
        assert!(resolve(&transports, Protocol::Tcp, &template, Some("tcp://127.0.0.1:5000")).await.is_ok());
        let e =
            resolve(&transports, Protocol::Tcp, &template, Some("https://tools.example.com/utcp")).await.unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::Security, "{e}");
        assert!(e.to_string().contains("more local than a public address"), "{e}");
    }

    #[test]
    fn response_bytes_decode() {
        assert_eq!(decode(ByteFormat::Utf8, "é".as_bytes().to_vec()), Value::from("é"));
        assert_eq!(decode(ByteFormat::Utf8, vec![0xff]), serde_json::json!({"base64": "/w=="}));
        assert_eq!(decode(ByteFormat::Raw, b"hi".to_vec()), serde_json::json!({"base64": "aGk="}));
        assert_eq!(decode(ByteFormat::Latin1, vec![0xe9]), Value::from("é"));
        assert_eq!(decode(ByteFormat::Ascii, vec![0xe9]), serde_json::json!({"base64": "6Q=="}));
        assert_eq!(byte_format("UTF_8"), Some(ByteFormat::Utf8));
        assert_eq!(byte_format("ISO-8859-1"), Some(ByteFormat::Latin1));
    }
}
