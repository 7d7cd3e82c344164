//! `utp._utp.Engine`: the core engine and the tokio runtime its methods block on,
//! opened from a config and a store, and closed. Every other method of the class is
//! in the file of its concept, in a `#[pymethods] impl PyEngine` block of its own.
//!
//! Threads: a method runs on the caller's Python thread and waits for the core with
//! the GIL released (`Running::block_on*`; the `_interruptible` ones also watch for
//! Ctrl-C); the core's own work, Python tools and rules included, runs on the
//! runtime's threads (engine_threads.rs). At exit and after `fork()` engines are
//! closed or set aside without touching their threads (host_exit.rs).

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::PyTraverseError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;
use utp_core::host;
use utp_core::workflow::RunOptions;
use utp_core::{CancellationToken, Config, Engine as CoreEngine, ErrorCode, SubscriptionId};

use crate::callbacks::{Callback, Slot, locked};
use crate::engine_threads;
use crate::errors::{IntoPyResult, guarded, invalid, raise, to_py_err};
use crate::host_exit;
use crate::json::{path_like, to_json, to_py, type_name};
use crate::workflows::run_options;

/// The core engine and the tokio runtime that drives its async methods.
pub(crate) struct Running {
    /// Dropped by hand: in the child of a fork it is leaked instead (its threads are gone).
    pub(crate) engine: ManuallyDrop<CoreEngine>,
    /// `None` only while `Running` is being dropped or shut down.
    runtime: Option<tokio::runtime::Runtime>,
    /// The fork generation it was made in (`host_exit::forked_since`).
    generation: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        if host_exit::forked_since(self.generation) {
            // In a forked child the engine's threads do not exist and its locks may be
            // held by one of them for ever: touch nothing, leak it.
            let _leaked = self.runtime.take().map(ManuallyDrop::new);
            return;
        }
        // The last reference may go with the GIL held (at the end of a method, or in
        // the garbage collector) while a blocking task waits for the GIL: never wait
        // for the runtime here. `close()` joins it with the GIL released instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        // SAFETY: dropped once, here; `engine` is not used after.
        unsafe { ManuallyDrop::drop(&mut self.engine) };
    }
}

/// How long `close()` waits for runs in the middle of a store commit.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How often a blocking call looks for Ctrl-C (signals are only seen on the main thread).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

impl Running {
    pub(crate) fn rt(&self) -> &tokio::runtime::Runtime {
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
    pub(crate) fn block_on<F>(&self, py: Python<'_>, future: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        crate::host_exit::detach(py, || self.rt().block_on(future))
    }

    /// Like `block_on`, but a pending signal (Ctrl-C → KeyboardInterrupt) cancels
    /// `cancel` and is raised at once instead of waiting for the call to finish.
    pub(crate) fn block_on_interruptible<F>(
        &self,
        py: Python<'_>,
        future: F,
        cancel: &CancellationToken,
    ) -> PyResult<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        crate::host_exit::detach(py, || self.rt().block_on(interruptible(future, cancel)))
    }

    /// The tail `run_workflow` and `run` share: the run options, a cancellation that
    /// Ctrl-C triggers, the run driven with the GIL released, its record as Python values.
    pub(crate) fn run_to_record<'py, F, Fut>(
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
        let record = self.block_on_interruptible(py, start(CoreEngine::clone(&self.engine), options), &cancel)?;
        to_py(py, &record.py_err(py)?)
    }

    /// `block_on_interruptible` driven on this thread (`Engine::block_on_here`), for a call
    /// whose I/O would otherwise cross to the runtime's threads and back. Only on a thread
    /// that runs no runtime (not, say, in a Python tool the engine runs on its blocking pool).
    pub(crate) fn block_on_here_interruptible<F>(
        &self,
        py: Python<'_>,
        future: F,
        cancel: &CancellationToken,
    ) -> PyResult<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        crate::host_exit::detach(py, || self.engine.block_on_here(interruptible(future, cancel))).py_err(py)?
    }
}

