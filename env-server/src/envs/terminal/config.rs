//! Configuration of the terminal environment (`TERMINAL_ENV.md` §8): every limit a typed field
//! with its default beside it, a `serve` flag and an `ENV_SERVER_*` variable.
//!
//! Backend-wide settings (`--sandbox`, `--sandbox-root`, the server-wide session and idle
//! limits) live in the server and backend configs, not here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};

/// How agent commands run (`TERMINAL_ENV.md` §5.5, §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShellMode {
    /// One shell per episode: `cd`, `export`, functions and aliases persist between commands.
    Persistent,
    /// A fresh `bash -lc <command>` per command (Terminus-compatible): only files persist.
    #[value(name = "per_command")]
    PerCommand,
}

impl ShellMode {
    /// The spec's name (`persistent`, `per_command`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Persistent => "persistent",
            Self::PerCommand => "per_command",
        }
    }
}

/// What reaching `max_steps` or `episode_timeout_s` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLimit {
    /// Run the verifier and end the episode with its reward.
    Verify,
    /// End the episode with reward 0.0, without verifying.
    Zero,
}

/// What a `final_answer` does when no verify command is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FinalAnswerWithoutVerify {
    /// End the episode with reward 0.0.
    End,
    /// Store the answer and keep the episode open (the Terminus behaviour).
    Continue,
}

/// What a call with both `command` and `final_answer` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BothArgs {
    /// `final_answer` wins and `command` is ignored (the Terminus behaviour).
    #[value(name = "final_answer_wins")]
    FinalAnswerWins,
    /// The call fails with `invalid_args`.
    Reject,
}

/// The shell verify commands run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyShell {
    /// `bash --noprofile --norc -c`: no agent-writable profile can change the verdict.
    Clean,
    /// `bash -lc` (the Terminus behaviour; agent profiles run).
    Login,
}

/// How a terminal-bench task's test results become the reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TbReward {
    /// 1.0 when at least one test ran and all passed, else 0.0.
    Binary,
    /// Passed tests / all tests.
    Fraction,
}

/// A closed reward interval `[lo, hi]` (flag syntax `LO,HI`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardRange {
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

impl RewardRange {
    /// Clamps `reward` into the range.
    pub fn clamp(self, reward: f64) -> f64 {
        reward.clamp(self.lo, self.hi)
    }
}

fn parse_reward_range(text: &str) -> Result<RewardRange, String> {
    let (lo, hi) = text
        .split_once(',')
        .ok_or_else(|| "expected LO,HI (e.g. 0,1)".to_owned())?;
    let lo: f64 = lo
        .trim()
        .parse()
        .map_err(|_| format!("invalid bound {lo:?}"))?;
    let hi: f64 = hi
        .trim()
        .parse()
        .map_err(|_| format!("invalid bound {hi:?}"))?;
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err("bounds must be finite with LO <= HI".to_owned());
    }
    Ok(RewardRange { lo, hi })
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number".to_owned())?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("expected a number between 0 and 1".to_owned())
    }
}

fn parse_multiplier(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number".to_owned())?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("expected a positive number".to_owned())
    }
}

/// Settings of the terminal environment.
#[derive(Debug, Clone, Args)]
pub struct TerminalConfig {
    /// How agent commands run: one persistent shell per episode (cd/export persist) or a fresh
    /// `bash -lc` per command (Terminus-compatible). A reset may choose per episode.
    #[arg(long, env = "ENV_SERVER_SHELL_MODE", value_enum, default_value_t = ShellMode::Persistent)]
    pub shell_mode: ShellMode,

    /// Start the persistent shell as a login shell (`bash --login`); false: `bash --noprofile
    /// --norc`.
    #[arg(long, env = "ENV_SERVER_LOGIN_SHELL", default_value_t = true, action = ArgAction::Set)]
    pub login_shell: bool,

