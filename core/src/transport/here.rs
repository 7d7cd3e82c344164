//! Calls driven on a thread of the host's or of a [`CallThread`], each with its own
//! runtime and HTTP clients.
//!
//! A host that blocks one of its threads per call (Python's `call_tool`) would otherwise
//! hand every call to the engine's runtime and wait: the request, the response and the
//! wake-up each cross threads, and the runtime's workers, parked between calls, are woken
//! again for every call (7 context switches per sequential HTTP call from Python). Here
//! the calling thread drives the call on a current-thread runtime of its own
//! ([`block_on`]), with an HTTP client of its own per engine, whose pooled connections
//! live on that runtime: one switch per call, as when Rust drives the engine directly.
//! A host whose calling thread cannot block (Node's JS thread) hands its calls to a
//! [`CallThread`] instead: one thread and one current-thread runtime, so that a call's
//! socket events never move between threads either. Each thread's runtime and clients
//! go with the thread; a client of an engine that was dropped is dropped at the next call.
//!
//! Host callbacks (a binding's native tools and business rules) may run on the calling
//! thread too: [`drive_with_callbacks`] polls a call there, inside the host's runtime
//! context, and while it polls, [`host_callbacks_here`] is true, so a binding's adapter
//! runs the callback right in the poll (Python takes the GIL itself, C calls the
//! function) instead of handing it to a pool thread and waiting for the wake-up. Only
//! the poll itself is marked: [`run_host_callback`] clears the mark while a callback
//! runs, so whatever the callback does (another call of the engine) takes the usual
//! paths. See docs/architecture.md, "Host callbacks on the calling thread".

use std::cell::{Cell, OnceCell, RefCell};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use crate::error::{Error, Result};
use crate::transport::{Transports, net};

thread_local! {
    static HERE: Here = Here::default();
}

#[derive(Default)]
struct Here {
    runtime: OnceCell<std::result::Result<tokio::runtime::Runtime, String>>,
    /// This thread's client for each engine it drove calls of (the engine's liveness
    /// token, its transports' id, the client).
    clients: RefCell<Vec<(Weak<()>, u64, reqwest::Client)>>,
    /// Whether calls running on this thread now use its own clients: while [`block_on`]
    /// drives a call (a depth: it may nest through another engine), and for the life of
    /// a [`CallThread`].
    drives: Cell<u32>,
    /// Whether host callbacks reached now may run on this thread: while
    /// [`drive_with_callbacks`] polls, and not inside a callback ([`run_host_callback`]).
    callbacks: Cell<bool>,
}

/// This thread's client for the engine with transports `t` while the thread drives calls
/// on its own runtime (`None` elsewhere: on the engine's runtime, the engine's own client).
pub(crate) fn thread_client(t: &Transports) -> Option<Result<reqwest::Client>> {
    HERE.try_with(|here| (here.drives.get() > 0).then(|| here.client_for(t))).ok().flatten()
}

/// Drive `future` (a call of the engine with transports `t`) on this thread.
pub(crate) fn block_on<F: Future>(t: &Transports, future: F) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Internal("a call cannot be driven on a thread that already runs a tokio runtime".into()));
    }
    HERE.with(|here| {
        let runtime = here.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
        });
        let runtime =
            runtime.as_ref().map_err(|e| Error::Internal(format!("cannot start this thread's runtime: {e}")))?;
        // Build the client now, so that failing to is this call's error, not a panic later.
        here.client_for(t)?;
        here.drives.set(here.drives.get() + 1);
        // Count down even if the future panics (the host catches panics).
        struct Leave<'h>(&'h Cell<u32>);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        let _leave = Leave(&here.drives);
        Ok(runtime.block_on(future))
    })
}

/// Whether a host callback reached now may run right here, on the host's thread that
/// waits for the call ([`drive_with_callbacks`]), rather than on a pool thread.
pub fn host_callbacks_here() -> bool {
    HERE.try_with(|here| here.callbacks.get()).unwrap_or(false)
}

/// Run a host callback on this thread, with the mark of [`host_callbacks_here`] cleared
/// while it runs: calls the callback makes go their usual way (they cannot be driven
/// here, inside this poll).
pub fn run_host_callback<R>(callback: impl FnOnce() -> R) -> R {
    let _suspended = Mark::set(false);
    callback()
}

/// Sets this thread's callback mark until dropped, then restores the one before.
struct Mark(bool);

impl Mark {
    fn set(value: bool) -> Mark {
        Mark(HERE.try_with(|here| here.callbacks.replace(value)).unwrap_or(false))
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        let _ = HERE.try_with(|here| here.callbacks.set(self.0));
    }
}

