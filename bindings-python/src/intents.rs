//! Intents: a named kind of request routed to a workflow or to a Python handler
//! `fn(ctx: IntentContext, params)`, sync or `async def`, run on an engine thread.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::Value;
use utp_core::workflow::WorkflowSource;
use utp_core::{CancellationToken, Error, ErrorCode};
use utp_core::{IntentContext, IntentHandler, IntentTarget};

use crate::callbacks::{Callback, Slot, call_maybe_async, describe};
use crate::engine::PyEngine;
use crate::engine_threads::call_python;
use crate::errors::{IntoPyResult, error_types, guarded, invalid};
use crate::host_options::check_ids;
use crate::json::{to_json, to_py, type_name};
use crate::workflows::{workflow_inputs, workflow_source};

/// What an intent handler gets as its first argument: the request's
/// `execution_id`, `intent`, `tenant` and `session`, and the session's state.
#[pyclass(module = "utp._utp", name = "IntentContext", frozen)]
pub(crate) struct PyIntentContext {
    ctx: IntentContext,
}

#[pymethods]
impl PyIntentContext {
    /// The id of this request (also in the record `submit_intent` returns).
    #[getter]
    fn execution_id(&self) -> &str {
        &self.ctx.execution_id
    }

    /// The intent type submitted.
    #[getter]
    fn intent(&self) -> &str {
        &self.ctx.intent
    }

    #[getter]
    fn tenant(&self) -> Option<&str> {
        self.ctx.tenant.as_deref()
    }

    #[getter]
    fn session(&self) -> Option<&str> {
        self.ctx.session.as_deref()
    }

    /// The session's state as a dict (`{}` without a session); a copy.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let state = crate::host_exit::detach(py, || self.ctx.state());
            to_py(py, &state)
        })
    }

    /// Set one key of the session's state (shared by the session's requests and
    /// workflows); `value=None` removes it. False when the request has no session.
    fn set_state(&self, py: Python<'_>, key: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        guarded(py, || {
            let value = to_json(py, value, 0)?;
            Ok(crate::host_exit::detach(py, || self.ctx.set_state(key, value)))
        })
    }

    /// `{execution_id, intent, tenant, session_id}`.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || to_py(py, &self.ctx.to_value()))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let show = |v: Option<&str>| -> PyResult<String> {
            Ok(match v {
                Some(s) => PyString::new(py, s).repr()?.to_string(),
                None => "None".into(),
            })
        };
        Ok(format!(
            "<utp.IntentContext intent={} execution_id={} tenant={} session={}>",
            show(Some(&self.ctx.intent))?,
            show(Some(&self.ctx.execution_id))?,
            show(self.ctx.tenant.as_deref())?,
            show(self.ctx.session.as_deref())?,
        ))
    }
}

/// The code a handler's exception stands for: a `utp.UtpError` keeps its `.code`
/// (a `NotFoundError` from a nested `call_tool` stays `NOT_FOUND`), anything else
/// is `TOOL_FAILED`.
fn raised_code(py: Python<'_>, e: &PyErr) -> ErrorCode {
    let Ok(types) = error_types(py) else { return ErrorCode::ToolFailed };
    if !e.get_type(py).is_subclass(types.base.bind(py)).unwrap_or(false) {
        return ErrorCode::ToolFailed;
    }
    let code = e.value(py).getattr("code").and_then(|c| c.extract::<String>()).unwrap_or_default();
    ErrorCode::ALL.into_iter().find(|c| c.as_str() == code).unwrap_or(ErrorCode::ToolFailed)
}

/// Run an intent handler `func(ctx, params)` on the calling (blocking-pool) thread;
/// an `async def` handler is run to its end with `asyncio.run` there. What it raises
/// becomes the error of a `failed` record, naming the intent and the exception.
fn run_intent_handler(py: Python<'_>, callback: &Callback, ctx: IntentContext, params: &Value) -> Result<Value, Error> {
    let intent = ctx.intent.clone();
    let Some(func) = callback.get(py) else {
        return Err(Error::with_code(
            ErrorCode::ToolFailed,
            format!("intent '{intent}': its Python handler was released (intent unregistered or engine closed)"),
        ));
    };
    let raised = |e: PyErr| {
        Error::with_code(raised_code(py, &e), format!("intent '{intent}' handler raised {}", describe(py, &e)))
    };
    let context = Py::new(py, PyIntentContext { ctx }).map_err(raised)?;
    let params = to_py(py, params).map_err(raised)?;
    let result = call_maybe_async(py, &func, (context, params)).map_err(raised)?;
    to_json(py, &result, 0).map_err(|e| {
        Error::with_code(
            ErrorCode::ToolFailed,
            format!("intent '{intent}' handler returned a value without a JSON form: {}", e.value(py)),
        )
    })
}

