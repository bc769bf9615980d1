//! A fake sandbox for the terminal env's unit tests (`TERMINAL_ENV.md` §13).
//!
//! It understands a few commands: `exit 1` anywhere fails with stderr `failed`; `sleep…`
//! times out with partial output; `forge` writes `0.75` into the reward file as the agent;
//! `write-reward X` writes `X` there; `bg-writer` starts a "background process" that rewrites
//! the reward file with `1.0` before every later operation until `kill_all` of the identity
//! that started it (the agent, or a verify command); `gone`
//! makes the sandbox vanish; `transport-noise` fails with a long multi-line transport error;
//! `bigout` prints 100 000 bytes; `binary` prints invalid UTF-8;
//! `…run-tests.sh` prints a pytest summary once tests are staged; anything else prints
//! `shell: {command}`. Its persistent shell speaks the sentinel protocol in 3-byte chunks,
//! keeps a cwd (`cd X`, `pwd`), and writes `later-bg` after each sentinel (a background job);
//! there `vanish` makes the sandbox vanish mid-command (the shell's stream ends without an exit
//! status, as when the supervisor dies), and `Shared::fail_spawn` makes the next shell fail to
//! start while the sandbox lives.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{TerminalConfig, TerminalFactory};
use crate::sandbox::{
    Capture, ExecRequest, ExecResult, FileContents, Identity, Process, ProcessEvent, Sandbox,
    SandboxBackend, SandboxError, SandboxSpec, SpawnRequest,
};

pub(super) const REWARD: &str = "/home/user/logs/verifier/reward.txt";

#[derive(Default)]
pub(super) struct Shared {
    pub(super) ops: Vec<String>,
    pub(super) execs: Vec<ExecRequest>,
    pub(super) files: BTreeMap<String, Vec<u8>>,
    /// Who started the background reward writer, while it runs.
    pub(super) bg_writer: Option<Identity>,
    pub(super) gone: bool,
    pub(super) creates: usize,
    pub(super) fail_create: Option<String>,
    /// The next create fails with `CreateFailed` and this reason.
    pub(super) fail_create_detail: Option<String>,
    /// The spec of the last sandbox created.
    pub(super) spec: Option<SandboxSpec>,
    /// `spawn` fails with a transport error and this reason.
    pub(super) fail_spawn: Option<String>,
}

pub(super) type SharedRef = Arc<Mutex<Shared>>;

fn tick(s: &mut Shared) {
    if s.bg_writer.is_some() {
        s.files.insert(REWARD.to_owned(), b"1.0".to_vec());
    }
}

struct FakeSandbox(SharedRef);

fn ok_result(stdout: &[u8], stderr: &[u8], code: i32, timed_out: bool, cap: usize) -> ExecResult {
    let cap_of = |b: &[u8]| {
        let mut c = Capture::new(cap, 0.25);
        c.push(b);
        c.finish()
    };
    ExecResult {
        exit_code: (!timed_out).then_some(code),
        signal: timed_out.then_some(9),
        stdout: cap_of(stdout),
        stderr: cap_of(stderr),
        timed_out,
        duration: Duration::from_millis(1),
    }
}

/// What the fake does with one agent-or-verifier command.
fn run_fake(
    s: &mut Shared,
    cmd: &str,
    identity: Identity,
) -> Result<(Vec<u8>, Vec<u8>, i32, bool), SandboxError> {
    if cmd.contains("exit 1") {
        return Ok((Vec::new(), b"failed".to_vec(), 1, false));
    }
    let out = match cmd {
        "gone" => {
            s.gone = true;
            return Err(SandboxError::Gone {
                reason: "killed from outside".to_owned(),
            });
        }
        c if c.starts_with("sleep") => return Ok((b"partial\n".to_vec(), Vec::new(), 0, true)),
        "transport-noise" => {
            return Err(SandboxError::Transport {
                reason: format!(
                    "control channel broken\n{}",
                    "frame dump 0xdeadbeef\n".repeat(500)
                ),
            });
        }
        "forge" => {
            s.files.insert(REWARD.to_owned(), b"0.75".to_vec());
            Vec::new()
        }
        c if c.starts_with("write-reward ") => {
            s.files.insert(
                REWARD.to_owned(),
                c.as_bytes()["write-reward ".len()..].to_vec(),
            );
            Vec::new()
        }
        "bg-writer" => {
            s.bg_writer = Some(identity);
            Vec::new()
        }
        "bigout" => vec![b'x'; 100_000],
        "binary" => b"ok \xff\xfe end".to_vec(),
        "true" => Vec::new(),
        c if c.ends_with("run-tests.sh") => {
            let staged = s.files.contains_key("/tmp/.openenv-tests/test_outputs.py");
            let text = if staged {
                "==== short test summary info ====\nPASSED test_outputs.py::a\nPASSED test_outputs.py::b\n==== 2 passed ===="
            } else {
                "no tests"
            };
            text.as_bytes().to_vec()
        }
        c => format!("shell: {c}\n").into_bytes(),
    };
    Ok((out, Vec::new(), 0, false))
}

