//! Every inbound parser driven with arbitrary and mutated input (`docs/fuzzing.md`): the `/ws`
//! frame parser, JSON-RPC dispatch, the HTTP routes (through the router, as axum serves
//! them), live WebSocket sessions on loopback (text frames and hand-made frame headers), the
//! terminal env's reset arguments, task ids and `task.yaml`.
//!
//! Used by the bounded fuzz test of `cargo test` (`env-server/tests/fuzz.rs`) and the longer
//! run of the benchmark binary `fuzz-parsers` (`bench/`). Deterministic: a seed fixes every
//! input. Each case checks that nothing panics (a process panic hook, [`install_panic_probe`],
//! counts panics on every thread, including those the server catches) and the parser's own
//! invariants (a typed error, Python's error positions consistent with the text, a reply or
//! an RFC 6455 close code on the socket, …).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use env_client::protocol::{
    ClientFrame, FrameError, ServerFrame, frame_text, parse_client_frame, parse_json_lenient,
};
use futures_util::FutureExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Limits;
use crate::mcp::{self, Scope};
use crate::server::{self, AppState, app};

// ---------------------------------------------------------------------------------------------
// Seeds: valid inputs of each parser, from the official captures and the tests.

/// `/ws` client frames.
pub const FRAME_SEEDS: &[&str] = &[
    r#"{"type": "reset", "data": {"seed": 42, "episode_id": "ep-capture-1", "difficulty": "easy"}}"#,
    r#"{"type": "step", "data": {"message": "hello"}}"#,
    r#"{"type":"step","data":{"message":"hi"}}"#,
    r#"{"type": "state"}"#,
    r#"{"type": "verify", "data": {}}"#,
    r#"{"type": "close"}"#,
    r#"{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}}"#,
    r#"{"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo_message", "arguments": {"message": "hi"}}, "id": "x"}}"#,
    r#"{"type": "step", "data": {"type": "call_tool", "tool_name": "echo_message", "arguments": {"message": "via step"}}}"#,
    r#"{"type": "step", "data": {"type": "list_tools"}}"#,
    r#"{"type": "step", "data": {"message": NaN, "x": [-Infinity, 1e5, -0.5]}}"#,
    r#"{"type":"reset","data":{"setup":["echo hi"],"verify":"test -f x","files":{"a.txt":"h\u00e9"},"command_timeout_s":5,"shell_mode":"per_command"}}"#,
    "{\n  \"type\": \"step\",\n  \"data\": {\"message\": \"multi\\nline\"}\n}",
];

/// JSON-RPC requests (`POST /mcp`, the `/mcp` WebSocket, `mcp` frames).
pub const JSON_RPC_SEEDS: &[&str] = &[
    r#"{"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}"#,
    r#"{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo_message", "arguments": {"message": "hi"}}, "id": "x"}"#,
    r#"{"jsonrpc":"2.0","method":"openenv/session/create","params":{},"id":1}"#,
    r#"{"jsonrpc":"2.0","method":"openenv/session/close","params":{"session_id":"nope"},"id":3}"#,
    r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo_message","arguments":{"message":"in"},"session_id":"nope"},"id":2}"#,
    r#"{"jsonrpc": "2.0", "method": "resources/list", "id": 9}"#,
    r#"[{"jsonrpc":"2.0","method":"tools/list","id":1}]"#,
];

/// Bodies of `POST /reset` and `POST /step`.
pub const HTTP_BODY_SEEDS: &[&str] = &[
    r#"{"seed":1,"episode_id":"http-ep"}"#,
    r#"{"action":{"message":"http"},"timeout_s":5,"request_id":"r1"}"#,
    r#"{"action":{"type":"call_tool","tool_name":"echo_message","arguments":{"message":"x"}}}"#,
    r#"{"action":{"type":"list_tools"}}"#,
    "{}",
    "",
];

