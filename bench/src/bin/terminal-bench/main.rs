//! `terminal-bench`: the terminal environment's costs on the local bubblewrap sandbox, through
//! the release `env-server --env terminal` and the Rust client, next to the Terminus way (what
//! OpenEnv's Terminus env does per command: a fresh bwrap with its argv running `bash -lc`)
//! measured in the same run. It prints a report with the targets of `DESIGN.md`
//! ("Performance targets"):
//!
//! 1. per-command overhead of `true`: persistent shell, fresh shell per command, Terminus way,
//!    in interleaved rounds, with the ratios;
//! 2. reset to ready of fresh episodes one at a time, and the whole episode start (connect +
//!    reset + first command), and teardown;
//! 3. throughput of 64 concurrent episodes: `true` across 64 persistent sessions, and whole
//!    episodes (connect → reset → command → verify → close) by 64 workers.
//!
//! The server it starts is stopped (SIGTERM, then SIGKILL) by its PID when it is done, also on
//! errors; its sandboxes live in a directory of the bench's, removed at the end. All traffic
//! is on 127.0.0.1. Progress goes to stderr, the report to stdout.
//!
//! Usage: `cargo run --release -p env-bench --bin terminal-bench -- [--quick]`

#![allow(clippy::print_stdout)]

mod common;
mod idle;
mod measure;
// Shared with `env-bench` (process guards, `/proc` readings, tables and verdicts); not every
// item is used here.
#[allow(dead_code)]
#[path = "../env-bench/procs.rs"]
mod procs;
#[allow(dead_code)]
#[path = "../env-bench/report.rs"]
mod report;
mod server;
mod stats;
mod terminus;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use measure::{CommandPlan, CommandResults, Commands, Episodes, Latency, Resets};
use procs::{Machine, u64_f64};
use report::{Goal, Table, Verdict, ratio, thousands};
use stats::{percentiles_ms, q};

/// The terminal env's per-command overhead, reset time and throughput vs the Terminus way.
#[derive(Debug, Parser)]
#[command(name = "terminal-bench")]
struct Cli {
    /// Short run (about 30 s): fewer commands and resets, 3 s throughput windows.
    #[arg(long)]
    quick: bool,
    /// Do not run `cargo build` for env-server and env-sbx first.
    #[arg(long)]
    no_build: bool,
    /// Take `env-server` and `env-sbx` from this directory (another build, to compare); no
    /// build then.
    #[arg(long)]
    server_dir: Option<std::path::PathBuf>,
    /// Timed `true` in the persistent shell (default 5,000; quick 1,000).
    #[arg(long)]
    persistent: Option<u64>,
    /// Timed `true` in a fresh shell, and the Terminus way, each (default 1,000; quick 200).
    #[arg(long)]
    fresh: Option<u64>,
    /// Timed episodes of the reset measurement (default 200; quick 40).
    #[arg(long)]
    resets: Option<u64>,
    /// Concurrent sessions of the throughput runs.
    #[arg(long, default_value_t = 64)]
    sessions: usize,
    /// Length of each throughput window, seconds (default 10; quick 3).
    #[arg(long)]
    window_s: Option<u64>,
    /// Section 5: hold this many concurrent idle episodes and break down what each costs the
    /// host (repeatable: `--idle 1000 --idle 5000`).
    #[arg(long)]
    idle: Vec<usize>,
    /// Run section 5 only.
    #[arg(long)]
    idle_only: bool,
    /// Servers in section 5, the episodes spread over them (each server needs about 6 open
    /// descriptors per episode: `docs/scale.md`).
    #[arg(long, default_value_t = 1)]
    idle_servers: usize,
    /// Episodes opened at a time in section 5.
    #[arg(long, default_value_t = 64)]
    idle_open: usize,
    /// An extra argument for `env-server serve` (repeatable), e.g. `--server-arg=--local-cgroups=off`.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
}

// Targets (`DESIGN.md`, "Performance targets"), ms.
const PERSISTENT_P50_TARGET_MS: f64 = 0.5;
const FRESH_TARGET_MS: f64 = 10.0;
const RESET_P50_TARGET_MS: f64 = 30.0;

static START: OnceLock<Instant> = OnceLock::new();

/// One progress line on stderr, with the time since the start.
pub(crate) fn progress(message: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[terminal-bench {t:>6.1}s] {message}");
}

