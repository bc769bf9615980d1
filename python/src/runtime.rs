//! The Tokio runtime of the bindings: one per process, rebuilt in a forked child.
//!
//! After `fork()` only the forking thread exists in the child, so a runtime inherited from the
//! parent has no worker threads and its first await hangs (delta-rs #2744, obstore #441).
//! Trainers fork data-loader workers, so the child must work: [`runtime`] tags the runtime
//! with the pid that built it and builds a fresh one when the pid differs, leaking the
//! parent's (its threads do not exist here; dropping it would try to join them).
//!
//! pyo3-async-runtimes keeps its own runtime in a `OnceLock` that a child cannot replace, so
//! the async API does not use it: [`ForkSafe`] implements pyo3-async-runtimes' generic runtime
//! traits on top of [`runtime`], and every awaitable is created with that runtime entered
//! ([`future_into_py`]).
//!
//! Clients check their owner pid themselves (`client.rs`): a connection opened before the
//! fork belongs to the parent and is never touched, nor dropped, in the child.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use pyo3_async_runtimes::generic::{ContextExt, Runtime as AsyncRuntime};
use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

use crate::errors::{Failure, to_py_err};

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

/// pyo3-async-runtimes' view of [`runtime`]. Its spawns use the runtime entered by
/// [`future_into_py`] (the outer spawn) or the task they run in (the inner ones).
pub(crate) struct ForkSafe;

tokio::task_local! {
    /// The asyncio event loop and context of the awaitable a task serves.
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

impl AsyncRuntime for ForkSafe {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(fut)
    }

    /// pyo3-async-runtimes calls this to hand a result to Python: attach to the interpreter,
    /// then `loop.call_soon_threadsafe`. It runs right here, on the worker that finished the
    /// request, inside `block_in_place` (the worker's other tasks move to another thread
    /// while this one may wait for the GIL), instead of hopping to the blocking pool first:
    /// one thread wake-up less on every await.
    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        tokio::spawn(async move { tokio::task::block_in_place(f) })
    }
}

impl ContextExt for ForkSafe {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(TASK_LOCALS.scope(OnceCell::from(locals), fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|cell| cell.get().cloned())
            .unwrap_or_default()
    }
}

/// Turns `fut` into an asyncio awaitable bound to the running event loop, run on this
/// process's runtime. `T` becomes the awaitable's result when the future ends, converted
/// while attached to the interpreter (so conversion errors, and our own exceptions, are
/// raised by the `await`).
pub(crate) fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = T> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let rt = runtime().map_err(|err| to_py_err(py, Failure::Runtime(err)))?;
    let _entered = rt.enter();
    pyo3_async_runtimes::generic::future_into_py::<ForkSafe, _, T>(py, async move { Ok(fut.await) })
}
