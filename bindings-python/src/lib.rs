//! `utp._utp`: the native module behind the `utp` Python package.
//!
//! Thin by design: every method converts Python values to core types, releases the
//! GIL while the core works (`py.detach`), and converts the result back. Errors become
//! `utp.UtpError` subclasses carrying the stable `.code`; a Rust panic is caught here and
//! raised as `utp.PanicError` (pyo3's own `PanicException` escapes `except Exception`).

mod engine_threads;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::PyException;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};
use pyo3::PyTraverseError;
use serde_json::{Map, Number, Value};
use utp_core::events::{Pattern, kinds};
use utp_core::planner::PlanOptions;
use utp_core::store::EventFilter;
use utp_core::workflow::{RunOptions, WorkflowSource};
use utp_core::{IntentContext, IntentHandler, IntentTarget};
use utp_core::{
    CallOptions, CancellationToken, Config, Engine as CoreEngine, Error, ErrorCode, Event, EventHandler, HistoryFilter,
    HostRule, HostVerdict, ManualSource, NativeHandler, SubscriptionId,
};

use crate::engine_threads::call_python;

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
fn to_py_err(py: Python<'_>, error: &Error) -> PyErr {
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
    /// `None` only while `Running` is being dropped or shut down.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The last reference may go with the GIL held (at the end of a method, or in
        // the garbage collector) while a blocking task waits for the GIL: never wait
        // for the runtime here. `close()` joins it with the GIL released instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How long `close()` waits for runs in the middle of a store commit.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How often a blocking call looks for Ctrl-C (signals are only seen on the main thread).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

impl Running {
    fn rt(&self) -> &tokio::runtime::Runtime {
        // Invariant: only `Drop` and `shutdown` (which own `self`) take it out.
        self.runtime.as_ref().expect("the runtime lives as long as Running")
    }

    /// Join the runtime's threads (at most `timeout`); call with the GIL released.
    fn shutdown(mut self, timeout: Duration) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(timeout);
        }
    }

    /// Block on a core future with the GIL released.
    fn block_on<F>(&self, py: Python<'_>, future: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        py.detach(|| self.rt().block_on(future))
    }

    /// Like `block_on`, but a pending signal (Ctrl-C → KeyboardInterrupt) cancels
    /// `cancel` and is raised at once instead of waiting for the call to finish.
    fn block_on_interruptible<F>(&self, py: Python<'_>, future: F, cancel: &CancellationToken) -> PyResult<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        py.detach(|| self.rt().block_on(interruptible(future, cancel)))
    }

    /// The tail `run_workflow` and `run` share: the run options, a cancellation that
    /// Ctrl-C triggers, the run driven with the GIL released, its record as Python values.
    fn run_to_record<'py, F, Fut>(
        &self,
        py: Python<'py>,
        (session, tenant, user, timeout): (Option<String>, Option<String>, Option<String>, Option<f64>),
        start: F,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        F: FnOnce(CoreEngine, RunOptions) -> Fut,
        Fut: std::future::Future<Output = utp_core::Result<Value>> + Send,
    {
        let cancel = CancellationToken::new();
        let options = run_options(py, session, tenant, user, timeout, Some(cancel.clone()))?;
        let record = self.block_on_interruptible(py, start(self.engine.clone(), options), &cancel)?;
        to_py(py, &record.map_err(|e| to_py_err(py, &e))?)
    }

    /// `block_on_interruptible` driven on this thread (`Engine::block_on_here`), for a call
    /// whose I/O would otherwise cross to the runtime's threads and back. Only on a thread
    /// that runs no runtime (not, say, in a Python tool the engine runs on its blocking pool).
    fn block_on_here_interruptible<F>(&self, py: Python<'_>, future: F, cancel: &CancellationToken) -> PyResult<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        py.detach(|| self.engine.block_on_here(interruptible(future, cancel))).map_err(|e| to_py_err(py, &e))?
    }
}

