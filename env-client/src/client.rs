//! [`EnvClient`]: one WebSocket connection to an OpenEnv server, which is one session and one
//! episode (`PROTOCOL.md` §3, §3.8).
//!
//! The client speaks the 0.10 protocol to official servers (0.3 and 0.10) and to `env-server`:
//! `reset` always carries a `data` object, `state` none, `close` is `{"type":"close"}` then a
//! close 1000. Both observation envelope shapes are read. `verify` (E1) is sent only when the
//! caller asks; `UNKNOWN_TYPE` then means unsupported and the session stays open (E2).
//!
//! Hot path: a request locks the stream (`tokio::sync::Mutex`), writes its frame, reads until
//! the reply and unlocks — no task hop. While idle, one small keepalive task per client answers
//! the server's pings (`ClientConfig::keepalive_interval`).
//!
//! Architecture invariant: requests on one connection are strictly sequential and each gets
//! exactly the next reply frame; whenever that pairing is in doubt (timeout, a cancelled
//! request, an unsolicited frame) the connection is abandoned rather than risk a mismatch.

mod address;
mod conn;

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig};

pub use address::ws_url;

use crate::error::ClientError;
use crate::protocol::{
    ClientFrame, EnvState, ErrorCode, JsonMap, JsonRpcRequest, JsonRpcResponse, Observation,
    ObservationEnvelope, Reward, ServerFrame, Tool, ToolError, ToolResult, VerifyResult,
};
use address::Dial;
use conn::Conn;

/// The longest [`EnvClient::close`] waits for the server's close frame (less when
/// `request_timeout` is shorter).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default [`ClientConfig::read_buffer_bytes`].
pub const DEFAULT_READ_BUFFER_BYTES: usize = 8 * 1024;

/// Smallest accepted [`ClientConfig::read_buffer_bytes`].
const MIN_READ_BUFFER_BYTES: usize = 1024;

/// Client settings; the defaults are the official client's (`PROTOCOL.md` §3.6).
///
/// ```
/// use std::time::Duration;
/// use env_client::ClientConfig;
/// let config = ClientConfig::default()
///     .with_request_timeout(Some(Duration::from_secs(300)))
///     .with_keepalive_interval(None);
/// assert_eq!(config.connect_timeout, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Limit on the TCP connect plus the WebSocket handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Limit on each request's round trip; `None` waits forever. Default 60 s. After a
    /// timeout the connection is abandoned and later calls fail at once.
    pub request_timeout: Option<Duration>,
    /// Largest inbound message (and frame) accepted. Default 100 MiB.
    pub max_message_bytes: usize,
    /// How often the idle connection is polled so that the server's pings get their pongs
    /// (the server closes with 1011 after 20 s without one). Default 5 s; `None` runs no
    /// keepalive task (pings are then answered only during requests).
    pub keepalive_interval: Option<Duration>,
    /// Size of the socket read buffer. Default 8 KiB: a step's frames are small, and the
    /// WebSocket layer zero-fills this much of the buffer before every read, so tungstenite's
    /// own default (128 KiB) costs about 10 µs of CPU per step. Larger messages still arrive
    /// whole, in several reads.
    pub read_buffer_bytes: usize,
    /// Called with each new connection's TCP socket, right after the TCP connect and before
    /// the WebSocket handshake. Default `None`. See [`SocketHook`].
    pub on_socket: Option<SocketHook>,
}

/// A function told the raw file descriptor of each new connection's socket
/// ([`ClientConfig::on_socket`]), for driving the client from a foreign event loop.
///
/// The client runs on whatever Tokio runtime polls it. A caller that runs a current-thread
/// runtime only when its own event loop says there is work (the Python bindings tick one per
/// asyncio loop) watches these sockets in that loop: a readable socket means a reply may be
/// waiting. The hook runs on the thread that polls the connect; it must not close the
/// descriptor, which the client owns.
///
/// Two hooks are equal when they are the same function object (`Arc::ptr_eq`).
#[derive(Clone)]
pub struct SocketHook(Arc<dyn Fn(std::os::fd::RawFd) + Send + Sync>);

impl SocketHook {
    /// A hook that calls `f` with each new socket's file descriptor.
    pub fn new(f: impl Fn(std::os::fd::RawFd) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    fn call(&self, fd: std::os::fd::RawFd) {
        (self.0)(fd);
    }
}

impl std::fmt::Debug for SocketHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketHook(..)")
    }
}

