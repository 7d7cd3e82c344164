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

use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::Arc;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::time::Duration;

use serde_json::Value;
use utp_core::{CallOptions, Engine, Error, ErrorCode, ManualSource, NativeHandler};

// ---------------------------------------------------------------------------
// Error codes (design §4; stable, append-only). Must equal `utp_core::ErrorCode`.
// ---------------------------------------------------------------------------

/// A required pointer was NULL, a string was not UTF-8, or an argument was malformed.
pub const UTP_ERR_INVALID_ARGUMENT: i32 = 1;
/// No such manual, tool, file or execution.
pub const UTP_ERR_NOT_FOUND: i32 = 2;
/// A manual (or other named item) with that name is already registered.
pub const UTP_ERR_ALREADY_EXISTS: i32 = 3;
/// A manual could not be parsed or is not a valid UTCP / OpenAPI document.
pub const UTP_ERR_INVALID_MANUAL: i32 = 4;
/// Arguments or results failed schema validation.
pub const UTP_ERR_VALIDATION_FAILED: i32 = 5;
/// A variable a manual needs is not set.
pub const UTP_ERR_VARIABLE_NOT_FOUND: i32 = 6;
/// A domain rule or permission denied the call.
pub const UTP_ERR_PERMISSION_DENIED: i32 = 7;
/// A rate limit was hit.
pub const UTP_ERR_RATE_LIMITED: i32 = 8;
/// The call needs an approval first.
pub const UTP_ERR_APPROVAL_REQUIRED: i32 = 9;
/// The operation timed out.
pub const UTP_ERR_TIMEOUT: i32 = 10;
/// The operation was cancelled.
pub const UTP_ERR_CANCELLED: i32 = 11;
/// A transport (HTTP, CLI, ...) failed.
pub const UTP_ERR_TRANSPORT: i32 = 12;
/// The tool itself reported a failure.
pub const UTP_ERR_TOOL_FAILED: i32 = 13;
/// A security rule refused the operation (address, redirect, sandbox escape...).
pub const UTP_ERR_SECURITY: i32 = 14;
/// The store failed.
pub const UTP_ERR_STORE: i32 = 15;
/// The planner failed.
pub const UTP_ERR_PLANNER: i32 = 16;
/// The wasm sandbox failed.
pub const UTP_ERR_SANDBOX: i32 = 17;
/// An internal error (a bug or an unexpected environment failure).
pub const UTP_ERR_INTERNAL: i32 = 18;
/// A panic inside the library was caught at the C boundary.
pub const UTP_ERR_PANIC: i32 = 19;

// ---------------------------------------------------------------------------
// Handles
// ---------------------------------------------------------------------------

/// The engine handle (`utp_engine_t` in C): the core engine plus the tokio runtime
/// that drives its async methods. Opaque to C.
pub struct UtpEngine {
    engine: Engine,
    runtime: Option<tokio::runtime::Runtime>,
}

impl UtpEngine {
    fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output, Error> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Internal("engine runtime is already shut down".into()))?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InvalidArgument(
                "utp functions may not be called from one of the engine's own library threads".into(),
            ));
        }
        Ok(runtime.block_on(future))
    }
}

impl Drop for UtpEngine {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Inside a runtime (should not happen from C): never block here.
                runtime.shutdown_background();
            } else {
                // Joins the worker and blocking-pool threads so nothing outlives the engine.
                runtime.shutdown_timeout(Duration::from_secs(10));
            }
        }
    }
}

/// The error handle (`utp_error_t` in C). Opaque to C.
pub struct UtpError {
    code: i32,
    message: CString,
}

impl UtpError {
    fn new(code: ErrorCode, message: &str) -> UtpError {
        UtpError { code: code as i32, message: to_cstring_lossy(message) }
    }

    fn into_raw(self) -> *mut UtpError {
        Box::into_raw(Box::new(self))
    }
}

impl From<Error> for UtpError {
    fn from(e: Error) -> UtpError {
        UtpError::new(e.code(), &e.to_string())
    }
}

/// A `CString` from text that may hold NUL bytes (they become `\0` escapes).
fn to_cstring_lossy(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).unwrap_or_default()
}