/// `future`, or a pending signal (Ctrl-C → KeyboardInterrupt), checked every
/// `SIGNAL_POLL`, which cancels `cancel` and is returned at once.
async fn interruptible<F: std::future::Future>(future: F, cancel: &CancellationToken) -> PyResult<F::Output> {
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

// ---------------------------------------------------------------------------
// call_tool_async: a call started on the runtime, settled through a Python callback
// ---------------------------------------------------------------------------

/// A call started by `_call_tool_start` that did not finish at once; `cancel()` cancels
/// it (a CLI tool's process is killed, a Python tool's result is dropped). Its `done`
/// callback still runs once, with the `CancelledError`.
#[pyclass(module = "utp._utp", name = "_PendingCall", frozen)]
struct PyPendingCall {
    cancel: CancellationToken,
}

#[pymethods]
impl PyPendingCall {
    /// Cancel the call; a no-op once it has finished.
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// True once `cancel()` was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Settles the futures of one event loop's `call_tool_async` calls, in batches, on the
/// loop's own thread. A finished call is queued here from whichever runtime thread
/// finished it (no GIL needed); the one that makes the queue non-empty writes a byte to
/// a socket pair whose other end the loop watches (`loop.add_reader(fileno(), ...)`).
/// The loop then calls `drain()`, which returns every call queued meanwhile as
/// `(future, ok, value)` (the result as Python values, or the error as its
/// `utp.UtpError` instance) for `utp._settle_all`. No thread takes the GIL to hand
/// results over: with many calls in flight, one wake-up of the loop settles a batch.
#[pyclass(module = "utp._utp", name = "_Settler", frozen)]
struct PySettler {
    /// Finished calls not yet drained.
    queue: Mutex<Vec<Finished>>,
    wake: std::os::unix::net::UnixStream,
    watched: std::os::unix::net::UnixStream,
}

/// A finished call: its asyncio future and its outcome.
type Finished = (Py<PyAny>, Result<Value, Error>);

#[pymethods]
impl PySettler {
    #[new]
    fn new(py: Python<'_>) -> PyResult<PySettler> {
        let pair = std::os::unix::net::UnixStream::pair()
            .and_then(|(wake, watched)| {
                wake.set_nonblocking(true)?;
                watched.set_nonblocking(true)?;
                Ok((wake, watched))
            })
            .map_err(|e| raise(py, ErrorCode::Internal, format!("cannot create the settler's socket pair: {e}")))?;
        Ok(PySettler { queue: Mutex::new(Vec::new()), wake: pair.0, watched: pair.1 })
    }

    /// The descriptor the loop watches for "calls finished".
    fn fileno(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.watched.as_raw_fd()
    }

    /// Every finished call queued so far, as `(future, ok, value)`; on the loop's thread.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        use std::io::Read;
        // The wake-up bytes first, then the queue: a call queued after this read
        // writes a byte of its own, so none is left behind.
        let mut bytes = [0u8; 256];
        while matches!((&self.watched).read(&mut bytes), Ok(n) if n > 0) {}
        let finished = std::mem::take(&mut *locked(&self.queue));
        let batch = PyList::empty(py);
        for (future, result) in finished {
            let (ok, value) = match result.as_ref().map_err(|e| to_py_err(py, e)).and_then(|v| to_py(py, v)) {
                Ok(value) => (true, value),
                Err(err) => (false, err.into_value(py).into_bound(py).into_any()),
            };
            batch.append((future, ok, value))?;
        }
        Ok(batch)
    }
}

impl PySettler {
    /// Queue a finished call; the first of a batch wakes the loop.
    fn queue(&self, future: Py<PyAny>, result: Result<Value, Error>) {
        use std::io::Write;
        let first = {
            let mut queue = locked(&self.queue);
            queue.push((future, result));
            queue.len() == 1
        };
        // A full socket buffer (WouldBlock) already holds a wake-up.
        if first {
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// The completion side of a spawned call: `send` queues the result on the loop's
/// settler. Dropped without `send` (the task panicked, or its runtime went away), it
/// queues an error instead, so an awaiting coroutine never hangs.
struct Delivery {
    target: Option<(Py<PySettler>, Py<PyAny>)>,
}

impl Delivery {
    fn send(mut self, result: Result<Value, Error>) {
        if let Some((settler, future)) = self.target.take() {
            settler.get().queue(future, result);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let Some((settler, future)) = self.target.take() else { return };
        let error = if std::thread::panicking() {
            Error::with_code(ErrorCode::Panic, "panic in utp: the call's task panicked")
        } else {
            Error::with_code(ErrorCode::Cancelled, "the call was dropped before it finished (runtime shut down)")
        };
        settler.get().queue(future, Err(error));
    }
}

// ---------------------------------------------------------------------------
// Python callables stored by the engine (tools, business rules, subscribers)
// ---------------------------------------------------------------------------

/// A Python callable held for the core. The core's closure owns an `Arc` of it and
/// the engine's registry owns another, which `__traverse__` reports to the garbage
/// collector; removing the rule / unsubscribing / `close()` / `__clear__` takes the
/// callable out, so a closure the core still holds afterwards keeps nothing alive.
struct Callback {
    func: Mutex<Option<Py<PyAny>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Callback {
    fn new(func: Py<PyAny>) -> Arc<Callback> {
        Arc::new(Callback { func: Mutex::new(Some(func)) })
    }

    /// A new reference to the callable (None once released). The lock is held only
    /// for the increment: no Python code runs under it.
    fn get(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        locked(&self.func).as_ref().map(|f| f.clone_ref(py))
    }

    fn take(&self) -> Option<Py<PyAny>> {
        locked(&self.func).take()
    }
}

/// What a stored callable is registered as, so removing that thing releases it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    Tool(String),
    Rule(String),
    Subscription(u64),
    Intent(String),
}

/// `"ValueError: boom"` for an exception.
fn describe(py: Python<'_>, e: &PyErr) -> String {
    let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    format!("{kind}: {}", e.value(py))
}

/// Call `func(*args)`; when it returns an awaitable (`async def`), run it to the end
/// with `asyncio.run` on this thread (which has no event loop of its own).
fn call_maybe_async<'py>(
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
fn log_exception<'py>(py: Python<'py>, name: &str, level: &str, error: &PyErr, message: &str, args: Vec<Bound<'py, PyAny>>) {
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

/// Run a business rule `func(tool, action, params)` on the calling (blocking-pool)
/// thread. True / `Decision.allow()` allow; False / `Decision.deny()` deny;
/// `Decision.escalate()` asks for an approval. An exception or any other return
/// value is an `Err` — the core denies the call with it (fail closed).
fn run_rule(py: Python<'_>, callback: &Callback, rule: &str, tool: String, action: String, params: Value) -> Result<HostVerdict, String> {
    let Some(func) = callback.get(py) else {
        return Err("its Python function was released (engine closed or rule removed)".into());
    };
    let raised = |e: PyErr| {
        let args = [rule, tool.as_str(), action.as_str()].map(|a| PyString::new(py, a).into_any()).to_vec();
        log_exception(py, "utp.rules", "warning", &e, "business rule %r raised; the call to %s.%s is denied", args);
        format!("raised {}", describe(py, &e))
    };
    let params = to_py(py, &params).map_err(raised)?;
    let result = call_maybe_async(py, &func, (tool.as_str(), action.as_str(), params)).map_err(raised)?;
    if let Ok(b) = result.cast::<PyBool>() {
        return Ok(if b.is_true() { HostVerdict::Allow } else { HostVerdict::Deny(None) });
    }
    if let Ok(d) = result.cast::<PyDecision>() {
        let d = d.get();
        return Ok(match d.kind {
            DecisionKind::Allow => HostVerdict::Allow,
            DecisionKind::Deny => HostVerdict::Deny(d.reason.clone()),
            DecisionKind::Escalate => HostVerdict::Escalate(d.reason.clone()),
        });
    }
    Err(format!("returned {}, expected a bool or a utp.Decision", type_name(&result)))
}

/// Deliver one event to a subscriber on its own (library) thread. An exception is
/// logged on the `utp.events` logger and returned, so the bus counts it.
fn run_subscriber(py: Python<'_>, callback: &Callback, pattern: &str, event: &Event) -> Result<(), String> {
    let Some(func) = callback.get(py) else { return Ok(()) };
    let delivered = to_py(py, &event.to_value()).and_then(|e| call_maybe_async(py, &func, (e,)));
    match delivered {
        Ok(_) => Ok(()),
        Err(e) => {
            log_exception(
                py,
                "utp.events",
                "error",
                &e,
                "event subscriber %r (pattern %r) raised on %s event #%d",
                vec![
                    func.bind(py).clone(),
                    PyString::new(py, pattern).into_any(),
                    PyString::new(py, event.kind()).into_any(),
                    event.id.into_pyobject(py).map(|i| i.into_any()).unwrap_or_else(|_| py.None().into_bound(py)),
                ],
            );
            Err(format!("raised {}", describe(py, &e)))
        }
    }
}

/// A pattern or type filter must match at least one event type of design §8, so a
/// typo (`"tool.sucess"`) is an error instead of a subscription that never fires.
fn check_pattern(py: Python<'_>, pattern: &str, what: &str) -> PyResult<()> {
    if pattern.trim().is_empty() {
        return Err(invalid(py, format!("{what} is empty: use \"*\" for every event, or e.g. \"tool.*\", \"policy.denied\"")));
    }
    let compiled = Pattern::new(pattern);
    if kinds::ALL.iter().any(|k| compiled.matches(k)) {
        return Ok(());
    }
    Err(invalid(py, format!("{what} '{pattern}' matches no event type; the types are: {}", kinds::ALL.join(", "))))
}

/// A business rule's answer: `Decision.allow()`, `Decision.deny(reason=None)`,
/// `Decision.escalate(reason=None)` (the call waits for `engine.approve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DecisionKind {
    Allow,
    Deny,
    Escalate,
}

impl DecisionKind {
    fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Allow => "allow",
            DecisionKind::Deny => "deny",
            DecisionKind::Escalate => "escalate",
        }
    }
}

/// What a business rule returns when a bool is not enough: `Decision.allow()`,
/// `Decision.deny(reason=None)` or `Decision.escalate(reason=None)`.
#[pyclass(module = "utp._utp", name = "Decision", frozen, eq, hash)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PyDecision {
    kind: DecisionKind,
    reason: Option<String>,
}

#[pymethods]
impl PyDecision {
    /// Let the call run (as far as this rule is concerned).
    #[staticmethod]
    fn allow() -> PyDecision {
        PyDecision { kind: DecisionKind::Allow, reason: None }
    }

    /// Refuse the call; `reason` is shown in the `PermissionDeniedError`.
    #[staticmethod]
    #[pyo3(signature = (reason=None))]
    fn deny(reason: Option<String>) -> PyDecision {
        PyDecision { kind: DecisionKind::Deny, reason }
    }

    /// Hold the call for a human approval (`engine.approve(approval_id)`).
    #[staticmethod]
    #[pyo3(signature = (reason=None))]
    fn escalate(reason: Option<String>) -> PyDecision {
        PyDecision { kind: DecisionKind::Escalate, reason }
    }

    /// `"allow"`, `"deny"` or `"escalate"`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    #[getter]
    fn reason(&self) -> Option<String> {
        self.reason.clone()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(match &self.reason {
            None => format!("Decision.{}()", self.kind.as_str()),
            Some(r) => format!("Decision.{}(reason={})", self.kind.as_str(), PyString::new(py, r).repr()?),
        })
    }
}

// ---------------------------------------------------------------------------
// Intents: a named kind of request routed to a workflow or a Python handler
// ---------------------------------------------------------------------------

/// What an intent handler gets as its first argument: the request's
/// `execution_id`, `intent`, `tenant` and `session`, and the session's state.
#[pyclass(module = "utp._utp", name = "IntentContext", frozen)]
struct PyIntentContext {
    ctx: IntentContext,
}

#[pymethods]
impl PyIntentContext {
    /// The id of this request (also in the record `submit_intent` returns).
    #[getter]
    fn execution_id(&self) -> &str {
        &self.ctx.execution_id
    }

    /// The intent type submitted.
    #[getter]
    fn intent(&self) -> &str {
        &self.ctx.intent
    }

    #[getter]
    fn tenant(&self) -> Option<&str> {
        self.ctx.tenant.as_deref()
    }

    #[getter]
    fn session(&self) -> Option<&str> {
        self.ctx.session.as_deref()
    }

    /// The session's state as a dict (`{}` without a session); a copy.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let state = py.detach(|| self.ctx.state());
            to_py(py, &state)
        })
    }

    /// Set one key of the session's state (shared by the session's requests and
    /// workflows); `value=None` removes it. False when the request has no session.
    fn set_state(&self, py: Python<'_>, key: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        guarded(py, || {
            let value = to_json(py, value, 0)?;
            Ok(py.detach(|| self.ctx.set_state(key, value)))
        })
    }

    /// `{execution_id, intent, tenant, session_id}`.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || to_py(py, &self.ctx.to_value()))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let show = |v: Option<&str>| -> PyResult<String> {
            Ok(match v {
                Some(s) => PyString::new(py, s).repr()?.to_string(),
                None => "None".into(),
            })
        };
        Ok(format!(
            "<utp.IntentContext intent={} execution_id={} tenant={} session={}>",
            show(Some(&self.ctx.intent))?,
            show(Some(&self.ctx.execution_id))?,
            show(self.ctx.tenant.as_deref())?,
            show(self.ctx.session.as_deref())?,
        ))
    }
}

