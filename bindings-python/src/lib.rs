//! `utp._utp`: the native module behind the `utp` Python package.
//!
//! Thin by design: every method converts Python values to core types, releases the
//! GIL while the core works (`py.detach`), and converts the result back. Errors become
//! `utp.UtpError` subclasses carrying the stable `.code`; a Rust panic is caught here and
//! raised as `utp.PanicError` (pyo3's own `PanicException` escapes `except Exception`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};
use serde_json::{Map, Number, Value};
use utp_core::{CallOptions, CancellationToken, Config, Engine as CoreEngine, Error, ErrorCode, ManualSource, NativeHandler};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// `UtpError` and one subclass per code, created once per interpreter.
struct ErrorTypes {
    base: Py<PyType>,
    by_code: Vec<(ErrorCode, Py<PyType>)>,
}

static ERROR_TYPES: PyOnceLock<ErrorTypes> = PyOnceLock::new();

/// `NOT_FOUND` → `NotFoundError`.
fn class_name(code: ErrorCode) -> String {
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

fn error_types(py: Python<'_>) -> PyResult<&ErrorTypes> {
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
            by_code.push((code, ty));
        }
        Ok(ErrorTypes { base, by_code })
    })
}

/// A core error as the matching Python exception.
fn to_py_err(py: Python<'_>, error: &Error) -> PyErr {
    raise(py, error.code(), error.to_string())
}

fn raise(py: Python<'_>, code: ErrorCode, message: String) -> PyErr {
    match error_types(py) {
        Ok(types) => {
            let ty = types.by_code.iter().find(|(c, _)| *c == code).map(|(_, t)| t).unwrap_or(&types.base);
            PyErr::from_type(ty.bind(py).clone(), message)
        }
        Err(e) => e,
    }
}

fn invalid(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, ErrorCode::InvalidArgument, message.into())
}

/// Run `body`, turning a Rust panic into `utp.PanicError`.
fn guarded<T>(py: Python<'_>, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => Err(to_py_err(py, &Error::from_panic(payload.as_ref(), "utp"))),
    }
}

// ---------------------------------------------------------------------------
// Python values <-> JSON values
// ---------------------------------------------------------------------------

/// Deeper than any real manual; stops self-referencing containers.
const MAX_DEPTH: usize = 200;

fn to_json(py: Python<'_>, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(invalid(py, format!("value nests deeper than {MAX_DEPTH} levels (a container that contains itself?)")));
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
    Err(invalid(py, format!("cannot convert {} to JSON (use dict, list, str, int, float, bool or None)", type_name(obj))))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into())
}

fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
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
fn path_like(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned());
    }
    if let Ok(p) = obj.extract::<PathBuf>() {
        return p
            .into_os_string()
            .into_string()
            .map_err(|_| invalid(py, format!("{what} is not valid UTF-8")));
    }
    Err(invalid(py, format!("{what} must be str or os.PathLike, got {}", type_name(obj))))
}

// ---------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------

/// The core engine and the tokio runtime that drives its async methods.
struct Running {
    engine: CoreEngine,
    runtime: tokio::runtime::Runtime,
}

/// How often a blocking call looks for Ctrl-C (signals are only seen on the main thread).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

impl Running {
    /// Block on a core future with the GIL released.
    fn block_on<F>(&self, py: Python<'_>, future: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        py.detach(|| self.runtime.block_on(future))
    }

    /// Like `block_on`, but a pending signal (Ctrl-C → KeyboardInterrupt) cancels
    /// `cancel` and is raised at once instead of waiting for the call to finish.
    fn block_on_interruptible<F>(&self, py: Python<'_>, future: F, cancel: &CancellationToken) -> PyResult<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        py.detach(|| {
            self.runtime.block_on(async {
                let mut future = std::pin::pin!(future);
                loop {
                    tokio::select! {
                        out = &mut future => return Ok(out),
                        _ = tokio::time::sleep(SIGNAL_POLL) => {
                            if let Err(interrupt) = Python::attach(|py| py.check_signals()) {
                                cancel.cancel();
                                return Err(interrupt);
                            }
                        }
                    }
                }
            })
        })
    }
}

