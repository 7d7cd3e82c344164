//! Promises settled from other threads, in batches, on the JS thread.
//!
//! napi's own deferred creates a threadsafe function per promise: a libuv handle opened,
//! woken and closed for every call, and an event-loop wake-up per call. Calls that run on
//! the call threads (`utp_core::CallThread`) settle through one [`Settler`] per JS thread
//! instead: a finished call is queued, the first of a batch wakes the JS thread through
//! the settler's one threadsafe function, and the JS thread settles everything queued
//! meanwhile. The threadsafe function is referenced only while promises are pending, so
//! that an idle engine never keeps the process alive.
//!
//! Calls that wait for JS or for time only (a JS tool's Promise, a JS business rule, an
//! approval, a timeout) stay on the JS thread ([`Settler::keep_local`]): their waker
//! queues them on the same settler, and the JS thread polls them again when it drains,
//! so an async JS tool's call never leaves the thread either.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, Wake, Waker};

use napi::bindgen_prelude::ToNapiValue;
use napi::sys;
use parking_lot::Mutex;
use serde_json::Value;

thread_local! {
    /// The settler of the environment whose JS thread this is.
    static SETTLER: RefCell<Option<(usize, Arc<Settler>)>> = const { RefCell::new(None) };
    /// Calls kept on this JS thread (`Settler::keep_local`), by id, with their promise.
    static LOCAL: RefCell<HashMap<u64, Kept>> = RefCell::new(HashMap::new());
}

/// A call kept on its JS thread.
pub(crate) type LocalCall = Pin<Box<dyn Future<Output = napi::Result<Value>>>>;

/// Ids of kept calls (unique in the process, so wakes never reach another settler's call).
static NEXT_LOCAL: AtomicU64 = AtomicU64::new(1);

/// Polls a kept call on the JS thread, with what a poll there needs (`lib.rs` sets up
/// the runtime context and the mark that lets JS tools be called right away).
pub(crate) type LocalPoll = fn(sys::napi_env, &mut LocalCall, &Waker) -> Poll<napi::Result<Value>>;

/// A kept call, its promise, and how to poll it.
struct Kept {
    deferred: sys::napi_deferred,
    call: LocalCall,
    poll: LocalPoll,
}

/// A JS thread's settler (its environment's): created on first use.
pub(crate) fn settler(env: sys::napi_env) -> napi::Result<Arc<Settler>> {
    SETTLER.with(|slot| {
        let mut slot = slot.borrow_mut();
        if let Some((owner, settler)) = slot.as_ref() {
            if *owner == env as usize && !settler.state.lock().tsfn.is_null() {
                return Ok(settler.clone());
            }
        }
        let settler = Settler::create(env)?;
        *slot = Some((env as usize, settler.clone()));
        Ok(settler)
    })
}

pub(crate) struct Settler {
    state: Mutex<State>,
    /// Promises made and not yet settled (touched on the JS thread only).
    pending: AtomicUsize,
}

struct State {
    /// Null once the environment is torn down: nothing is settled any more.
    tsfn: sys::napi_threadsafe_function,
    queue: Vec<Finished>,
    /// Kept calls to poll again.
    woken: Vec<u64>,
}

// The threadsafe function is made to be called from any thread; the deferreds in the
// queue are only ever settled on the JS thread (`drain`).
unsafe impl Send for State {}

struct Finished {
    deferred: sys::napi_deferred,
    result: napi::Result<Value>,
}

/// A promise made by [`Settler::promise`], to be settled from any thread. One dropped
/// unsettled (its call's task ended in a panic) rejects with an `[INTERNAL]` error.
pub(crate) struct Pending {
    settler: Arc<Settler>,
    deferred: Option<sys::napi_deferred>,
}

// See `State`: the deferred travels to the JS thread before it is used.
unsafe impl Send for Pending {}

