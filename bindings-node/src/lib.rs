//! The Node.js binding of UTP Runtime (npm package `utp-runtime`), built with napi-rs.
//!
//! This is the native layer (`native.js` / `native.d.ts` are generated from it by
//! `napi build`); users load it through the thin JS layer in `index.js`, which turns
//! the `[CODE] message` prefix every error here carries into `err.code =
//! "ERR_UTP_<CODE>"` (napi `async fn`s cannot set a custom `code` themselves).
//!
//! Rules kept by every export (docs/conventions, "Node"):
//! - no panic crosses the boundary: sync exports run inside [`guard`] (and napi's
//!   `catch_unwind` for argument conversion), futures inside [`CatchUnwind`]; a
//!   panic becomes a `[PANIC]` error;
//! - user input is never unwrapped: every bad argument is an `[INVALID_ARGUMENT]`
//!   error that says what was expected and what was found;
//! - values cross as JS values (serde-json), never as JSON text.

#![deny(clippy::unwrap_used)]

mod host;
mod json;
mod settle;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use napi::bindgen_prelude::{AsyncBlock, AsyncBlockBuilder, FromNapiValue, Function, Promise, ToNapiValue};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Env, Status, sys};
use napi_derive::napi;
use serde_json::Value;
use utp_core::host::{self as core_host, KeyStyle};
use utp_core::{
    CallOptions, CallThread, Config, ErrorCode, HistoryFilter, ManualSource, NativeHandler, RegisteredTool,
};
// The one description of a JSON value's kind, shared with core's messages.
pub(crate) use utp_core::json::json_kind;

use crate::json::{JsJson, StrictJson};

// mimalloc, as in the CLI and the Node addon (not the C library or the Python module):
// docs/architecture.md, "Memory allocator".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long `close()` waits for runs in the middle of a store commit.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// At most this many call threads, however many CPUs.
const MAX_CALL_THREADS: usize = 4;

/// Search results returned when `limit` is not given (docs/design.md §4: `limit=10`).
const DEFAULT_SEARCH_LIMIT: usize = 10;

// ---------------------------------------------------------------------------
// Errors and panics
// ---------------------------------------------------------------------------

/// A napi error whose message starts with `[CODE] `, lifted to `err.code` by index.js.
fn coded(code: ErrorCode, message: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(Status::GenericFailure, format!("[{}] {message}", code.as_str()))
}

/// A core error as a napi error. Rate-limit and approval errors carry their extra
/// field in the prefix (`[RATE_LIMITED retryAfter=0.25] ...`, `[APPROVAL_REQUIRED
/// approvalId=apr_...] ...`); index.js lifts it to `err.retryAfter` / `err.approvalId`.
fn core_err(e: utp_core::Error) -> napi::Error {
    let mut extra = String::new();
    if let Some(after) = e.retry_after() {
        extra = format!(" retryAfter={}", after.as_secs_f64());
    } else if let Some(id) = e.approval_id().filter(|id| !id.is_empty() && !id.contains([' ', ']', '='])) {
        extra = format!(" approvalId={id}");
    }
    napi::Error::new(Status::GenericFailure, format!("[{}{extra}] {e}", e.code().as_str()))
}

fn invalid(message: impl std::fmt::Display) -> napi::Error {
    coded(ErrorCode::InvalidArgument, message)
}

fn panic_error(payload: &(dyn std::any::Any + Send)) -> napi::Error {
    core_err(utp_core::Error::from_panic(payload, "utp-runtime"))
}

/// Run a sync export body; a panic becomes a `[PANIC]` error.
fn guard<T>(body: impl FnOnce() -> napi::Result<T>) -> napi::Result<T> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| Err(panic_error(payload.as_ref())))
}

/// A future whose panics become `[PANIC]` errors (the promise rejects).
struct CatchUnwind<F> {
    inner: Pin<Box<F>>,
}

impl<T, F: Future<Output = napi::Result<T>>> Future for CatchUnwind<F> {
    type Output = napi::Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(panic_error(payload.as_ref()))),
        }
    }
}

/// What `callTool` returns: a Promise either way.
pub enum CallPromise {
    /// The call finished in its first poll on the JS thread: an already settled Promise.
    Settled(napi::Result<Value>),
    /// The call waits for something: its future runs on a call thread (a network call)
    /// or napi's tokio runtime, and settles this Promise through the JS thread's settler.
    Pending(sys::napi_value),
}

impl ToNapiValue for CallPromise {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        match val {
            CallPromise::Settled(result) => unsafe { settled_promise(env, result) },
            CallPromise::Pending(promise) => Ok(promise),
        }
    }
}

/// A Promise settled with `result`.
unsafe fn settled_promise(env: sys::napi_env, result: napi::Result<Value>) -> napi::Result<sys::napi_value> {
    let mut deferred = std::ptr::null_mut();
    let mut promise = std::ptr::null_mut();
    let status = unsafe { sys::napi_create_promise(env, &mut deferred, &mut promise) };
    napi::check_status!(status, "cannot create a promise")?;
    unsafe { settle::settle_deferred(env, deferred, result) }?;
    Ok(promise)
}

/// The threads network calls run on (`utp_core::CallThread`): one per CPU this process
/// may use, so that a call's request, response and completion stay on one thread.
static CALL_THREADS: OnceLock<Result<Vec<CallThread>, String>> = OnceLock::new();

