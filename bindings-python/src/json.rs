//! Python values <-> JSON values (`serde_json::Value`, what the core takes and
//! returns), and the argument conversions every concept shares (paths, seconds).

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use utp_core::host;

use crate::errors::{IntoPyResult, invalid};

/// `obj` as JSON; `depth` counts the containers around it. At most
/// `host::MAX_JSON_DEPTH` nested containers, as in C and Node (this also stops
/// self-referencing containers).
pub(crate) fn to_json(py: Python<'_>, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    let is_container =
        || obj.is_instance_of::<PyDict>() || obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>();
    if depth >= host::MAX_JSON_DEPTH && is_container() {
        return Err(invalid(py, format!("value {} (a container that contains itself?)", host::too_deep())));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: Python's bool is an int subclass.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(invalid(py, format!("integer {obj} does not fit in 64 bits")));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| invalid(py, format!("float {v} has no JSON representation")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.into_owned()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = k
                .cast::<PyString>()
                .map_err(|_| invalid(py, format!("dict keys must be str, got {}", type_name(&k))))?
                .to_cow()?
                .into_owned();
            map.insert(key, to_json(py, &v, depth + 1)?);
        }
        return Ok(Value::Object(map));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for item in obj.try_iter()? {
            items.push(to_json(py, &item?, depth + 1)?);
        }
        return Ok(Value::Array(items));
    }
    Err(invalid(
        py,
        format!("cannot convert {} to JSON (use dict, list, str, int, float, bool or None)", type_name(obj)),
    ))
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into())
}

pub(crate) fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

/// A `str` or `os.PathLike` argument as a string.
pub(crate) fn path_like(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned());
    }
    if let Ok(p) = obj.extract::<PathBuf>() {
        return p.into_os_string().into_string().map_err(|_| invalid(py, format!("{what} is not valid UTF-8")));
    }
    Err(invalid(py, format!("{what} must be str or os.PathLike, got {}", type_name(obj))))
}

/// Seconds (a timeout), checked as every binding checks them (`utp_core::host`).
pub(crate) fn seconds(py: Python<'_>, value: f64, what: &str) -> PyResult<Duration> {
    host::seconds(what, value).py_err(py)
}

pub(crate) fn value_list<'py>(py: Python<'py>, values: &[Value]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for value in values {
        list.append(to_py(py, value)?)?;
    }
    Ok(list)
}
