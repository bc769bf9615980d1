//! Who owns what: per-sandbox host uids and the labels that let a server recognise — and
//! remove — sandboxes left by a crashed predecessor.
//!
//! - A root server gives each sandbox its own unprivileged host uid from a configured range,
//!   claimed by binding an abstract unix socket named after it: atomic across every server on
//!   the machine, released by the kernel when the owner dies, no files to go stale.
//! - Sandbox ids are random (nothing about the host). On the host, a sandbox goes by
//!   `<pid>s<start time>-<id>`: the owner process can be checked from that name alone (a
//!   reused pid has another start time). The episode directory is `openenv-rs-<host name>`
//!   under the sandbox root, holding only an `owner` marker (JSON: pid, start time, id, uid,
//!   labels); the cgroups are `openenv-rs/<host name>`.

use std::collections::BTreeMap;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use super::procfs;
use crate::sandbox::SandboxError;

/// Prefix of every episode directory.
pub(super) const DIR_PREFIX: &str = "openenv-rs-";

/// A claimed host uid, released on drop.
#[derive(Debug)]
pub(super) struct UidClaim {
    uid: u32,
    _socket: UnixDatagram,
}

impl UidClaim {
    /// The uid.
    pub(super) fn uid(&self) -> u32 {
        self.uid
    }
}

fn bind(uid: u32) -> std::io::Result<UnixDatagram> {
    let addr = SocketAddr::from_abstract_name(format!("openenv-rs/sandbox-uid/{uid}"))?;
    UnixDatagram::bind_addr(&addr)
}

/// Claims a free uid in `base .. base + count`.
pub(super) fn claim_uid(base: u32, count: u32) -> Result<UidClaim, SandboxError> {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start each process at a random place so servers sharing the range rarely collide.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        uuid::Uuid::new_v4().as_u128() as u32 % count,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..count {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % count;
        let Some(uid) = base.checked_add(offset) else {
            continue;
        };
        match bind(uid) {
            Ok(socket) => {
                return Ok(UidClaim {
                    uid,
                    _socket: socket,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => {
                return Err(SandboxError::CreateFailed {
                    reason: format!("cannot claim a sandbox uid: {e}"),
                });
            }
        }
    }
    Err(SandboxError::CreateFailed {
        reason: format!("all {count} sandbox uids are in use"),
    })
}

/// Whether some live server holds `uid`.
pub(super) fn uid_is_claimed(uid: u32) -> bool {
    bind(uid).is_err()
}

/// This process as an owner: `<pid>s<start time>`.
pub(super) fn instance() -> String {
    format!("{}s{}", std::process::id(), procfs::self_start_time())
}

/// The owner (pid, start time) named by a sandbox's host name (`<pid>s<start>-<id>`).
pub(super) fn owner_of(id: &str) -> Option<(i32, u64)> {
    let (owner, seq) = id.rsplit_once('-')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let (pid, start) = owner.split_once('s')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Whether the owner of the sandbox with host name `id` is alive; malformed names count as
/// alive (not ours).
pub(super) fn owner_alive(id: &str) -> bool {
    owner_of(id).is_none_or(|(pid, start)| procfs::is_alive(pid, start))
}

/// The `owner` marker in an episode directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Marker {
    /// Owner pid.
    pub pid: i32,
    /// Owner start time (clock ticks after boot).
    pub start: u64,
    /// Sandbox id (the random one clients see).
    pub id: String,
    /// The sandbox's host uid, if it has its own.
    pub uid: Option<u32>,
    /// The spec's labels.
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_owner() {
        let me = instance();
        assert!(owner_alive(&format!("{me}-3")));
        assert_eq!(owner_of("12s34-5"), Some((12, 34)));
        assert_eq!(owner_of("12s34-0f3a9c"), Some((12, 34)));
        assert!(owner_of("12s34-").is_none() && owner_of("12s34-a.b").is_none());
        assert!(!owner_alive(&format!("{}s1-1", std::process::id())));
        assert!(owner_of("junk").is_none() && owner_alive("junk"));
    }

    #[test]
    fn uid_claims_are_exclusive() {
        let a = claim_uid(3_000_000, 2).unwrap();
        let b = claim_uid(3_000_000, 2).unwrap();
        assert_ne!(a.uid(), b.uid());
        assert!(claim_uid(3_000_000, 2).is_err());
        assert!(uid_is_claimed(a.uid()));
        let freed = a.uid();
        drop(a);
        assert!(!uid_is_claimed(freed));
    }
}
