//! `Pool` against counting echo servers: per-server caps, spreading, waiting, freed slots.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use env_client::protocol::{ErrorCode, JsonMap};
use env_client::{ClientConfig, ClientError, Pool};
use futures_util::FutureExt;
use serde_json::json;

use crate::support::{DEADLINE, Sessions, echo_session, send_close, send_text, serve_many};

fn action(message: &str) -> JsonMap {
    let mut map = JsonMap::new();
    map.insert("message".into(), json!(message));
    map
}

async fn echo_server() -> (String, Arc<Sessions>) {
    let sessions = Arc::new(Sessions::default());
    let counter = Arc::clone(&sessions);
    let url = serve_many(move |ws| echo_session(ws, Arc::clone(&counter))).await;
    (url, sessions)
}

/// A server at capacity: every connection gets CAPACITY_REACHED, then close 1000.
async fn full_server() -> (String, Arc<Sessions>) {
    let sessions = Arc::new(Sessions::default());
    let counter = Arc::clone(&sessions);
    let url = serve_many(move |mut ws| {
        let counter = Arc::clone(&counter);
        async move {
            counter.opened();
            send_text(
                &mut ws,
                r#"{"type":"error","data":{"message":"Server at capacity: 1/1 sessions active. Cannot accept new connections.","code":"CAPACITY_REACHED","active_sessions":1,"max_sessions":1}}"#,
            )
            .await;
            counter.closed();
            send_close(&mut ws, 1000, "").await;
            crate::support::drain(&mut ws).await;
        }
    })
    .await;
    (url, sessions)
}

fn in_use(pool: &Pool) -> Vec<usize> {
    pool.stats().into_iter().map(|s| s.in_use).collect()
}

#[tokio::test]
async fn run_respects_the_cap_on_every_server() {
    let (a_url, a) = echo_server().await;
    let (b_url, b) = echo_server().await;
    let pool = Pool::new([&a_url, &b_url], 2).unwrap();
    assert_eq!(pool.capacity(), 4);
    let results = pool
        .run(24, async |client, episode| {
            client.reset(JsonMap::new()).await?;
            let mut last = None;
            for i in 0..3 {
                let step = client.step(action(&format!("{episode}-{i}"))).await?;
                last = step.observation.get("echoed_message").cloned();
            }
            Ok((episode, last))
        })
        .await;
    assert_eq!(results.len(), 24);
    for (index, result) in results.into_iter().enumerate() {
        let (episode, last) = result.unwrap();
        assert_eq!(episode, index, "results come back in episode order");
        assert_eq!(last, Some(json!(format!("{index}-2"))));
    }
    for server in [&a, &b] {
        assert!(
            server.peak.load(Ordering::SeqCst) <= 2,
            "cap exceeded: {server:?}"
        );
        assert!(
            server.total.load(Ordering::SeqCst) >= 1,
            "both servers get work: {server:?}"
        );
    }
    assert_eq!(
        a.total.load(Ordering::SeqCst) + b.total.load(Ordering::SeqCst),
        24
    );
    assert_eq!(in_use(&pool), [0, 0]);
}

#[tokio::test]
async fn acquire_prefers_the_freest_server_and_waits_when_all_are_full() {
    let (a_url, _a) = echo_server().await;
    let (b_url, _b) = echo_server().await;
    let pool = Pool::new([a_url, b_url], 2).unwrap();
    let first = pool.acquire().await.unwrap();
    let second = pool.acquire().await.unwrap();
    assert_ne!(
        first.server_index(),
        second.server_index(),
        "spread over both servers"
    );
    assert_eq!(in_use(&pool), [1, 1]);
    let third = pool.acquire().await.unwrap();
    let fourth = pool.acquire().await.unwrap();
    assert_ne!(third.server_index(), fourth.server_index());
    assert_eq!(in_use(&pool), [2, 2]);

    // Full: the next acquire waits for a slot and takes nothing meanwhile.
    let mut waiting = std::pin::pin!(pool.acquire());
    assert!(waiting.as_mut().now_or_never().is_none());
    assert_eq!(in_use(&pool), [2, 2]);
    let freed = second.server_index();
    second.close().await.unwrap();
    let fifth = tokio::time::timeout(DEADLINE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fifth.server_index(), freed, "the only free slot");
    fifth.reset(JsonMap::new()).await.unwrap();
    assert_eq!(in_use(&pool), [2, 2]);

    drop(first); // dropping without close frees the slot too
    drop(third);
    fourth.close().await.unwrap();
    fifth.close().await.unwrap();
    assert_eq!(in_use(&pool), [0, 0]);
}

#[tokio::test]
async fn failures_free_their_slots() {
    let (good_url, good) = echo_server().await;
    let (full_url, full) = full_server().await;
    let config = ClientConfig::default().with_keepalive_interval(None);
    let pool = Pool::with_config([good_url, full_url], 1, config).unwrap();
    let results = pool
        .run(8, async |client, episode| {
            client.reset(JsonMap::new()).await?;
            if episode % 3 == 0 {
                return Err(ClientError::Protocol {
                    message: "episode failed".into(),
                });
            }
            Ok(episode)
        })
        .await;
    assert_eq!(results.len(), 8);
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(ErrorCode::CapacityReached)))
        .count();
    let failed = results
        .iter()
        .filter(|r| matches!(r, Err(ClientError::Protocol { .. })))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(refused + failed + ok, 8, "{results:?}");
    assert!(refused >= 1 && ok >= 1, "{results:?}");
    assert_eq!(refused, full.total.load(Ordering::SeqCst));
    assert!(good.peak.load(Ordering::SeqCst) <= 1);
    assert_eq!(in_use(&pool), [0, 0]);
}

#[tokio::test]
async fn connect_failures_free_their_slots() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let pool = Pool::new([dead], 1).unwrap();
    for _ in 0..3 {
        let err = tokio::time::timeout(DEADLINE, pool.acquire())
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert_eq!(in_use(&pool), [0]);
    }
    let results = pool.run(3, async |_client, episode| Ok(episode)).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(ClientError::Connect { .. })))
    );
}

#[test]
fn bad_pool_settings_are_refused() {
    let none: [&str; 0] = [];
    assert!(matches!(
        Pool::new(none, 1),
        Err(ClientError::InvalidConfig { .. })
    ));
    assert!(matches!(
        Pool::new(["http://h:1"], 0),
        Err(ClientError::InvalidConfig { .. })
    ));
    assert!(matches!(
        Pool::new(["ftp://h"], 1),
        Err(ClientError::InvalidUrl { .. })
    ));
    let pool = Pool::new(["h:1", "http://h:2/"], 3).unwrap();
    let urls: Vec<_> = pool.stats().into_iter().map(|s| s.url).collect();
    assert_eq!(urls, ["ws://h:1/ws", "ws://h:2/ws"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_can_be_spawned_on_a_multi_thread_runtime() {
    let (url, sessions) = echo_server().await;
    let pool = Pool::new([url], 3).unwrap();
    let task = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.run(9, async |client, _episode| {
                let first = client.reset(JsonMap::new()).await?;
                Ok(first.done)
            })
            .await
        }
    });
    let results = task.await.unwrap();
    assert_eq!(results.len(), 9);
    assert!(
        results.iter().all(|r| matches!(r, Ok(false))),
        "{results:?}"
    );
    assert!(sessions.peak.load(Ordering::SeqCst) <= 3);
    assert_eq!(in_use(&pool), [0]);
}
