//! `env-client`: the OpenEnv wire types and an async client for openenv-rs and for official
//! OpenEnv servers.
//!
//! Layout:
//! - [`protocol`]: every frame of the OpenEnv protocol as serde types — the one definition the
//!   server and the Python bindings share;
//! - [`client`]: [`EnvClient`], one WebSocket connection = one episode;
//! - [`pool`]: [`Pool`], many concurrent episodes across one or more servers;
//! - [`error`]: [`ClientError`], the typed failures of the client.

pub mod client;
pub mod error;
pub mod pool;
pub mod protocol;

pub use client::{ClientConfig, EnvClient, SocketHook, StepResult, ToolCall};
pub use error::ClientError;
pub use pool::{Pool, PooledClient, ServerSlots};
