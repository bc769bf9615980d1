//! The local backend: one bubblewrap sandbox per episode (`SANDBOXES.md` §2.2).
//!
//! [`LocalBackend::create`] makes the episode directory `<E>` (only the owner marker, for the
//! orphan sweep), optionally cgroup v1 `pids`/`memory` groups, and starts one bwrap — own user,
//! pid, ipc, uts, net and cgroup namespaces, no capabilities, cleared environment, read-only
//! system directories, its own `/etc`, size-limited tmpfs mounts for every writable place
//! (`docs/sandbox-local.md`) — whose command is the supervisor `sbx` ([`sbx`], PID 1, reaping orphans, run from
//! a sealed memfd). The server talks to `sbx` over two pipes (`proto`); files are handled on
//! the host through the sandbox's mounts (`files`). A root server runs each bwrap as its own
//! unprivileged host uid, so the agent is not host root and `RLIMIT_NPROC` is per sandbox.
//!
//! Layout: `config` (flags), `argv` (bwrap arguments), `launch` (spawning bwrap), `client`
//! (server end of the channel), `create`, `sandbox` ([`LocalSandbox`], teardown), `files`, `tree`
//! (symlink-safe removal), `cgroup`, `owner` (uids, labels, orphans), `procfs`, `sweep`,
//! `proto`, and `sbx` (the supervisor's side).

mod argv;
mod cgroup;
mod cleanup;
mod client;
mod config;
mod create;
mod files;
mod launch;
mod owner;
mod procfs;
mod proto;
mod sandbox;
pub mod sbx;
mod sweep;
mod tree;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

pub use cgroup::sandbox_cgroup_parent;
pub use cleanup::CleanupStats;
pub use config::{CgroupMode, LocalConfig, LocalNetwork};
pub use sandbox::LocalSandbox;

use crate::sandbox::{ExecRequest, Network, Sandbox, SandboxBackend, SandboxError, SandboxSpec};

const BACKEND: &str = "local";
/// The message for a missing bwrap.
const MISSING_BWRAP: &str = "bubblewrap (`bwrap`) is not installed: run `apt-get install bubblewrap` (scripts/serve does this)";
/// Added to bwrap errors that look like disabled user namespaces.
const USERNS_HINT: &str = "user namespaces seem to be unavailable: check `sysctl kernel.unprivileged_userns_clone` \
    and `user.max_user_namespaces` (must be > 0), and on Ubuntu 23.10+ AppArmor's \
    `kernel.apparmor_restrict_unprivileged_userns` (set it to 0 or give bwrap an AppArmor profile); \
    in a container, allow user namespaces (e.g. `--security-opt seccomp=unconfined --security-opt apparmor=unconfined`)";
/// Added to bwrap errors that say a sandbox's own uid cannot reach what it binds (the root
/// filesystem's system directories: nothing else is bound from the host).
const ROOT_HINT: &str = "the sandboxes' own uids cannot reach the root filesystem: use one every \
    user can traverse (`--local-rootfs /`, or `chmod o+x` it and its parents)";
/// Top-level directories a work dir may not be in.
const RESERVED: &[&str] = &[
    "bin", "dev", "etc", "lib", "lib32", "lib64", "proc", "run", "sbin", "sys", "tmp", "usr", "var",
];

/// The local bubblewrap backend.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Backend>,
}

#[derive(Debug)]
struct Backend {
    bwrap: PathBuf,
    /// Where `env-sbx` was loaded from (for messages).
    sbx: PathBuf,
    /// `env-sbx`, sealed in a read-only memfd ([`seal_sbx`]).
    sbx_fd: Arc<OwnedFd>,
    root: PathBuf,
    /// This server as an owner (`<pid>s<start time>`): the host names of its sandboxes'
    /// directories and cgroups begin with it; sandbox ids do not carry it.
    instance: String,
    /// Root server: one host uid per sandbox.
    dedicated_uids: bool,
    cgroups: cgroup::CgroupRoots,
    /// The root filesystem's `bin`, `lib`… (directories or merged-`/usr` symlinks).
    sys_dirs: Vec<(&'static str, argv::SysDir)>,
    /// The allowed entries of the root filesystem's `/etc`.
    etc: Vec<(String, argv::EtcEntry)>,
    config: LocalConfig,
    /// Failed removals, retried in the background (`docs/cleanup.md`).
    cleanup: Arc<cleanup::Cleanup>,
}

/// Finds `name` on the server's `PATH` (or checks it as given when it has a `/`).
fn locate(name: &Path) -> Option<PathBuf> {
    let runnable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.components().count() > 1 {
        return runnable(name).then(|| name.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| runnable(p))
}

/// `env-sbx` next to the running binary (or next to its parent, for test binaries in `deps/`).
fn default_sbx() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("env-sbx"), dir.parent()?.join("env-sbx")]
        .into_iter()
        .find(|p| p.is_file())
}

