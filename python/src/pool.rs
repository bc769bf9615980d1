//! `Pool`: many concurrent episodes over one or more servers, wrapping [`env_client::Pool`]
//! (a per-server session cap; a new session goes to the server with the most free slots and
//! waits while all are full). `acquire()` gives an `AsyncEnvClient` that holds its slot until
//! it is closed or dropped; `session()` and `run()` are added in Python
//! (`openenv_rs/__init__.py`).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use env_client::{ClientConfig, PooledClient};

use crate::bridge::awaitable;
use crate::client::{AsyncEnvClient, Core, config};
use crate::errors::{Failure, to_py_err};
use crate::results::ToPython;

/// Runs episodes across servers with a per-server session cap.
#[pyclass(frozen, subclass, module = "openenv_rs._native")]
pub struct Pool {
    inner: env_client::Pool,
    config: ClientConfig,
    /// The process that created the pool; its slot accounting is that process's.
    pid: u32,
}

impl Pool {
    fn check_pid(&self) -> Result<(), Failure> {
        if std::process::id() == self.pid {
            Ok(())
        } else {
            Err(Failure::Fork {
                owner: self.pid,
                what: "Pool",
            })
        }
    }
}

/// A pool session on its way to Python: becomes an `AsyncEnvClient`.
struct Acquired {
    client: PooledClient,
    config: ClientConfig,
    /// The driver that opened the connection.
    home: Option<u64>,
}

impl ToPython for Acquired {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let client = AsyncEnvClient::from_core(Core::pooled(self.client, self.config, self.home));
        Ok(Bound::new(py, client)?.into_any())
    }
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (
        urls,
        max_sessions_per_server = 64,
        *,
        connect_timeout = 10.0,
        request_timeout = Some(60.0),
        keepalive_interval = Some(5.0),
        max_message_bytes = 104_857_600,
    ), text_signature = "(urls, max_sessions_per_server=64, *, connect_timeout=10.0, request_timeout=60.0, keepalive_interval=5.0, max_message_bytes=104857600)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        urls: &Bound<'_, PyAny>,
        max_sessions_per_server: usize,
        connect_timeout: f64,
        request_timeout: Option<f64>,
        keepalive_interval: Option<f64>,
        max_message_bytes: usize,
    ) -> PyResult<Self> {
        let urls: Vec<String> = if let Ok(url) = urls.cast::<PyString>() {
            vec![url.to_cow()?.into_owned()]
        } else {
            urls.try_iter()
                .map_err(|_| PyTypeError::new_err("urls must be a str or an iterable of str"))?
                .map(|url| url?.extract::<String>())
                .collect::<PyResult<_>>()?
        };
        let built = config(
            connect_timeout,
            request_timeout,
            keepalive_interval,
            max_message_bytes,
        )
        .and_then(|config| {
            env_client::Pool::with_config(&urls, max_sessions_per_server, config.clone())
                .map(|inner| (inner, config))
                .map_err(Failure::from)
        });
        let (inner, config) = built.map_err(|failure| to_py_err(py, failure))?;
        Ok(Self {
            inner,
            config,
            pid: std::process::id(),
        })
    }

    /// Sessions the pool can hold open at once (servers × cap).
    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// Slot usage per server: `[{"url", "in_use", "capacity"}, …]` in the order given.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for server in self.inner.stats() {
            let entry = PyDict::new(py);
            entry.set_item("url", server.url)?;
            entry.set_item("in_use", server.in_use)?;
            entry.set_item("capacity", server.capacity)?;
            list.append(entry)?;
        }
        Ok(list)
    }

    /// Opens a session (an `AsyncEnvClient`) on the server with the most free slots, waiting
    /// while every server is full. Its slot is held until it is closed or dropped.
    fn acquire<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_pid().map_err(|failure| to_py_err(py, failure))?;
        let pool = self.inner.clone();
        let config = self.config.clone();
        awaitable(py, async move {
            pool.acquire()
                .await
                .map(|client| Acquired {
                    client,
                    config,
                    home: crate::bridge::polling_driver(),
                })
                .map_err(Failure::from)
        })
    }

    fn __repr__(&self) -> String {
        let urls: Vec<String> = self.inner.stats().into_iter().map(|s| s.url).collect();
        format!("Pool(urls={urls:?}, capacity={})", self.inner.capacity())
    }
}
