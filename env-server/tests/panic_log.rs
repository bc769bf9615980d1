//! A panic is logged as one bounded line, never with its message (`docs/fuzzing.md`): the
//! binary's panic hook (`env_server::panics::install_hook`), a session task that panics (its
//! `ReleaseGuard` frees the session) and an environment call that panics (`catch_panic`).
//!
//! One test function: the panic hook and the log subscriber are process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use env_server::config::Limits;
use env_server::session::{FrameHandler, Handled, Outgoing, Owner, Registry, catch_panic, drive};
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "attacker-text-7f3a";

/// The log, as the subscriber writes it.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A socket fed from a channel; what the session sends is dropped.
struct FakeSocket(mpsc::UnboundedReceiver<Message>);

impl Stream for FakeSocket {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for FakeSocket {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), axum::Error> {
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// A protocol handler with a bug: it panics on a frame, quoting it.
struct Buggy;

impl FrameHandler for Buggy {
    fn on_text(&mut self, text: &str) -> Handled {
        panic!("cannot handle {text:?}");
    }
    fn on_binary(&mut self) -> Outgoing {
        Outgoing::default()
    }
    fn on_idle_timeout(&mut self, _: Duration) -> Outgoing {
        Outgoing::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_one_bounded_line_without_its_message() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    env_server::panics::install_hook();

    // A session task that panics: the session is released, the log has two lines.
    let registry = Arc::new(Registry::new(
        env_server::envs::factory("echo").unwrap(),
        4,
        CancellationToken::new(),
    ));
    let session = registry.admit(Owner::WebSocket).await.unwrap();
    assert_eq!(registry.active(), 1);
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Message::Text(format!("{SECRET}\nsecond line").into()))
        .unwrap();
    let task = tokio::spawn(drive(
        FakeSocket(rx),
        Buggy,
        session,
        Arc::clone(&registry),
        Limits::default(),
        CancellationToken::new(),
    ));
    assert!(task.await.unwrap_err().is_panic());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while registry.active() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session not released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // An environment call that panics: the request fails, the log has two lines more.
    let failed = catch_panic(
        async { panic!("env choked on {}", SECRET.repeat(1000)) },
        || "failed",
    )
    .await;
    assert_eq!(failed, "failed");

    let text = log.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!text.contains(SECRET), "the log quotes the input:\n{text}");
    let hook_lines: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("panicked at env-server/tests/panic_log.rs:"))
        .collect();
    assert_eq!(hook_lines.len(), 2, "{text}");
    for line in &hook_lines {
        assert!(
            line.ends_with("message withheld (it may quote client input)"),
            "{line}"
        );
        assert!(line.len() < 300, "{line}");
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("session task panicked; session released"))
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("environment panicked; the request failed"))
            .count(),
        1,
        "{text}"
    );
    let backtrace_asked = ["RUST_LIB_BACKTRACE", "RUST_BACKTRACE"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v != "0"));
    if !backtrace_asked {
        assert_eq!(lines.len(), 4, "one line per event, no backtrace:\n{text}");
    }
}
