//! The measured loads, all through the Rust client (`env_client::EnvClient`): one session's
//! step round trip, many sessions stepping in a closed loop, and many idle sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use env_client::protocol::{JsonMap, ServerFrame};
use env_client::{ClientConfig, EnvClient};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

use crate::procs::CpuSnapshot;

/// Latencies are recorded in nanoseconds, 1 ns … 60 s, 3 significant digits.
pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("histogram bounds")
}

/// Records one latency (clamped into the histogram's range).
pub(crate) fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    hist.saturating_record(ns.max(1));
}

/// The action every benchmark step sends: `{"message":"hi"}`.
fn hi_action() -> JsonMap {
    let mut action = JsonMap::new();
    action.insert("message".to_owned(), serde_json::Value::from("hi"));
    action
}

/// Steps once and checks the echo, so a server that answers wrongly cannot look fast.
async fn checked_step(client: &EnvClient, action: &JsonMap) -> anyhow::Result<()> {
    let result = client.step(action.clone()).await?;
    match result.observation.get("echoed_message") {
        Some(serde_json::Value::String(s)) if s == "hi" => Ok(()),
        other => bail!("unexpected step observation: echoed_message = {other:?}"),
    }
}

/// A server to load: its base URL and the PID whose threads' CPU time is read.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `http://127.0.0.1:<port>`.
    pub(crate) url: String,
    /// The server process.
    pub(crate) pid: u32,
}

/// The number of steps of round `round` when `total` steps are spread over `rounds` rounds.
fn share(total: u64, rounds: u64, round: u64) -> u64 {
    total / rounds + u64::from(round < total % rounds)
}

/// What [`round_trips`] measured for one server.
pub(crate) struct RoundTrip {
    /// Per-step latency, ns.
    pub(crate) hist: Histogram<u64>,
    /// Timed steps.
    pub(crate) steps: u64,
    /// Wall time of the timed blocks, summed.
    pub(crate) wall: Duration,
    /// Server CPU ns over the timed blocks (all its threads).
    pub(crate) server_cpu_ns: u64,
    /// This process's CPU ns over the timed blocks.
    pub(crate) client_cpu_ns: u64,
}

/// One session of [`round_trips`] and what it has measured so far.
struct Lane {
    client: EnvClient,
    pid: u32,
    acc: RoundTrip,
}

impl Lane {
    async fn open(target: &Target, warmup: u64) -> anyhow::Result<Self> {
        let client = EnvClient::connect(&target.url)
            .await
            .with_context(|| format!("connect {}", target.url))?;
        client.reset(JsonMap::new()).await.context("reset")?;
        let action = hi_action();
        for _ in 0..warmup {
            checked_step(&client, &action)
                .await
                .context("warm-up step")?;
        }
        Ok(Self {
            client,
            pid: target.pid,
            acc: RoundTrip {
                hist: new_histogram()?,
                steps: 0,
                wall: Duration::ZERO,
                server_cpu_ns: 0,
                client_cpu_ns: 0,
            },
        })
    }

    /// `steps` timed steps back to back, with the CPU counters read around the block.
    async fn block(&mut self, steps: u64) -> anyhow::Result<()> {
        let action = hi_action();
        let server_before = CpuSnapshot::take(self.pid)?;
        let client_before = CpuSnapshot::own()?;
        let start = Instant::now();
        for _ in 0..steps {
            let t0 = Instant::now();
            checked_step(&self.client, &action)
                .await
                .context("timed step")?;
            record(&mut self.acc.hist, t0.elapsed());
        }
        self.acc.wall += start.elapsed();
        self.acc.server_cpu_ns += CpuSnapshot::take(self.pid)?.since(&server_before);
        self.acc.client_cpu_ns += CpuSnapshot::own()?.since(&client_before);
        self.acc.steps += steps;
        Ok(())
    }
}

/// The 1-session round trip against each target: one session per target (connect, `reset`,
/// `warmup` untimed steps), then `steps` timed `step({"message":"hi"})` per target, done in
/// `rounds` interleaved blocks (the order rotating each round) so that a change of background
/// load hits every server alike. Each server's CPU time is read around each of its blocks.
pub(crate) async fn round_trips(
    targets: &[Target],
    warmup: u64,
    steps: u64,
    rounds: u64,
) -> Vec<anyhow::Result<RoundTrip>> {
    let mut lanes = Vec::with_capacity(targets.len());
    for target in targets {
        lanes.push(Lane::open(target, warmup).await);
    }
    let rounds = rounds.clamp(1, steps.max(1));
    let mut order: Vec<usize> = (0..lanes.len()).collect();
    for round in 0..rounds {
        for &i in &order {
            if let Ok(lane) = &mut lanes[i]
                && let Err(err) = lane.block(share(steps, rounds, round)).await
            {
                lanes[i] = Err(err);
            }
        }
        order.rotate_left(1);
    }
    let mut results = Vec::with_capacity(lanes.len());
    for lane in lanes {
        results.push(match lane {
            Ok(lane) => match lane.client.close().await {
                Ok(()) => Ok(lane.acc),
                Err(err) => Err(anyhow::Error::new(err).context("close")),
            },
            Err(err) => Err(err),
        });
    }
    results
}

