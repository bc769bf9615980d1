//! asyncio awaitables for the client's futures ([`awaitable`]), driven on the event loop's
//! own thread.
//!
//! Each thread that runs asyncio calls gets a [`Driver`]: a current-thread Tokio runtime, the
//! calls in flight, and a `mio` poll that the running event loop watches with `add_reader`.
//! Every connection opened there registers its socket in that poll (through
//! [`env_client::SocketHook`], [`socket_hook`]). When a reply arrives the socket becomes
//! readable, the poll with it, and the loop's thread, woken by the kernel once, runs a
//! *tick*: it turns the runtime's I/O and time drivers, polls the woken calls (which read
//! and parse their frames) and resolves their asyncio futures. A new call is polled at once,
//! so its request frame is written before `awaitable` returns.
//!
//! Why not a runtime with worker threads (this module's first design): a reply then wakes a
//! worker, which wakes the loop, two thread hand-offs per await. On the echo env with two
//! cores that cost 1.31–1.73× the Rust client's step round trip, and pyo3-async-runtimes'
//! `future_into_py` (two tasks and a blocking-pool thread per call) about 2.6×. Here a reply
//! costs one wake-up of the loop, as it does for asyncio's own sockets.
//!
//! Wake-ups that do not come from a watched socket reach the loop through the poll's
//! `mio::Waker`: a call woken from another thread (a pool slot freed there, a DNS lookup
//! done) or by a cancellation. Timers (request and connect timeouts, the keepalive) fire when
//! the runtime is turned: while calls are in flight the loop ticks at least every
//! [`BUSY_TICK`], while only keepalive tasks live every [`IDLE_TICK`]. So a timeout fires at
//! most about [`BUSY_TICK`] late.
//!
//! One driver per thread, not per loop: successive loops on a thread (`asyncio.run` after
//! `asyncio.run`, a test framework's loop per test) share it, and the newest loop to make a
//! call serves it. A connection belongs to the thread that opened it; a call from another
//! thread raises instead of hanging (`client.rs`). While no loop runs on the thread, nothing
//! answers the server's pings, as with any asyncio client.
//!
//! Cancelling the asyncio future drops the Rust future (the connection is then abandoned by
//! `env_client`, as after any request cancelled mid-flight). A panic in a call resolves its
//! future with `OpenEnvError` instead of leaving it pending.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::errors::{Failure, to_py_err};
use crate::results::{Reply, ToPython};

/// While calls are in flight, the loop turns the runtime at least this often (timers).
pub(crate) const BUSY_TICK: Duration = Duration::from_millis(10);

/// While only background tasks (keepalives) live, the loop turns the runtime this often.
pub(crate) const IDLE_TICK: Duration = Duration::from_millis(250);

/// How many times a tick polls calls that polling itself woke before it lets the loop run.
const POLL_ROUNDS: usize = 64;

/// The poll token of the driver's waker; sockets use their descriptor.
const WAKE_TOKEN: Token = Token(usize::MAX);

/// A finished call on its way to Python: converted on the loop's thread.
trait Outcome {
    /// The Python value, or the exception, of this outcome.
    fn into_python(self: Box<Self>, py: Python<'_>) -> PyResult<Bound<'_, PyAny>>;
}

impl<T: ToPython> Outcome for Reply<T> {
    fn into_python(self: Box<Self>, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        (*self).into_pyobject(py)
    }
}

/// One finished call: its asyncio future, its cancel callback, and what to resolve it with.
struct Done {
    future: Py<PyAny>,
    /// Removed before the future is resolved, so finishing costs the loop no callback.
    on_cancel: Py<PyAny>,
    outcome: Box<dyn Outcome>,
}

/// A call in flight: `None` once aborted (its asyncio future was cancelled).
type Call = Pin<Box<dyn Future<Output = Option<Done>>>>;

thread_local! {
    /// This thread's driver, made by its first awaitable.
    static DRIVER: RefCell<Option<Rc<Driver>>> = const { RefCell::new(None) };
    /// The id of the driver whose calls this thread is polling right now (0: none).
    static POLLING: Cell<u64> = const { Cell::new(0) };
}

/// Driver ids, unique in the process (0 is "none").
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How the calls of one driver are woken.
struct Wakeup {
    /// The driver these wake-ups are for.
    driver: u64,
    /// Set by every wake; a tick polls again while it is set.
    woken: AtomicBool,
    /// Set while a wake-up sent to the loop has not been read yet.
    notified: AtomicBool,
    /// Makes the driver's poll readable, which wakes the loop.
    waker: mio::Waker,
}

impl Wakeup {
    /// Makes the poll readable, unless a wake-up is already on its way.
    fn notify(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            // On failure the loop still ticks within BUSY_TICK.
            let _ = self.waker.wake();
        }
    }
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        // Inside the driver's own tick the flag is enough: the tick polls again.
        if POLLING.get() != self.driver {
            self.notify();
        }
    }
}

