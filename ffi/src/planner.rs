//! The planner (docs/design.md §10): plan a workflow for a request, or plan and run it.

use std::ffi::c_char;
use std::ptr;

use serde_json::Value;
use utp_core::Error;
use utp_core::host::{self, KeyStyle};
use utp_core::planner::PlanOptions;

use crate::engine::{UtpEngine, engine_and_out};
use crate::error::{UtpError, guard, invalid, optional_str, required_str};
use crate::strings::json_out;
use crate::workflows::run_options;

/// Read a planner request: non-NULL, UTF-8, not blank.
///
/// # Safety
/// `request` is NULL or a NUL-terminated string alive for `'a`.
unsafe fn plan_request<'a>(request: *const c_char) -> Result<&'a str, Error> {
    // SAFETY: forwarded from the caller's contract.
    let text = unsafe { required_str(request, "request") }?;
    if text.trim().is_empty() {
        return Err(invalid("request is empty: say what the workflow should do"));
    }
    Ok(text)
}

/// Read `options_json` of utp_plan(): `{"session", "tenant", "inputs": {...}}`, checked
/// by `utp_core::host`.
fn plan_options(options_json: Option<&str>) -> Result<PlanOptions, Error> {
    let options = host::parse_json(options_json.unwrap_or(""), "options_json")?;
    host::plan_options(&options, "utp_plan", KeyStyle::Snake)
}

/// Plan a workflow for a natural-language `request` (docs/design.md §10) without running it,
/// blocking the calling thread. `options_json` (nullable) is `{"session": "...",
/// "tenant": "...", "inputs": {...}}`: `inputs` are those the plan will run with (a
/// model is told their names and types, never their values; the offline planner
/// reads them), `session` names the session whose state keys a model is told.
///
/// The config's `planner` section picks the planner: the offline planner by default
/// (simple chains from the search index and the tools' schemas), or an OpenAI-
/// compatible or Anthropic model whose answer is validated and, on errors, sent back
/// for repair. On success `*out_plan_json` receives `{"definition": {...},
/// "provider": "offline"|"openai"|"anthropic", "model", "rounds", "usage":
/// {"prompt_tokens", "completion_tokens", "total_tokens"}}` (`definition` is a
/// validated workflow: pass it to utp_run_workflow()); free it with
/// utp_string_free(). Errors: UTP_ERR_PLANNER when no valid workflow came out (the
/// message says why), UTP_ERR_TIMEOUT / UTP_ERR_TRANSPORT when the model cannot be
/// reached, UTP_ERR_INVALID_ARGUMENT for an empty request or bad options.
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_plan(
    engine: *mut UtpEngine,
    request: *const c_char,
    options_json: *const c_char,
    out_plan_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_plan_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_plan_json, "out_plan_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let request = unsafe { plan_request(request) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let options = plan_options(unsafe { optional_str(options_json, "options_json") }?)?;
        let planned = handle.block_on(handle.engine.plan(request, options))??;
        *out = json_out(&planned.to_value())?;
        Ok(())
    })
}

/// Plan a workflow for `request` and run it to its end, blocking the calling thread
/// (docs/design.md §4 `run`). `inputs_json` (nullable) is a JSON object of inputs;
/// `options_json` (nullable) is `{"tenant", "session", "user", "timeout": seconds}`
/// as for utp_run_workflow(). Planning errors are as utp_plan()'s; once the plan
/// runs, `*out_record_json` receives the execution record as utp_run_workflow()
/// gives it, with `"plan"` added (what utp_plan() gives), also for a run that failed;
/// free it with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_run(
    engine: *mut UtpEngine,
    request: *const c_char,
    inputs_json: *const c_char,
    options_json: *const c_char,
    out_record_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_record_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_record_json, "out_record_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let request = unsafe { plan_request(request) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let inputs = match unsafe { optional_str(inputs_json, "inputs_json") }? {
            None => Value::Object(serde_json::Map::new()),
            Some(t) if t.trim().is_empty() => Value::Object(serde_json::Map::new()),
            Some(t) => match serde_json::from_str(t) {
                Ok(Value::Null) => Value::Object(serde_json::Map::new()),
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => return Err(invalid("inputs_json must be a JSON object")),
                Err(e) => return Err(invalid(format!("inputs_json is not valid JSON: {e}"))),
            },
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let options = run_options(unsafe { optional_str(options_json, "options_json") }?)?;
        let record = handle.block_on(handle.engine.run_request(request, inputs, options))??;
        *out = json_out(&record)?;
        Ok(())
    })
}
