//! File operations on a sandbox's writable directories, done on the host side (outside the
//! agent's reach, no round trip through `sbx`).
//!
//! In-sandbox paths under the work dir map to `<E>/home`, under `/tmp` to `<E>/tmp`; anything
//! else, and any `..`, is rejected. Every step is relative to a directory descriptor and opens
//! with `O_NOFOLLOW`, so a symlink the agent planted is never followed: writes and reads refuse
//! it, `reset_dir` removes it. Writes are atomic (temp file, chmod, chown, rename) and owned by
//! the sandbox uid. Blocking: the sandbox calls these on blocking threads.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, unlinkat};

use super::tree::open_dir;
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

/// A sandbox's writable directories on the host.
#[derive(Debug, Clone)]
pub(super) struct Roots {
    /// `<E>/home`, mounted at the work dir.
    pub home: PathBuf,
    /// `<E>/tmp`, mounted at `/tmp`.
    pub tmp: PathBuf,
    /// `<E>/trash`, where `reset_dir` moves old trees (removed with the sandbox).
    pub trash: PathBuf,
    /// The work dir's components.
    pub work_dir: Vec<String>,
    /// Owner of what we create (the sandbox's host uid), `None` = ours.
    pub owner: Option<(Uid, Gid)>,
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
    /// The host base directory and the components below it; at least one component.
    fn resolve<'p>(&self, path: &'p str) -> Result<(PathBuf, Vec<&'p str>), SandboxError> {
        let comps = components(path)?;
        let n = self.work_dir.len();
        let (base, rest) =
            if comps.len() >= n && comps[..n].iter().zip(&self.work_dir).all(|(a, b)| a == b) {
                (self.home.clone(), comps[n..].to_vec())
            } else if comps.first() == Some(&"tmp") {
                (self.tmp.clone(), comps[1..].to_vec())
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

    fn mkdir(&self, dir: &OwnedFd, name: &str, path: &str) -> Result<(), SandboxError> {
        match mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(failed("mkdir", path, e)),
        }
        if let Some((uid, gid)) = self.owner {
            nix::unistd::fchownat(
                dir.as_fd(),
                name,
                Some(uid),
                Some(gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| failed("chown", path, e))?;
        }
        Ok(())
    }

    /// Opens the directory holding the last component, walking `dirs` without following links.
    fn walk(
        &self,
        base: &PathBuf,
        dirs: &[&str],
        how: &Walk,
        path: &str,
    ) -> Result<OwnedFd, SandboxError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut cur =
            nix::fcntl::open(base, flags, Mode::empty()).map_err(|_| SandboxError::Gone {
                reason: "the sandbox directory is gone".to_owned(),
            })?;
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
                    self.mkdir(&cur, name, path)?;
                    open_dir(&cur, OsStr::new(name)).map_err(|e| failed("open", path, e))?
                }
                (Err(e), _) => return Err(failed("open", path, e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Writes `data` atomically with `mode` (permission bits only), parents created.
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
        let dir = self.walk(&base, dirs, &Walk::Create, path)?;
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
            if let Some((uid, gid)) = self.owner {
                nix::unistd::fchown(file.as_fd(), Some(uid), Some(gid))
                    .map_err(|e| failed("chown", path, e))?;
            }
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

    /// Reads up to `max_bytes` of a regular file; never follows a symlink.
    pub(super) fn read_file(
        &self,
        path: &str,
        max_bytes: usize,
    ) -> Result<FileContents, SandboxError> {
        let (base, comps) = self.resolve(path)?;
        let (name, dirs) = comps
            .split_last()
            .ok_or_else(|| failed("read", path, Errno::EINVAL))?;
        let dir = self.walk(&base, dirs, &Walk::Existing, path)?;
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
    /// empty directory owned by the sandbox uid. The old tree goes to the trash in one rename.
    pub(super) fn reset_dir(&self, path: &str) -> Result<(), SandboxError> {
        let (base, comps) = self.resolve(path)?;
        let (name, dirs) = comps
            .split_last()
            .ok_or_else(|| failed("reset", path, Errno::EINVAL))?;
        let dir = self.walk(&base, dirs, &Walk::Replace, path)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let trash = nix::fcntl::open(&self.trash, flags, Mode::empty())
            .map_err(|e| failed("open trash for", path, e))?;
        let dest = format!("{}", uuid::Uuid::new_v4().simple());
        match renameat(dir.as_fd(), *name, trash.as_fd(), dest.as_str()) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(failed("move away", path, e)),
        }
        self.mkdir(&dir, name, path)
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
            home: "/h".into(),
            tmp: "/t".into(),
            trash: "/x".into(),
            work_dir: vec!["home".into(), "user".into()],
            owner: None,
        };
        assert_eq!(
            roots.resolve("/home/user/a").unwrap(),
            (PathBuf::from("/h"), vec!["a"])
        );
        assert_eq!(
            roots.resolve("/tmp/a/b").unwrap(),
            (PathBuf::from("/t"), vec!["a", "b"])
        );
        assert!(roots.resolve("/home/user").is_err());
        assert!(roots.resolve("/etc/passwd").is_err());
        assert!(roots.resolve("/home/userx/a").is_err());
    }
}
