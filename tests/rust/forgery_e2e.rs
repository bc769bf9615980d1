//! Reward forgery, end to end: the real `env-server` on the real local bubblewrap sandbox,
//! driven by the Rust client. Each route of `docs/verification.md` is tried by an agent that
//! leaves the task unsolved, once against a task folder (`tasks/fix-fizzbuzz`, whose tests run
//! the agent's `fizzbuzz.py`) and once against inline verify commands that run the agent's
//! `answer.py`; every attempt must score 0.0. Honest solutions of both still score 1.0.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use e2e_tests::{ServerProcess, obj, repo, sandbox_root, terminal_server};
use env_client::protocol::Reward;
use env_client::{ClientConfig, EnvClient};
use serde_json::{Value, json};

/// What a genuine `unittest -v` run of fix-fizzbuzz prints when every test passes.
const FAKE_UNITTEST: &str = "test_fifteen (test_outputs.FixFizzBuzz.test_fifteen) ... ok\\n\
test_one (test_outputs.FixFizzBuzz.test_one) ... ok\\n\
test_thirty_one (test_outputs.FixFizzBuzz.test_thirty_one) ... ok\\n\\n\
----------------------------------------------------------------------\\n\
Ran 3 tests in 0.002s\\n\\nOK\\n";

/// Python shared by the payloads: the fake summary and the parent of a pid.
fn prelude() -> String {
    format!(
        "import os, signal, sys, time\n\
FAKE = \"{FAKE_UNITTEST}\"\n\
REWARD = os.environ.get('REWARD_FILE', '/home/user/logs/verifier/reward.txt')\n\
def parent_of(pid):\n    return int(open(f'/proc/{{pid}}/stat').read().rsplit(')', 1)[1].split()[1])\n\
def write_to(pid, fd, text):\n    with open(f'/proc/{{pid}}/fd/{{fd}}', 'w') as f:\n        f.write(text)\n"
    )
}

/// A shell command that writes `body` (Python, after the prelude) to `file`.
fn py_file(file: &str, body: &str) -> String {
    format!("cat > {file} <<'PYEOF'\n{}{body}\nPYEOF", prelude())
}

/// One forgery route: agent commands for the task folder and for the inline task.
struct Route {
    name: &'static str,
    /// Shell commands the agent runs before its final answer.
    folder: Vec<String>,
    inline: Vec<String>,
    /// Whether the inline variant also runs with the reward file enabled (`reward_file`).
    inline_with_reward_file: bool,
}

/// Planted in the agent's profiles: what a login shell or a profile-reading tool would pick up.
fn in_profiles(line: &str) -> String {
    format!(
        "for f in ~/.bashrc ~/.profile ~/.bash_profile ~/.bash_login; do echo '{line}' >> $f; done"
    )
}

