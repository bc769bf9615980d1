//! Creating a local sandbox: claim a uid, make `<E>` (the owner marker), create the cgroups,
//! start bwrap, wait for `sbx`'s `Ready` and open the sandbox's writable mounts from the host.
//! Any failure tears down whatever was made.

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
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
    marker: Marker,
    cgroups: CgroupRoots,
    /// The host name (cgroups).
    host: String,
    limits: Limits,
    cleanup: Arc<Cleanup>,
}

/// Makes `<E>` with the owner marker (nothing of the sandbox's files: those are in its tmpfs
/// mounts) and creates the cgroups; on failure hands what it made to the cleanup queue, which
/// retries a removal that fails too (an `EMFILE` mid-way: `docs/cleanup.md`).
fn prepare(p: &Prep) -> std::io::Result<(Cgroups, Vec<OwnedFd>)> {
    std::fs::DirBuilder::new().mode(0o700).create(&p.dir)?;
    let mut cgroups = Cgroups::default();
    let made = (|| {
        let marker = serde_json::to_vec(&p.marker).map_err(std::io::Error::other)?;
        std::fs::write(p.dir.join("owner"), marker)?;
        p.cgroups
            .create(&mut cgroups, &p.host, p.limits.pids, p.limits.memory)?;
        cgroups.join_fds()
    })();
    match made {
        Ok(fds) => Ok((cgroups, fds)),
        Err(e) => {
            let remains = Remains {
                id: p.host.clone(),
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

/// Reads the host pid of the sandbox's PID 1 from bwrap's `--info-fd` pipe (bwrap writes it
/// right after the clone, so it is there once `sbx` is ready) and opens the sandbox's mounts
/// through it.
async fn open_mounts(
    info: OwnedFd,
    pid_ns: &str,
    work_dir: &[String],
) -> Result<files::Mounts, String> {
    use tokio::io::AsyncReadExt;
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "child-pid")]
        child_pid: i32,
    }
    let mut reader = tokio::net::unix::pipe::Receiver::from_owned_fd(info)
        .map_err(|e| format!("bwrap's info pipe: {e}"))?;
    let mut text = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        (&mut reader).take(64 << 10).read_to_end(&mut text),
    )
    .await;
    // bwrap closes its end after writing; a partial read is still tried.
    if let Ok(Err(e)) = read {
        return Err(format!("bwrap's info pipe: {e}"));
    }
    let info: Info = serde_json::from_slice(&text)
        .map_err(|e| format!("bwrap's info ({e}): {}", String::from_utf8_lossy(&text)))?;
    let (pid_ns, work_dir) = (pid_ns.to_owned(), work_dir.to_vec());
    tokio::task::spawn_blocking(move || files::open_mounts(info.child_pid, &pid_ns, &work_dir))
        .await
        .map_err(|e| format!("opening the sandbox's mounts: {e}"))?
}

/// Creates a sandbox.
pub(super) async fn create(
    b: &Arc<Backend>,
    spec: SandboxSpec,
) -> Result<LocalSandbox, SandboxError> {
    let egress = check_spec(&b.config, &spec)?;
    let work_comps: Vec<String> = files::components(&spec.work_dir)?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let (id, host) = next_id(&b.instance);
    let claim: Option<UidClaim> = match b.dedicated_uids {
        true => Some(claim_uid(b.config.uid_base, b.config.uid_count)?),
        false => None,
    };
    let uid = claim.as_ref().map(UidClaim::uid);
    let dir = b.root.join(format!("{DIR_PREFIX}{host}"));
    let limits = Limits::resolve(b, &spec);
    let prep = Prep {
        dir: dir.clone(),
        marker: Marker {
            pid: std::process::id().cast_signed(),
            start: super::procfs::self_start_time(),
            id: id.clone(),
            uid,
            labels: spec.labels.clone(),
        },
        cgroups: b.cgroups.clone(),
        host,
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
    let (rootfs, env, work_dir) = (
        b.config.rootfs.clone(),
        spec.env.clone(),
        spec.work_dir.clone(),
    );
    let (sys_dirs, etc) = (b.sys_dirs.clone(), b.etc.clone());
    let c = &b.config;
    let sizes = argv::Sizes {
        work_dir: c.work_dir_bytes,
        tmp: c.tmp_bytes,
    };
    // An egress sandbox resolves names as the host does (a copy of its resolver file).
    let resolv = match egress {
        true => std::fs::read_to_string(b.config.rootfs.join("etc/resolv.conf")).ok(),
        false => None,
    };
    let etc_files = argv::etc_files(&spec.work_dir, resolv.as_deref());
    let spec_for_args = spec.clone();
    let launched = launch(Launch {
        bwrap: b.bwrap.clone(),
        args: Box::new(move |fds| {
            let layout = argv::Layout {
                rootfs: &rootfs,
                sys_dirs: &sys_dirs,
                etc: &etc,
                work_dir: &work_dir,
                env: &env,
                egress,
                sizes,
            };
            let numbers = argv::Fds {
                info: fds.info,
                sbx: fds.sbx,
                etc: &fds.etc,
            };
            let sbx_args = limits.sbx_args(&spec_for_args, fds.control, fds.reply);
            argv::bwrap_args(&layout, &numbers, &sbx_args)
        }),
        uid: uid.map(|u| (u, u)),
        cgroup_join,
        sbx: Arc::clone(&b.sbx_fd),
        etc: etc_files,
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
    let ready = match ready {
        Ok((chan, pid_ns)) => match open_mounts(launched.info, &pid_ns, &work_comps).await {
            Ok(mounts) => Ok((chan, pid_ns, mounts)),
            Err(msg) => Err((Some(chan), msg)),
        },
        Err(e) => Err(e),
    };
    let (chan, pid_ns, mounts) = match ready {
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
    let roots = files::Roots::new(
        mounts,
        work_comps,
        uid.map(|u| (Uid::from_raw(u), Gid::from_raw(u))),
    );
    tracing::debug!(sandbox = %id, "sandbox ready");
    Ok(LocalSandbox {
        id,
        chan,
        roots: Arc::new(roots),
        dir,
        uid,
        pid_ns,
        cgroup_dirs,
        exec_margin: spec.kill_grace + spec.drain_grace + Duration::from_secs(10),
        teardown: tokio::sync::Mutex::new(Some(parts)),
    })
}
