//! The server under test: the release `env-server serve --env terminal` on the local
//! bubblewrap sandbox, on 127.0.0.1 with a free port, its sandboxes in a directory of their
//! own (so the bench can see when they are gone), stopped with SIGTERM (its sessions close and
//! their sandboxes are destroyed) and then, if need be, SIGKILL — by its PID only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::procs::{ServerProc, spawn_server};

/// Prefix of the local backend's per-episode directories (`env-server`'s `owner::DIR_PREFIX`).
const SANDBOX_DIR_PREFIX: &str = "openenv-rs-";

/// Where things are.
pub(crate) struct Paths {
    /// The repository root.
    pub(crate) repo: PathBuf,
    /// The directory of this executable (`target/release`): `env-server` and `env-sbx`.
    pub(crate) bin_dir: PathBuf,
    /// Logs of the started processes (`target/release/terminal-bench-logs`).
    pub(crate) log_dir: PathBuf,
}

impl Paths {
    /// Finds the repository and this executable's directory; creates the log directory.
    pub(crate) fn discover() -> anyhow::Result<Self> {
        let (repo, bin_dir, log_dir) = crate::procs::bench_dirs("terminal-bench-logs")?;
        Ok(Self {
            repo,
            bin_dir,
            log_dir,
        })
    }
}

/// Builds `env-server` and `env-sbx` with this executable's profile (a no-op when fresh), so
/// the bench never measures a stale server.
pub(crate) fn build(paths: &Paths) -> anyhow::Result<()> {
    crate::procs::cargo_build(
        &paths.repo,
        &paths.bin_dir,
        &["env-server"],
        &["env-server", "env-sbx"],
    )
}

/// The directory the server creates its sandboxes in, removed (with anything left in it)
/// on drop.
pub(crate) struct SandboxRoot {
    dir: PathBuf,
}

impl SandboxRoot {
    /// A fresh directory under the system temp dir, traversable by the sandboxes' uids.
    pub(crate) fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("terminal-bench-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove the stale {}", dir.display()))?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The sandboxes whose directory exists now (live, or not yet torn down).
    pub(crate) fn count(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(SANDBOX_DIR_PREFIX))
                })
                .count()
        })
    }

    /// Waits until at most `n` sandboxes are left, polling every 0.5 ms; returns how long it
    /// took, or `None` after `limit`.
    pub(crate) async fn wait_at_most(&self, n: usize, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if self.count() <= n {
                return Some(start.elapsed());
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

impl Drop for SandboxRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `env-server serve --env terminal` on 127.0.0.1 (free port), sandboxes in `root`,
/// with `extra` arguments after the bench's own.
pub(crate) fn start(
    paths: &Paths,
    root: &SandboxRoot,
    max_sessions: usize,
    extra: &[String],
) -> anyhow::Result<ServerProc> {
    let mut c = Command::new(paths.bin_dir.join("env-server"));
    c.args(["serve", "--env", "terminal", "--sandbox", "local"])
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--max-sessions", &max_sessions.to_string()])
        .arg("--sandbox-root")
        .arg(root.path())
        .arg("--sbx-path")
        .arg(paths.bin_dir.join("env-sbx"))
        .args(extra);
    // Nothing from outside the bench changes the server's configuration.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("ENV_SERVER_")
            || matches!(
                key,
                "MAX_CONCURRENT_ENVS"
                    | "RUST_LOG"
                    | "TERMINUS_SANDBOX_BACKEND"
                    | "HF_SANDBOX_IMAGE"
            )
        {
            c.env_remove(key);
        }
    }
    spawn_server(
        c,
        "env-server (terminal)",
        &paths.log_dir.join("env-server-terminal.log"),
        Duration::from_secs(60),
    )
}

/// Stops the server: SIGTERM (it closes every session and destroys its sandboxes), up to
/// `grace` for it to exit, then the guard's SIGKILL. Returns whether it exited by itself.
pub(crate) fn stop(server: ServerProc, grace: Duration) -> bool {
    let pid = server.pid();
    let exited = match i32::try_from(pid) {
        Ok(raw) if kill(Pid::from_raw(raw), Signal::SIGTERM).is_ok() => {
            let end = Instant::now() + grace;
            loop {
                if has_exited(pid) {
                    break true;
                }
                if Instant::now() > end {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        _ => false,
    };
    // Reaps it (and SIGKILLs it first if it is still running).
    server.guard.stop();
    exited
}

/// Whether our child `pid` has exited (a zombie waiting to be reaped, or gone).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}
