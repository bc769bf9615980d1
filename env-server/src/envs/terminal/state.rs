//! Episode state of the terminal env (`TERMINAL_ENV.md` §6): the peer's `TerminusState` field
//! names plus the project's, and [`CommandResult`], the record of one command.

use env_client::protocol::{EnvState, JsonMap};
use serde_json::{Value, json};

use super::format::{TextRules, format_output, stream_text};
use crate::sandbox::ExecResult;

/// One command as state records it (peer fields first, then the project's).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    /// The command text.
    pub command: String,
    /// The formatted, capped text the agent saw (§5.1).
    pub output: String,
    /// `exit code N`, the timeout text, … or `None` on success.
    pub error: Option<String>,
    /// Exit code 0 (and no timeout).
    pub success: bool,
    /// Exit code, or 128 + signal; `None` when unknown (timeout).
    pub exit_code: Option<i32>,
    /// Whether the command's timeout fired.
    pub timed_out: bool,
    /// Whether output was dropped by the cap.
    pub truncated: bool,
    /// Bytes written to stdout.
    pub stdout_bytes: u64,
    /// Bytes written to stderr.
    pub stderr_bytes: u64,
    /// Wall-clock duration in milliseconds.
    pub duration_ms: u64,
}

impl CommandResult {
    /// The record of an exec result; `error` overrides the default error text (exit code).
    pub(crate) fn from_exec(
        command: &str,
        res: &ExecResult,
        error: Option<String>,
        rules: TextRules,
    ) -> Self {
        let stdout = stream_text(&res.stdout, rules);
        let stderr = stream_text(&res.stderr, rules);
        let exit_code = if res.timed_out {
            None
        } else {
            res.status_code()
        };
        let error = error.or_else(|| match exit_code {
            Some(0) => None,
            Some(code) => Some(format!("exit code {code}")),
            None => Some("exit status unknown".to_owned()),
        });
        Self {
            command: command.to_owned(),
            output: format_output(&stdout, &stderr, error.as_deref()),
            success: exit_code == Some(0) && !res.timed_out,
            error,
            exit_code,
            timed_out: res.timed_out,
            truncated: res.stdout.truncated() || res.stderr.truncated(),
            stdout_bytes: res.stdout.total,
            stderr_bytes: res.stderr.total,
            duration_ms: u64::try_from(res.duration.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The JSON form (`setup_results`, `commands`, `verify_results`).
    pub fn to_json(&self) -> Value {
        json!({
            "command": self.command,
            "output": self.output,
            "error": self.error,
            "success": self.success,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "truncated": self.truncated,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "duration_ms": self.duration_ms,
        })
    }
}

/// A list of results as JSON.
pub(crate) fn results_json(results: &[CommandResult]) -> Value {
    Value::Array(results.iter().map(CommandResult::to_json).collect())
}

/// Where a verification's reward came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardSource {
    /// A valid float in the reward file.
    File,
    /// `passed / total`.
    Fraction,
    /// Nothing to score (no verify command, no reward file): 0.0.
    None,
    /// The verifier run was void (killed, timed out, inconsistent or incomplete): 0.0.
    Void,
}

impl RewardSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Fraction => "fraction",
            Self::None => "none",
            Self::Void => "void",
        }
    }
}

/// The outcome of one verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// Verify commands (or terminal-bench tests) that passed.
    pub passed: u64,
    /// Verify commands (or terminal-bench tests) in all.
    pub total: u64,
    /// The reward (finite).
    pub reward: f64,
    /// Where it came from.
    pub source: RewardSource,
    /// Why the run was void (`source` is then [`RewardSource::Void`] and the reward 0.0).
    pub void_reason: Option<String>,
}

impl Verification {
    /// A void run: reward 0.0, with the reason (`docs/verification.md`).
    pub fn void(reason: String) -> Self {
        Self {
            passed: 0,
            total: 0,
            reward: 0.0,
            source: RewardSource::Void,
            void_reason: Some(reason),
        }
    }

