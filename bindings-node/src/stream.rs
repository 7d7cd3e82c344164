//! Streaming calls: `engine.callToolStream(name, args, options)` returns a native
//! `ToolStream` at once; index.js wraps it in an async iterator (`for await`), with
//! `options.signal` (an AbortSignal) wired to `cancel()` and `return()` (a `break` out
//! of `for await`) to `close()`.
//!
//! Threads: the call is admitted and its stream opened on the first `next()`; every
//! `next()` is a Promise whose future runs on napi's tokio runtime, where the stream's
//! reader (core `transport::sse`) runs too and hands items over through a small channel,
//! so items arrive as the server sends them and the JS thread never blocks. One `next`
//! runs at a time (an async mutex over the source). `cancel()` cancels the call's token:
//! a `next` in flight rejects with CANCELLED. `close()` does the same and makes later
//! `next`s resolve to the end. Whichever holds the source drops it, which ends the
//! reader and closes the connection; so does garbage-collecting the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use napi::Env;
use napi::bindgen_prelude::AsyncBlock;
use napi_derive::napi;
use serde_json::Value;
use utp_core::{CallOptions, CancellationToken, ItemStream};

use crate::json::{JsJson, StrictJson};
use crate::{JsEngine, call_options, core_err, guard, invalid, promise};

/// A call whose stream is not open yet.
struct Call {
    engine: utp_core::Engine,
    name: String,
    args: Value,
    options: CallOptions,
}

/// Where a stream's items come from.
enum Source {
    /// Not opened yet: the first `next()` opens it.
    Deferred(Box<Call>),
    Open(ItemStream),
    /// Cancelled (the signal fired) while no `next` was in flight: the connection is
    /// released and the next `next` rejects with CANCELLED.
    Cancelled,
    /// Ended, failed or closed: the connection is released.
    Ended,
}

/// The part of a stream its `next()` futures share with the JS object.
struct Shared {
    source: tokio::sync::Mutex<Source>,
    cancel: CancellationToken,
    /// The tool's name, for the CANCELLED error.
    name: String,
    /// Set by `close()`: a later `next` resolves to the end instead of failing.
    closed: AtomicBool,
}

impl Shared {
    /// The next item, `None` at the end. An error ends the stream.
    async fn next_item(&self) -> utp_core::Result<Option<Value>> {
        let mut source = self.source.lock().await;
        let result = self.advance(&mut source).await;
        // Cancelled meanwhile (or failed, or ended): release the connection now.
        if self.cancel.is_cancelled() || !matches!(result, Ok(Some(_))) {
            *source = Source::Ended;
        }
        result
    }

    async fn advance(&self, source: &mut Source) -> utp_core::Result<Option<Value>> {
        use futures_util::StreamExt;
        if self.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        if matches!(source, Source::Deferred(_)) {
            let Source::Deferred(call) = std::mem::replace(source, Source::Ended) else { return Ok(None) };
            *source = Source::Open(call.engine.call_tool_stream(&call.name, call.args, call.options).await?);
        }
        match source {
            Source::Open(stream) => stream.next().await.transpose(),
            Source::Cancelled => Err(utp_core::Error::Cancelled(format!("tool '{}': call cancelled", self.name))),
            _ => Ok(None),
        }
    }

    /// Cancel the call; drop the source now unless a `next` holds it (that one meets the
    /// cancellation and drops it). With `close`, later `next`s resolve to the end.
    fn cancel(&self, close: bool) {
        if close {
            self.closed.store(true, Ordering::Release);
        }
        self.cancel.cancel();
        if let Ok(mut source) = self.source.try_lock() {
            if close || !matches!(*source, Source::Ended) {
                *source = if close { Source::Ended } else { Source::Cancelled };
            }
        }
    }
}

/// The items of one tool call as the server sends them (see `Engine.callToolStream`
/// in index.js, which wraps it in an async iterator).
#[napi(js_name = "ToolStream")]
pub struct JsToolStream {
    shared: Arc<Shared>,
}

impl Drop for JsToolStream {
    fn drop(&mut self) {
        self.shared.cancel(true);
    }
}

#[napi]
impl JsToolStream {
    /// Resolves to `[item]` for the next item, or `[]` at the end; rejects with the
    /// call's error (the first `next()` opens the stream: NOT_FOUND, TIMEOUT...; later
    /// ones: TRANSPORT, CANCELLED...). An error ends the stream.
    #[napi(catch_unwind, ts_return_type = "Promise<[any] | []>")]
    pub fn next(&self, env: &Env) -> napi::Result<AsyncBlock<Value>> {
        guard(|| {
            let shared = self.shared.clone();
            promise(env, async move {
                let item = shared.next_item().await.map_err(core_err)?;
                Ok(Value::Array(item.into_iter().collect()))
            })
        })
    }

    /// Cancel the call (an AbortSignal fired): a `next()` in flight rejects with
    /// CANCELLED and the connection is closed.
    #[napi(catch_unwind)]
    pub fn cancel(&self) {
        self.shared.cancel(false);
    }

    /// Cancel the call and close its connection; later `next()`s resolve to the end.
    #[napi(catch_unwind)]
    pub fn close(&self) {
        self.shared.cancel(true);
    }

    /// True once `close()` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

#[napi]
impl JsEngine {
    /// A stream of a tool call's items (`sse` and `streamable_http` tools; any other
    /// tool yields its one result). Options as `callTool`; `timeout` bounds opening the
    /// stream. Bad arguments and options throw here; the call is admitted and the stream
    /// opened by the first `next()`.
    #[napi(
        catch_unwind,
        ts_args_type = "name: string, args?: Record<string, any> | null, options?: { timeout?: number | null; tenant?: string | null; session?: string | null; user?: string | null; approvalId?: string | null; failFastOnApproval?: boolean | null } | null"
    )]
    pub fn call_tool_stream(&self, name: String, args: JsJson, options: StrictJson) -> napi::Result<JsToolStream> {
        guard(|| {
            let engine = self.engine()?;
            let args = args.into_optional("args").map_err(invalid)?.unwrap_or(Value::Null);
            let mut options = call_options(options)?;
            let cancel = CancellationToken::new();
            options.cancel = Some(cancel.clone());
            let source = Source::Deferred(Box::new(Call { engine, name: name.clone(), args, options }));
            let source = tokio::sync::Mutex::new(source);
            let shared = Shared { source, cancel, name, closed: AtomicBool::new(false) };
            Ok(JsToolStream { shared: Arc::new(shared) })
        })
    }
}
