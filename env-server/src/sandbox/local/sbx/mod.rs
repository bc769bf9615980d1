//! `sbx`, the in-sandbox supervisor (`docs/sandbox-local.md`), run by bwrap as the sandbox's
//! PID 1 (`--as-pid-1`: no bwrap init in between, so the agent cannot signal it) from the
//! `env-sbx` binary (a sealed memfd the server made, executed as `/proc/self/fd/N`).
//!
//! `sbx init --control-fd N --reply-fd M …` serves the frames of the control protocol (`local::proto`) until the
//! control pipe closes or a `Shutdown` arrives, then kills every process and exits (the kernel
//! ends the namespace with its init, and bwrap follows). As PID 1 it reaps the sandbox's
//! orphans (`reap`), and the agent cannot signal it: the kernel drops signals sent to a
//! namespace's init from inside unless it handles them. One current-thread tokio runtime, no threads:
//! a fork bomb at the pids limit cannot stop `sbx` from killing it. `sbx` makes itself
//! non-dumpable first, so agent processes (same uid) cannot open its descriptors through
//! `/proc/1/fd` to read or forge control frames; resource limits are set on `sbx` itself and
//! inherited by every command. `sbx check` exits 0 (the start-up probe).

mod exec;
mod kill;
mod reap;
mod spawn;

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::proto::{self, Frame, Kind};

/// Settings from the command line.
#[derive(Debug, Clone, Default)]
struct Settings {
    control_fd: RawFd,
    reply_fd: RawFd,
    kill_grace: Duration,
    drain_grace: Duration,
    /// Share of an exec's output cap kept from the start of each stream.
    head_fraction: f64,
    nofile: Option<u64>,
    fsize: Option<u64>,
    nproc: Option<u64>,
}

