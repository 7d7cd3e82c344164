//! call_tool over `tcp` and `udp` (python-utcp's utcp-socket fields) against real
//! servers on 127.0.0.1 that each test starts and stops: every TCP framing strategy,
//! UDP with several datagrams, timeouts, peers that close mid-frame or send too much,
//! bad template fields and the address rules.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use utp_core::{CallOptions, Engine, ErrorCode, ManualSource};

/// A TCP server on an ephemeral port of 127.0.0.1 running `handler` per connection;
/// stops when dropped.
struct TcpServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TcpServer {
    async fn start<H, F>(handler: H) -> TcpServer
    where
        H: Fn(TcpStream) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handler(stream));
            }
        });
        TcpServer { port, task }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP server on 127.0.0.1 answering each datagram with what `reply` returns, one
/// datagram per item; stops when dropped.
struct UdpServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl UdpServer {
    async fn start(reply: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static) -> UdpServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                for datagram in reply(&buf[..n]) {
                    let _ = socket.send_to(&datagram, from).await;
                }
            }
        });
        UdpServer { port, task }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn engine_with(config: Value, kind: &str, port: u16, fields: Value) -> Engine {
    let mut template = json!({"call_template_type": kind, "host": "127.0.0.1", "port": port});
    template.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    let e = Engine::from_json(config).unwrap();
    let tool = json!({"name": "t", "inputs": {"type": "object"}, "tool_call_template": template});
    e.register_manual(ManualSource::Inline(json!({"name": "s", "tools": [tool]})), None).await.unwrap();
    e
}

async fn engine(kind: &str, port: u16, fields: Value) -> Engine {
    engine_with(json!({}), kind, port, fields).await
}

async fn call(e: &Engine, args: Value) -> utp_core::Result<Value> {
    e.call_tool("s.t", args, CallOptions::default()).await
}

fn err(result: utp_core::Result<Value>) -> (ErrorCode, String) {
    let e = result.expect_err("the call should fail");
    (e.code(), e.to_string())
}

/// Read one request framed by a big-endian `width`-byte length prefix.
async fn read_prefixed(stream: &mut TcpStream, width: usize, little: bool) -> Vec<u8> {
    let mut prefix = vec![0u8; width];
    stream.read_exact(&mut prefix).await.unwrap();
    if little {
        prefix.reverse();
    }
    let len = prefix.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    body
}

async fn read_until(stream: &mut TcpStream, delimiter: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut byte = [0u8; 1];
    while !body.ends_with(delimiter) {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        body.push(byte[0]);
    }
    body.truncate(body.len().saturating_sub(delimiter.len()));
    body
}