/// Reset keyword arguments of the terminal env.
pub const RESET_SEEDS: &[&str] = &[
    r#"{"seed": 42, "episode_id": "e1"}"#,
    r#"{"setup": ["echo a", "  "], "verify": "test -f /tmp/x", "files": {"a.txt": "hi", "/tmp/b": "x", "../c": "y", "d/": "z"}, "command_timeout_s": 0.5, "shell_mode": "persistent"}"#,
    r#"{"sandbox_backend": "bwrap", "sandbox_image": "", "sandbox_flavor": "cpu-basic", "forward_hf_token": "off", "task_path": "hello-world", "instruction": "do it"}"#,
    r#"{"setup_scripts": "echo x", "verify_scripts": ["a", "b"], "hf_sandbox_timeout": 30, "task_id": "a/b", "shell_mode": "per_command", "command_timeout_s": 1e300}"#,
];

/// Task ids (`task_path` / `task_id`).
pub const TASK_ID_SEEDS: &[&str] = &["hello-world", "a/b", "./a/b/", "../x", "/etc", "a\\b"];

/// `task.yaml` files.
pub const TASK_YAML_SEEDS: &[&str] = &[
    "instruction: |\n  Do it.\nmax_test_timeout_sec: 30\nmax_agent_timeout_sec: 120.5\nsetup: echo a\nfiles:\n  a.txt: hi\n",
    "instruction: Print hello\nsetup:\n  - echo a\n  - '  '\n  - echo b\nauthor_email: x@y\ndifficulty: easy\ntags: [a, b]\n",
    "descriptions:\n  - key: base\n    description: old style\ninstruction: \"q\\u00e9\"\nmax_test_timeout_sec: .inf\n",
    "a: &x [1, 2]\nb: *x\ninstruction: >\n  folded\n  text\nsetup: ~\n",
];

/// Tokens inserted by the mutator: non-ASCII, BOM, control characters, invalid UTF-8,
/// structure, Python's non-finite floats, out-of-range numbers, escapes, YAML syntax.
const TOKENS: &[&[u8]] = &[
    "é".as_bytes(),
    "\u{feff}".as_bytes(),
    "\u{2028}".as_bytes(),
    "😀".as_bytes(),
    "\u{fffd}".as_bytes(),
    b"\0",
    b"\x01",
    b"\x1f",
    b"\x7f",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e-400",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"0.1e",
    b"00",
    b"-",
    b"\\u",
    b"\\ud800",
    b"\\udc00\\ud800",
    b"\\u0000",
    b"null",
    b"true",
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"? ",
    b"- ",
    b"---\n",
    b"%YAML 1.2\n",
    b"<<: ",
    b"|",
    b"#",
    b"@",
];

/// The characters inserted at every position by [`insertion_sweep`].
pub const SWEEP_CHARS: &[&str] = &["é", "\u{feff}", "\u{1}", "😀", "\u{7f}", "\n"];

// ---------------------------------------------------------------------------------------------
// Input generation.

/// A small deterministic generator (splitmix64): the same seed gives the same inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next_u64() % n as u64).unwrap_or(0)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    /// One of `items` (which must not be empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Every `seed` with each of [`SWEEP_CHARS`] inserted at each character boundary.
pub fn insertion_sweep(seeds: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for seed in seeds {
        for (at, _) in seed
            .char_indices()
            .chain(std::iter::once((seed.len(), ' ')))
        {
            for c in SWEEP_CHARS {
                out.push(format!("{}{c}{}", &seed[..at], &seed[at..]));
            }
        }
    }
    out
}

/// Arbitrary bytes: uniform, or drawn from JSON's alphabet and the mutator's tokens.
pub fn arbitrary_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(64);
    if rng.chance(1, 2) {
        return (0..len).map(|_| (rng.next_u64() & 0xff) as u8).collect();
    }
    const ALPHABET: &[u8] = b"{}[]\":,0123456789.-+eEtrufalsn \\/u\n";
    let mut out = Vec::new();
    for _ in 0..len {
        if rng.chance(1, 6) {
            let token: &&[u8] = rng.pick(TOKENS);
            out.extend_from_slice(token);
        } else {
            out.push(*rng.pick(ALPHABET));
        }
    }
    out
}

