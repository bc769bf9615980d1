//! [`LocalSandbox`]: one bwrap + `sbx` per episode. Commands and processes go through the
//! control channel; files are handled on the host side (`files`); teardown stops
//! `sbx`, waits for bwrap, checks from the host that no process of the sandbox is left (its pid
//! namespace, its uid, its cgroups), removes the cgroups and the episode directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::process::Child;

use super::cgroup::Cgroups;
use super::cleanup::{Cleanup, Remains};
use super::client::{Channel, LocalProcess, REPLY_TIMEOUT};
use super::owner::UidClaim;
use super::proto::{self, ExecDoneHeader, ExecHeader, Frame, Kind, SpawnHeader};
use super::{files, procfs};
use crate::sandbox::{
    CapturedOutput, ExecRequest, ExecResult, FileContents, Identity, Process, Sandbox,
    SandboxError, SpawnRequest,
};

/// How long `sbx` gets to stop everything and exit before bwrap is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Largest output cap per stream honoured (one reply frame carries both streams).
const MAX_OUTPUT_CAP: usize = 256 << 20;
/// How long teardown waits for the sandbox's processes to disappear.
pub(super) const GONE_DEADLINE: Duration = Duration::from_secs(10);

/// What teardown needs.
pub(super) struct Parts {
    pub id: String,
    pub child: Child,
    pub cgroups: Cgroups,
    pub claim: Option<UidClaim>,
    pub dir: PathBuf,
    pub pid_ns: Option<String>,
    /// The backend's cleanup queue.
    pub cleanup: Arc<Cleanup>,
}

impl Parts {
    /// Stops `sbx` and bwrap gracefully (bwrap's PID 1 exits only once every process of its
    /// namespace is gone), or kills bwrap after the grace; then [`Parts::finish`]. A failed
    /// removal is the cleanup queue's (logged, counted, retried), not an error here.
    pub(super) async fn run(mut self, chan: &Channel) -> Result<(), SandboxError> {
        let stop = async {
            let _ = chan.send(&proto::encode_raw(Kind::Shutdown, 0, b"")).await;
            chan.close_writer().await;
        };
        // A stopped `sbx` does not read: then the kill below ends it.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, stop).await;
        if tokio::time::timeout(SHUTDOWN_GRACE, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(sandbox = %self.id, "the sandbox did not stop in time; killing bwrap");
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        tokio::task::spawn_blocking(move || self.finish())
            .await
            .map_err(|e| SandboxError::Transport {
                reason: format!("sandbox teardown failed: {e}"),
            })
    }

    /// What is left once bwrap is gone, for the cleanup queue.
    fn remains(mut self) -> (Arc<Cleanup>, Remains) {
        let uid = self.claim.as_ref().map(UidClaim::uid);
        let remains = Remains {
            id: self.id,
            dir: Some(self.dir),
            cgroups: self.cgroups,
            claim: self.claim.take(),
            uid,
            pid_ns: self.pid_ns,
        };
        (self.cleanup, remains)
    }

    /// Blocking: SIGKILLs whatever of the sandbox is still seen from the host until nothing is,
    /// removes the cgroups and the episode directory, releases the uid. What fails is logged,
    /// counted and retried by the backend's cleanup queue (`docs/cleanup.md`).
    pub(super) fn finish(self) {
        let (cleanup, remains) = self.remains();
        cleanup.settle(remains, GONE_DEADLINE);
    }
}

/// One local sandbox. Dropping it without [`Sandbox::destroy`] kills it and cleans up on a
/// background thread.
pub struct LocalSandbox {
    pub(super) id: String,
    pub(super) chan: Arc<Channel>,
    pub(super) roots: Arc<files::Roots>,
    pub(super) dir: PathBuf,
    pub(super) uid: Option<u32>,
    pub(super) pid_ns: String,
    pub(super) cgroup_dirs: Vec<PathBuf>,
    /// Backstop margin of an exec beyond its timeout (kill grace + drain grace + slack).
    pub(super) exec_margin: Duration,
    pub(super) teardown: tokio::sync::Mutex<Option<Parts>>,
}

impl std::fmt::Debug for LocalSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSandbox")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LocalSandbox {
    /// The episode directory on the host (the owner marker; the sandbox's files are in its
    /// tmpfs mounts).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sandbox's own host uid (a root server's), if it has one.
    pub fn host_uid(&self) -> Option<u32> {
        self.uid
    }

