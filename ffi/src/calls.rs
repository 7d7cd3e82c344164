//! Calling tools: `utp_call_tool` (blocks the calling thread) and
//! `utp_call_tool_async` (runs on the engine's threads, then calls a completion once).

use std::ffi::{c_char, c_void};
use std::ptr;

use serde_json::Value;
use utp_core::host::{self, KeyStyle};
use utp_core::{CallOptions, Error};

use crate::callbacks::{Completion, UtpCompletionFn, UtpFreeFn};
use crate::engine::{UtpEngine, engine_and_out, engine_ref};
use crate::error::{UtpError, guard, invalid, optional_str, required_str};
use crate::strings::json_out;

/// Read `options_json` of `what` (the function's name, for messages): `{"timeout":
/// seconds, "tenant", "session", "user", "approval_id": "...", "fail_fast_on_approval":
/// bool}`, checked by `utp_core::host`.
pub(crate) fn call_options(options_json: Option<&str>, what: &str) -> Result<CallOptions, Error> {
    let options = host::parse_json(options_json.unwrap_or(""), "options_json")?;
    host::call_options(&options, what, KeyStyle::Snake)
}

/// Call a tool. `args_json` (nullable: no arguments) is a JSON object checked
/// against the tool's `inputs`; `options_json` (nullable) is
/// `{"timeout": seconds, "tenant": "...", "session": "...", "user": "...",
/// "approval_id": "...", "fail_fast_on_approval": bool}`. On success
/// `*out_result_json` receives the tool's result as JSON; free it with
/// utp_string_free(). Blocks the calling thread until the call ends.
///
/// The C tool and C rules of a call with no timeout of its own (no `"timeout"` option,
/// no `calls.default_timeout` in the config) run on this thread, in this call; with a
/// timeout they run on the engine's threads, so that the call stops waiting at the
/// deadline (see utp_tool_fn).
///
/// Before the tool runs, the domain layer decides: a denial is
/// UTP_ERR_PERMISSION_DENIED (with the reasons), a rate limit UTP_ERR_RATE_LIMITED
/// (see utp_error_retry_after_ms()). An escalated call waits for utp_approve() (up to
/// its timeout), or with `fail_fast_on_approval` fails at once with
/// UTP_ERR_APPROVAL_REQUIRED (see utp_error_approval_id()); once approved, calling
/// again with that `approval_id` runs it, once.
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_call_tool(
    engine: *mut UtpEngine,
    name: *const c_char,
    args_json: *const c_char,
    options_json: *const c_char,
    out_result_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_result_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_result_json, "out_result_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let args = match unsafe { optional_str(args_json, "args_json") }? {
            None => Value::Null,
            Some(text) => {
                serde_json::from_str(text).map_err(|e| invalid(format!("args_json is not valid JSON: {e}")))?
            }
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let options = call_options(unsafe { optional_str(options_json, "options_json") }?, "utp_call_tool")?;
        // A call whose C tool and rules may run on this thread is driven here and they run
        // here (tools.rs, rules.rs); a sequential HTTP call is driven on this thread too
        // (`Engine::blocking_call`).
        let blocking = handle.engine.blocking_call(name, &options);
        let call = handle.engine.call_tool(name, args, options);
        let result = if blocking.callbacks_here() {
            handle.engine.drive_with_callbacks(handle.runtime()?.handle(), call)?
        } else if blocking.here() {
            handle.engine.block_on_here(call)??
        } else {
            handle.block_on(call)??
        };
        *out = json_out(&result)?;
        Ok(())
    })
}

/// Call a tool like utp_call_tool() without blocking the calling thread: `callback`
/// is called exactly once when the call ends, with `error` NULL and `result_json` the
/// tool's result as JSON, or with the error (`result_json` NULL). Both are valid only
/// during the callback. The callback runs on a library thread (the engine's blocking
/// pool), never on the calling thread, and may call any utp_* function except
/// utp_engine_free(); if the engine is freed first, it is called during
/// utp_engine_free() with a UTP_ERR_CANCELLED error and must not use the engine.
/// `free_user_data` (nullable) is called exactly once with `user_data`: right after
/// the callback, or at once, without the callback, when this call fails (a NULL
/// `callback`, bad arguments). Cancel with `"timeout"` in `options_json`.
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; `callback` and
/// `free_user_data` are NULL or valid functions, callable from any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_call_tool_async(
    engine: *mut UtpEngine,
    name: *const c_char,
    args_json: *const c_char,
    options_json: *const c_char,
    callback: UtpCompletionFn,
    user_data: *mut c_void,
    free_user_data: UtpFreeFn,
) -> *mut UtpError {
    // Owned first, so user_data is finalised on every error path too.
    let mut completion =
        Completion { func: noop_completion, user_data, free: free_user_data, delivered: true, what: "tool call" };
    guard(move || {
        let Some(func) = callback else { return Err(invalid("callback is NULL")) };
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?.to_string();
        // SAFETY: NULL or NUL-terminated per the contract.
        let args = match unsafe { optional_str(args_json, "args_json") }? {
            None => Value::Null,
            Some(text) => {
                serde_json::from_str(text).map_err(|e| invalid(format!("args_json is not valid JSON: {e}")))?
            }
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let options = call_options(unsafe { optional_str(options_json, "options_json") }?, "utp_call_tool_async")?;
        let runtime = handle.runtime()?;
        let engine = handle.engine.clone();
        // From here the callback is owed.
        completion.func = func;
        completion.delivered = false;
        runtime.spawn(async move {
            let outcome = engine.call_tool(&name, args, options).await;
            // C code may block: run it on the blocking pool, never on a worker.
            let _ = tokio::task::spawn_blocking(move || completion.deliver(outcome)).await;
        });
        Ok(())
    })
}

/// Stands in for the callback until a call is accepted (never called: `delivered` is set).
unsafe extern "C" fn noop_completion(_: *mut c_void, _: *const UtpError, _: *const c_char) {}
