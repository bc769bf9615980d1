//! What calls return to Python: small frozen classes (`StepResult`, `VerifyResult`, `Tool`,
//! `ToolCallResult`) and plain dicts, built from the `env_client` results while attached to
//! the interpreter, plus [`Reply`], the one path by which a Rust result (or failure) becomes
//! a Python value (or exception), shared by the sync and the async API.

use env_client::protocol::{EnvState, Reward, Tool as WireTool, VerifyResult as WireVerify};
use env_client::{StepResult as WireStep, ToolCall};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::convert::{map_to_python, to_python};
use crate::errors::{Failure, to_py_err};

/// The result of a binding call, converted to Python when attached: `Ok` through
/// [`ToPython`], `Err` through [`to_py_err`].
pub(crate) struct Reply<T>(pub(crate) Result<T, Failure>);

/// A Rust value that becomes a Python object.
pub(crate) trait ToPython: Send {
    /// The Python object for `self`.
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>>;
}

impl<'py, T: ToPython> IntoPyObject<'py> for Reply<T> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.0 {
            Ok(value) => value.to_python(py),
            Err(failure) => Err(to_py_err(py, failure)),
        }
    }
}

impl ToPython for () {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(py.None().into_bound(py))
    }
}

impl ToPython for bool {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(pyo3::types::PyBool::new(py, self).to_owned().into_any())
    }
}

impl<T: Send + Sync> ToPython for Py<T> {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(self.into_bound(py).into_any())
    }
}

/// A reward as the environment gave it: `None`, `bool`, `int` or `float`.
fn reward<'py>(py: Python<'py>, reward: Option<Reward>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match reward {
        None => py.None().into_bound(py),
        Some(Reward::Bool(b)) => pyo3::types::PyBool::new(py, b).to_owned().into_any(),
        Some(Reward::Int(i)) => i.into_pyobject(py)?.into_any(),
        Some(Reward::Float(f)) => f.into_pyobject(py)?.into_any(),
    })
}

/// The result of `reset` or `step`, as OpenEnv's `StepResult`.
#[pyclass(frozen, get_all, module = "openenv_rs")]
pub struct StepResult {
    /// The observation (`metadata` first on 0.10 servers).
    observation: Py<PyDict>,
    /// The reward as the environment gave it (`None`, `float`, `int` or `bool`).
    reward: Py<PyAny>,
    /// Whether the episode has ended.
    done: bool,
    /// The top-level metadata (0.4+ servers, present only when non-empty), else `None`.
    metadata: Py<PyAny>,
}

#[pymethods]
impl StepResult {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "StepResult(observation={}, reward={}, done={}, metadata={})",
            self.observation.bind(py).repr()?,
            self.reward.bind(py).repr()?,
            if self.done { "True" } else { "False" },
            self.metadata.bind(py).repr()?,
        ))
    }
}

impl ToPython for WireStep {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let metadata = match &self.metadata {
            Some(map) => map_to_python(py, map)?.into_any(),
            None => py.None().into_bound(py),
        };
        let result = StepResult {
            observation: map_to_python(py, &self.observation.0)?.unbind(),
            reward: reward(py, self.reward)?.unbind(),
            done: self.done,
            metadata: metadata.unbind(),
        };
        Ok(Bound::new(py, result)?.into_any())
    }
}

/// The reply to `verify`: the server-computed reward (extension E1).
#[pyclass(frozen, get_all, module = "openenv_rs")]
pub struct VerifyResult {
    /// The reward, computed by the server's verifier.
    reward: f64,
    /// Whether the episode is over after verification.
    done: bool,
    /// Verifier details (may be empty).
    details: Py<PyDict>,
}

#[pymethods]
impl VerifyResult {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "VerifyResult(reward={}, done={}, details={})",
            self.reward.into_pyobject(py)?.repr()?,
            if self.done { "True" } else { "False" },
            self.details.bind(py).repr()?,
        ))
    }
}

impl ToPython for WireVerify {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let result = VerifyResult {
            reward: self.reward,
            done: self.done,
            details: map_to_python(py, &self.details)?.unbind(),
        };
        Ok(Bound::new(py, result)?.into_any())
    }
}

/// An MCP tool as the environment lists it.
#[pyclass(frozen, get_all, module = "openenv_rs")]
pub struct Tool {
    /// The tool name.
    name: String,
    /// What the tool does.
    description: String,
    /// JSON Schema of the arguments.
    input_schema: Py<PyAny>,
}

#[pymethods]
impl Tool {
    fn __repr__(&self) -> String {
        format!(
            "Tool(name={:?}, description={:?})",
            self.name, self.description
        )
    }
}

/// The list of tools of `list_tools`.
pub(crate) struct Tools(pub(crate) Vec<WireTool>);

impl ToPython for Tools {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let list = PyList::empty(py);
        for tool in self.0 {
            let tool = Tool {
                input_schema: to_python(py, &tool.input_schema)?.unbind(),
                name: tool.name,
                description: tool.description,
            };
            list.append(Bound::new(py, tool)?)?;
        }
        Ok(list.into_any())
    }
}

/// The full result of a step-path tool call.
#[pyclass(frozen, get_all, module = "openenv_rs")]
pub struct ToolCallResult {
    /// The tool's value (`result.data`, else the whole `result`).
    value: Py<PyAny>,
    /// The whole observation (`tool_name`, `result`, `error`, `metadata`).
    observation: Py<PyDict>,
    /// The step's reward (`None` on most tool calls; the verified reward on a final answer).
    reward: Py<PyAny>,
    /// Whether the episode has ended.
    done: bool,
}

#[pymethods]
impl ToolCallResult {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "ToolCallResult(value={}, reward={}, done={})",
            self.value.bind(py).repr()?,
            self.reward.bind(py).repr()?,
            if self.done { "True" } else { "False" },
        ))
    }
}

/// A tool call returned as its value only (`call_tool`).
pub(crate) struct ToolValue(pub(crate) ToolCall);

impl ToPython for ToolValue {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        to_python(py, &self.0.value)
    }
}

/// A tool call returned whole (`call_tool_result`).
pub(crate) struct ToolCallFull(pub(crate) ToolCall);

impl ToPython for ToolCallFull {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let call = self.0;
        let result = ToolCallResult {
            value: to_python(py, &call.value)?.unbind(),
            observation: map_to_python(py, &call.observation.0)?.unbind(),
            reward: reward(py, call.reward)?.unbind(),
            done: call.done,
        };
        Ok(Bound::new(py, result)?.into_any())
    }
}

/// The state as a dict: `episode_id`, `step_count`, then the environment's fields.
impl ToPython for EnvState {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let dict = PyDict::new(py);
        dict.set_item("episode_id", self.episode_id)?;
        dict.set_item("step_count", self.step_count)?;
        for (key, value) in &self.extra {
            dict.set_item(key, to_python(py, value)?)?;
        }
        Ok(dict.into_any())
    }
}