    /// The cgroup directories of the sandbox (empty without cgroups).
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.cgroup_dirs
    }

    /// Host pids of the live processes inside the sandbox (bwrap's PID 1, `sbx`, commands),
    /// found by pid namespace; bwrap's outer process is not one of them. Blocking (`/proc`
    /// scan): for diagnostics and tests.
    pub fn host_pids(&self) -> Vec<i32> {
        procfs::sandbox_members(Some(&self.pid_ns), None)
    }

    fn gone_error(&self) -> SandboxError {
        self.chan.gone_error()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&files::Roots) -> Result<T, SandboxError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        if self.chan.gone_reason().is_some() {
            return Err(self.gone_error());
        }
        let roots = Arc::clone(&self.roots);
        tokio::task::spawn_blocking(move || f(&roots))
            .await
            .map_err(|e| SandboxError::Transport {
                reason: format!("file operation failed: {e}"),
            })?
    }
}

fn invalid(reason: impl Into<String>) -> SandboxError {
    SandboxError::InvalidRequest {
        reason: reason.into(),
    }
}

/// Checks argv and environment before anything is sent.
pub(super) fn check_command(
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), SandboxError> {
    if argv.is_empty() {
        return Err(invalid("empty argv"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("argv contains a NUL byte"));
    }
    check_env(env)
}

/// Environment names must be non-empty without `=` or NUL; values without NUL.
pub(super) fn check_env(
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), SandboxError> {
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(invalid(format!("invalid environment variable {k:?}")));
        }
    }
    Ok(())
}

fn captured(
    payload: &Bytes,
    at: &mut usize,
    lens: proto::StreamLens,
) -> Result<CapturedOutput, SandboxError> {
    let mut take = |n: u64| {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let end = at.checked_add(n).filter(|&e| e <= payload.len());
        let end = end.ok_or_else(|| SandboxError::Transport {
            reason: "malformed exec reply".to_owned(),
        })?;
        let bytes = payload[*at..end].to_vec();
        *at = end;
        Ok::<_, SandboxError>(bytes)
    };
    Ok(CapturedOutput {
        head: take(lens.head)?,
        tail: take(lens.tail)?,
        total: lens.total,
    })
}

/// An `Error` reply as a request error; anything else unexpected as a transport error.
fn refused(frame: &Frame) -> SandboxError {
    match frame.header::<proto::ErrorHeader>() {
        Ok(h) if frame.kind == Kind::Error => SandboxError::InvalidRequest { reason: h.message },
        _ => SandboxError::Transport {
            reason: format!("unexpected reply {:?}", frame.kind),
        },
    }
}

/// Kills an exec whose caller stopped waiting (dropped future or backstop).
struct CancelExec {
    chan: Arc<Channel>,
    id: u64,
    armed: bool,
}

impl Drop for CancelExec {
    fn drop(&mut self) {
        self.chan.forget(self.id);
        if !self.armed {
            return;
        }
        let (chan, target) = (Arc::clone(&self.chan), self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = chan
                    .call(Kind::Kill, &proto::KillHeader { target }, &[])
                    .await;
            });
        }
    }
}

