//! The life of C callbacks and their `user_data`: which thread is inside one
//! (`CallbackScope`, so we never wait for ourselves), registrations finalised exactly once
//! after their last call (business rules, event subscriptions, intent handlers), and
//! completions delivered exactly once (asynchronous calls and workflow runs).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde_json::Value;
use utp_core::Error;

use crate::error::UtpError;

/// Releases `user_data` once the engine no longer needs it.
pub type UtpFreeFn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// Lock a std mutex, ignoring poisoning (our critical sections leave consistent state).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

thread_local! {
    /// How many C callbacks (tools, rules, event handlers) are running on this thread,
    /// and how many of them are event handlers.
    static CALLBACK_DEPTH: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// Marks the current thread as running a C callback for as long as it lives.
pub(crate) struct CallbackScope {
    event: bool,
}

impl CallbackScope {
    pub(crate) fn enter(event: bool) -> CallbackScope {
        CALLBACK_DEPTH.with(|d| {
            let (all, events) = d.get();
            d.set((all + 1, events + u32::from(event)));
        });
        CallbackScope { event }
    }

    /// True inside any C callback on this thread.
    pub(crate) fn active() -> bool {
        CALLBACK_DEPTH.with(|d| d.get().0 > 0)
    }

    /// True inside an event callback on this thread.
    pub(crate) fn in_event() -> bool {
        CALLBACK_DEPTH.with(|d| d.get().1 > 0)
    }
}

impl Drop for CallbackScope {
    fn drop(&mut self) {
        let event = self.event;
        CALLBACK_DEPTH.with(|d| {
            let (all, events) = d.get();
            d.set((all.saturating_sub(1), events.saturating_sub(u32::from(event))));
        });
    }
}

/// The life of one registered callback's `user_data`: calls enter and leave it, and
/// once it is retired (removed) no call enters again and the finaliser runs exactly
/// once, after the last running call has returned. Whoever retires it may wait for
/// that; a registration dropped without being retired (engine freed, registration
/// refused) finalises on drop.
pub(crate) struct Registration {
    pub(crate) user_data: *mut c_void,
    state: Mutex<RegistrationState>,
    idle: Condvar,
}

struct RegistrationState {
    running: usize,
    retired: bool,
    /// Threads in `retire(true)` waiting for `running` to reach 0; they finalise.
    waiting: usize,
    /// The finaliser, taken (so run at most once) when it runs.
    free: UtpFreeFn,
}

// SAFETY: utp.h requires callbacks (and their user_data) to be usable from any library
// thread, concurrently; the pointer is only passed back to the C code.
unsafe impl Send for Registration {}

// SAFETY: as above; the mutable state is behind the mutex.
unsafe impl Sync for Registration {}

/// A call inside a registration (see [`Registration::enter`]).
pub(crate) struct Running<'a>(&'a Registration);

impl Registration {
    pub(crate) fn new(user_data: *mut c_void, free: UtpFreeFn) -> Registration {
        Registration {
            user_data,
            state: Mutex::new(RegistrationState { running: 0, retired: false, waiting: 0, free }),
            idle: Condvar::new(),
        }
    }

    /// Start a call, or `None` once the registration is retired.
    pub(crate) fn enter(&self) -> Option<Running<'_>> {
        let mut state = lock(&self.state);
        if state.retired {
            return None;
        }
        state.running += 1;
        Some(Running(self))
    }

    /// Stop new calls; finalise now if none is running, else when the last one returns.
    /// With `wait`, block until no call is running and the finaliser has run.
    pub(crate) fn retire(&self, wait: bool) {
        let mut state = lock(&self.state);
        state.retired = true;
        if wait {
            state.waiting += 1;
            while state.running > 0 {
                state = self.idle.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.waiting -= 1;
        }
        let free = if state.running == 0 { state.free.take() } else { None };
        drop(state);
        self.finalise(free);
    }

    fn finalise(&self, free: UtpFreeFn) {
        if let Some(free) = free {
            // SAFETY: the finaliser the caller registered, with its own user_data; taken
            // out of the state under the lock, so it runs once.
            unsafe { free(self.user_data) };
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let registration = self.0;
        let mut state = lock(&registration.state);
        state.running -= 1;
        let mut free = None;
        if state.running == 0 {
            if state.waiting > 0 {
                registration.idle.notify_all();
            } else if state.retired {
                free = state.free.take();
            }
        }
        drop(state);
        registration.finalise(free);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let free = lock(&self.state).free.take();
        self.finalise(free);
    }
}

/// Remove `name` from the engine (`remove`, under the registrations' lock, so a
/// registration of the same name cannot slip in between) and from `registrations`,
/// then retire its callback outside the lock (its finaliser runs once). What `remove`
/// answered.
pub(crate) fn deregister(
    registrations: &Mutex<HashMap<String, Arc<Registration>>>,
    name: &str,
    remove: impl FnOnce() -> bool,
) -> bool {
    let (removed, registration) = {
        let mut map = lock(registrations);
        (remove(), map.remove(name))
    };
    if let Some(registration) = registration {
        registration.retire(!CallbackScope::active());
    }
    removed
}

/// Called once when an asynchronous operation ends (see utp_run_workflow_async()).
/// Exactly one of `error` and `result_json` is non-NULL; both are valid only during
/// the call (do not free them).
pub type UtpCompletionFn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, error_or_null: *const UtpError, result_json_or_null: *const c_char),
>;

