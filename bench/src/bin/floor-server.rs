//! `floor-server`: the machine's floor for one WebSocket step — a minimal axum server that
//! parses each text frame as JSON and answers one fixed observation frame.
//!
//! Same stack as `env-server` (axum 0.8 `ws` with the same buffer sizes, tokio multi-thread
//! runtime with one worker per core, TCP_NODELAY on every accepted socket) and none of its work: no session table, no env,
//! no validation, no serialisation. `env-bench` compares `env-server`'s server CPU time per step
//! with this one, measured in the same run. It prints exactly one line when ready,
//! `floor-server listening on <addr>`, as `env-server` does.
//!
//! Usage: `floor-server [--host 127.0.0.1] [--port 0]`

#![allow(clippy::print_stdout)]

use std::io::Write;
use std::net::IpAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::any;
use axum::serve::ListenerExt;
use clap::Parser;

/// The one reply: the frame `env-server`'s echo env sends for the first `step({"message":"hi"})`.
const OBSERVATION: &str = r#"{"type":"observation","data":{"observation":{"metadata":{"step":1},"echoed_message":"hi","message_length":2},"reward":0.2,"done":false,"metadata":{"step":1}}}"#;

/// A minimal axum WebSocket server: the floor of a step round trip on this machine.
#[derive(Debug, Parser)]
#[command(name = "floor-server")]
struct Cli {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to bind (0 picks a free one; the address is printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind((cli.host, cli.port))
        .await
        .with_context(|| format!("cannot bind {}:{}", cli.host, cli.port))?;
    let addr = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new().route("/ws", any(upgrade));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "floor-server listening on {addr}")?;
        out.flush()?;
    }
    axum::serve(listener, app).await?;
    Ok(())
}

/// The WebSocket buffers are `env-server`'s defaults (4 KiB read buffer, writes flushed per
/// message), so the floor's memory per connection is a floor too.
async fn upgrade(ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(serve_socket)
}

/// Answers every text frame with [`OBSERVATION`] after parsing it as JSON; a `close` frame
/// (or the client's close) ends the connection.
async fn serve_socket(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let Message::Text(text) = message else {
            if matches!(message, Message::Close(_)) {
                return;
            }
            continue; // ping/pong (answered by the WebSocket layer) or binary: ignored
        };
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            return;
        };
        if frame.get("type").and_then(serde_json::Value::as_str) == Some("close") {
            return;
        }
        if socket
            .send(Message::Text(Utf8Bytes::from_static(OBSERVATION)))
            .await
            .is_err()
        {
            return;
        }
    }
}
