//! The OpenEnv wire protocol: every frame a client and a server exchange, as serde types.
//!
//! This module is the one definition of each wire type (`DESIGN.md` invariant 6). `env-server`
//! and the Python bindings reuse it; no other module derives serde for wire frames. The shapes
//! follow the official 0.10 server byte for byte (`PROTOCOL.md` §2–§6): compact JSON, model key
//! order (serde_json `preserve_order`), `null`s present, and the top-level `metadata` of an
//! observation envelope omitted only when empty.
//!
//! Layout:
//! - [`frames`]: the `/ws` envelopes ([`ClientFrame`], [`ServerFrame`]) and their payloads;
//! - [`mcp`]: JSON-RPC 2.0 and the MCP tool shapes (step path and JSON-RPC path);
//! - [`parse`]: the staged parse of an inbound client frame into a [`ClientFrame`] or the exact
//!   OpenEnv error (`INVALID_JSON` → `SESSION_ERROR` → `UNKNOWN_TYPE` → `VALIDATION_ERROR`);
//! - [`validation`]: pydantic-shaped validation error items, shared by the server's envs.

pub mod frames;
pub mod mcp;
pub mod parse;
pub mod validation;

pub use frames::*;
pub use mcp::*;
pub use parse::{FrameError, parse_client_frame, parse_json_lenient};
pub use validation::{Loc, ValidationErrorItem};

/// A JSON object with insertion-ordered keys (serde_json is built with `preserve_order`).
pub type JsonMap = serde_json::Map<String, serde_json::Value>;