/// The 1-minute load average at the start of each section (the later ones include the
/// bench's own load of the section before).
static SECTION_LOADS: std::sync::Mutex<Vec<(&'static str, String)>> =
    std::sync::Mutex::new(Vec::new());

/// Starts a section: records the load average and prints the progress line.
fn section(name: &'static str, message: &str) {
    let one_minute = procs::load_average()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned();
    if let Ok(mut loads) = SECTION_LOADS.lock() {
        loads.push((name, one_minute));
    }
    progress(&format!("{name}. {message}"));
}

/// The run's sizes.
struct Plan {
    commands: CommandPlan,
    resets: u64,
    reset_warmup: u64,
    sessions: usize,
    window: Duration,
}

/// Everything measured.
struct Results {
    commands: CommandResults,
    resets: Result<Resets, String>,
    throughput: Result<Commands, String>,
    terminus_throughput: Result<measure::TerminusThroughput, String>,
    episodes: Result<Episodes, String>,
    /// Sandbox directories left after every session closed, before the server stopped.
    left_before_stop: usize,
    /// Whether the server exited on SIGTERM within the grace.
    clean_exit: bool,
    /// Sandbox directories left after the server stopped.
    left_after_stop: usize,
}

fn failed(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " | ")
}

fn main() -> anyhow::Result<()> {
    START.get_or_init(Instant::now);
    let cli = Cli::parse();
    let quick = cli.quick;
    let fresh = cli.fresh.unwrap_or(if quick { 200 } else { 1_000 });
    let plan = Plan {
        commands: CommandPlan {
            persistent: cli.persistent.unwrap_or(if quick { 1_000 } else { 5_000 }),
            per_command: fresh,
            terminus: fresh,
            rounds: if quick { 4 } else { 10 },
            warmup: if quick { 10 } else { 30 },
        },
        resets: cli.resets.unwrap_or(if quick { 40 } else { 200 }),
        reset_warmup: 3,
        sessions: cli.sessions.max(1),
        window: Duration::from_secs(cli.window_s.unwrap_or(if quick { 3 } else { 10 }).max(1)),
    };
    let load_at_start = procs::load_average();
    let mut paths = server::Paths::discover()?;
    if let Some(dir) = &cli.server_dir {
        paths.bin_dir.clone_from(dir);
    }
    if !cli.no_build && cli.server_dir.is_none() {
        progress("cargo build env-server and env-sbx (no-op when fresh)");
        server::build(&paths)?;
    }
    procs::raise_fd_limit()?;
    if cli.idle_only {
        let (text, failed) = idle_section(&paths, &cli)?;
        print!("{text}");
        if failed {
            anyhow::bail!("section 5 missed a target (see the report)");
        }
        return Ok(());
    }
    let root = server::SandboxRoot::create()?;
    // Room for sessions that closed while their sandbox is still being torn down.
    let capacity = plan.sessions * 4;
    let srv = server::start(&paths, &root, capacity, &cli.server_arg)?;
    let url = srv.url();
    let pid = srv.pid();
    let log = srv.log.clone();
    let with_log = |e: &anyhow::Error| format!("{} (server log {})", failed(e), log.display());

    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("current-thread runtime")?;
    let c = plan.commands;
    section(
        "1",
        &format!(
            "per-command overhead: {} persistent, {} fresh-shell, {} Terminus-way `true` in {} rounds",
            c.persistent, c.per_command, c.terminus, c.rounds
        ),
    );
    let mut commands = measure::command_overhead(&current, &url, pid, c);
    for (lane, outcome) in commands.iter_mut().enumerate().take(2) {
        if let Err(e) = outcome {
            *e = format!("{e} (lane {lane}, server log {})", log.display());
        }
    }
    section(
        "2",
        &format!(
            "reset to ready: {} fresh episodes one at a time",
            plan.resets
        ),
    );
    let resets = measure::resets(&current, &url, &root, plan.resets, plan.reset_warmup)
        .map_err(|e| with_log(&e));
    drop(current);

    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("multi-thread runtime")?;
    section(
        "3a",
        &format!(
            "{} persistent sessions running `true` for {:?}",
            plan.sessions, plan.window
        ),
    );
    let throughput = multi
        .block_on(measure::command_throughput(
            &url,
            pid,
            plan.sessions,
            plan.window,
        ))
        .map_err(|e| with_log(&e));
    section(
        "3a'",
        &format!(
            "the Terminus way: {} threads running `true` for {:?}",
            plan.sessions, plan.window
        ),
    );
    let terminus_throughput =
        measure::terminus_throughput(plan.sessions, plan.window).map_err(|e| failed(&e));
    section(
        "3b",
        &format!(
            "{} workers running whole episodes for {:?}",
            plan.sessions, plan.window
        ),
    );
    let episodes = multi
        .block_on(measure::episode_throughput(
            &url,
            pid,
            &root,
            plan.sessions,
            plan.window,
        ))
        .map_err(|e| with_log(&e));
    let left_before_stop = multi.block_on(async {
        root.wait_at_most(0, Duration::from_secs(30)).await;
        root.count()
    });
    drop(multi);
    progress("stopping env-server (SIGTERM)");
    let clean_exit = server::stop(srv, Duration::from_secs(20));
    let left_after_stop = root.count();
    drop(root);

    let results = Results {
        commands,
        resets,
        throughput,
        terminus_throughput,
        episodes,
        left_before_stop,
        clean_exit,
        left_after_stop,
    };
    let header = Header {
        machine: Machine::read(),
        load_at_start,
        load_at_end: procs::load_average(),
        commit: procs::git_commit(&paths.repo),
        bwrap: bwrap_version(),
        elapsed: START.get_or_init(Instant::now).elapsed(),
    };
    let (text, errors) = render(&header, &plan, &results);
    print!("{text}");
    if !cli.idle.is_empty() {
        let (text, _) = idle_section(&paths, &cli)?;
        print!("{text}");
    }
    if errors > 0 {
        anyhow::bail!("{errors} measurement(s) failed (see the report)");
    }
    Ok(())
}

