//! The measured loads, all through the Rust client (`env_client::EnvClient`) against the
//! terminal env, and the Terminus-way baseline run in the same rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use env_client::EnvClient;
use env_client::protocol::JsonMap;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::common::{object, reset_ready};
use crate::procs::CpuSnapshot;
use crate::server::SandboxRoot;
use crate::stats::{CpuTimes, children_cpu_ns, new_histogram, record, share};
use crate::terminus::TerminusSandbox;

/// What `true` prints through the terminal tool (`TERMINAL_ENV.md` §5.1).
const NO_OUTPUT: &str = "(no output)";
/// Limit on one Terminus-way command.
const TERMINUS_LIMIT: Duration = Duration::from_secs(30);
/// Limit on sandboxes disappearing after their sessions closed.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(30);

/// The shell modes of the terminal env (`reset(shell_mode=…)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One shell per episode (the default).
    Persistent,
    /// A fresh `bash -lc` per command (Terminus-compatible).
    PerCommand,
}

impl Mode {
    fn reset_args(self) -> JsonMap {
        let mode = match self {
            Self::Persistent => "persistent",
            Self::PerCommand => "per_command",
        };
        object(json!({ "shell_mode": mode }))
    }
}

/// `terminal(command=command)`, checked to print `expect`, so a broken server cannot look fast.
async fn run_command(client: &EnvClient, command: &str, expect: &str) -> anyhow::Result<()> {
    let call = client
        .call_tool("terminal", object(json!({ "command": command })))
        .await
        .with_context(|| format!("terminal(command={command:?})"))?;
    match call.value.as_str() {
        Some(text) if text == expect && !call.done => Ok(()),
        _ => bail!(
            "terminal(command={command:?}) gave {:?} (done {}), expected {expect:?}",
            call.value,
            call.done
        ),
    }
}

/// Per-command latencies of one way of running `true`.
pub(crate) struct Latency {
    /// ns per command.
    pub(crate) hist: Histogram<u64>,
    /// Wall time of the timed blocks.
    pub(crate) wall: Duration,
    /// CPU ns spent over the timed blocks by what is measured: the server's threads (ours), or
    /// bwrap and bash (the Terminus way, reaped children of the bench).
    pub(crate) cpu_ns: u64,
}

impl Latency {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: new_histogram()?,
            wall: Duration::ZERO,
            cpu_ns: 0,
        })
    }
}

/// One session of ours in a shell mode.
struct OursLane {
    client: EnvClient,
    server_pid: u32,
    acc: Latency,
}

impl OursLane {
    async fn open(url: &str, server_pid: u32, mode: Mode, warmup: u64) -> anyhow::Result<Self> {
        let client = EnvClient::connect(url).await.context("connect")?;
        reset_ready(&client, mode.reset_args()).await?;
        for _ in 0..warmup {
            run_command(&client, "true", NO_OUTPUT).await?;
        }
        Ok(Self {
            client,
            server_pid,
            acc: Latency::new()?,
        })
    }

    async fn block(&mut self, n: u64) -> anyhow::Result<()> {
        let cpu = CpuSnapshot::take(self.server_pid)?;
        let start = Instant::now();
        for _ in 0..n {
            let t0 = Instant::now();
            run_command(&self.client, "true", NO_OUTPUT).await?;
            record(&mut self.acc.hist, t0.elapsed());
        }
        self.acc.wall += start.elapsed();
        self.acc.cpu_ns += CpuSnapshot::take(self.server_pid)?.since(&cpu);
        Ok(())
    }
}

/// The Terminus way as a lane.
struct TerminusLane {
    sandbox: TerminusSandbox,
    acc: Latency,
}

impl TerminusLane {
    fn open(warmup: u64) -> anyhow::Result<Self> {
        let sandbox = TerminusSandbox::create()?;
        for _ in 0..warmup {
            sandbox.run("true", TERMINUS_LIMIT)?;
        }
        // The same side effect check as ours: a command's output comes back.
        let (_, out) = sandbox.run("echo terminus", TERMINUS_LIMIT)?;
        if out.trim() != "terminus" {
            bail!("the Terminus-way sandbox printed {out:?} for `echo terminus`");
        }
        Ok(Self {
            sandbox,
            acc: Latency::new()?,
        })
    }

    fn block(&mut self, n: u64) -> anyhow::Result<()> {
        let cpu = children_cpu_ns()?;
        let start = Instant::now();
        for _ in 0..n {
            let (took, out) = self.sandbox.run("true", TERMINUS_LIMIT)?;
            if !out.is_empty() {
                bail!("`true` printed {out:?} the Terminus way");
            }
            record(&mut self.acc.hist, took);
        }
        self.acc.wall += start.elapsed();
        self.acc.cpu_ns += children_cpu_ns()?.saturating_sub(cpu);
        Ok(())
    }
}

