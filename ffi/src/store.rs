//! The durable store: resume unfinished executions, read the audit log, prune old rows.

use std::ffi::c_char;
use std::ptr;
use std::time::Duration;

use serde_json::Value;
use utp_core::Error;
use utp_core::host::{self, KeyStyle};
use utp_core::store::EventFilter;

use crate::engine::{UtpEngine, engine_and_out};
use crate::error::{UtpError, guard, optional_str};
use crate::strings::json_out;

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

/// `filter_json` of utp_stored_events() as a store filter, checked by `utp_core::host`.
fn event_filter(text: Option<&str>) -> Result<EventFilter, Error> {
    let filter = host::parse_json(text.unwrap_or(""), "filter_json")?;
    host::event_filter(&filter, "utp_stored_events", KeyStyle::Snake)
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