/// The loop's callbacks: its poll became readable, or its timer fired.
#[pyclass(frozen)]
struct TickCallback {
    driver: u64,
    readable: bool,
}

#[pymethods]
impl TickCallback {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        // Another thread's driver (a loop run on several threads), or the parent's: not ours.
        let Some(driver) = find(self.driver) else {
            return Ok(());
        };
        if self.readable {
            driver.drain_poll();
        } else {
            *driver.timer.borrow_mut() = None;
        }
        // A tick with a driver turn.
        driver.run(py, true)
    }
}

/// A future's done-callback: aborts its call when the future was cancelled.
#[pyclass(frozen)]
struct CancelOnDone {
    call: AbortHandle,
}

#[pymethods]
impl CancelOnDone {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future
            .call_method0(pyo3::intern!(future.py(), "cancelled"))?
            .is_truthy()?
        {
            self.call.abort();
        }
        Ok(())
    }
}

/// A scheduled timer tick: its asyncio handle, and whether it is the short (busy) one.
struct Timer {
    handle: Py<PyAny>,
    busy: bool,
}

/// One thread's runtime, calls and poll, served by the event loop running on that thread.
/// Lives in the thread-local [`DRIVER`].
struct Driver {
    id: u64,
    /// The process that made it: after `fork()` its poll and runtime are the parent's.
    pid: u32,
    /// The loop that watches the poll and holds the timer: the one that made the last call.
    event_loop: RefCell<Option<Py<PyAny>>>,
    runtime: tokio::runtime::Runtime,
    poll: RefCell<mio::Poll>,
    events: RefCell<Events>,
    wakeup: Arc<Wakeup>,
    calls: RefCell<FuturesUnordered<Call>>,
    /// Calls made while a tick was polling (from a `__del__`, say): taken by that tick.
    incoming: RefCell<Vec<Call>>,
    timer: RefCell<Option<Timer>>,
    ticking: Cell<bool>,
}

