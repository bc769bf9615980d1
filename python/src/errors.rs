//! The Python exceptions of the bindings, and the one function that maps every failure to
//! its class ([`to_py_err`]).
//!
//! The hierarchy mirrors [`env_client::ClientError`]: a base `OpenEnvError(Exception)`, one
//! class per variant, and one subclass of `ServerError` per wire code (`PROTOCOL.md` §3.4).
//! Context travels as attributes (`ServerError.code`, `ConnectionClosedError.close_code`, …),
//! never only inside the message. A few classes also derive from the builtin that callers
//! already catch: `RequestTimeoutError` is a `TimeoutError`, `ConnectError`,
//! `ConnectionClosedError` and `TransportError` are `ConnectionError`s, `InvalidUrlError` and
//! `InvalidConfigError` are `ValueError`s.
//!
//! The classes are created once per interpreter with `type(name, bases, namespace)` (the
//! limited API of abi3 wheels cannot subclass `Exception` from a `#[pyclass]`, and
//! `create_exception!` takes a single base), kept in [`EXCEPTIONS`], and added to the module.

use env_client::ClientError;
use env_client::protocol::{ErrorCode, ToolErrorType};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::convert;

/// Every way a binding call can fail before Python sees it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The client (or pool) failed.
    Client(ClientError),
    /// The object was created in another process, before a `fork()`.
    Fork {
        /// The pid of the process that created it.
        owner: u32,
        /// What the object is (`EnvClient`, `Pool`, …).
        what: &'static str,
    },
    /// The Tokio runtime could not be built (no threads, no epoll).
    Runtime(std::io::Error),
    /// A sync call was made from a thread of a Tokio runtime, where it cannot block.
    InsideRuntime,
    /// An async client was used from another thread than the one that opened it.
    OtherThread {
        /// What the object is (`AsyncEnvClient`, pooled `AsyncEnvClient`).
        what: &'static str,
    },
    /// A task panicked (a bug); its awaitable raises instead of hanging.
    Panic(String),
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        Self::Client(err)
    }
}

/// The exception classes, created once per interpreter.
pub(crate) struct Exceptions {
    base: Py<PyType>,
    server: Py<PyType>,
    invalid_json: Py<PyType>,
    unknown_type: Py<PyType>,
    validation: Py<PyType>,
    execution: Py<PyType>,
    capacity_reached: Py<PyType>,
    factory: Py<PyType>,
    session: Py<PyType>,
    invalid_url: Py<PyType>,
    invalid_config: Py<PyType>,
    connect: Py<PyType>,
    closed: Py<PyType>,
    timeout: Py<PyType>,
    tool: Py<PyType>,
    episode_done: Py<PyType>,
    rpc: Py<PyType>,
    unsupported: Py<PyType>,
    protocol: Py<PyType>,
    transport: Py<PyType>,
    fork: Py<PyType>,
}

static EXCEPTIONS: PyOnceLock<Exceptions> = PyOnceLock::new();

/// The module the classes claim (`openenv_rs.ServerError`: what users import).
const MODULE: &str = "openenv_rs";

