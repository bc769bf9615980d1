//! Child processes and `/proc`: the servers the bench starts (killed by PID when their guard
//! drops, also on error paths), their CPU time (`schedstat`), RSS and thread count, the
//! machine description, and the open-file limit.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// A child process that is killed (SIGKILL, by its PID) and reaped when the guard drops.
pub(crate) struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    fn new(child: Child, name: &str) -> Self {
        Self {
            child,
            name: name.to_owned(),
        }
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills and reaps the child now (the same as dropping the guard).
    pub(crate) fn stop(self) {
        drop(self);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // `Child::kill` sends SIGKILL to this PID only; an already exited child is fine.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        crate::progress(&format!("stopped {} (pid {})", self.name, self.child.id()));
    }
}

/// A server the bench started: its guard, PID and the address it printed.
pub(crate) struct ServerProc {
    /// Kills the server on drop.
    pub(crate) guard: ChildGuard,
    /// `127.0.0.1:<port>` from the ready line.
    pub(crate) addr: String,
    /// Its stderr, for the error messages.
    pub(crate) log: PathBuf,
}

impl ServerProc {
    /// `http://<addr>`, the base URL clients take.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's PID (the process whose threads are measured).
    pub(crate) fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

/// Starts `command` (stdout piped, stderr to `log`) and waits up to `ready_within` for its
/// ready line `… listening on <addr>`. Its stdout is drained afterwards so it never blocks.
pub(crate) fn spawn_server(
    mut command: Command,
    name: &str,
    log: &Path,
    ready_within: Duration,
) -> anyhow::Result<ServerProc> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let stderr = std::fs::File::create(log)
        .with_context(|| format!("cannot create log file {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {name}: {command:?}"))?;
    let stdout = child.stdout.take();
    let guard = ChildGuard::new(child, name);
    let Some(stdout) = stdout else {
        bail!("{name}: no stdout pipe");
    };
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::Builder::new()
        .name(format!("{name}-stdout"))
        .spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some((_, addr)) = line.split_once(" listening on ") {
                    sent = tx.send(addr.trim().to_owned()).is_ok();
                }
            }
        })
        .context("cannot start the stdout reader thread")?;
    let addr = match rx.recv_timeout(ready_within) {
        Ok(addr) => addr,
        Err(mpsc::RecvTimeoutError::Timeout) => bail!(
            "{name} printed no ready line within {ready_within:?}; its log {}:\n{}",
            log.display(),
            log_tail(log)
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
            "{name} exited before it was ready; its log {}:\n{}",
            log.display(),
            log_tail(log)
        ),
    };
    crate::progress(&format!("started {name} (pid {}) on {addr}", guard.pid()));
    Ok(ServerProc {
        guard,
        addr,
        log: log.to_owned(),
    })
}

/// Runs `command` to its end with stdout captured, killing it after `limit`; returns stdout.
pub(crate) fn run_captured(
    mut command: Command,
    name: &str,
    log: &Path,
    limit: Duration,
) -> anyhow::Result<String> {
    let stderr = std::fs::File::create(log)
        .with_context(|| format!("cannot create log file {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {name}: {command:?}"))?;
    let stdout = child.stdout.take();
    let mut guard = ChildGuard::new(child, name);
    let Some(mut stdout) = stdout else {
        bail!("{name}: no stdout pipe");
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<String>>();
    std::thread::Builder::new()
        .name(format!("{name}-stdout"))
        .spawn(move || {
            let mut out = String::new();
            let result = stdout.read_to_string(&mut out).map(|_| out);
            let _ = tx.send(result);
        })
        .context("cannot start the stdout reader thread")?;
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.with_context(|| format!("cannot read {name}'s output"))?,
        Err(_) => bail!(
            "{name} did not finish within {limit:?}; its log {}:\n{}",
            log.display(),
            log_tail(log)
        ),
    };
    let status = guard.child.wait().context("wait")?;
    if !status.success() {
        bail!(
            "{name} failed ({status}); its log {}:\n{}",
            log.display(),
            log_tail(log)
        );
    }
    Ok(out)
}

/// The last lines of a log file, for error messages.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    lines[start..].join("\n")
}

