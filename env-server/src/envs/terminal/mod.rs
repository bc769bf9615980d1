//! `terminal`: Terminus-compatible terminal tasks in a sandbox (`TERMINAL_ENV.md`).
//!
//! One MCP tool, `terminal(command="", final_answer="")`. `reset` creates one sandbox per
//! episode, runs setup commands and registers verify commands; `command` runs one shell command
//! (a persistent shell per episode by default, or a fresh `bash -lc` per command);
//! `final_answer` — or the `verify` frame, or a limit — ends the episode and **verifies inside
//! the server**: every agent process is killed first, the verifier's directory is recreated,
//! verify commands run in a clean shell, and the reward is `passed/total` unless the verifier
//! wrote a float into the reward file. The agent cannot forge it.
//!
//! Layout: this file holds the factory, the tool manifest and the [`Environment`] dispatch;
//! [`config`] the settings; `reset` the kwargs rules; `episode` the reset algorithm and
//! teardown; `tool` the decision table and command execution; `verify` verification; `shell`
//! the two shell modes; `format` output text, float repr and the reward grammar; `state` the
//! state; `tasks` terminal-bench folders.

mod config;
mod episode;
mod format;
pub(crate) mod fuzz;
mod reset;
mod shell;
mod state;
mod tasks;
mod tool;
mod verify;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transport_tests;

use std::sync::Arc;

use async_trait::async_trait;
use env_client::protocol::{EnvState, JsonMap, Observation, Reward, Tool, ToolError, VerifyResult};
use serde_json::{Value, json};

pub use config::{
    BothArgs, FinalAnswerWithoutVerify, OnLimit, RewardRange, ShellMode, TbReward, TerminalConfig,
    VerifyShell,
};
pub use format::{parse_reward, py_float_repr};
pub use state::{CommandResult, DoneReason, RewardSource, Verification};

use super::{
    Action, EnvError, EnvFactory, Environment, EpisodeStatus, StepOutcome, ToolDef,
    call_tool_observation, list_tools_observation,
};
use crate::sandbox::{SandboxBackend, SandboxError};
use episode::Episode;
use state::EpisodeState;

/// The one tool's name.
pub const TOOL_NAME: &str = "terminal";

/// The stateless-HTTP refusal (§7).
pub const SESSION_REQUIRED: &str =
    "terminal env requires a session (WebSocket /ws or an attached MCP session)";

/// What a client is told about a sandbox failure: one line naming the fix
/// ([`SandboxError::client_message`]); the full error goes to the server log with `what`.
pub(crate) fn sandbox_failure(err: &SandboxError, what: &str) -> String {
    tracing::warn!(error = %err, "{what}");
    err.client_message()
}

fn tool_defs() -> &'static [ToolDef] {
    static TOOLS: std::sync::OnceLock<Vec<ToolDef>> = std::sync::OnceLock::new();
    TOOLS.get_or_init(|| {
        vec![ToolDef {
            tool: Tool {
                name: TOOL_NAME.to_owned(),
                description: "Run a shell command or submit a final answer inside the sandbox."
                    .to_owned(),
                input_schema: json!({
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "command": {"type": "string", "default": "", "description": "Shell command to execute in the episode sandbox."},
                        "final_answer": {"type": "string", "default": "", "description": "Optional answer string. When provided, stored\nas the final answer and any reset-time verify commands run."}
                    }
                }),
            },
            output_schema: json!({
                "properties": {"result": {"type": "string"}},
                "required": ["result"],
                "type": "object",
                "x-fastmcp-wrap-result": true
            }),
        }]
    })
}

/// Makes [`TerminalEnv`] instances on one sandbox backend.
pub struct TerminalFactory {
    config: Arc<TerminalConfig>,
    backend: Arc<dyn SandboxBackend>,
}

impl std::fmt::Debug for TerminalFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalFactory")
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl TerminalFactory {
    /// A factory serving terminal episodes with `config` on `backend`.
    pub fn new(config: TerminalConfig, backend: Arc<dyn SandboxBackend>) -> Self {
        Self {
            config: Arc::new(config),
            backend,
        }
    }
}

