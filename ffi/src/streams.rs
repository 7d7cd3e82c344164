//! Streaming calls: `utp_call_tool_stream` opens a stream (`utp_stream_t`) of a tool's
//! items, `utp_stream_next` waits for the next one (an iterator, in the style of
//! SQLite's `sqlite3_step`), `utp_stream_cancel` cancels it from any thread and
//! `utp_stream_free` releases it.
//!
//! Threads: the stream's reader (core `transport::sse`) runs on the engine's runtime and
//! hands items over through a small channel, so items arrive as the server sends them;
//! `utp_stream_next` blocks its caller on that runtime until the next one. One `next`
//! runs at a time (an async mutex over the source). `utp_stream_cancel` never waits: it
//! cancels the call's token, which ends a `next` in flight with UTP_ERR_CANCELLED, and
//! whichever holds the source drops it, which ends the reader and closes the
//! connection. `utp_stream_free` does the same.

use std::ffi::c_char;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use utp_core::{CancellationToken, Error, ItemStream};

use crate::callbacks::CallbackScope;
use crate::calls::call_options;
use crate::engine::{UtpEngine, engine_and_out};
use crate::error::{UtpError, guard, guard_value, invalid, optional_str, out_param, required_str};
use crate::strings::json_out;

/// Where a stream's items come from.
enum Source {
    Open(ItemStream),
    /// Cancelled while no `next` was in flight: the connection is released and the next
    /// `next` fails with UTP_ERR_CANCELLED.
    Cancelled,
    /// Ended, failed or cancelled: the connection is released.
    Ended,
}

/// The part of a stream the runtime's tasks share with its handle.
struct Shared {
    source: tokio::sync::Mutex<Source>,
    cancel: CancellationToken,
    /// The tool's name, for the UTP_ERR_CANCELLED message.
    name: String,
    /// Cancelled when the engine's runtime drops the stream's watcher task: the engine
    /// was freed (with the reader), so a closed channel is not the end of the stream.
    engine_gone: CancellationToken,
}

impl Shared {
    /// The next item, `None` at the end. An error ends the stream.
    async fn next_item(&self) -> Result<Option<Value>, Error> {
        let mut source = self.source.lock().await;
        let result = match &mut *source {
            Source::Open(stream) => match stream.next().await {
                None if self.engine_gone.is_cancelled() => {
                    Err(Error::Cancelled(format!("tool '{}': the engine was freed before the stream ended", self.name)))
                }
                item => item.transpose(),
            },
            Source::Cancelled => Err(Error::Cancelled(format!("tool '{}': call cancelled", self.name))),
            Source::Ended => Ok(None),
        };
        // Cancelled meanwhile (or failed, or ended): release the connection now.
        if self.cancel.is_cancelled() || !matches!(result, Ok(Some(_))) {
            *source = Source::Ended;
        }
        result
    }

    /// Cancel the call; drop the source now unless a `next` holds it (that one meets
    /// the cancellation and drops it).
    fn cancel(&self) {
        self.cancel.cancel();
        if let Ok(mut source) = self.source.try_lock() {
            if matches!(*source, Source::Open(_)) {
                *source = Source::Cancelled;
            }
        }
    }
}

/// A stream of one tool call's items (`utp_stream_t` in C). Opaque to C.
pub struct UtpStream {
    shared: Arc<Shared>,
    /// The engine's runtime, which runs the stream's reader.
    runtime: tokio::runtime::Handle,
    /// Cancelled when the stream is freed: ends its watcher task.
    freed: CancellationToken,
}

impl UtpStream {
    /// Block on `future` on the engine's runtime (refused on a thread of another
    /// runtime's async task, as `UtpEngine::block_on` does).
    fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output, Error> {
        if tokio::runtime::Handle::try_current().is_ok() && !CallbackScope::active() {
            return Err(Error::InvalidArgument(
                "utp functions may not be called from an async task of a tokio runtime".into(),
            ));
        }
        Ok(self.runtime.block_on(future))
    }
}

impl Drop for UtpStream {
    fn drop(&mut self) {
        self.freed.cancel();
        self.shared.cancel();
    }
}

