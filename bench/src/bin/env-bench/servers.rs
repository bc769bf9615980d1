//! The three servers under test and how to start them: `env-server` (ours), `floor-server`
//! (the machine's floor) and the peer (the official Python server, `bench/peer/echo_peer.py`
//! in `<repo>/.venv-bench`), plus the official Python client's benchmark script.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

use crate::load::{new_histogram, record};
use crate::procs::{ServerProc, run_captured, spawn_server};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// `env-server serve --env echo`.
    Ours,
    /// `floor-server`.
    Floor,
    /// The official Python server (`openenv` 0.10.0 `create_app` + uvicorn).
    Peer,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ours => "env-server",
            Self::Floor => "floor",
            Self::Peer => "peer (Python)",
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            Self::Ours => "env-server",
            Self::Floor => "floor-server",
            Self::Peer => "echo-peer",
        }
    }
}

/// Where things are.
pub(crate) struct Paths {
    /// The repository root.
    pub(crate) repo: PathBuf,
    /// The directory of this executable (`target/release`): the servers' binaries.
    pub(crate) bin_dir: PathBuf,
    /// Logs of the started processes (`target/release/env-bench-logs`).
    pub(crate) log_dir: PathBuf,
    /// The peer venv's python, once set up.
    pub(crate) python: Option<PathBuf>,
}

impl Paths {
    pub(crate) fn discover() -> anyhow::Result<Self> {
        let (repo, bin_dir, log_dir) = crate::procs::bench_dirs("env-bench-logs")?;
        Ok(Self {
            repo,
            bin_dir,
            log_dir,
            python: None,
        })
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }
}

/// Builds `env-server` and `floor-server` with the profile of this executable (a no-op when
/// they are fresh), so the bench never measures a stale binary.
pub(crate) fn build_servers(paths: &Paths) -> anyhow::Result<()> {
    crate::procs::cargo_build(
        &paths.repo,
        &paths.bin_dir,
        &["env-server", "env-bench"],
        &["env-server", "floor-server"],
    )
}

/// Sets up the peer's venv with `bench/peer/setup.sh` (idempotent) and returns its python.
pub(crate) fn setup_peer(paths: &Paths) -> anyhow::Result<PathBuf> {
    let script = paths.repo.join("bench/peer/setup.sh");
    let out = run_captured(
        {
            let mut c = Command::new("bash");
            c.arg(&script);
            c
        },
        "bench/peer/setup.sh",
        &paths.log("peer-setup"),
        Duration::from_secs(900),
    )?;
    let python = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    if !python.is_file() {
        bail!("setup.sh printed no python path (got {out:?})");
    }
    Ok(python)
}

/// The variables that would change a server's configuration from outside the bench.
fn scrub_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("ENV_SERVER_")
            || matches!(
                key,
                "MAX_CONCURRENT_ENVS" | "RUST_LOG" | "ENABLE_WEB_INTERFACE" | "OPENENV_MODE"
            )
        {
            command.env_remove(key);
        }
    }
}

/// How a server is configured for a measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Setup {
    /// Latency and throughput: capacity 128 sessions, everything else default.
    Load,
    /// Idle sessions: capacity 10,000; `env-server` without keepalive pings or idle timeout.
    Memory,
}

/// Starts a fresh server of `kind`; `tag` names its log file.
pub(crate) fn start(
    paths: &Paths,
    kind: Kind,
    setup: Setup,
    tag: &str,
) -> anyhow::Result<ServerProc> {
    let capacity = match setup {
        Setup::Load => "128",
        Setup::Memory => "10000",
    };
    let (mut command, ready_within) = match kind {
        Kind::Ours => {
            let mut c = Command::new(paths.bin_dir.join("env-server"));
            c.args([
                "serve",
                "--env",
                "echo",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .args(["--max-sessions", capacity]);
            if let Setup::Memory = setup {
                c.args(["--keepalive-interval-s", "0", "--idle-timeout-s", "0"]);
            }
            (c, Duration::from_secs(30))
        }
        Kind::Floor => {
            let mut c = Command::new(paths.bin_dir.join("floor-server"));
            c.args(["--host", "127.0.0.1", "--port", "0"]);
            (c, Duration::from_secs(30))
        }
        Kind::Peer => {
            let python = paths.python.as_ref().context("the peer is not set up")?;
            let mut c = Command::new(python);
            c.arg(paths.repo.join("bench/peer/echo_peer.py"))
                .args(["0", capacity]);
            // Importing openenv (FastAPI, gradio, …) takes seconds, more on a busy machine.
            (c, Duration::from_secs(180))
        }
    };
    scrub_env(&mut command);
    let name = format!("{}-{tag}", kind.file_stem());
    spawn_server(command, kind.label(), &paths.log(&name), ready_within)
}

/// What the official Python client measured.
pub(crate) struct PyClientRun {
    /// Per-step latency, ns.
    pub(crate) hist: Histogram<u64>,
    /// Timed steps.
    pub(crate) steps: u64,
    /// Wall time of the timed loop, seconds.
    pub(crate) wall_s: f64,
}

/// Runs `bench/peer/client_bench.py` (async `GenericEnvClient`) against `server`.
pub(crate) fn python_client(
    paths: &Paths,
    server: &ServerProc,
    steps: u64,
    warmup: u64,
    tag: &str,
) -> anyhow::Result<PyClientRun> {
    let python = paths
        .python
        .as_ref()
        .context("the peer venv is not set up")?;
    let mut command = Command::new(python);
    command
        .arg(paths.repo.join("bench/peer/client_bench.py"))
        .arg(server.url())
        .arg(steps.to_string())
        .arg(warmup.to_string());
    let out = run_captured(
        command,
        "python client",
        &paths.log(&format!("python-client-{tag}")),
        Duration::from_secs(300),
    )?;
    let parsed: serde_json::Value =
        serde_json::from_str(out.trim()).context("client_bench.py printed no JSON")?;
    let latencies = parsed
        .get("latencies_ns")
        .and_then(serde_json::Value::as_array)
        .context("no latencies_ns in client_bench.py's output")?;
    let mut hist = new_histogram()?;
    for ns in latencies {
        let ns = ns.as_u64().context("a latency is not an integer")?;
        record(&mut hist, Duration::from_nanos(ns));
    }
    let wall_s = parsed
        .get("wall_s")
        .and_then(serde_json::Value::as_f64)
        .context("no wall_s")?;
    Ok(PyClientRun {
        steps: hist.len(),
        hist,
        wall_s,
    })
}
