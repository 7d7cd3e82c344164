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

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use utp_core::{
    CallOptions, Config, Engine, Error, ErrorCode, Event, EventHandler, HistoryFilter, HostRule, HostVerdict, ManualSource,
    NativeHandler, SubscriptionId,
};
use utp_core::events::{Pattern, kinds};
use utp_core::planner::PlanOptions;
use utp_core::store::EventFilter;
use utp_core::workflow::{RunOptions, WorkflowSource};
use utp_core::{IntentContext, IntentHandler, IntentTarget};

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
    /// C business rules by name (to retire their callbacks on removal and on free).
    rules: Mutex<HashMap<String, Arc<Registration>>>,
    /// C event subscriptions by id (likewise).
    subscriptions: Mutex<HashMap<u64, Arc<Registration>>>,
    /// C intent handlers by intent type (likewise; workflow intents are not here).
    intents: Mutex<HashMap<String, Arc<Registration>>>,
}

impl UtpEngine {
    /// Run a future to completion on the engine's runtime, blocking this thread.
    ///
    /// Allowed from host threads and from inside a C callback (tools and rules run on
    /// the runtime's blocking pool, where blocking is fine; event callbacks run on
    /// plain subscriber threads). Refused on any other thread inside a tokio runtime,
    /// where blocking could stall the runtime's workers.
    fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output, Error> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Internal("engine runtime is already shut down".into()))?;
        if tokio::runtime::Handle::try_current().is_ok() && !CallbackScope::active() {
            return Err(Error::InvalidArgument(
                "utp functions may not be called from an async task of a tokio runtime".into(),
            ));
        }
        Ok(runtime.block_on(future))
    }
}

/// Remove `name` from the engine (`remove`, under the registrations' lock, so a
/// registration of the same name cannot slip in between) and from `registrations`,
/// then retire its callback outside the lock (its finaliser runs once). What `remove`
/// answered.
fn deregister(
    registrations: &Mutex<HashMap<String, Arc<Registration>>>,
    name: &str,
    remove: impl FnOnce() -> bool,
) -> bool {
    let (removed, registration) = {
        let mut map = lock(registrations);
        (remove(), map.remove(name))
    };
    if let Some(registration) = registration {
        registration.retire(!CallbackScope::active());
    }
    removed
}

impl Drop for UtpEngine {
    fn drop(&mut self) {
        // Inside one of our own callbacks (freeing the engine from a callback breaks the
        // documented contract) never wait for that callback to end: it would be ourselves.
        let wait = !CallbackScope::active();
        // 1. No event callback runs any more (waits for running ones), so none can use
        //    the runtime while it shuts down; their finalisers run here.
        for (id, registration) in std::mem::take(&mut *lock(&self.subscriptions)) {
            self.engine.unsubscribe(SubscriptionId(id));
            registration.retire(wait);
        }
        // 2. Stop the runtime: cancels running calls, joins the worker and blocking-pool
        //    threads (so running C tool and rule callbacks have returned).
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Inside a runtime (should not happen from C): never block here.
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(Duration::from_secs(10));
            }
        }
        // 3. Rule and intent handler finalisers; C tool finalisers run when `engine` is
        //    dropped after this.
        for (name, registration) in std::mem::take(&mut *lock(&self.rules)) {
            self.engine.remove_business_rule(&name);
            registration.retire(wait);
        }
        for (name, registration) in std::mem::take(&mut *lock(&self.intents)) {
            self.engine.unregister_intent(&name);
            registration.retire(wait);
        }
    }
}

/// Lock a std mutex, ignoring poisoning (our critical sections leave consistent state).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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

