//! Environments: the [`Environment`] trait every env implements, the [`EnvFactory`] that makes
//! one instance per session, and the registry of named envs (`--env NAME`).
//!
//! A session owns exactly one environment instance. The server never computes a reward; an
//! environment does, inside the server (`DESIGN.md` invariant 1). MCP step actions
//! (`list_tools`, `call_tool`, `PROTOCOL.md` §6.1) are classified by the server into
//! [`Action`] variants and handled by the env, because whether a tool call counts as a step,
//! and what reward it carries, is the env's rule.

pub mod echo;
pub mod terminal;

use std::sync::Arc;

use async_trait::async_trait;
use env_client::protocol::validation::{Field, FieldKind, check_object};
use env_client::protocol::{
    EnvState, JsonMap, Loc, Observation, Reward, Tool, ToolError, ToolResult, ValidationErrorItem,
    VerifyResult,
};
use serde_json::Value;

/// A failure of an environment call, mapped to OpenEnv's codes by the server.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// The action (or reset arguments) failed validation: `VALIDATION_ERROR`.
    #[error("Invalid message")]
    Validation {
        /// pydantic-shaped errors, locations relative to the action.
        errors: Vec<ValidationErrorItem>,
    },
    /// The environment failed while executing: `EXECUTION_ERROR` with this text.
    #[error("{message}")]
    Execution {
        /// Client-safe message (no host paths, argv or tokens).
        message: String,
    },
}

impl EnvError {
    /// An execution failure with a client-safe message.
    pub fn execution(message: impl Into<String>) -> Self {
        Self::Execution {
            message: message.into(),
        }
    }
}

/// `done` and the reward of an episode after a call, as a step observation would carry them;
/// JSON-RPC `tools/call` results carry it as `meta.openenv` (`TERMINAL_ENV.md` §4.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpisodeStatus {
    /// Whether the episode has ended.
    pub done: bool,
    /// The reward a step observation would carry now (`None` when it would carry none).
    pub reward: Option<f64>,
}

/// What a `reset` or `step` produces: the observation, the env's reward, and `done`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// The observation (`metadata` first).
    pub observation: Observation,
    /// The reward, computed by the env.
    pub reward: Option<Reward>,
    /// Whether the episode ended.
    pub done: bool,
}

/// A `step` action after the server classified it.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The env's own action object (validated by the env).
    Env(JsonMap),
    /// Step-path MCP `list_tools`.
    ListTools,
    /// Step-path MCP `call_tool`.
    CallTool {
        /// Tool name.
        name: String,
        /// Arguments object.
        arguments: JsonMap,
    },
}

impl Action {
    /// Classifies step `data` (`PROTOCOL.md` §6.1): for an env with MCP tools, `type` of
    /// `list_tools`/`call_tool`, or a `tool_name` key, makes an MCP action (validated here);
    /// anything else is the env's own action.
    pub fn classify(data: JsonMap, has_tools: bool) -> Result<Self, EnvError> {
        if !has_tools {
            return Ok(Self::Env(data));
        }
        let kind = data.get("type").and_then(Value::as_str);
        match kind {
            Some("list_tools") => {
                let errors = check_object(
                    &data,
                    &[
                        Field::required("type", FieldKind::Str),
                        Field::optional("metadata", FieldKind::Object),
                    ],
                    &[],
                );
                if errors.is_empty() {
                    Ok(Self::ListTools)
                } else {
                    Err(EnvError::Validation { errors })
                }
            }
            Some("call_tool") => Self::call_tool(data),
            None if data.contains_key("tool_name") => Self::call_tool(data),
            _ => Ok(Self::Env(data)),
        }
    }

    fn call_tool(mut data: JsonMap) -> Result<Self, EnvError> {
        let errors = check_object(
            &data,
            &[
                Field::optional("type", FieldKind::Str),
                Field::required("tool_name", FieldKind::Str),
                Field::optional("arguments", FieldKind::Object),
                Field::optional("metadata", FieldKind::Object),
            ],
            &[],
        );
        if !errors.is_empty() {
            return Err(EnvError::Validation { errors });
        }
        let name = match data.remove("tool_name") {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        let arguments = match data.remove("arguments") {
            Some(Value::Object(m)) => m,
            _ => JsonMap::new(),
        };
        Ok(Self::CallTool { name, arguments })
    }
}

/// One instance of an environment, owned by one session.
///
/// Calls on one instance are strictly sequential (the session holds it behind a lock).
/// Futures may be dropped mid-call when the client vanishes or the server shuts down;
/// implementations must leave nothing running when that happens (`kill_on_drop`, guards).
#[async_trait]
pub trait Environment: Send + 'static {
    /// Starts an episode. Unknown keyword arguments are ignored, never an error.
    async fn reset(&mut self, kwargs: JsonMap) -> Result<StepOutcome, EnvError>;

    /// Applies one action.
    async fn step(&mut self, action: Action) -> Result<StepOutcome, EnvError>;

    /// The current state (`episode_id`, `step_count`, then the env's fields).
    fn state(&self) -> EnvState;

    /// Calls a tool outside `step` (JSON-RPC `tools/call`). The env decides whether it counts
    /// as a step; its effect on the episode is read back with [`Environment::episode_status`].
    async fn call_tool(&mut self, name: &str, arguments: JsonMap) -> Result<Value, ToolError>;

    /// The episode's `done` and reward after the last call, added to a JSON-RPC `tools/call`
    /// result as `meta.openenv` (`TERMINAL_ENV.md` §4.1). `None` (the default): the env keeps
    /// no episode, and the result gains nothing.
    fn episode_status(&self) -> Option<EpisodeStatus> {
        None
    }

