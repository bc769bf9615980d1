//! Creating a local sandbox: claim a uid, lay out `<E>`, create the cgroups, start bwrap and
//! wait for `sbx`'s `Ready`. Any failure tears down whatever was made.

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::unistd::{Gid, Uid};

use super::cgroup::{CgroupRoots, Cgroups};
use super::cleanup::{Cleanup, Remains};
use super::client::Channel;
use super::launch::{Launch, launch, log_stderr};
use super::owner::{DIR_PREFIX, Marker, UidClaim, claim_uid};
use super::sandbox::{GONE_DEADLINE, LocalSandbox, Parts};
use super::{Backend, MISSING_BWRAP, argv, check_spec, files, next_id, proto, unavailable};
use crate::sandbox::{SandboxError, SandboxSpec};

/// Limits of one sandbox: the spec's, else the configured defaults (0 = none).
#[derive(Debug, Clone, Copy)]
struct Limits {
    pids: u64,
    memory: u64,
    file: u64,
    nofile: u64,
}

impl Limits {
    fn resolve(b: &Backend, spec: &SandboxSpec) -> Self {
        let l = &spec.limits;
        Self {
            pids: l.pids.unwrap_or(b.config.pids_max),
            memory: l.memory_bytes.unwrap_or(b.config.memory_bytes),
            file: l.file_bytes.unwrap_or(b.config.file_bytes),
            nofile: l.open_files.unwrap_or(b.config.open_files),
        }
    }

    /// `sbx init` arguments for these limits and descriptors.
    fn sbx_args(self, spec: &SandboxSpec, control: RawFd, reply: RawFd) -> Vec<String> {
        let mut a: Vec<String> = [
            "init",
            "--control-fd",
            &control.to_string(),
            "--reply-fd",
            &reply.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).to_string();
        a.extend(["--kill-grace-ms".to_owned(), ms(spec.kill_grace)]);
        a.extend(["--drain-grace-ms".to_owned(), ms(spec.drain_grace)]);
        let head = if spec.head_fraction.is_finite() {
            spec.head_fraction.clamp(0.0, 1.0)
        } else {
            proto::HEAD_FRACTION
        };
        a.extend(["--head-fraction".to_owned(), head.to_string()]);
        for (flag, value) in [
            ("--nofile", self.nofile),
            ("--fsize", self.file),
            ("--nproc", self.pids),
        ] {
            if value > 0 {
                a.extend([flag.to_owned(), value.to_string()]);
            }
        }
        a
    }
}

/// Everything `prepare` needs, owned (it runs on a blocking thread).
struct Prep {
    dir: PathBuf,
    uid: Option<u32>,
    marker: Marker,
    work_dir: String,
    cgroups: CgroupRoots,
    id: String,
    limits: Limits,
    cleanup: Arc<Cleanup>,
}

/// Lays out `<E>` and creates the cgroups; on failure hands what it made to the cleanup queue,
/// which retries a removal that fails too (an `EMFILE` mid-way: `docs/cleanup.md`).
fn prepare(p: &Prep) -> std::io::Result<(Cgroups, Vec<OwnedFd>)> {
    std::fs::DirBuilder::new().mode(0o700).create(&p.dir)?;
    let mut cgroups = Cgroups::default();
    let made = (|| {
        for (sub, mode) in [
            ("home", 0o755),
            ("tmp", 0o1777),
            ("trash", 0o700),
            ("etc", 0o755),
        ] {
            let path = p.dir.join(sub);
            std::fs::create_dir(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        for (name, text) in argv::etc_files(&p.work_dir) {
            std::fs::write(p.dir.join("etc").join(name), text)?;
        }
        let marker = serde_json::to_vec(&p.marker).map_err(std::io::Error::other)?;
        std::fs::write(p.dir.join("owner"), marker)?;
        if let Some(uid) = p.uid {
            let owner = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)));
            for path in [p.dir.clone(), p.dir.join("home"), p.dir.join("tmp")] {
                nix::unistd::chown(&path, owner.0, owner.1)?;
            }
        }
        p.cgroups
            .create(&mut cgroups, &p.id, p.limits.pids, p.limits.memory)?;
        cgroups.join_fds()
    })();
    match made {
        Ok(fds) => Ok((cgroups, fds)),
        Err(e) => {
            let remains = Remains {
                id: p.id.clone(),
                dir: Some(p.dir.clone()),
                cgroups,
                claim: None, // nothing ran as its uid: the caller releases it
                uid: None,
                pid_ns: None,
            };
            p.cleanup.settle(remains, Duration::ZERO);
            Err(e)
        }
    }
}