/// The engine handle and an out-parameter, as most entry points begin: the
/// out-parameter is checked and reset first (so it is never left dangling), then the
/// handle is checked.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing one `T`.
unsafe fn engine_and_out<'a, T>(
    engine: *const UtpEngine,
    out: *mut T,
    what: &str,
    reset: T,
) -> Result<(&'a UtpEngine, &'a mut T), Error> {
    // SAFETY: forwarded from the caller's contract.
    let out = unsafe { out_param(out, what, reset) }?;
    // SAFETY: forwarded from the caller's contract.
    let handle = unsafe { engine_ref(engine) }?;
    Ok((handle, out))
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
// Callback registrations (business rules, event subscriptions)
// ---------------------------------------------------------------------------

thread_local! {
    /// How many C callbacks (tools, rules, event handlers) are running on this thread,
    /// and how many of them are event handlers.
    static CALLBACK_DEPTH: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// Marks the current thread as running a C callback for as long as it lives.
struct CallbackScope {
    event: bool,
}

impl CallbackScope {
    fn enter(event: bool) -> CallbackScope {
        CALLBACK_DEPTH.with(|d| {
            let (all, events) = d.get();
            d.set((all + 1, events + u32::from(event)));
        });
        CallbackScope { event }
    }

    /// True inside any C callback on this thread.
    fn active() -> bool {
        CALLBACK_DEPTH.with(|d| d.get().0 > 0)
    }

    /// True inside an event callback on this thread.
    fn in_event() -> bool {
        CALLBACK_DEPTH.with(|d| d.get().1 > 0)
    }
}

impl Drop for CallbackScope {
    fn drop(&mut self) {
        let event = self.event;
        CALLBACK_DEPTH.with(|d| {
            let (all, events) = d.get();
            d.set((all.saturating_sub(1), events.saturating_sub(u32::from(event))));
        });
    }
}

/// The life of one registered callback's `user_data`: calls enter and leave it, and
/// once it is retired (removed) no call enters again and the finaliser runs exactly
/// once, after the last running call has returned. Whoever retires it may wait for
/// that; a registration dropped without being retired (engine freed, registration
/// refused) finalises on drop.
struct Registration {
    user_data: *mut c_void,
    state: Mutex<RegistrationState>,
    idle: Condvar,
}

struct RegistrationState {
    running: usize,
    retired: bool,
    /// Threads in `retire(true)` waiting for `running` to reach 0; they finalise.
    waiting: usize,
    /// The finaliser, taken (so run at most once) when it runs.
    free: UtpFreeFn,
}

// SAFETY: utp.h requires callbacks (and their user_data) to be usable from any library
// thread, concurrently; the pointer is only passed back to the C code.
unsafe impl Send for Registration {}
// SAFETY: as above; the mutable state is behind the mutex.
unsafe impl Sync for Registration {}

/// A call inside a registration (see [`Registration::enter`]).
struct Running<'a>(&'a Registration);

impl Registration {
    fn new(user_data: *mut c_void, free: UtpFreeFn) -> Registration {
        Registration {
            user_data,
            state: Mutex::new(RegistrationState { running: 0, retired: false, waiting: 0, free }),
            idle: Condvar::new(),
        }
    }

    /// Start a call, or `None` once the registration is retired.
    fn enter(&self) -> Option<Running<'_>> {
        let mut state = lock(&self.state);
        if state.retired {
            return None;
        }
        state.running += 1;
        Some(Running(self))
    }

    /// Stop new calls; finalise now if none is running, else when the last one returns.
    /// With `wait`, block until no call is running and the finaliser has run.
    fn retire(&self, wait: bool) {
        let mut state = lock(&self.state);
        state.retired = true;
        if wait {
            state.waiting += 1;
            while state.running > 0 {
                state = self.idle.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.waiting -= 1;
        }
        let free = if state.running == 0 { state.free.take() } else { None };
        drop(state);
        self.finalise(free);
    }

    fn finalise(&self, free: UtpFreeFn) {
        if let Some(free) = free {
            // SAFETY: the finaliser the caller registered, with its own user_data; taken
            // out of the state under the lock, so it runs once.
            unsafe { free(self.user_data) };
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let registration = self.0;
        let mut state = lock(&registration.state);
        state.running -= 1;
        let mut free = None;
        if state.running == 0 {
            if state.waiting > 0 {
                registration.idle.notify_all();
            } else if state.retired {
                free = state.free.take();
            }
        }
        drop(state);
        registration.finalise(free);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let free = lock(&self.state).free.take();
        self.finalise(free);
    }
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

// ---------------------------------------------------------------------------
// Workflows (design §7)
// ---------------------------------------------------------------------------

impl UtpEngine {
    fn runtime(&self) -> Result<&tokio::runtime::Runtime, Error> {
        self.runtime.as_ref().ok_or_else(|| Error::Internal("engine runtime is already shut down".into()))
    }
}

/// Read `options_json` of a workflow run: `{"tenant", "session", "user", "timeout": seconds}`.
fn run_options(options_json: Option<&str>) -> Result<RunOptions, Error> {
    let Some(text) = options_json.filter(|t| !t.trim().is_empty()) else { return Ok(RunOptions::default()) };
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("options_json is not valid JSON: {e}")))?;
    let map = match value {
        Value::Null => return Ok(RunOptions::default()),
        Value::Object(map) => map,
        _ => return Err(invalid("options_json must be a JSON object")),
    };
    let mut options = RunOptions::default();
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
            (k @ ("timeout" | "tenant" | "session" | "user"), other) => {
                return Err(invalid(format!("options_json.{k} has the wrong type: {other}")));
            }
            (k, _) => {
                return Err(invalid(format!("unknown option '{k}' (expected tenant, session, user, timeout)")));
            }
        }
    }
    Ok(options)
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

