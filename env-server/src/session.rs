//! Sessions: the process-wide table, admission (capacity), lifecycle, and the WebSocket
//! connection loop ([`drive`]) with keepalive, idle timeout and ordered request handling.
//!
//! A session is one environment instance with exactly one owner: a `/ws` or `/mcp`
//! WebSocket, or an HTTP-MCP client (`openenv/session/create`), to which one `/ws` socket may
//! attach at a time (`PROTOCOL.md` §3.7). One table serves all of them, so capacity counts
//! them together and the attach pairing works at any internal concurrency.
//!
//! Architecture invariant: every exit path of a session — `close` frame, socket drop,
//! half-open peer, idle timeout, `openenv/session/close`, shutdown, or a panic in its task —
//! removes it from the table, closes its environment and frees its slot.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::envs::{EnvError, EnvFactory, Environment};

/// An environment instance behind the lock that serialises its calls.
pub type EnvHandle = Arc<tokio::sync::Mutex<Box<dyn Environment>>>;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Who owns a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A `/ws` or `/mcp` WebSocket: the session lives exactly as long as the socket.
    WebSocket,
    /// An HTTP-MCP client: lives until `openenv/session/close` or the idle timeout.
    Http,
}

/// One session: an env instance, its owner, and its slot.
pub struct Session {
    /// The session id (uuid4).
    pub id: String,
    owner: Owner,
    env: OnceLock<EnvHandle>,
    attached: AtomicBool,
    closing: AtomicBool,
    last_active_ms: AtomicU64,
    /// Cancelled when the session is destroyed from elsewhere (HTTP close, reaper) and, as a
    /// child of the server's shutdown token, when the server stops: one token for a connection
    /// loop to wait on.
    cancel: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("attached", &self.attached.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Who owns the session.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// The env, once constructed (`None` while the session is initialising).
    pub fn env(&self) -> Option<&EnvHandle> {
        self.env.get()
    }

    /// Whether a `/ws` socket is attached to this HTTP-owned session.
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Marks a pending close: the session dies when its socket detaches.
    pub fn mark_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// The token cancelled when this session is destroyed.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }
}

/// Why a session could not be admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmitError {
    /// The table is full.
    #[error("Server at capacity: {active}/{max} sessions active. Cannot accept new connections.")]
    Capacity {
        /// Sessions active.
        active: usize,
        /// The cap.
        max: usize,
    },
    /// The env factory failed.
    #[error("Environment factory '{factory_name}' failed to create instance.")]
    Factory {
        /// The factory's name.
        factory_name: &'static str,
        /// Why (logged, never sent).
        reason: String,
    },
}

/// Why attaching a socket to an HTTP session failed (each is a `SESSION_ERROR` + close 1000).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttachError {
    /// No such session.
    #[error("Unknown session_id: {0}")]
    Unknown(String),
    /// The env is still being constructed.
    #[error("Session {0} is still initializing")]
    Initializing(String),
    /// Another socket is attached.
    #[error("Session {0} already has an attached WebSocket")]
    AlreadyAttached(String),
}

