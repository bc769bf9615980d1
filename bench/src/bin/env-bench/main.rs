//! `env-bench`: the end-to-end benchmark of `env-server` against the official Python OpenEnv
//! server (the peer) and a minimal axum WebSocket server (the floor), in one run, on this
//! machine. It prints a report with the targets of `DESIGN.md` ("Performance targets").
//!
//! Measured (see `bench/README.md`):
//! 1. step round trip of one session with the Rust client (`EnvClient`) against the three
//!    servers, and with the official Python client against ours and the peer;
//! 2. server CPU time per step (`/proc/<pid>/task/*/schedstat`) during those loops;
//! 3. throughput of 64 sessions stepping in a closed loop;
//! 4. server RSS idle and with 1,000 and 10,000 idle sessions.
//!
//! Every process the bench starts is killed by PID when its guard drops, also on errors.
//! Progress goes to stderr, the report to stdout.
//!
//! Usage: `cargo run --release -p env-bench --bin env-bench -- [--quick] [--no-peer]`

#![allow(clippy::print_stdout)]

mod load;
mod procs;
mod report;
mod servers;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use env_client::EnvClient;
use tokio::sync::Mutex;

use load::{IdleOutcome, RoundTrip, Throughput};
use procs::{Machine, MemSample, ServerProc, u64_f64};
use report::{Goal, Table, Verdict, percentiles, ratio, thousands};
use servers::{Kind, Paths, PyClientRun, Setup};

/// End-to-end benchmark: env-server vs the official Python server vs an axum floor.
#[derive(Debug, Parser)]
#[command(name = "env-bench")]
struct Cli {
    /// Short run (2,000 timed steps, 2 s throughput window, no 10,000-session peer attempt).
    #[arg(long)]
    quick: bool,
    /// Skip the Python peer and the Python client (no venv is created).
    #[arg(long)]
    no_peer: bool,
    /// Do not run `cargo build` for env-server and floor-server first.
    #[arg(long)]
    no_build: bool,
    /// Timed steps of the 1-session round trip with the Rust client (default 20,000; quick 2,000).
    #[arg(long)]
    steps: Option<u64>,
    /// Length of the 64-session throughput window, seconds (default 5; quick 2).
    #[arg(long)]
    throughput_s: Option<u64>,
    /// The servers to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ours,floor,peer"
    )]
    servers: Vec<Kind>,
    /// The runtime of the 1-session round trip's client: `current` (its own thread and
    /// current-thread runtime, no cross-thread wake-ups) or `multi` (the bench's multi-thread
    /// runtime, as the throughput run uses).
    #[arg(long, value_enum, default_value = "current")]
    client_runtime: ClientRuntime,
}

/// The runtime of the 1-session round trip's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientRuntime {
    /// Its own thread with a current-thread runtime.
    Current,
    /// The bench's multi-thread runtime.
    Multi,
}

/// Untimed steps before every timed loop.
const WARMUP: u64 = 200;
/// Timed steps of the official Python client (`PROTOCOL.md` §10).
const PY_STEPS: u64 = 2_000;
/// Sessions of the throughput run.
const SESSIONS: usize = 64;
/// Idle sessions opened at a time.
const OPEN_CONCURRENCY: usize = 200;

// Targets (`DESIGN.md`, "Performance targets").
const P50_TARGET_US: f64 = 60.0;
const P99_TARGET_US: f64 = 200.0;
const CPU_FLOOR_RATIO_TARGET: f64 = 1.5;
const THROUGHPUT_TARGET: f64 = 30_000.0;
const IDLE_RSS_TARGET_MIB: f64 = 20.0;
const KIB_PER_SESSION_TARGET: f64 = 64.0;
const SESSIONS_TARGET: usize = 10_000;

static START: OnceLock<Instant> = OnceLock::new();

/// One progress line on stderr, with the time since the start.
pub(crate) fn progress(message: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[env-bench {t:>6.1}s] {message}");
}

/// What one kind of measurement gave, or why it failed.
type Outcome<T> = Result<T, String>;

fn failed(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " | ")
}

/// One stage of the memory run: `target` idle sessions.
struct Stage {
    target: usize,
    open: IdleOutcome,
    sample: MemSample,
    /// Sessions that still answered `state` after the sample.
    alive: usize,
}

