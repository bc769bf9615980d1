//! Running agent commands (`TERMINAL_ENV.md` §5.4–5.6): a fresh `bash -lc` per command
//! (`per_command`), or one long-lived shell per episode driven by the nonce/sentinel protocol
//! (`persistent`). Both yield an [`ExecResult`] plus, where the spec has one, the error text.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::format::secs_text;
use crate::sandbox::{
    Capture, CapturedOutput, ExecRequest, ExecResult, Identity, Process, ProcessEvent, Sandbox,
    SandboxError, SpawnRequest,
};

/// What every command of an episode shares.
#[derive(Debug, Clone)]
pub(crate) struct ShellSettings {
    /// Start the persistent shell with `--login`.
    pub login_shell: bool,
    /// Working directory of commands and of the shell.
    pub work_dir: String,
    /// Cap per output stream.
    pub max_output_bytes: usize,
    /// Head share of the cap.
    pub head_fraction: f64,
}

/// One finished agent command: the result, and the spec's error text when it is not the plain
/// `exit code N`.
#[derive(Debug)]
pub(crate) struct ShellRun {
    pub result: ExecResult,
    pub error: Option<String>,
}

/// The §5.1 timeout text.
pub(crate) fn timeout_text(timeout: Duration) -> String {
    format!(
        "timed out after {}s (process tree killed)",
        secs_text(timeout.as_secs_f64())
    )
}

/// Runs `command` in a fresh `bash -lc` (§5.5).
pub(crate) async fn run_per_command(
    sandbox: &dyn Sandbox,
    settings: &ShellSettings,
    command: &str,
    timeout: Duration,
) -> Result<ShellRun, SandboxError> {
    let mut req = ExecRequest::new(
        vec!["bash".to_owned(), "-lc".to_owned(), command.to_owned()],
        timeout,
        settings.max_output_bytes,
    );
    req.cwd = Some(settings.work_dir.clone());
    let result = sandbox.exec(req).await?;
    let error = result.timed_out.then(|| timeout_text(timeout));
    Ok(ShellRun { result, error })
}

/// Finds the end sentinel in one stream, feeding everything before it to a head+tail capture
/// and keeping what follows it (a background job's output) for the next command.
#[derive(Debug)]
pub(crate) struct SentinelScanner {
    marker: Vec<u8>,
    with_status: bool,
    pending: Vec<u8>,
    capture: Capture,
    status: Option<i32>,
    found: bool,
    after: Vec<u8>,
}

/// Longest status text accepted after the marker (` 255\n`).
const MAX_STATUS_LEN: usize = 12;

impl SentinelScanner {
    /// A scanner for `\n__OE_END_{nonce}__` followed by ` <rc>\n` (`with_status`) or `\n`.
    pub(crate) fn new(nonce: &str, with_status: bool, cap: usize, head_fraction: f64) -> Self {
        Self {
            marker: format!("\n__OE_END_{nonce}__").into_bytes(),
            with_status,
            pending: Vec::new(),
            capture: Capture::new(cap, head_fraction),
            status: None,
            found: false,
            after: Vec::new(),
        }
    }

    /// Whether the sentinel was seen.
    pub(crate) fn found(&self) -> bool {
        self.found
    }

    /// The status the sentinel carried (stdout only).
    pub(crate) fn status(&self) -> Option<i32> {
        self.status
    }

