//! Workflows (docs/design.md §7): run one to its end, start one, or run one with a completion;
//! read executions, wait for one, cancel / suspend / resume it.

use std::ffi::{c_char, c_void};
use std::ptr;
use std::time::Duration;

use serde_json::Value;
use utp_core::host::{self, KeyStyle};
use utp_core::workflow::{ExecutionStatus, RunOptions, WorkflowSource};
use utp_core::{Engine, Error};

use crate::callbacks::{Completion, UtpCompletionFn, UtpFreeFn};
use crate::engine::{UtpEngine, engine_and_out, engine_ref};
use crate::error::{UtpError, guard, invalid, optional_str, required_str};
use crate::strings::{json_out, string_out};

/// Read `options_json` of a workflow run (utp_run_workflow(), utp_start_workflow(),
/// utp_run_workflow_async(), utp_run()): `{"tenant", "session", "user", "timeout":
/// seconds}`, checked by `utp_core::host`.
pub(crate) fn run_options(options_json: Option<&str>) -> Result<RunOptions, Error> {
    let options = host::parse_json(options_json.unwrap_or(""), "options_json")?;
    host::run_options(&options, "workflow run", KeyStyle::Snake)
}

/// Read the arguments shared by the run/start functions.
///
/// # Safety
/// The pointers are NULL or NUL-terminated strings alive for the call.
unsafe fn workflow_args(
    workflow: *const c_char,
    inputs_json: *const c_char,
    options_json: *const c_char,
) -> Result<(WorkflowSource, Value, RunOptions), Error> {
    // SAFETY: NULL or NUL-terminated per the caller's contract.
    let text = unsafe { required_str(workflow, "workflow") }?;
    if text.trim().is_empty() {
        return Err(invalid("workflow is empty (expected a YAML/JSON definition or a file path)"));
    }
    // SAFETY: as above.
    let inputs = match unsafe { optional_str(inputs_json, "inputs_json") }? {
        None => Value::Null,
        Some(t) if t.trim().is_empty() => Value::Null,
        Some(t) => serde_json::from_str(t).map_err(|e| invalid(format!("inputs_json is not valid JSON: {e}")))?,
    };
    // SAFETY: as above.
    let options = run_options(unsafe { optional_str(options_json, "options_json") }?)?;
    Ok((WorkflowSource::from_text(text), inputs, options))
}

/// Run a workflow to its end, blocking the calling thread. `workflow` is a YAML or
/// JSON definition (docs/design.md §7) or the path of a file holding one; `inputs_json`
/// (nullable) is a JSON object of inputs (declared defaults fill the gaps);
/// `options_json` (nullable) is `{"tenant": "...", "session": "...", "user": "...",
/// "timeout": seconds}` (the timeout bounds the whole run and wins over the
/// workflow's own `timeout`; the session's state is what `state` reads and
/// `set_state` writes).
///
/// The definition and the inputs are validated before any step runs: a problem is a
/// UTP_ERR_VALIDATION_FAILED error whose message names every problem with its step
/// and field; a missing file is UTP_ERR_NOT_FOUND. Once started, a run that fails or
/// is cancelled is not an error: `*out_record_json` receives the execution record,
/// `{"execution_id", "workflow", "status": "completed"|"failed"|"cancelled",
/// "inputs", "outputs", "error": null | {"code", "message"}, "steps": {"<id>":
/// {"status", "output", "error", "attempts", "started_at", "finished_at", "tool"}},
/// "session_id", "tenant", "created_at", "finished_at"}`; free it with
/// utp_string_free().
///
/// Steps call their tools through the same path as utp_call_tool(): C tools, C
/// business rules and event subscribers run on library threads as usual. Another
/// thread may utp_cancel() / utp_suspend() the run meanwhile (see utp_executions()
/// for its id, or use utp_start_workflow()).
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_run_workflow(
    engine: *mut UtpEngine,
    workflow: *const c_char,
    inputs_json: *const c_char,
    options_json: *const c_char,
    out_record_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_record_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_record_json, "out_record_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let (source, inputs, options) = unsafe { workflow_args(workflow, inputs_json, options_json) }?;
        let record = handle.block_on(handle.engine.run_workflow(source, inputs, options))??;
        *out = json_out(&record.to_json())?;
        Ok(())
    })
}

