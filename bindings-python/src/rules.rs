//! The domain layer from Python (`utp.DomainLayer` wraps these): business rules
//! written in Python and the `Decision` they return, the dry-run `_check`, and the
//! approvals of escalated calls.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString};
use serde_json::Value;
use utp_core::{CancellationToken, ErrorCode, HostRule, HostVerdict};

use crate::callbacks::{Callback, Slot, call_maybe_async, describe, log_exception};
use crate::engine::PyEngine;
use crate::errors::{IntoPyResult, guarded, invalid, raise};
use crate::host_calls::{Callback as Kind, is_coroutine_function, run_python};
use crate::json::{seconds, to_json, to_py, type_name};

/// Run a business rule `func(tool, action, params)` on the calling thread (the
/// host's, or an engine thread). True / `Decision.allow()` allow; False / `Decision.deny()` deny;
/// `Decision.escalate()` asks for an approval. An exception or any other return
/// value is an `Err` — the core denies the call with it (fail closed).
fn run_rule(
    py: Python<'_>,
    callback: &Callback,
    rule: &str,
    tool: String,
    action: String,
    params: Value,
) -> Result<HostVerdict, String> {
    let Some(func) = callback.get(py) else {
        return Err("its Python function was released (engine closed or rule removed)".into());
    };
    let raised = |e: PyErr| {
        crate::host_calls::note_interrupt(py, &e);
        let args = [rule, tool.as_str(), action.as_str()].map(|a| PyString::new(py, a).into_any()).to_vec();
        log_exception(py, "utp.rules", "warning", &e, "business rule %r raised; the call to %s.%s is denied", args);
        format!("raised {}", describe(py, &e))
    };
    let params = to_py(py, &params).map_err(raised)?;
    let result = call_maybe_async(py, &func, (tool.as_str(), action.as_str(), params)).map_err(raised)?;
    if let Ok(b) = result.cast::<PyBool>() {
        return Ok(if b.is_true() { HostVerdict::Allow } else { HostVerdict::Deny(None) });
    }
    if let Ok(d) = result.cast::<PyDecision>() {
        let d = d.get();
        return Ok(match d.kind {
            DecisionKind::Allow => HostVerdict::Allow,
            DecisionKind::Deny => HostVerdict::Deny(d.reason.clone()),
            DecisionKind::Escalate => HostVerdict::Escalate(d.reason.clone()),
        });
    }
    Err(format!("returned {}, expected a bool or a utp.Decision", type_name(&result)))
}

/// A rule's deadline when it is added without one (seconds).
const DEFAULT_RULE_TIMEOUT: f64 = 10.0;

/// A business rule's answer: `Decision.allow()`, `Decision.deny(reason=None)`,
/// `Decision.escalate(reason=None)` (the call waits for `engine.approve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DecisionKind {
    Allow,
    Deny,
    Escalate,
}

impl DecisionKind {
    fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Allow => "allow",
            DecisionKind::Deny => "deny",
            DecisionKind::Escalate => "escalate",
        }
    }
}

/// What a business rule returns when a bool is not enough: `Decision.allow()`,
/// `Decision.deny(reason=None)` or `Decision.escalate(reason=None)`.
#[pyclass(module = "utp._utp", name = "Decision", frozen, eq, hash)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PyDecision {
    kind: DecisionKind,
    reason: Option<String>,
}

#[pymethods]
impl PyDecision {
    /// Let the call run (as far as this rule is concerned).
    #[staticmethod]
    fn allow() -> PyDecision {
        PyDecision { kind: DecisionKind::Allow, reason: None }
    }

    /// Refuse the call; `reason` is shown in the `PermissionDeniedError`.
    #[staticmethod]
    #[pyo3(signature = (reason=None))]
    fn deny(reason: Option<String>) -> PyDecision {
        PyDecision { kind: DecisionKind::Deny, reason }
    }

    /// Hold the call for a human approval (`engine.approve(approval_id)`).
    #[staticmethod]
    #[pyo3(signature = (reason=None))]
    fn escalate(reason: Option<String>) -> PyDecision {
        PyDecision { kind: DecisionKind::Escalate, reason }
    }

    /// `"allow"`, `"deny"` or `"escalate"`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    #[getter]
    fn reason(&self) -> Option<String> {
        self.reason.clone()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(match &self.reason {
            None => format!("Decision.{}()", self.kind.as_str()),
            Some(r) => format!("Decision.{}(reason={})", self.kind.as_str(), PyString::new(py, r).repr()?),
        })
    }
}

#[pymethods]
impl PyEngine {
    // ----- domain layer (docs/design.md §6); `utp.DomainLayer` wraps these -----

