//! JSON-RPC 2.0 for MCP (`PROTOCOL.md` §6.3): one dispatcher for the `/ws` `mcp` frame, the
//! `/mcp` WebSocket and `POST /mcp`, including the `openenv/session/*` methods.

use std::sync::Arc;

use env_client::protocol::mcp::codes;
use env_client::protocol::{
    JsonMap, JsonRpcId, JsonRpcResponse, ToolErrorType, ToolListing, ToolResult, capacity_message,
};
use serde_json::{Value, json};

use crate::envs::{Environment, EpisodeStatus};
use crate::session::{AdmitError, Owner, Registry, Session};

/// Where a JSON-RPC request arrived.
pub enum Scope<'a> {
    /// On a socket's own session (`/ws` `mcp` frame, `/mcp` WebSocket); its env is locked.
    Socket {
        /// The socket's session id.
        session_id: &'a str,
        /// The locked env.
        env: &'a mut dyn Environment,
    },
    /// `POST /mcp`: a temporary env per request, or the session named by `params.session_id`.
    Http,
}

/// A validated request.
struct Request {
    id: Option<JsonRpcId>,
    method: String,
    params: JsonMap,
}

fn python_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::String(s) => format!("'{s}'"),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("'{k}': {}", python_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Number(n) => n.to_string(),
    }
}

/// Validates a JSON-RPC request as pydantic's `JsonRpcRequest` (`extra="forbid"`), with a
/// pydantic-style message on failure.
fn validate(body: Value) -> Result<Request, String> {
    let Value::Object(mut obj) = body else {
        let kind = env_client::protocol::parse::python_type_name(&body);
        return Err(format!(
            "1 validation error for JsonRpcRequest\n  Input should be a valid dictionary or instance of JsonRpcRequest [type=model_type, input_value={}, input_type={kind}]",
            python_repr(&body)
        ));
    };
    let input = python_repr(&Value::Object(obj.clone()));
    let mut errors: Vec<String> = Vec::new();
    let mut err = |field: &str, msg: &str, kind: &str, value: &str, input_type: &str| {
        errors.push(format!(
            "{field}\n  {msg} [type={kind}, input_value={value}, input_type={input_type}]\n    For further information visit https://errors.pydantic.dev/2.14/v/{kind}"
        ));
    };
    match obj.get("jsonrpc") {
        None => err("jsonrpc", "Field required", "missing", &input, "dict"),
        Some(Value::String(s)) if s == "2.0" => {}
        Some(other) => err(
            "jsonrpc",
            "Input should be '2.0'",
            "literal_error",
            &python_repr(other),
            "str",
        ),
    }
    match obj.get("method") {
        None => err("method", "Field required", "missing", &input, "dict"),
        Some(Value::String(_)) => {}
        Some(other) => err(
            "method",
            "Input should be a valid string",
            "string_type",
            &python_repr(other),
            "int",
        ),
    }
    match obj.get("params") {
        None | Some(Value::Object(_)) => {}
        Some(other) => err(
            "params",
            "Input should be a valid dictionary",
            "dict_type",
            &python_repr(other),
            "list",
        ),
    }
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(JsonRpcId::Str(s.clone())),
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().map(JsonRpcId::Int),
        Some(other) => {
            err(
                "id",
                "Input should be a valid string or integer",
                "union_type",
                &python_repr(other),
                "float",
            );
            None
        }
    };
    for (key, value) in &obj {
        if !matches!(key.as_str(), "jsonrpc" | "method" | "params" | "id") {
            err(
                key,
                "Extra inputs are not permitted",
                "extra_forbidden",
                &python_repr(value),
                "int",
            );
        }
    }
    if !errors.is_empty() {
        let n = errors.len();
        let plural = if n == 1 { "error" } else { "errors" };
        return Err(format!(
            "{n} validation {plural} for JsonRpcRequest\n{}",
            errors.join("\n")
        ));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => String::new(),
    };
    let params = match obj.remove("params") {
        Some(Value::Object(p)) => p,
        _ => JsonMap::new(),
    };
    Ok(Request { id, method, params })
}

