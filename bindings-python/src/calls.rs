//! Tool calls: `call_tool` (blocking with the GIL released; Ctrl-C cancels the call)
//! and the native half of `Engine.call_tool_async` (`_call_tool_start`): a call that
//! waits is spawned on the runtime and its asyncio future settled on the event loop's
//! own thread, in batches, through that loop's `_Settler`.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyList;
use serde_json::Value;
use utp_core::host::{self, KeyStyle};
use utp_core::{CallOptions, CancellationToken, Error, ErrorCode};

use crate::callbacks::locked;
use crate::engine::PyEngine;
use crate::errors::{IntoPyResult, guarded, raise, to_py_err};
use crate::host_calls;
use crate::host_options::OptionMap;
use crate::json::{to_json, to_py};

/// A call started by `_call_tool_start` that did not finish at once; `cancel()` cancels
/// it (a CLI tool's process is killed, a Python tool's result is dropped). Its `done`
/// callback still runs once, with the `CancelledError`.
#[pyclass(module = "utp._utp", name = "_PendingCall", frozen)]
pub(crate) struct PyPendingCall {
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
pub(crate) struct PySettler {
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
pub(crate) struct Delivery {
    target: Option<(Py<PySettler>, Py<PyAny>)>,
}

impl Delivery {
    /// `future` to be settled through `settler` (streams.rs shares it).
    pub(crate) fn new(settler: Py<PySettler>, future: Py<PyAny>) -> Delivery {
        Delivery { target: Some((settler, future)) }
    }

    pub(crate) fn send(mut self, result: Result<Value, Error>) {
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

/// The arguments and options of one `call_tool` / `call_tool_async`, converted while
/// the GIL is held; the token cancels the call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn call_request(
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
    // Most calls pass no options: nothing to check, and the hot path builds no map.
    let given = timeout.is_some()
        || tenant.is_some()
        || session.is_some()
        || user.is_some()
        || approval_id.is_some()
        || fail_fast_on_approval;
    if !given {
        let cancel = CancellationToken::new();
        return Ok((args, CallOptions { cancel: Some(cancel.clone()), ..CallOptions::default() }, cancel));
    }
    let options = OptionMap::default()
        .seconds("timeout", timeout)
        .map(|map| {
            map.string("tenant", tenant)
                .string("session", session)
                .string("user", user)
                .string("approval_id", approval_id)
                .flag("fail_fast_on_approval", fail_fast_on_approval)
        })
        .and_then(|map| host::call_options(&map.into_value(), "call_tool", KeyStyle::Snake))
        .py_err(py)?;
    let cancel = CancellationToken::new();
    let options = CallOptions { cancel: Some(cancel.clone()), ..options };
    Ok((args, options, cancel))
}

#[pymethods]
impl PyEngine {
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
            // A call whose Python tool and rules may run on this thread is driven here, and
            // they run here (host_calls.rs); a sequential HTTP call is driven on this thread
            // too (`Engine::blocking_call`): one context switch per call instead of seven
            // (docs/benchmarks.md has the figures).
            let blocking = r.engine.blocking_call(name, &options);
            let call = r.engine.call_tool(name, args, options);
            let result = if blocking.callbacks_here() {
                host_calls::drive_with_callbacks(&r, py, call, &cancel)?
            } else if blocking.here() {
                r.block_on_here_interruptible(py, call, &cancel)?
            } else {
                r.block_on_interruptible(py, call, &cancel)?
            };
            to_py(py, &result.py_err(py)?)
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
        use std::task::Poll;
        guarded(py, || {
            let (args, options, cancel) =
                call_request(py, args, timeout, tenant, session, user, approval_id, fail_fast_on_approval)?;
            let r = self.running(py)?;
            // A call over the network always waits: polled here first, it would only build
            // its request on the loop's thread, which also runs every coroutine; a worker
            // of the runtime builds it instead, which serves many calls in flight better.
            let waits = r.engine.tool(&name).is_ok_and(|t| t.tool.tool_call_template.does_io());
            // Its Python rules may run in the first poll, on this thread (host_calls.rs).
            let here = !waits && r.engine.host_callbacks_here(&name, &options);
            let held = r.clone();
            let mut call = Box::pin(async move { held.engine.call_tool(&name, args, options).await });
            // First poll: no thread hop for a call that does not wait. A Python rule
            // reached in it runs here (`here`) or is queued on the engine's threads, a
            // Python tool is queued there; the GIL is released meanwhile, so this cannot
            // deadlock.
            let (first, interrupt) = match waits {
                true => (Poll::Pending, None),
                false => host_calls::poll_first(&r, py, call.as_mut(), &cancel, here),
            };
            match first {
                Poll::Ready(result) => match interrupt {
                    Some(interrupt) => Err(interrupt),
                    None => to_py(py, &result.py_err(py)?),
                },
                Poll::Pending => {
                    let delivery = Delivery::new(settler.unbind(), future.unbind());
                    // The task's first poll replaces the no-op waker.
                    drop(r.rt().spawn(async move {
                        let result = call.await;
                        delivery.send(result);
                    }));
                    if let Some(interrupt) = interrupt {
                        return Err(interrupt); // The call was cancelled; it settles its future.
                    }
                    Ok(Bound::new(py, PyPendingCall { cancel })?.into_any())
                }
            }
        })
    }
}
