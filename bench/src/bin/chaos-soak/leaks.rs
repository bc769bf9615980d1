//! What a soak can leave behind, counted from the host: processes of the sandbox uids,
//! episode directories, cgroups named after the soak's servers, sandbox uid claims, and
//! session slots.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use env_client::{ClientConfig, EnvClient};

/// Prefix of the local backend's episode directories and the name of its cgroup parent.
const PREFIX: &str = "openenv-rs-";
const GROUP_DIR: &str = "openenv-rs";

/// The counts.
#[derive(Debug, Default)]
pub(crate) struct Leaks {
    /// (pid, uid, command name) of live processes of the sandbox uids.
    pub(crate) processes: Vec<(i32, u32, String)>,
    /// `openenv-rs-*` entries under the sandbox root.
    pub(crate) dirs: usize,
    /// Cgroup directories of the soak's servers.
    pub(crate) cgroups: Vec<PathBuf>,
    /// Abstract sockets claiming a uid of the range.
    pub(crate) uid_claims: usize,
}

impl Leaks {
    /// Whether nothing is left.
    pub(crate) fn is_zero(&self) -> bool {
        self.processes.is_empty()
            && self.dirs == 0
            && self.cgroups.is_empty()
            && self.uid_claims == 0
    }
}

/// Everything at once.
pub(crate) fn count(root: &Path, uids: &Range<u32>, server_pids: &[u32]) -> Leaks {
    Leaks {
        processes: processes(uids),
        dirs: dirs(root),
        cgroups: cgroups(server_pids),
        uid_claims: uid_claims(uids),
    }
}

/// Live processes (zombies included: they hold a pid) whose real uid is in `uids`.
pub(crate) fn processes(uids: &Range<u32>) -> Vec<(i32, u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(uid) = uid.filter(|u| uids.contains(u)) {
            let name = status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .map_or_else(String::new, |n| n.trim().to_owned());
            found.push((pid, uid, name));
        }
    }
    found
}

/// `openenv-rs-*` entries under the sandbox root.
pub(crate) fn dirs(root: &Path) -> usize {
    std::fs::read_dir(root).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(PREFIX))
            })
            .count()
    })
}

/// The `pids` and `memory` cgroup directories of this process's own groups (the servers it
/// starts inherit them, and nest their sandboxes' groups there).
fn own_groups() -> Vec<PathBuf> {
    let (Ok(mountinfo), Ok(cgroups)) = (
        std::fs::read_to_string("/proc/self/mountinfo"),
        std::fs::read_to_string("/proc/self/cgroup"),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in ["pids", "memory"] {
        let own = cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == name).then_some(path)
        });
        let Some(own) = own else { continue };
        let dir = mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split(' ');
            let (fstype, _source, options) = (r.next()?, r.next()?, r.next()?);
            if fstype != "cgroup" || !options.split(',').any(|o| o == name) {
                return None;
            }
            let f: Vec<&str> = left.split(' ').collect();
            let (root, mount) = (*f.get(3)?, *f.get(4)?);
            let rel = own
                .strip_prefix(root)
                .unwrap_or(own)
                .trim_start_matches('/');
            Some(Path::new(mount).join(rel))
        });
        out.extend(dir);
    }
    out
}

/// Cgroup directories `…/openenv-rs/<pid>s<start>-<n>` whose owner pid is one of `server_pids`.
pub(crate) fn cgroups(server_pids: &[u32]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for group in own_groups() {
        let Ok(entries) = std::fs::read_dir(group.join(GROUP_DIR)) else {
            continue;
        };
        for entry in entries.flatten() {
            let owner = entry
                .file_name()
                .to_str()
                .and_then(|n| n.split_once('s'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            if owner.is_some_and(|p| server_pids.contains(&p)) {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Abstract unix sockets `@openenv-rs/sandbox-uid/<uid>` with a uid in `uids` (the servers'
/// uid claims).
pub(crate) fn uid_claims(uids: &Range<u32>) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return 0;
    };
    table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter_map(|p| p.strip_prefix("@openenv-rs/sandbox-uid/"))
        .filter_map(|u| u.parse::<u32>().ok())
        .filter(|u| uids.contains(u))
        .count()
}

/// How many sessions the server admits now, up to `max` (+1 to see the refusal): each is a
/// connection that asks for its state. A slot held by a session nobody owns shows as a
/// refusal before `max`.
pub(crate) async fn free_slots(url: &str, max: usize) -> anyhow::Result<usize> {
    // Sessions whose sandbox is still being torn down hold their slot for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let config = ClientConfig::default().with_request_timeout(Some(Duration::from_secs(30)));
    let mut held = Vec::new();
    let mut admitted = 0;
    for _ in 0..=max {
        let client = EnvClient::connect_with(url, config.clone())
            .await
            .context("connect")?;
        match client.state().await {
            Ok(_) => admitted += 1,
            Err(env_client::ClientError::Server {
                code: env_client::protocol::ErrorCode::CapacityReached,
                ..
            }) => break,
            Err(e) => return Err(e).context("state"),
        }
        held.push(client);
    }
    for client in held {
        let _ = client.close().await;
    }
    Ok(admitted.min(max))
}