    /// The agent's working directory (and HOME) inside the sandbox.
    #[arg(long, env = "ENV_SERVER_WORK_DIR", default_value = "/home/user")]
    pub work_dir: String,

    /// Wall-clock limit of one agent command; its whole process tree is killed on expiry.
    #[arg(long, env = "ENV_SERVER_COMMAND_TIMEOUT_S", default_value_t = 120)]
    pub command_timeout_s: u64,

    /// Largest command timeout a reset may ask for (`command_timeout_s` kwarg is clamped).
    #[arg(long, env = "ENV_SERVER_MAX_COMMAND_TIMEOUT_S", default_value_t = 600)]
    pub max_command_timeout_s: u64,

    /// Wall-clock limit of each setup command at reset.
    #[arg(long, env = "ENV_SERVER_SETUP_TIMEOUT_S", default_value_t = 300)]
    pub setup_timeout_s: u64,

    /// Wall-clock limit of each verify command.
    #[arg(long, env = "ENV_SERVER_VERIFY_TIMEOUT_S", default_value_t = 120)]
    pub verify_timeout_s: u64,

    /// Extra time a tool call gets beyond its command timeout before it fails with `timeout`
    /// (only a wedged backend reaches it).
    #[arg(long, env = "ENV_SERVER_TOOL_CALL_GRACE_S", default_value_t = 10)]
    pub tool_call_grace_s: u64,

    /// After a timeout, time between SIGTERM and SIGKILL of the command's process tree.
    #[arg(long, env = "ENV_SERVER_KILL_GRACE_S", default_value_t = 2)]
    pub kill_grace_s: u64,

    /// After a command's main process exits, how long its output is still collected.
    #[arg(long, env = "ENV_SERVER_DRAIN_GRACE_MS", default_value_t = 200)]
    pub drain_grace_ms: u64,

    /// Cap of each output stream of a command; the middle of longer output is replaced by a
    /// marker.
    #[arg(long, env = "ENV_SERVER_MAX_OUTPUT_BYTES", default_value_t = 25_000)]
    pub max_output_bytes: usize,

    /// Share of the output cap kept from the start of a stream (the rest from its end).
    #[arg(long, env = "ENV_SERVER_HEAD_FRACTION", default_value_t = 0.25, value_parser = parse_fraction)]
    pub head_fraction: f64,

    /// Remove ANSI escape sequences from command output.
    #[arg(long, env = "ENV_SERVER_STRIP_ANSI", default_value_t = false, action = ArgAction::Set)]
    pub strip_ansi: bool,

    /// Terminal calls per episode before it ends (0 = no limit).
    #[arg(long, env = "ENV_SERVER_MAX_STEPS", default_value_t = 0)]
    pub max_steps: u64,

    /// Wall-clock limit of an episode from the end of reset (0 = none); on expiry the agent's
    /// processes are killed and the next call ends the episode.
    #[arg(long, env = "ENV_SERVER_EPISODE_TIMEOUT_S", default_value_t = 0)]
    pub episode_timeout_s: u64,

    /// What reaching max-steps or the episode timeout does: verify, or end with reward 0.0.
    #[arg(long, env = "ENV_SERVER_ON_LIMIT", value_enum, default_value_t = OnLimit::Verify)]
    pub on_limit: OnLimit,

    /// Stop running setup commands at the first failure.
    #[arg(long, env = "ENV_SERVER_SETUP_FAIL_FAST", default_value_t = true, action = ArgAction::Set)]
    pub setup_fail_fast: bool,

    /// Keep the sandbox of a failed setup until the session ends (for debugging).
    #[arg(long, env = "ENV_SERVER_KEEP_SANDBOX_ON_SETUP_FAILURE", default_value_t = false, action = ArgAction::Set)]
    pub keep_sandbox_on_setup_failure: bool,

