//! [`ClientError`]: every way a call of the client or the pool can fail.
//!
//! One `#[non_exhaustive]` enum of struct variants with named fields (`STYLE.md` §4), so
//! callers match on causes and read context without parsing strings. A server `error` frame
//! keeps its wire code ([`ClientError::code`]); transport failures keep their tungstenite
//! source.

use std::time::Duration;

use tokio_tungstenite::tungstenite;

use crate::protocol::{ErrorCode, ErrorData, ToolErrorType};

/// A failed client or pool call.
#[derive(Debug, thiserror::Error)]
#[cfg_attr(not(feature = "exhaustive"), non_exhaustive)]
pub enum ClientError {
    /// The server URL cannot be turned into a `/ws` address, or needs a transport this build
    /// lacks (`wss://`: TLS is not compiled in).
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A client or pool setting is out of range.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The TCP connection or the WebSocket handshake failed (refused, unknown host, HTTP
    /// status other than 101, …).
    #[error("failed to connect to {url}")]
    Connect {
        /// The `/ws` URL that was dialled.
        url: String,
        /// The underlying failure.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The connection is closed: by the server (its close code and reason), by the network,
    /// or abandoned by the client after an earlier failure (`code` is then `None` and
    /// `reason` says why). The client cannot be used any more.
    #[error("connection closed{}: {reason}", close_code_text(*code))]
    Closed {
        /// The WebSocket close code, when a close frame carried one.
        code: Option<u16>,
        /// The close reason, or what ended the connection.
        reason: String,
    },
    /// The server answered with an `error` frame (`PROTOCOL.md` §3.4), or refused the session
    /// at connect time (`CAPACITY_REACHED`, `FACTORY_ERROR`, `SESSION_ERROR`).
    #[error("Server error: {message} (code: {code})")]
    Server {
        /// The wire code.
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// The whole `data` of the frame, with its extra keys (`errors`, `active_sessions`, …).
        data: Box<ErrorData>,
    },
    /// The server's reply is not the frame the request expects, or cannot be parsed.
    #[error("protocol error: {message}")]
    Protocol {
        /// What was wrong with the reply.
        message: String,
    },
    /// An operation did not finish in time. After a request timeout the connection is
    /// abandoned: later calls fail at once with [`ClientError::Closed`].
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation: `connect`, `reset`, `step`, `state`, `verify`, `mcp`, `close`, …
        op: &'static str,
        /// The limit that expired.
        after: Duration,
    },
    /// A step-path MCP tool call (`PROTOCOL.md` §6.1) returned an error object.
    #[error("Tool failed: {message} (type: {})", tool_error_type_str(*error_type))]
    Tool {
        /// The kind of failure.
        error_type: ToolErrorType,
        /// The server's message, e.g. `Unknown tool: 'nope'`.
        message: String,
    },
    /// A step-path tool call on an episode that is already done (`TERMINAL_ENV.md` §4.5):
    /// the environment ran nothing and answered with a tool error whose observation metadata
    /// has `"error_code":"EPISODE_DONE"`. The session is intact; `reset` starts a new episode.
    #[error("Tool failed: {message} (episode done)")]
    EpisodeDone {
        /// The server's message, e.g. `Episode is done (reward=1.0). Call reset() to start a
        /// new episode.`
        message: String,
        /// The episode's final reward, as the observation carried it.
        reward: Option<f64>,
    },
    /// A JSON-RPC error where a typed helper needs a result.
    #[error("JSON-RPC error {code}: {message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// The error message.
        message: String,
    },
    /// The server does not know an extension frame (it answered `UNKNOWN_TYPE`,
    /// `PROTOCOL.md` §11 E2). The session is intact.
    #[error("the server does not support {feature}")]
    Unsupported {
        /// The extension, e.g. `verify`.
        feature: &'static str,
    },
    /// The WebSocket transport failed in a way that is not a plain close.
    #[error("WebSocket transport error")]
    Transport {
        /// The underlying failure.
        #[source]
        source: Box<tungstenite::Error>,
    },
}

impl ClientError {
    /// The wire error code behind this error: the code of a server `error` frame, and
    /// `UNKNOWN_TYPE` for [`ClientError::Unsupported`]; `None` otherwise.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            Self::Unsupported { .. } => Some(ErrorCode::UnknownType),
            _ => None,
        }
    }

    /// Whether the connection is unusable after this error (closed, timed out, refused,
    /// failed transport, or a fatal server code). A `false` error leaves the session open:
    /// the next call on the same client works.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Server { code, .. } => is_fatal_code(*code),
            Self::InvalidUrl { .. }
            | Self::InvalidConfig { .. }
            | Self::Connect { .. }
            | Self::Closed { .. }
            | Self::Timeout { .. }
            | Self::Transport { .. } => true,
            Self::Protocol { .. }
            | Self::Tool { .. }
            | Self::EpisodeDone { .. }
            | Self::Rpc { .. }
            | Self::Unsupported { .. } => false,
        }
    }

    /// The error for a server `error` frame.
    pub(crate) fn server(data: ErrorData) -> Self {
        Self::Server {
            code: data.code,
            message: data.message.clone(),
            data: Box::new(data),
        }
    }

    /// A protocol error with the given message.
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::Protocol {
            message: message.into(),
        }
    }
}

/// Whether OpenEnv ends the session after an error frame with this code (it closes with 1000
/// right after sending it, `PROTOCOL.md` §3.4).
pub(crate) fn is_fatal_code(code: ErrorCode) -> bool {
    match code {
        ErrorCode::CapacityReached | ErrorCode::FactoryError | ErrorCode::SessionError => true,
        ErrorCode::InvalidJson
        | ErrorCode::UnknownType
        | ErrorCode::ValidationError
        | ErrorCode::ExecutionError
        | ErrorCode::Unknown => false,
    }
}

/// The wire string of a tool error type (`tool_not_found`, …).
fn tool_error_type_str(kind: ToolErrorType) -> &'static str {
    match kind {
        ToolErrorType::ExecutionError => "execution_error",
        ToolErrorType::InvalidArgs => "invalid_args",
        ToolErrorType::TransportError => "transport_error",
        ToolErrorType::ToolNotFound => "tool_not_found",
        ToolErrorType::Timeout => "timeout",
    }
}

fn close_code_text(code: Option<u16>) -> String {
    code.map_or_else(String::new, |code| format!(" with code {code}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_openenv_wording() {
        let err = ClientError::server(ErrorData::capacity_reached(1, 1));
        assert_eq!(
            err.to_string(),
            "Server error: Server at capacity: 1/1 sessions active. Cannot accept new connections. (code: CAPACITY_REACHED)"
        );
        assert_eq!(err.code(), Some(ErrorCode::CapacityReached));
        assert!(err.is_fatal());
        let err = ClientError::Tool {
            error_type: ToolErrorType::ToolNotFound,
            message: "Unknown tool: 'nope'".to_owned(),
        };
        assert_eq!(
            err.to_string(),
            "Tool failed: Unknown tool: 'nope' (type: tool_not_found)"
        );
        let err = ClientError::Closed {
            code: Some(1011),
            reason: "keepalive ping timeout".to_owned(),
        };
        assert_eq!(
            err.to_string(),
            "connection closed with code 1011: keepalive ping timeout"
        );
        assert_eq!(err.code(), None);
    }

    #[test]
    fn error_is_small_and_thread_safe() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<ClientError>();
        assert!(std::mem::size_of::<ClientError>() <= 64);
    }
}