/// Poll `future` with [`host_callbacks_here`] true: for a host thread's first poll of a
/// call it then hands elsewhere when it waits (Python's `call_tool_async` on the event
/// loop's thread).
pub fn poll_with_callbacks<F: Future + ?Sized>(
    future: std::pin::Pin<&mut F>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<F::Output> {
    let _mark = Mark::set(true);
    future.poll(cx)
}

/// Drive `future` to its end on this thread, inside `runtime`'s context (its timers and
/// I/O run there), parking the thread between polls: a host thread blocked on a call
/// whose callbacks run right here. Unlike a runtime's `block_on`, it may nest inside a
/// runtime context (and a callback run here may block on the runtime itself).
pub(crate) fn drive_with_callbacks<F: Future>(runtime: &tokio::runtime::Handle, future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    thread_local! {
        static WAKER: Waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    }
    let _context = runtime.enter();
    let waker = WAKER.with(Waker::clone);
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = poll_with_callbacks(future.as_mut(), &mut cx) {
            return out;
        }
        // A wake-up before this park leaves a token: it returns at once.
        std::thread::park();
    }
}

/// A blocking call a host thread is making (Python's `call_tool`, C's `utp_call_tool`),
/// from [`crate::Engine::blocking_call`]; it counts as in progress until dropped.
pub struct BlockingCall<'e> {
    in_progress: &'e AtomicUsize,
    here: bool,
    callbacks_here: bool,
}

impl BlockingCall<'_> {
    /// `http`: the tool is an `http` tool; `callbacks`: host callbacks may run on the
    /// calling thread for this call (see [`crate::Engine::blocking_call`]).
    pub(crate) fn start(t: &Transports, http: bool, callbacks: bool) -> BlockingCall<'_> {
        let alone = t.blocking_calls.fetch_add(1, Ordering::Relaxed) == 0;
        let free = tokio::runtime::Handle::try_current().is_err();
        let here = alone && http && free;
        BlockingCall { in_progress: &t.blocking_calls, here, callbacks_here: callbacks && free }
    }

    /// Whether to drive the call on the calling thread ([`crate::Engine::block_on_here`])
    /// rather than hand it to the host's runtime.
    pub fn here(&self) -> bool {
        self.here
    }

    /// Whether to drive the call on the calling thread with its host callbacks run there
    /// ([`crate::Engine::drive_with_callbacks`]); checked before [`BlockingCall::here`].
    pub fn callbacks_here(&self) -> bool {
        self.callbacks_here
    }
}

impl Drop for BlockingCall<'_> {
    fn drop(&mut self) {
        self.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Here {
    fn client_for(&self, t: &Transports) -> Result<reqwest::Client> {
        let mut clients = self.clients.borrow_mut();
        clients.retain(|(alive, _, _)| alive.strong_count() > 0);
        if let Some((_, _, client)) = clients.iter().find(|(_, id, _)| *id == t.id) {
            return Ok(client.clone());
        }
        let client = net::build_client(t.config.calls.allow_private_networks, None)
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        clients.push((Arc::downgrade(&t.alive), t.id, client.clone()));
        Ok(client)
    }
}

/// A thread that runs calls on a current-thread runtime of its own, with an HTTP client of
/// its own per engine, for hosts whose calling thread cannot block on a call (Node's JS
/// thread). On a multi-thread runtime a call's request, response and completion may each
/// run on a different worker, and parked workers are woken for every call; here they all
/// run on this one thread. The thread lives as long as the process: a host keeps its call
/// threads in a static.
pub struct CallThread {
    handle: tokio::runtime::Handle,
    in_flight: Arc<AtomicUsize>,
}

impl CallThread {
    /// Start the thread, named `name`.
    pub fn start(name: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start a call thread's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                HERE.with(|here| here.drives.set(1));
                runtime.block_on(std::future::pending::<()>());
            })
            .map_err(|e| Error::Internal(format!("cannot start a call thread: {e}")))?;
        Ok(CallThread { handle, in_flight: Arc::new(AtomicUsize::new(0)) })
    }

    /// Run `future` on this thread. It should catch its own panics: one that escapes
    /// ends that future only (tokio catches it), and its result is lost.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) {
        struct Done(Arc<AtomicUsize>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let done = Done(self.in_flight.clone());
        self.handle.spawn(async move {
            let _done = done;
            future.await;
        });
    }

    /// The futures spawned here that have not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}
