//! The C ABI of UTP Runtime: `libutp.so` / `libutp.a` with the header `include/utp.h`
//! (generated from this file by cbindgen, see `build.rs`).
//!
//! Rules kept by every entry point (docs/conventions, "The C ABI"):
//! - the whole body runs inside `catch_unwind`; a panic becomes a `UTP_ERR_PANIC` error;
//! - NULL pointers and invalid UTF-8 are `UTP_ERR_INVALID_ARGUMENT` errors, never UB;
//! - out-parameters are reset (NULL / false) first and written only on success;
//! - strings we hand out are `CString`s freed only by `utp_string_free`;
//! - `_free(NULL)` is a no-op.

#![deny(unsafe_op_in_unsafe_fn)]

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use utp_core::{
    CallOptions, Config, Engine, Error, ErrorCode, Event, EventHandler, HistoryFilter, HostRule, HostVerdict, ManualSource,
    NativeHandler, SubscriptionId,
};

mod error;
mod strings;
mod engine;
mod callbacks;
mod workflows;
mod sessions;
mod store;
mod intents;
mod planner;

pub use crate::error::*;
use crate::strings::*;
pub use crate::engine::*;
pub use crate::callbacks::*;
pub use crate::workflows::*;
pub use crate::sessions::*;
pub use crate::store::*;
pub use crate::intents::*;
pub use crate::planner::*;

// ---------------------------------------------------------------------------
// Handles
// ---------------------------------------------------------------------------

/// The error handle (`utp_error_t` in C). Opaque to C.
pub struct UtpError {
    code: i32,
    message: CString,
    /// RATE_LIMITED: milliseconds until a call may pass (rounded up); -1 otherwise.
    retry_after_ms: i64,
    /// APPROVAL_REQUIRED: the approval to grant with utp_approve().
    approval_id: Option<CString>,
}

impl UtpError {
    fn new(code: ErrorCode, message: &str) -> UtpError {
        UtpError { code: code as i32, message: to_cstring_lossy(message), retry_after_ms: -1, approval_id: None }
    }

    fn into_raw(self) -> *mut UtpError {
        Box::into_raw(Box::new(self))
    }
}

impl From<Error> for UtpError {
    fn from(e: Error) -> UtpError {
        let mut error = UtpError::new(e.code(), &e.to_string());
        if let Some(after) = e.retry_after() {
            let ms = after.as_nanos().div_ceil(1_000_000);
            error.retry_after_ms = i64::try_from(ms).unwrap_or(i64::MAX);
        }
        error.approval_id = e.approval_id().map(to_cstring_lossy);
        error
    }
}

fn tools_json(tools: &[std::sync::Arc<utp_core::RegisteredTool>]) -> Value {
    Value::Array(tools.iter().map(|t| t.to_value()).collect())
}

// ---------------------------------------------------------------------------
// Version
// ---------------------------------------------------------------------------

static VERSION_C: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(s) => s,
    Err(_) => panic!("version holds a NUL byte"),
};

/// The library version, e.g. "0.1.0" (equal to UTP_VERSION_STRING of the header it
/// was built with). A static string: do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn utp_version() -> *const c_char {
    VERSION_C.as_ptr()
}

// ---------------------------------------------------------------------------
// Errors and strings
// ---------------------------------------------------------------------------

/// The code of an error: one of the UTP_ERR_* values. Returns 0 for NULL.
///
/// # Safety
/// `error` is NULL or an error returned by this library and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_error_code(error: *const UtpError) -> i32 {
    guard_value(UTP_ERR_PANIC, || {
        // SAFETY: NULL or a live error, per the contract; as_ref checks NULL.
        unsafe { error.as_ref() }.map_or(0, |e| e.code)
    })
}

/// The UTF-8 message of an error, valid until utp_error_free(error). Returns an
/// empty static string for NULL. Do not free it.
///
/// # Safety
/// `error` is NULL or an error returned by this library and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_error_message(error: *const UtpError) -> *const c_char {
    guard_value(c"".as_ptr(), || {
        // SAFETY: NULL or a live error, per the contract; as_ref checks NULL.
        match unsafe { error.as_ref() } {
            Some(e) => e.message.as_ptr(),
            None => c"".as_ptr(),
        }
    })
}

/// For a UTP_ERR_RATE_LIMITED error: the milliseconds to wait before a call may pass
/// (rounded up). -1 for every other error and for NULL.
///
/// # Safety
/// `error` is NULL or an error returned by this library and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_error_retry_after_ms(error: *const UtpError) -> i64 {
    guard_value(-1, || {
        // SAFETY: NULL or a live error, per the contract; as_ref checks NULL.
        unsafe { error.as_ref() }.map_or(-1, |e| e.retry_after_ms)
    })
}

/// For a UTP_ERR_APPROVAL_REQUIRED error: the id of the approval to grant with
/// utp_approve() (then call again with `{"approval_id": id}` in the options), valid
/// until utp_error_free(error). NULL for every other error and for NULL. Do not free it.
///
/// # Safety
/// `error` is NULL or an error returned by this library and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_error_approval_id(error: *const UtpError) -> *const c_char {
    guard_value(ptr::null(), || {
        // SAFETY: NULL or a live error, per the contract; as_ref checks NULL.
        match unsafe { error.as_ref() }.and_then(|e| e.approval_id.as_ref()) {
            Some(id) => id.as_ptr(),
            None => ptr::null(),
        }
    })
}

