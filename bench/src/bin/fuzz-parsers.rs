//! `fuzz-parsers`: the long run of the fuzzing that `cargo test` runs bounded
//! (`env-server/tests/fuzz.rs`, `docs/fuzzing.md`): every inbound parser of `env-server` with
//! arbitrary and mutated input, bounded by a case count and a wall-clock time, on loopback only.
//!
//! Prints cases per second per target and every failure (up to `--max-failures`) with its
//! input; exits 1 when any case failed.
//!
//! Usage: `fuzz-parsers [--cases 1000000] [--seconds 60] [--seed N] [--targets frame,http,…]`

#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use env_server::fuzz::{self, Harness, Target};

/// Every inbound parser of env-server with arbitrary and mutated input.
#[derive(Debug, Parser)]
#[command(name = "fuzz-parsers")]
struct Cli {
    /// Cases in all, shared round robin by the targets.
    #[arg(long, default_value_t = 1_000_000)]
    cases: u64,
    /// Stop after this many seconds even if cases remain.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the generator (the same seed gives the same inputs); default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Comma-separated targets: frame, json-rpc, http, websocket, reset-args, task-id,
    /// task-yaml (default: all).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Stop after this many failures.
    #[arg(long, default_value_t = 20)]
    max_failures: usize,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let targets: Vec<Target> = if cli.targets.is_empty() {
        Target::ALL.to_vec()
    } else {
        cli.targets
            .iter()
            .map(|name| Target::from_name(name).with_context(|| format!("unknown target {name}")))
            .collect::<anyhow::Result<_>>()?
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let rounds = cli.cases.div_ceil(targets.len() as u64);
    let deadline = Instant::now() + Duration::from_secs(cli.seconds);
    println!(
        "fuzz-parsers: seed {seed}, up to {} cases over {} targets, at most {} s",
        cli.cases,
        targets.len(),
        cli.seconds
    );
    fuzz::install_panic_probe();
    let mut harness = Harness::new().await.map_err(anyhow::Error::msg)?;
    let report = fuzz::run(
        &mut harness,
        &targets,
        rounds,
        seed,
        Some(deadline),
        cli.max_failures,
    )
    .await;
    harness.shutdown().await;
    // Back to the default hook for anything after the run.
    drop(std::panic::take_hook());

    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{} cases in {:.1} s: {:.0} cases/s",
        report.total(),
        secs,
        report.total() as f64 / secs
    );
    for (target, cases) in &report.cases {
        let spent = report
            .time
            .get(target)
            .map_or(1e-9, |t| t.as_secs_f64().max(1e-9));
        println!(
            "  {target:<11} {cases:>10} cases {:>10.0} cases/s",
            *cases as f64 / spent
        );
    }
    if report.failures.is_empty() {
        println!("no failure (seed {seed})");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} failure(s) (seed {seed}):", report.failures.len());
    for failure in &report.failures {
        println!("\n{failure}");
    }
    Ok(ExitCode::FAILURE)
}
