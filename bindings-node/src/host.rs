//! JS functions the core calls back: business rules (domain layer) and event
//! subscribers. Both are weak, catching ThreadsafeFunctions, like JS tools: they
//! never keep Node alive, and a throw becomes a value here, never a crash.
//!
//! - A rule reached while its JS thread polls a call (`callTool`'s, see `call_promise`)
//!   is called right there, as JS tools are: no trip through the event loop's queue.
//!   Reached elsewhere (a workflow step on the runtime), it is called from the call's
//!   future through the threadsafe function. Either way a returned Promise is awaited
//!   by the call's future, bounded by the rule's timeout, and whatever goes wrong (a
//!   throw, a rejection, a wrong-typed answer, the event loop gone, the timeout)
//!   denies the call.
//! - A subscriber handler runs on the core's per-subscriber library thread, which
//!   must not wait for JS: it only queues the event for the JS thread (in id order,
//!   non-blocking) and returns. What the JS function then does (a throw, a
//!   rejected Promise) is counted here, per subscription, and added to the core's
//!   metrics when they are read ([`Subscribers::merge_metrics`] / [`merge_text`]).
//!   At most the subscription's queue capacity of events may wait for (or run in)
//!   JS at once; more are dropped and counted as drops.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use napi::bindgen_prelude::{FnArgs, FromNapiValue, Promise};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Status, sys};
use serde_json::Value;
use utp_core::{Event, EventHandler, HostRule, HostVerdict};

use crate::json::{self, JsJson};
use crate::{DirectFailure, JsToolRef, ToolReturn, js_message, json_kind};

// ---------------------------------------------------------------------------
// Business rules
// ---------------------------------------------------------------------------

/// The arguments of a rule: `(tool = manual name, action, params)`.
pub type RuleArgs = FnArgs<(String, String, Value)>;

/// A JS rule: weak, not error-first, throws caught.
pub type JsRuleFn = ThreadsafeFunction<RuleArgs, ToolReturn, RuleArgs, Status, false, true>;

/// What a rule must return, for error messages.
const RULE_EXPECTED: &str =
    "expected true / false, or { decision: 'allow' | 'deny' | 'escalate', reason?: string } (or a Promise of one)";

/// The core rule of a JS function (`direct`: the same function, for calls on its JS
/// thread). The core adds "business rule '<name>' failed, so the call is denied: " in
/// front of every error returned here.
pub fn js_rule(function: Arc<JsRuleFn>, direct: Arc<JsToolRef>, timeout: Duration) -> HostRule {
    Arc::new(move |tool: String, action: String, params: Value| {
        if let Some(here) = direct.here() {
            // On the JS thread, polling a call: call it now (a sync rule answers at once).
            let returned = direct.call_here(here, vec![Value::String(tool), Value::String(action), params]);
            let returned = returned.map_err(|failure| match failure {
                DirectFailure::Threw(message) => format!("the JS function threw: {message}"),
                DirectFailure::Arguments(e) => format!("the arguments cannot be given to JS: {e}"),
                DirectFailure::Status(status) => format!("the JS function could not be called (status {status})"),
                DirectFailure::Unusable(e) => format!("the JS function returned an unusable value: {e}"),
            });
            return Box::pin(within(timeout, rule_answer(returned)));
        }
        let function = function.clone();
        Box::pin(async move {
            let answer = async {
                let returned = function.call_async_catch(FnArgs::from((tool, action, params))).await.map_err(|e| {
                    if e.status == Status::PendingException {
                        format!("the JS function threw: {}", js_message(&e))
                    } else {
                        format!(
                            "the JS function could not be called ({}; is the event loop gone?): {}",
                            e.status, e.reason
                        )
                    }
                });
                rule_answer(returned).await
            };
            within(timeout, answer).await
        })
    })
}

