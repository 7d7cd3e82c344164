//! Calls driven on the calling thread ([`crate::Engine::block_on_here`]).
//!
//! A host that blocks one of its threads per call (Python's `call_tool`) would otherwise
//! hand every call to the engine's runtime and wait: the request, the response and the
//! wake-up each cross threads, and the runtime's workers, parked between calls, are woken
//! again for every call (7 context switches per sequential HTTP call from Python). Here
//! the calling thread drives the call on a current-thread runtime of its own, with an HTTP
//! client of its own per engine, whose pooled connections live on that runtime: one switch
//! per call, as when Rust drives the engine directly. Each thread's runtime and clients go
//! with the thread; a client of an engine that was dropped is dropped at the next call.

use std::cell::{OnceCell, RefCell};
use std::future::Future;
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
    /// The engine whose call this thread drives now, and the client it uses.
    active: RefCell<Option<(u64, reqwest::Client)>>,
}

/// The client of the engine with transports `id` while this thread drives one of its
/// calls (`None` elsewhere: on the engine's runtime, the engine's own client).
pub(crate) fn active_client(id: u64) -> Option<reqwest::Client> {
    HERE.try_with(|here| here.active.borrow().as_ref().filter(|(active, _)| *active == id).map(|(_, c)| c.clone()))
        .ok()
        .flatten()
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
        let client = here.client_for(t)?;
        let previous = here.active.replace(Some((t.id, client)));
        // Put back what was active even if the future panics (the host catches panics).
        struct Restore<'h>(&'h RefCell<Option<(u64, reqwest::Client)>>, Option<(u64, reqwest::Client)>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                *self.0.borrow_mut() = self.1.take();
            }
        }
        let _restore = Restore(&here.active, previous);
        Ok(runtime.block_on(future))
    })
}

impl Here {
    fn client_for(&self, t: &Transports) -> Result<reqwest::Client> {
        let mut clients = self.clients.borrow_mut();
        clients.retain(|(alive, _, _)| alive.strong_count() > 0);
        if let Some((_, _, client)) = clients.iter().find(|(_, id, _)| *id == t.id) {
            return Ok(client.clone());
        }
        let client = net::build_client(t.config.calls.allow_private_networks)
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        clients.push((Arc::downgrade(&t.alive), t.id, client.clone()));
        Ok(client)
    }
}
