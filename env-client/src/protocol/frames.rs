//! `/ws` frames: the client → server envelope ([`ClientFrame`]) and the server → client
//! envelope ([`ServerFrame`]) with their payloads (`PROTOCOL.md` §2–§3, extension E1).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::JsonMap;
use super::mcp::{JsonRpcResponse, ToolError, ToolResult};
use super::validation::ValidationErrorItem;

/// A frame sent by a client on `/ws`: `{"type": …, "data": …}`.
///
/// Serialising gives the exact frames of the official clients (less their `json.dumps`
/// spacing). Servers parse inbound frames with [`super::parse_client_frame`], which reports
/// OpenEnv's error codes; this type's own `Deserialize` is for tests and tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
    /// Start an episode; `data` holds the reset keyword arguments (may be empty).
    Reset {
        /// Keyword arguments for the environment's `reset`.
        #[serde(default)]
        data: JsonMap,
    },
    /// Apply an action (an env action, or a step-path MCP action, `PROTOCOL.md` §6.1).
    Step {
        /// The action object.
        data: JsonMap,
    },
    /// Ask for the environment state.
    State,
    /// End the session; the server sends no reply and closes with 1000.
    Close,
    /// A JSON-RPC 2.0 request to the environment's MCP server (`PROTOCOL.md` §6.3).
    Mcp {
        /// The JSON-RPC request object (kept raw so a malformed one can be answered in kind).
        data: Value,
    },
    /// Extension E1: ask the server to verify the episode and compute its reward.
    Verify {
        /// Always `{}`: the client supplies no scoring input.
        #[serde(default)]
        data: JsonMap,
    },
}

impl ClientFrame {
    /// The wire name of this frame's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Reset { .. } => "reset",
            Self::Step { .. } => "step",
            Self::State => "state",
            Self::Close => "close",
            Self::Mcp { .. } => "mcp",
            Self::Verify { .. } => "verify",
        }
    }
}

/// A frame sent by a server on `/ws`: `{"type": …, "data": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum ServerFrame {
    /// The reply to `reset` and `step`.
    Observation(ObservationEnvelope),
    /// The reply to `state`.
    State(EnvState),
    /// A failure (`PROTOCOL.md` §3.4).
    Error(ErrorData),
    /// The reply to an `mcp` frame: a JSON-RPC response.
    Mcp(JsonRpcResponse),
    /// Extension E1: the reply to `verify`.
    Verify(VerifyResult),
}

/// A reward as an environment produced it. `/ws` sends it as-is (`1` stays `1`, `true` stays
/// `true`); a non-finite float is sent as `null` (serde_json writes non-finite `f64` as `null`).
///
/// Read straight from the JSON token (no buffering, no trial parses): an integer that does
/// not fit `i64` becomes a float, as it did under serde's untagged matching.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reward {
    /// A boolean reward (`true` counts as 1.0).
    Bool(bool),
    /// An integer reward.
    Int(i64),
    /// A float reward.
    Float(f64),
}

impl Reward {
    /// The reward as a float, as the HTTP routes coerce it (`true` → 1.0, `1` → 1.0).
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(self) -> f64 {
        match self {
            Self::Bool(b) => f64::from(u8::from(b)),
            Self::Int(i) => i as f64,
            Self::Float(f) => f,
        }
    }
}

impl<'de> Deserialize<'de> for Reward {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RewardVisitor;

        impl serde::de::Visitor<'_> for RewardVisitor {
            type Value = Reward;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a reward: a boolean or a number")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Reward, E> {
                Ok(Reward::Bool(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Reward, E> {
                Ok(Reward::Int(v))
            }

            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Reward, E> {
                Ok(i64::try_from(v).map_or(Reward::Float(v as f64), Reward::Int))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Reward, E> {
                Ok(Reward::Float(v))
            }
        }

        deserializer.deserialize_any(RewardVisitor)
    }
}

impl From<f64> for Reward {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}

/// An observation object: `metadata` first (0.10 servers always send it, 0.3 servers never),
/// then the environment's fields in declaration order.
///
/// Kept as a map so that frames of either protocol generation round-trip byte for byte.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Observation(pub JsonMap);

impl Observation {
    /// An observation with `metadata` first and then `fields`, in the order given.
    pub fn new(metadata: JsonMap, fields: impl IntoIterator<Item = (String, Value)>) -> Self {
        let fields = fields.into_iter();
        let mut map = JsonMap::with_capacity(1 + fields.size_hint().0);
        map.insert("metadata".to_owned(), Value::Object(metadata));
        map.extend(fields);
        Self(map)
    }

