//! Session state: the JSON object runs of one (tenant, session) share as `state`.

use std::ffi::c_char;
use std::ptr;

use serde_json::Value;
use utp_core::Error;
use utp_core::host;

use crate::engine::{UtpEngine, engine_and_out, engine_ref};
use crate::error::{UtpError, guard, invalid, optional_str, required_str};
use crate::strings::json_out;

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
        check_ids(tenant, Some(session))?;
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
        check_ids(tenant, Some(session))?;
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

/// A tenant and a session id given as arguments, checked as the `tenant` and
/// `session` options are (`utp_core::host::check_id`).
pub(crate) fn check_ids(tenant: Option<&str>, session: Option<&str>) -> Result<(), Error> {
    for (option, id) in [("tenant", tenant), ("session", session)] {
        if let Some(id) = id {
            host::check_id(option, id)?;
        }
    }
    Ok(())
}
