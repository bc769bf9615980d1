//! The terminal env through the server's routes (`TERMINAL_ENV.md` §4.1, §7), on the fake
//! sandbox: stateless HTTP creates no sandbox and refuses, and every JSON-RPC `tools/call`
//! path carries the episode's `done` and reward in `meta.openenv`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::fake::{SharedRef, setup_with};
use super::{SESSION_REQUIRED, TerminalConfig};
use crate::config::Limits;
use crate::server::{AppState, run};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A server on a free port serving the terminal env on the fake backend.
struct Served {
    addr: String,
    shared: SharedRef,
    shutdown: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve() -> Served {
    let (factory, shared) = setup_with(TerminalConfig::default(), "local");
    let shutdown = CancellationToken::new();
    let state = Arc::new(AppState::new(
        Arc::new(factory),
        Limits::default(),
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(run(listener, state));
    Served {
        addr,
        shared,
        shutdown,
    }
}

/// One HTTP/1.1 request; returns the status and the JSON body.
async fn http(addr: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

async fn ws(addr: &str, path: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap()
        .0
}

async fn ask(ws: &mut Ws, frame: &Value) -> Value {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

fn tools_call(id: i64, arguments: &Value, session: Option<&str>) -> Value {
    let mut params = json!({"name": "terminal", "arguments": arguments});
    if let Some(s) = session {
        params["session_id"] = json!(s);
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// `result.meta.openenv` of a JSON-RPC response (and the fastmcp key beside it kept).
fn openenv_meta(response: &Value) -> Value {
    let meta = &response["result"]["meta"];
    assert_eq!(meta["fastmcp"], json!({"wrap_result": true}), "{response}");
    meta["openenv"].clone()
}

#[tokio::test]
async fn stateless_http_creates_no_sandbox_and_refuses() {
    let s = serve().await;
    let (status, reset) = http(&s.addr, "POST", "/reset", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(reset["done"], true, "{reset}");
    assert_eq!(reset["reward"], Value::Null);
    let refusal = json!({"status": "error", "error": SESSION_REQUIRED});
    assert_eq!(reset["metadata"], refusal);
    assert_eq!(reset["observation"]["metadata"], refusal);

    let step = json!({"action": {"type": "call_tool", "tool_name": "terminal", "arguments": {"command": "ls"}}});
    let (status, stepped) = http(&s.addr, "POST", "/step", &step).await;
    assert_eq!(status, 200);
    assert_eq!(
        stepped["observation"]["result"]["data"],
        super::tool::NOT_RESET
    );

    let (_, called) = http(
        &s.addr,
        "POST",
        "/mcp",
        &tools_call(1, &json!({"command": "ls"}), None),
    )
    .await;
    assert_eq!(called["result"]["data"], super::tool::NOT_RESET, "{called}");
    assert_eq!(openenv_meta(&called), json!({"done": false, "reward": 0.0}));

    let (status, _) = http(&s.addr, "GET", "/state", &Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.shared.lock().unwrap().creates,
        0,
        "a stateless request created a sandbox"
    );
}

#[tokio::test]
async fn json_rpc_tools_call_carries_done_and_reward_on_every_path() {
    let s = serve().await;

    // The `mcp` frame on /ws, on the socket's own episode.
    let mut sock = ws(&s.addr, "/ws").await;
    let reset = ask(
        &mut sock,
        &json!({"type": "reset", "data": {"verify": ["true"]}}),
    )
    .await;
    assert_eq!(reset["data"]["done"], false, "{reset}");
    let ran = ask(
        &mut sock,
        &json!({"type": "mcp", "data": tools_call(1, &json!({"command": "ls"}), None)}),
    )
    .await;
    assert_eq!(ran["type"], "mcp");
    assert_eq!(ran["data"]["result"]["data"], "shell: ls");
    assert_eq!(
        openenv_meta(&ran["data"]),
        json!({"done": false, "reward": 0.0})
    );
    let answered = ask(
        &mut sock,
        &json!({"type": "mcp", "data": tools_call(2, &json!({"final_answer": "done"}), None)}),
    )
    .await;
    assert_eq!(
        answered["data"]["result"]["data"],
        "Answer submitted: done\nVerification: 1/1 passed; reward=1.0"
    );
    assert_eq!(
        openenv_meta(&answered["data"]),
        json!({"done": true, "reward": 1.0})
    );
    let state = ask(&mut sock, &json!({"type": "state"})).await;
    assert_eq!(state["data"]["step_count"], 2, "JSON-RPC calls are steps");

    // POST /mcp on an HTTP-MCP session, its episode reset over the attached socket.
    let (_, created) = http(
        &s.addr,
        "POST",
        "/mcp",
        &json!({"jsonrpc": "2.0", "id": 1, "method": "openenv/session/create", "params": {}}),
    )
    .await;
    let id = created["result"]["session_id"].as_str().unwrap().to_owned();
    let mut attached = ws(&s.addr, &format!("/ws?session_id={id}")).await;
    let reset = ask(
        &mut attached,
        &json!({"type": "reset", "data": {"verify": ["true", "exit 1"]}}),
    )
    .await;
    assert_eq!(reset["data"]["done"], false, "{reset}");
    let (_, ran) = http(
        &s.addr,
        "POST",
        "/mcp",
        &tools_call(3, &json!({"command": "pwd"}), Some(&id)),
    )
    .await;
    assert_eq!(openenv_meta(&ran), json!({"done": false, "reward": 0.0}));
    let (_, answered) = http(
        &s.addr,
        "POST",
        "/mcp",
        &tools_call(4, &json!({"final_answer": "x"}), Some(&id)),
    )
    .await;
    assert_eq!(
        openenv_meta(&answered),
        json!({"done": true, "reward": 0.5})
    );

    // The /mcp WebSocket: its own session, never reset.
    let mut mcp = ws(&s.addr, "/mcp").await;
    let ran = ask(&mut mcp, &tools_call(5, &json!({"command": "ls"}), None)).await;
    assert_eq!(ran["result"]["data"], super::tool::NOT_RESET);
    assert_eq!(openenv_meta(&ran), json!({"done": false, "reward": 0.0}));
}
