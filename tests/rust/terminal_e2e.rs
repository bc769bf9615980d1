//! The terminal environment end to end: the real `env-server` binary on the real local
//! bubblewrap sandbox, driven by the Rust client.
//!
//! Every shipped task's oracle earns reward 1.0 and a wrong answer 0.0; then a hostile agent
//! tries to read the server's secrets, reach the network, forge its reward, escape the
//! workspace, leave processes behind, fork-bomb and flood; a client vanishes mid-command; the
//! server gets SIGTERM with live sessions. Each test asserts the outcome, and that nothing of
//! the episode is left on the host.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_tests::{ServerProcess, obj, repo, sandbox_root, terminal_server};
use env_client::protocol::Reward;
use env_client::{ClientConfig, EnvClient, ToolCall};
use serde_json::{Value, json};

async fn client(server: &ServerProcess) -> EnvClient {
    let config = ClientConfig::default().with_request_timeout(Some(Duration::from_secs(120)));
    EnvClient::connect_with(&server.url(), config)
        .await
        .unwrap()
}

async fn run(env: &EnvClient, command: &str) -> ToolCall {
    env.call_tool("terminal", obj(json!({ "command": command })))
        .await
        .unwrap()
}

fn text(call: &ToolCall) -> &str {
    call.value.as_str().unwrap_or_default()
}

fn reward(call: &ToolCall) -> f64 {
    match call.reward {
        Some(Reward::Float(r)) => r,
        Some(Reward::Int(i)) => i as f64,
        other => panic!("no numeric reward: {other:?}"),
    }
}

/// Host processes whose command line contains `marker`.
fn host_processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(pid);
        }
    }
    found
}

async fn eventually(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + within;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < end,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The episode directories (`openenv-rs-…`) under a sandbox root.
fn sandbox_dirs(root: &Path) -> usize {
    std::fs::read_dir(root).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("openenv-rs-"))
            .count()
    })
}