    /// What a final answer does when no verify command is registered: end the episode with
    /// reward 0.0, or continue (Terminus).
    #[arg(long, env = "ENV_SERVER_FINAL_ANSWER_WITHOUT_VERIFY", value_enum, default_value_t = FinalAnswerWithoutVerify::End)]
    pub final_answer_without_verify: FinalAnswerWithoutVerify,

    /// A call with both command and final_answer: final_answer wins (Terminus), or reject.
    #[arg(long, env = "ENV_SERVER_BOTH_ARGS", value_enum, default_value_t = BothArgs::FinalAnswerWins)]
    pub both_args: BothArgs,

    /// Shell of verify commands: clean (`bash --noprofile --norc -c`) or login (`bash -lc`,
    /// Terminus; agent profiles then run).
    #[arg(long, env = "ENV_SERVER_VERIFY_SHELL", value_enum, default_value_t = VerifyShell::Clean)]
    pub verify_shell: VerifyShell,

    /// The verifier's reward file inside the sandbox (`REWARD_FILE`); its directory is
    /// recreated, verifier-owned, before every verification.
    #[arg(
        long,
        env = "ENV_SERVER_REWARD_FILE",
        default_value = "/home/user/logs/verifier/reward.txt"
    )]
    pub reward_file: String,

    /// Default of the reset argument `reward_file`: whether a valid float in the reward file
    /// overrides passed/total of inline verify commands. Off by default, because any code a
    /// verify command runs (the agent's, say) can write that file (docs/verification.md); task
    /// folders never read it.
    #[arg(long, env = "ENV_SERVER_REWARD_OVERRIDE", default_value_t = false, action = ArgAction::Set)]
    pub reward_override: bool,

    /// Clamp every reward into LO,HI (e.g. `0,1`); unset = no clamp.
    #[arg(long, env = "ENV_SERVER_REWARD_RANGE", value_parser = parse_reward_range)]
    pub reward_range: Option<RewardRange>,

    /// Most files a reset's `files` argument may write.
    #[arg(long, env = "ENV_SERVER_MAX_RESET_FILES", default_value_t = 64)]
    pub max_reset_files: usize,

    /// Most bytes (all files together) a reset's `files` argument may write.
    #[arg(long, env = "ENV_SERVER_MAX_RESET_FILES_BYTES", default_value_t = 1024 * 1024)]
    pub max_reset_files_bytes: usize,

    /// Folder of terminal-bench task folders that resets may name (`task_path` / `task_id`);
    /// unset: task folders are refused.
    #[arg(long = "tasks-dir", env = "ENV_SERVER_TASKS_DIR")]
    pub tasks_root: Option<PathBuf>,

    /// terminal-bench reward: binary (1.0 iff every test passed) or fraction of tests passed.
    #[arg(long, env = "ENV_SERVER_TB_REWARD", value_enum, default_value_t = TbReward::Binary)]
    pub tb_reward: TbReward,

    /// Multiplier of a task's `max_test_timeout_sec`.
    #[arg(long, env = "ENV_SERVER_TB_TEST_TIMEOUT_MULTIPLIER", default_value_t = 1.0, value_parser = parse_multiplier)]
    pub tb_test_timeout_multiplier: f64,

    /// Most bytes of a task's `run-tests.sh` and `tests/` staged into the sandbox at
    /// verification.
    #[arg(long, env = "ENV_SERVER_TB_MAX_TEST_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub tb_max_test_bytes: u64,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        Self {
            shell_mode: ShellMode::Persistent,
            login_shell: true,
            work_dir: "/home/user".to_owned(),
            command_timeout_s: 120,
            max_command_timeout_s: 600,
            setup_timeout_s: 300,
            verify_timeout_s: 120,
            tool_call_grace_s: 10,
            kill_grace_s: 2,
            drain_grace_ms: 200,
            max_output_bytes: 25_000,
            head_fraction: 0.25,
            strip_ansi: false,
            max_steps: 0,
            episode_timeout_s: 0,
            on_limit: OnLimit::Verify,
            setup_fail_fast: true,
            keep_sandbox_on_setup_failure: false,
            final_answer_without_verify: FinalAnswerWithoutVerify::End,
            both_args: BothArgs::FinalAnswerWins,
            verify_shell: VerifyShell::Clean,
            reward_file: "/home/user/logs/verifier/reward.txt".to_owned(),
            reward_override: false,
            reward_range: None,
            max_reset_files: 64,
            max_reset_files_bytes: 1024 * 1024,
            tasks_root: None,
            tb_reward: TbReward::Binary,
            tb_test_timeout_multiplier: 1.0,
            tb_max_test_bytes: 16 * 1024 * 1024,
        }
    }
}