/// A C string for an id we hand out.
fn string_out(text: &str) -> Result<*mut c_char, Error> {
    Ok(CString::new(text).map_err(|e| Error::Internal(format!("id holds a NUL byte: {e}")))?.into_raw())
}

/// Run a workflow to its end, blocking the calling thread. `workflow` is a YAML or
/// JSON definition (design §7) or the path of a file holding one; `inputs_json`
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
        let record = handle.block_on(handle.engine.run_workflow(source, inputs, options))??.to_json();
        *out = json_out(&record)?;
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

/// Called once when an asynchronous operation ends (see utp_run_workflow_async()).
/// Exactly one of `error` and `result_json` is non-NULL; both are valid only during
/// the call (do not free them).
pub type UtpCompletionFn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, error_or_null: *const UtpError, result_json_or_null: *const c_char)>;

/// A completion callback with its `user_data`, created once the operation has
/// started: delivers exactly once (an error if it is dropped undelivered), then finalises.
struct Completion {
    func: unsafe extern "C" fn(*mut c_void, *const UtpError, *const c_char),
    user_data: *mut c_void,
    free: UtpFreeFn,
    delivered: bool,
    /// What the callback is owed, for the message when the engine is freed first.
    what: &'static str,
}

// SAFETY: utp.h requires the completion callback (and its user_data) to be callable
// from any library thread; the pointer is only passed back to the C code.
unsafe impl Send for Completion {}

