//! `chaos-soak`: a bounded soak of the terminal env through the release `env-server` and the
//! Rust client, with faults. N episodes, drawn from a seeded RNG, mix
//!
//! - oracle episodes (`fix-fizzbuzz` solved by its `solution.sh`: reward 1.0 expected),
//! - client disconnects in the middle of a reset or a command (the connection is dropped),
//! - hostile commands (`payloads::HOSTILE`: fork bomb, daemons, memory and disk fill,
//!   `kill -9 -1`, killing the supervisor, closed stdout, huge output),
//! - forgery attempts (`payloads::forgeries`): `fix-fizzbuzz` left unsolved, or an inline
//!   verify command, with a payload that tries to obtain a reward anyway. Any reward above 0
//!   on one of them is a forged reward.
//!
//! Every `--kill-every` episodes the server is SIGKILLed while episodes are in flight and
//! started again on the same sandbox root: the new server's orphan sweep must collect what the
//! dead one left. At the end the server is stopped with SIGTERM and the soak counts what
//! leaked: processes of the sandbox uids, `openenv-rs-*` directories, cgroups of the servers'
//! naming, uid claims, and session slots (checked before the stop by filling every slot). It
//! exits non-zero when any count or the forged count is not 0, or when the run was cut short.
//!
//! Everything is on 127.0.0.1; the servers it starts are stopped by their PID. Usage:
//! `cargo run --release -p env-bench --bin chaos-soak -- --episodes 10000 --concurrency 32 --kill-every 1000`
//! (`docs/chaos-soak.md`).

#![allow(clippy::print_stdout)]

#[path = "../terminal-bench/common.rs"]
mod common;
mod leaks;
mod payloads;
#[allow(dead_code)]
#[path = "../env-bench/procs.rs"]
mod procs;
#[allow(dead_code)]
#[path = "../env-bench/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../terminal-bench/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use env_client::protocol::JsonMap;
use env_client::{ClientConfig, EnvClient};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use common::{object, reset_ready};
use payloads::{Forgery, HOSTILE, Setup};
use procs::{ServerProc, spawn_server};
use report::Table;
use server::{Paths, SandboxRoot};

/// A chaos soak of the terminal env: episodes with disconnects, hostile commands, forgery
/// attempts and server kills; then a count of what leaked.
#[derive(Debug, Parser)]
#[command(name = "chaos-soak")]
struct Cli {
    /// Episodes to run.
    #[arg(long, default_value_t = 1_000)]
    episodes: u64,
    /// Episodes in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// SIGKILL the server and start it again after every this many episodes (0 = never).
    #[arg(long, default_value_t = 1_000)]
    kill_every: u64,
    /// Seed of the episode mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Start no new episode after this many seconds.
    #[arg(long, default_value_t = 3_600)]
    max_seconds: u64,
    /// Do not run `cargo build` for env-server and env-sbx first.
    #[arg(long)]
    no_build: bool,
    /// First host uid of the sandboxes (a range of its own, so other servers on the machine
    /// are not counted).
    #[arg(long, default_value_t = 4_200_000)]
    uid_base: u32,
    /// Host uids in the range.
    #[arg(long, default_value_t = 4_096)]
    uid_count: u32,
    /// An extra argument for `env-server serve` (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
}

static START: OnceLock<Instant> = OnceLock::new();

/// One progress line on stderr, with the time since the start.
pub(crate) fn progress(message: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[chaos-soak {t:>7.1}s] {message}");
}

/// Command timeout of hostile and forgery episodes, seconds.
const COMMAND_TIMEOUT_S: u64 = 5;
/// Longest a single client request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Per-sandbox limits of the soak's server: small enough that 32 hostile episodes at once fit
/// the machine.
const SOAK_LIMITS: [&str; 8] = [
    "--local-pids-max",
    "256",
    "--local-memory-bytes",
    "268435456",
    "--local-file-bytes",
    "33554432",
    "--max-command-timeout-s",
    "30",
];

/// What an episode does.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `fix-fizzbuzz` solved by the oracle; verified by `verify` or by `final_answer`.
    Oracle { final_answer: bool },
    /// The connection is dropped during the reset (`in_reset`) or a long command, after `ms`.
    Disconnect { in_reset: bool, ms: u64 },
    /// A hostile command (index into `HOSTILE`), then `echo alive`, then verify or close.
    Hostile { index: usize, verify: bool },
    /// A forgery attempt (index into `forgeries()`), then verify or `final_answer`.
    Forgery { index: usize, final_answer: bool },
}

