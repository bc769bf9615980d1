//! `echo`: the environment of `PROTOCOL.md` §3.3 and §10, for tests and benchmarks.
//!
//! Action `{"message": str}` (plus `metadata`; unknown keys are a `VALIDATION_ERROR`);
//! observation `echoed_message`, `message_length`; reward = 0.1 × length; `done` when the
//! message is `"bye"`; `"raise"` fails with `EXECUTION_ERROR` `"boom from env.step"`. One MCP
//! tool, `echo_message(message: str) -> str`. `verify` returns the last message step's reward.

use async_trait::async_trait;
use env_client::protocol::validation::{Field, FieldKind, check_object};
use env_client::protocol::{EnvState, JsonMap, Observation, Reward, Tool, ToolError, VerifyResult};
use serde_json::{Value, json};

use super::{
    Action, EnvError, EnvFactory, Environment, StepOutcome, ToolDef, call_tool_observation,
    check_tool_args, list_tools_observation,
};

/// Makes [`EchoEnv`] instances.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoFactory;

const ACTION_FIELDS: &[Field] = &[
    Field::optional("metadata", FieldKind::Object),
    Field::required("message", FieldKind::Str),
];

const TOOL_ARGS: &[Field] = &[Field::required("message", FieldKind::Str)];

fn tool_defs() -> &'static [ToolDef] {
    static TOOLS: std::sync::OnceLock<Vec<ToolDef>> = std::sync::OnceLock::new();
    TOOLS.get_or_init(|| {
        vec![ToolDef {
            tool: Tool {
                name: "echo_message".to_owned(),
                description: "Echo back the provided message.".to_owned(),
                input_schema: json!({
                    "additionalProperties": false,
                    "properties": {"message": {"type": "string", "description": "The message to echo back"}},
                    "required": ["message"],
                    "type": "object"
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

#[async_trait]
impl EnvFactory for EchoFactory {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn factory_name(&self) -> &'static str {
        "EchoEnvironment"
    }

    fn metadata(&self) -> Value {
        json!({
            "name": "EchoEnvironment",
            "description": "EchoEnvironment environment",
            "readme_content": null,
            "version": "1.0.0",
            "author": null,
            "documentation_url": null
        })
    }

    fn schema(&self) -> Value {
        let observation = json!({
            "additionalProperties": false,
            "properties": {
                "done": {"default": false, "description": "Whether the episode has terminated", "title": "Done", "type": "boolean"},
                "reward": {"anyOf": [{"type": "boolean"}, {"type": "integer"}, {"type": "number"}, {"type": "null"}], "default": null, "description": "Reward signal from the last action", "title": "Reward"},
                "metadata": {"additionalProperties": true, "description": "Additional metadata for the observation", "title": "Metadata", "type": "object"},
                "echoed_message": {"default": "", "description": "Echoed message", "title": "Echoed Message", "type": "string"},
                "message_length": {"default": 0, "description": "Length of the message", "title": "Message Length", "type": "integer"}
            },
            "title": "EchoObservation",
            "type": "object"
        });
        json!({
            "action": {
                "additionalProperties": false,
                "properties": {
                    "metadata": {"additionalProperties": true, "description": "Additional metadata for the action", "title": "Metadata", "type": "object"},
                    "message": {"description": "Message to echo", "title": "Message", "type": "string"}
                },
                "required": ["message"],
                "title": "EchoAction",
                "type": "object"
            },
            "observation": observation.clone(),
            "state": {
                "additionalProperties": true,
                "description": "Echo environment state: the base state plus the last message.",
                "properties": {
                    "episode_id": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "description": "Unique identifier for the current episode", "title": "Episode Id"},
                    "step_count": {"default": 0, "description": "Number of steps taken in the current episode", "minimum": 0, "title": "Step Count", "type": "integer"},
                    "last_message": {"default": "", "description": "The last message echoed", "title": "Last Message", "type": "string"}
                },
                "title": "EchoState",
                "type": "object"
            },
            "reset_observation": observation
        })
    }

    fn tools(&self) -> &[ToolDef] {
        tool_defs()
    }

    async fn create(&self) -> Result<Box<dyn Environment>, EnvError> {
        Ok(Box::new(EchoEnv::new()))
    }
}

/// One echo episode.
#[derive(Debug)]
pub struct EchoEnv {
    episode_id: String,
    step_count: u64,
    last_message: String,
    last_reward: f64,
    last_done: bool,
}

impl EchoEnv {
    /// A fresh instance; its episode id is a new uuid until `reset` names one.
    pub fn new() -> Self {
        Self {
            episode_id: uuid::Uuid::new_v4().to_string(),
            step_count: 0,
            last_message: String::new(),
            last_reward: 0.0,
            last_done: false,
        }
    }

    fn echo(&mut self, action: &JsonMap) -> Result<StepOutcome, EnvError> {
        let errors = check_object(action, ACTION_FIELDS, &[]);
        if !errors.is_empty() {
            return Err(EnvError::Validation { errors });
        }
        let message = action
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if message == "raise" {
            return Err(EnvError::execution("boom from env.step"));
        }
        self.step_count += 1;
        let length = message.chars().count();
        #[allow(clippy::cast_precision_loss)]
        let reward = length as f64 / 10.0;
        let done = message == "bye";
        self.last_message.clear();
        self.last_message.push_str(message);
        self.last_reward = reward;
        self.last_done = done;
        let mut metadata = JsonMap::new();
        metadata.insert("step".to_owned(), Value::from(self.step_count));
        Ok(StepOutcome {
            observation: Observation::new(
                metadata,
                [
                    ("echoed_message".to_owned(), Value::from(message)),
                    ("message_length".to_owned(), Value::from(length)),
                ],
            ),
            reward: Some(Reward::Float(reward)),
            done,
        })
    }

    fn mcp_step(&mut self, observation: Observation) -> StepOutcome {
        self.step_count += 1;
        self.last_done = false;
        StepOutcome {
            observation,
            reward: None,
            done: false,
        }
    }
}

impl Default for EchoEnv {
    fn default() -> Self {
        Self::new()
    }
}

fn echo_tool(name: &str, arguments: &JsonMap) -> Result<Value, ToolError> {
    if name != "echo_message" {
        return Err(ToolError::not_found(name));
    }
    check_tool_args(name, arguments, TOOL_ARGS)?;
    Ok(arguments.get("message").cloned().unwrap_or(Value::Null))
}

#[async_trait]
impl Environment for EchoEnv {
    async fn reset(&mut self, mut kwargs: JsonMap) -> Result<StepOutcome, EnvError> {
        let seed = kwargs.remove("seed").unwrap_or(Value::Null);
        self.episode_id = match kwargs.remove("episode_id") {
            Some(Value::String(id)) => id,
            Some(Value::Null) | None => uuid::Uuid::new_v4().to_string(),
            Some(other) => other.to_string(),
        };
        self.step_count = 0;
        self.last_message.clear();
        self.last_reward = 0.0;
        self.last_done = false;
        let mut metadata = JsonMap::new();
        metadata.insert("seed".to_owned(), seed);
        metadata.insert("reset_kwargs".to_owned(), Value::Object(kwargs));
        Ok(StepOutcome {
            observation: Observation::new(
                metadata,
                [
                    ("echoed_message".to_owned(), Value::from("ready")),
                    ("message_length".to_owned(), Value::from(0)),
                ],
            ),
            reward: None,
            done: false,
        })
    }

    async fn step(&mut self, action: Action) -> Result<StepOutcome, EnvError> {
        match action {
            Action::Env(data) => self.echo(&data),
            Action::ListTools => Ok(self.mcp_step(list_tools_observation(tool_defs()))),
            Action::CallTool { name, arguments } => {
                let outcome = echo_tool(&name, &arguments);
                Ok(self.mcp_step(call_tool_observation(&name, outcome)))
            }
        }
    }

    fn state(&self) -> EnvState {
        let mut extra = JsonMap::new();
        extra.insert(
            "last_message".to_owned(),
            Value::from(self.last_message.as_str()),
        );
        EnvState {
            episode_id: Some(self.episode_id.clone()),
            step_count: self.step_count,
            extra,
        }
    }

    async fn call_tool(&mut self, name: &str, arguments: JsonMap) -> Result<Value, ToolError> {
        echo_tool(name, &arguments)
    }

    async fn verify(&mut self) -> Option<Result<VerifyResult, EnvError>> {
        let mut details = JsonMap::new();
        details.insert("step_count".to_owned(), Value::from(self.step_count));
        Some(Ok(VerifyResult {
            reward: self.last_reward,
            done: self.last_done,
            details,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> JsonMap {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[tokio::test]
    async fn step_rewards_and_done() {
        let mut env = EchoEnv::new();
        let out = env
            .step(Action::Env(map(json!({"message": "bye"}))))
            .await
            .unwrap();
        assert_eq!(out.reward, Some(Reward::Float(0.3)));
        assert!(out.done);
        assert_eq!(
            serde_json::to_string(&out.observation).unwrap(),
            r#"{"metadata":{"step":1},"echoed_message":"bye","message_length":3}"#
        );
        let v = env.verify().await.unwrap().unwrap();
        assert_eq!((v.reward, v.done), (0.3, true));
    }

    #[tokio::test]
    async fn validation_matches_pydantic_order() {
        let mut env = EchoEnv::new();
        let err = env
            .step(Action::Env(map(json!({"msg": "wrong field"}))))
            .await
            .unwrap_err();
        let EnvError::Validation { errors } = err else {
            panic!("expected validation")
        };
        assert_eq!(
            serde_json::to_string(&errors).unwrap(),
            r#"[{"type":"missing","loc":["message"],"msg":"Field required","input":{"msg":"wrong field"},"url":"https://errors.pydantic.dev/2.14/v/missing"},{"type":"extra_forbidden","loc":["msg"],"msg":"Extra inputs are not permitted","input":"wrong field","url":"https://errors.pydantic.dev/2.14/v/extra_forbidden"}]"#
        );
    }
}
