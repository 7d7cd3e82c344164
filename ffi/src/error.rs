//! Errors at the C boundary: the `UTP_ERR_*` codes, the `utp_error_t` handle and its
//! accessors, and the guards every entry point runs in (`catch_unwind`, NULL pointers,
//! UTF-8, out-parameters).

use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use utp_core::{Error, ErrorCode};

use crate::strings::to_cstring_lossy;

// ---------------------------------------------------------------------------
// Error codes (docs/design.md §4; stable, append-only). Must equal `utp_core::ErrorCode`.
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

/// Run a fallible body at the C boundary: `Ok` → NULL, `Err` → a new error, a panic →
/// a `UTP_ERR_PANIC` error.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Error>) -> *mut UtpError {
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
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Borrow a required C string as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn required_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
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
pub(crate) unsafe fn optional_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller's contract.
    unsafe { required_str(p, what) }.map(Some)
}

/// Check an out-parameter and reset what it points at.
///
/// # Safety
/// `p` is NULL or valid for writing one `T`.
pub(crate) unsafe fn out_param<'a, T>(p: *mut T, what: &str, reset: T) -> Result<&'a mut T, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn errors_carry_retry_after_and_approval_id() {
        let e = UtpError::from(Error::RateLimited {
            message: "slow down".into(),
            retry_after: Duration::from_micros(1500),
        });
        assert_eq!((e.code, e.retry_after_ms), (UTP_ERR_RATE_LIMITED, 2));
        let e = UtpError::from(Error::ApprovalRequired { message: "ask".into(), approval_id: "apr_1".into() });
        assert_eq!(e.approval_id.as_deref(), Some(c"apr_1"));
        assert_eq!(e.retry_after_ms, -1);
    }
}