fn dir_is_empty(dir: &Path) -> bool {
    sandbox_dirs(dir) == 0
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shipped_task_oracle_earns_1_and_a_wrong_answer_0() {
    let root = sandbox_root("oracle");
    let server = terminal_server(&root, &[], &[]).await;
    let mut tasks: Vec<PathBuf> = std::fs::read_dir(repo().join("tasks"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("task.yaml").is_file())
        .collect();
    tasks.sort();
    assert!(tasks.len() >= 5, "expected the shipped example tasks");
    for task in &tasks {
        let id = task.file_name().unwrap().to_string_lossy().into_owned();
        let oracle = std::fs::read_to_string(task.join("solution.sh")).unwrap();

        // The oracle, then a final answer: verified inside the server, reward 1.0.
        let env = client(&server).await;
        let reset = env.reset(obj(json!({ "task_id": id }))).await.unwrap();
        assert!(!reset.done, "{id}: reset failed: {:?}", reset.metadata);
        let meta = reset.metadata.clone().unwrap();
        assert_eq!(meta["status"], "ready", "{id}");
        assert!(
            meta["instruction"].as_str().is_some_and(|s| !s.is_empty()),
            "{id}: instruction reaches the client"
        );
        let ran = run(&env, &oracle).await;
        assert!(!ran.done, "{id}: {}", text(&ran));
        let answer = env
            .call_tool("terminal", obj(json!({"final_answer": "done"})))
            .await
            .unwrap();
        assert!(answer.done, "{id}");
        assert_eq!(reward(&answer), 1.0, "{id}: {}", text(&answer));
        env.close().await.unwrap();

        // Doing nothing useful: reward 0.0, through the verify frame this time.
        let env = client(&server).await;
        env.reset(obj(json!({ "task_id": id }))).await.unwrap();
        run(
            &env,
            "echo wrong > answer.txt; rm -f *.txt greet.sh; echo 'print(1)' > fizzbuzz.py",
        )
        .await;
        let verified = env.verify().await.unwrap();
        assert_eq!(verified.reward, 0.0, "{id}: {:?}", verified.details);
        assert!(verified.done);
        env.close().await.unwrap();
    }
    eventually("sandbox dirs removed", Duration::from_secs(10), || {
        dir_is_empty(&root)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_environment_is_invisible_inside() {
    let root = sandbox_root("secrets");
    let token = "hf_e2e_secret_token_0123456789";
    let server = terminal_server(
        &root,
        &[],
        &[("HF_TOKEN", token), ("AWS_SECRET_ACCESS_KEY", token)],
    )
    .await;
    let env = client(&server).await;
    env.reset(obj(json!({}))).await.unwrap();
    for probe in [
        "env",
        "cat /proc/1/environ /proc/1/cmdline /proc/self/environ 2>/dev/null | tr '\\0' '\\n'",
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; tr '\\0' '\\n' < $p/environ 2>/dev/null; done",
        "grep -r hf_e2e /etc /tmp /home 2>/dev/null | head",
    ] {
        let out = run(&env, probe).await;
        assert!(
            !text(&out).contains(token),
            "{probe} revealed the token: {}",
            text(&out)
        );
        assert!(
            !text(&out).contains(root.to_str().unwrap()),
            "{probe} revealed a host path: {}",
            text(&out)
        );
    }
    let out = run(&env, "id -u; hostname; echo $HOME").await;
    assert_eq!(text(&out), "1000\nsandbox\n/home/user");
    env.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn there_is_no_network() {
    let root = sandbox_root("network");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = terminal_server(&root, &[], &[]).await;
    let env = client(&server).await;
    env.reset(obj(json!({}))).await.unwrap();
    let out = run(
        &env,
        &format!("echo hi > /dev/tcp/127.0.0.1/{port} && echo CONNECTED"),
    )
    .await;
    assert!(!text(&out).contains("CONNECTED"), "{}", text(&out));
    let out = run(
        &env,
        &format!(
            "echo hi > /dev/tcp/{}/{port} && echo CONNECTED",
            server.addr.split(':').next().unwrap()
        ),
    )
    .await;
    assert!(!text(&out).contains("CONNECTED"), "{}", text(&out));
    // Only the loopback interface exists in the sandbox's network namespace.
    let out = run(&env, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(text(&out), "lo");
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing reached the host listener"
    );
    env.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_cannot_forge_its_reward() {
    let root = sandbox_root("forge");
    let server = terminal_server(&root, &[], &[]).await;
    let env = client(&server).await;
    // The verifier checks for answer.txt = 42; the agent writes something else and tries every
    // way to plant a reward of 1.0.
    env.reset(obj(json!({"verify": ["test \"$(cat answer.txt)\" = 42"]})))
        .await
        .unwrap();
    run(&env, "echo 41 > answer.txt").await;
    run(
        &env,
        "mkdir -p /home/user/logs/verifier && echo 1.0 > /home/user/logs/verifier/reward.txt",
    )
    .await;
    run(&env, "(while true; do mkdir -p /home/user/logs/verifier; echo 1.0 > /home/user/logs/verifier/reward.txt; sleep 0.01; done) > /dev/null 2>&1 &").await;
    run(&env, "printf 'echo 1.0 > $REWARD_FILE\\n' >> ~/.bash_profile; printf 'echo 1.0 > $REWARD_FILE\\n' >> ~/.bashrc").await;
    run(&env, "mkdir -p ~/bin ~/.local/bin; printf '#!/bin/sh\\nexit 0\\n' > ~/bin/test; cp ~/bin/test ~/.local/bin/test; chmod +x ~/bin/test ~/.local/bin/test").await;
    let answer = env
        .call_tool("terminal", obj(json!({"final_answer": "42"})))
        .await
        .unwrap();
    assert!(answer.done);
    assert_eq!(reward(&answer), 0.0, "{}", text(&answer));
    assert!(
        text(&answer).contains("Verification: 0/1 passed; reward=0.0"),
        "{}",
        text(&answer)
    );
    // Done is enforced: nothing runs after the scored answer.
    let err = env
        .call_tool("terminal", obj(json!({"command": "true"})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Episode is done"), "{err}");
    env.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workspace_cannot_be_escaped() {
    let root = sandbox_root("escape");
    let server = terminal_server(&root, &[], &[]).await;
    let env = client(&server).await;
    env.reset(obj(json!({}))).await.unwrap();
    for target in [
        "/usr/bin/pwned",
        "/etc/pwned",
        "/pwned",
        "/root/pwned",
        "/var/lib/pwned",
    ] {
        let out = run(&env, &format!("echo x > {target} && echo WROTE")).await;
        assert!(!text(&out).contains("WROTE"), "{target}: {}", text(&out));
        assert!(!Path::new(target).exists(), "{target} appeared on the host");
    }
    let out = run(
        &env,
        "cat /etc/shadow 2>&1 | head -1; ls /root 2>&1 | head -1",
    )
    .await;
    assert!(!text(&out).contains("root:"), "{}", text(&out));
    // Writing where the agent may (its work dir and /tmp) works.
    let out = run(
        &env,
        "echo ok > ~/inside && echo ok > /tmp/inside && cat ~/inside /tmp/inside",
    )
    .await;
    assert_eq!(text(&out), "ok\nok");
    env.close().await.unwrap();
    eventually("sandbox dir removed", Duration::from_secs(10), || {
        dir_is_empty(&root)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_process_of_an_episode_survives_it() {
    let root = sandbox_root("procs");
    let server = terminal_server(&root, &[], &[]).await;
    let env = client(&server).await;
    env.reset(obj(json!({}))).await.unwrap();
    let marker = "987.0123";
    run(&env, &format!("sleep {marker}1 &")).await;
    run(&env, &format!("nohup sleep {marker}2 > /dev/null 2>&1 &")).await;
    run(
        &env,
        &format!("setsid sleep {marker}3 > /dev/null 2>&1 < /dev/null &"),
    )
    .await;
    run(
        &env,
        &format!("(trap '' TERM HUP; exec sleep {marker}4) > /dev/null 2>&1 &"),
    )
    .await;
    eventually(
        "background processes started",
        Duration::from_secs(10),
        || host_processes_with(marker).len() >= 4,
    )
    .await;
    env.close().await.unwrap();
    eventually(
        "every process of the episode gone",
        Duration::from_secs(15),
        || host_processes_with(marker).is_empty(),
    )
    .await;
    eventually("sandbox dir removed", Duration::from_secs(10), || {
        dir_is_empty(&root)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_and_an_output_flood_are_contained() {
    let root = sandbox_root("bomb");
    let server = terminal_server(&root, &["--command-timeout-s", "5"], &[]).await;
    let bystander = client(&server).await;
    bystander.reset(obj(json!({}))).await.unwrap();
    let env = client(&server).await;
    env.reset(obj(json!({}))).await.unwrap();

    let flood = run(&env, "head -c 50000000 /dev/zero | tr '\\0' 'a'").await;
    assert!(
        text(&flood).len() < 40_000,
        "output capped: {} bytes",
        text(&flood).len()
    );
    assert!(text(&flood).contains("output truncated"), "visible marker");

    let bomb = run(
        &env,
        "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived",
    )
    .await;
    let _ = bomb; // Whatever the shell reports, the server and other sessions must be fine.
    let out = run(&bystander, "echo still fine").await;
    assert_eq!(text(&out), "still fine");
    env.close().await.unwrap();
    eventually(
        "sandbox dir of the bomb removed",
        Duration::from_secs(20),
        || sandbox_dirs(&root) <= 1,
    )
    .await;
    bystander.close().await.unwrap();
    eventually("every sandbox dir removed", Duration::from_secs(10), || {
        dir_is_empty(&root)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_vanishes_mid_command_leaves_nothing() {
    let root = sandbox_root("vanish");
    let server = terminal_server(&root, &[], &[]).await;
    let env = client(&server).await;
    env.reset(obj(json!({}))).await.unwrap();
    let marker = "876.5432";
    let call = tokio::spawn(async move {
        let _ = env
            .call_tool(
                "terminal",
                obj(json!({"command": format!("sleep {marker}1")})),
            )
            .await;
    });
    eventually("the command runs", Duration::from_secs(10), || {
        !host_processes_with(marker).is_empty()
    })
    .await;
    call.abort(); // drops the client mid-request: the connection goes away without a close
    eventually(
        "the command's process is killed",
        Duration::from_secs(15),
        || host_processes_with(marker).is_empty(),
    )
    .await;
    eventually("sandbox dir removed", Duration::from_secs(10), || {
        dir_is_empty(&root)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_destroys_every_sandbox() {
    let root = sandbox_root("sigterm");
    let server = terminal_server(&root, &[], &[]).await;
    let marker = "765.4321";
    let mut clients = Vec::new();
    for i in 0..3 {
        let env = client(&server).await;
        env.reset(obj(json!({}))).await.unwrap();
        run(&env, &format!("sleep {marker}{i} &")).await;
        clients.push(env);
    }
    eventually(
        "three sandboxes with a process each",
        Duration::from_secs(10),
        || host_processes_with(marker).len() >= 3,
    )
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    eventually(
        "every sandbox process gone",
        Duration::from_secs(20),
        || host_processes_with(marker).is_empty(),
    )
    .await;
    eventually("every sandbox dir removed", Duration::from_secs(20), || {
        dir_is_empty(&root)
    })
    .await;
    for env in clients {
        let err = env.state().await.unwrap_err();
        assert!(err.is_fatal(), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_and_fresh_shell_modes() {
    let root = sandbox_root("modes");
    let server = terminal_server(&root, &[], &[]).await;
    let env = client(&server).await;
    env.reset(obj(json!({}))).await.unwrap();
    run(&env, "cd /tmp && export GREETING=hello").await;
    let out = run(&env, "pwd; echo $GREETING").await;
    assert_eq!(
        text(&out),
        "/tmp\nhello",
        "persistent shell keeps cwd and environment"
    );
    env.close().await.unwrap();

    let env = client(&server).await;
    env.reset(obj(json!({"shell_mode": "per_command"})))
        .await
        .unwrap();
    run(&env, "cd /tmp && export GREETING=hello && touch /tmp/kept").await;
    let out = run(&env, "pwd; echo \"[$GREETING]\"; ls /tmp/kept").await;
    assert_eq!(
        text(&out),
        "/home/user\n[]\n/tmp/kept",
        "fresh shells keep files only"
    );
    let state = env.state().await.unwrap();
    assert_eq!(state.step_count, 2);
    assert!(
        state.extra["commands"]
            .as_array()
            .is_some_and(|c| c.len() == 2),
        "{:?}",
        state.extra
    );
    let _: Value = state.extra["shell_mode"].clone();
    env.close().await.unwrap();
}