    /// Adds bytes from the stream.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.found {
            self.after.extend_from_slice(data);
            return;
        }
        self.pending.extend_from_slice(data);
        loop {
            let Some(pos) = find(&self.pending, &self.marker) else {
                let keep = (self.marker.len() - 1).min(self.pending.len());
                let cut = self.pending.len() - keep;
                self.capture.push(&self.pending[..cut]);
                self.pending.drain(..cut);
                return;
            };
            let rest = &self.pending[pos + self.marker.len()..];
            match self.parse_terminator(rest) {
                Terminator::Incomplete => {
                    self.capture.push(&self.pending[..pos]);
                    self.pending.drain(..pos);
                    return;
                }
                Terminator::Invalid => {
                    self.capture.push(&self.pending[..=pos]);
                    self.pending.drain(..=pos);
                }
                Terminator::Complete { len, status } => {
                    self.capture.push(&self.pending[..pos]);
                    self.after = self.pending[pos + self.marker.len() + len..].to_vec();
                    self.pending.clear();
                    self.status = status;
                    self.found = true;
                    return;
                }
            }
        }
    }

    fn parse_terminator(&self, rest: &[u8]) -> Terminator {
        if !self.with_status {
            return match rest.first() {
                None => Terminator::Incomplete,
                Some(b'\n') => Terminator::Complete {
                    len: 1,
                    status: None,
                },
                Some(_) => Terminator::Invalid,
            };
        }
        let Some(first) = rest.first() else {
            return Terminator::Incomplete;
        };
        if *first != b' ' {
            return Terminator::Invalid;
        }
        let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        match rest.get(1 + digits) {
            None if 1 + digits < MAX_STATUS_LEN => Terminator::Incomplete,
            Some(b'\n') if digits > 0 => {
                let text = String::from_utf8_lossy(&rest[1..=digits]);
                Terminator::Complete {
                    len: digits + 2,
                    status: text.parse().ok(),
                }
            }
            _ => Terminator::Invalid,
        }
    }

    /// Ends the command: what was captured, and the bytes that followed the sentinel.
    pub(crate) fn finish(mut self) -> (CapturedOutput, Vec<u8>) {
        if !self.found {
            self.capture.push(&self.pending);
        }
        (self.capture.finish(), self.after)
    }
}

enum Terminator {
    Incomplete,
    Invalid,
    Complete { len: usize, status: Option<i32> },
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The script that runs `command` in the persistent shell with nonce `nonce` (§5.6).
pub(crate) fn wrap_command(command: &str, nonce: &str) -> String {
    format!(
        "IFS= builtin read -r -d '' __oe_cmd <<'__OE_CMD_{nonce}__' || :\n{command}\n__OE_CMD_{nonce}__\n\
         builtin eval \"$__oe_cmd\" </dev/null\n__oe_rc=$?\n\
         builtin printf '\\n__OE_END_{nonce}__ %s\\n' \"$__oe_rc\"\n\
         builtin printf '\\n__OE_END_{nonce}__\\n' >&2\n"
    )
}

/// A fresh 128-bit hex nonce (uuid v4: 122 random bits).
fn nonce() -> String {
    format!("{:032x}", uuid::Uuid::new_v4().as_u128())
}

/// The persistent shell's first command: its output (and the login profile's) is discarded.
/// Non-interactive bash defines aliases but does not expand them unless asked.
pub(crate) const STARTUP_COMMAND: &str = "builtin shopt -s expand_aliases";

/// How a persistent-shell command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShellEnd {
    /// Both sentinels seen; the command's status.
    Done(i32),
    /// The shell itself exited (`exit`, `set -e`) with this status.
    Exited(Option<i32>),
    /// The shell exited while starting (its login profile exits): the command never ran.
    StartFailed(Option<i32>),
    /// The timeout fired; the shell must be killed and restarted.
    TimedOut,
    /// The shell's output stream ended without an exit status: the channel to the sandbox
    /// was cut. Whether the sandbox itself is gone is for [`PersistentShell::replace`] to find.
    Lost,
}

/// The agent's long-lived shell (§5.6).
pub(crate) struct PersistentShell {
    process: Box<dyn Process>,
    carry_out: Vec<u8>,
    carry_err: Vec<u8>,
    /// The nonce of the startup command whose sentinels are still to be read.
    pending_startup: Option<String>,
    /// A command was started and not finished (its future was dropped): restart first.
    pub(crate) dirty: bool,
}

impl std::fmt::Debug for PersistentShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistentShell")
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

impl PersistentShell {
    /// Spawns the shell in the work dir and sends it [`STARTUP_COMMAND`] without waiting: the
    /// first command reads (and discards) the startup's output, including whatever the login
    /// profile printed, so a reset does not pay for the login profile.
    pub(crate) async fn start(
        sandbox: &dyn Sandbox,
        settings: &ShellSettings,
    ) -> Result<Self, SandboxError> {
        let mut argv = vec!["bash".to_owned()];
        if settings.login_shell {
            argv.push("--login".to_owned());
        } else {
            argv.extend(["--noprofile".to_owned(), "--norc".to_owned()]);
        }
        let process = sandbox
            .spawn(SpawnRequest {
                argv,
                cwd: Some(settings.work_dir.clone()),
                env: std::collections::BTreeMap::new(),
                identity: Identity::Agent,
            })
            .await?;
        let mut shell = Self {
            process,
            carry_out: Vec::new(),
            carry_err: Vec::new(),
            pending_startup: None,
            dirty: false,
        };
        let nonce = nonce();
        shell.send(STARTUP_COMMAND, &nonce).await?;
        shell.pending_startup = Some(nonce);
        Ok(shell)
    }

