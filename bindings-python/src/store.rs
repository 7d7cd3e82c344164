//! The store from Python: resume the executions a previous process left unfinished,
//! read the store's audit log, prune old rows. (The `store=` argument of `Engine()`
//! is read in engine.rs.)

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PyString};
use utp_core::host::{self, KeyStyle};

use crate::engine::PyEngine;
use crate::errors::{IntoPyResult, guarded, invalid};
use crate::host_options::OptionMap;
use crate::json::{to_json, type_name, value_list};

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

#[pymethods]
impl PyEngine {
    // ----- store (docs/design.md §9) -----

    /// Resume the executions a previous process left unfinished in the store (the
    /// constructor already did this for those whose tools were registered then): steps
    /// it committed keep their results and never run again, the rest run now, in the
    /// background. Executions using a tool that is still not registered stay in the
    /// store for a later call. Returns the ids resumed (none with `store="memory"`).
    fn recover(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        guarded(py, || {
            let r = self.running(py)?;
            r.block_on(py, r.engine.recover()).py_err(py)
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
            let filter = OptionMap::default()
                .string("execution_id", execution_id)
                .string("type", r#type)
                .count("after", after)
                .count("limit", limit.map(|n| n as u64))
                .string("since", since)
                .string("until", until);
            let filter = host::event_filter(&filter.into_value(), "stored_events", KeyStyle::Snake).py_err(py)?;
            let r = self.running(py)?;
            let events = crate::host_exit::detach(py, || r.engine.stored_events(&filter)).py_err(py)?;
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
            crate::host_exit::detach(py, || r.engine.prune_store(age)).py_err(py)
        })
    }
}
