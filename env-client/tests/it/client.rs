//! `EnvClient` against scripted servers: official conversations replayed from the captures,
//! error frames, connect-time refusals, closes, timeouts, keepalive.

use std::sync::Arc;
use std::time::Duration;

use env_client::protocol::{
    ErrorCode, JsonMap, JsonRpcOutcome, JsonRpcRequest, Reward, ServerFrame, ToolErrorType,
};
use env_client::{ClientConfig, ClientError, EnvClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    DEADLINE, conversation, drain, expect_close_frame, expect_polite_close, recv_text, replay,
    send_close, send_text, serve_one,
};

fn map(value: Value) -> JsonMap {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// No keepalive task: the request path alone must handle what the server queued.
fn quiet() -> ClientConfig {
    ClientConfig::default().with_keepalive_interval(None)
}

async fn finish(task: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("server script finished")
        .expect("server script passed");
}

#[tokio::test]
async fn replays_the_official_010_generic_session() {
    let frames = conversation("oe010_generic", 1);
    let (url, server) =
        serve_one(move |mut ws| async move { replay(&mut ws, &frames).await }).await;
    let client = EnvClient::connect(&url).await.unwrap();
    assert!(client.url().ends_with("/ws"));

    let first = client
        .reset(map(
            json!({"seed": 42, "episode_id": "ep-capture-1", "difficulty": "easy"}),
        ))
        .await
        .unwrap();
    assert_eq!(
        first.observation.get("echoed_message"),
        Some(&json!("ready"))
    );
    assert_eq!(first.reward, None);
    assert!(!first.done);
    assert_eq!(
        first.metadata,
        Some(map(
            json!({"seed": 42, "reset_kwargs": {"difficulty": "easy"}})
        ))
    );
    for (message, reward, done) in [
        ("hello", 0.5, false),
        ("world", 0.5, false),
        ("bye", 0.3, true),
    ] {
        let step = client.step(map(json!({"message": message}))).await.unwrap();
        assert_eq!(
            step.observation.get("echoed_message"),
            Some(&json!(message))
        );
        assert_eq!(step.reward, Some(Reward::Float(reward)));
        assert_eq!(step.done, done);
    }
    let state = client.state().await.unwrap();
    assert_eq!(state.episode_id.as_deref(), Some("ep-capture-1"));
    assert_eq!(state.step_count, 3);
    assert_eq!(state.extra.get("last_message"), Some(&json!("bye")));
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn replays_the_official_030_generic_session() {
    let frames = conversation("core030_generic", 2);
    let (url, server) =
        serve_one(move |mut ws| async move { replay(&mut ws, &frames).await }).await;
    let client = EnvClient::connect_with(&url, quiet()).await.unwrap();
    let first = client.reset(JsonMap::new()).await.unwrap();
    assert_eq!(first.metadata, None, "0.3 servers send no metadata");
    assert_eq!(first.observation.metadata(), None);
    let step = client
        .step(map(json!({"message": "sync-hi"})))
        .await
        .unwrap();
    assert_eq!(step.reward, Some(Reward::Float(0.7)));
    let state = client.state().await.unwrap();
    assert_eq!(state.step_count, 1);
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn error_frame_is_a_typed_server_error_and_the_session_stays_open() {
    let frames = conversation("oe010_generic", 4);
    let (url, server) =
        serve_one(move |mut ws| async move { replay(&mut ws, &frames).await }).await;
    let client = EnvClient::connect(&url).await.unwrap();
    client.reset(JsonMap::new()).await.unwrap();
    let err = client
        .step(map(json!({"msg": "wrong field"})))
        .await
        .unwrap_err();
    let ClientError::Server {
        code,
        message,
        data,
    } = &err
    else {
        panic!("expected a server error, got {err:?}");
    };
    assert_eq!(*code, ErrorCode::ValidationError);
    assert_eq!(message, "Invalid message");
    assert_eq!(data.extra["errors"][0]["loc"], json!(["message"]));
    assert_eq!(err.code(), Some(ErrorCode::ValidationError));
    assert!(!err.is_fatal());
    let step = client
        .step(map(json!({"message": "after-error"})))
        .await
        .unwrap();
    assert_eq!(step.reward, Some(Reward::Float(1.1)));
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn execution_error_keeps_the_session() {
    let frames = conversation("core030_exec", 1);
    let (url, server) = serve_one(move |mut ws| async move {
        replay(&mut ws, &frames).await;
        expect_polite_close(&mut ws).await;
    })
    .await;
    let client = EnvClient::connect(&url).await.unwrap();
    let err = client
        .step(map(json!({"message": "raise"})))
        .await
        .unwrap_err();
    assert!(matches!(
        &err,
        ClientError::Server { code: ErrorCode::ExecutionError, message, .. } if message == "boom from env.step"
    ));
    client
        .step(map(json!({"message": "still-alive"})))
        .await
        .unwrap();
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn replays_the_official_010_mcp_session_over_ws() {
    // Conn 2: `mcp` frames, then step-path tools. The official 0.10 client also sends one
    // `call_tool` without `"type"`; this client always sends the type, so that pair is left out.
    let frames: Vec<_> = conversation("oe010_mcp", 2)
        .into_iter()
        .filter(|c| !c.text.contains("no type"))
        .collect();
    let (url, server) =
        serve_one(move |mut ws| async move { replay(&mut ws, &frames).await }).await;
    let client = EnvClient::connect(&url).await.unwrap();

    let listed = client
        .mcp(JsonRpcRequest::new("tools/list", JsonMap::new(), 1))
        .await
        .unwrap();
    let JsonRpcOutcome::Result(result) = &listed.outcome else {
        panic!("tools/list failed: {listed:?}");
    };
    assert_eq!(result["tools"][0]["name"], json!("echo_message"));
    let call = JsonRpcRequest::new(
        "tools/call",
        map(json!({"name": "echo_with_length", "arguments": {"message": "abc"}})),
        2,
    );
    let called = client.mcp(call).await.unwrap();
    assert!(
        matches!(&called.outcome, JsonRpcOutcome::Result(r) if r["data"] == json!({"message": "abc", "length": 3}))
    );
    let call = JsonRpcRequest::new(
        "tools/call",
        map(json!({"name": "nope", "arguments": {}})),
        3,
    );
    let failed = client.mcp(call).await.unwrap();
    assert!(matches!(&failed.outcome, JsonRpcOutcome::Error(e) if e.code == -32603));

    let raw = client
        .call_tool("echo_message", map(json!({"message": "raw step"})))
        .await
        .unwrap();
    assert_eq!(raw.value, json!("raw step"));
    assert_eq!(raw.result.as_ref().map(|r| r.is_error), Some(false));
    assert_eq!(
        raw.observation.get("tool_name"),
        Some(&json!("echo_message"))
    );
    assert_eq!(raw.reward, None);
    assert!(!raw.done);

    let tools = client.list_tools().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["echo_message", "echo_with_length"]);
    assert_eq!(tools[0].input_schema["required"], json!(["message"]));

    let err = client.call_tool("nope", JsonMap::new()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Tool { error_type: ToolErrorType::ToolNotFound, message } if message == "Unknown tool: 'nope'"),
        "{err:?}"
    );
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn replays_the_official_030_mcp_step_session() {
    let frames = conversation("core030_mcp", 1);
    let (url, server) =
        serve_one(move |mut ws| async move { replay(&mut ws, &frames).await }).await;
    let client = EnvClient::connect(&url).await.unwrap();
    let reset = client.reset(JsonMap::new()).await.unwrap();
    assert_eq!(reset.reward, Some(Reward::Float(0.0)));
    assert_eq!(client.list_tools().await.unwrap().len(), 2);
    let hello = client
        .call_tool("echo_message", map(json!({"message": "Hello!"})))
        .await
        .unwrap();
    assert_eq!(hello.value, json!("Hello!"));
    let object = client
        .call_tool("echo_with_length", map(json!({"message": "Test"})))
        .await
        .unwrap();
    assert_eq!(object.value, json!({"message": "Test", "length": 4}));
    let err = client
        .call_tool("nope", map(json!({"x": 1})))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ClientError::Tool {
            error_type: ToolErrorType::ToolNotFound,
            ..
        }
    ));
    let via_step = client
        .call_tool("echo_message", map(json!({"message": "via step"})))
        .await
        .unwrap();
    assert_eq!(via_step.value, json!("via step"));
    client.list_tools().await.unwrap();
    assert_eq!(client.state().await.unwrap().step_count, 6);
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn raw_requests_return_error_frames_as_frames() {
    // The official error-case connection, byte for byte, ending in SESSION_ERROR + close.
    let frames = conversation("oe010_generic", 5);
    let script = frames.clone();
    let (url, server) = serve_one(move |mut ws| async move {
        for frame in &script {
            if frame.text == r#"{"type": "close"}"# {
                break; // the server closed after SESSION_ERROR; the client sends nothing more
            }
            if frame.from_client {
                assert_eq!(recv_text(&mut ws).await, frame.text);
            } else {
                send_text(&mut ws, &frame.text).await;
            }
        }
        send_close(&mut ws, 1000, "").await;
        drain(&mut ws).await;
    })
    .await;
    let client = EnvClient::connect(&url).await.unwrap();
    let pairs = frames
        .chunks(2)
        .take_while(|pair| pair[0].text != r#"{"type": "close"}"#);
    let mut last_code = None;
    for pair in pairs {
        let (request, reply) = (&pair[0], &pair[1]);
        assert!(request.from_client && !reply.from_client);
        let frame = client.request_raw(request.text.clone()).await.unwrap();
        assert_eq!(serde_json::to_string(&frame).unwrap(), reply.text);
        last_code = match frame {
            ServerFrame::Error(data) => Some(data.code),
            _ => None,
        };
    }
    assert_eq!(last_code, Some(ErrorCode::SessionError));
    // SESSION_ERROR is fatal: later calls fail at once with the same cause.
    let err = client.state().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SessionError));
    client.close().await.unwrap();
    finish(server).await;
}

/// A server that refuses the session right after the handshake (error frame, close 1000),
/// then hangs up, before the client sends anything.
async fn refusing_server(frame: &'static str) -> (String, oneshot::Receiver<()>) {
    let (done, refused) = oneshot::channel();
    let (url, _task) = serve_one(move |mut ws| async move {
        send_text(&mut ws, frame).await;
        send_close(&mut ws, 1000, "").await;
        drop(ws);
        let _ = done.send(());
    })
    .await;
    (url, refused)
}

const CAPACITY: &str = r#"{"type":"error","data":{"message":"Server at capacity: 1/1 sessions active. Cannot accept new connections.","code":"CAPACITY_REACHED","active_sessions":1,"max_sessions":1}}"#;

#[tokio::test]
async fn capacity_refusal_queued_before_the_first_request_is_a_server_error() {
    for config in [
        quiet(),
        ClientConfig::default().with_keepalive_interval(Some(Duration::from_millis(5))),
    ] {
        let (url, refused) = refusing_server(CAPACITY).await;
        let client = EnvClient::connect_with(&url, config).await.unwrap();
        refused.await.unwrap(); // the frame and the close are sent, the socket is gone
        let err = client.reset(JsonMap::new()).await.unwrap_err();
        let ClientError::Server {
            code,
            message,
            data,
        } = &err
        else {
            panic!("expected CAPACITY_REACHED, got {err:?}");
        };
        assert_eq!(*code, ErrorCode::CapacityReached);
        assert!(message.starts_with("Server at capacity: 1/1"));
        assert_eq!(data.extra["max_sessions"], json!(1));
        assert!(err.is_fatal());
        // Sticky: the next call reports the same cause at once.
        let again = client.step(map(json!({"message": "x"}))).await.unwrap_err();
        assert_eq!(again.code(), Some(ErrorCode::CapacityReached));
        client.close().await.unwrap();
    }
}

#[tokio::test]
async fn capacity_refusal_racing_the_first_request_is_still_a_server_error() {
    // The server refuses, then resets the connection (no FIN, zero linger): depending on what
    // the client has read when it sends, the send itself fails, and the reason must still be
    // found in the receive buffer. Repeated, and without waiting for the server, to vary the race.
    for round in 0..10 {
        let (done, refused) = oneshot::channel();
        let (url, _task) = serve_one(move |mut ws| async move {
            ws.get_ref().set_zero_linger().unwrap();
            send_text(&mut ws, CAPACITY).await;
            send_close(&mut ws, 1000, "").await;
            drop(ws);
            let _ = done.send(());
        })
        .await;
        let client = EnvClient::connect_with(&url, quiet()).await.unwrap();
        if round % 2 == 0 {
            refused.await.unwrap();
        }
        let err = client.reset(JsonMap::new()).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::CapacityReached),
            "round {round}: {err:?}"
        );
    }
}

