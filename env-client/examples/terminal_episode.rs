//! A full terminal episode with the Rust client: reset a task, run shell commands with the
//! `terminal` tool, submit a final answer — the server kills the agent's processes, runs the
//! task's verify commands and computes the reward — and print it.
//!
//! ```sh
//! scripts/serve                                           # terminal tasks on 127.0.0.1:8000
//! cargo run -p env-client --example terminal_episode      # or: … -- http://HOST:PORT
//! ```
//!
//! The task is inline in the reset arguments (`instruction`, `verify`); with
//! `scripts/serve --tasks-dir tasks` a reset may name a shipped task instead
//! (`{"task_id": "hello-world"}`).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use env_client::protocol::{JsonMap, Reward};
use env_client::{ClientConfig, ClientError, EnvClient};
use serde_json::{Value, json};

/// `{"k": v, …}` as the argument map the client takes.
fn args(value: Value) -> JsonMap {
    match value {
        Value::Object(map) => map,
        _ => JsonMap::new(),
    }
}

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
    // A command may run for the server's command timeout (120 s by default).
    let config = ClientConfig::default().with_request_timeout(Some(Duration::from_secs(180)));
    let env = EnvClient::connect_with(&url, config).await?;

    let reset = env
        .reset(args(json!({
            "instruction": "Create hello.txt in the working directory containing exactly the line 'Hello, world!'.",
            "verify": [
                "test -f hello.txt",
                "test \"$(cat hello.txt)\" = 'Hello, world!'",
            ],
        })))
        .await?;
    let meta = reset.metadata.unwrap_or_default();
    let text = |key: &str| {
        meta.get(key)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    println!("reset: {} (sandbox {})", text("status"), text("sandbox_id"));
    println!("task: {}", text("instruction"));

    for command in [
        "printf 'Hello, world!\\n' > hello.txt",
        "cat hello.txt; pwd",
        "cd /tmp; echo \"cwd is now $PWD\"",
        "pwd",
    ] {
        let call = env
            .call_tool("terminal", args(json!({ "command": command })))
            .await?;
        println!("$ {command}\n{}", call.value.as_str().unwrap_or_default());
    }

    // The final answer ends the episode: verified inside the server, the reward is its own.
    let answer = env
        .call_tool("terminal", args(json!({ "final_answer": "done" })))
        .await?;
    println!("{}", answer.value.as_str().unwrap_or_default());
    println!(
        "reward {:?} done {}",
        answer.reward.map_or(f64::NAN, Reward::as_f64),
        answer.done
    );

    // On a done episode the `verify` frame repeats the stored reward, with the details.
    let verified = env.verify().await?;
    println!(
        "verify: reward {:?} verification {}",
        verified.reward, verified.details["verification"]
    );
    env.close().await
}
