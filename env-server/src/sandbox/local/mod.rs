//! The local backend: one bubblewrap sandbox per episode (`SANDBOXES.md` §2.2).
//!
//! [`LocalBackend::create`] makes the episode directory `<E>` (`home` → the work dir, `tmp` →
//! `/tmp`, synthetic `/etc/passwd`, `group`, `hosts`), optionally cgroup v1 `pids`/`memory`
//! groups, and starts one bwrap — own user, pid, ipc, uts, net and cgroup namespaces, no
//! capabilities, cleared environment, read-only system directories — whose command is the
//! supervisor `sbx` ([`sbx`], PID 1). The server talks to `sbx` over two pipes
//! (`proto`); files are handled on the host (`files`). A root server runs each bwrap as its
//! own unprivileged host uid, so the agent is not host root and `RLIMIT_NPROC` is per sandbox.
//!
//! Layout: `config` (flags), `argv` (bwrap arguments), `launch` (spawning bwrap), `client`
//! (server end of the channel), `create`, `sandbox` ([`LocalSandbox`], teardown), `files`, `tree`
//! (symlink-safe removal), `cgroup`, `owner` (uids, labels, orphans), `procfs`, `sweep`,
//! `proto`, and `sbx` (the supervisor's side).

mod argv;
mod cgroup;
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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

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
/// Added to bwrap errors that say a sandbox's own uid cannot reach its directory.
const ROOT_HINT: &str = "the sandboxes' own uids cannot reach the sandbox root: use a directory every \
    user can traverse (`--sandbox-root /tmp`, or `chmod o+x` the root and its parents)";
/// Top-level directories a work dir may not be in.
const RESERVED: &[&str] = &[
    "bin", "dev", "etc", "lib", "lib32", "lib64", "proc", "run", "sbin", "sys", "tmp", "usr",
    "var", ".openenv",
];

/// Per-process sequence number of sandboxes (part of their ids).
static SEQ: AtomicU64 = AtomicU64::new(1);

/// The local bubblewrap backend.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    inner: Arc<Backend>,
}

#[derive(Debug)]
struct Backend {
    bwrap: PathBuf,
    sbx: PathBuf,
    root: PathBuf,
    instance: String,
    /// Root server: one host uid per sandbox.
    dedicated_uids: bool,
    cgroups: cgroup::CgroupRoots,
    /// The root filesystem's `bin`, `lib`… (directories or merged-`/usr` symlinks).
    sys_dirs: Vec<(&'static str, argv::SysDir)>,
    config: LocalConfig,
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

/// Whether any user can reach and run `path`: every ancestor directory searchable by others,
/// the file readable and executable by others.
fn reachable_by_all(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    let file_ok = mode(path).is_ok_and(|m| m & 0o005 == 0o005);
    file_ok
        && path
            .ancestors()
            .skip(1)
            .all(|dir| dir.as_os_str().is_empty() || mode(dir).is_ok_and(|m| m & 0o001 != 0))
}

/// Copies `env-sbx` into `<root>/.openenv-rs-sbx/` (root-owned, 0755), where the sandboxes'
/// uids can reach it — for a server binary under a directory they cannot traverse (a checkout
/// in a private home or a `mktemp -d`). The copy is named by the source's size and mtime, made
/// under a temporary name and renamed, so servers share it; a directory or file there that
/// another user owns or could write is refused, not used.
fn stage_sbx(sbx: &Path, root: &Path) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        unavailable(format!(
            "cannot stage the sandbox supervisor {} in {} ({what}: {e}); put env-server where every user can reach it or set --sbx-path",
            sbx.display(),
            root.display()
        ))
    };
    let trusted = |p: &Path| -> Result<(), SandboxError> {
        let meta = std::fs::symlink_metadata(p).map_err(|e| fail("stat", &e))?;
        if meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.file_type().is_symlink()
            || meta.mode() & 0o022 != 0
        {
            return Err(fail(
                "ownership",
                &format!("{} is not ours alone", p.display()),
            ));
        }
        Ok(())
    };
    let source = std::fs::metadata(sbx).map_err(|e| fail("stat", &e))?;
    let dir = root.join(".openenv-rs-sbx");
    match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail("mkdir", &e)),
    }
    trusted(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail("chmod", &e))?;
    let staged = dir.join(format!(
        "env-sbx-{}-{}.{}",
        source.len(),
        source.mtime(),
        source.mtime_nsec()
    ));
    if staged.exists() {
        trusted(&staged)?;
        return Ok(staged);
    }
    // Unique per call: backends of one process (tests) may stage at the same time.
    static STAGING: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".env-sbx-{}-{}.tmp",
        std::process::id(),
        STAGING.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::copy(sbx, &tmp).map_err(|e| fail("copy", &e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail("chmod", &e))?;
    std::fs::rename(&tmp, &staged).map_err(|e| fail("rename", &e))?;
    tracing::info!(from = %sbx.display(), to = %staged.display(), "staged env-sbx where the sandboxes' uids can reach it");
    Ok(staged)
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
        let dedicated_uids = nix::unistd::geteuid().is_root();
        // bwrap runs as each sandbox's own uid and must reach `env-sbx` to bind it.
        let sbx = if dedicated_uids && !reachable_by_all(&sbx) {
            stage_sbx(&sbx, &root)?
        } else {
            sbx
        };
        let cgroups = cgroup::CgroupRoots::detect(config.cgroups == CgroupMode::Auto);
        log_capabilities(dedicated_uids, &cgroups, config.cgroups);
        Ok(LocalBackend {
            inner: Arc::new(Backend {
                bwrap,
                sbx,
                root,
                instance: owner::instance(),
                dedicated_uids,
                cgroups,
                sys_dirs,
                config: config.clone(),
            }),
        })
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

fn next_id(instance: &str) -> String {
    format!("{instance}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_sbx_is_staged_where_every_user_can_reach_it() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("openenv-stage-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let private = base.join("private");
        let root = base.join("root");
        std::fs::create_dir_all(&private).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let sbx = private.join("env-sbx");
        std::fs::write(&sbx, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&sbx, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!reachable_by_all(&sbx));

        let staged = stage_sbx(&sbx, &root).unwrap();
        assert!(staged.starts_with(root.join(".openenv-rs-sbx")));
        assert!(reachable_by_all(&staged), "{}", staged.display());
        assert_eq!(std::fs::read(&staged).unwrap(), b"#!/bin/sh\n");
        // A second server reuses the same copy.
        assert_eq!(stage_sbx(&sbx, &root).unwrap(), staged);
        // Backends staging at the same time (one process, fresh root) all get the copy.
        let fresh = base.join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
        let racers: Vec<_> = (0..6)
            .map(|_| {
                let (sbx, fresh) = (sbx.clone(), fresh.clone());
                std::thread::spawn(move || stage_sbx(&sbx, &fresh))
            })
            .collect();
        for racer in racers {
            let path = racer.join().unwrap().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"#!/bin/sh\n");
        }
        // A staging directory others can write to is refused.
        std::fs::set_permissions(
            root.join(".openenv-rs-sbx"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        assert!(stage_sbx(&sbx, &root).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn probe_failures_name_their_fix() {
        let unreachable = probe_failure(SandboxError::CreateFailed {
            reason: "bwrap: Can't find source path <sandbox-dir>/etc/passwd: Permission denied"
                .to_owned(),
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