impl Driver {
    fn new() -> std::io::Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE_TOKEN)?;
        Ok(Self {
            id,
            pid: std::process::id(),
            event_loop: RefCell::new(None),
            runtime,
            poll: RefCell::new(poll),
            events: RefCell::new(Events::with_capacity(64)),
            wakeup: Arc::new(Wakeup {
                driver: id,
                woken: AtomicBool::new(false),
                notified: AtomicBool::new(false),
                waker,
            }),
            calls: RefCell::new(FuturesUnordered::new()),
            incoming: RefCell::new(Vec::new()),
            timer: RefCell::new(None),
            ticking: Cell::new(false),
        })
    }

    /// Reads the poll's pending events (which only say "tick"), so it stops being readable.
    fn drain_poll(&self) {
        // Cleared first: a wake-up sent from now on makes the poll readable again.
        self.wakeup.notified.store(false, Ordering::Release);
        let mut events = self.events.borrow_mut();
        // An error (EINTR) leaves the poll readable: the loop calls again.
        let _ = self
            .poll
            .borrow_mut()
            .poll(&mut events, Some(Duration::ZERO));
    }

    /// Watches a socket of a connection opened on this loop.
    fn watch(&self, fd: RawFd) {
        // A socket that cannot be watched is still served by the timer ticks.
        let _ = self.poll.borrow().registry().register(
            &mut SourceFd(&fd),
            Token(usize::try_from(fd).unwrap_or(0)),
            Interest::READABLE,
        );
    }

    /// Adds a call and polls it at once (no driver turn: the request frame is written now,
    /// and events already waiting make the poll readable anyway).
    fn start(self: &Rc<Self>, py: Python<'_>, call: Call) -> PyResult<()> {
        // Inside a tick (a call made from a destructor it ran), that tick's polling takes it.
        self.incoming.borrow_mut().push(call);
        self.run(py, false)
    }

    /// A tick: polls the woken calls, with one turn of the runtime's I/O and time drivers
    /// when `turn` (a zero-timeout park, which also runs the runtime's own tasks), then
    /// resolves the finished calls' futures and schedules the next timer tick.
    fn run(self: &Rc<Self>, py: Python<'_>, turn: bool) -> PyResult<()> {
        if self.ticking.replace(true) {
            return Ok(());
        }
        let finished = {
            let previous = POLLING.replace(self.id);
            let finished = if turn {
                self.runtime.block_on(self.drive())
            } else {
                // Polling needs the runtime's context (timers register with it), not a park.
                let _context = self.runtime.enter();
                let mut finished = Vec::new();
                self.poll_woken(&mut finished);
                finished
            };
            POLLING.set(previous);
            finished
        };
        self.ticking.set(false);
        for done in finished {
            // A future the loop can no longer take (its loop closed) is dropped.
            let _ = resolve(py, done);
        }
        self.schedule(py)
    }

    /// The body of a turning tick, run by the runtime's `block_on`: poll what is woken, yield
    /// so the runtime parks once with a zero timeout (I/O events and due timers wake calls),
    /// and poll what that woke. Events that come later make the poll readable again.
    async fn drive(&self) -> Vec<Done> {
        let mut finished = Vec::new();
        self.poll_woken(&mut finished);
        tokio::task::yield_now().await;
        if self.wakeup.woken.load(Ordering::Acquire) {
            self.poll_woken(&mut finished);
        }
        finished
    }

    /// Polls the woken calls (and new ones) until polling wakes none, at most
    /// [`POLL_ROUNDS`] times; calls still woken then are left for the loop's next turn.
    fn poll_woken(&self, finished: &mut Vec<Done>) {
        let waker = Waker::from(Arc::clone(&self.wakeup));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..POLL_ROUNDS {
            self.wakeup.woken.store(false, Ordering::Release);
            let mut calls = self.calls.borrow_mut();
            calls.extend(self.incoming.borrow_mut().drain(..));
            while let Poll::Ready(Some(call)) = calls.poll_next_unpin(&mut cx) {
                finished.extend(call);
            }
            drop(calls);
            if !self.wakeup.woken.load(Ordering::Acquire) && self.incoming.borrow().is_empty() {
                return;
            }
        }
        // Calls that keep waking each other: let the loop's other callbacks run first.
        self.wakeup.notify();
    }

    /// Makes `event_loop` the loop that serves this driver: it watches the poll and runs the
    /// timer. A loop that served it before (an earlier `asyncio.run` on this thread) lets go.
    fn attach(&self, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = event_loop.py();
        if let Some(current) = &*self.event_loop.borrow() {
            if current.bind(py).is(event_loop) {
                return Ok(());
            }
            // Best effort: a closed loop has nothing to let go of.
            let _ = current
                .bind(py)
                .call_method1("remove_reader", (self.poll.borrow().as_raw_fd(),));
        }
        if let Some(timer) = self.timer.borrow_mut().take() {
            let _ = timer.handle.bind(py).call_method0("cancel");
        }
        event_loop.call_method1(
            "add_reader",
            (
                self.poll.borrow().as_raw_fd(),
                TickCallback {
                    driver: self.id,
                    readable: true,
                },
            ),
        )?;
        *self.event_loop.borrow_mut() = Some(event_loop.clone().unbind());
        Ok(())
    }

    /// Keeps a timer tick scheduled while the runtime has work that may wait on a timer.
    fn schedule(&self, py: Python<'_>) -> PyResult<()> {
        let busy = !self.calls.borrow().is_empty();
        if !busy && self.runtime.metrics().num_alive_tasks() == 0 {
            return Ok(());
        }
        let mut timer = self.timer.borrow_mut();
        match &*timer {
            // A short tick is due anyway, or a long one and nothing is in flight.
            Some(current) if current.busy || !busy => return Ok(()),
            Some(idle) => {
                idle.handle.bind(py).call_method0("cancel")?;
            }
            None => {}
        }
        let delay = if busy { BUSY_TICK } else { IDLE_TICK };
        let event_loop = self.event_loop.borrow();
        let Some(event_loop) = &*event_loop else {
            return Ok(());
        };
        let handle = event_loop.bind(py).call_method1(
            pyo3::intern!(py, "call_later"),
            (
                delay.as_secs_f64(),
                TickCallback {
                    driver: self.id,
                    readable: false,
                },
            ),
        )?;
        *timer = Some(Timer {
            handle: handle.unbind(),
            busy,
        });
        Ok(())
    }
}

