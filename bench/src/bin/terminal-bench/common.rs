//! What terminal-bench and chaos-soak both use (chaos-soak includes this file by `#[path]`):
//! tool arguments from a JSON literal, a reset checked to be `ready`, and the host's view of
//! the sandboxes — processes of the sandbox uids and the cgroups of the servers.

use std::ops::Range;
use std::path::PathBuf;

use anyhow::{Context, bail};
use env_client::EnvClient;
use env_client::protocol::JsonMap;
use env_server::sandbox::local::sandbox_cgroup_parent;
use serde_json::Value;

/// A JSON object from a literal (anything else gives an empty object).
pub(crate) fn object(value: Value) -> JsonMap {
    match value {
        Value::Object(map) => map,
        _ => JsonMap::new(),
    }
}

/// Resets and checks that the env says `status: ready`.
pub(crate) async fn reset_ready(client: &EnvClient, args: JsonMap) -> anyhow::Result<()> {
    let reset = client.reset(args).await.context("reset")?;
    let status = reset
        .observation
        .metadata()
        .and_then(|m| m.get("status"))
        .and_then(Value::as_str);
    if reset.done || status != Some("ready") {
        bail!(
            "reset did not get ready: done={}, metadata {:?}",
            reset.done,
            reset.observation.metadata()
        );
    }
    Ok(())
}

/// Live processes (zombies included: they hold a pid) whose real uid is in `uids`, as
/// (pid, uid, command name), from `/proc/*/status`.
pub(crate) fn sandbox_processes(uids: &Range<u32>) -> Vec<(u32, u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
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

/// Cgroup directories `…/openenv-rs/<pid>s<start>-<n>` whose owner pid is one of
/// `server_pids`.
pub(crate) fn server_cgroups(server_pids: &[u32]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    // The servers the bench starts inherit its cgroup, so their groups are under ours.
    for parent in ["pids", "memory"]
        .into_iter()
        .filter_map(sandbox_cgroup_parent)
    {
        let Ok(entries) = std::fs::read_dir(parent) else {
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