/// The process-wide session table.
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    slots: Arc<Semaphore>,
    max: usize,
    epoch: Instant,
    factory: Arc<dyn EnvFactory>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("max", &self.max)
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A table of at most `max` sessions of `factory`'s env; cancelling `shutdown` cancels
    /// every session's token.
    pub fn new(factory: Arc<dyn EnvFactory>, max: usize, shutdown: CancellationToken) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max)),
            max,
            epoch: Instant::now(),
            factory,
            shutdown,
        }
    }

    /// The env factory.
    pub fn factory(&self) -> &Arc<dyn EnvFactory> {
        &self.factory
    }

    /// Sessions holding a slot right now.
    pub fn active(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// The session cap.
    pub fn max(&self) -> usize {
        self.max
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records activity on a session (resets its idle clock).
    pub fn touch(&self, session: &Session) {
        session
            .last_active_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self, session: &Session) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(session.last_active_ms.load(Ordering::Relaxed)),
        )
    }

    /// Admits a session: takes a slot (or fails with `Capacity`), registers it as
    /// initialising, constructs its env (or fails with `Factory`, freeing the slot).
    pub async fn admit(&self, owner: Owner) -> Result<Arc<Session>, AdmitError> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(AdmitError::Capacity {
                active: self.active(),
                max: self.max,
            });
        };
        let session = Arc::new(Session {
            id: uuid::Uuid::new_v4().to_string(),
            owner,
            env: OnceLock::new(),
            attached: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(self.now_ms()),
            cancel: self.shutdown.child_token(),
            _slot: slot,
        });
        self.table()
            .insert(session.id.clone(), Arc::clone(&session));
        match self.factory.create().await {
            Ok(env) => {
                let _ = session.env.set(Arc::new(tokio::sync::Mutex::new(env)));
                Ok(session)
            }
            Err(err) => {
                self.table().remove(&session.id);
                let reason = match err {
                    EnvError::Execution { message } => message,
                    EnvError::Validation { .. } => "invalid configuration".to_owned(),
                };
                Err(AdmitError::Factory {
                    factory_name: self.factory.factory_name(),
                    reason,
                })
            }
        }
    }

    /// Looks a session up.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.table().get(id).cloned()
    }

    /// Attaches a socket to an HTTP-owned session (`/ws?session_id=`).
    pub fn attach(&self, id: &str) -> Result<Arc<Session>, AttachError> {
        let session = self
            .get(id)
            .ok_or_else(|| AttachError::Unknown(id.to_owned()))?;
        if session.env().is_none() {
            return Err(AttachError::Initializing(id.to_owned()));
        }
        if session.owner == Owner::WebSocket
            || session
                .attached
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Err(AttachError::AlreadyAttached(id.to_owned()));
        }
        self.touch(&session);
        Ok(session)
    }

    /// Ends a socket's hold on `session`: destroys a socket-owned session, or detaches from an
    /// HTTP-owned one (destroying it if a close is pending or it was cancelled).
    pub async fn release_socket(&self, session: &Arc<Session>, destroy: bool) {
        match session.owner {
            Owner::WebSocket => self.destroy(session).await,
            Owner::Http => {
                session.attached.store(false, Ordering::Release);
                if destroy
                    || session.closing.load(Ordering::Acquire)
                    || session.cancel.is_cancelled()
                {
                    self.destroy(session).await;
                }
            }
        }
    }

    /// Removes a session from the table, cancels whatever serves it, and closes its env.
    /// Idempotent.
    pub async fn destroy(&self, session: &Arc<Session>) {
        let removed = self.table().remove(&session.id).is_some();
        session.cancel.cancel();
        if removed {
            if let Some(env) = session.env() {
                env.lock().await.close().await;
            }
            tracing::debug!(session_id = %session.id, "session destroyed");
        }
    }

    /// Destroys HTTP-owned sessions without a socket that have been idle for `idle`.
    pub async fn reap_idle(&self, idle: Duration) -> usize {
        let stale: Vec<Arc<Session>> = self
            .table()
            .values()
            .filter(|s| {
                s.owner == Owner::Http
                    && !s.is_attached()
                    && s.env().is_some()
                    && self.idle_for(s) >= idle
            })
            .cloned()
            .collect();
        for session in &stale {
            tracing::info!(session_id = %session.id, "idle HTTP-MCP session reaped");
            self.destroy(session).await;
        }
        stale.len()
    }

    /// Destroys every session (shutdown).
    pub async fn destroy_all(&self) {
        let all: Vec<Arc<Session>> = self.table().values().cloned().collect();
        for session in &all {
            self.destroy(session).await;
        }
    }
}

/// Removes the session from the table if its task ends without the orderly path (a panic):
/// the slot and the env are never leaked.
struct ReleaseGuard {
    registry: Arc<Registry>,
    session: Arc<Session>,
    armed: bool,
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if std::thread::panicking() {
            // One bounded line: the panic hook has logged where; the payload, which may quote
            // client input, is never logged (`docs/fuzzing.md`).
            tracing::error!(session_id = %self.session.id, "session task panicked; session released");
        } else {
            tracing::debug!(session_id = %self.session.id, "session task dropped; session released");
        }
        let (registry, session) = (Arc::clone(&self.registry), Arc::clone(&self.session));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { registry.release_socket(&session, true).await });
        }
    }
}

