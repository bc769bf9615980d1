//! The cleanup queue (`docs/cleanup.md`): what is left of a sandbox — leftover processes, its
//! cgroups, its episode directory, its uid claim — is removed at once, and when that fails
//! (the server is out of descriptors, a group is still busy) the failure is logged once with
//! its reason, counted, and retried on a background thread with doubling waits, a bounded
//! number of times. Server shutdown makes one last attempt and logs what stays; the next
//! start's orphan sweep removes that. Blocking: called from blocking threads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cgroup::Cgroups;
use super::owner::UidClaim;
use super::{procfs, tree};

/// Longest wait between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a retry (and the shutdown attempt) waits for leftover processes to die.
const RETRY_KILL_DEADLINE: Duration = Duration::from_secs(1);
/// How long shutdown waits for a retry in progress before its last attempt.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// What is left of one sandbox until it is gone.
#[derive(Debug)]
pub(super) struct Remains {
    /// The sandbox id (for the log).
    pub id: String,
    /// The episode directory, until it is removed.
    pub dir: Option<PathBuf>,
    /// The cgroups, until they are removed.
    pub cgroups: Cgroups,
    /// The uid claim, released once no process of the sandbox is left.
    pub claim: Option<UidClaim>,
    /// A uid whose processes are the sandbox's (a claimed uid, or an orphan's stale uid).
    pub uid: Option<u32>,
    /// The sandbox's pid namespace (`pid:[…]`), when it started.
    pub pid_ns: Option<String>,
}