/// Free an error. NULL is a no-op.
///
/// # Safety
/// `error` is NULL or an error returned by this library, freed at most once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_error_free(error: *mut UtpError) {
    guard_value((), || {
        if !error.is_null() {
            // SAFETY: a pointer from Box::into_raw in this library, not yet freed.
            drop(unsafe { Box::from_raw(error) });
        }
    })
}

/// Free a string returned by this library through a `char **out_...` parameter.
/// NULL is a no-op. Never pass memory the library did not allocate.
///
/// # Safety
/// `s` is NULL or a string returned by this library, freed at most once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_string_free(s: *mut c_char) {
    guard_value((), || {
        if !s.is_null() {
            // SAFETY: a pointer from CString::into_raw in this library, not yet freed.
            drop(unsafe { CString::from_raw(s) });
        }
    })
}

// ---------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------

/// Create an engine. `config_json` is a JSON object with the engine configuration
/// ("{}" or NULL for defaults); manuals listed in its "manuals" are registered before
/// it returns. With a store (`"store": "sqlite:PATH"`, or `{"url": "sqlite:PATH",
/// "durability": "sync" | "normal" | "off", "retention": "30d", "recover": true}`; a
/// relative PATH is relative to the working directory) executions, their steps, the
/// event audit log, approvals and session state are committed to that SQLite file,
/// and the executions a previous process left unfinished are resumed before it
/// returns (those whose tools are registered by then: call utp_recover() after
/// utp_register_tool() for the others). A file another engine has open, or one that
/// is not a database, gives UTP_ERR_STORE. On success `*out_engine` receives the
/// handle, which is released with utp_engine_free() (which also releases the store
/// file); on error it is set to NULL.
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string; `out_engine` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_engine_new(config_json: *const c_char, out_engine: *mut *mut UtpEngine) -> *mut UtpError {
    guard(|| {
        // SAFETY: valid for writes per the contract (NULL is checked).
        let out = unsafe { out_param(out_engine, "out_engine", ptr::null_mut()) }?;
        // SAFETY: NULL or a NUL-terminated string per the contract.
        let config_text = unsafe { optional_str(config_json, "config_json") }?;
        let config = match config_text {
            None => Value::Null,
            Some(text) if text.trim().is_empty() => Value::Null,
            Some(text) => {
                serde_json::from_str(text).map_err(|e| invalid(format!("config_json is not valid JSON: {e}")))?
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("utp-runtime")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the engine runtime: {e}")))?;
        let config = Config::from_value(config)?;
        // Manuals listed in config `manuals` are registered before the handle exists
        // (as in Python and Node), so a bad one fails engine creation visibly; with a
        // store, unfinished executions are resumed on this engine's own runtime.
        let engine = runtime.block_on(Engine::open(config))?;
        *out = Box::into_raw(Box::new(UtpEngine {
            engine,
            runtime: Some(runtime),
            rules: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            intents: Mutex::new(HashMap::new()),
        }));
        Ok(())
    })
}

/// Free an engine and shut down its library threads (waits for running work to
/// finish). NULL is a no-op. No other thread may use the engine during or after
/// this call, and it must not be called from a callback of the engine. Every
/// finaliser still pending (tools, business rules, subscriptions, intent handlers)
/// has run when it returns; event callbacks that are running are waited for.
/// Workflow runs still going stop where they are (their tasks are dropped with the
/// engine's runtime): with a store they stay unfinished there, for the next engine on
/// it to resume, and the store's file is released before this returns.
///
/// # Safety
/// `engine` is NULL or a handle from utp_engine_new(), freed at most once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_engine_free(engine: *mut UtpEngine) {
    guard_value((), || {
        if !engine.is_null() {
            // SAFETY: a pointer from Box::into_raw in utp_engine_new, not yet freed.
            drop(unsafe { Box::from_raw(engine) });
        }
    })
}

/// Register a manual. `manual_json_or_path_or_url` is inline JSON (a UTCP manual or
/// an OpenAPI document, starting with '{'), an http(s) URL, or a file path. `name`
/// (nullable) overrides the manual's default name. On success `*out_tool_names_json`
/// receives a JSON array of the registered tools' full names ("manual.tool"); free
/// it with utp_string_free(). Registering a name twice gives UTP_ERR_ALREADY_EXISTS.
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_register_manual(
    engine: *mut UtpEngine,
    manual_json_or_path_or_url: *const c_char,
    name: *const c_char,
    out_tool_names_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_tool_names_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_tool_names_json, "out_tool_names_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let source_text = unsafe { required_str(manual_json_or_path_or_url, "manual_json_or_path_or_url") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { optional_str(name, "name") }?;
        let source = ManualSource::from_text(source_text)?;
        let names = handle.block_on(handle.engine.register_manual(source, name))??;
        *out = json_out(&Value::from(names))?;
        Ok(())
    })
}

