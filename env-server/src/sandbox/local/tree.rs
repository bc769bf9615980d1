//! Removing a directory tree the agent may have shaped: relative to directory descriptors,
//! never following a symlink, without recursion and holding one directory open at a time
//! (climbing back with `..`), so neither a deep tree nor a planted link can hurt the server.
//! On a tree a sandbox process still changes (`reset_dir`'s old tree) it stays safe but may
//! not remove everything. Blocking.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Opens directory `name` in `dir` without following a symlink.
pub(super) fn open_dir<Fd: AsFd>(dir: Fd, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Err(Errno::EACCES) if !nix::unistd::geteuid().is_root() => {
            // The agent (our own uid) took the permissions away: give them back, through a
            // descriptor of exactly that directory (never a path that could be swapped).
            let path = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = openat(dir.as_fd(), name, path, Mode::empty())?;
            let magic = format!("/proc/self/fd/{}", fd.as_raw_fd());
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                magic.as_str(),
                Mode::from_bits_truncate(0o700),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
            openat(dir.as_fd(), name, flags, Mode::empty())
        }
        other => other,
    }
}

fn ignore_missing(r: nix::Result<()>) -> nix::Result<()> {
    match r {
        Err(Errno::ENOENT) => Ok(()),
        other => other,
    }
}

/// Unlinks every non-directory entry of `dir`; returns the names of its subdirectories.
fn clear_files(dir: &OwnedFd) -> nix::Result<Vec<OsString>> {
    if !nix::unistd::geteuid().is_root() {
        let _ = nix::sys::stat::fchmod(dir.as_fd(), Mode::from_bits_truncate(0o700));
    }
    let mut listing = Dir::openat(
        dir.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut entries = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        entries.push((name.to_owned(), entry.file_type()));
    }
    let mut subdirs = Vec::new();
    for (name, kind) in entries {
        let is_dir = match kind {
            Some(Type::Directory) => true,
            Some(_) => false,
            None => match fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            },
        };
        if is_dir {
            subdirs.push(name);
        } else {
            ignore_missing(unlinkat(
                dir.as_fd(),
                name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            ))?;
        }
    }
    Ok(subdirs)
}

/// Removes `name` in `parent` — a file, a symlink (not its target) or a whole tree; absent is
/// fine.
pub(super) fn remove_at(parent: &OwnedFd, name: &OsStr) -> nix::Result<()> {
    let st = match fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return ignore_missing(unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir));
    }
    let mut cur = open_dir(parent, name)?;
    // (name in its parent, subdirectories still to remove) from the top down to `cur`.
    let mut stack = vec![(name.to_owned(), clear_files(&cur)?)];
    loop {
        let Some((_, pending)) = stack.last_mut() else {
            return Ok(());
        };
        if let Some(sub) = pending.pop() {
            match open_dir(&cur, &sub) {
                Ok(fd) => {
                    cur = fd;
                    let subs = clear_files(&cur)?;
                    stack.push((sub, subs));
                }
                Err(Errno::ENOENT) => {}
                // Not a directory after all: unlink whatever it is.
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    ignore_missing(unlinkat(
                        cur.as_fd(),
                        sub.as_os_str(),
                        UnlinkatFlags::NoRemoveDir,
                    ))?;
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        let Some((done, _)) = stack.pop() else {
            return Ok(());
        };
        if stack.is_empty() {
            drop(cur);
            return ignore_missing(unlinkat(
                parent.as_fd(),
                done.as_os_str(),
                UnlinkatFlags::RemoveDir,
            ));
        }
        cur = openat(
            cur.as_fd(),
            "..",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        ignore_missing(unlinkat(
            cur.as_fd(),
            done.as_os_str(),
            UnlinkatFlags::RemoveDir,
        ))?;
    }
}

/// Removes the tree at host path `path` (its last component is not followed).
pub(super) fn remove_path(path: &std::path::Path) -> nix::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Errno::EINVAL);
    };
    let parent = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    remove_at(&parent, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_deep_trees_and_never_follows_links() {
        let base = std::env::temp_dir().join(format!("oe-tree-{}", uuid::Uuid::new_v4()));
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let top = base.join("top");
        let mut deep = top.clone();
        for i in 0..300 {
            deep.push(format!("d{i}"));
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, deep.join("link")).unwrap();
        for i in 0..50 {
            std::fs::create_dir(top.join(format!("wide{i}"))).unwrap();
        }
        remove_path(&top).unwrap();
        assert!(!top.exists());
        assert!(outside.join("keep").exists());
        remove_path(&top).unwrap(); // absent is fine
        std::os::unix::fs::symlink(&outside, base.join("ln")).unwrap();
        remove_path(&base.join("ln")).unwrap();
        assert!(outside.join("keep").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
