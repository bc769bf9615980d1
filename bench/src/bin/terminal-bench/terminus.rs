//! The Terminus way, the baseline: what OpenEnv's Terminus env (PR #729, `LocalSandbox`) does
//! for every command — a fresh bubblewrap with its exact argument list running `/bin/bash -lc
//! <command>`, stdout and stderr captured (`subprocess.run(argv, text=True,
//! capture_output=True, timeout=120)`). `SANDBOXES.md` §2.1 gives the argv.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The peer's `PATH` when the server has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The peer's bwrap arguments (after `bwrap`) for `command` in the sandbox whose temporary
/// directory is `root` (holding `home/user` and `tmp`); `path` is the server's `$PATH`.
pub(crate) fn peer_argv(root: &Path, path: Option<&str>, command: &str) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::with_capacity(40);
    let mut push = |items: &[&str]| argv.extend(items.iter().map(OsString::from));
    push(&[
        "--die-with-parent",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/run",
        "--bind",
    ]);
    argv.push(root.join("tmp").into_os_string());
    let mut push = |items: &[&str]| argv.extend(items.iter().map(OsString::from));
    push(&[
        "/tmp",
        "--ro-bind",
        "/usr",
        "/usr",
        "--ro-bind",
        "/bin",
        "/bin",
        "--ro-bind",
        "/lib",
        "/lib",
        "--ro-bind",
        "/lib64",
        "/lib64",
        "--ro-bind",
        "/etc",
        "/etc",
        "--dir",
        "/home",
        "--bind",
    ]);
    argv.push(root.join("home/user").into_os_string());
    let mut push = |items: &[&str]| argv.extend(items.iter().map(OsString::from));
    push(&[
        "/home/user",
        "--chdir",
        "/home/user",
        "--setenv",
        "HOME",
        "/home/user",
        "--setenv",
        "PATH",
        path.filter(|p| !p.is_empty()).unwrap_or(DEFAULT_PATH),
        "/bin/bash",
        "-lc",
        command,
    ]);
    argv
}

/// One Terminus sandbox: the peer's `TemporaryDirectory(prefix="terminus-sandbox-")` with
/// `home/user` and `tmp`, removed on drop. Nothing runs between commands.
pub(crate) struct TerminusSandbox {
    root: PathBuf,
    bwrap: PathBuf,
    path: Option<String>,
    /// The command running now and its deadline, for the watchdog.
    running: Arc<Mutex<Option<(u32, Instant)>>>,
    stop: Arc<AtomicBool>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

impl TerminusSandbox {
    /// Makes the directory under the system temp dir (the peer's `$TMPDIR` or `/tmp`) and
    /// starts the watchdog that kills a command past its limit.
    pub(crate) fn create() -> anyhow::Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "terminus-sandbox-bench-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        for sub in ["home/user", "tmp"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create {}", root.join(sub).display()))?;
        }
        let running: Arc<Mutex<Option<(u32, Instant)>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (running, stop) = (Arc::clone(&running), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("terminus-watchdog".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        let Ok(slot) = running.lock() else { return };
                        if let Some((pid, deadline)) = *slot
                            && Instant::now() > deadline
                            && let Ok(pid) = i32::try_from(pid)
                        {
                            // Our unreaped child: its pid cannot have been reused.
                            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                    }
                })
                .context("cannot start the watchdog thread")?
        };
        Ok(Self {
            root,
            bwrap: PathBuf::from("bwrap"),
            path: std::env::var("PATH").ok(),
            running,
            stop,
            watchdog: Some(watchdog),
        })
    }

    /// Runs `command` the Terminus way and returns how long it took from spawn to exit with
    /// both pipes drained, and its stdout. Fails when it does not exit 0; killed after `limit`.
    pub(crate) fn run(&self, command: &str, limit: Duration) -> anyhow::Result<(Duration, String)> {
        let start = Instant::now();
        let child = Command::new(&self.bwrap)
            .args(peer_argv(&self.root, self.path.as_deref(), command))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start bwrap (scripts/setup-system.sh installs bubblewrap)")?;
        self.arm(Some((child.id(), start + limit)));
        let out = child.wait_with_output();
        let took = start.elapsed();
        self.arm(None);
        let out = out.context("waiting for bwrap")?;
        if !out.status.success() {
            bail!(
                "the Terminus-way command {command:?} failed ({}) after {took:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    fn arm(&self, what: Option<(u32, Instant)>) {
        if let Ok(mut slot) = self.running.lock() {
            *slot = what;
        }
    }
}

impl Drop for TerminusSandbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_the_peers() {
        let argv: Vec<String> = peer_argv(Path::new("/tmp/terminus-sandbox-x"), None, "true")
            .into_iter()
            .map(|a| a.into_string().unwrap_or_default())
            .collect();
        let expected = "--die-with-parent --dev /dev --proc /proc --tmpfs /run \
             --bind /tmp/terminus-sandbox-x/tmp /tmp \
             --ro-bind /usr /usr --ro-bind /bin /bin --ro-bind /lib /lib --ro-bind /lib64 /lib64 --ro-bind /etc /etc \
             --dir /home --bind /tmp/terminus-sandbox-x/home/user /home/user \
             --chdir /home/user --setenv HOME /home/user --setenv PATH /usr/local/bin:/usr/bin:/bin \
             /bin/bash -lc true";
        assert_eq!(argv.join(" "), expected);
        let with_path = peer_argv(Path::new("/t"), Some("/a:/b"), "echo 'x y'");
        let n = with_path.len();
        assert_eq!(with_path[n - 4], "/a:/b");
        // The command stays one argument.
        assert_eq!(with_path[n - 1], "echo 'x y'");
        assert_eq!(
            peer_argv(Path::new("/t"), Some(""), "true")[n - 4],
            DEFAULT_PATH
        );
    }
}