/// Deregister a manual and its tools. `*out_removed` is set to true when a manual
/// of that name was registered, false otherwise (not an error).
///
/// # Safety
/// `engine` is a live handle; `name` is NULL or NUL-terminated; `out_removed` is
/// valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_deregister_manual(
    engine: *mut UtpEngine,
    name: *const c_char,
    out_removed: *mut bool,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_removed` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_removed, "out_removed", false) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?;
        *out = handle.engine.deregister_manual(name);
        Ok(())
    })
}

/// All registered tools as a JSON array of UTCP tool objects (each `name` is the
/// full "manual.tool" name). Free `*out_tools_json` with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; `out_tools_json` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_tools(engine: *mut UtpEngine, out_tools_json: *mut *mut c_char) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_tools_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_tools_json, "out_tools_json", ptr::null_mut()) }?;
        *out = json_out(&tools_json(&handle.engine.tools()))?;
        Ok(())
    })
}

/// Search the registered tools (BM25 over names, descriptions, tags and schemas),
/// best match first. `limit` caps the results (0 = no limit). `tags_json` (nullable)
/// is a JSON array of tag strings; only tools with at least one of them match
/// (case-insensitive). An empty query lists the (tag-filtered) tools by name. The result
/// is a JSON array of tool objects as in utp_tools(); free it with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_search_tools(
    engine: *mut UtpEngine,
    query: *const c_char,
    limit: u32,
    tags_json: *const c_char,
    out_tools_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_tools_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_tools_json, "out_tools_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let query = unsafe { required_str(query, "query") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let tags = parse_tags(unsafe { optional_str(tags_json, "tags_json") }?)?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        *out = json_out(&tools_json(&handle.engine.search_tools(query, limit, &tags)))?;
        Ok(())
    })
}

/// Discover and register manuals in a directory (recursively), a single file, or
/// at an http(s) URL. One bad file never aborts the scan: `*out_report_json`
/// receives the full report, `{"root": ..., "files": [{"path": ..., "status":
/// "registered" | "skipped" | "failed", ...}]}`; free it with utp_string_free().
/// A missing path is a UTP_ERR_NOT_FOUND error.
///
/// # Safety
/// `engine` is a live handle; `path_or_url` is NULL or NUL-terminated; the
/// out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_discover(
    engine: *mut UtpEngine,
    path_or_url: *const c_char,
    out_report_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_report_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_report_json, "out_report_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let target = unsafe { required_str(path_or_url, "path_or_url") }?;
        let report = handle.block_on(handle.engine.discover(target))??;
        *out = json_out(&report.to_value())?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Calling tools
// ---------------------------------------------------------------------------

/// Read `options_json`: `{"timeout": seconds, "tenant", "session", "user",
/// "approval_id": "...", "fail_fast_on_approval": bool}`.
fn call_options(options_json: Option<&str>) -> Result<CallOptions, Error> {
    let Some(text) = options_json.filter(|t| !t.trim().is_empty()) else { return Ok(CallOptions::default()) };
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("options_json is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(invalid("options_json must be a JSON object"));
    };
    let mut options = CallOptions::default();
    for (key, v) in map {
        match (key.as_str(), v) {
            (_, Value::Null) => {}
            ("timeout", Value::Number(n)) => {
                let secs = n.as_f64().unwrap_or(f64::NAN);
                options.timeout = Some(Duration::try_from_secs_f64(secs).map_err(|_| {
                    invalid(format!("options_json.timeout must be a number of seconds >= 0, got {n}"))
                })?);
            }
            ("tenant", Value::String(s)) => options.tenant = Some(s),
            ("session", Value::String(s)) => options.session = Some(s),
            ("user", Value::String(s)) => options.user = Some(s),
            ("approval_id", Value::String(s)) => options.approval_id = Some(s),
            ("fail_fast_on_approval", Value::Bool(b)) => options.fail_fast_on_approval = b,
            (k @ ("timeout" | "tenant" | "session" | "user" | "approval_id" | "fail_fast_on_approval"), other) => {
                return Err(invalid(format!("options_json.{k} has the wrong type: {other}")));
            }
            (k, _) => {
                return Err(invalid(format!(
                    "unknown option '{k}' (expected timeout, tenant, session, user, approval_id, fail_fast_on_approval)"
                )));
            }
        }
    }
    Ok(options)
}

/// Call a tool. `args_json` (nullable: no arguments) is a JSON object checked
/// against the tool's `inputs`; `options_json` (nullable) is
/// `{"timeout": seconds, "tenant": "...", "session": "...", "user": "...",
/// "approval_id": "...", "fail_fast_on_approval": bool}`. On success
/// `*out_result_json` receives the tool's result as JSON; free it with
/// utp_string_free(). Blocks the calling thread until the call ends.
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
            Some(text) => serde_json::from_str(text).map_err(|e| invalid(format!("args_json is not valid JSON: {e}")))?,
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let options = call_options(unsafe { optional_str(options_json, "options_json") }?)?;
        // A sequential HTTP call is driven on this thread (`Engine::blocking_call`).
        let blocking = handle.engine.blocking_call(name);
        let call = handle.engine.call_tool(name, args, options);
        let result = match blocking.here() {
            true => handle.engine.block_on_here(call)??,
            false => handle.block_on(call)??,
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
    let mut completion = Completion {
        func: noop_completion,
        user_data,
        free: free_user_data,
        delivered: true,
        what: "tool call",
    };
    guard(move || {
        let Some(func) = callback else { return Err(invalid("callback is NULL")) };
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?.to_string();
        // SAFETY: NULL or NUL-terminated per the contract.
        let args = match unsafe { optional_str(args_json, "args_json") }? {
            None => Value::Null,
            Some(text) => serde_json::from_str(text).map_err(|e| invalid(format!("args_json is not valid JSON: {e}")))?,
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let options = call_options(unsafe { optional_str(options_json, "options_json") }?)?;
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

/// A C tool function: gets the call's arguments as JSON text and reports its outcome
/// through `result`. Return 0 on success (the value set with
/// utp_tool_result_set_json(), JSON `null` if none), anything else on failure (the
/// message set with utp_tool_result_set_error()). Called on the engine's library
/// threads (its blocking pool), possibly on several at once. It may call any utp_*
/// function (a nested utp_call_tool() included) except utp_engine_free().
pub type UtpToolFn = Option<unsafe extern "C" fn(user_data: *mut c_void, args_json: *const c_char, result: *mut UtpToolResult) -> i32>;

/// The outcome sink handed to a C tool function (`utp_tool_result_t`).
pub struct UtpToolResult {
    pub(crate) value: Option<Value>,
    pub(crate) error: Option<String>,
}

/// A registered C function with its `user_data`; frees it with the finaliser on drop.
struct CTool {
    func: unsafe extern "C" fn(*mut c_void, *const c_char, *mut UtpToolResult) -> i32,
    user_data: *mut c_void,
    free: UtpFreeFn,
}

// SAFETY: utp.h requires tool functions (and their user_data) to be callable from any
// library thread, concurrently; the pointer is only passed back to the C code.
unsafe impl Send for CTool {}

// SAFETY: as above.
unsafe impl Sync for CTool {}

impl Drop for CTool {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the finaliser the caller registered, called once, with its own user_data.
            unsafe { free(self.user_data) };
        }
    }
}

impl CTool {
    fn call(&self, tool: &str, args: &Value) -> Result<Value, Error> {
        let args = CString::new(args.to_string()).map_err(|e| Error::Internal(format!("arguments hold a NUL: {e}")))?;
        let mut result = UtpToolResult { value: None, error: None };
        let _scope = CallbackScope::enter(false);
        // SAFETY: a function pointer registered through utp_register_tool, called with its
        // user_data, a NUL-terminated string and a sink, all alive for the call.
        let status = unsafe { (self.func)(self.user_data, args.as_ptr(), &mut result) };
        if status == 0 {
            Ok(result.value.unwrap_or(Value::Null))
        } else {
            let why = result.error.unwrap_or_else(|| format!("returned status {status}"));
            Err(Error::with_code(ErrorCode::ToolFailed, format!("tool '{tool}' failed: {why}")))
        }
    }
}

/// Register a C function as the native tool `name` ("manual.tool"; the manual is
/// created when missing). `spec_json` (nullable) is
/// `{"inputs": {...}, "outputs": {...}, "description": "...", "tags": [...]}`.
/// `free_user_data` (nullable) is called with `user_data` when the tool is removed
/// (its manual deregistered or the engine freed), also when registration fails.
/// `*out_name` (nullable) receives the full tool name; free it with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; `func` and
/// `free_user_data` are NULL or valid functions; `out_name` is NULL or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_register_tool(
    engine: *mut UtpEngine,
    name: *const c_char,
    spec_json: *const c_char,
    func: UtpToolFn,
    user_data: *mut c_void,
    free_user_data: UtpFreeFn,
    out_name: *mut *mut c_char,
) -> *mut UtpError {
    // Owned first, so user_data is finalised on every error path too.
    let owned = func.map(|func| CTool { func, user_data, free: free_user_data });
    guard(move || {
        if !out_name.is_null() {
            // SAFETY: non-NULL and valid for writes per the contract.
            unsafe { *out_name = ptr::null_mut() };
        }
        let Some(tool) = owned else { return Err(invalid("func is NULL")) };
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let spec = match unsafe { optional_str(spec_json, "spec_json") }? {
            None => serde_json::Map::new(),
            Some(text) => match serde_json::from_str(text) {
                Ok(Value::Object(map)) => map,
                Ok(Value::Null) => serde_json::Map::new(),
                Ok(_) => return Err(invalid("spec_json must be a JSON object")),
                Err(e) => return Err(invalid(format!("spec_json is not valid JSON: {e}"))),
            },
        };
        if let Some(k) = spec.keys().find(|k| !["inputs", "outputs", "description", "tags"].contains(&k.as_str())) {
            return Err(invalid(format!("unknown spec_json key '{k}' (expected inputs, outputs, description, tags)")));
        }
        let description = match spec.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("spec_json.description must be a string")),
        };
        let tags = parse_tags(spec.get("tags").map(Value::to_string).as_deref())?;
        let schema = |key: &str| spec.get(key).filter(|v| !v.is_null()).cloned();
        let tool = Arc::new(tool);
        let tool_name = name.to_string();
        let handler: NativeHandler = Arc::new(move |args: Value| {
            let (tool, tool_name) = (tool.clone(), tool_name.clone());
            Box::pin(async move {
                // C code may block: run it on the blocking pool, never on a worker.
                tokio::task::spawn_blocking(move || tool.call(&tool_name, &args))
                    .await
                    .map_err(|e| Error::Internal(format!("C tool thread failed: {e}")))?
            })
        });
        let full = handle.engine.register_tool(name, handler, schema("inputs"), schema("outputs"), &description, tags)?;
        if !out_name.is_null() {
            let c = CString::new(full).map_err(|e| Error::Internal(format!("tool name holds a NUL: {e}")))?;
            // SAFETY: non-NULL and valid for writes per the contract.
            unsafe { *out_name = c.into_raw() };
        }
        Ok(())
    })
}

/// Set a C tool's (or C intent handler's) result (JSON text). Only valid during the
/// callback.
///
/// # Safety
/// `result` is the sink passed to the running tool function; `json` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_tool_result_set_json(result: *mut UtpToolResult, json: *const c_char) -> *mut UtpError {
    guard(|| {
        // SAFETY: NULL or the live sink per the contract.
        let sink = unsafe { result.as_mut() }.ok_or_else(|| invalid("result is NULL"))?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let text = unsafe { required_str(json, "json") }?;
        sink.value = Some(serde_json::from_str(text).map_err(|e| invalid(format!("json is not valid JSON: {e}")))?);
        Ok(())
    })
}

/// Set a C tool's (or C intent handler's) failure message (the call fails with
/// UTP_ERR_TOOL_FAILED naming the tool or intent and this message). Only valid during
/// the callback.
///
/// # Safety
/// `result` is the sink passed to the running tool function; `message` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_tool_result_set_error(result: *mut UtpToolResult, message: *const c_char) -> *mut UtpError {
    guard(|| {
        // SAFETY: NULL or the live sink per the contract.
        let sink = unsafe { result.as_mut() }.ok_or_else(|| invalid("result is NULL"))?;
        // SAFETY: NULL or NUL-terminated per the contract.
        sink.error = Some(unsafe { required_str(message, "message") }?.to_string());
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Business rules
// ---------------------------------------------------------------------------

/// A C business rule: called before a tool call runs (after its arguments were
/// validated) with `tool` = the manual's name, `action` = the tool's name without the
/// manual prefix (`"betfair"`, `"placeBet"` for `betfair.placeBet`) and
/// `params_json` = the call's arguments as a JSON object. The strings are valid only
/// during the call. The rule allows the call unless it calls
/// utp_rule_result_deny() or utp_rule_result_escalate() on `result`.
///
/// Threads: runs on the engine's library threads (its blocking pool), possibly on
/// several at once for concurrent calls, and also for utp_check(). It may call any
/// utp_* function (including utp_call_tool(), which runs the rules again: beware of
/// unbounded recursion) except utp_engine_free().
pub type UtpRuleFn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        tool: *const c_char,
        action: *const c_char,
        params_json: *const c_char,
        result: *mut UtpRuleResult,
    ),
>;

/// The verdict sink handed to a C business rule (`utp_rule_result_t`).
pub struct UtpRuleResult {
    verdict: HostVerdict,
}

impl UtpRuleResult {
    /// Record a verdict; the strongest wins (deny > escalate > allow), and among equals the latest reason.
    fn set(&mut self, verdict: HostVerdict) {
        let rank = |v: &HostVerdict| match v {
            HostVerdict::Allow => 0,
            HostVerdict::Escalate(_) => 1,
            HostVerdict::Deny(_) => 2,
        };
        if rank(&verdict) > rank(&self.verdict) {
            self.verdict = verdict;
        } else if rank(&verdict) == rank(&self.verdict) {
            match (&mut self.verdict, verdict) {
                (HostVerdict::Deny(old), HostVerdict::Deny(Some(new)))
                | (HostVerdict::Escalate(old), HostVerdict::Escalate(Some(new))) => *old = Some(new),
                _ => {}
            }
        }
    }
}

/// Call a C rule once (on a blocking-pool thread).
fn call_rule(
    registration: &Registration,
    func: unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, *const c_char, *mut UtpRuleResult),
    tool: &str,
    action: &str,
    params: &Value,
) -> Result<HostVerdict, String> {
    // A rule removed while this call was being decided no longer applies.
    let Some(_running) = registration.enter() else { return Ok(HostVerdict::Allow) };
    let text = |s: String, what: &str| CString::new(s).map_err(|e| format!("{what} holds a NUL byte: {e}"));
    let tool = text(tool.to_string(), "the tool name")?;
    let action = text(action.to_string(), "the action name")?;
    let params = text(params.to_string(), "the arguments")?;
    let mut result = UtpRuleResult { verdict: HostVerdict::Allow };
    let _scope = CallbackScope::enter(false);
    // SAFETY: a function pointer registered through utp_add_business_rule, called with
    // its user_data, NUL-terminated strings and a sink, all alive for the call.
    unsafe { func(registration.user_data, tool.as_ptr(), action.as_ptr(), params.as_ptr(), &mut result) };
    Ok(result.verdict)
}

/// Add a C business rule named `name` (unique per engine). It sees every tool call
/// (and every utp_check()) of the engine; see utp_rule_fn. Deny beats escalate beats
/// allow across all rules, so the order of rules does not matter. An escalated call
/// waits for utp_approve(), or fails at once with UTP_ERR_APPROVAL_REQUIRED when its
/// options have `"fail_fast_on_approval": true`.
///
/// `free_user_data` (nullable) is called exactly once with `user_data`: when the rule
/// is removed with utp_remove_business_rule(), when the engine is freed, or at once
/// when this call fails (a NULL `callback`, a duplicate name: UTP_ERR_ALREADY_EXISTS).
///
/// # Safety
/// `engine` is a live handle; `name` is NULL or NUL-terminated; `callback` and
/// `free_user_data` are NULL or valid functions, callable from any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_add_business_rule(
    engine: *mut UtpEngine,
    name: *const c_char,
    callback: UtpRuleFn,
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
        let name = unsafe { required_str(name, "name") }?;
        let called = registration.clone();
        let rule: HostRule = Arc::new(move |tool: String, action: String, params: Value| {
            let registration = called.clone();
            Box::pin(async move {
                let run = move || call_rule(&registration, func, &tool, &action, &params);
                if tokio::runtime::Handle::try_current().is_err() {
                    return run();
                }
                // C code may block: run it on the blocking pool, never on a worker.
                tokio::task::spawn_blocking(run).await.map_err(|e| format!("the C rule's thread failed: {e}"))?
            })
        });
        let mut rules = lock(&handle.rules);
        handle.engine.add_business_rule(name, rule)?;
        rules.insert(name.to_string(), registration);
        Ok(())
    })
}