/// Validate and start a workflow, returning at once; the run goes on on library
/// threads. Arguments and validation errors as utp_run_workflow(). On success
/// `*out_execution_id` receives the execution's id (for utp_execution(),
/// utp_wait_execution(), utp_cancel(), utp_suspend(), utp_resume()); free it with
/// utp_string_free().
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_start_workflow(
    engine: *mut UtpEngine,
    workflow: *const c_char,
    inputs_json: *const c_char,
    options_json: *const c_char,
    out_execution_id: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_execution_id` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_execution_id, "out_execution_id", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let (source, inputs, options) = unsafe { workflow_args(workflow, inputs_json, options_json) }?;
        let runtime = handle.runtime()?;
        let _ctx = runtime.enter();
        let exec = handle.engine.start_workflow(source, inputs, options)?;
        *out = string_out(&exec.id)?;
        Ok(())
    })
}

/// Start a workflow like utp_start_workflow() and have `callback` called exactly
/// once when the run ends, with `error` NULL and `result_json` the execution record
/// (as utp_run_workflow() returns it; a failed or cancelled run is a record, not an
/// error). `*out_execution_id` (nullable) receives the execution's id; free it with
/// utp_string_free(). The callback may run before this function returns.
///
/// Threads: the callback runs on a library thread (the engine's blocking pool),
/// never on the calling thread, and may call any utp_* function (utp_execution(),
/// another run...) except utp_engine_free(). Only if the engine is freed before the
/// run ends is it called during utp_engine_free() instead (on the freeing thread or a
/// library thread, before utp_engine_free() returns), with a UTP_ERR_CANCELLED error;
/// it must not use the engine then.
///
/// `free_user_data` (nullable) is called exactly once with `user_data`: right after
/// the callback has returned, or at once, without the callback, when this call fails
/// (a NULL `callback`, bad arguments, a workflow that does not validate).
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; `callback` and
/// `free_user_data` are NULL or valid functions, callable from any thread;
/// `out_execution_id` is NULL or valid for writes.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn utp_run_workflow_async(
    engine: *mut UtpEngine,
    workflow: *const c_char,
    inputs_json: *const c_char,
    options_json: *const c_char,
    callback: UtpCompletionFn,
    user_data: *mut c_void,
    free_user_data: UtpFreeFn,
    out_execution_id: *mut *mut c_char,
) -> *mut UtpError {
    // Owned first, so user_data is finalised on every error path too.
    struct Finaliser(*mut c_void, UtpFreeFn);
    impl Drop for Finaliser {
        fn drop(&mut self) {
            if let Some(free) = self.1.take() {
                // SAFETY: the caller's finaliser, called once, with its own user_data.
                unsafe { free(self.0) };
            }
        }
    }
    let finaliser = Finaliser(user_data, free_user_data);
    guard(move || {
        let mut finaliser = finaliser;
        if !out_execution_id.is_null() {
            // SAFETY: non-NULL and valid for writes per the contract.
            unsafe { *out_execution_id = ptr::null_mut() };
        }
        let Some(func) = callback else { return Err(invalid("callback is NULL")) };
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let (source, inputs, options) = unsafe { workflow_args(workflow, inputs_json, options_json) }?;
        let runtime = handle.runtime()?;
        let _ctx = runtime.enter();
        let exec = handle.engine.start_workflow(source, inputs, options)?;
        let id = exec.id.clone();
        // From here the callback is owed: the completion owns user_data.
        let mut completion = Completion {
            func,
            user_data: finaliser.0,
            free: finaliser.1.take(),
            delivered: false,
            what: "workflow run",
        };
        let engine = handle.engine.clone();
        runtime.spawn(async move {
            exec.wait().await;
            // A run stopped by utp_engine_free ends in CANCELLED, as when the runtime
            // goes first and the completion is dropped undelivered.
            let outcome = match exec.status() {
                ExecutionStatus::Cancelled if engine.is_closed() => {
                    Err(Error::Cancelled(format!("execution '{}' stopped: the engine was freed", exec.id)))
                }
                _ => Ok(exec.to_value(true)),
            };
            // C code may block: run it on the blocking pool, never on a worker.
            let _ = tokio::task::spawn_blocking(move || completion.deliver(outcome)).await;
        });
        if !out_execution_id.is_null() {
            // SAFETY: non-NULL and valid for writes per the contract.
            unsafe { *out_execution_id = string_out(&id)? };
        }
        Ok(())
    })
}

/// An execution's record, as utp_run_workflow() returns it (also while it runs:
/// `status` "running", steps "pending"/"running"...). Unknown id: UTP_ERR_NOT_FOUND.
/// Free `*out_record_json` with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; `execution_id` is NULL or NUL-terminated; the
/// out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_execution(
    engine: *mut UtpEngine,
    execution_id: *const c_char,
    out_record_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_record_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_record_json, "out_record_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let id = unsafe { required_str(execution_id, "execution_id") }?;
        *out = json_out(&handle.engine.execution(id)?.to_json())?;
        Ok(())
    })
}

/// The engine's executions, oldest first, as a JSON array of records without step
/// outputs, inputs and outputs. `status` (nullable) keeps one status ("created",
/// "running", "suspended", "waiting_approval", "completed", "failed", "cancelled";
/// another word is UTP_ERR_INVALID_ARGUMENT); `session` (nullable) keeps one
/// session's runs. Free `*out_records_json` with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_executions(
    engine: *mut UtpEngine,
    status: *const c_char,
    session: *const c_char,
    out_records_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_records_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_records_json, "out_records_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let status = unsafe { optional_str(status, "status") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let session = unsafe { optional_str(session, "session") }?;
        *out =
            json_out(&Value::Array(handle.engine.executions(status, session)?.iter().map(|r| r.to_json()).collect()))?;
        Ok(())
    })
}

/// Wait until an execution has finished, at most `timeout_ms` milliseconds (0 waits
/// for ever), then give its record as utp_execution() does. Still running after the
/// timeout: UTP_ERR_TIMEOUT (the run goes on). Unknown id: UTP_ERR_NOT_FOUND. Blocks
/// the calling thread; from inside a C tool of the same run it would wait for itself.
///
/// # Safety
/// `engine` is a live handle; `execution_id` is NULL or NUL-terminated; the
/// out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_wait_execution(
    engine: *mut UtpEngine,
    execution_id: *const c_char,
    timeout_ms: u64,
    out_record_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_record_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_record_json, "out_record_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let id = unsafe { required_str(execution_id, "execution_id") }?;
        let wait = handle.engine.wait_execution(id);
        let record = if timeout_ms == 0 {
            handle.block_on(wait)??
        } else {
            // The timer is created inside the runtime (it needs its time driver).
            let limit = Duration::from_millis(timeout_ms);
            handle
                .block_on(async move { tokio::time::timeout(limit, wait).await })?
                .map_err(|_| Error::Timeout(format!("execution '{id}' still running after {timeout_ms} ms")))??
        };
        *out = json_out(&record.to_json())?;
        Ok(())
    })
}

/// Shared body of utp_cancel / utp_suspend / utp_resume.
///
/// # Safety
/// As those functions.
unsafe fn control(
    engine: *mut UtpEngine,
    execution_id: *const c_char,
    out_done: *mut bool,
    action: fn(&Engine, &str) -> Result<bool, Error>,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_done` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_done, "out_done", false) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let id = unsafe { required_str(execution_id, "execution_id") }?;
        *out = action(&handle.engine, id)?;
        Ok(())
    })
}