/// A value of a type the field may not expect: strings with non-ASCII and control
/// characters, extreme numbers, deep or wide containers.
fn odd_value(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => Value::from(u64::MAX),
        3 => Value::from(i64::MIN),
        4 => Value::from(f64::MAX),
        5 => Value::from(5e-324),
        6 => Value::from("é\u{feff}\u{0}\u{1}😀\u{2028}\"\\"),
        7 => Value::from("x".repeat(rng.below(5000))),
        8 => {
            let depth = 100 + rng.below(60);
            let mut v = Value::from(1);
            for _ in 0..depth {
                v = Value::Array(vec![v]);
            }
            v
        }
        9 => Value::Object(
            (0..rng.below(300))
                .map(|i| (format!("k{i}"), Value::from(i)))
                .collect(),
        ),
        10 => Value::Array(Vec::new()),
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// Replaces one node of `value` (chosen by a random descent) with an [`odd_value`], or adds
/// a key to an object on the way.
fn mutate_value(rng: &mut Rng, value: &mut Value) {
    let mut node = value;
    loop {
        let descend = rng.chance(2, 3);
        let next_index = match &*node {
            Value::Array(items) if descend && !items.is_empty() => Some(rng.below(items.len())),
            Value::Object(map) if descend && !map.is_empty() => Some(rng.below(map.len())),
            _ => None,
        };
        let Some(i) = next_index else { break };
        node = match node {
            Value::Array(items) => &mut items[i],
            Value::Object(map) => {
                if rng.chance(1, 5) {
                    let key = String::from_utf8_lossy(&arbitrary_bytes(rng)).into_owned();
                    let odd = odd_value(rng);
                    map.insert(key, odd);
                    return;
                }
                match map.values_mut().nth(i) {
                    Some(v) => v,
                    None => return,
                }
            }
            _ => return,
        };
    }
    *node = odd_value(rng);
}

/// One structure-aware or byte-level mutation of `input`.
fn mutate_once(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[&str]) {
    let len = input.len();
    match rng.below(11) {
        0 | 1 => {
            let at = rng.below(len + 1);
            let token: &&[u8] = rng.pick(TOKENS);
            input.splice(at..at, token.iter().copied());
        }
        2 => {
            let at = rng.below(len + 1);
            let end = (at + 1 + rng.below(8)).min(len);
            if at < end {
                input.drain(at..end);
            }
        }
        3 => input.truncate(rng.below(len + 1)),
        4 => {
            // Duplicate a slice (a key, a value, a whole member) in place.
            let at = rng.below(len + 1);
            let end = (at + rng.below(40)).min(len);
            let copy = input[at..end].to_vec();
            let to = rng.below(len + 1);
            input.splice(to..to, copy);
        }
        5 if len > 0 => {
            let at = rng.below(len);
            input[at] = (rng.next_u64() & 0xff) as u8;
        }
        6 => {
            // Deep nesting, past serde_json's recursion limit at times.
            let depth = 1 + rng.below(200);
            let (open, close): (&[u8], &[u8]) = if rng.chance(1, 2) {
                (b"[", b"]")
            } else {
                (b"{\"a\":", b"}")
            };
            let mut out = open.repeat(depth);
            out.extend_from_slice(input);
            out.extend_from_slice(&close.repeat(depth));
            *input = out;
        }
        7 => {
            // A duplicate key: the frame's `type` or a copy of its first member.
            if let Some(at) = input.iter().position(|b| *b == b'{') {
                let dup: &[u8] = if rng.chance(1, 2) {
                    b"\"type\":\"reset\","
                } else {
                    b"\"data\":{\"message\":\"dup\"},"
                };
                input.splice(at + 1..at + 1, dup.iter().copied());
            }
        }
        8 => {
            // Splice with another seed.
            let other = rng.pick(seeds).as_bytes();
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        9 => {
            // Repeat a chunk: long strings, many keys.
            let at = rng.below(len + 1);
            let end = (at + 1 + rng.below(16)).min(len);
            let chunk = input[at.min(end)..end].to_vec();
            let times = rng.below(2000);
            let tail = input.split_off(end);
            for _ in 0..times {
                input.extend_from_slice(&chunk);
            }
            input.extend_from_slice(&tail);
        }
        _ => {
            // serde_json, not the parser under test, so that a bug there cannot stop the
            // generator.
            if let Ok(mut value) = serde_json::from_slice::<Value>(input) {
                mutate_value(rng, &mut value);
                *input = value.to_string().into_bytes();
            }
        }
    }
}

/// One input: arbitrary bytes (1 in 8), else a seed with one to four mutations.
pub fn input(rng: &mut Rng, seeds: &[&str]) -> Vec<u8> {
    if seeds.is_empty() || rng.chance(1, 8) {
        return arbitrary_bytes(rng);
    }
    let mut out = rng.pick(seeds).as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        mutate_once(rng, &mut out, seeds);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Panic probe.

static PANICS: AtomicUsize = AtomicUsize::new(0);
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Replaces the process panic hook with one that counts panics on every thread (including
/// those the server catches and answers) and keeps the last one's location and message for the
/// report, without printing. For the fuzz test and the fuzz benchmark only.
pub fn install_panic_probe() {
    std::panic::set_hook(Box::new(|info| {
        let mut text = info.to_string();
        if text.len() > 600 {
            let mut end = 600;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        *LAST_PANIC.lock().unwrap_or_else(PoisonError::into_inner) = text;
        PANICS.fetch_add(1, Ordering::SeqCst);
    }));
}

/// Panics counted by the probe so far.
pub fn panics_seen() -> usize {
    PANICS.load(Ordering::SeqCst)
}

fn last_panic() -> String {
    LAST_PANIC
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Targets and their checks.

/// An inbound parser under fuzzing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// `parse_client_frame` on mutated `/ws` frames.
    Frame,
    /// JSON-RPC parse and dispatch (`Scope::Http`).
    JsonRpc,
    /// The HTTP routes through the axum router (`/reset`, `/step`, `/mcp`, `/state`, `/ws`
    /// query strings).
    Http,
    /// Live `/ws` and `/mcp` WebSocket sessions on loopback: mutated text frames and
    /// hand-made frame headers.
    WebSocket,
    /// The terminal env's reset keyword arguments.
    ResetArgs,
    /// Task ids.
    TaskId,
    /// `task.yaml` through the task loader.
    TaskYaml,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 7] = [
        Self::Frame,
        Self::JsonRpc,
        Self::Http,
        Self::WebSocket,
        Self::ResetArgs,
        Self::TaskId,
        Self::TaskYaml,
    ];

    /// The target's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Frame => "frame",
            Self::JsonRpc => "json-rpc",
            Self::Http => "http",
            Self::WebSocket => "websocket",
            Self::ResetArgs => "reset-args",
            Self::TaskId => "task-id",
            Self::TaskYaml => "task-yaml",
        }
    }

    /// The target named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A case that panicked or broke an invariant, with its input.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The parser.
    pub target: Target,
    /// The input, as sent.
    pub input: Vec<u8>,
    /// What went wrong.
    pub what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}\n  input ({} bytes): {}",
            self.target.name(),
            self.what,
            self.input.len(),
            self.input.escape_ascii()
        )
    }
}