/// What the loop sends after handling a frame: an optional text frame, then an optional close.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// A text frame to send.
    pub frame: Option<String>,
    /// Close the socket with this code and reason after the frame.
    pub close: Option<(u16, String)>,
    /// The client asked for the close (`{"type":"close"}`): the session ends as
    /// [`Ended::Peer`], not [`Ended::Server`].
    pub requested: bool,
}

impl Outgoing {
    /// Just a frame.
    pub fn frame(text: String) -> Self {
        Self {
            frame: Some(text),
            close: None,
            requested: false,
        }
    }

    /// A frame, then close 1000 (connect-time errors, `SESSION_ERROR`).
    pub fn fatal(text: String) -> Self {
        Self {
            frame: Some(text),
            close: Some((1000, String::new())),
            requested: false,
        }
    }

    /// Close 1000 with no frame, as the client asked (`{"type":"close"}`).
    pub fn close_requested() -> Self {
        Self {
            frame: None,
            close: Some((1000, String::new())),
            requested: true,
        }
    }

    /// Who ends the session if sending this ends it: the server when it closes on its own
    /// account, else the peer (it asked to close, or the send failed because it is gone).
    fn ender(&self) -> Ended {
        if self.close.is_some() && !self.requested {
            Ended::Server
        } else {
            Ended::Peer
        }
    }
}

/// The result of handing a text frame to a [`FrameHandler`].
pub enum Handled {
    /// Answer now.
    Reply(Outgoing),
    /// Answer when the future completes; later frames wait their turn.
    Pending(BoxFuture<Outgoing>),
}

/// The per-protocol part of a WebSocket session (`/ws` frames or bare JSON-RPC on `/mcp`).
pub trait FrameHandler: Send {
    /// Handles one text frame.
    fn on_text(&mut self, text: &str) -> Handled;
    /// Handles a binary frame.
    fn on_binary(&mut self) -> Outgoing;
    /// The frame sent when the idle timeout closes the session.
    fn on_idle_timeout(&mut self, idle: Duration) -> Outgoing;
}

enum Inbound {
    Text(Utf8Bytes),
    Binary,
}

/// How a driven connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed (frame or WebSocket close) or vanished.
    Peer,
    /// The server closed it (fatal error, idle timeout, half-open, oversize frame).
    Server,
    /// The session was destroyed elsewhere or the server is shutting down.
    Cancelled,
}

async fn send_with_timeout<S>(socket: &mut S, msg: Message, limit: Duration) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    // On a healthy peer the send completes at once: arm the timer only when it does not.
    let mut send = socket.send(msg);
    if let Some(done) = (&mut send).now_or_never() {
        return done.is_ok();
    }
    matches!(tokio::time::timeout(limit, send).await, Ok(Ok(())))
}

