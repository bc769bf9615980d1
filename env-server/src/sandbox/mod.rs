//! Sandboxes: the backend-neutral contract (`SANDBOXES.md` §1) and one module per backend.
//!
//! An environment owns at most one [`Sandbox`], created by a [`SandboxBackend`]. The contract
//! is shaped for remote backends too (Docker Engine API, Hugging Face Jobs): every operation is
//! async and fallible with a typed [`SandboxError`], arguments travel as argv and maps (never
//! interpolated into shell text), and a command that runs out of time is a **result**
//! (`timed_out: true` with the output captured so far), not an error.
//!
//! Invariants every backend keeps:
//! - no server secret enters a sandbox: its environment is built from an explicit allow-list
//!   ([`SandboxSpec::env`], [`ExecRequest::env`]), never inherited from the server;
//! - every exec runs in a new session/process group, and its timeout kills the whole tree;
//! - output is captured head + tail per stream ([`output::Capture`]), pipes are always drained;
//! - `destroy` is idempotent and leaves no process and no file of the sandbox behind; dropping a
//!   sandbox without `destroy` still tears it down (best effort, logged).

pub mod local;
pub mod output;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use output::{Capture, CapturedOutput};

/// Who an operation runs as inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The agent (uid 1000 inside).
    Agent,
    /// The environment's own operations: setup, verification (a distinct uid where the backend
    /// can give one).
    Verifier,
}

/// Network access of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Loopback only (the default).
    #[default]
    None,
    /// Outbound access (server configuration only; never chosen by a client).
    Egress,
}

/// Resource limits of a sandbox; `None` = not limited. Backends report which they enforce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxLimits {
    /// Memory of the whole sandbox, bytes.
    pub memory_bytes: Option<u64>,
    /// Processes (tasks) in the whole sandbox.
    pub pids: Option<u64>,
    /// Largest file a process may write, bytes (`RLIMIT_FSIZE`).
    pub file_bytes: Option<u64>,
    /// Open files per process (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
}

/// What to create.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// The agent's working directory (and `HOME`), e.g. `/home/user`.
    pub work_dir: String,
    /// Non-secret environment variables added to every process (on top of the backend's fixed
    /// base: `HOME`, `USER`, `PATH`, `LANG`, `TERM`, `TMPDIR`).
    pub env: BTreeMap<String, String>,
    /// Resource limits.
    pub limits: SandboxLimits,
    /// Network access.
    pub network: Network,
    /// Labels naming the owner (server instance, session), for orphan sweeps.
    pub labels: BTreeMap<String, String>,
    /// On a command timeout: how long after SIGTERM before SIGKILL (`kill_grace`).
    pub kill_grace: Duration,
    /// After a command's main process exits: how long its output is still collected
    /// (`drain_grace_ms`); a background child holding the pipe never delays completion more.
    pub drain_grace: Duration,
    /// Share of [`ExecRequest::max_output_bytes`] kept from the start of a stream; the rest
    /// is its end (`head_fraction`, 0.0–1.0).
    pub head_fraction: f64,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            work_dir: "/home/user".to_owned(),
            env: BTreeMap::new(),
            limits: SandboxLimits::default(),
            network: Network::None,
            labels: BTreeMap::new(),
            kill_grace: Duration::from_secs(2),
            drain_grace: Duration::from_millis(200),
            head_fraction: 0.25,
        }
    }
}

/// One command to run to completion.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecRequest {
    /// Program and arguments (`["bash", "-lc", "…"]`); never re-parsed as shell text.
    pub argv: Vec<String>,
    /// Working directory inside the sandbox; `None` = the work dir.
    pub cwd: Option<String>,
    /// Extra environment variables for this command.
    pub env: BTreeMap<String, String>,
    /// Bytes for stdin; `None` = `/dev/null`.
    pub stdin: Option<Bytes>,
    /// Wall-clock limit; on expiry the whole process tree is killed (SIGTERM, grace, SIGKILL).
    pub timeout: Duration,
    /// Cap per stream: head + tail kept, the middle counted but not stored.
    pub max_output_bytes: usize,
    /// Who runs it.
    pub identity: Identity,
}