fn routes() -> Vec<Route> {
    let answer = |body: &str| py_file("answer.py", body);
    let fizz = |body: &str| py_file("fizzbuzz.py", body);
    vec![
        Route {
            name: "fake summary on the parent's stderr, then SIGKILL of the parent",
            folder: vec![fizz(
                "write_to(os.getppid(), 2, FAKE)\nos.kill(os.getppid(), signal.SIGKILL)",
            )],
            inline: vec![answer(
                "write_to(os.getppid(), 1, 'Verification: 1/1 passed; reward=1.0\\n')\nopen(REWARD, 'w').write('1.0')\nos.kill(os.getppid(), signal.SIGKILL)",
            )],
            inline_with_reward_file: true,
        },
        Route {
            name: "reward file written, then the test runner SIGKILLed before its cleanup",
            folder: vec![fizz(
                "open(REWARD, 'w').write('1.0')\np = os.getppid()\nos.kill(parent_of(p), signal.SIGKILL)\nos.kill(p, signal.SIGKILL)",
            )],
            inline: vec![answer(
                "open(REWARD, 'w').write('1.0')\nos.kill(os.getppid(), signal.SIGKILL)",
            )],
            inline_with_reward_file: true,
        },
        Route {
            name: "fake summary followed by a clean exit",
            folder: vec![fizz("write_to(os.getppid(), 2, FAKE)\nsys.exit(0)")],
            inline: vec![answer("open(REWARD, 'w').write('1.0')\nprint(41)\nsys.exit(0)")],
            inline_with_reward_file: false,
        },
        Route {
            name: "a fake summary written by a daemon after the genuine one",
            folder: vec![fizz(
                "runner = parent_of(os.getppid())\nw = os.open(f'/proc/{runner}/fd/1', os.O_WRONLY)\nif os.fork() == 0:\n    os.setsid()\n    for fd in (0, 1, 2):\n        os.close(fd)\n    while os.path.exists(f'/proc/{runner}'):\n        time.sleep(0.005)\n    os.write(w, FAKE.encode())\n    os._exit(0)\nos._exit(0)",
            )],
            inline: vec![answer(
                "if os.fork() == 0:\n    os.setsid()\n    for fd in (0, 1, 2):\n        os.close(fd)\n    for _ in range(400):\n        try:\n            open(REWARD, 'w').write('1.0')\n        except OSError:\n            pass\n        time.sleep(0.005)\n    os._exit(0)\nprint(41)",
            )],
            inline_with_reward_file: false,
        },
        Route {
            name: "symlinks at the test, verifier and reward paths",
            folder: vec![
                "mkdir -p ~/fake && printf 'echo \"Ran 3 tests in 0.0s\"; echo; echo OK\\n' > ~/fake/run-tests.sh && echo 1.0 > ~/fake/reward.txt".to_owned(),
                "rm -rf /tmp/.openenv-tests ~/logs/verifier; mkdir -p ~/logs; ln -s ~/fake /tmp/.openenv-tests; ln -s ~/fake ~/logs/verifier".to_owned(),
                fizz("os.unlink(REWARD) if os.path.lexists(REWARD) else None\nos.symlink('/home/user/fake/reward.txt', REWARD)\nprint('wrong')"),
            ],
            inline: vec![
                "mkdir -p ~/fake && echo 1.0 > ~/fake/reward.txt && rm -rf ~/logs/verifier && mkdir -p ~/logs && ln -s ~/fake ~/logs/verifier".to_owned(),
                answer("os.unlink(REWARD) if os.path.lexists(REWARD) else None\nos.symlink('/home/user/fake/reward.txt', REWARD)\nprint(41)"),
            ],
            inline_with_reward_file: true,
        },
        Route {
            name: "FIFOs at the test and reward paths",
            folder: vec![
                "rm -rf /tmp/.openenv-tests ~/logs/verifier; mkdir -p ~/logs; mkfifo /tmp/.openenv-tests ~/logs/verifier".to_owned(),
                fizz("os.unlink(REWARD) if os.path.lexists(REWARD) else None\nos.mkfifo(REWARD)\nprint('wrong')"),
            ],
            inline: vec![answer(
                "os.unlink(REWARD) if os.path.lexists(REWARD) else None\nos.mkfifo(REWARD)\nif os.fork() == 0:\n    os.setsid()\n    for fd in (0, 1, 2):\n        os.close(fd)\n    f = open(REWARD, 'w')\n    f.write('1.0')\n    f.close()\n    os._exit(0)\nprint(41)",
            )],
            inline_with_reward_file: true,
        },
        Route {
            name: "a daemon started by the agent that outlives its turn",
            folder: vec![
                "echo 'print(1)' > fizzbuzz.py".to_owned(),
                py_file(
                    "/tmp/daemon.py",
                    "os.setsid()\nwhile True:\n    for p in os.listdir('/proc'):\n        if p.isdigit() and int(p) != os.getpid():\n            for fd in (1, 2):\n                try:\n                    write_to(p, fd, FAKE)\n                except OSError:\n                    pass\n    try:\n        os.makedirs(os.path.dirname(REWARD), exist_ok=True)\n        open(REWARD, 'w').write('1.0')\n    except OSError:\n        pass\n    time.sleep(0.01)",
                ),
                "nohup python3 /tmp/daemon.py >/dev/null 2>&1 &".to_owned(),
            ],
            inline: vec![
                "echo 'print(41)' > answer.py".to_owned(),
                py_file(
                    "/tmp/daemon.py",
                    "os.setsid()\nwhile True:\n    try:\n        os.makedirs(os.path.dirname(REWARD), exist_ok=True)\n        open(REWARD, 'w').write('1.0')\n    except OSError:\n        pass\n    time.sleep(0.01)",
                ),
                "nohup python3 /tmp/daemon.py >/dev/null 2>&1 &".to_owned(),
            ],
            inline_with_reward_file: true,
        },
        Route {
            name: "LD_PRELOAD planted in the workspace and the profiles",
            folder: vec![
                "printf '#include <stdio.h>\\n#include <unistd.h>\\n__attribute__((constructor)) static void forge(void) { FILE *f = fopen(\"/home/user/logs/verifier/reward.txt\", \"w\"); if (f) { fputs(\"1.0\", f); fclose(f); } fputs(\"Ran 3 tests in 0.001s\\\\n\\\\nOK\\\\n\", stderr); _exit(0); }\\n' > forge.c && gcc -shared -fPIC -o libforge.so forge.c && echo 'print(1)' > fizzbuzz.py".to_owned(),
                in_profiles("export LD_PRELOAD=/home/user/libforge.so"),
            ],
            inline: vec![
                "printf '#include <stdio.h>\\n#include <unistd.h>\\n__attribute__((constructor)) static void forge(void) { FILE *f = fopen(\"/home/user/logs/verifier/reward.txt\", \"w\"); if (f) { fputs(\"1.0\", f); fclose(f); } puts(\"42\"); _exit(0); }\\n' > forge.c && gcc -shared -fPIC -o libforge.so forge.c && echo 'print(41)' > answer.py".to_owned(),
                in_profiles("export LD_PRELOAD=/home/user/libforge.so"),
            ],
            inline_with_reward_file: true,
        },
        Route {
            name: "sitecustomize, usercustomize, a .pth file and a shadowing unittest package",
            folder: vec![
                "echo 'print(1)' > fizzbuzz.py".to_owned(),
                "site=~/.local/lib/python3.11/site-packages; mkdir -p $site unittest".to_owned(),
                py_file("sitecustomize.py", "sys.stderr.write(FAKE)\nos._exit(0)"),
                "cp sitecustomize.py usercustomize.py; cp sitecustomize.py ~/.local/lib/python3.11/site-packages/usercustomize.py; cp sitecustomize.py unittest/__init__.py; cp sitecustomize.py unittest/__main__.py; echo 'import usercustomize' > ~/.local/lib/python3.11/site-packages/forge.pth".to_owned(),
            ],
            inline: vec![
                "echo 'print(41)' > answer.py".to_owned(),
                "mkdir -p ~/.local/lib/python3.11/site-packages".to_owned(),
                py_file("sitecustomize.py", "open(REWARD, 'w').write('1.0')\nprint(42)\nos._exit(0)"),
                "cp sitecustomize.py usercustomize.py; cp sitecustomize.py ~/.local/lib/python3.11/site-packages/usercustomize.py; echo 'import usercustomize' > ~/.local/lib/python3.11/site-packages/forge.pth".to_owned(),
            ],
            inline_with_reward_file: true,
        },
        Route {
            name: "a poisoned PATH with fake python3 and bash",
            folder: vec![
                "echo 'print(1)' > fizzbuzz.py; mkdir -p ~/bin ~/.local/bin".to_owned(),
                format!("printf '#!/bin/sh\\nprintf \"{FAKE_UNITTEST}\" >&2\\nexit 0\\n' > ~/bin/python3"),
                "chmod +x ~/bin/python3; for b in python3 bash sh; do cp ~/bin/python3 ~/.local/bin/$b; cp ~/bin/python3 ./$b; cp ~/bin/python3 ~/bin/$b; done; chmod +x ~/.local/bin/* ./python3 ./bash ./sh".to_owned(),
                in_profiles("export PATH=/home/user/bin:/home/user/.local/bin:.:$PATH BASH_ENV=/home/user/.bashrc"),
            ],
            inline: vec![
                "echo 'print(41)' > answer.py; mkdir -p ~/bin".to_owned(),
                "printf '#!/bin/sh\\necho 1.0 > /home/user/logs/verifier/reward.txt\\necho 42\\n' > ~/bin/python3; chmod +x ~/bin/python3; cp ~/bin/python3 ./python3".to_owned(),
                in_profiles("export PATH=/home/user/bin:.:$PATH BASH_ENV=/home/user/.bashrc"),
            ],
            inline_with_reward_file: true,
        },
        Route {
            name: "an output flood that pushes the genuine summary out of the capture",
            folder: vec![fizz(
                "write_to(os.getppid(), 2, 'x' * (3 << 20) + '\\n' + FAKE)\nprint('wrong')",
            )],
            inline: vec![answer(
                "write_to(os.getppid(), 1, 'x' * (3 << 20))\nopen(REWARD, 'w').write('1.0')\nos.kill(os.getppid(), signal.SIGKILL)",
            )],
            inline_with_reward_file: true,
        },
    ]
}