impl TerminalConfig {
    /// The default command timeout, at least one second.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout_s.max(1))
    }

    /// The largest command timeout a reset may ask for.
    pub fn max_command_timeout(&self) -> Duration {
        Duration::from_secs(self.max_command_timeout_s.max(1))
    }

    /// The setup command timeout.
    pub fn setup_timeout(&self) -> Duration {
        Duration::from_secs(self.setup_timeout_s.max(1))
    }

    /// The verify command timeout.
    pub fn verify_timeout(&self) -> Duration {
        Duration::from_secs(self.verify_timeout_s.max(1))
    }

    /// The tool-call grace beyond the command timeout.
    pub fn tool_call_grace(&self) -> Duration {
        Duration::from_secs(self.tool_call_grace_s)
    }

    /// Time between SIGTERM and SIGKILL of a timed-out command's process tree.
    pub fn kill_grace(&self) -> Duration {
        Duration::from_secs(self.kill_grace_s)
    }

    /// How long a command's output is still collected after its main process exits.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }

    /// The sandbox of an episode as this config asks for it: the work dir, and the kill grace,
    /// drain grace and output head share every exec in it uses.
    pub fn sandbox_spec(&self) -> crate::sandbox::SandboxSpec {
        crate::sandbox::SandboxSpec {
            work_dir: self.work_dir.clone(),
            kill_grace: self.kill_grace(),
            drain_grace: self.drain_grace(),
            head_fraction: self.head_fraction,
            ..crate::sandbox::SandboxSpec::default()
        }
    }

    /// The step limit, `None` when unlimited.
    pub fn max_steps(&self) -> Option<u64> {
        (self.max_steps > 0).then_some(self.max_steps)
    }

    /// The episode timeout, `None` when unlimited.
    pub fn episode_timeout(&self) -> Option<Duration> {
        (self.episode_timeout_s > 0).then(|| Duration::from_secs(self.episode_timeout_s))
    }

    /// The verifier's directory: the reward file's parent.
    pub fn verifier_dir(&self) -> &str {
        match self.reward_file.rsplit_once('/') {
            Some(("", _)) | None => "/",
            Some((dir, _)) => dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        terminal: TerminalConfig,
    }

    #[test]
    fn default_matches_the_flags() {
        let parsed = Cli::try_parse_from(["x"]).unwrap().terminal;
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", TerminalConfig::default())
        );
    }

    #[test]
    fn parses_enums_and_ranges() {
        let c = Cli::try_parse_from([
            "x",
            "--shell-mode",
            "per_command",
            "--both-args",
            "reject",
            "--reward-range",
            "0,1",
            "--login-shell",
            "false",
        ])
        .unwrap()
        .terminal;
        assert_eq!(c.shell_mode, ShellMode::PerCommand);
        assert_eq!(c.both_args, BothArgs::Reject);
        assert_eq!(c.reward_range, Some(RewardRange { lo: 0.0, hi: 1.0 }));
        assert!(!c.login_shell);
        assert!(Cli::try_parse_from(["x", "--reward-range", "1,0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--head-fraction", "2"]).is_err());
        assert_eq!(
            TerminalConfig::default().verifier_dir(),
            "/home/user/logs/verifier"
        );
    }
}