#[async_trait]
impl Sandbox for FakeSandbox {
    fn id(&self) -> &str {
        "fake-sandbox"
    }

    async fn exec(&self, req: ExecRequest) -> Result<ExecResult, SandboxError> {
        let mut s = self.0.lock().unwrap();
        tick(&mut s);
        if s.gone {
            return Err(SandboxError::Gone {
                reason: "gone".to_owned(),
            });
        }
        let cmd = req.argv.last().cloned().unwrap_or_default();
        s.ops.push(format!("exec:{:?}:{cmd}", req.identity));
        s.execs.push(req.clone());
        let (out, err, code, timed_out) = run_fake(&mut s, &cmd, req.identity)?;
        Ok(ok_result(&out, &err, code, timed_out, req.max_output_bytes))
    }

    async fn spawn(&self, req: SpawnRequest) -> Result<Box<dyn Process>, SandboxError> {
        let mut s = self.0.lock().unwrap();
        if s.gone {
            return Err(SandboxError::Gone {
                reason: "gone".to_owned(),
            });
        }
        if let Some(reason) = s.fail_spawn.clone() {
            return Err(SandboxError::Transport { reason });
        }
        s.ops.push(format!("spawn:{}", req.argv.join(" ")));
        Ok(Box::new(FakeShell {
            shared: Arc::clone(&self.0),
            events: VecDeque::new(),
            cwd: "/home/user".to_owned(),
            exited: false,
        }))
    }

    async fn write_file(
        &self,
        path: &str,
        data: Bytes,
        _mode: u32,
        identity: Identity,
    ) -> Result<(), SandboxError> {
        let mut s = self.0.lock().unwrap();
        tick(&mut s);
        s.ops.push(format!("write:{identity:?}:{path}"));
        s.files.insert(path.to_owned(), data.to_vec());
        Ok(())
    }

    async fn read_file(&self, path: &str, max_bytes: usize) -> Result<FileContents, SandboxError> {
        let mut s = self.0.lock().unwrap();
        tick(&mut s);
        s.ops.push(format!("read:{path}"));
        match s.files.get(path) {
            Some(b) => Ok(FileContents {
                bytes: Bytes::copy_from_slice(&b[..b.len().min(max_bytes)]),
                truncated: b.len() > max_bytes,
            }),
            None => Err(SandboxError::NotFound {
                path: path.to_owned(),
            }),
        }
    }

    async fn reset_dir(&self, path: &str, identity: Identity) -> Result<(), SandboxError> {
        let mut s = self.0.lock().unwrap();
        tick(&mut s);
        s.ops.push(format!("reset_dir:{identity:?}:{path}"));
        let prefix = format!("{path}/");
        s.files.retain(|k, _| !k.starts_with(&prefix));
        Ok(())
    }

    async fn kill_all(&self, identity: Identity) -> Result<(), SandboxError> {
        let mut s = self.0.lock().unwrap();
        s.ops.push(format!("kill_all:{identity:?}"));
        if s.bg_writer == Some(identity) {
            s.bg_writer = None;
        }
        Ok(())
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        self.0.lock().unwrap().ops.push("destroy".to_owned());
        Ok(())
    }
}

/// A fake persistent shell that speaks the sentinel protocol, in 3-byte chunks.
struct FakeShell {
    shared: SharedRef,
    events: VecDeque<ProcessEvent>,
    cwd: String,
    exited: bool,
}

