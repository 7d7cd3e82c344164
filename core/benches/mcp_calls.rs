//! MCP `tools/call` of `echo`, the Rust half of `bench/mcp/run.py`: this engine from Rust, and a
//! bare rmcp client (the floor: what the SDK alone costs, so the engine's overhead beyond it
//! can be read off). A bench target rather than an example so that `cargo test` never builds it.
//!
//! Build: `cargo bench -p utp-core --bench mcp_calls --no-run` (release profile; add
//! `--features bench-mcp-http` for the bare client over Streamable HTTP, rmcp's own reqwest
//! client), then run the executable with one of:
//!
//! - `calls bare|engine stdio SEQ_N CONC_N CONC CMD [ARGS...]`: start the server `CMD ARGS`
//!   (one child, one session), warm up, then SEQ_N sequential calls and CONC_N calls with
//!   CONC in flight on a multi-thread tokio runtime; prints one JSON line with calls/s.
//! - `calls bare|engine http URL SEQ_N CONC_N CONC`: the same against a Streamable HTTP server.
//! - `register bare|engine N CMD [ARGS...]`: N times, start the server, open the session
//!   (handshake or discover) and list its tools, then end it; prints the median and every
//!   time in ms. For the engine that is `register_manual` of an `mcp` manual on a fresh
//!   engine, then `close`.
//!
//! A mode the build or the engine cannot do prints `{"unsupported": "<why>"}` and exits 0.
//! The bare client opens its session as the engine does (`ClientLifecycleMode::Auto`:
//! `server/discover` at 2026-07-28, else the 2025-11-25 handshake). cargo appends `--bench`
//! to the arguments; it is ignored.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::{Peer, RoleClient, RunningService};
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde_json::{Value, json};
use utp_core::{CallOptions, Engine, ManualSource};

type Client = RunningService<RoleClient, ()>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    let num = |i: usize| -> usize { arg(i).parse().unwrap_or_else(|_| usage()) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let out = match (arg(0), arg(1)) {
        ("calls", side @ ("bare" | "engine")) => {
            let transport = arg(2);
            let (target, seq_n, conc_n, conc) = match transport {
                "stdio" => (Target::Stdio(args[6..].to_vec()), num(3), num(4), num(5)),
                "http" => (Target::Http(arg(3).to_owned()), num(4), num(5), num(6)),
                _ => usage(),
            };
            if matches!(&target, Target::Stdio(cmd) if cmd.is_empty()) {
                usage()
            }
            rt.block_on(calls(side, target, seq_n, conc_n, conc))
        }
        ("register", side @ ("bare" | "engine")) => {
            let cmd = args[3..].to_vec();
            if cmd.is_empty() {
                usage()
            }
            rt.block_on(register(side, num(2), cmd))
        }
        _ => usage(),
    };
    println!("{out}");
    // Child servers and sockets end with the runtime.
    rt.shutdown_timeout(Duration::from_secs(2));
}

fn usage() -> ! {
    eprintln!(
        "usage: mcp_calls calls bare|engine stdio SEQ_N CONC_N CONC CMD [ARGS...]\n       \
         mcp_calls calls bare|engine http URL SEQ_N CONC_N CONC\n       \
         mcp_calls register bare|engine N CMD [ARGS...]"
    );
    std::process::exit(2)
}

enum Target {
    Stdio(Vec<String>),
    Http(String),
}

fn lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_11_25),
    }
}

/// A bare rmcp client on a child's stdio (the child ends when the returned handle drops).
async fn bare_stdio(cmd: &[String]) -> (Client, tokio::process::Child) {
    let mut child = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cmd[0]));
    let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let client = ().serve_with_lifecycle((stdout, stdin), lifecycle()).await.unwrap();
    (client, child)
}

#[cfg(feature = "bench-mcp-http")]
async fn bare_http(url: &str) -> Result<Client, String> {
    // reqwest 0.13 without a TLS provider wants a process default before its first client
    // (plain http still builds the TLS config): ring, the provider the engine uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url.to_owned());
    ().serve_with_lifecycle(transport, lifecycle()).await.map_err(|e| e.to_string())
}

#[cfg(not(feature = "bench-mcp-http"))]
async fn bare_http(_: &str) -> Result<Client, String> {
    Err("built without --features bench-mcp-http (rmcp's reqwest client)".into())
}

