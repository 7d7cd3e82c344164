//! Workflows from Python: run one to its end or start it in the background; wait
//! for, inspect and control executions; the session state workflows read.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use serde_json::{Map, Value};
use utp_core::host::{self, KeyStyle};
use utp_core::workflow::{RunOptions, WorkflowSource};
use utp_core::{CancellationToken, ErrorCode};

use crate::engine::PyEngine;
use crate::errors::{IntoPyResult, guarded, invalid, raise};
use crate::host_options::{OptionMap, check_ids};
use crate::json::{seconds, to_json, to_py, type_name, value_list};

/// A workflow argument: a dict (the definition), a `str` (a path when it names a
/// file, else YAML/JSON text) or an `os.PathLike` (a file).
pub(crate) fn workflow_source(py: Python<'_>, workflow: &Bound<'_, PyAny>) -> PyResult<WorkflowSource> {
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
pub(crate) fn workflow_inputs(py: Python<'_>, inputs: Option<&Bound<'_, PyAny>>) -> PyResult<Value> {
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

pub(crate) fn run_options(
    py: Python<'_>,
    session: Option<String>,
    tenant: Option<String>,
    user: Option<String>,
    timeout: Option<f64>,
    cancel: Option<CancellationToken>,
) -> PyResult<RunOptions> {
    let options = OptionMap::default()
        .string("session", session)
        .string("tenant", tenant)
        .string("user", user)
        .seconds("timeout", timeout)
        .and_then(|map| host::run_options(&map.into_value(), "run", KeyStyle::Snake))
        .py_err(py)?;
    Ok(RunOptions { cancel, ..options })
}

#[pymethods]
impl PyEngine {
    // ----- workflows (docs/design.md §7) -----

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
            let started = crate::host_exit::detach(py, || {
                let _context = r.rt().enter();
                r.engine.start_workflow(source, inputs, options).map(|exec| exec.id.clone())
            });
            started.py_err(py)
        })
    }

    /// Wait for an execution to finish and return its full record. With `timeout`
    /// (seconds), `TimeoutError` is raised when it is still going by then (it keeps
    /// running). Ctrl-C stops the waiting (`KeyboardInterrupt`), not the run.
    #[pyo3(signature = (execution_id, timeout=None))]
    fn wait_execution<'py>(
        &self,
        py: Python<'py>,
        execution_id: &str,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
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
            match waited.py_err(py)? {
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
            crate::host_exit::detach(py, || r.engine.workflow(source).map(drop)).py_err(py)
        })
    }

    /// An execution's full record (as `run_workflow` returns it); `NotFoundError` for an unknown id.
    fn execution<'py>(&self, py: Python<'py>, execution_id: &str) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let record = self.running(py)?.engine.execution(execution_id).py_err(py)?;
            to_py(py, &record.to_json())
        })
    }

    /// Execution records without step outputs, oldest first; `status` ("running",
    /// "completed", "failed", "cancelled", "suspended", "waiting_approval", "created")
    /// and `session` filter them.
    #[pyo3(signature = (status=None, session=None))]
    fn executions<'py>(
        &self,
        py: Python<'py>,
        status: Option<&str>,
        session: Option<&str>,
    ) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            let r = self.running(py)?;
            let records = crate::host_exit::detach(py, || r.engine.executions(status, session)).py_err(py)?;
            let records: Vec<Value> = records.iter().map(|r| r.to_json()).collect();
            value_list(py, &records)
        })
    }

    /// Cancel a run: its running tool calls are cancelled and it ends `cancelled`.
    /// False when it had already finished.
    fn cancel(&self, py: Python<'_>, execution_id: &str) -> PyResult<bool> {
        guarded(py, || self.running(py)?.engine.cancel(execution_id).py_err(py))
    }

    /// Suspend a run: steps already running finish, no new step starts until
    /// `resume`. False when it had finished or was already suspended.
    fn suspend(&self, py: Python<'_>, execution_id: &str) -> PyResult<bool> {
        guarded(py, || self.running(py)?.engine.suspend(execution_id).py_err(py))
    }

    /// Resume a suspended run. False when it was not suspended.
    fn resume(&self, py: Python<'_>, execution_id: &str) -> PyResult<bool> {
        guarded(py, || self.running(py)?.engine.resume(execution_id).py_err(py))
    }

    /// A session's state (`state` in workflow expressions), keyed by (tenant, session); `{}` when empty.
    #[pyo3(signature = (session, tenant=None))]
    fn session_state<'py>(&self, py: Python<'py>, session: &str, tenant: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            check_ids(tenant, Some(session)).py_err(py)?;
            to_py(py, &self.running(py)?.engine.session_state(tenant, Some(session)))
        })
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
            check_ids(tenant, Some(session)).py_err(py)?;
            let value = to_json(py, value, 0)?;
            if self.running(py)?.engine.set_session_value(tenant, Some(session), key, value) {
                Ok(())
            } else {
                Err(invalid(py, format!("session state of '{session}' could not be set")))
            }
        })
    }
}
