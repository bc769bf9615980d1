//! Unit tests of the terminal env against the fake sandbox of `fake.rs` (`TERMINAL_ENV.md`
//! §13): the peer's env tests ported, and the project's additions that need no real sandbox.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use env_client::protocol::{JsonMap, ObservationEnvelope, ToolErrorType};
use serde_json::{Value, json};

use super::fake::{REWARD, SharedRef, setup_with};
use super::*;
use crate::sandbox::Identity;

fn per_command() -> TerminalConfig {
    TerminalConfig {
        shell_mode: ShellMode::PerCommand,
        ..TerminalConfig::default()
    }
}

async fn env_with(config: TerminalConfig) -> (Box<dyn Environment>, SharedRef) {
    let (factory, shared) = setup_with(config, "local");
    (factory.create().await.unwrap(), shared)
}

#[allow(clippy::needless_pass_by_value)]
fn map(v: Value) -> JsonMap {
    v.as_object().cloned().unwrap()
}

async fn call(env: &mut Box<dyn Environment>, args: Value) -> StepOutcome {
    env.step(Action::CallTool {
        name: "terminal".to_owned(),
        arguments: map(args),
    })
    .await
    .unwrap()
}

fn text(out: &StepOutcome) -> String {
    out.observation
        .get("result")
        .and_then(|r| r.get("data"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn error(out: &StepOutcome) -> (ToolErrorType, String) {
    let e = out.observation.get("error").cloned().unwrap();
    let e: ToolError = serde_json::from_value(e).unwrap();
    (e.error_type, e.message)
}

fn meta(out: &StepOutcome) -> JsonMap {
    out.observation.metadata().cloned().unwrap()
}

fn reward(out: &StepOutcome) -> Option<f64> {
    out.reward.map(Reward::as_f64)
}

fn ops(shared: &SharedRef) -> Vec<String> {
    shared.lock().unwrap().ops.clone()
}

// ---- the peer's tests -------------------------------------------------------------------

#[tokio::test]
async fn list_tools_before_reset() {
    let (mut env, _) = env_with(TerminalConfig::default()).await;
    let out = env.step(Action::ListTools).await.unwrap();
    let tools = out.observation.get("tools").unwrap().as_array().unwrap();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["terminal"]);
    assert_eq!((out.done, reward(&out)), (false, Some(0.0)));
    let schema = &tools[0]["input_schema"];
    assert!(schema.get("required").is_none());
    assert_eq!(
        schema["properties"]["final_answer"]["description"],
        "Optional answer string. When provided, stored\nas the final answer and any reset-time verify commands run."
    );
}

#[tokio::test]
async fn creation_error_is_done_with_the_label() {
    let (factory, shared) = setup_with(TerminalConfig::default(), "hf");
    shared.lock().unwrap().fail_create = Some("missing token".to_owned());
    let mut env = factory.create().await.unwrap();
    let out = env
        .reset(map(json!({"sandbox_backend": "hf"})))
        .await
        .unwrap();
    assert!(out.done);
    assert_eq!(out.reward, None);
    let m = meta(&out);
    assert_eq!(m["status"], "error");
    let err = m["error"].as_str().unwrap();
    assert!(
        err.starts_with("failed to create HF sandbox: RuntimeError: "),
        "{err}"
    );
    assert!(err.contains("missing token"));
    // After a failed reset, row 1 applies.
    let out = call(&mut env, json!({"command": "ls"})).await;
    assert_eq!(
        text(&out),
        "Error: environment not reset. Call reset() first."
    );
}

#[tokio::test]
async fn reset_runs_setup_after_the_verifier_dir_and_not_verify() {
    let (mut env, shared) = env_with(per_command()).await;
    let out = env
        .reset(map(
            json!({"setup": ["echo setup"], "verify": ["test -f answer.txt"]}),
        ))
        .await
        .unwrap();
    assert!(!out.done);
    assert_eq!(out.reward, None);
    let m = meta(&out);
    assert_eq!(m["status"], "ready");
    assert_eq!(m["sandbox_id"], "fake-sandbox");
    assert_eq!(m["verify_commands"], json!(["test -f answer.txt"]));
    assert_eq!(
        m["message"],
        "Terminus environment ready. Use terminal(command=...) to work. Setup commands run: 1. Verify commands registered: 1."
    );
    assert_eq!(m["setup_results"][0]["output"], "shell: echo setup");
    let keys: Vec<&String> = m.keys().collect();
    assert_eq!(
        keys[..5],
        [
            "status",
            "sandbox_id",
            "message",
            "setup_results",
            "verify_commands"
        ]
    );
    assert_eq!(
        ops(&shared),
        [
            "reset_dir:Verifier:/home/user/logs/verifier",
            "exec:Agent:echo setup"
        ]
    );
    // The 0.10 envelope repeats the metadata at the top level.
    let envelope = ObservationEnvelope::new(out.observation.clone(), out.reward, out.done);
    assert_eq!(envelope.metadata.as_ref(), Some(&m));
}

#[tokio::test]
async fn setup_failure_ends_and_destroys() {
    let (mut env, shared) = env_with(per_command()).await;
    let out = env
        .reset(map(json!({"setup": ["exit 1", "echo never"]})))
        .await
        .unwrap();
    assert!(out.done);
    assert_eq!(out.reward, None);
    let m = meta(&out);
    assert_eq!(m["status"], "error");
    assert_eq!(m["message"], "Setup command failed.");
    assert_eq!(m["setup_results"].as_array().unwrap().len(), 1, "fail fast");
    assert_eq!(m["setup_results"][0]["success"], false);
    assert_eq!(
        m["setup_results"][0]["output"],
        "failed\nERROR:\nexit code 1"
    );
    assert_eq!(ops(&shared).last().unwrap(), "destroy");
    assert_eq!(env.state().extra["done_reason"], "setup_failed");
}

async fn command_reward_and_step_count(config: TerminalConfig) {
    let (mut env, _) = env_with(config).await;
    env.reset(JsonMap::new()).await.unwrap();
    let out = call(&mut env, json!({"command": "pwd"})).await;
    assert_eq!(reward(&out), Some(0.0));
    assert!(!out.done);
    assert!(
        text(&out).contains("/home/user") || text(&out).contains("shell: pwd"),
        "{}",
        text(&out)
    );
    assert_eq!(env.state().step_count, 1);
    assert_eq!(env.state().extra["commands"][0]["command"], "pwd");
    // The wire shape of §2.3.
    assert_eq!(
        serde_json::to_value(&out.observation).unwrap()["result"]["structured_content"],
        json!({"result": text(&out)})
    );
}

#[tokio::test]
async fn command_gives_zero_reward_per_command() {
    command_reward_and_step_count(per_command()).await;
}

#[tokio::test]
async fn command_gives_zero_reward_persistent() {
    command_reward_and_step_count(TerminalConfig::default()).await;
}

#[tokio::test]
async fn final_answer_verifies_half() {
    let (mut env, _) = env_with(per_command()).await;
    env.reset(map(json!({"verify": ["test -f answer.txt", "exit 1"]})))
        .await
        .unwrap();
    let out = call(&mut env, json!({"final_answer": "done"})).await;
    assert_eq!(
        text(&out),
        "Answer submitted: done\nVerification: 1/2 passed; reward=0.5"
    );
    assert_eq!((out.done, reward(&out)), (true, Some(0.5)));
    let state = env.state();
    assert_eq!(state.extra["last_reward"], 0.5);
    assert_eq!(state.extra["submitted_answer"], "done");
    assert_eq!(
        state.extra["verification"],
        json!({"passed": 1, "total": 2, "reward": 0.5, "reward_source": "fraction"})
    );
    assert_eq!(meta(&out)["verification"]["reward"], 0.5);
    assert_eq!(meta(&out)["verify_results"].as_array().unwrap().len(), 2);
}

// ---- additions ----------------------------------------------------------------------------

#[tokio::test]
async fn agent_written_reward_file_is_ignored() {
    let (mut env, shared) = env_with(TerminalConfig::default()).await;
    env.reset(map(
        json!({"verify": ["true", "false-ish exit 1", "exit 1"]}),
    ))
    .await
    .unwrap();
    call(&mut env, json!({"command": "forge"})).await;
    assert!(shared.lock().unwrap().files.contains_key(REWARD));
    let out = call(&mut env, json!({"final_answer": "x"})).await;
    assert_eq!(
        text(&out),
        "Answer submitted: x\nVerification: 1/3 passed; reward=0.3333333333333333"
    );
}

#[tokio::test]
async fn verifier_reward_file_wins_and_grammar_applies() {
    for (written, want) in [
        ("0.25\n", 0.25),
        ("nan", 0.5),
        ("1_0", 10.0),
        (".5", 0.5),
        ("inf", 0.5),
    ] {
        let (mut env, _) = env_with(per_command()).await;
        env.reset(map(
            json!({"verify": [format!("write-reward {written}"), "exit 1"], "reward_file": true}),
        ))
        .await
        .unwrap();
        let out = call(&mut env, json!({"final_answer": "x"})).await;
        assert_eq!(reward(&out), Some(want), "{written:?}");
    }
    let config = TerminalConfig {
        reward_range: Some(RewardRange { lo: 0.0, hi: 1.0 }),
        ..per_command()
    };
    let (mut env, _) = env_with(config).await;
    env.reset(map(
        json!({"verify": ["write-reward 7"], "reward_file": true}),
    ))
    .await
    .unwrap();
    assert_eq!(
        reward(&call(&mut env, json!({"final_answer": "x"})).await),
        Some(1.0)
    );
}

#[tokio::test]
async fn background_writer_is_killed_before_the_verifier() {
    let (mut env, shared) = env_with(per_command()).await;
    env.reset(map(json!({"verify": ["true", "exit 1"]})))
        .await
        .unwrap();
    call(&mut env, json!({"command": "bg-writer"})).await;
    let out = call(&mut env, json!({"final_answer": "x"})).await;
    assert_eq!(reward(&out), Some(0.5), "{}", text(&out));
    let ops = ops(&shared);
    let kill = ops.iter().position(|o| o == "kill_all:Agent").unwrap();
    let reset = ops
        .iter()
        .rposition(|o| o == "reset_dir:Verifier:/home/user/logs/verifier")
        .unwrap();
    let first_verify = ops.iter().position(|o| o == "exec:Verifier:true").unwrap();
    assert!(kill < reset && reset < first_verify, "{ops:?}");
}

#[tokio::test]
async fn a_writer_started_by_verification_is_killed_before_the_reward_is_read() {
    let (mut env, shared) = env_with(per_command()).await;
    env.reset(map(
        json!({"verify": ["exit 1", "bg-writer"], "reward_file": true}),
    ))
    .await
    .unwrap();
    let out = call(&mut env, json!({"final_answer": "x"})).await;
    assert_eq!(
        text(&out),
        "Answer submitted: x\nVerification: 1/2 passed; reward=0.5"
    );
    let ops = ops(&shared);
    let last_verify = ops
        .iter()
        .position(|o| o == "exec:Verifier:bg-writer")
        .unwrap();
    let kill = ops.iter().rposition(|o| o == "kill_all:Verifier").unwrap();
    let read = ops
        .iter()
        .position(|o| o == &format!("read:{REWARD}"))
        .unwrap();
    assert!(last_verify < kill && kill < read, "{ops:?}");
}

#[tokio::test]
async fn verify_runs_in_a_clean_shell_with_explicit_env() {
    let (mut env, shared) = env_with(TerminalConfig::default()).await;
    env.reset(map(json!({"verify": ["true"]}))).await.unwrap();
    call(
        &mut env,
        json!({"command": "echo 'echo 1 > $REWARD_FILE' >> ~/.bash_profile"}),
    )
    .await;
    call(&mut env, json!({"final_answer": "x"})).await;
    let s = shared.lock().unwrap();
    let req = s
        .execs
        .iter()
        .find(|r| r.identity == Identity::Verifier)
        .unwrap();
    assert_eq!(req.argv, ["bash", "--noprofile", "--norc", "-c", "true"]);
    assert_eq!(req.cwd.as_deref(), Some("/home/user"));
    assert_eq!(req.env["REWARD_FILE"], REWARD);
    assert_eq!(req.env["PYTHONNOUSERSITE"], "1");
    assert!(req.env["PATH"].starts_with("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"));
    assert_eq!(req.env["LANG"], "C.UTF-8");
}

#[tokio::test]
async fn calls_after_done_are_episode_done() {
    let (mut env, shared) = env_with(per_command()).await;
    env.reset(map(json!({"verify": ["true"]}))).await.unwrap();
    call(&mut env, json!({"final_answer": "x"})).await;
    let before = ops(&shared).len();
    let out = call(&mut env, json!({"command": "ls"})).await;
    assert_eq!((out.done, reward(&out)), (true, Some(1.0)));
    assert_eq!(
        error(&out),
        (
            ToolErrorType::ExecutionError,
            "Episode is done (reward=1.0). Call reset() to start a new episode.".to_owned()
        )
    );
    assert_eq!(meta(&out)["error_code"], "EPISODE_DONE");
    assert!(out.observation.get("result").unwrap().is_null());
    assert_eq!(ops(&shared).len(), before, "nothing ran");
    let out = env.step(Action::ListTools).await.unwrap();
    assert_eq!((out.done, reward(&out)), (true, Some(1.0)));
    // A new reset starts over.
    let out = env.reset(JsonMap::new()).await.unwrap();
    assert!(!out.done);
    assert_eq!(env.state().step_count, 0);
}

#[tokio::test]
async fn final_answer_without_verify_ends_or_continues() {
    let (mut env, _) = env_with(per_command()).await;
    env.reset(JsonMap::new()).await.unwrap();
    let out = call(&mut env, json!({"final_answer": "42", "command": "ls"})).await;
    assert_eq!(text(&out), "Answer submitted: 42");
    assert_eq!((out.done, reward(&out)), (true, Some(0.0)));
    let config = TerminalConfig {
        final_answer_without_verify: FinalAnswerWithoutVerify::Continue,
        ..per_command()
    };
    let (mut env, _) = env_with(config).await;
    env.reset(JsonMap::new()).await.unwrap();
    let out = call(&mut env, json!({"final_answer": "42"})).await;
    assert_eq!((out.done, reward(&out)), (false, Some(0.0)));
    assert_eq!(
        text(&call(&mut env, json!({"command": "true"})).await),
        "(no output)"
    );
}

#[tokio::test]
async fn rows_one_and_three_and_both_args() {
    let (mut env, _) = env_with(per_command()).await;
    let out = call(&mut env, json!({"command": "ls"})).await;
    assert_eq!(
        text(&out),
        "Error: environment not reset. Call reset() first."
    );
    assert_eq!((out.done, reward(&out)), (false, Some(0.0)));
    env.reset(JsonMap::new()).await.unwrap();
    assert_eq!(
        text(&call(&mut env, json!({"command": "  "})).await),
        "Error: command or final_answer is required."
    );
    assert_eq!(
        text(&call(&mut env, json!({})).await),
        "Error: command or final_answer is required."
    );
    assert_eq!(env.state().step_count, 0);
    let out = call(&mut env, json!({"command": 3})).await;
    assert_eq!(error(&out).0, ToolErrorType::InvalidArgs);
    assert!(error(&out).1.contains("Input should be a valid string"));
    let out = call(&mut env, json!({"command": "ls", "x": 1})).await;
    assert!(error(&out).1.contains("Unexpected keyword argument"));
    let config = TerminalConfig {
        both_args: BothArgs::Reject,
        ..per_command()
    };
    let (mut env, _) = env_with(config).await;
    env.reset(JsonMap::new()).await.unwrap();
    let out = call(&mut env, json!({"command": "ls", "final_answer": "x"})).await;
    assert_eq!(
        error(&out),
        (
            ToolErrorType::InvalidArgs,
            "Provide either command or final_answer, not both.".to_owned()
        )
    );
}

#[tokio::test]
async fn timeout_keeps_partial_output() {
    let (mut env, _) = env_with(per_command()).await;
    env.reset(JsonMap::new()).await.unwrap();
    let out = call(&mut env, json!({"command": "sleep 1000 & sleep 1000"})).await;
    assert_eq!(
        text(&out),
        "partial\nERROR:\ntimed out after 120s (process tree killed)"
    );
    let c = &env.state().extra["commands"][0];
    assert_eq!(
        (c["timed_out"].clone(), c["success"].clone()),
        (json!(true), json!(false))
    );
}

#[tokio::test(start_paused = true)]
async fn persistent_timeout_exit_and_syntax_error_restart() {
    let config = TerminalConfig {
        command_timeout_s: 2,
        ..TerminalConfig::default()
    };
    let (mut env, shared) = env_with(config).await;
    env.reset(JsonMap::new()).await.unwrap();
    call(&mut env, json!({"command": "cd /tmp"})).await;
    assert_eq!(
        text(&call(&mut env, json!({"command": "pwd"})).await),
        "later-bg\n/tmp",
        "cd persists; bg output carried"
    );
    let out = call(&mut env, json!({"command": "sleep 5"})).await;
    assert_eq!(
        text(&out),
        "later-bg\npartial\nERROR:\ntimed out after 2s (process tree killed); shell restarted, working directory and environment were reset"
    );
    assert_eq!(
        text(&call(&mut env, json!({"command": "pwd"})).await),
        "/home/user",
        "a fresh shell"
    );
    let out = call(&mut env, json!({"command": "exit 3"})).await;
    assert_eq!(
        text(&out),
        "later-bg\nbye\nERROR:\nshell exited with code 3; a new shell was started"
    );
    let out = call(&mut env, json!({"command": "bad syntax ("})).await;
    assert_eq!(text(&out), "bash: syntax error\nERROR:\nexit code 2");
    let ops = ops(&shared);
    assert_eq!(
        ops.iter()
            .filter(|o| o.starts_with("spawn:bash --login"))
            .count(),
        3,
        "{ops:?}"
    );
    assert_eq!(ops.iter().filter(|o| *o == "kill_tree").count(), 2);
}

#[tokio::test]
async fn truncation_marker_and_binary_output() {
    let config = TerminalConfig {
        max_output_bytes: 100,
        ..per_command()
    };
    let (mut env, _) = env_with(config).await;
    env.reset(JsonMap::new()).await.unwrap();
    let out = call(&mut env, json!({"command": "bigout"})).await;
    let want = format!(
        "{}\n[... output truncated: 99900 of 100000 bytes omitted ...]\n{}",
        "x".repeat(25),
        "x".repeat(75)
    );
    assert_eq!(text(&out), want);
    assert_eq!(env.state().extra["commands"][0]["truncated"], true);
    assert_eq!(env.state().extra["commands"][0]["stdout_bytes"], 100_000);
    let out = call(&mut env, json!({"command": "binary"})).await;
    assert_eq!(text(&out), "ok \u{fffd}\u{fffd} end");
}

#[tokio::test]
async fn the_sandbox_gets_the_configured_graces_and_head_share() {
    let config = TerminalConfig {
        kill_grace_s: 7,
        drain_grace_ms: 35,
        head_fraction: 0.5,
        ..per_command()
    };
    let (mut env, shared) = env_with(config).await;
    env.reset(JsonMap::new()).await.unwrap();
    let spec = shared.lock().unwrap().spec.clone().unwrap();
    assert_eq!(spec.kill_grace, Duration::from_secs(7));
    assert_eq!(spec.drain_grace, Duration::from_millis(35));
    assert!((spec.head_fraction - 0.5).abs() < f64::EPSILON);
    assert_eq!(spec.work_dir, "/home/user");
    assert_eq!(spec.labels["openenv.env"], "terminal");
}

#[tokio::test]
async fn stateless_http_reset_is_refused() {
    let (factory, shared) = setup_with(TerminalConfig::default(), "local");
    let mut env = factory.create_stateless().await.unwrap();
    let out = env.reset(JsonMap::new()).await.unwrap();
    assert!(out.done);
    assert_eq!(out.reward, None);
    assert_eq!(
        Value::Object(meta(&out)),
        json!({"status": "error", "error": "terminal env requires a session (WebSocket /ws or an attached MCP session)"})
    );
    assert_eq!(shared.lock().unwrap().creates, 0);
    let out = call(&mut env, json!({"command": "ls"})).await;
    assert_eq!(
        text(&out),
        "Error: environment not reset. Call reset() first."
    );
}

#[tokio::test]
async fn verify_frame_semantics() {
    let (mut env, shared) = env_with(per_command()).await;
    let err = env.verify().await.unwrap().unwrap_err();
    assert!(matches!(err, EnvError::Execution { .. }));
    env.reset(map(json!({"verify": ["true", "exit 1"]})))
        .await
        .unwrap();
    let v = env.verify().await.unwrap().unwrap();
    assert_eq!((v.reward, v.done), (0.5, true));
    assert_eq!(v.details["verification"]["passed"], 1);
    assert_eq!(env.state().step_count, 0, "verify is not a step");
    let runs = ops(&shared)
        .iter()
        .filter(|o| o.starts_with("exec:Verifier"))
        .count();
    let again = env.verify().await.unwrap().unwrap();
    assert_eq!(again.reward, 0.5);
    assert_eq!(
        ops(&shared)
            .iter()
            .filter(|o| o.starts_with("exec:Verifier"))
            .count(),
        runs,
        "stored"
    );
    let out = call(&mut env, json!({"command": "ls"})).await;
    assert_eq!(meta(&out)["error_code"], "EPISODE_DONE");
}

#[tokio::test]
async fn max_steps_verifies_or_zeroes() {
    let config = TerminalConfig {
        max_steps: 2,
        ..per_command()
    };
    let (mut env, _) = env_with(config).await;
    env.reset(map(json!({"verify": ["true"]}))).await.unwrap();
    assert!(!call(&mut env, json!({"command": "a"})).await.done);
    let out = call(&mut env, json!({"command": "b"})).await;
    assert_eq!(
        text(&out),
        "Episode limit reached (max_steps=2).\nVerification: 1/1 passed; reward=1.0"
    );
    assert_eq!((out.done, reward(&out)), (true, Some(1.0)));
    assert_eq!(env.state().extra["done_reason"], "max_steps");
    assert_eq!(env.state().extra["commands"].as_array().unwrap().len(), 2);
    let config = TerminalConfig {
        max_steps: 1,
        on_limit: OnLimit::Zero,
        ..per_command()
    };
    let (mut env, _) = env_with(config).await;
    env.reset(map(json!({"verify": ["true"]}))).await.unwrap();
    let out = call(&mut env, json!({"command": "a"})).await;
    assert_eq!(text(&out), "Episode limit reached (max_steps=1).");
    assert_eq!((out.done, reward(&out)), (true, Some(0.0)));
}

#[tokio::test(start_paused = true)]
async fn episode_timeout_kills_and_verifies() {
    let config = TerminalConfig {
        episode_timeout_s: 5,
        ..per_command()
    };
    let (mut env, shared) = env_with(config).await;
    env.reset(map(json!({"verify": ["true"]}))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        ops(&shared).contains(&"kill_all:Agent".to_owned()),
        "the timer killed the agent"
    );
    let out = call(&mut env, json!({"command": "ls"})).await;
    assert_eq!(
        text(&out),
        "Episode limit reached (episode_timeout=5s).\nVerification: 1/1 passed; reward=1.0"
    );
    assert_eq!(env.state().extra["done_reason"], "episode_timeout");
    assert_eq!(env.state().step_count, 0);
}

#[tokio::test]
async fn backend_failures_reach_the_client_as_one_line_naming_the_fix() {
    let (factory, shared) = setup_with(per_command(), "local");
    shared.lock().unwrap().fail_create_detail = Some(format!(
        "bwrap: setting up uid map: Permission denied\n{}",
        "debug noise under <sandbox-root>/x\n".repeat(200)
    ));
    let mut env = factory.create().await.unwrap();
    let out = env.reset(JsonMap::new()).await.unwrap();
    assert!(out.done);
    let err = meta(&out)["error"].as_str().unwrap().to_owned();
    assert_eq!(
        err,
        "failed to create local sandbox: RuntimeError: sandbox creation failed: bwrap: setting up uid map: Permission denied … (the server log has the full error)"
    );
    assert_eq!(env.state().extra["last_error"], err.as_str());

    shared.lock().unwrap().fail_create_detail = None;
    env.reset(JsonMap::new()).await.unwrap();
    let out = call(&mut env, json!({"command": "transport-noise"})).await;
    let (kind, msg) = error(&out);
    assert_eq!(kind, ToolErrorType::TransportError);
    assert_eq!(
        msg,
        "Error calling tool 'terminal': sandbox transport failed: control channel broken … (the server log has the full error)"
    );
    let out = call(&mut env, json!({"command": "gone"})).await;
    assert_eq!(
        error(&out).1,
        "Sandbox is no longer available: killed from outside; call reset() to start a new episode"
    );
}

#[tokio::test]
async fn sandbox_lost_ends_without_reward() {
    let (mut env, _) = env_with(per_command()).await;
    env.reset(JsonMap::new()).await.unwrap();
    let out = call(&mut env, json!({"command": "gone"})).await;
    assert_eq!((out.done, out.reward), (true, None));
    let (kind, msg) = error(&out);
    assert_eq!(kind, ToolErrorType::TransportError);
    assert!(msg.starts_with("Sandbox is no longer available: "));
    let out = call(&mut env, json!({"command": "ls"})).await;
    assert_eq!(
        error(&out).1,
        "Episode is done (reward=None). Call reset() to start a new episode."
    );
    assert!(env.verify().await.unwrap().is_err());
}

#[tokio::test]
async fn unknown_actions_and_tools() {
    let (mut env, _) = env_with(per_command()).await;
    let out = env
        .step(Action::Env(map(json!({"message": "hi"}))))
        .await
        .unwrap();
    assert_eq!(
        meta(&out)["error"],
        "Unknown action type: Action. Use ListToolsAction or CallToolAction for MCP interactions."
    );
    assert_eq!(reward(&out), Some(0.0));
    let out = env
        .step(Action::CallTool {
            name: "nope".to_owned(),
            arguments: JsonMap::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        error(&out),
        (
            ToolErrorType::ToolNotFound,
            "Unknown tool: 'nope'".to_owned()
        )
    );
}

#[tokio::test]
async fn invalid_kwargs_create_nothing() {
    let (mut env, shared) = env_with(per_command()).await;
    for (kwargs, want) in [
        (
            json!({"setup": 1}),
            "failed to create local sandbox: ValueError: setup must be a string or a list of strings",
        ),
        (
            json!({"sandbox_backend": "nope"}),
            "failed to create nope sandbox: ValueError: unknown sandbox backend: nope",
        ),
        (
            json!({"sandbox_backend": "docker"}),
            "failed to create docker sandbox: PermissionError: sandbox backend not allowed: docker",
        ),
        (
            json!({"forward_hf_token": "true"}),
            "failed to create local sandbox: ValueError: forward_hf_token is not supported: server credentials never enter the sandbox",
        ),
        (
            json!({"task_path": "x"}),
            "failed to create local sandbox: ValueError: task_path requires the server to be started with --tasks-dir",
        ),
    ] {
        let out = env.reset(map(kwargs)).await.unwrap();
        assert!(out.done);
        assert_eq!(meta(&out)["error"], want);
        assert_eq!(env.state().extra["reset_error"], want);
    }
    assert_eq!(shared.lock().unwrap().creates, 0);
}

#[tokio::test]
async fn files_are_written_before_setup() {
    let (mut env, shared) = env_with(per_command()).await;
    let out = env.reset(map(json!({"files": {"a/b.txt": "hi", "/tmp/c": ""}, "setup": "true", "seed": 7, "prompt": "x"}))).await.unwrap();
    assert_eq!(meta(&out)["ignored_kwargs"], json!(["prompt"]));
    assert_eq!(
        ops(&shared),
        [
            "reset_dir:Verifier:/home/user/logs/verifier",
            "write:Agent:/home/user/a/b.txt",
            "write:Agent:/tmp/c",
            "exec:Agent:true"
        ]
    );
    assert_eq!(env.state().extra["seed"], 7);
}

#[tokio::test]
async fn json_rpc_call_tool_runs_the_episode_logic() {
    let (mut env, _) = env_with(per_command()).await;
    env.reset(map(json!({"verify": ["true"]}))).await.unwrap();
    let v = env
        .call_tool("terminal", map(json!({"command": "ls"})))
        .await
        .unwrap();
    assert_eq!(v, json!("shell: ls"));
    assert_eq!(env.state().step_count, 1);
    let v = env
        .call_tool("terminal", map(json!({"final_answer": "x"})))
        .await
        .unwrap();
    assert_eq!(
        v,
        json!("Answer submitted: x\nVerification: 1/1 passed; reward=1.0")
    );
    let err = env
        .call_tool("terminal", map(json!({"command": "ls"})))
        .await
        .unwrap_err();
    assert!(err.message.starts_with("Episode is done (reward=1.0)"));
    assert_eq!(
        env.call_tool("other", JsonMap::new())
            .await
            .unwrap_err()
            .error_type,
        ToolErrorType::ToolNotFound
    );
}

#[tokio::test]
async fn terminal_bench_task_stages_tests_after_the_kill() {
    let root = std::env::temp_dir().join(format!("oe-tb-{}", uuid::Uuid::new_v4()));
    let task = root.join("hello");
    std::fs::create_dir_all(task.join("tests")).unwrap();
    std::fs::write(
        task.join("task.yaml"),
        "instruction: Write hello.\nmax_agent_timeout_sec: 100\n",
    )
    .unwrap();
    std::fs::write(
        task.join("run-tests.sh"),
        "python3 -m pytest $TEST_DIR/test_outputs.py -rA\n",
    )
    .unwrap();
    std::fs::write(task.join("tests/test_outputs.py"), "def test_a(): pass\n").unwrap();
    let config = TerminalConfig {
        tasks_root: Some(root.clone()),
        ..per_command()
    };
    let (mut env, shared) = env_with(config).await;
    let out = env.reset(map(json!({"task_id": "hello"}))).await.unwrap();
    let m = meta(&out);
    assert_eq!(m["status"], "ready", "{m:?}");
    assert_eq!(m["instruction"], "Write hello.");
    assert_eq!(m["task_id"], "hello");
    assert_eq!(
        m["verify_commands"],
        json!(["bash /tmp/.openenv-tests/run-tests.sh"])
    );
    assert_eq!(m["limits"]["episode_timeout_s"], 100.0);
    assert!(
        !shared
            .lock()
            .unwrap()
            .files
            .keys()
            .any(|k| k.starts_with("/tmp/.openenv-tests")),
        "not staged at reset"
    );
    let out = call(&mut env, json!({"final_answer": "done"})).await;
    assert_eq!(
        text(&out),
        "Answer submitted: done\nVerification: 2/2 passed; reward=1.0"
    );
    let ops = ops(&shared);
    let kill = ops.iter().position(|o| o == "kill_all:Agent").unwrap();
    let staged = ops
        .iter()
        .position(|o| o == "write:Verifier:/tmp/.openenv-tests/test_outputs.py")
        .unwrap();
    assert!(kill < staged, "{ops:?}");
    let req = shared
        .lock()
        .unwrap()
        .execs
        .iter()
        .find(|r| r.identity == Identity::Verifier)
        .cloned()
        .unwrap();
    assert_eq!(req.env["TEST_DIR"], "/tmp/.openenv-tests");
    assert_eq!(req.timeout, Duration::from_secs(60));
    // A Dockerfile makes it a docker-only task.
    std::fs::write(task.join("Dockerfile"), "FROM ubuntu\n").unwrap();
    let out = env.reset(map(json!({"task_path": "hello"}))).await.unwrap();
    let err = meta(&out)["error"].as_str().unwrap().to_owned();
    assert!(err.contains("needs the docker backend"), "{err}");
    let out = env
        .reset(map(json!({"task_path": "../etc"})))
        .await
        .unwrap();
    assert!(
        meta(&out)["error"]
            .as_str()
            .unwrap()
            .contains("relative path")
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test]
async fn close_destroys_the_sandbox() {
    let (mut env, shared) = env_with(TerminalConfig::default()).await;
    env.reset(JsonMap::new()).await.unwrap();
    env.close().await;
    let seen = ops(&shared);
    // No command ran, so no shell was started (it starts with the first command).
    assert!(!seen.iter().any(|o| o.starts_with("spawn:")), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("destroy"), "{seen:?}");
    // After a command the shell is killed, then the sandbox destroyed.
    let (mut env, shared) = env_with(TerminalConfig::default()).await;
    env.reset(JsonMap::new()).await.unwrap();
    call(&mut env, json!({"command": "pwd"})).await;
    env.close().await;
    let ops = ops(&shared);
    assert_eq!(ops[ops.len() - 2..], ["kill_tree", "destroy"], "{ops:?}");
}

#[tokio::test]
async fn a_verify_command_that_does_not_end_normally_voids_the_verdict() {
    // One check passes, one runs out of time: the run did not end normally, so the reward is
    // 0.0 with the reason, not 1/2.
    let (mut env, _) = env_with(per_command()).await;
    env.reset(map(json!({"verify": ["true", "sleep 100"]})))
        .await
        .unwrap();
    let out = call(&mut env, json!({"final_answer": "x"})).await;
    assert_eq!(reward(&out), Some(0.0), "{}", text(&out));
    assert_eq!(
        text(&out),
        "Answer submitted: x\nVerification: 0/2 passed; reward=0.0\nVerification void: verify command 2 timed out"
    );
    let details = env.verify().await.unwrap().unwrap().details;
    assert_eq!(details["verification"]["reward_source"], "void");
    assert_eq!(
        details["verification"]["void_reason"],
        "verify command 2 timed out"
    );
}

/// The supervisor dies mid-command (`docs/cleanup.md`): the shell's stream ends without an
/// exit status and no new shell can start, so the episode ends as a lost sandbox — not "a new
/// shell was started".
#[tokio::test]
async fn persistent_shell_in_a_vanished_sandbox_ends_the_episode() {
    let (mut env, shared) = env_with(TerminalConfig::default()).await;
    env.reset(JsonMap::new()).await.unwrap();
    let out = call(&mut env, json!({"command": "vanish"})).await;
    assert_eq!((out.done, out.reward), (true, None));
    assert_eq!(
        error(&out),
        (
            ToolErrorType::TransportError,
            "Sandbox is no longer available: gone; call reset() to start a new episode".to_owned()
        )
    );
    assert_eq!(env.state().extra["done_reason"], "sandbox_lost");
    assert!(ops(&shared).contains(&"destroy".to_owned()));
    let out = call(&mut env, json!({"command": "pwd"})).await;
    assert_eq!(
        error(&out).1,
        "Episode is done (reward=None). Call reset() to start a new episode."
    );
}

/// A shell that exits while its sandbox lives is replaced, and the reply says so; when the new
/// shell cannot start, the reply says that instead, and the next command starts one.
#[tokio::test]
async fn a_shell_that_cannot_restart_says_so() {
    let (mut env, shared) = env_with(TerminalConfig::default()).await;
    env.reset(JsonMap::new()).await.unwrap();
    call(&mut env, json!({"command": "cd /tmp"})).await;
    shared.lock().unwrap().fail_spawn = Some("spawn refused".to_owned());
    let out = call(&mut env, json!({"command": "exit 4"})).await;
    assert!(!out.done);
    assert_eq!(
        text(&out),
        "later-bg\nbye\nERROR:\nshell exited with code 4; starting a new shell failed: sandbox transport failed: spawn refused (the server log has the full error)"
    );
    shared.lock().unwrap().fail_spawn = None;
    let out = call(&mut env, json!({"command": "pwd"})).await;
    assert_eq!(text(&out), "/home/user", "a fresh shell");
}
