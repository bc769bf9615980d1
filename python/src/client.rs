//! `EnvClient` (blocking) and `AsyncEnvClient` (asyncio): one WebSocket session each,
//! wrapping [`env_client::EnvClient`]. Both hold a [`Core`]; the sync methods run its futures
//! with `block_on` on the process runtime with the interpreter released (`py.detach`), the
//! async ones return asyncio futures driven on the event loop's thread (`bridge.rs`).
//!
//! A client connects on first use (or `connect()`, `with`, `async with`), as OpenEnv's
//! clients do, and cannot be reopened after `close()`.
//!
//! Fork safety: a [`Core`] remembers the pid that created it. In another process (a child
//! made by `fork()`) every call fails with `ForkError`, and dropping it leaks its connection
//! instead of closing it: the socket and its epoll registration are shared with the parent,
//! which still uses them.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use env_client::client::ws_url;
use env_client::protocol::{EnvState, JsonMap, Tool, VerifyResult};
use env_client::{ClientConfig, ClientError, PooledClient, StepResult, ToolCall};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::bridge::{awaitable, polling_driver, socket_hook};
use crate::convert;
use crate::errors::{Failure, to_py_err};
use crate::results::{Reply, ToPython, ToolCallFull, ToolValue, Tools};
use crate::runtime::runtime;

/// The connection behind a client: direct, or a session of a pool (which frees its slot when
/// dropped).
pub(crate) enum Session {
    /// A connection of its own.
    Direct(env_client::EnvClient),
    /// A connection taken from a `Pool`.
    Pooled(PooledClient),
}

impl Session {
    fn client(&self) -> &env_client::EnvClient {
        match self {
            Self::Direct(client) => client,
            Self::Pooled(client) => client,
        }
    }
}

/// Where a client is in its life.
enum Slot {
    /// Not connected yet.
    Unopened,
    /// Connected (calls may still fail, e.g. after the server closed the connection).
    Open(Arc<Session>),
    /// `close()` was called.
    Closed,
}

/// The state shared by a Python client object and its calls in flight.
pub(crate) struct Core {
    /// The `/ws` URL.
    url: String,
    config: ClientConfig,
    /// The process that created this client.
    pid: u32,
    /// Whether it came from a pool (for messages).
    what: &'static str,
    slot: Mutex<Slot>,
    /// Serialises the lazy connect, so concurrent first calls open one connection.
    connecting: tokio::sync::Mutex<()>,
    /// The driver (one per thread, `bridge.rs`) whose poll watches the connection; 0 for a
    /// blocking client's, which runs on the process runtime.
    home: AtomicU64,
}

impl Drop for Core {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // A child of fork(): the connection is the parent's. Dropping it would deregister
            // the socket from the epoll set the parent shares, so leak it.
            let slot = std::mem::replace(
                self.slot.get_mut().unwrap_or_else(PoisonError::into_inner),
                Slot::Closed,
            );
            std::mem::forget(slot);
        }
    }
}

impl Core {
    /// A client built from a Python constructor's arguments (`connect_timeout`,
    /// `request_timeout`, `keepalive_interval` in seconds), errors raised as Python exceptions.
    fn from_args(
        py: Python<'_>,
        url: &str,
        connect_timeout: f64,
        request_timeout: Option<f64>,
        keepalive_interval: Option<f64>,
        max_message_bytes: usize,
        class: &'static str,
    ) -> PyResult<Self> {
        config(
            connect_timeout,
            request_timeout,
            keepalive_interval,
            max_message_bytes,
        )
        .and_then(|config| Self::new(url, config, class))
        .map_err(|failure| to_py_err(py, failure))
    }

    /// A client for `url` that connects on first use.
    pub(crate) fn new(
        url: &str,
        config: ClientConfig,
        what: &'static str,
    ) -> Result<Self, Failure> {
        Ok(Self {
            url: ws_url(url)?,
            config,
            pid: std::process::id(),
            what,
            slot: Mutex::new(Slot::Unopened),
            connecting: tokio::sync::Mutex::new(()),
            home: AtomicU64::new(0),
        })
    }

    /// A client over a session a pool opened on the driver `home` (`None`: none).
    pub(crate) fn pooled(client: PooledClient, config: ClientConfig, home: Option<u64>) -> Self {
        Self {
            url: client.url().to_owned(),
            config,
            pid: std::process::id(),
            what: "pooled AsyncEnvClient",
            slot: Mutex::new(Slot::Open(Arc::new(Session::Pooled(client)))),
            connecting: tokio::sync::Mutex::new(()),
            home: AtomicU64::new(home.unwrap_or(0)),
        }
    }

