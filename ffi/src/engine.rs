//! The engine handle (`utp_engine_t`): the core engine, the tokio runtime its library
//! threads belong to, and the C callbacks registered on it; `utp_engine_new` /
//! `utp_engine_free`. Freeing retires event callbacks first, then stops the runtime
//! (joining the threads that run C tools and rules), then runs the remaining finalisers.

use std::collections::HashMap;
use std::ffi::c_char;
use std::ptr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use utp_core::{Config, Engine, Error, SubscriptionId};

use crate::callbacks::{CallbackScope, Registration, lock};
use crate::error::{UtpError, guard, guard_value, invalid, optional_str, out_param};

/// The engine handle (`utp_engine_t` in C): the core engine plus the tokio runtime
/// that drives its async methods. Opaque to C.
pub struct UtpEngine {
    pub(crate) engine: Engine,
    pub(crate) runtime: Option<tokio::runtime::Runtime>,
    /// C business rules by name (to retire their callbacks on removal and on free).
    pub(crate) rules: Mutex<HashMap<String, Arc<Registration>>>,
    /// C event subscriptions by id (likewise).
    pub(crate) subscriptions: Mutex<HashMap<u64, Arc<Registration>>>,
    /// C intent handlers by intent type (likewise; workflow intents are not here).
    pub(crate) intents: Mutex<HashMap<String, Arc<Registration>>>,
}

impl UtpEngine {
    /// Run a future to completion on the engine's runtime, blocking this thread.
    ///
    /// Allowed from host threads and from inside a C callback (tools and rules run on
    /// the runtime's blocking pool, where blocking is fine; event callbacks run on
    /// plain subscriber threads). Refused on any other thread inside a tokio runtime,
    /// where blocking could stall the runtime's workers.
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output, Error> {
        let runtime =
            self.runtime.as_ref().ok_or_else(|| Error::Internal("engine runtime is already shut down".into()))?;
        if tokio::runtime::Handle::try_current().is_ok() && !CallbackScope::active() {
            return Err(Error::InvalidArgument(
                "utp functions may not be called from an async task of a tokio runtime".into(),
            ));
        }
        Ok(runtime.block_on(future))
    }

    pub(crate) fn runtime(&self) -> Result<&tokio::runtime::Runtime, Error> {
        self.runtime.as_ref().ok_or_else(|| Error::Internal("engine runtime is already shut down".into()))
    }
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

/// Borrow the engine behind a handle.
///
/// # Safety
/// `p` is NULL or a live handle from `utp_engine_new` not yet freed.
pub(crate) unsafe fn engine_ref<'a>(p: *const UtpEngine) -> Result<&'a UtpEngine, Error> {
    // SAFETY: the caller guarantees p is NULL or a live handle; as_ref checks NULL.
    unsafe { p.as_ref() }.ok_or_else(|| invalid("engine is NULL"))
}

/// The engine handle and an out-parameter, as most entry points begin: the
/// out-parameter is checked and reset first (so it is never left dangling), then the
/// handle is checked.
///
/// # Safety
/// `engine` is NULL or a live handle; `out` is NULL or valid for writing one `T`.
pub(crate) unsafe fn engine_and_out<'a, T>(
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
    use std::ffi::CStr;

    use crate::*;

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