impl Kind {
    fn name(self, forgeries: &[Forgery]) -> String {
        match self {
            Self::Oracle { .. } => "oracle (fix-fizzbuzz solved)".to_owned(),
            Self::Disconnect { in_reset: true, .. } => "disconnect during reset".to_owned(),
            Self::Disconnect { .. } => "disconnect during a command".to_owned(),
            Self::Hostile { index, .. } => format!("hostile: {}", HOSTILE[index].name),
            Self::Forgery { index, .. } => format!("forgery: {}", forgeries[index].name),
        }
    }
}

/// splitmix64: a small seeded generator (the mix must be the same for a seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap_or(0)
    }
}

/// The episode mix: 30 % oracle, 15 % disconnects, 30 % hostile, 25 % forgeries.
fn draw(rng: &mut Rng, forgeries: usize) -> Kind {
    match rng.below(100) {
        0..30 => Kind::Oracle {
            final_answer: rng.below(2) == 0,
        },
        30..45 => Kind::Disconnect {
            in_reset: rng.below(3) == 0,
            ms: rng.below(1_500),
        },
        45..75 => Kind::Hostile {
            index: rng.index(HOSTILE.len()),
            verify: rng.below(2) == 0,
        },
        _ => Kind::Forgery {
            index: rng.index(forgeries),
            final_answer: rng.below(2) == 0,
        },
    }
}

/// How an episode ended.
#[derive(Debug)]
enum Outcome {
    /// As expected (oracle 1.0, forgery 0.0, hostile answered or its sandbox reported lost,
    /// disconnect done).
    Ok,
    /// A forgery episode got a reward above 0.
    Forged(f64),
    /// An oracle episode got a reward other than 1.0.
    WrongReward(f64),
    /// The server was SIGKILLed while the episode ran.
    CutByKill,
    /// A client error that no kill explains.
    Error(String),
}

/// Counts per episode kind.
#[derive(Debug, Default, Clone)]
struct Counts {
    runs: u64,
    ok: u64,
    forged: u64,
    wrong: u64,
    cut: u64,
    errors: u64,
}

async fn connect(url: &str) -> anyhow::Result<EnvClient> {
    let config = ClientConfig::default()
        .with_connect_timeout(Duration::from_secs(20))
        .with_request_timeout(Some(REQUEST_TIMEOUT));
    EnvClient::connect_with(url, config)
        .await
        .context("connect")
}

/// `terminal(command=…)`: the text and whether the episode ended.
async fn command(client: &EnvClient, cmd: &str) -> anyhow::Result<(String, bool)> {
    let call = client
        .call_tool("terminal", object(json!({ "command": cmd })))
        .await
        .context("terminal(command)")?;
    let text = match &call.value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok((text, call.done))
}

/// The reward by `verify`, or by `terminal(final_answer=…)`.
async fn reward(client: &EnvClient, final_answer: bool) -> anyhow::Result<f64> {
    if final_answer {
        let call = client
            .call_tool("terminal", object(json!({ "final_answer": "done" })))
            .await
            .context("terminal(final_answer)")?;
        Ok(call
            .reward
            .map_or(0.0, env_client::protocol::Reward::as_f64))
    } else {
        Ok(client.verify().await.context("verify")?.reward)
    }
}

/// What every episode needs.
struct Shared {
    oracle: String,
    forgeries: Vec<Forgery>,
}

async fn oracle(url: &str, shared: &Shared, final_answer: bool) -> anyhow::Result<Outcome> {
    let client = connect(url).await?;
    reset_ready(&client, object(json!({ "task_path": "fix-fizzbuzz" }))).await?;
    command(&client, &shared.oracle).await?;
    let r = reward(&client, final_answer).await?;
    let _ = client.close().await;
    Ok(if (r - 1.0).abs() < 1e-9 {
        Outcome::Ok
    } else {
        Outcome::WrongReward(r)
    })
}