/// This thread's driver, if its id is `id` and it is this process's (a loop that goes on
/// running in a child of `fork()` must not turn the parent's runtime).
fn find(id: u64) -> Option<Rc<Driver>> {
    DRIVER.with_borrow(|driver| {
        driver
            .as_ref()
            .filter(|d| d.id == id && d.pid == std::process::id())
            .cloned()
    })
}

/// This thread's driver, made on first use, attached to `event_loop`.
fn driver_for(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Rc<Driver>> {
    let pid = std::process::id();
    let driver = match DRIVER.with_borrow(Clone::clone) {
        Some(driver) if driver.pid == pid => driver,
        _ => {
            let driver =
                Rc::new(Driver::new().map_err(|err| to_py_err(py, Failure::Runtime(err)))?);
            if let Some(parent) = DRIVER.replace(Some(Rc::clone(&driver))) {
                // Made before fork(): its runtime and poll are the parent's, not ours to
                // tear down.
                std::mem::forget(parent);
            }
            driver
        }
    };
    driver.attach(event_loop)?;
    Ok(driver)
}

/// The id of the driver polling on this thread right now, if any: a connection made now
/// belongs to it.
pub(crate) fn polling_driver() -> Option<u64> {
    Some(POLLING.get()).filter(|&id| id != 0)
}

/// The [`env_client::SocketHook`] of every client config: a socket connected while a driver
/// polls is watched by its poll. Elsewhere (the blocking client's runtime) it does
/// nothing.
pub(crate) fn socket_hook() -> env_client::SocketHook {
    env_client::SocketHook::new(|fd| {
        if let Some(driver) = polling_driver().and_then(find) {
            driver.watch(fd);
        }
    })
}

/// Sets a future's result or exception, unless it was cancelled meanwhile.
fn resolve(py: Python<'_>, done: Done) -> PyResult<()> {
    let future = done.future.bind(py);
    if future
        .call_method0(pyo3::intern!(py, "cancelled"))?
        .is_truthy()?
    {
        return Ok(());
    }
    future.call_method1(pyo3::intern!(py, "remove_done_callback"), (done.on_cancel,))?;
    match done.outcome.into_python(py) {
        Ok(value) => future.call_method1(pyo3::intern!(py, "set_result"), (value,))?,
        Err(err) => future.call_method1(pyo3::intern!(py, "set_exception"), (err.value(py),))?,
    };
    Ok(())
}

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// An `asyncio.Future` of the running loop that resolves with `fut`'s result (converted by
/// [`ToPython`]) or raises its failure. Must be called from a coroutine (a running loop).
pub(crate) fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, Failure>> + 'static,
    T: ToPython + 'static,
{
    let event_loop = GET_RUNNING_LOOP
        .import(py, "asyncio", "get_running_loop")?
        .call0()?;
    if tokio::runtime::Handle::try_current().is_ok() && polling_driver().is_none() {
        // Python running inside a Tokio runtime's thread: a driver cannot block_on there.
        return Err(to_py_err(py, Failure::InsideRuntime));
    }
    let driver = driver_for(py, &event_loop)?;
    let future = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
    let (abort, registration) = AbortHandle::new_pair();
    let on_cancel = Bound::new(py, CancelOnDone { call: abort })?.into_any();
    future.call_method1(pyo3::intern!(py, "add_done_callback"), (&on_cancel,))?;
    let target = future.clone().unbind();
    let on_cancel = on_cancel.unbind();
    let call = async move {
        // Unconstrained: a tick polls many calls in one `block_on` poll, and Tokio's
        // cooperative budget would otherwise defer wake-ups past the tick's one park.
        let result = AssertUnwindSafe(tokio::task::unconstrained(fut))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(Failure::Panic(panic_message(&*panic))));
        Done {
            future: target,
            on_cancel,
            outcome: Box::new(Reply(result)),
        }
    };
    driver.start(
        py,
        Box::pin(Abortable::new(call, registration).map(Result::ok)),
    )?;
    Ok(future)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
