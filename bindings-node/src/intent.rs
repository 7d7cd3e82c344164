//! Intents from Node: a named kind of request routed to a workflow or to a JS
//! handler (core `Engine::register_intent` / `submit_intent`).
//!
//! A handler is a weak, catching ThreadsafeFunction, like a JS tool: it never keeps
//! Node alive, it is called on the JS thread as `fn(ctx, params)` and a returned
//! Promise is awaited here, on the tokio runtime, never on the JS thread. `ctx` is
//! a plain object `{ executionId, intent, tenant, session, state }` (`state`: a
//! snapshot of the session's state when the request starts). A throw, a rejection,
//! a result that is not JSON or the event loop being gone make the request's record
//! `failed` (TOOL_FAILED, naming the intent and the cause); `submitIntent` itself
//! rejects only for an unknown intent or params a workflow refuses.

use std::sync::Arc;

use napi::bindgen_prelude::{AsyncBlock, Either, FnArgs, Function};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Env, Status};
use napi_derive::napi;
use serde_json::{Value, json};
use utp_core::ErrorCode;
use utp_core::{IntentContext, IntentHandler, IntentTarget};

use crate::json::{JsJson, StrictJson};
use crate::workflow::workflow_source;
use crate::{
    JsEngine, ToolReturn, core_err, guard, invalid, js_message, json_kind, option_map, optional_string, promise,
};

/// The arguments of a handler: `(ctx, params)`.
pub type IntentArgs = FnArgs<(Value, Value)>;

/// A JS intent handler: weak, not error-first, throws caught.
type JsIntentFn = ThreadsafeFunction<IntentArgs, ToolReturn, IntentArgs, Status, false, true>;

fn handler_failed(intent: &str, message: impl std::fmt::Display) -> utp_core::Error {
    utp_core::Error::with_code(ErrorCode::ToolFailed, format!("intent '{intent}': {message}"))
}

/// The JS view of a request's context.
fn context_value(ctx: &IntentContext) -> Value {
    json!({
        "executionId": ctx.execution_id,
        "intent": ctx.intent,
        "tenant": ctx.tenant,
        "session": ctx.session,
        "state": ctx.state(),
    })
}

/// The core handler of a JS function.
fn js_intent_handler(function: Arc<JsIntentFn>) -> IntentHandler {
    Arc::new(move |ctx: IntentContext, params: Value| {
        let function = function.clone();
        Box::pin(async move {
            let intent = ctx.intent.clone();
            let returned =
                function.call_async_catch(FnArgs::from((context_value(&ctx), params))).await.map_err(|e| {
                    if e.status == Status::PendingException {
                        handler_failed(&intent, format!("the JS handler threw: {}", js_message(&e)))
                    } else {
                        handler_failed(
                            &intent,
                            format!(
                                "the JS handler could not be called ({}; is the event loop gone?): {}",
                                e.status, e.reason
                            ),
                        )
                    }
                })?;
            let result = match returned {
                ToolReturn::Value(v) => v,
                ToolReturn::Promise(p) => p.await.map_err(|e| {
                    handler_failed(&intent, format!("the JS handler's promise rejected: {}", js_message(&e)))
                })?,
                ToolReturn::Broken(why) => {
                    return Err(handler_failed(&intent, format!("the JS handler returned an unusable value: {why}")));
                }
            };
            let hint = if matches!(result, JsJson::Missing("undefined")) { " (return null for no result)" } else { "" };
            result
                .into_value("the JS handler returned a value that is not JSON")
                .map_err(|m| handler_failed(&intent, format!("{m}{hint}")))
        })
    })
}

/// `{ tenant, session }` of submitIntent.
fn submit_options(options: StrictJson) -> napi::Result<(Option<String>, Option<String>)> {
    let options = option_map(
        options.0.into_optional("submitIntent options").map_err(invalid)?,
        "submitIntent",
        &["tenant", "session"],
    )?;
    let tenant = optional_string(options.get("tenant"), "tenant")?;
    let session = optional_string(options.get("session"), "session")?;
    // Ids checked as every session and tenant option is.
    for (option, id) in [("tenant", &tenant), ("session", &session)] {
        if let Some(id) = id {
            utp_core::host::check_id(option, id).map_err(core_err)?;
        }
    }
    Ok((tenant, session))
}