/// The memory run of one server.
struct MemoryRun {
    idle: MemSample,
    stages: Vec<Stage>,
    /// Why the run stopped before its last stage, if it did.
    stopped: Option<String>,
}

#[derive(Default)]
struct Results {
    rust: Vec<(Kind, Outcome<RoundTrip>)>,
    python: Vec<(Kind, Outcome<PyClientRun>)>,
    throughput: Vec<(Kind, Outcome<Throughput>)>,
    memory: Vec<(Kind, Outcome<MemoryRun>)>,
}

impl Results {
    fn rust(&self, kind: Kind) -> Option<&RoundTrip> {
        find(&self.rust, kind)
    }
    fn python(&self, kind: Kind) -> Option<&PyClientRun> {
        find(&self.python, kind)
    }
    fn throughput(&self, kind: Kind) -> Option<&Throughput> {
        find(&self.throughput, kind)
    }
    fn memory(&self, kind: Kind) -> Option<&MemoryRun> {
        find(&self.memory, kind)
    }
}

fn find<T>(rows: &[(Kind, Outcome<T>)], kind: Kind) -> Option<&T> {
    rows.iter()
        .find(|(k, _)| *k == kind)
        .and_then(|(_, r)| r.as_ref().ok())
}

struct Plan {
    steps: u64,
    /// Interleaved rounds of the round trip.
    rounds: u64,
    window: Duration,
    quick: bool,
    client_runtime: ClientRuntime,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    START.get_or_init(Instant::now);
    let cli = Cli::parse();
    let plan = Plan {
        steps: cli.steps.unwrap_or(if cli.quick { 2_000 } else { 20_000 }),
        rounds: if cli.quick { 4 } else { 10 },
        window: Duration::from_secs(cli.throughput_s.unwrap_or(if cli.quick { 2 } else { 5 })),
        quick: cli.quick,
        client_runtime: cli.client_runtime,
    };
    let want_peer = !cli.no_peer && cli.servers.contains(&Kind::Peer);
    let load_at_start = procs::load_average();
    let nofile = procs::raise_fd_limit()?;
    let mut paths = Paths::discover()?;
    if !cli.no_build {
        progress("cargo build env-server and floor-server (no-op when fresh)");
        servers::build_servers(&paths)?;
    }
    let mut peer_note = "not measured (--no-peer or --servers)".to_owned();
    if want_peer {
        progress("peer: bench/peer/setup.sh (creates .venv-bench on the first run)");
        match servers::setup_peer(&paths) {
            Ok(python) => {
                peer_note = peer_versions(&python);
                paths.python = Some(python);
            }
            Err(err) => {
                peer_note = format!("unavailable: {}", failed(&err));
                progress(&format!("peer {peer_note}"));
            }
        }
    }
    let kinds: Vec<Kind> = [Kind::Ours, Kind::Floor, Kind::Peer]
        .into_iter()
        .filter(|k| cli.servers.contains(k))
        .filter(|k| *k != Kind::Peer || paths.python.is_some())
        .collect();

    let mut results = Results::default();
    load_runs(&paths, &kinds, &plan, &mut results).await;
    for &kind in &kinds {
        progress(&format!("memory: {}", kind.label()));
        let run = memory_run(&paths, kind, &plan)
            .await
            .map_err(|e| failed(&e));
        results.memory.push((kind, run));
    }

    let header = Header {
        machine: Machine::read(),
        load_at_start,
        load_at_end: procs::load_average(),
        nofile,
        commit: procs::git_commit(&paths.repo),
        peer: peer_note,
        elapsed: START.get_or_init(Instant::now).elapsed(),
    };
    let (text, errors) = render(&header, &plan, &results);
    print!("{text}");
    if errors > 0 {
        anyhow::bail!("{errors} measurement(s) of env-server or the floor failed (see the report)");
    }
    Ok(())
}

