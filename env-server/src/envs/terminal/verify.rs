//! Verification and the `verify` frame; the threat model is `docs/verification.md`.
//!
//! Every agent process is killed first, the verifier's directory is recreated (no symlink
//! followed), verifier-only files are staged only then, verify commands run in a clean shell
//! with an explicit environment, every process of the episode is killed again (nothing a
//! verify command started can write afterwards), and the server reads the verdict. A run that
//! did not end normally — a timeout, a signal, a status of 128 or more, a lost sandbox, a test
//! summary that is missing, doubled, incomplete or contradicted by the exit status — is void:
//! reward 0.0 with the reason. The reward file counts only for inline checks that opted in.

use std::collections::BTreeMap;

use bytes::Bytes;
use env_client::protocol::{JsonMap, ToolError, ToolErrorType, VerifyResult};
use serde_json::{Value, json};

use super::config::{TbReward, VerifyShell};
use super::format::{TextRules, parse_reward, stream_text};
use super::state::{CommandResult, DoneReason, RewardSource, Verification, results_json};
use super::tasks::{
    TB_TEST_DIR, TestCounts, collect_test_files, count_test_summaries, parse_test_summary,
};
use super::{CallOutcome, EnvError, TerminalEnv, sandbox_failure};
use crate::sandbox::{Capture, CapturedOutput, ExecRequest, ExecResult, Identity, SandboxError};

/// `PATH` of verify commands: system directories only.
pub(crate) const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes of the reward file read.
const REWARD_FILE_MAX_BYTES: usize = 64;
/// Bytes of a terminal-bench test run's output kept for reading its summary.
const TB_OUTPUT_BYTES: usize = 1024 * 1024;