/// Nanoseconds on CPU of every thread of a process, by thread id (`/proc/<pid>/task/*/schedstat`,
/// field 1).
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuSnapshot(HashMap<u32, u64>);

impl CpuSnapshot {
    /// Reads the snapshot of `pid` now.
    pub(crate) fn take(pid: u32) -> anyhow::Result<Self> {
        Self::take_path(&format!("/proc/{pid}/task"))
    }

    /// The snapshot of this process (the load generator).
    pub(crate) fn own() -> anyhow::Result<Self> {
        Self::take_path("/proc/self/task")
    }

    fn take_path(dir: &str) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {dir}"))?;
        for entry in entries.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A thread may end between the listing and the read: skip it.
            let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
                continue;
            };
            if let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse().ok()) {
                map.insert(tid, ns);
            }
        }
        if map.is_empty() {
            bail!("no readable schedstat under {dir}");
        }
        Ok(Self(map))
    }

    /// CPU nanoseconds spent since `before`: threads born in between count whole; threads that
    /// ended in between are lost (none do in the servers measured here).
    pub(crate) fn since(&self, before: &Self) -> u64 {
        self.0
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(before.0.get(tid).copied().unwrap_or(0)))
            .sum()
    }
}

/// Resident memory and thread count of a process (`/proc/<pid>/status`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemSample {
    /// VmRSS in KiB.
    pub(crate) rss_kib: u64,
    /// Threads.
    pub(crate) threads: u64,
}

impl MemSample {
    /// Reads `pid`'s VmRSS and Threads now.
    pub(crate) fn take(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            threads: field("Threads:")?,
        })
    }

    /// RSS in MiB.
    pub(crate) fn rss_mib(self) -> f64 {
        kib_to_mib(self.rss_kib)
    }
}

pub(crate) fn kib_to_mib(kib: u64) -> f64 {
    u64_f64(kib) / 1024.0
}

/// `u64` → `f64` for reporting (exact below 2^53, which every count here is).
#[allow(clippy::cast_precision_loss)]
pub(crate) fn u64_f64(v: u64) -> f64 {
    v as f64
}

/// The machine, for the report header.
pub(crate) struct Machine {
    /// `nproc` (CPUs this process may use).
    pub(crate) nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub(crate) model: String,
    /// Kernel release.
    pub(crate) kernel: String,
    /// MemTotal in MiB.
    pub(crate) mem_mib: f64,
}

impl Machine {
    pub(crate) fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Self {
            nproc: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            model,
            kernel,
            mem_mib: kib_to_mib(mem_kib),
        }
    }
}

/// The 1/5/15-minute load averages (`/proc/loadavg`).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Raises this process's open-file limit: both limits to `fs.nr_open` where allowed (root;
/// the servers it starts inherit it), else the soft limit to the hard one; returns the new
/// soft limit.
pub(crate) fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(hard);
    if nr_open > hard && setrlimit(Resource::RLIMIT_NOFILE, nr_open, nr_open).is_ok() {
        return Ok(nr_open);
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
    }
    Ok(hard)
}

/// The repository root, this executable's directory, and the log directory `log_name` beside
/// the executable (created).
pub(crate) fn bench_dirs(log_name: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has no parent directory")?
        .to_owned();
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let bin_dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_owned();
    let log_dir = bin_dir.join(log_name);
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    Ok((repo, bin_dir, log_dir))
}

/// The short commit of `repo`'s HEAD, marked when the tracked files have uncommitted changes;
/// `unknown` outside a git checkout.
pub(crate) fn git_commit(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{head} (with uncommitted changes)"),
        _ => head,
    }
}

/// Runs `cargo build` of `bins` in `packages` with the profile this executable was built with
/// (the name of its directory: `release`, `debug` or a custom profile), a no-op when they are
/// fresh, so a bench never measures a stale binary.
pub(crate) fn cargo_build(
    repo: &Path,
    bin_dir: &Path,
    packages: &[&str],
    bins: &[&str],
) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(repo).args(["build", "--quiet"]);
    for package in packages {
        command.args(["-p", package]);
    }
    for bin in bins {
        command.args(["--bin", bin]);
    }
    match bin_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release")
    {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let status = command
        .stdin(Stdio::null())
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of {} failed ({status})", bins.join(" and "));
    }
    Ok(())
}