/// Host memory per idle episode at 5,000 episodes (`docs/scale.md`), MiB.
const IDLE_MIB_TARGET: f64 = 1.5;
/// All 5,000 ready within, seconds.
const IDLE_READY_TARGET_S: f64 = 60.0;
/// Sandbox uids of section 5's server (a range of its own: other servers on the machine are
/// not counted).
const IDLE_UID_BASE: u32 = 4_300_000;

/// Section 5 for every `--idle` N, each on a fresh server; the text and whether a target was
/// missed.
fn idle_section(paths: &server::Paths, cli: &Cli) -> anyhow::Result<(String, bool)> {
    let mut out = String::new();
    let top = cli.idle.iter().copied().max().unwrap_or(0);
    out.push_str(&format!(
        "\n5. Concurrent idle episodes: N episodes opened {} at a time (connect + default reset) and held;\n   \
         readings 3 s after the last was ready, and again after one `true` in each; every process of the\n   \
         server's sandbox uid range is read (smaps_rollup, status); kernel figures are /proc/meminfo deltas\n   \
         (machine-wide: other work on the machine shows up in them); {}; kernel {}\n",
        cli.idle_open,
        bwrap_version(),
        Machine::read().kernel
    ));
    let mut verdicts = Vec::new();
    let mut missed = false;
    for &n in &cli.idle {
        let root = server::SandboxRoot::create()?;
        let mut extra: Vec<String> = [
            "--local-uid-base",
            &IDLE_UID_BASE.to_string(),
            "--local-uid-count",
            &(u32::try_from(top)
                .unwrap_or(u32::MAX)
                .saturating_mul(2)
                .max(1024))
            .to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        extra.extend(cli.server_arg.iter().cloned());
        let k = cli.idle_servers.max(1);
        let mut servers = Vec::with_capacity(k);
        for _ in 0..k {
            servers.push(server::start(paths, &root, n / k + 64, &extra)?);
        }
        let urls: Vec<String> = servers.iter().map(procs::ServerProc::url).collect();
        let pids: Vec<u32> = servers.iter().map(procs::ServerProc::pid).collect();
        let uids =
            IDLE_UID_BASE..IDLE_UID_BASE + u32::try_from(top * 2).unwrap_or(u32::MAX).max(1024);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("multi-thread runtime")?;
        section(
            "5",
            &format!("{n} concurrent idle episodes on {k} server(s)"),
        );
        let result = rt.block_on(idle::measure(&urls, &pids, &uids, &root, n, cli.idle_open));
        drop(rt);
        let mut clean = true;
        for srv in servers {
            clean &= server::stop(srv, Duration::from_secs(60));
        }
        match result {
            Ok(r) => {
                let (text, host_reset, _) = idle::render(&r);
                if k > 1 {
                    out.push_str(&format!("  ({k} servers, {} episodes each)\n", n / k));
                }
                out.push_str(&text);
                if n >= 5_000 {
                    verdicts.push(Verdict::numeric(
                        &format!(
                            "host memory per idle episode at {}",
                            thousands(u64_f64(n as u64))
                        ),
                        Goal::AtMost,
                        IDLE_MIB_TARGET,
                        host_reset,
                        "MiB",
                        2,
                    ));
                    verdicts.push(Verdict::numeric(
                        &format!("{} episodes ready", thousands(u64_f64(n as u64))),
                        Goal::AtMost,
                        IDLE_READY_TARGET_S,
                        r.ready.as_secs_f64(),
                        "s",
                        1,
                    ));
                }
                verdicts.push(Verdict::check(
                    &format!("nothing left after {}", thousands(u64_f64(n as u64))),
                    "0 left",
                    format!(
                        "{} dirs, {} processes, {} cgroups",
                        r.left.0, r.left.1, r.left.2
                    ),
                    r.teardown.is_some() && clean,
                ));
            }
            Err(e) => {
                missed = true;
                out.push_str(&format!("  N = {n}: ERROR: {}\n", failed(&e)));
            }
        }
    }
    if !verdicts.is_empty() {
        out.push_str(&report::verdict_table(&verdicts));
        missed |= verdicts.iter().any(|v| !v.pass);
    }
    Ok((out, missed))
}

fn bwrap_version() -> String {
    std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

struct Header {
    machine: Machine,
    load_at_start: String,
    load_at_end: String,
    commit: String,
    bwrap: String,
    elapsed: Duration,
}

/// ns → µs per item.
fn per_item_us(ns: u64, items: u64) -> String {
    if items == 0 {
        return "-".to_owned();
    }
    format!("{:.1}", u64_f64(ns) / u64_f64(items) / 1000.0)
}

/// A duration in ns as `f64`.
fn duration_ns(d: Duration) -> f64 {
    u64_f64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Items per second over `wall`.
fn rate(items: u64, wall: Duration) -> f64 {
    u64_f64(items) / wall.as_secs_f64().max(1e-9)
}

/// The whole report, and how many measurements failed.
#[allow(clippy::too_many_lines)]
fn render(h: &Header, plan: &Plan, r: &Results) -> (String, usize) {
    let mut out = String::new();
    let mut verdicts = Vec::new();
    let mut errors = 0;
    out.push_str(&format!(
        "terminal-bench: env-server --env terminal (local bubblewrap sandbox) vs the Terminus way\n\
         machine: {} × {}, {:.1} GiB, kernel {}; {}\n\
         load average (1/5/15 min): {} at start, {} at end; commit {}; {:.0} s\n\
         1-min load average at the start of each section (from 3a on it includes the bench's own 64-way load): {}\n",
        h.machine.nproc,
        h.machine.model,
        h.machine.mem_mib / 1024.0,
        h.machine.kernel,
        h.bwrap,
        h.load_at_start,
        h.load_at_end,
        h.commit,
        h.elapsed.as_secs_f64(),
        SECTION_LOADS.lock().map_or_else(
            |_| "-".to_owned(),
            |loads| loads
                .iter()
                .map(|(name, load)| format!("{name}: {load}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    ));

    // 1. Per-command overhead.
    let c = plan.commands;
    out.push_str(&format!(
        "\n1. Per-command overhead of `true`, 1 session, Rust client on a current-thread runtime; timed one by one\n   \
         in {} rounds alternating between the three ({} untimed first). Ours = terminal(command=\"true\") through\n   \
         the server, reply checked; Terminus way = the peer's exact bwrap argv running `/bin/bash -lc true`\n   \
         spawned by the bench, output captured (no server, no WebSocket: the peer's sandbox cost alone).\n   \
         CPU = server threads (ours; the sandbox's bash and env-sbx not included) / bwrap + bash (Terminus way)\n",
        c.rounds, c.warmup
    ));
    let mut table = Table::new(&[
        "way",
        "commands",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "cmds/s",
        "CPU µs/cmd",
    ]);
    let names = [
        "ours: persistent shell",
        "ours: fresh shell per command",
        "Terminus way: fresh bwrap + bash -lc",
    ];
    for (name, outcome) in names.iter().zip(&r.commands) {
        let cells = match outcome {
            Ok(l) => {
                let [p50, p90, p99, max] = percentiles_ms(&l.hist);
                let n = l.hist.len();
                vec![
                    thousands(u64_f64(n)),
                    p50,
                    p90,
                    p99,
                    max,
                    thousands(rate(n, l.wall)),
                    per_item_us(l.cpu_ns, n),
                ]
            }
            Err(e) => {
                errors += 1;
                vec![format!("ERROR: {e}")]
            }
        };
        let mut row = vec![(*name).to_owned()];
        row.extend(cells);
        table.row(row);
    }
    out.push_str(&table.render());
    let [persistent, fresh, terminus] = &r.commands;
    let mut ratios = Vec::new();
    if let Ok(t) = terminus {
        for (label, ours) in [("persistent", persistent), ("fresh shell", fresh)] {
            if let Ok(o) = ours {
                ratios.push(format!(
                    "{label}/Terminus way p50 {}, p99 {}",
                    ratio(q(&o.hist, 0.5), q(&t.hist, 0.5)),
                    ratio(q(&o.hist, 0.99), q(&t.hist, 0.99))
                ));
            }
        }
    }
    if !ratios.is_empty() {
        out.push_str(&format!(
            "  ratios (ours / Terminus way): {}\n",
            ratios.join("; ")
        ));
    }
    let ms = |l: &Latency, p: f64| q(&l.hist, p) / 1e6;
    verdicts.push(match persistent {
        Ok(l) => Verdict::numeric(
            "persistent shell `true` p50",
            Goal::AtMost,
            PERSISTENT_P50_TARGET_MS,
            ms(l, 0.5),
            "ms",
            3,
        ),
        Err(_) => Verdict::unmeasured("persistent shell `true` p50", "≤ 0.5 ms", "failed"),
    });
    verdicts.push(match fresh {
        Ok(l) => Verdict::numeric(
            "fresh-shell `true` p50",
            Goal::AtMost,
            FRESH_TARGET_MS,
            ms(l, 0.5),
            "ms",
            3,
        ),
        Err(_) => Verdict::unmeasured("fresh-shell `true` p50", "≤ 10 ms", "failed"),
    });

    // 2. Reset.
    out.push_str(&format!(
        "\n2. Reset to ready: {} fresh episodes one at a time ({} untimed first), default reset (persistent shell):\n   \
         connect, reset (timed from sending it to its observation, status \"ready\"), one `true`, close; the next\n   \
         starts once the server has destroyed the sandbox (its directory is gone)\n",
        plan.resets, plan.reset_warmup
    ));
    match &r.resets {
        Ok(s) => {
            let mut table = Table::new(&["phase", "p50 ms", "p90 ms", "p99 ms", "max ms"]);
            for (name, hist) in [
                ("connect (TCP + WebSocket)", &s.connect),
                ("reset → ready", &s.reset),
                ("first `true` (shell start finishes)", &s.first_command),
                ("episode start: connect + reset + first `true`", &s.episode),
                ("close (until the server closed the socket)", &s.close),
                ("then until the sandbox directory is gone", &s.teardown),
            ] {
                let mut row = vec![name.to_owned()];
                row.extend(percentiles_ms(hist));
                table.row(row);
            }
            out.push_str(&table.render());
            verdicts.push(Verdict::numeric(
                "reset to ready p50",
                Goal::AtMost,
                RESET_P50_TARGET_MS,
                q(&s.reset, 0.5) / 1e6,
                "ms",
                3,
            ));
        }
        Err(e) => {
            errors += 1;
            out.push_str(&format!("  ERROR: {e}\n"));
            verdicts.push(Verdict::unmeasured(
                "reset to ready p50",
                "≤ 30 ms",
                "failed",
            ));
        }
    }

    // 3. Throughput.
    out.push_str(&format!(
        "\n3. Throughput, {} concurrent terminal episodes, {} s windows, Rust client on a multi-thread runtime\n   \
         ({} workers) sharing the machine's {} CPUs with the server and the sandboxes\n",
        plan.sessions,
        plan.window.as_secs(),
        h.machine.nproc,
        h.machine.nproc
    ));
    let a_head = match &r.throughput {
        Ok(t) => format!(
            "  a) {} persistent sessions (opened at once: {} concurrent resets, p50 {} ms, p99 {} ms, all ready in {} ms),\n     \
             then each runs `true` back to back; the Terminus way with {} threads, each with its own sandbox directory\n     \
             (CPU: server threads / bwrap + bash)\n",
            t.sessions,
            t.sessions,
            stats::ms(q(&t.open_resets, 0.5)),
            stats::ms(q(&t.open_resets, 0.99)),
            stats::ms(duration_ns(t.open_wall)),
            plan.sessions
        ),
        Err(_) => format!(
            "  a) {} persistent sessions running `true` back to back; the Terminus way with {} threads\n",
            plan.sessions, plan.sessions
        ),
    };
    out.push_str(&a_head);
    let mut table = Table::new(&[
        "load",
        "commands",
        "commands/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "CPU µs/cmd",
        "machine busy",
    ]);
    let row =
        |name: String, hist: &hdrhistogram::Histogram<u64>, n: u64, wall, cpu_ns, busy: f64| {
            let [p50, p90, p99, max] = percentiles_ms(hist);
            vec![
                name,
                thousands(u64_f64(n)),
                thousands(rate(n, wall)),
                p50,
                p90,
                p99,
                max,
                per_item_us(cpu_ns, n),
                format!("{busy:.0}%"),
            ]
        };
    match &r.throughput {
        Ok(t) => table.row(row(
            format!("ours: {} sessions × `true`", t.sessions),
            &t.hist,
            t.commands,
            t.wall,
            t.server_cpu_ns,
            t.machine.busy_percent(),
        )),
        Err(e) => {
            errors += 1;
            table.row(vec![
                format!("ours: {} sessions × `true`", plan.sessions),
                format!("ERROR: {e}"),
            ]);
        }
    }
    match &r.terminus_throughput {
        Ok(t) => table.row(row(
            format!("Terminus way: {} threads × `true`", t.threads),
            &t.hist,
            t.commands,
            t.wall,
            t.cpu_ns,
            t.machine.busy_percent(),
        )),
        Err(e) => {
            errors += 1;
            table.row(vec![
                format!("Terminus way: {} threads × `true`", plan.sessions),
                format!("ERROR: {e}"),
            ]);
        }
    }
    out.push_str(&table.render());
    if let (Ok(o), Ok(t)) = (&r.throughput, &r.terminus_throughput) {
        out.push_str(&format!(
            "  ratio (ours / Terminus way): commands/s {}\n",
            ratio(rate(o.commands, o.wall), rate(t.commands, t.wall))
        ));
    }
    match &r.episodes {
        Ok(e) => {
            out.push_str(&format!(
                "  b) {} workers, each running whole episodes back to back: connect → reset(verify=[\"grep -qx ok done.txt\"])\n     \
                 → terminal(command=\"echo ok > done.txt\") → verify (reward 1.0 checked) → close\n",
                e.workers
            ));
            let mut table = Table::new(&[
                "load",
                "episodes",
                "episodes/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "server CPU ms/episode",
                "machine busy",
                "backlog at end",
                "drain ms",
            ]);
            let [p50, p90, p99, max] = percentiles_ms(&e.hist);
            table.row(vec![
                format!("{} workers × episode", e.workers),
                thousands(u64_f64(e.episodes)),
                format!("{:.1}", rate(e.episodes, e.wall)),
                p50,
                p90,
                p99,
                max,
                if e.episodes == 0 {
                    "-".to_owned()
                } else {
                    format!(
                        "{:.2}",
                        u64_f64(e.server_cpu_ns) / u64_f64(e.episodes) / 1e6
                    )
                },
                format!("{:.0}%", e.machine.busy_percent()),
                format!("{} sandboxes", e.backlog),
                stats::ms(duration_ns(e.drain)),
            ]);
            out.push_str(&table.render());
        }
        Err(err) => {
            errors += 1;
            out.push_str(&format!("  b) ERROR: {err}\n"));
        }
    }

    // 4. Cleanup.
    out.push_str(&format!(
        "\n4. Cleanup: {} sandbox(es) left after every session closed; server {} on SIGTERM; {} left after it stopped\n",
        r.left_before_stop,
        if r.clean_exit {
            "exited by itself"
        } else {
            "did NOT exit (killed)"
        },
        r.left_after_stop
    ));
    verdicts.push(Verdict::check(
        "every sandbox destroyed",
        "0 left",
        format!("{} left", r.left_before_stop + r.left_after_stop),
        r.left_before_stop == 0 && r.left_after_stop == 0 && r.clean_exit,
    ));

    out.push_str(
        "\nTargets (DESIGN.md, \"Performance targets\"): env-server, terminal env, local sandbox\n",
    );
    out.push_str(&report::verdict_table(&verdicts));
    let passed = verdicts.iter().filter(|v| v.pass).count();
    out.push_str(&format!("  {passed} of {} targets met\n", verdicts.len()));
    (out, errors)
}