async fn disconnect(url: &str, in_reset: bool, ms: u64) -> anyhow::Result<Outcome> {
    let client = connect(url).await?;
    let cut = Duration::from_millis(ms);
    if in_reset {
        let _ = tokio::time::timeout(
            cut / 20,
            client.reset(object(json!({ "task_path": "fix-fizzbuzz" }))),
        )
        .await;
    } else {
        reset_ready(&client, JsonMap::new()).await?;
        let _ = tokio::time::timeout(cut, command(&client, payloads::LONG_COMMAND)).await;
    }
    // Dropped without a close frame: the server sees the connection vanish.
    drop(client);
    Ok(Outcome::Ok)
}

async fn hostile(url: &str, index: usize, verify: bool) -> anyhow::Result<Outcome> {
    let client = connect(url).await?;
    reset_ready(
        &client,
        object(json!({ "command_timeout_s": COMMAND_TIMEOUT_S, "verify": ["true"] })),
    )
    .await?;
    let (_, done) = command(&client, HOSTILE[index].command).await?;
    if !done {
        // The sandbox may be gone (its supervisor killed): the episode then ends with a
        // one-line error, which is an answer too.
        let (_, done) = command(&client, "echo alive").await?;
        if !done && verify {
            reward(&client, false).await?;
        }
    }
    let _ = client.close().await;
    Ok(Outcome::Ok)
}

async fn forgery(
    url: &str,
    shared: &Shared,
    index: usize,
    final_answer: bool,
) -> anyhow::Result<Outcome> {
    let f = &shared.forgeries[index];
    let client = connect(url).await?;
    let args = match f.setup {
        Setup::FizzBuzz => {
            json!({ "task_path": "fix-fizzbuzz", "command_timeout_s": COMMAND_TIMEOUT_S })
        }
        Setup::InlineVerify => json!({
            "verify": ["python3 check.py"],
            "reward_file": true,
            "files": { "check.py": payloads::INLINE_CHECK, "solution.py": payloads::INLINE_SOLUTION },
            "command_timeout_s": COMMAND_TIMEOUT_S,
        }),
    };
    reset_ready(&client, object(args)).await?;
    command(&client, f.command).await?;
    // Give planted daemons a moment to start their loops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reward(&client, final_answer).await?;
    let _ = client.close().await;
    Ok(if r > 0.0 {
        Outcome::Forged(r)
    } else {
        Outcome::Ok
    })
}

async fn run_episode(url: &str, shared: &Shared, kind: Kind) -> anyhow::Result<Outcome> {
    match kind {
        Kind::Oracle { final_answer } => oracle(url, shared, final_answer).await,
        Kind::Disconnect { in_reset, ms } => disconnect(url, in_reset, ms).await,
        Kind::Hostile { index, verify } => hostile(url, index, verify).await,
        Kind::Forgery {
            index,
            final_answer,
        } => forgery(url, shared, index, final_answer).await,
    }
}

/// Everything recorded during the run.
#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<String, Counts>,
    /// First error messages (at most 30).
    errors: Vec<String>,
    /// Forged rewards: (episode, kind, reward).
    forged: Vec<(u64, String, f64)>,
}

impl Tally {
    fn record(&mut self, episode: u64, kind: &str, outcome: Outcome) {
        let c = self.by_kind.entry(kind.to_owned()).or_default();
        c.runs += 1;
        match outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Forged(r) => {
                c.forged += 1;
                self.forged.push((episode, kind.to_owned(), r));
            }
            Outcome::WrongReward(r) => {
                c.wrong += 1;
                if self.errors.len() < 30 {
                    self.errors.push(format!(
                        "episode {episode} ({kind}): reward {r}, expected 1.0"
                    ));
                }
            }
            Outcome::CutByKill => c.cut += 1,
            Outcome::Error(e) => {
                c.errors += 1;
                if self.errors.len() < 30 {
                    self.errors.push(format!("episode {episode} ({kind}): {e}"));
                }
            }
        }
    }
}

/// One server generation's figures at its start.
struct Restart {
    /// Server generation (1 = the first restart).
    generation: u32,
    /// Episode directories left when the new server was ready (after its sweep).
    dirs_after_sweep: usize,
    /// Processes of the sandbox uids 5 s after the new server was ready.
    procs_after_sweep: usize,
    /// Cgroups of dead servers 5 s after the new server was ready.
    cgroups_after_sweep: usize,
    /// Start to ready, ms.
    ready_ms: u128,
}