impl PartialEq for SocketHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SocketHook {}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(60)),
            max_message_bytes: 100 * 1024 * 1024,
            keepalive_interval: Some(Duration::from_secs(5)),
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            on_socket: None,
        }
    }
}

impl ClientConfig {
    /// Sets [`ClientConfig::connect_timeout`].
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::request_timeout`].
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::max_message_bytes`].
    #[must_use]
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets [`ClientConfig::keepalive_interval`].
    #[must_use]
    pub fn with_keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keepalive_interval = interval;
        self
    }

    /// Sets [`ClientConfig::read_buffer_bytes`].
    #[must_use]
    pub fn with_read_buffer_bytes(mut self, bytes: usize) -> Self {
        self.read_buffer_bytes = bytes;
        self
    }

    /// Sets [`ClientConfig::on_socket`].
    #[must_use]
    pub fn with_on_socket(mut self, hook: Option<SocketHook>) -> Self {
        self.on_socket = hook;
        self
    }

    fn validate(&self) -> Result<(), ClientError> {
        let bad = |reason: &str| {
            Err(ClientError::InvalidConfig {
                reason: reason.to_owned(),
            })
        };
        if self.keepalive_interval.is_some_and(|d| d.is_zero()) {
            return bad("keepalive_interval must be positive (or None)");
        }
        if self.max_message_bytes == 0 {
            return bad("max_message_bytes must be positive");
        }
        if self.read_buffer_bytes < MIN_READ_BUFFER_BYTES {
            return bad("read_buffer_bytes must be at least 1024");
        }
        Ok(())
    }
}

/// The result of `reset` or `step` (the official `StepResult`, `PROTOCOL.md` §2.3).
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// The observation (0.10 servers put `metadata` first; 0.3 servers send no metadata).
    pub observation: Observation,
    /// The reward as the environment gave it; `None` when it gave none.
    pub reward: Option<Reward>,
    /// Whether the episode has ended.
    pub done: bool,
    /// The top-level metadata (0.4+ servers, present only when non-empty).
    pub metadata: Option<JsonMap>,
}

impl From<ObservationEnvelope> for StepResult {
    fn from(envelope: ObservationEnvelope) -> Self {
        Self {
            observation: envelope.observation,
            reward: envelope.reward,
            done: envelope.done,
            metadata: envelope.metadata,
        }
    }
}

/// The result of a step-path MCP tool call (`PROTOCOL.md` §6.1, §6.2).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The tool's value: `result.data` if present, else the whole `result`.
    pub value: Value,
    /// The tool result object, when it has the fastmcp shape.
    pub result: Option<ToolResult>,
    /// The whole observation (`tool_name`, `result`, `error`, and `metadata` on 0.10).
    pub observation: Observation,
    /// The step's reward (`None` on the official MCP envs).
    pub reward: Option<Reward>,
    /// Whether the episode has ended.
    pub done: bool,
}

/// State shared by the client handle and its keepalive task.
struct Shared {
    conn: Mutex<Conn>,
    request_timeout: Option<Duration>,
}

/// One WebSocket connection to an OpenEnv server: one session, one episode.
///
/// `Send + Sync`; every method takes `&self`. Calls on one client are served one at a time,
/// in the order they take the connection. Dropping the client drops the connection (the
/// server then ends the session); [`EnvClient::close`] ends it politely. It runs on a Tokio
/// runtime with the I/O and time drivers enabled, and spawns its keepalive task there.
///
/// ```no_run
/// # async fn demo() -> Result<(), env_client::ClientError> {
/// use env_client::{EnvClient, protocol::JsonMap};
/// use serde_json::json;
///
/// let client = EnvClient::connect("http://127.0.0.1:8000").await?;
/// let first = client.reset(JsonMap::new()).await?;
/// let mut action = JsonMap::new();
/// action.insert("message".into(), json!("hello"));
/// let step = client.step(action).await?;
/// println!("{:?} {:?} {}", first.observation, step.reward, step.done);
/// client.close().await?;
/// # Ok(()) }
/// ```
pub struct EnvClient {
    shared: Arc<Shared>,
    url: String,
    keepalive: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EnvClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvClient").field("url", &self.url).finish()
    }
}

impl Drop for EnvClient {
    fn drop(&mut self) {
        if let Some(task) = &self.keepalive {
            task.abort();
        }
    }
}

