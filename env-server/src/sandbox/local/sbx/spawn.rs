//! A long-lived process with streaming stdio (the persistent shell), in a new session.
//!
//! Output is forwarded as `Stdout`/`Stderr` frames as it arrives, within a credit window the
//! server replenishes as its consumer reads: a process nobody reads blocks on its pipe (as it
//! would on a terminal) instead of filling memory. `Exited` is the last frame: sent after the
//! main exit and the drain grace; later output of background children is discarded.

use std::cell::Cell;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::rc::Rc;

use bytes::{BufMut, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{Notify, mpsc};
use tokio::task::spawn_local;
use tokio::time::{Instant, sleep_until};

use super::exec::{check_cwd, discard, new_command};
use super::{Proc, State, reap};
use crate::sandbox::local::proto::{self, CHUNK, CREDIT_WINDOW, Kind, SpawnHeader};

/// Output credit of one spawned process.
pub(super) struct Credit {
    avail: Cell<u64>,
    notify: Notify,
}

impl Credit {
    /// Adds credit (the server consumed `bytes`).
    pub(super) fn grant(&self, bytes: u64) {
        self.avail.set(self.avail.get().saturating_add(bytes));
        self.notify.notify_one();
    }
}

/// Starts a spawn request: `Spawned` (or `Error`) now, output and `Exited` later.
pub(super) fn start(state: &Rc<State>, id: u64, h: &SpawnHeader) {
    if let Err(msg) = check_cwd(h.cwd.as_deref()) {
        return state.error(id, msg);
    }
    let Some(mut cmd) = new_command(&h.argv, h.cwd.as_deref(), &h.env) else {
        return state.error(id, "empty argv".to_owned());
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return state.error(id, format!("cannot start {}: {e}", h.argv[0])),
    };
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return state.error(id, "the child has no pid".to_owned());
    };
    let owned = reap::own(pid);
    state.send(proto::encode(
        Kind::Spawned,
        id,
        Some(&proto::SpawnedHeader { pid }),
        &[],
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    let credit = Rc::new(Credit {
        avail: Cell::new(CREDIT_WINDOW),
        notify: Notify::new(),
    });
    state.procs.borrow_mut().insert(
        id,
        Proc {
            stdin: tx,
            credit: Rc::clone(&credit),
        },
    );
    state.sessions.borrow_mut().insert(id, pid);
    spawn_local(feed_stdin(child.stdin.take(), rx));
    spawn_local(pump(Rc::clone(state), id, (child, owned), credit));
}

async fn feed_stdin(stdin: Option<ChildStdin>, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    let Some(mut stdin) = stdin else { return };
    while let Some(data) = rx.recv().await {
        if stdin.write_all(&data).await.is_err() {
            return;
        }
    }
}

enum Event {
    Out(std::io::Result<usize>),
    Err(std::io::Result<usize>),
    Exit(std::io::Result<ExitStatus>),
    Credit,
    Drained,
}

/// Forwards the output of `child` (owned until it is dropped: `reap`).
async fn pump(state: Rc<State>, id: u64, child: (Child, reap::Owned), credit: Rc<Credit>) {
    // `_owned` is declared after `child`, so it is dropped first.
    let (mut child, _owned) = child;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return;
    };
    // Read into spare capacity (`read_buf`: no zeroing), so a shell that prints little
    // touches little of its buffers: an idle episode's `sbx` stays small (`docs/scale.md`).
    let (mut buf_out, mut buf_err) = (Vec::with_capacity(CHUNK), Vec::with_capacity(CHUNK));
    let (mut out_eof, mut err_eof) = (false, false);
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        if status.is_some() && out_eof && err_eof {
            break;
        }
        let avail = credit.avail.get();
        let want = usize::try_from(avail).unwrap_or(CHUNK).min(CHUNK);
        buf_out.clear();
        buf_err.clear();
        let event = {
            let mut into_out = (&mut buf_out).limit(want);
            let mut into_err = (&mut buf_err).limit(want);
            tokio::select! {
                r = out.read_buf(&mut into_out), if !out_eof && want > 0 => Event::Out(r),
                r = err.read_buf(&mut into_err), if !err_eof && want > 0 => Event::Err(r),
                s = child.wait(), if status.is_none() => Event::Exit(s),
                () = credit.notify.notified(), if want == 0 => Event::Credit,
                () = sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => Event::Drained,
            }
        };
        let (kind, chunk) = match event {
            Event::Out(Ok(n)) if n > 0 => (Kind::Stdout, &buf_out[..n]),
            Event::Err(Ok(n)) if n > 0 => (Kind::Stderr, &buf_err[..n]),
            Event::Out(_) => {
                out_eof = true;
                continue;
            }
            Event::Err(_) => {
                err_eof = true;
                continue;
            }
            Event::Exit(s) => {
                status = Some(s);
                drain_until = Some(Instant::now() + state.settings.drain_grace);
                continue;
            }
            Event::Credit => continue,
            Event::Drained => break,
        };
        // Re-read: a grant may have arrived while this task waited.
        credit
            .avail
            .set(credit.avail.get().saturating_sub(chunk.len() as u64));
        state.send(proto::encode_raw(kind, id, chunk));
    }
    // The session entry stays until a `Kill`: background jobs may outlive the process.
    state.procs.borrow_mut().remove(&id);
    let (exit_code, signal) = match status {
        Some(Ok(s)) => (s.code(), s.signal()),
        _ => (None, None),
    };
    state.send(proto::encode(
        Kind::Exited,
        id,
        Some(&proto::ExitedHeader { exit_code, signal }),
        &[],
    ));
    if !out_eof {
        spawn_local(discard(out));
    }
    if !err_eof {
        spawn_local(discard(err));
    }
}