/// The call thread with the fewest calls in flight (the first on a tie, so that
/// sequential calls always run on the same thread and reuse its connections).
fn call_thread() -> napi::Result<&'static CallThread> {
    let threads = CALL_THREADS.get_or_init(|| {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_CALL_THREADS);
        (0..count).map(|i| CallThread::start(&format!("utp-call-{i}")).map_err(|e| e.to_string())).collect()
    });
    let threads = threads.as_ref().map_err(|e| coded(ErrorCode::Internal, e))?;
    threads.iter().min_by_key(|t| t.in_flight()).ok_or_else(|| coded(ErrorCode::Internal, "no call thread"))
}

/// `callTool`'s Promise. A call is polled first right here, on the JS thread, inside
/// napi's runtime context (tokio timers and `spawn` work): one that completes without
/// waiting (a `text` tool, a sync JS tool, a policy denial, a validation error...)
/// becomes an already settled Promise, with no thread hop. JS tools reached in that
/// poll are called right away ([`JsToolRef::call_now`]); rules and subscribers are
/// queued through their ThreadsafeFunctions. One that waits for JS or for time only (an
/// async JS tool, a JS rule, an approval, a timeout) stays on the JS thread
/// (`settle::Settler::keep_local`): polled again there when woken, so it never leaves
/// the thread. A panic in a poll rejects the Promise with a `[PANIC]` error.
///
/// `waits`: the call is known to wait (a network call): it is handed unpolled to a call
/// thread, so that its request is built there, not on the JS thread, which runs
/// everything else the process does; its promise settles through the JS thread's
/// settler (`settle`), in batches with the other calls that finished meanwhile.
fn call_promise<F>(env: &Env, future: F, waits: bool) -> napi::Result<CallPromise>
where
    F: Future<Output = napi::Result<Value>> + Send + 'static,
{
    let future = CatchUnwind { inner: Box::pin(future) };
    if waits {
        let thread = call_thread()?;
        let (pending, promise) = settle::settler(env.raw())?.promise(env.raw())?;
        thread.spawn(async move { pending.settle(future.await) });
        return Ok(CallPromise::Pending(promise));
    }
    let settler = settle::settler(env.raw())?;
    let (id, waker) = settler.local_waker();
    let mut call: settle::LocalCall = Box::pin(future);
    match poll_on_js_thread(env.raw(), &mut call, &waker) {
        Poll::Ready(result) => Ok(CallPromise::Settled(result)),
        Poll::Pending => Ok(CallPromise::Pending(settler.keep_local(env.raw(), id, call, poll_on_js_thread)?)),
    }
}

/// Poll a call on its JS thread: inside napi's runtime context (tokio timers and `spawn`
/// work) and marked, so that JS tools it reaches are called right away.
fn poll_on_js_thread(env: sys::napi_env, call: &mut settle::LocalCall, waker: &Waker) -> Poll<napi::Result<Value>> {
    // The handle only: napi's runtime lock is not held while the engine runs.
    let handle = napi::bindgen_prelude::within_runtime_if_available(tokio::runtime::Handle::current);
    let _context = handle.enter();
    let _on_js_thread = JsPoll::enter(env);
    call.as_mut().poll(&mut Context::from_waker(waker))
}

thread_local! {
    /// The environment whose call this (its JS) thread is polling, or null: JS tools
    /// reached in that poll are called right away.
    static JS_POLL: std::cell::Cell<sys::napi_env> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Marks this thread as polling a call of `env` until dropped (restoring the outer mark:
/// a JS tool called in that poll may itself call `callTool`).
struct JsPoll(sys::napi_env);

impl JsPoll {
    fn enter(env: sys::napi_env) -> JsPoll {
        JsPoll(JS_POLL.with(|mark| mark.replace(env)))
    }

    fn env() -> sys::napi_env {
        JS_POLL.with(std::cell::Cell::get)
    }
}

impl Drop for JsPoll {
    fn drop(&mut self) {
        JS_POLL.with(|mark| mark.set(self.0));
    }
}

/// Run `future` on the tokio runtime napi owns; the returned value becomes a Promise.
/// Panics inside it reject the promise with a `[PANIC]` error.
fn promise<T, F>(env: &Env, future: F) -> napi::Result<AsyncBlock<T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = napi::Result<T>> + Send + 'static,
{
    AsyncBlockBuilder::new(CatchUnwind { inner: Box::pin(future) }).build(env)
}

// ---------------------------------------------------------------------------
// Module functions
// ---------------------------------------------------------------------------

/// The runtime's version, e.g. "0.1.0" (every UTP Runtime artifact shares it).
#[napi(catch_unwind)]
pub fn version() -> String {
    utp_core::VERSION.to_string()
}

/// The stable error code names, in code order ("INVALID_ARGUMENT", "NOT_FOUND", ...).
/// Errors carry them as `err.code = "ERR_UTP_<NAME>"`.
#[napi(catch_unwind)]
pub fn error_codes() -> Vec<String> {
    ErrorCode::ALL.iter().map(|c| c.as_str().to_string()).collect()
}

// ---------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------

/// The keys of an options object (`null` / `undefined` = no options). Unknown keys
/// are errors, so a typo (`{ limt: 3 }`) is not silently ignored.
fn option_map(options: Option<Value>, what: &str, known: &[&str]) -> napi::Result<serde_json::Map<String, Value>> {
    let map = match options {
        None | Some(Value::Null) => return Ok(serde_json::Map::new()),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(invalid(format!("{what} options must be an object, found {}", json_kind(&other)))),
    };
    if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(format!("unknown {what} option '{key}' (expected one of: {})", known.join(", "))));
    }
    Ok(map)
}

/// A UTP Runtime engine: the registry of manuals and tools, calls through the
/// domain layer, events and workflows (src/workflow.rs). `close()` releases it.
#[napi(js_name = "Engine")]
pub struct JsEngine {
    inner: RwLock<Option<utp_core::Engine>>,
    /// The JS event subscribers of this engine (their JS-side counts).
    subscribers: Arc<host::Subscribers>,
}