impl Completion {
    /// Call the callback (once) with the outcome.
    fn deliver(&mut self, outcome: Result<Value, Error>) {
        if self.delivered {
            return;
        }
        self.delivered = true;
        let text = outcome.and_then(|record| {
            let text = serde_json::to_string(&record)
                .map_err(|e| Error::Internal(format!("cannot serialise the record: {e}")))?;
            CString::new(text).map_err(|e| Error::Internal(format!("the record holds a NUL byte: {e}")))
        });
        let _scope = CallbackScope::enter(false);
        match text {
            // SAFETY: the function registered with utp_run_workflow_async, with its
            // user_data and a NUL-terminated string alive for the call.
            Ok(text) => unsafe { (self.func)(self.user_data, ptr::null(), text.as_ptr()) },
            Err(e) => {
                let error = UtpError::from(e);
                // SAFETY: as above, with an error alive for the call.
                unsafe { (self.func)(self.user_data, &error, ptr::null()) }
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // Owed but never delivered: the task was dropped (the engine is being freed).
        let _ = catch_unwind(AssertUnwindSafe(|| {
            self.deliver(Err(Error::Cancelled(format!("the engine was freed before the {} finished", self.what))))
        }));
        if let Some(free) = self.free.take() {
            // SAFETY: the finaliser the caller registered, called once, with its own user_data.
            unsafe { free(self.user_data) };
        }
    }
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
        let mut completion =
            Completion { func, user_data: finaliser.0, free: finaliser.1.take(), delivered: false, what: "workflow run" };
        runtime.spawn(async move {
            exec.wait().await;
            let record = exec.to_value(true);
            // C code may block: run it on the blocking pool, never on a worker.
            let _ = tokio::task::spawn_blocking(move || completion.deliver(Ok(record))).await;
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
        *out = json_out(&Value::Array(handle.engine.executions(status, session)?.iter().map(|r| r.to_json()).collect()))?;
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
            handle.block_on(async move { tokio::time::timeout(limit, wait).await })?.map_err(|_| {
                Error::Timeout(format!("execution '{id}' still running after {timeout_ms} ms"))
            })??
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
pub unsafe extern "C" fn utp_cancel(engine: *mut UtpEngine, execution_id: *const c_char, out_done: *mut bool) -> *mut UtpError {
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
pub unsafe extern "C" fn utp_suspend(engine: *mut UtpEngine, execution_id: *const c_char, out_done: *mut bool) -> *mut UtpError {
    // SAFETY: forwarded from the caller's contract.
    unsafe { control(engine, execution_id, out_done, Engine::suspend) }
}

/// Resume a suspended run. `*out_done` is false when it was not suspended. Unknown
/// id: UTP_ERR_NOT_FOUND.
///
/// # Safety
/// As utp_cancel().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_resume(engine: *mut UtpEngine, execution_id: *const c_char, out_done: *mut bool) -> *mut UtpError {
    // SAFETY: forwarded from the caller's contract.
    unsafe { control(engine, execution_id, out_done, Engine::resume) }
}

/// The state of session `session` of `tenant` (nullable: no tenant) as a JSON
/// object (`{}` when nothing was set). Sessions are shared by the runs given the same
/// `{"tenant", "session"}` options, which read it as `state` and write it with
/// `set_state`. Free `*out_state_json` with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_session_state(
    engine: *mut UtpEngine,
    tenant: *const c_char,
    session: *const c_char,
    out_state_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_state_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_state_json, "out_state_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let tenant = unsafe { optional_str(tenant, "tenant") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let session = unsafe { required_str(session, "session") }?;
        *out = json_out(&handle.engine.session_state(tenant, Some(session)))?;
        Ok(())
    })
}

/// Set key `key` of the state of session `session` of `tenant` (nullable) to the
/// JSON value `value_json`; JSON `null` removes the key. Later runs of that session
/// see it as `state.<key>`.
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_set_session_state(
    engine: *mut UtpEngine,
    tenant: *const c_char,
    session: *const c_char,
    key: *const c_char,
    value_json: *const c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let tenant = unsafe { optional_str(tenant, "tenant") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let session = unsafe { required_str(session, "session") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let key = unsafe { required_str(key, "key") }?;
        if key.is_empty() {
            return Err(invalid("key is empty"));
        }
        // SAFETY: NULL or NUL-terminated per the contract.
        let text = unsafe { required_str(value_json, "value_json") }?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("value_json is not valid JSON: {e}")))?;
        if !handle.engine.set_session_value(tenant, Some(session), key, value) {
            return Err(invalid("session state needs a session"));
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------

/// Resume the executions a previous process left unfinished in the engine's store
/// (utp_engine_new() already resumed those whose tools were registered then): steps
/// it committed keep their results and never run again, the rest run now on the
/// engine's library threads. Executions using a tool that is still not registered
/// stay in the store for a later call, so call it after utp_register_tool().
/// `*out_ids_json` receives a JSON array of the ids resumed (`[]` without a store);
/// follow them with utp_wait_execution(). Free it with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; `out_ids_json` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_recover(engine: *mut UtpEngine, out_ids_json: *mut *mut c_char) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_ids_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_ids_json, "out_ids_json", ptr::null_mut()) }?;
        let ids = handle.block_on(handle.engine.recover())??;
        *out = json_out(&Value::from(ids))?;
        Ok(())
    })
}

/// The keys of utp_stored_events()' filter.
const STORED_EVENTS_KEYS: &str = "execution_id, type, after, limit, since, until";

/// `filter_json` of utp_stored_events() as a store filter.
fn event_filter(text: Option<&str>) -> Result<EventFilter, Error> {
    let mut filter = EventFilter::default();
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else { return Ok(filter) };
    let map = match serde_json::from_str(text).map_err(|e| invalid(format!("filter_json is not valid JSON: {e}")))? {
        Value::Null => return Ok(filter),
        Value::Object(map) => map,
        _ => return Err(invalid("filter_json must be a JSON object (or null)")),
    };
    let string = |key: &str, value: &Value| match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(invalid(format!("filter_json: {key} must be a string, found {other}"))),
    };
    let count = |key: &str, value: &Value| match value {
        Value::Null => Ok(None),
        Value::Number(n) if n.as_u64().is_some() => Ok(n.as_u64()),
        other => Err(invalid(format!("filter_json: {key} must be a non-negative integer, found {other}"))),
    };
    for (key, value) in &map {
        match key.as_str() {
            "execution_id" => filter.execution_id = string(key, value)?,
            "type" => filter.kind = string(key, value)?,
            "since" => filter.since = string(key, value)?,
            "until" => filter.until = string(key, value)?,
            "after" => filter.after_id = count(key, value)?,
            "limit" => filter.limit = count(key, value)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            _ => return Err(invalid(format!("filter_json: unknown key '{key}' (expected {STORED_EVENTS_KEYS})"))),
        }
    }
    if let Some(pattern) = &filter.kind {
        let compiled = Pattern::new(pattern);
        if pattern.trim().is_empty() || !kinds::ALL.iter().any(|k| compiled.matches(k)) {
            return Err(invalid(format!(
                "filter_json: type '{pattern}' matches no event type; the types are: {}",
                kinds::ALL.join(", ")
            )));
        }
    }
    Ok(filter)
}