#[tokio::test]
async fn length_prefix_framing_every_width_and_order() {
    for (width, endian) in [(1, "big"), (2, "little"), (4, "big"), (8, "little")] {
        let little = endian == "little";
        let server = TcpServer::start(move |mut s| async move {
            let request = read_prefixed(&mut s, width, little).await;
            let reply = [b"echo ".as_slice(), &request].concat();
            let mut prefix = (reply.len() as u64).to_be_bytes()[8 - width..].to_vec();
            if little {
                prefix.reverse();
            }
            // The prefix and the body in separate writes: the reader must not care.
            s.write_all(&prefix).await.unwrap();
            s.flush().await.unwrap();
            s.write_all(&reply).await.unwrap();
        })
        .await;
        let fields =
            json!({"framing_strategy": "length_prefix", "length_prefix_bytes": width, "length_prefix_endian": endian});
        let e = engine("tcp", server.port, fields).await;
        let out = call(&e, json!({"q": "é", "n": [1, 2]})).await.unwrap();
        // The request is what python-utcp sends: json.dumps, ", " and ": ", ASCII only.
        assert_eq!(out, json!(r#"echo {"q": "\u00e9", "n": [1, 2]}"#), "width {width} {endian}");
    }
}

#[tokio::test]
async fn delimiter_framing_with_escapes_and_a_split_delimiter() {
    let server = TcpServer::start(|mut s| async move {
        let request = read_until(&mut s, b"\r\n").await;
        let reply = [b"got ".as_slice(), &request, b"\r\nleftover"].concat();
        // One byte per write: the delimiter arrives split across reads.
        for byte in reply {
            s.write_all(&[byte]).await.unwrap();
            s.flush().await.unwrap();
        }
    })
    .await;
    let fields = json!({
        "framing_strategy": "delimiter", "message_delimiter": "\\r\\n",
        "request_data_format": "text", "request_data_template": "ADD UTCP_ARG_a_UTCP_ARG UTCP_ARG_b_UTCP_ARG"
    });
    let e = engine("tcp", server.port, fields).await;
    assert_eq!(call(&e, json!({"a": 2, "b": "x"})).await.unwrap(), json!("got ADD 2 x"));
}

#[tokio::test]
async fn delimiter_taken_literally_when_asked() {
    let server = TcpServer::start(|mut s| async move {
        let request = read_until(&mut s, b"\\n").await;
        s.write_all(&[request.as_slice(), b"\\n"].concat()).await.unwrap();
    })
    .await;
    let fields = json!({"framing_strategy": "delimiter", "message_delimiter": "\\n", "interpret_escape_sequences": false,
                        "request_data_format": "text"});
    let e = engine("tcp", server.port, fields).await;
    assert_eq!(call(&e, json!({"a": "one", "b": true})).await.unwrap(), json!("one True"));
}

#[tokio::test]
async fn fixed_length_framing() {
    let server = TcpServer::start(|mut s| async move {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        let mut reply = format!("{:<16}", String::from_utf8_lossy(&buf[..n]).len()).into_bytes();
        reply.extend_from_slice(b"trailing bytes are not read");
        s.write_all(&reply).await.unwrap();
    })
    .await;
    let e = engine("tcp", server.port, json!({"framing_strategy": "fixed_length", "fixed_message_length": 16})).await;
    assert_eq!(call(&e, json!({"k": "v"})).await.unwrap(), json!("10              "));
}

#[tokio::test]
async fn stream_framing_reads_until_close_and_raw_bytes_are_base64() {
    let server = TcpServer::start(|mut s| async move {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(&[0xff, 0x00, 0x41]).await.unwrap();
    })
    .await;
    let raw = engine("tcp", server.port, json!({"response_byte_format": null})).await;
    assert_eq!(call(&raw, json!({})).await.unwrap(), json!({"base64": "/wBB"}));
    // Not UTF-8: the bytes, as python-utcp falls back to them.
    let text = engine("tcp", server.port, json!({})).await;
    assert_eq!(call(&text, json!({})).await.unwrap(), json!({"base64": "/wBB"}));
    let latin = engine("tcp", server.port, json!({"response_byte_format": "latin-1"})).await;
    assert_eq!(call(&latin, json!({})).await.unwrap(), json!("\u{ff}\u{0}A"));
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout_in_the_templates_milliseconds() {
    let server = TcpServer::start(|s| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    for framing in ["stream", "delimiter", "length_prefix"] {
        let e = engine("tcp", server.port, json!({"framing_strategy": framing, "timeout": 200})).await;
        let started = Instant::now();
        let (code, message) = err(call(&e, json!({})).await);
        assert_eq!(code, ErrorCode::Timeout, "{framing}: {message}");
        assert!(started.elapsed() < Duration::from_secs(3), "{framing}: {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_server_closing_mid_frame_is_a_transport_error() {
    let server = TcpServer::start(|mut s| async move {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(&100u32.to_be_bytes()).await.unwrap();
        s.write_all(b"only ten..").await.unwrap();
    })
    .await;
    let e = engine("tcp", server.port, json!({"framing_strategy": "length_prefix"})).await;
    let (code, message) = err(call(&e, json!({})).await);
    assert_eq!(code, ErrorCode::Transport, "{message}");
    assert!(message.contains("mid-frame (10 of 100 bytes)") && message.contains("s.t"), "{message}");

    let e = engine("tcp", server.port, json!({"framing_strategy": "delimiter", "message_delimiter": "\n"})).await;
    let (code, message) = err(call(&e, json!({})).await);
    assert_eq!(code, ErrorCode::Transport, "{message}");
    assert!(message.contains("closed before the message delimiter (14 bytes read)"), "{message}");

    let e = engine("tcp", server.port, json!({"framing_strategy": "length_prefix", "length_prefix_bytes": 8})).await;
    let (code, message) = err(call(&e, json!({})).await);
    assert_eq!(code, ErrorCode::Transport, "{message}");
}

#[tokio::test]
async fn oversized_responses_are_refused_not_buffered() {
    // Announces 1 GiB, then sends forever: refused at the prefix.
    let flood = TcpServer::start(|mut s| async move {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(&(1u32 << 30).to_be_bytes()).await;
        let chunk = vec![b'x'; 64 * 1024];
        while s.write_all(&chunk).await.is_ok() {}
    })
    .await;
    for (fields, config) in [
        (json!({"framing_strategy": "length_prefix", "max_response_size": 1000}), json!({})),
        (json!({"framing_strategy": "stream", "max_response_size": 1000}), json!({})),
        (json!({"framing_strategy": "delimiter", "message_delimiter": "\n", "max_response_size": 1000}), json!({})),
        // No cap of its own: the engine's.
        (json!({"framing_strategy": "stream"}), json!({"calls": {"max_response_size": 5000}})),
        (json!({"framing_strategy": "length_prefix"}), json!({"calls": {"max_response_size": 5000}})),
    ] {
        let e = engine_with(config.clone(), "tcp", flood.port, fields.clone()).await;
        let started = Instant::now();
        let (code, message) = err(call(&e, json!({})).await);
        assert_eq!(code, ErrorCode::Transport, "{fields} {config}: {message}");
        assert!(message.contains("byte cap"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let e = engine("tcp", flood.port, json!({"framing_strategy": "length_prefix", "max_response_size": 1000})).await;
    assert!(err(call(&e, json!({})).await).1.contains("1073741824 bytes announced"));
}

#[tokio::test]
async fn bad_template_fields_are_named() {
    let server = TcpServer::start(|_| async {}).await;
    for (fields, field) in [
        (json!({"framing_strategy": "lines"}), "framing_strategy"),
        (json!({"length_prefix_bytes": 3}), "length_prefix_bytes"),
        (json!({"length_prefix_endian": "middle"}), "length_prefix_endian"),
        (json!({"message_delimiter": 5}), "message_delimiter"),
        (json!({"message_delimiter": "\\xZ0"}), "message_delimiter"),
        (json!({"response_byte_format": "shift_jis"}), "response_byte_format"),
        (json!({"request_data_format": "xml"}), "request_data_format"),
        (json!({"framing_strategy": "fixed_length"}), "fixed_message_length"),
        (json!({"max_response_size": "big"}), "max_response_size"),
        (json!({"timeout": "soon"}), "timeout"),
    ] {
        let e = engine("tcp", server.port, fields.clone()).await;
        let (code, message) = err(call(&e, json!({})).await);
        assert_eq!(code, ErrorCode::InvalidManual, "{fields}: {message}");
        assert!(message.contains(field) && message.contains("s.t"), "{fields}: {message}");
    }
    let e = engine("udp", server.port, json!({"number_of_response_datagrams": -1})).await;
    let (code, message) = err(call(&e, json!({})).await);
    assert_eq!(code, ErrorCode::InvalidManual);
    assert!(message.contains("udp template field `number_of_response_datagrams`"), "{message}");
}

#[tokio::test]
async fn a_request_too_long_for_its_prefix_is_refused_before_sending() {
    let server = TcpServer::start(|_| async {}).await;
    let e = engine("tcp", server.port, json!({"framing_strategy": "length_prefix", "length_prefix_bytes": 1})).await;
    let (code, message) = err(call(&e, json!({"big": "x".repeat(300)})).await);
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    assert!(message.contains("1-byte length prefix"), "{message}");
}

#[tokio::test]
async fn addresses_follow_the_rules_of_http_tools() {
    let server = TcpServer::start(|mut s| async move {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"hi").await;
    })
    .await;
    let by_name = engine_with(json!({}), "tcp", server.port, json!({"host": "localhost"})).await;
    assert_eq!(call(&by_name, json!({})).await.unwrap(), json!("hi"));
    for kind in ["tcp", "udp"] {
        let outside = engine(kind, 9, json!({"host": "192.0.2.7"})).await;
        let (code, message) = err(call(&outside, json!({})).await);
        assert_eq!(code, ErrorCode::Security, "{message}");
        assert!(message.contains("calls.allowed_socket_hosts"), "{message}");
        // Listed, but private: still refused without allow_private_networks.
        let config = json!({"calls": {"allowed_socket_hosts": ["10.1.2.3"]}});
        let private = engine_with(config, kind, 9, json!({"host": "10.1.2.3"})).await;
        let (code, message) = err(call(&private, json!({})).await);
        assert_eq!(code, ErrorCode::Security, "{message}");
        assert!(message.contains("allow_private_networks"), "{message}");
    }
    let e = engine("tcp", 9, json!({"host": "169.254.169.254"})).await;
    assert_eq!(err(call(&e, json!({})).await).0, ErrorCode::Security);
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let e = engine("tcp", port, json!({})).await;
    let (code, message) = err(call(&e, json!({})).await);
    assert_eq!(code, ErrorCode::Transport, "{message}");
    assert!(message.contains("cannot connect"), "{message}");
    // A connected UDP socket hears the port-unreachable answer instead of waiting out the timeout.
    let e = engine("udp", port, json!({"timeout": 5000})).await;
    let started = Instant::now();
    let (code, message) = err(call(&e, json!({})).await);
    assert_eq!(code, ErrorCode::Transport, "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn udp_gathers_its_datagrams() {
    let server = UdpServer::start(|request| {
        let text = String::from_utf8_lossy(request).to_string();
        vec![format!("1:{text}").into_bytes(), b"|2".to_vec(), b"|3".to_vec()]
    })
    .await;
    let one = engine("udp", server.port, json!({})).await;
    assert_eq!(call(&one, json!({"a": 1})).await.unwrap(), json!(r#"1:{"a": 1}"#));
    let three = engine(
        "udp",
        server.port,
        json!({"number_of_response_datagrams": 3, "request_data_format": "text",
                                                   "request_data_template": "ping UTCP_ARG_a_UTCP_ARG"}),
    )
    .await;
    assert_eq!(call(&three, json!({"a": "x"})).await.unwrap(), json!("1:ping x|2|3"));
    let none = engine("udp", server.port, json!({"number_of_response_datagrams": 0})).await;
    assert_eq!(call(&none, json!({})).await.unwrap(), json!(""));
    let raw =
        engine("udp", server.port, json!({"number_of_response_datagrams": 0, "response_byte_format": null})).await;
    assert_eq!(call(&raw, json!({})).await.unwrap(), json!({"base64": ""}));
    // Four wanted, three sent: the call waits for the fourth until its deadline.
    let four = engine("udp", server.port, json!({"number_of_response_datagrams": 4, "timeout": 300})).await;
    assert_eq!(err(call(&four, json!({})).await).0, ErrorCode::Timeout);
    let capped = engine("udp", server.port, json!({"number_of_response_datagrams": 3, "max_response_size": 10})).await;
    let (code, message) = err(call(&capped, json!({"a": "long enough"})).await);
    assert_eq!(code, ErrorCode::Transport, "{message}");
    assert!(message.contains("byte cap"), "{message}");
}

#[tokio::test]
async fn udp_ignores_datagrams_from_other_senders() {
    // The server answers first from a second socket (another port), then from its own:
    // only the second counts (python-utcp counts the stray one as a reply).
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 1024];
        while let Ok((_, from)) = socket.recv_from(&mut buf).await {
            let _ = stranger.send_to(b"spoofed", from).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = socket.send_to(b"genuine", from).await;
        }
    });
    let e = engine("udp", port, json!({})).await;
    assert_eq!(call(&e, json!({})).await.unwrap(), json!("genuine"));
    task.abort();
}

#[tokio::test]
async fn a_silent_udp_server_is_a_timeout() {
    let server = UdpServer::start(|_| Vec::new()).await;
    let e = engine("udp", server.port, json!({"timeout": 200})).await;
    let started = Instant::now();
    assert_eq!(err(call(&e, json!({})).await).0, ErrorCode::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_socket_tool_streams_its_one_result() {
    use futures_util::StreamExt;
    let server = TcpServer::start(|mut s| async move {
        let request = read_until(&mut s, b"\n").await;
        let _ = s.write_all(&[b"ok:".as_slice(), &request, b"\n"].concat()).await;
    })
    .await;
    let e = engine(
        "tcp",
        server.port,
        json!({"framing_strategy": "delimiter", "message_delimiter": "\n",
                                               "request_data_format": "text"}),
    )
    .await;
    let mut stream = e.call_tool_stream("s.t", json!({"w": "a"}), CallOptions::default()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), json!("ok:a"));
    assert!(stream.next().await.is_none());
}

/// The manual a discovery peer answers `{"type": "utcp"}` with: a tool without a
/// template (it gets the manual's), a `tcp` tool of its own and a `cli` tool (refused:
/// not the manual's type, and it would run on this host).
fn discovered_manual(kind: &str, port: u16) -> Vec<u8> {
    json!({"utcp_version": "1.0.1", "manual_version": "1.0.0", "tools": [
        {"name": "echo", "inputs": {"type": "object"}},
        {"name": "own", "tool_call_template": {"call_template_type": kind, "host": "127.0.0.1", "port": port,
                                               "request_data_format": "text"}},
        {"name": "run", "tool_call_template": {"call_template_type": "cli", "commands": [{"command": "true"}]}}
    ]})
    .to_string()
    .into_bytes()
}

async fn open(config: Value) -> utp_core::Result<Engine> {
    Engine::open(utp_core::Config::from_str(&config.to_string()).unwrap()).await
}

#[tokio::test]
async fn manual_call_templates_discover_tools_as_python_utcp_does() {
    let tcp = TcpServer::start(|mut s| async move {
        let port = s.local_addr().unwrap().port();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let reply = match &buf[..n] {
            br#"{"type": "utcp"}"# => discovered_manual("tcp", port),
            request => [b"called ".as_slice(), request].concat(),
        };
        let _ = s.write_all(&reply).await;
    })
    .await;
    let udp_port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
    let seen = udp_port.clone();
    let udp = UdpServer::start(move |request| match request {
        br#"{"type": "utcp"}"# => vec![discovered_manual("udp", seen.load(std::sync::atomic::Ordering::SeqCst))],
        other => vec![[b"heard ".as_slice(), other].concat()],
    })
    .await;
    udp_port.store(udp.port, std::sync::atomic::Ordering::SeqCst);
    let e = open(json!({"manual_call_templates": [
        {"name": "over_tcp", "call_template_type": "tcp", "host": "127.0.0.1", "port": tcp.port},
        {"name": "over_udp", "call_template_type": "udp", "host": "127.0.0.1", "port": udp.port, "timeout": 5000}
    ]}))
    .await
    .unwrap();
    let mut names: Vec<String> = e.tools().into_iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["over_tcp.echo", "over_tcp.own", "over_udp.echo", "over_udp.own"]);
    let call = |name: &'static str, args: Value| e.call_tool(name, args, CallOptions::default());
    assert_eq!(call("over_tcp.echo", json!({"a": 1})).await.unwrap(), json!(r#"called {"a": 1}"#));
    assert_eq!(call("over_tcp.own", json!({"a": "x", "b": 2})).await.unwrap(), json!("called x 2"));
    assert_eq!(call("over_udp.echo", json!({"a": 1})).await.unwrap(), json!(r#"heard {"a": 1}"#));
    assert_eq!(call("over_udp.own", json!({"a": "y"})).await.unwrap(), json!("heard y"));
}

#[tokio::test]
async fn a_discovery_that_fails_names_the_manual() {
    let garbage = TcpServer::start(|mut s| async move {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"not json").await;
    })
    .await;
    let error = open(json!({"manual_call_templates": [
        {"name": "junk", "call_template_type": "tcp", "host": "127.0.0.1", "port": garbage.port}
    ]}))
    .await
    .expect_err("a reply that is not JSON fails");
    assert_eq!(error.code(), ErrorCode::InvalidManual, "{error}");
    assert!(error.to_string().contains("manual 'junk'") && error.to_string().contains("not JSON"), "{error}");

    let silent = UdpServer::start(|_| Vec::new()).await;
    let error = open(json!({"manual_call_templates": [
        {"name": "quiet", "call_template_type": "udp", "host": "127.0.0.1", "port": silent.port, "timeout": 200}
    ]}))
    .await
    .expect_err("a silent peer fails");
    assert_eq!(error.code(), ErrorCode::Timeout, "{error}");
    assert!(error.to_string().contains("quiet"), "{error}");

    let error = open(json!({"manual_call_templates": [
        {"call_template_type": "tcp", "host": "127.0.0.1", "port": garbage.port}
    ]}))
    .await
    .expect_err("a template without a name fails");
    assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
}
