//! The bwrap argument list of one sandbox (`SANDBOXES.md` §2.2) and the synthetic account
//! files it mounts. bwrap reads the options from a descriptor (`--args FD`), so neither host
//! paths nor `--setenv` values appear in `/proc/1/cmdline` inside; only the command
//! (`/.openenv/sbx init` with descriptor numbers and limits) is on bwrap's own command line,
//! because bwrap takes the command from there only.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The fixed environment of every sandbox process (before `SandboxSpec::env`).
pub(super) fn base_env(work_dir: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HOME", work_dir.to_owned()),
        ("USER", "user".to_owned()),
        ("LOGNAME", "user".to_owned()),
        ("SHELL", "/bin/bash".to_owned()),
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("LANG", "C.UTF-8".to_owned()),
        ("TERM", "dumb".to_owned()),
        ("TMPDIR", "/tmp".to_owned()),
    ]
}

/// `/etc/passwd`, `/etc/group` and `/etc/hosts` of a sandbox: no host accounts.
pub(super) fn etc_files(work_dir: &str) -> [(&'static str, String); 3] {
    [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\nuser:x:1000:1000:user:{work_dir}:/bin/bash\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "group",
            "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n".to_owned(),
        ),
        (
            "hosts",
            "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n".to_owned(),
        ),
    ]
}

/// How a top-level system directory of the root filesystem appears in sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SysDir {
    /// A directory: bound read-only.
    Dir,
    /// A symlink (merged `/usr`: `bin -> usr/bin`): the same symlink, no mount needed.
    Symlink(PathBuf),
    /// Absent: nothing.
    Missing,
}

/// The top-level directories besides `/usr` and `/etc` that sandboxes get.
pub(super) const SYS_DIRS: [&str; 5] = ["bin", "sbin", "lib", "lib64", "lib32"];

/// Looks at `rootfs`'s top-level system directories (once, at backend creation).
pub(super) fn sys_dirs(rootfs: &Path) -> Vec<(&'static str, SysDir)> {
    SYS_DIRS
        .iter()
        .map(|&name| {
            let path = rootfs.join(name);
            let kind = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&path) {
                    Ok(target) => SysDir::Symlink(target),
                    Err(_) => SysDir::Missing,
                },
                Ok(m) if m.is_dir() => SysDir::Dir,
                _ => SysDir::Missing,
            };
            (name, kind)
        })
        .collect()
}

/// What the argument list is built from.
#[derive(Debug)]
pub(super) struct Layout<'a> {
    /// Root filesystem of the system directories.
    pub rootfs: &'a Path,
    /// Its top-level system directories ([`sys_dirs`]).
    pub sys_dirs: &'a [(&'static str, SysDir)],
    /// The episode directory `<E>` (holds `home`, `tmp`, `etc`).
    pub dir: &'a Path,
    /// The supervisor binary on the host.
    pub sbx: &'a Path,
    /// The work dir inside.
    pub work_dir: &'a str,
    /// Extra environment (the spec's).
    pub env: &'a BTreeMap<String, String>,
    /// Whether the sandbox keeps the host network.
    pub egress: bool,
}