/// The binaries the soak runs, copied once so a rebuild during the run changes nothing.
struct Bins {
    dir: PathBuf,
}

impl Bins {
    fn copy(from: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("chaos-soak-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        for name in ["env-server", "env-sbx"] {
            std::fs::copy(from.join(name), dir.join(name))
                .with_context(|| format!("cannot copy {name}"))?;
        }
        Ok(Self { dir })
    }
}

impl Drop for Bins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Run<'a> {
    cli: &'a Cli,
    paths: &'a Paths,
    bins: &'a Bins,
    root: &'a SandboxRoot,
    tasks: PathBuf,
    max_sessions: usize,
}

impl Run<'_> {
    fn start(&self, generation: u32) -> anyhow::Result<ServerProc> {
        let mut c = Command::new(self.bins.dir.join("env-server"));
        c.args(["serve", "--env", "terminal", "--sandbox", "local"])
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--max-sessions", &self.max_sessions.to_string()])
            .arg("--sandbox-root")
            .arg(self.root.path())
            .arg("--sbx-path")
            .arg(self.bins.dir.join("env-sbx"))
            .arg("--tasks-dir")
            .arg(&self.tasks)
            .args(["--local-uid-base", &self.cli.uid_base.to_string()])
            .args(["--local-uid-count", &self.cli.uid_count.to_string()])
            .args(SOAK_LIMITS)
            .args(&self.cli.server_arg);
        for (key, _) in std::env::vars_os() {
            if let Some(key) = key.to_str()
                && (key.starts_with("ENV_SERVER_") || key == "RUST_LOG")
            {
                c.env_remove(key);
            }
        }
        spawn_server(
            c,
            &format!("env-server #{generation}"),
            &self
                .paths
                .log_dir
                .join(format!("env-server-{generation}.log")),
            Duration::from_secs(120),
        )
    }

    fn uids(&self) -> std::ops::Range<u32> {
        self.cli.uid_base..self.cli.uid_base.saturating_add(self.cli.uid_count)
    }
}