    /// The observation's `metadata` object, if present.
    pub fn metadata(&self) -> Option<&JsonMap> {
        self.0.get("metadata").and_then(Value::as_object)
    }

    /// A field of the observation by name.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }

    /// Consumes the observation into its map.
    pub fn into_map(self) -> JsonMap {
        self.0
    }
}

/// The `data` of an `observation` frame (`PROTOCOL.md` §2.2, the 0.10 envelope):
/// `{"observation":{…},"reward":…,"done":…[,"metadata":{…}]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationEnvelope {
    /// The observation (`metadata` first).
    #[serde(default)]
    pub observation: Observation,
    /// The reward, as-is; `null` when the env gives none.
    #[serde(default)]
    pub reward: Option<Reward>,
    /// Whether the episode has ended.
    #[serde(default)]
    pub done: bool,
    /// A copy of the observation's metadata, present only when non-empty (0.4+ servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JsonMap>,
}

impl ObservationEnvelope {
    /// The 0.10 envelope of an observation: top-level `metadata` copied from the
    /// observation's when (and only when) it is non-empty.
    pub fn new(observation: Observation, reward: Option<Reward>, done: bool) -> Self {
        let metadata = observation.metadata().filter(|m| !m.is_empty()).cloned();
        Self {
            observation,
            reward,
            done,
            metadata,
        }
    }
}

/// The text of the `observation` frame [`ServerFrame::Observation`] of
/// `ObservationEnvelope::new(observation, reward, done)` would serialise to, written from
/// borrowed parts: the top-level `metadata` is not copied first. Servers use it on the step
/// path.
pub fn observation_frame_text(
    observation: &Observation,
    reward: Option<Reward>,
    done: bool,
) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        data: Envelope<'a>,
    }
    #[derive(Serialize)]
    struct Envelope<'a> {
        observation: &'a Observation,
        reward: Option<Reward>,
        done: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<&'a JsonMap>,
    }
    let frame = Frame {
        kind: "observation",
        data: Envelope {
            observation,
            reward,
            done,
            metadata: observation.metadata().filter(|m| !m.is_empty()),
        },
    };
    frame_text(&frame)
}

/// Serialises a frame into a buffer sized for a typical frame (one allocation, no regrowth).
/// Serialising these types cannot fail (string keys, no non-string map keys); an impossible
/// failure yields an empty text rather than a panic.
pub fn frame_text<T: Serialize + ?Sized>(frame: &T) -> String {
    let mut buf = Vec::with_capacity(512);
    if serde_json::to_writer(&mut buf, frame).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The `data` of a `state` frame: `episode_id`, `step_count`, then the env's extra fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvState {
    /// The episode id (`null` before the first reset on some envs).
    #[serde(default)]
    pub episode_id: Option<String>,
    /// Steps taken in the current episode.
    #[serde(default)]
    pub step_count: u64,
    /// The environment's own state fields, in order.
    #[serde(flatten)]
    pub extra: JsonMap,
}

/// The error codes of `PROTOCOL.md` §3.4 (the stable contract), as their exact strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The frame is not JSON; the connection stays open.
    InvalidJson,
    /// Unknown or missing `type`; the connection stays open.
    UnknownType,
    /// Envelope or action failed validation; the connection stays open.
    ValidationError,
    /// The environment raised during `reset`/`step` (or `verify`); the connection stays open.
    ExecutionError,
    /// The session table is full; sent at connect, then close 1000.
    CapacityReached,
    /// The environment could not be constructed; sent at connect, then close 1000.
    FactoryError,
    /// A fatal session error (non-object JSON, binary frame, attach failure); close 1000.
    SessionError,
    /// A code this crate does not know (or none was sent: official clients read `UNKNOWN`).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code's wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "INVALID_JSON",
            Self::UnknownType => "UNKNOWN_TYPE",
            Self::ValidationError => "VALIDATION_ERROR",
            Self::ExecutionError => "EXECUTION_ERROR",
            Self::CapacityReached => "CAPACITY_REACHED",
            Self::FactoryError => "FACTORY_ERROR",
            Self::SessionError => "SESSION_ERROR",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn unknown_error() -> String {
    "Unknown error".to_owned()
}

