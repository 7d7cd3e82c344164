//! Errors as Python exceptions: `utp.UtpError` and one subclass per stable code
//! (created once per interpreter from `ErrorCode::ALL`), core errors raised as
//! them, and `guarded`, which turns a Rust panic into `utp.PanicError`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use utp_core::{Error, ErrorCode};

/// `UtpError` and one subclass per code, created once per interpreter.
pub(crate) struct ErrorTypes {
    pub(crate) base: Py<PyType>,
    pub(crate) by_code: Vec<(ErrorCode, Py<PyType>)>,
}

static ERROR_TYPES: PyOnceLock<ErrorTypes> = PyOnceLock::new();

/// `NOT_FOUND` → `NotFoundError`.
pub(crate) fn class_name(code: ErrorCode) -> String {
    let mut name: String = code
        .as_str()
        .split('_')
        .map(|part| {
            let lower = part.to_ascii_lowercase();
            let mut chars = lower.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect();
    name.push_str("Error");
    name
}

pub(crate) fn error_types(py: Python<'_>) -> PyResult<&ErrorTypes> {
    ERROR_TYPES.get_or_try_init(py, || {
        let base = PyErr::new_type(
            py,
            c"utp.UtpError",
            Some(c"Base class of every UTP Runtime error; `.code` is the stable error code."),
            Some(&py.get_type::<PyException>()),
            None,
        )?;
        // Class attributes are set after creation: `new_type`'s dict argument did not
        // reach the class under abi3 here.
        base.bind(py).setattr("code", "INTERNAL")?;
        base.bind(py).setattr("__module__", "utp")?;
        let mut by_code = Vec::with_capacity(ErrorCode::ALL.len());
        for code in ErrorCode::ALL {
            let qualified = std::ffi::CString::new(format!("utp.{}", class_name(code)))
                .map_err(|e| PyException::new_err(e.to_string()))?;
            let ty = PyErr::new_type(py, &qualified, None, Some(base.bind(py)), None)?;
            ty.bind(py).setattr("code", code.as_str())?;
            ty.bind(py).setattr("__module__", "utp")?;
            // Filled in on each instance raised for a core error that carries them.
            match code {
                ErrorCode::RateLimited => ty.bind(py).setattr("retry_after", py.None())?,
                ErrorCode::ApprovalRequired => ty.bind(py).setattr("approval_id", py.None())?,
                _ => {}
            }
            by_code.push((code, ty));
        }
        Ok(ErrorTypes { base, by_code })
    })
}

/// A core error as the matching Python exception; `RateLimitedError` carries
/// `retry_after` (seconds) and `ApprovalRequiredError` its `approval_id`.
pub(crate) fn to_py_err(py: Python<'_>, error: &Error) -> PyErr {
    let err = raise(py, error.code(), error.to_string());
    let value = err.value(py);
    let set = match (error.retry_after(), error.approval_id()) {
        (Some(wait), _) => value.setattr("retry_after", wait.as_secs_f64()),
        (_, Some(id)) => value.setattr("approval_id", id),
        _ => Ok(()),
    };
    match set {
        Ok(()) => err,
        Err(e) => e,
    }
}

/// `result.py_err(py)?`: a core result whose error is raised as the matching
/// `utp.UtpError` subclass (`to_py_err`).
pub(crate) trait IntoPyResult<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py_err(py, &e))
    }
}

pub(crate) fn raise(py: Python<'_>, code: ErrorCode, message: String) -> PyErr {
    match error_types(py) {
        Ok(types) => {
            let ty = types.by_code.iter().find(|(c, _)| *c == code).map(|(_, t)| t).unwrap_or(&types.base);
            PyErr::from_type(ty.bind(py).clone(), message)
        }
        Err(e) => e,
    }
}

pub(crate) fn invalid(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, ErrorCode::InvalidArgument, message.into())
}

/// Run `body`, turning a Rust panic into `utp.PanicError`.
pub(crate) fn guarded<T>(py: Python<'_>, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => Err(to_py_err(py, &Error::from_panic(payload.as_ref(), "utp"))),
    }
}