trait Caller: Send + Sync + 'static {
    fn call(&self, i: usize) -> BoxFuture<'_, ()>;
}

struct Bare(Peer<RoleClient>);

impl Caller for Bare {
    fn call(&self, i: usize) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let text = format!("v{i}");
            let mut args = serde_json::Map::new();
            args.insert("text".into(), Value::String(text.clone()));
            let result = self.0.call_tool(CallToolRequestParams::new("echo").with_arguments(args)).await;
            let result = result.unwrap_or_else(|e| panic!("call {i}: {e}"));
            debug_assert!(result.content.first().and_then(|c| c.as_text()).is_some_and(|t| t.text == text));
        })
    }
}

struct Ours(Engine);

impl Caller for Ours {
    fn call(&self, i: usize) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let text = format!("v{i}");
            let r = self.0.call_tool("bench.s.echo", json!({"text": text}), CallOptions::default()).await;
            let v = r.unwrap_or_else(|e| panic!("call {i}: {e}"));
            debug_assert_eq!(v, json!(text));
        })
    }
}

fn template(server: Value) -> Value {
    json!({"name": "bench", "call_template_type": "mcp", "config": {"mcpServers": {"s": server}}})
}

fn server_spec(cmd: &[String]) -> Value {
    json!({"command": cmd[0], "args": cmd[1..]})
}

async fn calls(side: &str, target: Target, seq_n: usize, conc_n: usize, conc: usize) -> Value {
    let transport = match target {
        Target::Stdio(_) => "stdio",
        Target::Http(_) => "http",
    };
    let mut _child = None;
    let mut _session = None;
    let caller: Arc<dyn Caller> = match (side, &target) {
        ("bare", Target::Stdio(cmd)) => {
            let (client, child) = bare_stdio(cmd).await;
            let peer = client.peer().clone();
            (_child, _session) = (Some(child), Some(client));
            Arc::new(Bare(peer))
        }
        ("bare", Target::Http(url)) => match bare_http(url).await {
            Ok(client) => {
                let peer = client.peer().clone();
                _session = Some(client);
                Arc::new(Bare(peer))
            }
            Err(why) => return json!({"side": side, "transport": transport, "unsupported": why}),
        },
        _ => {
            let server = match &target {
                Target::Stdio(cmd) => server_spec(cmd),
                Target::Http(url) => json!({"url": url}),
            };
            let engine = Engine::from_json(json!({})).unwrap();
            if let Err(e) = engine.register_manual(ManualSource::Inline(template(server)), None).await {
                return json!({"side": side, "transport": transport, "unsupported": e.to_string()});
            }
            Arc::new(Ours(engine))
        }
    };
    // Warm up: the session, the allocator, the validator cache.
    drive(caller.clone(), (conc * 4).max(200), conc).await;
    let seq = drive(caller.clone(), seq_n, 1).await;
    let par = drive(caller, conc_n, conc).await;
    json!({"side": side, "transport": transport, "seq_n": seq_n, "seq_calls_per_s": seq, "conc_n": conc_n,
           "conc": conc, "conc_calls_per_s": par})
}

/// `n` calls with `conc` in flight (`conc` tasks pulling from one counter); calls/s.
async fn drive(caller: Arc<dyn Caller>, n: usize, conc: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..conc.max(1))
        .map(|_| {
            let (caller, next) = (caller.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    caller.call(i).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn register(side: &str, n: usize, cmd: Vec<String>) -> Value {
    let mut times = Vec::with_capacity(n + 1);
    let mut tools = 0;
    // One more than asked: the first warms up (page cache, allocator) and is not counted.
    for _ in 0..=n {
        let start = Instant::now();
        if side == "bare" {
            let (client, mut child) = bare_stdio(&cmd).await;
            tools = client.list_all_tools().await.unwrap().len();
            times.push(start.elapsed().as_secs_f64() * 1e3);
            let _ = client.cancel().await;
            let _ = child.kill().await;
        } else {
            let engine = Engine::from_json(json!({})).unwrap();
            let names = engine.register_manual(ManualSource::Inline(template(server_spec(&cmd))), None).await.unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e3);
            tools = names.len();
            tokio::task::block_in_place(|| engine.close(Duration::from_secs(2)));
        }
    }
    times.remove(0);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    json!({"side": side, "n": n, "tools": tools, "median_ms": sorted[n / 2], "ms": times})
}