/// A new class `name(*bases)` with a docstring and default attribute values.
fn class<'py>(
    py: Python<'py>,
    name: &str,
    doc: &str,
    bases: &[&Bound<'py, PyType>],
    attrs: &[(&str, Bound<'py, PyAny>)],
) -> PyResult<Bound<'py, PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", MODULE)?;
    namespace.set_item("__doc__", doc)?;
    for (key, value) in attrs {
        namespace.set_item(key, value)?;
    }
    let bases = PyTuple::new(py, bases)?;
    let made = py.get_type::<PyType>().call1((name, bases, namespace))?;
    Ok(made.cast_into::<PyType>()?)
}

impl Exceptions {
    fn create(py: Python<'_>) -> PyResult<Self> {
        let none = || py.None().into_bound(py);
        let text = |s: &str| s.into_pyobject(py).map(Bound::into_any);
        let exception = py.get_type::<pyo3::exceptions::PyException>();
        let connection = py.get_type::<pyo3::exceptions::PyConnectionError>();
        let timeout = py.get_type::<pyo3::exceptions::PyTimeoutError>();
        let value = py.get_type::<pyo3::exceptions::PyValueError>();

        let base = class(
            py,
            "OpenEnvError",
            "Base class of every openenv_rs error.",
            &[&exception],
            &[],
        )?;
        let server_attrs = [
            ("code", text("UNKNOWN")?),
            ("message", text("")?),
            ("data", none()),
        ];
        let server = class(
            py,
            "ServerError",
            "The server answered with an `error` frame. `code` is the wire code, `message` the \
             server's message, `data` the whole `data` object of the frame (with extra keys \
             such as `errors` or `active_sessions`).",
            &[&base],
            &server_attrs,
        )?;
        let by_code = |name: &str, doc: &str| class(py, name, doc, &[&server], &[]);
        let invalid_json = by_code(
            "InvalidJsonError",
            "INVALID_JSON: the server could not parse a frame as JSON. The session stays open.",
        )?;
        let unknown_type = by_code(
            "UnknownTypeError",
            "UNKNOWN_TYPE: the server does not know the frame type. The session stays open.",
        )?;
        let validation = class(
            py,
            "ValidationError",
            "VALIDATION_ERROR: the frame or the action failed validation (`errors` lists the \
             pydantic-style items). The session stays open.",
            &[&server],
            &[("errors", none())],
        )?;
        let execution = by_code(
            "ExecutionError",
            "EXECUTION_ERROR: the environment raised during reset, step or verify. The \
             session stays open.",
        )?;
        let capacity_reached = by_code(
            "CapacityReachedError",
            "CAPACITY_REACHED: the server is at its session cap and refused this session.",
        )?;
        let factory = by_code(
            "FactoryError",
            "FACTORY_ERROR: the server could not create the environment for this session.",
        )?;
        let session = by_code(
            "SessionError",
            "SESSION_ERROR: a fatal session error (bad frame, attach failure, idle timeout); \
             the server closed the session.",
        )?;
        let invalid_url = class(
            py,
            "InvalidUrlError",
            "The server URL cannot be turned into a WebSocket address.",
            &[&base, &value],
            &[("url", text("")?), ("reason", text("")?)],
        )?;
        let invalid_config = class(
            py,
            "InvalidConfigError",
            "A client or pool setting is out of range.",
            &[&base, &value],
            &[("reason", text("")?)],
        )?;
        let connect = class(
            py,
            "ConnectError",
            "The TCP connection or the WebSocket handshake failed.",
            &[&base, &connection],
            &[("url", text("")?)],
        )?;
        let closed = class(
            py,
            "ConnectionClosedError",
            "The connection is closed (by the server, the network, or the client after an \
             earlier failure). `close_code` is the WebSocket close code when one was sent.",
            &[&base, &connection],
            &[("close_code", none()), ("reason", text("")?)],
        )?;
        let timeout = class(
            py,
            "RequestTimeoutError",
            "An operation did not finish in time (`op`, `after` in seconds). After a request \
             timeout the connection is abandoned.",
            &[&base, &timeout],
            &[
                ("op", text("")?),
                ("after", 0.0_f64.into_pyobject(py)?.into_any()),
            ],
        )?;
        let tool = class(
            py,
            "ToolError",
            "A tool call returned an error object (`error_type`: execution_error, \
             invalid_args, transport_error, tool_not_found or timeout).",
            &[&base],
            &[("error_type", text("")?), ("message", text("")?)],
        )?;
        let episode_done = class(
            py,
            "EpisodeDoneError",
            "A tool call on an episode that is already done; nothing ran. `reward` is the \
             episode's final reward. Call reset() to start a new episode.",
            &[&tool],
            &[("reward", none())],
        )?;
        let rpc = class(
            py,
            "RpcError",
            "A JSON-RPC error where a result was needed.",
            &[&base],
            &[
                ("code", 0_i64.into_pyobject(py)?.into_any()),
                ("message", text("")?),
            ],
        )?;
        let unsupported = class(
            py,
            "UnsupportedError",
            "The server does not support an extension frame (it answered UNKNOWN_TYPE). The \
             session stays open.",
            &[&base],
            &[("feature", text("")?)],
        )?;
        let protocol = class(
            py,
            "ProtocolError",
            "The server's reply is not the frame the request expects, or cannot be parsed.",
            &[&base],
            &[("message", text("")?)],
        )?;
        let transport = class(
            py,
            "TransportError",
            "The WebSocket transport failed in a way that is not a plain close.",
            &[&base, &connection],
            &[],
        )?;
        let fork = class(
            py,
            "ForkError",
            "The object was created in another process before fork(); its connection belongs \
             to that process. Create a new client in this process.",
            &[&base],
            &[],
        )?;
        Ok(Self {
            base: base.unbind(),
            server: server.unbind(),
            invalid_json: invalid_json.unbind(),
            unknown_type: unknown_type.unbind(),
            validation: validation.unbind(),
            execution: execution.unbind(),
            capacity_reached: capacity_reached.unbind(),
            factory: factory.unbind(),
            session: session.unbind(),
            invalid_url: invalid_url.unbind(),
            invalid_config: invalid_config.unbind(),
            connect: connect.unbind(),
            closed: closed.unbind(),
            timeout: timeout.unbind(),
            tool: tool.unbind(),
            episode_done: episode_done.unbind(),
            rpc: rpc.unbind(),
            unsupported: unsupported.unbind(),
            protocol: protocol.unbind(),
            transport: transport.unbind(),
            fork: fork.unbind(),
        })
    }

    fn all(&self) -> [&Py<PyType>; 21] {
        [
            &self.base,
            &self.server,
            &self.invalid_json,
            &self.unknown_type,
            &self.validation,
            &self.execution,
            &self.capacity_reached,
            &self.factory,
            &self.session,
            &self.invalid_url,
            &self.invalid_config,
            &self.connect,
            &self.closed,
            &self.timeout,
            &self.tool,
            &self.episode_done,
            &self.rpc,
            &self.unsupported,
            &self.protocol,
            &self.transport,
            &self.fork,
        ]
    }
}

fn exceptions(py: Python<'_>) -> PyResult<&Exceptions> {
    EXCEPTIONS.get_or_try_init(py, || Exceptions::create(py))
}

/// Adds every exception class to the module.
pub(crate) fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    for class in exceptions(py)?.all() {
        let class = class.bind(py);
        module.add(class.name()?, class)?;
    }
    Ok(())
}