    /// Fails when the connection belongs to another thread's driver than the one polling
    /// now: only the loops of its own thread are woken by its socket.
    fn check_thread(&self) -> Result<(), Failure> {
        let home = self.home.load(Ordering::Acquire);
        if home == 0 || polling_driver() == Some(home) {
            Ok(())
        } else {
            Err(Failure::OtherThread { what: self.what })
        }
    }

    fn check_pid(&self) -> Result<(), Failure> {
        if std::process::id() == self.pid {
            Ok(())
        } else {
            Err(Failure::Fork {
                owner: self.pid,
                what: self.what,
            })
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open session, `None` if not connected yet.
    fn current(&self) -> Result<Option<Arc<Session>>, Failure> {
        match &*self.lock() {
            Slot::Open(session) => Ok(Some(Arc::clone(session))),
            Slot::Unopened => Ok(None),
            Slot::Closed => Err(closed_by_client()),
        }
    }

    /// The session, connecting first if needed.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, Failure> {
        self.check_pid()?;
        self.check_thread()?;
        if let Some(session) = self.current()? {
            return Ok(session);
        }
        let _connecting = self.connecting.lock().await;
        self.check_thread()?;
        if let Some(session) = self.current()? {
            return Ok(session);
        }
        let client = env_client::EnvClient::connect_with(&self.url, self.config.clone()).await?;
        let session = Arc::new(Session::Direct(client));
        let mut slot = self.lock();
        match &*slot {
            Slot::Closed => Err(closed_by_client()),
            Slot::Open(existing) => Ok(Arc::clone(existing)),
            Slot::Unopened => {
                *slot = Slot::Open(Arc::clone(&session));
                if let Some(driver) = polling_driver() {
                    self.home.store(driver, Ordering::Release);
                }
                Ok(session)
            }
        }
    }

    /// Ends the session (`{"type":"close"}`, close 1000). Later calls fail; a second close
    /// does nothing.
    pub(crate) async fn close(&self) -> Result<(), Failure> {
        self.check_pid()?;
        self.check_thread()?;
        let previous = std::mem::replace(&mut *self.lock(), Slot::Closed);
        if let Slot::Open(session) = previous {
            session.client().shutdown().await?;
        }
        Ok(())
    }

    async fn reset(&self, kwargs: JsonMap) -> Result<StepResult, Failure> {
        Ok(self.session().await?.client().reset(kwargs).await?)
    }

    async fn step(&self, action: JsonMap) -> Result<StepResult, Failure> {
        Ok(self.session().await?.client().step(action).await?)
    }

    async fn state(&self) -> Result<EnvState, Failure> {
        Ok(self.session().await?.client().state().await?)
    }

    async fn verify(&self) -> Result<VerifyResult, Failure> {
        Ok(self.session().await?.client().verify().await?)
    }

    async fn list_tools(&self) -> Result<Vec<Tool>, Failure> {
        Ok(self.session().await?.client().list_tools().await?)
    }

    async fn call_tool(&self, name: String, arguments: JsonMap) -> Result<ToolCall, Failure> {
        Ok(self
            .session()
            .await?
            .client()
            .call_tool(&name, arguments)
            .await?)
    }

    fn is_closed(&self) -> bool {
        matches!(*self.lock(), Slot::Closed)
    }
}

fn closed_by_client() -> Failure {
    Failure::Client(ClientError::Closed {
        code: None,
        reason: "the client was closed".to_owned(),
    })
}

/// Client settings from Python keyword arguments (seconds as floats, `None` = no limit or
/// no keepalive).
pub(crate) fn config(
    connect_timeout: f64,
    request_timeout: Option<f64>,
    keepalive_interval: Option<f64>,
    max_message_bytes: usize,
) -> Result<ClientConfig, Failure> {
    let seconds = |name: &str, value: f64| {
        Duration::try_from_secs_f64(value)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Failure::Client(ClientError::InvalidConfig {
                    reason: format!("{name} must be a positive number of seconds, got {value}"),
                })
            })
    };
    if max_message_bytes == 0 {
        return Err(Failure::Client(ClientError::InvalidConfig {
            reason: "max_message_bytes must be positive".to_owned(),
        }));
    }
    Ok(ClientConfig::default()
        .with_connect_timeout(seconds("connect_timeout", connect_timeout)?)
        .with_request_timeout(
            request_timeout
                .map(|t| seconds("request_timeout", t))
                .transpose()?,
        )
        .with_keepalive_interval(
            keepalive_interval
                .map(|t| seconds("keepalive_interval", t))
                .transpose()?,
        )
        .with_max_message_bytes(max_message_bytes)
        .with_on_socket(Some(socket_hook())))
}