impl EnvClient {
    /// Connects to the server at `url` with the default [`ClientConfig`]. See [`ws_url`] for
    /// how the URL is read.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, ClientConfig::default()).await
    }

    /// Connects to the server at `url`: TCP (Nagle off) and the WebSocket handshake, within
    /// `config.connect_timeout`. A refusal the server sends right after the handshake
    /// (`CAPACITY_REACHED`, `FACTORY_ERROR`, `SESSION_ERROR`) is reported by the first call.
    pub async fn connect_with(url: &str, config: ClientConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let ws_url = address::parse(url)?;
        let dial = address::dial_target(&ws_url, url)?;
        let ws_url = String::from(ws_url);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes))
            .read_buffer_size(config.read_buffer_bytes);
        let connect_error = |source: tungstenite::Error| ClientError::Connect {
            url: ws_url.clone(),
            source: Box::new(source),
        };
        let open = async {
            let tcp = match &dial {
                Dial::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
                Dial::Addr(addr) => TcpStream::connect(addr).await,
            }
            .map_err(|err| connect_error(err.into()))?;
            tcp.set_nodelay(true)
                .map_err(|err| connect_error(err.into()))?;
            if let Some(hook) = &config.on_socket {
                hook.call(std::os::fd::AsRawFd::as_raw_fd(&tcp));
            }
            let (ws, _response) =
                tokio_tungstenite::client_async_with_config(ws_url.as_str(), tcp, Some(ws_config))
                    .await
                    .map_err(connect_error)?;
            Ok::<_, ClientError>(ws)
        };
        let ws = tokio::time::timeout(config.connect_timeout, open)
            .await
            .map_err(|_elapsed| ClientError::Timeout {
                op: "connect",
                after: config.connect_timeout,
            })??;
        let shared = Arc::new(Shared {
            conn: Mutex::new(Conn::new(ws)),
            request_timeout: config.request_timeout,
        });
        let keepalive = config
            .keepalive_interval
            .map(|every| tokio::spawn(keepalive(Arc::downgrade(&shared), every)));
        tracing::debug!(url = %ws_url, "connected");
        Ok(Self {
            shared,
            url: ws_url,
            keepalive,
        })
    }

    /// The `/ws` URL this client is connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts an episode: `{"type":"reset","data":{…kwargs}}` (`data` is always sent, `{}`
    /// when empty). Unknown kwargs are ignored by the server.
    pub async fn reset(&self, kwargs: JsonMap) -> Result<StepResult, ClientError> {
        let frame = ClientFrame::Reset { data: kwargs };
        expect_observation(self.send("reset", &frame).await?, "reset").map(StepResult::from)
    }

    /// Applies an action: `{"type":"step","data":{…action}}`.
    pub async fn step(&self, action: JsonMap) -> Result<StepResult, ClientError> {
        let frame = ClientFrame::Step { data: action };
        expect_observation(self.send("step", &frame).await?, "step").map(StepResult::from)
    }

    /// The environment state: `{"type":"state"}`.
    pub async fn state(&self) -> Result<EnvState, ClientError> {
        match self.send("state", &ClientFrame::State).await? {
            ServerFrame::State(state) => Ok(state),
            other => Err(unexpected(other, "state", "state")),
        }
    }

    /// Extension E1: asks the server to verify the episode; the reward is computed entirely
    /// server-side. A server without it answers `UNKNOWN_TYPE`, returned as
    /// [`ClientError::Unsupported`] with the session intact.
    pub async fn verify(&self) -> Result<VerifyResult, ClientError> {
        let frame = ClientFrame::Verify {
            data: JsonMap::new(),
        };
        match self.send("verify", &frame).await? {
            ServerFrame::Verify(result) => Ok(result),
            ServerFrame::Error(data) if data.code == ErrorCode::UnknownType => {
                Err(ClientError::Unsupported { feature: "verify" })
            }
            other => Err(unexpected(other, "verify", "verify")),
        }
    }

    /// Lists the environment's MCP tools through the step path:
    /// `{"type":"step","data":{"type":"list_tools"}}`.
    pub async fn list_tools(&self) -> Result<Vec<Tool>, ClientError> {
        let mut action = JsonMap::new();
        action.insert("type".to_owned(), Value::from("list_tools"));
        let frame = ClientFrame::Step { data: action };
        let envelope = expect_observation(self.send("list_tools", &frame).await?, "list_tools")?;
        let tools = envelope
            .observation
            .into_map()
            .remove("tools")
            .ok_or_else(|| ClientError::protocol("list_tools observation has no `tools`"))?;
        serde_json::from_value(tools)
            .map_err(|err| ClientError::protocol(format!("bad `tools` in list_tools: {err}")))
    }

    /// Calls an MCP tool through the step path:
    /// `{"type":"step","data":{"type":"call_tool","tool_name":…,"arguments":{…}}}`.
    /// An `error` object in the observation becomes [`ClientError::Tool`], or
    /// [`ClientError::EpisodeDone`] when the observation metadata says `EPISODE_DONE`.
    pub async fn call_tool(&self, name: &str, arguments: JsonMap) -> Result<ToolCall, ClientError> {
        let mut action = JsonMap::new();
        action.insert("type".to_owned(), Value::from("call_tool"));
        action.insert("tool_name".to_owned(), Value::from(name));
        action.insert("arguments".to_owned(), Value::Object(arguments));
        let frame = ClientFrame::Step { data: action };
        let envelope = expect_observation(self.send("call_tool", &frame).await?, "call_tool")?;
        tool_call(envelope)
    }

    /// Sends a JSON-RPC request in an `mcp` frame (`{"type":"mcp","data":{…}}`) and returns
    /// the JSON-RPC response; a JSON-RPC error is a normal response here, not an `Err`.
    pub async fn mcp(&self, request: JsonRpcRequest) -> Result<JsonRpcResponse, ClientError> {
        let data = serde_json::to_value(&request)
            .map_err(|err| ClientError::protocol(format!("cannot encode request: {err}")))?;
        match self.send("mcp", &ClientFrame::Mcp { data }).await? {
            ServerFrame::Mcp(response) => Ok(response),
            other => Err(unexpected(other, "mcp", "mcp")),
        }
    }

    /// Sends any text frame and reads exactly one reply frame (for tests and benchmarks).
    /// A server `error` frame is returned as `Ok(ServerFrame::Error)`, also a connect-time
    /// refusal the first time it is reported; a reply that is not a known server frame is
    /// [`ClientError::Protocol`]. Sending `{"type":"close"}` here gets no reply.
    pub async fn request_raw(&self, text: String) -> Result<ServerFrame, ClientError> {
        self.exchange("request", text).await
    }

    /// Ends the session: `{"type":"close"}`, then a close frame (1000), then waits for the
    /// server's close, for at most [`CLOSE_TIMEOUT`] (or the request timeout, if shorter).
    /// A connection the server already closed is not an error.
    pub async fn close(self) -> Result<(), ClientError> {
        self.shutdown().await
    }

    /// [`EnvClient::close`] through a shared reference, for owners that keep the client in an
    /// `Arc` (bindings). Later calls fail with [`ClientError::Closed`].
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        if let Some(task) = &self.keepalive {
            task.abort();
        }
        let limit = self
            .shared
            .request_timeout
            .map_or(CLOSE_TIMEOUT, |t| t.min(CLOSE_TIMEOUT));
        let mut conn = self.shared.conn.lock().await;
        conn.close(limit).await
    }

    async fn send(
        &self,
        op: &'static str,
        frame: &ClientFrame,
    ) -> Result<ServerFrame, ClientError> {
        let text = serde_json::to_string(frame)
            .map_err(|err| ClientError::protocol(format!("cannot encode {op} frame: {err}")))?;
        self.exchange(op, text).await
    }

    async fn exchange(&self, op: &'static str, text: String) -> Result<ServerFrame, ClientError> {
        let mut conn = self.shared.conn.lock().await;
        conn.request(op, text, self.shared.request_timeout).await
    }
}

