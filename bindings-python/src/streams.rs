//! Streaming calls: `Engine.call_tool_stream` returns a `ToolStream`, an iterator whose
//! `__next__` waits for the tool's next item with the GIL released (Ctrl-C closes the
//! stream and raises `KeyboardInterrupt`); `Engine.call_tool_stream_async` (utp/__init__.py)
//! wraps one in an async iterator whose `__anext__` goes through `_next_start`: the
//! next item is awaited on the engine's runtime and its asyncio future settled on the
//! loop's own thread through the loop's `_Settler`, as `call_tool_async` results are.
//!
//! Threads: the stream's reader (core `transport::sse`) runs on the engine's runtime
//! and hands items over through a small channel, so items arrive as the server sends
//! them. One `next` runs at a time (an async mutex over the source); `close()` never
//! waits for it: it cancels the call's token, which ends a `next` in flight with
//! `CancelledError`, and whichever of the two holds the source then drops it, which
//! ends the reader and closes the connection. Dropping the `ToolStream` does the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use pyo3::PyTraverseError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use serde_json::Value;
use utp_core::{CallOptions, CancellationToken, Engine as CoreEngine, ItemStream};

use crate::calls::{Delivery, PySettler, call_request};
use crate::engine::PyEngine;
use crate::errors::{IntoPyResult, guarded};
use crate::json::to_py;

/// A call whose stream is not open yet.
struct Call {
    engine: CoreEngine,
    name: String,
    args: Value,
    options: CallOptions,
}

impl Call {
    async fn open(self) -> utp_core::Result<Source> {
        Ok(Source::Open(self.engine.call_tool_stream(&self.name, self.args, self.options).await?))
    }
}

/// Where a stream's items come from.
enum Source {
    /// Not opened yet (the async form opens on its first `__anext__`).
    Deferred(Box<Call>),
    Open(ItemStream),
    /// Ended, failed or closed: the connection is released.
    Ended,
}