/// `future`, or a pending signal (Ctrl-C → KeyboardInterrupt), checked every
/// `SIGNAL_POLL`, which cancels `cancel` and is returned at once. The future is polled
/// first: one that ends in its first poll starts no timer.
pub(crate) async fn interruptible<F: std::future::Future>(
    future: F,
    cancel: &CancellationToken,
) -> PyResult<F::Output> {
    let mut future = std::pin::pin!(future);
    loop {
        tokio::select! {
            biased;
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

/// The runtime engine. `utp.Engine` (Python) subclasses this to add the `*_async`
/// twins and the context manager.
#[pyclass(module = "utp._utp", name = "Engine", subclass, frozen)]
pub(crate) struct PyEngine {
    /// Shared with the exit hook's list of live engines (host_exit.rs).
    state: Arc<EngineState>,
}

/// What `close()` releases: the running engine and the Python callables it holds.
pub(crate) struct EngineState {
    // `None` once closed. Methods clone the Arc, so `close()` never waits for a call.
    running: Mutex<Option<Arc<Running>>>,
    /// The Python callables the core holds, visible to the garbage collector.
    callbacks: Mutex<HashMap<Slot, Arc<Callback>>>,
}

impl PyEngine {
    pub(crate) fn running(&self, py: Python<'_>) -> PyResult<Arc<Running>> {
        let guard = self.state.running.lock().map_err(|_| invalid(py, "engine lock poisoned"))?;
        let running = guard.as_ref().ok_or_else(|| invalid(py, "engine is closed"))?;
        if host_exit::forked_since(running.generation) {
            return Err(invalid(
                py,
                format!(
                    "this Engine was created before fork() and cannot be used in the child process (pid {}): \
                     create the Engine in the child (in the multiprocessing target, gunicorn's post_fork hook...)",
                    std::process::id()
                ),
            ));
        }
        Ok(running.clone())
    }

    pub(crate) fn keep(&self, slot: Slot, callback: Arc<Callback>) {
        let old = locked(&self.state.callbacks).insert(slot, callback);
        // Dropped here, outside the lock: releasing it may run Python code (`__del__`).
        drop(old.and_then(|c| c.take()));
    }

    /// Release the callables of the slots `pick` selects; returns them so the caller
    /// drops them after every lock is gone.
    pub(crate) fn release_where(&self, pick: impl Fn(&Slot) -> bool) -> Vec<(Slot, Option<Py<PyAny>>)> {
        self.state.release_where(pick)
    }
}

impl EngineState {
    fn release_where(&self, pick: impl Fn(&Slot) -> bool) -> Vec<(Slot, Option<Py<PyAny>>)> {
        let mut map = locked(&self.callbacks);
        let slots: Vec<Slot> = map.keys().filter(|s| pick(s)).cloned().collect();
        let taken: Vec<(Slot, Arc<Callback>)> =
            slots.into_iter().filter_map(|s| map.remove(&s).map(|c| (s, c))).collect();
        drop(map);
        taken.into_iter().map(|(s, c)| (s, c.take())).collect()
    }

    /// `Engine.close()`; also run for every live engine by the exit hook.
    pub(crate) fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.running.lock().map_err(|_| invalid(py, "engine lock poisoned"))?.take();
        // After a fork the engine's threads are gone: only release the callables.
        let taken = taken.filter(|r| !host_exit::forked_since(r.generation));
        if let Some(running) = &taken {
            crate::host_exit::detach(py, || running.engine.close(CLOSE_GRACE));
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
                crate::host_exit::detach(py, || running.shutdown(Duration::from_secs(10)));
            }
        }
        Ok(())
    }
}

fn load_config(py: Python<'_>, config: Option<&Bound<'_, PyAny>>) -> PyResult<Config> {
    let Some(config) = config.filter(|c| !c.is_none()) else {
        return Config::from_value(Value::Null).py_err(py);
    };
    if config.is_instance_of::<PyDict>() {
        let value = to_json(py, config, 0)?;
        return Config::from_value(value).py_err(py);
    }
    let path = path_like(py, config, "config").map_err(|_| {
        invalid(py, format!("config must be a dict, a path to utp.yaml/utp.json, or None; got {}", type_name(config)))
    })?;
    Config::load(std::path::Path::new(&path)).py_err(py)
}

/// The `store=` argument: "memory" (the default) keeps the config's store (memory
/// unless the config names one); "sqlite:PATH" replaces the config's store url and
/// keeps the rest of its `store` mapping (`utp_core::host::StoreOverride`).
fn apply_store(config: &mut Config, store: &str) -> Result<(), utp_core::Error> {
    host::store_override(&Value::String(store.to_string()))?.apply(config)
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
            apply_store(&mut config, store).py_err(py)?;
            let runtime = engine_threads::runtime_builder()
                .build()
                .map_err(|e| raise(py, ErrorCode::Internal, format!("cannot start the runtime: {e}")))?;
            // On the engine's own runtime: executions resumed here keep running on it.
            match crate::host_exit::detach(py, || runtime.block_on(CoreEngine::open(config))) {
                Ok(engine) => {
                    let generation = host_exit::fork_generation();
                    let running = Running { engine: ManuallyDrop::new(engine), runtime: Some(runtime), generation };
                    let state = Arc::new(EngineState {
                        running: Mutex::new(Some(Arc::new(running))),
                        callbacks: Mutex::new(HashMap::new()),
                    });
                    host_exit::track(&state);
                    Ok(PyEngine { state })
                }
                Err(e) => {
                    runtime.shutdown_background();
                    Err(to_py_err(py, &e))
                }
            }
        })
    }

    // ----- garbage collector -----

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never block here: a lock held elsewhere just hides these edges this round.
        let Ok(map) = self.state.callbacks.try_lock() else { return Ok(()) };
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
        guarded(py, || self.state.close(py))
    }

    /// True once `close()` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.state.running.lock().map_err(|_| invalid(py, "engine lock poisoned"))?.is_none())
    }
}