/// Re-caps a capture to `cap` bytes (head share `fraction`), keeping its total.
fn recap(out: &CapturedOutput, cap: usize, fraction: f64) -> CapturedOutput {
    if !out.truncated() {
        let mut c = Capture::new(cap, fraction);
        c.push(&out.head);
        c.push(&out.tail);
        return c.finish();
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let head_cap = ((cap as f64) * fraction.clamp(0.0, 1.0)).floor() as usize;
    let tail_cap = cap - head_cap.min(cap);
    CapturedOutput {
        head: out.head[..head_cap.min(out.head.len())].to_vec(),
        tail: out.tail[out.tail.len().saturating_sub(tail_cap)..].to_vec(),
        total: out.total,
    }
}

/// Why verify command `n` (1-based) did not end normally: a timeout, a signal, or an exit
/// status of 128 or more (what a shell reports for a killed child). `None` for a normal exit.
fn abnormal_end(res: &ExecResult, n: usize) -> Option<String> {
    if res.timed_out {
        return Some(format!("verify command {n} timed out"));
    }
    if let Some(signal) = res.signal {
        return Some(format!("verify command {n} was killed by signal {signal}"));
    }
    match res.exit_code {
        Some(code) if code >= 128 => Some(format!(
            "verify command {n} exited with status {code}, the status of a killed process"
        )),
        Some(_) => None,
        None => Some(format!("verify command {n} did not exit")),
    }
}

/// The test counts of a task folder's test run, or why they cannot be trusted: output cut at
/// the cap, no summary or more than one, an incomplete summary, or an all-passed summary from
/// a run that exited non-zero.
fn test_verdict(text: &str, res: &ExecResult) -> Result<TestCounts, String> {
    if res.stdout.truncated() || res.stderr.truncated() {
        return Err(
            "the test output exceeded its cap, so its summary cannot be trusted".to_owned(),
        );
    }
    match count_test_summaries(text) {
        0 => return Err("the test run printed no test summary".to_owned()),
        1 => {}
        n => {
            return Err(format!(
                "the test output holds {n} test summaries where a test run prints one"
            ));
        }
    }
    let counts =
        parse_test_summary(text).ok_or_else(|| "the test summary is incomplete".to_owned())?;
    if counts.total > 0 && counts.passed == counts.total && res.exit_code != Some(0) {
        return Err(format!(
            "the test run exited with status {} although its summary says every test passed",
            res.exit_code.unwrap_or(-1)
        ));
    }
    Ok(counts)
}

impl TerminalEnv {
    /// Runs §4.2 and ends the episode. On failure the episode ends without a reward and the
    /// returned outcome carries the tool error.
    pub(crate) async fn verify_and_end(
        &mut self,
        reason: DoneReason,
    ) -> Result<Verification, CallOutcome> {
        match self.run_verification().await {
            Ok((v, results)) => {
                self.end_episode().await;
                self.state.verify_results = results;
                self.state.done = true;
                self.state.done_reason = Some(reason);
                self.state.last_reward = Some(v.reward);
                self.state.verification = Some(v.clone());
                Ok(v)
            }
            Err(SandboxError::Gone { reason }) => Err(self.sandbox_lost(&reason).await),
            Err(err) => {
                self.end_episode().await;
                let text = sandbox_failure(&err, "verification failed");
                let message = format!("Error calling tool 'terminal': verification failed: {text}");
                self.state.done = true;
                self.state.done_reason = Some(DoneReason::VerifyFailed);
                self.state.last_error = Some(message.clone());
                Err(CallOutcome {
                    result: Err(ToolError::new(ToolErrorType::TransportError, message)),
                    metadata: JsonMap::new(),
                    reward: None,
                    done: true,
                })
            }
        }
    }

    async fn run_verification(
        &mut self,
    ) -> Result<(Verification, Vec<CommandResult>), SandboxError> {
        let config = std::sync::Arc::clone(&self.config);
        let rules = self.rules();
        let Some(ep) = self.episode.as_mut() else {
            return Err(SandboxError::Gone {
                reason: "no live episode".to_owned(),
            });
        };
        // 1–2: stop the agent: shell, timer, then every process of the agent identity.
        ep.timer = None;
        if let Some(mut shell) = ep.shell.take() {
            shell.kill().await;
        }
        let sandbox = std::sync::Arc::clone(&ep.sandbox);
        sandbox.kill_all(Identity::Agent).await?;
        // 3: a fresh verifier directory.
        sandbox
            .reset_dir(config.verifier_dir(), Identity::Verifier)
            .await?;
        // 4: verifier-only files.
        let mut env = BTreeMap::new();
        env.insert("HOME".to_owned(), config.work_dir.clone());
        env.insert("PATH".to_owned(), SYSTEM_PATH.to_owned());
        env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
        env.insert("PYTHONNOUSERSITE".to_owned(), "1".to_owned());
        env.insert("REWARD_FILE".to_owned(), config.reward_file.clone());
        let task = ep.task.clone();
        let (timeout, cap) = match &task {
            Some(t) => {
                sandbox.reset_dir(TB_TEST_DIR, Identity::Verifier).await?;
                let files = collect_test_files(t.dir.clone(), config.tb_max_test_bytes)
                    .await
                    .map_err(|reason| SandboxError::InvalidRequest { reason })?;
                for (rel, bytes, mode) in files {
                    let path = format!("{TB_TEST_DIR}/{rel}");
                    sandbox
                        .write_file(&path, Bytes::from(bytes), mode, Identity::Verifier)
                        .await?;
                }
                env.insert("TEST_DIR".to_owned(), TB_TEST_DIR.to_owned());
                let t = t
                    .max_test_timeout
                    .mul_f64(config.tb_test_timeout_multiplier);
                (t, TB_OUTPUT_BYTES.max(config.max_output_bytes))
            }
            None => (config.verify_timeout(), config.max_output_bytes),
        };
        // 5–6: every verify command, fresh process each. A run that did not end normally, or
        // whose summary is missing, doubled or contradicted, voids the verdict
        // (docs/verification.md).
        let mut results = Vec::new();
        let mut passed = 0u64;
        let mut tests = None;
        let mut void: Option<String> = None;
        for (n, command) in self.state.verify_commands.iter().enumerate() {
            let argv = match config.verify_shell {
                VerifyShell::Clean => vec!["bash", "--noprofile", "--norc", "-c"],
                VerifyShell::Login => vec!["bash", "-lc"],
            };
            let mut argv: Vec<String> = argv.into_iter().map(str::to_owned).collect();
            argv.push(command.clone());
            let mut req = ExecRequest::new(argv, timeout, cap);
            req.cwd = Some(config.work_dir.clone());
            req.env = env.clone();
            req.identity = Identity::Verifier;
            // Agent code the check runs can kill the supervisor: a sandbox lost from here on
            // voids the run instead of leaving the episode without a reward.
            let mut res = match sandbox.exec(req).await {
                Ok(res) => res,
                Err(SandboxError::Gone { reason }) => {
                    let why = format!(
                        "the sandbox was lost while verify command {} ran: {reason}",
                        n + 1
                    );
                    return Ok((Verification::void(why), results));
                }
                Err(err) => return Err(err),
            };
            let mut reason = abnormal_end(&res, n + 1);
            if task.is_some() {
                let mut text = stream_text(&res.stdout, TextRules { strip_ansi: true });
                text.push('\n');
                text.push_str(&stream_text(&res.stderr, TextRules { strip_ansi: true }));
                match test_verdict(&text, &res) {
                    Ok(counts) => tests = Some(counts),
                    Err(why) => reason = reason.or(Some(why)),
                }
                res.stdout = recap(&res.stdout, config.max_output_bytes, config.head_fraction);
                res.stderr = recap(&res.stderr, config.max_output_bytes, config.head_fraction);
            }
            if void.is_none() {
                void = reason;
            }
            let error = res.timed_out.then(|| super::shell::timeout_text(timeout));
            let record = CommandResult::from_exec(command, &res, error, rules);
            passed += u64::from(record.success);
            results.push(record);
        }
        let (passed, total) = match (&task, tests) {
            (Some(_), Some(t)) => (t.passed, t.total),
            (Some(_), None) => (0, 0),
            (None, _) => (passed, results.len() as u64),
        };
        // Nothing the verify commands started (nor anything of the agent's) may write the
        // reward file after the check: kill every process of the episode before reading it.
        for identity in [Identity::Verifier, Identity::Agent] {
            match sandbox.kill_all(identity).await {
                Ok(()) => {}
                Err(SandboxError::Gone { reason }) => {
                    let why = format!("the sandbox was lost after the verify commands: {reason}");
                    return Ok((Verification::void(why), results));
                }
                Err(err) => return Err(err),
            }
        }
        // 7: the reward file, through the backend — inline checks that opted in only, and only
        // from a run that ended normally.
        let mut file_reward = None;
        if self.state.reward_file && void.is_none() {
            match sandbox
                .read_file(&config.reward_file, REWARD_FILE_MAX_BYTES)
                .await
            {
                Ok(c) if c.truncated => {
                    void = Some(format!(
                        "the reward file is longer than {REWARD_FILE_MAX_BYTES} bytes"
                    ));
                }
                Ok(c) => {
                    file_reward = std::str::from_utf8(&c.bytes).ok().and_then(parse_reward);
                }
                Err(SandboxError::NotFound { .. }) => {}
                Err(gone @ SandboxError::Gone { .. }) => return Err(gone),
                Err(err) => {
                    tracing::warn!(error = %err, "the reward file could not be read safely");
                    void = Some(format!(
                        "the reward file could not be read safely ({})",
                        err.client_message()
                    ));
                }
            }
        }
        if let Some(reason) = void {
            return Ok((
                Verification {
                    total,
                    ..Verification::void(reason)
                },
                results,
            ));
        }
        #[allow(clippy::cast_precision_loss)]
        let (reward, source) = match file_reward {
            Some(r) => (r, RewardSource::File),
            None if total == 0 => (0.0, RewardSource::None),
            None if task.is_some() && config.tb_reward == TbReward::Binary => (
                if passed == total { 1.0 } else { 0.0 },
                RewardSource::Fraction,
            ),
            None => (passed as f64 / total as f64, RewardSource::Fraction),
        };
        let reward = config.reward_range.map_or(reward, |r| r.clamp(reward));
        Ok((
            Verification {
                passed,
                total,
                reward,
                source,
                void_reason: None,
            },
            results,
        ))
    }

    /// Details of a verification (`verify` frame, final-answer metadata).
    fn verify_details(&self) -> JsonMap {
        let mut details = JsonMap::new();
        details.insert(
            "verification".to_owned(),
            self.state
                .verification
                .as_ref()
                .map_or(Value::Null, Verification::to_json),
        );
        details.insert(
            "verify_results".to_owned(),
            results_json(&self.state.verify_results),
        );
        details.insert("step_count".to_owned(), json!(self.state.step_count));
        details.insert(
            "done_reason".to_owned(),
            json!(self.state.done_reason.map(DoneReason::as_str)),
        );
        details
    }

    /// The `verify` frame (E1): verifies a live episode and ends it; a done episode gives its
    /// stored reward; nothing to give is an execution error.
    pub(crate) async fn verify_frame(&mut self) -> Result<VerifyResult, EnvError> {
        if self.episode.is_some() && !self.state.done {
            return match self.verify_and_end(DoneReason::Verified).await {
                Ok(v) => Ok(VerifyResult {
                    reward: v.reward,
                    done: true,
                    details: self.verify_details(),
                }),
                Err(failure) => Err(EnvError::execution(match failure.result {
                    Err(e) => e.message,
                    Ok(text) => text,
                })),
            };
        }
        match self.state.last_reward {
            Some(reward) if self.state.done => Ok(VerifyResult {
                reward,
                done: true,
                details: self.verify_details(),
            }),
            _ => Err(EnvError::execution(
                "no reward to give: the episode has no live sandbox (call reset() first)",
            )),
        }
    }
}
