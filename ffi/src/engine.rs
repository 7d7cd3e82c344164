//! The engine handle (`utp_engine_t`): the core engine, the tokio runtime its library
//! threads belong to, and the C callbacks registered on it; `utp_engine_new` /
//! `utp_engine_free`. Freeing retires event callbacks first, then stops the runtime
//! (joining the threads that run C tools and rules), then runs the remaining finalisers.
//!
//! Exit and fork: `exit()` without `utp_engine_free` is fine (the library threads end
//! with the process; no destructor of ours runs at exit). A tokio runtime and the
//! engine's threads do not survive `fork()`: a `pthread_atfork` child handler bumps a
//! fork generation, and in the child every function given an engine made before the
//! fork fails with UTP_ERR_INVALID_ARGUMENT, while `utp_engine_free` releases nothing
//! there (its threads do not exist and its locks may be held for ever).

use std::collections::HashMap;
use std::ffi::c_char;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
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
    /// The fork generation it was made in ([`forked_since`]).
    generation: u64,
}

/// Bumped in the child of every `fork()` (once the first engine registered the handler).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Register the fork handler once, before the first engine exists.
fn watch_forks() {
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        // SAFETY: the handler only increments an atomic, which is valid in a child right
        // after fork.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
}

/// True in the child of a `fork()` that happened after `generation` was recorded.
fn forked_since(generation: u64) -> bool {
    FORK_GENERATION.load(Ordering::SeqCst) != generation
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

/// How long freeing an engine waits for runs to let go of the store and MCP servers to exit.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

impl Drop for UtpEngine {
    fn drop(&mut self) {
        // Inside one of our own callbacks (freeing the engine from a callback breaks the
        // documented contract) never wait for that callback to end: it would be ourselves.
        let wait = !CallbackScope::active();
        // 0. As close() in the other bindings: runs stop, the store is released, MCP
        //    servers are ended (and reaped, which the runtime's shutdown would not wait for).
        self.engine.close(if wait { CLOSE_GRACE } else { Duration::ZERO });
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
    let engine = unsafe { p.as_ref() }.ok_or_else(|| invalid("engine is NULL"))?;
    if forked_since(engine.generation) {
        return Err(invalid(format!(
            "this engine was created before fork() and cannot be used in the child process (pid {}): \
             create a new engine in the child",
            std::process::id()
        )));
    }
    Ok(engine)
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
        watch_forks();
        let generation = FORK_GENERATION.load(Ordering::SeqCst);
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
            generation,
        }));
        Ok(())
    })
}

/// Free an engine and shut down its library threads (waits for running work to
/// finish). NULL is a no-op. Any thread may free it, but no other thread may use
/// the engine during or after this call, and it must not be called from a callback
/// of the engine. A process may also exit() without freeing its engines. In the child
/// of a fork() an engine made before the fork is unusable (every function fails with
/// UTP_ERR_INVALID_ARGUMENT) and freeing it there releases nothing and runs no
/// finaliser: its threads exist only in the parent. Every
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
            let engine = unsafe { Box::from_raw(engine) };
            if forked_since(engine.generation) {
                // In a fork's child: joining threads that do not exist would hang.
                Box::leak(engine);
                return;
            }
            drop(engine);
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
