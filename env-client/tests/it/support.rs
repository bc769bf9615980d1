//! Scripted WebSocket peers on `127.0.0.1:0` and the official captures (compiled in).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub(crate) type ServerWs = WebSocketStream<TcpStream>;

/// Upper bound for anything a test waits on; never reached when the code works.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// The official `/ws` frames, curated from `shared/spec/captures` (see `tests/fixtures`).
const FIXTURES: &[&str] = &[
    include_str!("../fixtures/oe010_generic.jsonl"),
    include_str!("../fixtures/oe010_mcp.jsonl"),
    include_str!("../fixtures/oe010_attach.jsonl"),
    include_str!("../fixtures/oe010_edge_cases.jsonl"),
    include_str!("../fixtures/core030_generic.jsonl"),
    include_str!("../fixtures/core030_mcp.jsonl"),
    include_str!("../fixtures/core030_exec.jsonl"),
    include_str!("../fixtures/core030_factory.jsonl"),
];

/// One captured frame.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) source: String,
    pub(crate) conn: u64,
    /// `true` for client → server.
    pub(crate) from_client: bool,
    pub(crate) text: String,
}

pub(crate) fn captures() -> Vec<Captured> {
    FIXTURES
        .iter()
        .flat_map(|file| file.lines())
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("fixture line is JSON");
            Captured {
                source: event["source"].as_str().unwrap().to_owned(),
                conn: event["conn"].as_u64().unwrap(),
                from_client: event["dir"] == "C->S",
                text: event["text"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

/// The frames of one captured connection, in order.
pub(crate) fn conversation(source: &str, conn: u64) -> Vec<Captured> {
    let frames: Vec<_> = captures()
        .into_iter()
        .filter(|c| c.source == source && c.conn == conn)
        .collect();
    assert!(!frames.is_empty(), "no capture {source} conn {conn}");
    frames
}

/// Python `json.dumps` spacing and `\u` escapes removed: compact, key order kept.
pub(crate) fn normalise(text: &str) -> String {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    serde_json::to_string(&value).unwrap()
}

/// Starts a server that accepts one connection and runs `script` on it. Returns the base
/// URL (`http://127.0.0.1:port`) and the script's task.
pub(crate) async fn serve_one<F, Fut>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        script(ws).await;
    });
    (url, task)
}

/// Starts a server that accepts connections until the test ends and runs `handler` on each.
pub(crate) async fn serve_many<F, Fut>(handler: F) -> String
where
    F: Fn(ServerWs) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    handler(ws).await;
                }
            });
        }
    });
    url
}

/// The next text frame from the client (pings and pongs skipped).
pub(crate) async fn recv_text(ws: &mut ServerWs) -> String {
    loop {
        let item = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("client frame within the deadline");
        match item {
            Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame from the client, got {other:?}"),
        }
    }
}

pub(crate) async fn send_text(ws: &mut ServerWs, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// Sends a close frame with `code` and `reason`.
pub(crate) async fn send_close(ws: &mut ServerWs, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    // The peer may already be gone; that is fine for these tests.
    let _ = ws.close(Some(frame)).await;
}

/// Expects the client's polite close: `{"type":"close"}`, then its close frame (1000); then
/// completes the closing handshake.
pub(crate) async fn expect_polite_close(ws: &mut ServerWs) {
    assert_eq!(recv_text(ws).await, r#"{"type":"close"}"#);
    expect_close_frame(ws, Some(1000)).await;
}

/// Expects a close frame from the client (with `code`, if given), then reads to the end so
/// the close reply is flushed.
pub(crate) async fn expect_close_frame(ws: &mut ServerWs, code: Option<u16>) {
    loop {
        let item = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("close frame within the deadline");
        match item {
            Some(Ok(Message::Close(frame))) => {
                if let Some(code) = code {
                    assert_eq!(frame.map(|f| u16::from(f.code)), Some(code));
                }
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected the client's close frame, got {other:?}"),
        }
    }
    drain(ws).await;
}

/// Reads until the connection ends (flushes pending control replies).
pub(crate) async fn drain(ws: &mut ServerWs) {
    let _ = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Plays one captured connection from the server side: each client frame must equal the
/// official one (after normalising `json.dumps` spacing); each server frame is sent as
/// captured. A captured `{"type": "close"}` expects the polite close and ends the replay.
pub(crate) async fn replay(ws: &mut ServerWs, frames: &[Captured]) {
    for frame in frames {
        if frame.from_client {
            if frame.text == r#"{"type": "close"}"# {
                expect_polite_close(ws).await;
                return;
            }
            let got = recv_text(ws).await;
            assert_eq!(normalise(&got), normalise(&frame.text), "client frame");
        } else {
            send_text(ws, &frame.text).await;
        }
    }
}

/// Counts sessions on a server: open now, most at once, all time.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    pub(crate) open: AtomicUsize,
    pub(crate) peak: AtomicUsize,
    pub(crate) total: AtomicUsize,
}

impl Sessions {
    pub(crate) fn opened(&self) {
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An echo-env-like session: `reset` → ready, `step {"message"}` → echo, `state`, `close`.
/// Counts itself in `sessions` from accept until the client's close arrives.
pub(crate) async fn echo_session(mut ws: ServerWs, sessions: Arc<Sessions>) {
    sessions.opened();
    let mut counted = true;
    let mut steps = 0u64;
    while let Some(Ok(message)) = ws.next().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => {
                if std::mem::take(&mut counted) {
                    sessions.closed();
                }
                continue; // keep reading: flushes the close reply
            }
            _ => continue,
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        let reply = match frame["type"].as_str() {
            Some("reset") => {
                steps = 0;
                observation("ready", steps)
            }
            Some("step") => {
                steps += 1;
                observation(frame["data"]["message"].as_str().unwrap_or(""), steps)
            }
            Some("state") => format!(
                r#"{{"type":"state","data":{{"episode_id":"e","step_count":{steps}}}}}"#
            ),
            Some("close") => {
                if std::mem::take(&mut counted) {
                    sessions.closed();
                }
                continue;
            }
            _ => r#"{"type":"error","data":{"message":"Unknown message type: x","code":"UNKNOWN_TYPE"}}"#.to_owned(),
        };
        if ws.send(Message::text(reply)).await.is_err() {
            break;
        }
    }
    if counted {
        sessions.closed();
    }
}

/// An echo observation frame in the 0.10 shape.
pub(crate) fn observation(message: &str, step: u64) -> String {
    let len = message.chars().count();
    let message = serde_json::to_string(message).unwrap();
    format!(
        r#"{{"type":"observation","data":{{"observation":{{"metadata":{{"step":{step}}},"echoed_message":{message},"message_length":{len}}},"reward":null,"done":false,"metadata":{{"step":{step}}}}}}}"#
    )
}