/// A rule's answer, or that it did not answer within `timeout`.
async fn within(
    timeout: Duration,
    answer: impl std::future::Future<Output = Result<HostVerdict, String>>,
) -> Result<HostVerdict, String> {
    match tokio::time::timeout(timeout, answer).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("the JS function did not answer within {:.3} s", timeout.as_secs_f64())),
    }
}

/// What a JS rule returned (or awaited), as a verdict.
async fn rule_answer(returned: Result<ToolReturn, String>) -> Result<HostVerdict, String> {
    let value = match returned? {
        ToolReturn::Value(v) => v,
        ToolReturn::Promise(p) => {
            p.await.map_err(|e| format!("the JS function's promise rejected: {}", js_message(&e)))?
        }
        ToolReturn::Broken(why) => {
            return Err(format!("the JS function returned an unusable value: {why}"));
        }
    };
    verdict(value)
}

/// A rule's answer as a verdict: a boolean, or `{ decision, reason? }`.
fn verdict(returned: JsJson) -> Result<HostVerdict, String> {
    let value = match returned {
        JsJson::Value(v) => v,
        JsJson::Missing(kind) => {
            return Err(format!("the JS function returned {kind}; {RULE_EXPECTED}"));
        }
        JsJson::Invalid(why) => {
            return Err(format!("the JS function returned a value that is not JSON ({why}); {RULE_EXPECTED}"));
        }
    };
    let map = match value {
        Value::Bool(true) => return Ok(HostVerdict::Allow),
        Value::Bool(false) => return Ok(HostVerdict::Deny(None)),
        Value::Object(map) => map,
        other => {
            return Err(format!("the JS function returned {} ({}); {RULE_EXPECTED}", json_kind(&other), short(&other)));
        }
    };
    if let Some(key) = map.keys().find(|k| !matches!(k.as_str(), "decision" | "reason")) {
        return Err(format!("the JS function returned an object with the unknown key '{key}'; {RULE_EXPECTED}"));
    }
    let reason = match map.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(format!("the returned reason must be a string, found {}", json_kind(other)));
        }
    };
    match map.get("decision") {
        Some(Value::String(d)) if d == "allow" => Ok(HostVerdict::Allow),
        Some(Value::String(d)) if d == "deny" => Ok(HostVerdict::Deny(reason)),
        Some(Value::String(d)) if d == "escalate" => Ok(HostVerdict::Escalate(reason)),
        Some(Value::String(d)) => {
            Err(format!("the JS function returned the unknown decision '{}'; {RULE_EXPECTED}", clip(d)))
        }
        None => Err(format!("the JS function returned an object without 'decision'; {RULE_EXPECTED}")),
        Some(other) => {
            Err(format!("the returned decision must be a string, found {}; {RULE_EXPECTED}", json_kind(other)))
        }
    }
}

fn clip(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A short rendering of a returned value for an error message.
fn short(value: &Value) -> String {
    clip(&value.to_string())
}

// ---------------------------------------------------------------------------
// Event subscribers
// ---------------------------------------------------------------------------

/// Any value (what a subscriber's Promise resolves to is not used).
pub struct Ignored;

impl FromNapiValue for Ignored {
    unsafe fn from_napi_value(_env: sys::napi_env, _value: sys::napi_value) -> napi::Result<Self> {
        Ok(Ignored)
    }
}

/// What a subscriber returned: nothing we use, or a Promise to watch for rejection.
pub enum HandlerReturn {
    Done,
    Promise(Promise<Ignored>),
    Broken(String),
}

impl FromNapiValue for HandlerReturn {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let mut is_promise = false;
        if unsafe { sys::napi_is_promise(env, value, &mut is_promise) } != sys::Status::napi_ok {
            let why = json::take_exception(env).unwrap_or_else(|| "napi_is_promise failed".into());
            return Ok(HandlerReturn::Broken(why));
        }
        if !is_promise {
            return Ok(HandlerReturn::Done);
        }
        Ok(match unsafe { Promise::<Ignored>::from_napi_value(env, value) } {
            Ok(promise) => HandlerReturn::Promise(promise),
            Err(e) => HandlerReturn::Broken(json::take_exception(env).unwrap_or(e.reason)),
        })
    }
}

