//! `utp._utp`: the native module behind the `utp` Python package.
//!
//! Thin by design: every method converts Python values to core types, releases the
//! GIL while the core works (`py.detach`), and converts the result back. Errors become
//! `utp.UtpError` subclasses carrying the stable `.code`; a Rust panic is caught here and
//! raised as `utp.PanicError` (pyo3's own `PanicException` escapes `except Exception`).
//!
//! One file per concept, as in bindings-node/src: `engine` (the `Engine` class, its
//! runtime, open and close), `errors`, `json` (Python <-> JSON values), `callbacks`
//! (Python callables the engine holds), `engine_threads` (Python run on engine threads), `host_exit` (exit and fork),
//! `manuals`, `calls`, `streams`, `tools`, `rules`, `events`, `workflows`, `planner`, `store`,
//! `intents`. Each concept adds its own `#[pymethods] impl PyEngine` block (pyo3's
//! `multiple-pymethods` feature).

mod callbacks;
mod calls;
mod engine;
mod engine_threads;
mod errors;
mod events;
mod host_calls;
mod host_exit;
mod host_options;
mod intents;
mod json;
mod manuals;
mod planner;
mod rules;
mod store;
mod streams;
mod tools;
mod workflows;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::calls::{PyPendingCall, PySettler};
use crate::engine::PyEngine;
use crate::errors::{class_name, error_types};
use crate::intents::PyIntentContext;
use crate::rules::PyDecision;
use crate::streams::PyToolStream;

/// The runtime's version.
#[pyfunction]
fn version() -> &'static str {
    utp_core::VERSION
}

#[pymodule]
fn _utp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    host_exit::install(py)?;
    m.add_class::<PyEngine>()?;
    m.add_class::<PyDecision>()?;
    m.add_class::<PyIntentContext>()?;
    m.add_class::<PyPendingCall>()?;
    m.add_class::<PySettler>()?;
    m.add_class::<PyToolStream>()?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add("__version__", utp_core::VERSION)?;
    let types = error_types(py)?;
    m.add("UtpError", types.base.bind(py))?;
    let codes = PyDict::new(py);
    for (code, ty) in &types.by_code {
        m.add(class_name(*code).as_str(), ty.bind(py))?;
        codes.set_item(code.as_str(), ty.bind(py))?;
    }
    m.add("ERRORS_BY_CODE", codes)?;
    Ok(())
}
