//! How engines let go of the interpreter: at exit, and across `fork()`.
//!
//! - **The gate.** Every engine-owned thread (runtime workers and blocking pool,
//!   event subscriber threads `utp-events-N`, whichever runs host callbacks) takes
//!   the GIL only through [`with_interpreter`], which counts it in and refuses once
//!   the gate is shut. A thread that took the GIL while CPython finalizes would be
//!   ended by `pthread_exit` (3.11-3.13) in the middle of Rust frames, which aborts
//!   the process; a thread that takes it after finalization touches freed memory.
//! - **At exit.** An `atexit` hook, registered when `utp._utp` is imported, runs
//!   before finalization starts (after `threading` joined the non-daemon threads):
//!   it shuts the gate (refused callbacks fail their call: a tool fails, a rule
//!   denies, an event is dropped), closes every live engine as `close()` does, and
//!   waits with the GIL released, at most [`EXIT_GRACE`], for the callbacks already
//!   inside Python to return.
//! - **Fork.** A tokio runtime and the engine's threads do not survive `fork()`: in
//!   the child every method of an engine made before the fork raises
//!   `InvalidArgumentError` (a new `Engine` in the child works), and releasing it
//!   there touches none of its threads or locks (`forked_since`). A
//!   `pthread_atfork` child handler bumps the fork generation and recounts the gate.
//!   The modules engine threads use are imported with `utp._utp` (`install`).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, Once, Weak};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::callbacks::locked;
use crate::engine::EngineState;

/// How long the exit hook waits for host callbacks already running to return.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Threads inside [`with_interpreter`], plus [`SHUT`] once the interpreter is going away.
static GATE: AtomicUsize = AtomicUsize::new(0);
const SHUT: usize = 1 << (usize::BITS - 1);

/// Bumped in the child of every `fork()`.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Engines not yet dropped, closed by the exit hook.
static LIVE: Mutex<Vec<Weak<EngineState>>> = Mutex::new(Vec::new());

thread_local! {
    /// How deep this thread is inside `with_interpreter` (kept for the atfork recount).
    static INSIDE: Cell<usize> = const { Cell::new(0) };
    /// Set on the thread that runs the exit hook: the one that goes on to finalize.
    static RUNS_EXIT: Cell<bool> = const { Cell::new(false) };
}

/// `py.detach(f)` for a host thread that waits on the engine with the GIL released.
///
/// A thread that takes the GIL back once CPython finalizes is ended by `pthread_exit`
/// in the middle of Rust frames, which aborts the process: a daemon thread blocked in
/// `call_tool` at exit would. So a thread coming back once the exit hook has shut the
/// gate parks for ever instead (only daemon threads can: `threading` joins the others
/// before the hook runs; the process ends without them). The thread that runs the
/// hook, and so finalizes, goes on. Counted in the gate while it takes the GIL back,
/// so the hook waits for a thread that was already on its way.
pub(crate) fn detach<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    let out = py.detach(|| {
        let out = f();
        if GATE.fetch_add(1, SeqCst) & SHUT != 0 && !RUNS_EXIT.get() {
            GATE.fetch_sub(1, SeqCst);
            loop {
                std::thread::park();
            }
        }
        out
    });
    GATE.fetch_sub(1, SeqCst);
    out
}

/// Run `f` (which may take the GIL) unless the interpreter is going away; `None` then.
/// Engine threads call Python only through this.
pub(crate) fn with_interpreter<R>(f: impl FnOnce() -> R) -> Option<R> {
    if GATE.fetch_add(1, SeqCst) & SHUT != 0 {
        GATE.fetch_sub(1, SeqCst);
        return None;
    }
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            INSIDE.set(INSIDE.get().saturating_sub(1));
            GATE.fetch_sub(1, SeqCst);
        }
    }
    INSIDE.set(INSIDE.get() + 1);
    let _leave = Leave;
    Some(f())
}

/// True once the exit hook shut the gate.
pub(crate) fn interpreter_leaving() -> bool {
    GATE.load(SeqCst) & SHUT != 0
}

/// The current fork generation, recorded by an engine when it starts.
pub(crate) fn fork_generation() -> u64 {
    FORK_GENERATION.load(SeqCst)
}

/// True in the child of a `fork()` that happened after `generation` was recorded.
pub(crate) fn forked_since(generation: u64) -> bool {
    fork_generation() != generation
}

/// Keep `state` for the exit hook (dropped engines are pruned here).
pub(crate) fn track(state: &std::sync::Arc<EngineState>) {
    let mut live = locked(&LIVE);
    live.retain(|w| w.strong_count() > 0);
    live.push(std::sync::Arc::downgrade(state));
}

/// The `atexit` hook: shut the gate, close the live engines, wait for the callbacks in flight.
#[pyfunction]
fn utp_exit(py: Python<'_>) {
    RUNS_EXIT.set(true);
    GATE.fetch_or(SHUT, SeqCst);
    let live: Vec<_> = std::mem::take(&mut *locked(&LIVE)).into_iter().filter_map(|w| w.upgrade()).collect();
    for state in live {
        drop(state.close(py));
    }
    let settled = py.detach(|| {
        let deadline = Instant::now() + EXIT_GRACE;
        while GATE.load(SeqCst) & !SHUT != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    });
    if !settled {
        eprintln!(
            "utp: a Python tool, rule or subscriber was still running {} s after exit began; \
             the interpreter may end its thread",
            EXIT_GRACE.as_secs()
        );
    }
}

/// In the child of a fork (one thread, a copy of memory): engines made before are
/// unusable, and only this thread can be inside the gate.
extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, SeqCst);
    let shut = GATE.load(SeqCst) & SHUT;
    GATE.store(shut | INSIDE.get(), SeqCst);
}

/// At import: register the exit hook and the fork handler, and import the modules
/// engine threads use. A module import holds a lock of importlib's; a `fork()` while an
/// engine thread is in the middle of one leaves that lock held for ever in the child,
/// whose next import of it hangs. Imported here, no engine thread imports them.
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    for module in ["inspect", "logging"] {
        py.import(module)?;
    }
    static FORK_HANDLER: Once = Once::new();
    FORK_HANDLER.call_once(|| {
        // SAFETY: registering a handler that only touches atomics and a const
        // thread-local, both valid in a child right after fork.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
    let hook = wrap_pyfunction!(utp_exit, py)?;
    py.import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