/// Cancel a run: no new step starts and the running tool calls are cancelled (the
/// run ends "cancelled" at once; a C tool already running is not interrupted, its
/// thread finishes the function and its result is discarded). `*out_done` is true
/// when the run was still going, false when it had already finished. Unknown id:
/// UTP_ERR_NOT_FOUND.
///
/// # Safety
/// `engine` is a live handle; `execution_id` is NULL or NUL-terminated; `out_done`
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_cancel(
    engine: *mut UtpEngine,
    execution_id: *const c_char,
    out_done: *mut bool,
) -> *mut UtpError {
    // SAFETY: forwarded from the caller's contract.
    unsafe { control(engine, execution_id, out_done, Engine::cancel) }
}

/// Suspend a run: running steps finish, no new step starts until utp_resume().
/// `*out_done` is false when the run had finished or was already suspended. Unknown
/// id: UTP_ERR_NOT_FOUND.
///
/// # Safety
/// As utp_cancel().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_suspend(
    engine: *mut UtpEngine,
    execution_id: *const c_char,
    out_done: *mut bool,
) -> *mut UtpError {
    // SAFETY: forwarded from the caller's contract.
    unsafe { control(engine, execution_id, out_done, Engine::suspend) }
}

/// Resume a suspended run. `*out_done` is false when it was not suspended. Unknown
/// id: UTP_ERR_NOT_FOUND.
///
/// # Safety
/// As utp_cancel().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_resume(
    engine: *mut UtpEngine,
    execution_id: *const c_char,
    out_done: *mut bool,
) -> *mut UtpError {
    // SAFETY: forwarded from the caller's contract.
    unsafe { control(engine, execution_id, out_done, Engine::resume) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utp_core::ErrorCode;

    #[test]
    fn run_options_parse() {
        let o = run_options(Some(r#"{"tenant": "t", "session": "s", "user": "u", "timeout": 1.5}"#)).unwrap();
        assert_eq!((o.tenant.as_deref(), o.session.as_deref(), o.user.as_deref()), (Some("t"), Some("s"), Some("u")));
        assert_eq!(o.timeout, Some(Duration::from_millis(1500)));
        assert!(run_options(None).unwrap().timeout.is_none());
        assert!(run_options(Some("null")).unwrap().tenant.is_none());
        assert!(run_options(Some(r#"{"tenant": null}"#)).unwrap().tenant.is_none());
        for bad in ["{", "[]", r#"{"timeout": -1}"#, r#"{"timeout": "5s"}"#, r#"{"approval_id": "x"}"#] {
            assert_eq!(run_options(Some(bad)).unwrap_err().code(), ErrorCode::InvalidArgument, "{bad}");
        }
    }
}
