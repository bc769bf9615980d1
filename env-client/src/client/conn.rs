//! The connection behind an [`EnvClient`](super::EnvClient): one WebSocket stream, driven
//! in place by whoever holds its lock (no I/O task, no channel hop per request).
//!
//! A request writes its frame and reads until the reply; pings are answered by tungstenite
//! as the stream is read, and pongs are skipped. Frames that arrive while no request is in
//! flight (connect-time refusals, `PROTOCOL.md` §3.5, or an idle-timeout `SESSION_ERROR`, E3)
//! are read before the next request is sent, or by the keepalive task, and reported to the
//! next caller. Once the connection cannot pair requests with replies any more (closed,
//! timed out, a request cancelled mid-flight, an unsolicited frame), it is marked broken and
//! every later call fails at once with the same cause.

use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::error::{ClientError, is_fatal_code};
use crate::protocol::{ErrorData, ServerFrame};

/// The WebSocket stream type of a client connection (plain TCP; no TLS in this build).
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// How long to look for the server's reason after a failed send (its error or close frame
/// may already be in our receive buffer).
const SEND_FAILURE_DRAIN: Duration = Duration::from_secs(1);

/// The state of one connection; lives behind the client's `tokio::sync::Mutex`.
pub(crate) struct Conn {
    ws: Ws,
    /// Set while a request waits for its reply. Still set when the lock is next taken means
    /// that request was cancelled mid-flight, and its reply could be mistaken for the next.
    in_flight: bool,
    /// Why the connection cannot be used any more.
    broken: Option<Broken>,
}

/// Why a connection is unusable; every later call reports it.
enum Broken {
    /// The server sent a fatal `error` frame on its own (connect-time refusal, idle timeout).
    /// `reported` once a caller has seen the frame itself.
    Server { data: ErrorData, reported: bool },
    /// Closed by the server or the network, or abandoned by the client.
    Closed { code: Option<u16>, reason: String },
}

impl Broken {
    fn error(&self) -> ClientError {
        match self {
            Self::Server { data, .. } => ClientError::server(data.clone()),
            Self::Closed { code, reason } => ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            },
        }
    }
}

/// One inbound event.
enum Inbound {
    /// A ping or pong: tungstenite answers pings itself; nothing to do.
    Control,
    Text(Utf8Bytes),
    Binary(usize),
    Closed(Option<CloseFrame>),
    Failed(tungstenite::Error),
    Ended,
}

impl From<Option<Result<Message, tungstenite::Error>>> for Inbound {
    fn from(item: Option<Result<Message, tungstenite::Error>>) -> Self {
        match item {
            Some(Ok(Message::Text(text))) => Self::Text(text),
            Some(Ok(Message::Binary(bytes))) => Self::Binary(bytes.len()),
            Some(Ok(Message::Close(frame))) => Self::Closed(frame),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Self::Control,
            Some(Err(err)) => Self::Failed(err),
            None => Self::Ended,
        }
    }
}

impl Conn {
    pub(crate) fn new(ws: Ws) -> Self {
        Self {
            ws,
            in_flight: false,
            broken: None,
        }
    }

    /// Sends `text` and reads its one reply frame. `op` names the call in timeout errors.
    ///
    /// `error` frames come back as `Ok(ServerFrame::Error)`; a connect-time error frame that
    /// was queued before this call is returned that way once, then as `Err(Server)`.
    pub(crate) async fn request(
        &mut self,
        op: &'static str,
        text: String,
        timeout: Option<Duration>,
    ) -> Result<ServerFrame, ClientError> {
        self.check_usable()?;
        self.drain_ready();
        if let Some(broken) = &mut self.broken {
            return match broken {
                Broken::Server { data, reported } if !*reported => {
                    *reported = true;
                    Ok(ServerFrame::Error(data.clone()))
                }
                other => Err(other.error()),
            };
        }
        let Some(after) = timeout else {
            return self.exchange(text).await;
        };
        match tokio::time::timeout(after, self.exchange(text)).await {
            Ok(result) => result,
            Err(_elapsed) => {
                let reason = format!("connection abandoned: {op} timed out after {after:?}");
                self.abandon(reason);
                Err(ClientError::Timeout { op, after })
            }
        }
    }

