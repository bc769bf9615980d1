//! The Tokio runtime of the bindings: one per process, rebuilt in a forked child.
//!
//! After `fork()` only the forking thread exists in the child, so a runtime inherited from the
//! parent has no worker threads and its first await hangs (delta-rs #2744, obstore #441).
//! Trainers fork data-loader workers, so the child must work: [`runtime`] tags the runtime
//! with the pid that built it and builds a fresh one when the pid differs, leaking the
//! parent's (its threads do not exist here; dropping it would try to join them).
//!
//! The blocking `EnvClient` uses it (`block_on`), and its worker threads run the keepalive
//! tasks that answer the server's pings while the trainer does something else. The asyncio
//! client does not: it runs on a current-thread runtime of its event loop's thread
//! (`bridge.rs`).
//!
//! Clients check their owner pid themselves (`client.rs`): a connection opened before the
//! fork belongs to the parent and is never touched, nor dropped, in the child.

use std::sync::{Mutex, PoisonError};

use tokio::runtime::{Builder, Runtime};

/// The process's runtime and the pid that built it. Never shared across a fork.
static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// The runtime of this process, built on first use (and again in a forked child).
pub(crate) fn runtime() -> std::io::Result<&'static Runtime> {
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    match *slot {
        Some((owner, rt)) if owner == pid => Ok(rt),
        _ => {
            // A parent's runtime (if any) has no threads here: leak it and build ours.
            let rt = Builder::new_multi_thread()
                .enable_all()
                .thread_name("openenv-rs")
                .build()?;
            let rt: &'static Runtime = Box::leak(Box::new(rt));
            *slot = Some((pid, rt));
            Ok(rt)
        }
    }
}