/// The code a handler's exception stands for: a `utp.UtpError` keeps its `.code`
/// (a `NotFoundError` from a nested `call_tool` stays `NOT_FOUND`), anything else
/// is `TOOL_FAILED`.
fn raised_code(py: Python<'_>, e: &PyErr) -> ErrorCode {
    let Ok(types) = error_types(py) else { return ErrorCode::ToolFailed };
    if !e.get_type(py).is_subclass(types.base.bind(py)).unwrap_or(false) {
        return ErrorCode::ToolFailed;
    }
    let code = e.value(py).getattr("code").and_then(|c| c.extract::<String>()).unwrap_or_default();
    ErrorCode::ALL.into_iter().find(|c| c.as_str() == code).unwrap_or(ErrorCode::ToolFailed)
}

/// Run an intent handler `func(ctx, params)` on the calling (blocking-pool) thread;
/// an `async def` handler is run to its end with `asyncio.run` there. What it raises
/// becomes the error of a `failed` record, naming the intent and the exception.
fn run_intent_handler(py: Python<'_>, callback: &Callback, ctx: IntentContext, params: &Value) -> Result<Value, Error> {
    let intent = ctx.intent.clone();
    let Some(func) = callback.get(py) else {
        return Err(Error::with_code(
            ErrorCode::ToolFailed,
            format!("intent '{intent}': its Python handler was released (intent unregistered or engine closed)"),
        ));
    };
    let raised = |e: PyErr| Error::with_code(raised_code(py, &e), format!("intent '{intent}' handler raised {}", describe(py, &e)));
    let context = Py::new(py, PyIntentContext { ctx }).map_err(raised)?;
    let params = to_py(py, params).map_err(raised)?;
    let result = call_maybe_async(py, &func, (context, params)).map_err(raised)?;
    to_json(py, &result, 0).map_err(|e| {
        Error::with_code(
            ErrorCode::ToolFailed,
            format!("intent '{intent}' handler returned a value without a JSON form: {}", e.value(py)),
        )
    })
}

