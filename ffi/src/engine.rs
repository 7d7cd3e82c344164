//! The engine handle (`utp_engine_t`): the core engine, the tokio runtime its library
//! threads belong to, and the C callbacks registered on it; `utp_engine_new` /
//! `utp_engine_free`. Freeing retires event callbacks first, then stops the runtime
//! (joining the threads that run C tools and rules), then runs the remaining finalisers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use utp_core::{Engine, Error, SubscriptionId};

use crate::callbacks::{CallbackScope, Registration, lock};
use crate::error::{invalid, out_param};

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
