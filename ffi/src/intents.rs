//! Intents: route an intent type to a workflow or to a C handler (`utp_intent_fn`, run on
//! the engine's blocking pool), submit requests, list and remove intents.

use std::ffi::{CString, c_char, c_void};
use std::ptr;
use std::sync::Arc;

use serde_json::Value;
use utp_core::workflow::WorkflowSource;
use utp_core::{Error, ErrorCode};
use utp_core::{IntentContext, IntentHandler, IntentTarget};

use crate::callbacks::{CallbackScope, Registration, UtpFreeFn, deregister, lock};
use crate::engine::{UtpEngine, engine_and_out, engine_ref};
use crate::error::{UtpError, guard, invalid, optional_str, required_str};
use crate::sessions::check_ids;
use crate::strings::json_out;
use crate::tools::UtpToolResult;

/// A C intent handler: serves one request of the intent it was registered for.
/// `context_json` is `{"execution_id", "intent", "tenant", "session_id"}` (tenant and
/// session_id null when the request had none) and `params_json` the request's params
/// (a JSON value, `{}` when none were given); both are valid only during the call.
/// Report the outcome through `result` as a C tool does: return 0 with the output set
/// by utp_tool_result_set_json() (JSON `null` if none), or non-zero with a message set
/// by utp_tool_result_set_error() (the request's record is then "failed" with a
/// UTP_ERR_TOOL_FAILED error naming the intent and the message).
///
/// Threads: called on the engine's library threads (its blocking pool), possibly on
/// several at once for concurrent requests. It may call any utp_* function except
/// utp_engine_free(): utp_session_state() / utp_set_session_state() with the
/// request's tenant and session (from `context_json`) to keep state across requests,
/// utp_call_tool() or utp_run_workflow() to do the work.
pub type UtpIntentFn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        context_json: *const c_char,
        params_json: *const c_char,
        result: *mut UtpToolResult,
    ) -> i32,
>;

/// Call a C intent handler once (on a blocking-pool thread).
fn call_intent(
    registration: &Registration,
    func: unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, *mut UtpToolResult) -> i32,
    context: &IntentContext,
    params: &Value,
) -> Result<Value, Error> {
    let intent = context.intent.as_str();
    // A request that picked the handler just before it was unregistered.
    let Some(_running) = registration.enter() else {
        return Err(Error::NotFound(format!("intent '{intent}' was unregistered")));
    };
    let text = |s: String, what: &str| {
        CString::new(s).map_err(|e| Error::Internal(format!("intent '{intent}': {what} hold a NUL byte: {e}")))
    };
    let context_json = text(context.to_value().to_string(), "the context")?;
    let params_json = text(params.to_string(), "the params")?;
    let mut result = UtpToolResult { value: None, error: None };
    let _scope = CallbackScope::enter(false);
    // SAFETY: a function pointer registered through utp_register_intent, called with its
    // user_data, NUL-terminated strings and a sink, all alive for the call.
    let status = unsafe { func(registration.user_data, context_json.as_ptr(), params_json.as_ptr(), &mut result) };
    if status == 0 {
        Ok(result.value.unwrap_or(Value::Null))
    } else {
        let why = result.error.unwrap_or_else(|| format!("returned status {status}"));
        Err(Error::with_code(ErrorCode::ToolFailed, format!("intent '{intent}' handler failed: {why}")))
    }
}

/// Route the intent `intent_type` to a workflow: each utp_submit_intent() of it runs
/// the workflow with the request's params as its inputs. `workflow` is a YAML or
/// JSON definition or the path of a file holding one, as for utp_run_workflow(); it
/// is validated now (a problem is UTP_ERR_VALIDATION_FAILED naming every problem, a
/// missing file UTP_ERR_NOT_FOUND). Intent types are unique per engine (a workflow
/// or a C handler): a registered one gives UTP_ERR_ALREADY_EXISTS; an empty one
/// UTP_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_register_intent_workflow(
    engine: *mut UtpEngine,
    intent_type: *const c_char,
    workflow: *const c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let intent_type = unsafe { required_str(intent_type, "intent_type") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let text = unsafe { required_str(workflow, "workflow") }?;
        if text.trim().is_empty() {
            return Err(invalid("workflow is empty (expected a YAML/JSON definition or a file path)"));
        }
        handle.engine.register_intent_workflow(intent_type, WorkflowSource::from_text(text))
    })
}