#[tokio::test]
async fn raw_request_sees_the_refusal_frame_once() {
    let (url, refused) = refusing_server(CAPACITY).await;
    let client = EnvClient::connect_with(&url, quiet()).await.unwrap();
    refused.await.unwrap();
    let frame = client
        .request_raw(r#"{"type":"state"}"#.to_owned())
        .await
        .unwrap();
    assert_eq!(serde_json::to_string(&frame).unwrap(), CAPACITY);
    let err = client
        .request_raw(r#"{"type":"state"}"#.to_owned())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CapacityReached));
}

#[tokio::test]
async fn factory_error_with_a_polite_server_is_reported_by_the_first_call() {
    let frame = conversation("core030_factory", 1).remove(0).text;
    let (url, server) = serve_one(move |mut ws| async move {
        send_text(&mut ws, &frame).await;
        send_close(&mut ws, 1000, "").await;
        drain(&mut ws).await;
    })
    .await;
    let client = EnvClient::connect_with(&url, quiet()).await.unwrap();
    let err = client.step(map(json!({"message": "x"}))).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FactoryError), "{err:?}");
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
#[allow(clippy::result_large_err)] // tungstenite's handshake callback signature
async fn attach_url_keeps_its_query_and_reports_session_error() {
    let frames = conversation("oe010_attach", 3);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (uri_tx, uri_rx) = std::sync::mpsc::channel();
        let callback =
            move |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                  response| {
                uri_tx.send(request.uri().to_string()).unwrap();
                Ok(response)
            };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
            .await
            .unwrap();
        assert_eq!(uri_rx.recv().unwrap(), "/ws?session_id=nope");
        send_text(&mut ws, &frames[0].text).await;
        send_close(&mut ws, 1000, "").await;
        drain(&mut ws).await;
    });
    let client = EnvClient::connect(&format!("ws://{addr}/ws?session_id=nope"))
        .await
        .unwrap();
    assert_eq!(client.url(), format!("ws://{addr}/ws?session_id=nope"));
    let err = client.reset(JsonMap::new()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code: ErrorCode::SessionError, message, .. } if message == "Unknown session_id: nope"),
        "{err:?}"
    );
    finish(server).await;
}