/// An intent target that is not a handler: a workflow as `workflow_source` takes it.
fn intent_workflow(py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<WorkflowSource> {
    if target.is_instance_of::<PyDict>() || target.is_instance_of::<PyString>() {
        return workflow_source(py, target); // its own message for an empty string, a bad dict
    }
    workflow_source(py, target).map_err(|_| {
        invalid(
            py,
            format!(
                "intent target must be a workflow (dict, YAML/JSON text, or a path) or a callable handler fn(ctx, params); got {}",
                type_name(target)
            ),
        )
    })
}

/// The runtime engine. `utp.Engine` (Python) subclasses this to add the `*_async`
/// twins and the context manager.
#[pyclass(module = "utp._utp", name = "Engine", subclass, frozen)]
struct PyEngine {
    // `None` once closed. Methods clone the Arc, so `close()` never waits for a call.
    running: Mutex<Option<Arc<Running>>>,
    /// The Python callables the core holds, visible to the garbage collector.
    callbacks: Mutex<HashMap<Slot, Arc<Callback>>>,
}

impl PyEngine {
    fn running(&self, py: Python<'_>) -> PyResult<Arc<Running>> {
        let guard = self.running.lock().map_err(|_| invalid(py, "engine lock poisoned"))?;
        guard.clone().ok_or_else(|| invalid(py, "engine is closed"))
    }

    fn keep(&self, slot: Slot, callback: Arc<Callback>) {
        let old = locked(&self.callbacks).insert(slot, callback);
        // Dropped here, outside the lock: releasing it may run Python code (`__del__`).
        drop(old.and_then(|c| c.take()));
    }

    /// Release the callables of the slots `pick` selects; returns them so the caller
    /// drops them after every lock is gone.
    fn release_where(&self, pick: impl Fn(&Slot) -> bool) -> Vec<(Slot, Option<Py<PyAny>>)> {
        let mut map = locked(&self.callbacks);
        let slots: Vec<Slot> = map.keys().filter(|s| pick(s)).cloned().collect();
        let taken: Vec<(Slot, Arc<Callback>)> = slots.into_iter().filter_map(|s| map.remove(&s).map(|c| (s, c))).collect();
        drop(map);
        taken.into_iter().map(|(s, c)| (s, c.take())).collect()
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

/// The `store=` argument: "memory" (the default) keeps the config's store (memory
/// unless the config names one); "sqlite:PATH" replaces the config's store url and
/// keeps the rest of its `store` mapping (durability, retention, recover). A relative
/// PATH is relative to the working directory (not to the config file's folder).
fn apply_store(py: Python<'_>, config: &mut Config, store: &str) -> PyResult<()> {
    let store = store.trim();
    if store == "memory" {
        return Ok(());
    }
    let Some(path) = store.strip_prefix("sqlite:") else {
        return Err(invalid(py, format!("store must be \"memory\" or \"sqlite:PATH\", got '{store}'")));
    };
    if path.trim().is_empty() {
        return Err(invalid(py, "store 'sqlite:' needs a database path after 'sqlite:' (e.g. \"sqlite:utp.db\")"));
    }
    let mut path = PathBuf::from(path);
    if path.is_relative() {
        let cwd = std::env::current_dir()
            .map_err(|e| invalid(py, format!("store '{store}': cannot resolve the relative path: {e}")))?;
        path = cwd.join(path);
    }
    let url = Value::String(format!("sqlite:{}", path.to_string_lossy()));
    match config.other.get_mut("store") {
        Some(Value::Object(section)) => {
            section.remove("path");
            section.insert("url".into(), url);
        }
        _ => {
            config.other.insert("store".into(), url);
        }
    }
    Ok(())
}

/// `older_than` of `prune`: seconds (int or float) or text like "30d", "12h", "90s".
fn age(py: Python<'_>, older_than: &Bound<'_, PyAny>) -> PyResult<Duration> {
    if older_than.is_instance_of::<PyBool>()
        || !(older_than.is_instance_of::<PyInt>()
            || older_than.is_instance_of::<PyFloat>()
            || older_than.is_instance_of::<PyString>())
    {
        return Err(invalid(
            py,
            format!("older_than must be seconds (int or float) or text like \"30d\", got {}", type_name(older_than)),
        ));
    }
    let value = to_json(py, older_than, 0)?;
    utp_core::config::parse_duration(&value).map_err(|e| invalid(py, format!("older_than: {e}")))
}

/// A workflow argument: a dict (the definition), a `str` (a path when it names a
/// file, else YAML/JSON text) or an `os.PathLike` (a file).
fn workflow_source(py: Python<'_>, workflow: &Bound<'_, PyAny>) -> PyResult<WorkflowSource> {
    if workflow.is_instance_of::<PyDict>() {
        return Ok(WorkflowSource::Definition(to_json(py, workflow, 0)?));
    }
    if let Ok(s) = workflow.cast::<PyString>() {
        let text = s.to_cow()?;
        if text.trim().is_empty() {
            return Err(invalid(py, "workflow is an empty string: expected a dict, YAML/JSON text or a file path"));
        }
        return Ok(WorkflowSource::from_text(&text));
    }
    if let Ok(p) = workflow.extract::<PathBuf>() {
        return Ok(WorkflowSource::Path(p));
    }
    Err(invalid(
        py,
        format!("workflow must be a dict, YAML/JSON text, or a path (str or os.PathLike); got {}", type_name(workflow)),
    ))
}

/// Workflow inputs: a dict or None (no inputs).
fn workflow_inputs(py: Python<'_>, inputs: Option<&Bound<'_, PyAny>>) -> PyResult<Value> {
    match inputs {
        Some(i) if !i.is_none() => {
            if !i.is_instance_of::<PyDict>() {
                return Err(invalid(py, format!("inputs must be a dict or None, got {}", type_name(i))));
            }
            to_json(py, i, 0)
        }
        _ => Ok(Value::Object(Map::new())),
    }
}

fn run_options(
    py: Python<'_>,
    session: Option<String>,
    tenant: Option<String>,
    user: Option<String>,
    timeout: Option<f64>,
    cancel: Option<CancellationToken>,
) -> PyResult<RunOptions> {
    let timeout = timeout.map(|t| seconds(py, t, "timeout")).transpose()?;
    Ok(RunOptions { tenant, session, user, timeout, cancel })
}

/// The request of `plan` / `run`: a non-empty `str`.
fn plan_request(py: Python<'_>, request: &Bound<'_, PyAny>) -> PyResult<String> {
    let Ok(text) = request.cast::<PyString>() else {
        return Err(invalid(py, format!("request must be a str (what the workflow should do), got {}", type_name(request))));
    };
    let text = text.to_cow()?;
    if text.trim().is_empty() {
        return Err(invalid(py, "request is an empty string: say what the workflow should do"));
    }
    Ok(text.into_owned())
}

fn value_list<'py>(py: Python<'py>, values: &[Value]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for value in values {
        list.append(to_py(py, value)?)?;
    }
    Ok(list)
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
    /// `utp.yaml`/`utp.json`, or None for defaults; `store` is "memory" or
    /// "sqlite:PATH" (which wins over the config's `store` url). Manuals listed in the
    /// config's `manuals` are registered, and with a SQLite store the executions a
    /// previous process left unfinished are resumed (those whose tools are registered
    /// by then; call `recover()` after `register_tool` for the others), before the
    /// constructor returns. A store that cannot be opened (locked by another engine,
    /// not a database) raises `StoreError`.
    #[new]
    #[pyo3(signature = (config=None, store="memory"))]
    fn new(py: Python<'_>, config: Option<&Bound<'_, PyAny>>, store: &str) -> PyResult<Self> {
        guarded(py, || {
            let mut config = load_config(py, config)?;
            apply_store(py, &mut config, store)?;
            let runtime = engine_threads::runtime_builder()
                .build()
                .map_err(|e| raise(py, ErrorCode::Internal, format!("cannot start the runtime: {e}")))?;
            // On the engine's own runtime: executions resumed here keep running on it.
            match py.detach(|| runtime.block_on(CoreEngine::open(config))) {
                Ok(engine) => {
                    let running = Running { engine, runtime: Some(runtime) };
                    Ok(PyEngine { running: Mutex::new(Some(Arc::new(running))), callbacks: Mutex::new(HashMap::new()) })
                }
                Err(e) => {
                    runtime.shutdown_background();
                    Err(to_py_err(py, &e))
                }
            }
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
        guarded(py, || {
            let removed = self.running(py)?.engine.deregister_manual(name);
            if removed {
                let prefix = format!("{name}.");
                drop(self.release_where(|s| matches!(s, Slot::Tool(t) if t.starts_with(&prefix))));
            }
            Ok(removed)
        })
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
    ///
    /// The domain layer decides first: a denial raises `PermissionDeniedError`, a
    /// rate limit `RateLimitedError` (`.retry_after` seconds), and an escalated call
    /// waits for `approve()` — or, with `fail_fast_on_approval=True`, raises
    /// `ApprovalRequiredError` (`.approval_id`) at once; call again with
    /// `approval_id=` once it is approved. `user` is what `per: user` rate limits count.
    #[pyo3(signature = (name, args=None, *, tenant=None, session=None, timeout=None, user=None, approval_id=None, fail_fast_on_approval=false))]
    #[allow(clippy::too_many_arguments)]
    fn call_tool<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        args: Option<&Bound<'py, PyAny>>,
        tenant: Option<String>,
        session: Option<String>,
        timeout: Option<f64>,
        user: Option<String>,
        approval_id: Option<String>,
        fail_fast_on_approval: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let (args, options, cancel) =
                call_request(py, args, timeout, tenant, session, user, approval_id, fail_fast_on_approval)?;
            let r = self.running(py)?;
            // A sequential HTTP call is driven on this thread (`Engine::blocking_call`):
            // 7 context switches per call became 1, 1.6x the calls/s on one core.
            let blocking = r.engine.blocking_call(name);
            let call = r.engine.call_tool(name, args, options);
            let result = match blocking.here() {
                true => r.block_on_here_interruptible(py, call, &cancel)?,
                false => r.block_on_interruptible(py, call, &cancel)?,
            };
            to_py(py, &result.map_err(|e| to_py_err(py, &e))?)
        })
    }

    /// The native half of `Engine.call_tool_async`: converts the arguments here (as
    /// `call_tool`), then polls the call once on this thread with the GIL released,
    /// inside the runtime's context. A call that finished in that poll (a `text` tool,
    /// a denial, an unknown tool...) returns its result or raises its error at once;
    /// one that waits (I/O, a Python tool, an approval...) is spawned on the runtime
    /// and a `_PendingCall` is returned: `future` is then settled exactly once, through
    /// `settler` (one per event loop, see `_Settler`), with the result or the error.
    #[pyo3(signature = (name, args, tenant, session, timeout, user, approval_id, fail_fast_on_approval, future, settler))]
    #[allow(clippy::too_many_arguments)]
    fn _call_tool_start<'py>(
        &self,
        py: Python<'py>,
        name: String,
        args: Option<&Bound<'py, PyAny>>,
        tenant: Option<String>,
        session: Option<String>,
        timeout: Option<f64>,
        user: Option<String>,
        approval_id: Option<String>,
        fail_fast_on_approval: bool,
        future: Bound<'py, PyAny>,
        settler: Bound<'py, PySettler>,
    ) -> PyResult<Bound<'py, PyAny>> {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        guarded(py, || {
            let (args, options, cancel) =
                call_request(py, args, timeout, tenant, session, user, approval_id, fail_fast_on_approval)?;
            let r = self.running(py)?;
            // A call over the network always waits: polled here first, it would only build
            // its request on the loop's thread, which also runs every coroutine; a worker
            // of the runtime builds it instead (a third more calls/s with 64 in flight).
            let waits = r.engine.tool(&name).is_ok_and(|t| t.tool.tool_call_template.does_io());
            let held = r.clone();
            let mut call = Box::pin(async move { held.engine.call_tool(&name, args, options).await });
            // First poll: no thread hop for a call that does not wait. A Python tool or
            // rule is only queued on the blocking pool here (never run inline), so
            // holding nothing the GIL-taking threads need, this cannot deadlock.
            let first = match waits {
                true => Poll::Pending,
                false => py.detach(|| {
                    let _context = r.rt().enter();
                    call.as_mut().poll(&mut Context::from_waker(Waker::noop()))
                }),
            };
            match first {
                Poll::Ready(result) => to_py(py, &result.map_err(|e| to_py_err(py, &e))?),
                Poll::Pending => {
                    let delivery = Delivery { target: Some((settler.unbind(), future.unbind())) };
                    // The task's first poll replaces the no-op waker.
                    drop(r.rt().spawn(async move {
                        let result = call.await;
                        delivery.send(result);
                    }));
                    Ok(Bound::new(py, PyPendingCall { cancel })?.into_any())
                }
            }
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
            let callback = Callback::new(func.unbind());
            let held = callback.clone();
            let tool = name.to_string();
            let handler: NativeHandler = Arc::new(move |args: Value| {
                let (callback, tool) = (held.clone(), tool.clone());
                Box::pin(async move {
                    call_python(move |py| match callback.get(py) {
                        Some(func) => call_python_tool(py, &func, &tool, &args),
                        None => Err(Error::with_code(
                            ErrorCode::ToolFailed,
                            format!("tool '{tool}': its Python function was released (engine closed)"),
                        )),
                    })
                    .await
                    .map_err(|e| Error::with_code(ErrorCode::Internal, format!("Python tool thread failed: {e}")))?
                })
            });
            let r = self.running(py)?;
            let full = r
                .engine
                .register_tool(name, handler, inputs, outputs, description, tags.unwrap_or_default())
                .map_err(|e| to_py_err(py, &e))?;
            self.keep(Slot::Tool(full.clone()), callback);
            Ok(full)
        })
    }

    // ----- domain layer (design §6); `utp.DomainLayer` wraps these -----

    /// Add the business rule `name`: `func(tool, action, params)` (sync or
    /// `async def`) runs on an engine thread before every call and returns a bool
    /// or a `Decision`. An exception, another return type, or no answer within
    /// `timeout` seconds denies the call with a message naming the rule.
    #[pyo3(signature = (name, func, timeout=10.0))]
    fn _add_business_rule(&self, py: Python<'_>, name: &str, func: Bound<'_, PyAny>, timeout: f64) -> PyResult<()> {
        guarded(py, || {
            if !func.is_callable() {
                return Err(invalid(py, format!("business rule '{name}': fn must be callable, got {}", type_name(&func))));
            }
            let limit = seconds(py, timeout, "timeout")?;
            if limit.is_zero() {
                return Err(invalid(py, "timeout must be more than 0 seconds"));
            }
            let callback = Callback::new(func.unbind());
            let (held, rule_name) = (callback.clone(), name.to_string());
            let rule: HostRule = Arc::new(move |tool: String, action: String, params: Value| {
                let (callback, rule_name) = (held.clone(), rule_name.clone());
                Box::pin(async move {
                    let task = call_python(move |py| run_rule(py, &callback, &rule_name, tool, action, params));
                    match tokio::time::timeout(limit, task).await {
                        Ok(Ok(verdict)) => verdict,
                        Ok(Err(e)) => Err(format!("its thread failed: {e}")),
                        Err(_) => Err(format!("it did not answer within {:.3} s", limit.as_secs_f64())),
                    }
                })
            });
            let r = self.running(py)?;
            r.engine.add_business_rule(name, rule).map_err(|e| to_py_err(py, &e))?;
            self.keep(Slot::Rule(name.to_string()), callback);
            Ok(())
        })
    }

    /// Remove a business rule; False when none has that name. Its function is released.
    fn _remove_business_rule(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        guarded(py, || {
            let removed = self.running(py)?.engine.remove_business_rule(name);
            drop(self.release_where(|s| matches!(s, Slot::Rule(n) if n == name)));
            Ok(removed)
        })
    }

    /// Dry run of the domain checks (business rules included) for a call.
    #[pyo3(signature = (tool_name, args=None, tenant=None))]
    fn _check<'py>(
        &self,
        py: Python<'py>,
        tool_name: &str,
        args: Option<&Bound<'py, PyAny>>,
        tenant: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let args = match args {
                Some(a) if !a.is_none() => {
                    if !a.is_instance_of::<PyDict>() {
                        return Err(invalid(py, format!("args must be a dict or None, got {}", type_name(a))));
                    }
                    to_json(py, a, 0)?
                }
                _ => Value::Null,
            };
            let r = self.running(py)?;
            let cancel = CancellationToken::new();
            let checked = r.block_on_interruptible(py, r.engine.check(tool_name, args, tenant.as_deref()), &cancel)?;
            to_py(py, &checked.map_err(|e| to_py_err(py, &e))?)
        })
    }

    // ----- events (design §8); `utp.EventBus` wraps these -----

    /// Subscribe `callback(event: dict)` (sync or `async def`) to the event types
    /// matching the glob `pattern`; it runs on the subscription's own thread. Returns
    /// the subscription id.
    fn _subscribe(&self, py: Python<'_>, pattern: &str, callback: Bound<'_, PyAny>) -> PyResult<u64> {
        guarded(py, || {
            if !callback.is_callable() {
                return Err(invalid(py, format!("callback must be callable, got {}", type_name(&callback))));
            }
            check_pattern(py, pattern, "event pattern")?;
            let stored = Callback::new(callback.unbind());
            let (held, shown) = (stored.clone(), pattern.trim().to_string());
            let handler: EventHandler = Arc::new(move |event: Arc<Event>| {
                Python::attach(|py| run_subscriber(py, &held, &shown, &event))
            });
            let r = self.running(py)?;
            let id = r.engine.subscribe(pattern, handler).map_err(|e| to_py_err(py, &e))?;
            self.keep(Slot::Subscription(id.0), stored);
            Ok(id.0)
        })
    }

    /// End a subscription; False when the id is unknown or already ended.
    fn _unsubscribe(&self, py: Python<'_>, id: u64) -> PyResult<bool> {
        guarded(py, || {
            let removed = match self.running(py) {
                Ok(r) => r.engine.unsubscribe(SubscriptionId(id)),
                Err(_) => false, // closed: every subscription already ended
            };
            drop(self.release_where(|s| *s == Slot::Subscription(id)));
            Ok(removed)
        })
    }

    /// Events from the in-memory history, oldest first (the last `limit`; 0 or None: all kept).
    #[pyo3(signature = (limit=None, r#type=None, execution_id=None, tool=None, tenant=None, since=None))]
    #[allow(clippy::too_many_arguments)]
    fn _history<'py>(
        &self,
        py: Python<'py>,
        limit: Option<usize>,
        r#type: Option<String>,
        execution_id: Option<String>,
        tool: Option<String>,
        tenant: Option<String>,
        since: Option<u64>,
    ) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            if let Some(t) = &r#type {
                check_pattern(py, t, "type")?;
            }
            let filter = HistoryFilter { limit, kind: r#type, execution_id, tool, tenant, since };
            let r = self.running(py)?;
            let events = py.detach(|| r.engine.history(&filter));
            let list = PyList::empty(py);
            for event in events {
                list.append(to_py(py, &event.to_value())?)?;
            }
            Ok(list)
        })
    }

    /// Wait (GIL released) until every subscriber has handled what was published so
    /// far, at most `timeout` seconds; True when they are all idle.
    #[pyo3(signature = (timeout=5.0))]
    fn _flush_events(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        guarded(py, || {
            let timeout = seconds(py, timeout, "timeout")?;
            let r = self.running(py)?;
            Ok(py.detach(|| r.engine.events().flush(timeout)))
        })
    }

    // ----- workflows (design §7) -----

    /// Run a workflow to its end and return its record: `{execution_id, workflow,
    /// status, inputs, outputs, error, steps: {id: {status, output, error, attempts,
    /// ...}}, session_id, tenant, ...}`. `workflow` is a dict, YAML/JSON text or a file
    /// path. A run that fails, times out (`timeout` seconds for the whole run) or is
    /// cancelled still returns its record (`status`, `error`); `ValidationFailedError`
    /// is raised for a definition or inputs that do not validate, before any step
    /// runs. Ctrl-C cancels the run and raises `KeyboardInterrupt`.
    #[pyo3(signature = (workflow, inputs=None, *, session=None, tenant=None, user=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn run_workflow<'py>(
        &self,
        py: Python<'py>,
        workflow: &Bound<'py, PyAny>,
        inputs: Option<&Bound<'py, PyAny>>,
        session: Option<String>,
        tenant: Option<String>,
        user: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let source = workflow_source(py, workflow)?;
            let inputs = workflow_inputs(py, inputs)?;
            self.running(py)?.run_to_record(py, (session, tenant, user, timeout), |engine, options| async move {
                engine.run_workflow(source, inputs, options).await.map(|r| r.to_json())
            })
        })
    }

    /// Plan a workflow for a natural-language `request` (design §10) without running
    /// it: `{definition, provider, model, rounds, usage}`. `definition` is the
    /// workflow (design §7 JSON, validated against the registered tools: pass it to
    /// `run_workflow`); `provider` is "offline", "openai" or "anthropic" (the config's
    /// `planner` section; offline by default), `rounds` the completions asked (0
    /// offline, 1 + repairs with a model), `usage` `{prompt_tokens,
    /// completion_tokens, total_tokens}`. `inputs` (a dict) are the inputs the plan
    /// will run with: the model is told their names and types, never their values.
    /// `session` / `tenant` name the session whose state keys the model is told.
    /// Raises `PlannerError` when no valid workflow came out (the offline planner
    /// cannot map the request, or the model's answers never validated: the message
    /// says why), `TimeoutError` / `TransportError` when the model cannot be reached,
    /// `InvalidArgumentError` for an empty or non-str request. The GIL is released
    /// while waiting; Ctrl-C stops the planning and raises `KeyboardInterrupt`.
    #[pyo3(signature = (request, *, session=None, tenant=None, inputs=None))]
    fn plan<'py>(
        &self,
        py: Python<'py>,
        request: &Bound<'py, PyAny>,
        session: Option<String>,
        tenant: Option<String>,
        inputs: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let request = plan_request(py, request)?;
            let inputs = match inputs {
                Some(i) if !i.is_none() => Some(workflow_inputs(py, Some(i))?),
                _ => None,
            };
            let options = PlanOptions { tenant, session, inputs, client: None };
            let r = self.running(py)?;
            let planned = r.block_on_interruptible(py, r.engine.plan(&request, options), &CancellationToken::new())?;
            to_py(py, &planned.map_err(|e| to_py_err(py, &e))?.to_value())
        })
    }

    /// Plan a workflow for `request` and run it with `inputs` (design §4 `run`):
    /// the execution record as `run_workflow` returns it, with `plan` added
    /// (`{definition, provider, model, rounds, usage}`, as `plan()` returns). Planning
    /// errors are raised as by `plan()`; a run that fails, times out (`timeout`
    /// seconds for the run) or is cancelled still returns its record. Ctrl-C stops
    /// the planning or cancels the run, and raises `KeyboardInterrupt`.
    #[pyo3(signature = (request, inputs=None, *, session=None, tenant=None, user=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        request: &Bound<'py, PyAny>,
        inputs: Option<&Bound<'py, PyAny>>,
        session: Option<String>,
        tenant: Option<String>,
        user: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let request = plan_request(py, request)?;
            let inputs = workflow_inputs(py, inputs)?;
            self.running(py)?.run_to_record(py, (session, tenant, user, timeout), |engine, options| async move {
                engine.run_request(&request, inputs, options).await
            })
        })
    }

    /// Validate and start a workflow in the background; returns its execution id at
    /// once. Follow it with `execution(id)`, wait with `wait_execution(id)`, control
    /// it with `cancel` / `suspend` / `resume`.
    #[pyo3(signature = (workflow, inputs=None, *, session=None, tenant=None, user=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_workflow<'py>(
        &self,
        py: Python<'py>,
        workflow: &Bound<'py, PyAny>,
        inputs: Option<&Bound<'py, PyAny>>,
        session: Option<String>,
        tenant: Option<String>,
        user: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<String> {
        guarded(py, || {
            let source = workflow_source(py, workflow)?;
            let inputs = workflow_inputs(py, inputs)?;
            let options = run_options(py, session, tenant, user, timeout, None)?;
            let r = self.running(py)?;
            let started = py.detach(|| {
                let _context = r.rt().enter();
                r.engine.start_workflow(source, inputs, options).map(|exec| exec.id.clone())
            });
            started.map_err(|e| to_py_err(py, &e))
        })
    }

    /// Wait for an execution to finish and return its full record. With `timeout`
    /// (seconds), `TimeoutError` is raised when it is still going by then (it keeps
    /// running). Ctrl-C stops the waiting (`KeyboardInterrupt`), not the run.
    #[pyo3(signature = (execution_id, timeout=None))]
    fn wait_execution<'py>(&self, py: Python<'py>, execution_id: &str, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let limit = timeout.map(|t| seconds(py, t, "timeout")).transpose()?;
            let r = self.running(py)?;
            let engine = &r.engine;
            let waited = async move {
                match limit {
                    None => engine.wait_execution(execution_id).await.map(Some),
                    Some(limit) => match tokio::time::timeout(limit, engine.wait_execution(execution_id)).await {
                        Ok(record) => record.map(Some),
                        Err(_) => Ok(None),
                    },
                }
            };
            let waited = r.block_on_interruptible(py, waited, &CancellationToken::new())?;
            match waited.map_err(|e| to_py_err(py, &e))? {
                Some(record) => to_py(py, &record.to_json()),
                None => Err(raise(
                    py,
                    ErrorCode::Timeout,
                    format!(
                        "execution '{execution_id}' did not finish within {:.3} s (it is still running; engine.cancel() stops it)",
                        limit.unwrap_or_default().as_secs_f64()
                    ),
                )),
            }
        })
    }

    /// Check a workflow against the registered tools without running anything;
    /// `ValidationFailedError` lists every problem found.
    fn validate_workflow(&self, py: Python<'_>, workflow: &Bound<'_, PyAny>) -> PyResult<()> {
        guarded(py, || {
            let source = workflow_source(py, workflow)?;
            let r = self.running(py)?;
            py.detach(|| r.engine.workflow(source).map(drop)).map_err(|e| to_py_err(py, &e))
        })
    }

    /// An execution's full record (as `run_workflow` returns it); `NotFoundError` for an unknown id.
    fn execution<'py>(&self, py: Python<'py>, execution_id: &str) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let record = self.running(py)?.engine.execution(execution_id).map_err(|e| to_py_err(py, &e))?;
            to_py(py, &record.to_json())
        })
    }

    /// Execution records without step outputs, oldest first; `status` ("running",
    /// "completed", "failed", "cancelled", "suspended", "waiting_approval", "created")
    /// and `session` filter them.
    #[pyo3(signature = (status=None, session=None))]
    fn executions<'py>(&self, py: Python<'py>, status: Option<&str>, session: Option<&str>) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            let r = self.running(py)?;
            let records = py.detach(|| r.engine.executions(status, session)).map_err(|e| to_py_err(py, &e))?;
            let records: Vec<_> = records.iter().map(|record| record.to_json()).collect();
            value_list(py, &records)
        })
    }

    /// Cancel a run: its running tool calls are cancelled and it ends `cancelled`.
    /// False when it had already finished.
    fn cancel(&self, py: Python<'_>, execution_id: &str) -> PyResult<bool> {
        guarded(py, || self.running(py)?.engine.cancel(execution_id).map_err(|e| to_py_err(py, &e)))
    }

    /// Suspend a run: steps already running finish, no new step starts until
    /// `resume`. False when it had finished or was already suspended.
    fn suspend(&self, py: Python<'_>, execution_id: &str) -> PyResult<bool> {
        guarded(py, || self.running(py)?.engine.suspend(execution_id).map_err(|e| to_py_err(py, &e)))
    }

    /// Resume a suspended run. False when it was not suspended.
    fn resume(&self, py: Python<'_>, execution_id: &str) -> PyResult<bool> {
        guarded(py, || self.running(py)?.engine.resume(execution_id).map_err(|e| to_py_err(py, &e)))
    }

    /// A session's state (`state` in workflow expressions), keyed by (tenant, session); `{}` when empty.
    #[pyo3(signature = (session, tenant=None))]
    fn session_state<'py>(&self, py: Python<'py>, session: &str, tenant: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || to_py(py, &self.running(py)?.engine.session_state(tenant, Some(session))))
    }

    /// Set one key of a session's state; `value=None` removes the key.
    #[pyo3(signature = (session, key, value, tenant=None))]
    fn set_session_state(
        &self,
        py: Python<'_>,
        session: &str,
        key: &str,
        value: &Bound<'_, PyAny>,
        tenant: Option<&str>,
    ) -> PyResult<()> {
        guarded(py, || {
            let value = to_json(py, value, 0)?;
            if self.running(py)?.engine.set_session_value(tenant, Some(session), key, value) {
                Ok(())
            } else {
                Err(invalid(py, format!("session state of '{session}' could not be set")))
            }
        })
    }

    // ----- store (design §9) -----

    /// Resume the executions a previous process left unfinished in the store (the
    /// constructor already did this for those whose tools were registered then): steps
    /// it committed keep their results and never run again, the rest run now, in the
    /// background. Executions using a tool that is still not registered stay in the
    /// store for a later call. Returns the ids resumed (none with `store="memory"`).
    fn recover(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        guarded(py, || {
            let r = self.running(py)?;
            r.block_on(py, r.engine.recover()).map_err(|e| to_py_err(py, &e))
        })
    }

    /// Events from the store's audit log (every process that used the store), in
    /// store order, each with its store sequence number `seq`; with `store="memory"`,
    /// this engine's in-memory history. Filters: `execution_id`, `type` (a glob as in
    /// `subscribe`), `after` (events with a greater `seq`, for paging), `limit`, and
    /// `since` / `until` (RFC 3339 times, `since` inclusive, `until` exclusive).
    #[pyo3(signature = (execution_id=None, r#type=None, after=None, limit=None, since=None, until=None))]
    #[allow(clippy::too_many_arguments)]
    fn stored_events<'py>(
        &self,
        py: Python<'py>,
        execution_id: Option<String>,
        r#type: Option<String>,
        after: Option<u64>,
        limit: Option<usize>,
        since: Option<String>,
        until: Option<String>,
    ) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            if let Some(t) = &r#type {
                check_pattern(py, t, "type")?;
            }
            let filter = EventFilter { execution_id, kind: r#type, after_id: after, since, until, limit };
            let r = self.running(py)?;
            let events = py.detach(|| r.engine.stored_events(&filter)).map_err(|e| to_py_err(py, &e))?;
            value_list(py, &events)
        })
    }

    /// Delete finished executions (with their steps) and events older than
    /// `older_than` (seconds, or text like "30d", "12h") from the store now; running
    /// and suspended executions are never touched. Returns the rows deleted (0 with
    /// `store="memory"`). Config `store.retention` does this periodically.
    fn prune(&self, py: Python<'_>, older_than: &Bound<'_, PyAny>) -> PyResult<usize> {
        guarded(py, || {
            let age = age(py, older_than)?;
            let r = self.running(py)?;
            py.detach(|| r.engine.prune_store(age)).map_err(|e| to_py_err(py, &e))
        })
    }

    // ----- intents -----

    /// Route the intent type `intent_type` to `target`: a workflow (a dict, YAML/JSON
    /// text or a file path; validated now, `ValidationFailedError` otherwise) run with
    /// the params as its inputs, or a handler `fn(ctx: IntentContext, params: dict)`
    /// (sync or `async def`) that runs on an engine thread and returns a JSON-able
    /// value. `AlreadyExistsError` when the type is taken.
    fn register_intent(&self, py: Python<'_>, intent_type: &str, target: Bound<'_, PyAny>) -> PyResult<()> {
        guarded(py, || {
            let is_workflow = target.is_instance_of::<PyDict>() || target.is_instance_of::<PyString>();
            if is_workflow || !target.is_callable() {
                let source = intent_workflow(py, &target)?;
                let r = self.running(py)?;
                return py.detach(|| r.engine.register_intent_workflow(intent_type, source)).map_err(|e| to_py_err(py, &e));
            }
            let callback = Callback::new(target.unbind());
            let held = callback.clone();
            let handler: IntentHandler = Arc::new(move |ctx: IntentContext, params: Value| {
                let callback = held.clone();
                Box::pin(async move {
                    call_python(move |py| run_intent_handler(py, &callback, ctx, &params))
                        .await
                        .map_err(|e| Error::with_code(ErrorCode::Internal, format!("Python intent handler thread failed: {e}")))?
                })
            });
            let r = self.running(py)?;
            r.engine.register_intent(intent_type, IntentTarget::Handler(handler)).map_err(|e| to_py_err(py, &e))?;
            self.keep(Slot::Intent(intent_type.to_string()), callback);
            Ok(())
        })
    }

    /// Remove an intent type; False when none is registered under it. A handler is released.
    fn unregister_intent(&self, py: Python<'_>, intent_type: &str) -> PyResult<bool> {
        guarded(py, || {
            let removed = match self.running(py) {
                Ok(r) => r.engine.unregister_intent(intent_type),
                Err(_) => false, // closed: every handler already released
            };
            drop(self.release_where(|s| matches!(s, Slot::Intent(t) if t == intent_type)));
            Ok(removed)
        })
    }

    /// The registered intent types, sorted.
    fn intents(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        guarded(py, || Ok(self.running(py)?.engine.intents()))
    }

    /// Handle a request of type `intent_type` with `params` (a dict; None = `{}`).
    /// A workflow intent returns its execution record (as `run_workflow`) with
    /// `"intent"`; a handler intent returns `{execution_id, intent, status
    /// ("completed" | "failed"), output, error ({code, message} or None), tenant,
    /// session_id}` — what the handler raises makes a `failed` record. Raises
    /// `NotFoundError` for an unknown type and `ValidationFailedError` for params a
    /// workflow refuses. Ctrl-C raises `KeyboardInterrupt` at once (a handler already
    /// running finishes on its thread).
    #[pyo3(signature = (intent_type, params=None, *, tenant=None, session=None))]
    fn submit_intent<'py>(
        &self,
        py: Python<'py>,
        intent_type: &str,
        params: Option<&Bound<'py, PyAny>>,
        tenant: Option<String>,
        session: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let params = match params {
                Some(p) if !p.is_none() && !p.is_instance_of::<PyDict>() => {
                    return Err(invalid(py, format!("params must be a dict or None, got {}", type_name(p))));
                }
                _ => workflow_inputs(py, params)?,
            };
            let r = self.running(py)?;
            let submitted = r.engine.submit_intent(intent_type, params, tenant.as_deref(), session.as_deref());
            let record = r.block_on_interruptible(py, submitted, &CancellationToken::new())?;
            to_py(py, &record.map_err(|e| to_py_err(py, &e))?)
        })
    }

    // ----- approvals and metrics -----

    /// Approvals of escalated calls, oldest first; `pending_only` keeps those still waiting.
    #[pyo3(signature = (pending_only=false))]
    fn approvals<'py>(&self, py: Python<'py>, pending_only: bool) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            let list = PyList::empty(py);
            for info in self.running(py)?.engine.approvals(pending_only) {
                let value = serde_json::to_value(&info).map_err(|e| raise(py, ErrorCode::Internal, e.to_string()))?;
                list.append(to_py(py, &value)?)?;
            }
            Ok(list)
        })
    }

    /// Grant (or with `approved=False` refuse) an approval; the waiting call proceeds
    /// (or is denied). Returns the approval as a dict.
    #[pyo3(signature = (approval_id, approved=true, reason=None))]
    fn approve<'py>(
        &self,
        py: Python<'py>,
        approval_id: &str,
        approved: bool,
        reason: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let info = self.running(py)?.engine.approve(approval_id, approved, reason).map_err(|e| to_py_err(py, &e))?;
            let value = serde_json::to_value(&info).map_err(|e| raise(py, ErrorCode::Internal, e.to_string()))?;
            to_py(py, &value)
        })
    }

    /// Counters and histograms (calls per tool and outcome, denials, rate limits, events).
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || to_py(py, &self.running(py)?.engine.metrics()))
    }

    /// The metrics in Prometheus text exposition format.
    fn metrics_text(&self, py: Python<'_>) -> PyResult<String> {
        guarded(py, || Ok(self.running(py)?.engine.metrics_text()))
    }

    // ----- garbage collector -----

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never block here: a lock held elsewhere just hides these edges this round.
        let Ok(map) = self.callbacks.try_lock() else { return Ok(()) };
        for callback in map.values() {
            if let Ok(func) = callback.func.try_lock() {
                visit.call(&*func)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        // Breaks cycles through the callables (a rule or subscriber that refers to
        // the engine); the core's closures then hold nothing and rules fail closed.
        drop(self.release_where(|_| true));
    }

    /// Release the engine; further calls raise `InvalidArgumentError`. Idempotent.
    /// Subscriptions stop and the stored Python callables are released. Workflow runs
    /// still going stop where they are (`wait_execution` returns their record with
    /// status "cancelled"); with a store they stay unfinished there, for the next
    /// engine on it to resume, and the store's file is released before `close()` returns.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, || {
            let taken = self.running.lock().map_err(|_| invalid(py, "engine lock poisoned"))?.take();
            if let Some(running) = &taken {
                py.detach(|| running.engine.close(CLOSE_GRACE));
            }
            let released = self.release_where(|_| true);
            if let Some(running) = &taken {
                for (slot, _) in &released {
                    if let Slot::Subscription(id) = slot {
                        running.engine.unsubscribe(SubscriptionId(*id));
                    }
                }
            }
            drop(released);
            if let Some(running) = taken {
                // Calls still in flight on other threads hold their own Arc; the last
                // one shuts the runtime down. Otherwise join the workers now.
                if let Ok(running) = Arc::try_unwrap(running) {
                    py.detach(|| running.shutdown(Duration::from_secs(10)));
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
    engine_threads::watch_finalization(py)?;
    m.add_class::<PyEngine>()?;
    m.add_class::<PyDecision>()?;
    m.add_class::<PyIntentContext>()?;
    m.add_class::<PyPendingCall>()?;
    m.add_class::<PySettler>()?;
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

/// The arguments and options of one `call_tool` / `call_tool_async`, converted while
/// the GIL is held; the token cancels the call.
#[allow(clippy::too_many_arguments)]
fn call_request(
    py: Python<'_>,
    args: Option<&Bound<'_, PyAny>>,
    timeout: Option<f64>,
    tenant: Option<String>,
    session: Option<String>,
    user: Option<String>,
    approval_id: Option<String>,
    fail_fast_on_approval: bool,
) -> PyResult<(Value, CallOptions, CancellationToken)> {
    let args = match args {
        Some(a) if !a.is_none() => to_json(py, a, 0)?,
        _ => Value::Null,
    };
    let timeout = timeout.map(|t| seconds(py, t, "timeout")).transpose()?;
    let cancel = CancellationToken::new();
    let options = CallOptions {
        timeout,
        tenant,
        session,
        cancel: Some(cancel.clone()),
        user,
        fail_fast_on_approval,
        approval_id,
        trace: None,
    };
    Ok((args, options, cancel))
}