impl Remains {
    /// SIGKILLs every process of the sandbox until none is left or `deadline` passes. A
    /// process listing that cannot be read is a failure, never "nothing left".
    fn kill_processes(&self, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        // Every process of the sandbox is in its cgroups (bwrap joined them before forking
        // and nothing inside can leave them): then they are the whole truth, and much cheaper
        // to read than a scan of the host's /proc.
        let scan = self.cgroups.dirs().is_empty();
        loop {
            let left = match scan {
                true => procfs::sandbox_members_checked(self.pid_ns.as_deref(), self.uid),
                false => self.cgroups.members(),
            }
            .map_err(|e| format!("listing the sandbox's processes failed: {e}"))?;
            if left.is_empty() {
                return Ok(());
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL); // ESRCH: already gone
            }
            if Instant::now() > end {
                return Err("processes of the sandbox survive SIGKILL".to_owned());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// One attempt at everything that is left; `Err` names what failed and why.
    fn attempt(&mut self, kill_deadline: Duration) -> Result<(), String> {
        let mut problems = Vec::new();
        let killed =
            match self.uid.is_some() || self.pid_ns.is_some() || !self.cgroups.dirs().is_empty() {
                true => self.kill_processes(kill_deadline),
                false => Ok(()),
            };
        if let Err(e) = &killed {
            problems.push(e.clone());
        }
        if !self.cgroups.dirs().is_empty()
            && let Err(e) = self.cgroups.kill_and_remove()
        {
            problems.push(format!("removing the sandbox cgroups failed: {e}"));
        }
        if killed.is_ok() && self.cgroups.dirs().is_empty() {
            // No process is left: the uid may serve another sandbox, and later attempts
            // need not look for processes again (a pid namespace id can be reused).
            self.claim = None;
            self.uid = None;
            self.pid_ns = None;
        }
        if let Some(dir) = &self.dir {
            match tree::remove_path(dir) {
                Ok(()) => self.dir = None,
                Err(e) => problems.push(format!(
                    "removing the sandbox directory {} failed: {e}",
                    dir.display()
                )),
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    }

    /// Gives up: a uid whose processes may live on stays claimed (leaked) rather than go to a
    /// new sandbox.
    fn abandon(mut self) {
        if let Some(claim) = self.claim.take() {
            std::mem::forget(claim);
        }
    }
}

/// Counters of the cleanup queue ([`super::LocalBackend::cleanup_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupStats {
    /// Sandboxes whose cleanup failed and waits for a retry now.
    pub pending: u64,
    /// Background retries made so far (each attempt after the first).
    pub retried: u64,
    /// Sandboxes whose cleanup failed at first and later succeeded.
    pub succeeded: u64,
    /// Sandboxes given up after every retry failed, or still pending at shutdown: left to the
    /// next start's orphan sweep.
    pub failed: u64,
}

#[derive(Debug)]
struct Job {
    remains: Remains,
    /// Attempts made (the first one included).
    attempts: u32,
    due: Instant,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: Vec<Job>,
    /// A worker thread runs.
    worker: bool,
    /// The worker is attempting a job it took out of `jobs`.
    busy: bool,
    /// Shutdown happened: no more background retries.
    closed: bool,
}

/// The backend's cleanup queue.
#[derive(Debug)]
pub(super) struct Cleanup {
    first_wait: Duration,
    retries: u32,
    queue: Mutex<Queue>,
    changed: Condvar,
    retried: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

impl Cleanup {
    /// A queue whose first retry waits `first_wait` (doubling up to 5 s), `retries` times.
    pub(super) fn new(first_wait: Duration, retries: u32) -> Arc<Self> {
        Arc::new(Self {
            first_wait,
            retries,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            retried: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters.
    pub(super) fn stats(&self) -> CleanupStats {
        let pending = {
            let q = self.lock();
            q.jobs.len() as u64 + u64::from(q.busy)
        };
        CleanupStats {
            pending,
            retried: self.retried.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// The wait before retry `n` (1-based).
    fn backoff(&self, n: u32) -> Duration {
        self.first_wait
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(MAX_BACKOFF)
    }

    /// Removes `remains` now, waiting up to `kill_deadline` for its processes; a failure is
    /// logged once, counted and queued for background retries. Returns whether everything
    /// went at once. Blocking.
    pub(super) fn settle(self: &Arc<Self>, mut remains: Remains, kill_deadline: Duration) -> bool {
        match remains.attempt(kill_deadline) {
            Ok(()) => {
                tracing::debug!(sandbox = %remains.id, "sandbox cleaned up");
                true
            }
            Err(reason) => {
                self.failed_first(remains, &reason);
                false
            }
        }
    }

    /// Queues `remains` for the background thread without trying now (the drop path, which
    /// must not block its caller). Never blocks.
    pub(super) fn defer(self: &Arc<Self>, remains: Remains) {
        self.push(Job {
            remains,
            attempts: 0,
            due: Instant::now(),
        });
    }

    fn failed_first(self: &Arc<Self>, remains: Remains, reason: &str) {
        if self.lock().closed {
            tracing::warn!(sandbox = %remains.id, reason, "sandbox cleanup failed after shutdown; the next start's orphan sweep removes what is left");
            self.failed.fetch_add(1, Ordering::Relaxed);
            remains.abandon();
            return;
        }
        let pending = self.stats().pending + 1;
        tracing::warn!(sandbox = %remains.id, reason, pending, "sandbox cleanup failed; retrying in the background");
        self.push(Job {
            remains,
            attempts: 1,
            due: Instant::now() + self.backoff(1),
        });
    }

    fn push(self: &Arc<Self>, job: Job) {
        let mut q = self.lock();
        q.jobs.push(job);
        if !q.worker && !q.closed {
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("openenv-sandbox-cleanup".to_owned())
                .spawn(move || me.work());
            match spawned {
                Ok(_) => q.worker = true,
                // The next failure (or shutdown) tries again.
                Err(e) => tracing::error!(error = %e, "cannot start the sandbox cleanup thread"),
            }
        }
        drop(q);
        self.changed.notify_all();
    }

    /// The background thread: attempts due jobs until none is left (or shutdown).
    fn work(self: Arc<Self>) {
        let mut q = self.lock();
        loop {
            if q.closed || q.jobs.is_empty() {
                q.worker = false;
                drop(q);
                self.changed.notify_all();
                return;
            }
            let now = Instant::now();
            let Some(at) = q.jobs.iter().position(|j| j.due <= now) else {
                let next = q.jobs.iter().map(|j| j.due).min().unwrap_or(now);
                q = self
                    .changed
                    .wait_timeout(q, next.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            };
            let mut job = q.jobs.swap_remove(at);
            q.busy = true;
            drop(q);
            let first = job.attempts == 0;
            let deadline = if first {
                super::sandbox::GONE_DEADLINE
            } else {
                self.retried.fetch_add(1, Ordering::Relaxed);
                RETRY_KILL_DEADLINE
            };
            let result = job.remains.attempt(deadline);
            job.attempts += 1;
            match result {
                Ok(()) if first => {
                    tracing::debug!(sandbox = %job.remains.id, "sandbox cleaned up");
                }
                Ok(()) => {
                    self.succeeded.fetch_add(1, Ordering::Relaxed);
                    let pending = self.lock().jobs.len();
                    tracing::info!(sandbox = %job.remains.id, retries = job.attempts - 1, pending, "sandbox cleanup succeeded on retry");
                }
                Err(reason) if first => {
                    q = self.lock();
                    q.busy = false;
                    drop(q);
                    self.failed_first(job.remains, &reason);
                    q = self.lock();
                    continue;
                }
                Err(reason) if job.attempts > self.retries => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(sandbox = %job.remains.id, reason, retries = self.retries, "sandbox cleanup gave up; the next start's orphan sweep removes what is left");
                    job.remains.abandon();
                }
                Err(reason) => {
                    tracing::debug!(sandbox = %job.remains.id, reason, attempt = job.attempts, "sandbox cleanup retry failed");
                    job.due = Instant::now() + self.backoff(job.attempts);
                    q = self.lock();
                    q.busy = false;
                    if q.closed {
                        // Shutdown stopped waiting for this attempt: it was the last one.
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(sandbox = %job.remains.id, reason, "sandbox cleanup incomplete at shutdown; the next start's orphan sweep removes what is left");
                        job.remains.abandon();
                    } else {
                        q.jobs.push(job);
                    }
                    continue;
                }
            }
            q = self.lock();
            q.busy = false;
        }
    }

    /// Server shutdown: stops the background retries, makes one last attempt at every pending
    /// cleanup and logs what stays (for the next start's orphan sweep). Returns how many stay.
    /// Blocking.
    pub(super) fn shutdown(&self) -> usize {
        let mut q = self.lock();
        q.closed = true;
        self.changed.notify_all();
        let end = Instant::now() + SHUTDOWN_WAIT;
        while q.busy && Instant::now() < end {
            q = self
                .changed
                .wait_timeout(q, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let jobs = std::mem::take(&mut q.jobs);
        drop(q);
        let mut left = 0;
        for mut job in jobs {
            match job.remains.attempt(RETRY_KILL_DEADLINE) {
                Ok(()) if job.attempts == 0 => {}
                Ok(()) => {
                    self.succeeded.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(sandbox = %job.remains.id, "sandbox cleanup succeeded at shutdown");
                }
                Err(reason) => {
                    left += 1;
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sandbox = %job.remains.id, reason, "sandbox cleanup incomplete at shutdown; the next start's orphan sweep removes what is left");
                    job.remains.abandon();
                }
            }
        }
        let s = self.stats();
        if s.retried > 0 || s.failed > 0 {
            tracing::info!(
                retried = s.retried,
                succeeded = s.succeeded,
                failed = s.failed,
                "sandbox cleanups that failed at first, over this server's life"
            );
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remains(dir: PathBuf) -> Remains {
        Remains {
            id: "test".to_owned(),
            dir: Some(dir),
            cgroups: Cgroups::default(),
            claim: None,
            uid: None,
            pid_ns: None,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = Cleanup::new(Duration::from_millis(100), 3);
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(2), Duration::from_millis(200));
        assert_eq!(c.backoff(40), MAX_BACKOFF);
    }

    /// A directory that cannot be removed (its parent is a file's place) is retried, counted,
    /// and given up after the configured retries; one that can is removed on retry.
    #[test]
    fn failures_are_retried_counted_and_given_up() {
        let base = std::env::temp_dir().join(format!("oe-cleanup-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(base.join("later/sub")).unwrap();
        let c = Cleanup::new(Duration::from_millis(10), 3);
        // Not a directory path: removal fails every time (ENOTDIR).
        std::fs::write(base.join("file"), b"x").unwrap();
        c.settle(remains(base.join("file/never")), Duration::ZERO);
        assert_eq!(c.stats().pending, 1);
        let end = Instant::now() + Duration::from_secs(10);
        while c.stats().pending > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = c.stats();
        assert_eq!((s.pending, s.retried, s.failed, s.succeeded), (0, 3, 1, 0));
        // Fails until the obstacle goes: then a retry succeeds.
        let c = Cleanup::new(Duration::from_millis(50), 100);
        c.settle(remains(base.join("file/never")), Duration::ZERO);
        assert_eq!(c.stats().pending, 1);
        std::thread::sleep(Duration::from_millis(120));
        std::fs::remove_file(base.join("file")).unwrap();
        std::fs::create_dir(base.join("file")).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while c.stats().pending > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = c.stats();
        assert_eq!((s.pending, s.failed, s.succeeded), (0, 0, 1));
        assert!(s.retried >= 1);
        // Deferred: removed by the background thread.
        c.defer(remains(base.join("later")));
        let end = Instant::now() + Duration::from_secs(10);
        while base.join("later").exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!base.join("later").exists());
        assert_eq!(c.shutdown(), 0);
        // Pending at shutdown: one last attempt, then counted as failed and left to the sweep.
        let c = Cleanup::new(Duration::from_secs(60), 3);
        std::fs::write(base.join("file2"), b"x").unwrap();
        c.settle(remains(base.join("file2/never")), Duration::ZERO);
        assert_eq!(c.shutdown(), 1);
        let s = c.stats();
        assert_eq!((s.pending, s.retried, s.failed), (0, 0, 1));
        // After shutdown a failure is not queued.
        assert!(!c.settle(remains(base.join("file2/never")), Duration::ZERO));
        assert_eq!((c.stats().pending, c.stats().failed), (0, 2));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