#[async_trait]
impl Sandbox for LocalSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecResult, SandboxError> {
        check_command(&req.argv, &req.env)?;
        if req.timeout.is_zero() {
            return Err(invalid("timeout must be positive"));
        }
        if let Some(cwd) = &req.cwd {
            files::components(cwd)?;
        }
        let header = ExecHeader {
            argv: req.argv,
            cwd: req.cwd,
            env: req.env,
            timeout_ms: u64::try_from(req.timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            max_output: req.max_output_bytes.min(MAX_OUTPUT_CAP) as u64,
            stdin: req.stdin.is_some(),
        };
        let stdin = req.stdin.unwrap_or_default();
        let (id, reply) = self.chan.prepare()?;
        let mut cancel = CancelExec {
            chan: Arc::clone(&self.chan),
            id,
            armed: true,
        };
        self.chan
            .send(&proto::encode(Kind::Exec, id, Some(&header), &[&stdin]))
            .await?;
        let frame = match tokio::time::timeout(req.timeout + self.exec_margin, reply).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => return Err(self.gone_error()),
            Err(_) => {
                return Err(SandboxError::Transport {
                    reason: "the sandbox supervisor did not finish the command in time".to_owned(),
                });
            }
        };
        cancel.armed = false;
        if frame.kind != Kind::ExecDone {
            return Err(refused(&frame));
        }
        let h: ExecDoneHeader = frame.header().map_err(|e| SandboxError::Transport {
            reason: format!("malformed exec reply: {e}"),
        })?;
        let mut at = 0;
        let stdout = captured(&frame.payload, &mut at, h.stdout)?;
        let stderr = captured(&frame.payload, &mut at, h.stderr)?;
        Ok(ExecResult {
            exit_code: h.exit_code,
            signal: h.signal,
            stdout,
            stderr,
            timed_out: h.timed_out,
            duration: Duration::from_micros(h.duration_us),
        })
    }

    async fn spawn(&self, req: SpawnRequest) -> Result<Box<dyn Process>, SandboxError> {
        check_command(&req.argv, &req.env)?;
        if let Some(cwd) = &req.cwd {
            files::components(cwd)?;
        }
        let header = SpawnHeader {
            argv: req.argv,
            cwd: req.cwd,
            env: req.env,
        };
        let (id, reply, events) = self.chan.spawn(&header).await?;
        let mut process = LocalProcess {
            chan: Arc::clone(&self.chan),
            id,
            events,
            consumed: 0,
            finished: false,
        };
        match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
            Ok(Ok(frame)) if frame.kind == Kind::Spawned => Ok(Box::new(process)),
            Ok(Ok(frame)) => {
                process.finished = true;
                Err(refused(&frame))
            }
            Ok(Err(_)) => {
                process.finished = true;
                Err(self.gone_error())
            }
            // Not answered: dropping `process` kills whatever may have started.
            Err(_) => Err(SandboxError::Transport {
                reason: "the sandbox supervisor did not start the process in time".to_owned(),
            }),
        }
    }

    async fn write_file(
        &self,
        path: &str,
        data: Bytes,
        mode: u32,
        _identity: Identity,
    ) -> Result<(), SandboxError> {
        let path = path.to_owned();
        self.blocking(move |roots| roots.write_file(&path, &data, mode))
            .await
    }

    async fn read_file(&self, path: &str, max_bytes: usize) -> Result<FileContents, SandboxError> {
        let path = path.to_owned();
        self.blocking(move |roots| roots.read_file(&path, max_bytes))
            .await
    }

    async fn reset_dir(&self, path: &str, _identity: Identity) -> Result<(), SandboxError> {
        let path = path.to_owned();
        self.blocking(move |roots| roots.reset_dir(&path)).await
    }

    async fn kill_all(&self, _identity: Identity) -> Result<(), SandboxError> {
        let frame = self.chan.call(Kind::KillAll, &(), &[]).await?;
        match frame.kind {
            Kind::Ack => Ok(()),
            _ => Err(refused(&frame)),
        }
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        let mut slot = self.teardown.lock().await;
        let Some(parts) = slot.take() else {
            return Ok(());
        };
        self.chan.close("the sandbox was destroyed");
        // The host's handles on the tmpfs mounts would keep them (and their memory) alive.
        self.roots.close();
        // In a task of its own: a caller that stops waiting does not stop the teardown.
        let chan = Arc::clone(&self.chan);
        tokio::spawn(async move { parts.run(&chan).await })
            .await
            .map_err(|e| SandboxError::Transport {
                reason: format!("sandbox teardown failed: {e}"),
            })?
    }
}

impl Drop for LocalSandbox {
    fn drop(&mut self) {
        // A destroy in progress holds the lock and finishes the job.
        let Ok(mut slot) = self.teardown.try_lock() else {
            return;
        };
        let Some(mut parts) = slot.take() else { return };
        tracing::warn!(sandbox = %self.id, "sandbox dropped without destroy; tearing it down");
        self.chan.close("the sandbox was dropped");
        self.roots.close();
        // bwrap's PID 1 dies with bwrap (PR_SET_PDEATHSIG), and the namespace with it.
        if let Err(e) = parts.child.start_kill() {
            tracing::warn!(sandbox = %self.id, error = %e, "killing bwrap failed; the cleanup kills what is left of the sandbox");
        }
        // The backend's cleanup thread does the blocking part (docs/cleanup.md).
        let (cleanup, remains) = parts.remains();
        cleanup.defer(remains);
    }
}