/// `{ store }` of the constructor: 'memory' (the default) keeps the config's store
/// (memory unless the config names one); 'sqlite:PATH' replaces the config's store url
/// and keeps the rest of its `store` mapping (`utp_core::host::StoreOverride`).
fn apply_store(options: Option<Value>, config: &mut Config) -> napi::Result<()> {
    let options = options.unwrap_or(Value::Null);
    core_host::engine_options(&options, "Engine", KeyStyle::Camel)
        .and_then(|store| store.apply(config))
        .map_err(core_err)
}

fn config_from(config: Option<Value>) -> napi::Result<Config> {
    match config {
        None | Some(Value::Null) => Ok(Config::default()),
        Some(Value::String(path)) => {
            if path.trim().is_empty() {
                return Err(invalid(
                    "config path is empty: pass a config object or the path of a utp.yaml / utp.json file",
                ));
            }
            let path = Path::new(&path);
            if !path.is_file() {
                return Err(coded(ErrorCode::NotFound, format!("config file {}: no such file", path.display())));
            }
            Config::load(path).map_err(core_err)
        }
        Some(value @ Value::Object(_)) => Config::from_value(value).map_err(core_err),
        Some(other) => {
            Err(invalid(format!("config must be an object, a path string or null, found {}", json_kind(&other))))
        }
    }
}

fn tools_value(tools: &[Arc<RegisteredTool>]) -> Vec<Value> {
    tools.iter().map(|t| t.to_value()).collect()
}

/// `{ limit, tags }` of searchTools.
fn search_options(options: Option<Value>) -> napi::Result<(usize, Vec<String>)> {
    let options = option_map(options, "searchTools", &["limit", "tags"])?;
    let limit = match options.get("limit") {
        None | Some(Value::Null) => DEFAULT_SEARCH_LIMIT,
        Some(Value::Number(n)) => match n.as_f64() {
            // `as` saturates: whole numbers beyond usize are "no practical limit"; -0 is 0.
            Some(f) if f >= 0.0 && f.fract() == 0.0 => {
                n.as_u64().map_or(f as usize, |u| usize::try_from(u).unwrap_or(usize::MAX))
            }
            _ => return Err(invalid(format!("limit must be a non-negative integer (0 = no limit), found {n}"))),
        },
        Some(other) => {
            return Err(invalid(format!(
                "limit must be a non-negative integer (0 = no limit), found {}",
                json_kind(other)
            )));
        }
    };
    Ok((limit, string_list(options.get("tags"), "tags")?))
}

/// An optional array of strings (`tags`).
fn string_list(value: Option<&Value>, what: &str) -> napi::Result<Vec<String>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(format!(
                    "{what} must be an array of strings, found an element that is {}",
                    json_kind(other)
                ))),
            })
            .collect(),
        Some(other) => Err(invalid(format!("{what} must be an array of strings, found {}", json_kind(other)))),
    }
}

/// An optional string option (`tenant`, `session`, `description`).
fn optional_string(value: Option<&Value>, what: &str) -> napi::Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!("{what} must be a string, found {}", json_kind(other)))),
    }
}

/// An optional JSON Schema option (`inputs`, `outputs`): an object or a boolean.
fn optional_schema(value: Option<&Value>, what: &str) -> napi::Result<Option<Value>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(v.clone())),
        Some(other) => Err(invalid(format!("{what} must be a JSON Schema object, found {}", json_kind(other)))),
    }
}

/// `{ timeout, tenant, session, user, approvalId, failFastOnApproval }` of callTool,
/// checked by `utp_core::host`. `timeout` is in seconds.
fn call_options(options: StrictJson) -> napi::Result<CallOptions> {
    let options = options.0.into_optional("callTool options").map_err(invalid)?.unwrap_or(Value::Null);
    core_host::call_options(&options, "callTool", KeyStyle::Camel).map_err(core_err)
}

// ---------------------------------------------------------------------------
// JS tools
// ---------------------------------------------------------------------------

/// What a JS tool function returned: a Promise (awaited on the Rust side) or a value.
/// Converting never fails and never leaves a JS exception pending.
pub enum ToolReturn {
    Value(JsJson),
    Promise(Promise<JsJson>),
    /// The returned value could not even be looked at (e.g. a Promise whose `then` throws).
    Broken(String),
}

impl FromNapiValue for ToolReturn {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let mut is_promise = false;
        if unsafe { sys::napi_is_promise(env, value, &mut is_promise) } != sys::Status::napi_ok {
            let why = json::take_exception(env).unwrap_or_else(|| "napi_is_promise failed".into());
            return Ok(ToolReturn::Broken(why));
        }
        if !is_promise {
            return unsafe { JsJson::from_napi_value(env, value) }.map(ToolReturn::Value);
        }
        Ok(match unsafe { Promise::<JsJson>::from_napi_value(env, value) } {
            Ok(promise) => ToolReturn::Promise(promise),
            Err(e) => ToolReturn::Broken(json::take_exception(env).unwrap_or(e.reason)),
        })
    }
}

/// A registered JS function: weak (it never keeps Node alive), called with one plain
/// argument (not error-first), its throws caught (`call_async_catch`).
type JsToolFn = ThreadsafeFunction<Value, ToolReturn, Value, Status, false, true>;

type ToolFuture = Pin<Box<dyn Future<Output = utp_core::Result<Value>> + Send>>;

