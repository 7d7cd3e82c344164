//! Loopback servers the integration tests start on 127.0.0.1: [`Loopback`], a hyper
//! server on the test's tokio runtime, and [`blocking::serve`], one on std threads
//! (shared with `cli/tests`). Each test file declares `mod support;`.

// Each test binary compiles this whole module and uses only part of it.
#![allow(dead_code)]

pub mod blocking;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

/// An HTTP/1.1 server on an ephemeral port of 127.0.0.1, answering every request with
/// its handler, one task per connection on the runtime that started it. Stops when
/// dropped.
pub struct Loopback {
    pub port: u16,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Loopback {
    pub async fn start<H, F>(handler: H) -> Loopback
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = handler(req);
                        async move { Ok::<_, std::convert::Infallible>(answer.await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    // With upgrades: a handler may answer 101 and take the connection over
                    // (`hyper::upgrade::on`), as graphql_ws.rs's WebSocket endpoint does.
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades().await;
                });
            }
        });
        Loopback { port, connections, task }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}
