//! The `terminal` tool (`TERMINAL_ENV.md` §2.2–2.3, §4.1, §4.4–4.5): argument validation, the
//! decision table, running a command in either shell mode, step and episode limits.

use std::time::Duration;

use env_client::protocol::{JsonMap, ToolError, ToolErrorType};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::config::{BothArgs, FinalAnswerWithoutVerify, OnLimit, ShellMode};
use super::episode::Episode;
use super::format::{py_float_repr, py_strip, secs_text};
use super::shell::{
    PersistentShell, ShellEnd, persistent_timeout_text, run_per_command, shell_exit_text,
};
use super::state::{CommandResult, DoneReason, Verification, results_json};
use super::{CallOutcome, TOOL_NAME, TerminalEnv, sandbox_failure};
use crate::sandbox::{CLIENT_TEXT_MAX_CHARS, ExecResult, SandboxError, one_line};

/// §2.2 row 1.
pub(crate) const NOT_RESET: &str = "Error: environment not reset. Call reset() first.";
/// §2.2 row 3.
pub(crate) const NOTHING_TO_DO: &str = "Error: command or final_answer is required.";

fn py_repr(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Null => "None".to_owned(),
        other => other.to_string(),
    };
    if s.chars().count() > 50 {
        format!("{}...", s.chars().take(47).collect::<String>())
    } else {
        s
    }
}

fn py_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "str",
        Value::Bool(_) => "bool",
        Value::Null => "NoneType",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn invalid(message: impl std::fmt::Display) -> ToolError {
    ToolError::new(
        ToolErrorType::InvalidArgs,
        format!("Error calling tool '{TOOL_NAME}': {message}"),
    )
}

