//! The bwrap argument list of one sandbox (`docs/sandbox-local.md`) and
//! the files of its own `/etc`. bwrap reads the options from a descriptor (`--args FD`), so
//! `--setenv` values do not appear in `/proc/1/cmdline` inside; only the command
//! (`/proc/self/fd/N init` with descriptor numbers and limits) is on bwrap's own command line,
//! because bwrap takes the command from there only.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::RawFd;
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

/// The synthetic files of a sandbox's own `/etc` (a read-only tmpfs): its users and groups
/// (no host accounts), hosts, hostname, name-service switch and resolver. `resolv` is the
/// resolver configuration (the host's for an egress sandbox), `None` = no network.
pub(super) fn etc_files(work_dir: &str, resolv: Option<&str>) -> Vec<(&'static str, String)> {
    vec![
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
        ("hostname", "sandbox\n".to_owned()),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n\
             protocols: files\nservices: files\nethers: files\nrpc: files\n"
                .to_owned(),
        ),
        (
            "resolv.conf",
            resolv.map_or_else(
                || "# this sandbox has no network\n".to_owned(),
                str::to_owned,
            ),
        ),
    ]
}

/// Entries of the root filesystem's `/etc` that sandboxes see (read-only), each only where it
/// exists: what common tools need and nothing that describes the host or holds a secret.
pub(super) const ETC_ALLOW: &[&str] = &[
    "alternatives",
    "bash.bashrc",
    "ca-certificates.conf",
    "debian_version",
    "fonts",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "lsb-release",
    "magic",
    "magic.mime",
    "manpath.config",
    "mime.types",
    "mtab",
    "nanorc",
    "netconfig",
    "networks",
    "os-release",
    "perl",
    "pki/ca-trust/extracted",
    "pki/tls/certs",
    "pki/tls/openssl.cnf",
    "profile",
    "profile.d",
    "protocols",
    "rpc",
    "services",
    "shells",
    "ssl/certs",
    "ssl/openssl.cnf",
    "terminfo",
    "timezone",
    "vim",
];

/// Name prefixes of further allowed top-level `/etc` entries (versioned directories:
/// `python3.11`, `java-17-openjdk`).
pub(super) const ETC_ALLOW_PREFIXES: &[&str] = &["python3", "java-"];

/// How an allowed `/etc` entry appears in sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EtcEntry {
    /// A file or directory: bound read-only.
    Bind,
    /// A symlink (`localtime -> /usr/share/zoneinfo/…`): the same symlink.
    Symlink(PathBuf),
}

/// The allowed entries present in `rootfs`'s `/etc` (once, at backend creation), sorted.
pub(super) fn etc_entries(rootfs: &Path) -> Vec<(String, EtcEntry)> {
    let etc = rootfs.join("etc");
    let mut names: Vec<String> = ETC_ALLOW.iter().map(|n| (*n).to_owned()).collect();
    names.extend(
        std::fs::read_dir(&etc)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| ETC_ALLOW_PREFIXES.iter().any(|p| n.starts_with(p))),
    );
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let path = etc.join(&name);
            let meta = std::fs::symlink_metadata(&path).ok()?;
            let entry = if meta.file_type().is_symlink() {
                EtcEntry::Symlink(std::fs::read_link(&path).ok()?)
            } else if meta.is_file() || meta.is_dir() {
                EtcEntry::Bind
            } else {
                return None;
            };
            Some((name, entry))
        })
        .collect()
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

/// The character devices a sandbox gets, bound from the host's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The links of `/dev` (target, link).
const DEV_LINKS: [(&str, &str); 4] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// Sizes of a sandbox's tmpfs mounts, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sizes {
    /// The work dir.
    pub work_dir: u64,
    /// `/tmp` (and `/var/tmp`, `/run`, `/dev/shm`, links into it).
    pub tmp: u64,
}

/// What the argument list is built from.
#[derive(Debug)]
pub(super) struct Layout<'a> {
    /// Root filesystem of the system directories.
    pub rootfs: &'a Path,
    /// Its top-level system directories ([`sys_dirs`]).
    pub sys_dirs: &'a [(&'static str, SysDir)],
    /// Its allowed `/etc` entries ([`etc_entries`]).
    pub etc: &'a [(String, EtcEntry)],
    /// The work dir inside.
    pub work_dir: &'a str,
    /// Extra environment (the spec's).
    pub env: &'a BTreeMap<String, String>,
    /// Whether the sandbox keeps the host network.
    pub egress: bool,
    /// Sizes of the writable mounts.
    pub sizes: Sizes,
}

