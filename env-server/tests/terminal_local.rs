//! The terminal env through the real local bubblewrap sandbox (`TERMINAL_ENV.md` §13): full
//! episodes in both shell modes, restarts, timeouts with tree kill, forge-proof verification,
//! binary output, truncation, and the oracle of every example task in the repo's `tasks/`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;

use env_client::protocol::{JsonMap, Reward};
use env_server::envs::terminal::{ShellMode, TerminalConfig, TerminalFactory};
use env_server::envs::{Action, EnvFactory, Environment, StepOutcome};
use env_server::sandbox::local::LocalBackend;
use serde_json::{Value, json};

mod support;

fn backend() -> Arc<LocalBackend> {
    support::local_backend("openenv-terminal-local-tests")
}

async fn new_env(config: TerminalConfig) -> Box<dyn Environment> {
    TerminalFactory::new(config, backend())
        .create()
        .await
        .unwrap()
}

fn per_command() -> TerminalConfig {
    TerminalConfig {
        shell_mode: ShellMode::PerCommand,
        ..TerminalConfig::default()
    }
}

fn map(v: &Value) -> JsonMap {
    v.as_object().cloned().unwrap()
}

async fn reset(env: &mut Box<dyn Environment>, kwargs: Value) -> StepOutcome {
    let out = env.reset(map(&kwargs)).await.unwrap();
    let meta = out.observation.metadata().unwrap();
    let shown: String = format!("{meta:?}").chars().take(600).collect();
    assert_eq!(meta["status"], "ready", "{shown}");
    out
}

async fn run(env: &mut Box<dyn Environment>, args: Value) -> StepOutcome {
    env.step(Action::CallTool {
        name: "terminal".to_owned(),
        arguments: map(&args),
    })
    .await
    .unwrap()
}