fn unknown_code() -> ErrorCode {
    ErrorCode::Unknown
}

/// The `data` of an `error` frame: `message`, `code`, then code-specific keys
/// (`errors`, `active_sessions`/`max_sessions`, `factory_name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorData {
    /// Human-readable message (fixed texts are OpenEnv's verbatim).
    #[serde(default = "unknown_error")]
    pub message: String,
    /// The error code.
    #[serde(default = "unknown_code")]
    pub code: ErrorCode,
    /// Extra keys, in order.
    #[serde(flatten)]
    pub extra: JsonMap,
}

impl ErrorData {
    /// An error with no extra keys.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
            extra: JsonMap::new(),
        }
    }

    /// `VALIDATION_ERROR` with message `"Invalid message"` and its `errors` list.
    pub fn validation(errors: &[ValidationErrorItem]) -> Self {
        let mut extra = JsonMap::new();
        extra.insert(
            "errors".to_owned(),
            serde_json::to_value(errors).unwrap_or(Value::Array(Vec::new())),
        );
        Self {
            message: "Invalid message".to_owned(),
            code: ErrorCode::ValidationError,
            extra,
        }
    }

    /// `CAPACITY_REACHED` with OpenEnv's exact message and keys.
    pub fn capacity_reached(active: usize, max: usize) -> Self {
        let mut extra = JsonMap::new();
        extra.insert("active_sessions".to_owned(), Value::from(active));
        extra.insert("max_sessions".to_owned(), Value::from(max));
        Self {
            message: capacity_message(active, max),
            code: ErrorCode::CapacityReached,
            extra,
        }
    }

    /// `FACTORY_ERROR` with OpenEnv's exact message and keys.
    pub fn factory_error(factory_name: &str) -> Self {
        let mut extra = JsonMap::new();
        extra.insert("factory_name".to_owned(), Value::from(factory_name));
        Self {
            message: format!("Environment factory '{factory_name}' failed to create instance."),
            code: ErrorCode::FactoryError,
            extra,
        }
    }
}

/// OpenEnv's capacity message: `"Server at capacity: 1/1 sessions active. Cannot accept new connections."`.
pub fn capacity_message(active: usize, max: usize) -> String {
    format!("Server at capacity: {active}/{max} sessions active. Cannot accept new connections.")
}

/// Extension E1: the reply to `verify`. `reward` is always a finite float; key order
/// `reward`, `done`, `details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// The server-computed reward.
    pub reward: f64,
    /// Whether the episode is over after verification.
    pub done: bool,
    /// Verifier details (may be empty).
    #[serde(default)]
    pub details: JsonMap,
}

/// A step-path MCP observation (`PROTOCOL.md` §6.1): the result of `list_tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListToolsObservation {
    /// The tools, with `input_schema` (snake_case on the step path).
    pub tools: Vec<super::mcp::Tool>,
}

/// A step-path MCP observation (`PROTOCOL.md` §6.1): the result of `call_tool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallToolObservation {
    /// The tool that was called.
    pub tool_name: String,
    /// The tool result (value at `result.data`), `null` on error.
    pub result: Option<ToolResult>,
    /// The failure, `null` on success.
    pub error: Option<ToolError>,
}

/// The HTTP `/reset` and `/step` response (`PROTOCOL.md` §2.2): the reward coerced to a float
/// and `metadata` always present (`null` when empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpStepResponse {
    /// The observation.
    pub observation: Observation,
    /// The reward as a float, or `null`.
    pub reward: Option<f64>,
    /// Whether the episode ended.
    pub done: bool,
    /// The observation metadata, `null` when empty.
    pub metadata: Option<JsonMap>,
}

impl From<ObservationEnvelope> for HttpStepResponse {
    fn from(env: ObservationEnvelope) -> Self {
        let reward = env.reward.map(Reward::as_f64).filter(|r| r.is_finite());
        Self {
            metadata: env
                .observation
                .metadata()
                .filter(|m| !m.is_empty())
                .cloned(),
            observation: env.observation,
            reward,
            done: env.done,
        }
    }
}