/// Events from the store's audit log (every process that used the store), in store
/// order, as a JSON array of events (see utp_event_fn) each with `seq`, the store's
/// increasing sequence number; without a store, the engine's in-memory history in the
/// same shape. `filter_json` (nullable) is `{"execution_id": "...", "type": "glob",
/// "after": seq, "limit": n, "since": "RFC 3339", "until": "RFC 3339"}`; every field
/// is optional and all given ones must match (`after`: events with a greater `seq`,
/// for paging; `since` inclusive, `until` exclusive). An unknown key, or a `type`
/// that matches no event type, is UTP_ERR_INVALID_ARGUMENT. Free `*out_events_json`
/// with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; `filter_json` is NULL or NUL-terminated; the
/// out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_stored_events(
    engine: *mut UtpEngine,
    filter_json: *const c_char,
    out_events_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_events_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_events_json, "out_events_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let filter = event_filter(unsafe { optional_str(filter_json, "filter_json") }?)?;
        *out = json_out(&Value::Array(handle.engine.stored_events(&filter)?))?;
        Ok(())
    })
}

/// Delete finished executions (with their steps) and events older than
/// `older_than_ms` milliseconds from the engine's store now; running and suspended
/// executions are never touched. `*out_deleted` receives the number of rows deleted
/// (0 without a store). Config `store.retention` does this periodically.
///
/// # Safety
/// `engine` is a live handle; `out_deleted` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_prune(engine: *mut UtpEngine, older_than_ms: u64, out_deleted: *mut u64) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_deleted` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_deleted, "out_deleted", 0) }?;
        let deleted = handle.engine.prune_store(Duration::from_millis(older_than_ms))?;
        *out = u64::try_from(deleted).unwrap_or(u64::MAX);
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Intents
// ---------------------------------------------------------------------------

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
        let record = handle.block_on(handle.engine.submit_intent(intent_type, params, tenant, session))??;
        *out = json_out(&record)?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Planner (design §10)
