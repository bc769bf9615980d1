//! Section 5: many concurrent idle terminal episodes, and what each costs the host.
//!
//! N episodes are opened (connect + default reset, `open` at a time) and held; then, with
//! every episode ready and idle, the bench reads
//!
//! - the processes of the sandboxes (every process of the server's sandbox uid range), by
//!   name: count, RSS and PSS (`/proc/<pid>/smaps_rollup`), page tables (`VmPTE`);
//! - the kernel's side from `/proc/meminfo` deltas: `PageTables`, `KernelStack`, `Slab`
//!   (`SUnreclaim`), `Percpu` (memory cgroups), `Shmem` (tmpfs);
//! - the cgroups of the sandboxes and the server's own RSS delta;
//! - host memory per episode = (`MemAvailable` before − with the episodes) / N.
//!
//! Then each episode runs one `true` (the persistent shell exists from here on, whether it
//! was started at reset or lazily) and the same readings are taken again. Then every
//! episode closes and the bench waits until every sandbox directory, process and cgroup is
//! gone.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use env_client::{ClientConfig, EnvClient};
use tokio::sync::Semaphore;

use crate::common::{sandbox_processes, server_cgroups};
use crate::server::SandboxRoot;

/// `/proc/meminfo` fields read, in KiB.
const MEMINFO: [&str; 8] = [
    "MemAvailable",
    "MemFree",
    "Shmem",
    "Slab",
    "SUnreclaim",
    "PageTables",
    "KernelStack",
    "Percpu",
];

/// One reading of `/proc/meminfo` (KiB by field).
#[derive(Debug, Clone, Default)]
pub(crate) struct MemInfo(BTreeMap<&'static str, i64>);

impl MemInfo {
    fn read() -> Self {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mut m = BTreeMap::new();
        for line in text.lines() {
            let Some((key, rest)) = line.split_once(':') else {
                continue;
            };
            if let Some(&field) = MEMINFO.iter().find(|&&f| f == key) {
                let kib = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                m.insert(field, kib);
            }
        }
        Self(m)
    }

    /// `field` in KiB.
    pub(crate) fn get(&self, field: &str) -> i64 {
        self.0.get(field).copied().unwrap_or(0)
    }
}

/// The sandboxes' processes of one name.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProcGroup {
    /// How many.
    pub(crate) count: u64,
    /// Sum of RSS, KiB.
    pub(crate) rss_kib: u64,
    /// Sum of PSS, KiB.
    pub(crate) pss_kib: u64,
    /// Sum of `VmPTE`, KiB.
    pub(crate) pte_kib: u64,
}

/// Reads one of the server's own figures from a reading.
type ServerField = fn(&Reading) -> u64;

/// Every reading of one state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reading {
    /// `/proc/meminfo`.
    pub(crate) mem: MemInfo,
    /// Sandbox processes by name.
    pub(crate) procs: BTreeMap<String, ProcGroup>,
    /// Cgroup directories of the sandboxes (`pids` and `memory` together).
    pub(crate) cgroups: u64,
    /// Server `VmRSS`, KiB.
    pub(crate) server_rss_kib: u64,
    /// Server open descriptors.
    pub(crate) server_fds: u64,
    /// Server threads.
    pub(crate) server_threads: u64,
    /// Sandbox directories.
    pub(crate) dirs: usize,
    /// Slab caches (`/proc/slabinfo`): bytes in their slabs (`num_slabs × pagesperslab ×
    /// page size`), by cache name.
    pub(crate) slabs: BTreeMap<String, i64>,
}

/// Bytes held by each slab cache, from `/proc/slabinfo` (root only; empty otherwise).
fn slab_bytes() -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // name active num objsize perslab pagesperslab : tunables l b s : slabdata active num shared
        let (Some(name), Some(pages), Some(slabs)) = (
            f.first(),
            f.get(5).and_then(|v| v.parse::<i64>().ok()),
            f.get(14).and_then(|v| v.parse::<i64>().ok()),
        ) else {
            continue;
        };
        out.insert((*name).to_owned(), pages * slabs * 4096);
    }
    out
}

fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Reading {
    fn take(servers: &[u32], uids: &Range<u32>, root: &SandboxRoot) -> Self {
        // The kernel's figures first: reading every process's `/proc` files below creates
        // inodes and dentries of its own.
        let (mem, slabs) = (MemInfo::read(), slab_bytes());
        let mut procs: BTreeMap<String, ProcGroup> = BTreeMap::new();
        for (pid, _uid, name) in sandbox_processes(uids) {
            let rollup =
                std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let g = procs.entry(name).or_default();
            g.count += 1;
            g.rss_kib += kib_field(&rollup, "Rss:");
            g.pss_kib += kib_field(&rollup, "Pss:");
            g.pte_kib += kib_field(&status, "VmPTE:");
        }
        let (mut server_rss_kib, mut server_fds, mut server_threads) = (0, 0, 0);
        for server in servers {
            let status =
                std::fs::read_to_string(format!("/proc/{server}/status")).unwrap_or_default();
            server_rss_kib += kib_field(&status, "VmRSS:");
            server_threads += kib_field(&status, "Threads:");
            server_fds +=
                std::fs::read_dir(format!("/proc/{server}/fd")).map_or(0, |d| d.count() as u64);
        }
        Self {
            mem,
            procs,
            cgroups: server_cgroups(servers).len() as u64,
            server_rss_kib,
            server_fds,
            server_threads,
            dirs: root.count(),
            slabs,
        }
    }

    /// Processes of the sandboxes, all names.
    pub(crate) fn process_count(&self) -> u64 {
        self.procs.values().map(|g| g.count).sum()
    }
}

/// The outcome of one N.
pub(crate) struct Idle {
    /// Episodes held.
    pub(crate) n: usize,
    /// Before any was opened.
    pub(crate) before: Reading,
    /// All N ready and idle (reset done, no command yet).
    pub(crate) after_reset: Reading,
    /// After one `true` in each.
    pub(crate) after_command: Reading,
    /// From the first connect until the last reset was ready.
    pub(crate) ready: Duration,
    /// Running one `true` in every episode (`open` at a time).
    pub(crate) commands: Duration,
    /// From the first close until the last sandbox directory, process and cgroup was gone.
    pub(crate) teardown: Option<Duration>,
    /// What was left after the teardown limit: (directories, processes, cgroups).
    pub(crate) left: (usize, u64, u64),
}

/// Seconds the host is given to settle before a reading (lazy frees, RCU).
const SETTLE: Duration = Duration::from_secs(3);
/// Longest the teardown may take.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(300);

