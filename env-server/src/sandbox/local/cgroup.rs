//! cgroup v1 `pids` and `memory` groups per sandbox: `<controller>/<server's cgroup>/openenv-rs/<id>`.
//!
//! The groups nest under the server's own cgroup, so whatever bounds the server also bounds its
//! sandboxes. bwrap joins them between fork and exec (through `tasks` descriptors opened here as
//! root, which keep root's right to write them), before it forks anything. Destroy kills
//! every pid left in the group and removes it. Blocking: called from blocking threads.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Name of the directory holding our groups under the server's cgroup.
pub(super) const GROUP_DIR: &str = "openenv-rs";

/// Live groups created by this process, guarding removal of the empty parents.
static LIVE: Mutex<usize> = Mutex::new(0);

/// The parents (`…/openenv-rs`) of our groups in each writable controller.
#[derive(Debug, Clone, Default)]
pub(super) struct CgroupRoots {
    pids: Option<PathBuf>,
    memory: Option<PathBuf>,
}

/// Where controller `name` of the server's own cgroup is, from `/proc/self/{mountinfo,cgroup}`.
fn own_group(mountinfo: &str, cgroups: &str, name: &str) -> Option<PathBuf> {
    let own = cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == name).then_some(path)
    })?;
    mountinfo.lines().find_map(|l| {
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
    })
}

/// Where a server started by this process (so in its cgroup) puts its sandboxes' groups of
/// cgroup v1 controller `name` (`pids` or `memory`): `<this process's group>/openenv-rs`, from
/// `/proc/self/{mountinfo,cgroup}`; `None` when the controller is not mounted. For tools
/// outside the server (the bench) that count what is left of its sandboxes.
pub fn sandbox_cgroup_parent(name: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    Some(own_group(&mountinfo, &cgroups, name)?.join(GROUP_DIR))
}

impl CgroupRoots {
    /// Finds writable controllers (creating the parent directories); none when disabled.
    pub(super) fn detect(enabled: bool) -> Self {
        if !enabled {
            return Self::default();
        }
        let (Ok(mountinfo), Ok(cgroups)) = (
            std::fs::read_to_string("/proc/self/mountinfo"),
            std::fs::read_to_string("/proc/self/cgroup"),
        ) else {
            return Self::default();
        };
        // Probe by creating our parent directory, and leave nothing behind: parents exist
        // only while a group of ours does.
        let _live = LIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let usable = |name: &str| {
            let dir = own_group(&mountinfo, &cgroups, name)?.join(GROUP_DIR);
            let probe = dir.join(format!("probe-{}", std::process::id()));
            std::fs::create_dir_all(&probe).ok()?;
            let ok = probe.join("cgroup.procs").exists();
            if let Err(e) = std::fs::remove_dir(&probe) {
                tracing::warn!(probe = %probe.display(), error = %e, "removing the cgroup probe failed");
            }
            let _ = std::fs::remove_dir(&dir); // busy while groups live under it
            ok.then_some(dir)
        };
        Self {
            pids: usable("pids"),
            memory: usable("memory"),
        }
    }

    /// The existing groups of sandbox `id` (the orphan sweep).
    pub(super) fn existing(&self, id: &str) -> Cgroups {
        let dirs = [&self.pids, &self.memory]
            .into_iter()
            .flatten()
            .map(|p| p.join(id))
            .filter(|d| d.is_dir())
            .collect();
        Cgroups::adopt(dirs)
    }

    /// Whether the `pids` controller is in use.
    pub(super) fn has_pids(&self) -> bool {
        self.pids.is_some()
    }

    /// Whether the `memory` controller is in use.
    pub(super) fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Creates the groups of sandbox `id` with the given limits (0 = none) in `groups`; on
    /// failure, what was made is in `groups`, for the caller's cleanup.
    pub(super) fn create(
        &self,
        groups: &mut Cgroups,
        id: &str,
        pids_max: u64,
        memory_bytes: u64,
    ) -> std::io::Result<()> {
        self.fill(groups, id, pids_max, memory_bytes)
    }

    fn fill(
        &self,
        groups: &mut Cgroups,
        id: &str,
        pids_max: u64,
        memory_bytes: u64,
    ) -> std::io::Result<()> {
        for (parent, file) in [
            (&self.pids, "pids.max"),
            (&self.memory, "memory.limit_in_bytes"),
        ] {
            let Some(parent) = parent else { continue };
            let dir = parent.join(id);
            {
                let mut live = LIVE
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                std::fs::create_dir_all(&dir)?;
                *live += 1;
            }
            groups.dirs.push(dir.clone());
            let value = if file == "pids.max" {
                pids_max
            } else {
                memory_bytes
            };
            if value > 0 {
                std::fs::write(dir.join(file), value.to_string())?;
                if file == "memory.limit_in_bytes" {
                    // With swap accounting, swap counts too (absent without it).
                    let _ =
                        std::fs::write(dir.join("memory.memsw.limit_in_bytes"), value.to_string());
                }
            }
        }
        Ok(())
    }
}

