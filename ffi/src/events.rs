//! Events and metrics: subscriptions with a C handler (each on its own library thread,
//! one event at a time), flushing, the in-memory history, and the metrics snapshots.

use std::ffi::{CString, c_char, c_void};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use utp_core::host::{self, KeyStyle};
use utp_core::{Error, Event, EventHandler, SubscriptionId};

use crate::callbacks::{CallbackScope, Registration, UtpFreeFn, lock};
use crate::engine::{UtpEngine, engine_and_out, engine_ref};
use crate::error::{UtpError, guard, invalid, optional_str, out_param, required_str};
use crate::strings::{json_out, to_cstring_lossy};

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
pub unsafe extern "C" fn utp_events_flush(
    engine: *mut UtpEngine,
    timeout_ms: u64,
    out_drained: *mut bool,
) -> *mut UtpError {
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
        let filter =
            host::parse_json(unsafe { optional_str(filter_json, "filter_json") }?.unwrap_or(""), "filter_json")?;
        let filter = host::history_filter(&filter, "utp_history", KeyStyle::Snake)?;
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
