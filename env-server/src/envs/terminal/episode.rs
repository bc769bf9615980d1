//! The live episode (sandbox, agent shell, episode timer) and the reset algorithm of
//! `TERMINAL_ENV.md` §3.2; teardown when an episode ends or the session closes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use env_client::protocol::JsonMap;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::config::ShellMode;
use super::format::TextRules;
use super::reset::{ResetError, create_error_metadata, parse_args, ready_message, resolve_backend};
use super::shell::{PersistentShell, ShellSettings, run_per_command};
use super::state::{CommandResult, DoneReason, EpisodeState, results_json};
use super::tasks::{TB_TEST_DIR, TbTask, check_task_id, load_task};
use super::{SESSION_REQUIRED, TerminalEnv, sandbox_failure};
use crate::sandbox::{Identity, Sandbox, SandboxSpec};

/// Aborts a spawned task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resources of a live episode.
pub(crate) struct Episode {
    pub sandbox: Arc<dyn Sandbox>,
    pub shell_mode: ShellMode,
    pub shell: Option<PersistentShell>,
    pub settings: ShellSettings,
    pub command_timeout: Duration,
    /// Episode deadline and its configured length.
    pub deadline: Option<(Instant, Duration)>,
    /// Kills the agent's processes at the deadline.
    pub timer: Option<AbortOnDrop>,
    /// The terminal-bench task, if any.
    pub task: Option<TbTask>,
}

/// `{"status": status, …rest}`.
fn with_status(status: &str, rest: JsonMap) -> JsonMap {
    let mut m = JsonMap::new();
    m.insert("status".to_owned(), json!(status));
    m.extend(rest);
    m
}

/// Destroys a sandbox, logging failures.
pub(crate) async fn destroy(sandbox: &dyn Sandbox) {
    if let Err(err) = sandbox.destroy().await {
        tracing::warn!(sandbox_id = sandbox.id(), error = %err, "destroying the sandbox failed");
    }
}

impl TerminalEnv {
    /// The text rules of command output.
    pub(crate) fn rules(&self) -> TextRules {
        TextRules {
            strip_ansi: self.config.strip_ansi,
        }
    }

    /// Ends the live episode's resources: timer, shell, agent processes, sandbox.
    pub(crate) async fn end_episode(&mut self) {
        let Some(mut ep) = self.episode.take() else {
            return;
        };
        ep.timer = None;
        if let Some(mut shell) = ep.shell.take() {
            shell.kill().await;
        }
        destroy(ep.sandbox.as_ref()).await;
    }

    /// §7: a stateless HTTP reset creates nothing.
    pub(crate) fn refuse_stateless(&mut self, kwargs: &JsonMap) -> (JsonMap, bool) {
        self.state = self.fresh_state(kwargs);
        self.state.done = true;
        self.state.reset_status = Some("error");
        self.state.reset_error = Some(SESSION_REQUIRED.to_owned());
        self.state.last_error = Some(SESSION_REQUIRED.to_owned());
        let mut m = JsonMap::new();
        m.insert("status".to_owned(), json!("error"));
        m.insert("error".to_owned(), json!(SESSION_REQUIRED));
        (m, true)
    }