/// `MFD_EXEC` (Linux 6.3): an executable memfd, said explicitly where `vm.memfd_noexec` asks.
const MFD_EXEC: nix::libc::c_uint = 0x10;

/// Copies the supervisor binary into a sealed memfd (no write, grow, shrink or further seals)
/// and reopens it read-only, so it can be executed (no writable descriptor is left). Sandboxes
/// run `sbx` from it as `/proc/self/fd/N`: no host path of the install directory appears
/// inside, and a server binary in a directory the sandbox uids cannot traverse needs no copy
/// on disk.
fn seal_sbx(path: &Path) -> Result<OwnedFd, SandboxError> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        unavailable(format!(
            "cannot load the sandbox supervisor {} ({what}: {e})",
            path.display()
        ))
    };
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let memfd = match memfd_create("env-sbx", flags | MFdFlags::from_bits_retain(MFD_EXEC)) {
        Err(nix::errno::Errno::EINVAL) => memfd_create("env-sbx", flags),
        other => other,
    }
    .map_err(|e| fail("memfd_create", &e))?;
    let mut source = std::fs::File::open(path).map_err(|e| fail("open", &e))?;
    let mut dest = std::fs::File::from(memfd);
    std::io::copy(&mut source, &mut dest).map_err(|e| fail("copy", &e))?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&dest, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| fail("seal", &e))?;
    let reopened = nix::fcntl::open(
        format!("/proc/self/fd/{}", dest.as_raw_fd()).as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail("reopen", &e))?;
    drop(dest);
    Ok(reopened)
}

fn unavailable(reason: impl Into<String>) -> SandboxError {
    SandboxError::Unavailable {
        backend: BACKEND,
        reason: reason.into(),
    }
}

impl LocalBackend {
    /// Checks the configuration, locates bwrap and `env-sbx`, and probes cgroups.
    pub fn new(config: &LocalConfig) -> Result<LocalBackend, SandboxError> {
        let bwrap = locate(&config.bwrap_path).ok_or_else(|| unavailable(MISSING_BWRAP))?;
        let sbx = match &config.sbx_path {
            Some(p) => p.clone(),
            None => default_sbx().ok_or_else(|| {
                unavailable("the sandbox supervisor `env-sbx` was not found next to the server binary: build it (`cargo build -p env-server`) or set --sbx-path")
            })?,
        };
        if !sbx.is_file() {
            return Err(unavailable(format!(
                "the sandbox supervisor {} does not exist (--sbx-path)",
                sbx.display()
            )));
        }
        let root = config
            .sandbox_root
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        if !root.is_absolute() || !root.is_dir() {
            return Err(unavailable(format!(
                "the sandbox root {} is not an existing absolute directory",
                root.display()
            )));
        }
        if !config.rootfs.join("usr").is_dir() || !config.rootfs.join("etc").is_dir() {
            return Err(unavailable(format!(
                "the root filesystem {} has no usr/ or etc/ (--local-rootfs)",
                config.rootfs.display()
            )));
        }
        let sys_dirs = argv::sys_dirs(&config.rootfs);
        let etc = argv::etc_entries(&config.rootfs);
        let dedicated_uids = nix::unistd::geteuid().is_root();
        let sbx_fd = Arc::new(seal_sbx(&sbx)?);
        let cgroups = cgroup::CgroupRoots::detect(config.cgroups == CgroupMode::Auto);
        log_capabilities(dedicated_uids, &cgroups, config.cgroups);
        let tmpfs_total = config.work_dir_bytes.saturating_add(config.tmp_bytes);
        if cgroups.has_memory() && config.memory_bytes > 0 && tmpfs_total >= config.memory_bytes {
            tracing::warn!(
                tmpfs_total,
                memory_bytes = config.memory_bytes,
                "a sandbox's tmpfs mounts may hold as much as its whole memory limit: a sandbox that fills them leaves its processes no memory (see docs/sandbox-local.md)"
            );
        }
        Ok(LocalBackend {
            inner: Arc::new(Backend {
                bwrap,
                sbx,
                sbx_fd,
                root,
                instance: owner::instance(),
                dedicated_uids,
                cgroups,
                sys_dirs,
                etc,
                config: config.clone(),
                cleanup: cleanup::Cleanup::new(
                    Duration::from_millis(config.cleanup_retry_ms),
                    config.cleanup_retries,
                ),
            }),
        })
    }