    /// Writes one wrapped command to the shell's stdin.
    async fn send(&mut self, command: &str, nonce: &str) -> Result<(), SandboxError> {
        let script = Bytes::from(wrap_command(command, nonce));
        match self.process.write_stdin(script).await {
            Ok(()) => Ok(()),
            Err(gone @ SandboxError::Gone { .. }) => Err(gone),
            Err(other) => {
                // A dead shell's stdin is closed: its exit event tells the rest.
                tracing::debug!(error = %other, "writing to the agent shell failed");
                Ok(())
            }
        }
    }

    /// Reads events until both sentinels of `nonce`, the shell's exit, or the deadline.
    async fn collect(
        &mut self,
        nonce: &str,
        deadline: Instant,
        cap: usize,
        head_fraction: f64,
    ) -> (ShellEnd, CapturedOutput, CapturedOutput) {
        let mut out = SentinelScanner::new(nonce, true, cap, head_fraction);
        let mut err = SentinelScanner::new(nonce, false, cap, head_fraction);
        out.push(&std::mem::take(&mut self.carry_out));
        err.push(&std::mem::take(&mut self.carry_err));
        let end = loop {
            if out.found() && err.found() {
                break ShellEnd::Done(out.status().unwrap_or(-1));
            }
            match tokio::time::timeout_at(deadline, self.process.next_event()).await {
                Err(_) => break ShellEnd::TimedOut,
                Ok(Some(ProcessEvent::Stdout(b))) => out.push(&b),
                Ok(Some(ProcessEvent::Stderr(b))) => err.push(&b),
                Ok(Some(ProcessEvent::Exited { exit_code, signal })) => {
                    break ShellEnd::Exited(exit_code.or(signal.map(|s| 128 + s)));
                }
                Ok(None) => break ShellEnd::Lost,
            }
        };
        let (stdout, after_out) = out.finish();
        let (stderr, after_err) = err.finish();
        if matches!(end, ShellEnd::Done(_)) {
            self.carry_out = after_out;
            self.carry_err = after_err;
        }
        (end, stdout, stderr)
    }

    /// Runs one command; returns how it ended and the captured stdout and stderr. The timeout
    /// covers the shell's startup when this is its first command.
    pub(crate) async fn run(
        &mut self,
        command: &str,
        timeout: Duration,
        cap: usize,
        head_fraction: f64,
    ) -> Result<(ShellEnd, CapturedOutput, CapturedOutput), SandboxError> {
        let deadline = Instant::now() + timeout;
        self.dirty = true;
        if let Some(startup) = self.pending_startup.take() {
            let (end, stdout, stderr) = self.collect(&startup, deadline, 0, 0.0).await;
            match end {
                ShellEnd::Done(_) => {}
                ShellEnd::Exited(code) => return Ok((ShellEnd::StartFailed(code), stdout, stderr)),
                other => return Ok((other, stdout, stderr)),
            }
            self.carry_out.clear();
            self.carry_err.clear();
        }
        let nonce = nonce();
        self.send(command, &nonce).await?;
        let (end, stdout, stderr) = self.collect(&nonce, deadline, cap, head_fraction).await;
        if matches!(end, ShellEnd::Done(_)) {
            self.dirty = false;
        }
        Ok((end, stdout, stderr))
    }