    fn fresh_state(&self, kwargs: &JsonMap) -> EpisodeState {
        let episode_id = match kwargs.get("episode_id") {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Null) | None => uuid::Uuid::new_v4().to_string(),
            Some(other) => other.to_string(),
        };
        EpisodeState {
            episode_id,
            seed: kwargs.get("seed").cloned().unwrap_or(Value::Null),
            backend: Some(self.backend.name().to_owned()),
            ..EpisodeState::default()
        }
    }

    fn limits_json(&self, command_timeout: Duration, episode_timeout: Option<Duration>) -> Value {
        let c = &self.config;
        json!({
            "command_timeout_s": command_timeout.as_secs_f64(),
            "max_command_timeout_s": c.max_command_timeout_s,
            "setup_timeout_s": c.setup_timeout_s,
            "verify_timeout_s": c.verify_timeout_s,
            "max_output_bytes": c.max_output_bytes,
            "max_steps": c.max_steps(),
            "episode_timeout_s": episode_timeout.map(|d| d.as_secs_f64()),
            "on_limit": match c.on_limit { super::OnLimit::Verify => "verify", super::OnLimit::Zero => "zero" },
        })
    }

    /// A reset that ended before a sandbox existed (§3.2 step 5).
    fn create_failed(&mut self, label: &str, err: &ResetError) -> (JsonMap, bool) {
        let metadata = create_error_metadata(label, err);
        let text = metadata
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.state.done = true;
        self.state.done_reason = Some(DoneReason::CreateFailed);
        self.state.reset_status = Some("error");
        self.state.reset_error = Some(text.clone());
        self.state.last_error = Some(text);
        (metadata, true)
    }

    /// A reset that failed after the sandbox existed: destroys it (unless kept) and reports.
    async fn sandbox_failed(
        &mut self,
        sandbox: Arc<dyn Sandbox>,
        reason: DoneReason,
        metadata: JsonMap,
        keep: bool,
    ) -> (JsonMap, bool) {
        if keep {
            self.kept = Some(sandbox);
        } else {
            destroy(sandbox.as_ref()).await;
        }
        let text = metadata
            .get("error")
            .or_else(|| metadata.get("message"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.state.done = true;
        self.state.done_reason = Some(reason);
        self.state.reset_status = Some("error");
        self.state.reset_error = Some(text.clone());
        self.state.last_error = Some(text);
        (with_status("error", metadata), true)
    }

    /// The reset algorithm (§3.2). Returns the observation metadata and `done`.
    pub(crate) async fn reset_episode(&mut self, kwargs: JsonMap) -> (JsonMap, bool) {
        self.end_episode().await;
        if let Some(kept) = self.kept.take() {
            destroy(kept.as_ref()).await;
        }
        self.state = self.fresh_state(&kwargs);
        let config = Arc::clone(&self.config);
        let (label, backend) = resolve_backend(&kwargs, self.backend.name());
        let args = match backend.and_then(|b| parse_args(&kwargs, &config, b)) {
            Ok(args) => args,
            Err(err) => return self.create_failed(&label, &err),
        };
        let task = match &args.task_id {
            None => None,
            Some(id) => {
                let loaded = match (&config.tasks_root, check_task_id(id)) {
                    (None, _) => Err(
                        "task_path requires the server to be started with --tasks-dir".to_owned(),
                    ),
                    (_, Err(e)) => Err(e),
                    (Some(root), Ok(id)) => load_task(root.clone(), id).await,
                };
                let loaded = loaded.and_then(|task| {
                    if args.verify.is_empty() {
                        Ok(task)
                    } else {
                        Err("verify cannot be combined with task_path".to_owned())
                    }
                });
                match loaded {
                    Ok(task) => Some(task),
                    Err(msg) => return self.create_failed(&label, &ResetError::value(msg)),
                }
            }
        };
        let instruction = args
            .instruction
            .clone()
            .or_else(|| task.as_ref().map(|t| t.instruction.clone()));
        let mut setup = task.as_ref().map(|t| t.setup.clone()).unwrap_or_default();
        setup.extend(args.setup.iter().cloned());
        let mut files = Vec::new();
        if let Some(t) = &task {
            for (path, text) in &t.files {
                match super::reset::resolve_file_path(path, &config.work_dir) {
                    Ok(p) => files.push((p, text.clone())),
                    Err(e) => return self.create_failed(&label, &e),
                }
            }
        }
        files.extend(args.files.iter().cloned());
        let verify_commands = if task.is_some() {
            vec![format!("bash {TB_TEST_DIR}/run-tests.sh")]
        } else {
            args.verify.clone()
        };
        let episode_timeout = match (
            config.episode_timeout(),
            task.as_ref().and_then(|t| t.max_agent_timeout),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.state.instruction.clone_from(&instruction);
        self.state.task_id = task.as_ref().map(|t| t.id.clone());
        self.state.shell_mode = Some(args.shell_mode.as_str());
        self.state.limits = self.limits_json(args.command_timeout, episode_timeout);

        // Step 4: create the sandbox.
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("openenv.env".to_owned(), "terminal".to_owned());
        labels.insert(
            "openenv.episode_id".to_owned(),
            self.state.episode_id.clone(),
        );
        let spec = SandboxSpec {
            labels,
            ..config.sandbox_spec()
        };
        let sandbox: Arc<dyn Sandbox> = match self.backend.create(spec).await {
            Ok(sb) => Arc::from(sb),
            Err(err) => {
                let text = sandbox_failure(&err, "creating the sandbox failed");
                return self.create_failed(&label, &ResetError::runtime(text));
            }
        };
        let sandbox_id = sandbox.id().to_owned();
        self.state.sandbox_id = Some(sandbox_id.clone());
        self.state.verify_commands.clone_from(&verify_commands);
        // A task folder's verdict is its test summary; only inline checks may opt in to the
        // reward file (docs/verification.md).
        self.state.reward_file = args.reward_file && task.is_none();
        let mut meta = JsonMap::new();
        meta.insert("sandbox_id".to_owned(), json!(sandbox_id));

        // Step 7: the verifier's directory.
        if let Err(err) = sandbox
            .reset_dir(config.verifier_dir(), Identity::Verifier)
            .await
        {
            meta.insert(
                "error".to_owned(),
                json!(format!(
                    "failed to prepare the verifier directory: {}",
                    sandbox_failure(&err, "preparing the verifier directory failed")
                )),
            );
            return self
                .sandbox_failed(sandbox, DoneReason::SetupFailed, meta, false)
                .await;
        }
        // Step 8: files, then setup commands.
        for (path, text) in files {
            let data = Bytes::from(text.into_bytes());
            if let Err(err) = sandbox
                .write_file(&path, data, 0o644, Identity::Agent)
                .await
            {
                meta.insert(
                    "error".to_owned(),
                    json!(format!(
                        "failed to write {path}: {}",
                        sandbox_failure(&err, "writing a reset file failed")
                    )),
                );
                let keep = config.keep_sandbox_on_setup_failure;
                return self
                    .sandbox_failed(sandbox, DoneReason::SetupFailed, meta, keep)
                    .await;
            }
        }
        let settings = ShellSettings {
            login_shell: config.login_shell,
            work_dir: config.work_dir.clone(),
            max_output_bytes: config.max_output_bytes,
            head_fraction: config.head_fraction,
        };
        let mut failed = false;
        for command in &setup {
            let timeout = config.setup_timeout();
            let result = match run_per_command(sandbox.as_ref(), &settings, command, timeout).await
            {
                Ok(run) => CommandResult::from_exec(command, &run.result, run.error, self.rules()),
                Err(err) => {
                    let text = sandbox_failure(&err, "running a setup command failed");
                    meta.insert("error".to_owned(), json!(format!("setup failed: {text}")));
                    return self
                        .sandbox_failed(sandbox, DoneReason::SetupFailed, meta, false)
                        .await;
                }
            };
            failed |= !result.success;
            self.state.setup_results.push(result);
            if failed && config.setup_fail_fast {
                break;
            }
        }
        if failed {
            meta.insert("message".to_owned(), json!("Setup command failed."));
            meta.insert(
                "setup_results".to_owned(),
                results_json(&self.state.setup_results),
            );
            let keep = config.keep_sandbox_on_setup_failure;
            return self
                .sandbox_failed(sandbox, DoneReason::SetupFailed, meta, keep)
                .await;
        }
        // Step 10: the agent shell starts with the first command (`tool::run_persistent`
        // starts a missing shell), not here: an episode between its reset and its first
        // command holds no shell process (`docs/scale.md`).
        let shell: Option<PersistentShell> = None;
        // Step 11: ready.
        let message = ready_message(setup.len(), verify_commands.len());
        meta.insert("message".to_owned(), json!(message));
        meta.insert(
            "setup_results".to_owned(),
            results_json(&self.state.setup_results),
        );
        meta.insert("verify_commands".to_owned(), json!(verify_commands));
        meta.insert("instruction".to_owned(), json!(instruction));
        meta.insert("task_id".to_owned(), json!(self.state.task_id));
        meta.insert("backend".to_owned(), json!(self.backend.name()));
        meta.insert("shell_mode".to_owned(), json!(args.shell_mode.as_str()));
        meta.insert("limits".to_owned(), self.state.limits.clone());
        if !args.ignored.is_empty() {
            meta.insert("ignored_kwargs".to_owned(), json!(args.ignored));
        }
        let meta = with_status("ready", meta);
        self.state.reset_status = Some("ready");
        self.state.reset_message = Some(message);
        let deadline = episode_timeout.map(|d| (Instant::now() + d, d));
        let timer = deadline.map(|(at, _)| {
            let sandbox = Arc::clone(&sandbox);
            AbortOnDrop(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                if let Err(err) = sandbox.kill_all(Identity::Agent).await {
                    tracing::warn!(error = %err, "killing agent processes at the episode timeout failed");
                }
            }))
        });
        self.episode = Some(Episode {
            sandbox,
            shell_mode: args.shell_mode,
            shell,
            settings,
            command_timeout: args.command_timeout,
            deadline,
            timer,
            task,
        });
        (meta, false)
    }
}
