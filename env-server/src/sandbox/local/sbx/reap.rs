//! Reaping as the sandbox's PID 1. bwrap runs `sbx` with `--as-pid-1` (no init process of its
//! own: one process fewer per sandbox, `docs/scale.md`), so every orphan of the sandbox —
//! a daemon's parent exited, a killed shell's background jobs — becomes a child of `sbx` and
//! stays a zombie, holding a pid of the sandbox's `pids` limit, until `sbx` waits for it.
//!
//! The commands `sbx` spawns are tokio children, reaped by tokio's own `waitpid(pid)`; a
//! wait for any child would steal their exit status. So the reaper waits only for zombies
//! that are not [`own`]ed: on every `SIGCHLD` it reads the sandbox's `/proc` for zombies
//! whose parent is `sbx` and waits for each by pid. A child is owned from its spawn (no
//! `.await` in between: one thread) until its handle is dropped; a handle dropped before
//! tokio reaped it goes to tokio's orphan queue, which tolerates the reaper having been first.

use std::cell::RefCell;
use std::collections::HashSet;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::sandbox::local::procfs;

thread_local! {
    /// Pids of live tokio children (their handles exist).
    static OWNED: RefCell<HashSet<i32>> = RefCell::new(HashSet::new());
}

/// Marks `pid` as a tokio child until the guard drops; the reaper leaves it alone.
pub(super) struct Owned(i32);

impl Drop for Owned {
    fn drop(&mut self) {
        OWNED.with(|o| o.borrow_mut().remove(&self.0));
    }
}

/// Owns `pid` (a child just spawned through `tokio::process`).
pub(super) fn own(pid: i32) -> Owned {
    OWNED.with(|o| o.borrow_mut().insert(pid));
    Owned(pid)
}

/// Whether `sbx` is the namespace's init (bwrap `--as-pid-1`), so orphans come to it.
pub(super) fn is_init() -> bool {
    std::process::id() == 1
}

/// The parent pid from the text of `/proc/<pid>/stat` (field 4).
fn parent(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Waits for every zombie child of `sbx` that is not owned; returns how many.
pub(super) fn reap_orphans() -> usize {
    let me = std::process::id().cast_signed();
    let mut reaped = 0;
    for pid in procfs::pids() {
        if pid == me || OWNED.with(|o| o.borrow().contains(&pid)) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let zombie = procfs::parse_stat(&text).is_some_and(|s| s.is_zombie());
        if zombie
            && parent(&text) == Some(me)
            && matches!(
                waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
                Ok(nix::sys::wait::WaitStatus::Exited(..)
                    | nix::sys::wait::WaitStatus::Signaled(..))
            )
        {
            reaped += 1;
        }
    }
    reaped
}

/// Reaps orphans on every `SIGCHLD`, for as long as `sbx` runs; returns at once when `sbx` is
/// not PID 1 (bwrap's own init reaps then).
pub(super) async fn run() {
    if !is_init() {
        return;
    }
    let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
    else {
        eprintln!("sbx: cannot watch SIGCHLD; orphans will not be reaped");
        return;
    };
    // Orphans that exited before the watch began.
    reap_orphans();
    while sigchld.recv().await.is_some() {
        reap_orphans();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parent_pid() {
        assert_eq!(parent("12 (a) b) Z 7 12 12 0"), Some(7));
        assert_eq!(parent("junk"), None);
    }

    #[test]
    fn owned_pids_are_released_on_drop() {
        let guard = own(4242);
        assert!(OWNED.with(|o| o.borrow().contains(&4242)));
        drop(guard);
        assert!(!OWNED.with(|o| o.borrow().contains(&4242)));
    }
}