fn tool_failed(name: &str, message: impl std::fmt::Display) -> utp_core::Error {
    utp_core::Error::with_code(ErrorCode::ToolFailed, format!("tool '{name}': {message}"))
}

/// The message of an error a JS function threw or rejected with.
fn js_message(error: &napi::Error) -> String {
    if error.reason.is_empty() { "a value that is not an Error".to_string() } else { error.reason.clone() }
}

/// The core handler of a JS tool. A call polled on the JS thread (`callTool`'s, see
/// [`call_promise`]) calls the function right there ([`JsToolRef::call_now`]): a sync
/// tool's call then completes without leaving the thread. Any other call (a workflow's,
/// on the runtime) goes to the JS thread through the weak threadsafe function. A
/// returned Promise is awaited by the call's future, wherever it runs.
fn js_handler(name: Arc<str>, function: Arc<JsToolFn>, direct: Arc<JsToolRef>) -> NativeHandler {
    Arc::new(move |args: Value| -> ToolFuture {
        let name = name.clone();
        let args = match direct.call_now(&name, args) {
            Ok(returned) => return Box::pin(async move { tool_result(&name, returned?).await }),
            Err(args) => args,
        };
        let function = function.clone();
        Box::pin(async move {
            let returned = function.call_async_catch(args).await.map_err(|e| {
                if e.status == Status::PendingException {
                    tool_failed(&name, format!("the JS function threw: {}", js_message(&e)))
                } else {
                    tool_failed(&name, format!("the JS function could not be called ({}): {}", e.status, e.reason))
                }
            })?;
            tool_result(&name, returned).await
        })
    })
}

/// A JS tool's result: its value, or its Promise's, as JSON.
async fn tool_result(name: &str, returned: ToolReturn) -> utp_core::Result<Value> {
    let result = match returned {
        ToolReturn::Value(v) => v,
        ToolReturn::Promise(p) => {
            p.await.map_err(|e| tool_failed(name, format!("the JS function's promise rejected: {}", js_message(&e))))?
        }
        ToolReturn::Broken(why) => {
            return Err(tool_failed(name, format!("the JS function returned an unusable value: {why}")));
        }
    };
    let hint = if matches!(result, JsJson::Missing("undefined")) { " (return null for no result)" } else { "" };
    result
        .into_value("the JS function returned a value that is not JSON")
        .map_err(|m| tool_failed(name, format!("{m}{hint}")))
}

/// A JS tool's (or rule's) function, weakly referenced (the threadsafe function keeps it
/// alive), for calls made on its own JS thread.
pub(crate) struct JsToolRef {
    env: sys::napi_env,
    reference: sys::napi_ref,
    thread: std::thread::ThreadId,
}

// Only used on `thread`, in `env` (checked in `call_now` and `drop`).
unsafe impl Send for JsToolRef {}
unsafe impl Sync for JsToolRef {}

impl JsToolRef {
    pub(crate) fn new(env: sys::napi_env, function: sys::napi_value) -> napi::Result<JsToolRef> {
        let mut reference = std::ptr::null_mut();
        let status = unsafe { sys::napi_create_reference(env, function, 0, &mut reference) };
        napi::check_status!(status, "cannot reference the tool's function")?;
        Ok(JsToolRef { env, reference, thread: std::thread::current().id() })
    }

    /// Call the function now if this thread is polling a call of its environment (on
    /// its JS thread); else give `args` back. A throw is a TOOL_FAILED error, and no
    /// exception is left pending.
    fn call_now(&self, name: &str, args: Value) -> Result<utp_core::Result<ToolReturn>, Value> {
        let Some(function) = self.here() else { return Err(args) };
        Ok(self.call_here(function, vec![args]).map_err(|failure| {
            tool_failed(
                name,
                match failure {
                    DirectFailure::Arguments(e) => format!("the arguments cannot be given to JS: {e}"),
                    DirectFailure::Threw(message) => format!("the JS function threw: {message}"),
                    DirectFailure::Status(status) => format!("the JS function could not be called (status {status})"),
                    DirectFailure::Unusable(e) => format!("the JS function returned an unusable value: {e}"),
                },
            )
        }))
    }

    /// The function, if this thread is polling a call of its environment (its JS
    /// thread) and the function is still alive (collected: its threadsafe function says why).
    pub(crate) fn here(&self) -> Option<sys::napi_value> {
        let env = JsPoll::env();
        if env.is_null() || env != self.env {
            return None;
        }
        let mut function = std::ptr::null_mut();
        let status = unsafe { sys::napi_get_reference_value(env, self.reference, &mut function) };
        (status == sys::Status::napi_ok && !function.is_null()).then_some(function)
    }

    /// Call `function` (from [`JsToolRef::here`], on this thread) with `args`. No
    /// exception is left pending.
    pub(crate) fn call_here(&self, function: sys::napi_value, args: Vec<Value>) -> Result<ToolReturn, DirectFailure> {
        let env = self.env;
        let mut argv = Vec::with_capacity(args.len());
        for arg in args {
            argv.push(unsafe { Value::to_napi_value(env, arg) }.map_err(|e| DirectFailure::Arguments(e.to_string()))?);
        }
        let mut this = std::ptr::null_mut();
        let mut returned = std::ptr::null_mut();
        let status = unsafe { sys::napi_get_undefined(env, &mut this) };
        let status = match status {
            sys::Status::napi_ok => unsafe {
                sys::napi_call_function(env, this, function, argv.len(), argv.as_ptr(), &mut returned)
            },
            other => other,
        };
        if status != sys::Status::napi_ok {
            return Err(match json::take_exception(env) {
                Some(message) => DirectFailure::Threw(message),
                None => DirectFailure::Status(status),
            });
        }
        unsafe { ToolReturn::from_napi_value(env, returned) }.map_err(|e| DirectFailure::Unusable(e.to_string()))
    }
}

