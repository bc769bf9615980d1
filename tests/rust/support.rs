//! Support for the end-to-end tests: start the real `env-server` binary on a free port and
//! stop it by its pid.
//!
//! The binary is `$ENV_SERVER_BIN`, else `target/debug/env-server` of this workspace (the
//! README's test command builds it first; `cargo test --workspace` builds it too).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The workspace root (the shipped `tasks/` are under it).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A per-test sandbox root (`--sandbox-root`), so a test can check that every sandbox dir is
/// removed; removed when the test ends.
pub struct SandboxRoot(PathBuf);

impl std::ops::Deref for SandboxRoot {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for SandboxRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty sandbox root under the temp dir, named after the test and this process.
pub fn sandbox_root(name: &str) -> SandboxRoot {
    let dir = std::env::temp_dir().join(format!("openenv-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    SandboxRoot(dir)
}

/// `env-server serve --env terminal` on the repo's `tasks/`, its sandboxes under `root`, with
/// `extra` flags and `env` variables.
pub async fn terminal_server(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
    let tasks = repo().join("tasks");
    let mut args = vec![
        "--env",
        "terminal",
        "--tasks-dir",
        tasks.to_str().unwrap(),
        "--sandbox-root",
        root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ServerProcess::start_with_env(&args, env).await
}

/// The server binary under test.
pub fn server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ENV_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/env-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p env-server` first (the README's test command does)",
        path.display()
    );
    path
}

/// A running `env-server serve` process; killed by pid on drop.
pub struct ServerProcess {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

impl ServerProcess {
    /// Starts `env-server serve --port 0 <args>` and waits for its listening line.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// Like [`ServerProcess::start`], with extra variables in the server's environment.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(server_bin());
        cmd.arg("serve")
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("ENV_SERVER_")
                || key == "MAX_CONCURRENT_ENVS"
                || key == "TERMINUS_SANDBOX_BACKEND"
            {
                cmd.env_remove(key);
            }
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn env-server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("env-server did not print its address in time")
        .unwrap();
        let addr = line
            .trim()
            .strip_prefix("env-server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, addr }
    }

    /// The base URL, as users give it to a client (`http://…`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Builds a JSON object from a `serde_json::json!` object literal.
pub fn obj(value: serde_json::Value) -> env_client::protocol::JsonMap {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}
