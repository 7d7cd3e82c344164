//! Python tools and business rules run on the Python thread that waits for the call.
//!
//! A blocking `call_tool` whose callbacks may run where it is polled
//! (`Engine::blocking_call` → `callbacks_here`) is driven on the calling thread
//! ([`drive_with_callbacks`]); a Python tool or rule reached there takes the GIL on that
//! thread and runs at once ([`run_python`]): no hand-off to a pool thread and no wake-up
//! back. The first poll of a `call_tool_async` on the event loop's thread runs its rules
//! there the same way ([`poll_first`]), but not its tool: a sync tool would stop the loop
//! for as long as it runs, and calls in flight together must run together. Everything else (a call with a timeout of its own, a rule registered
//! with a timeout, an `async def` function, a workflow step, a call a callback makes) runs
//! on the engine's threads (`engine_threads::call_python`), where the wait can stop at
//! its deadline. docs/architecture.md, "Host callbacks on the calling thread", has the
//! whole table.
//!
//! Ctrl-C: a callback run on the main thread gets the `KeyboardInterrupt` itself. It is
//! kept here ([`note_interrupt`]), the call is cancelled (it ends `CANCELLED`, with the
//! same events as a call interrupted while it waited), and the waiting method raises the
//! `KeyboardInterrupt` once the call has ended.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use utp_core::{CancellationToken, host_callbacks_here, poll_with_callbacks, run_host_callback};

use crate::engine::{Running, interruptible};
use crate::engine_threads::call_python;

/// The call this thread drives with its callbacks here: its cancellation, whether its
/// tool may run here too (not on an event loop's thread), and the `KeyboardInterrupt` a
/// callback raised, if one did.
struct Caller {
    cancel: CancellationToken,
    tools: bool,
    interrupt: Option<PyErr>,
}

/// What a Python callback is, for [`run_python`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Callback {
    Tool,
    Rule,
}

thread_local! {
    static CALLER: RefCell<Option<Caller>> = const { RefCell::new(None) };
}

/// This thread drives `cancel`'s call until dropped (restoring an outer one).
struct Driving(Option<Caller>);

impl Driving {
    fn enter(cancel: &CancellationToken, tools: bool) -> Driving {
        let caller = Caller { cancel: cancel.clone(), tools, interrupt: None };
        Driving(CALLER.with(|c| c.replace(Some(caller))))
    }

    /// The `KeyboardInterrupt` a callback raised during the call, if any.
    fn interrupt(&self) -> Option<PyErr> {
        CALLER.with(|c| c.borrow_mut().as_mut().and_then(|caller| caller.interrupt.take()))
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        CALLER.with(|c| *c.borrow_mut() = self.0.take());
    }
}

/// Called with what a Python callback raised: a `KeyboardInterrupt` raised on the
/// thread that drives the call is kept for the waiting method, and cancels the call.
pub(crate) fn note_interrupt(py: Python<'_>, error: &PyErr) {
    if !error.is_instance_of::<PyKeyboardInterrupt>(py) {
        return;
    }
    CALLER.with(|c| {
        if let Some(caller) = c.borrow_mut().as_mut() {
            caller.interrupt = Some(error.clone_ref(py));
            caller.cancel.cancel();
        }
    });
}

fn interrupted() -> bool {
    CALLER.with(|c| c.borrow().as_ref().is_some_and(|caller| caller.interrupt.is_some()))
}

/// Whether a callback of this `kind` reached now may run on this thread.
fn runs_here(kind: Callback) -> bool {
    host_callbacks_here()
        && CALLER.with(|c| c.borrow().as_ref().is_some_and(|caller| kind == Callback::Rule || caller.tools))
}

/// Run a Python callback for the current future: right here when this thread is the
/// one waiting for the call (`host_callbacks_here`, and a tool not on an event loop's
/// thread) and `here` allows it (the callback is sync, and has no deadline of its own);
/// else on an engine thread (`call_python`). A callback interrupted by Ctrl-C here never
/// answers: its call ends `CANCELLED`.
pub(crate) async fn run_python<R, F>(kind: Callback, here: bool, call: F) -> Result<R, String>
where
    F: for<'py> FnOnce(Python<'py>) -> R + Send + 'static,
    R: Send + 'static,
{
    if here && runs_here(kind) {
        // Through the exit gate, as on engine threads: the exit hook waits for a callback
        // running here, and none starts once the interpreter is going away.
        let out = run_host_callback(|| crate::engine_threads::attach(call));
        if interrupted() {
            return std::future::pending().await;
        }
        return out.ok_or_else(|| crate::engine_threads::INTERPRETER_LEAVING.to_string());
    }
    call_python(call).await
}

/// Whether `func` is an `async def` function (or a partial of one): such a callback runs
/// on an engine thread, under `asyncio.run`, never on a thread that may run a loop.
pub(crate) fn is_coroutine_function(func: &Bound<'_, PyAny>) -> PyResult<bool> {
    func.py().import("inspect")?.call_method1("iscoroutinefunction", (func,))?.is_truthy()
}

/// `call_tool`'s wait when its callbacks run here: drive `future` on this thread with
/// the GIL released (`Engine::drive_with_callbacks`), Ctrl-C cancelling it, and raise a
/// `KeyboardInterrupt` a callback got.
pub(crate) fn drive_with_callbacks<F>(
    r: &Running,
    py: Python<'_>,
    future: F,
    cancel: &CancellationToken,
) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let driving = Driving::enter(cancel, true);
    let out =
        crate::host_exit::detach(py, || r.engine.drive_with_callbacks(r.rt().handle(), interruptible(future, cancel)));
    match driving.interrupt() {
        Some(interrupt) => Err(interrupt),
        None => out,
    }
}

/// The first poll of a `call_tool_async` on the event loop's thread, with the GIL
/// released, inside the runtime's context; `here`: its rules may run in it. Also
/// returns the `KeyboardInterrupt` a rule got (the call is then cancelled: poll it on).
pub(crate) fn poll_first<F>(
    r: &Running,
    py: Python<'_>,
    call: Pin<&mut F>,
    cancel: &CancellationToken,
    here: bool,
) -> (Poll<F::Output>, Option<PyErr>)
where
    F: Future + Send + ?Sized,
    F::Output: Send,
{
    use std::task::Waker;
    let driving = here.then(|| Driving::enter(cancel, false));
    let polled = crate::host_exit::detach(py, || {
        let _context = r.rt().enter();
        let mut cx = Context::from_waker(Waker::noop());
        match here {
            true => poll_with_callbacks(call, &mut cx),
            false => call.poll(&mut cx),
        }
    });
    (polled, driving.and_then(|d| d.interrupt()))
}