fn parse_args(args: &[String]) -> Result<Settings, String> {
    let mut s = Settings {
        kill_grace: Duration::from_secs(2),
        drain_grace: Duration::from_millis(200),
        head_fraction: proto::HEAD_FRACTION,
        control_fd: -1,
        reply_fd: -1,
        ..Settings::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--head-fraction" {
            s.head_fraction = value
                .parse()
                .ok()
                .filter(|f: &f64| (0.0..=1.0).contains(f))
                .ok_or_else(|| format!("{flag}: not a fraction between 0 and 1: {value}"))?;
            continue;
        }
        let num: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        let fd = || RawFd::try_from(num).map_err(|_| format!("{flag}: bad descriptor"));
        match flag.as_str() {
            "--control-fd" => s.control_fd = fd()?,
            "--reply-fd" => s.reply_fd = fd()?,
            "--kill-grace-ms" => s.kill_grace = Duration::from_millis(num),
            "--drain-grace-ms" => s.drain_grace = Duration::from_millis(num),
            "--nofile" => s.nofile = Some(num),
            "--fsize" => s.fsize = Some(num),
            "--nproc" => s.nproc = Some(num),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if s.control_fd < 3 || s.reply_fd < 3 || s.control_fd == s.reply_fd {
        return Err("--control-fd and --reply-fd are required (distinct, >= 3)".to_owned());
    }
    Ok(s)
}

/// Entry point of the `env-sbx` binary.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("check") => ExitCode::SUCCESS,
        Some("init") => match parse_args(&args[1..]) {
            Ok(settings) => init(&settings),
            Err(msg) => {
                eprintln!("sbx: {msg}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("sbx: usage: sbx init --control-fd N --reply-fd M [...] | sbx check");
            ExitCode::from(2)
        }
    }
}

/// Takes ownership of the control descriptors and marks every other inherited descriptor
/// close-on-exec, so no command inherits them.
#[allow(unsafe_code)]
fn adopt_fds(s: &Settings) -> Result<(OwnedFd, OwnedFd), String> {
    for raw in [s.control_fd, s.reply_fd] {
        if nix::fcntl::fcntl(
            // SAFETY: borrowed only for this call; fcntl(F_GETFD) on a closed number just fails.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) },
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .is_err()
        {
            return Err(format!("descriptor {raw} is not open"));
        }
    }
    // SAFETY: the server put these two pipe ends at these numbers for us (checked open above);
    // nothing else in this process owns them.
    let (control, reply) = unsafe {
        (
            OwnedFd::from_raw_fd(s.control_fd),
            OwnedFd::from_raw_fd(s.reply_fd),
        )
    };
    let others: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("/proc/self/fd: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in others {
        // SAFETY: borrowed only for this call; a number that is no longer open just fails.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = nix::fcntl::fcntl(
            borrowed,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    Ok((control, reply))
}

fn set_limit(resource: Resource, value: u64) {
    let hard = getrlimit(resource).map_or(value, |(_, hard)| hard);
    let value = value.min(hard);
    if let Err(e) = setrlimit(resource, value, value) {
        eprintln!("sbx: setrlimit({resource:?}, {value}): {e}");
    }
}

fn init(s: &Settings) -> ExitCode {
    // Run from a memfd (`/proc/self/fd/N`), the kernel named the process after the number.
    let _ = nix::sys::prctl::set_name(c"sbx");
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("sbx: cannot make itself non-dumpable: {e}");
        return ExitCode::from(1);
    }
    let (control, reply) = match adopt_fds(s) {
        Ok(fds) => fds,
        Err(msg) => {
            eprintln!("sbx: {msg}");
            return ExitCode::from(1);
        }
    };
    set_limit(Resource::RLIMIT_CORE, 0);
    if let Some(v) = s.nofile {
        set_limit(Resource::RLIMIT_NOFILE, v);
    }
    if let Some(v) = s.fsize {
        set_limit(Resource::RLIMIT_FSIZE, v);
    }
    if let Some(v) = s.nproc {
        set_limit(Resource::RLIMIT_NPROC, v);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sbx: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, serve(s.clone(), control, reply)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("sbx: {msg}");
            ExitCode::from(1)
        }
    }
}

/// A spawned process's handles inside `sbx`.
struct Proc {
    stdin: mpsc::UnboundedSender<bytes::Bytes>,
    credit: Rc<spawn::Credit>,
}

/// What every task shares (single thread: `Rc` + `RefCell`, never borrowed across `.await`).
struct State {
    settings: Settings,
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// Session id of every running exec and spawn, by request id.
    sessions: RefCell<HashMap<u64, i32>>,
    procs: RefCell<HashMap<u64, Proc>>,
}

impl State {
    fn send(&self, frame: Vec<u8>) {
        // The writer only stops when the server is gone; then nothing is listening anyway.
        let _ = self.out.send(frame);
    }

    fn error(&self, id: u64, message: String) {
        self.send(proto::encode(
            Kind::Error,
            id,
            Some(&proto::ErrorHeader { message }),
            &[],
        ));
    }
}

/// Writes queued frames to the reply pipe, coalescing what is already queued.
async fn writer(mut pipe: pipe::Sender, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut buf = Vec::new();
    while let Some(frame) = rx.recv().await {
        buf.extend_from_slice(&frame);
        while buf.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(frame) => buf.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if pipe.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
}

async fn serve(settings: Settings, control: OwnedFd, reply: OwnedFd) -> Result<(), String> {
    let input = pipe::Receiver::from_owned_fd(control).map_err(|e| format!("control pipe: {e}"))?;
    let output = pipe::Sender::from_owned_fd(reply).map_err(|e| format!("reply pipe: {e}"))?;
    let (out, rx) = mpsc::unbounded_channel();
    let writer = tokio::task::spawn_local(writer(output, rx));
    let reaper = tokio::task::spawn_local(reap::run());
    let state = Rc::new(State {
        settings,
        out,
        sessions: RefCell::new(HashMap::new()),
        procs: RefCell::new(HashMap::new()),
    });
    let pid_ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ready = proto::ReadyHeader {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid_ns,
    };
    state.send(proto::encode(Kind::Ready, 0, Some(&ready), &[]));
    let mut input = BufReader::with_capacity(64 << 10, input);
    let result = loop {
        match proto::read_frame(&mut input).await {
            Ok(Some(frame)) => {
                if frame.kind == Kind::Shutdown {
                    break Ok(());
                }
                dispatch(&state, frame);
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("control channel: {e}")),
        }
    };
    kill::all().await;
    drop(state);
    writer.abort();
    reaper.abort();
    result
}

fn dispatch(state: &Rc<State>, frame: Frame) {
    let id = frame.id;
    match frame.kind {
        Kind::Exec => match frame.header::<proto::ExecHeader>() {
            Ok(h) => {
                tokio::task::spawn_local(exec::run(Rc::clone(state), id, h, frame.payload));
            }
            Err(e) => state.error(id, e.to_string()),
        },
        Kind::Spawn => match frame.header::<proto::SpawnHeader>() {
            Ok(h) => spawn::start(state, id, &h),
            Err(e) => state.error(id, e.to_string()),
        },
        Kind::Stdin => {
            if let Some(p) = state.procs.borrow().get(&id) {
                let _ = p.stdin.send(frame.payload);
            }
        }
        Kind::Credit => {
            if let (Some(p), Ok(h)) = (
                state.procs.borrow().get(&id),
                frame.header::<proto::CreditHeader>(),
            ) {
                p.credit.grant(h.bytes);
            }
        }
        Kind::Kill => match frame.header::<proto::KillHeader>() {
            Ok(h) => {
                let sid = state.sessions.borrow_mut().remove(&h.target);
                let state = Rc::clone(state);
                tokio::task::spawn_local(async move {
                    if let Some(sid) = sid {
                        kill::tree(sid, None).await;
                    }
                    state.send(proto::encode_raw(Kind::Ack, id, b""));
                });
            }
            Err(e) => state.error(id, e.to_string()),
        },
        Kind::KillAll => {
            let state = Rc::clone(state);
            tokio::task::spawn_local(async move {
                kill::all().await;
                state.send(proto::encode_raw(Kind::Ack, id, b""));
            });
        }
        other => state.error(id, format!("unexpected frame {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_command_line() {
        let args: Vec<String> = "--control-fd 7 --reply-fd 9 --kill-grace-ms 50 --nproc 64"
            .split(' ')
            .map(str::to_owned)
            .collect();
        let s = parse_args(&args).unwrap();
        assert_eq!((s.control_fd, s.reply_fd, s.nproc), (7, 9, Some(64)));
        assert_eq!(s.kill_grace, Duration::from_millis(50));
        assert_eq!(s.drain_grace, Duration::from_millis(200));
        assert!((s.head_fraction - proto::HEAD_FRACTION).abs() < f64::EPSILON);
        let with_head = |v: &str| {
            let mut a = args.clone();
            a.extend(["--head-fraction".to_owned(), v.to_owned()]);
            parse_args(&a)
        };
        assert!((with_head("0.5").unwrap().head_fraction - 0.5).abs() < f64::EPSILON);
        assert!(with_head("1.5").is_err());
        assert!(with_head("x").is_err());
        assert!(parse_args(&["--control-fd".to_owned(), "7".to_owned()]).is_err());
        assert!(parse_args(&["--bogus".to_owned(), "1".to_owned()]).is_err());
    }
}