/// Why a function called on its JS thread ([`JsToolRef::call_here`]) gave no value.
pub(crate) enum DirectFailure {
    /// An argument could not be made a JS value.
    Arguments(String),
    /// It threw (the message).
    Threw(String),
    /// napi refused the call.
    Status(sys::napi_status),
    /// What it returned could not be read.
    Unusable(String),
}

impl Drop for JsToolRef {
    fn drop(&mut self) {
        // On its JS thread (deregistration, the engine's finalizer) the reference is
        // deleted; dropped elsewhere (the last call of a closed engine ended on another
        // thread) it is left to its environment, which frees it when it ends.
        if std::thread::current().id() == self.thread {
            unsafe { sys::napi_delete_reference(self.env, self.reference) };
        }
    }
}

#[napi]
impl JsEngine {
    /// `new Engine(config?, { store? })`: `config` is an object, the path of a
    /// `utp.yaml` / `utp.json` file, or null/undefined for defaults; `store` is
    /// 'memory' or 'sqlite:PATH' (which wins over the config's `store` url).
    #[napi(
        constructor,
        catch_unwind,
        ts_args_type = "config?: Record<string, unknown> | string | null, options?: { store?: string | null } | null"
    )]
    pub fn new(config: Option<Value>, options: Option<Value>) -> napi::Result<Self> {
        guard(|| {
            let mut config = config_from(config)?;
            apply_store(options, &mut config)?;
            // Manuals listed in config `manuals` are registered, and with a store the
            // executions a previous process left unfinished resumed, before the
            // constructor returns (as in Python and C): a bad manual or a store that
            // cannot be opened fails construction visibly. Inside napi's tokio runtime,
            // which lives as long as the process: resumed executions keep running on it.
            let engine = napi::bindgen_prelude::block_on(utp_core::Engine::open(config)).map_err(core_err)?;
            Ok(JsEngine { inner: RwLock::new(Some(engine)), subscribers: Arc::default() })
        })
    }

    /// The live core engine (a cheap clone), or an error once closed.
    fn engine(&self) -> napi::Result<utp_core::Engine> {
        let slot = self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.clone().ok_or_else(|| invalid("the engine is closed"))
    }

    /// Discover and register manuals in a directory (recursively), a file, or at a
    /// URL. Resolves to the names of the manuals registered; files that fail are
    /// skipped (see `discoverReport`). A missing path rejects with NOT_FOUND.
    #[napi(catch_unwind, ts_return_type = "Promise<string[]>")]
    pub fn discover(&self, env: &Env, path: String) -> napi::Result<AsyncBlock<Vec<String>>> {
        guard(|| {
            let engine = self.engine()?;
            promise(env, async move { engine.discover(&path).await.map(|r| r.registered()).map_err(core_err) })
        })
    }

    /// Like `discover`, resolving to the full report:
    /// `{ root, files: [{ path, status: "registered" | "skipped" | "failed", ... }] }`.
    #[napi(catch_unwind, ts_return_type = "Promise<Record<string, any>>")]
    pub fn discover_report(&self, env: &Env, path: String) -> napi::Result<AsyncBlock<Value>> {
        guard(|| {
            let engine = self.engine()?;
            promise(env, async move { engine.discover(&path).await.map(|r| r.to_value()).map_err(core_err) })
        })
    }

    /// Register a manual: an object (a UTCP manual or an OpenAPI document), or a
    /// string (a file path, an http(s) URL, or inline JSON text). `name` overrides
    /// the manual's default name. Resolves to the full names of its tools.
    #[napi(
        catch_unwind,
        ts_args_type = "manual: Record<string, unknown> | string, name?: string | null",
        ts_return_type = "Promise<string[]>"
    )]
    pub fn register_manual(
        &self,
        env: &Env,
        manual: Value,
        name: Option<String>,
    ) -> napi::Result<AsyncBlock<Vec<String>>> {
        guard(|| {
            let engine = self.engine()?;
            let source = match manual {
                Value::String(text) => ManualSource::from_text(&text).map_err(core_err)?,
                value @ Value::Object(_) => ManualSource::Inline(value),
                other => {
                    return Err(invalid(format!(
                        "manual must be an object (a UTCP manual or OpenAPI document) or a string (path, URL or JSON), found {}",
                        json_kind(&other)
                    )));
                }
            };
            promise(env, async move { engine.register_manual(source, name.as_deref()).await.map_err(core_err) })
        })
    }

    /// Remove a manual and its tools. Returns false when no manual had that name.
    #[napi(catch_unwind)]
    pub fn deregister_manual(&self, name: String) -> napi::Result<bool> {
        guard(|| Ok(self.engine()?.deregister_manual(&name)))
    }

    /// Every registered tool (UTCP tool objects, `name` = "manual.tool"), by name.
    #[napi(catch_unwind, ts_return_type = "Array<Record<string, any>>")]
    pub fn tools(&self) -> napi::Result<Vec<Value>> {
        guard(|| Ok(tools_value(&self.engine()?.tools())))
    }

    /// One tool by its full name ("manual.tool"); NOT_FOUND when there is none.
    #[napi(catch_unwind, ts_return_type = "Record<string, any>")]
    pub fn tool(&self, name: String) -> napi::Result<Value> {
        guard(|| Ok(self.engine()?.tool(&name).map_err(core_err)?.to_value()))
    }

    /// Ranked search over names, descriptions, tags and schemas, best first.
    /// `limit` defaults to 10 (0 = no limit); `tags` keeps tools with any of them.
    /// An empty query lists the (tag-filtered) tools by name.
    #[napi(
        catch_unwind,
        ts_args_type = "query: string, options?: { limit?: number | null; tags?: string[] | null } | null",
        ts_return_type = "Array<Record<string, any>>"
    )]
    pub fn search_tools(&self, query: String, options: Option<Value>) -> napi::Result<Vec<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let (limit, tags) = search_options(options)?;
            Ok(tools_value(&engine.search_tools(&query, limit, &tags)))
        })
    }

    /// Call a tool by its full name ("manual.tool") with an arguments object
    /// (undefined/null = none). Options: `timeout` (seconds, finite and >= 0; default:
    /// the tool's template timeout, else `calls.default_timeout`), `tenant`, `session`,
    /// `user`, `approvalId` (an approval granted with `approve`), `failFastOnApproval`
    /// (reject with APPROVAL_REQUIRED instead of waiting for an approval).
    /// Resolves to the tool's result (any JSON value); rejects with NOT_FOUND,
    /// VALIDATION_FAILED (arguments against the tool's `inputs`), PERMISSION_DENIED,
    /// RATE_LIMITED, APPROVAL_REQUIRED, TIMEOUT, TOOL_FAILED...
    #[napi(
        catch_unwind,
        ts_args_type = "name: string, args?: Record<string, any> | null, options?: { timeout?: number | null; tenant?: string | null; session?: string | null; user?: string | null; approvalId?: string | null; failFastOnApproval?: boolean | null } | null",
        ts_return_type = "Promise<any>"
    )]
    pub fn call_tool(&self, env: &Env, name: String, args: JsJson, options: StrictJson) -> napi::Result<CallPromise> {
        guard(|| {
            let engine = self.engine()?;
            let args = args.into_optional("args").map_err(invalid)?.unwrap_or(Value::Null);
            let options = call_options(options)?;
            let waits = engine.tool(&name).is_ok_and(|t| t.tool.tool_call_template.does_io());
            call_promise(env, async move { engine.call_tool(&name, args, options).await.map_err(core_err) }, waits)
        })
    }

    /// Register a JS function as the native tool `name` ("manual.tool"; the manual is
    /// created when missing) and return its full name. `fn(args)` runs on the JS
    /// thread and may return a value or a Promise; a throw, a rejection or a result
    /// that is not JSON fails the call with TOOL_FAILED. A `callTool` that reaches it
    /// without waiting first (no JS rule, no approval) calls it right away, before
    /// `callTool` returns, like a Promise executor; its result still arrives through the
    /// Promise. Calls from workflows are queued on the event loop. `inputs` (a JSON Schema,
    /// default: any object) validates every call's arguments. The function never
    /// keeps the process alive.
    #[napi(
        catch_unwind,
        ts_args_type = "name: string, fn: (args: Record<string, any>) => unknown, options?: { inputs?: Record<string, any> | null; outputs?: Record<string, any> | null; description?: string | null; tags?: string[] | null } | null"
    )]
    pub fn register_tool(
        &self,
        env: &Env,
        name: String,
        callback: Function<'_, Value, ToolReturn>,
        options: StrictJson,
    ) -> napi::Result<String> {
        guard(|| {
            let engine = self.engine()?;
            let options = option_map(
                options.0.into_optional("registerTool options").map_err(invalid)?,
                "registerTool",
                &["inputs", "outputs", "description", "tags"],
            )?;
            let inputs = optional_schema(options.get("inputs"), "inputs")?;
            let outputs = optional_schema(options.get("outputs"), "outputs")?;
            let description = optional_string(options.get("description"), "description")?.unwrap_or_default();
            let tags = string_list(options.get("tags"), "tags")?;
            let direct = Arc::new(JsToolRef::new(env.raw(), napi::JsValue::raw(&callback))?);
            let function: JsToolFn =
                callback.build_threadsafe_function::<Value>().weak::<true>().callee_handled::<false>().build()?;
            let handler = js_handler(Arc::from(name.as_str()), Arc::new(function), direct);
            engine.register_tool(&name, handler, inputs, outputs, &description, tags).map_err(core_err)
        })
    }

    /// Names of the registered manuals, sorted.
    #[napi(catch_unwind)]
    pub fn manuals(&self) -> napi::Result<Vec<String>> {
        guard(|| Ok(self.engine()?.manuals()))
    }

    /// The namespaced variables a manual or a tool ("manual.tool") needs
    /// (e.g. `weather_WEATHER_API_KEY`); NOT_FOUND when neither exists.
    #[napi(catch_unwind)]
    pub fn required_variables(&self, name: String) -> napi::Result<Vec<String>> {
        guard(|| self.engine()?.required_variables(&name).map_err(core_err))
    }

    /// Release the engine. Idempotent; afterwards every method fails with
    /// INVALID_ARGUMENT ("the engine is closed"). Calls already running finish.
    /// Workflow runs still going stop where they are (`waitExecution` resolves with
    /// status 'cancelled'); with a store they stay unfinished there, for the next
    /// engine on it to resume, and the store's file is released before `close()` returns.
    #[napi(catch_unwind)]
    pub fn close(&self) -> napi::Result<()> {
        guard(|| {
            let taken = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            // JS subscriptions end with the engine (calls still running keep the core
            // engine alive, but no JS handler is called any more).
            if let Some(engine) = taken {
                engine.close(CLOSE_GRACE);
                for id in self.subscribers.ids() {
                    engine.unsubscribe(utp_core::SubscriptionId(id));
                    self.subscribers.remove(id);
                }
            }
            Ok(())
        })
    }

    /// True once `close()` was called.
    #[napi(getter, catch_unwind)]
    pub fn closed(&self) -> napi::Result<bool> {
        guard(|| Ok(self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none()))
    }
}