#[napi]
impl JsEngine {
    /// Route the intent `intentType` to a target: a workflow (a definition object,
    /// YAML / JSON text or a file path; validated now) or a function `fn(ctx, params)`
    /// (a value or a Promise of one). ALREADY_EXISTS for a type in use,
    /// VALIDATION_FAILED for a workflow that does not validate, INVALID_ARGUMENT for an
    /// empty type or a target that is neither. A handler never keeps the process alive.
    #[napi(
        catch_unwind,
        ts_args_type = "intentType: string, target: Record<string, any> | string | ((ctx: Record<string, any>, params: any) => unknown)"
    )]
    pub fn register_intent(
        &self,
        intent_type: String,
        target: Either<Function<'_, IntentArgs, ToolReturn>, JsJson>,
    ) -> napi::Result<()> {
        guard(|| {
            let engine = self.engine()?;
            if intent_type.trim().is_empty() {
                return Err(invalid("an intent needs a type name (found an empty string)"));
            }
            match target {
                Either::A(callback) => {
                    let function: JsIntentFn = callback
                        .build_threadsafe_function::<IntentArgs>()
                        .weak::<true>()
                        .callee_handled::<false>()
                        .build()?;
                    engine
                        .register_intent(&intent_type, IntentTarget::Handler(js_intent_handler(Arc::new(function))))
                        .map_err(core_err)
                }
                Either::B(workflow) => {
                    let workflow = match workflow {
                        JsJson::Value(v @ (Value::Object(_) | Value::String(_))) => JsJson::Value(v),
                        JsJson::Value(other) => {
                            return Err(invalid(format!(
                                "intent '{intent_type}': the target must be a workflow (a definition object, YAML / JSON text or a file path) or a handler function, found {}",
                                json_kind(&other)
                            )));
                        }
                        JsJson::Missing(kind) => {
                            return Err(invalid(format!(
                                "intent '{intent_type}': the target must be a workflow (a definition object, YAML / JSON text or a file path) or a handler function, found {kind}"
                            )));
                        }
                        invalid_json @ JsJson::Invalid(_) => invalid_json,
                    };
                    let source = workflow_source(workflow)?;
                    engine.register_intent_workflow(&intent_type, source).map_err(core_err)
                }
            }
        })
    }

    /// Remove an intent; false when none had that type.
    #[napi(catch_unwind)]
    pub fn unregister_intent(&self, intent_type: String) -> napi::Result<bool> {
        guard(|| Ok(self.engine()?.unregister_intent(&intent_type)))
    }

    /// The registered intent types, sorted.
    #[napi(catch_unwind)]
    pub fn intents(&self) -> napi::Result<Vec<String>> {
        guard(|| Ok(self.engine()?.intents()))
    }

    /// Handle a request of `intentType` with `params` (undefined / null = `{}`).
    /// A workflow intent resolves to its execution record (with `intent`); a handler
    /// intent to `{ execution_id, intent, status: 'completed' | 'failed', output,
    /// error, tenant, session_id }`. Rejects with NOT_FOUND for an unknown intent and
    /// VALIDATION_FAILED / INVALID_ARGUMENT for params a workflow refuses.
    /// Options: `{ tenant, session }`.
    #[napi(
        catch_unwind,
        ts_args_type = "intentType: string, params?: any, options?: { tenant?: string | null; session?: string | null } | null",
        ts_return_type = "Promise<Record<string, any>>"
    )]
    pub fn submit_intent(
        &self,
        env: &Env,
        intent_type: String,
        params: JsJson,
        options: StrictJson,
    ) -> napi::Result<AsyncBlock<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let params = params.into_optional("params").map_err(invalid)?.unwrap_or_else(|| json!({}));
            let (tenant, session) = submit_options(options)?;
            promise(env, async move {
                engine
                    .submit_intent(&intent_type, params, tenant.as_deref(), session.as_deref())
                    .await
                    .map_err(core_err)
            })
        })
    }
}
