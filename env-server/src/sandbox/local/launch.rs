//! Starting bwrap: pipes for the control channel and bwrap's `--info-fd`, the argument list and
//! the `/etc` files in memfds (`--args`, `--file`), the supervisor's memfd, the sandbox uid, the
//! cgroups — and all of it from one long-lived spawner thread.
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
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

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

/// The numbers of the descriptors bwrap inherits.
#[derive(Debug)]
pub(super) struct FdNumbers {
    /// Read end of the control pipe (requests to `sbx`).
    pub control: RawFd,
    /// Write end of the reply pipe.
    pub reply: RawFd,
    /// Write end of bwrap's `--info-fd` pipe.
    pub info: RawFd,
    /// The sealed `env-sbx` memfd.
    pub sbx: RawFd,
    /// One memfd per file of the sandbox's `/etc`, with its name.
    pub etc: Vec<(RawFd, &'static str)>,
}

/// Builds bwrap's options (read through `--args`) and its command line once the descriptors'
/// numbers are known.
pub(super) type ArgsFn = Box<dyn FnOnce(&FdNumbers) -> (Vec<OsString>, Vec<OsString>) + Send>;

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
    /// The sealed, read-only `env-sbx` memfd (one per backend).
    pub sbx: Arc<OwnedFd>,
    /// The files of the sandbox's own `/etc`: (name, contents).
    pub etc: Vec<(&'static str, String)>,
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
    /// Read end of bwrap's `--info-fd` pipe (JSON with the host pid of the sandbox's PID 1).
    pub info: OwnedFd,
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
    let (info_r, info_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let mut etc_files = Vec::with_capacity(l.etc.len());
    for (name, text) in &l.etc {
        let mut file = std::fs::File::from(memfd_create("openenv-etc", MFdFlags::MFD_CLOEXEC)?);
        file.write_all(text.as_bytes())?;
        file.seek(SeekFrom::Start(0))?;
        etc_files.push((file, *name));
    }
    let numbers = FdNumbers {
        control: ctrl_r.as_raw_fd(),
        reply: reply_w.as_raw_fd(),
        info: info_w.as_raw_fd(),
        sbx: l.sbx.as_raw_fd(),
        etc: etc_files.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect(),
    };
    let (options, command) = (l.args)(&numbers);
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
    let mut keep = vec![
        args_fd,
        numbers.control,
        numbers.reply,
        numbers.info,
        numbers.sbx,
    ];
    keep.extend(numbers.etc.iter().map(|(fd, _)| *fd));
    let cgroups: Vec<RawFd> = l.cgroup_join.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the child between fork and exec. It only calls write(2) and
    // fcntl(2) (async-signal-safe) on descriptors owned by this function (or the backend's
    // `sbx` memfd, held by `l.sbx`), which outlive the spawn; it allocates nothing (the Vecs
    // were built before the fork) and takes no lock.
    // Writing "0" to a group's `tasks` moves the calling thread — the child's only one, so the
    // whole child — before bwrap forks anything; the descriptors were opened by this (root)
    // process, and cgroup v1 checks the opener's credentials, so the write is allowed after
    // the uid change. Clearing FD_CLOEXEC (a flag of the child's own descriptor table) hands
    // exactly the args memfd, the two control pipe ends, the info pipe, the `sbx` memfd and
    // the `/etc` memfds to bwrap.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &cgroups {
                if nix::libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for &fd in &keep {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop((ctrl_r, reply_w, info_w, args_file, etc_files, l.cgroup_join));
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("bwrap has no stderr pipe"))?;
    Ok(Launched {
        child,
        to_sbx: ctrl_w,
        from_sbx: reply_r,
        stderr,
        info: info_r,
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
