//! The server's end of the control channel: requests written under an async mutex straight
//! from the calling task, one reader task routing frames by id (replies to waiting requests,
//! output and exits of spawned processes to their [`LocalProcess`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::proto::{self, CREDIT_BATCH, Frame, Kind};

/// How long a write to the control pipe may block (only when `sbx` stops reading: stopped or
/// wedged). After that the channel is broken: a partial frame cannot be taken back.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a control request (kill, kill_all, spawn) may wait for its reply; `sbx` gives up
/// re-killing after 30 s itself.
pub(super) const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);
use crate::sandbox::{Process, ProcessEvent, SandboxError};

enum Route {
    /// A request waiting for its one reply.
    Reply(oneshot::Sender<Frame>),
    /// A spawned process: its `Spawned`/`Error` reply, then its events.
    Spawn {
        reply: Option<oneshot::Sender<Frame>>,
        events: mpsc::UnboundedSender<ProcessEvent>,
    },
}

struct Routes {
    map: HashMap<u64, Route>,
    /// Why the channel is closed, once it is.
    gone: Option<String>,
}

/// The control channel of one sandbox.
pub(super) struct Channel {
    writer: tokio::sync::Mutex<Option<pipe::Sender>>,
    routes: Mutex<Routes>,
    next_id: AtomicU64,
}

fn gone(reason: &str) -> SandboxError {
    SandboxError::Gone {
        reason: reason.to_owned(),
    }
}

impl Channel {
    /// Wraps the pipe ends (needs a runtime) and starts the reader task; the returned receiver
    /// gets the `Ready` frame.
    pub(super) fn start(
        to_sbx: OwnedFd,
        from_sbx: OwnedFd,
    ) -> std::io::Result<(Arc<Self>, oneshot::Receiver<Frame>)> {
        let writer = pipe::Sender::from_owned_fd(to_sbx)?;
        let reader = pipe::Receiver::from_owned_fd(from_sbx)?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let chan = Arc::new(Self {
            writer: tokio::sync::Mutex::new(Some(writer)),
            routes: Mutex::new(Routes {
                map: HashMap::from([(0, Route::Reply(ready_tx))]),
                gone: None,
            }),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(read_loop(Arc::clone(&chan), reader));
        Ok((chan, ready_rx))
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the channel closed: every waiter gets `Gone { reason }`.
    pub(super) fn close(&self, reason: &str) {
        let mut routes = self.routes();
        if routes.gone.is_none() {
            routes.gone = Some(reason.to_owned());
        }
        routes.map.clear();
    }

    /// Closes our end of the control pipe (`sbx` sees end of stream, kills all and exits).
    pub(super) async fn close_writer(&self) {
        self.writer.lock().await.take();
    }

    /// The reason the channel is closed, if it is.
    pub(super) fn gone_reason(&self) -> Option<String> {
        self.routes().gone.clone()
    }

    fn register(&self, route: Route) -> Result<u64, SandboxError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut routes = self.routes();
        if let Some(reason) = &routes.gone {
            return Err(gone(reason));
        }
        routes.map.insert(id, route);
        Ok(id)
    }

    pub(super) fn forget(&self, id: u64) {
        self.routes().map.remove(&id);
    }

    /// Writes one frame.
    pub(super) async fn send(&self, frame: &[u8]) -> Result<(), SandboxError> {
        let mut writer = self.writer.lock().await;
        let Some(w) = writer.as_mut() else {
            return Err(self.gone_error());
        };
        match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                writer.take();
                Err(self.gone_error())
            }
            Err(_) => {
                writer.take();
                drop(writer);
                self.close("the sandbox supervisor stopped reading its control channel");
                Err(SandboxError::Transport {
                    reason: "the sandbox supervisor does not respond".to_owned(),
                })
            }
        }
    }

    /// `Gone` with the reason the channel closed.
    pub(super) fn gone_error(&self) -> SandboxError {
        gone(
            &self
                .gone_reason()
                .unwrap_or_else(|| "the sandbox supervisor is gone".to_owned()),
        )
    }

    /// Sends a request and waits for its reply frame.
    pub(super) async fn call<H: Serialize>(
        &self,
        kind: Kind,
        header: &H,
        payload: &[&[u8]],
    ) -> Result<Frame, SandboxError> {
        let (tx, rx) = oneshot::channel();
        let id = self.register(Route::Reply(tx))?;
        let guard = Forget { chan: self, id };
        self.send(&proto::encode(kind, id, Some(header), payload))
            .await?;
        let reply = tokio::time::timeout(REPLY_TIMEOUT, rx).await;
        drop(guard);
        match reply {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(self.gone_error()),
            Err(_) => Err(SandboxError::Transport {
                reason: format!("the sandbox supervisor did not answer {kind:?} in time"),
            }),
        }
    }