/// A JS event handler: weak, not error-first, throws caught.
pub type JsHandlerFn = ThreadsafeFunction<Value, HandlerReturn, Value, Status, false, true>;

/// Counts the binding keeps for the JS subscribers (added to the core's metrics).
#[derive(Default)]
pub struct Totals {
    errors: AtomicU64,
    dropped: AtomicU64,
}

/// One JS subscription's state.
pub struct Subscription {
    capacity: usize,
    /// Events handed to JS whose handler has not finished (including pending Promises).
    inflight: AtomicUsize,
    errors: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
    totals: Arc<Totals>,
}

impl Subscription {
    fn failed(&self, message: String) {
        self.errors.fetch_add(1, Relaxed);
        self.totals.errors.fetch_add(1, Relaxed);
        *lock(&self.last_error) = Some(message);
    }

    fn finished(&self) {
        self.inflight.fetch_sub(1, Relaxed);
    }

    /// The outcome of one handler call, on the JS thread.
    fn settle(self: Arc<Self>, returned: napi::Result<HandlerReturn>) {
        match returned {
            Ok(HandlerReturn::Done) => self.finished(),
            Ok(HandlerReturn::Broken(why)) => {
                self.failed(format!("the handler returned an unusable value: {why}"));
                self.finished();
            }
            Ok(HandlerReturn::Promise(promise)) => {
                let sub = self.clone();
                let watch = async move {
                    if let Err(e) = promise.await {
                        sub.failed(format!("the handler's promise rejected: {}", js_message(&e)));
                    }
                    sub.finished();
                };
                // `spawn` panics only when napi's runtime is gone (shutdown): then the
                // outcome can no longer be observed, so it is not counted as a failure.
                if catch_unwind(AssertUnwindSafe(|| napi::bindgen_prelude::spawn(watch))).is_err() {
                    self.finished();
                }
            }
            Err(e) => {
                let message = if e.status == Status::PendingException {
                    format!("the handler threw: {}", js_message(&e))
                } else {
                    format!("the handler could not be called ({}): {}", e.status, e.reason)
                };
                self.failed(message);
                self.finished();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The JS subscriptions of one engine, by core subscription id.
#[derive(Default)]
pub struct Subscribers {
    live: Mutex<HashMap<u64, Arc<Subscription>>>,
    totals: Arc<Totals>,
}

impl Subscribers {
    /// The state of a new subscription and the core handler that feeds it.
    pub fn handler(&self, capacity: usize, function: JsHandlerFn) -> (Arc<Subscription>, EventHandler) {
        let sub = Arc::new(Subscription {
            capacity: capacity.max(1),
            inflight: AtomicUsize::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
            totals: self.totals.clone(),
        });
        let state = sub.clone();
        let handler: EventHandler = Arc::new(move |event: Arc<Event>| {
            // Runs on the subscription's library thread: never waits for JS.
            if state.inflight.fetch_add(1, Relaxed) >= state.capacity {
                state.inflight.fetch_sub(1, Relaxed);
                state.dropped.fetch_add(1, Relaxed);
                state.totals.dropped.fetch_add(1, Relaxed);
                return Ok(());
            }
            let settle = state.clone();
            let status = function.call_with_return_value(
                event.to_value(),
                ThreadsafeFunctionCallMode::NonBlocking,
                move |returned, _env| {
                    // On the JS thread; an Err here would be a fatal exception.
                    let _ = catch_unwind(AssertUnwindSafe(|| settle.settle(returned)));
                    Ok(())
                },
            );
            if status != Status::Ok {
                state.finished();
                return Err(format!("the JS handler could not be called ({status}): the event loop is gone"));
            }
            Ok(())
        });
        (sub, handler)
    }

    pub fn insert(&self, id: u64, sub: Arc<Subscription>) {
        lock(&self.live).insert(id, sub);
    }

    /// Forget a subscription (its counts stay in the totals).
    pub fn remove(&self, id: u64) -> bool {
        lock(&self.live).remove(&id).is_some()
    }

    pub fn ids(&self) -> Vec<u64> {
        lock(&self.live).keys().copied().collect()
    }

    /// Events handed to JS handlers that have not finished yet.
    pub fn inflight(&self) -> usize {
        lock(&self.live).values().map(|s| s.inflight.load(Relaxed)).sum()
    }

    fn snapshot(&self) -> HashMap<u64, Arc<Subscription>> {
        lock(&self.live).clone()
    }

    /// Add the JS-side counts to the core's metrics JSON (`events.dropped`,
    /// `events.subscriber_errors`, and per subscriber `dropped`, `errors`, `queued`,
    /// plus `last_error` of a JS subscriber).
    pub fn merge_metrics(&self, mut metrics: Value) -> Value {
        let subs = self.snapshot();
        let Some(events) = metrics.get_mut("events").and_then(Value::as_object_mut) else {
            return metrics;
        };
        add(events.get_mut("dropped"), self.totals.dropped.load(Relaxed));
        add(events.get_mut("subscriber_errors"), self.totals.errors.load(Relaxed));
        if let Some(list) = events.get_mut("subscribers").and_then(Value::as_array_mut) {
            for entry in list {
                let Some(sub) = entry.get("id").and_then(Value::as_u64).and_then(|id| subs.get(&id)) else {
                    continue;
                };
                add(entry.get_mut("dropped"), sub.dropped.load(Relaxed));
                add(entry.get_mut("errors"), sub.errors.load(Relaxed));
                add(entry.get_mut("queued"), sub.inflight.load(Relaxed) as u64);
                if let Some(map) = entry.as_object_mut() {
                    let last = lock(&sub.last_error).clone();
                    map.insert("last_error".into(), last.map_or(Value::Null, Value::String));
                }
            }
        }
        metrics
    }

    /// The same additions in the Prometheus text.
    pub fn merge_text(&self, text: String) -> String {
        let subs = self.snapshot();
        let mut out = String::with_capacity(text.len() + 64);
        for line in text.lines() {
            let extra = if line.starts_with("utp_event_drops_total ") {
                self.totals.dropped.load(Relaxed)
            } else if line.starts_with("utp_event_subscriber_errors_total ") {
                self.totals.errors.load(Relaxed)
            } else if let Some(rest) = line.strip_prefix("utp_event_subscription_drops_total{") {
                subscription(rest, &subs).map_or(0, |s| s.dropped.load(Relaxed))
            } else if let Some(rest) = line.strip_prefix("utp_event_subscription_errors_total{") {
                subscription(rest, &subs).map_or(0, |s| s.errors.load(Relaxed))
            } else if let Some(rest) = line.strip_prefix("utp_event_subscription_queued{") {
                subscription(rest, &subs).map_or(0, |s| s.inflight.load(Relaxed) as u64)
            } else {
                0
            };
            match line.rsplit_once(' ') {
                Some((head, value)) if extra > 0 => match value.parse::<u64>() {
                    Ok(n) => out.push_str(&format!("{head} {}", n.saturating_add(extra))),
                    Err(_) => out.push_str(line),
                },
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }
}

/// The subscription a label set `subscription="ID",...` names.
fn subscription<'a>(labels: &str, subs: &'a HashMap<u64, Arc<Subscription>>) -> Option<&'a Arc<Subscription>> {
    let id = labels.strip_prefix("subscription=\"")?.split('"').next()?.parse::<u64>().ok()?;
    subs.get(&id)
}

fn add(slot: Option<&mut Value>, extra: u64) {
    if let Some(slot) = slot {
        if let Some(n) = slot.as_u64() {
            *slot = Value::from(n.saturating_add(extra));
        }
    }
}