impl Settler {
    fn create(env: sys::napi_env) -> napi::Result<Arc<Settler>> {
        let settler = Arc::new(Settler {
            state: Mutex::new(State { tsfn: ptr::null_mut(), queue: Vec::new(), woken: Vec::new() }),
            pending: AtomicUsize::new(0),
        });
        let mut name = ptr::null_mut();
        let status = unsafe { sys::napi_create_string_utf8(env, c"utp settle".as_ptr(), 10, &mut name) };
        napi::check_status!(status, "cannot name the settler")?;
        // The threadsafe function owns one reference, given back in `finalize`.
        let context = Arc::into_raw(settler.clone()) as *mut c_void;
        let mut tsfn = ptr::null_mut();
        let status = unsafe {
            sys::napi_create_threadsafe_function(
                env,
                ptr::null_mut(),
                ptr::null_mut(),
                name,
                0,
                1,
                context,
                Some(finalize),
                context,
                Some(drain),
                &mut tsfn,
            )
        };
        if status != sys::Status::napi_ok {
            drop(unsafe { Arc::from_raw(context as *const Settler) });
        }
        napi::check_status!(status, "cannot create the settler")?;
        settler.state.lock().tsfn = tsfn;
        // Idle, it must not keep the process alive.
        unsafe { sys::napi_unref_threadsafe_function(env, tsfn) };
        // Node tears a threadsafe function down in a cleanup hook of its own, registered
        // when it was created; hooks run last-registered first, so `torn_down` runs before
        // it and no thread calls the threadsafe function once it is gone.
        let status = unsafe { sys::napi_add_env_cleanup_hook(env, Some(torn_down), context) };
        if status != sys::Status::napi_ok {
            // Unused: let Node close it (its finalizer gives the reference back).
            settler.state.lock().tsfn = ptr::null_mut();
            unsafe { sys::napi_release_threadsafe_function(tsfn, sys::ThreadsafeFunctionReleaseMode::release) };
        }
        napi::check_status!(status, "cannot watch the environment's teardown")?;
        Ok(settler)
    }

    /// A new promise (on the JS thread), to be settled from any thread: while it is
    /// pending, the process stays alive.
    pub(crate) fn promise(self: &Arc<Self>, env: sys::napi_env) -> napi::Result<(Pending, sys::napi_value)> {
        let (deferred, promise) = self.counted_promise(env)?;
        Ok((Pending { settler: self.clone(), deferred: Some(deferred) }, promise))
    }

