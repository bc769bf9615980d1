//! A sandbox whose supervisor dies mid-episode (`docs/cleanup.md`), through the real local
//! bubblewrap sandbox: the next terminal command ends the episode with "Sandbox is no longer
//! available" (done, no reward), in both shell modes, when the host kills it (the agent
//! cannot: it is the namespace's PID 1); a shell that merely exits is restarted and says so.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use env_client::protocol::{JsonMap, Reward};
use env_server::envs::terminal::{ShellMode, TerminalConfig, TerminalFactory};
use env_server::envs::{Action, EnvFactory, Environment, StepOutcome};
use env_server::sandbox::local::LocalBackend;
use serde_json::{Value, json};

mod support;

fn backend() -> Arc<LocalBackend> {
    support::local_backend("openenv-sandbox-lost-tests")
}

async fn new_env(mode: ShellMode) -> Box<dyn Environment> {
    let config = TerminalConfig {
        shell_mode: mode,
        ..TerminalConfig::default()
    };
    let mut env = TerminalFactory::new(config, backend())
        .create()
        .await
        .unwrap();
    let out = env.reset(JsonMap::new()).await.unwrap();
    let meta = out.observation.metadata().unwrap();
    assert_eq!(meta["status"], "ready", "{meta:?}");
    env
}

async fn run(env: &mut Box<dyn Environment>, command: &str) -> StepOutcome {
    let mut args = JsonMap::new();
    args.insert("command".to_owned(), json!(command));
    env.step(Action::CallTool {
        name: "terminal".to_owned(),
        arguments: args,
    })
    .await
    .unwrap()
}

/// The result text, or the error's (kind, message).
fn reply(out: &StepOutcome) -> Result<String, (String, String)> {
    let obs = &out.observation;
    if let Some(text) = obs
        .get("result")
        .and_then(|r| r.get("data"))
        .and_then(Value::as_str)
    {
        return Ok(text.to_owned());
    }
    let err = obs.get("error").cloned().unwrap_or(Value::Null);
    Err((
        err["error_type"].as_str().unwrap_or_default().to_owned(),
        err["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn reward(out: &StepOutcome) -> Option<f64> {
    out.reward.map(Reward::as_f64)
}

fn assert_lost(out: &StepOutcome) {
    let (kind, message) = reply(out).expect_err("a lost sandbox is an error");
    assert_eq!(kind, "transport_error", "{message}");
    assert!(
        message.starts_with("Sandbox is no longer available: ")
            && message.ends_with("; call reset() to start a new episode"),
        "{message}"
    );
    assert_eq!((out.done, reward(out)), (true, None));
}

#[tokio::test]
async fn the_agent_cannot_kill_its_supervisor() {
    // The supervisor is the namespace's PID 1: a SIGKILL from inside is ignored, the episode
    // goes on in both modes.
    for mode in [ShellMode::Persistent, ShellMode::PerCommand] {
        let mut env = new_env(mode).await;
        assert_eq!(
            reply(&run(&mut env, "cat /proc/1/comm").await).unwrap(),
            "sbx"
        );
        let out = run(&mut env, "kill -9 1; kill -STOP 1; sleep 0.2; echo alive").await;
        assert_eq!(reply(&out).unwrap(), "alive", "{mode:?}");
        assert!(!out.done);
        assert_eq!(
            reply(&run(&mut env, "cat /proc/1/comm").await).unwrap(),
            "sbx"
        );
        env.close().await;
    }
}

/// Host pid of the supervisor of sandbox `id`: the `sbx` in the sandbox's pids cgroup, whose
/// name ends with the id (nothing inside a sandbox names a host path any more).
fn supervisor_pid(id: &str) -> i32 {
    let suffix = format!("-{id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sbx")
                && std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
                    c.lines().any(|l| {
                        l.starts_with(|ch: char| ch.is_ascii_digit())
                            && l.trim_end().ends_with(&suffix)
                    })
                })
        })
        .unwrap_or_else(|| panic!("no supervisor for {id}"))
}

#[tokio::test]
async fn supervisor_killed_from_the_host_between_commands_ends_the_episode() {
    for mode in [ShellMode::Persistent, ShellMode::PerCommand] {
        let mut env = new_env(mode).await;
        assert_eq!(reply(&run(&mut env, "echo hi").await).unwrap(), "hi");
        let id = env.state().extra["sandbox_id"].as_str().unwrap().to_owned();
        let pid = nix::unistd::Pid::from_raw(supervisor_pid(&id));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        // Until the host sees it die, a command could still be accepted.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(std::time::Instant::now() < deadline, "{mode:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_lost(&run(&mut env, "echo again").await);
        let root = std::env::temp_dir().join("openenv-sandbox-lost-tests");
        assert!(!root.join(format!("openenv-rs-{id}")).exists(), "{mode:?}");
        env.close().await;
    }
}

/// The shell exits while the sandbox lives: a new shell, and the reply says so.
#[tokio::test]
async fn a_shell_that_exits_in_a_live_sandbox_is_restarted() {
    let mut env = new_env(ShellMode::Persistent).await;
    assert_eq!(
        reply(&run(&mut env, "kill -9 $$").await).unwrap(),
        "ERROR:\nshell exited with code 137; a new shell was started"
    );
    assert_eq!(reply(&run(&mut env, "echo alive").await).unwrap(), "alive");
    env.close().await;
}