/// Call a tool and open the stream of its items: an `sse` or `streamable_http` tool's
/// items as the server sends them, a `websocket` tool's replies, a GraphQL
/// subscription's `data`; an `mcp` tool's progress notifications
/// (`{"progress", "total", "message"}`) and then its result; any other tool gives its
/// one result. Arguments and
/// options as utp_call_tool() (`"timeout"` bounds opening the stream, not the wait for
/// items). Blocks until the call is admitted and the stream is open (the response's
/// headers have arrived): the errors of that (UTP_ERR_NOT_FOUND,
/// UTP_ERR_VALIDATION_FAILED, UTP_ERR_PERMISSION_DENIED, UTP_ERR_TIMEOUT,
/// UTP_ERR_TOOL_FAILED...) are returned here. On success `*out_stream` receives the
/// stream: read it with utp_stream_next(), release it with utp_stream_free() (which
/// closes the connection), before the engine is freed (a stream whose engine was freed
/// reports UTP_ERR_CANCELLED, never an early end).
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; `out_stream` is valid
/// for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_call_tool_stream(
    engine: *mut UtpEngine,
    name: *const c_char,
    args_json: *const c_char,
    options_json: *const c_char,
    out_stream: *mut *mut UtpStream,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_stream` is NULL or valid for
        // writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_stream, "out_stream", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let args = match unsafe { optional_str(args_json, "args_json") }? {
            None => Value::Null,
            Some(text) => {
                serde_json::from_str(text).map_err(|e| invalid(format!("args_json is not valid JSON: {e}")))?
            }
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let mut options = call_options(unsafe { optional_str(options_json, "options_json") }?, "utp_call_tool_stream")?;
        let cancel = CancellationToken::new();
        options.cancel = Some(cancel.clone());
        let stream = handle.block_on(handle.engine.call_tool_stream(name, args, options))??;
        let runtime = handle.runtime()?;
        // A task that lives until the stream is freed or the runtime shuts down (the
        // engine was freed first, which drops the task): `engine_gone` tells them apart.
        let (engine_gone, freed) = (CancellationToken::new(), CancellationToken::new());
        // The guard is made here, not in the task: a task never polled is dropped too.
        let (gone_guard, watch_freed) = (engine_gone.clone().drop_guard(), freed.clone());
        drop(runtime.spawn(async move {
            let _gone = gone_guard;
            watch_freed.cancelled().await;
        }));
        let source = tokio::sync::Mutex::new(Source::Open(stream));
        let shared = Shared { source, cancel, name: name.to_string(), engine_gone };
        let stream = UtpStream { shared: Arc::new(shared), runtime: runtime.handle().clone(), freed };
        *out = Box::into_raw(Box::new(stream));
        Ok(())
    })
}

/// Wait for the stream's next item. On success `*out_item_json` receives the item as
/// JSON (free it with utp_string_free()), or NULL at the end of the stream. Waits at most
/// `timeout_ms` milliseconds (negative: as long as it takes); when none arrived by then
/// the error is UTP_ERR_TIMEOUT and the stream goes on (call again). An error of the
/// stream (UTP_ERR_TRANSPORT: the connection broke, an event over `calls.max_event_size`,
/// a line that is not JSON...; UTP_ERR_CANCELLED after utp_stream_cancel()) ends it:
/// later calls report the end. Calls on one stream are served one at a time.
///
/// # Safety
/// `stream` is a live handle from utp_call_tool_stream(); `out_item_json` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_stream_next(
    stream: *mut UtpStream,
    timeout_ms: i64,
    out_item_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: NULL or valid for writes per the contract.
        let out = unsafe { out_param(out_item_json, "out_item_json", ptr::null_mut()) }?;
        // SAFETY: NULL or a live handle per the contract.
        let stream = unsafe { stream.as_ref() }.ok_or_else(|| invalid("stream is NULL"))?;
        let shared = stream.shared.clone();
        let next = async move {
            match u64::try_from(timeout_ms) {
                Err(_) => shared.next_item().await,
                // The item channel is cancel-safe: an item that arrives later is kept.
                Ok(ms) => tokio::time::timeout(Duration::from_millis(ms), shared.next_item())
                    .await
                    .unwrap_or_else(|_| Err(Error::Timeout(format!("tool '{}': no item within {ms} ms", shared.name)))),
            }
        };
        if let Some(item) = stream.block_on(next)?? {
            *out = json_out(&item)?;
        }
        Ok(())
    })
}

/// Cancel the stream's call and close its connection, from any thread: a
/// utp_stream_next() waiting on it returns UTP_ERR_CANCELLED at once (as does the next
/// call, when none was waiting); later calls report the end. Idempotent; NULL is a no-op.
/// The stream must still be freed with utp_stream_free().
///
/// # Safety
/// `stream` is NULL or a live handle from utp_call_tool_stream().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_stream_cancel(stream: *mut UtpStream) {
    guard_value((), || {
        // SAFETY: NULL or a live handle per the contract.
        if let Some(stream) = unsafe { stream.as_ref() } {
            stream.shared.cancel();
        }
    })
}

/// Release a stream, closing its connection if it is still open. NULL is a no-op. Not
/// while another thread is inside utp_stream_next() on it: cancel it first
/// (utp_stream_cancel()) and let that call return.
///
/// # Safety
/// `stream` is NULL or a handle from utp_call_tool_stream() not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_stream_free(stream: *mut UtpStream) {
    guard_value((), || {
        if !stream.is_null() {
            // SAFETY: a pointer from Box::into_raw in utp_call_tool_stream, not yet freed.
            drop(unsafe { Box::from_raw(stream) });
        }
    })
}