/// How many timed commands each way gets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommandPlan {
    /// Persistent-shell commands.
    pub(crate) persistent: u64,
    /// Fresh-shell (`per_command`) commands.
    pub(crate) per_command: u64,
    /// Terminus-way commands.
    pub(crate) terminus: u64,
    /// Interleaved rounds.
    pub(crate) rounds: u64,
    /// Untimed commands per way first.
    pub(crate) warmup: u64,
}

/// Section 1's three results, in the order persistent, per_command, Terminus way.
pub(crate) type CommandResults = [Result<Latency, String>; 3];

/// Section 1: `true` in the persistent shell, in a fresh shell (both through the server), and
/// the Terminus way, in `rounds` interleaved blocks whose order rotates each round, so that
/// background load that comes and goes hits each alike. Runs on `rt` (current-thread: each
/// request, its reply and the wake-up on one thread).
pub(crate) fn command_overhead(
    rt: &tokio::runtime::Runtime,
    url: &str,
    server_pid: u32,
    plan: CommandPlan,
) -> CommandResults {
    let fail = |e: anyhow::Error| format!("{e:#}");
    let mut persistent = rt
        .block_on(OursLane::open(
            url,
            server_pid,
            Mode::Persistent,
            plan.warmup,
        ))
        .map_err(fail);
    let mut per_command = rt
        .block_on(OursLane::open(
            url,
            server_pid,
            Mode::PerCommand,
            plan.warmup,
        ))
        .map_err(fail);
    let mut terminus = TerminusLane::open(plan.warmup).map_err(fail);
    let rounds = plan.rounds.max(1);
    let mut order = [0usize, 1, 2];
    for round in 0..rounds {
        for &lane in &order {
            match lane {
                0 => {
                    if let Ok(l) = &mut persistent
                        && let Err(e) = rt.block_on(l.block(share(plan.persistent, rounds, round)))
                    {
                        persistent = Err(fail(e));
                    }
                }
                1 => {
                    if let Ok(l) = &mut per_command
                        && let Err(e) = rt.block_on(l.block(share(plan.per_command, rounds, round)))
                    {
                        per_command = Err(fail(e));
                    }
                }
                _ => {
                    if let Ok(l) = &mut terminus
                        && let Err(e) = l.block(share(plan.terminus, rounds, round))
                    {
                        terminus = Err(fail(e));
                    }
                }
            }
        }
        order.rotate_left(1);
    }
    let close = |lane: Result<OursLane, String>| {
        lane.and_then(|l| {
            rt.block_on(l.client.close())
                .map_err(|e| format!("close: {e}"))?;
            Ok(l.acc)
        })
    };
    [
        close(persistent),
        close(per_command),
        terminus.map(|t| t.acc),
    ]
}

/// Section 2: fresh episodes one at a time.
pub(crate) struct Resets {
    /// Connect (TCP + WebSocket handshake), ns.
    pub(crate) connect: Histogram<u64>,
    /// From sending `reset` to its observation (`status: ready`), ns.
    pub(crate) reset: Histogram<u64>,
    /// The first `true` after the reset (the persistent shell's start is not waited for by
    /// reset, so its first command finishes it), ns.
    pub(crate) first_command: Histogram<u64>,
    /// Connect + reset + first command, ns.
    pub(crate) episode: Histogram<u64>,
    /// `close` (the close frame, until the server has closed the socket), ns.
    pub(crate) close: Histogram<u64>,
    /// From `close` returning until the sandbox's directory is gone, ns.
    pub(crate) teardown: Histogram<u64>,
}