/// Route the intent `intent_type` to the C handler `callback` (see utp_intent_fn):
/// each utp_submit_intent() of it calls `callback` with `user_data`, the request's
/// context and params. Intent types are unique per engine: a registered one gives
/// UTP_ERR_ALREADY_EXISTS; an empty one UTP_ERR_INVALID_ARGUMENT.
///
/// `free_user_data` (nullable) is called exactly once with `user_data`: after the
/// last running call has returned, when the intent is removed with
/// utp_unregister_intent() or the engine is freed, or at once when this call fails
/// (a NULL `callback`, a bad or duplicate `intent_type`).
///
/// # Safety
/// `engine` is a live handle; `intent_type` is NULL or NUL-terminated; `callback`
/// and `free_user_data` are NULL or valid functions, callable from any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_register_intent(
    engine: *mut UtpEngine,
    intent_type: *const c_char,
    callback: UtpIntentFn,
    user_data: *mut c_void,
    free_user_data: UtpFreeFn,
) -> *mut UtpError {
    // Owned first, so user_data is finalised on every error path too.
    let registration = Arc::new(Registration::new(user_data, free_user_data));
    guard(move || {
        let Some(func) = callback else { return Err(invalid("callback is NULL")) };
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let intent_type = unsafe { required_str(intent_type, "intent_type") }?;
        let called = registration.clone();
        let handler: IntentHandler = Arc::new(move |context: IntentContext, params: Value| {
            let registration = called.clone();
            Box::pin(async move {
                // C code may block: run it on the blocking pool, never on a worker.
                tokio::task::spawn_blocking(move || call_intent(&registration, func, &context, &params))
                    .await
                    .map_err(|e| Error::Internal(format!("the C intent handler's thread failed: {e}")))?
            })
        });
        let mut intents = lock(&handle.intents);
        handle.engine.register_intent(intent_type, IntentTarget::Handler(handler))?;
        intents.insert(intent_type.to_string(), registration);
        Ok(())
    })
}

/// Remove the intent `intent_type` (a workflow or a C handler). `*out_removed` is set
/// to true when it was registered, false otherwise (not an error). No request reaches
/// a C handler after this returns: later submits are UTP_ERR_NOT_FOUND errors, and a
/// request that found the handler just before ends "failed" with UTP_ERR_NOT_FOUND.
/// Called from a host thread, it also waits until running calls of the handler have
/// returned and its finaliser has run; called from inside a callback, it does not
/// wait: the finaliser then runs on a library thread once the last running call has
/// returned (at once if none is running).
///
/// # Safety
/// `engine` is a live handle; `intent_type` is NULL or NUL-terminated; `out_removed`
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_unregister_intent(
    engine: *mut UtpEngine,
    intent_type: *const c_char,
    out_removed: *mut bool,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_removed` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_removed, "out_removed", false) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let intent_type = unsafe { required_str(intent_type, "intent_type") }?;
        *out = deregister(&handle.intents, intent_type, || handle.engine.unregister_intent(intent_type));
        Ok(())
    })
}

/// The registered intent types, sorted, as a JSON array of strings. Free
/// `*out_json` with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; the out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_intents(engine: *mut UtpEngine, out_json: *mut *mut c_char) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_json, "out_json", ptr::null_mut()) }?;
        *out = json_out(&Value::from(handle.engine.intents()))?;
        Ok(())
    })
}

/// Submit a request of intent `intent_type`, blocking the calling thread until it is
/// served. `params_json` (nullable: `{}`) is a JSON value (an object for a workflow
/// intent: its inputs); `tenant` and `session` (nullable) name whose session state
/// the request reads and writes.
///
/// On success `*out_record_json` receives the request's record; free it with
/// utp_string_free(). A workflow intent gives the execution record as
/// utp_run_workflow() does, plus `"intent"`; a C handler intent gives
/// `{"execution_id", "intent", "status": "completed"|"failed", "output", "error":
/// null | {"code", "message"}, "tenant", "session_id"}`. A failing handler or run is
/// a "failed" record, not an error. Errors: an unknown intent is UTP_ERR_NOT_FOUND;
/// params a workflow refuses are UTP_ERR_VALIDATION_FAILED (or
/// UTP_ERR_INVALID_ARGUMENT when not an object).
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_submit_intent(
    engine: *mut UtpEngine,
    intent_type: *const c_char,
    params_json: *const c_char,
    tenant: *const c_char,
    session: *const c_char,
    out_record_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_record_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_record_json, "out_record_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let intent_type = unsafe { required_str(intent_type, "intent_type") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let params = match unsafe { optional_str(params_json, "params_json") }? {
            None => Value::Object(serde_json::Map::new()),
            Some(t) if t.trim().is_empty() => Value::Object(serde_json::Map::new()),
            Some(t) => serde_json::from_str(t).map_err(|e| invalid(format!("params_json is not valid JSON: {e}")))?,
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let tenant = unsafe { optional_str(tenant, "tenant") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let session = unsafe { optional_str(session, "session") }?;
        check_ids(tenant, session)?;
        let record = handle.block_on(handle.engine.submit_intent(intent_type, params, tenant, session))??;
        *out = json_out(&record)?;
        Ok(())
    })
}
