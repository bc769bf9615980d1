//! What a soak can leave behind, counted from the host: processes of the sandbox uids,
//! episode directories, cgroups named after the soak's servers, sandbox uid claims, and
//! session slots.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use env_client::{ClientConfig, EnvClient};

use crate::common::{sandbox_processes, server_cgroups};

/// Prefix of the local backend's episode directories.
const PREFIX: &str = "openenv-rs-";

/// The counts.
#[derive(Debug, Default)]
pub(crate) struct Leaks {
    /// (pid, uid, command name) of live processes of the sandbox uids.
    pub(crate) processes: Vec<(u32, u32, String)>,
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
        processes: sandbox_processes(uids),
        dirs: dirs(root),
        cgroups: server_cgroups(server_pids),
        uid_claims: uid_claims(uids),
    }
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
