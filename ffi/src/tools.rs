//! Native tools written in C: `utp_register_tool`, the `utp_tool_fn` callback and the
//! `utp_tool_result_t` sink it reports through (C intent handlers use the same sink).
//! The callbacks run on the thread blocked in `utp_call_tool` when the call has no
//! deadline of its own (`utp_core::host_callbacks_here`), else on the engine's blocking
//! pool, never on a runtime worker.

use std::ffi::{CString, c_char, c_void};
use std::ptr;
use std::sync::Arc;

use serde_json::Value;
use utp_core::{Error, ErrorCode, NativeHandler};

use crate::callbacks::{CallbackScope, UtpFreeFn};
use crate::engine::{UtpEngine, engine_ref};
use crate::error::{UtpError, guard, invalid, optional_str, required_str};
use crate::strings::parse_tags;

/// A C tool function: gets the call's arguments as JSON text and reports its outcome
/// through `result`. Return 0 on success (the value set with
/// utp_tool_result_set_json(), JSON `null` if none), anything else on failure (the
/// message set with utp_tool_result_set_error()). Called on the engine's library
/// threads (its blocking pool), possibly on several at once, or on the thread blocked
/// in utp_call_tool() for that call when the call has no timeout of its own (no
/// `"timeout"` option, no `calls.default_timeout` in the config): there the call can
/// only notice an overrun when the function returns. It may call any utp_*
/// function (a nested utp_call_tool() included) except utp_engine_free().
pub type UtpToolFn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, args_json: *const c_char, result: *mut UtpToolResult) -> i32>;

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
            if utp_core::host_callbacks_here() {
                // The thread blocked in utp_call_tool runs it: no hand-off, no wake-up.
                let result = utp_core::run_host_callback(|| tool.call(&tool_name, &args));
                return Box::pin(std::future::ready(result));
            }
            Box::pin(async move {
                // C code may block: run it on the blocking pool, never on a worker.
                tokio::task::spawn_blocking(move || tool.call(&tool_name, &args))
                    .await
                    .map_err(|e| Error::Internal(format!("C tool thread failed: {e}")))?
            })
        });
        let full =
            handle.engine.register_tool(name, handler, schema("inputs"), schema("outputs"), &description, tags)?;
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
pub unsafe extern "C" fn utp_tool_result_set_error(
    result: *mut UtpToolResult,
    message: *const c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: NULL or the live sink per the contract.
        let sink = unsafe { result.as_mut() }.ok_or_else(|| invalid("result is NULL"))?;
        // SAFETY: NULL or NUL-terminated per the contract.
        sink.error = Some(unsafe { required_str(message, "message") }?.to_string());
        Ok(())
    })
}