// ---------------------------------------------------------------------------
// Domain layer, approvals, events and metrics (docs/design.md §4, §6, §8)
// ---------------------------------------------------------------------------

/// How long a JS business rule may take to answer when `timeout` is not given.
const DEFAULT_RULE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `flush()` waits when no timeout is given.
const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// An optional number of seconds (finite, >= 0, at most `utp_core::host::MAX_TIMEOUT_SECONDS`)
/// as a duration.
fn optional_seconds(value: Option<&Value>, what: &str) -> napi::Result<Option<Duration>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            core_host::seconds_from_f64(what, n.as_f64().unwrap_or(f64::NAN), n).map(Some).map_err(core_err)
        }
        Some(other) => {
            Err(invalid(format!("{what} must be a finite non-negative number of seconds, found {}", json_kind(other))))
        }
    }
}

fn optional_bool(value: Option<&Value>, what: &str, default: bool) -> napi::Result<bool> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(invalid(format!("{what} must be a boolean, found {}", json_kind(other)))),
    }
}

fn to_json(value: &utp_core::ApprovalInfo) -> napi::Result<Value> {
    serde_json::to_value(value).map_err(|e| coded(ErrorCode::Internal, format!("cannot serialise: {e}")))
}

/// `{ limit, type, executionId, tool, tenant, since }` of eventBus.history, checked
/// by `utp_core::host`.
fn history_filter(options: StrictJson) -> napi::Result<HistoryFilter> {
    let options = options.0.into_optional("history options").map_err(invalid)?.unwrap_or(Value::Null);
    core_host::history_filter(&options, "history", KeyStyle::Camel).map_err(core_err)
}

