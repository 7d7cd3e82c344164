//! Approvals of escalated calls: list them, grant or refuse one.

use std::ffi::c_char;
use std::ptr;

use utp_core::Error;

use crate::engine::{UtpEngine, engine_and_out, engine_ref};
use crate::error::{UtpError, guard, optional_str, required_str};
use crate::strings::json_out;

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
        let (handle, out) =
            unsafe { engine_and_out(engine, out_approvals_json, "out_approvals_json", ptr::null_mut()) }?;
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