/// Section 2: `n` episodes after `warmup` untimed ones, one at a time on `rt`: connect, reset
/// (default = persistent shell), one `true`, close; then waits until the server has destroyed
/// the sandbox, so that no teardown overlaps the next episode.
pub(crate) fn resets(
    rt: &tokio::runtime::Runtime,
    url: &str,
    root: &SandboxRoot,
    n: u64,
    warmup: u64,
) -> anyhow::Result<Resets> {
    let mut r = Resets {
        connect: new_histogram()?,
        reset: new_histogram()?,
        first_command: new_histogram()?,
        episode: new_histogram()?,
        close: new_histogram()?,
        teardown: new_histogram()?,
    };
    rt.block_on(async {
        root.wait_at_most(0, TEARDOWN_LIMIT)
            .await
            .context("sandboxes of earlier sections are still there")?;
        for i in 0..warmup + n {
            let t0 = Instant::now();
            let client = EnvClient::connect(url).await.context("connect")?;
            let t1 = Instant::now();
            reset_ready(&client, JsonMap::new()).await?;
            let t2 = Instant::now();
            run_command(&client, "true", NO_OUTPUT).await?;
            let t3 = Instant::now();
            client.close().await.context("close")?;
            let t4 = Instant::now();
            let gone = root
                .wait_at_most(0, TEARDOWN_LIMIT)
                .await
                .context("the sandbox was not destroyed after close")?;
            if i >= warmup {
                record(&mut r.connect, t1 - t0);
                record(&mut r.reset, t2 - t1);
                record(&mut r.first_command, t3 - t2);
                record(&mut r.episode, t3 - t0);
                record(&mut r.close, t4 - t3);
                record(&mut r.teardown, gone);
            }
        }
        anyhow::Ok(())
    })?;
    Ok(r)
}

/// Section 3a: many persistent sessions running `true` back to back.
pub(crate) struct Commands {
    /// Sessions.
    pub(crate) sessions: usize,
    /// Latency of each of the concurrent resets that opened them, ns.
    pub(crate) open_resets: Histogram<u64>,
    /// Opening all of them (connect + reset, all at once).
    pub(crate) open_wall: Duration,
    /// Per-command latency under load, ns.
    pub(crate) hist: Histogram<u64>,
    /// Commands completed in the window.
    pub(crate) commands: u64,
    /// From the start of the window until the last session stopped.
    pub(crate) wall: Duration,
    /// Server CPU ns (its threads) over the window.
    pub(crate) server_cpu_ns: u64,
    /// The machine's CPU times over the window.
    pub(crate) machine: CpuTimes,
}

/// Section 3a on the current (multi-thread) runtime.
pub(crate) async fn command_throughput(
    url: &str,
    server_pid: u32,
    sessions: usize,
    window: Duration,
) -> anyhow::Result<Commands> {
    let open_start = Instant::now();
    let mut opening = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let url = url.to_owned();
        opening.push(tokio::spawn(async move {
            let client = EnvClient::connect(&url).await.context("connect")?;
            let t0 = Instant::now();
            reset_ready(&client, Mode::Persistent.reset_args()).await?;
            let took = t0.elapsed();
            for _ in 0..3 {
                run_command(&client, "true", NO_OUTPUT).await?;
            }
            anyhow::Ok((client, took))
        }));
    }
    let mut clients = Vec::with_capacity(sessions);
    let mut open_resets = new_histogram()?;
    let mut failure = None;
    for task in opening {
        match task.await.context("a session task panicked") {
            Ok(Ok((client, took))) => {
                record(&mut open_resets, took);
                clients.push(Arc::new(client));
            }
            Ok(Err(e)) | Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e.context("opening the sessions"));
    }
    let open_wall = open_start.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let cpu = CpuSnapshot::take(server_pid)?;
    let machine = CpuTimes::read()?;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(sessions);
    for client in &clients {
        let (client, stop) = (Arc::clone(client), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram()?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                run_command(&client, "true", NO_OUTPUT).await?;
                record(&mut hist, t0.elapsed());
                n += 1;
            }
            anyhow::Ok((hist, n))
        }));
    }
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = new_histogram()?;
    let mut commands = 0;
    for task in tasks {
        match task.await.context("a session task panicked") {
            Ok(Ok((h, n))) => {
                hist.add(&h).context("merging histograms")?;
                commands += n;
            }
            Ok(Err(e)) | Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let wall = start.elapsed();
    let server_cpu_ns = CpuSnapshot::take(server_pid)?.since(&cpu);
    let machine = CpuTimes::read()?.since(&machine);
    for client in &clients {
        client.shutdown().await.context("close")?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Commands {
        sessions,
        open_resets,
        open_wall,
        hist,
        commands,
        wall,
        server_cpu_ns,
        machine,
    })
}

/// Section 3b: many workers each running whole episodes back to back.
pub(crate) struct Episodes {
    /// Concurrent workers (sessions).
    pub(crate) workers: usize,
    /// Episode latency (connect → close), ns.
    pub(crate) hist: Histogram<u64>,
    /// Episodes completed (reward 1.0 each).
    pub(crate) episodes: u64,
    /// From the start until the last worker finished its last episode.
    pub(crate) wall: Duration,
    /// Sandboxes not yet destroyed when the last episode closed.
    pub(crate) backlog: usize,
    /// Then until every sandbox was gone.
    pub(crate) drain: Duration,
    /// Server CPU ns (its threads) over the window.
    pub(crate) server_cpu_ns: u64,
    /// The machine's CPU times over the window.
    pub(crate) machine: CpuTimes,
}

/// One whole episode: connect → reset (with one verify command) → a command → verify (reward
/// 1.0 expected) → close.
async fn episode(url: &str) -> anyhow::Result<()> {
    let client = EnvClient::connect(url).await.context("connect")?;
    reset_ready(
        &client,
        object(json!({ "verify": ["grep -qx ok done.txt"] })),
    )
    .await?;
    run_command(&client, "echo ok > done.txt", NO_OUTPUT).await?;
    let verified = client.verify().await.context("verify")?;
    if (verified.reward - 1.0).abs() > f64::EPSILON || !verified.done {
        bail!(
            "verify gave reward {} (done {}), expected 1.0: {:?}",
            verified.reward,
            verified.done,
            verified.details
        );
    }
    client.close().await.context("close")?;
    Ok(())
}

/// Section 3b on the current (multi-thread) runtime: `workers` tasks run [`episode`] back to
/// back; none starts a new one after `window`. Then waits for the server to destroy every
/// sandbox.
pub(crate) async fn episode_throughput(
    url: &str,
    server_pid: u32,
    root: &SandboxRoot,
    workers: usize,
    window: Duration,
) -> anyhow::Result<Episodes> {
    root.wait_at_most(0, TEARDOWN_LIMIT)
        .await
        .context("sandboxes of earlier sections are still there")?;
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = CpuSnapshot::take(server_pid)?;
    let machine = CpuTimes::read()?;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (url, stop) = (url.to_owned(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram()?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                episode(&url).await?;
                record(&mut hist, t0.elapsed());
                n += 1;
            }
            anyhow::Ok((hist, n))
        }));
    }
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = new_histogram()?;
    let mut episodes = 0;
    let mut failure = None;
    for task in tasks {
        match task.await.context("a worker panicked") {
            Ok(Ok((h, n))) => {
                hist.add(&h).context("merging histograms")?;
                episodes += n;
            }
            Ok(Err(e)) | Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let wall = start.elapsed();
    let server_cpu_ns = CpuSnapshot::take(server_pid)?.since(&cpu);
    let machine = CpuTimes::read()?.since(&machine);
    let backlog = root.count();
    let drain = root
        .wait_at_most(0, TEARDOWN_LIMIT)
        .await
        .context("sandboxes left 30 s after their sessions closed")?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Episodes {
        workers,
        hist,
        episodes,
        wall,
        backlog,
        drain,
        server_cpu_ns,
        machine,
    })
}