    /// A new promise, counted as pending until `drain` settles it.
    fn counted_promise(&self, env: sys::napi_env) -> napi::Result<(sys::napi_deferred, sys::napi_value)> {
        let mut deferred = ptr::null_mut();
        let mut promise = ptr::null_mut();
        let status = unsafe { sys::napi_create_promise(env, &mut deferred, &mut promise) };
        napi::check_status!(status, "cannot create a promise")?;
        if self.pending.load(Ordering::Relaxed) == 0 {
            let tsfn = self.state.lock().tsfn;
            let status = unsafe { sys::napi_ref_threadsafe_function(env, tsfn) };
            napi::check_status!(status, "cannot reference the settler")?;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok((deferred, promise))
    }

    /// A waker for a call that may be kept on this JS thread, and its id (before its first
    /// poll, so that nothing that poll arms wakes a no-op waker).
    pub(crate) fn local_waker(self: &Arc<Self>) -> (u64, Waker) {
        let id = NEXT_LOCAL.fetch_add(1, Ordering::Relaxed);
        (id, Waker::from(Arc::new(LocalWake { settler: self.clone(), id })))
    }

    /// Keep `call` (pending after its first poll, with the waker of `id`) on this JS
    /// thread; `poll` polls it again each time it is woken. Returns its promise.
    pub(crate) fn keep_local(
        self: &Arc<Self>,
        env: sys::napi_env,
        id: u64,
        call: LocalCall,
        poll: LocalPoll,
    ) -> napi::Result<sys::napi_value> {
        let (deferred, promise) = self.counted_promise(env)?;
        LOCAL.with(|local| local.borrow_mut().insert(id, Kept { deferred, call, poll }));
        Ok(promise)
    }

    /// Queue a kept call to be polled again (from any thread).
    fn wake(&self, id: u64) {
        let mut state = self.state.lock();
        if state.tsfn.is_null() {
            return;
        }
        state.woken.push(id);
        if state.queue.len() + state.woken.len() == 1 {
            signal(&mut state);
        }
    }
}

/// Wake the JS thread to drain (the first of a batch does).
fn signal(state: &mut State) {
    let status = unsafe {
        sys::napi_call_threadsafe_function(state.tsfn, ptr::null_mut(), sys::ThreadsafeFunctionCallMode::nonblocking)
    };
    if status != sys::Status::napi_ok {
        // Only while the environment closes: nothing will settle any more.
        state.queue.clear();
        state.woken.clear();
    }
}

/// The waker of a kept call.
struct LocalWake {
    settler: Arc<Settler>,
    id: u64,
}

impl Wake for LocalWake {
    fn wake(self: Arc<Self>) {
        self.settler.wake(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.settler.wake(self.id);
    }
}

impl Pending {
    /// Settle the promise (from any thread): it resolves or rejects on the JS thread.
    pub(crate) fn settle(mut self, result: napi::Result<Value>) {
        if let Some(deferred) = self.deferred.take() {
            self.settler.queue(deferred, result);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(deferred) = self.deferred.take() {
            let error = utp_core::Error::Internal("the call ended without a result".into());
            self.settler.queue(deferred, Err(crate::core_err(error)));
        }
    }
}

impl Settler {
    fn queue(&self, deferred: sys::napi_deferred, result: napi::Result<Value>) {
        let mut state = self.state.lock();
        if state.tsfn.is_null() {
            return; // The environment is gone, and its promises with it.
        }
        state.queue.push(Finished { deferred, result });
        // The first of a batch wakes the JS thread; `drain` takes the whole queue.
        if state.queue.len() + state.woken.len() == 1 {
            signal(&mut state);
        }
    }
}

/// Settle `deferred` with `result` (on the JS thread), converted as napi's own deferred
/// settles: the value's `ToNapiValue`, or the error's; a value that cannot be converted
/// rejects with the conversion error.
pub(crate) unsafe fn settle_deferred(
    env: sys::napi_env,
    deferred: sys::napi_deferred,
    result: napi::Result<Value>,
) -> napi::Result<()> {
    let settle = match result.and_then(|value| unsafe { Value::to_napi_value(env, value) }) {
        Ok(value) => Ok(value),
        Err(error) => Err(unsafe { napi::Error::to_napi_value(env, error) }?),
    };
    let status = match settle {
        Ok(value) => unsafe { sys::napi_resolve_deferred(env, deferred, value) },
        Err(error) => unsafe { sys::napi_reject_deferred(env, deferred, error) },
    };
    napi::check_status!(status, "cannot settle a promise")
}

/// The threadsafe function's callback, on the JS thread: settle every queued promise.
unsafe extern "C" fn drain(
    env: sys::napi_env,
    _js_callback: sys::napi_value,
    context: *mut c_void,
    _data: *mut c_void,
) {
    if env.is_null() || context.is_null() {
        return; // The environment is being torn down.
    }
    // The threadsafe function holds a reference for as long as it can call this.
    let settler = unsafe {
        Arc::increment_strong_count(context as *const Settler);
        Arc::from_raw(context as *const Settler)
    };
    let (tsfn, finished, woken) = {
        let mut state = settler.state.lock();
        (state.tsfn, std::mem::take(&mut state.queue), std::mem::take(&mut state.woken))
    };
    let mut settled = finished.len();
    for Finished { deferred, result } in finished {
        // A promise that cannot be settled (no memory for the value) stays pending;
        // there is no caller left to report it to.
        let _ = unsafe { settle_deferred(env, deferred, result) };
    }
    for id in woken {
        // Out of the map while it runs: the poll may start calls of its own.
        let Some(mut kept) = LOCAL.with(|local| local.borrow_mut().remove(&id)) else {
            continue; // Woken again after it finished.
        };
        let waker = Waker::from(Arc::new(LocalWake { settler: settler.clone(), id }));
        match (kept.poll)(env, &mut kept.call, &waker) {
            Poll::Ready(result) => {
                let _ = unsafe { settle_deferred(env, kept.deferred, result) };
                settled += 1;
            }
            Poll::Pending => {
                LOCAL.with(|local| local.borrow_mut().insert(id, kept));
            }
        }
    }
    if settler.pending.fetch_sub(settled, Ordering::Relaxed) == settled && !tsfn.is_null() {
        unsafe { sys::napi_unref_threadsafe_function(env, tsfn) };
    }
}

/// The environment's cleanup hook: from now on nothing calls the threadsafe function.
unsafe extern "C" fn torn_down(context: *mut c_void) {
    let settler = unsafe { &*(context as *const Settler) };
    let mut state = settler.state.lock();
    state.tsfn = ptr::null_mut();
    state.queue.clear();
    state.woken.clear();
}

/// The threadsafe function's finalizer: give back its reference to the settler.
unsafe extern "C" fn finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    drop(unsafe { Arc::from_raw(data as *const Settler) });
}