    /// The cleanup queue's counters: removals that failed and wait for a retry, retries made,
    /// and how many sandboxes were cleaned on retry or given up (`docs/cleanup.md`).
    pub fn cleanup_stats(&self) -> CleanupStats {
        self.inner.cleanup.stats()
    }

    /// Creates a sandbox, returning the concrete type (for diagnostics and tests).
    pub async fn create_local(&self, spec: SandboxSpec) -> Result<LocalSandbox, SandboxError> {
        // In a task of its own: a caller that stops waiting (a cancelled reset) does not leave a
        // half-made sandbox behind; a finished but unwanted one is dropped, which tears it down.
        let backend = Arc::clone(&self.inner);
        tokio::spawn(async move { create::create(&backend, spec).await })
            .await
            .map_err(|e| SandboxError::CreateFailed {
                reason: format!("sandbox creation failed: {e}"),
            })?
    }
}

/// Says once per process what limits are enforced.
fn log_capabilities(dedicated: bool, cgroups: &cgroup::CgroupRoots, mode: CgroupMode) {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut said = ONCE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if std::mem::replace(&mut *said, true) {
        return;
    }
    if !dedicated {
        tracing::info!(
            "the server does not run as root: sandboxes run as the server's own uid (in their own user namespaces, so RLIMIT_NPROC still counts per sandbox)"
        );
    }
    match (mode, cgroups.has_pids(), cgroups.has_memory()) {
        (CgroupMode::Off, _, _) => tracing::info!(
            "sandbox cgroups are off (--local-cgroups off): processes are limited by RLIMIT_NPROC only, memory is not limited"
        ),
        (_, true, true) => tracing::debug!("sandboxes get cgroup v1 pids and memory groups"),
        (_, pids, memory) => tracing::warn!(
            pids,
            memory,
            "cgroup v1 controllers are not all writable here: processes fall back to RLIMIT_NPROC, memory is not limited where the memory controller is missing"
        ),
    }
}

/// Maps a creation failure of the start-up probe to `Unavailable` with the fix.
fn probe_failure(err: SandboxError) -> SandboxError {
    match err {
        SandboxError::CreateFailed { reason }
            if reason.contains("Can't find source path")
                && reason.contains("Permission denied") =>
        {
            unavailable(format!(
                "bwrap cannot create the sandbox: {} — {ROOT_HINT}",
                reason.trim()
            ))
        }
        SandboxError::CreateFailed { reason } => {
            let userns = [
                "namespace",
                "Operation not permitted",
                "setting up uid map",
                "Permission denied",
            ]
            .iter()
            .any(|s| reason.contains(s));
            if userns {
                unavailable(format!(
                    "bwrap cannot create the sandbox: {} — {USERNS_HINT}",
                    reason.trim()
                ))
            } else {
                unavailable(format!(
                    "bwrap cannot create the sandbox: {}",
                    reason.trim()
                ))
            }
        }
        e @ SandboxError::Unavailable { .. } => e,
        other => unavailable(other.to_string()),
    }
}