impl ExecRequest {
    /// A request for `argv` with the given timeout and output cap, as the agent, stdin null.
    pub fn new(argv: Vec<String>, timeout: Duration, max_output_bytes: usize) -> Self {
        Self {
            argv,
            cwd: None,
            env: BTreeMap::new(),
            stdin: None,
            timeout,
            max_output_bytes,
            identity: Identity::Agent,
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Exit code, when the process exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Captured stdout (head + tail, total counted).
    pub stdout: CapturedOutput,
    /// Captured stderr (head + tail, total counted).
    pub stderr: CapturedOutput,
    /// Whether the timeout fired (the tree was killed; output is what was captured so far).
    pub timed_out: bool,
    /// Wall-clock duration.
    pub duration: Duration,
}

impl ExecResult {
    /// The shell-style status: the exit code, or 128 + signal; `None` if neither is known.
    pub fn status_code(&self) -> Option<i32> {
        self.exit_code.or(self.signal.map(|s| 128 + s))
    }

    /// Exit code 0 and no timeout.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// A long-lived process with streaming stdio (the persistent shell).
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory; `None` = the work dir.
    pub cwd: Option<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Who runs it.
    pub identity: Identity,
}

/// Something a spawned process produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A chunk of stdout.
    Stdout(Bytes),
    /// A chunk of stderr.
    Stderr(Bytes),
    /// The process exited (after which no more events come).
    Exited {
        /// Exit code, when it exited normally.
        exit_code: Option<i32>,
        /// The signal that killed it.
        signal: Option<i32>,
    },
}

/// A spawned process with streaming stdio, in its own session: killing it kills its tree.
#[async_trait]
pub trait Process: Send {
    /// Writes to the process's stdin.
    async fn write_stdin(&mut self, data: Bytes) -> Result<(), SandboxError>;
    /// The next output chunk or the exit; `None` once the exit has been reported.
    async fn next_event(&mut self) -> Option<ProcessEvent>;
    /// Kills the process and everything in its session (SIGKILL), and waits until they are gone.
    async fn kill_tree(&mut self) -> Result<(), SandboxError>;
}

/// A file's bytes, up to the requested maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContents {
    /// The bytes read.
    pub bytes: Bytes,
    /// Whether the file is longer than what was read.
    pub truncated: bool,
}

/// Failures of sandbox operations (`SANDBOXES.md` §1.1). Messages are client-safe: no host
/// paths, argv or tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The backend cannot be used on this machine (e.g. `bwrap` missing or unusable).
    #[error("{backend} sandbox backend is unavailable: {reason}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// Why, with the fix where one is known.
        reason: String,
    },
    /// Creating the sandbox failed (whatever was created has been destroyed).
    #[error("sandbox creation failed: {reason}")]
    CreateFailed {
        /// Why.
        reason: String,
    },
    /// Talking to the backend failed (control channel, Engine API, HTTP).
    #[error("sandbox transport failed: {reason}")]
    Transport {
        /// Why.
        reason: String,
    },
    /// A file does not exist.
    #[error("no such file in the sandbox: {path}")]
    NotFound {
        /// The in-sandbox path.
        path: String,
    },
    /// The sandbox is gone (destroyed, crashed, killed from outside).
    #[error("the sandbox is no longer available: {reason}")]
    Gone {
        /// Why.
        reason: String,
    },
    /// The request is invalid (empty argv, zero timeout, a path outside the allowed roots).
    #[error("invalid sandbox request: {reason}")]
    InvalidRequest {
        /// Why.
        reason: String,
    },
}

/// Longest backend text (in characters) a client-facing message keeps.
pub const CLIENT_TEXT_MAX_CHARS: usize = 300;

/// The first non-empty line of `text`, trimmed, cut to `max` characters (`…` marks a cut): a
/// backend message (a tool's stderr, say) made fit for one line of a client's error.
pub fn one_line(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let more_lines = text.trim().lines().count() > 1;
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", line[..cut].trim_end()),
        None if more_lines => format!("{line} …"),
        None => line.to_owned(),
    }
}

impl SandboxError {
    /// The error as a client sees it (a tool error, a reset's `error`): one line of at most
    /// about [`CLIENT_TEXT_MAX_CHARS`] characters, ending with what to do about it. The full
    /// text ([`std::fmt::Display`], e.g. bwrap's whole stderr) is for the server log.
    pub fn client_message(&self) -> String {
        let text = one_line(&self.to_string(), CLIENT_TEXT_MAX_CHARS);
        match self {
            Self::CreateFailed { .. } | Self::Transport { .. } => {
                format!("{text} (the server log has the full error)")
            }
            Self::Gone { .. } => format!("{text}; call reset() to start a new episode"),
            // `Unavailable` reasons name their fix; the others are the request's own fault.
            Self::Unavailable { .. } | Self::NotFound { .. } | Self::InvalidRequest { .. } => text,
        }
    }
}