/// An intent target that is not a handler: a workflow as `workflow_source` takes it.
fn intent_workflow(py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<WorkflowSource> {
    if target.is_instance_of::<PyDict>() || target.is_instance_of::<PyString>() {
        return workflow_source(py, target); // its own message for an empty string, a bad dict
    }
    workflow_source(py, target).map_err(|_| {
        invalid(
            py,
            format!(
                "intent target must be a workflow (dict, YAML/JSON text, or a path) or a callable handler fn(ctx, params); got {}",
                type_name(target)
            ),
        )
    })
}

#[pymethods]
impl PyEngine {
    // ----- intents -----

    /// Route the intent type `intent_type` to `target`: a workflow (a dict, YAML/JSON
    /// text or a file path; validated now, `ValidationFailedError` otherwise) run with
    /// the params as its inputs, or a handler `fn(ctx: IntentContext, params: dict)`
    /// (sync or `async def`) that runs on an engine thread and returns a JSON-able
    /// value. `AlreadyExistsError` when the type is taken.
    fn register_intent(&self, py: Python<'_>, intent_type: &str, target: Bound<'_, PyAny>) -> PyResult<()> {
        guarded(py, || {
            let is_workflow = target.is_instance_of::<PyDict>() || target.is_instance_of::<PyString>();
            if is_workflow || !target.is_callable() {
                let source = intent_workflow(py, &target)?;
                let r = self.running(py)?;
                return crate::host_exit::detach(py, || r.engine.register_intent_workflow(intent_type, source))
                    .py_err(py);
            }
            let callback = Callback::new(target.unbind());
            let held = callback.clone();
            let handler: IntentHandler = Arc::new(move |ctx: IntentContext, params: Value| {
                let callback = held.clone();
                Box::pin(async move {
                    call_python(move |py| run_intent_handler(py, &callback, ctx, &params)).await.map_err(|e| {
                        Error::with_code(ErrorCode::Internal, format!("Python intent handler thread failed: {e}"))
                    })?
                })
            });
            let r = self.running(py)?;
            r.engine.register_intent(intent_type, IntentTarget::Handler(handler)).py_err(py)?;
            self.keep(Slot::Intent(intent_type.to_string()), callback);
            Ok(())
        })
    }

    /// Remove an intent type; False when none is registered under it. A handler is released.
    fn unregister_intent(&self, py: Python<'_>, intent_type: &str) -> PyResult<bool> {
        guarded(py, || {
            let removed = match self.running(py) {
                Ok(r) => r.engine.unregister_intent(intent_type),
                Err(_) => false, // closed: every handler already released
            };
            drop(self.release_where(|s| matches!(s, Slot::Intent(t) if t == intent_type)));
            Ok(removed)
        })
    }

    /// The registered intent types, sorted.
    fn intents(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        guarded(py, || Ok(self.running(py)?.engine.intents()))
    }

    /// Handle a request of type `intent_type` with `params` (a dict; None = `{}`).
    /// A workflow intent returns its execution record (as `run_workflow`) with
    /// `"intent"`; a handler intent returns `{execution_id, intent, status
    /// ("completed" | "failed"), output, error ({code, message} or None), tenant,
    /// session_id}` — what the handler raises makes a `failed` record. Raises
    /// `NotFoundError` for an unknown type and `ValidationFailedError` for params a
    /// workflow refuses. Ctrl-C raises `KeyboardInterrupt` at once (a handler already
    /// running finishes on its thread).
    #[pyo3(signature = (intent_type, params=None, *, tenant=None, session=None))]
    fn submit_intent<'py>(
        &self,
        py: Python<'py>,
        intent_type: &str,
        params: Option<&Bound<'py, PyAny>>,
        tenant: Option<String>,
        session: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let params = match params {
                Some(p) if !p.is_none() && !p.is_instance_of::<PyDict>() => {
                    return Err(invalid(py, format!("params must be a dict or None, got {}", type_name(p))));
                }
                _ => workflow_inputs(py, params)?,
            };
            check_ids(tenant.as_deref(), session.as_deref()).py_err(py)?;
            let r = self.running(py)?;
            let submitted = r.engine.submit_intent(intent_type, params, tenant.as_deref(), session.as_deref());
            let record = r.block_on_interruptible(py, submitted, &CancellationToken::new())?;
            to_py(py, &record.py_err(py)?)
        })
    }
}