fn seconds(py: Python<'_>, value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| invalid(py, format!("{what} must be a finite number of seconds >= 0, got {value}")))
}

/// Run a Python tool function on the calling (blocking-pool) thread: `fn(args)`, and
/// when it returns an awaitable (an `async def` tool), `asyncio.run` it there.
fn call_python_tool(py: Python<'_>, func: &Py<PyAny>, tool: &str, args: &Value) -> Result<Value, Error> {
    let failed = |e: PyErr| {
        let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
        Error::with_code(ErrorCode::ToolFailed, format!("tool '{tool}' raised {kind}: {}", e.value(py)))
    };
    let args = to_py(py, args).map_err(failed)?;
    let mut result = func.bind(py).call1((args,)).map_err(failed)?;
    let inspect = py.import("inspect").map_err(failed)?;
    if inspect.call_method1("isawaitable", (&result,)).and_then(|b| b.is_truthy()).map_err(failed)? {
        result = py.import("asyncio").and_then(|a| a.call_method1("run", (result,))).map_err(failed)?;
    }
    to_json(py, &result, 0).map_err(|e| {
        Error::with_code(ErrorCode::ToolFailed, format!("tool '{tool}' returned a value without a JSON form: {}", e.value(py)))
    })
}

/// The runtime engine. `utp.Engine` (Python) subclasses this to add the `*_async`
/// twins and the context manager.
#[pyclass(module = "utp._utp", name = "Engine", subclass, frozen)]
struct PyEngine {
    // `None` once closed. Methods clone the Arc, so `close()` never waits for a call.
    running: Mutex<Option<Arc<Running>>>,
}

impl PyEngine {
    fn running(&self, py: Python<'_>) -> PyResult<Arc<Running>> {
        let guard = self.running.lock().map_err(|_| invalid(py, "engine lock poisoned"))?;
        guard.clone().ok_or_else(|| invalid(py, "engine is closed"))
    }
}

fn load_config(py: Python<'_>, config: Option<&Bound<'_, PyAny>>) -> PyResult<Config> {
    let Some(config) = config.filter(|c| !c.is_none()) else {
        return Config::from_value(Value::Null).map_err(|e| to_py_err(py, &e));
    };
    if config.is_instance_of::<PyDict>() {
        let value = to_json(py, config, 0)?;
        return Config::from_value(value).map_err(|e| to_py_err(py, &e));
    }
    let path = path_like(py, config, "config")
        .map_err(|_| invalid(py, format!("config must be a dict, a path to utp.yaml/utp.json, or None; got {}", type_name(config))))?;
    Config::load(std::path::Path::new(&path)).map_err(|e| to_py_err(py, &e))
}

fn check_store(py: Python<'_>, store: &str) -> PyResult<()> {
    match store {
        "memory" => Ok(()),
        s if s.starts_with("sqlite:") => Err(invalid(
            py,
            format!("store '{s}': the SQLite store is not available in this version yet; use store=\"memory\""),
        )),
        s => Err(invalid(py, format!("store must be \"memory\" or \"sqlite:PATH\", got '{s}'"))),
    }
}

fn tool_values<'py>(py: Python<'py>, tools: &[Arc<utp_core::RegisteredTool>]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for tool in tools {
        list.append(to_py(py, &tool.to_value())?)?;
    }
    Ok(list)
}

