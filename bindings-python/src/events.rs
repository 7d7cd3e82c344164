//! Events from Python (`utp.EventBus` wraps these): subscribers, each run on its
//! subscription's own thread; the in-memory history; flushing; and the metrics.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use utp_core::host::{self, KeyStyle};
use utp_core::{Event, EventHandler, SubscriptionId};

use crate::callbacks::{Callback, Slot, call_maybe_async, describe, log_exception};
use crate::engine::PyEngine;
use crate::engine_threads::attach;
use crate::errors::{IntoPyResult, guarded, invalid};
use crate::host_options::OptionMap;
use crate::json::{seconds, to_py, type_name};

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

#[pymethods]
impl PyEngine {
    // ----- events (docs/design.md §8); `utp.EventBus` wraps these -----

    /// Subscribe `callback(event: dict)` (sync or `async def`) to the event types
    /// matching the glob `pattern`; it runs on the subscription's own thread. Returns
    /// the subscription id.
    fn _subscribe(&self, py: Python<'_>, pattern: &str, callback: Bound<'_, PyAny>) -> PyResult<u64> {
        guarded(py, || {
            if !callback.is_callable() {
                return Err(invalid(py, format!("callback must be callable, got {}", type_name(&callback))));
            }
            host::event_pattern(pattern, "event pattern").py_err(py)?;
            let stored = Callback::new(callback.unbind());
            let (held, shown) = (stored.clone(), pattern.trim().to_string());
            // Once the interpreter is exiting the event is dropped (host_exit.rs).
            let handler: EventHandler = Arc::new(move |event: Arc<Event>| {
                attach(|py| run_subscriber(py, &held, &shown, &event)).unwrap_or(Ok(()))
            });
            let r = self.running(py)?;
            let id = r.engine.subscribe(pattern, handler).py_err(py)?;
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
            let filter = OptionMap::default()
                .count("limit", limit.map(|n| n as u64))
                .string("type", r#type)
                .string("execution_id", execution_id)
                .string("tool", tool)
                .string("tenant", tenant)
                .count("since", since);
            let filter = host::history_filter(&filter.into_value(), "history", KeyStyle::Snake).py_err(py)?;
            let r = self.running(py)?;
            let events = crate::host_exit::detach(py, || r.engine.history(&filter));
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
            Ok(crate::host_exit::detach(py, || r.engine.events().flush(timeout)))
        })
    }

    // ----- metrics -----

    /// Counters and histograms (calls per tool and outcome, denials, rate limits, events).
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || to_py(py, &self.running(py)?.engine.metrics()))
    }

    /// The metrics in Prometheus text exposition format.
    fn metrics_text(&self, py: Python<'_>) -> PyResult<String> {
        guarded(py, || Ok(self.running(py)?.engine.metrics_text()))
    }
}