/// Remove the business rule `name`. `*out_removed` is set to true when a rule of that
/// name was registered, false otherwise (not an error). No call enters the rule after
/// this returns. Called from a host thread, it also waits until running calls of the
/// rule have returned and its finaliser has run. Called from inside a callback, it
/// does not wait: the finaliser then runs on a library thread once the last running
/// call of the rule has returned (at once if none is running).
///
/// # Safety
/// `engine` is a live handle; `name` is NULL or NUL-terminated; `out_removed` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_remove_business_rule(
    engine: *mut UtpEngine,
    name: *const c_char,
    out_removed: *mut bool,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_removed` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_removed, "out_removed", false) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?;
        *out = deregister(&handle.rules, name, || handle.engine.remove_business_rule(name));
        Ok(())
    })
}

/// Deny the call being checked, with `reason` (nullable: a default naming the rule),
/// which the caller sees in the UTP_ERR_PERMISSION_DENIED message and in the
/// `policy.denied` event. Only valid during the rule callback. Deny beats escalate.
/// An invalid `reason` (not UTF-8) still denies (with the reason made valid) and
/// returns an error.
///
/// # Safety
/// `result` is the sink passed to the running rule; `reason` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_rule_result_deny(result: *mut UtpRuleResult, reason: *const c_char) -> *mut UtpError {
    // SAFETY: forwarded from the caller's contract.
    unsafe { set_rule_result(result, reason, HostVerdict::Deny) }
}

/// Escalate the call being checked to a human approval, with `reason` (nullable).
/// Only valid during the rule callback. As utp_rule_result_deny() otherwise.
///
/// # Safety
/// `result` is the sink passed to the running rule; `reason` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_rule_result_escalate(result: *mut UtpRuleResult, reason: *const c_char) -> *mut UtpError {
    // SAFETY: forwarded from the caller's contract.
    unsafe { set_rule_result(result, reason, HostVerdict::Escalate) }
}

/// # Safety
/// As [`utp_rule_result_deny`].
unsafe fn set_rule_result(
    result: *mut UtpRuleResult,
    reason: *const c_char,
    verdict: fn(Option<String>) -> HostVerdict,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: NULL or the live sink per the contract.
        let sink = unsafe { result.as_mut() }.ok_or_else(|| invalid("result is NULL"))?;
        if reason.is_null() {
            sink.set(verdict(None));
            return Ok(());
        }
        // SAFETY: non-NULL and NUL-terminated per the contract.
        let bytes = unsafe { CStr::from_ptr(reason) };
        match bytes.to_str() {
            Ok(text) => {
                sink.set(verdict(Some(text.to_string())));
                Ok(())
            }
            Err(e) => {
                // Fail closed: the verdict stands, with a readable reason.
                sink.set(verdict(Some(bytes.to_string_lossy().into_owned())));
                Err(invalid(format!("reason is not valid UTF-8: {e}")))
            }
        }
    })
}

/// Dry run of the domain checks (permissions, security level, rules, business rules)
/// for calling `tool_name` with `args_json` (nullable: no arguments) for `tenant`
/// (nullable). Calls nothing, consumes no rate-limit budget, creates no approval.
/// `*out_decision_json` receives `{"tool", "decision": "allow"|"deny"|"escalate",
/// "security_level", "rules": [{"rule", "effect", "message"}], "reason",
/// "rate_limited": null | {"limit", "retry_after_ms"}}`; free it with utp_string_free().
/// Blocks until the rules have run (C business rules run on library threads).
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_check(
    engine: *mut UtpEngine,
    tool_name: *const c_char,
    args_json: *const c_char,
    tenant: *const c_char,
    out_decision_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_decision_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_decision_json, "out_decision_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let tool_name = unsafe { required_str(tool_name, "tool_name") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let args = match unsafe { optional_str(args_json, "args_json") }? {
            None => Value::Null,
            Some(text) => serde_json::from_str(text).map_err(|e| invalid(format!("args_json is not valid JSON: {e}")))?,
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let tenant = unsafe { optional_str(tenant, "tenant") }?;
        let decision = handle.block_on(handle.engine.check(tool_name, args, tenant))??;
        *out = json_out(&decision)?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Approvals
// ---------------------------------------------------------------------------

fn approval_error(e: serde_json::Error) -> Error {
    Error::Internal(format!("cannot serialise approvals: {e}"))
}

/// The approvals of escalated calls, oldest first, as a JSON array of `{"id", "tool",
/// "tenant", "session", "reason", "status": "pending"|"approved"|"denied", "created",
/// "resolved", "resolution_reason"}`; with `pending_only`, only those still waiting.
/// Free `*out_approvals_json` with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; the out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_approvals(
    engine: *mut UtpEngine,
    pending_only: bool,
    out_approvals_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_approvals_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_approvals_json, "out_approvals_json", ptr::null_mut()) }?;
        *out = json_out(&serde_json::to_value(handle.engine.approvals(pending_only)).map_err(approval_error)?)?;
        Ok(())
    })
}