/// Sections 1–3: all the servers run at once (fresh processes, capacity 128); the Rust
/// client's round trip and the throughput windows alternate between them in rounds, so that
/// background load that comes and goes is shared alike; the Python client runs in between.
async fn load_runs(paths: &Paths, kinds: &[Kind], plan: &Plan, results: &mut Results) {
    let mut running: Vec<(Kind, ServerProc)> = Vec::new();
    for &kind in kinds {
        match servers::start(paths, kind, Setup::Load, "load") {
            Ok(server) => running.push((kind, server)),
            Err(err) => {
                let why = failed(&err);
                results.rust.push((kind, Err(why.clone())));
                if kind != Kind::Floor && paths.python.is_some() {
                    results.python.push((kind, Err(why.clone())));
                }
                results.throughput.push((kind, Err(why)));
            }
        }
    }
    let targets: Vec<load::Target> = running
        .iter()
        .map(|(_, server)| load::Target {
            url: server.url(),
            pid: server.pid(),
        })
        .collect();

    progress(&format!(
        "round trip: {} timed steps per server in {} interleaved rounds",
        plan.steps, plan.rounds
    ));
    let rust = match plan.client_runtime {
        ClientRuntime::Current => tokio::task::block_in_place(|| {
            load::round_trips_current_thread(&targets, WARMUP, plan.steps, plan.rounds)
        })
        .unwrap_or_else(|err| {
            let why = failed(&err);
            targets
                .iter()
                .map(|_| Err(anyhow::anyhow!("{why}")))
                .collect()
        }),
        ClientRuntime::Multi => load::round_trips(&targets, WARMUP, plan.steps, plan.rounds).await,
    };
    for ((kind, server), outcome) in running.iter().zip(rust) {
        results
            .rust
            .push((*kind, outcome.map_err(|e| with_log(&e, server))));
    }

    if paths.python.is_some() {
        for (kind, server) in running.iter().filter(|(k, _)| *k != Kind::Floor) {
            progress(&format!(
                "Python client, {PY_STEPS} timed steps: {}",
                kind.label()
            ));
            let tag = if *kind == Kind::Ours { "ours" } else { "peer" };
            let py = tokio::task::block_in_place(|| {
                servers::python_client(paths, server, PY_STEPS, WARMUP, tag)
            });
            results.python.push((*kind, py.map_err(|e| failed(&e))));
        }
    }

    let window_rounds = u32::try_from(plan.window.as_secs().max(1)).unwrap_or(u32::MAX);
    progress(&format!(
        "throughput: {SESSIONS} sessions per server, {:?} per server in {window_rounds} interleaved windows",
        plan.window
    ));
    let tput = load::throughputs(&targets, SESSIONS, plan.window, window_rounds).await;
    for ((kind, server), outcome) in running.iter().zip(tput) {
        results
            .throughput
            .push((*kind, outcome.map_err(|e| with_log(&e, server))));
    }
    for (_, server) in running {
        server.guard.stop();
    }
}

fn with_log(err: &anyhow::Error, server: &ServerProc) -> String {
    format!("{} (server log {})", failed(err), server.log.display())
}

/// Section 4 for one server: RSS idle, then with 1,000 and 10,000 idle sessions.
async fn memory_run(paths: &Paths, kind: Kind, plan: &Plan) -> anyhow::Result<MemoryRun> {
    let server = servers::start(paths, kind, Setup::Memory, "memory")?;
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = MemSample::take(pid)?;
    let mut stages: Vec<(usize, Duration)> = vec![(1_000, Duration::from_secs(120))];
    let mut stopped = None;
    match kind {
        Kind::Peer if plan.quick => stopped = Some("10,000 not attempted (--quick)".to_owned()),
        // One OS thread per session: bounded in time.
        Kind::Peer => stages.push((10_000, Duration::from_secs(240))),
        Kind::Ours | Kind::Floor => stages.push((10_000, Duration::from_secs(120))),
    }
    let held: Arc<Mutex<Vec<EnvClient>>> = Arc::new(Mutex::new(Vec::new()));
    let url = server.url();
    let mut done = Vec::new();
    for (target, limit) in stages {
        progress(&format!("  opening idle sessions up to {target}"));
        let open = load::open_idle(&url, &held, target, OPEN_CONCURRENCY, limit).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sample = MemSample::take(pid).context("the server died")?;
        let alive = load::count_alive(&held, OPEN_CONCURRENCY, Duration::from_secs(120)).await;
        let complete = open.held >= target && alive >= target;
        progress(&format!(
            "  {} held, {} alive, {} failed, RSS {:.1} MiB, {} threads, {:.1} s",
            open.held,
            alive,
            open.failed,
            sample.rss_mib(),
            sample.threads,
            open.took.as_secs_f64()
        ));
        done.push(Stage {
            target,
            open,
            sample,
            alive,
        });
        if !complete {
            stopped = Some(format!("{target} not held: later stages skipped"));
            break;
        }
    }
    // Drop every client (the server sees the sockets close), then stop the server.
    held.lock().await.clear();
    server.guard.stop();
    Ok(MemoryRun {
        idle,
        stages: done,
        stopped,
    })
}