#[pymethods]
impl PyEngine {
    /// `Engine(config=None, store="memory")`: `config` is a dict, a path to
    /// `utp.yaml`/`utp.json`, or None for defaults. Manuals listed in the config's
    /// `manuals` are registered before the constructor returns.
    #[new]
    #[pyo3(signature = (config=None, store="memory"))]
    fn new(py: Python<'_>, config: Option<&Bound<'_, PyAny>>, store: &str) -> PyResult<Self> {
        guarded(py, || {
            check_store(py, store)?;
            let config = load_config(py, config)?;
            let engine = CoreEngine::new(config).map_err(|e| to_py_err(py, &e))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("utp-worker")
                .enable_all()
                .build()
                .map_err(|e| raise(py, ErrorCode::Internal, format!("cannot start the runtime: {e}")))?;
            let running = Running { engine, runtime };
            let configured = running.engine.clone();
            running.block_on(py, configured.register_configured_manuals()).map_err(|e| to_py_err(py, &e))?;
            Ok(PyEngine { running: Mutex::new(Some(Arc::new(running))) })
        })
    }

    /// Discover manuals under a directory, in a file, or at a URL; returns the names
    /// of the manuals registered. Files that fail are reported by `discover_report`.
    fn discover(&self, py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        guarded(py, || {
            let target = path_like(py, target, "target")?;
            let r = self.running(py)?;
            let report = r.block_on(py, r.engine.discover(&target)).map_err(|e| to_py_err(py, &e))?;
            Ok(report.registered())
        })
    }