/// The answer to a body that is not JSON (`PROTOCOL.md` §6.3).
pub fn parse_error(detail: Option<&str>) -> JsonRpcResponse {
    let message = match detail {
        Some(d) => format!("Parse error: {d}"),
        None => "Parse error".to_owned(),
    };
    JsonRpcResponse::error(None, codes::PARSE_ERROR, message)
}

/// Dispatches one JSON-RPC request.
pub async fn dispatch(registry: &Arc<Registry>, scope: Scope<'_>, body: Value) -> JsonRpcResponse {
    let req = match validate(body) {
        Ok(req) => req,
        Err(text) => {
            return JsonRpcResponse::error(
                None,
                codes::INVALID_REQUEST,
                format!("Invalid request: {text}"),
            );
        }
    };
    let id = req.id.clone();
    match handle(registry, scope, req).await {
        Ok(result) => JsonRpcResponse::result(id, result),
        Err((code, message, data)) => JsonRpcResponse::error_with_data(id, code, message, data),
    }
}

type RpcResult = Result<Value, (i64, String, Value)>;

fn rpc_err(code: i64, message: impl Into<String>) -> (i64, String, Value) {
    (code, message.into(), Value::Null)
}

fn session_param(params: &JsonMap) -> Option<&str> {
    params.get("session_id").and_then(Value::as_str)
}

/// Finds the HTTP session a request names, as JSON-RPC errors when it can't be used.
fn named_session(registry: &Registry, id: &str) -> Result<Arc<Session>, (i64, String, Value)> {
    let session = registry
        .get(id)
        .ok_or_else(|| rpc_err(codes::INVALID_PARAMS, format!("Unknown session_id: {id}")))?;
    if session.env().is_none() {
        return Err(rpc_err(
            codes::INVALID_REQUEST,
            format!("Session {id} is still initializing; retry shortly"),
        ));
    }
    registry.touch(&session);
    Ok(session)
}

/// A `tools/call` result: the tool's value in fastmcp's shape; an env that keeps an episode
/// adds its `done` and reward to the result's open `meta` object as `"openenv"` (no new
/// top-level key, `PROTOCOL.md` §11; `TERMINAL_ENV.md` §4.1).
fn tool_result(value: Value, status: Option<EpisodeStatus>) -> Value {
    let mut result = ToolResult::from_value(value);
    if let Some(status) = status {
        let openenv = json!({ "done": status.done, "reward": status.reward });
        match &mut result.meta {
            Value::Object(meta) => {
                meta.insert("openenv".to_owned(), openenv);
            }
            other => *other = json!({ "openenv": openenv }),
        }
    }
    serde_json::to_value(result).unwrap_or(Value::Null)
}