    /// Extension E1: verifies the episode and computes the reward inside the server.
    /// `None` means the env has no verifier (the client gets `UNKNOWN_TYPE`).
    async fn verify(&mut self) -> Option<Result<VerifyResult, EnvError>> {
        None
    }

    /// Releases everything the instance holds (sandboxes, processes). Called once when the
    /// session ends; must not fail.
    async fn close(&mut self) {}
}

/// A tool an environment exposes over MCP, with its result schema for `tools/list`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    /// Name, description, input schema.
    pub tool: Tool,
    /// JSON Schema of the result (`null` when unknown).
    pub output_schema: Value,
}

/// Makes environment instances and describes them (metadata, schemas, tools).
#[async_trait]
pub trait EnvFactory: Send + Sync + 'static {
    /// The env's name on the command line (`echo`, `terminal`, …).
    fn name(&self) -> &'static str;

    /// The factory name used in `FACTORY_ERROR` (the env class name upstream).
    fn factory_name(&self) -> &'static str;

    /// `GET /metadata`.
    fn metadata(&self) -> Value;

    /// `GET /schema`: `action`, `observation`, `state`, `reset_observation`.
    fn schema(&self) -> Value;

    /// The env's MCP tools; empty when the env has no MCP server.
    fn tools(&self) -> &[ToolDef];

    /// Makes a fresh instance.
    async fn create(&self) -> Result<Box<dyn Environment>, EnvError>;

    /// Makes an instance for one stateless request (HTTP `/reset`, `/step`, `/state`, and a
    /// session-less `POST /mcp` `tools/call`), closed right after it. Defaults to
    /// [`EnvFactory::create`]; an env whose episodes hold resources (a sandbox) overrides it to
    /// create none and refuse (`TERMINAL_ENV.md` §7).
    async fn create_stateless(&self) -> Result<Box<dyn Environment>, EnvError> {
        self.create().await
    }

    /// Server shutdown, after every instance was closed: releases what the factory shares
    /// (the terminal env's sandbox backend makes its last cleanup attempt). Nothing by default.
    async fn shutdown(&self) {}
}

/// The names `--env` accepts, in help order (the first is the default).
pub const ENV_NAMES: &[&str] = &["terminal", "echo"];

/// The factory of an environment that needs no sandbox (`echo`), or `None`.
pub fn factory(name: &str) -> Option<Arc<dyn EnvFactory>> {
    match name {
        "echo" => Some(Arc::new(echo::EchoFactory)),
        _ => None,
    }
}

/// Why the server cannot serve the configured environment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `--env` names no environment.
    #[error("unknown environment {0:?} (known: {known})", known = ENV_NAMES.join(", "))]
    UnknownEnv(String),
    /// The environment's sandbox backend is unusable.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

/// Builds the factory `config.env` names; for envs with a sandbox, the backend is created,
/// checked (one clear error naming the fix when it is unusable) and swept of orphans left by a
/// crashed predecessor.
pub async fn build(config: &crate::config::ServeConfig) -> Result<Arc<dyn EnvFactory>, BuildError> {
    match config.env.as_str() {
        "terminal" => {
            let backend = crate::sandbox::backend(config).await?;
            Ok(Arc::new(terminal::TerminalFactory::new(
                config.terminal.clone(),
                backend,
            )))
        }
        name => factory(name).ok_or_else(|| BuildError::UnknownEnv(name.to_owned())),
    }
}

/// The step-path observation of `list_tools`: `{"metadata":{},"tools":[…]}` (`input_schema`).
pub fn list_tools_observation(tools: &[ToolDef]) -> Observation {
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| serde_json::to_value(&t.tool).unwrap_or(Value::Null))
        .collect();
    Observation::new(JsonMap::new(), [("tools".to_owned(), Value::Array(tools))])
}

/// The step-path observation of `call_tool`: `{"metadata":{},"tool_name","result","error"}`.
pub fn call_tool_observation(name: &str, outcome: Result<Value, ToolError>) -> Observation {
    let (result, error) = match outcome {
        Ok(value) => (
            serde_json::to_value(ToolResult::from_value(value)).unwrap_or(Value::Null),
            Value::Null,
        ),
        Err(err) => (
            Value::Null,
            serde_json::to_value(err).unwrap_or(Value::Null),
        ),
    };
    Observation::new(
        JsonMap::new(),
        [
            ("tool_name".to_owned(), Value::from(name)),
            ("result".to_owned(), result),
            ("error".to_owned(), error),
        ],
    )
}

/// Validates tool arguments against a flat `fields` list, as an `invalid_args` tool error.
pub fn check_tool_args(tool: &str, arguments: &JsonMap, fields: &[Field]) -> Result<(), ToolError> {
    let errors = check_object(arguments, fields, &[]);
    if errors.is_empty() {
        return Ok(());
    }
    let detail: Vec<String> = errors
        .iter()
        .map(|e| {
            let loc: Vec<String> = e
                .loc
                .iter()
                .map(|l| match l {
                    Loc::Field(f) => f.clone(),
                    Loc::Index(i) => i.to_string(),
                })
                .collect();
            format!("{}: {}", loc.join("."), e.msg)
        })
        .collect();
    Err(ToolError::new(
        env_client::protocol::ToolErrorType::InvalidArgs,
        format!("Invalid arguments for tool '{tool}': {}", detail.join("; ")),
    ))
}
