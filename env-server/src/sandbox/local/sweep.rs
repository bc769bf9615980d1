//! The orphan sweep (`SANDBOXES.md` §1.1): sandboxes whose owner process is dead — a crashed
//! predecessor — lose their processes (by uid, when the uid is no longer claimed), their
//! cgroups and their episode directory. Live owners' sandboxes (ours, other servers') are left
//! alone. Blocking.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cleanup::Remains;
use super::owner::{DIR_PREFIX, Marker, owner_alive, owner_of, uid_is_claimed};
use super::{Backend, cgroup, procfs};

/// Kills every process of a stale sandbox uid (no live server claims it).
fn kill_uid(uid: u32) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left = procfs::sandbox_members(None, Some(uid));
        if left.is_empty() || Instant::now() > end {
            return;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Removes the sandboxes of dead owners; returns how many episode directories went.
pub(super) fn sweep(b: &Backend) -> usize {
    let mut removed = 0;
    let range = b.config.uid_base..b.config.uid_base.saturating_add(b.config.uid_count);
    for entry in std::fs::read_dir(&b.root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || owner_of(id).is_none() || owner_alive(id) {
            continue;
        }
        let marker: Option<Marker> = std::fs::read(entry.path().join("owner"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let uid = marker
            .and_then(|m| m.uid)
            .filter(|u| range.contains(u) && !uid_is_claimed(*u));
        if let Some(uid) = uid {
            kill_uid(uid);
        }
        // What fails is logged, counted and retried by the cleanup queue (docs/cleanup.md).
        let remains = Remains {
            id: id.to_owned(),
            dir: Some(entry.path()),
            cgroups: b.cgroups.existing(id),
            claim: None,
            uid,
            pid_ns: None,
        };
        if b.cleanup.settle(remains, Duration::from_secs(5)) {
            tracing::info!(sandbox = %id, "removed an orphaned sandbox");
            removed += 1;
        }
    }
    for (id, path) in cgroup::listed(&b.cgroups) {
        if owner_of(&id).is_some() && !owner_alive(&id) {
            let remains = Remains {
                id,
                dir: None,
                cgroups: cgroup::Cgroups::adopt(vec![path]),
                claim: None,
                uid: None,
                pid_ns: None,
            };
            b.cleanup.settle(remains, Duration::from_secs(5));
        }
    }
    removed
}
