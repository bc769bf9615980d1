//! The Rust client against the real server binary: whole episodes, typed errors, the
//! pool across two servers, and keepalive while the trainer is busy elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use e2e_tests::{ServerProcess, obj};
use env_client::protocol::{ErrorCode, Reward, ToolErrorType};
use env_client::{ClientConfig, ClientError, EnvClient, Pool};
use serde_json::{Value, json};

#[tokio::test]
async fn a_whole_episode_through_the_rust_client() {
    let server = ServerProcess::start(&["--env", "echo"]).await;
    let client = EnvClient::connect(&server.url()).await.unwrap();
    let reset = client
        .reset(obj(
            json!({"seed": 42, "episode_id": "rust-ep", "difficulty": "easy"}),
        ))
        .await
        .unwrap();
    assert_eq!(
        reset.observation.get("echoed_message"),
        Some(&json!("ready"))
    );
    assert_eq!(reset.reward, None);
    assert!(!reset.done);
    assert_eq!(
        reset.metadata,
        Some(obj(
            json!({"seed": 42, "reset_kwargs": {"difficulty": "easy"}})
        ))
    );

    let step = client.step(obj(json!({"message": "hello"}))).await.unwrap();
    assert_eq!(step.reward, Some(Reward::Float(0.5)));
    assert_eq!(step.observation.get("message_length"), Some(&json!(5)));
    let bye = client.step(obj(json!({"message": "bye"}))).await.unwrap();
    assert!(bye.done);

    let state = client.state().await.unwrap();
    assert_eq!(state.episode_id.as_deref(), Some("rust-ep"));
    assert_eq!(state.step_count, 2);
    assert_eq!(state.extra.get("last_message"), Some(&json!("bye")));

    let verified = client.verify().await.unwrap();
    assert_eq!((verified.reward, verified.done), (0.3, true));
    assert_eq!(verified.details.get("step_count"), Some(&json!(2)));

    let tools = client.list_tools().await.unwrap();
    assert_eq!(
        tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["echo_message"]
    );
    assert_eq!(tools[0].input_schema["required"], json!(["message"]));
    let call = client
        .call_tool("echo_message", obj(json!({"message": "via rust"})))
        .await
        .unwrap();
    assert_eq!(call.value, json!("via rust"));
    client.close().await.unwrap();
}

#[tokio::test]
async fn server_errors_are_typed_and_leave_the_session_usable() {
    let server = ServerProcess::start(&["--env", "echo"]).await;
    let client = EnvClient::connect(&server.url()).await.unwrap();
    client.reset(obj(json!({}))).await.unwrap();

    let err = client
        .step(obj(json!({"message": "raise"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code: ErrorCode::ExecutionError, message, .. } if message == "boom from env.step"),
        "{err:?}"
    );
    let err = client.step(obj(json!({"msg": "wrong"}))).await.unwrap_err();
    let ClientError::Server {
        code: ErrorCode::ValidationError,
        data,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(data.extra["errors"][0]["type"], json!("missing"));
    let err = client.call_tool("nope", obj(json!({}))).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Tool {
                error_type: ToolErrorType::ToolNotFound,
                ..
            }
        ),
        "{err:?}"
    );

    // The session survived every one of them.
    assert_eq!(
        client
            .step(obj(json!({"message": "ok"})))
            .await
            .unwrap()
            .reward,
        Some(Reward::Float(0.2))
    );
    client.close().await.unwrap();
}

#[tokio::test]
async fn capacity_is_reported_as_a_typed_error() {
    let server = ServerProcess::start(&["--env", "echo", "--max-sessions", "1"]).await;
    let first = EnvClient::connect(&server.url()).await.unwrap();
    first.reset(obj(json!({}))).await.unwrap();
    let second = EnvClient::connect(&server.url()).await.unwrap();
    let err = second.reset(obj(json!({}))).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CapacityReached), "{err:?}");
    first.close().await.unwrap();
    // The slot is free again once the first session is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let third = EnvClient::connect(&server.url()).await.unwrap();
        match third.reset(obj(json!({}))).await {
            Ok(_) => break,
            Err(e)
                if e.code() == Some(ErrorCode::CapacityReached)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn the_pool_spreads_episodes_over_servers_within_their_caps() {
    let a = ServerProcess::start(&["--env", "echo", "--max-sessions", "4"]).await;
    let b = ServerProcess::start(&["--env", "echo", "--max-sessions", "4"]).await;
    let pool = Pool::new([a.url(), b.url()], 4).unwrap();
    assert_eq!(pool.capacity(), 8);
    let results = pool
        .run(64, async |client: &EnvClient, i: usize| {
            client
                .reset(obj(json!({"episode_id": format!("ep-{i}")})))
                .await?;
            let step = client
                .step(obj(json!({"message": format!("m{i}")})))
                .await?;
            Ok::<_, ClientError>((client.url().to_owned(), step.reward))
        })
        .await;
    assert_eq!(results.len(), 64);
    let mut per_server = std::collections::HashMap::new();
    for r in results {
        let (url, reward) = r.unwrap();
        assert!(matches!(reward, Some(Reward::Float(_))));
        *per_server.entry(url).or_insert(0) += 1;
    }
    assert_eq!(
        per_server.len(),
        2,
        "both servers served episodes: {per_server:?}"
    );
    // A server never saw more than its cap at once: neither refused a session.
    for slots in pool.stats() {
        assert_eq!(slots.in_use, 0);
    }
}

#[tokio::test]
async fn an_idle_client_answers_keepalive_pings() {
    let server = ServerProcess::start(&[
        "--env",
        "echo",
        "--keepalive-interval-s",
        "1",
        "--keepalive-timeout-s",
        "1",
    ])
    .await;
    let config = ClientConfig::default().with_keepalive_interval(Some(Duration::from_millis(200)));
    let client = EnvClient::connect_with(&server.url(), config)
        .await
        .unwrap();
    client.reset(obj(json!({}))).await.unwrap();
    // Busy elsewhere (generation) for several keepalive periods: the background task answers
    // the server's pings, so the session survives.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let step = client
        .step(obj(json!({"message": "still here"})))
        .await
        .unwrap();
    assert_eq!(step.observation.get("metadata"), Some(&json!({"step": 1})));
    assert_eq!(
        step.observation.get("echoed_message"),
        Some(&Value::from("still here"))
    );
    client.close().await.unwrap();
}