/// Runs `fut` to completion on the process runtime with the interpreter released, and
/// converts its result.
fn block<'py, T, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    T: ToPython,
    F: Future<Output = Result<T, Failure>> + Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(to_py_err(py, Failure::InsideRuntime));
    }
    let rt = runtime().map_err(|err| to_py_err(py, Failure::Runtime(err)))?;
    let result = py.detach(|| rt.block_on(fut));
    Reply(result).into_pyobject(py)
}

/// `(exc_type, exc, tb)` of `__exit__`: whether an exception is propagating.
fn exception_pending(exc_type: &Bound<'_, PyAny>) -> bool {
    !exc_type.is_none()
}

/// A blocking client: one WebSocket session to an OpenEnv server.
///
/// Every call releases the GIL while it waits for the server, so other Python threads run.
#[pyclass(frozen, module = "openenv_rs")]
pub struct EnvClient {
    core: Arc<Core>,
}

#[pymethods]
impl EnvClient {
    #[new]
    #[pyo3(signature = (
        base_url,
        *,
        connect_timeout = 10.0,
        request_timeout = Some(60.0),
        keepalive_interval = Some(5.0),
        max_message_bytes = 104_857_600,
    ), text_signature = "(base_url, *, connect_timeout=10.0, request_timeout=60.0, keepalive_interval=5.0, max_message_bytes=104857600)")]
    fn new(
        py: Python<'_>,
        base_url: &str,
        connect_timeout: f64,
        request_timeout: Option<f64>,
        keepalive_interval: Option<f64>,
        max_message_bytes: usize,
    ) -> PyResult<Self> {
        let core = Core::from_args(
            py,
            base_url,
            connect_timeout,
            request_timeout,
            keepalive_interval,
            max_message_bytes,
            "EnvClient",
        )?;
        Ok(Self {
            core: Arc::new(core),
        })
    }

    /// The `/ws` URL of the server.
    #[getter]
    fn url(&self) -> &str {
        &self.core.url
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    fn connect(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let core = Arc::clone(&slf.get().core);
        block(slf.py(), async move { core.session().await.map(|_| ()) })?;
        Ok(slf)
    }

    #[pyo3(signature = (**kwargs))]
    fn reset<'py>(
        &self,
        py: Python<'py>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = convert::kwargs_to_json(kwargs)?;
        let core = &self.core;
        block(py, core.reset(kwargs))
    }

    fn step<'py>(
        &self,
        py: Python<'py>,
        action: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let action = convert::to_json_map(action, "action")?;
        block(py, self.core.step(action))
    }

    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        block(py, self.core.state())
    }

    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        block(py, self.core.verify())
    }

    fn list_tools<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = &self.core;
        block(py, async move { core.list_tools().await.map(Tools) })
    }

    #[pyo3(signature = (name, /, **arguments))]
    fn call_tool<'py>(
        &self,
        py: Python<'py>,
        name: String,
        arguments: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arguments = convert::kwargs_to_json(arguments)?;
        let core = &self.core;
        block(py, async move {
            core.call_tool(name, arguments).await.map(ToolValue)
        })
    }

    #[pyo3(signature = (name, /, **arguments))]
    fn call_tool_result<'py>(
        &self,
        py: Python<'py>,
        name: String,
        arguments: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arguments = convert::kwargs_to_json(arguments)?;
        let core = &self.core;
        block(py, async move {
            core.call_tool(name, arguments).await.map(ToolCallFull)
        })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        block(py, self.core.close()).map(drop)
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        Self::connect(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let propagating = _args
            .get_item(0)
            .is_ok_and(|exc_type| exception_pending(&exc_type));
        match block(py, self.core.close()) {
            // Never mask the exception that is leaving the block.
            Err(_) if propagating => Ok(false),
            other => other.map(|_| false),
        }
    }

    fn __repr__(&self) -> String {
        format!("EnvClient(url={:?})", self.core.url)
    }
}

/// An asyncio client: one WebSocket session to an OpenEnv server; every method returns an
/// awaitable. Driven on the event loop's own thread (`bridge.rs`); it belongs to the thread
/// that opened it, whose successive event loops may all use it.
#[pyclass(frozen, module = "openenv_rs")]
pub struct AsyncEnvClient {
    core: Arc<Core>,
}

impl AsyncEnvClient {
    /// A Python object over a core (a pool's session).
    pub(crate) fn from_core(core: Core) -> Self {
        Self {
            core: Arc::new(core),
        }
    }
}

