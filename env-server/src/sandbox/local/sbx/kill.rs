//! Killing inside the sandbox: one command's session (tree kill) or everything (`kill_all`).
//! Both repeat until `/proc` (the sandbox's own) shows nothing left, zombies aside.

use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

use crate::sandbox::local::procfs;

/// Give up re-killing after this long (a process stuck in the kernel); logged.
const KILL_DEADLINE: Duration = Duration::from_secs(30);

fn me() -> i32 {
    std::process::id().cast_signed()
}

/// Kills session `sid`: with a grace, SIGTERM to its group first and wait up to the grace for
/// the session to empty; then SIGKILL the group and every remaining process of the session
/// until none is left.
pub(super) async fn tree(sid: i32, grace: Option<Duration>) {
    if let Some(grace) = grace {
        let _ = killpg(Pid::from_raw(sid), Signal::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end && !procfs::session_members(sid, me()).is_empty() {
            sleep(Duration::from_millis(10)).await;
        }
    }
    let end = Instant::now() + KILL_DEADLINE;
    loop {
        let _ = killpg(Pid::from_raw(sid), Signal::SIGKILL);
        let left = procfs::session_members(sid, me());
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if Instant::now() > end {
            eprintln!("sbx: processes of session {sid} survive SIGKILL; giving up");
            return;
        }
        sleep(Duration::from_millis(1)).await;
    }
}

/// Live processes other than PID 1 (`sbx` itself, or bwrap's init without `--as-pid-1`) and `sbx`.
fn others() -> Vec<i32> {
    let me = me();
    procfs::pids()
        .into_iter()
        .filter(|&p| p != 1 && p != me)
        .filter(|&p| procfs::stat(p).is_some_and(|s| !s.is_zombie()))
        .collect()
}

/// SIGKILLs every process but PID 1 and `sbx`, until none is left (zombies are left to their
/// reaper: `reap`, or bwrap's init).
pub(super) async fn all() {
    let end = Instant::now() + KILL_DEADLINE;
    loop {
        // -1: every process we may signal in this namespace, except init and ourselves.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        if others().is_empty() {
            return;
        }
        if Instant::now() > end {
            eprintln!("sbx: processes survive SIGKILL; giving up");
            return;
        }
        sleep(Duration::from_millis(1)).await;
    }
}