    /// Ends a shell whose command did not finish normally and starts the next one (§5.6).
    /// `Err` only when the sandbox itself is gone (its supervisor died, say): no shell can run
    /// there and the episode ends (`docs/cleanup.md`). Any other failure leaves no shell — the
    /// next command starts one — and comes back as `Ok(Some(text))` for the reply, which then
    /// does not claim a new shell.
    pub(crate) async fn replace(
        shell: &mut Option<Self>,
        sandbox: &dyn Sandbox,
        settings: &ShellSettings,
    ) -> Result<Option<String>, SandboxError> {
        if let Some(mut old) = shell.take() {
            old.kill().await;
        }
        match Self::start(sandbox, settings).await {
            Ok(new) => {
                *shell = Some(new);
                Ok(None)
            }
            Err(gone @ SandboxError::Gone { .. }) => Err(gone),
            Err(err) => {
                tracing::warn!(error = %err, "restarting the agent shell failed");
                Ok(Some(err.client_message()))
            }
        }
    }

    /// Kills the shell and everything in its session (errors logged).
    pub(crate) async fn kill(&mut self) {
        if let Err(err) = self.process.kill_tree().await {
            tracing::warn!(error = %err, "killing the agent shell failed");
        }
    }
}

/// The §5.6 text of a persistent-shell timeout; `restart_failed` says why no new shell runs.
pub(crate) fn persistent_timeout_text(timeout: Duration, restart_failed: Option<&str>) -> String {
    match restart_failed {
        None => format!(
            "{}; shell restarted, working directory and environment were reset",
            timeout_text(timeout)
        ),
        Some(err) => format!(
            "{}; starting a new shell failed: {err}",
            timeout_text(timeout)
        ),
    }
}

/// The §5.1 text of a persistent shell that exited; `restart_failed` says why no new shell
/// runs.
pub(crate) fn shell_exit_text(code: Option<i32>, restart_failed: Option<&str>) -> String {
    let exited = match code {
        Some(code) => format!("shell exited with code {code}"),
        None => "shell exited".to_owned(),
    };
    match restart_failed {
        None => format!("{exited}; a new shell was started"),
        Some(err) => format!("{exited}; starting a new shell failed: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (found, status, captured bytes + "|" + bytes after the sentinel)
    fn scan(chunks: &[&[u8]], with_status: bool) -> (bool, Option<i32>, Vec<u8>) {
        let mut s = SentinelScanner::new("ab12", with_status, 1000, 0.25);
        for c in chunks {
            s.push(c);
        }
        let (found, status) = (s.found(), s.status());
        let (cap, after) = s.finish();
        let all = [cap.head, cap.tail, b"|".to_vec(), after].concat();
        (found, status, all)
    }

    #[test]
    fn sentinel_split_across_chunks() {
        let whole: &[u8] = b"hello\n\n__OE_END_ab12__ 3\nbg";
        for split in 0..whole.len() {
            let (found, status, got) = scan(&[&whole[..split], &whole[split..]], true);
            assert!(found, "split {split}");
            assert_eq!(status, Some(3));
            assert_eq!(got, b"hello\n|bg", "split {split}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(scan(&bytes, true).2, b"hello\n|bg");
    }

    #[test]
    fn sentinel_forms() {
        let (found, _, got) = scan(&[b"x\n__OE_END_ab12__\n"], false);
        assert!(found);
        assert_eq!(got, b"x|");
        // A wrong nonce, a missing status, or junk after the marker is output.
        let (found, _, got) = scan(&[b"\n__OE_END_zz__ 0\n\n__OE_END_ab12__ x\n"], true);
        assert!(!found);
        assert_eq!(got, b"\n__OE_END_zz__ 0\n\n__OE_END_ab12__ x\n|");
        assert!(!scan(&[b"\n__OE_END_ab12__ 12"], true).0);
        let (found, _, got) = scan(&[b"\n__OE_END_ab12__ 0\n"], true);
        assert!(found);
        assert_eq!(got, b"|");
    }

    #[test]
    fn wrapper_is_the_spec_text() {
        assert_eq!(
            wrap_command("echo hi", "N"),
            "IFS= builtin read -r -d '' __oe_cmd <<'__OE_CMD_N__' || :\necho hi\n__OE_CMD_N__\n\
             builtin eval \"$__oe_cmd\" </dev/null\n__oe_rc=$?\n\
             builtin printf '\\n__OE_END_N__ %s\\n' \"$__oe_rc\"\n\
             builtin printf '\\n__OE_END_N__\\n' >&2\n"
        );
        assert_eq!(nonce().len(), 32);
    }
}