impl FakeShell {
    fn emit(&mut self, stdout: &[u8], stderr: &[u8]) {
        for c in stdout.chunks(3) {
            self.events
                .push_back(ProcessEvent::Stdout(Bytes::copy_from_slice(c)));
        }
        for c in stderr.chunks(3) {
            self.events
                .push_back(ProcessEvent::Stderr(Bytes::copy_from_slice(c)));
        }
    }
}

#[async_trait]
impl Process for FakeShell {
    async fn write_stdin(&mut self, data: Bytes) -> Result<(), SandboxError> {
        let script = String::from_utf8(data.to_vec()).unwrap();
        let start = script.find("<<'__OE_CMD_").unwrap() + "<<'__OE_CMD_".len();
        let nonce = &script[start..start + 32];
        let body_start = script.find('\n').unwrap() + 1;
        let end = script.find(&format!("\n__OE_CMD_{nonce}__\n")).unwrap();
        let cmd = script[body_start..end].to_owned();
        let (out, err, code) = if let Some(code) = cmd.strip_prefix("exit ") {
            self.emit(b"bye\n", b"");
            self.events.push_back(ProcessEvent::Exited {
                exit_code: code.trim().parse().ok(),
                signal: None,
            });
            return Ok(());
        } else if cmd.starts_with("sleep") {
            self.emit(b"partial\n", b"");
            return Ok(());
        } else if cmd == "vanish" {
            self.shared.lock().unwrap().gone = true;
            self.emit(b"dying\n", b"");
            self.exited = true;
            return Ok(());
        } else if let Some(dir) = cmd.strip_prefix("cd ") {
            self.cwd = dir.to_owned();
            (Vec::new(), Vec::new(), 0)
        } else if cmd == "pwd" {
            (format!("{}\n", self.cwd).into_bytes(), Vec::new(), 0)
        } else if cmd == "bad syntax (" {
            (Vec::new(), b"bash: syntax error\n".to_vec(), 2)
        } else if cmd == super::shell::STARTUP_COMMAND {
            (b"profile noise\n".to_vec(), Vec::new(), 0)
        } else {
            let mut s = self.shared.lock().unwrap();
            tick(&mut s);
            s.ops.push(format!("shell:{cmd}"));
            match run_fake(&mut s, &cmd, Identity::Agent) {
                Ok((o, e, c, _)) => (o, e, c),
                Err(err) => return Err(err),
            }
        };
        let out = [
            out,
            format!("\n__OE_END_{nonce}__ {code}\nlater-bg\n").into_bytes(),
        ]
        .concat();
        let err = [err, format!("\n__OE_END_{nonce}__\n").into_bytes()].concat();
        self.emit(&out, &err);
        Ok(())
    }

    async fn next_event(&mut self) -> Option<ProcessEvent> {
        if let Some(ev) = self.events.pop_front() {
            if matches!(ev, ProcessEvent::Exited { .. }) {
                self.exited = true;
            }
            return Some(ev);
        }
        if self.exited {
            return None;
        }
        std::future::pending().await
    }

    async fn kill_tree(&mut self) -> Result<(), SandboxError> {
        self.shared.lock().unwrap().ops.push("kill_tree".to_owned());
        self.exited = true;
        self.events.clear();
        Ok(())
    }
}

struct FakeBackend {
    name: &'static str,
    shared: SharedRef,
}

#[async_trait]
impl SandboxBackend for FakeBackend {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn check(&self) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn create(&self, spec: SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError> {
        let mut s = self.shared.lock().unwrap();
        s.creates += 1;
        if let Some(reason) = s.fail_create_detail.clone() {
            return Err(SandboxError::CreateFailed { reason });
        }
        if let Some(reason) = s.fail_create.clone() {
            return Err(SandboxError::Unavailable {
                backend: self.name,
                reason,
            });
        }
        *s = Shared {
            creates: s.creates,
            spec: Some(spec),
            ..Shared::default()
        };
        Ok(Box::new(FakeSandbox(Arc::clone(&self.shared))))
    }
    async fn sweep_orphans(&self) -> Result<usize, SandboxError> {
        Ok(0)
    }
}

pub(super) fn setup_with(
    config: TerminalConfig,
    name: &'static str,
) -> (TerminalFactory, SharedRef) {
    let shared = SharedRef::default();
    let backend = Arc::new(FakeBackend {
        name,
        shared: Arc::clone(&shared),
    });
    (TerminalFactory::new(config, backend), shared)
}
