//! Starting bwrap: pipes for the control channel, the argument list in a memfd (`--args`), the
//! sandbox uid, the cgroups — and all of it from one long-lived spawner thread.
//!
//! Why a thread: `--die-with-parent` is `PR_SET_PDEATHSIG`, which fires when the *thread* that
//! forked bwrap exits. Forking from a tokio worker or blocking-pool thread would kill sandboxes
//! when that thread retires; the spawner lives as long as the process. It also keeps the fork
//! (a copy of the server's page tables) off the runtime's threads.

use std::ffi::OsString;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::mpsc;

use nix::fcntl::OFlag;
use nix::sys::memfd::{MFdFlags, memfd_create};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr};
use tokio::sync::oneshot;

use super::argv::nul_separated;

type Job = Box<dyn FnOnce() + Send>;

fn spawner() -> Option<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("openenv-bwrap-spawner".to_owned())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Builds bwrap's options (read through `--args`) and its command line once the control
/// descriptors' numbers are known (control read end, reply write end).
pub(super) type ArgsFn = Box<dyn FnOnce(RawFd, RawFd) -> (Vec<OsString>, Vec<OsString>) + Send>;

/// What to start.
pub(super) struct Launch {
    /// The bwrap executable.
    pub bwrap: PathBuf,
    /// The argument list.
    pub args: ArgsFn,
    /// Host uid/gid to run bwrap as (a root server's per-sandbox uid).
    pub uid: Option<(u32, u32)>,
    /// `tasks` of the sandbox's groups, open for writing (`Cgroups::join_fds`).
    pub cgroup_join: Vec<OwnedFd>,
}

/// A started bwrap.
pub(super) struct Launched {
    /// bwrap (its outer, monitoring process).
    pub child: Child,
    /// Write end of the control pipe (requests to `sbx`).
    pub to_sbx: OwnedFd,
    /// Read end of the reply pipe.
    pub from_sbx: OwnedFd,
    /// bwrap's stderr (bwrap's and `sbx`'s messages).
    pub stderr: ChildStderr,
}

/// Starts bwrap on the spawner thread.
pub(super) async fn launch(l: Launch) -> std::io::Result<Launched> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _entered = handle.enter();
        let _ = tx.send(spawn_now(l));
    });
    spawner()
        .ok_or_else(|| std::io::Error::other("cannot start the bwrap spawner thread"))?
        .send(job)
        .map_err(|_| std::io::Error::other("the bwrap spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("the bwrap spawner thread dropped the request"))?
}

#[allow(unsafe_code)]
fn spawn_now(l: Launch) -> std::io::Result<Launched> {
    let (ctrl_r, ctrl_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (reply_r, reply_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (options, command) = (l.args)(ctrl_r.as_raw_fd(), reply_w.as_raw_fd());
    let mut args_file =
        std::fs::File::from(memfd_create("openenv-bwrap-args", MFdFlags::MFD_CLOEXEC)?);
    args_file.write_all(&nul_separated(&options))?;
    args_file.seek(SeekFrom::Start(0))?;
    let args_fd = args_file.as_raw_fd();
    let mut cmd = tokio::process::Command::new(&l.bwrap);
    cmd.arg("--args")
        .arg(args_fd.to_string())
        .args(command)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some((uid, gid)) = l.uid {
        cmd.uid(uid).gid(gid); // std drops supplementary groups too
    }
    let keep = [args_fd, ctrl_r.as_raw_fd(), reply_w.as_raw_fd()];
    let cgroups: Vec<RawFd> = l.cgroup_join.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the child between fork and exec. It only calls write(2) and
    // fcntl(2) (async-signal-safe) on descriptors owned by this function, which outlive the
    // spawn; it allocates nothing (the Vec was built before the fork) and takes no lock.
    // Writing "0" to a group's `tasks` moves the calling thread — the child's only one, so the
    // whole child — before bwrap forks anything; the descriptors were opened by this (root)
    // process, and cgroup v1 checks the opener's credentials, so the write is allowed after
    // the uid change. Clearing FD_CLOEXEC hands exactly the args memfd and the two control
    // pipe ends to bwrap.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &cgroups {
                if nix::libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for fd in keep {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop((ctrl_r, reply_w, args_file, l.cgroup_join));
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("bwrap has no stderr pipe"))?;
    Ok(Launched {
        child,
        to_sbx: ctrl_w,
        from_sbx: reply_r,
        stderr,
    })
}

/// Logs bwrap's and `sbx`'s stderr (debug, lines capped at 2 KiB) and keeps its first 4 KiB
/// for error messages. Ends at end of stream.
pub(super) async fn log_stderr(
    id: String,
    mut stderr: ChildStderr,
    first: std::sync::Arc<std::sync::Mutex<String>>,
) {
    const LINE: usize = 2048;
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        let text = String::from_utf8_lossy(line);
        tracing::debug!(sandbox = %id, "{}", text.trim_end());
        if let Ok(mut first) = first.lock()
            && first.len() < 4096
        {
            first.push_str(text.trim_end());
            first.push('\n');
        }
        line.clear();
    };
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line);
            } else if line.len() < LINE {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}