    /// Like `discover`, returning the full report: one entry per file with its outcome.
    fn discover_report<'py>(&self, py: Python<'py>, target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let target = path_like(py, target, "target")?;
            let r = self.running(py)?;
            let report = r.block_on(py, r.engine.discover(&target)).map_err(|e| to_py_err(py, &e))?;
            to_py(py, &report.to_value())
        })
    }

    /// Register a manual (a dict, a file path, or an http(s) URL); returns its tools' names.
    #[pyo3(signature = (manual, name=None))]
    fn register_manual(&self, py: Python<'_>, manual: &Bound<'_, PyAny>, name: Option<&str>) -> PyResult<Vec<String>> {
        guarded(py, || {
            let source = if manual.is_instance_of::<PyDict>() {
                ManualSource::Inline(to_json(py, manual, 0)?)
            } else {
                let text = path_like(py, manual, "manual")
                    .map_err(|_| invalid(py, format!("manual must be a dict, a path or a URL; got {}", type_name(manual))))?;
                ManualSource::from_text(&text).map_err(|e| to_py_err(py, &e))?
            };
            let r = self.running(py)?;
            r.block_on(py, r.engine.register_manual(source, name)).map_err(|e| to_py_err(py, &e))
        })
    }

    /// Remove a manual and its tools; False if no manual had that name.
    fn deregister_manual(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        guarded(py, || Ok(self.running(py)?.engine.deregister_manual(name)))
    }

    /// Every registered tool as a dict (UTCP tool JSON, `name` = `manual.tool`), by name.
    fn tools<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            let r = self.running(py)?;
            let tools = py.detach(|| r.engine.tools());
            tool_values(py, &tools)
        })
    }

    /// One tool by its full name `manual.tool`.
    fn tool<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let tool = self.running(py)?.engine.tool(name).map_err(|e| to_py_err(py, &e))?;
            to_py(py, &tool.to_value())
        })
    }

    /// Tools ranked by relevance to `query` (name, tags, description, parameters).
    /// `limit=0` returns every match; `tags` keeps tools carrying any of them.
    #[pyo3(signature = (query, limit=10, tags=None))]
    fn search_tools<'py>(
        &self,
        py: Python<'py>,
        query: &str,
        limit: usize,
        tags: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            let r = self.running(py)?;
            let tags = tags.unwrap_or_default();
            let found = py.detach(|| r.engine.search_tools(query, limit, &tags));
            tool_values(py, &found)
        })
    }

    /// Names of the registered manuals, sorted.
    fn manuals(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        guarded(py, || Ok(self.running(py)?.engine.manuals()))
    }

    /// The namespaced variables (e.g. `weather_API_KEY`) a manual or tool needs.
    fn required_variables(&self, py: Python<'_>, name: &str) -> PyResult<Vec<String>> {
        guarded(py, || self.running(py)?.engine.required_variables(name).map_err(|e| to_py_err(py, &e)))
    }

    /// Call a tool with `args` (a dict); returns its result as Python values.
    /// `timeout` is in seconds. Ctrl-C interrupts the call (the tool is cancelled).
    #[pyo3(signature = (name, args=None, *, tenant=None, session=None, timeout=None))]
    fn call_tool<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        args: Option<&Bound<'py, PyAny>>,
        tenant: Option<String>,
        session: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let args = match args {
                Some(a) if !a.is_none() => to_json(py, a, 0)?,
                _ => Value::Null,
            };
            let timeout = timeout.map(|t| seconds(py, t, "timeout")).transpose()?;
            let cancel = CancellationToken::new();
            let options = CallOptions { timeout, tenant, session, cancel: Some(cancel.clone()), ..CallOptions::default() };
            let r = self.running(py)?;
            let result = r.block_on_interruptible(py, r.engine.call_tool(name, args, options), &cancel)?;
            to_py(py, &result.map_err(|e| to_py_err(py, &e))?)
        })
    }

    /// Register a Python function as the native tool `name` ("manual.tool"; the
    /// manual is created when missing). `func(args: dict)` may be sync or `async def`
    /// and runs on an engine thread; what it raises fails the call with
    /// `ToolFailedError` naming the tool. Returns the full tool name.
    #[pyo3(signature = (name, func, inputs=None, outputs=None, description="", tags=None))]
    #[allow(clippy::too_many_arguments)]
    fn register_tool(
        &self,
        py: Python<'_>,
        name: &str,
        func: Bound<'_, PyAny>,
        inputs: Option<&Bound<'_, PyAny>>,
        outputs: Option<&Bound<'_, PyAny>>,
        description: &str,
        tags: Option<Vec<String>>,
    ) -> PyResult<String> {
        guarded(py, || {
            if !func.is_callable() {
                return Err(invalid(py, format!("func must be callable, got {}", type_name(&func))));
            }
            let schema = |v: Option<&Bound<'_, PyAny>>| v.filter(|v| !v.is_none()).map(|v| to_json(py, v, 0)).transpose();
            let (inputs, outputs) = (schema(inputs)?, schema(outputs)?);
            let func = Arc::new(func.unbind());
            let tool = name.to_string();
            let handler: NativeHandler = Arc::new(move |args: Value| {
                let (func, tool) = (func.clone(), tool.clone());
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || Python::attach(|py| call_python_tool(py, &func, &tool, &args)))
                        .await
                        .map_err(|e| Error::with_code(ErrorCode::Internal, format!("Python tool thread failed: {e}")))?
                })
            });
            let r = self.running(py)?;
            r.engine
                .register_tool(name, handler, inputs, outputs, description, tags.unwrap_or_default())
                .map_err(|e| to_py_err(py, &e))
        })
    }

    /// Release the engine; further calls raise `InvalidArgumentError`. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, || {
            let taken = self.running.lock().map_err(|_| invalid(py, "engine lock poisoned"))?.take();
            if let Some(running) = taken {
                // Calls still in flight on other threads hold their own Arc; the last
                // one shuts the runtime down. Otherwise join the workers now.
                if let Ok(running) = Arc::try_unwrap(running) {
                    py.detach(|| running.runtime.shutdown_timeout(Duration::from_secs(10)));
                }
            }
            Ok(())
        })
    }

    /// True once `close()` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.running.lock().map_err(|_| invalid(py, "engine lock poisoned"))?.is_none())
    }
}

/// The runtime's version.
#[pyfunction]
fn version() -> &'static str {
    utp_core::VERSION
}

#[pymodule]
fn _utp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyEngine>()?;
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