fn as_f64(r: Option<Reward>) -> f64 {
    match r {
        Some(Reward::Float(r)) => r,
        Some(Reward::Int(i)) => i as f64,
        other => panic!("no numeric reward: {other:?}"),
    }
}

/// Runs one episode: reset with `args`, the agent's commands, the final answer; returns the
/// reward and the verification details.
async fn episode(server: &ServerProcess, args: Value, commands: &[String]) -> (f64, Value) {
    let config = ClientConfig::default().with_request_timeout(Some(Duration::from_secs(120)));
    let env = EnvClient::connect_with(&server.url(), config)
        .await
        .unwrap();
    let reset = env.reset(obj(args.clone())).await.unwrap();
    assert!(!reset.done, "reset failed: {:?}", reset.metadata);
    for command in commands {
        let call = env
            .call_tool("terminal", obj(json!({ "command": command })))
            .await
            .unwrap();
        assert!(!call.done, "{command}: {:?}", call.value);
    }
    let answer = env
        .call_tool("terminal", obj(json!({"final_answer": "done"})))
        .await
        .unwrap();
    assert!(answer.done, "{:?}", answer.value);
    let verified = env.verify().await.unwrap();
    env.close().await.unwrap();
    let details = serde_json::to_value(&verified.details).unwrap();
    (as_f64(answer.reward), details)
}