#[tokio::test]
async fn verify_happy_path() {
    let (url, server) = serve_one(|mut ws| async move {
        assert_eq!(recv_text(&mut ws).await, r#"{"type":"verify","data":{}}"#);
        send_text(
            &mut ws,
            r#"{"type":"verify","data":{"reward":1.0,"done":true,"details":{"step_count":2}}}"#,
        )
        .await;
        expect_polite_close(&mut ws).await;
    })
    .await;
    let client = EnvClient::connect(&url).await.unwrap();
    let verdict = client.verify().await.unwrap();
    assert_eq!(verdict.reward, 1.0);
    assert!(verdict.done);
    assert_eq!(verdict.details.get("step_count"), Some(&json!(2)));
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn verify_on_a_server_without_it_is_unsupported_and_the_session_survives() {
    let (url, server) = serve_one(|mut ws| async move {
        assert_eq!(recv_text(&mut ws).await, r#"{"type":"verify","data":{}}"#);
        send_text(
            &mut ws,
            r#"{"type":"error","data":{"message":"Unknown message type: verify","code":"UNKNOWN_TYPE"}}"#,
        )
        .await;
        assert_eq!(recv_text(&mut ws).await, r#"{"type":"state"}"#);
        send_text(&mut ws, r#"{"type":"state","data":{"episode_id":null,"step_count":0}}"#).await;
        expect_polite_close(&mut ws).await;
    })
    .await;
    let client = EnvClient::connect(&url).await.unwrap();
    let err = client.verify().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Unsupported { feature: "verify" }),
        "{err:?}"
    );
    assert_eq!(err.code(), Some(ErrorCode::UnknownType));
    let state = client.state().await.unwrap();
    assert_eq!(state.episode_id, None);
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn server_close_mid_request_is_closed_with_its_code() {
    let (url, server) = serve_one(|mut ws| async move {
        recv_text(&mut ws).await;
        send_close(&mut ws, 1011, "keepalive ping timeout").await;
        drain(&mut ws).await;
    })
    .await;
    let client = EnvClient::connect(&url).await.unwrap();
    let err = client.step(map(json!({"message": "x"}))).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Closed { code: Some(1011), reason } if reason == "keepalive ping timeout"),
        "{err:?}"
    );
    let again = client.state().await.unwrap_err();
    assert!(
        matches!(
            again,
            ClientError::Closed {
                code: Some(1011),
                ..
            }
        ),
        "{again:?}"
    );
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn server_vanishing_mid_request_is_closed() {
    let (url, server) = serve_one(|mut ws| async move {
        recv_text(&mut ws).await;
        drop(ws); // no close frame
    })
    .await;
    let client = EnvClient::connect(&url).await.unwrap();
    let err = client.step(map(json!({"message": "x"}))).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Closed { code: None, .. }),
        "{err:?}"
    );
    assert!(matches!(
        client.state().await,
        Err(ClientError::Closed { .. })
    ));
    finish(server).await;
}

#[tokio::test]
async fn request_timeout_abandons_the_connection() {
    let timeout = Duration::from_millis(150);
    let (url, server) = serve_one(|mut ws| async move {
        assert_eq!(
            recv_text(&mut ws).await,
            r#"{"type":"step","data":{"message":"slow"}}"#
        );
        // Never answer. The client gives up and closes; nothing else arrives.
        expect_close_frame(&mut ws, None).await;
    })
    .await;
    let config = quiet().with_request_timeout(Some(timeout));
    let client = EnvClient::connect_with(&url, config).await.unwrap();
    let err = client
        .step(map(json!({"message": "slow"})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { op: "step", after } if after == timeout),
        "{err:?}"
    );
    assert!(err.is_fatal());
    // Unusable from now on: an immediate `Closed`, not another wait for a reply.
    let next = client.state().await.unwrap_err();
    assert!(
        matches!(&next, ClientError::Closed { code: None, reason } if reason.contains("timed out")),
        "{next:?}"
    );
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn a_cancelled_request_never_pairs_its_reply_with_the_next_call() {
    let (release, released) = oneshot::channel::<()>();
    let (url, server) = serve_one(move |mut ws| async move {
        assert_eq!(
            recv_text(&mut ws).await,
            r#"{"type":"step","data":{"message":"first"}}"#
        );
        released.await.unwrap();
        // The late reply to the cancelled request.
        let _ = ws
            .send(Message::text(crate::support::observation("first", 1)))
            .await;
        drain(&mut ws).await;
    })
    .await;
    let client = EnvClient::connect_with(&url, quiet()).await.unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        client.step(map(json!({"message": "first"}))),
    )
    .await;
    assert!(cancelled.is_err(), "the caller gave up");
    release.send(()).unwrap();
    let err = client
        .step(map(json!({"message": "second"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Closed { reason, .. } if reason.contains("cancelled")),
        "{err:?}"
    );
    drop(client);
    finish(server).await;
}

#[tokio::test]
async fn concurrent_calls_on_one_client_get_their_own_replies() {
    let sessions = Arc::new(crate::support::Sessions::default());
    let url = crate::support::serve_many({
        let sessions = Arc::clone(&sessions);
        move |ws| crate::support::echo_session(ws, Arc::clone(&sessions))
    })
    .await;
    let client = Arc::new(EnvClient::connect(&url).await.unwrap());
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let client = Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let message = format!("w{worker}-{i}");
                let step = client.step(map(json!({"message": message}))).await.unwrap();
                assert_eq!(
                    step.observation.get("echoed_message"),
                    Some(&json!(message))
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(client.state().await.unwrap().step_count, 150);
    // Shared owners close through `shutdown`; the client is then closed for everyone.
    client.shutdown().await.unwrap();
    assert!(matches!(
        client.state().await,
        Err(ClientError::Closed {
            code: Some(1000),
            ..
        })
    ));
}

#[tokio::test]
async fn oversized_reply_is_a_protocol_error() {
    let (url, server) = serve_one(|mut ws| async move {
        recv_text(&mut ws).await;
        let big = crate::support::observation(&"x".repeat(4096), 1);
        let _ = ws.send(Message::text(big)).await;
        drain(&mut ws).await;
    })
    .await;
    let config = quiet().with_max_message_bytes(1024);
    let client = EnvClient::connect_with(&url, config).await.unwrap();
    let err = client.step(map(json!({"message": "x"}))).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol { message } if message.contains("max_message_bytes")),
        "{err:?}"
    );
    assert!(client.state().await.unwrap_err().is_fatal());
    drop(client);
    finish(server).await;
}

#[tokio::test]
async fn a_reply_many_times_the_read_buffer_arrives_whole() {
    let text = "y".repeat(300 * 1024);
    let sent = text.clone();
    let (url, server) = serve_one(move |mut ws| async move {
        recv_text(&mut ws).await;
        let big = crate::support::observation(&sent, 1);
        ws.send(Message::text(big)).await.unwrap();
        drain(&mut ws).await;
    })
    .await;
    let config = quiet().with_read_buffer_bytes(1024);
    let client = EnvClient::connect_with(&url, config).await.unwrap();
    let step = client.step(map(json!({"message": "x"}))).await.unwrap();
    assert_eq!(step.observation.get("echoed_message"), Some(&json!(text)));
    drop(client);
    finish(server).await;
}

#[tokio::test]
async fn the_socket_hook_is_told_the_connection_socket() {
    let (url, server) = serve_one(move |mut ws| async move {
        recv_text(&mut ws).await;
        ws.send(Message::text(crate::support::observation("ok", 1)))
            .await
            .unwrap();
        drain(&mut ws).await;
    })
    .await;
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let record = Arc::clone(&seen);
    let hook = env_client::SocketHook::new(move |fd| {
        // What the descriptor is, while the client holds it open.
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        record
            .lock()
            .unwrap()
            .push(target.to_string_lossy().into_owned());
    });
    let config = quiet().with_on_socket(Some(hook.clone()));
    assert_eq!(config, quiet().with_on_socket(Some(hook)));
    assert_ne!(config, quiet());
    let client = EnvClient::connect_with(&url, config).await.unwrap();
    let step = client.step(map(json!({"message": "x"}))).await.unwrap();
    assert_eq!(step.observation.get("echoed_message"), Some(&json!("ok")));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one connection, one call: {seen:?}");
    assert!(seen[0].starts_with("socket:["), "{seen:?}");
    drop(client);
    finish(server).await;
}

#[tokio::test]
async fn a_tiny_read_buffer_is_an_invalid_config() {
    let config = ClientConfig::default().with_read_buffer_bytes(16);
    let err = EnvClient::connect_with("ws://127.0.0.1:9/ws", config)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidConfig { reason } if reason.contains("read_buffer_bytes")),
        "{err:?}"
    );
}