fn text(out: &StepOutcome) -> String {
    out.observation
        .get("result")
        .and_then(|r| r.get("data"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no result: {:?}", out.observation))
        .to_owned()
}

async fn sh(env: &mut Box<dyn Environment>, command: &str) -> String {
    text(&run(env, json!({ "command": command })).await)
}

fn reward(out: &StepOutcome) -> Option<f64> {
    out.reward.map(Reward::as_f64)
}

#[tokio::test]
async fn persistent_shell_keeps_cd_and_export() {
    let mut env = new_env(TerminalConfig::default()).await;
    reset(&mut env, json!({})).await;
    assert_eq!(
        sh(&mut env, "cd /tmp && export FOO=bar; f() { echo fn; }").await,
        "(no output)"
    );
    assert_eq!(sh(&mut env, "pwd; echo $FOO; f").await, "/tmp\nbar\nfn");
    assert_eq!(
        sh(
            &mut env,
            "echo out; echo err >&2; exit_code() { return 3; }; exit_code"
        )
        .await,
        "out\nerr\nERROR:\nexit code 3"
    );
    assert_eq!(
        sh(&mut env, "cat").await,
        "(no output)",
        "stdin is /dev/null"
    );
    env.close().await;
}

#[tokio::test]
async fn per_command_forgets_cd_and_export() {
    let mut env = new_env(per_command()).await;
    reset(&mut env, json!({})).await;
    sh(&mut env, "cd /tmp && export FOO=bar && echo hi > note.txt").await;
    assert_eq!(
        sh(&mut env, "pwd; echo \"[$FOO]\"; cat /tmp/note.txt").await,
        "/home/user\n[]\nhi"
    );
    env.close().await;
}

#[tokio::test]
async fn persistent_exit_syntax_error_and_timeout_restart() {
    let mut env = new_env(TerminalConfig::default()).await;
    reset(&mut env, json!({"command_timeout_s": 1})).await;
    sh(&mut env, "cd /tmp").await;
    assert_eq!(
        sh(&mut env, "echo bye; exit 7").await,
        "bye\nERROR:\nshell exited with code 7; a new shell was started"
    );
    assert_eq!(sh(&mut env, "pwd").await, "/home/user");
    let t = sh(&mut env, "echo (").await;
    assert!(
        t.contains("syntax error") && t.ends_with("ERROR:\nexit code 2"),
        "{t}"
    );
    sh(&mut env, "cd /tmp").await;
    let t = sh(&mut env, "echo start; sleep 30").await;
    assert_eq!(
        t,
        "start\nERROR:\ntimed out after 1s (process tree killed); shell restarted, working directory and environment were reset"
    );
    assert_eq!(sh(&mut env, "pwd").await, "/home/user");
    let c = &env.state().extra["commands"];
    assert_eq!(c.as_array().unwrap().len(), 7);
    env.close().await;
}

#[tokio::test]
async fn a_login_profile_that_exits_falls_back_to_a_plain_shell() {
    let mut env = new_env(TerminalConfig::default()).await;
    reset(&mut env, json!({})).await;
    sh(&mut env, "echo 'exit 4' >> ~/.bash_profile").await;
    assert_eq!(
        sh(&mut env, "exit 0").await,
        "ERROR:\nshell exited with code 0; a new shell was started"
    );
    assert_eq!(
        sh(&mut env, "echo hi").await,
        "ERROR:\nshell exited with code 4; a new shell was started"
    );
    assert_eq!(sh(&mut env, "echo hi").await, "hi");
    env.close().await;
}

const COUNT_SLEEPS: &str = "n=0; for f in /proc/[0-9]*/comm; do grep -qx sleep \"$f\" 2>/dev/null && n=$((n+1)); done; echo $n";

#[tokio::test]
async fn per_command_timeout_kills_the_tree() {
    let mut env = new_env(per_command()).await;
    reset(&mut env, json!({"command_timeout_s": 1})).await;
    let t = sh(&mut env, "echo partial; sleep 1000 & sleep 1000").await;
    assert_eq!(
        t,
        "partial\nERROR:\ntimed out after 1s (process tree killed)"
    );
    assert_eq!(sh(&mut env, COUNT_SLEEPS).await, "0");
    env.close().await;
}

#[tokio::test]
async fn background_jobs_are_killed_before_verification() {
    for config in [TerminalConfig::default(), per_command()] {
        let mut env = new_env(config).await;
        let verify = format!("test \"$({COUNT_SLEEPS})\" = 0");
        reset(&mut env, json!({ "verify": [verify] })).await;
        sh(
            &mut env,
            "nohup sleep 1000 >/dev/null 2>&1 & setsid sleep 1000 >/dev/null 2>&1 &",
        )
        .await;
        assert_ne!(sh(&mut env, COUNT_SLEEPS).await, "0");
        let out = run(&mut env, json!({"final_answer": "done"})).await;
        assert_eq!(
            text(&out),
            "Answer submitted: done\nVerification: 1/1 passed; reward=1.0"
        );
        assert!(out.done);
        env.close().await;
    }
}

#[tokio::test]
async fn agent_forged_reward_files_are_ignored() {
    let mut env = new_env(TerminalConfig::default()).await;
    reset(&mut env, json!({"verify": ["false"]})).await;
    sh(
        &mut env,
        "mkdir -p ~/logs/verifier && echo 1.0 > ~/logs/verifier/reward.txt",
    )
    .await;
    sh(&mut env, "(while true; do echo 1.0 > ~/logs/verifier/reward.txt 2>/dev/null; sleep 0.01; done) >/dev/null 2>&1 &").await;
    let out = run(&mut env, json!({"final_answer": "x"})).await;
    assert_eq!(
        text(&out),
        "Answer submitted: x\nVerification: 0/1 passed; reward=0.0"
    );
    assert_eq!(reward(&out), Some(0.0));
    env.close().await;

    // A symlinked verifier dir is replaced, not followed.
    let mut env = new_env(per_command()).await;
    reset(
        &mut env,
        json!({"verify": ["echo 0.25 > \"$REWARD_FILE\""], "reward_file": true}),
    )
    .await;
    sh(&mut env, "rm -rf ~/logs/verifier && mkdir -p /tmp/evil && echo 1.0 > /tmp/evil/reward.txt && ln -s /tmp/evil ~/logs/verifier").await;
    let out = run(&mut env, json!({"final_answer": "x"})).await;
    assert_eq!(reward(&out), Some(0.25), "{}", text(&out));
    env.close().await;
}

#[tokio::test]
async fn profile_and_path_forging_is_ignored() {
    let mut env = new_env(TerminalConfig::default()).await;
    reset(
        &mut env,
        json!({"verify": ["false", "python3 -c 'import sys; sys.exit(1)'"]}),
    )
    .await;
    sh(&mut env, "mkdir -p ~/bin && printf '#!/bin/sh\\nexit 0\\n' > ~/bin/false && cp ~/bin/false ~/bin/python3 && chmod +x ~/bin/*").await;
    sh(&mut env, "echo 'export PATH=$HOME/bin:$PATH; echo 1.0 > \"$REWARD_FILE\"' >> ~/.bash_profile; cp ~/.bash_profile ~/.bashrc").await;
    let out = run(&mut env, json!({"final_answer": "x"})).await;
    assert_eq!(
        text(&out),
        "Answer submitted: x\nVerification: 0/2 passed; reward=0.0"
    );
    env.close().await;
}

#[tokio::test]
async fn binary_output_and_truncation() {
    for mode in [ShellMode::Persistent, ShellMode::PerCommand] {
        let config = TerminalConfig {
            shell_mode: mode,
            max_output_bytes: 1000,
            ..TerminalConfig::default()
        };
        let mut env = new_env(config).await;
        reset(&mut env, json!({})).await;
        assert_eq!(
            sh(&mut env, "printf 'a\\377b\\r\\nc'").await,
            "a\u{fffd}b\nc"
        );
        let t = sh(&mut env, "head -c 100000 /dev/zero | tr '\\0' x").await;
        let want = format!(
            "{}\n[... output truncated: 99000 of 100000 bytes omitted ...]\n{}",
            "x".repeat(250),
            "x".repeat(750)
        );
        assert_eq!(t, want, "{mode:?}");
        assert_eq!(env.state().extra["commands"][1]["truncated"], true);
        env.close().await;
    }
}

/// `--kill-grace-s`, `--drain-grace-ms` and `--head-fraction` reach the sandbox: per-command
/// execs (and setup commands) honour them, not the backend's defaults (2 s, 200 ms, 0.25).
#[tokio::test]
async fn configured_graces_and_head_share_reach_per_command_execs() {
    let config = TerminalConfig {
        kill_grace_s: 5,
        drain_grace_ms: 2000,
        head_fraction: 0.5,
        max_output_bytes: 100,
        ..per_command()
    };
    let mut env = new_env(config).await;
    reset(&mut env, json!({"command_timeout_s": 1})).await;
    // Half of the cap from the start of the stream.
    let t = sh(
        &mut env,
        "printf 'a%.0s' $(seq 500); printf 'b%.0s' $(seq 500)",
    )
    .await;
    let want = format!(
        "{}\n[... output truncated: 900 of 1000 bytes omitted ...]\n{}",
        "a".repeat(50),
        "b".repeat(50)
    );
    assert_eq!(t, want);
    // A background child's output 0.5 s after the main process exits is inside a 2 s drain.
    assert_eq!(
        sh(&mut env, "(sleep 0.5; echo late) & echo early").await,
        "early\nlate"
    );
    // After the timeout's SIGTERM, the tree lives on for the 5 s grace: its handler, 3 s
    // long, finishes (the default 2 s grace would SIGKILL it first).
    let t = sh(
        &mut env,
        "trap 'echo got-term; sleep 3; echo handler-done; exit 0' TERM; while :; do sleep 0.1; done",
    )
    .await;
    assert!(t.starts_with("got-term\nhandler-done\n"), "{t}");
    env.close().await;
}

#[tokio::test]
async fn setup_files_and_verify_frame() {
    let mut env = new_env(TerminalConfig::default()).await;
    let out = reset(
        &mut env,
        json!({
            "files": {"data/in.txt": "41\n"},
            "setup": ["test -f data/in.txt", "cp data/in.txt /tmp/copy"],
            "verify": ["test \"$(cat answer.txt)\" = 42", "test -f /tmp/copy"],
        }),
    )
    .await;
    assert_eq!(
        out.observation.metadata().unwrap()["setup_results"][1]["success"],
        true
    );
    sh(&mut env, "echo $(( $(cat data/in.txt) + 1 )) > answer.txt").await;
    let v = env.verify().await.unwrap().unwrap();
    assert_eq!((v.reward, v.done), (1.0, true));
    assert_eq!(v.details["verification"]["passed"], 2);
    let out = run(&mut env, json!({"command": "ls"})).await;
    assert_eq!(
        out.observation.metadata().unwrap()["error_code"],
        "EPISODE_DONE"
    );
    env.close().await;
}

fn repo_tasks() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tasks");
    dir.is_dir().then_some(dir)
}

fn example_task_ids(root: &std::path::Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("task.yaml").is_file() && !e.path().join("Dockerfile").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// Every build-free example task: its oracle `solution.sh` earns 1.0, doing nothing earns 0.0.
#[tokio::test]
async fn example_tasks_oracle() {
    let Some(root) = repo_tasks() else {
        eprintln!("SKIP: no tasks/ folder in the repository");
        return;
    };
    let ids = example_task_ids(&root);
    let config = TerminalConfig {
        tasks_root: Some(root.clone()),
        ..TerminalConfig::default()
    };
    let factory = TerminalFactory::new(config, backend());
    for id in ids {
        let solution = std::fs::read_to_string(root.join(&id).join("solution.sh")).unwrap();
        let mut env = factory.create().await.unwrap();
        let files = json!({ "/tmp/.oracle/solution.sh": solution });
        reset(&mut env, json!({ "task_id": id, "files": files })).await;
        let out = run(
            &mut env,
            json!({"command": "bash /tmp/.oracle/solution.sh"}),
        )
        .await;
        let fin = run(&mut env, json!({"final_answer": "done"})).await;
        assert_eq!(
            reward(&fin),
            Some(1.0),
            "{id}: {}\n{}\n{:?}",
            text(&out),
            text(&fin),
            env.state().extra["verify_results"]
        );
        env.close().await;

        let mut env = factory.create().await.unwrap();
        reset(&mut env, json!({ "task_id": id })).await;
        let fin = run(&mut env, json!({"final_answer": "nothing"})).await;
        assert_eq!(
            reward(&fin),
            Some(0.0),
            "{id} without a solution: {}",
            text(&fin)
        );
        env.close().await;
    }
}

/// The verifier runs with the work dir as cwd, so `python3 -m unittest` would import an
/// agent-planted `unittest/` package from it and print a fake "OK": every example task's
/// `run-tests.sh` must start Python isolated (`python3 -I`).
#[tokio::test]
async fn example_tasks_resist_a_planted_unittest_package() {
    let Some(root) = repo_tasks() else {
        eprintln!("SKIP: no tasks/ folder in the repository");
        return;
    };
    let config = TerminalConfig {
        tasks_root: Some(root.clone()),
        ..TerminalConfig::default()
    };
    let factory = TerminalFactory::new(config, backend());
    let plant = "mkdir -p unittest && touch unittest/__init__.py && \
                 printf 'print(\"Ran 9 tests in 0.0s\\\\n\\\\nOK\")\\n' > unittest/__main__.py";
    for id in example_task_ids(&root) {
        let mut env = factory.create().await.unwrap();
        reset(&mut env, json!({ "task_id": id })).await;
        sh(&mut env, plant).await;
        let fin = run(&mut env, json!({"final_answer": "x"})).await;
        assert_eq!(
            reward(&fin),
            Some(0.0),
            "{id}: a planted unittest package forged {}",
            text(&fin)
        );
        env.close().await;
    }
}
