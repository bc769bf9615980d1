//! Sandbox cleanup under descriptor exhaustion (`docs/cleanup.md`): the real `env-server`
//! binary with a low `RLIMIT_NOFILE`, many concurrent terminal resets over `/ws` (some fail with
//! `EMFILE`), every connection closed — and then nothing of any sandbox may be left: no episode
//! directory under its sandbox root, no process of the sandboxes' uids, no cgroup.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_env-server");
const SBX: &str = env!("CARGO_BIN_EXE_env-sbx");

/// A uid range per test, so other servers on the machine (other tests) do not count.
const UID_BASE: u32 = 3_700_000;
const UID_COUNT: u32 = 400;
/// The deep-tree test's range.
const UID_BASE_DEEP: u32 = UID_BASE + UID_COUNT;
/// The descriptor limit of the deep-tree test's server.
const NOFILE_SMALL: usize = 128;
/// Concurrent episodes.
const EPISODES: usize = 150;

/// The server, killed by its pid if the test ends early; its stderr goes to a file.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    fn spawn(nofile: usize, uid_base: u32, root: &Path, log: &Path) -> Self {
        let stderr = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args([
                "serve",
                "--env",
                "terminal",
                "--sandbox",
                "local",
                "--port",
                "0",
            ])
            .args(["--max-sessions", "400", "--shell-mode", "per_command"])
            .arg("--sandbox-root")
            .arg(root)
            .args(["--sbx-path", SBX])
            .args(["--local-uid-base", &uid_base.to_string()])
            .args(["--local-uid-count", &UID_COUNT.to_string()])
            .env("RUST_LOG", "env_server=info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (key, _) in std::env::vars() {
            if key.starts_with("ENV_SERVER_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("env-server listening on ")
            .unwrap_or_else(|| panic!("{line}: {}", std::fs::read_to_string(log).unwrap()))
            .to_owned();
        Self {
            child,
            addr,
            log: log.to_owned(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < end, "the server did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one episode went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    Ready,
    Failed,
    NoReply,
}

/// Opens `/ws`, resets, and holds the connection until `release` fires; then closes it.
async fn episode(
    addr: String,
    answered: tokio::sync::mpsc::UnboundedSender<Reset>,
    release: tokio::sync::watch::Receiver<bool>,
) -> Reset {
    let connect = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"));
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(Duration::from_secs(15), connect).await else {
        let _ = answered.send(Reset::NoReply);
        return Reset::NoReply;
    };
    let sent = ws
        .send(Message::text(r#"{"type":"reset","data":{}}"#))
        .await;
    let outcome = match sent {
        Err(_) => Reset::NoReply,
        Ok(()) => match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""status":"ready""#) => Reset::Ready,
            Ok(Some(Ok(Message::Text(_)))) => Reset::Failed,
            _ => Reset::NoReply,
        },
    };
    let _ = answered.send(outcome);
    let mut release = release;
    let _ = release.wait_for(|go| *go).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    outcome
}

/// Episode directories of server `pid` under `root`.
fn sandbox_dirs(root: &Path, pid: u32) -> Vec<String> {
    let prefix = format!("openenv-rs-{pid}s");
    std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Live processes of the uid range from `base`.
fn sandbox_processes(base: u32) -> Vec<(u32, u32)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let uid = e.metadata().ok()?.uid();
            (base..base + UID_COUNT)
                .contains(&uid)
                .then_some((pid, uid))
        })
        .collect()
}

/// cgroup directories of server `pid`'s sandboxes, in any v1 hierarchy.
fn sandbox_cgroups(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("{pid}s");
    let mut found = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if dir.file_name().is_some_and(|n| n == "openenv-rs") && name.starts_with(&prefix) {
                found.push(e.path());
            } else if depth < 6 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_left_after_resets_that_ran_out_of_descriptors() {
    let base = std::env::temp_dir().join(format!("openenv-cleanup-{}", uuid::Uuid::new_v4()));
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for dir in [&base, &root] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut server = Server::spawn(256, UID_BASE, &root, &base.join("server.log"));
    let pid = server.pid();

    let (release, waiting) = tokio::sync::watch::channel(false);
    let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let episodes: Vec<_> = (0..EPISODES)
        .map(|_| {
            tokio::spawn(episode(
                server.addr.clone(),
                answered.clone(),
                waiting.clone(),
            ))
        })
        .collect();
    // Every reset answers (or fails), then they all close at once.
    for _ in 0..EPISODES {
        answers.recv().await.unwrap();
    }
    release.send(true).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for e in episodes {
        *counts.entry(format!("{:?}", e.await.unwrap())).or_insert(0) += 1;
    }
    eprintln!("resets: {counts:?}");

    let deadline = Instant::now() + Duration::from_secs(15);
    let left = loop {
        let left = (
            sandbox_dirs(&root, pid),
            sandbox_processes(UID_BASE),
            sandbox_cgroups(pid),
        );
        if (left.0.is_empty() && left.1.is_empty() && left.2.is_empty())
            || Instant::now() > deadline
        {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        left.0.is_empty() && left.1.is_empty() && left.2.is_empty(),
        "left behind: {} directories {:?}, {} processes, {} cgroups {:?}",
        left.0.len(),
        left.0.iter().take(3).collect::<Vec<_>>(),
        left.1.len(),
        left.2.len(),
        left.2.iter().take(3).collect::<Vec<_>>()
    );
    let failed = counts.get("Failed").copied().unwrap_or(0);
    assert!(failed > 0, "no reset ran out of descriptors: {counts:?}");
    // Removals failed under exhaustion: each was logged once, retried, and succeeded.
    let log = server.log();
    let queued = log
        .matches("sandbox cleanup failed; retrying in the background")
        .count();
    let recovered = log.matches("sandbox cleanup succeeded on retry").count();
    eprintln!("cleanups queued: {queued}, recovered on retry: {recovered}");
    assert!(
        queued > 0,
        "no removal failed: the test did not exhaust descriptors"
    );
    assert_eq!(recovered, queued);
    assert!(!log.contains("sandbox cleanup gave up"));

    // Shutdown makes its last attempt (nothing is pending) and the server exits cleanly.
    server.terminate();
    let status = server.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let log = server.log();
    assert!(log.contains("server stopped"), "{log}");
    assert!(!log.contains("incomplete at shutdown"));
    assert!(
        log.contains("sandbox cleanups that failed at first, over this server's life"),
        "the shutdown summary"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}

/// Removing an episode directory takes a few descriptors whatever its depth: a tree deeper
/// than the server's whole descriptor limit goes at once.
#[tokio::test]
async fn a_tree_deeper_than_the_descriptor_limit_is_removed() {
    let base = std::env::temp_dir().join(format!("openenv-cleanup-{}", uuid::Uuid::new_v4()));
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for dir in [&base, &root] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let server = Server::spawn(NOFILE_SMALL, UID_BASE_DEEP, &root, &base.join("server.log"));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    let mut request = async |text: String| {
        ws.send(Message::text(text)).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => panic!("{other:?}"),
        }
    };
    let reply = request(r#"{"type":"reset","data":{}}"#.to_owned()).await;
    assert!(reply.contains(r#""status":"ready""#), "{reply}");
    let depth = 3 * NOFILE_SMALL;
    let command = format!(
        "d=deep; for i in $(seq {depth}); do d=$d/d; done; mkdir -p $d && touch $d/f && find deep -type d | wc -l"
    );
    let step = serde_json::json!({"type": "step", "data": {"type": "call_tool", "tool_name": "terminal", "arguments": {"command": command}}});
    let reply = request(step.to_string()).await;
    assert!(reply.contains(&format!("\"{}\"", depth + 1)), "{reply}");
    assert_eq!(sandbox_dirs(&root, server.pid()).len(), 1);
    ws.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sandbox_dirs(&root, server.pid()).is_empty() {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!server.log().contains("sandbox cleanup failed"));
    while !sandbox_processes(UID_BASE_DEEP).is_empty() || !sandbox_cgroups(server.pid()).is_empty()
    {
        assert!(Instant::now() < deadline, "processes or cgroups left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}
