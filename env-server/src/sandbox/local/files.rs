//! File operations on a sandbox's writable places, done on the host side (outside the agent's
//! reach, no round trip through `sbx`).
//!
//! The work dir and `/tmp` are tmpfs mounts inside the sandbox's mount namespace
//! (`docs/sandbox-local.md`). At creation the server opens their roots through
//! `/proc/<PID 1>/root` (checking that the process is the sandbox's by its pid namespace) and
//! keeps the two descriptors until teardown. In-sandbox paths under the work dir or `/tmp` are
//! resolved below them; anything else, and any `..`, is rejected. Every step is relative to a
//! directory descriptor and opens with `O_NOFOLLOW`, so a symlink the agent planted is never
//! followed: writes and reads refuse it, `reset_dir` removes it; reads refuse FIFOs and
//! devices. A root server creates files and directories as the sandbox's own host uid (its
//! filesystem uid for the call: a tmpfs of the sandbox's user namespace takes no inode of an
//! unmapped owner), with its capabilities kept; writes are atomic (temp file, chmod, rename).
//! Blocking: the sandbox calls these on blocking threads.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, unlinkat};

use super::tree::{open_dir, remove_at};
use crate::sandbox::{FileContents, SandboxError};

/// Splits an absolute in-sandbox path into components (`.` and empty ones dropped); rejects
/// relative paths, `..` and NUL bytes.
pub(super) fn components(path: &str) -> Result<Vec<&str>, SandboxError> {
    let bad = |why: &str| SandboxError::InvalidRequest {
        reason: format!("path {path:?} {why}"),
    };
    if !path.starts_with('/') {
        return Err(bad("is not absolute"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") {
        return Err(bad("contains `..`"));
    }
    Ok(comps)
}

/// Where a sandbox's writable mounts are: its PID 1 and pid namespace. Nothing is held open
/// between operations (a descriptor per mount per sandbox would bound how many sandboxes a
/// server can hold); each operation opens the mount it needs again through `/proc/<pid>/root`
/// after checking that the pid is still in the sandbox's pid namespace.
#[derive(Debug)]
pub(super) struct Mounts {
    /// Host pid of the sandbox's PID 1.
    pid: i32,
    /// Its pid namespace (`pid:[…]`), as `sbx` reported it.
    pid_ns: String,
    /// The work dir's components.
    work_dir: Vec<String>,
}

impl Mounts {
    /// Opens the root of one of the mounts: `Gone` once the sandbox's PID 1 is no more (or
    /// its pid is another process's), `Transport` for any other failure (`EMFILE`, say).
    fn open(&self, base: Base) -> Result<OwnedFd, SandboxError> {
        let opened = match base {
            Base::Work => {
                let work: Vec<&str> = self.work_dir.iter().map(String::as_str).collect();
                open_mount(self.pid, &self.pid_ns, &work)
            }
            Base::Tmp => open_mount(self.pid, &self.pid_ns, &["tmp"]),
        };
        opened.map_err(|(gone, reason)| match gone {
            true => SandboxError::Gone { reason },
            false => SandboxError::Transport { reason },
        })
    }
}

/// The host's handle on a sandbox's writable places.
#[derive(Debug)]
pub(super) struct Roots {
    /// `None` once the sandbox is torn down (the mounts go with their namespace).
    mounts: Mutex<Option<Arc<Mounts>>>,
    /// The work dir's components.
    work_dir: Vec<String>,
    /// The sandbox's own host uid (a root server's), `None` = the server's uid.
    owner: Option<(Uid, Gid)>,
}

/// Which mount a path is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Work,
    Tmp,
}

/// Checks that the work dir and `/tmp` of the sandbox whose PID 1 is host pid `pid` can be
/// opened, the process being in pid namespace `pid_ns` (the sandbox's, as `sbx` reported it).
pub(super) fn open_mounts(pid: i32, pid_ns: &str, work_dir: &[String]) -> Result<Mounts, String> {
    let mounts = Mounts {
        pid,
        pid_ns: pid_ns.to_owned(),
        work_dir: work_dir.to_vec(),
    };
    for base in [Base::Work, Base::Tmp] {
        mounts.open(base).map_err(|e| e.to_string())?;
    }
    Ok(mounts)
}

/// Opens the mount at `comps` of the sandbox whose PID 1 is host pid `pid` in pid namespace
/// `pid_ns`, never following a link. The error says whether the sandbox is gone.
fn open_mount(pid: i32, pid_ns: &str, comps: &[&str]) -> Result<OwnedFd, (bool, String)> {
    let text = |what: &str, e: Errno| format!("opening the sandbox's mounts ({what}): {e}");
    let fail = |what: &str, e: Errno| (false, text(what, e));
    let path = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    // While open, the directory pins this process: a reused pid cannot stand in for it
    // between the namespace check and the open of its root.
    let proc = nix::fcntl::open(format!("/proc/{pid}").as_str(), path, Mode::empty())
        .map_err(|e| (matches!(e, Errno::ENOENT | Errno::ESRCH), text("/proc", e)))?;
    let ns = nix::fcntl::readlinkat(&proc, "ns/pid")
        .map_err(|e| (matches!(e, Errno::ENOENT | Errno::ESRCH), text("ns", e)))?;
    if ns.as_os_str() != pid_ns {
        return Err((
            true,
            format!("opening the sandbox's mounts: process {pid} is not the sandbox's"),
        ));
    }
    let root = openat(&proc, "root", path, Mode::empty()).map_err(|e| fail("root", e))?;
    let root_dev = fstat(&root).map_err(|e| fail("stat", e))?.st_dev;
    let mut cur = openat(&root, ".", path, Mode::empty()).map_err(|e| fail("root", e))?;
    for name in comps {
        cur = open_dir(&cur, OsStr::new(name)).map_err(|e| fail(name, e))?;
    }
    // A mount of its own, not the root's directory.
    if fstat(&cur).map_err(|e| fail("stat", e))?.st_dev == root_dev {
        return Err((
            false,
            format!(
                "opening the sandbox's mounts: /{} is not a mount",
                comps.join("/")
            ),
        ));
    }
    Ok(cur)
}

/// The filesystem uid and gid of the calling thread set to a sandbox's owner (a root server's
/// per-sandbox uid), with the thread's effective capabilities raised again (changing the
/// filesystem uid drops them), until dropped. Without an owner, nothing changes.
struct AsOwner(Option<(Uid, Gid)>);

/// `capget`/`capset` header (`_LINUX_CAPABILITY_VERSION_3`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// One `capget`/`capset` data word.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the calling thread's effective capabilities to its permitted ones.
#[allow(unsafe_code)]
fn raise_effective_caps() -> nix::Result<()> {
    let mut header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with a version 3 header and two data words, both living for the call.
    let got =
        unsafe { nix::libc::syscall(nix::libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    Errno::result(got)?;
    for word in &mut data {
        word.effective = word.permitted;
    }
    // SAFETY: capset(2) on the calling thread (pid 0) with the words capget filled.
    let set = unsafe { nix::libc::syscall(nix::libc::SYS_capset, &raw mut header, data.as_ptr()) };
    Errno::result(set).map(drop)
}

impl AsOwner {
    fn enter(owner: Option<(Uid, Gid)>) -> Result<AsOwner, SandboxError> {
        let Some((uid, gid)) = owner else {
            return Ok(AsOwner(None));
        };
        let previous_gid = nix::unistd::setfsgid(gid);
        let previous_uid = nix::unistd::setfsuid(uid);
        let guard = AsOwner(Some((previous_uid, previous_gid)));
        // setfsuid reports the previous value only: a second call tells whether it took.
        if nix::unistd::setfsuid(uid) != uid || nix::unistd::setfsgid(gid) != gid {
            return Err(SandboxError::Transport {
                reason: "cannot act as the sandbox's uid".to_owned(),
            });
        }
        raise_effective_caps().map_err(|e| SandboxError::Transport {
            reason: format!("cannot keep capabilities as the sandbox's uid: {e}"),
        })?;
        Ok(guard)
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.0 {
            // Back to root: the kernel raises the filesystem capabilities again.
            nix::unistd::setfsuid(uid);
            nix::unistd::setfsgid(gid);
        }
    }
}

enum Walk {
    /// Every directory must exist.
    Existing,
    /// Missing directories are created.
    Create,
    /// Missing ones are created; a symlink or file in the way is removed first.
    Replace,
}

fn failed(op: &str, path: &str, e: Errno) -> SandboxError {
    SandboxError::Transport {
        reason: format!("{op} {path}: {e}"),
    }
}

impl Roots {
    /// The handle on `mounts`, for a sandbox with work dir `work_dir` whose files belong to
    /// `owner`.
    pub(super) fn new(mounts: Mounts, work_dir: Vec<String>, owner: Option<(Uid, Gid)>) -> Self {
        Self {
            mounts: Mutex::new(Some(Arc::new(mounts))),
            work_dir,
            owner,
        }
    }

    /// Lets go of the mounts (teardown): operations still running finish, later ones fail.
    pub(super) fn close(&self) {
        let taken = self
            .mounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(taken);
    }

    /// The mount a path is under and the components below it; at least one component.
    fn resolve<'p>(&self, path: &'p str) -> Result<(Base, Vec<&'p str>), SandboxError> {
        let comps = components(path)?;
        let n = self.work_dir.len();
        let (base, rest) =
            if comps.len() >= n && comps[..n].iter().zip(&self.work_dir).all(|(a, b)| a == b) {
                (Base::Work, comps[n..].to_vec())
            } else if comps.first() == Some(&"tmp") {
                (Base::Tmp, comps[1..].to_vec())
            } else {
                return Err(SandboxError::InvalidRequest {
                    reason: format!("path {path:?} is outside the sandbox's work dir and /tmp"),
                });
            };
        if rest.is_empty() {
            return Err(SandboxError::InvalidRequest {
                reason: format!("path {path:?} is a sandbox root directory"),
            });
        }
        Ok((base, rest))
    }

    fn mkdir(dir: &OwnedFd, name: &str, path: &str) -> Result<(), SandboxError> {
        match mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(failed("mkdir", path, e)),
        }
    }

    /// Opens the directory holding the last component, walking `dirs` without following links.
    fn walk(
        &self,
        base: Base,
        dirs: &[&str],
        how: &Walk,
        path: &str,
    ) -> Result<OwnedFd, SandboxError> {
        let gone = || SandboxError::Gone {
            reason: "the sandbox is gone".to_owned(),
        };
        let mounts = self
            .mounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(gone)?;
        let top = mounts.open(base)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut cur = openat(&top, ".", flags, Mode::empty()).map_err(|_| gone())?;
        for name in dirs {
            let next = match (open_dir(&cur, OsStr::new(name)), how) {
                (Ok(fd), _) => fd,
                (Err(Errno::ENOENT), Walk::Existing) => {
                    return Err(SandboxError::NotFound {
                        path: path.to_owned(),
                    });
                }
                (Err(Errno::ENOTDIR | Errno::ELOOP), Walk::Existing | Walk::Create) => {
                    return Err(SandboxError::InvalidRequest {
                        reason: format!("path {path:?}: {name} is a symlink or not a directory"),
                    });
                }
                (
                    Err(e @ (Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP)),
                    Walk::Create | Walk::Replace,
                ) => {
                    if e != Errno::ENOENT {
                        match unlinkat(cur.as_fd(), *name, UnlinkatFlags::NoRemoveDir) {
                            Ok(()) | Err(Errno::ENOENT) => {}
                            Err(e) => return Err(failed("unlink", path, e)),
                        }
                    }
                    Self::mkdir(&cur, name, path)?;
                    open_dir(&cur, OsStr::new(name)).map_err(|e| failed("open", path, e))?
                }
                (Err(e), _) => return Err(failed("open", path, e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Writes `data` atomically with `mode` (permission bits only), parents created, owned by
    /// the sandbox's uid.
    pub(super) fn write_file(
        &self,
        path: &str,
        data: &Bytes,
        mode: u32,
    ) -> Result<(), SandboxError> {
        let (base, comps) = self.resolve(path)?;
        let (name, dirs) = comps
            .split_last()
            .ok_or_else(|| failed("write", path, Errno::EINVAL))?;
        let _owner = AsOwner::enter(self.owner)?;
        let dir = self.walk(base, dirs, &Walk::Create, path)?;
        let tmp = OsString::from(format!(".oe-{}.tmp", uuid::Uuid::new_v4().simple()));
        let fd = openat(
            dir.as_fd(),
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| failed("create", path, e))?;
        let written = (|| {
            let mut file = std::fs::File::from(fd);
            file.write_all(data).map_err(|e| {
                failed(
                    "write",
                    path,
                    Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                )
            })?;
            nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode & 0o777))
                .map_err(|e| failed("chmod", path, e))?;
            renameat(dir.as_fd(), tmp.as_os_str(), dir.as_fd(), *name).map_err(|e| match e {
                Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST => SandboxError::InvalidRequest {
                    reason: format!("path {path:?} is a directory"),
                },
                e => failed("rename", path, e),
            })
        })();
        if written.is_err() {
            let _ = unlinkat(dir.as_fd(), tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        written
    }

    /// Reads up to `max_bytes` of a regular file; never follows a symlink, never blocks on a
    /// FIFO or device.
    pub(super) fn read_file(
        &self,
        path: &str,
        max_bytes: usize,
    ) -> Result<FileContents, SandboxError> {
        let (base, comps) = self.resolve(path)?;
        let (name, dirs) = comps
            .split_last()
            .ok_or_else(|| failed("read", path, Errno::EINVAL))?;
        let dir = self.walk(base, dirs, &Walk::Existing, path)?;
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match openat(dir.as_fd(), *name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(SandboxError::NotFound {
                    path: path.to_owned(),
                });
            }
            Err(Errno::ELOOP) => {
                return Err(SandboxError::InvalidRequest {
                    reason: format!("path {path:?} is a symbolic link"),
                });
            }
            Err(e) => return Err(failed("open", path, e)),
        };
        let st = fstat(fd.as_fd()).map_err(|e| failed("stat", path, e))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(SandboxError::InvalidRequest {
                reason: format!("path {path:?} is not a regular file"),
            });
        }
        let size = usize::try_from(st.st_size).unwrap_or(usize::MAX);
        let mut buf = Vec::with_capacity(size.min(max_bytes).saturating_add(1));
        let limit = u64::try_from(max_bytes)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        std::fs::File::from(fd)
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| failed("read", path, Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        let truncated = buf.len() > max_bytes;
        buf.truncate(max_bytes);
        Ok(FileContents {
            bytes: Bytes::from(buf),
            truncated,
        })
    }

    /// Replaces whatever is at `path` (a tree, a file, a symlink — never followed) with an
    /// empty directory owned by the sandbox uid. The old tree is renamed aside in one step,
    /// then removed (without following links); what a still-running process keeps adding to it
    /// is left behind under a hidden name, with a warning.
    pub(super) fn reset_dir(&self, path: &str) -> Result<(), SandboxError> {
        let (base, comps) = self.resolve(path)?;
        let (name, dirs) = comps
            .split_last()
            .ok_or_else(|| failed("reset", path, Errno::EINVAL))?;
        let _owner = AsOwner::enter(self.owner)?;
        let dir = self.walk(base, dirs, &Walk::Replace, path)?;
        let aside = format!(".oe-old-{}", uuid::Uuid::new_v4().simple());
        let moved = match renameat(dir.as_fd(), *name, dir.as_fd(), aside.as_str()) {
            Ok(()) => true,
            Err(Errno::ENOENT) => false,
            Err(e) => return Err(failed("move away", path, e)),
        };
        Self::mkdir(&dir, name, path)?;
        if moved && let Err(e) = remove_at(&dir, OsStr::new(&aside)) {
            tracing::warn!(path, error = %e, "the old tree of a reset directory was not removed entirely");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert_eq!(
            components("/home/user/./a//b").unwrap(),
            ["home", "user", "a", "b"]
        );
        assert!(components("home/user").is_err());
        assert!(components("/home/user/../x").is_err());
        assert!(components("/tmp/a\0b").is_err());
        let roots = Roots {
            mounts: Mutex::new(None),
            work_dir: vec!["home".into(), "user".into()],
            owner: None,
        };
        assert_eq!(
            roots.resolve("/home/user/a").unwrap(),
            (Base::Work, vec!["a"])
        );
        assert_eq!(
            roots.resolve("/tmp/a/b").unwrap(),
            (Base::Tmp, vec!["a", "b"])
        );
        assert!(roots.resolve("/home/user").is_err());
        assert!(roots.resolve("/etc/passwd").is_err());
        assert!(roots.resolve("/home/userx/a").is_err());
    }
}