#[async_trait]
impl EnvFactory for TerminalFactory {
    fn name(&self) -> &'static str {
        "terminal"
    }

    fn factory_name(&self) -> &'static str {
        "TerminusEnvironment"
    }

    fn metadata(&self) -> Value {
        json!({
            "name": "TerminusEnvironment",
            "description": "Terminal tasks in a sandbox: one tool, terminal(command, final_answer); the reward is computed by the environment's verifier.",
            "readme_content": null,
            "version": "1.0.0",
            "author": null,
            "documentation_url": null
        })
    }

    fn schema(&self) -> Value {
        schema()
    }

    fn tools(&self) -> &[ToolDef] {
        tool_defs()
    }

    async fn create(&self) -> Result<Box<dyn Environment>, EnvError> {
        Ok(Box::new(TerminalEnv::new(
            Arc::clone(&self.config),
            Arc::clone(&self.backend),
            false,
        )))
    }

    /// An instance for a stateless request: it never creates a sandbox, and its `reset`
    /// answers with the §7 refusal ([`SESSION_REQUIRED`]).
    async fn create_stateless(&self) -> Result<Box<dyn Environment>, EnvError> {
        Ok(Box::new(TerminalEnv::new(
            Arc::clone(&self.config),
            Arc::clone(&self.backend),
            true,
        )))
    }

    async fn shutdown(&self) {
        self.backend.shutdown().await;
    }
}

fn schema() -> Value {
    let meta = json!({"additionalProperties": true, "description": "Additional metadata", "title": "Metadata", "type": "object"});
    let observation = json!({
        "additionalProperties": false,
        "properties": {
            "done": {"default": false, "description": "Whether the episode has terminated", "title": "Done", "type": "boolean"},
            "reward": {"anyOf": [{"type": "boolean"}, {"type": "integer"}, {"type": "number"}, {"type": "null"}], "default": null, "description": "Reward signal from the last action", "title": "Reward"},
            "metadata": meta,
            "tool_name": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Tool Name"},
            "result": {"default": null, "description": "Tool result (value at result.data)", "title": "Result"},
            "error": {"anyOf": [{"type": "object"}, {"type": "null"}], "default": null, "description": "Tool error {error_type, message}", "title": "Error"},
            "tools": {"default": [], "items": {"type": "object"}, "title": "Tools", "type": "array"}
        },
        "title": "TerminusObservation",
        "type": "object"
    });
    let results = json!({"default": [], "items": {"type": "object"}, "type": "array"});
    json!({
        "action": {
            "additionalProperties": false,
            "properties": {
                "metadata": meta,
                "type": {"default": "call_tool", "enum": ["call_tool", "list_tools"], "title": "Type", "type": "string"},
                "tool_name": {"const": TOOL_NAME, "title": "Tool Name", "type": "string"},
                "arguments": tool_defs().first().map_or(Value::Null, |t| t.tool.input_schema.clone())
            },
            "title": "TerminusAction",
            "type": "object"
        },
        "observation": observation.clone(),
        "state": {
            "additionalProperties": true,
            "properties": {
                "episode_id": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Episode Id"},
                "step_count": {"default": 0, "minimum": 0, "title": "Step Count", "type": "integer"},
                "sandbox_id": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "setup_results": results,
                "verify_commands": {"default": [], "items": {"type": "string"}, "type": "array"},
                "verify_results": results,
                "commands": results,
                "submitted_answer": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "last_reward": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": null},
                "last_error": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "done": {"default": false, "type": "boolean"},
                "done_reason": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "verification": {"anyOf": [{"type": "object"}, {"type": "null"}], "default": null}
            },
            "title": "TerminusState",
            "type": "object"
        },
        "reset_observation": observation
    })
}

/// One terminal episode at a time, owned by one session.
pub struct TerminalEnv {
    config: Arc<TerminalConfig>,
    backend: Arc<dyn SandboxBackend>,
    /// Made for a stateless HTTP request: never creates a sandbox.
    stateless: bool,
    state: EpisodeState,
    /// The live episode's sandbox and shell; `None` before reset, after a failed reset and
    /// once the episode ended.
    episode: Option<Episode>,
    /// The sandbox of a failed setup kept for debugging (`keep_sandbox_on_setup_failure`).
    kept: Option<Arc<dyn crate::sandbox::Sandbox>>,
}