/// bwrap's options (for `--args`) and its command line after them (`--`, the supervisor and
/// `sbx_args`).
pub(super) fn bwrap_args(l: &Layout<'_>, sbx_args: &[String]) -> (Vec<OsString>, Vec<OsString>) {
    let mut a: Vec<OsString> = Vec::with_capacity(128);
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["--unshare-user", "--uid", "1000", "--gid", "1000"]);
    push(&[
        "--unshare-pid",
        // `sbx` is the namespace's init (it reaps orphans): no bwrap init process per sandbox.
        "--as-pid-1",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]);
    if !l.egress {
        push(&["--unshare-net"]);
    }
    push(&[
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]);
    push(&["--clearenv"]);
    let mut env: BTreeMap<&str, &str> = BTreeMap::new();
    let base = base_env(l.work_dir);
    for (k, v) in &base {
        env.insert(k, v);
    }
    for (k, v) in l.env {
        env.insert(k, v);
    }
    for (k, v) in env {
        push(&["--setenv", k, v]);
    }
    let path = |p: &Path| p.as_os_str().to_owned();
    let sys = |name: &str| path(&l.rootfs.join(name));
    let mut bind = |flag: &str, src: OsString, dest: &str| {
        a.push(flag.into());
        a.push(src);
        a.push(dest.into());
    };
    bind("--ro-bind", sys("usr"), "/usr");
    for (name, kind) in l.sys_dirs {
        match kind {
            SysDir::Dir => bind("--ro-bind-try", sys(name), &format!("/{name}")),
            SysDir::Symlink(target) => bind("--symlink", path(target), &format!("/{name}")),
            SysDir::Missing => {}
        }
    }
    bind("--ro-bind", sys("etc"), "/etc");
    for f in ["passwd", "group", "hosts"] {
        bind(
            "--ro-bind",
            path(&l.dir.join("etc").join(f)),
            &format!("/etc/{f}"),
        );
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&[
        "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run", "--dir", "/var", "--tmpfs",
        "/var/tmp",
    ]);
    let mut bind = |flag: &str, src: OsString, dest: &str| {
        a.push(flag.into());
        a.push(src);
        a.push(dest.into());
    };
    bind("--bind", path(&l.dir.join("home")), l.work_dir);
    bind("--bind", path(&l.dir.join("tmp")), "/tmp");
    bind("--ro-bind", path(l.sbx), "/.openenv/sbx");
    // The root itself (bwrap's tmpfs holding the mount points) read-only too.
    a.extend(["--remount-ro".into(), "/".into()]);
    a.push("--chdir".into());
    a.push(l.work_dir.into());
    let mut command: Vec<OsString> = vec!["--".into(), "/.openenv/sbx".into()];
    command.extend(sbx_args.iter().map(OsString::from));
    (a, command)
}

/// The list as bwrap's `--args` reads it: NUL-terminated strings.
pub(super) fn nul_separated(args: &[OsString]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for arg in args {
        out.extend_from_slice(arg.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_has_the_hardening_and_no_network_by_default() {
        let env = BTreeMap::from([("TASK".to_owned(), "x".to_owned())]);
        let dirs = [
            ("bin", SysDir::Symlink("usr/bin".into())),
            ("lib64", SysDir::Dir),
            ("lib32", SysDir::Missing),
        ];
        let l = Layout {
            rootfs: Path::new("/"),
            sys_dirs: &dirs,
            dir: Path::new("/tmp/openenv-rs-a-1"),
            sbx: Path::new("/opt/env-sbx"),
            work_dir: "/home/user",
            env: &env,
            egress: false,
        };
        let (options, command) = bwrap_args(&l, &["init".to_owned()]);
        let args: Vec<String> = options
            .into_iter()
            .chain(command)
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        for needle in [
            "--unshare-user --uid 1000 --gid 1000",
            "--unshare-net",
            "--unshare-pid --as-pid-1",
            "--clearenv",
            "--setenv TASK x",
            "--setenv HOME /home/user",
            "--ro-bind-try /lib64 /lib64",
            "--symlink usr/bin /bin",
            "--ro-bind /tmp/openenv-rs-a-1/etc/passwd /etc/passwd",
            "--bind /tmp/openenv-rs-a-1/home /home/user",
            "--ro-bind /opt/env-sbx /.openenv/sbx",
            "-- /.openenv/sbx init",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in {joined}");
        }
        let (egress, _) = bwrap_args(&Layout { egress: true, ..l }, &[]);
        assert!(!egress.iter().any(|a| a == "--unshare-net"));
        assert!(!joined.contains("lib32"));
        assert_eq!(nul_separated(&["a".into(), "bc".into()]), b"a\0bc\0");
    }
}
