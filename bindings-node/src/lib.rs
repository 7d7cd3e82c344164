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

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use napi::bindgen_prelude::{AsyncBlock, AsyncBlockBuilder, ToNapiValue};
use napi::{Env, Status};
use napi_derive::napi;
use serde_json::Value;
use utp_core::{Config, ErrorCode, ManualSource, RegisteredTool};

/// Search results returned when `limit` is not given (design §4: `limit=10`).
const DEFAULT_SEARCH_LIMIT: usize = 10;

// ---------------------------------------------------------------------------
// Errors and panics
// ---------------------------------------------------------------------------

/// A napi error whose message starts with `[CODE] `, lifted to `err.code` by index.js.
fn coded(code: ErrorCode, message: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(Status::GenericFailure, format!("[{}] {message}", code.as_str()))
}

fn core_err(e: utp_core::Error) -> napi::Error {
    coded(e.code(), &e)
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

/// A UTP Runtime engine: the registry of manuals and tools (calls, workflows and
/// policy arrive in later releases). Cheap to share; `close()` releases it.
#[napi(js_name = "Engine")]
pub struct JsEngine {
    inner: RwLock<Option<utp_core::Engine>>,
}

fn check_store(options: Option<Value>) -> napi::Result<()> {
    let options = option_map(options, "Engine", &["store"])?;
    let store = match options.get("store") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim()),
        Some(other) => return Err(invalid(format!("store must be a string, found {}", json_kind(other)))),
    };
    match store {
        None | Some("memory") => Ok(()),
        Some(s) if s.starts_with("sqlite:") || s == "sqlite" => Err(invalid(format!(
            "store '{s}': the SQLite store is not available yet in this release; use store 'memory' (the default)"
        ))),
        Some(s) => Err(invalid(format!("unknown store '{s}': expected 'memory' or 'sqlite:PATH'"))),
    }
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

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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
    let tags = match options.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(format!(
                    "tags must be an array of strings, found an element that is {}",
                    json_kind(other)
                ))),
            })
            .collect::<napi::Result<_>>()?,
        Some(other) => return Err(invalid(format!("tags must be an array of strings, found {}", json_kind(other)))),
    };
    Ok((limit, tags))
}

#[napi]
impl JsEngine {
    /// `new Engine(config?, { store? })`: `config` is an object, the path of a
    /// `utp.yaml` / `utp.json` file, or null/undefined for defaults.
    #[napi(
        constructor,
        catch_unwind,
        ts_args_type = "config?: Record<string, unknown> | string | null, options?: { store?: string | null } | null"
    )]
    pub fn new(config: Option<Value>, options: Option<Value>) -> napi::Result<Self> {
        guard(|| {
            check_store(options)?;
            let engine = utp_core::Engine::new(config_from(config)?).map_err(core_err)?;
            // Manuals listed in config `manuals` are registered before the constructor
            // returns (as in Python and C): a bad one fails construction visibly.
            napi::bindgen_prelude::block_on(engine.register_configured_manuals()).map_err(core_err)?;
            Ok(JsEngine { inner: RwLock::new(Some(engine)) })
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
    #[napi(catch_unwind)]
    pub fn close(&self) -> napi::Result<()> {
        guard(|| {
            let mut slot = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            slot.take();
            Ok(())
        })
    }

    /// True once `close()` was called.
    #[napi(getter, catch_unwind)]
    pub fn closed(&self) -> napi::Result<bool> {
        guard(|| Ok(self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none()))
    }
}
