//! Bounded fuzzing of every inbound parser, part of `cargo test` (`docs/fuzzing.md`): the `/ws`
//! frame parser, JSON-RPC dispatch, the HTTP routes, live WebSocket sessions on loopback, the
//! terminal env's reset arguments, task ids and `task.yaml`, with arbitrary bytes and
//! structure-aware mutations of golden inputs, from a fixed seed. The longer run is the
//! `fuzz-parsers` benchmark binary.
//!
//! One test function: the panic probe is a process-wide hook, so nothing else in this binary
//! may panic while it counts.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use env_server::fuzz::{self, Harness, Rng, Target};

const SEED: u64 = 0x0010_2026;

/// `replace_non_finite` as it was before issue 10, verbatim but for its name: it sliced the
/// text at a byte index that can fall inside a multi-byte character.
fn replace_non_finite_before_the_fix(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut in_string, mut changed, mut last) = (0, false, false, 0);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| text[i..].starts_with(t));
        if let Some(token) = token {
            out.push_str(&text[last..i]);
            out.push_str("null");
            i += token.len();
            last = i;
            changed = true;
        } else {
            i += 1;
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_inbound_parser_survives_arbitrary_and_mutated_input() {
    // 1. The generator finds the original bug: the first mutated frame that panics the old
    //    code comes within a few hundred cases.
    let mut rng = Rng::new(SEED);
    let first_panic = (0..2000).find(|_| {
        let text = String::from_utf8_lossy(&fuzz::input(&mut rng, fuzz::FRAME_SEEDS)).into_owned();
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let panicked =
            std::panic::catch_unwind(|| replace_non_finite_before_the_fix(&text)).is_err();
        std::panic::set_hook(quiet);
        panicked
    });
    assert!(
        first_panic.is_some_and(|n| n < 1000),
        "the generator did not reach the original panic: {first_panic:?}"
    );

    fuzz::install_panic_probe();
    let mut failures = Vec::new();

    // 2. Every character of the sweep at every position of every golden input.
    let guarded = |check: &dyn Fn() -> Result<(), String>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(check))
            .unwrap_or_else(|_| Err("panicked".to_owned()))
    };
    for text in fuzz::insertion_sweep(fuzz::FRAME_SEEDS) {
        if let Err(what) =
            guarded(&|| fuzz::check_frame(&text).and_then(|()| fuzz::check_json(&text)))
        {
            failures.push(format!("[sweep frame] {what}: {text:?}"));
        }
    }
    for text in fuzz::insertion_sweep(fuzz::JSON_RPC_SEEDS)
        .into_iter()
        .chain(fuzz::insertion_sweep(fuzz::RESET_SEEDS))
    {
        if let Err(what) = guarded(&|| fuzz::check_json(&text)) {
            failures.push(format!("[sweep json] {what}: {text:?}"));
        }
    }
    let sweep_panics = fuzz::panics_seen();

    // 3. Random cases per target.
    let mut harness = Harness::new().await.unwrap();
    let plan = [
        (Target::Frame, 4000),
        (Target::JsonRpc, 2000),
        (Target::Http, 1500),
        (Target::WebSocket, 400),
        (Target::ResetArgs, 3000),
        (Target::TaskId, 2000),
        (Target::TaskYaml, 300),
    ];
    let mut ran = Vec::new();
    for (i, (target, cases)) in plan.into_iter().enumerate() {
        let report = fuzz::run(&mut harness, &[target], cases, SEED + i as u64, None, 10).await;
        ran.push(format!(
            "{}: {} cases in {:.2?}",
            target.name(),
            report.total(),
            report.elapsed
        ));
        failures.extend(report.failures.iter().map(ToString::to_string));
    }
    harness.shutdown().await;
    let panics = fuzz::panics_seen();
    // Back to the default hook, so an assertion below prints.
    drop(std::panic::take_hook());
    eprintln!("{}", ran.join("\n"));
    failures.truncate(30);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(sweep_panics, 0, "panics in the sweep");
    assert_eq!(panics, 0, "panics counted outside the checks");
}
