//! The `env-server` binary as a user runs it: `--help` (snapshot: every limit with its flag,
//! variable and default), the peer's variable alias, the session log, and SIGTERM with live
//! sessions.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_env-server");

fn clean_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("ENV_SERVER_")
            || key == "MAX_CONCURRENT_ENVS"
            || key == "TERMINUS_SANDBOX_BACKEND"
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("COLUMNS", "100");
    cmd
}

/// A server process, killed by its pid if the test ends early.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_with_stderr(args, env, Stdio::null())
    }

    fn spawn_with_stderr(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Self {
        let mut cmd = clean_command();
        cmd.arg("serve")
            .args(["--env", "echo", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("env-server listening on ")
            .expect(&line)
            .to_owned();
        Self { child, addr }
    }

    fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open(
    addr: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws
}

async fn next_text_or_close(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(m)) => return m,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn help_lists_every_limit_with_its_default() {
    let out = clean_command().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
}

/// The heading a flag is listed under in `serve --help`.
fn heading_of(help: &str, flag: &str) -> String {
    let at = help
        .find(&format!("      {flag} "))
        .unwrap_or_else(|| panic!("{flag} not in --help"));
    help[..at]
        .lines()
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with(' ') && l.ends_with(':'))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn flags_sit_under_their_own_headings() {
    let out = clean_command().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert_eq!(heading_of(&help, "--log-format"), "Logging:");
    assert_eq!(heading_of(&help, "--max-sessions"), "Options:");
    assert_eq!(
        heading_of(&help, "--bwrap-path"),
        "Local sandbox (bubblewrap):"
    );
    assert_eq!(
        heading_of(&help, "--tb-max-test-bytes"),
        "Terminal environment:"
    );
}

#[test]
fn unknown_environment_is_a_clear_error() {
    let out = clean_command()
        .args(["serve", "--env", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid value 'nope' for '--env"), "{err}");
}

#[test]
fn a_missing_bwrap_is_one_line_naming_the_fix() {
    let out = clean_command()
        .args(["serve", "--port", "0", "--bwrap-path", "/nonexistent/bwrap"])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        "env-server: local sandbox backend is unavailable: bubblewrap (`bwrap`) is not installed: run `apt-get install bubblewrap` (scripts/serve does this)\n"
    );
}

/// Runs `serve --env echo --port 0` with `env`, expecting it to refuse to start; returns its
/// stderr. Fails if it is still running after 10 s (it started).
fn refused_start(env: &[(&str, &str)]) -> String {
    let mut cmd = clean_command();
    cmd.args(["serve", "--env", "echo", "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_sandbox_root_only_the_server_can_reach_is_fine() {
    // Sandboxes keep their files in their own tmpfs mounts and run the supervisor from a
    // memfd: their uids never need to reach the sandbox root (docs/sandbox-local.md).
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: only a root server gives sandboxes their own uids");
        return;
    }
    let root = std::env::temp_dir().join(format!("openenv-cli-closed-root-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut cmd = clean_command();
    let mut child = cmd
        .args([
            "serve",
            "--env",
            "terminal",
            "--port",
            "0",
            "--sandbox-root",
        ])
        .arg(&root)
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        line.starts_with("env-server listening on "),
        "{line:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn terminus_sandbox_backend_is_read_as_an_alias_of_sandbox() {
    assert_eq!(
        refused_start(&[("TERMINUS_SANDBOX_BACKEND", "nope")]),
        "env-server: TERMINUS_SANDBOX_BACKEND=\"nope\": unknown sandbox backend: nope\n"
    );
    assert_eq!(
        refused_start(&[("TERMINUS_SANDBOX_BACKEND", "HF")]),
        "env-server: TERMINUS_SANDBOX_BACKEND=\"HF\": sandbox backend hf is not available in this build (available: local)\n"
    );
    // Terminus's local names are ours; our own variable wins over the alias.
    drop(Server::spawn(&[], &[("TERMINUS_SANDBOX_BACKEND", "bwrap")]));
    drop(Server::spawn(
        &[],
        &[
            ("TERMINUS_SANDBOX_BACKEND", "nope"),
            ("ENV_SERVER_SANDBOX", "local"),
        ],
    ));
}

#[tokio::test]
async fn max_concurrent_envs_is_read_as_an_alias() {
    let server = Server::spawn(&[], &[("MAX_CONCURRENT_ENVS", "1")]);
    let mut first = open(&server.addr).await;
    first
        .send(Message::Text(r#"{"type":"reset"}"#.into()))
        .await
        .unwrap();
    assert!(matches!(
        next_text_or_close(&mut first).await,
        Message::Text(_)
    ));
    let mut second = open(&server.addr).await;
    let Message::Text(refusal) = next_text_or_close(&mut second).await else {
        panic!("no refusal frame")
    };
    assert!(
        refusal.contains(r#""code":"CAPACITY_REACHED","active_sessions":1,"max_sessions":1"#),
        "{refusal}"
    );
}

/// The text of a log, without its colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `ESC [ ... m`.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn the_session_log_says_who_ended_each_session() {
    let path = std::env::temp_dir().join(format!("env-server-cli-{}.log", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let server = Server::spawn_with_stderr(&[], &[("RUST_LOG", "info")], Stdio::from(file));

    // The client asks to close: the peer ended it.
    let mut ws = open(&server.addr).await;
    ws.send(Message::Text(r#"{"type":"close"}"#.into()))
        .await
        .unwrap();
    let Message::Close(Some(frame)) = next_text_or_close(&mut ws).await else {
        panic!("no close frame")
    };
    assert_eq!(u16::from(frame.code), 1000);
    // A binary frame: the server ends the session on its own account (an error, close 1000).
    let mut ws = open(&server.addr).await;
    ws.send(Message::Binary(vec![1_u8, 2, 3].into()))
        .await
        .unwrap();
    loop {
        if let Message::Close(_) = next_text_or_close(&mut ws).await {
            break;
        }
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ended = loop {
        let log = plain(&std::fs::read_to_string(&path).unwrap());
        let ended: Vec<String> = log
            .lines()
            .filter(|line| line.contains("session closed"))
            .filter_map(|line| line.split("ended=").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
            .collect();
        if ended.len() == 2 || std::time::Instant::now() > deadline {
            break ended;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(server);
    let _ = std::fs::remove_file(&path);
    assert_eq!(ended, ["Peer", "Server"]);
}

#[tokio::test]
async fn sigterm_closes_every_session_and_exits_cleanly() {
    let mut server = Server::spawn(&[], &[]);
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut ws = open(&server.addr).await;
        ws.send(Message::Text(r#"{"type":"reset"}"#.into()))
            .await
            .unwrap();
        assert!(matches!(
            next_text_or_close(&mut ws).await,
            Message::Text(_)
        ));
        sockets.push(ws);
    }
    server.terminate();
    for mut ws in sockets {
        let Message::Close(Some(frame)) = next_text_or_close(&mut ws).await else {
            panic!("no close frame")
        };
        assert_eq!(u16::from(frame.code), 1001);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}