/// The keepalive task: every `every`, if no request holds the connection, reads what has
/// arrived so tungstenite answers pings. Holds only a `Weak`; ends with the client.
async fn keepalive(shared: Weak<Shared>, every: Duration) {
    let start = tokio::time::Instant::now() + every;
    let mut ticker = tokio::time::interval_at(start, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Ok(mut conn) = shared.conn.try_lock() else {
            continue; // a request is running; it answers pings itself
        };
        if !conn.poll_idle() {
            return;
        }
    }
}

fn expect_observation(frame: ServerFrame, op: &str) -> Result<ObservationEnvelope, ClientError> {
    match frame {
        ServerFrame::Observation(envelope) => Ok(envelope),
        other => Err(unexpected(other, op, "observation")),
    }
}

/// The error for a reply of the wrong kind: a server `error` frame as itself, else `Protocol`.
fn unexpected(frame: ServerFrame, op: &str, wanted: &str) -> ClientError {
    let got = match frame {
        ServerFrame::Error(data) => return ClientError::server(data),
        ServerFrame::Observation(_) => "observation",
        ServerFrame::State(_) => "state",
        ServerFrame::Mcp(_) => "mcp",
        ServerFrame::Verify(_) => "verify",
    };
    ClientError::protocol(format!(
        "expected a {wanted} frame in reply to {op}, got {got}"
    ))
}