/// [`round_trips`] on its own thread and current-thread runtime: each request, its reply and
/// the wake-up happen on one thread, with no other worker to wake or steal.
pub(crate) fn round_trips_current_thread(
    targets: &[Target],
    warmup: u64,
    steps: u64,
    rounds: u64,
) -> anyhow::Result<Vec<anyhow::Result<RoundTrip>>> {
    let targets = targets.to_vec();
    std::thread::Builder::new()
        .name("round-trip".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("current-thread runtime")?;
            Ok(runtime.block_on(round_trips(&targets, warmup, steps, rounds)))
        })
        .context("cannot start the round-trip thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the round-trip thread panicked"))?
}

/// What [`throughputs`] measured for one server.
pub(crate) struct Throughput {
    /// Per-step latency under load, ns.
    pub(crate) hist: Histogram<u64>,
    /// Steps completed in the windows.
    pub(crate) steps: u64,
    /// The windows, each from its start until the last session stopped, summed.
    pub(crate) wall: Duration,
    /// Server CPU ns over the windows.
    pub(crate) server_cpu_ns: u64,
    /// This process's (the load generator's) CPU ns over the windows.
    pub(crate) client_cpu_ns: u64,
}

/// `sessions` sessions on one server and what they have measured so far.
struct Fleet {
    clients: Vec<Arc<EnvClient>>,
    pid: u32,
    acc: Throughput,
}

impl Fleet {
    /// Connects and resets `sessions` sessions and warms each up with 20 steps.
    async fn open(target: &Target, sessions: usize) -> anyhow::Result<Self> {
        let mut clients = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let client = EnvClient::connect(&target.url)
                .await
                .with_context(|| format!("connect {}", target.url))?;
            client.reset(JsonMap::new()).await.context("reset")?;
            clients.push(Arc::new(client));
        }
        let mut warmups = Vec::with_capacity(sessions);
        for client in &clients {
            let client = Arc::clone(client);
            warmups.push(tokio::spawn(async move {
                let action = hi_action();
                for _ in 0..20 {
                    checked_step(&client, &action)
                        .await
                        .context("warm-up step")?;
                }
                anyhow::Ok(())
            }));
        }
        for warmup in warmups {
            warmup.await.context("warm-up task panicked")??;
        }
        Ok(Self {
            clients,
            pid: target.pid,
            acc: Throughput {
                hist: new_histogram()?,
                steps: 0,
                wall: Duration::ZERO,
                server_cpu_ns: 0,
                client_cpu_ns: 0,
            },
        })
    }

    /// Every session steps back to back for `window`, each on its own task.
    async fn window(&mut self, window: Duration) -> anyhow::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let server_before = CpuSnapshot::take(self.pid)?;
        let client_before = CpuSnapshot::own()?;
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(self.clients.len());
        for client in &self.clients {
            let (client, stop) = (Arc::clone(client), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let action = hi_action();
                let mut hist = new_histogram()?;
                let mut steps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    checked_step(&client, &action).await.context("step")?;
                    record(&mut hist, t0.elapsed());
                    steps += 1;
                }
                anyhow::Ok((hist, steps))
            }));
        }
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        let mut failure = None;
        for task in tasks {
            match task.await.context("session task panicked") {
                Ok(Ok((hist, steps))) => {
                    self.acc.hist.add(&hist).context("merge histograms")?;
                    self.acc.steps += steps;
                }
                Ok(Err(err)) | Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
        if let Some(err) = failure {
            return Err(err);
        }
        self.acc.wall += start.elapsed();
        self.acc.server_cpu_ns += CpuSnapshot::take(self.pid)?.since(&server_before);
        self.acc.client_cpu_ns += CpuSnapshot::own()?.since(&client_before);
        Ok(())
    }

    async fn close(self) -> anyhow::Result<Throughput> {
        for client in &self.clients {
            client.shutdown().await.context("close")?;
        }
        Ok(self.acc)
    }
}

