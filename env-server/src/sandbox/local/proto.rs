//! The control protocol between the server and the in-sandbox supervisor (`sbx`).
//!
//! Two pipes, passed to bwrap as inherited descriptors and handed on to `sbx` (never bwrap's
//! own stdio: bwrap's PID 1 keeps its stdio open and is readable by the agent through
//! `/proc/1/fd`, while `sbx` is non-dumpable). Every message is one frame:
//!
//! ```text
//! len: u32 LE (bytes after this field) | kind: u8 | id: u64 LE | hlen: u32 LE | header | payload
//! ```
//!
//! `header` is a small JSON object (or empty), `payload` raw bytes (stdin, output chunks,
//! captured output). `id` names the request a frame belongs to, so replies and the output of
//! spawned processes interleave freely. Internal to this crate: both ends are built together.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest frame accepted (a sanity bound; exec output is capped well below it).
pub(crate) const MAX_FRAME: usize = 1 << 30;
/// Share of the output cap kept from the start of a stream (the rest is the tail).
pub(crate) const HEAD_FRACTION: f64 = 0.25;
/// Output bytes of a spawned process `sbx` may send before the server grants more.
pub(crate) const CREDIT_WINDOW: u64 = 1 << 20;
/// The server returns credit in batches of at least this many consumed bytes.
pub(crate) const CREDIT_BATCH: u64 = 256 << 10;
/// Largest output chunk in one frame.
pub(crate) const CHUNK: usize = 64 << 10;

/// Frame kinds. Server → `sbx` below 64, `sbx` → server from 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Run a command to completion: [`ExecHeader`], payload = stdin bytes.
    Exec = 1,
    /// Start a process with streaming stdio: [`SpawnHeader`].
    Spawn = 2,
    /// Bytes for a spawned process's stdin (id = the spawn's id).
    Stdin = 3,
    /// Kill the session of an exec or spawn: [`KillHeader`]; answered by `Ack`.
    Kill = 4,
    /// SIGKILL every process but PID 1 and `sbx`; answered by `Ack` when none remain.
    KillAll = 5,
    /// Kill everything and exit (no answer: the server waits for bwrap to exit).
    Shutdown = 6,
    /// More output credit for a spawned process: [`CreditHeader`].
    Credit = 7,
    /// `sbx` is ready (id 0): [`ReadyHeader`].
    Ready = 64,
    /// An exec finished: [`ExecDoneHeader`], payload = stdout head, tail, stderr head, tail.
    ExecDone = 65,
    /// A spawn started: [`SpawnedHeader`].
    Spawned = 66,
    /// A chunk of a spawned process's stdout.
    Stdout = 67,
    /// A chunk of a spawned process's stderr.
    Stderr = 68,
    /// A spawned process exited (its last frame): [`ExitedHeader`].
    Exited = 69,
    /// A `Kill` or `KillAll` is done.
    Ack = 70,
    /// A request failed: [`ErrorHeader`].
    Error = 71,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Exec,
            2 => Self::Spawn,
            3 => Self::Stdin,
            4 => Self::Kill,
            5 => Self::KillAll,
            6 => Self::Shutdown,
            7 => Self::Credit,
            64 => Self::Ready,
            65 => Self::ExecDone,
            66 => Self::Spawned,
            67 => Self::Stdout,
            68 => Self::Stderr,
            69 => Self::Exited,
            70 => Self::Ack,
            71 => Self::Error,
            _ => return None,
        })
    }
}

/// `Exec` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExecHeader {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout_ms: u64,
    pub max_output: u64,
    /// Whether the payload is stdin (else stdin is `/dev/null`).
    pub stdin: bool,
}

/// `Spawn` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SpawnHeader {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
}

/// `Kill` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KillHeader {
    pub target: u64,
}

/// `Credit` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CreditHeader {
    pub bytes: u64,
}

/// `Ready` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReadyHeader {
    pub version: String,
    /// `readlink /proc/self/ns/pid` inside: how the host recognises the sandbox's processes.
    pub pid_ns: String,
}

/// Lengths of one captured stream in an `ExecDone` payload.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct StreamLens {
    pub head: u64,
    pub tail: u64,
    pub total: u64,
}

/// `ExecDone` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExecDoneHeader {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_us: u64,
    pub stdout: StreamLens,
    pub stderr: StreamLens,
}

/// `Spawned` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SpawnedHeader {
    pub pid: i32,
}

/// `Exited` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExitedHeader {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// `Error` header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ErrorHeader {
    pub message: String,
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub header: Bytes,
    pub payload: Bytes,
}

impl Frame {
    /// The header as `T`.
    pub(crate) fn header<T: DeserializeOwned>(&self) -> std::io::Result<T> {
        serde_json::from_slice(&self.header).map_err(|e| invalid(format!("bad header: {e}")))
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Encodes a frame with a JSON header (`None` = empty header) and payload parts.
pub(crate) fn encode<H: Serialize>(
    kind: Kind,
    id: u64,
    header: Option<&H>,
    payload: &[&[u8]],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + payload.iter().map(|p| p.len()).sum::<usize>());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind as u8);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    if let Some(h) = header {
        // Serialising these plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut buf, h);
    }
    let hlen = buf.len() - 17;
    for p in payload {
        buf.extend_from_slice(p);
    }
    let len = buf.len() - 4;
    #[allow(clippy::cast_possible_truncation)] // frames are far below 4 GiB
    {
        buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        buf[13..17].copy_from_slice(&(hlen as u32).to_le_bytes());
    }
    buf
}

/// Encodes a frame without a header.
pub(crate) fn encode_raw(kind: Kind, id: u64, payload: &[u8]) -> Vec<u8> {
    encode::<()>(kind, id, None, &[payload])
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(13..=MAX_FRAME).contains(&len) {
        return Err(invalid(format!("bad frame length {len}")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let body = Bytes::from(body);
    let kind =
        Kind::from_u8(body[0]).ok_or_else(|| invalid(format!("bad frame kind {}", body[0])))?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&body[1..9]);
    let mut hlen = [0u8; 4];
    hlen.copy_from_slice(&body[9..13]);
    let hlen = u32::from_le_bytes(hlen) as usize;
    if hlen > len - 13 {
        return Err(invalid(format!("bad header length {hlen}")));
    }
    Ok(Some(Frame {
        kind,
        id: u64::from_le_bytes(id),
        header: body.slice(13..13 + hlen),
        payload: body.slice(13 + hlen..),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let h = KillHeader { target: 7 };
        let mut wire = encode(Kind::Kill, 42, Some(&h), &[b"ab", b"c"]);
        wire.extend(encode_raw(Kind::Stdout, u64::MAX, b"\xff\x00"));
        let mut r = &wire[..];
        let f = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!((f.kind, f.id), (Kind::Kill, 42));
        assert_eq!(f.header::<KillHeader>().unwrap().target, 7);
        assert_eq!(&f.payload[..], b"abc");
        let f = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!((f.kind, f.id, f.header.len()), (Kind::Stdout, u64::MAX, 0));
        assert_eq!(&f.payload[..], b"\xff\x00");
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_garbage() {
        let mut r = &[1u8, 0, 0, 0, 9][..];
        assert!(read_frame(&mut r).await.is_err());
        let mut wire = encode_raw(Kind::Ack, 1, b"");
        wire[4] = 200;
        assert!(read_frame(&mut &wire[..]).await.is_err());
    }
}