/// Run a fallible body at the C boundary: `Ok` → NULL, `Err` → a new error, a panic →
/// a `UTP_ERR_PANIC` error.
fn guard(body: impl FnOnce() -> Result<(), Error>) -> *mut UtpError {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ptr::null_mut(),
        Ok(Err(e)) => UtpError::from(e).into_raw(),
        Err(payload) => {
            let msg = Error::from_panic(payload.as_ref(), "libutp").to_string();
            // Building the error must not unwind again; fall back to a static message.
            catch_unwind(|| UtpError::new(ErrorCode::Panic, &msg).into_raw()).unwrap_or(ptr::null_mut())
        }
    }
}

/// Run an infallible body at the C boundary, returning `fallback` on a panic.
fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Borrow a required C string as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for `'a`.
unsafe fn required_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string alive for 'a.
    let bytes = unsafe { CStr::from_ptr(p) };
    bytes.to_str().map_err(|e| invalid(format!("{what} is not valid UTF-8: {e}")))
}

/// Borrow an optional C string (NULL → `None`) as UTF-8.
///
/// # Safety
/// As [`required_str`].
unsafe fn optional_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller's contract.
    unsafe { required_str(p, what) }.map(Some)
}

/// Borrow the engine behind a handle.
///
/// # Safety
/// `p` is NULL or a live handle from `utp_engine_new` not yet freed.
unsafe fn engine_ref<'a>(p: *const UtpEngine) -> Result<&'a UtpEngine, Error> {
    // SAFETY: the caller guarantees p is NULL or a live handle; as_ref checks NULL.
    unsafe { p.as_ref() }.ok_or_else(|| invalid("engine is NULL"))
}

/// Check an out-parameter and reset what it points at.
///
/// # Safety
/// `p` is NULL or valid for writing one `T`.
unsafe fn out_param<'a, T>(p: *mut T, what: &str, reset: T) -> Result<&'a mut T, Error> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and, by the caller's contract, valid for writes; `write` does not
    // drop the (possibly uninitialised) old value.
    unsafe {
        p.write(reset);
        Ok(&mut *p)
    }
}

/// JSON text as a C string the caller frees with `utp_string_free`.
fn json_out(value: &Value) -> Result<*mut c_char, Error> {
    let text = serde_json::to_string(value).map_err(|e| Error::Internal(format!("cannot serialise result: {e}")))?;
    let c = CString::new(text).map_err(|e| Error::Internal(format!("result holds a NUL byte: {e}")))?;
    Ok(c.into_raw())
}

fn parse_tags(tags_json: Option<&str>) -> Result<Vec<String>, Error> {
    let Some(text) = tags_json else { return Ok(Vec::new()) };
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("tags_json is not valid JSON: {e}")))?;
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(invalid(format!("tags_json must be an array of strings, found element {other}"))),
            })
            .collect(),
        _ => Err(invalid("tags_json must be a JSON array of strings or null")),
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
/// it returns. On success `*out_engine` receives the handle, which
/// is released with utp_engine_free(); on error it is set to NULL.
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
        let engine = {
            let _ctx = runtime.enter();
            Engine::from_json(config)?
        };
        // Manuals listed in config `manuals` are registered before the handle exists
        // (as in Python and Node), so a bad one fails engine creation visibly.
        runtime.block_on(engine.register_configured_manuals())?;
        *out = Box::into_raw(Box::new(UtpEngine { engine, runtime: Some(runtime) }));
        Ok(())
    })
}