/// Checks Python's `line L column C (char N)` against the text: `N` within it, `L` and `C`
/// where character `N` is.
fn check_position(text: &str, detail: &str) -> Result<(), String> {
    let bad = || format!("malformed error position: {detail:?}");
    let (_, tail) = detail.rsplit_once(": line ").ok_or_else(bad)?;
    let (line, tail) = tail.split_once(" column ").ok_or_else(bad)?;
    let (column, tail) = tail.split_once(" (char ").ok_or_else(bad)?;
    let char_index = tail.strip_suffix(')').ok_or_else(bad)?;
    let parse = |s: &str| s.parse::<usize>().map_err(|_| bad());
    let (line, column, char_index) = (parse(line)?, parse(column)?, parse(char_index)?);
    let before: Vec<char> = text.chars().take(char_index).collect();
    if before.len() < char_index {
        return Err(format!("char {char_index} past the end: {detail:?}"));
    }
    let newlines = before.iter().filter(|c| **c == '\n').count();
    let line_start = before.iter().rposition(|c| *c == '\n').map_or(0, |i| i + 1);
    if line != newlines + 1 || column != char_index - line_start + 1 {
        return Err(format!("line/column inconsistent with char: {detail:?}"));
    }
    Ok(())
}

/// The `/ws` frame parser: a typed outcome; a parsed frame re-serialises to the same frame;
/// an `INVALID_JSON` detail points inside the text; every error has its error frame.
pub fn check_frame(text: &str) -> Result<(), String> {
    match parse_client_frame(text) {
        Ok(frame) => {
            let again = serde_json::to_string(&frame)
                .map_err(|e| format!("frame does not serialise: {e}"))?;
            let reparsed = parse_client_frame(&again)
                .map_err(|e| format!("re-serialised frame fails: {e}: {again}"))?;
            if reparsed != frame {
                return Err(format!("round trip changed the frame: {again}"));
            }
            if matches!(frame, ClientFrame::Verify { ref data } if !data.is_empty()) {
                return Err("verify frame with data accepted".to_owned());
            }
        }
        Err(err) => {
            if let FrameError::InvalidJson { detail } = &err {
                check_position(text, detail)?;
            }
            // Not re-parsed: a validation error echoes its input, which may sit at the
            // parser's depth limit already.
            let reply = frame_text(&ServerFrame::Error(err.to_error_data()));
            if !reply.starts_with(r#"{"type":"error","data":{"#) || !reply.ends_with("}}") {
                return Err(format!("error frame: {reply}"));
            }
        }
    }
    Ok(())
}