/// Descriptors bwrap inherits, by number.
#[derive(Debug)]
pub(super) struct Fds<'a> {
    /// Write end of the pipe bwrap reports its child's host pid on (`--info-fd`).
    pub info: RawFd,
    /// The sealed `env-sbx` memfd, executed as the supervisor.
    pub sbx: RawFd,
    /// The synthetic `/etc` files: (memfd, name in `/etc`).
    pub etc: &'a [(RawFd, &'static str)],
}

/// bwrap's options (for `--args`) and its command line after them (`--`, the supervisor and
/// `sbx_args`). No option names a path under the sandbox root or the install directory: the
/// writable places are tmpfs mounts, `/etc`'s own files are copied from descriptors and the
/// supervisor runs from its memfd (`/proc/self/fd/N`), so `/proc/self/mountinfo` inside shows
/// no host path but the root filesystem's system directories.
pub(super) fn bwrap_args(
    l: &Layout<'_>,
    fds: &Fds<'_>,
    sbx_args: &[String],
) -> (Vec<OsString>, Vec<OsString>) {
    let mut a: Vec<OsString> = Vec::with_capacity(160);
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
        "--info-fd",
        &fds.info.to_string(),
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
    let mut three = |flag: &str, src: OsString, dest: &str| {
        a.push(flag.into());
        a.push(src);
        a.push(dest.into());
    };
    three("--ro-bind", sys("usr"), "/usr");
    for (name, kind) in l.sys_dirs {
        match kind {
            SysDir::Dir => three("--ro-bind-try", sys(name), &format!("/{name}")),
            SysDir::Symlink(target) => three("--symlink", path(target), &format!("/{name}")),
            SysDir::Missing => {}
        }
    }
    // Every mount of a sandbox is a superblock, and with per-sandbox memory cgroups the
    // kernel keeps per-cgroup state for every superblock on the machine: the cost per
    // sandbox grows with the count of both (docs/scale.md). So only the work dir, `/tmp` and
    // `/proc` are mounts of their own; `/etc` and `/dev` are directories of bwrap's root tmpfs
    // (read-only at the end) holding files and binds, and `/var/tmp`, `/run`, `/dev/shm` are
    // links into `/tmp`.
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["--perms", "0755", "--dir", "/etc"]);
    for (fd, name) in fds.etc {
        push(&[
            "--perms",
            "0644",
            "--file",
            &fd.to_string(),
            &format!("/etc/{name}"),
        ]);
    }
    let mut three = |flag: &str, src: OsString, dest: &str| {
        a.push(flag.into());
        a.push(src);
        a.push(dest.into());
    };
    for (name, entry) in l.etc {
        let dest = format!("/etc/{name}");
        match entry {
            EtcEntry::Bind => three("--ro-bind-try", sys(&format!("etc/{name}")), &dest),
            EtcEntry::Symlink(target) => three("--symlink", path(target), &dest),
        }
    }
    // /dev: the usual character devices bound from the host, the standard links; no
    // pseudo-terminals.
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["--perms", "0755", "--dir", "/dev"]);
    for dev in DEVICES {
        let node = format!("/dev/{dev}");
        push(&["--dev-bind", &node, &node]);
    }
    for (target, link) in DEV_LINKS {
        push(&["--symlink", target, link]);
    }
    push(&["--proc", "/proc"]);
    let size = |n: u64| n.to_string();
    push(&[
        "--perms",
        "0755",
        "--size",
        &size(l.sizes.work_dir),
        "--tmpfs",
        l.work_dir,
    ]);
    push(&[
        "--perms",
        "1777",
        "--size",
        &size(l.sizes.tmp),
        "--tmpfs",
        "/tmp",
    ]);
    push(&["--dir", "/var"]);
    for link in ["/var/tmp", "/run", "/dev/shm"] {
        push(&["--symlink", "/tmp", link]);
    }
    // The root itself (bwrap's tmpfs holding the mount points) read-only too.
    push(&["--remount-ro", "/", "--chdir", l.work_dir]);
    let mut command: Vec<OsString> = vec!["--".into(), format!("/proc/self/fd/{}", fds.sbx).into()];
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
    fn argv_has_the_hardening_the_limits_and_no_host_path() {
        let env = BTreeMap::from([("TASK".to_owned(), "x".to_owned())]);
        let dirs = [
            ("bin", SysDir::Symlink("usr/bin".into())),
            ("lib64", SysDir::Dir),
            ("lib32", SysDir::Missing),
        ];
        let etc = [
            ("ssl/certs".to_owned(), EtcEntry::Bind),
            (
                "localtime".to_owned(),
                EtcEntry::Symlink("/usr/share/zoneinfo/UTC".into()),
            ),
        ];
        let l = Layout {
            rootfs: Path::new("/"),
            sys_dirs: &dirs,
            etc: &etc,
            work_dir: "/home/user",
            env: &env,
            egress: false,
            sizes: Sizes {
                work_dir: 100,
                tmp: 200,
            },
        };
        let fds = Fds {
            info: 5,
            sbx: 6,
            etc: &[(7, "passwd")],
        };
        let (options, command) = bwrap_args(&l, &fds, &["init".to_owned()]);
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
            "--info-fd 5",
            "--setenv TASK x",
            "--setenv HOME /home/user",
            "--ro-bind-try /lib64 /lib64",
            "--symlink usr/bin /bin",
            "--perms 0755 --dir /etc --perms 0644 --file 7 /etc/passwd",
            "--ro-bind-try /etc/ssl/certs /etc/ssl/certs",
            "--symlink /usr/share/zoneinfo/UTC /etc/localtime",
            "--dev-bind /dev/null /dev/null",
            "--symlink /proc/self/fd /dev/fd",
            "--perms 0755 --size 100 --tmpfs /home/user",
            "--perms 1777 --size 200 --tmpfs /tmp",
            "--symlink /tmp /var/tmp --symlink /tmp /run --symlink /tmp /dev/shm",
            "--remount-ro /",
            "-- /proc/self/fd/6 init",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in {joined}");
        }
        // Three mounts with a superblock of their own besides bwrap's root: the work dir,
        // /tmp and /proc (docs/scale.md).
        let fresh = args
            .iter()
            .filter(|a| ["--tmpfs", "--proc", "--dev", "--mqueue"].contains(&a.as_str()))
            .count();
        assert_eq!(fresh, 3, "{joined}");
        assert!(!args.iter().any(|a| a == "--bind"), "{joined}");
        let (egress, _) = bwrap_args(&Layout { egress: true, ..l }, &fds, &[]);
        assert!(!egress.iter().any(|a| a == "--unshare-net"));
        assert!(!joined.contains("lib32"));
        assert_eq!(nul_separated(&["a".into(), "bc".into()]), b"a\0bc\0");
    }

    #[test]
    fn etc_has_no_host_account_and_only_allowed_host_entries() {
        let files = etc_files("/w", None);
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "passwd",
                "group",
                "hosts",
                "hostname",
                "nsswitch.conf",
                "resolv.conf"
            ]
        );
        assert!(files[0].1.contains("user:x:1000:1000:user:/w:/bin/bash"));
        let root = std::env::temp_dir().join(format!("oe-etc-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
        std::fs::create_dir_all(root.join("etc/python3.11")).unwrap();
        std::fs::create_dir_all(root.join("etc/ssh")).unwrap();
        std::fs::write(root.join("etc/shadow"), b"x").unwrap();
        std::fs::write(root.join("etc/ld.so.cache"), b"x").unwrap();
        std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", root.join("etc/localtime")).unwrap();
        let got = etc_entries(&root);
        assert_eq!(
            got,
            [
                ("ld.so.cache".to_owned(), EtcEntry::Bind),
                (
                    "localtime".to_owned(),
                    EtcEntry::Symlink("/usr/share/zoneinfo/UTC".into())
                ),
                ("python3.11".to_owned(), EtcEntry::Bind),
                ("ssl/certs".to_owned(), EtcEntry::Bind),
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