    /// `{"passed","total","reward","reward_source"}`, plus `void_reason` for a void run.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "passed": self.passed,
            "total": self.total,
            "reward": self.reward,
            "reward_source": self.source.as_str(),
        });
        if let (Some(reason), Some(map)) = (&self.void_reason, v.as_object_mut()) {
            map.insert("void_reason".to_owned(), json!(reason));
        }
        v
    }

    /// `Verification: {passed}/{total} passed; reward={reward}`.
    pub fn summary(&self) -> String {
        let line = format!(
            "Verification: {}/{} passed; reward={}",
            self.passed,
            self.total,
            super::format::py_float_repr(self.reward)
        );
        match &self.void_reason {
            Some(reason) => format!("{line}\nVerification void: {reason}"),
            None => line,
        }
    }
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneReason {
    /// A final answer was submitted.
    FinalAnswer,
    /// `max_steps` terminal calls ran.
    MaxSteps,
    /// The episode timeout expired.
    EpisodeTimeout,
    /// A setup command failed.
    SetupFailed,
    /// The sandbox could not be created (or the reset arguments were invalid).
    CreateFailed,
    /// The sandbox vanished.
    SandboxLost,
    /// The verifier could not run (a backend failure during verification).
    VerifyFailed,
    /// The `verify` frame ended the episode.
    Verified,
}

impl DoneReason {
    /// The state's `done_reason` text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FinalAnswer => "final_answer",
            Self::MaxSteps => "max_steps",
            Self::EpisodeTimeout => "episode_timeout",
            Self::SetupFailed => "setup_failed",
            Self::CreateFailed => "create_failed",
            Self::SandboxLost => "sandbox_lost",
            Self::VerifyFailed => "verify_failed",
            Self::Verified => "verify",
        }
    }
}

/// Everything `state()` reports for one episode.
#[derive(Debug, Clone, Default)]
pub(crate) struct EpisodeState {
    /// Episode id (kwarg or uuid4).
    pub episode_id: String,
    /// Terminal calls that ran.
    pub step_count: u64,
    /// The reset's `seed` (ignored otherwise).
    pub seed: Value,
    /// The sandbox's id once created.
    pub sandbox_id: Option<String>,
    /// Setup command results.
    pub setup_results: Vec<CommandResult>,
    /// Registered verify commands.
    pub verify_commands: Vec<String>,
    /// Whether the reward file may set the reward (inline verification with `reward_file`).
    pub reward_file: bool,
    /// Results of the last verification.
    pub verify_results: Vec<CommandResult>,
    /// Agent commands, in order.
    pub commands: Vec<CommandResult>,
    /// The final answer, once submitted.
    pub submitted_answer: Option<String>,
    /// The last reward.
    pub last_reward: Option<f64>,
    /// The last reset or tool error.
    pub last_error: Option<String>,
    /// Whether the episode is over.
    pub done: bool,
    /// Why it ended.
    pub done_reason: Option<DoneReason>,
    /// `ready` / `error` once reset ran.
    pub reset_status: Option<&'static str>,
    /// The reset's `message`.
    pub reset_message: Option<String>,
    /// The reset's `error`.
    pub reset_error: Option<String>,
    /// The task instruction.
    pub instruction: Option<String>,
    /// The terminal-bench task id.
    pub task_id: Option<String>,
    /// The backend name.
    pub backend: Option<String>,
    /// The shell mode in force.
    pub shell_mode: Option<&'static str>,
    /// The limits in force (snapshot at reset).
    pub limits: Value,
    /// The last verification.
    pub verification: Option<Verification>,
}

impl EpisodeState {
    /// The `state` frame.
    pub(crate) fn to_env_state(&self) -> EnvState {
        let mut extra = JsonMap::new();
        let mut put = |k: &str, v: Value| {
            extra.insert(k.to_owned(), v);
        };
        put("sandbox_id", json!(self.sandbox_id));
        put("setup_results", results_json(&self.setup_results));
        put("verify_commands", json!(self.verify_commands));
        put("verify_results", results_json(&self.verify_results));
        put("commands", results_json(&self.commands));
        put("submitted_answer", json!(self.submitted_answer));
        put("last_reward", json!(self.last_reward));
        put("last_error", json!(self.last_error));
        put("done", json!(self.done));
        put(
            "done_reason",
            json!(self.done_reason.map(DoneReason::as_str)),
        );
        put("seed", self.seed.clone());
        put("reset_status", json!(self.reset_status));
        put("reset_message", json!(self.reset_message));
        put("reset_error", json!(self.reset_error));
        put("instruction", json!(self.instruction));
        put("task_id", json!(self.task_id));
        put("backend", json!(self.backend));
        put("shell_mode", json!(self.shell_mode));
        put("limits", self.limits.clone());
        put(
            "verification",
            self.verification
                .as_ref()
                .map_or(Value::Null, Verification::to_json),
        );
        EnvState {
            episode_id: Some(self.episode_id.clone()),
            step_count: self.step_count,
            extra,
        }
    }
}