/// One sandbox, owned by exactly one environment instance.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// A stable id, safe for logs.
    fn id(&self) -> &str;
    /// Runs a command to completion (or its timeout).
    async fn exec(&self, req: ExecRequest) -> Result<ExecResult, SandboxError>;
    /// Starts a long-lived process with streaming stdio.
    async fn spawn(&self, req: SpawnRequest) -> Result<Box<dyn Process>, SandboxError>;
    /// Writes a file atomically (parents created) with `mode`, owned by `identity`.
    async fn write_file(
        &self,
        path: &str,
        data: Bytes,
        mode: u32,
        identity: Identity,
    ) -> Result<(), SandboxError>;
    /// Reads up to `max_bytes` of a file (`NotFound` when it does not exist).
    async fn read_file(&self, path: &str, max_bytes: usize) -> Result<FileContents, SandboxError>;
    /// Deletes a file or directory tree if present, never following a symlink, and recreates
    /// it as an empty directory owned by `identity` (the verifier's output directory).
    async fn reset_dir(&self, path: &str, identity: Identity) -> Result<(), SandboxError>;
    /// SIGKILLs every process of `identity` and returns when none remain.
    async fn kill_all(&self, identity: Identity) -> Result<(), SandboxError>;
    /// Destroys the sandbox: every process and every file. Idempotent.
    async fn destroy(&self) -> Result<(), SandboxError>;
}

/// Creates sandboxes of one kind.
#[async_trait]
pub trait SandboxBackend: Send + Sync {
    /// Backend name (`local`, `docker`, `hf`).
    fn name(&self) -> &'static str;
    /// Checks that the backend works on this machine (start-up probe).
    async fn check(&self) -> Result<(), SandboxError>;
    /// Creates a sandbox; on failure nothing is left behind.
    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError>;
    /// Removes sandboxes left by a crashed predecessor; returns how many.
    async fn sweep_orphans(&self) -> Result<usize, SandboxError>;

    /// Server shutdown, after every session closed: a last attempt at cleanups that failed
    /// earlier, logging what stays (`docs/cleanup.md`). Nothing by default.
    async fn shutdown(&self) {}
}

/// Creates the configured backend (`--sandbox`), checks that it works on this machine, and
/// sweeps sandboxes left by a crashed predecessor.
pub async fn backend(
    config: &crate::config::ServeConfig,
) -> Result<std::sync::Arc<dyn SandboxBackend>, SandboxError> {
    let backend: std::sync::Arc<dyn SandboxBackend> = match config.sandbox {
        crate::config::SandboxKind::Local => {
            std::sync::Arc::new(local::LocalBackend::new(&config.local)?)
        }
    };
    backend.check().await?;
    match backend.sweep_orphans().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            swept = n,
            backend = backend.name(),
            "removed sandboxes left by a previous server"
        ),
        Err(err) => tracing::warn!(error = %err, backend = backend.name(), "orphan sweep failed"),
    }
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_one_short_line_with_the_fix() {
        let noisy = SandboxError::CreateFailed {
            reason: format!(
                "bwrap: setting up uid map: Permission denied\n{}",
                "debug noise with <sandbox-root>/x\n".repeat(50)
            ),
        };
        assert_eq!(
            noisy.client_message(),
            "sandbox creation failed: bwrap: setting up uid map: Permission denied … (the server log has the full error)"
        );
        let long = SandboxError::Transport {
            reason: "x".repeat(5000),
        };
        let msg = long.client_message();
        assert!(!msg.contains('\n'));
        assert!(msg.chars().count() < CLIENT_TEXT_MAX_CHARS + 60, "{msg}");
        assert!(msg.contains("x…"), "{msg}");
        let gone = SandboxError::Gone {
            reason: "the sandbox supervisor exited".to_owned(),
        };
        assert_eq!(
            gone.client_message(),
            "the sandbox is no longer available: the sandbox supervisor exited; call reset() to start a new episode"
        );
        let missing = SandboxError::Unavailable {
            backend: "local",
            reason: "bubblewrap (`bwrap`) is not installed: run `apt-get install bubblewrap`"
                .to_owned(),
        };
        assert_eq!(missing.client_message(), missing.to_string());
        assert_eq!(one_line("\n  a  \n", 10), "a");
        assert_eq!(one_line("ééé", 2), "éé…");
    }
}