/// An instance of `class` with `message` as its argument and `attrs` set on it.
fn raise<'py>(
    py: Python<'py>,
    class: &Py<PyType>,
    message: String,
    attrs: Vec<(&'static str, Bound<'py, PyAny>)>,
) -> PyResult<PyErr> {
    let instance = class.bind(py).call1((message,))?;
    for (name, value) in attrs {
        instance.setattr(name, value)?;
    }
    Ok(PyErr::from_value(instance))
}

/// The Python exception for a failure. The one place where failures get their class.
pub(crate) fn to_py_err(py: Python<'_>, failure: Failure) -> PyErr {
    build(py, failure).unwrap_or_else(|err| err)
}

fn build(py: Python<'_>, failure: Failure) -> PyResult<PyErr> {
    let ex = exceptions(py)?;
    let text = |s: String| -> PyResult<Bound<'_, PyAny>> { Ok(s.into_pyobject(py)?.into_any()) };
    match failure {
        Failure::Client(err) => client_error(py, ex, err),
        Failure::Fork { owner, what } => raise(
            py,
            &ex.fork,
            format!(
                "this {what} was created in process {owner}, and this is process {} (a child \
                 made by fork()): its connection and runtime belong to the parent. Create a new \
                 {what} in this process.",
                std::process::id()
            ),
            vec![],
        ),
        Failure::Runtime(err) => raise(
            py,
            &ex.base,
            format!("cannot start the openenv_rs I/O runtime: {err}"),
            vec![("reason", text(err.to_string())?)],
        ),
        Failure::Panic(message) => raise(
            py,
            &ex.base,
            format!("internal error in openenv_rs (please report it): {message}"),
            vec![],
        ),
        Failure::InsideRuntime => raise(
            py,
            &ex.base,
            "a blocking EnvClient call was made from a Tokio runtime thread; use \
             AsyncEnvClient there"
                .to_owned(),
            vec![],
        ),
        Failure::OtherThread { what } => raise(
            py,
            &ex.base,
            format!(
                "this {what} is driven by the event loops of the thread that opened it and \
                 cannot be used from another thread; open one client per thread"
            ),
            vec![],
        ),
    }
}

