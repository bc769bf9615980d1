//! Histograms, milliseconds, and CPU accounting (the machine's `/proc/stat`, the bench's
//! reaped children).

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::procs::u64_f64;

/// Latencies are recorded in nanoseconds, 1 ns … 60 s, 3 significant digits.
pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("histogram bounds")
}

/// Records one latency (clamped into the histogram's range).
pub(crate) fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    hist.saturating_record(ns.max(1));
}

/// The number of items of round `round` when `total` items are spread over `rounds` rounds.
pub(crate) fn share(total: u64, rounds: u64, round: u64) -> u64 {
    let rounds = rounds.max(1);
    total / rounds + u64::from(round < total % rounds)
}

/// Nanoseconds as milliseconds, 3 decimals.
pub(crate) fn ms(ns: f64) -> String {
    format!("{:.3}", ns / 1e6)
}

/// A quantile of a histogram in ns.
pub(crate) fn q(hist: &Histogram<u64>, quantile: f64) -> f64 {
    u64_f64(hist.value_at_quantile(quantile))
}

/// p50, p90, p99 and max in ms.
pub(crate) fn percentiles_ms(hist: &Histogram<u64>) -> [String; 4] {
    [
        ms(q(hist, 0.50)),
        ms(q(hist, 0.90)),
        ms(q(hist, 0.99)),
        ms(u64_f64(hist.max())),
    ]
}

/// The machine's CPU time by kind since boot (`/proc/stat`, first line, in clock ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// Everything but idle and iowait.
    pub(crate) busy: u64,
    /// All of it.
    pub(crate) total: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat` now.
    pub(crate) fn read() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        Self::parse(&text).context("no cpu line in /proc/stat")
    }

    /// The aggregate `cpu` line: user nice system idle iowait irq softirq steal (guest time is
    /// already in user).
    fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if fields.len() < 4 {
            return None;
        }
        let total: u64 = fields.iter().sum();
        let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
        Some(Self {
            busy: total - idle,
            total,
        })
    }

    /// The times spent since `before`.
    pub(crate) fn since(self, before: &Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(before.busy),
            total: self.total.saturating_sub(before.total),
        }
    }

    /// Busy share of all CPUs, percent.
    pub(crate) fn busy_percent(self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        100.0 * u64_f64(self.busy) / u64_f64(self.total)
    }
}

/// User + system CPU ns of this process's reaped children (`getrusage(RUSAGE_CHILDREN)`).
pub(crate) fn children_cpu_ns() -> anyhow::Result<u64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage(RUSAGE_CHILDREN)")?;
    let ns = |tv: nix::sys::time::TimeVal| {
        u64::try_from(tv.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(tv.tv_usec()).unwrap_or(0) * 1_000
    };
    Ok(ns(usage.user_time()) + ns(usage.system_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, rounds) in [(1000, 10), (1001, 10), (3, 4), (0, 3), (7, 1)] {
            let sum: u64 = (0..rounds).map(|r| share(total, rounds, r)).sum();
            assert_eq!(sum, total, "{total} over {rounds}");
        }
        assert_eq!(share(5, 0, 0), 5);
    }

    #[test]
    fn proc_stat_line() {
        let text = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        let t = CpuTimes::parse(text).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 160,
                total: 980
            }
        );
        let later = CpuTimes {
            busy: 260,
            total: 1180,
        };
        let d = later.since(&t);
        assert!((d.busy_percent() - 50.0).abs() < 1e-9);
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
    }

    #[test]
    fn milliseconds() {
        assert_eq!(ms(512_345.0), "0.512");
        assert_eq!(ms(6_500_000.0), "6.500");
        let mut h = new_histogram().unwrap();
        record(&mut h, Duration::from_micros(500));
        assert_eq!(percentiles_ms(&h)[0], "0.500");
    }
}