/// Section 3a's baseline: the Terminus way under the same concurrency.
pub(crate) struct TerminusThroughput {
    /// Threads, each with its own Terminus sandbox directory.
    pub(crate) threads: usize,
    /// Per-command latency under load, ns.
    pub(crate) hist: Histogram<u64>,
    /// Commands completed in the window.
    pub(crate) commands: u64,
    /// From the start of the window until the last thread stopped.
    pub(crate) wall: Duration,
    /// CPU ns of bwrap and bash (reaped children) over the window.
    pub(crate) cpu_ns: u64,
    /// The machine's CPU times over the window.
    pub(crate) machine: CpuTimes,
}

/// `threads` threads each running `true` the Terminus way back to back for `window` (the
/// peer's server runs each command on a thread of its own).
pub(crate) fn terminus_throughput(
    threads: usize,
    window: Duration,
) -> anyhow::Result<TerminusThroughput> {
    let sandboxes = (0..threads)
        .map(|_| TerminusSandbox::create())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = AtomicBool::new(false);
    let cpu = children_cpu_ns()?;
    let machine = CpuTimes::read()?;
    let start = Instant::now();
    let outcomes: Vec<anyhow::Result<(Histogram<u64>, u64)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = sandboxes
            .iter()
            .map(|sandbox| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut hist = new_histogram()?;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (took, _) = sandbox.run("true", TERMINUS_LIMIT)?;
                        record(&mut hist, took);
                        n += 1;
                    }
                    anyhow::Ok((hist, n))
                })
            })
            .collect();
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a Terminus-way thread panicked")))
            })
            .collect()
    });
    let wall = start.elapsed();
    let cpu_ns = children_cpu_ns()?.saturating_sub(cpu);
    let machine = CpuTimes::read()?.since(&machine);
    let mut hist = new_histogram()?;
    let mut commands = 0;
    for outcome in outcomes {
        let (h, n) = outcome?;
        hist.add(&h).context("merging histograms")?;
        commands += n;
    }
    Ok(TerminusThroughput {
        threads,
        hist,
        commands,
        wall,
        cpu_ns,
        machine,
    })
}