#[pymethods]
impl AsyncEnvClient {
    #[new]
    #[pyo3(signature = (
        base_url,
        *,
        connect_timeout = 10.0,
        request_timeout = Some(60.0),
        keepalive_interval = Some(5.0),
        max_message_bytes = 104_857_600,
    ), text_signature = "(base_url, *, connect_timeout=10.0, request_timeout=60.0, keepalive_interval=5.0, max_message_bytes=104857600)")]
    fn new(
        py: Python<'_>,
        base_url: &str,
        connect_timeout: f64,
        request_timeout: Option<f64>,
        keepalive_interval: Option<f64>,
        max_message_bytes: usize,
    ) -> PyResult<Self> {
        let core = Core::from_args(
            py,
            base_url,
            connect_timeout,
            request_timeout,
            keepalive_interval,
            max_message_bytes,
            "AsyncEnvClient",
        )?;
        Ok(Self::from_core(core))
    }

    /// The `/ws` URL of the server.
    #[getter]
    fn url(&self) -> &str {
        &self.core.url
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    fn connect<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let core = Arc::clone(&slf.get().core);
        let this = slf.clone().unbind();
        awaitable(slf.py(), async move { core.session().await.map(|_| this) })
    }

    #[pyo3(signature = (**kwargs))]
    fn reset<'py>(
        &self,
        py: Python<'py>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = convert::kwargs_to_json(kwargs)?;
        let core = Arc::clone(&self.core);
        awaitable(py, async move { core.reset(kwargs).await })
    }

    fn step<'py>(
        &self,
        py: Python<'py>,
        action: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let action = convert::to_json_map(action, "action")?;
        let core = Arc::clone(&self.core);
        awaitable(py, async move { core.step(action).await })
    }

    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = Arc::clone(&self.core);
        awaitable(py, async move { core.state().await })
    }

    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = Arc::clone(&self.core);
        awaitable(py, async move { core.verify().await })
    }

    fn list_tools<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = Arc::clone(&self.core);
        awaitable(py, async move { core.list_tools().await.map(Tools) })
    }

    #[pyo3(signature = (name, /, **arguments))]
    fn call_tool<'py>(
        &self,
        py: Python<'py>,
        name: String,
        arguments: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arguments = convert::kwargs_to_json(arguments)?;
        let core = Arc::clone(&self.core);
        awaitable(py, async move {
            core.call_tool(name, arguments).await.map(ToolValue)
        })
    }

    #[pyo3(signature = (name, /, **arguments))]
    fn call_tool_result<'py>(
        &self,
        py: Python<'py>,
        name: String,
        arguments: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arguments = convert::kwargs_to_json(arguments)?;
        let core = Arc::clone(&self.core);
        awaitable(py, async move {
            core.call_tool(name, arguments).await.map(ToolCallFull)
        })
    }

    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = Arc::clone(&self.core);
        awaitable(py, async move { core.close().await })
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::connect(slf)
    }

    #[pyo3(signature = (*args))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let propagating = args
            .get_item(0)
            .is_ok_and(|exc_type| exception_pending(&exc_type));
        let core = Arc::clone(&self.core);
        awaitable(py, async move {
            match core.close().await {
                // Never mask the exception that is leaving the block.
                Err(_) if propagating => Ok(false),
                other => other.map(|()| false),
            }
        })
    }

    fn __repr__(&self) -> String {
        format!("AsyncEnvClient(url={:?})", self.core.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_takes_seconds_and_none() {
        let config = config(2.5, None, Some(1.0), 1024).unwrap();
        assert_eq!(config.connect_timeout, Duration::from_millis(2500));
        assert_eq!(config.request_timeout, None);
        assert_eq!(config.keepalive_interval, Some(Duration::from_secs(1)));
        assert_eq!(config.max_message_bytes, 1024);
    }

    #[test]
    fn config_refuses_non_positive_values() {
        for (connect, request, keepalive, bytes) in [
            (0.0, None, None, 1),
            (-1.0, None, None, 1),
            (f64::NAN, None, None, 1),
            (1.0, Some(0.0), None, 1),
            (1.0, None, Some(-2.0), 1),
            (1.0, None, None, 0),
        ] {
            let err = config(connect, request, keepalive, bytes).unwrap_err();
            assert!(
                matches!(err, Failure::Client(ClientError::InvalidConfig { .. })),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_core_checks_its_pid_and_url() {
        let core = Core::new(
            "http://127.0.0.1:9/p/",
            ClientConfig::default(),
            "EnvClient",
        )
        .unwrap();
        assert_eq!(core.url, "ws://127.0.0.1:9/p/ws");
        assert!(core.check_pid().is_ok());
        assert!(!core.is_closed());
        assert!(matches!(
            Core::new("ftp://h", ClientConfig::default(), "EnvClient"),
            Err(Failure::Client(ClientError::InvalidUrl { .. }))
        ));
    }
}
