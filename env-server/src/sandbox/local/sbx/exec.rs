//! One command to completion inside the sandbox (`SANDBOXES.md` §1.2): a new session, stdin
//! bytes or `/dev/null`, both pipes drained from the start into head+tail captures (read past
//! the cap, counted), timeout → tree kill, completion = main exit + drain grace.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::{JoinHandle, spawn_local};
use tokio::time::{Instant, sleep_until};

use super::{State, kill, reap};
use crate::sandbox::local::proto::{self, CHUNK, ExecDoneHeader, ExecHeader, Kind, StreamLens};
use crate::sandbox::output::{Capture, CapturedOutput};

/// A command for `argv` that starts in a new session (its own process group), with `env`
/// added to `sbx`'s environment (the sandbox's allow-list).
pub(super) fn new_command(
    argv: &[String],
    cwd: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Option<tokio::process::Command> {
    let (program, args) = argv.split_first()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).envs(env);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls setsid(2), which is
    // async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    Some(cmd)
}

/// Checks `cwd` before spawning, so a missing directory is an error, not "command not found".
pub(super) fn check_cwd(cwd: Option<&str>) -> Result<(), String> {
    match cwd {
        Some(dir) if !std::path::Path::new(dir).is_dir() => {
            Err(format!("working directory {dir} does not exist"))
        }
        _ => Ok(()),
    }
}

/// Reads and discards a stream to its end (a background process still holding the pipe must
/// not block on a full pipe, nor get SIGPIPE).
pub(super) async fn discard<R: AsyncRead + Unpin>(mut r: R) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

enum Event {
    Out(std::io::Result<usize>),
    Err(std::io::Result<usize>),
    Exit(std::io::Result<ExitStatus>),
    Deadline,
    Killed,
    Drained,
}

fn lens(c: &CapturedOutput) -> StreamLens {
    StreamLens {
        head: c.head.len() as u64,
        tail: c.tail.len() as u64,
        total: c.total,
    }
}

fn done(
    state: &State,
    id: u64,
    header: &ExecDoneHeader,
    out: &CapturedOutput,
    err: &CapturedOutput,
) {
    let payload: [&[u8]; 4] = [&out.head, &out.tail, &err.head, &err.tail];
    state.send(proto::encode(Kind::ExecDone, id, Some(header), &payload));
}

/// Runs one exec request and sends its `ExecDone` (or `Error`).
pub(super) async fn run(state: Rc<State>, id: u64, h: ExecHeader, stdin: Bytes) {
    let start = Instant::now();
    if let Err(msg) = check_cwd(h.cwd.as_deref()) {
        return state.error(id, msg);
    }
    let Some(mut cmd) = new_command(&h.argv, h.cwd.as_deref(), &h.env) else {
        return state.error(id, "empty argv".to_owned());
    };
    cmd.stdin(if h.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let cap = usize::try_from(h.max_output).unwrap_or(usize::MAX);
    let head = state.settings.head_fraction;
    let mut cap_out = Capture::new(cap, head);
    let mut cap_err = Capture::new(cap, head);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let program = &h.argv[0];
            let (code, text) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, format!("{program}: command not found\n")),
                std::io::ErrorKind::PermissionDenied => {
                    (126, format!("{program}: Permission denied\n"))
                }
                _ => return state.error(id, format!("cannot start {program}: {e}")),
            };
            cap_err.push(text.as_bytes());
            let header = ExecDoneHeader {
                exit_code: Some(code),
                signal: None,
                timed_out: false,
                duration_us: elapsed_us(start),
                stdout: StreamLens::default(),
                stderr: StreamLens::default(),
            };
            let (out, err) = (cap_out.finish(), cap_err.finish());
            let header = ExecDoneHeader {
                stdout: lens(&out),
                stderr: lens(&err),
                ..header
            };
            return done(&state, id, &header, &out, &err);
        }
    };
    // Declared after `child`, so dropped first (no `.await` between the two drops).
    let _owned = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(reap::own);
    let (Some(sid), Some(mut out), Some(mut err)) = (
        child.id().and_then(|p| i32::try_from(p).ok()),
        child.stdout.take(),
        child.stderr.take(),
    ) else {
        return state.error(id, "the child has no pid or pipes".to_owned());
    };
    state.sessions.borrow_mut().insert(id, sid);
    if let Some(mut w) = child.stdin.take() {
        spawn_local(async move {
            let _ = w.write_all(&stdin).await; // EPIPE: the command did not read it all
        });
    }
    let (kill_grace, drain_grace) = (state.settings.kill_grace, state.settings.drain_grace);
    let deadline = start + Duration::from_millis(h.timeout_ms);
    // Read into spare capacity (`read_buf`: no zeroing): a command that prints little
    // touches little of the buffers, and `sbx`'s heap stays small (`docs/scale.md`).
    let (mut buf_out, mut buf_err) = (Vec::with_capacity(CHUNK), Vec::with_capacity(CHUNK));
    let (mut out_eof, mut err_eof, mut timed_out, mut kill_done) = (false, false, false, false);
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut killer: Option<JoinHandle<()>> = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        let settled = !timed_out || kill_done;
        let killing = killer.is_some() && !kill_done;
        if status.is_some() && settled && out_eof && err_eof {
            break;
        }
        let kill_wait = async {
            match killer.as_mut() {
                Some(handle) => {
                    let _ = handle.await;
                }
                None => std::future::pending().await,
            }
        };
        buf_out.clear();
        buf_err.clear();
        let event = tokio::select! {
            r = out.read_buf(&mut buf_out), if !out_eof => Event::Out(r),
            r = err.read_buf(&mut buf_err), if !err_eof => Event::Err(r),
            s = child.wait(), if status.is_none() => Event::Exit(s),
            () = sleep_until(deadline), if status.is_none() && !timed_out => Event::Deadline,
            () = kill_wait, if killing => Event::Killed,
            () = sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() && settled => Event::Drained,
        };
        match event {
            Event::Out(Ok(n)) if n > 0 => cap_out.push(&buf_out[..n]),
            Event::Out(_) => out_eof = true,
            Event::Err(Ok(n)) if n > 0 => cap_err.push(&buf_err[..n]),
            Event::Err(_) => err_eof = true,
            Event::Exit(s) => {
                status = Some(s);
                drain_until = Some(Instant::now() + drain_grace);
            }
            Event::Deadline => {
                timed_out = true;
                killer = Some(spawn_local(kill::tree(sid, Some(kill_grace))));
            }
            Event::Killed => {
                kill_done = true;
                // The drain grace counts from the end of the kill.
                drain_until = Some(Instant::now() + drain_grace);
            }
            Event::Drained => break,
        }
    }
    state.sessions.borrow_mut().remove(&id);
    if !out_eof {
        spawn_local(discard(out));
    }
    if !err_eof {
        spawn_local(discard(err));
    }
    let (exit_code, signal) = match status {
        Some(Ok(s)) => (s.code(), s.signal()),
        _ => (None, None),
    };
    let (out, err) = (cap_out.finish(), cap_err.finish());
    let header = ExecDoneHeader {
        exit_code,
        signal,
        timed_out,
        duration_us: elapsed_us(start),
        stdout: lens(&out),
        stderr: lens(&err),
    };
    done(&state, id, &header, &out, &err);
}

fn elapsed_us(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}