/// Grant (`approved` true) or refuse a pending approval, with `reason` (nullable).
/// A call waiting for it proceeds (or fails with UTP_ERR_PERMISSION_DENIED); a call
/// that failed fast may be made again with `{"approval_id": "..."}` in its options,
/// once. Unknown id: UTP_ERR_NOT_FOUND; already resolved: UTP_ERR_INVALID_ARGUMENT.
/// `*out_approval_json` (nullable) receives the resolved approval as in
/// utp_approvals(); free it with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; `out_approval_json`
/// is NULL or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_approve(
    engine: *mut UtpEngine,
    approval_id: *const c_char,
    approved: bool,
    reason: *const c_char,
    out_approval_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        if !out_approval_json.is_null() {
            // SAFETY: non-NULL and valid for writes per the contract.
            unsafe { *out_approval_json = ptr::null_mut() };
        }
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let id = unsafe { required_str(approval_id, "approval_id") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let reason = unsafe { optional_str(reason, "reason") }?;
        let info = handle.engine.approve(id, approved, reason)?;
        if !out_approval_json.is_null() {
            let text = json_out(&serde_json::to_value(&info).map_err(approval_error)?)?;
            // SAFETY: non-NULL and valid for writes per the contract.
            unsafe { *out_approval_json = text };
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Events and metrics
// ---------------------------------------------------------------------------

/// A C event handler: gets one event as JSON text, `{"id", "type", "time",
/// "execution_id"?, "session_id"?, "tenant"?, "workflow"?, "step_id"?, "tool"?,
/// "data"}`, valid only during the call.
///
/// Threads: each subscription has its own library thread; its handler is called
/// there, one event at a time, in event id order, never concurrently with itself
/// (different subscriptions run in parallel). A slow handler never delays a tool call:
/// events for it wait in a bounded queue (config `events.queue_capacity`, default
/// 1024) and are dropped (and counted in the metrics) when it is full. The handler
/// may call any utp_* function (including utp_call_tool() and utp_unsubscribe() of
/// its own subscription) except utp_events_flush() and utp_engine_free().
pub type UtpEventFn = Option<unsafe extern "C" fn(user_data: *mut c_void, event_json: *const c_char)>;

/// Subscribe `callback` to the events whose type matches the glob `pattern`
/// (`"*"`, `"tool.*"`, `"policy.denied"`); see utp_event_fn. `*out_subscription_id`
/// receives the subscription's id (never 0) for utp_unsubscribe().
///
/// `free_user_data` (nullable) is called exactly once with `user_data`: after the
/// last callback has returned, when the subscription is removed with
/// utp_unsubscribe() or the engine is freed, or at once when this call fails
/// (a NULL `callback`, an empty `pattern`).
///
/// # Safety
/// `engine` is a live handle; `pattern` is NULL or NUL-terminated; `callback` and
/// `free_user_data` are NULL or valid functions, callable from any thread;
/// `out_subscription_id` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_subscribe(
    engine: *mut UtpEngine,
    pattern: *const c_char,
    callback: UtpEventFn,
    user_data: *mut c_void,
    free_user_data: UtpFreeFn,
    out_subscription_id: *mut u64,
) -> *mut UtpError {
    // Owned first, so user_data is finalised on every error path too.
    let registration = Arc::new(Registration::new(user_data, free_user_data));
    guard(move || {
        // SAFETY: valid for writes per the contract (NULL is checked).
        let out = unsafe { out_param(out_subscription_id, "out_subscription_id", 0) }?;
        let Some(func) = callback else { return Err(invalid("callback is NULL")) };
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let pattern = unsafe { required_str(pattern, "pattern") }?;
        let called = registration.clone();
        let handler: EventHandler = Arc::new(move |event: Arc<Event>| {
            let Some(_running) = called.enter() else { return Ok(()) };
            let text = serde_json::to_string(&*event).map_err(|e| format!("cannot serialise the event: {e}"))?;
            let text = CString::new(text).map_err(|e| format!("the event holds a NUL byte: {e}"))?;
            let _scope = CallbackScope::enter(true);
            // SAFETY: a function pointer registered through utp_subscribe, called with its
            // user_data and a NUL-terminated string alive for the call.
            unsafe { func(called.user_data, text.as_ptr()) };
            Ok(())
        });
        let mut subscriptions = lock(&handle.subscriptions);
        let id = handle.engine.subscribe(pattern, handler)?;
        subscriptions.insert(id.0, registration);
        *out = id.0;
        Ok(())
    })
}

/// Remove a subscription. `*out_removed` is set to true when `subscription_id` was a
/// live subscription of this engine, false otherwise (an unknown or already removed
/// id is not an error). Events still queued for it are discarded and its callback is
/// not called again after this returns. Called from a host thread, it also waits
/// until a running callback has returned and the finaliser has run; called from
/// inside a callback (its own included), it does not wait: the finaliser then runs on
/// a library thread once the running callback has returned.
///
/// # Safety
/// `engine` is a live handle; `out_removed` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_unsubscribe(
    engine: *mut UtpEngine,
    subscription_id: u64,
    out_removed: *mut bool,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_removed` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_removed, "out_removed", false) }?;
        let registration = {
            let mut subscriptions = lock(&handle.subscriptions);
            let registration = subscriptions.remove(&subscription_id);
            if registration.is_some() {
                handle.engine.unsubscribe(SubscriptionId(subscription_id));
            }
            registration
        };
        if let Some(registration) = registration {
            *out = true;
            registration.retire(!CallbackScope::active());
        }
        Ok(())
    })
}

/// Wait until every subscriber has handled (or dropped) the events published so far,
/// at most `timeout_ms` milliseconds. `*out_drained` is true when they all did. Use it
/// before asserting on what a callback saw. Calling it from an event callback is a
/// UTP_ERR_INVALID_ARGUMENT error (it would wait for itself).
///
/// # Safety
/// `engine` is a live handle; `out_drained` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_events_flush(engine: *mut UtpEngine, timeout_ms: u64, out_drained: *mut bool) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_drained` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_drained, "out_drained", false) }?;
        if CallbackScope::in_event() {
            return Err(invalid("utp_events_flush cannot be called from an event callback (it would wait for itself)"));
        }
        *out = handle.engine.events().flush(Duration::from_millis(timeout_ms));
        Ok(())
    })
}