async fn poll_inflight(inflight: &mut Option<BoxFuture<Outgoing>>) -> Outgoing {
    match inflight {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

fn close_message(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Sends an `Outgoing`; returns `false` when the connection must end.
async fn emit<S>(socket: &mut S, out: Outgoing, limits: &Limits) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    if let Some(text) = out.frame
        && !send_with_timeout(socket, Message::Text(text.into()), limits.send_timeout()).await
    {
        return false;
    }
    if let Some((code, reason)) = out.close {
        let _ = send_with_timeout(socket, close_message(code, reason), limits.send_timeout()).await;
        return false;
    }
    true
}

/// The close a read error calls for (RFC 6455 §7.4.1), when the peer broke the protocol:
/// 1009 for a message over `--max-frame-bytes` (in the words of the official server), 1007 for
/// a text message that is not UTF-8, 1002 for a frame the protocol forbids (an unknown opcode,
/// reserved bits set, an unmasked client frame, a fragmented or oversized control frame, a
/// stray continuation). `None` for the errors that leave nobody to tell (the peer vanished,
/// I/O failed). The reasons hold no bytes of the offending frame (`docs/fuzzing.md`).
pub fn violation_close(err: &axum::Error) -> Option<(u16, String)> {
    use tungstenite::error::{CapacityError, ProtocolError};
    let inner = std::error::Error::source(err)?;
    match inner.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some((
            1009,
            format!("frame with {size} bytes exceeds limit of {max_size} bytes"),
        )),
        tungstenite::Error::Capacity(other) => Some((1009, other.to_string())),
        tungstenite::Error::Utf8(_) => Some((1007, "invalid UTF-8 in a text message".to_owned())),
        tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::SendAfterClosing
            | ProtocolError::ReceivedAfterClosing,
        ) => None,
        tungstenite::Error::Protocol(violation) => {
            let mut reason = violation.to_string();
            // A close reason holds at most 123 bytes.
            if reason.len() > 123 {
                let mut end = 123;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            Some((1002, reason))
        }
        _ => None,
    }
}

/// Runs one WebSocket session until it ends, then releases the session.
///
/// Frames are answered strictly in order, one request at a time; while a request runs the
/// loop keeps reading (pongs, close, later frames, which queue up to
/// `max_pending_frames`), pings the peer every keepalive interval and closes it with 1011 if a
/// ping goes unanswered for the keepalive timeout, and closes an idle session (E3).
pub async fn drive<S, H>(
    mut socket: S,
    mut handler: H,
    session: Arc<Session>,
    registry: Arc<Registry>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Ended
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
    H: FrameHandler,
{
    let mut guard = ReleaseGuard {
        registry: Arc::clone(&registry),
        session: Arc::clone(&session),
        armed: true,
    };
    let max_pending = limits.max_pending_frames as usize;
    let mut queue: VecDeque<Inbound> = VecDeque::new();
    let mut inflight: Option<BoxFuture<Outgoing>> = None;

    let ping_period = limits.keepalive_interval();
    let mut ping = tokio::time::interval_at(
        Instant::now() + ping_period.unwrap_or(Duration::from_secs(3600)),
        ping_period.unwrap_or(Duration::from_secs(3600)),
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let far = || Instant::now() + Duration::from_secs(86_400 * 365);
    let pong_deadline = tokio::time::sleep_until(far());
    tokio::pin!(pong_deadline);
    let mut awaiting_pong = false;
    let idle = limits.idle_timeout();
    let idle_deadline = tokio::time::sleep_until(idle.map_or_else(far, |d| Instant::now() + d));
    tokio::pin!(idle_deadline);
    let mut destroy = false;
    // One waiter (the session's token is a child of the shutdown token), registered once.
    let session_cancelled = session.cancel.cancelled();
    tokio::pin!(session_cancelled);

    let ended = 'session: loop {
        // Start queued requests while none is in flight, answering what is ready at once.
        while inflight.is_none() {
            let Some(next) = queue.pop_front() else { break };
            registry.touch(&session);
            let out = match next {
                Inbound::Binary => handler.on_binary(),
                Inbound::Text(text) => match handle_text(&mut handler, text.as_str()) {
                    Handled::Reply(out) => out,
                    Handled::Pending(mut fut) => match (&mut fut).now_or_never() {
                        Some(out) => out,
                        None => {
                            inflight = Some(fut);
                            break;
                        }
                    },
                },
            };
            let ender = out.ender();
            if !emit(&mut socket, out, &limits).await {
                break 'session ender;
            }
        }

        tokio::select! {
            biased;
            () = &mut session_cancelled => {
                let close = if shutdown.is_cancelled() {
                    close_message(1001, "server shutting down".to_owned())
                } else {
                    close_message(1000, String::new())
                };
                let _ = send_with_timeout(&mut socket, close, Duration::from_secs(1)).await;
                break Ended::Cancelled;
            }
            out = poll_inflight(&mut inflight), if inflight.is_some() => {
                inflight = None;
                registry.touch(&session);
                let ender = out.ender();
                if !emit(&mut socket, out, &limits).await {
                    break ender;
                }
            }
            msg = socket.next(), if queue.len() < max_pending => {
                awaiting_pong = false;
                match msg {
                    Some(Ok(Message::Text(text))) => queue.push_back(Inbound::Text(text)),
                    Some(Ok(Message::Binary(_))) => queue.push_back(Inbound::Binary),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), socket.close()).await;
                        break Ended::Peer;
                    }
                    Some(Err(err)) => {
                        if let Some((code, reason)) = violation_close(&err) {
                            tracing::info!(code, %reason, "protocol violation: closing the connection");
                            let _ = send_with_timeout(&mut socket, close_message(code, reason), Duration::from_secs(1)).await;
                            break Ended::Server;
                        }
                        tracing::debug!(error = %err, "websocket read failed");
                        break Ended::Peer;
                    }
                }
            }
            _ = ping.tick(), if ping_period.is_some() && !awaiting_pong => {
                if !send_with_timeout(&mut socket, Message::Ping(bytes::Bytes::new()), limits.send_timeout()).await {
                    break Ended::Peer;
                }
                awaiting_pong = true;
                pong_deadline.as_mut().reset(Instant::now() + limits.keepalive_timeout());
            }
            () = &mut pong_deadline, if awaiting_pong => {
                tracing::info!("keepalive ping timeout: closing half-open connection");
                let _ = send_with_timeout(&mut socket, close_message(1011, "keepalive ping timeout".to_owned()), Duration::from_secs(1)).await;
                break Ended::Server;
            }
            () = &mut idle_deadline, if idle.is_some() && inflight.is_none() && queue.is_empty() => {
                let Some(limit) = idle else { continue };
                let quiet = registry.idle_for(&session);
                if quiet < limit {
                    idle_deadline.as_mut().reset(Instant::now() + (limit - quiet));
                    continue;
                }
                tracing::info!(idle_s = limit.as_secs(), "idle timeout: closing session");
                let out = handler.on_idle_timeout(limit);
                let _ = emit(&mut socket, out, &limits).await;
                destroy = true;
                break Ended::Server;
            }
        }
    };
    drop(inflight);
    // The socket goes first: a client waiting for the connection to end (its `close()`)
    // does not also wait for the environment's teardown (a sandbox takes milliseconds).
    drop(socket);
    guard.armed = false;
    registry
        .release_socket(&session, destroy || ended == Ended::Cancelled)
        .await;
    ended
}