    /// Registers a request id now (so the caller can name it, e.g. to cancel) and returns it
    /// with the reply receiver.
    pub(super) fn prepare(&self) -> Result<(u64, oneshot::Receiver<Frame>), SandboxError> {
        let (tx, rx) = oneshot::channel();
        Ok((self.register(Route::Reply(tx))?, rx))
    }

    /// Starts a spawn: registers its stream and sends the request.
    pub(super) async fn spawn<H: Serialize>(
        self: &Arc<Self>,
        header: &H,
    ) -> Result<
        (
            u64,
            oneshot::Receiver<Frame>,
            mpsc::UnboundedReceiver<ProcessEvent>,
        ),
        SandboxError,
    > {
        let (tx, rx) = oneshot::channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let id = self.register(Route::Spawn {
            reply: Some(tx),
            events: etx,
        })?;
        if let Err(e) = self
            .send(&proto::encode(Kind::Spawn, id, Some(header), &[]))
            .await
        {
            self.forget(id);
            return Err(e);
        }
        Ok((id, rx, erx))
    }

    fn route(&self, frame: Frame) {
        let mut routes = self.routes();
        let id = frame.id;
        match frame.kind {
            Kind::Stdout | Kind::Stderr | Kind::Exited => {
                let Some(Route::Spawn { events, .. }) = routes.map.get(&id) else {
                    return;
                };
                let event = match frame.kind {
                    Kind::Stdout => ProcessEvent::Stdout(frame.payload),
                    Kind::Stderr => ProcessEvent::Stderr(frame.payload),
                    _ => {
                        let h = frame.header::<proto::ExitedHeader>().ok();
                        ProcessEvent::Exited {
                            exit_code: h.as_ref().and_then(|h| h.exit_code),
                            signal: h.and_then(|h| h.signal),
                        }
                    }
                };
                let exited = matches!(event, ProcessEvent::Exited { .. });
                let _ = events.send(event);
                if exited {
                    routes.map.remove(&id);
                }
            }
            _ => match routes.map.get_mut(&id) {
                Some(Route::Spawn { reply, .. }) => {
                    if let Some(reply) = reply.take() {
                        let failed = frame.kind == Kind::Error;
                        let _ = reply.send(frame);
                        if failed {
                            routes.map.remove(&id);
                        }
                    }
                }
                Some(Route::Reply(_)) => {
                    if let Some(Route::Reply(reply)) = routes.map.remove(&id) {
                        let _ = reply.send(frame);
                    }
                }
                None => {}
            },
        }
    }
}

/// Removes a route when the waiting future is dropped.
struct Forget<'a> {
    chan: &'a Channel,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.chan.forget(self.id);
    }
}

async fn read_loop(chan: Arc<Channel>, reader: pipe::Receiver) {
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let reason = loop {
        match proto::read_frame(&mut reader).await {
            Ok(Some(frame)) => chan.route(frame),
            Ok(None) => break "the sandbox supervisor exited".to_owned(),
            Err(e) => break format!("the sandbox control channel failed: {e}"),
        }
    };
    chan.close(&reason);
}

/// A process started by `spawn`, streaming its output.
pub(super) struct LocalProcess {
    pub(super) chan: Arc<Channel>,
    pub(super) id: u64,
    pub(super) events: mpsc::UnboundedReceiver<ProcessEvent>,
    /// Output consumed since the last credit grant.
    pub(super) consumed: u64,
    /// Exited or killed: nothing to clean up on drop.
    pub(super) finished: bool,
}

#[async_trait]
impl Process for LocalProcess {
    async fn write_stdin(&mut self, data: Bytes) -> Result<(), SandboxError> {
        self.chan
            .send(&proto::encode_raw(Kind::Stdin, self.id, &data))
            .await
    }

    async fn next_event(&mut self) -> Option<ProcessEvent> {
        let event = self.events.recv().await;
        match &event {
            Some(ProcessEvent::Stdout(b) | ProcessEvent::Stderr(b)) => {
                self.consumed += b.len() as u64;
                if self.consumed >= CREDIT_BATCH {
                    let h = proto::CreditHeader {
                        bytes: self.consumed,
                    };
                    self.consumed = 0;
                    let _ = self
                        .chan
                        .send(&proto::encode(Kind::Credit, self.id, Some(&h), &[]))
                        .await;
                }
            }
            Some(ProcessEvent::Exited { .. }) | None => self.finished = true,
        }
        event
    }

    async fn kill_tree(&mut self) -> Result<(), SandboxError> {
        let h = proto::KillHeader { target: self.id };
        match self.chan.call(Kind::Kill, &h, &[]).await {
            Ok(_) | Err(SandboxError::Gone { .. }) => {
                self.finished = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        self.chan.forget(self.id);
        if self.finished {
            return;
        }
        // Not killed: kill its tree in the background (no one will read it any more).
        let (chan, target) = (Arc::clone(&self.chan), self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = chan
                    .call(Kind::Kill, &proto::KillHeader { target }, &[])
                    .await;
            });
        }
    }
}
