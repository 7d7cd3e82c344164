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
use std::ffi::{CStr, CString, c_char};
use std::ptr;
use std::sync::Mutex;

use serde_json::Value;
use utp_core::{Config, Engine, Error, ErrorCode};

mod error;
mod strings;
mod engine;
mod manuals;
mod calls;
mod tools;
mod callbacks;
mod rules;
mod approvals;
mod events;
mod workflows;
mod sessions;
mod store;
mod intents;
mod planner;

pub use crate::error::*;
use crate::strings::*;
pub use crate::engine::*;
pub use crate::manuals::*;
pub use crate::calls::*;
pub use crate::tools::*;
pub use crate::callbacks::*;
pub use crate::rules::*;
pub use crate::approvals::*;
pub use crate::events::*;
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
