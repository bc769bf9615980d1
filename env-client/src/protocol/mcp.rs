//! JSON-RPC 2.0 and MCP tool shapes (`PROTOCOL.md` §6).
//!
//! Two tool listings exist on the wire: the step path (`list_tools` action) always writes
//! `input_schema`; JSON-RPC `tools/list` writes the 0.10 dump (`inputSchema` and friends).
//! [`Tool`] reads either; [`ToolListing`] writes the JSON-RPC one.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::JsonMap;

/// The JSON-RPC version string, always `"2.0"`.
pub const JSONRPC_VERSION: &str = "2.0";

/// JSON-RPC error codes used by OpenEnv (`PROTOCOL.md` §6.3).
pub mod codes {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The body is not a valid request (or the session is initialising).
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad or unknown params (`session_id`, `name`).
    pub const INVALID_PARAMS: i64 = -32602;
    /// The handler failed (unknown tool, env without MCP).
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Server-side refusal (capacity, factory).
    pub const SERVER_ERROR: i64 = -32000;
}

/// A JSON-RPC request id: a string, an integer, or absent/`null`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JsonRpcId {
    /// Integer id (the official clients count from 1).
    Int(i64),
    /// String id.
    Str(String),
}

/// A JSON-RPC 2.0 request (`extra="forbid"` upstream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRpcRequest {
    /// Must be `"2.0"`.
    pub jsonrpc: String,
    /// The method, e.g. `tools/list`.
    pub method: String,
    /// Parameters (default `{}`).
    #[serde(default)]
    pub params: JsonMap,
    /// The request id (`null` when absent).
    #[serde(default)]
    pub id: Option<JsonRpcId>,
}

impl JsonRpcRequest {
    /// A request with the given method, params and id.
    pub fn new(method: impl Into<String>, params: JsonMap, id: i64) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            method: method.into(),
            params,
            id: Some(JsonRpcId::Int(id)),
        }
    }
}

/// A JSON-RPC error object: `code`, `message`, `data` (always present, often `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonRpcError {
    /// The error code ([`codes`]).
    pub code: i64,
    /// The message.
    pub message: String,
    /// Extra data or `null`.
    #[serde(default)]
    pub data: Value,
}

/// The outcome half of a JSON-RPC response: `"result": …` or `"error": {…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonRpcOutcome {
    /// Success.
    Result(Value),
    /// Failure.
    Error(JsonRpcError),
}

/// A JSON-RPC 2.0 response: `{"jsonrpc":"2.0","id":…,"result"|"error":…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonRpcResponse {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The request's id, `null` if it could not be read.
    pub id: Option<JsonRpcId>,
    /// Result or error.
    #[serde(flatten)]
    pub outcome: JsonRpcOutcome,
}

impl JsonRpcResponse {
    /// A success response.
    pub fn result(id: Option<JsonRpcId>, result: Value) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            id,
            outcome: JsonRpcOutcome::Result(result),
        }
    }

    /// An error response with `data: null`.
    pub fn error(id: Option<JsonRpcId>, code: i64, message: impl Into<String>) -> Self {
        Self::error_with_data(id, code, message, Value::Null)
    }

    /// An error response with data.
    pub fn error_with_data(
        id: Option<JsonRpcId>,
        code: i64,
        message: impl Into<String>,
        data: Value,
    ) -> Self {
        Self {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            id,
            outcome: JsonRpcOutcome::Error(JsonRpcError {
                code,
                message: message.into(),
                data,
            }),
        }
    }
}

/// A tool as the step path lists it (`name`, `description`, `input_schema`); reads the
/// JSON-RPC `inputSchema` spelling too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Tool name.
    pub name: String,
    /// What the tool does.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments.
    #[serde(alias = "inputSchema", default)]
    pub input_schema: Value,
}

/// A tool as JSON-RPC `tools/list` dumps it on a 0.10 server (`PROTOCOL.md` §6.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolListing {
    /// Tool name.
    pub name: String,
    /// Title (`null`).
    pub title: Option<String>,
    /// Description.
    pub description: String,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
    /// JSON Schema of the result, `null` when unknown.
    pub output_schema: Value,
    /// Icons (`null`).
    pub icons: Value,
    /// Annotations (`null`).
    pub annotations: Value,
    /// Meta (`{"fastmcp":{"tags":[]}}` upstream).
    pub meta: Value,
    /// Execution (`null`).
    pub execution: Value,
}

impl ToolListing {
    /// The JSON-RPC dump of a tool, with its output schema.
    pub fn new(tool: &Tool, output_schema: Value) -> Self {
        Self {
            name: tool.name.clone(),
            title: None,
            description: tool.description.clone(),
            input_schema: tool.input_schema.clone(),
            output_schema,
            icons: Value::Null,
            annotations: Value::Null,
            meta: json!({"fastmcp": {"tags": []}}),
            execution: Value::Null,
        }
    }
}

/// One content block of a tool result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentBlock {
    /// Always `"text"` here.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
    /// Annotations (`null`).
    #[serde(default)]
    pub annotations: Value,
    /// Meta (`null`).
    #[serde(default)]
    pub meta: Value,
}

/// A tool result (fastmcp's `CallToolResult` dump, `PROTOCOL.md` §6.2). The value is at `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// Content blocks.
    #[serde(default)]
    pub content: Vec<ContentBlock>,
    /// Structured content.
    #[serde(default)]
    pub structured_content: Value,
    /// Meta.
    #[serde(default)]
    pub meta: Value,
    /// The bare value the tool returned.
    #[serde(default)]
    pub data: Value,
    /// Whether the tool reported an error.
    #[serde(default)]
    pub is_error: bool,
}

impl ToolResult {
    /// The result of a tool that returned `value`, in fastmcp's conventions: a string (or
    /// any non-object) is wrapped (`structured_content` `{"result": v}`, `meta`
    /// `{"fastmcp":{"wrap_result":true}}`); an object is its own structured content.
    pub fn from_value(value: Value) -> Self {
        let text = match &value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let (structured_content, meta) = if value.is_object() {
            (value.clone(), Value::Null)
        } else {
            (
                json!({ "result": value.clone() }),
                json!({"fastmcp": {"wrap_result": true}}),
            )
        };
        Self {
            content: vec![ContentBlock {
                kind: "text".to_owned(),
                text,
                annotations: Value::Null,
                meta: Value::Null,
            }],
            structured_content,
            meta,
            data: value,
            is_error: false,
        }
    }
}

/// The kinds of step-path tool failure the official client accepts (`ToolError(**error)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorType {
    /// The tool raised.
    ExecutionError,
    /// The arguments were invalid.
    InvalidArgs,
    /// Transport failure.
    TransportError,
    /// No tool of that name.
    ToolNotFound,
    /// The tool timed out.
    Timeout,
}

/// A step-path tool failure: `{"error_type": …, "message": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolError {
    /// What kind of failure.
    pub error_type: ToolErrorType,
    /// The message, e.g. `"Unknown tool: 'nope'"`.
    pub message: String,
}

impl ToolError {
    /// A tool error.
    pub fn new(error_type: ToolErrorType, message: impl Into<String>) -> Self {
        Self {
            error_type,
            message: message.into(),
        }
    }

    /// `tool_not_found` with OpenEnv's message.
    pub fn not_found(name: &str) -> Self {
        Self::new(
            ToolErrorType::ToolNotFound,
            format!("Unknown tool: '{name}'"),
        )
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