/// The observation-metadata `error_code` of a tool call on a finished episode
/// (`TERMINAL_ENV.md` §4.5).
const EPISODE_DONE: &str = "EPISODE_DONE";

/// Reads a step-path `call_tool` observation (`PROTOCOL.md` §6.1).
fn tool_call(envelope: ObservationEnvelope) -> Result<ToolCall, ClientError> {
    let observation = envelope.observation;
    if let Some(error) = observation.get("error").filter(|e| !e.is_null()) {
        let episode_done = observation
            .metadata()
            .and_then(|meta| meta.get("error_code"))
            .and_then(Value::as_str)
            == Some(EPISODE_DONE);
        return Err(match serde_json::from_value::<ToolError>(error.clone()) {
            Ok(ToolError { message, .. }) if episode_done => ClientError::EpisodeDone {
                message,
                reward: envelope.reward.map(Reward::as_f64),
            },
            Ok(ToolError {
                error_type,
                message,
            }) => ClientError::Tool {
                error_type,
                message,
            },
            Err(err) => ClientError::protocol(format!("bad tool error object {error}: {err}")),
        });
    }
    let raw = observation.get("result").cloned().unwrap_or(Value::Null);
    let value = match &raw {
        Value::Object(map) if map.contains_key("data") => {
            map.get("data").cloned().unwrap_or_default()
        }
        other => other.clone(),
    };
    // Only a fastmcp-shaped object is a `ToolResult` (its fields all have defaults).
    let result = match &raw {
        Value::Object(map) if map.contains_key("content") || map.contains_key("data") => {
            serde_json::from_value::<ToolResult>(raw).ok()
        }
        _ => None,
    };
    Ok(ToolCall {
        value,
        result,
        observation,
        reward: envelope.reward,
        done: envelope.done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<EnvClient>();
    }

    #[test]
    fn config_defaults_are_the_official_ones() {
        let config = ClientConfig::default();
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.request_timeout, Some(Duration::from_secs(60)));
        assert_eq!(config.max_message_bytes, 104_857_600);
        assert_eq!(config.keepalive_interval, Some(Duration::from_secs(5)));
        assert!(
            config
                .with_keepalive_interval(Some(Duration::ZERO))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn tool_call_reads_value_and_error() {
        let ok: ObservationEnvelope = serde_json::from_str(
            r#"{"observation":{"metadata":{},"tool_name":"t","result":{"content":[],"structured_content":{"result":"x"},"meta":null,"data":"x","is_error":false},"error":null},"reward":null,"done":false}"#,
        )
        .unwrap();
        let call = tool_call(ok).unwrap();
        assert_eq!(call.value, Value::from("x"));
        assert_eq!(call.result.unwrap().data, Value::from("x"));
        let bare: ObservationEnvelope = serde_json::from_str(
            r#"{"observation":{"tool_name":"t","result":{"k":1},"error":null},"reward":null,"done":false}"#,
        )
        .unwrap();
        assert_eq!(tool_call(bare).unwrap().value, serde_json::json!({"k": 1}));
        let failed: ObservationEnvelope = serde_json::from_str(
            r#"{"observation":{"tool_name":"nope","result":null,"error":{"error_type":"tool_not_found","message":"Unknown tool: 'nope'"}},"reward":null,"done":false}"#,
        )
        .unwrap();
        assert!(matches!(
            tool_call(failed),
            Err(ClientError::Tool {
                error_type: crate::protocol::ToolErrorType::ToolNotFound,
                ..
            })
        ));
        let done: ObservationEnvelope = serde_json::from_str(
            r#"{"observation":{"metadata":{"error_code":"EPISODE_DONE"},"tool_name":"terminal","result":null,"error":{"error_type":"execution_error","message":"Episode is done (reward=1.0). Call reset() to start a new episode."}},"reward":1.0,"done":true,"metadata":{"error_code":"EPISODE_DONE"}}"#,
        )
        .unwrap();
        let err = tool_call(done).unwrap_err();
        assert!(
            matches!(&err, ClientError::EpisodeDone { reward: Some(r), .. } if *r == 1.0),
            "{err:?}"
        );
        assert!(!err.is_fatal());
        assert!(err.to_string().contains("Episode is done"), "{err}");
    }
}