/// Replaces host paths in a message meant for a client.
fn redact(text: &str, paths: &[(&Path, &str)]) -> String {
    let mut out = text.to_owned();
    for (path, label) in paths {
        if let Some(p) = path.to_str().filter(|p| p.len() > 1) {
            out = out.replace(p, label);
        }
    }
    out
}

/// Creates a sandbox.
pub(super) async fn create(
    b: &Arc<Backend>,
    spec: SandboxSpec,
) -> Result<LocalSandbox, SandboxError> {
    let egress = check_spec(&b.config, &spec)?;
    let id = next_id(&b.instance);
    let claim: Option<UidClaim> = match b.dedicated_uids {
        true => Some(claim_uid(b.config.uid_base, b.config.uid_count)?),
        false => None,
    };
    let uid = claim.as_ref().map(UidClaim::uid);
    let dir = b.root.join(format!("{DIR_PREFIX}{id}"));
    let limits = Limits::resolve(b, &spec);
    let prep = Prep {
        dir: dir.clone(),
        uid,
        marker: Marker {
            pid: std::process::id().cast_signed(),
            start: super::procfs::self_start_time(),
            id: id.clone(),
            uid,
            labels: spec.labels.clone(),
        },
        work_dir: spec.work_dir.clone(),
        cgroups: b.cgroups.clone(),
        id: id.clone(),
        limits,
        cleanup: Arc::clone(&b.cleanup),
    };
    let (cgroups, cgroup_join) = tokio::task::spawn_blocking(move || prepare(&prep))
        .await
        .map_err(|e| SandboxError::CreateFailed {
            reason: format!("preparing the sandbox failed: {e}"),
        })?
        .map_err(|e| SandboxError::CreateFailed {
            reason: format!("preparing the sandbox directory failed: {e}"),
        })?;
    let cgroup_dirs = cgroups.dirs().to_vec();
    let (rootfs, sbx, env, work_dir) = (
        b.config.rootfs.clone(),
        b.sbx.clone(),
        spec.env.clone(),
        spec.work_dir.clone(),
    );
    let (layout_dir, sys_dirs) = (dir.clone(), b.sys_dirs.clone());
    let spec_for_args = spec.clone();
    let launched = launch(Launch {
        bwrap: b.bwrap.clone(),
        args: Box::new(move |control, reply| {
            let layout = argv::Layout {
                rootfs: &rootfs,
                sys_dirs: &sys_dirs,
                dir: &layout_dir,
                sbx: &sbx,
                work_dir: &work_dir,
                env: &env,
                egress,
            };
            argv::bwrap_args(&layout, &limits.sbx_args(&spec_for_args, control, reply))
        }),
        uid: uid.map(|u| (u, u)),
        cgroup_join,
    })
    .await;
    let launched = match launched {
        Ok(l) => l,
        Err(e) => {
            // Nothing was started: the directory and the cgroups go (or are queued).
            let remains = Remains {
                id: id.clone(),
                dir: Some(dir.clone()),
                cgroups,
                uid: None, // nothing was started
                claim,
                pid_ns: None,
            };
            let cleanup = Arc::clone(&b.cleanup);
            if let Err(e) =
                tokio::task::spawn_blocking(move || cleanup.settle(remains, GONE_DEADLINE)).await
            {
                tracing::error!(sandbox = %id, error = %e, "the sandbox cleanup task failed");
            }
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound => unavailable(MISSING_BWRAP),
                _ => SandboxError::CreateFailed {
                    reason: format!("cannot start bwrap: {e}"),
                },
            });
        }
    };
    let first_stderr = Arc::new(Mutex::new(String::new()));
    let log = tokio::spawn(log_stderr(
        id.clone(),
        launched.stderr,
        Arc::clone(&first_stderr),
    ));
    let mut parts = Parts {
        id: id.clone(),
        child: launched.child,
        cgroups,
        claim,
        dir: dir.clone(),
        pid_ns: None,
        cleanup: Arc::clone(&b.cleanup),
    };
    let ready = match Channel::start(launched.to_sbx, launched.from_sbx) {
        Ok((chan, ready)) => {
            let frame =
                tokio::time::timeout(Duration::from_millis(b.config.create_timeout_ms), ready)
                    .await;
            let header = match frame {
                Ok(Ok(f)) if f.kind == proto::Kind::Ready => {
                    f.header::<proto::ReadyHeader>().map_err(|e| e.to_string())
                }
                Ok(Ok(f)) => Err(format!("unexpected first frame {:?}", f.kind)),
                Ok(Err(_)) => Err(String::new()),
                Err(_) => Err("the sandbox supervisor did not start in time".to_owned()),
            };
            match header {
                Ok(h) if h.version == env!("CARGO_PKG_VERSION") && !h.pid_ns.is_empty() => {
                    Ok((chan, h.pid_ns))
                }
                Ok(h) => Err((
                    Some(chan),
                    format!(
                        "env-sbx {} does not match the server ({})",
                        h.version,
                        env!("CARGO_PKG_VERSION")
                    ),
                )),
                Err(msg) => Err((Some(chan), msg)),
            }
        }
        Err(e) => Err((None, format!("control channel: {e}"))),
    };
    let (chan, pid_ns) = match ready {
        Ok(ok) => ok,
        Err((chan, msg)) => {
            match chan {
                // A failed removal is the cleanup queue's (logged, counted, retried).
                Some(chan) => {
                    chan.close("sandbox creation failed");
                    if let Err(e) = parts.run(&chan).await {
                        tracing::error!(sandbox = %id, error = %e, "the sandbox cleanup task failed");
                    }
                }
                None => {
                    let _ = parts.child.start_kill(); // fails only when bwrap already exited
                    if let Err(e) = tokio::task::spawn_blocking(move || parts.finish()).await {
                        tracing::error!(sandbox = %id, error = %e, "the sandbox cleanup task failed");
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), log).await;
            let stderr = first_stderr.lock().map(|s| s.clone()).unwrap_or_default();
            let reason = [msg.as_str(), stderr.trim()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(": ");
            let reason = if reason.is_empty() {
                "bwrap exited without starting the sandbox".to_owned()
            } else {
                reason
            };
            let reason = redact(
                &reason,
                &[
                    (&dir, "<sandbox-dir>"),
                    (&b.root, "<sandbox-root>"),
                    (&b.sbx, "<env-sbx>"),
                ],
            );
            return Err(SandboxError::CreateFailed { reason });
        }
    };
    parts.pid_ns = Some(pid_ns.clone());
    let roots = files::Roots {
        home: dir.join("home"),
        tmp: dir.join("tmp"),
        trash: dir.join("trash"),
        work_dir: files::components(&spec.work_dir)?
            .into_iter()
            .map(str::to_owned)
            .collect(),
        owner: uid.map(|u| (Uid::from_raw(u), Gid::from_raw(u))),
    };
    tracing::debug!(sandbox = %id, "sandbox ready");
    Ok(LocalSandbox {
        id,
        chan,
        roots,
        dir,
        uid,
        pid_ns,
        cgroup_dirs,
        exec_margin: spec.kill_grace + spec.drain_grace + Duration::from_secs(10),
        teardown: tokio::sync::Mutex::new(Some(parts)),
    })
}