    /// Fails if the connection is already unusable (reporting why), or if the previous
    /// request was cancelled before its reply arrived (which makes it unusable).
    fn check_usable(&mut self) -> Result<(), ClientError> {
        if self.in_flight && self.broken.is_none() {
            self.abandon(
                "connection abandoned: an earlier request was cancelled before its reply arrived"
                    .to_owned(),
            );
        }
        match &mut self.broken {
            None => Ok(()),
            Some(Broken::Server { reported, .. }) if !*reported => Ok(()),
            Some(broken) => Err(broken.error()),
        }
    }

    /// Writes the request and reads until its reply.
    async fn exchange(&mut self, text: String) -> Result<ServerFrame, ClientError> {
        self.in_flight = true;
        if let Err(err) = self.ws.send(Message::Text(text.into())).await {
            return Err(self.after_send_failure(err).await);
        }
        let reply = loop {
            match Inbound::from(self.ws.next().await) {
                Inbound::Control => {}
                Inbound::Text(text) => break text,
                Inbound::Binary(len) => {
                    self.in_flight = false;
                    return Err(ClientError::protocol(format!(
                        "expected a text frame, got a binary frame of {len} bytes"
                    )));
                }
                other => return Err(self.end(other)),
            }
        };
        self.in_flight = false;
        let frame = serde_json::from_str::<ServerFrame>(reply.as_str()).map_err(|err| {
            ClientError::protocol(format!("unparseable reply ({err}): {}", preview(&reply)))
        })?;
        if let ServerFrame::Error(data) = &frame
            && is_fatal_code(data.code)
        {
            self.refused(data.clone(), true);
        }
        Ok(frame)
    }

    /// After a failed write: the server may have refused the session and closed before it read
    /// our frame. Its error or close frame can still be in our receive buffer, and is the real
    /// reason; look for it (bounded), else report the write failure.
    async fn after_send_failure(&mut self, err: tungstenite::Error) -> ClientError {
        let look = async {
            loop {
                match Inbound::from(self.ws.next().await) {
                    Inbound::Control | Inbound::Binary(_) => {}
                    Inbound::Text(text) => {
                        if let Ok(ServerFrame::Error(data)) =
                            serde_json::from_str::<ServerFrame>(text.as_str())
                        {
                            return Some(data);
                        }
                    }
                    Inbound::Closed(frame) => {
                        self.set_closed(frame);
                        return None;
                    }
                    Inbound::Failed(_) | Inbound::Ended => return None,
                }
            }
        };
        let found = tokio::time::timeout(SEND_FAILURE_DRAIN, look)
            .await
            .ok()
            .flatten();
        if let Some(data) = found {
            self.refused(data.clone(), true);
            return ClientError::server(data);
        }
        if let Some(broken) = &self.broken {
            return broken.error();
        }
        let error = classify(err);
        self.broken = Some(Broken::Closed {
            code: None,
            reason: format!("connection failed: {error}"),
        });
        error
    }

    /// Records the end of the connection seen while waiting for a reply; returns the error
    /// for the current call.
    fn end(&mut self, event: Inbound) -> ClientError {
        match event {
            Inbound::Closed(frame) => {
                self.set_closed(frame);
                self.flush_now();
            }
            Inbound::Ended => {
                self.set_closed_reason(None, "connection closed without a close frame")
            }
            Inbound::Failed(err) => {
                let error = classify(err);
                if let ClientError::Closed { code, reason } = &error {
                    self.set_closed_reason(*code, reason);
                } else {
                    self.set_closed_reason(None, &format!("connection failed: {error}"));
                }
                return error;
            }
            Inbound::Control | Inbound::Text(_) | Inbound::Binary(_) => {}
        }
        self.broken
            .as_ref()
            .map_or_else(|| ClientError::protocol("connection ended"), Broken::error)
    }

    /// Records a fatal `error` frame (the server closes with 1000 right after it). Our close
    /// frame goes out at once, without waiting, so the server's closing handshake completes.
    fn refused(&mut self, data: ErrorData, reported: bool) {
        if self.broken.is_none() {
            self.broken = Some(Broken::Server { data, reported });
        }
        self.in_flight = false;
        let _ = self.ws.close(Some(normal_close())).now_or_never();
    }

    fn set_closed(&mut self, frame: Option<CloseFrame>) {
        match frame {
            Some(frame) => {
                let reason = frame.reason.as_str().to_owned();
                self.set_closed_reason(Some(u16::from(frame.code)), &reason);
            }
            None => self.set_closed_reason(None, "closed by the server"),
        }
    }

    fn set_closed_reason(&mut self, code: Option<u16>, reason: &str) {
        if self.broken.is_none() {
            self.broken = Some(Broken::Closed {
                code,
                reason: reason.to_owned(),
            });
        }
        self.in_flight = false;
    }

