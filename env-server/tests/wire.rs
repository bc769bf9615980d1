//! The server at the wire: a real listener on 127.0.0.1:0 and raw WebSocket clients.
//!
//! Golden exchanges come from the official captures (`PROTOCOL.md`, `shared/spec/captures`);
//! the bad-input tests check the code or close code, that nothing panics, and that the server
//! stays healthy while a bystander session keeps stepping.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use env_server::config::Limits;
use env_server::server::{AppState, run};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

struct TestServer {
    addr: std::net::SocketAddr,
    state: Arc<AppState>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start(limits: Limits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let factory = env_server::envs::factory("echo").unwrap();
        let state = Arc::new(AppState::new(factory, limits, CancellationToken::new()));
        let task = tokio::spawn(run(listener, Arc::clone(&state)));
        Self { addr, state, task }
    }

    async fn default() -> Self {
        Self::start(Limits::default()).await
    }

    async fn connect_path(&self, path: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}{path}", self.addr))
            .await
            .unwrap();
        ws
    }

    async fn connect(&self) -> Ws {
        self.connect_path("/ws").await
    }

    async fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut tcp = TcpStream::connect(self.addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    /// Active sessions reach `n` within the deadline.
    async fn sessions_become(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.state.registry.active() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "active sessions {} != {n}",
                self.state.registry.active()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn assert_healthy(&self) {
        assert_eq!(
            self.http("GET", "/health", "").await,
            (200, r#"{"status":"healthy"}"#.to_owned())
        );
    }

    async fn shutdown(self) {
        self.state.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// The next text frame (pings are skipped).
async fn recv(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame in time")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn request(ws: &mut Ws, text: &str) -> String {
    send(ws, text).await;
    recv(ws).await
}

/// The close frame the server sends next (text frames before it are returned too).
async fn recv_close(ws: &mut Ws) -> (Vec<String>, Option<CloseFrame>) {
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
            Some(Ok(Message::Close(frame))) => return (texts, frame),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error before close: {e}"),
            None => return (texts, None),
        }
    }
}

/// A session that must keep working while another misbehaves.
struct Bystander(Ws, u64);

impl Bystander {
    async fn new(server: &TestServer) -> Self {
        let mut ws = server.connect().await;
        let reply = request(&mut ws, r#"{"type":"reset","data":{}}"#).await;
        assert!(reply.contains(r#""echoed_message":"ready""#), "{reply}");
        Self(ws, 0)
    }

    async fn still_steps(&mut self) {
        self.1 += 1;
        let reply = request(&mut self.0, r#"{"type":"step","data":{"message":"alive"}}"#).await;
        let expected = format!(
            r#"{{"type":"observation","data":{{"observation":{{"metadata":{{"step":{n}}},"echoed_message":"alive","message_length":5}},"reward":0.5,"done":false,"metadata":{{"step":{n}}}}}}}"#,
            n = self.1
        );
        assert_eq!(reply, expected);
    }
}

#[tokio::test]
async fn golden_session_matches_the_official_server() {
    let server = TestServer::default().await;
    let mut ws = server.connect().await;
    // oe010_generic ws#1, byte for byte.
    let script = [
        (
            r#"{"type": "reset", "data": {"seed": 42, "episode_id": "ep-capture-1", "difficulty": "easy"}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{"seed":42,"reset_kwargs":{"difficulty":"easy"}},"echoed_message":"ready","message_length":0},"reward":null,"done":false,"metadata":{"seed":42,"reset_kwargs":{"difficulty":"easy"}}}}"#,
        ),
        (
            r#"{"type": "step", "data": {"message": "hello"}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{"step":1},"echoed_message":"hello","message_length":5},"reward":0.5,"done":false,"metadata":{"step":1}}}"#,
        ),
        (
            r#"{"type": "step", "data": {"message": "world"}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{"step":2},"echoed_message":"world","message_length":5},"reward":0.5,"done":false,"metadata":{"step":2}}}"#,
        ),
        (
            r#"{"type": "step", "data": {"message": "bye"}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{"step":3},"echoed_message":"bye","message_length":3},"reward":0.3,"done":true,"metadata":{"step":3}}}"#,
        ),
        (
            r#"{"type": "state"}"#,
            r#"{"type":"state","data":{"episode_id":"ep-capture-1","step_count":3,"last_message":"bye"}}"#,
        ),
        (
            r#"{"type": "verify", "data": {}}"#,
            r#"{"type":"verify","data":{"reward":0.3,"done":true,"details":{"step_count":3}}}"#,
        ),
    ];
    for (sent, expected) in script {
        assert_eq!(request(&mut ws, sent).await, expected, "reply to {sent}");
    }
    send(&mut ws, r#"{"type": "close"}"#).await;
    let (texts, close) = recv_close(&mut ws).await;
    assert!(texts.is_empty(), "no reply to close: {texts:?}");
    assert_eq!(u16::from(close.unwrap().code), 1000);
    server.sessions_become(0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_get_official_errors_and_the_session_survives() {
    let server = TestServer::default().await;
    let mut bystander = Bystander::new(&server).await;
    let mut ws = server.connect().await;
    // oe010_generic ws#5.
    let script = [
        (
            "not json",
            r#"{"type":"error","data":{"message":"Invalid JSON: Expecting value: line 1 column 1 (char 0)","code":"INVALID_JSON"}}"#,
        ),
        (
            r#"{"type": "bogus"}"#,
            r#"{"type":"error","data":{"message":"Unknown message type: bogus","code":"UNKNOWN_TYPE"}}"#,
        ),
        (
            r#"{"data": {}}"#,
            r#"{"type":"error","data":{"message":"Unknown message type: ","code":"UNKNOWN_TYPE"}}"#,
        ),
        (
            r#"{"type": "step"}"#,
            r#"{"type":"error","data":{"message":"Invalid message","code":"VALIDATION_ERROR","errors":[{"type":"missing","loc":["data"],"msg":"Field required","input":{"type":"step"},"url":"https://errors.pydantic.dev/2.14/v/missing"}]}}"#,
        ),
        (
            r#"{"type": "step", "data": {"message": 5}}"#,
            r#"{"type":"error","data":{"message":"Invalid message","code":"VALIDATION_ERROR","errors":[{"type":"string_type","loc":["message"],"msg":"Input should be a valid string","input":5,"url":"https://errors.pydantic.dev/2.14/v/string_type"}]}}"#,
        ),
        (
            r#"{"type": "step", "data": {"message": "x", "extra": 1}}"#,
            r#"{"type":"error","data":{"message":"Invalid message","code":"VALIDATION_ERROR","errors":[{"type":"extra_forbidden","loc":["extra"],"msg":"Extra inputs are not permitted","input":1,"url":"https://errors.pydantic.dev/2.14/v/extra_forbidden"}]}}"#,
        ),
        (
            r#"{"type": "reset", "data": {}, "extra": 1}"#,
            r#"{"type":"error","data":{"message":"Invalid message","code":"VALIDATION_ERROR","errors":[{"type":"extra_forbidden","loc":["extra"],"msg":"Extra inputs are not permitted","input":1,"url":"https://errors.pydantic.dev/2.14/v/extra_forbidden"}]}}"#,
        ),
        (
            r#"{"type": "reset", "data": {"seed": -1, "unknown_kw": 1}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{"seed":-1,"reset_kwargs":{"unknown_kw":1}},"echoed_message":"ready","message_length":0},"reward":null,"done":false,"metadata":{"seed":-1,"reset_kwargs":{"unknown_kw":1}}}}"#,
        ),
        (
            r#"{"type": "state", "data": {}}"#,
            r#"{"type":"error","data":{"message":"Invalid message","code":"VALIDATION_ERROR","errors":[{"type":"extra_forbidden","loc":["data"],"msg":"Extra inputs are not permitted","input":{},"url":"https://errors.pydantic.dev/2.14/v/extra_forbidden"}]}}"#,
        ),
        (
            r#"{"type": "step", "data": {"message": "no-reset-needed"}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{"step":1},"echoed_message":"no-reset-needed","message_length":15},"reward":1.5,"done":false,"metadata":{"step":1}}}"#,
        ),
        (
            r#"{"type": "step", "data": {"message": "raise"}}"#,
            r#"{"type":"error","data":{"message":"boom from env.step","code":"EXECUTION_ERROR"}}"#,
        ),
        (
            r#"{"type": "step", "data": "not an object"}"#,
            r#"{"type":"error","data":{"message":"Invalid message","code":"VALIDATION_ERROR","errors":[{"type":"dict_type","loc":["data"],"msg":"Input should be a valid dictionary","input":"not an object","url":"https://errors.pydantic.dev/2.14/v/dict_type"}]}}"#,
        ),
        (
            r#"{"type": "verify", "data": {"reward": 1.0}}"#,
            r#"{"type":"error","data":{"message":"Invalid message","code":"VALIDATION_ERROR","errors":[{"type":"extra_forbidden","loc":["data","reward"],"msg":"Extra inputs are not permitted","input":1.0,"url":"https://errors.pydantic.dev/2.14/v/extra_forbidden"}]}}"#,
        ),
        (
            r#"{"type": "step", "data": {"message": NaN}}"#,
            r#"{"type":"error","data":{"message":"Invalid message","code":"VALIDATION_ERROR","errors":[{"type":"string_type","loc":["message"],"msg":"Input should be a valid string","input":null,"url":"https://errors.pydantic.dev/2.14/v/string_type"}]}}"#,
        ),
        (
            r#"{"type": "state"}"#,
            r#"{"type":"state","data":{"episode_id":null,"step_count":1,"last_message":"no-reset-needed"}}"#,
        ),
    ];
    for (sent, expected) in script {
        let reply = request(&mut ws, sent).await;
        if expected.contains(r#""episode_id":null"#) {
            // The episode id is a fresh uuid: compare the rest.
            let mut v: Value = serde_json::from_str(&reply).unwrap();
            assert_eq!(v["data"]["episode_id"].as_str().map(str::len), Some(36));
            v["data"]["episode_id"] = Value::Null;
            assert_eq!(v.to_string(), expected);
        } else {
            assert_eq!(reply, expected, "reply to {sent}");
        }
        bystander.still_steps().await;
    }
    // A JSON array is fatal: SESSION_ERROR, then close 1000.
    send(&mut ws, "[1, 2]").await;
    let (texts, close) = recv_close(&mut ws).await;
    assert_eq!(
        texts,
        [
            r#"{"type":"error","data":{"message":"'list' object has no attribute 'get'","code":"SESSION_ERROR"}}"#
        ]
    );
    assert_eq!(u16::from(close.unwrap().code), 1000);
    server.sessions_become(1).await;
    bystander.still_steps().await;
    server.assert_healthy().await;
    server.shutdown().await;
}

#[tokio::test]
async fn binary_frame_is_a_session_error() {
    let server = TestServer::default().await;
    let mut bystander = Bystander::new(&server).await;
    let mut ws = server.connect().await;
    ws.send(Message::Binary(vec![1u8, 2].into())).await.unwrap();
    let (texts, close) = recv_close(&mut ws).await;
    assert_eq!(
        texts,
        [r#"{"type":"error","data":{"message":"'text'","code":"SESSION_ERROR"}}"#]
    );
    assert_eq!(u16::from(close.unwrap().code), 1000);
    server.sessions_become(1).await;
    bystander.still_steps().await;
    server.shutdown().await;
}

#[tokio::test]
async fn frames_up_to_the_limit_are_processed_and_larger_ones_close_1009() {
    let limits = Limits {
        max_frame_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let mut bystander = Bystander::new(&server).await;
    let mut ws = server.connect().await;
    let big = "a".repeat(1024 * 1024 - 64);
    let reply = request(
        &mut ws,
        &format!(r#"{{"type":"step","data":{{"message":"{big}"}}}}"#),
    )
    .await;
    assert!(reply.contains(&format!(r#""message_length":{}"#, big.len())));
    let too_big = format!(
        r#"{{"type":"step","data":{{"message":"{}"}}}}"#,
        "a".repeat(1024 * 1024)
    );
    send(&mut ws, &too_big).await;
    let (texts, close) = recv_close(&mut ws).await;
    assert!(texts.is_empty());
    let close = close.unwrap();
    assert_eq!(u16::from(close.code), 1009);
    assert_eq!(
        close.reason.as_str(),
        format!(
            "frame with {} bytes exceeds limit of 1048576 bytes",
            too_big.len()
        )
    );
    server.sessions_become(1).await;
    bystander.still_steps().await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_default_limit_is_16_mib() {
    let server = TestServer::default().await;
    let mut bystander = Bystander::new(&server).await;
    let ws = server.connect().await;
    let (mut sink, mut stream) = ws.split();
    // The server may close before the client has written the whole frame: send from a task
    // and read the close meanwhile, as the official client does.
    let frame = format!(
        r#"{{"type":"step","data":{{"message":"{}"}}}}"#,
        "a".repeat(17 * 1024 * 1024)
    );
    let writer = tokio::spawn(async move { sink.send(Message::Text(frame.into())).await });
    let close = {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(Message::Close(frame))) => frame,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(e)) => panic!("read failed before the close frame: {e}"),
            None => panic!("closed without a close frame"),
        }
    };
    let close = close.unwrap();
    assert_eq!(u16::from(close.code), 1009);
    assert!(
        close
            .reason
            .as_str()
            .ends_with("exceeds limit of 16777216 bytes"),
        "{}",
        close.reason
    );
    let _ = writer.await;
    server.sessions_become(1).await;
    bystander.still_steps().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_flood_is_answered_in_order_without_hurting_others() {
    let server = TestServer::default().await;
    let mut bystander = Bystander::new(&server).await;
    let mut ws = server.connect().await;
    let n = 3000;
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..n {
            sink.send(Message::Text(
                format!(r#"{{"type":"step","data":{{"message":"m{i}"}}}}"#).into(),
            ))
            .await
            .unwrap();
        }
        sink
    });
    // Meanwhile another session is served.
    bystander.still_steps().await;
    for i in 0..n {
        let frame = loop {
            match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) => break t,
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        };
        assert!(
            frame.contains(&format!(r#""echoed_message":"m{i}""#)),
            "reply {i} out of order: {frame}"
        );
        assert!(frame.contains(&format!(r#""step":{}"#, i + 1)));
    }
    let sink = writer.await.unwrap();
    ws = sink.reunite(stream).unwrap();
    bystander.still_steps().await;
    ws.close(None).await.unwrap();
    server.sessions_become(1).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_vanishes_mid_request_frees_its_slot() {
    let limits = Limits {
        max_sessions: 2,
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let mut bystander = Bystander::new(&server).await;
    for _ in 0..20 {
        let mut ws = server.connect().await;
        // Requests in flight, then the TCP connection disappears without a close handshake.
        for _ in 0..50 {
            ws.feed(Message::Text(
                r#"{"type":"step","data":{"message":"gone"}}"#.into(),
            ))
            .await
            .unwrap();
        }
        ws.flush().await.unwrap();
        drop(ws);
        server.sessions_become(1).await;
        bystander.still_steps().await;
    }
    server.assert_healthy().await;
    server.shutdown().await;
}

#[tokio::test]
async fn capacity_is_enforced_with_the_official_frame_and_freed_on_close() {
    let limits = Limits {
        max_sessions: 2,
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let mut a = Bystander::new(&server).await;
    let mut b = server.connect().await;
    request(&mut b, r#"{"type":"reset"}"#).await;
    let mut refused = server.connect().await;
    let (texts, close) = recv_close(&mut refused).await;
    assert_eq!(
        texts,
        [
            r#"{"type":"error","data":{"message":"Server at capacity: 2/2 sessions active. Cannot accept new connections.","code":"CAPACITY_REACHED","active_sessions":2,"max_sessions":2}}"#
        ]
    );
    assert_eq!(u16::from(close.unwrap().code), 1000);
    // HTTP-MCP sessions count too; the stateless HTTP routes do not.
    let (status, body) = server
        .http(
            "POST",
            "/mcp",
            r#"{"jsonrpc":"2.0","method":"openenv/session/create","params":{},"id":1}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"Server at capacity: 2/2 sessions active. Cannot accept new connections.","data":{"active_sessions":2,"max_sessions":2}}}"#
    );
    let (status, body) = server
        .http(
            "POST",
            "/step",
            r#"{"action":{"message":"http-while-full"}}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"{"observation":{"metadata":{"step":1},"echoed_message":"http-while-full","message_length":15},"reward":1.5,"done":false,"metadata":{"step":1}}"#
    );
    a.still_steps().await;
    send(&mut b, r#"{"type":"close"}"#).await;
    recv_close(&mut b).await;
    server.sessions_become(1).await;
    let mut c = server.connect().await;
    assert!(
        request(&mut c, r#"{"type":"reset"}"#)
            .await
            .contains("ready")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_half_open_client_is_closed_1011_and_its_slot_freed() {
    let limits = Limits {
        keepalive_interval_s: 1,
        keepalive_timeout_s: 1,
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let mut bystander = Bystander::new(&server).await;
    let mut silent = server.connect().await;
    request(&mut silent, r#"{"type":"reset"}"#).await;
    server.sessions_become(2).await;
    // The silent client never reads again, so it never answers a ping; the bystander keeps
    // talking (reading its replies answers its pings).
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.state.registry.active() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "half-open session not closed"
        );
        bystander.still_steps().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, close) = recv_close(&mut silent).await;
    let close = close.unwrap();
    assert_eq!(u16::from(close.code), 1011);
    assert_eq!(close.reason.as_str(), "keepalive ping timeout");
    bystander.still_steps().await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_session_is_closed_with_a_session_error() {
    let limits = Limits {
        idle_timeout_s: 1,
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let mut ws = server.connect().await;
    request(&mut ws, r#"{"type":"reset"}"#).await;
    let (texts, close) = recv_close(&mut ws).await;
    assert_eq!(texts.len(), 1);
    let v: Value = serde_json::from_str(&texts[0]).unwrap();
    assert_eq!(v["data"]["code"], "SESSION_ERROR");
    assert!(
        v["data"]["message"]
            .as_str()
            .unwrap()
            .contains("idle timeout")
    );
    assert_eq!(u16::from(close.unwrap().code), 1000);
    server.sessions_become(0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_session() {
    let server = TestServer::default().await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut ws = server.connect().await;
        request(&mut ws, r#"{"type":"reset"}"#).await;
        sockets.push(ws);
    }
    let (status, body) = server
        .http(
            "POST",
            "/mcp",
            r#"{"jsonrpc":"2.0","method":"openenv/session/create","params":{},"id":1}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.sessions_become(4).await;
    let state = Arc::clone(&server.state);
    server.shutdown().await;
    for mut ws in sockets {
        let (_, close) = recv_close(&mut ws).await;
        assert_eq!(u16::from(close.unwrap().code), 1001);
    }
    assert_eq!(state.registry.active(), 0);
}

#[tokio::test]
async fn mcp_on_the_websocket_and_the_step_path() {
    let server = TestServer::default().await;
    let mut ws = server.connect().await;
    let list = request(&mut ws, r#"{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}}"#).await;
    assert_eq!(
        list,
        r#"{"type":"mcp","data":{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo_message","title":null,"description":"Echo back the provided message.","inputSchema":{"additionalProperties":false,"properties":{"message":{"type":"string","description":"The message to echo back"}},"required":["message"],"type":"object"},"outputSchema":{"properties":{"result":{"type":"string"}},"required":["result"],"type":"object","x-fastmcp-wrap-result":true},"icons":null,"annotations":null,"meta":{"fastmcp":{"tags":[]}},"execution":null}]}}}"#
    );
    let script = [
        (
            r#"{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "nope", "arguments": {}}, "id": 3}}"#,
            r#"{"type":"mcp","data":{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"Unknown tool: 'nope'","data":null}}}"#,
        ),
        (
            r#"{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo_message", "arguments": {"message": "hi"}}, "id": "x"}}"#,
            r#"{"type":"mcp","data":{"jsonrpc":"2.0","id":"x","result":{"content":[{"type":"text","text":"hi","annotations":null,"meta":null}],"structured_content":{"result":"hi"},"meta":{"fastmcp":{"wrap_result":true}},"data":"hi","is_error":false}}}"#,
        ),
        (
            r#"{"type": "step", "data": {"type": "call_tool", "tool_name": "echo_message", "arguments": {"message": "via step"}}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{},"tool_name":"echo_message","result":{"content":[{"type":"text","text":"via step","annotations":null,"meta":null}],"structured_content":{"result":"via step"},"meta":{"fastmcp":{"wrap_result":true}},"data":"via step","is_error":false},"error":null},"reward":null,"done":false}}"#,
        ),
        (
            r#"{"type": "step", "data": {"type": "list_tools"}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{},"tools":[{"name":"echo_message","description":"Echo back the provided message.","input_schema":{"additionalProperties":false,"properties":{"message":{"type":"string","description":"The message to echo back"}},"required":["message"],"type":"object"}}]},"reward":null,"done":false}}"#,
        ),
        (
            r#"{"type": "step", "data": {"type": "call_tool", "tool_name": "nope", "arguments": {}}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{},"tool_name":"nope","result":null,"error":{"error_type":"tool_not_found","message":"Unknown tool: 'nope'"}},"reward":null,"done":false}}"#,
        ),
        (
            r#"{"type": "step", "data": {"tool_name": "echo_message", "arguments": {"message": "no type"}}}"#,
            r#"{"type":"observation","data":{"observation":{"metadata":{},"tool_name":"echo_message","result":{"content":[{"type":"text","text":"no type","annotations":null,"meta":null}],"structured_content":{"result":"no type"},"meta":{"fastmcp":{"wrap_result":true}},"data":"no type","is_error":false},"error":null},"reward":null,"done":false}}"#,
        ),
        (
            r#"{"type": "mcp", "data": {"method": "tools/list"}}"#,
            r#"{"type":"mcp","data":{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request: 1 validation error for JsonRpcRequest\njsonrpc\n  Field required [type=missing, input_value={'method': 'tools/list'}, input_type=dict]\n    For further information visit https://errors.pydantic.dev/2.14/v/missing","data":null}}}"#,
        ),
    ];
    for (sent, expected) in script {
        assert_eq!(request(&mut ws, sent).await, expected, "reply to {sent}");
    }
    let state: Value =
        serde_json::from_str(&request(&mut ws, r#"{"type": "state"}"#).await).unwrap();
    assert_eq!(
        state["data"]["step_count"], 4,
        "step-path MCP actions count as steps"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_mcp_websocket_speaks_bare_json_rpc_in_python_layout() {
    let server = TestServer::default().await;
    let mut ws = server.connect_path("/mcp").await;
    let script = [
        (
            r#"{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo_message", "arguments": {"message": "hi"}}, "id": "x"}"#,
            r#"{"jsonrpc": "2.0", "id": "x", "result": {"content": [{"type": "text", "text": "hi", "annotations": null, "meta": null}], "structured_content": {"result": "hi"}, "meta": {"fastmcp": {"wrap_result": true}}, "data": "hi", "is_error": false}}"#,
        ),
        (
            "garbage",
            r#"{"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error: Expecting value: line 1 column 1 (char 0)", "data": null}}"#,
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "resources/list", "id": 9}"#,
            r#"{"jsonrpc": "2.0", "id": 9, "error": {"code": -32601, "message": "Method not found: resources/list", "data": null}}"#,
        ),
    ];
    for (sent, expected) in script {
        assert_eq!(request(&mut ws, sent).await, expected, "reply to {sent}");
    }
    server.sessions_become(1).await;
    ws.close(None).await.unwrap();
    server.sessions_become(0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn http_mcp_sessions_and_websocket_attach() {
    let server = TestServer::default().await;
    let rpc = |method: &str, params: Value, id: i64| {
        json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}).to_string()
    };
    let (_, body) = server
        .http("POST", "/mcp", &rpc("openenv/session/create", json!({}), 1))
        .await;
    let created: Value = serde_json::from_str(&body).unwrap();
    let id = created["result"]["session_id"].as_str().unwrap().to_owned();

    let mut ws = server.connect_path(&format!("/ws?session_id={id}")).await;
    let reply = request(
        &mut ws,
        r#"{"type": "reset", "data": {"episode_id": "attached"}}"#,
    )
    .await;
    assert!(reply.contains("ready"));
    request(
        &mut ws,
        r#"{"type": "step", "data": {"message": "attached-step"}}"#,
    )
    .await;
    // A second socket on the same session is refused.
    let mut second = server.connect_path(&format!("/ws?session_id={id}")).await;
    let (texts, close) = recv_close(&mut second).await;
    assert_eq!(
        texts,
        [format!(
            r#"{{"type":"error","data":{{"message":"Session {id} already has an attached WebSocket","code":"SESSION_ERROR"}}}}"#
        )]
    );
    assert_eq!(u16::from(close.unwrap().code), 1000);
    // JSON-RPC on the same session (no step counted).
    let (_, body) = server
        .http("POST", "/mcp", &rpc("tools/call", json!({"name": "echo_message", "arguments": {"message": "in-session"}, "session_id": id}), 2))
        .await;
    assert!(body.contains(r#""data":"in-session""#), "{body}");
    // Close while attached: closing, and the session dies when the socket detaches.
    let (_, body) = server
        .http(
            "POST",
            "/mcp",
            &rpc("openenv/session/close", json!({"session_id": id}), 3),
        )
        .await;
    assert_eq!(
        body,
        format!(
            r#"{{"jsonrpc":"2.0","id":3,"result":{{"session_id":"{id}","closed":false,"closing":true}}}}"#
        )
    );
    assert_eq!(
        request(&mut ws, r#"{"type": "state"}"#).await,
        r#"{"type":"state","data":{"episode_id":"attached","step_count":1,"last_message":"attached-step"}}"#
    );
    send(&mut ws, r#"{"type": "close"}"#).await;
    recv_close(&mut ws).await;
    server.sessions_become(0).await;
    let (_, body) = server
        .http(
            "POST",
            "/mcp",
            &rpc("openenv/session/close", json!({"session_id": id}), 4),
        )
        .await;
    assert_eq!(
        body,
        format!(
            r#"{{"jsonrpc":"2.0","id":4,"error":{{"code":-32602,"message":"Unknown session_id: {id}","data":null}}}}"#
        )
    );
    // Unknown id on attach.
    let mut nope = server.connect_path("/ws?session_id=nope").await;
    let (texts, _) = recv_close(&mut nope).await;
    assert_eq!(
        texts,
        [
            r#"{"type":"error","data":{"message":"Unknown session_id: nope","code":"SESSION_ERROR"}}"#
        ]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn http_routes_match_the_official_server() {
    let server = TestServer::default().await;
    let cases = [
        ("GET", "/health", "", 200, r#"{"status":"healthy"}"#.to_owned()),
        (
            "GET",
            "/metadata",
            "",
            200,
            r#"{"name":"EchoEnvironment","description":"EchoEnvironment environment","readme_content":null,"version":"1.0.0","author":null,"documentation_url":null}"#.to_owned(),
        ),
        (
            "POST",
            "/reset",
            r#"{"seed":1,"episode_id":"http-ep"}"#,
            200,
            r#"{"observation":{"metadata":{"seed":1,"reset_kwargs":{}},"echoed_message":"ready","message_length":0},"reward":null,"done":false,"metadata":{"seed":1,"reset_kwargs":{}}}"#.to_owned(),
        ),
        (
            "POST",
            "/reset",
            r#"{"seed":-5}"#,
            422,
            r#"{"detail":[{"type":"greater_than_equal","loc":["body","seed"],"msg":"Input should be greater than or equal to 0","input":-5,"ctx":{"ge":0}}]}"#.to_owned(),
        ),
        (
            "POST",
            "/step",
            r#"{"action":{"message":"http"},"timeout_s":5,"request_id":"r1"}"#,
            200,
            r#"{"observation":{"metadata":{"step":1},"echoed_message":"http","message_length":4},"reward":0.4,"done":false,"metadata":{"step":1}}"#.to_owned(),
        ),
        (
            "POST",
            "/step",
            r#"{"action":{"msg":"bad"}}"#,
            422,
            r#"{"detail":[{"type":"missing","loc":["message"],"msg":"Field required","input":{"msg":"bad"},"url":"https://errors.pydantic.dev/2.14/v/missing"},{"type":"extra_forbidden","loc":["msg"],"msg":"Extra inputs are not permitted","input":"bad","url":"https://errors.pydantic.dev/2.14/v/extra_forbidden"}]}"#.to_owned(),
        ),
        ("POST", "/step", "{}", 422, r#"{"detail":[{"type":"missing","loc":["body","action"],"msg":"Field required","input":{}}]}"#.to_owned()),
        ("POST", "/step", r#"{"action":{"message":"raise"}}"#, 500, "Internal Server Error".to_owned()),
        ("POST", "/mcp", "{oops", 200, r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error","data":null}}"#.to_owned()),
        (
            "POST",
            "/mcp",
            r#"{"jsonrpc":"2.0","method":"nope","id":"a"}"#,
            200,
            r#"{"jsonrpc":"2.0","id":"a","error":{"code":-32601,"message":"Method not found: nope","data":null}}"#.to_owned(),
        ),
        ("GET", "/", "", 404, r#"{"detail":"Not Found"}"#.to_owned()),
        ("GET", "/ws", "", 404, r#"{"detail":"Not Found"}"#.to_owned()),
    ];
    for (method, path, body, status, expected) in cases {
        assert_eq!(
            server.http(method, path, body).await,
            (status, expected),
            "{method} {path} {body}"
        );
    }
    let (status, body) = server.http("GET", "/state", "").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["episode_id", "step_count", "last_message"]
    );
    let (_, body) = server.http("GET", "/schema", "").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    for key in ["action", "observation", "state", "reset_observation"] {
        assert!(v[key].is_object(), "schema lacks {key}");
    }
    let (_, body) = server.http("GET", "/openapi.json", "").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["info"]["version"].as_str().unwrap().starts_with("1."));
    for path in ["/reset", "/step", "/state"] {
        assert!(v["paths"][path].is_object(), "openapi lacks {path}");
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Issue 10: input that once panicked the server, protocol violations, the body limit.

#[tokio::test]
async fn non_ascii_outside_strings_is_invalid_json_and_the_session_survives() {
    let server = TestServer::default().await;
    let mut bystander = Bystander::new(&server).await;
    let mut ws = server.connect().await;
    // Each of these once panicked the parser (a byte index inside `é` or the BOM) and dropped
    // the connection without a close frame. Python's `json.loads` wording for each.
    let script = [
        ("é", "Expecting value: line 1 column 1 (char 0)"),
        (
            "\u{feff}{\"type\":\"state\"}",
            "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)",
        ),
        (
            "{\"type\":\"state\"}é",
            "Extra data: line 1 column 17 (char 16)",
        ),
        (
            "{\"type\": \"step\", \"data\": {\"message\": é}}",
            "Expecting value: line 1 column 38 (char 37)",
        ),
        ("\u{1F600}", "Expecting value: line 1 column 1 (char 0)"),
    ];
    for (sent, detail) in script {
        assert_eq!(
            request(&mut ws, sent).await,
            format!(
                r#"{{"type":"error","data":{{"message":"Invalid JSON: {detail}","code":"INVALID_JSON"}}}}"#
            ),
            "reply to {sent:?}"
        );
        bystander.still_steps().await;
    }
    // The same session still answers.
    let reply = request(
        &mut ws,
        r#"{"type":"step","data":{"message":"still here"}}"#,
    )
    .await;
    assert!(
        reply.contains(r#""echoed_message":"still here""#),
        "{reply}"
    );
    server.sessions_become(2).await;
    // The /mcp WebSocket answers the JSON-RPC parse error in Python layout.
    let mut mcp = server.connect_path("/mcp").await;
    assert_eq!(
        request(&mut mcp, "é").await,
        r#"{"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error: Expecting value: line 1 column 1 (char 0)", "data": null}}"#
    );
    assert!(
        request(
            &mut mcp,
            r#"{"jsonrpc": "2.0", "method": "tools/list", "id": 1}"#
        )
        .await
        .contains("echo_message")
    );
    server.assert_healthy().await;
    server.shutdown().await;
}

#[tokio::test]
async fn http_bodies_with_non_ascii_garbage_get_their_errors_not_a_500() {
    let server = TestServer::default().await;
    let parse_error = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error","data":null}}"#;
    for body in ["é", "{\"jsonrpc\":\"2.0\"}é", "\u{feff}é", "[1, é]"] {
        assert_eq!(
            server.http("POST", "/mcp", body).await,
            (200, parse_error.to_owned()),
            "POST /mcp {body:?}"
        );
    }
    // FastAPI reads the body's bytes with `json.loads`, which drops a leading BOM.
    let (status, body) = server
        .http(
            "POST",
            "/mcp",
            "\u{feff}{\"jsonrpc\":\"2.0\",\"method\":\"nope\",\"id\":1}",
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"Method not found: nope","data":null}}"#
        )
    );
    let invalid = |error: &str| {
        format!(
            r#"{{"detail":[{{"type":"json_invalid","loc":["body",0],"msg":"JSON decode error","input":{{}},"ctx":{{"error":"{error}"}}}}]}}"#
        )
    };
    assert_eq!(
        server.http("POST", "/reset", "é").await,
        (422, invalid("Expecting value"))
    );
    assert_eq!(
        server.http("POST", "/step", "{\"action\":{}}é").await,
        (422, invalid("Extra data"))
    );
    let (status, body) = server.http("POST", "/reset", "\u{feff}{\"seed\":3}").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""seed":3"#), "{body}");
    server.assert_healthy().await;
    server.shutdown().await;
}

/// A WebSocket on `/ws` opened by hand, to write frames no client library would.
struct RawWs(TcpStream);

impl RawWs {
    async fn open(server: &TestServer) -> Self {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tokio::time::timeout(WAIT, tcp.read_exact(&mut byte))
                .await
                .unwrap()
                .unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Self(tcp)
    }

    /// Writes one frame: `first` is the FIN/RSV/opcode byte; masked with a fixed key unless
    /// `masked` is false. Payloads stay under 126 bytes.
    async fn write_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        assert!(payload.len() < 126);
        let len = u8::try_from(payload.len()).unwrap();
        let mut frame = vec![first];
        if masked {
            let key = [0x37u8, 0xfa, 0x21, 0x3d];
            frame.push(0x80 | len);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.push(len);
            frame.extend_from_slice(payload);
        }
        self.0.write_all(&frame).await.unwrap();
    }

    /// Reads server frames until a close frame and returns its code and reason; `None` when
    /// the connection ends without one.
    async fn read_close(&mut self) -> Option<(u16, String)> {
        loop {
            let mut head = [0u8; 2];
            let read = tokio::time::timeout(WAIT, self.0.read_exact(&mut head))
                .await
                .expect("no close in time");
            if read.is_err() {
                return None;
            }
            let mut len = usize::from(head[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                self.0.read_exact(&mut ext).await.unwrap();
                len = usize::from(u16::from_be_bytes(ext));
            }
            assert!(len < 65536, "unexpected long frame");
            let mut payload = vec![0u8; len];
            self.0.read_exact(&mut payload).await.unwrap();
            if head[0] & 0x0f == 0x8 {
                assert!(payload.len() >= 2, "close frame without a code");
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return Some((code, String::from_utf8(payload[2..].to_vec()).unwrap()));
            }
        }
    }
}

#[tokio::test]
async fn protocol_violations_close_with_the_rfc_6455_code() {
    let server = TestServer::default().await;
    let mut bystander = Bystander::new(&server).await;
    // (what, FIN/RSV/opcode byte, payload, masked, close code)
    let cases: [(&str, u8, &[u8], bool, u16); 9] = [
        (
            "invalid UTF-8 text",
            0x81,
            b"{\"type\":\"state\"}\xff",
            true,
            1007,
        ),
        ("truncated UTF-8 sequence", 0x81, b"\xc3", true, 1007),
        ("reserved data opcode", 0x83, b"x", true, 1002),
        ("reserved control opcode", 0x8b, b"", true, 1002),
        (
            "RSV1 without an extension",
            0xc1,
            b"{\"type\":\"state\"}",
            true,
            1002,
        ),
        (
            "unmasked client frame",
            0x81,
            b"{\"type\":\"state\"}",
            false,
            1002,
        ),
        (
            "continuation with nothing to continue",
            0x80,
            b"x",
            true,
            1002,
        ),
        ("fragmented ping", 0x09, b"", true, 1002),
        (
            "invalid UTF-8 across fragments",
            0x01,
            b"\xe2\x82",
            true,
            1007,
        ),
    ];
    for (what, first, payload, masked, code) in cases {
        let mut raw = RawWs::open(&server).await;
        server.sessions_become(2).await;
        raw.write_frame(first, payload, masked).await;
        if first == 0x01 {
            // The second half: `\xe2\x82` + `(` is no UTF-8 sequence.
            raw.write_frame(0x80, b"(", true).await;
        }
        let close = raw.read_close().await;
        let (got, reason) = close.unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!(got, code, "{what}: close code (reason {reason:?})");
        assert!(reason.len() <= 123, "{what}: {reason}");
        assert!(
            !reason.contains('\u{fffd}') && !reason.contains("type"),
            "{what}: {reason}"
        );
        server.sessions_become(1).await;
        bystander.still_steps().await;
    }
    // A valid fragmented text message still works (the fragments join into one frame).
    let mut raw = RawWs::open(&server).await;
    raw.write_frame(0x01, b"{\"type\":", true).await;
    raw.write_frame(0x80, b"\"close\"}", true).await;
    assert_eq!(raw.read_close().await, Some((1000, String::new())));
    server.sessions_become(1).await;
    server.assert_healthy().await;
    server.shutdown().await;
}

#[tokio::test]
async fn http_bodies_over_the_limit_are_answered_413() {
    let limits = Limits {
        max_body_bytes: 1000,
        ..Limits::default()
    };
    let server = TestServer::start(limits).await;
    let detail = r#"{"detail":"Request body too large: the limit is 1000 bytes (--max-body-bytes, ENV_SERVER_MAX_BODY_BYTES)"}"#;
    let message = |n: usize| format!(r#"{{"action":{{"message":"{}"}}}}"#, "a".repeat(n));
    // Exactly at the limit is read; one byte more is not.
    let at_limit = message(1000 - message(0).len());
    assert_eq!(at_limit.len(), 1000);
    let (status, body) = server.http("POST", "/step", &at_limit).await;
    assert_eq!(status, 200, "{body}");
    let over = message(1001 - message(0).len());
    for path in ["/step", "/reset", "/mcp"] {
        assert_eq!(
            server.http("POST", path, &over).await,
            (413, detail.to_owned()),
            "POST {path}"
        );
    }
    // The WebSocket frame cap is separate: a frame over the body limit is fine.
    let mut ws = server.connect().await;
    let frame = format!(
        r#"{{"type":"step","data":{{"message":"{}"}}}}"#,
        "a".repeat(2000)
    );
    let reply = request(&mut ws, &frame).await;
    assert!(reply.contains(r#""message_length":2000"#), "{reply}");
    server.assert_healthy().await;
    server.shutdown().await;
}