#[tokio::test]
async fn connect_refused_is_a_connect_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = EnvClient::connect(&format!("http://{addr}"))
        .await
        .unwrap_err();
    let ClientError::Connect { url, source } = &err else {
        panic!("expected a connect error, got {err:?}");
    };
    assert_eq!(url, &format!("ws://{addr}/ws"));
    assert!(source.to_string().contains("refused"), "{source}");
}

#[tokio::test]
async fn connect_timeout_is_typed() {
    // The kernel accepts the TCP connection (backlog); nobody answers the handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limit = Duration::from_millis(200);
    let config = ClientConfig::default().with_connect_timeout(limit);
    let err = EnvClient::connect_with(&format!("{addr}"), config)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { op: "connect", after } if after == limit),
        "{err:?}"
    );
    drop(listener);
}

#[tokio::test]
async fn handshake_rejection_is_a_connect_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
        let body = r#"{"detail":"Not Found"}"#;
        let response = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(response.as_bytes()).await.unwrap();
    });
    let err = EnvClient::connect(&format!("http://{addr}/nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Connect { source, .. } if source.to_string().contains("404")),
        "{err:?}"
    );
}

#[tokio::test]
async fn tls_and_bad_urls_are_typed_errors() {
    let err = EnvClient::connect("https://127.0.0.1:9").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidUrl { reason, .. } if reason.contains("TLS")),
        "{err:?}"
    );
    let err = EnvClient::connect("wss://example.invalid/ws")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidUrl { .. }), "{err:?}");
    let err = EnvClient::connect("ftp://127.0.0.1:9").await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn keepalive_answers_pings_while_idle() {
    let (got_pong, pong_seen) = oneshot::channel();
    let (url, server) = serve_one(move |mut ws| async move {
        ws.send(Message::Ping("ka".into())).await.unwrap();
        // Wait (bounded) for the pong; the client makes no call meanwhile.
        let pong = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a pong while the client is idle");
        let Some(Ok(Message::Pong(pong))) = pong else {
            panic!("expected a pong while the client is idle, got {pong:?}");
        };
        assert_eq!(&pong[..], b"ka");
        got_pong.send(()).unwrap();
        // The session still works.
        assert_eq!(recv_text(&mut ws).await, r#"{"type":"state"}"#);
        send_text(
            &mut ws,
            r#"{"type":"state","data":{"episode_id":"e","step_count":0}}"#,
        )
        .await;
        expect_polite_close(&mut ws).await;
    })
    .await;
    let config = ClientConfig::default().with_keepalive_interval(Some(Duration::from_millis(10)));
    let client = EnvClient::connect_with(&url, config).await.unwrap();
    // Idle until the server has its pong.
    tokio::time::timeout(DEADLINE, pong_seen)
        .await
        .expect("pong within the deadline")
        .unwrap();
    assert_eq!(
        client.state().await.unwrap().episode_id.as_deref(),
        Some("e")
    );
    client.close().await.unwrap();
    finish(server).await;
}

#[tokio::test]
async fn keepalive_picks_up_an_idle_close_for_the_next_call() {
    // E3: the server's idle timeout sends SESSION_ERROR and closes while the client is idle.
    let (url, server) = serve_one(|mut ws| async move {
        send_text(
            &mut ws,
            r#"{"type":"error","data":{"message":"Session idle for 900 s; closed","code":"SESSION_ERROR"}}"#,
        )
        .await;
        send_close(&mut ws, 1000, "").await;
        // The keepalive task reads the close and answers it, with no call from the client.
        loop {
            match tokio::time::timeout(DEADLINE, ws.next()).await.expect("close reply") {
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => continue,
                Some(Err(_)) => break,
            }
        }
    })
    .await;
    let config = ClientConfig::default().with_keepalive_interval(Some(Duration::from_millis(10)));
    let client = EnvClient::connect_with(&url, config).await.unwrap();
    finish(server).await;
    let err = client.step(map(json!({"message": "x"}))).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SessionError), "{err:?}");
    client.close().await.unwrap();
}