/// Free an engine and shut down its library threads (waits for running work to
/// finish). NULL is a no-op. No other thread may use the engine during or after
/// this call.
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
        // SAFETY: valid for writes per the contract (NULL is checked).
        let out = unsafe { out_param(out_tool_names_json, "out_tool_names_json", ptr::null_mut()) }?;
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
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
        // SAFETY: valid for writes per the contract (NULL is checked).
        let out = unsafe { out_param(out_removed, "out_removed", false) }?;
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
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
        // SAFETY: valid for writes per the contract (NULL is checked).
        let out = unsafe { out_param(out_tools_json, "out_tools_json", ptr::null_mut()) }?;
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
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
        // SAFETY: valid for writes per the contract (NULL is checked).
        let out = unsafe { out_param(out_tools_json, "out_tools_json", ptr::null_mut()) }?;
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
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
        // SAFETY: valid for writes per the contract (NULL is checked).
        let out = unsafe { out_param(out_report_json, "out_report_json", ptr::null_mut()) }?;
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
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
/// `{"timeout": seconds, "tenant": "...", "session": "..."}`. On success
/// `*out_result_json` receives the tool's result as JSON; free it with
/// utp_string_free(). Blocks the calling thread until the call ends.
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
        // SAFETY: valid for writes per the contract (NULL is checked).
        let out = unsafe { out_param(out_result_json, "out_result_json", ptr::null_mut()) }?;
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let args = match unsafe { optional_str(args_json, "args_json") }? {
            None => Value::Null,
            Some(text) => serde_json::from_str(text).map_err(|e| invalid(format!("args_json is not valid JSON: {e}")))?,
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let options = call_options(unsafe { optional_str(options_json, "options_json") }?)?;
        let result = handle.block_on(handle.engine.call_tool(name, args, options))??;
        *out = json_out(&result)?;
        Ok(())
    })
}

/// A C tool function: gets the call's arguments as JSON text and reports its outcome
/// through `result`. Return 0 on success (the value set with
/// utp_tool_result_set_json(), JSON `null` if none), anything else on failure (the
/// message set with utp_tool_result_set_error()). Called on the engine's library
/// threads, possibly from several at once; it must not call blocking utp_*
/// functions of the same engine.
pub type UtpToolFn = Option<unsafe extern "C" fn(user_data: *mut c_void, args_json: *const c_char, result: *mut UtpToolResult) -> i32>;

/// Releases `user_data` once the engine no longer needs it.
pub type UtpFreeFn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// The outcome sink handed to a C tool function (`utp_tool_result_t`).
pub struct UtpToolResult {
    value: Option<Value>,
    error: Option<String>,
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

/// Set a C tool's result (JSON text). Only valid during the tool function's call.
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

/// Set a C tool's failure message (the call fails with UTP_ERR_TOOL_FAILED naming the
/// tool and this message). Only valid during the tool function's call.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_constants_match_core_codes() {
        let ours = [
            UTP_ERR_INVALID_ARGUMENT,
            UTP_ERR_NOT_FOUND,
            UTP_ERR_ALREADY_EXISTS,
            UTP_ERR_INVALID_MANUAL,
            UTP_ERR_VALIDATION_FAILED,
            UTP_ERR_VARIABLE_NOT_FOUND,
            UTP_ERR_PERMISSION_DENIED,
            UTP_ERR_RATE_LIMITED,
            UTP_ERR_APPROVAL_REQUIRED,
            UTP_ERR_TIMEOUT,
            UTP_ERR_CANCELLED,
            UTP_ERR_TRANSPORT,
            UTP_ERR_TOOL_FAILED,
            UTP_ERR_SECURITY,
            UTP_ERR_STORE,
            UTP_ERR_PLANNER,
            UTP_ERR_SANDBOX,
            UTP_ERR_INTERNAL,
            UTP_ERR_PANIC,
        ];
        assert_eq!(ours.len(), ErrorCode::ALL.len());
        for (value, code) in ours.iter().zip(ErrorCode::ALL) {
            assert_eq!(*value, code as i32, "{code}");
        }
    }

    #[test]
    fn version_matches_core() {
        // SAFETY: utp_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(utp_version()) }.to_str().unwrap();
        assert_eq!(v, utp_core::VERSION);
    }

    #[test]
    fn a_panic_becomes_a_panic_error() {
        let err = guard(|| panic!("boom"));
        assert!(!err.is_null());
        // SAFETY: err is a live error from guard.
        unsafe {
            assert_eq!(utp_error_code(err), UTP_ERR_PANIC);
            let msg = CStr::from_ptr(utp_error_message(err)).to_str().unwrap();
            assert!(msg.contains("boom"), "{msg}");
            utp_error_free(err);
        }
        assert_eq!(guard_value(7, || -> i32 { panic!("again") }), 7);
    }

    #[test]
    fn nul_bytes_in_messages_are_escaped() {
        let e = UtpError::new(ErrorCode::Internal, "a\0b");
        assert_eq!(e.message.to_str().unwrap(), "a\\0b");
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
