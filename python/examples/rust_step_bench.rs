//! The Rust side of `bench/python_binding_bench.py`: the step round trip of the Rust client
//! (`env_client::EnvClient`) against a running server, on a multi-thread Tokio runtime as a
//! Rust trainer would use it. Prints one JSON line: `{"client":"rust",
//! "samples_us":[…]}` (every timed step, in microseconds), so the Python side computes all
//! percentiles with one method.
//!
//! Usage: `rust_step_bench <base-url> [steps=5000] [warmup=500]`

#![allow(clippy::print_stdout)]

use std::time::Instant;

use env_client::EnvClient;
use env_client::protocol::JsonMap;
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: rust_step_bench <base-url> [steps] [warmup]")?;
    let steps: usize = args.next().map_or(Ok(5000), |s| s.parse())?;
    let warmup: usize = args.next().map_or(Ok(500), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let samples = rt.block_on(async move {
        let client = EnvClient::connect(&url).await?;
        client.reset(JsonMap::new()).await?;
        let mut action = JsonMap::new();
        action.insert("message".to_owned(), json!("hi"));
        for _ in 0..warmup {
            client.step(action.clone()).await?;
        }
        let mut samples = Vec::with_capacity(steps);
        for _ in 0..steps {
            let action = action.clone();
            let start = Instant::now();
            client.step(action).await?;
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
        client.close().await?;
        Ok::<_, env_client::ClientError>(samples)
    })?;
    println!(
        "{}",
        json!({"client": "rust", "samples_us": samples, "steps": steps})
    );
    Ok(())
}
