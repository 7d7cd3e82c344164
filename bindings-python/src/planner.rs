//! The planner from Python: `plan` a workflow for a natural-language request, or
//! plan it and `run` it.

use pyo3::prelude::*;
use pyo3::types::PyString;
use utp_core::CancellationToken;
use utp_core::host::{self, KeyStyle};

use crate::engine::PyEngine;
use crate::errors::{IntoPyResult, guarded, invalid};
use crate::host_options::OptionMap;
use crate::json::{to_py, type_name};
use crate::workflows::workflow_inputs;

/// The request of `plan` / `run`: a non-empty `str`.
fn plan_request(py: Python<'_>, request: &Bound<'_, PyAny>) -> PyResult<String> {
    let Ok(text) = request.cast::<PyString>() else {
        return Err(invalid(
            py,
            format!("request must be a str (what the workflow should do), got {}", type_name(request)),
        ));
    };
    let text = text.to_cow()?;
    if text.trim().is_empty() {
        return Err(invalid(py, "request is an empty string: say what the workflow should do"));
    }
    Ok(text.into_owned())
}

#[pymethods]
impl PyEngine {
    /// Plan a workflow for a natural-language `request` (docs/design.md §10) without running
    /// it: `{definition, provider, model, rounds, usage}`. `definition` is the
    /// workflow (docs/design.md §7 JSON, validated against the registered tools: pass it to
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
            // A dict or None, said in Python's terms first (as `run_workflow` does).
            let inputs = inputs.filter(|i| !i.is_none()).map(|i| workflow_inputs(py, Some(i))).transpose()?;
            let options =
                OptionMap::default().string("session", session).string("tenant", tenant).value("inputs", inputs);
            let options = host::plan_options(&options.into_value(), "plan", KeyStyle::Snake).py_err(py)?;
            let r = self.running(py)?;
            let planned = r.block_on_interruptible(py, r.engine.plan(&request, options), &CancellationToken::new())?;
            to_py(py, &planned.py_err(py)?.to_value())
        })
    }

    /// Plan a workflow for `request` and run it with `inputs` (docs/design.md §4 `run`):
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
}