#[tokio::test]
async fn frames_we_send() {
    let (url, server) = serve_one(|mut ws| async move {
        let mut sent = Vec::new();
        for _ in 0..8 {
            let text = recv_text(&mut ws).await;
            let frame: Value = serde_json::from_str(&text).unwrap();
            let reply = match (frame["type"].as_str().unwrap(), frame["data"]["type"].as_str()) {
                ("reset" | "step", Some("list_tools")) => {
                    r#"{"type":"observation","data":{"observation":{"metadata":{},"tools":[]},"reward":null,"done":false}}"#.to_owned()
                }
                ("step", Some("call_tool")) => {
                    r#"{"type":"observation","data":{"observation":{"metadata":{},"tool_name":"t","result":{"data":1},"error":null},"reward":null,"done":false}}"#.to_owned()
                }
                ("reset" | "step", _) => crate::support::observation("ok", 0),
                ("state", _) => r#"{"type":"state","data":{"episode_id":null,"step_count":0}}"#.to_owned(),
                ("verify", _) => r#"{"type":"verify","data":{"reward":0.0,"done":false,"details":{}}}"#.to_owned(),
                ("mcp", _) => r#"{"type":"mcp","data":{"jsonrpc":"2.0","id":7,"result":{}}}"#.to_owned(),
                (other, _) => panic!("unexpected frame type {other}"),
            };
            sent.push(text);
            send_text(&mut ws, &reply).await;
        }
        sent.push(recv_text(&mut ws).await);
        expect_close_frame(&mut ws, Some(1000)).await;
        insta::assert_snapshot!(sent.join("\n"), @r#"
        {"type":"reset","data":{}}
        {"type":"reset","data":{"seed":7,"episode_id":"ep"}}
        {"type":"step","data":{"message":"héllo ✓"}}
        {"type":"state"}
        {"type":"verify","data":{}}
        {"type":"step","data":{"type":"list_tools"}}
        {"type":"step","data":{"type":"call_tool","tool_name":"t","arguments":{"x":1}}}
        {"type":"mcp","data":{"jsonrpc":"2.0","method":"tools/list","params":{},"id":7}}
        {"type":"close"}
        "#);
    })
    .await;
    let client = EnvClient::connect(&url).await.unwrap();
    client.reset(JsonMap::new()).await.unwrap();
    client
        .reset(map(json!({"seed": 7, "episode_id": "ep"})))
        .await
        .unwrap();
    client
        .step(map(json!({"message": "héllo ✓"})))
        .await
        .unwrap();
    client.state().await.unwrap();
    client.verify().await.unwrap();
    client.list_tools().await.unwrap();
    assert_eq!(
        client
            .call_tool("t", map(json!({"x": 1})))
            .await
            .unwrap()
            .value,
        json!(1)
    );
    client
        .mcp(JsonRpcRequest::new("tools/list", JsonMap::new(), 7))
        .await
        .unwrap();
    client.close().await.unwrap();
    finish(server).await;
}