fn peer_versions(python: &std::path::Path) -> String {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m, platform; \
             print(f'openenv {m.version(\"openenv\")} create_app + uvicorn {m.version(\"uvicorn\")}, \
             Python {platform.python_version()}')",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "openenv 0.10.0 create_app + uvicorn".to_owned(),
    }
}

struct Header {
    machine: Machine,
    load_at_start: String,
    load_at_end: String,
    nofile: u64,
    commit: String,
    peer: String,
    elapsed: Duration,
}

/// The whole report, and how many measurements of ours or the floor failed.
fn render(header: &Header, plan: &Plan, r: &Results) -> (String, usize) {
    let mut out = String::new();
    let mut verdicts = Vec::new();
    let m = &header.machine;
    out.push_str(&format!(
        "\nenv-bench: env-server vs the official Python OpenEnv server vs an axum floor ({} run)\n",
        if plan.quick { "--quick" } else { "default" }
    ));
    out.push_str(&format!(
        "machine: nproc {}, {}, {:.1} GiB RAM, Linux {}\n",
        m.nproc,
        m.model,
        m.mem_mib / 1024.0,
        m.kernel
    ));
    out.push_str(&format!(
        "load average (1/5/15 min): {} at start, {} at end; run took {:.0} s\n",
        header.load_at_start,
        header.load_at_end,
        header.elapsed.as_secs_f64()
    ));
    out.push_str(&format!(
        "commit {}; open-file limit {}; loopback 127.0.0.1; servers unpinned\n",
        header.commit, header.nofile
    ));
    out.push_str(&format!(
        "servers: env-server serve --env echo | floor-server (axum ws, fixed reply) | peer: {}\n",
        header.peer
    ));

    // 1. Round trip.
    out.push_str(&format!(
        "\n1. Step round trip, 1 session, step({{\"message\":\"hi\"}}): connect, reset, {WARMUP} warm-up, then the timed\n   \
         steps in {} rounds alternating between the servers (Rust client on {}); Python client:\n   \
         bench/peer/client_bench.py (PROTOCOL.md §10 method)\n",
        plan.rounds,
        match plan.client_runtime {
            ClientRuntime::Current => "its own thread, current-thread tokio runtime",
            ClientRuntime::Multi => "the bench's multi-thread tokio runtime",
        }
    ));
    let mut table = Table::new(&[
        "client", "server", "steps", "p50 µs", "p90 µs", "p99 µs", "max µs", "steps/s",
    ]);
    for (kind, outcome) in &r.rust {
        let cells = match outcome {
            Ok(rt) => {
                let [p50, p90, p99, max] = percentiles(&rt.hist);
                vec![
                    thousands(u64_f64(rt.steps)),
                    p50,
                    p90,
                    p99,
                    max,
                    thousands(u64_f64(rt.steps) / rt.wall.as_secs_f64()),
                ]
            }
            Err(e) => vec![format!("ERROR: {e}")],
        };
        let mut row = vec!["Rust EnvClient".to_owned(), kind.label().to_owned()];
        row.extend(cells);
        table.row(row);
    }
    for (kind, outcome) in &r.python {
        let cells = match outcome {
            Ok(py) => {
                let [p50, p90, p99, max] = percentiles(&py.hist);
                vec![
                    thousands(u64_f64(py.steps)),
                    p50,
                    p90,
                    p99,
                    max,
                    thousands(u64_f64(py.steps) / py.wall_s),
                ]
            }
            Err(e) => vec![format!("ERROR: {e}")],
        };
        let mut row = vec![
            "Python GenericEnvClient (async)".to_owned(),
            kind.label().to_owned(),
        ];
        row.extend(cells);
        table.row(row);
    }
    out.push_str(&table.render());
    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| u64_f64(h.value_at_quantile(p));
    let mut ratios = Vec::new();
    if let (Some(ours), Some(peer)) = (r.rust(Kind::Ours), r.rust(Kind::Peer)) {
        ratios.push(format!(
            "Rust client: peer/env-server p50 {}, p99 {}",
            ratio(q(&peer.hist, 0.5), q(&ours.hist, 0.5)),
            ratio(q(&peer.hist, 0.99), q(&ours.hist, 0.99))
        ));
    }
    if let (Some(ours), Some(floor)) = (r.rust(Kind::Ours), r.rust(Kind::Floor)) {
        ratios.push(format!(
            "env-server/floor p50 {}, p99 {}",
            ratio(q(&ours.hist, 0.5), q(&floor.hist, 0.5)),
            ratio(q(&ours.hist, 0.99), q(&floor.hist, 0.99))
        ));
    }
    if let (Some(ours), Some(peer)) = (r.python(Kind::Ours), r.python(Kind::Peer)) {
        ratios.push(format!(
            "Python client: peer/env-server p50 {}, p99 {}",
            ratio(q(&peer.hist, 0.5), q(&ours.hist, 0.5)),
            ratio(q(&peer.hist, 0.99), q(&ours.hist, 0.99))
        ));
    }
    if !ratios.is_empty() {
        out.push_str(&format!("  ratios: {}\n", ratios.join("; ")));
    }
    match r.rust(Kind::Ours) {
        Some(ours) => {
            verdicts.push(Verdict::numeric(
                "1. round trip p50, Rust client, 1 session",
                Goal::AtMost,
                P50_TARGET_US,
                q(&ours.hist, 0.5) / 1000.0,
                "µs",
                1,
            ));
            verdicts.push(Verdict::numeric(
                "1. round trip p99, Rust client, 1 session",
                Goal::AtMost,
                P99_TARGET_US,
                q(&ours.hist, 0.99) / 1000.0,
                "µs",
                1,
            ));
        }
        None => {
            let why = missing(&r.rust, &[Kind::Ours]);
            verdicts.push(Verdict::unmeasured("1. round trip p50", "≤ 60 µs", why));
            verdicts.push(Verdict::unmeasured("1. round trip p99", "≤ 200 µs", why));
        }
    }

    // 2. CPU per step.
    out.push_str(
        "\n2. Server CPU time per step: Σ /proc/<pid>/task/*/schedstat (ns on CPU) over the server's threads,\n   \
         around the timed loop of 1 (Rust client); the bench's own CPU per step for reference\n",
    );
    let mut table = Table::new(&["server", "server µs/step", "vs floor", "bench µs/step"]);
    let per_step = |rt: &RoundTrip| u64_f64(rt.server_cpu_ns) / u64_f64(rt.steps) / 1000.0;
    let floor_cpu = r.rust(Kind::Floor).map(per_step);
    for (kind, outcome) in &r.rust {
        let cells = match outcome {
            Ok(rt) => vec![
                format!("{:.1}", per_step(rt)),
                floor_cpu.map_or("-".to_owned(), |f| ratio(per_step(rt), f)),
                format!(
                    "{:.1}",
                    u64_f64(rt.client_cpu_ns) / u64_f64(rt.steps) / 1000.0
                ),
            ],
            Err(_) => vec!["ERROR (see 1)".to_owned()],
        };
        let mut row = vec![kind.label().to_owned()];
        row.extend(cells);
        table.row(row);
    }
    out.push_str(&table.render());
    match (r.rust(Kind::Ours).map(per_step), floor_cpu) {
        (Some(ours), Some(floor)) => {
            let mut v = Verdict::numeric(
                "2. server CPU per step, env-server/floor",
                Goal::AtMost,
                CPU_FLOOR_RATIO_TARGET,
                ours / floor,
                "×",
                2,
            );
            v.measured = format!("×{:.2} ({ours:.1} / {floor:.1} µs)", ours / floor);
            verdicts.push(v);
        }
        _ => verdicts.push(Verdict::unmeasured(
            "2. server CPU per step vs floor",
            "≤ ×1.5",
            missing(&r.rust, &[Kind::Ours, Kind::Floor]),
        )),
    }

    // 3. Throughput.
    out.push_str(&format!(
        "\n3. Throughput: {SESSIONS} sessions per server stepping back to back, {} s per server in 1 s windows\n   \
         alternating between the servers; Rust client, one multi-thread tokio runtime ({} workers) in the bench\n   \
         process, sharing the cores with the server\n",
        plan.window.as_secs(),
        header.machine.nproc
    ));
    let mut table = Table::new(&[
        "server",
        "steps",
        "steps/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "max µs",
        "server CPU µs/step",
        "bench CPU µs/step",
    ]);
    let rate = |t: &Throughput| u64_f64(t.steps) / t.wall.as_secs_f64();
    for (kind, outcome) in &r.throughput {
        let cells = match outcome {
            Ok(t) => {
                let [p50, p90, p99, max] = percentiles(&t.hist);
                let steps = u64_f64(t.steps.max(1));
                vec![
                    thousands(u64_f64(t.steps)),
                    thousands(rate(t)),
                    p50,
                    p90,
                    p99,
                    max,
                    format!("{:.1}", u64_f64(t.server_cpu_ns) / steps / 1000.0),
                    format!("{:.1}", u64_f64(t.client_cpu_ns) / steps / 1000.0),
                ]
            }
            Err(e) => vec![format!("ERROR: {e}")],
        };
        let mut row = vec![kind.label().to_owned()];
        row.extend(cells);
        table.row(row);
    }
    out.push_str(&table.render());
    let mut ratios = Vec::new();
    if let (Some(ours), Some(peer)) = (r.throughput(Kind::Ours), r.throughput(Kind::Peer)) {
        ratios.push(format!(
            "env-server/peer steps/s {}",
            ratio(rate(ours), rate(peer))
        ));
    }
    if let (Some(ours), Some(floor)) = (r.throughput(Kind::Ours), r.throughput(Kind::Floor)) {
        ratios.push(format!(
            "env-server/floor steps/s {}",
            ratio(rate(ours), rate(floor))
        ));
    }
    if !ratios.is_empty() {
        out.push_str(&format!("  ratios: {}\n", ratios.join("; ")));
    }
    match r.throughput(Kind::Ours) {
        Some(t) => verdicts.push(Verdict::numeric(
            "3. steps/s, 64 sessions, load generator included",
            Goal::AtLeast,
            THROUGHPUT_TARGET,
            rate(t),
            "steps/s",
            0,
        )),
        None => verdicts.push(Verdict::unmeasured(
            "3. steps/s, 64 sessions",
            "≥ 30,000",
            missing(&r.throughput, &[Kind::Ours]),
        )),
    }

    // 4. Memory.
    out.push_str(&format!(
        "\n4. Memory: server VmRSS idle (fresh process), then with idle sessions (connect + one reset, then idle;\n   \
         opened {OPEN_CONCURRENCY} at a time; env-server with --max-sessions 10000 --keepalive-interval-s 0 --idle-timeout-s 0)\n"
    ));
    let mut table = Table::new(&[
        "server",
        "sessions",
        "held",
        "RSS MiB",
        "KiB/session",
        "threads",
        "open s",
        "note",
    ]);
    for (kind, outcome) in &r.memory {
        let run = match outcome {
            Ok(run) => run,
            Err(e) => {
                table.row(vec![
                    kind.label().to_owned(),
                    "-".to_owned(),
                    format!("ERROR: {e}"),
                ]);
                continue;
            }
        };
        table.row(vec![
            kind.label().to_owned(),
            "0 (idle)".to_owned(),
            "-".to_owned(),
            format!("{:.1}", run.idle.rss_mib()),
            "-".to_owned(),
            run.idle.threads.to_string(),
            "-".to_owned(),
            String::new(),
        ]);
        for stage in &run.stages {
            let mut note = Vec::new();
            if stage.open.failed > 0 {
                note.push(format!("{} failed", stage.open.failed));
            }
            if let Some(e) = &stage.open.first_error {
                note.push(format!("first error: {e}"));
            }
            if stage.open.timed_out {
                note.push("time limit reached".to_owned());
            }
            if stage.alive < stage.open.held {
                note.push(format!("only {} answered `state`", stage.alive));
            }
            table.row(vec![
                kind.label().to_owned(),
                count(stage.target),
                if stage.open.held >= stage.target && stage.alive >= stage.target {
                    "all".to_owned()
                } else {
                    format!("{} (not held)", count(stage.open.held))
                },
                format!("{:.1}", stage.sample.rss_mib()),
                format!("{:.1}", kib_per_session(run.idle, stage)),
                stage.sample.threads.to_string(),
                format!("{:.1}", stage.open.took.as_secs_f64()),
                note.join("; "),
            ]);
        }
        if let Some(why) = &run.stopped {
            table.row(vec![
                kind.label().to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                why.clone(),
            ]);
        }
    }
    out.push_str(&table.render());
    let mut ratios = Vec::new();
    if let (Some(ours), Some(peer)) = (r.memory(Kind::Ours), r.memory(Kind::Peer)) {
        ratios.push(format!(
            "peer/env-server idle RSS {}",
            ratio(peer.idle.rss_mib(), ours.idle.rss_mib())
        ));
        for n in [1_000, 10_000] {
            if let (Some(o), Some(p)) = (stage_of(ours, n), stage_of(peer, n)) {
                ratios.push(format!(
                    "KiB/session at {}: {}",
                    count(n),
                    ratio(kib_per_session(peer.idle, p), kib_per_session(ours.idle, o))
                ));
            }
        }
    }
    if !ratios.is_empty() {
        out.push_str(&format!("  ratios: {}\n", ratios.join("; ")));
    }
    match r.memory(Kind::Ours) {
        Some(run) => {
            verdicts.push(Verdict::numeric(
                "4. server RSS idle",
                Goal::AtMost,
                IDLE_RSS_TARGET_MIB,
                run.idle.rss_mib(),
                "MiB",
                1,
            ));
            for n in [1_000, 10_000] {
                if let Some(stage) = stage_of(run, n) {
                    verdicts.push(Verdict::numeric(
                        &format!("4. memory per idle session at {}", count(n)),
                        Goal::AtMost,
                        KIB_PER_SESSION_TARGET,
                        kib_per_session(run.idle, stage),
                        "KiB",
                        1,
                    ));
                }
            }
            let top = stage_of(run, SESSIONS_TARGET);
            let held = top.map_or(0, |s| s.open.held.min(s.alive));
            verdicts.push(Verdict::check(
                "4. 10,000 concurrent idle sessions held",
                "all connected + reset",
                count(held),
                held >= SESSIONS_TARGET,
            ));
            if let Some(top) = top {
                verdicts.push(Verdict::check(
                    "4. no thread per session",
                    "threads flat",
                    format!(
                        "{} idle → {} at 10,000",
                        run.idle.threads, top.sample.threads
                    ),
                    top.sample.threads <= run.idle.threads + 16,
                ));
            }
        }
        None => verdicts.push(Verdict::unmeasured(
            "4. memory",
            "≤ 20 MiB idle, ≤ 64 KiB/session",
            missing(&r.memory, &[Kind::Ours]),
        )),
    }

    out.push_str("\nTargets (DESIGN.md, \"Performance targets\"): env-server\n");
    out.push_str(&report::verdict_table(&verdicts));
    let passed = verdicts.iter().filter(|v| v.pass).count();
    out.push_str(&format!("  {passed} of {} targets met\n", verdicts.len()));
    let errors = [
        r.rust
            .iter()
            .filter(|(k, o)| *k != Kind::Peer && o.is_err())
            .count(),
        r.throughput
            .iter()
            .filter(|(k, o)| *k != Kind::Peer && o.is_err())
            .count(),
        r.memory
            .iter()
            .filter(|(k, o)| *k != Kind::Peer && o.is_err())
            .count(),
    ]
    .iter()
    .sum();
    (out, errors)
}

/// (RSS with the sessions − RSS idle) / sessions held, KiB.
fn kib_per_session(idle: MemSample, stage: &Stage) -> f64 {
    let n = u64::try_from(stage.open.held.max(1)).unwrap_or(u64::MAX);
    (u64_f64(stage.sample.rss_kib) - u64_f64(idle.rss_kib)) / u64_f64(n)
}

/// The stage of `run` with `n` sessions.
fn stage_of(run: &MemoryRun, n: usize) -> Option<&Stage> {
    run.stages.iter().find(|s| s.target == n)
}

/// A count with thousands separators.
fn count(n: usize) -> String {
    thousands(u64_f64(u64::try_from(n).unwrap_or(u64::MAX)))
}

/// Why a verdict has no value: a server it needs was not run, or its measurement failed.
fn missing<T>(rows: &[(Kind, Outcome<T>)], needs: &[Kind]) -> &'static str {
    if needs.iter().all(|k| rows.iter().any(|(kind, _)| kind == k)) {
        "failed, see above"
    } else {
        "not run: --servers"
    }
}