// ---------------------------------------------------------------------------

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

/// Read `options_json` of utp_plan(): `{"session", "tenant", "inputs": {...}}`.
fn plan_options(options_json: Option<&str>) -> Result<PlanOptions, Error> {
    let mut options = PlanOptions::default();
    let Some(text) = options_json.filter(|t| !t.trim().is_empty()) else { return Ok(options) };
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("options_json is not valid JSON: {e}")))?;
    let map = match value {
        Value::Null => return Ok(options),
        Value::Object(map) => map,
        _ => return Err(invalid("options_json must be a JSON object")),
    };
    for (key, v) in map {
        match (key.as_str(), v) {
            (_, Value::Null) => {}
            ("tenant", Value::String(s)) => options.tenant = Some(s),
            ("session", Value::String(s)) => options.session = Some(s),
            ("inputs", v @ Value::Object(_)) => options.inputs = Some(v),
            (k @ ("tenant" | "session" | "inputs"), other) => {
                return Err(invalid(format!("options_json.{k} has the wrong type: {other}")));
            }
            (k, _) => return Err(invalid(format!("unknown option '{k}' (expected session, tenant, inputs)"))),
        }
    }
    Ok(options)
}

/// Plan a workflow for a natural-language `request` (design §10) without running it,
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
/// (design §4 `run`). `inputs_json` (nullable) is a JSON object of inputs;
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

    static FREED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    unsafe extern "C" fn count_free(user_data: *mut c_void) {
        assert_eq!(user_data as usize, 7);
        FREED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn registrations_finalise_exactly_once() {
        use std::sync::atomic::Ordering::SeqCst;
        let data = 7usize as *mut c_void;
        let before = FREED.load(SeqCst);
        // Dropped without being retired (engine freed, registration refused).
        drop(Registration::new(data, Some(count_free)));
        assert_eq!(FREED.load(SeqCst), before + 1);
        // Retired while idle, waiting: at once; dropping later does not finalise again.
        let r = Registration::new(data, Some(count_free));
        r.retire(true);
        assert_eq!(FREED.load(SeqCst), before + 2);
        assert!(r.enter().is_none());
        drop(r);
        assert_eq!(FREED.load(SeqCst), before + 2);
        // Retired without waiting while a call runs: when the call leaves.
        let r = Registration::new(data, Some(count_free));
        let running = r.enter().unwrap();
        r.retire(false);
        assert_eq!(FREED.load(SeqCst), before + 2);
        assert!(r.enter().is_none());
        drop(running);
        assert_eq!(FREED.load(SeqCst), before + 3);
        drop(r);
        assert_eq!(FREED.load(SeqCst), before + 3);
        // Retired with waiting while another thread's call runs: after it leaves.
        let r = Arc::new(Registration::new(data, Some(count_free)));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let worker = {
            let r = r.clone();
            std::thread::spawn(move || {
                let running = r.enter().unwrap();
                entered_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(FREED.load(SeqCst), before + 3);
                drop(running);
            })
        };
        entered_rx.recv().unwrap();
        r.retire(true);
        assert_eq!(FREED.load(SeqCst), before + 4);
        worker.join().unwrap();
        drop(r);
        assert_eq!(FREED.load(SeqCst), before + 4);
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
    fn errors_carry_retry_after_and_approval_id() {
        let e = UtpError::from(Error::RateLimited { message: "slow down".into(), retry_after: Duration::from_micros(1500) });
        assert_eq!((e.code, e.retry_after_ms), (UTP_ERR_RATE_LIMITED, 2));
        let e = UtpError::from(Error::ApprovalRequired { message: "ask".into(), approval_id: "apr_1".into() });
        assert_eq!(e.approval_id.as_deref(), Some(c"apr_1"));
        assert_eq!(e.retry_after_ms, -1);
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
