//! Python code run by the engine's runtime threads: tools, business rules and
//! intent handlers.
//!
//! - A thread with no Python thread state gets one from `Python::attach` and
//!   loses it when the call ends. CPython maps and unmaps the state's frame stack
//!   each time, and each unmap is a TLB shootdown on every CPU. So a runtime thread
//!   keeps the state of its first call until it stops (`attach`).
//! - A sync Python call made for a future a worker polls runs on that worker, in a
//!   task of its own (`call_python`). The awaiting future stays free to time out or
//!   be cancelled, as with `spawn_blocking`, without the hop to another thread.

use std::cell::Cell;
use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use tokio::runtime::{Builder, Handle, RuntimeFlavor};

use crate::host_exit::{interpreter_leaving, with_interpreter};

/// What a Python callback refused by the exit gate (host_exit.rs) fails with.
pub(crate) const INTERPRETER_LEAVING: &str = "the Python interpreter is exiting: Python callbacks no longer run";

thread_local! {
    /// Whether this thread belongs to an engine's runtime (set by `on_thread_start`).
    static ENGINE_THREAD: Cell<bool> = const { Cell::new(false) };
    /// The Python thread state this thread keeps, once it called Python.
    static KEPT: Cell<*mut ffi::PyThreadState> = const { Cell::new(ptr::null_mut()) };
}

/// The engine's multi-thread runtime, with its threads keeping their Python state.
pub(crate) fn runtime_builder() -> Builder {
    let mut builder = Builder::new_multi_thread();
    builder
        .worker_threads(2)
        .thread_name("utp-worker")
        .on_thread_start(|| ENGINE_THREAD.set(true))
        .on_thread_stop(release_thread_state)
        .enable_all();
    builder
}

/// `Python::attach` from an engine thread, through the exit gate (host_exit.rs):
/// `None` once the interpreter is going away. Keeps the thread's Python state when
/// it is a runtime thread.
pub(crate) fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    with_interpreter(|| {
        keep_thread_state();
        Python::attach(f)
    })
}

fn keep_thread_state() {
    if !ENGINE_THREAD.get() || !KEPT.get().is_null() {
        return;
    }
    // SAFETY: the interpreter is initialized and this thread has no Python state yet,
    // so it does not hold the GIL (a thread in the middle of a call is left alone).
    // Ensure creates the state and takes the GIL; SaveThread gives the GIL back and
    // leaves Ensure's use counted, so later attaches reuse the state instead of
    // deleting it.
    unsafe {
        if ffi::Py_IsInitialized() == 0 || !ffi::PyGILState_GetThisThreadState().is_null() {
            return;
        }
        let _ = ffi::PyGILState_Ensure();
        KEPT.set(ffi::PyEval_SaveThread());
    }
}

/// `on_thread_stop`: give back the state kept by `keep_thread_state`.
fn release_thread_state() {
    let kept = KEPT.replace(ptr::null_mut());
    // Once the interpreter is going away, taking the GIL may end this thread on the
    // spot; the interpreter frees the states left behind as it finishes.
    if kept.is_null() || interpreter_leaving() {
        return;
    }
    // SAFETY: `kept` is this thread's state, saved without the GIL by
    // `keep_thread_state`; restoring it takes the GIL, and releasing the use
    // Ensure counted deletes the state and drops the GIL. The gate keeps the exit
    // hook waiting until that is done.
    let _ = with_interpreter(|| unsafe {
        if ffi::Py_IsInitialized() == 0 {
            return;
        }
        ffi::PyEval_RestoreThread(kept);
        ffi::PyGILState_Release(ffi::PyGILState_STATE::PyGILState_UNLOCKED);
    });
}

/// Run `call` with the GIL for the current future. Polled on an engine thread (a
/// workflow step, an async call), it runs in a task of its own on a worker, inside
/// `block_in_place`: the worker's other tasks go to another thread, and come back
/// when a short call returns first. Polled on a host thread (a blocking `call_tool`
/// drives its call there), it runs on the blocking pool: a task would cost that
/// thread a hop to a worker and back all the same, and the handoff on top. Either
/// way the caller's timeout or cancellation ends the wait at once, and the call
/// finishes on its own. Errs (never panics) with no runtime, a failed task, or an
/// interpreter that is exiting.
pub(crate) async fn call_python<R, F>(call: F) -> Result<R, String>
where
    F: for<'py> FnOnce(Python<'py>) -> R + Send + 'static,
    R: Send + 'static,
{
    let handle = Handle::try_current().map_err(|e| format!("no runtime to run it on: {e}"))?;
    let on_worker = ENGINE_THREAD.get() && handle.runtime_flavor() == RuntimeFlavor::MultiThread;
    if interpreter_leaving() {
        return Err(INTERPRETER_LEAVING.to_string());
    }
    let task = if on_worker {
        handle.spawn(async move { tokio::task::block_in_place(|| attach(call)) })
    } else {
        handle.spawn_blocking(|| attach(call))
    };
    task.await.map_err(|e| e.to_string())?.ok_or_else(|| INTERPRETER_LEAVING.to_string())
}