/// One class per [`ClientError`] variant, and per wire code for `Server`: no wildcard arm,
/// so a new variant must pick its class here.
fn client_error(py: Python<'_>, ex: &Exceptions, err: ClientError) -> PyResult<PyErr> {
    let text = |s: String| -> PyResult<Bound<'_, PyAny>> { Ok(s.into_pyobject(py)?.into_any()) };
    let message = error_chain(&err);
    match err {
        ClientError::InvalidUrl { url, reason } => raise(
            py,
            &ex.invalid_url,
            message,
            vec![("url", text(url)?), ("reason", text(reason)?)],
        ),
        ClientError::InvalidConfig { reason } => raise(
            py,
            &ex.invalid_config,
            message,
            vec![("reason", text(reason)?)],
        ),
        ClientError::Connect { url, .. } => {
            raise(py, &ex.connect, message, vec![("url", text(url)?)])
        }
        ClientError::Closed { code, reason } => raise(
            py,
            &ex.closed,
            message,
            vec![
                ("close_code", code.into_pyobject(py)?),
                ("reason", text(reason)?),
            ],
        ),
        ClientError::Server {
            code,
            message: server_message,
            data,
        } => {
            let class = match code {
                ErrorCode::InvalidJson => &ex.invalid_json,
                ErrorCode::UnknownType => &ex.unknown_type,
                ErrorCode::ValidationError => &ex.validation,
                ErrorCode::ExecutionError => &ex.execution,
                ErrorCode::CapacityReached => &ex.capacity_reached,
                ErrorCode::FactoryError => &ex.factory,
                ErrorCode::SessionError => &ex.session,
                ErrorCode::Unknown => &ex.server,
            };
            let mut attrs = vec![
                ("code", text(code.as_str().to_owned())?),
                ("message", text(server_message)?),
            ];
            if let Some(errors) = data.extra.get("errors") {
                attrs.push(("errors", convert::to_python(py, errors)?));
            }
            let data = serde_json::to_value(&*data).unwrap_or_default();
            attrs.push(("data", convert::to_python(py, &data)?));
            raise(py, class, message, attrs)
        }
        ClientError::Protocol {
            message: what_was_wrong,
        } => raise(
            py,
            &ex.protocol,
            message,
            vec![("message", text(what_was_wrong)?)],
        ),
        ClientError::Timeout { op, after } => raise(
            py,
            &ex.timeout,
            message,
            vec![
                ("op", text(op.to_owned())?),
                ("after", after.as_secs_f64().into_pyobject(py)?.into_any()),
            ],
        ),
        ClientError::Tool {
            error_type,
            message: tool_message,
        } => raise(
            py,
            &ex.tool,
            message,
            vec![
                ("error_type", text(tool_error_type(error_type).to_owned())?),
                ("message", text(tool_message)?),
            ],
        ),
        ClientError::EpisodeDone {
            message: tool_message,
            reward,
        } => raise(
            py,
            &ex.episode_done,
            message,
            vec![
                (
                    "error_type",
                    text(tool_error_type(ToolErrorType::ExecutionError).to_owned())?,
                ),
                ("message", text(tool_message)?),
                ("reward", reward.into_pyobject(py)?),
            ],
        ),
        ClientError::Rpc {
            code,
            message: rpc_message,
        } => raise(
            py,
            &ex.rpc,
            message,
            vec![
                ("code", code.into_pyobject(py)?.into_any()),
                ("message", text(rpc_message)?),
            ],
        ),
        ClientError::Unsupported { feature } => raise(
            py,
            &ex.unsupported,
            message,
            vec![("feature", text(feature.to_owned())?)],
        ),
        ClientError::Transport { .. } => raise(py, &ex.transport, message, vec![]),
    }
}

/// The wire string of a tool error type.
fn tool_error_type(kind: ToolErrorType) -> &'static str {
    match kind {
        ToolErrorType::ExecutionError => "execution_error",
        ToolErrorType::InvalidArgs => "invalid_args",
        ToolErrorType::TransportError => "transport_error",
        ToolErrorType::ToolNotFound => "tool_not_found",
        ToolErrorType::Timeout => "timeout",
    }
}

/// The error's message followed by its sources (`failed to connect to …: IO error: …`).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