/// Events kept in the engine's in-memory history (config `events.history_size`,
/// default 10,000), in id order, as a JSON array of events (see utp_event_fn).
/// `filter_json` (nullable) is `{"limit": n, "type": "glob", "execution_id": "...",
/// "tool": "manual.tool", "tenant": "...", "since": id}`; every field is optional and
/// all given ones must match. With `since`, the result is the first `limit` events
/// after that id; without, the last `limit`. Free `*out_events_json` with
/// utp_string_free().
///
/// # Safety
/// `engine` is a live handle; `filter_json` is NULL or NUL-terminated; the
/// out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_history(
    engine: *mut UtpEngine,
    filter_json: *const c_char,
    out_events_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_events_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_events_json, "out_events_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let filter = match unsafe { optional_str(filter_json, "filter_json") }? {
            None => HistoryFilter::default(),
            Some(text) if text.trim().is_empty() => HistoryFilter::default(),
            Some(text) => {
                match serde_json::from_str(text).map_err(|e| invalid(format!("filter_json is not valid JSON: {e}")))? {
                    Value::Null => HistoryFilter::default(),
                    value @ Value::Object(_) => serde_json::from_value(value).map_err(|e| {
                        invalid(format!(
                            "filter_json: {e} (expected limit, type, execution_id, tool, tenant, since)"
                        ))
                    })?,
                    _ => return Err(invalid("filter_json must be a JSON object (or null)")),
                }
            }
        };
        let events = handle.engine.history(&filter);
        let text = serde_json::to_string(&events.iter().map(|e| &**e).collect::<Vec<&Event>>())
            .map_err(|e| Error::Internal(format!("cannot serialise events: {e}")))?;
        *out = CString::new(text).map_err(|e| Error::Internal(format!("events hold a NUL byte: {e}")))?.into_raw();
        Ok(())
    })
}