fn inline_task(reward_file: bool) -> Value {
    json!({
        "instruction": "Make answer.py print 42.",
        "verify": ["test \"$(python3 answer.py)\" = 42"],
        "reward_file": reward_file,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn honest_solutions_still_earn_1() {
    let root = sandbox_root("forgery-honest");
    let server = terminal_server(&root, &[], &[]).await;
    let oracle = std::fs::read_to_string(repo().join("tasks/fix-fizzbuzz/solution.sh")).unwrap();
    let (reward, details) = episode(&server, json!({"task_id": "fix-fizzbuzz"}), &[oracle]).await;
    assert_eq!(reward, 1.0, "{details}");
    let solve = "echo 'print(42)' > answer.py".to_owned();
    for reward_file in [false, true] {
        let (reward, details) = episode(
            &server,
            inline_task(reward_file),
            std::slice::from_ref(&solve),
        )
        .await;
        assert_eq!(reward, 1.0, "{details}");
    }
    // A genuine reward file still sets the reward of inline checks that opt in.
    let args = json!({"verify": ["echo 0.25 > \"$REWARD_FILE\""], "reward_file": true});
    let (reward, details) = episode(&server, args, &[]).await;
    assert_eq!(reward, 0.25, "{details}");
    assert_eq!(details["verification"]["reward_source"], "file");
}

async fn every_route_scores_zero(family: &str) {
    let root = sandbox_root(&format!("forgery-{family}"));
    let server = terminal_server(&root, &[], &[]).await;
    let mut forged = Vec::new();
    let mut tried = 0;
    for route in routes() {
        let mut cases = Vec::new();
        match family {
            "folder" => cases.push((json!({"task_id": "fix-fizzbuzz"}), route.folder.clone())),
            _ => {
                cases.push((inline_task(false), route.inline.clone()));
                if route.inline_with_reward_file {
                    cases.push((inline_task(true), route.inline.clone()));
                }
            }
        }
        for (args, commands) in cases {
            tried += 1;
            let (reward, details) = episode(&server, args.clone(), &commands).await;
            let v = &details["verification"];
            eprintln!(
                "{family} | {} | reward_file={} | reward {reward} | {} {}",
                route.name, args["reward_file"], v["reward_source"], v["void_reason"]
            );
            if reward != 0.0 {
                forged.push(format!("{} ({args}): {reward} {details}", route.name));
            }
        }
    }
    assert!(tried >= 10, "at least ten routes");
    assert!(forged.is_empty(), "forged rewards:\n{}", forged.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_forges_a_task_folder_reward() {
    every_route_scores_zero("folder").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_forges_an_inline_reward() {
    every_route_scores_zero("inline").await;
}