    /// Gives up on the connection (timeout, cancellation, protocol breach): later calls get
    /// `Closed` with `reason`. Sends a close frame if it can without waiting, so the server
    /// frees the session.
    fn abandon(&mut self, reason: String) {
        if self.broken.is_none() {
            self.broken = Some(Broken::Closed { code: None, reason });
        }
        self.in_flight = false;
        let _ = self.ws.close(Some(normal_close())).now_or_never();
    }

    /// Reads, without waiting, every frame the server has already sent while no request was
    /// in flight, and records the ones that matter (an error frame, a close).
    fn drain_ready(&mut self) {
        while self.broken.is_none() {
            let Some(item) = self.ws.next().now_or_never() else {
                break;
            };
            match Inbound::from(item) {
                Inbound::Control => {}
                Inbound::Text(text) => match serde_json::from_str::<ServerFrame>(text.as_str()) {
                    Ok(ServerFrame::Error(data)) => self.refused(data, false),
                    _ => self.abandon(format!(
                        "connection abandoned: unsolicited frame from the server: {}",
                        preview(&text)
                    )),
                },
                Inbound::Binary(len) => self.abandon(format!(
                    "connection abandoned: unsolicited binary frame of {len} bytes"
                )),
                other => {
                    let _ = self.end(other);
                }
            }
        }
    }

    /// Flushes queued control replies (pongs, the close reply) without waiting.
    fn flush_now(&mut self) {
        let _ = self.ws.flush().now_or_never();
    }

    /// One keepalive pass while idle: reads what has arrived (so tungstenite answers pings),
    /// records unsolicited frames, flushes the pongs. Returns `false` once the connection is
    /// unusable (the keepalive task then stops).
    pub(crate) fn poll_idle(&mut self) -> bool {
        if self.in_flight && self.broken.is_none() {
            self.abandon(
                "connection abandoned: an earlier request was cancelled before its reply arrived"
                    .to_owned(),
            );
        }
        if self.broken.is_none() {
            self.drain_ready();
            self.flush_now();
        }
        self.broken.is_none()
    }

    /// The closing handshake: `{"type":"close"}`, our close frame (1000), then wait for the
    /// server's close, within `limit`. A connection that is already closed is fine.
    pub(crate) async fn close(&mut self, limit: Duration) -> Result<(), ClientError> {
        if self.broken.is_some() || self.in_flight {
            self.abandon("client closed".to_owned());
            return Ok(());
        }
        let handshake = async {
            let close = Message::Text(Utf8Bytes::from_static(r#"{"type":"close"}"#));
            self.ws.send(close).await?;
            self.ws.close(Some(normal_close())).await?;
            while let Some(item) = self.ws.next().await {
                item?;
            }
            Ok::<(), tungstenite::Error>(())
        };
        let result = tokio::time::timeout(limit, handshake).await;
        self.set_closed_reason(Some(1000), "client closed");
        match result {
            Err(_elapsed) => Err(ClientError::Timeout {
                op: "close",
                after: limit,
            }),
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => match classify(err) {
                ClientError::Closed { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}

fn normal_close() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: Utf8Bytes::from_static(""),
    }
}

/// Maps a tungstenite failure: a connection that is simply gone is `Closed`, an oversized
/// reply is `Protocol`, the rest is `Transport`.
pub(crate) fn classify(err: tungstenite::Error) -> ClientError {
    use std::io::ErrorKind as K;
    use tungstenite::Error as E;
    use tungstenite::error::ProtocolError as P;
    match err {
        E::ConnectionClosed | E::AlreadyClosed => ClientError::Closed {
            code: None,
            reason: "connection closed".to_owned(),
        },
        E::Io(ref io)
            if matches!(
                io.kind(),
                K::BrokenPipe
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::UnexpectedEof
                    | K::NotConnected
            ) =>
        {
            ClientError::Closed {
                code: None,
                reason: io.to_string(),
            }
        }
        E::Protocol(ref p @ (P::ResetWithoutClosingHandshake | P::SendAfterClosing)) => {
            ClientError::Closed {
                code: None,
                reason: p.to_string(),
            }
        }
        E::Capacity(ref cap) => {
            ClientError::protocol(format!("reply exceeds max_message_bytes: {cap}"))
        }
        other => ClientError::Transport {
            source: Box::new(other),
        },
    }
}

/// The start of a frame, for error messages.
fn preview(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}