/// The groups of one sandbox.
#[derive(Debug, Default)]
pub(super) struct Cgroups {
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    /// Takes charge of existing groups (the orphan sweep).
    pub(super) fn adopt(dirs: Vec<PathBuf>) -> Self {
        *LIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += dirs.len();
        Self { dirs }
    }

    /// The group directories.
    pub(super) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// `tasks` of every group, open for writing (close-on-exec): a single-threaded process (a
    /// child between fork and exec) joins a group by writing `0` to it.
    ///
    /// Not `cgroup.procs`: moving a whole thread group takes the kernel's global
    /// `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace period whenever no
    /// other migration happened just before — 10–20 ms on the 6.18 kernel of our 2-CPU machines,
    /// most of a reset. Recent kernels skip that lock when a thread moves itself (`0` written to
    /// `tasks`): ~40 µs there, and never slower than `cgroup.procs` on older ones. For a process
    /// with one thread it moves the same thing.
    pub(super) fn join_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.dirs
            .iter()
            .map(|d| Ok(OpenOptions::new().write(true).open(d.join("tasks"))?.into()))
            .collect()
    }

    /// Live processes in the groups. A group that cannot be read (out of descriptors) is an
    /// error, never "empty"; a group already removed is empty.
    pub(super) fn members(&self) -> std::io::Result<Vec<i32>> {
        let mut pids = Vec::new();
        for d in &self.dirs {
            let text = match std::fs::read_to_string(d.join("cgroup.procs")) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// SIGKILLs everything in the groups until they are empty, then removes them (and our
    /// parent directories once this process has no group left). Groups that could not be
    /// removed stay in `self` for a later attempt. When the members cannot be listed (out of
    /// descriptors), removal is still tried: `rmdir` needs no descriptor and fails on a busy
    /// group.
    pub(super) fn kill_and_remove(&mut self) -> std::io::Result<()> {
        let end = Instant::now() + Duration::from_secs(10);
        let listed = loop {
            let pids = match self.members() {
                Ok(pids) => pids,
                Err(e) => break Err(e),
            };
            if pids.is_empty() {
                break Ok(());
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL); // ESRCH: already gone
            }
            if Instant::now() > end {
                return Err(std::io::Error::other(
                    "processes in the sandbox cgroup survive SIGKILL",
                ));
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        // With an unreadable listing one try each; else a busy group gets a moment.
        let patience = match listed {
            Ok(()) => Duration::from_secs(5),
            Err(_) => Duration::ZERO,
        };
        let mut live = LIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut result = Ok(());
        let mut kept = Vec::new();
        for dir in std::mem::take(&mut self.dirs) {
            let end = Instant::now() + patience;
            // An emptied group can stay busy for a moment while the last task is released.
            let removed = loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break Ok(()),
                    Err(e) if e.kind() == ErrorKind::NotFound => break Ok(()),
                    Err(e) if Instant::now() >= end => break Err(e),
                    Err(_) => std::thread::sleep(Duration::from_micros(500)),
                }
            };
            match removed {
                Ok(()) => {
                    *live = live.saturating_sub(1);
                    if *live == 0
                        && let Some(parent) = dir.parent()
                    {
                        let _ = std::fs::remove_dir(parent); // busy if another server uses it
                    }
                }
                Err(e) => {
                    kept.push(dir);
                    result = Err(match &listed {
                        Err(l) => std::io::Error::new(
                            l.kind(),
                            format!("cannot list the group's processes ({l}); rmdir: {e}"),
                        ),
                        Ok(()) => e,
                    });
                }
            }
        }
        self.dirs = kept;
        result
    }
}

/// Every group under our parents (`openenv-rs/<id>`) as (id, path), for the orphan sweep.
pub(super) fn listed(roots: &CgroupRoots) -> Vec<(String, PathBuf)> {
    [&roots.pids, &roots.memory]
        .into_iter()
        .flatten()
        .filter_map(|parent| std::fs::read_dir(parent).ok())
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type()
                .ok()?
                .is_dir()
                .then(|| (e.file_name().to_string_lossy().into_owned(), e.path()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_own_group_of_a_controller() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
                         31 25 0:27 / /sys/fs/cgroup/pids rw,relatime shared:10 - cgroup cgroup rw,pids\n\
                         32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let cgroups = "8:pids:/\n4:memory:/job/abc\n0::/\n";
        assert_eq!(
            own_group(mountinfo, cgroups, "pids").unwrap(),
            Path::new("/sys/fs/cgroup/pids")
        );
        assert_eq!(
            own_group(mountinfo, cgroups, "memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/job/abc")
        );
        assert!(own_group(mountinfo, cgroups, "cpu").is_none());
    }
}