/// Python's error text for what is not JSON, consistent with the text.
pub fn check_json(text: &str) -> Result<(), String> {
    match parse_json_lenient(text) {
        Ok(_) => Ok(()),
        Err(detail) => check_position(text, &detail),
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A WebSocket opened by hand, to write frames no client library would.
struct RawWs {
    tcp: TcpStream,
    path: &'static str,
}

impl RawWs {
    async fn open(addr: SocketAddr, path: &'static str) -> Result<Self, String> {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tokio::time::timeout(PROBE_TIMEOUT, tcp.read_u8())
                .await
                .map_err(|_| "handshake timed out".to_owned())?
                .map_err(|e| format!("handshake: {e}"))?;
            head.push(byte);
            if head.len() > 4096 {
                return Err("handshake answer too long".to_owned());
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(format!("handshake refused: {}", head.escape_ascii()));
        }
        Ok(Self { tcp, path })
    }

    async fn write_frame(&mut self, first: u8, payload: &[u8], masked: bool) -> Result<(), String> {
        let mut frame = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => frame.push(mask_bit | n as u8),
            n @ 126..=65535 => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x37u8, 0xfa, 0x21, 0x3d];
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.tcp
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// The next server frame: opcode and payload; `None` at the end of the stream.
    async fn read_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, String> {
        let read = async {
            let mut head = [0u8; 2];
            if self.tcp.read_exact(&mut head).await.is_err() {
                return Ok(None);
            }
            if head[1] & 0x80 != 0 {
                return Err("the server masked a frame".to_owned());
            }
            let len = match head[1] & 0x7f {
                126 => usize::from(self.tcp.read_u16().await.map_err(|e| e.to_string())?),
                127 => usize::try_from(self.tcp.read_u64().await.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?,
                n => usize::from(n),
            };
            if len > 64 * 1024 * 1024 {
                return Err(format!("server frame of {len} bytes"));
            }
            let mut payload = vec![0u8; len];
            self.tcp
                .read_exact(&mut payload)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok(Some((head[0], payload)))
        };
        tokio::time::timeout(PROBE_TIMEOUT, read)
            .await
            .map_err(|_| "no answer in time".to_owned())?
    }
}

/// The live-server and router state the targets run against.
pub struct Harness {
    /// The router of the HTTP target (its own session table).
    router: axum::Router,
    /// The session table JSON-RPC dispatch runs on.
    rpc_state: Arc<AppState>,
    /// The loopback server of the WebSocket target.
    ws_state: Arc<AppState>,
    ws_addr: SocketAddr,
    ws_server: tokio::task::JoinHandle<std::io::Result<()>>,
    socket: Option<RawWs>,
    task_root: PathBuf,
    probe: u64,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("ws_addr", &self.ws_addr)
            .finish_non_exhaustive()
    }
}

fn echo_state() -> Result<Arc<AppState>, String> {
    let factory = crate::envs::factory("echo").ok_or("no echo env")?;
    let limits = Limits {
        keepalive_interval_s: 0,
        idle_timeout_s: 0,
        ..Limits::default()
    };
    Ok(Arc::new(AppState::new(
        factory,
        limits,
        CancellationToken::new(),
    )))
}

/// The statuses an HTTP route may answer with.
const HTTP_STATUSES: &[StatusCode] = &[
    StatusCode::OK,
    StatusCode::BAD_REQUEST,
    StatusCode::NOT_FOUND,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::UNPROCESSABLE_ENTITY,
];

impl Harness {
    /// Starts the loopback server (echo env) and makes the task folder under the system
    /// temporary directory.
    pub async fn new() -> Result<Self, String> {
        let router_state = echo_state()?;
        let rpc_state = echo_state()?;
        let ws_state = echo_state()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let ws_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let ws_server = tokio::spawn(server::run(listener, Arc::clone(&ws_state)));
        let task_root = std::env::temp_dir().join(format!("openenv-fuzz-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&task_root).map_err(|e| format!("task folder: {e}"))?;
        Ok(Self {
            router: app(router_state),
            rpc_state,
            ws_state,
            ws_addr,
            ws_server,
            socket: None,
            task_root,
            probe: 0,
        })
    }

    /// Stops the loopback server and removes the task folder.
    pub async fn shutdown(self) {
        self.ws_state.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.ws_server).await;
        let _ = std::fs::remove_dir_all(&self.task_root);
    }

    /// Runs one case of `target` with the next input from `rng`.
    pub async fn case(&mut self, target: Target, rng: &mut Rng) -> Result<(), Failure> {
        let before = panics_seen();
        let (input, outcome) = std::panic::AssertUnwindSafe(self.case_inner(target, rng))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| (Vec::new(), Err("the case panicked".to_owned())));
        let outcome = if panics_seen() != before {
            Err(format!("panicked: {}", last_panic()))
        } else {
            outcome
        };
        outcome.map_err(|what| Failure {
            target,
            input,
            what,
        })
    }

    async fn case_inner(&mut self, target: Target, rng: &mut Rng) -> (Vec<u8>, Result<(), String>) {
        match target {
            Target::Frame => {
                let input = input(rng, FRAME_SEEDS);
                let text = String::from_utf8_lossy(&input).into_owned();
                let outcome = sync_check(|| check_frame(&text).and_then(|()| check_json(&text)));
                (input, outcome)
            }
            Target::JsonRpc => {
                let input = input(rng, JSON_RPC_SEEDS);
                let outcome = self.json_rpc(&input).await;
                (input, outcome)
            }
            Target::Http => self.http(rng).await,
            Target::WebSocket => self.websocket(rng).await,
            Target::ResetArgs => {
                let input = input(rng, RESET_SEEDS);
                let text = String::from_utf8_lossy(&input).into_owned();
                let outcome = sync_check(|| match parse_json_lenient(&text) {
                    Ok(Value::Object(kwargs)) => crate::envs::terminal::fuzz::reset_args(&kwargs),
                    _ => Ok(()),
                });
                (input, outcome)
            }
            Target::TaskId => {
                let input = input(rng, TASK_ID_SEEDS);
                let text = String::from_utf8_lossy(&input).into_owned();
                let outcome = sync_check(|| crate::envs::terminal::fuzz::task_id(&text));
                (input, outcome)
            }
            Target::TaskYaml => {
                let input = input(rng, TASK_YAML_SEEDS);
                let outcome = std::panic::AssertUnwindSafe(crate::envs::terminal::fuzz::task_yaml(
                    &self.task_root,
                    &input,
                ))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err("panicked".to_owned()));
                (input, outcome)
            }
        }
    }

    async fn json_rpc(&mut self, input: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(input).into_owned();
        let parsed = std::panic::catch_unwind(|| parse_json_lenient(&text))
            .map_err(|_| "parse panicked".to_owned())?;
        let Ok(body) = parsed else {
            return Ok(());
        };
        let registry = Arc::clone(&self.rpc_state.registry);
        let reply = std::panic::AssertUnwindSafe(mcp::dispatch(&registry, Scope::Http, body))
            .catch_unwind()
            .await
            .map_err(|_| "dispatch panicked".to_owned())?;
        let reply = serde_json::to_value(&reply).map_err(|e| e.to_string())?;
        if reply["jsonrpc"] != "2.0" {
            return Err(format!("reply without jsonrpc 2.0: {reply}"));
        }
        Ok(())
    }

    async fn http(&mut self, rng: &mut Rng) -> (Vec<u8>, Result<(), String>) {
        let (method, path, body) = match rng.below(8) {
            0 | 1 => ("POST", "/reset".to_owned(), input(rng, HTTP_BODY_SEEDS)),
            2 | 3 => ("POST", "/step".to_owned(), input(rng, HTTP_BODY_SEEDS)),
            4 | 5 => ("POST", "/mcp".to_owned(), input(rng, JSON_RPC_SEEDS)),
            6 => {
                let mut id = input(rng, &["0b4f7a52-8a53-4bd1-9a47-1c1b1b1b1b1b"]);
                id.truncate(1024);
                let query: String = id.iter().map(|b| format!("%{b:02X}")).collect();
                ("GET", format!("/ws?session_id={query}"), Vec::new())
            }
            _ => ("GET", "/state".to_owned(), input(rng, HTTP_BODY_SEEDS)),
        };
        let shown = [method.as_bytes(), b" ", path.as_bytes(), b"\n", &body].concat();
        let raised = body.windows(5).any(|w| w == b"raise");
        let request = match Request::builder()
            .method(method)
            .uri(&path)
            .header("content-type", "application/json")
            .body(Body::from(body))
        {
            Ok(request) => request,
            Err(e) => return (shown, Err(format!("request not built: {e}"))),
        };
        let outcome = async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .map_err(|e| format!("router error: {e}"))?;
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
                .await
                .map_err(|e| format!("response body: {e}"))?;
            // The echo env fails `step` on the message `raise` with a 500 by design.
            let deliberate = status == StatusCode::INTERNAL_SERVER_ERROR && raised;
            if !HTTP_STATUSES.contains(&status) && !deliberate {
                return Err(format!("status {status}: {}", bytes.escape_ascii()));
            }
            if status != StatusCode::INTERNAL_SERVER_ERROR {
                is_json(&bytes).map_err(|e| {
                    format!(
                        "status {status} body is not JSON ({e}): {}",
                        bytes.escape_ascii()
                    )
                })?;
            }
            Ok(())
        }
        .await;
        (shown, outcome)
    }

    async fn websocket(&mut self, rng: &mut Rng) -> (Vec<u8>, Result<(), String>) {
        let path = if rng.chance(1, 4) { "/mcp" } else { "/ws" };
        if self.socket.as_ref().is_none_or(|s| s.path != path) {
            match RawWs::open(self.ws_addr, path).await {
                Ok(socket) => self.socket = Some(socket),
                Err(e) => return (Vec::new(), Err(e)),
            }
        }
        let seeds = if path == "/ws" {
            FRAME_SEEDS
        } else {
            JSON_RPC_SEEDS
        };
        let payload = input(rng, seeds);
        // Mostly text frames; else a hand-made header: any FIN/RSV/opcode byte, maybe
        // unmasked, the payload cut to what a control frame may or may not carry.
        let (first, masked, payload) = if rng.chance(4, 5) {
            (0x81u8, true, payload)
        } else {
            let first = (rng.next_u64() & 0xff) as u8;
            let cut = payload.len().min(rng.below(200));
            (first, rng.chance(7, 8), payload[..cut].to_vec())
        };
        let shown = [
            path.as_bytes(),
            format!(" frame {first:#04x} masked={masked}\n").as_bytes(),
            &payload,
        ]
        .concat();
        let outcome = self.ws_exchange(first, masked, &payload).await;
        if outcome.is_err() {
            self.socket = None;
        }
        (shown, outcome)
    }

    /// Sends one frame and a probe; the server answers the probe, or closes with a code that
    /// fits what was sent.
    async fn ws_exchange(&mut self, first: u8, masked: bool, payload: &[u8]) -> Result<(), String> {
        self.probe += 1;
        let marker = format!("probe-{}", self.probe);
        let Some(socket) = self.socket.as_mut() else {
            return Err("no socket".to_owned());
        };
        let probe = if socket.path == "/ws" {
            format!(r#"{{"type":"step","data":{{"message":"{marker}"}}}}"#)
        } else {
            format!(
                r#"{{"jsonrpc":"2.0","method":"tools/call","params":{{"name":"echo_message","arguments":{{"message":"{marker}"}}}},"id":"{marker}"}}"#
            )
        };
        socket.write_frame(first, payload, masked).await?;
        let opcode = first & 0x0f;
        // The server may have closed on the first frame already: what follows may fail to
        // write, and the close frame is then read below.
        if first & 0x80 == 0 && matches!(opcode, 0x0..=0x2) {
            // A first fragment: finish the message.
            let _ = socket.write_frame(0x80, b"", true).await;
        }
        let sent_close = opcode == 0x8;
        let _ = socket.write_frame(0x81, probe.as_bytes(), true).await;
        loop {
            match socket.read_frame().await? {
                None => return Err("connection dropped without a close frame".to_owned()),
                Some((head, data)) => match head & 0x0f {
                    0x1 => {
                        let text = std::str::from_utf8(&data)
                            .map_err(|_| "server text frame is not UTF-8".to_owned())?;
                        is_json(text.as_bytes())
                            .map_err(|e| format!("server frame is not JSON ({e}): {text}"))?;
                        if text.contains(&format!("{marker}\"")) {
                            return Ok(());
                        }
                    }
                    0x8 => {
                        self.socket = None;
                        let code = match data.get(..2) {
                            Some(code) => u16::from_be_bytes([code[0], code[1]]),
                            None if sent_close => return Ok(()),
                            None => return Err("close frame without a code".to_owned()),
                        };
                        if sent_close || matches!(code, 1000 | 1002 | 1007 | 1009) {
                            return Ok(());
                        }
                        return Err(format!("close code {code}"));
                    }
                    0x9 | 0xa => {}
                    other => return Err(format!("server sent opcode {other:#x}")),
                },
            }
        }
    }
}

/// Whether `bytes` are JSON. A reply nested past serde_json's depth limit passes: a validation
/// error echoes its input, which may sit at that limit already (`docs/fuzzing.md`).
fn is_json(bytes: &[u8]) -> Result<(), serde_json::Error> {
    match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => Ok(()),
        other => other.map(drop),
    }
}