/// The close sent when handling a frame panicked: 1011, the server met an unexpected
/// condition (RFC 6455 §7.4.1). The session ends; others are untouched.
fn panicked() -> Outgoing {
    tracing::error!("frame handler panicked; closing the session with 1011");
    Outgoing {
        frame: None,
        close: Some((1011, "internal error".to_owned())),
        requested: false,
    }
}

/// Hands a text frame to the handler, so that a panic in it, now or in the request it starts,
/// closes the connection with 1011 instead of dropping it (the panic hook has logged where).
fn handle_text<H: FrameHandler>(handler: &mut H, text: &str) -> Handled {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.on_text(text))) {
        Ok(Handled::Reply(out)) => Handled::Reply(out),
        Ok(Handled::Pending(fut)) => Handled::Pending(Box::pin(
            std::panic::AssertUnwindSafe(fut)
                .catch_unwind()
                .map(|done| done.unwrap_or_else(|_| panicked())),
        )),
        Err(_) => Handled::Reply(panicked()),
    }
}

/// Runs `fut`, turning a panic into an `EXECUTION_ERROR`-style outcome built by `on_panic`,
/// so a panicking environment fails only its own request.
pub async fn catch_panic<T>(
    fut: impl Future<Output = T> + Send,
    on_panic: impl FnOnce() -> T,
) -> T {
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(value) => value,
        Err(_) => {
            tracing::error!("environment panicked; the request failed");
            on_panic()
        }
    }
}
