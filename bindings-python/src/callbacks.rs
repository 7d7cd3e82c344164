//! Python callables stored by the engine (tools, business rules, subscribers, intent
//! handlers): how they are held, so that the garbage collector sees them and `close()`
//! releases them, and how one is called and its exception logged on an engine thread.

use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

/// A Python callable held for the core. The core's closure owns an `Arc` of it and
/// the engine's registry owns another, which `__traverse__` reports to the garbage
/// collector; removing the rule / unsubscribing / `close()` / `__clear__` takes the
/// callable out, so a closure the core still holds afterwards keeps nothing alive.
pub(crate) struct Callback {
    pub(crate) func: Mutex<Option<Py<PyAny>>>,
}

pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Callback {
    pub(crate) fn new(func: Py<PyAny>) -> Arc<Callback> {
        Arc::new(Callback { func: Mutex::new(Some(func)) })
    }

    /// A new reference to the callable (None once released). The lock is held only
    /// for the increment: no Python code runs under it.
    pub(crate) fn get(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        locked(&self.func).as_ref().map(|f| f.clone_ref(py))
    }

    pub(crate) fn take(&self) -> Option<Py<PyAny>> {
        locked(&self.func).take()
    }
}

/// What a stored callable is registered as, so removing that thing releases it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    Tool(String),
    Rule(String),
    Subscription(u64),
    Intent(String),
}

/// `"ValueError: boom"` for an exception.
pub(crate) fn describe(py: Python<'_>, e: &PyErr) -> String {
    let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    format!("{kind}: {}", e.value(py))
}

/// Call `func(*args)`; when it returns an awaitable (`async def`), run it to the end
/// with `asyncio.run` on this thread (which has no event loop of its own).
pub(crate) fn call_maybe_async<'py>(
    py: Python<'py>,
    func: &Py<PyAny>,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let result = func.bind(py).call1(args)?;
    let inspect = py.import("inspect")?;
    if inspect.call_method1("isawaitable", (&result,))?.is_truthy()? {
        return py.import("asyncio")?.call_method1("run", (result,));
    }
    Ok(result)
}

/// Log `error` with its traceback on the `logging` logger `name` at `level`
/// (`"warning"`, `"error"`), `%`-style. Logging failures are ignored.
pub(crate) fn log_exception<'py>(
    py: Python<'py>,
    name: &str,
    level: &str,
    error: &PyErr,
    message: &str,
    args: Vec<Bound<'py, PyAny>>,
) {
    let logged = (|| -> PyResult<()> {
        let logger = py.import("logging")?.call_method1("getLogger", (name,))?;
        let kwargs = PyDict::new(py);
        let traceback = error.traceback(py).map(|t| t.into_any()).unwrap_or_else(|| py.None().into_bound(py));
        kwargs.set_item("exc_info", (error.get_type(py), error.value(py), traceback))?;
        let mut all = vec![PyString::new(py, message).into_any()];
        all.extend(args);
        logger.call_method(level, PyTuple::new(py, all)?, Some(&kwargs))?;
        Ok(())
    })();
    drop(logged);
}