/// Runs a synchronous check, turning a panic into a failure.
fn sync_check(check: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(check))
        .unwrap_or_else(|_| Err("panicked".to_owned()))
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases run per target.
    pub cases: BTreeMap<&'static str, u64>,
    /// Time spent per target.
    pub time: BTreeMap<&'static str, Duration>,
    /// The failures, at most the number asked for.
    pub failures: Vec<Failure>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// Cases run in all.
    pub fn total(&self) -> u64 {
        self.cases.values().sum()
    }
}

/// Runs `cases` cases of each target in turn (round robin, one shared generator seeded with
/// `seed`) until done or `deadline`, keeping at most `max_failures` failures.
pub async fn run(
    harness: &mut Harness,
    targets: &[Target],
    cases: u64,
    seed: u64,
    deadline: Option<Instant>,
    max_failures: usize,
) -> Report {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut report = Report::default();
    let mut done = 0;
    'run: while done < cases {
        for &target in targets {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break 'run;
            }
            let started_case = Instant::now();
            let outcome = harness.case(target, &mut rng).await;
            *report.time.entry(target.name()).or_default() += started_case.elapsed();
            if let Err(failure) = outcome {
                report.failures.push(failure);
                if report.failures.len() >= max_failures {
                    *report.cases.entry(target.name()).or_default() += 1;
                    break 'run;
                }
            }
            *report.cases.entry(target.name()).or_default() += 1;
        }
        done += 1;
    }
    report.elapsed = started.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_checked_against_the_text() {
        assert!(check_position("é\nx", "Expecting value: line 2 column 1 (char 2)").is_ok());
        assert!(check_position("é\nx", "Expecting value: line 1 column 3 (char 2)").is_err());
        assert!(check_position("ab", "Extra data: line 1 column 4 (char 3)").is_err());
        assert!(check_position("ab", "no position").is_err());
    }

    #[test]
    fn the_generator_is_deterministic_and_covers_the_sweep() {
        let a: Vec<Vec<u8>> = {
            let mut rng = Rng::new(7);
            (0..50).map(|_| input(&mut rng, FRAME_SEEDS)).collect()
        };
        let mut rng = Rng::new(7);
        let b: Vec<Vec<u8>> = (0..50).map(|_| input(&mut rng, FRAME_SEEDS)).collect();
        assert_eq!(a, b);
        let sweep = insertion_sweep(&["{}"]);
        assert_eq!(sweep.len(), 3 * SWEEP_CHARS.len());
        assert!(sweep.contains(&"\u{feff}{}".to_owned()));
        assert!(sweep.contains(&"{}é".to_owned()));
    }
}