#[napi]
impl JsEngine {
    /// `engine.domainLayer.addBusinessRule(name, fn, { timeout })`: add a JS rule
    /// that sees every call as `fn(tool, action, params)` (tool = manual name, action
    /// = tool name without the manual). It returns (or resolves to) true (allow),
    /// false (deny) or `{ decision: 'allow' | 'deny' | 'escalate', reason? }`.
    /// A throw, a rejection, another value, the event loop being gone or no answer
    /// within `timeout` seconds (default 10) denies the call, naming the rule and the
    /// cause. ALREADY_EXISTS for a name in use, INVALID_ARGUMENT for an empty one.
    #[napi(
        catch_unwind,
        ts_args_type = "name: string, fn: (tool: string, action: string, params: Record<string, any>) => unknown, options?: { timeout?: number | null } | null"
    )]
    pub fn add_business_rule(
        &self,
        env: &Env,
        name: String,
        callback: Function<'_, host::RuleArgs, ToolReturn>,
        options: StrictJson,
    ) -> napi::Result<()> {
        guard(|| {
            let engine = self.engine()?;
            let options = option_map(
                options.0.into_optional("addBusinessRule options").map_err(invalid)?,
                "addBusinessRule",
                &["timeout"],
            )?;
            let timeout = optional_seconds(options.get("timeout"), "timeout")?.unwrap_or(DEFAULT_RULE_TIMEOUT);
            if name.trim().is_empty() {
                return Err(invalid("a business rule needs a name (found an empty string)"));
            }
            let direct = Arc::new(JsToolRef::new(env.raw(), napi::JsValue::raw(&callback))?);
            let function: host::JsRuleFn = callback
                .build_threadsafe_function::<host::RuleArgs>()
                .weak::<true>()
                .callee_handled::<false>()
                .build()?;
            engine.add_business_rule(&name, host::js_rule(Arc::new(function), direct, timeout)).map_err(core_err)
        })
    }

    /// Remove a business rule; false when no rule had that name.
    #[napi(catch_unwind)]
    pub fn remove_business_rule(&self, name: String) -> napi::Result<bool> {
        guard(|| Ok(self.engine()?.remove_business_rule(&name)))
    }

    /// Dry run of the domain checks for a call of `toolName` with `args`:
    /// `{ tool, decision, security_level, rules: [{ rule, effect, message }], reason,
    /// rate_limited }`. Runs the rules (JS ones too) but consumes no rate-limit
    /// budget, creates no approval and calls nothing. Options: `{ tenant }`.
    #[napi(
        catch_unwind,
        ts_args_type = "toolName: string, args?: Record<string, any> | null, options?: { tenant?: string | null } | null",
        ts_return_type = "Promise<Record<string, any>>"
    )]
    pub fn check(
        &self,
        env: &Env,
        tool_name: String,
        args: JsJson,
        options: StrictJson,
    ) -> napi::Result<AsyncBlock<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let args = args.into_optional("args").map_err(invalid)?.unwrap_or(Value::Null);
            let options = option_map(options.0.into_optional("check options").map_err(invalid)?, "check", &["tenant"])?;
            let tenant = optional_string(options.get("tenant"), "tenant")?;
            promise(env, async move { engine.check(&tool_name, args, tenant.as_deref()).await.map_err(core_err) })
        })
    }

    /// The approvals of escalated calls, oldest first (`pendingOnly`: those still waiting).
    #[napi(
        catch_unwind,
        ts_args_type = "options?: { pendingOnly?: boolean | null } | null",
        ts_return_type = "Array<Record<string, any>>"
    )]
    pub fn approvals(&self, options: StrictJson) -> napi::Result<Vec<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let options = option_map(
                options.0.into_optional("approvals options").map_err(invalid)?,
                "approvals",
                &["pendingOnly"],
            )?;
            let pending_only = optional_bool(options.get("pendingOnly"), "pendingOnly", false)?;
            engine.approvals(pending_only).iter().map(to_json).collect()
        })
    }

    /// Grant (`approved`, default true) or refuse an approval; returns it resolved.
    /// A call waiting for it proceeds (or is denied); a fail-fast caller calls again
    /// with `{ approvalId }`. NOT_FOUND for an unknown id.
    #[napi(
        catch_unwind,
        ts_args_type = "approvalId: string, options?: { approved?: boolean | null; reason?: string | null } | null",
        ts_return_type = "Record<string, any>"
    )]
    pub fn approve(&self, approval_id: String, options: StrictJson) -> napi::Result<Value> {
        guard(|| {
            let engine = self.engine()?;
            let options = option_map(
                options.0.into_optional("approve options").map_err(invalid)?,
                "approve",
                &["approved", "reason"],
            )?;
            let approved = optional_bool(options.get("approved"), "approved", true)?;
            let reason = optional_string(options.get("reason"), "reason")?;
            to_json(&engine.approve(&approval_id, approved, reason.as_deref()).map_err(core_err)?)
        })
    }

    /// `engine.eventBus.subscribe(pattern, fn)`: call `fn(event)` on the JS thread for
    /// every event whose type matches the glob `pattern`, in id order; returns the
    /// subscription id. `fn` may return a Promise (not awaited before the next
    /// event); throws and rejections are counted in the metrics, never more. At most
    /// `events.queue_capacity` events wait for the function at once; more are dropped
    /// (counted). The function never keeps the process alive.
    #[napi(catch_unwind, ts_args_type = "pattern: string, fn: (event: Record<string, any>) => unknown")]
    pub fn subscribe(&self, pattern: String, callback: Function<'_, Value, host::HandlerReturn>) -> napi::Result<i64> {
        guard(|| {
            let engine = self.engine()?;
            let function: host::JsHandlerFn =
                callback.build_threadsafe_function::<Value>().weak::<true>().callee_handled::<false>().build()?;
            let capacity = engine.events().config().queue_capacity;
            let (state, handler) = self.subscribers.handler(capacity, function);
            let id = engine.subscribe(&pattern, handler).map_err(core_err)?;
            self.subscribers.insert(id.0, state);
            i64::try_from(id.0).map_err(|_| coded(ErrorCode::Internal, "subscription id out of range"))
        })
    }

    /// End a subscription; false when the id is unknown or already ended.
    #[napi(catch_unwind)]
    pub fn unsubscribe(&self, id: f64) -> napi::Result<bool> {
        guard(|| {
            let engine = self.engine()?;
            if !(id.is_finite() && id >= 0.0 && id.fract() == 0.0) {
                return Err(invalid(format!("a subscription id is a non-negative integer, found {id}")));
            }
            let id = id as u64;
            self.subscribers.remove(id);
            Ok(engine.unsubscribe(utp_core::SubscriptionId(id)))
        })
    }

    /// Events kept in the in-memory history, in id order (docs/design.md §8 JSON):
    /// `{ limit (default all kept), type (glob), executionId, tool, tenant, since (id) }`.
    #[napi(
        catch_unwind,
        ts_args_type = "options?: { limit?: number | null; type?: string | null; executionId?: string | null; tool?: string | null; tenant?: string | null; since?: number | null } | null",
        ts_return_type = "Array<Record<string, any>>"
    )]
    pub fn history(&self, options: StrictJson) -> napi::Result<Vec<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let filter = history_filter(options)?;
            Ok(engine.history(&filter).iter().map(|e| e.to_value()).collect())
        })
    }

    /// Resolve to true once every subscriber (JS ones included, their Promises too)
    /// has handled everything published so far; false after `timeout` seconds (default 5).
    #[napi(catch_unwind, ts_args_type = "timeout?: number | null", ts_return_type = "Promise<boolean>")]
    pub fn flush(&self, env: &Env, timeout: StrictJson) -> napi::Result<AsyncBlock<bool>> {
        guard(|| {
            let engine = self.engine()?;
            let timeout = timeout.0.into_optional("timeout").map_err(invalid)?;
            let timeout = optional_seconds(timeout.as_ref(), "timeout")?.unwrap_or(DEFAULT_FLUSH_TIMEOUT);
            let subscribers = self.subscribers.clone();
            promise(env, async move {
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    // The core queues first: an event a core thread has handed over
                    // is already counted in flight on the JS side.
                    if engine.events().flush(Duration::ZERO) && subscribers.inflight() == 0 {
                        return Ok(true);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(false);
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            })
        })
    }

    /// The metrics as JSON: per tool `{ calls, errors, policy_denied, rate_limited,
    /// latency_seconds }`, and `events` (published, dropped, subscriber errors, subscribers).
    #[napi(catch_unwind, ts_return_type = "Record<string, any>")]
    pub fn metrics(&self) -> napi::Result<Value> {
        guard(|| Ok(self.subscribers.merge_metrics(self.engine()?.metrics())))
    }

    /// The metrics in Prometheus text exposition format.
    #[napi(catch_unwind)]
    pub fn metrics_text(&self) -> napi::Result<String> {
        guard(|| Ok(self.subscribers.merge_text(self.engine()?.metrics_text())))
    }
}

// Declared after `JsEngine` on purpose: napi-derive names the methods of an `impl`
// block after the struct's `js_name` only when the struct was expanded first, else
// they go to a `JsEngine` class in native.d.ts.
mod intent;
mod planner;
mod store;
mod stream;
mod workflow;