async fn handle(registry: &Arc<Registry>, scope: Scope<'_>, req: Request) -> RpcResult {
    let tools = registry.factory().tools();
    match req.method.as_str() {
        "tools/list" => {
            if tools.is_empty() {
                return Err(rpc_err(
                    codes::INTERNAL_ERROR,
                    "Environment does not support MCP",
                ));
            }
            if let (Scope::Http, Some(id)) = (&scope, session_param(&req.params)) {
                named_session(registry, id)?;
            }
            let listing: Vec<ToolListing> = tools
                .iter()
                .map(|t| ToolListing::new(&t.tool, t.output_schema.clone()))
                .collect();
            Ok(json!({ "tools": listing }))
        }
        "tools/call" => {
            if tools.is_empty() {
                return Err(rpc_err(
                    codes::INTERNAL_ERROR,
                    "Environment does not support MCP",
                ));
            }
            let Some(name) = req.params.get("name").and_then(Value::as_str) else {
                return Err(rpc_err(codes::INVALID_PARAMS, "Missing 'name' in params"));
            };
            let arguments = match req.params.get("arguments") {
                Some(Value::Object(a)) => a.clone(),
                _ => JsonMap::new(),
            };
            let (outcome, status) = match scope {
                Scope::Socket { env, .. } => {
                    let outcome = env.call_tool(name, arguments).await;
                    (outcome, env.episode_status())
                }
                Scope::Http => match session_param(&req.params) {
                    Some(id) => {
                        let session = named_session(registry, id)?;
                        let Some(env) = session.env() else {
                            return Err(rpc_err(
                                codes::INVALID_PARAMS,
                                format!("Unknown session_id: {id}"),
                            ));
                        };
                        let mut env = env.lock().await;
                        let outcome = env.call_tool(name, arguments).await;
                        (outcome, env.episode_status())
                    }
                    None => {
                        // No session: a throwaway instance that holds nothing (§7).
                        let mut env = registry
                            .factory()
                            .create_stateless()
                            .await
                            .map_err(|e| rpc_err(codes::INTERNAL_ERROR, e.to_string()))?;
                        let outcome = env.call_tool(name, arguments).await;
                        let status = env.episode_status();
                        env.close().await;
                        (outcome, status)
                    }
                },
            };
            match outcome {
                Ok(value) => Ok(tool_result(value, status)),
                Err(err) => {
                    let code = if err.error_type == ToolErrorType::InvalidArgs {
                        codes::INVALID_PARAMS
                    } else {
                        codes::INTERNAL_ERROR
                    };
                    Err(rpc_err(code, err.message))
                }
            }
        }
        "openenv/session/create" => match scope {
            Scope::Socket { session_id, .. } => Ok(json!({ "session_id": session_id })),
            Scope::Http => match registry.admit(Owner::Http).await {
                Ok(session) => {
                    tracing::info!(session_id = %session.id, "HTTP-MCP session created");
                    Ok(json!({ "session_id": session.id }))
                }
                Err(AdmitError::Capacity { active, max }) => Err((
                    codes::SERVER_ERROR,
                    capacity_message(active, max),
                    json!({"active_sessions": active, "max_sessions": max}),
                )),
                Err(err @ AdmitError::Factory { factory_name, .. }) => {
                    tracing::warn!(error = ?err, "environment factory failed");
                    Err((
                        codes::SERVER_ERROR,
                        err.to_string(),
                        json!({ "factory_name": factory_name }),
                    ))
                }
            },
        },
        "openenv/session/close" => {
            let Some(id) = session_param(&req.params) else {
                return Err(rpc_err(
                    codes::INVALID_PARAMS,
                    "Invalid params - 'session_id' is required",
                ));
            };
            let session = registry.get(id).ok_or_else(|| {
                rpc_err(codes::INVALID_PARAMS, format!("Unknown session_id: {id}"))
            })?;
            if session.owner() == Owner::WebSocket {
                return Err(rpc_err(
                    codes::INVALID_REQUEST,
                    "Cannot close active WebSocket-managed session via MCP method",
                ));
            }
            if session.env().is_none() {
                return Err(rpc_err(
                    codes::INVALID_REQUEST,
                    format!("Session {id} is still initializing; retry shortly"),
                ));
            }
            if session.is_attached() {
                session.mark_closing();
                return Ok(json!({"session_id": id, "closed": false, "closing": true}));
            }
            registry.destroy(&session).await;
            Ok(json!({"session_id": id, "closed": true}))
        }
        other => Err(rpc_err(
            codes::METHOD_NOT_FOUND,
            format!("Method not found: {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_request_text_is_pydantic_like() {
        let err = validate(json!({"method": "tools/list"})).err().unwrap();
        assert!(err.starts_with("1 validation error for JsonRpcRequest\njsonrpc\n  Field required [type=missing, input_value={'method': 'tools/list'}, input_type=dict]"), "{err}");
    }
}