/// Section 5 for `n` episodes spread over the servers at `urls` (PIDs `servers`), opened
/// `open` at a time, on the current (multi-thread) runtime.
pub(crate) async fn measure(
    urls: &[String],
    servers: &[u32],
    uids: &Range<u32>,
    root: &SandboxRoot,
    n: usize,
    open: usize,
) -> anyhow::Result<Idle> {
    root.wait_at_most(0, Duration::from_secs(60))
        .await
        .context("sandboxes of earlier sections are still there")?;
    tokio::time::sleep(SETTLE).await;
    let before = Reading::take(servers, uids, root);
    let config = ClientConfig::default()
        .with_connect_timeout(Duration::from_secs(120))
        .with_request_timeout(Some(Duration::from_secs(300)));
    let sem = Arc::new(Semaphore::new(open.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let url = urls[i % urls.len().max(1)].clone();
        let (config, sem) = (config.clone(), Arc::clone(&sem));
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.context("semaphore")?;
            let client = EnvClient::connect_with(&url, config)
                .await
                .context("connect")?;
            let reset = client
                .reset(env_client::protocol::JsonMap::new())
                .await
                .context("reset")?;
            let ready = reset
                .observation
                .metadata()
                .and_then(|m| m.get("status"))
                .and_then(serde_json::Value::as_str)
                == Some("ready");
            if !ready {
                bail!("reset not ready: {:?}", reset.observation.metadata());
            }
            anyhow::Ok(client)
        }));
    }
    let mut clients = Vec::with_capacity(n);
    let mut failure = None;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.context("an opening task panicked") {
            Ok(Ok(c)) => clients.push(Arc::new(c)),
            Ok(Err(e)) | Err(e) => {
                failure.get_or_insert(e);
            }
        }
        if (i + 1) % 1000 == 0 {
            crate::progress(&format!("  {} of {n} episodes ready", i + 1));
        }
    }
    let ready = start.elapsed();
    let result = async {
        if let Some(e) = failure {
            return Err(e.context(format!("opening {n} episodes ({} opened)", clients.len())));
        }
        crate::progress(&format!("  {n} episodes ready in {ready:.1?}; reading"));
        tokio::time::sleep(SETTLE).await;
        let after_reset = Reading::take(servers, uids, root);
        let t0 = Instant::now();
        let mut runs = Vec::with_capacity(n);
        for client in &clients {
            let (client, sem) = (Arc::clone(client), Arc::clone(&sem));
            runs.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.context("semaphore")?;
                let call = client
                    .call_tool(
                        "terminal",
                        env_client::protocol::JsonMap::from_iter([(
                            "command".to_owned(),
                            serde_json::Value::from("true"),
                        )]),
                    )
                    .await
                    .context("terminal(command=true)")?;
                if call.value.as_str() != Some("(no output)") {
                    bail!("`true` gave {:?}", call.value);
                }
                anyhow::Ok(())
            }));
        }
        for run in runs {
            run.await.context("a command task panicked")??;
        }
        let commands = t0.elapsed();
        crate::progress(&format!("  one `true` in each in {commands:.1?}; reading"));
        tokio::time::sleep(SETTLE).await;
        let after_command = Reading::take(servers, uids, root);
        anyhow::Ok((after_reset, after_command, commands))
    }
    .await;
    let close_start = Instant::now();
    let mut closing = Vec::with_capacity(clients.len());
    for client in clients {
        closing.push(tokio::spawn(async move {
            let _ = client.shutdown().await;
        }));
    }
    for c in closing {
        let _ = c.await;
    }
    let mut teardown = None;
    let mut left = (0, 0, 0);
    while close_start.elapsed() < TEARDOWN_LIMIT {
        let dirs = root.count();
        let procs = sandbox_processes(uids).len() as u64;
        let groups = server_cgroups(servers).len() as u64;
        left = (dirs, procs, groups);
        if dirs == 0 && procs == 0 && groups == 0 {
            teardown = Some(close_start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (after_reset, after_command, commands) = result?;
    Ok(Idle {
        n,
        before,
        after_reset,
        after_command,
        ready,
        commands,
        teardown,
        left,
    })
}

/// KiB → text with one decimal.
fn kib_text(kib: f64) -> String {
    format!("{kib:.1}")
}

/// Section 5's report for one N: a row per component, the total and per-episode cost after
/// the resets and after one command each. Returns the text and the host MiB per episode
/// (after the resets, after one command).
pub(crate) fn render(r: &Idle) -> (String, f64, f64) {
    use crate::procs::u64_f64;
    #[allow(clippy::cast_precision_loss)]
    let n = r.n as f64;
    #[allow(clippy::cast_precision_loss)]
    let delta = |a: &Reading, field: &str| (a.mem.get(field) - r.before.mem.get(field)) as f64;
    let mut table = crate::report::Table::new(&[
        "component (KiB unless said)",
        "after reset: total",
        "per episode",
        "after 1 command: total",
        "per episode",
    ]);
    let mut row = |name: String, a: f64, b: f64| {
        table.row(vec![
            name,
            kib_text(a),
            kib_text(a / n),
            kib_text(b),
            kib_text(b / n),
        ]);
    };
    let mut names: Vec<&String> = r.after_reset.procs.keys().collect();
    for name in r.after_command.procs.keys() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let group =
        |reading: &Reading, name: &str| reading.procs.get(name).cloned().unwrap_or_default();
    for name in &names {
        let (a, b) = (group(&r.after_reset, name), group(&r.after_command, name));
        row(
            format!("{name}: processes (count)"),
            u64_f64(a.count),
            u64_f64(b.count),
        );
        row(
            format!("{name}: PSS"),
            u64_f64(a.pss_kib),
            u64_f64(b.pss_kib),
        );
        row(
            format!("{name}: RSS"),
            u64_f64(a.rss_kib),
            u64_f64(b.rss_kib),
        );
        row(
            format!("{name}: page tables (VmPTE)"),
            u64_f64(a.pte_kib),
            u64_f64(b.pte_kib),
        );
    }
    let pss = |reading: &Reading| u64_f64(reading.procs.values().map(|g| g.pss_kib).sum());
    row(
        "all sandbox processes: PSS".to_owned(),
        pss(&r.after_reset),
        pss(&r.after_command),
    );
    for (label, field) in [
        ("kernel: PageTables (meminfo Δ)", "PageTables"),
        ("kernel: KernelStack (meminfo Δ)", "KernelStack"),
        ("kernel: Slab (meminfo Δ)", "Slab"),
        ("kernel: SUnreclaim (meminfo Δ)", "SUnreclaim"),
        ("kernel: Percpu (meminfo Δ; memory cgroups)", "Percpu"),
        ("tmpfs/shmem: Shmem (meminfo Δ)", "Shmem"),
    ] {
        row(
            label.to_owned(),
            delta(&r.after_reset, field),
            delta(&r.after_command, field),
        );
    }
    #[allow(clippy::cast_precision_loss)]
    row(
        "episode directories (count)".to_owned(),
        r.after_reset.dirs as f64,
        r.after_command.dirs as f64,
    );
    row(
        "cgroups (count, pids + memory)".to_owned(),
        u64_f64(r.after_reset.cgroups),
        u64_f64(r.after_command.cgroups),
    );
    // The server's own figures, as deltas from before the episodes.
    #[allow(clippy::cast_precision_loss)]
    let server_delta =
        |field: ServerField, reading: &Reading| field(reading) as f64 - field(&r.before) as f64;
    let server_rows: [(&str, ServerField); 3] = [
        ("server VmRSS Δ", |x| x.server_rss_kib),
        ("server open descriptors Δ (count)", |x| x.server_fds),
        ("server threads Δ (count)", |x| x.server_threads),
    ];
    for (name, field) in server_rows {
        row(
            name.to_owned(),
            server_delta(field, &r.after_reset),
            server_delta(field, &r.after_command),
        );
    }
    let host = |reading: &Reading| -delta(reading, "MemAvailable");
    row(
        "host: MemAvailable before − now".to_owned(),
        host(&r.after_reset),
        host(&r.after_command),
    );
    let (host_reset, host_command) = (
        host(&r.after_reset) / n / 1024.0,
        host(&r.after_command) / n / 1024.0,
    );
    let mut out = format!(
        "  N = {}: all ready in {:.1} s (connect + reset, opened concurrently); one `true` in each in {:.1} s;\n  \
         host memory per episode {host_reset:.2} MiB idle after reset, {host_command:.2} MiB after one command;\n  \
         {} sandbox processes after reset ({:.2}/episode), {} after one command ({:.2}/episode)\n",
        r.n,
        r.ready.as_secs_f64(),
        r.commands.as_secs_f64(),
        r.after_reset.process_count(),
        u64_f64(r.after_reset.process_count()) / n,
        r.after_command.process_count(),
        u64_f64(r.after_command.process_count()) / n,
    );
    out.push_str(&table.render());
    let mut growth: Vec<(&String, i64)> = r
        .after_reset
        .slabs
        .iter()
        .map(|(name, bytes)| (name, bytes - r.before.slabs.get(name).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    growth.sort_by_key(|(_, d)| -d);
    if !growth.is_empty() {
        #[allow(clippy::cast_precision_loss)]
        let text: Vec<String> = growth
            .iter()
            .take(12)
            .map(|(name, d)| format!("{name} {:.1}", *d as f64 / 1024.0 / n))
            .collect();
        out.push_str(&format!(
            "  slab caches that grew most, KiB per episode after reset: {}\n",
            text.join(", ")
        ));
    }
    out.push_str(&match r.teardown {
        Some(t) => format!(
            "  after closing all {}: every sandbox directory, process and cgroup gone in {:.1} s\n",
            r.n,
            t.as_secs_f64()
        ),
        None => format!(
            "  after closing all {}: LEFT {} directories, {} processes, {} cgroups after {} s\n",
            r.n,
            r.left.0,
            r.left.1,
            r.left.2,
            TEARDOWN_LIMIT.as_secs()
        ),
    });
    (out, host_reset, host_command)
}