#[async_trait]
impl SandboxBackend for LocalBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn check(&self) -> Result<(), SandboxError> {
        let sandbox = self
            .create_local(SandboxSpec::default())
            .await
            .map_err(probe_failure)?;
        let ran = sandbox
            .exec(ExecRequest::new(
                vec!["true".to_owned()],
                Duration::from_secs(10),
                1024,
            ))
            .await;
        let destroyed = sandbox.destroy().await;
        match ran {
            Ok(r) if r.success() => {}
            Ok(r) => {
                return Err(unavailable(format!(
                    "a no-op command failed in the sandbox (status {:?}): {}",
                    r.status_code(),
                    String::from_utf8_lossy(&r.stderr.head).trim()
                )));
            }
            Err(e) => return Err(probe_failure(e)),
        }
        destroyed.map_err(probe_failure)
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError> {
        Ok(Box::new(self.create_local(spec).await?))
    }

    async fn sweep_orphans(&self) -> Result<usize, SandboxError> {
        let backend = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || sweep::sweep(&backend))
            .await
            .map_err(|e| SandboxError::Transport {
                reason: format!("orphan sweep failed: {e}"),
            })
    }

    async fn shutdown(&self) {
        let cleanup = Arc::clone(&self.inner.cleanup);
        match tokio::task::spawn_blocking(move || cleanup.shutdown()).await {
            Ok(0) => {}
            Ok(left) => tracing::warn!(
                left,
                "sandboxes whose cleanup failed are left for the next start's orphan sweep"
            ),
            Err(e) => tracing::error!(error = %e, "the last sandbox cleanup failed"),
        }
    }
}

/// Validates a spec; returns whether it gets the host network.
fn check_spec(config: &LocalConfig, spec: &SandboxSpec) -> Result<bool, SandboxError> {
    let invalid = |reason: String| SandboxError::InvalidRequest { reason };
    let comps = files::components(&spec.work_dir)?;
    match comps.first() {
        None => return Err(invalid("the work dir cannot be /".to_owned())),
        Some(top) if RESERVED.contains(top) => {
            return Err(invalid(format!(
                "the work dir {} is in a system directory",
                spec.work_dir
            )));
        }
        Some(_) => {}
    }
    sandbox::check_env(&spec.env)?;
    let egress = config.network == LocalNetwork::Egress;
    if spec.network == Network::Egress && !egress {
        return Err(invalid(
            "network egress is not enabled on this server (--local-network egress)".to_owned(),
        ));
    }
    Ok(egress)
}

/// A new sandbox id: 16 random hex digits, nothing about the host. Returns (id, host name):
/// the host name (`<instance>-<id>`) names its directory and cgroups, so the orphan sweep can
/// tell the owner from it.
fn next_id(instance: &str) -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let host = format!("{instance}-{id}");
    (id, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_no_host_detail_and_the_host_name_its_owner() {
        let me = owner::instance();
        let (a, host) = next_id(&me);
        let (b, _) = next_id(&me);
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert!(!a.contains(&std::process::id().to_string()));
        assert_eq!(host, format!("{me}-{a}"));
        assert!(owner::owner_of(&host).is_some() && owner::owner_alive(&host));
    }

    #[test]
    fn the_supervisor_is_sealed_read_only() {
        let path = std::env::temp_dir().join(format!("oe-sbx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        let fd = seal_sbx(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut file = std::fs::File::from(fd);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "#!/bin/sh\n");
        assert!(std::io::Write::write_all(&mut file, b"x").is_err());
        let rw = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .unwrap();
        assert!(std::io::Write::write_all(&mut &rw, b"x").is_err(), "sealed");
    }

    #[test]
    fn probe_failures_name_their_fix() {
        let unreachable = probe_failure(SandboxError::CreateFailed {
            reason: "bwrap: Can't find source path /srv/rootfs/usr: Permission denied".to_owned(),
        });
        let text = unreachable.to_string();
        assert!(text.ends_with(ROOT_HINT), "{text}");
        assert!(!text.contains("user namespaces"), "{text}");
        let userns = probe_failure(SandboxError::CreateFailed {
            reason: "bwrap: setting up uid map: Permission denied".to_owned(),
        });
        assert!(userns.to_string().ends_with(USERNS_HINT), "{userns}");
    }
}