/// A completion callback with its `user_data`, created once the operation has
/// started: delivers exactly once (an error if it is dropped undelivered), then finalises.
pub(crate) struct Completion {
    pub(crate) func: unsafe extern "C" fn(*mut c_void, *const UtpError, *const c_char),
    pub(crate) user_data: *mut c_void,
    pub(crate) free: UtpFreeFn,
    pub(crate) delivered: bool,
    /// What the callback is owed, for the message when the engine is freed first.
    pub(crate) what: &'static str,
}

// SAFETY: utp.h requires the completion callback (and its user_data) to be callable
// from any library thread; the pointer is only passed back to the C code.
unsafe impl Send for Completion {}

impl Completion {
    /// Call the callback (once) with the outcome.
    pub(crate) fn deliver(&mut self, outcome: Result<Value, Error>) {
        if self.delivered {
            return;
        }
        self.delivered = true;
        let text = outcome.and_then(|record| {
            let text = serde_json::to_string(&record)
                .map_err(|e| Error::Internal(format!("cannot serialise the record: {e}")))?;
            CString::new(text).map_err(|e| Error::Internal(format!("the record holds a NUL byte: {e}")))
        });
        let _scope = CallbackScope::enter(false);
        match text {
            // SAFETY: the function registered with utp_run_workflow_async, with its
            // user_data and a NUL-terminated string alive for the call.
            Ok(text) => unsafe { (self.func)(self.user_data, ptr::null(), text.as_ptr()) },
            Err(e) => {
                let error = UtpError::from(e);
                // SAFETY: as above, with an error alive for the call.
                unsafe { (self.func)(self.user_data, &error, ptr::null()) }
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // Owed but never delivered: the task was dropped (the engine is being freed).
        let _ = catch_unwind(AssertUnwindSafe(|| {
            self.deliver(Err(Error::Cancelled(format!("the engine was freed before the {} finished", self.what))))
        }));
        if let Some(free) = self.free.take() {
            // SAFETY: the finaliser the caller registered, called once, with its own user_data.
            unsafe { free(self.user_data) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    static FREED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    unsafe extern "C" fn count_free(user_data: *mut c_void) {
        assert_eq!(user_data as usize, 7);
        FREED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn registrations_finalise_exactly_once() {
        use std::sync::atomic::Ordering::SeqCst;
        let data = 7usize as *mut c_void;
        let before = FREED.load(SeqCst);
        // Dropped without being retired (engine freed, registration refused).
        drop(Registration::new(data, Some(count_free)));
        assert_eq!(FREED.load(SeqCst), before + 1);
        // Retired while idle, waiting: at once; dropping later does not finalise again.
        let r = Registration::new(data, Some(count_free));
        r.retire(true);
        assert_eq!(FREED.load(SeqCst), before + 2);
        assert!(r.enter().is_none());
        drop(r);
        assert_eq!(FREED.load(SeqCst), before + 2);
        // Retired without waiting while a call runs: when the call leaves.
        let r = Registration::new(data, Some(count_free));
        let running = r.enter().unwrap();
        r.retire(false);
        assert_eq!(FREED.load(SeqCst), before + 2);
        assert!(r.enter().is_none());
        drop(running);
        assert_eq!(FREED.load(SeqCst), before + 3);
        drop(r);
        assert_eq!(FREED.load(SeqCst), before + 3);
        // Retired with waiting while another thread's call runs: after it leaves.
        let r = Arc::new(Registration::new(data, Some(count_free)));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let worker = {
            let r = r.clone();
            std::thread::spawn(move || {
                let running = r.enter().unwrap();
                entered_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(FREED.load(SeqCst), before + 3);
                drop(running);
            })
        };
        entered_rx.recv().unwrap();
        r.retire(true);
        assert_eq!(FREED.load(SeqCst), before + 4);
        worker.join().unwrap();
        drop(r);
        assert_eq!(FREED.load(SeqCst), before + 4);
    }
}
