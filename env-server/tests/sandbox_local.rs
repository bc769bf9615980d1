//! The local bubblewrap backend against real bwrap and real processes: the conformance suite of
//! `SANDBOXES.md` §1.2 plus the local backend's own guarantees (§2.2). Needs root or user
//! namespaces (CI runs as root). Conditions are awaited with deadlines, never fixed sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use env_server::sandbox::local::{LocalBackend, LocalConfig, LocalNetwork, LocalSandbox};
use env_server::sandbox::{
    CapturedOutput, ExecRequest, ExecResult, Identity, Network, ProcessEvent, Sandbox,
    SandboxBackend, SandboxError, SandboxLimits, SandboxSpec, SpawnRequest,
};

const SECRET: &str = "secret-hf_Zq8vT2local-test-token";

/// A server secret in the test process's environment, set before any sandbox exists.
#[allow(unsafe_code)]
fn plant_secret() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before the first sandbox; the other threads of this test binary only
    // read the environment through std (which locks it) when spawning processes.
    ONCE.call_once(|| unsafe { std::env::set_var("HF_TOKEN", SECRET) });
}

/// A fresh sandbox root per test, removed at the end.
struct TestRoot(PathBuf);

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(root: &Path) -> LocalConfig {
    LocalConfig {
        sandbox_root: Some(root.to_owned()),
        sbx_path: Some(env!("CARGO_BIN_EXE_env-sbx").into()),
        ..LocalConfig::default()
    }
}