/// `sessions` sessions per target, each connected, reset and warmed up; then per target a
/// total of `window` of all its sessions stepping `{"message":"hi"}` back to back, in `rounds`
/// interleaved windows (the order rotating each round), on the current multi-thread runtime.
pub(crate) async fn throughputs(
    targets: &[Target],
    sessions: usize,
    window: Duration,
    rounds: u32,
) -> Vec<anyhow::Result<Throughput>> {
    let mut fleets = Vec::with_capacity(targets.len());
    for target in targets {
        fleets.push(Fleet::open(target, sessions).await);
    }
    let rounds = rounds.max(1);
    let each = window / rounds;
    let mut order: Vec<usize> = (0..fleets.len()).collect();
    for _ in 0..rounds {
        for &i in &order {
            if let Ok(fleet) = &mut fleets[i]
                && let Err(err) = fleet.window(each).await
            {
                fleets[i] = Err(err);
            }
        }
        order.rotate_left(1);
    }
    let mut results = Vec::with_capacity(fleets.len());
    for fleet in fleets {
        results.push(match fleet {
            Ok(fleet) => fleet.close().await,
            Err(err) => Err(err),
        });
    }
    results
}

/// The outcome of [`open_idle`].
pub(crate) struct IdleOutcome {
    /// Sessions connected and reset.
    pub(crate) held: usize,
    /// Attempts that failed.
    pub(crate) failed: usize,
    /// The first failure.
    pub(crate) first_error: Option<String>,
    /// Whether the time limit ended the stage.
    pub(crate) timed_out: bool,
    /// How long the stage took.
    pub(crate) took: Duration,
}

/// Opens sessions until `target` are held in `held` (each: connect, one `reset`, then idle),
/// `concurrency` at a time; no new session is started after `limit` (each attempt is bounded by
/// the client's connect and request timeouts). Stops early after 100 failures.
pub(crate) async fn open_idle(
    url: &str,
    held: &Arc<Mutex<Vec<EnvClient>>>,
    target: usize,
    concurrency: usize,
    limit: Duration,
) -> IdleOutcome {
    let start = Instant::now();
    let deadline = start + limit;
    let timed_out = Arc::new(AtomicBool::new(false));
    let already = held.lock().await.len();
    let next = Arc::new(AtomicUsize::new(already));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    // Idle sessions still answer pings (the peer pings every 20 s and closes a silent socket
    // after 40 s), and get limits long enough for a peer that is creating thousands of threads.
    let config = ClientConfig::default()
        .with_keepalive_interval(Some(Duration::from_secs(10)))
        .with_connect_timeout(Duration::from_secs(30))
        .with_request_timeout(Some(Duration::from_secs(60)));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (url, held, next, failed, first_error, config, timed_out) = (
            url.to_owned(),
            Arc::clone(held),
            Arc::clone(&next),
            Arc::clone(&failed),
            Arc::clone(&first_error),
            config.clone(),
            Arc::clone(&timed_out),
        );
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < target {
                if failed.load(Ordering::Relaxed) >= 100 {
                    return;
                }
                if Instant::now() >= deadline {
                    timed_out.store(true, Ordering::Relaxed);
                    return;
                }
                let opened = async {
                    let client = EnvClient::connect_with(&url, config.clone()).await?;
                    client.reset(JsonMap::new()).await?;
                    Ok::<_, env_client::ClientError>(client)
                }
                .await;
                match opened {
                    Ok(client) => held.lock().await.push(client),
                    Err(err) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert_with(|| err.to_string());
                        }
                    }
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let count = held.lock().await.len();
    let first_error = first_error.lock().ok().and_then(|mut e| e.take());
    IdleOutcome {
        held: count,
        failed: usize::try_from(failed.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
        first_error,
        timed_out: timed_out.load(Ordering::Relaxed),
        took: start.elapsed(),
    }
}

/// Sends `{"type":"state"}` on every held session, `concurrency` at a time, starting none after `limit`;
/// returns how many answered (a session the server dropped fails).
pub(crate) async fn count_alive(
    held: &Arc<Mutex<Vec<EnvClient>>>,
    concurrency: usize,
    limit: Duration,
) -> usize {
    let clients: Vec<EnvClient> = std::mem::take(&mut *held.lock().await);
    let clients = Arc::new(clients);
    let next = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + limit;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (clients, next, alive) = (Arc::clone(&clients), Arc::clone(&next), Arc::clone(&alive));
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(client) = clients.get(i) else { return };
                // Any reply but an error frame will do (the floor answers everything with
                // its one observation frame).
                let reply = client.request_raw(r#"{"type":"state"}"#.to_owned()).await;
                if matches!(reply, Ok(frame) if !matches!(frame, ServerFrame::Error(_))) {
                    alive.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await; // each holds a clone of `clients` until it ends
    }
    match Arc::try_unwrap(clients) {
        Ok(clients) => *held.lock().await = clients,
        Err(_) => {
            crate::progress("warning: the `state` check kept its sessions; they were dropped")
        }
    }
    alive.load(Ordering::Relaxed)
}
