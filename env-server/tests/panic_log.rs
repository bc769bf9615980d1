//! A panic is logged as one bounded line, never with its message (`docs/fuzzing.md`): the
//! binary's panic hook (`env_server::panics::install_hook`), a frame handler that panics (close
//! 1011), a session task that panics elsewhere (its `ReleaseGuard` frees the session) and an
//! environment call that panics (`catch_panic`).
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
use env_server::session::{
    Ended, FrameHandler, Handled, Outgoing, Owner, Registry, catch_panic, drive,
};
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

/// A socket fed from a channel that keeps what the session sends; with `broken`, sending a
/// text frame panics (a bug outside the frame handler).
struct FakeSocket {
    inbound: mpsc::UnboundedReceiver<Message>,
    sent: Arc<Mutex<Vec<Message>>>,
    broken: bool,
}

impl FakeSocket {
    fn new(frame: &str, broken: bool) -> (Self, Arc<Mutex<Vec<Message>>>) {
        let (tx, inbound) = mpsc::unbounded_channel();
        tx.send(Message::Text(frame.into())).unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let socket = Self {
            inbound,
            sent: Arc::clone(&sent),
            broken,
        };
        (socket, sent)
    }
}

impl Stream for FakeSocket {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for FakeSocket {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), axum::Error> {
        if self.broken && matches!(msg, Message::Text(_)) {
            panic!("cannot send {msg:?}");
        }
        self.sent.lock().unwrap().push(msg);
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// A protocol handler: with `buggy`, it panics on a frame, quoting it; else it echoes it.
struct Handler {
    buggy: bool,
}

impl FrameHandler for Handler {
    fn on_text(&mut self, text: &str) -> Handled {
        assert!(!self.buggy, "cannot handle {text:?}");
        Handled::Reply(Outgoing::frame(text.to_owned()))
    }
    fn on_binary(&mut self) -> Outgoing {
        Outgoing::default()
    }
    fn on_idle_timeout(&mut self, _: Duration) -> Outgoing {
        Outgoing::default()
    }
}

async fn sessions_become(registry: &Registry, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while registry.active() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session not released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
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

    let registry = Arc::new(Registry::new(
        env_server::envs::factory("echo").unwrap(),
        4,
        CancellationToken::new(),
    ));
    let frame = format!("{SECRET}\nsecond line");

    // A frame handler that panics: the connection is closed with 1011 (not dropped), the
    // session released; the log has two lines.
    let session = registry.admit(Owner::WebSocket).await.unwrap();
    let (socket, sent) = FakeSocket::new(&frame, false);
    let ended = drive(
        socket,
        Handler { buggy: true },
        session,
        Arc::clone(&registry),
        Limits::default(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(ended, Ended::Server);
    match sent.lock().unwrap().as_slice() {
        [Message::Close(Some(close))] => {
            assert_eq!(
                (close.code, close.reason.as_str()),
                (1011, "internal error")
            );
        }
        other => panic!("expected one close frame, got {other:?}"),
    }
    sessions_become(&registry, 0).await;

    // A panic elsewhere in the session's task (here: the socket): the task ends, its guard
    // releases the session; the log has two lines.
    let session = registry.admit(Owner::WebSocket).await.unwrap();
    let (socket, _) = FakeSocket::new(&frame, true);
    let task = tokio::spawn(drive(
        socket,
        Handler { buggy: false },
        session,
        Arc::clone(&registry),
        Limits::default(),
        CancellationToken::new(),
    ));
    assert!(task.await.unwrap_err().is_panic());
    sessions_become(&registry, 0).await;

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
    assert_eq!(hook_lines.len(), 3, "{text}");
    for line in &hook_lines {
        // Under RUST_BACKTRACE the backtrace follows on the same event.
        let head = line.split(" backtrace=").next().unwrap_or_default();
        assert!(
            head.ends_with("message withheld (it may quote client input)"),
            "{line}"
        );
        assert!(head.len() < 300, "{line}");
    }
    for event in [
        "frame handler panicked; closing the session with 1011",
        "session task panicked; session released",
        "environment panicked; the request failed",
    ] {
        assert_eq!(
            lines.iter().filter(|l| l.contains(event)).count(),
            1,
            "{event}:\n{text}"
        );
    }
    let backtrace_asked = ["RUST_LIB_BACKTRACE", "RUST_BACKTRACE"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v != "0"));
    if !backtrace_asked {
        assert_eq!(lines.len(), 6, "one line per event, no backtrace:\n{text}");
    }
}
