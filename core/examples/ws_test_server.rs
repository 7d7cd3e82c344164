//! A WebSocket server on 127.0.0.1 for `tests/c/test_websocket.c`, built with
//! tokio-tungstenite (the library of the `websocket` transport's client side).
//!
//! Prints `ws://127.0.0.1:<port>` on one line of stdout, then serves until its stdin
//! closes (the test's end, or the test process dying). Paths:
//! - `/echo`: each text message comes back as `{"echo": <message as JSON, else text>}`;
//! - `/stream`: each message is answered with `{"type": "tool_response", "result": n}`
//!   for n = 1, 2, 3, then `{"type": "stream_end"}` (python-utcp's streaming frames).

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("ws://127.0.0.1:{}", listener.local_addr()?.port());
    // Stop when stdin closes: the test is over (or gone).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve(stream));
    }
    Ok(())
}

async fn serve(stream: tokio::net::TcpStream) {
    let mut path = String::new();
    // The callback's type is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_string();
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else { continue };
        let replies = match path.as_str() {
            "/echo" => {
                let got = serde_json::from_str::<Value>(text.as_str()).unwrap_or_else(|_| json!(text.as_str()));
                vec![json!({"echo": got})]
            }
            "/stream" => {
                let mut frames: Vec<Value> = (1..=3).map(|n| json!({"type": "tool_response", "result": n})).collect();
                frames.push(json!({"type": "stream_end"}));
                frames
            }
            _ => vec![json!({"error": "unknown path"})],
        };
        for reply in replies {
            if ws.send(Message::text(reply.to_string())).await.is_err() {
                return;
            }
        }
    }
}