/// A JSON snapshot of the engine's metrics (calls, errors and latency per tool,
/// denials, rate-limited calls, event counters). Free `*out_metrics_json` with
/// utp_string_free().
///
/// # Safety
/// `engine` is a live handle; the out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_metrics(engine: *mut UtpEngine, out_metrics_json: *mut *mut c_char) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_metrics_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_metrics_json, "out_metrics_json", ptr::null_mut()) }?;
        *out = json_out(&handle.engine.metrics())?;
        Ok(())
    })
}

/// The engine's metrics in the Prometheus text exposition format (e.g.
/// `utp_policy_denied_total{tool="betfair.placeBet"} 3`). Free `*out_text` with
/// utp_string_free().
///
/// # Safety
/// `engine` is a live handle; the out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_metrics_text(engine: *mut UtpEngine, out_text: *mut *mut c_char) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_text` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_text, "out_text", ptr::null_mut()) }?;
        *out = to_cstring_lossy(&handle.engine.metrics_text()).into_raw();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_core() {
        // SAFETY: utp_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(utp_version()) }.to_str().unwrap();
        assert_eq!(v, utp_core::VERSION);
    }

    #[test]
    fn tags_parse() {
        assert!(parse_tags(None).unwrap().is_empty());
        assert!(parse_tags(Some("null")).unwrap().is_empty());
        assert_eq!(parse_tags(Some(r#"["a","b"]"#)).unwrap(), vec!["a", "b"]);
        assert_eq!(parse_tags(Some("[1]")).unwrap_err().code(), ErrorCode::InvalidArgument);
        assert_eq!(parse_tags(Some("{")).unwrap_err().code(), ErrorCode::InvalidArgument);
    }

    #[test]
    fn rule_results_keep_the_strongest_verdict() {
        let mut r = UtpRuleResult { verdict: HostVerdict::Allow };
        r.set(HostVerdict::Escalate(Some("e".into())));
        r.set(HostVerdict::Deny(None));
        r.set(HostVerdict::Escalate(Some("later".into())));
        assert_eq!(r.verdict, HostVerdict::Deny(None));
        r.set(HostVerdict::Deny(Some("why".into())));
        r.set(HostVerdict::Deny(None));
        assert_eq!(r.verdict, HostVerdict::Deny(Some("why".into())));
    }

    #[test]
    fn engine_round_trip_from_rust() {
        let mut engine = ptr::null_mut();
        // SAFETY: valid C strings and out-pointers; every handle is freed below.
        unsafe {
            assert!(utp_engine_new(c"{}".as_ptr(), &mut engine).is_null());
            let manual = cr#"{"tools":[{"name":"ping","description":"Ping a host","tool_call_template":{"call_template_type":"native"}}]}"#;
            let mut names = ptr::null_mut();
            let err = utp_register_manual(engine, manual.as_ptr(), c"net".as_ptr(), &mut names);
            assert!(err.is_null(), "{:?}", CStr::from_ptr(utp_error_message(err)));
            assert_eq!(CStr::from_ptr(names).to_str().unwrap(), r#"["net.ping"]"#);
            utp_string_free(names);

            let err = utp_register_manual(engine, ptr::null(), ptr::null(), &mut names);
            assert_eq!(utp_error_code(err), UTP_ERR_INVALID_ARGUMENT);
            assert!(names.is_null());
            utp_error_free(err);

            let mut removed = false;
            assert!(utp_deregister_manual(engine, c"net".as_ptr(), &mut removed).is_null());
            assert!(removed);
            utp_engine_free(engine);
        }
    }
}
