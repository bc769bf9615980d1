//! Python objects ↔ JSON values (`serde_json::Value`), directly, with the rules of Python's
//! `json` module: `dict` (string keys; int, float, bool and `None` keys are turned into
//! strings as `json.dumps` does), `list`/`tuple`, `str`, `int`, `float`, `bool`, `None`.
//! Objects with a `model_dump()` method (pydantic models, e.g. OpenEnv `Action`s) are dumped
//! first. Non-finite floats are refused (`json.dumps(allow_nan=False)`), as are integers
//! outside the 64-bit range and nesting deeper than [`MAX_DEPTH`].
//!
//! This is what crosses the boundary instead of JSON text: one walk each way, no
//! intermediate string.

use env_client::protocol::JsonMap;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Number, Value};

/// The deepest nesting converted either way (Python's own `json` recursion limit is ~1000).
pub(crate) const MAX_DEPTH: usize = 512;

/// A Python mapping as a JSON object; `what` names it in errors (`action`, `kwargs`).
pub(crate) fn to_json_map(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<JsonMap> {
    match to_json(obj)? {
        Value::Object(map) => Ok(map),
        other => Err(PyTypeError::new_err(format!(
            "{what} must be a dict (a JSON object), not {}",
            json_kind(&other)
        ))),
    }
}

/// Keyword arguments (`**kwargs`) as a JSON object; none → `{}`.
pub(crate) fn kwargs_to_json(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<JsonMap> {
    match kwargs {
        Some(dict) => dict_to_map(dict, 0),
        None => Ok(JsonMap::new()),
    }
}

/// A Python object as a JSON value.
pub(crate) fn to_json(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    value(obj, 0)
}

fn value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "cannot convert to JSON: nesting deeper than {MAX_DEPTH}"
        )));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.into_owned()));
    }
    // bool before int: `True` is an `int`.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.cast::<PyInt>().is_ok() {
        return int(obj);
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return float(f.value());
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        return dict_to_map(dict, depth).map(Value::Object);
    }
    if let Ok(list) = obj.cast::<PyList>() {
        return list
            .iter()
            .map(|item| value(&item, depth + 1))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return tuple
            .iter()
            .map(|item| value(&item, depth + 1))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    if obj.hasattr(pyo3::intern!(obj.py(), "model_dump"))? {
        let dumped = obj.call_method0(pyo3::intern!(obj.py(), "model_dump"))?;
        return value(&dumped, depth + 1);
    }
    Err(PyTypeError::new_err(format!(
        "Object of type {} is not JSON serializable",
        obj.get_type().name()?
    )))
}

fn int(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Ok(i) = obj.extract::<i64>() {
        return Ok(Value::from(i));
    }
    if let Ok(u) = obj.extract::<u64>() {
        return Ok(Value::from(u));
    }
    Err(PyOverflowError::new_err(
        "int out of the 64-bit range cannot be sent as JSON",
    ))
}

fn float(f: f64) -> PyResult<Value> {
    Number::from_f64(f).map(Value::Number).ok_or_else(|| {
        PyValueError::new_err(format!(
            "Out of range float values are not JSON compliant: {f}"
        ))
    })
}

fn dict_to_map(dict: &Bound<'_, PyDict>, depth: usize) -> PyResult<JsonMap> {
    let mut map = JsonMap::new();
    for (key, item) in dict.iter() {
        map.insert(key_text(&key)?, value(&item, depth + 1)?);
    }
    Ok(map)
}

/// A dict key as `json.dumps` writes it.
fn key_text(key: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned());
    }
    if key.is_none() {
        return Ok("null".to_owned());
    }
    if let Ok(b) = key.cast::<PyBool>() {
        return Ok(if b.is_true() { "true" } else { "false" }.to_owned());
    }
    if key.cast::<PyInt>().is_ok() || key.cast::<PyFloat>().is_ok() {
        return Ok(key.repr()?.to_cow()?.into_owned());
    }
    Err(PyTypeError::new_err(format!(
        "keys must be str, int, float, bool or None, not {}",
        key.get_type().name()?
    )))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "None",
        Value::Bool(_) => "bool",
        Value::Number(_) => "a number",
        Value::String(_) => "str",
        Value::Array(_) => "a list",
        Value::Object(_) => "dict",
    }
}

/// A JSON value as a Python object (`int` stays `int`, `1.0` stays `float`).
pub(crate) fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => number(py, n)?,
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => map_to_python(py, map)?.into_any(),
    })
}

/// A JSON object as a Python `dict`, in the object's key order.
pub(crate) fn map_to_python<'py>(py: Python<'py>, map: &JsonMap) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (key, item) in map {
        dict.set_item(key, to_python(py, item)?)?;
    }
    Ok(dict)
}

fn number<'py>(py: Python<'py>, n: &Number) -> PyResult<Bound<'py, PyAny>> {
    if let Some(i) = n.as_i64() {
        return Ok(i.into_pyobject(py)?.into_any());
    }
    if let Some(u) = n.as_u64() {
        return Ok(u.into_pyobject(py)?.into_any());
    }
    Ok(PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any())
}