impl std::fmt::Debug for TerminalEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalEnv")
            .field("episode_id", &self.state.episode_id)
            .field("live", &self.episode.is_some())
            .finish_non_exhaustive()
    }
}

/// What a terminal call produced, before it becomes a step observation or a JSON-RPC result.
#[derive(Debug)]
pub(crate) struct CallOutcome {
    result: Result<String, ToolError>,
    metadata: JsonMap,
    reward: Option<f64>,
    done: bool,
}

impl TerminalEnv {
    fn new(config: Arc<TerminalConfig>, backend: Arc<dyn SandboxBackend>, stateless: bool) -> Self {
        Self {
            config,
            backend,
            stateless,
            state: EpisodeState {
                episode_id: uuid::Uuid::new_v4().to_string(),
                ..EpisodeState::default()
            },
            episode: None,
            kept: None,
        }
    }

    /// `done` and `reward` of an observation that ran nothing (`list_tools`, unknown tools,
    /// unknown actions): the episode's, or `false` / `0.0` while it runs.
    fn passive_status(&self) -> (bool, Option<f64>) {
        if self.state.done {
            (true, self.state.last_reward)
        } else {
            (false, Some(0.0))
        }
    }
}

fn outcome(observation: Observation, done: bool, reward: Option<f64>) -> StepOutcome {
    StepOutcome {
        observation,
        reward: reward.map(Reward::Float),
        done,
    }
}

#[async_trait]
impl Environment for TerminalEnv {
    async fn reset(&mut self, kwargs: JsonMap) -> Result<StepOutcome, EnvError> {
        let (metadata, done) = if self.stateless {
            self.refuse_stateless(&kwargs)
        } else {
            self.reset_episode(kwargs).await
        };
        Ok(outcome(Observation::new(metadata, []), done, None))
    }

    async fn step(&mut self, action: Action) -> Result<StepOutcome, EnvError> {
        match action {
            Action::ListTools => {
                let (done, reward) = self.passive_status();
                Ok(outcome(list_tools_observation(tool_defs()), done, reward))
            }
            Action::CallTool { name, arguments } if name == TOOL_NAME => {
                let call = self.terminal_call(&arguments).await;
                let mut observation = call_tool_observation(&name, call.result.map(Value::from));
                if let Some(Value::Object(m)) = observation.0.get_mut("metadata") {
                    *m = call.metadata;
                }
                Ok(outcome(observation, call.done, call.reward))
            }
            Action::CallTool { name, .. } => {
                let (done, reward) = self.passive_status();
                let observation = call_tool_observation(&name, Err(ToolError::not_found(&name)));
                Ok(outcome(observation, done, reward))
            }
            Action::Env(data) => {
                let kind = data.get("type").and_then(Value::as_str).unwrap_or("Action");
                let mut metadata = JsonMap::new();
                metadata.insert(
                    "error".to_owned(),
                    Value::from(format!(
                        "Unknown action type: {kind}. Use ListToolsAction or CallToolAction for MCP interactions."
                    )),
                );
                let (done, reward) = self.passive_status();
                Ok(outcome(Observation::new(metadata, []), done, reward))
            }
        }
    }

    fn state(&self) -> EnvState {
        self.state.to_env_state()
    }

    async fn call_tool(&mut self, name: &str, arguments: JsonMap) -> Result<Value, ToolError> {
        if name != TOOL_NAME {
            return Err(ToolError::not_found(name));
        }
        self.terminal_call(&arguments).await.result.map(Value::from)
    }

    /// What the step path's observation of the same call carries: every terminal call leaves
    /// the episode in the state its observation reports (`passive_status`).
    fn episode_status(&self) -> Option<EpisodeStatus> {
        let (done, reward) = self.passive_status();
        Some(EpisodeStatus { done, reward })
    }

    async fn verify(&mut self) -> Option<Result<VerifyResult, EnvError>> {
        Some(self.verify_frame().await)
    }

    async fn close(&mut self) {
        self.end_episode().await;
        if let Some(kept) = self.kept.take() {
            episode::destroy(kept.as_ref()).await;
        }
    }
}