fn test_root() -> TestRoot {
    plant_secret();
    let root =
        std::env::temp_dir().join(format!("oe-local-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).unwrap();
    TestRoot(root)
}

fn backend() -> (LocalBackend, TestRoot) {
    let root = test_root();
    (LocalBackend::new(&config(&root.0)).unwrap(), root)
}

async fn sandbox() -> (LocalSandbox, LocalBackend, TestRoot) {
    let (b, root) = backend();
    let sb = b.create_local(SandboxSpec::default()).await.unwrap();
    (sb, b, root)
}

fn bash(cmd: &str, timeout: Duration) -> ExecRequest {
    ExecRequest::new(
        vec!["bash".into(), "-c".into(), cmd.into()],
        timeout,
        1 << 20,
    )
}

async fn sh(sb: &LocalSandbox, cmd: &str) -> ExecResult {
    sb.exec(bash(cmd, Duration::from_secs(20))).await.unwrap()
}

fn all(out: &CapturedOutput) -> Vec<u8> {
    [out.head.clone(), out.tail.clone()].concat()
}

fn text(out: &CapturedOutput) -> String {
    String::from_utf8_lossy(&all(out)).into_owned()
}

/// Polls `ready` until it holds, failing after `within`.
async fn eventually(within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < end, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether host pid `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Live (non-zombie) host processes owned by `uid`.
fn host_processes_of(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid)
                && alive(pid.cast_signed())
        })
        .collect()
}

/// `sbx`, the namespace's PID 1 (bwrap `--as-pid-1`): what an idle sandbox has.
const IDLE: usize = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_signals_and_stderr() {
    let (sb, _b, _r) = sandbox().await;
    let r = sh(&sb, "echo out; echo err >&2; exit 3").await;
    assert_eq!((r.exit_code, r.signal, r.timed_out), (Some(3), None, false));
    assert_eq!(
        (text(&r.stdout).as_str(), text(&r.stderr).as_str()),
        ("out\n", "err\n")
    );
    let r = sh(&sb, "kill -9 $$").await;
    assert_eq!(
        (r.exit_code, r.signal, r.status_code()),
        (None, Some(9), Some(137))
    );
    let r = sh(&sb, "kill -TERM $$").await;
    assert_eq!(r.signal, Some(15));
    let r = sb
        .exec(ExecRequest::new(
            vec!["no-such-program".into()],
            Duration::from_secs(5),
            1000,
        ))
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(127));
    assert!(text(&r.stderr).contains("command not found"));
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_kept_and_output_is_capped_head_and_tail() {
    let (sb, _b, _r) = sandbox().await;
    let r = sh(&sb, r"printf '\xff\xfe\x00a'").await;
    assert_eq!(all(&r.stdout), b"\xff\xfe\x00a");
    let req = ExecRequest::new(
        vec![
            "bash".into(),
            "-c".into(),
            "yes abcdefghi | head -c 1000000; printf END".into(),
        ],
        Duration::from_secs(20),
        1000,
    );
    let r = sb.exec(req).await.unwrap();
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.stdout.total, 1_000_003);
    assert!(r.stdout.truncated());
    assert_eq!((r.stdout.head.len(), r.stdout.tail.len()), (250, 750));
    assert!(r.stdout.head.starts_with(b"abcdefghi\nabcdefghi\n"));
    assert!(r.stdout.tail.ends_with(b"END"));
    let mut req = ExecRequest::new(vec!["cat".into()], Duration::from_secs(5), 100);
    req.stdin = Some(Bytes::from_static(b"from stdin"));
    assert_eq!(text(&sb.exec(req).await.unwrap().stdout), "from stdin");
    // No stdin: /dev/null, so `cat` ends at once.
    let r = sb
        .exec(ExecRequest::new(
            vec!["cat".into()],
            Duration::from_secs(5),
            100,
        ))
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.stdout.total), (Some(0), 0));
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_tree_and_keeps_partial_output() {
    let (sb, _b, _r) = sandbox().await;
    let start = Instant::now();
    let r = sb
        .exec(bash(
            "echo started; sleep 1000 & sleep 1000",
            Duration::from_secs(1),
        ))
        .await
        .unwrap();
    assert!(r.timed_out, "{r:?}");
    assert_eq!(text(&r.stdout), "started\n");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        sb.host_pids().len(),
        IDLE,
        "a process of the command survived"
    );
    // A process that ignores SIGTERM is SIGKILLed after the grace.
    let r = sb
        .exec(bash(
            "trap '' TERM; echo x; sleep 1000 & while :; do sleep 0.1; done",
            Duration::from_millis(300),
        ))
        .await
        .unwrap();
    assert!(r.timed_out);
    assert_eq!(sb.host_pids().len(), IDLE);
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_child_holding_stdout_does_not_block() {
    let (sb, _b, _r) = sandbox().await;
    let start = Instant::now();
    let r = sh(&sb, "(sleep 30 &) ; echo hi").await;
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!((r.exit_code, text(&r.stdout).as_str()), (Some(0), "hi\n"));
    // The background process lives on until kill_all / the end of the episode.
    assert_eq!(sb.host_pids().len(), IDLE + 1);
    sb.kill_all(Identity::Agent).await.unwrap();
    assert_eq!(sb.host_pids().len(), IDLE);
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_leaves_nothing() {
    let (sb, _b, _r) = sandbox().await;
    sh(&sb, "sleep 1000 >/dev/null 2>&1 & setsid sleep 1000 >/dev/null 2>&1 & nohup sleep 1000 >/dev/null 2>&1 &").await;
    let mut shell = sb
        .spawn(SpawnRequest {
            argv: vec!["cat".into()],
            cwd: None,
            env: BTreeMap::new(),
            identity: Identity::Agent,
        })
        .await
        .unwrap();
    assert_eq!(sb.host_pids().len(), IDLE + 4);
    sb.kill_all(Identity::Agent).await.unwrap();
    assert_eq!(sb.host_pids().len(), IDLE);
    let event = tokio::time::timeout(Duration::from_secs(5), shell.next_event())
        .await
        .unwrap();
    assert_eq!(
        event,
        Some(ProcessEvent::Exited {
            exit_code: None,
            signal: Some(9)
        })
    );
    // The sandbox still works afterwards.
    assert_eq!(text(&sh(&sb, "echo again").await.stdout), "again\n");
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_written_atomically_with_mode_and_owner_and_read_back() {
    let (sb, _b, root) = sandbox().await;
    sb.write_file(
        "/home/user/a/b/c.txt",
        Bytes::from_static(b"data"),
        0o640,
        Identity::Agent,
    )
    .await
    .unwrap();
    let r = sh(&sb, "stat -c '%a %u %U' a/b/c.txt a; cat a/b/c.txt").await;
    assert_eq!(text(&r.stdout), "640 1000 user\n755 1000 user\ndata");
    // The file is in the sandbox's own tmpfs (its mount namespace), nothing of it on the host
    // disk, and owned by the sandbox's host uid.
    assert!(!sb.dir().join("home").exists());
    let pid = sb.host_pids()[0];
    let inside = format!("/proc/{pid}/root/home/user/a/b/c.txt");
    let meta = std::fs::metadata(&inside).unwrap();
    assert_eq!(meta.len(), 4);
    if let Some(uid) = sb.host_uid() {
        assert_eq!(meta.uid(), uid);
    }
    let binary: Vec<u8> = (0..=255).collect();
    sb.write_file(
        "/tmp/bin",
        Bytes::from(binary.clone()),
        0o600,
        Identity::Verifier,
    )
    .await
    .unwrap();
    let got = sb.read_file("/tmp/bin", 1000).await.unwrap();
    assert_eq!((got.bytes.to_vec(), got.truncated), (binary, false));
    let got = sb.read_file("/home/user/a/b/c.txt", 2).await.unwrap();
    assert_eq!((&got.bytes[..], got.truncated), (&b"da"[..], true));
    assert!(matches!(
        sb.read_file("/home/user/missing", 10).await,
        Err(SandboxError::NotFound { .. })
    ));
    assert!(matches!(
        sb.read_file("/home/user/no/dir/x", 10).await,
        Err(SandboxError::NotFound { .. })
    ));
    for bad in ["/etc/passwd", "/home/user/../x", "relative", "/home/user"] {
        assert!(
            matches!(
                sb.read_file(bad, 10).await,
                Err(SandboxError::InvalidRequest { .. })
            ),
            "{bad} accepted"
        );
    }
    // Symlinks the agent planted are never followed, towards host files or anywhere else.
    let victim = root.0.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), b"host").unwrap();
    let v = victim.display();
    sh(
        &sb,
        &format!("ln -s {v}/keep evil; ln -s {v} evildir; ln -s /etc/passwd pw"),
    )
    .await;
    assert!(matches!(
        sb.read_file("/home/user/pw", 100).await,
        Err(SandboxError::InvalidRequest { .. })
    ));
    assert!(matches!(
        sb.read_file("/home/user/evil", 100).await,
        Err(SandboxError::InvalidRequest { .. })
    ));
    sb.write_file(
        "/home/user/evil",
        Bytes::from_static(b"mine"),
        0o644,
        Identity::Agent,
    )
    .await
    .unwrap();
    assert!(matches!(
        sb.write_file(
            "/home/user/evildir/x",
            Bytes::from_static(b"x"),
            0o644,
            Identity::Agent
        )
        .await,
        Err(SandboxError::InvalidRequest { .. })
    ));
    assert_eq!(std::fs::read(victim.join("keep")).unwrap(), b"host");
    assert!(!victim.join("x").exists());
    assert_eq!(
        text(
            &sh(&sb, "cat evil; test -L evil || echo ' regular'")
                .await
                .stdout
        ),
        "mine regular\n"
    );
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_dir_removes_planted_symlinks_instead_of_following_them() {
    let (sb, _b, root) = sandbox().await;
    let victim = root.0.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), b"host").unwrap();
    let v = victim.display();
    // The last component is a symlink to a host directory.
    sh(&sb, &format!("mkdir -p logs && ln -s {v} logs/verifier")).await;
    sb.reset_dir("/home/user/logs/verifier", Identity::Verifier)
        .await
        .unwrap();
    assert!(victim.join("keep").exists());
    let r = sh(
        &sb,
        "stat -c '%F %u %a' logs/verifier; ls -A logs/verifier | wc -l",
    )
    .await;
    assert_eq!(text(&r.stdout), "directory 1000 755\n0\n");
    // A parent is a symlink.
    sh(&sb, &format!("rm -rf logs && ln -s {v} logs")).await;
    sb.reset_dir("/home/user/logs/verifier", Identity::Verifier)
        .await
        .unwrap();
    assert!(victim.join("keep").exists() && !victim.join("verifier").exists());
    let r = sh(
        &sb,
        "test -L logs && echo link; stat -c '%F' logs logs/verifier",
    )
    .await;
    assert_eq!(text(&r.stdout), "directory\ndirectory\n");
    // A full tree is emptied.
    sh(
        &sb,
        "mkdir -p logs/verifier/deep/er && touch logs/verifier/deep/er/f logs/verifier/reward.txt",
    )
    .await;
    sb.reset_dir("/home/user/logs/verifier", Identity::Verifier)
        .await
        .unwrap();
    assert_eq!(
        text(&sh(&sb, "ls -A logs/verifier | wc -l").await.stdout),
        "0\n"
    );
    sb.reset_dir("/tmp/.openenv-tests", Identity::Verifier)
        .await
        .unwrap();
    assert_eq!(
        sh(&sb, "test -d /tmp/.openenv-tests").await.exit_code,
        Some(0)
    );
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_secret_or_host_path_is_visible_inside() {
    let (sb, _b, root) = sandbox().await;
    assert_eq!(std::env::var("HF_TOKEN").unwrap(), SECRET);
    let r = sh(
        &sb,
        "env; cat /proc/1/cmdline /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null",
    )
    .await;
    let seen = text(&r.stdout);
    assert!(
        !seen.contains("HF_TOKEN") && !seen.contains(SECRET),
        "{seen}"
    );
    let root_path = root.0.display().to_string();
    assert!(!seen.contains(&root_path), "host path visible: {seen}");
    assert!(seen.contains("HOME=/home/user") && seen.contains("LANG=C.UTF-8"));
    // sbx is not dumpable: its descriptors (the control channel) are out of the agent's reach.
    let r = sh(&sb, "ls /proc/2/fd").await;
    assert_ne!(r.exit_code, Some(0), "{}", text(&r.stdout));
    let r = sh(
        &sb,
        "grep -c . /etc/passwd; grep -c root:x:0 /etc/passwd; cat /etc/shadow",
    )
    .await;
    assert_eq!(text(&r.stdout), "3\n1\n");
    assert_ne!(r.exit_code, Some(0));
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_only_loopback() {
    let (sb, _b, _r) = sandbox().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = sh(&sb, &format!("echo hi > /dev/tcp/127.0.0.1/{port}")).await;
    assert_ne!(r.exit_code, Some(0));
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    let r = sh(&sb, "grep : /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(text(&r.stdout), "lo\n");
    sb.destroy().await.unwrap();
    // Egress is server configuration only.
    let (b, _r2) = backend();
    let spec = SandboxSpec {
        network: Network::Egress,
        ..SandboxSpec::default()
    };
    assert!(matches!(
        b.create_local(spec).await,
        Err(SandboxError::InvalidRequest { .. })
    ));
    let root = test_root();
    let egress = LocalBackend::new(&LocalConfig {
        network: LocalNetwork::Egress,
        ..config(&root.0)
    })
    .unwrap();
    let sb = egress.create_local(SandboxSpec::default()).await.unwrap();
    let r = sh(&sb, "grep -c : /proc/net/dev").await;
    assert_ne!(text(&r.stdout), "1\n", "egress sandbox has only loopback");
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_read_only_system() {
    let (sb, _b, root) = sandbox().await;
    let r = sh(
        &sb,
        "id -u; id -g; whoami; hostname; grep CapEff /proc/self/status; pwd; echo $HOME",
    )
    .await;
    assert_eq!(
        text(&r.stdout),
        "1000\n1000\nuser\nsandbox\nCapEff:\t0000000000000000\n/home/user\n/home/user\n"
    );
    // `sbx` is PID 1: no bwrap init in between.
    let r = sh(&sb, "cat /proc/1/comm").await;
    assert_eq!(text(&r.stdout), "sbx\n");
    let outside = root.0.join("outside.txt");
    std::fs::write(&outside, b"host").unwrap();
    let o = outside.display();
    for cmd in [
        "touch /usr/x",
        "touch /etc/x",
        "touch /bin/x",
        "touch /x",
        "touch /var/x",
        "touch /dev/x",
        "echo x >> /etc/passwd",
    ] {
        assert_ne!(sh(&sb, cmd).await.exit_code, Some(0), "{cmd} succeeded");
    }
    // The writable places.
    let r = sh(
        &sb,
        "touch ~/a /tmp/a /var/tmp/a /dev/shm/a /run/a && echo ok",
    )
    .await;
    assert_eq!(text(&r.stdout), "ok\n", "{}", text(&r.stderr));
    let r = sh(
        &sb,
        &format!("cat {o}; mkdir -p $(dirname {o}) && echo pwned > {o}"),
    )
    .await;
    assert!(!text(&r.stdout).contains("host"));
    assert_eq!(std::fs::read(&outside).unwrap(), b"host");
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_contained_and_leaves_nothing() {
    let (b, _r) = backend();
    let spec = SandboxSpec {
        limits: SandboxLimits {
            pids: Some(64),
            ..SandboxLimits::default()
        },
        ..SandboxSpec::default()
    };
    let sb = b.create_local(spec).await.unwrap();
    let other = b.create_local(SandboxSpec::default()).await.unwrap();
    let (uid, dir, cgroups) = (
        sb.host_uid(),
        sb.dir().to_owned(),
        sb.cgroup_dirs().to_vec(),
    );
    // The bomb's first function call returns at once; its children go on in the background.
    let r = sb
        .exec(bash(":(){ :|:& };:", Duration::from_secs(3)))
        .await
        .unwrap();
    assert!(r.exit_code.is_some() || r.timed_out);
    eventually(
        Duration::from_secs(10),
        "the bomb reaches the limit",
        || sb.host_pids().len() >= 40,
    )
    .await;
    for _ in 0..20 {
        let n = sb.host_pids().len();
        assert!(n <= 64, "{n} processes despite pids=64");
        let start = Instant::now();
        assert_eq!(text(&sh(&other, "echo fine").await.stdout), "fine\n");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a neighbour waited {:?}",
            start.elapsed()
        );
    }
    sb.destroy().await.unwrap();
    if let Some(uid) = uid {
        assert!(host_processes_of(uid).is_empty());
    }
    assert!(!dir.exists());
    assert!(cgroups.iter().all(|c| !c.exists()));
    other.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_of_the_sandbox_is_in_its_cgroups() {
    let (sb, _b, _r) = sandbox().await;
    if sb.cgroup_dirs().is_empty() {
        eprintln!("no writable cgroups here: nothing to check");
        return sb.destroy().await.unwrap();
    }
    // bwrap joins the groups between fork and exec (through `tasks`): its PID 1, `sbx`, a
    // command and what the command leaves behind are all inside.
    let r = sh(&sb, "sleep 30 >/dev/null 2>&1 & echo started").await;
    assert_eq!(text(&r.stdout), "started\n");
    let pids = sb.host_pids();
    assert!(pids.len() > IDLE, "{pids:?}");
    for dir in sb.cgroup_dirs() {
        let members: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        for pid in &pids {
            assert!(
                members.contains(pid),
                "pid {pid} is not in {}: {members:?}",
                dir.display()
            );
        }
    }
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_enforced_where_cgroups_allow() {
    let (b, _r) = backend();
    let spec = SandboxSpec {
        limits: SandboxLimits {
            memory_bytes: Some(64 << 20),
            ..SandboxLimits::default()
        },
        ..SandboxSpec::default()
    };
    let sb = b.create_local(spec).await.unwrap();
    if !sb
        .cgroup_dirs()
        .iter()
        .any(|d| d.to_string_lossy().contains("memory"))
    {
        eprintln!("no writable memory cgroup here: memory limits are not enforced");
        return sb.destroy().await.unwrap();
    }
    let r = sh(&sb, "python3 -c 'b = bytearray(512 << 20); print(len(b))'").await;
    assert_ne!(r.exit_code, Some(0), "{}", text(&r.stdout));
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_is_idempotent_and_removes_everything() {
    let (sb, _b, _r) = sandbox().await;
    sh(&sb, "sleep 1000 >/dev/null 2>&1 &").await;
    let pids = sb.host_pids();
    let dir = sb.dir().to_owned();
    assert_eq!(pids.len(), IDLE + 1);
    assert!(dir.join("owner").is_file());
    sb.destroy().await.unwrap();
    sb.destroy().await.unwrap();
    assert!(!dir.exists());
    assert!(
        pids.iter().all(|&p| !alive(p)),
        "a process of the sandbox survived"
    );
    assert!(sb.host_pids().is_empty());
    if let Some(uid) = sb.host_uid() {
        assert!(host_processes_of(uid).is_empty());
    }
    assert!(matches!(sh_err(&sb).await, SandboxError::Gone { .. }));
    assert!(matches!(
        sb.read_file("/home/user/x", 1).await,
        Err(SandboxError::Gone { .. })
    ));
}

async fn sh_err(sb: &LocalSandbox) -> SandboxError {
    sb.exec(bash("true", Duration::from_secs(1)))
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_without_destroy_cleans_up() {
    let (sb, _b, _r) = sandbox().await;
    sh(&sb, "sleep 1000 >/dev/null 2>&1 &").await;
    let (pids, dir, uid) = (sb.host_pids(), sb.dir().to_owned(), sb.host_uid());
    drop(sb);
    eventually(
        Duration::from_secs(15),
        "the dropped sandbox is cleaned up",
        || !dir.exists() && pids.iter().all(|&p| !alive(p)),
    )
    .await;
    if let Some(uid) = uid {
        assert!(host_processes_of(uid).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_sweep_removes_stale_sandboxes_only() {
    let (b, root) = backend();
    let live = b.create_local(SandboxSpec::default()).await.unwrap();
    // A dead owner: a finished process, and a start time no live process has.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let stale_id = format!("{dead_pid}s1-7");
    let stale = root.0.join(format!("openenv-rs-{stale_id}"));
    let victim = root.0.join("victim");
    std::fs::create_dir_all(stale.join("home/deep")).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), b"host").unwrap();
    std::os::unix::fs::symlink(&victim, stale.join("home/deep/link")).unwrap();
    std::fs::write(
        stale.join("owner"),
        format!(r#"{{"pid":{dead_pid},"start":1,"id":"{stale_id}","uid":null,"labels":{{}}}}"#),
    )
    .unwrap();
    let stale_cgroups: Vec<PathBuf> = live
        .cgroup_dirs()
        .iter()
        .filter_map(|d| Some(d.parent()?.join(&stale_id)))
        .collect();
    for c in &stale_cgroups {
        std::fs::create_dir(c).unwrap();
    }
    let unrelated = root.0.join("openenv-rs-not-an-id");
    std::fs::create_dir(&unrelated).unwrap();
    assert_eq!(b.sweep_orphans().await.unwrap(), 1);
    assert!(!stale.exists());
    assert!(stale_cgroups.iter().all(|c| !c.exists()));
    assert!(victim.join("keep").exists() && unrelated.exists());
    assert!(live.dir().is_dir());
    assert_eq!(text(&sh(&live, "echo alive").await.stdout), "alive\n");
    live.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_streams_stdio() {
    let (sb, _b, _r) = sandbox().await;
    let mut cat = sb
        .spawn(SpawnRequest {
            argv: vec!["cat".into()],
            cwd: None,
            env: BTreeMap::new(),
            identity: Identity::Agent,
        })
        .await
        .unwrap();
    for line in ["hello\n", "again\n"] {
        cat.write_stdin(Bytes::from(line)).await.unwrap();
        let mut got = Vec::new();
        while got.len() < line.len() {
            match tokio::time::timeout(Duration::from_secs(5), cat.next_event())
                .await
                .unwrap()
            {
                Some(ProcessEvent::Stdout(b)) => got.extend_from_slice(&b),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, line.as_bytes());
    }
    cat.kill_tree().await.unwrap();
    assert_eq!(sb.host_pids().len(), IDLE);
    // A big stream arrives whole (flow control), then the exit.
    let mut big = sb
        .spawn(SpawnRequest {
            argv: vec![
                "bash".into(),
                "-c".into(),
                "head -c 3000000 /dev/zero; echo e >&2; exit 4".into(),
            ],
            cwd: Some("/tmp".into()),
            env: BTreeMap::from([("X".to_owned(), "1".to_owned())]),
            identity: Identity::Agent,
        })
        .await
        .unwrap();
    let (mut out, mut err) = (0, Vec::new());
    loop {
        match tokio::time::timeout(Duration::from_secs(10), big.next_event())
            .await
            .unwrap_or_else(|_| panic!("stalled after {out} bytes of stdout, stderr {err:?}"))
        {
            Some(ProcessEvent::Stdout(b)) => out += b.len(),
            Some(ProcessEvent::Stderr(b)) => err.extend_from_slice(&b),
            Some(ProcessEvent::Exited { exit_code, signal }) => {
                assert_eq!((exit_code, signal), (Some(4), None));
                break;
            }
            None => panic!("no exit event"),
        }
    }
    assert_eq!((out, err.as_slice()), (3_000_000, &b"e\n"[..]));
    assert!(big.next_event().await.is_none());
    let missing = sb
        .spawn(SpawnRequest {
            argv: vec!["no-such-shell".into()],
            cwd: None,
            env: BTreeMap::new(),
            identity: Identity::Agent,
        })
        .await;
    assert!(matches!(missing, Err(SandboxError::InvalidRequest { .. })));
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_exec_is_killed() {
    let (sb, _b, _r) = sandbox().await;
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        sb.exec(bash("sleep 1000", Duration::from_secs(100))),
    )
    .await;
    assert!(waited.is_err());
    eventually(
        Duration::from_secs(5),
        "the abandoned command is killed",
        || sb.host_pids().len() == IDLE,
    )
    .await;
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_rejected() {
    let (sb, b, _r) = sandbox().await;
    let empty = ExecRequest::new(vec![], Duration::from_secs(1), 10);
    assert!(matches!(
        sb.exec(empty).await,
        Err(SandboxError::InvalidRequest { .. })
    ));
    let zero = ExecRequest::new(vec!["true".into()], Duration::ZERO, 10);
    assert!(matches!(
        sb.exec(zero).await,
        Err(SandboxError::InvalidRequest { .. })
    ));
    let mut nowhere = ExecRequest::new(vec!["true".into()], Duration::from_secs(1), 10);
    nowhere.cwd = Some("/home/user/nope".into());
    assert!(matches!(
        sb.exec(nowhere).await,
        Err(SandboxError::InvalidRequest { .. })
    ));
    for work_dir in ["/", "/usr/x", "relative", "/home/../etc"] {
        let spec = SandboxSpec {
            work_dir: work_dir.into(),
            ..SandboxSpec::default()
        };
        assert!(
            matches!(
                b.create_local(spec).await,
                Err(SandboxError::InvalidRequest { .. })
            ),
            "{work_dir}"
        );
    }
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_work_dir_and_env() {
    let (b, _r) = backend();
    let spec = SandboxSpec {
        work_dir: "/workspace/app".into(),
        env: BTreeMap::from([("TASK_NAME".to_owned(), "demo value".to_owned())]),
        ..SandboxSpec::default()
    };
    let sb = b.create_local(spec).await.unwrap();
    let r = sh(&sb, "pwd; echo $HOME; echo $TASK_NAME; touch f && echo ok").await;
    assert_eq!(
        text(&r.stdout),
        "/workspace/app\n/workspace/app\ndemo value\nok\n"
    );
    sb.write_file(
        "/workspace/app/x",
        Bytes::from_static(b"1"),
        0o644,
        Identity::Agent,
    )
    .await
    .unwrap();
    assert_eq!(
        &sb.read_file("/workspace/app/x", 10).await.unwrap().bytes[..],
        b"1"
    );
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_check_and_missing_bwrap() {
    let (b, _r) = backend();
    b.check().await.unwrap();
    let root = test_root();
    let missing = LocalBackend::new(&LocalConfig {
        bwrap_path: "/nonexistent/bwrap".into(),
        ..config(&root.0)
    });
    match missing {
        Err(SandboxError::Unavailable { reason, .. }) => {
            assert!(reason.contains("apt-get install bubblewrap"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_cannot_kill_or_stop_the_supervisor() {
    let (b, _r) = backend();
    // `sbx` is the namespace's init: the kernel drops SIGKILL and SIGSTOP sent to it from
    // inside, so it keeps serving (and reaps what the kill left).
    let sb = b.create_local(SandboxSpec::default()).await.unwrap();
    for cmd in ["kill -9 1", "kill -STOP 1", "kill -9 -1", "kill -STOP -1"] {
        let _ = sb.exec(bash(cmd, Duration::from_secs(5))).await;
        let r = sh(&sb, "cat /proc/1/comm; echo alive").await;
        assert_eq!(text(&r.stdout), "sbx\nalive\n", "after {cmd}");
    }
    assert_eq!(sb.host_pids().len(), IDLE);
    let (dir, uid) = (sb.dir().to_owned(), sb.host_uid());
    let start = Instant::now();
    sb.destroy().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(!dir.exists() && sb.host_pids().is_empty());
    if let Some(uid) = uid {
        assert!(host_processes_of(uid).is_empty());
    }
}

const MIB: u64 = 1 << 20;

/// A backend whose sandboxes have small writable mounts.
fn small_backend() -> (LocalBackend, TestRoot) {
    let root = test_root();
    let config = LocalConfig {
        work_dir_bytes: 64 * MIB,
        tmp_bytes: 32 * MIB,
        ..config(&root.0)
    };
    (LocalBackend::new(&config).unwrap(), root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_work_dir_fails_only_its_own_sandbox() {
    let (b, root) = small_backend();
    let full = b.create_local(SandboxSpec::default()).await.unwrap();
    let other = b.create_local(SandboxSpec::default()).await.unwrap();
    // Every writable place has its configured size.
    let r = sh(
        &full,
        "df -B1 --output=size ~ /tmp /var/tmp /dev/shm /run | tail -n +2",
    )
    .await;
    let sizes: Vec<u64> = text(&r.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    // `/var/tmp`, `/dev/shm` and `/run` are links into `/tmp`: one quota.
    assert_eq!(sizes, [64 * MIB, 32 * MIB, 32 * MIB, 32 * MIB, 32 * MIB]);
    // One fills its work dir while the other keeps writing and reading.
    let fill = sh(
        &full,
        "head -c 200M /dev/zero > big; echo status=$?; stat -c %s big",
    );
    let work = sh(
        &other,
        "for i in $(seq 40); do head -c 1M /dev/urandom > f$i && cat f$i > /dev/null || exit 1; done; \
         cat f* | wc -c",
    );
    let (fill, work) = tokio::join!(fill, work);
    let out = text(&fill.stdout);
    assert!(out.starts_with("status=1\n"), "{out}");
    let written: u64 = out.lines().nth(1).unwrap().parse().unwrap();
    assert!(written <= 64 * MIB, "{written}");
    assert!(
        text(&fill.stderr).contains("No space left on device"),
        "{}",
        text(&fill.stderr)
    );
    assert_eq!(
        (work.exit_code, text(&work.stdout)),
        (Some(0), format!("{}\n", 40 * MIB)),
        "{}",
        text(&work.stderr)
    );
    // The full sandbox's other places and its host-side writes: /tmp works, the work dir is
    // full; the neighbour still takes files.
    assert_eq!(
        sh(&full, "echo x > /tmp/y && cat /tmp/y").await.exit_code,
        Some(0)
    );
    let big = Bytes::from(vec![7u8; (2 * MIB) as usize]);
    assert!(
        full.write_file("/home/user/more", big.clone(), 0o644, Identity::Verifier)
            .await
            .is_err()
    );
    other
        .write_file("/home/user/more", big, 0o644, Identity::Verifier)
        .await
        .unwrap();
    // The 64 MiB live in the sandbox's own tmpfs, not on the host disk: the episode directory
    // holds only the owner marker.
    let pid = full.host_pids()[0];
    let fs = nix::sys::statvfs::statvfs(format!("/proc/{pid}/root/home/user").as_str()).unwrap();
    let total = fs.blocks() * fs.fragment_size();
    assert_eq!((total, fs.blocks_available()), (64 * MIB, 0));
    let on_host: Vec<String> = std::fs::read_dir(full.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_host, ["owner"]);
    let du = std::process::Command::new("du")
        .args(["-s", "-B1"])
        .arg(&root.0)
        .output()
        .unwrap();
    let used: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(used < MIB, "{used} bytes under the sandbox root");
    // Teardown frees it.
    full.destroy().await.unwrap();
    other.destroy().await.unwrap();
}

/// The sandbox's memory cgroup usage, if it has one.
fn memory_usage(sb: &LocalSandbox) -> Option<u64> {
    let dir = sb
        .cgroup_dirs()
        .iter()
        .find(|d| d.to_string_lossy().contains("memory"))?;
    let text = std::fs::read_to_string(dir.join("memory.usage_in_bytes")).ok()?;
    text.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_use_counts_against_the_memory_limit() {
    let (b, _r) = small_backend();
    let spec = SandboxSpec {
        limits: SandboxLimits {
            memory_bytes: Some(48 * MIB),
            ..SandboxLimits::default()
        },
        ..SandboxSpec::default()
    };
    let sb = b.create_local(spec).await.unwrap();
    let Some(before) = memory_usage(&sb) else {
        eprintln!("no writable memory cgroup here: tmpfs use is not charged to a sandbox");
        return sb.destroy().await.unwrap();
    };
    // 24 MiB in files, no process holding memory: the group is charged for them.
    let r = sh(
        &sb,
        "head -c 16M /dev/zero > a && head -c 8M /dev/zero > /dev/shm/b",
    )
    .await;
    assert_eq!(r.exit_code, Some(0), "{}", text(&r.stderr));
    let after = memory_usage(&sb).unwrap();
    assert!(
        after >= before + 20 * MIB,
        "usage {before} -> {after} after writing 24 MiB to tmpfs"
    );
    // The memory limit bounds the sum: 40 MiB more do not fit in 48 MiB. The group's OOM
    // killer ends the writer (or, as tmpfs pages cannot be freed by killing, the supervisor
    // too: the sandbox is then gone); the usage never passes the limit, and a neighbour is
    // not affected.
    let other = b.create_local(SandboxSpec::default()).await.unwrap();
    let r = sb
        .exec(bash(
            "head -c 40M /dev/zero > c; echo status=$?",
            Duration::from_secs(20),
        ))
        .await;
    if let Ok(r) = &r {
        assert!(!text(&r.stdout).contains("status=0"), "{r:?}");
    }
    let dir = sb
        .cgroup_dirs()
        .iter()
        .find(|d| d.to_string_lossy().contains("memory"))
        .unwrap();
    let peak: u64 = std::fs::read_to_string(dir.join("memory.max_usage_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(peak <= 48 * MIB, "{peak}");
    assert_eq!(text(&sh(&other, "echo fine").await.stdout), "fine\n");
    sb.destroy().await.unwrap();
    other.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_shows_nothing_of_its_host() {
    let (sb, _b, root) = sandbox().await;
    let pid = std::process::id().to_string();
    assert!(
        sb.id().len() >= 12 && !sb.id().contains(&pid),
        "sandbox id {}",
        sb.id()
    );
    let r = sh(
        &sb,
        "cat /proc/self/mountinfo /proc/self/cgroup; tr '\\0' ' ' < /proc/1/cmdline; echo; \
         for p in /proc/[0-9]*; do readlink $p/exe; tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null; \
         cat /proc/1/comm /proc/2/comm; hostname; env",
    )
    .await;
    let seen = text(&r.stdout);
    let sbx = PathBuf::from(env!("CARGO_BIN_EXE_env-sbx"));
    let install = sbx.parent().unwrap();
    for host in [root.0.as_path(), sbx.as_path(), install] {
        let host = host.display().to_string();
        assert!(!seen.contains(&host), "{host} visible inside:\n{seen}");
    }
    assert!(!seen.contains("openenv-rs-"), "{seen}");
    let tokens: Vec<&str> = seen.split(|c: char| !c.is_ascii_digit()).collect();
    assert!(
        !tokens.contains(&pid.as_str()),
        "server pid {pid} visible:\n{seen}"
    );
    // PID 1 is the supervisor itself (not dumpable: its exe link cannot be read inside).
    assert!(
        seen.contains("/proc/self/fd/") && seen.contains("sbx\n"),
        "{seen}"
    );
    // Its own /etc: its users, its name, none of the host's secrets or configuration.
    let r = sh(
        &sb,
        "getent passwd | cut -d: -f1 | tr '\\n' ' '; echo; getent group | cut -d: -f1 | tr '\\n' ' '; \
         echo; cat /etc/hostname; \
         for f in shadow gshadow ssh sudoers machine-id fstab apt pip.conf gitconfig; do \
           test -e /etc/$f && echo present $f; done; echo end",
    )
    .await;
    assert_eq!(
        text(&r.stdout),
        "root user nobody \nroot user nogroup \nsandbox\nend\n"
    );
    // What tools need still works.
    let r = sh(
        &sb,
        "awk 'BEGIN { print 1 + 1 }'; bash -lc 'echo login'; \
         python3 -c 'import json, ssl; print(json.dumps(1))'; \
         python3 -c 'import multiprocessing; multiprocessing.Lock(); print(\"sem\")'; \
         echo x > /dev/null && head -c 4 /dev/urandom | wc -c && echo y > /var/tmp/v && cat /run/../tmp/v",
    )
    .await;
    assert_eq!(
        text(&r.stdout),
        "2\nlogin\n1\nsem\n4\ny\n",
        "{}",
        text(&r.stderr)
    );
    if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        let r = sh(
            &sb,
            "python3 -c 'import ssl; print(ssl.create_default_context().cert_store_stats()[\"x509_ca\"] > 0)'",
        )
        .await;
        assert_eq!(text(&r.stdout), "True\n", "{}", text(&r.stderr));
    }
    if Path::new("/usr/bin/openssl").exists() {
        let r = sh(&sb, "openssl version -d").await;
        assert_eq!(r.exit_code, Some(0), "{}", text(&r.stderr));
    }
    sb.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_reaps_orphans() {
    let (sb, _b, _r) = sandbox().await;
    // A double fork: the sleep's parent exits at once, so `sbx` (PID 1) inherits it; killed,
    // it is a zombie child of `sbx` until `sbx` waits for it.
    sh(&sb, "(sleep 1000 >/dev/null 2>&1 &) ; true").await;
    let r = sh(
        &sb,
        "cat /proc/[0-9]*/stat 2>/dev/null | grep -c '(sleep) S 1 '",
    )
    .await;
    assert_eq!(text(&r.stdout), "1\n", "the orphan is a child of PID 1");
    sh(
        &sb,
        "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = sleep ] && kill -9 ${p#/proc/}; done; true",
    )
    .await;
    let start = Instant::now();
    loop {
        let r = sh(
            &sb,
            "cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' || true",
        )
        .await;
        if text(&r.stdout) == "0\n" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "zombies left: {}",
            text(&r.stdout)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sb.destroy().await.unwrap();
}