#[allow(clippy::too_many_lines)]
fn main() -> anyhow::Result<()> {
    START.get_or_init(Instant::now);
    let cli = Cli::parse();
    let (repo, bin_dir, log_dir) = procs::bench_dirs("chaos-soak-logs")?;
    let paths = Paths {
        repo,
        bin_dir,
        log_dir,
    };
    if !cli.no_build {
        progress("cargo build env-server and env-sbx (no-op when fresh)");
        server::build(&paths)?;
    }
    procs::raise_fd_limit()?;
    let bins = Bins::copy(&paths.bin_dir)?;
    let root = SandboxRoot::create()?;
    let tasks = paths.repo.join("tasks");
    let shared = Arc::new(Shared {
        oracle: std::fs::read_to_string(tasks.join("fix-fizzbuzz/solution.sh"))
            .context("cannot read tasks/fix-fizzbuzz/solution.sh")?,
        forgeries: payloads::forgeries(),
    });
    let concurrency = cli.concurrency.max(1);
    let run = Run {
        cli: &cli,
        paths: &paths,
        bins: &bins,
        root: &root,
        tasks,
        // Room for sessions whose sandbox is still being torn down.
        max_sessions: concurrency * 2 + 8,
    };
    let mut rng = Rng(cli.seed);
    let plan: Vec<Kind> = (0..cli.episodes)
        .map(|_| draw(&mut rng, shared.forgeries.len()))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs(cli.max_seconds);
    let mut server_pids: Vec<u32> = Vec::new();
    let mut restarts: Vec<Restart> = Vec::new();
    let mut generation = 0u32;
    let mut srv = run.start(generation)?;
    server_pids.push(srv.pid());
    let block = if cli.kill_every == 0 {
        cli.episodes.max(1)
    } else {
        cli.kill_every
    };
    let mut started = 0u64;
    let mut cut_short = false;
    let soak_start = Instant::now();
    while started < cli.episodes {
        let end = (started + block).min(cli.episodes);
        let kill_after = end < cli.episodes;
        let url = srv.url();
        let killed = Arc::new(AtomicBool::new(false));
        let sem = Arc::new(Semaphore::new(concurrency));
        let mut tasks = Vec::new();
        for i in started..end {
            if Instant::now() > deadline {
                cut_short = true;
                break;
            }
            let permit = rt
                .block_on(Arc::clone(&sem).acquire_owned())
                .context("semaphore closed")?;
            let kind = plan[usize::try_from(i).unwrap_or(usize::MAX)];
            let (url, shared, episode_tally, killed) = (
                url.clone(),
                Arc::clone(&shared),
                Arc::clone(&tally),
                Arc::clone(&killed),
            );
            tasks.push(rt.spawn(async move {
                let name = kind.name(&shared.forgeries);
                let outcome = match run_episode(&url, &shared, kind).await {
                    Ok(o) => o,
                    Err(_) if killed.load(Ordering::SeqCst) => Outcome::CutByKill,
                    Err(e) => Outcome::Error(format!("{e:#}").replace('\n', " | ")),
                };
                if let Ok(mut t) = episode_tally.lock() {
                    t.record(i, &name, outcome);
                }
                drop(permit);
            }));
            if (i + 1) % 250 == 0 {
                let forged = tally.lock().map_or(0, |t| t.forged.len());
                progress(&format!(
                    "{} episodes started, {forged} forged so far, {} sandbox dirs now",
                    i + 1,
                    root.count()
                ));
            }
        }
        started = end;
        if cut_short {
            rt.block_on(async {
                for t in tasks {
                    let _ = t.await;
                }
            });
            break;
        }
        if kill_after {
            // SIGKILL while the block's last episodes are in flight.
            killed.store(true, Ordering::SeqCst);
            progress(&format!(
                "SIGKILL env-server (pid {}) with {} episode(s) in flight",
                srv.pid(),
                concurrency - sem.available_permits()
            ));
            srv.guard.stop();
            rt.block_on(async {
                for t in tasks {
                    let _ = t.await;
                }
            });
            generation += 1;
            let t0 = Instant::now();
            srv = run.start(generation)?;
            let ready_ms = t0.elapsed().as_millis();
            server_pids.push(srv.pid());
            let dirs_after_sweep = root.count();
            std::thread::sleep(Duration::from_secs(5));
            let procs_after_sweep = common::sandbox_processes(&run.uids()).len();
            let cgroups_after_sweep =
                common::server_cgroups(&server_pids[..server_pids.len() - 1]).len();
            progress(&format!(
                "restarted (#{generation}, ready in {ready_ms} ms): {dirs_after_sweep} dirs after its sweep, \
                 {procs_after_sweep} processes and {cgroups_after_sweep} dead servers' cgroups 5 s later"
            ));
            restarts.push(Restart {
                generation,
                dirs_after_sweep,
                procs_after_sweep,
                cgroups_after_sweep,
                ready_ms,
            });
        } else {
            rt.block_on(async {
                for t in tasks {
                    let _ = t.await;
                }
            });
        }
    }
    let soak_wall = soak_start.elapsed();
    progress("all episodes done; checking the session slots");
    let slots = rt.block_on(leaks::free_slots(&srv.url(), run.max_sessions));
    progress("stopping env-server (SIGTERM)");
    let clean_exit = server::stop(srv, Duration::from_secs(60));
    // bwrap's outer processes exit a moment after their sandbox's namespace ends.
    let settle = Instant::now();
    let mut leaked = leaks::count(root.path(), &run.uids(), &server_pids);
    while !leaked.is_zero() && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        leaked = leaks::count(root.path(), &run.uids(), &server_pids);
    }
    drop(rt);

    let t = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    let ran: u64 = t.by_kind.values().map(|c| c.runs).sum();
    let mut out = String::new();
    out.push_str(&format!(
        "chaos-soak: {ran} of {} episodes in {:.0} s (seed {}, concurrency {concurrency}, SIGKILL + restart every {} \
         episodes: {} restarts){}\n\
         machine: {} CPUs, load average {} at end; commit {}\n\
         server limits per sandbox: pids 256, memory 256 MiB, file size 32 MiB; command timeout {COMMAND_TIMEOUT_S} s\n\n",
        cli.episodes,
        soak_wall.as_secs_f64(),
        cli.seed,
        cli.kill_every,
        restarts.len(),
        if cut_short { " — CUT SHORT by --max-seconds" } else { "" },
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        procs::load_average(),
        procs::git_commit(&paths.repo),
    ));
    let mut table = Table::new(&[
        "episode kind",
        "runs",
        "as expected",
        "FORGED",
        "wrong reward",
        "cut by SIGKILL",
        "errors",
    ]);
    let mut total = Counts::default();
    for (name, c) in &t.by_kind {
        table.row(vec![
            name.clone(),
            c.runs.to_string(),
            c.ok.to_string(),
            c.forged.to_string(),
            c.wrong.to_string(),
            c.cut.to_string(),
            c.errors.to_string(),
        ]);
        total.runs += c.runs;
        total.ok += c.ok;
        total.forged += c.forged;
        total.wrong += c.wrong;
        total.cut += c.cut;
        total.errors += c.errors;
    }
    table.row(vec![
        "all".to_owned(),
        total.runs.to_string(),
        total.ok.to_string(),
        total.forged.to_string(),
        total.wrong.to_string(),
        total.cut.to_string(),
        total.errors.to_string(),
    ]);
    out.push_str(&table.render());
    if !restarts.is_empty() {
        let mut table = Table::new(&[
            "restart",
            "ready ms",
            "dirs after sweep",
            "processes 5 s later",
            "dead servers' cgroups 5 s later",
        ]);
        for r in &restarts {
            table.row(vec![
                format!("#{}", r.generation),
                r.ready_ms.to_string(),
                r.dirs_after_sweep.to_string(),
                r.procs_after_sweep.to_string(),
                r.cgroups_after_sweep.to_string(),
            ]);
        }
        out.push_str(
            "\nRestarts after SIGKILL (same sandbox root: the new server's orphan sweep):\n",
        );
        out.push_str(&table.render());
    }
    let slot_text = match &slots {
        Ok(free) => format!(
            "{} of {}",
            run.max_sessions - free.min(&run.max_sessions),
            run.max_sessions
        ),
        Err(e) => format!("unknown ({e:#})"),
    };
    let slots_leaked = slots
        .as_ref()
        .map_or(1, |free| run.max_sessions.saturating_sub(*free));
    out.push_str(&format!(
        "\nLeaks after the graceful stop (server {} on SIGTERM):\n",
        if clean_exit {
            "exited by itself"
        } else {
            "did NOT exit, killed"
        }
    ));
    let mut table = Table::new(&["what", "left"]);
    table.row(vec![
        format!(
            "processes of sandbox uids {}..{}",
            run.uids().start,
            run.uids().end
        ),
        leaked.processes.len().to_string(),
    ]);
    table.row(vec![
        "openenv-rs-* directories under the sandbox root".to_owned(),
        leaked.dirs.to_string(),
    ]);
    table.row(vec![
        "cgroups (pids, memory) of the soak's servers".to_owned(),
        leaked.cgroups.len().to_string(),
    ]);
    table.row(vec![
        "sandbox uid claims (abstract sockets)".to_owned(),
        leaked.uid_claims.to_string(),
    ]);
    table.row(vec![
        "session slots held with no client (before the stop)".to_owned(),
        slot_text,
    ]);
    table.row(vec!["FORGED rewards".to_owned(), total.forged.to_string()]);
    out.push_str(&table.render());
    for (pid, uid, comm) in leaked.processes.iter().take(10) {
        out.push_str(&format!("  leaked process {pid} uid {uid}: {comm}\n"));
    }
    for path in leaked.cgroups.iter().take(10) {
        out.push_str(&format!("  leaked cgroup {}\n", path.display()));
    }
    if !t.forged.is_empty() {
        out.push_str("\nForged rewards (first 20):\n");
        for (episode, kind, r) in t.forged.iter().take(20) {
            out.push_str(&format!("  episode {episode}: {kind}: reward {r}\n"));
        }
    }
    if !t.errors.is_empty() {
        out.push_str("\nErrors and wrong rewards (first 30):\n");
        for e in &t.errors {
            out.push_str(&format!("  {e}\n"));
        }
    }
    let failed = total.forged > 0
        || !leaked.is_zero()
        || slots_leaked > 0
        || !clean_exit
        || cut_short
        || total.wrong > 0
        || total.errors > 0;
    out.push_str(&format!(
        "\nverdict: {}\n",
        if failed {
            "FAIL"
        } else {
            "PASS: nothing leaked, nothing forged"
        }
    ));
    print!("{out}");
    drop(root);
    if failed {
        bail!("the soak failed (see the verdict)");
    }
    Ok(())
}