impl Source {
    /// The call of a deferred source (leaving `Ended` until it opens); `None` otherwise.
    fn take_deferred(&mut self) -> Option<Box<Call>> {
        match std::mem::replace(self, Source::Ended) {
            Source::Deferred(call) => Some(call),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// The part of a stream the runtime's tasks share with the Python object.
struct Shared {
    source: tokio::sync::Mutex<Source>,
    /// The call's cancellation: `close()`, Ctrl-C and dropping the stream cancel it.
    cancel: CancellationToken,
    /// Set by `close()`: a later `next` ends the iteration instead of failing.
    closed: AtomicBool,
}

impl Shared {
    /// The next item, `None` at the end. An error ends the stream.
    async fn next_item(&self) -> utp_core::Result<Option<Value>> {
        let mut source = self.source.lock().await;
        let result = self.advance(&mut source).await;
        // Closed meanwhile (or failed, or ended): release the connection now.
        if self.cancel.is_cancelled() || !matches!(result, Ok(Some(_))) {
            *source = Source::Ended;
        }
        result
    }

    async fn advance(&self, source: &mut Source) -> utp_core::Result<Option<Value>> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        if let Some(call) = source.take_deferred() {
            *source = call.open().await?;
        }
        match source {
            Source::Open(stream) => stream.next().await.transpose(),
            _ => Ok(None),
        }
    }

    /// Open a deferred source now (the sync form opens before returning).
    async fn open(&self) -> utp_core::Result<()> {
        let mut source = self.source.lock().await;
        if let Some(call) = source.take_deferred() {
            *source = call.open().await?;
        }
        Ok(())
    }

    /// Cancel the call and drop the source unless a `next` holds it (that one drops it).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.cancel.cancel();
        if let Ok(mut source) = self.source.try_lock() {
            *source = Source::Ended;
        }
    }
}

/// The items of one tool call as the server sends them: `for item in stream`.
/// `close()` (or leaving a `with` block, or dropping the stream) cancels the call and
/// closes its connection. An error mid-stream raises its `utp.UtpError` and ends it.
#[pyclass(module = "utp._utp", name = "ToolStream", frozen)]
pub(crate) struct PyToolStream {
    /// The engine whose runtime drives the stream: once it is closed, `next` raises.
    engine: Py<PyEngine>,
    shared: Arc<Shared>,
    /// The tool's name, for `repr`.
    name: String,
}

impl Drop for PyToolStream {
    fn drop(&mut self) {
        self.shared.close();
    }
}

#[pymethods]
impl PyToolStream {
    /// The engine edge, for cycles through a callable the engine holds (the engine's
    /// `__clear__` breaks them).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.engine)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next item; waits with the GIL released. Ctrl-C closes the stream.
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        guarded(py, || {
            if self.shared.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            let running = self.engine.get().running(py)?;
            let shared = self.shared.clone();
            let next = async move { shared.next_item().await };
            let waited = running.block_on_interruptible(py, next, &self.shared.cancel);
            // Ctrl-C dropped the `next` mid-way: close the stream (and its connection) now.
            let item = waited.inspect_err(|_| self.shared.close())?;
            match item.py_err(py)? {
                Some(item) => to_py(py, &item).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Cancel the call and close its connection; a `next` in flight raises
    /// `CancelledError`, later ones end the iteration. Idempotent.
    fn close(&self) {
        self.shared.close();
    }

    /// True once `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc_info))]
    fn __exit__(&self, _exc_info: &Bound<'_, pyo3::types::PyTuple>) {
        self.shared.close();
    }

    /// The native half of `AsyncToolStream.__anext__`: wait for the next item on the
    /// runtime and settle `future` through `settler` with `[item]`, or `[]` at the end,
    /// or the error.
    fn _next_start(&self, py: Python<'_>, future: Bound<'_, PyAny>, settler: Bound<'_, PySettler>) -> PyResult<()> {
        guarded(py, || {
            let running = self.engine.get().running(py)?;
            let shared = self.shared.clone();
            let delivery = Delivery::new(settler.unbind(), future.unbind());
            drop(running.rt().spawn(async move {
                let item = shared.next_item().await;
                delivery.send(item.map(|item| Value::Array(item.into_iter().collect())));
            }));
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { " closed" } else { "" };
        format!("<utp.ToolStream of {:?}{state}>", self.name)
    }
}

#[pymethods]
impl PyEngine {
    /// Call a tool and iterate over its items as they arrive (`sse` and
    /// `streamable_http` tools; an `mcp` tool's progress, then its result; any other
    /// tool yields its one result). Options as
    /// `call_tool`; `timeout` bounds opening the stream, not the wait for items.
    /// The call is admitted and the stream opened before this returns (errors are
    /// raised here); each `next` then waits with the GIL released.
    #[pyo3(signature = (name, args=None, *, tenant=None, session=None, timeout=None, user=None, approval_id=None, fail_fast_on_approval=false))]
    #[allow(clippy::too_many_arguments)]
    fn call_tool_stream(
        slf: &Bound<'_, Self>,
        name: String,
        args: Option<&Bound<'_, PyAny>>,
        tenant: Option<String>,
        session: Option<String>,
        timeout: Option<f64>,
        user: Option<String>,
        approval_id: Option<String>,
        fail_fast_on_approval: bool,
    ) -> PyResult<PyToolStream> {
        let py = slf.py();
        guarded(py, || {
            let request = (args, timeout, tenant, session, user, approval_id, fail_fast_on_approval);
            let stream = deferred_stream(slf, name, request)?;
            let running = slf.get().running(py)?;
            let shared = stream.shared.clone();
            let open = async move { shared.open().await };
            running.block_on_interruptible(py, open, &stream.shared.cancel)?.py_err(py)?;
            Ok(stream)
        })
    }

    /// The native half of `Engine.call_tool_stream_async`: a `ToolStream` that opens on
    /// its first `_next_start` (so that nothing blocks the event loop).
    #[pyo3(signature = (name, args, tenant, session, timeout, user, approval_id, fail_fast_on_approval))]
    #[allow(clippy::too_many_arguments)]
    fn _call_tool_stream_deferred(
        slf: &Bound<'_, Self>,
        name: String,
        args: Option<&Bound<'_, PyAny>>,
        tenant: Option<String>,
        session: Option<String>,
        timeout: Option<f64>,
        user: Option<String>,
        approval_id: Option<String>,
        fail_fast_on_approval: bool,
    ) -> PyResult<PyToolStream> {
        guarded(slf.py(), || {
            deferred_stream(slf, name, (args, timeout, tenant, session, user, approval_id, fail_fast_on_approval))
        })
    }
}

/// `call_tool`'s arguments and options, in `call_request`'s order.
type StreamRequest<'a, 'py> =
    (Option<&'a Bound<'py, PyAny>>, Option<f64>, Option<String>, Option<String>, Option<String>, Option<String>, bool);

/// A stream not opened yet; the arguments are converted and checked here.
fn deferred_stream(
    engine: &Bound<'_, PyEngine>,
    name: String,
    request: StreamRequest<'_, '_>,
) -> PyResult<PyToolStream> {
    let py = engine.py();
    let (args, timeout, tenant, session, user, approval_id, fail_fast) = request;
    let (args, options, cancel) = call_request(py, args, timeout, tenant, session, user, approval_id, fail_fast)?;
    let running = engine.get().running(py)?;
    let source =
        Source::Deferred(Box::new(Call { engine: (*running.engine).clone(), name: name.clone(), args, options }));
    let shared = Shared { source: tokio::sync::Mutex::new(source), cancel, closed: AtomicBool::new(false) };
    Ok(PyToolStream { engine: engine.clone().unbind(), shared: Arc::new(shared), name })
}