/// §2.3: `command` and `final_answer` strings only (pydantic-shaped message); extra keys are
/// `Unexpected keyword argument`.
pub(crate) fn validate_args(args: &JsonMap) -> Result<(String, String), ToolError> {
    let mut errors = Vec::new();
    for (key, value) in args {
        let (msg, kind) = match key.as_str() {
            "command" | "final_answer" if value.is_string() => continue,
            "command" | "final_answer" => ("Input should be a valid string", "string_type"),
            _ => ("Unexpected keyword argument", "unexpected_keyword_argument"),
        };
        errors.push(format!(
            "{key}\n  {msg} [type={kind}, input_value={}, input_type={}]",
            py_repr(value),
            py_type(value)
        ));
    }
    if !errors.is_empty() {
        let n = errors.len();
        let plural = if n == 1 { "" } else { "s" };
        return Err(invalid(format!(
            "{n} validation error{plural} for call[{TOOL_NAME}]\n{}",
            errors.join("\n")
        )));
    }
    let get = |k: &str| {
        args.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok((get("command"), get("final_answer")))
}

/// Why a command did not produce a result.
enum RunError {
    Sandbox(SandboxError),
    /// The tool-call deadline fired (a wedged backend).
    Wedged(Duration),
}

/// Runs one command in the persistent shell, (re)starting the shell as needed.
async fn run_persistent(
    ep: &mut Episode,
    command: &str,
    timeout: Duration,
) -> Result<(ExecResult, Option<String>), SandboxError> {
    let Episode {
        sandbox,
        shell,
        settings,
        ..
    } = ep;
    if shell.as_ref().is_none_or(|s| s.dirty) {
        if let Some(mut old) = shell.take() {
            old.kill().await;
        }
        *shell = Some(PersistentShell::start(sandbox.as_ref(), settings).await?);
    }
    let Some(sh) = shell.as_mut() else {
        return Err(SandboxError::Transport {
            reason: "the agent shell is unavailable".to_owned(),
        });
    };
    let started = Instant::now();
    let (end, stdout, stderr) = sh
        .run(
            command,
            timeout,
            settings.max_output_bytes,
            settings.head_fraction,
        )
        .await?;
    let mut result = ExecResult {
        exit_code: None,
        signal: None,
        stdout,
        stderr,
        timed_out: false,
        duration: started.elapsed(),
    };
    if matches!(end, ShellEnd::StartFailed(_)) {
        // The agent's login profile exits: later shells skip it (`--noprofile --norc`).
        settings.login_shell = false;
    }
    // A sandbox that is gone ends the episode here (`Err`), not with a "new shell" reply.
    let restart_failed = match end {
        ShellEnd::Done(_) => None,
        _ => PersistentShell::replace(shell, sandbox.as_ref(), settings).await?,
    };
    let restart_failed = restart_failed.as_deref();
    let error = match end {
        ShellEnd::Done(rc) => {
            result.exit_code = Some(rc);
            None
        }
        ShellEnd::Exited(code) | ShellEnd::StartFailed(code) => {
            result.exit_code = code;
            Some(shell_exit_text(code, restart_failed))
        }
        ShellEnd::Lost => Some(shell_exit_text(None, restart_failed)),
        ShellEnd::TimedOut => {
            result.timed_out = true;
            Some(persistent_timeout_text(timeout, restart_failed))
        }
    };
    Ok((result, error))
}

impl TerminalEnv {
    fn running(&self, text: String) -> CallOutcome {
        CallOutcome {
            result: Ok(text),
            metadata: JsonMap::new(),
            reward: Some(0.0),
            done: false,
        }
    }

    fn tool_error(&mut self, err: ToolError) -> CallOutcome {
        self.state.last_error = Some(err.message.clone());
        let (done, reward) = self.passive_status();
        CallOutcome {
            result: Err(err),
            metadata: JsonMap::new(),
            reward,
            done,
        }
    }

    /// The observation of an episode that just ended with a verification.
    fn verified(&self, text: String, v: &Verification) -> CallOutcome {
        let mut metadata = JsonMap::new();
        metadata.insert("verification".to_owned(), v.to_json());
        metadata.insert(
            "verify_results".to_owned(),
            results_json(&self.state.verify_results),
        );
        CallOutcome {
            result: Ok(text),
            metadata,
            reward: Some(v.reward),
            done: true,
        }
    }

    /// §4.5: nothing runs once the episode is done.
    fn episode_done(&self) -> CallOutcome {
        let r = self
            .state
            .last_reward
            .map_or("None".to_owned(), py_float_repr);
        let mut metadata = JsonMap::new();
        metadata.insert("error_code".to_owned(), json!("EPISODE_DONE"));
        CallOutcome {
            result: Err(ToolError::new(
                ToolErrorType::ExecutionError,
                format!("Episode is done (reward={r}). Call reset() to start a new episode."),
            )),
            metadata,
            reward: self.state.last_reward,
            done: true,
        }
    }

    /// The sandbox vanished: the episode ends with no reward (§4.4).
    pub(crate) async fn sandbox_lost(&mut self, reason: &str) -> CallOutcome {
        self.end_episode().await;
        tracing::warn!(reason, "the sandbox vanished mid-episode");
        let message = format!(
            "Sandbox is no longer available: {}; call reset() to start a new episode",
            one_line(reason, CLIENT_TEXT_MAX_CHARS)
        );
        self.state.done = true;
        self.state.done_reason = Some(DoneReason::SandboxLost);
        self.state.last_error = Some(message.clone());
        CallOutcome {
            result: Err(ToolError::new(ToolErrorType::TransportError, message)),
            metadata: JsonMap::new(),
            reward: None,
            done: true,
        }
    }

    /// Ends the episode with reward 0.0 and no verification.
    async fn end_with_zero(&mut self, reason: DoneReason, text: String) -> CallOutcome {
        self.end_episode().await;
        self.state.done = true;
        self.state.done_reason = Some(reason);
        self.state.last_reward = Some(0.0);
        self.state.verification = Some(Verification {
            passed: 0,
            total: 0,
            reward: 0.0,
            source: super::RewardSource::None,
            void_reason: None,
        });
        CallOutcome {
            result: Ok(text),
            metadata: JsonMap::new(),
            reward: Some(0.0),
            done: true,
        }
    }

    /// Verifies and ends the episode, with `text` + `\n` + the verification summary.
    async fn verify_with_text(&mut self, reason: DoneReason, text: &str) -> CallOutcome {
        match self.verify_and_end(reason).await {
            Ok(v) => self.verified(format!("{text}\n{}", v.summary()), &v),
            Err(failure) => failure,
        }
    }

    /// §4.4: `max_steps` or `episode_timeout_s` reached.
    async fn limit_reached(&mut self, reason: DoneReason) -> CallOutcome {
        let what = match (reason, self.episode.as_ref().and_then(|e| e.deadline)) {
            (DoneReason::EpisodeTimeout, Some((_, len))) => {
                format!("episode_timeout={}s", secs_text(len.as_secs_f64()))
            }
            _ => format!("max_steps={}", self.config.max_steps),
        };
        let text = format!("Episode limit reached ({what}).");
        match self.config.on_limit {
            OnLimit::Verify => self.verify_with_text(reason, &text).await,
            OnLimit::Zero => self.end_with_zero(reason, text).await,
        }
    }

    fn deadline_passed(&self) -> bool {
        self.episode
            .as_ref()
            .and_then(|e| e.deadline)
            .is_some_and(|(at, _)| Instant::now() >= at)
    }

    fn steps_exhausted(&self) -> bool {
        self.config
            .max_steps()
            .is_some_and(|max| self.state.step_count >= max)
    }

    /// One `terminal` call through the decision table (§2.2).
    pub(crate) async fn terminal_call(&mut self, args: &JsonMap) -> CallOutcome {
        // Row 0 (project): a done episode that had started.
        if self.state.done && self.state.reset_status == Some("ready") {
            return self.episode_done();
        }
        let (command, final_answer) = match validate_args(args) {
            Ok(a) => a,
            Err(err) => return self.tool_error(err),
        };
        // Row 1: no live sandbox.
        if self.episode.is_none() {
            let (done, reward) = if self.state.done {
                (true, None)
            } else {
                (false, Some(0.0))
            };
            return CallOutcome {
                result: Ok(NOT_RESET.to_owned()),
                metadata: JsonMap::new(),
                reward,
                done,
            };
        }
        let has_command = !py_strip(&command).is_empty();
        if has_command && !final_answer.is_empty() && self.config.both_args == BothArgs::Reject {
            return self.tool_error(ToolError::new(
                ToolErrorType::InvalidArgs,
                "Provide either command or final_answer, not both.",
            ));
        }
        if (!final_answer.is_empty() || has_command) && self.deadline_passed() {
            return self.limit_reached(DoneReason::EpisodeTimeout).await;
        }
        // Rows 2 and 2b: the final answer.
        if !final_answer.is_empty() {
            self.state.step_count += 1;
            self.state.submitted_answer = Some(final_answer.clone());
            let text = format!("Answer submitted: {final_answer}");
            if !self.state.verify_commands.is_empty() {
                return self.verify_with_text(DoneReason::FinalAnswer, &text).await;
            }
            if self.config.final_answer_without_verify == FinalAnswerWithoutVerify::End {
                return self.end_with_zero(DoneReason::FinalAnswer, text).await;
            }
            if self.steps_exhausted() {
                return self.limit_reached(DoneReason::MaxSteps).await;
            }
            return self.running(text);
        }
        // Row 3.
        if !has_command {
            return self.running(NOTHING_TO_DO.to_owned());
        }
        if command.contains('\0') {
            return self.tool_error(invalid("command must not contain NUL bytes"));
        }
        // Row 4.
        self.state.step_count += 1;
        let record = match self.run_command(&command).await {
            Ok(record) => record,
            Err(RunError::Sandbox(SandboxError::Gone { reason })) => {
                return self.sandbox_lost(&reason).await;
            }
            Err(RunError::Sandbox(err)) => {
                let kind = match err {
                    SandboxError::Transport { .. } => ToolErrorType::TransportError,
                    _ => ToolErrorType::ExecutionError,
                };
                let text = sandbox_failure(&err, "running an agent command failed");
                let message = format!("Error calling tool '{TOOL_NAME}': {text}");
                return self.tool_error(ToolError::new(kind, message));
            }
            Err(RunError::Wedged(limit)) => {
                let message = format!(
                    "Tool '{TOOL_NAME}' timed out after {} seconds",
                    py_float_repr(limit.as_secs_f64())
                );
                self.state.commands.push(CommandResult {
                    command: command.clone(),
                    output: format!("ERROR:\n{message}"),
                    error: Some(message.clone()),
                    success: false,
                    exit_code: None,
                    timed_out: true,
                    truncated: false,
                    stdout_bytes: 0,
                    stderr_bytes: 0,
                    duration_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                });
                return self.tool_error(ToolError::new(ToolErrorType::Timeout, message));
            }
        };
        let text = record.output.clone();
        self.state.commands.push(record);
        if self.deadline_passed() {
            return self.limit_reached(DoneReason::EpisodeTimeout).await;
        }
        if self.steps_exhausted() {
            return self.limit_reached(DoneReason::MaxSteps).await;
        }
        self.running(text)
    }

    /// Runs an agent command in the episode's shell mode, bounded by the episode deadline and
    /// the tool-call deadline.
    async fn run_command(&mut self, command: &str) -> Result<CommandResult, RunError> {
        let rules = self.rules();
        let grace = self.config.tool_call_grace();
        let Some(ep) = self.episode.as_mut() else {
            return Err(RunError::Sandbox(SandboxError::Gone {
                reason: "no live episode".to_owned(),
            }));
        };
        let mut timeout = ep.command_timeout;
        if let Some((at, _)) = ep.deadline {
            let left = at.saturating_duration_since(Instant::now());
            timeout = timeout.min(left.max(Duration::from_millis(1)));
        }
        let limit = timeout + grace;
        let ran = match ep.shell_mode {
            ShellMode::PerCommand => {
                let fut = run_per_command(ep.sandbox.as_ref(), &ep.settings, command, timeout);
                match tokio::time::timeout(limit, fut).await {
                    Ok(Ok(run)) => Ok((run.result, run.error)),
                    Ok(Err(err)) => Err(RunError::Sandbox(err)),
                    Err(_) => Err(RunError::Wedged(limit)),
                }
            }
            ShellMode::Persistent => {
                let ran = tokio::time::timeout(limit, run_persistent(ep, command, timeout)).await;
                match ran {
                    Ok(Ok(run)) => Ok(run),
                    Ok(Err(err)) => Err(RunError::Sandbox(err)),
                    Err(_) => {
                        if let Some(mut shell) = ep.shell.take() {
                            shell.kill().await;
                        }
                        Err(RunError::Wedged(limit))
                    }
                }
            }
        };
        let (result, error) = ran?;
        Ok(CommandResult::from_exec(command, &result, error, rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)]
    fn map(v: Value) -> JsonMap {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn argument_validation_messages() {
        assert_eq!(
            validate_args(&map(json!({"command": "ls"}))).unwrap(),
            ("ls".to_owned(), String::new())
        );
        let err = validate_args(&map(json!({"command": "ls", "cmd": "x"}))).unwrap_err();
        assert_eq!(err.error_type, ToolErrorType::InvalidArgs);
        assert_eq!(
            err.message,
            "Error calling tool 'terminal': 1 validation error for call[terminal]\ncmd\n  Unexpected keyword argument [type=unexpected_keyword_argument, input_value='x', input_type=str]"
        );
        let err = validate_args(&map(json!({"command": 1, "final_answer": null}))).unwrap_err();
        assert!(err.message.contains("2 validation errors"));
        assert!(err.message.contains(
            "Input should be a valid string [type=string_type, input_value=1, input_type=int]"
        ));
        assert!(
            err.message
                .contains("input_value=None, input_type=NoneType")
        );
    }
}