    /// Add the business rule `name`: `func(tool, action, params)` (sync or
    /// `async def`) runs before every call and returns a bool or a `Decision`. An
    /// exception, another return type, or no answer within `timeout` seconds (default
    /// 10) denies the call with a message naming the rule. A sync rule without a
    /// `timeout` runs on the thread that waits for the call when it can (its answer is
    /// then checked against the 10 s when it comes); one with a `timeout`, or an `async
    /// def` one, runs on an engine thread, so that the wait stops at the deadline
    /// (docs/architecture.md, "Host callbacks on the calling thread").
    #[pyo3(signature = (name, func, timeout=None))]
    fn _add_business_rule(
        &self,
        py: Python<'_>,
        name: &str,
        func: Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        guarded(py, || {
            if !func.is_callable() {
                return Err(invalid(
                    py,
                    format!("business rule '{name}': fn must be callable, got {}", type_name(&func)),
                ));
            }
            let limit = seconds(py, timeout.unwrap_or(DEFAULT_RULE_TIMEOUT), "timeout")?;
            if limit.is_zero() {
                return Err(invalid(py, "timeout must be more than 0 seconds"));
            }
            let here = timeout.is_none() && !is_coroutine_function(&func)?;
            let callback = Callback::new(func.unbind());
            let (held, rule_name) = (callback.clone(), name.to_string());
            let rule: HostRule = Arc::new(move |tool: String, action: String, params: Value| {
                let (callback, rule_name) = (held.clone(), rule_name.clone());
                Box::pin(async move {
                    let started = std::time::Instant::now();
                    let task = run_python(Kind::Rule, here, move |py| {
                        run_rule(py, &callback, &rule_name, tool, action, params)
                    });
                    let late = || Err(format!("it did not answer within {:.3} s", limit.as_secs_f64()));
                    match tokio::time::timeout(limit, task).await {
                        // A rule run on the caller's thread is not abandoned: a late answer is no answer.
                        Ok(Ok(_)) if here && started.elapsed() > limit => late(),
                        Ok(Ok(verdict)) => verdict,
                        Ok(Err(e)) => Err(format!("its thread failed: {e}")),
                        Err(_) => late(),
                    }
                })
            });
            let r = self.running(py)?;
            r.engine.add_business_rule(name, rule).py_err(py)?;
            self.keep(Slot::Rule(name.to_string()), callback);
            Ok(())
        })
    }

    /// Remove a business rule; False when none has that name. Its function is released.
    fn _remove_business_rule(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        guarded(py, || {
            let removed = self.running(py)?.engine.remove_business_rule(name);
            drop(self.release_where(|s| matches!(s, Slot::Rule(n) if n == name)));
            Ok(removed)
        })
    }

    /// Dry run of the domain checks (business rules included) for a call.
    #[pyo3(signature = (tool_name, args=None, tenant=None))]
    fn _check<'py>(
        &self,
        py: Python<'py>,
        tool_name: &str,
        args: Option<&Bound<'py, PyAny>>,
        tenant: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let args = match args {
                Some(a) if !a.is_none() => {
                    if !a.is_instance_of::<PyDict>() {
                        return Err(invalid(py, format!("args must be a dict or None, got {}", type_name(a))));
                    }
                    to_json(py, a, 0)?
                }
                _ => Value::Null,
            };
            let r = self.running(py)?;
            let cancel = CancellationToken::new();
            let checked = r.block_on_interruptible(py, r.engine.check(tool_name, args, tenant.as_deref()), &cancel)?;
            to_py(py, &checked.py_err(py)?)
        })
    }

    // ----- approvals -----

    /// Approvals of escalated calls, oldest first; `pending_only` keeps those still waiting.
    #[pyo3(signature = (pending_only=false))]
    fn approvals<'py>(&self, py: Python<'py>, pending_only: bool) -> PyResult<Bound<'py, PyList>> {
        guarded(py, || {
            let list = PyList::empty(py);
            for info in self.running(py)?.engine.approvals(pending_only) {
                let value = serde_json::to_value(&info).map_err(|e| raise(py, ErrorCode::Internal, e.to_string()))?;
                list.append(to_py(py, &value)?)?;
            }
            Ok(list)
        })
    }

    /// Grant (or with `approved=False` refuse) an approval; the waiting call proceeds
    /// (or is denied). Returns the approval as a dict.
    #[pyo3(signature = (approval_id, approved=true, reason=None))]
    fn approve<'py>(
        &self,
        py: Python<'py>,
        approval_id: &str,
        approved: bool,
        reason: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let info = self.running(py)?.engine.approve(approval_id, approved, reason).py_err(py)?;
            let value = serde_json::to_value(&info).map_err(|e| raise(py, ErrorCode::Internal, e.to_string()))?;
            to_py(py, &value)
        })
    }
}
