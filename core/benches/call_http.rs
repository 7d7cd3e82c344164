//! Loopback HTTP tool calls, the Rust half of `make bench-calls` (bench/calls/run.py).
//! A bench target rather than an example so that `cargo test` never builds it.
//!
//! Build: `cargo bench -p utp-core --bench call_http --no-run` (release profile), then run
//! the executable it prints with one of:
//!
//! - `serve` — the loopback server both sides call: prints `PORT <n>`, then serves
//!   `GET /utcp` (a UTCP manual with one http tool, `bench.echo`) and
//!   `GET /echo?x=...` (small JSON echoing the query) until killed. HTTP/1.1 keep-alive,
//!   hyper on a current-thread tokio runtime (one core; the client gets the other).
//! - `engine BASE_URL SEQ_N CONC_N CONC` — this engine: register the manual from
//!   `BASE_URL/utcp`, warm up, then SEQ_N sequential `call_tool("bench.echo")` and CONC_N
//!   calls with CONC in flight, on a multi-thread tokio runtime; prints one JSON line.
//! - `raw BASE_URL SEQ_N CONC_N CONC` — the same traffic from a bare pooled reqwest client
//!   (no engine): the capacity of server + loopback, the ceiling for any client.
//!
//! cargo appends `--bench` to the arguments; it is ignored.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use serde_json::{Value, json};
use utp_core::{CallOptions, Engine, ManualSource};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let num = |i: usize| -> usize { args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()) };
    match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some(mode @ ("engine" | "raw")) => {
            let base = args.get(1).cloned().unwrap_or_else(|| usage());
            let (seq_n, conc_n, conc) = (num(2), num(3), num(4));
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            let out = rt.block_on(async move {
                let client: Arc<dyn Client> = if mode == "engine" {
                    Arc::new(EngineClient::new(&base).await)
                } else {
                    Arc::new(RawClient { http: reqwest::Client::new(), url: format!("{base}/echo") })
                };
                // Warm up: connections for CONC in flight, allocator, validator cache.
                drive(client.clone(), (conc * 4).max(200), conc).await;
                let seq = drive(client.clone(), seq_n, 1).await;
                let par = drive(client, conc_n, conc).await;
                json!({"mode": mode, "seq_n": seq_n, "seq_calls_per_s": seq, "conc_n": conc_n,
                       "conc": conc, "conc_calls_per_s": par})
            });
            println!("{out}");
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: call_http serve | engine BASE_URL SEQ_N CONC_N CONC | raw BASE_URL SEQ_N CONC_N CONC");
    std::process::exit(2)
}

trait Client: Send + Sync + 'static {
    fn call(&self, i: usize) -> futures_util::future::BoxFuture<'_, ()>;
}

struct EngineClient {
    engine: Engine,
}

impl EngineClient {
    async fn new(base: &str) -> EngineClient {
        let engine = Engine::from_json(json!({})).unwrap();
        let tools = engine.register_manual(ManualSource::Url(format!("{base}/utcp")), Some("bench")).await.unwrap();
        assert_eq!(tools, ["bench.echo"]);
        let first = engine.call_tool("bench.echo", json!({"x": "hello"}), CallOptions::default()).await.unwrap();
        assert_eq!(first["x"], "hello", "unexpected reply {first}");
        EngineClient { engine }
    }
}

impl Client for EngineClient {
    fn call(&self, i: usize) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let r = self.engine.call_tool("bench.echo", json!({"x": format!("v{i}")}), CallOptions::default()).await;
            let v = r.unwrap_or_else(|e| panic!("call {i}: {e}"));
            debug_assert!(v.is_object());
        })
    }
}

struct RawClient {
    http: reqwest::Client,
    url: String,
}

impl Client for RawClient {
    fn call(&self, i: usize) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let r = self.http.get(&self.url).query(&[("x", format!("v{i}"))]).send().await.unwrap();
            assert!(r.status().is_success());
            let v: Value = r.json().await.unwrap();
            debug_assert!(v.is_object());
        })
    }
}

/// `n` calls with `conc` in flight (`conc` tasks pulling from one counter); calls/s.
async fn drive(client: Arc<dyn Client>, n: usize, conc: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..conc.max(1))
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    client.call(i).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn serve() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let manual = Bytes::from(
            json!({
                "utcp_version": "1.0.1",
                "manual_version": "1.0.0",
                "tools": [{
                    "name": "echo",
                    "description": "Echo the query string back as JSON",
                    "inputs": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]},
                    "outputs": {"type": "object", "properties": {"x": {"type": "string"}}},
                    "tags": ["bench"],
                    "tool_call_template": {"call_template_type": "http", "http_method": "GET",
                                           "url": format!("http://127.0.0.1:{port}/echo")}
                }]
            })
            .to_string(),
        );
        println!("PORT {port}");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let manual = manual.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| reply(manual.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

async fn reply(manual: Bytes, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let json =
        |body: Bytes| Response::builder().header("content-type", "application/json").body(Full::new(body)).unwrap();
    Ok(match req.uri().path() {
        "/utcp" => json(manual),
        "/echo" => {
            let x = req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("x=")).unwrap_or("");
            let x = percent_encoding::percent_decode_str(x).decode_utf8_lossy();
            json(Bytes::from(json!({"x": x, "ok": true}).to_string()))
        }
        _ => Response::builder().status(404).body(Full::new(Bytes::from_static(b"not found"))).unwrap(),
    })
}
