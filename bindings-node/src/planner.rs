//! The planner from Node (docs/design.md §4, §10): `plan(request, { session, tenant, inputs })`
//! resolves to `{ definition, provider, model, rounds, usage }` and `run(request,
//! inputs, { session, tenant, timeout })` plans and runs, resolving to the execution
//! record with `plan` added. Both run on the tokio runtime napi owns (a model server
//! is asked over HTTP; steps call JS tools on the JS thread, which must stay free).

use napi::Env;
use napi::bindgen_prelude::AsyncBlock;
use napi_derive::napi;
use serde_json::{Map, Value};
use utp_core::host::KeyStyle;

use crate::json::{JsJson, StrictJson};
use crate::workflow::run_options;
use crate::{JsEngine, core_err, guard, invalid, json_kind, promise};

/// The request: a non-empty string.
fn plan_request(request: JsJson) -> napi::Result<String> {
    match request.into_value("request").map_err(invalid)? {
        Value::String(text) if text.trim().is_empty() => {
            Err(invalid("request is an empty string: say what the workflow should do"))
        }
        Value::String(text) => Ok(text),
        other => {
            Err(invalid(format!("request must be a string (what the workflow should do), found {}", json_kind(&other))))
        }
    }
}

/// Inputs of a plan or a run: an object, or undefined / null for none.
fn request_inputs(inputs: Option<Value>, what: &str) -> napi::Result<Option<Value>> {
    match inputs {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value)),
        Some(other) => Err(invalid(format!("{what} must be an object, found {}", json_kind(&other)))),
    }
}

#[napi]
impl JsEngine {
    /// Plan a workflow for a natural-language request without running it; resolves
    /// to `{ definition, provider, model, rounds, usage }`: `definition` is the
    /// workflow (docs/design.md §7, validated against the registered tools: pass it to
    /// `runWorkflow`), `provider` 'offline' | 'openai' | 'anthropic' (the config's
    /// `planner` section; offline by default), `rounds` the completions asked (0
    /// offline), `usage` `{ prompt_tokens, completion_tokens, total_tokens }`.
    /// Options: `inputs` (the inputs the plan will run with: the model sees their
    /// names and types, never their values), `session`, `tenant`. Rejects with
    /// PLANNER when no valid workflow came out, TIMEOUT / TRANSPORT when the model
    /// cannot be reached, INVALID_ARGUMENT for an empty or non-string request.
    #[napi(
        catch_unwind,
        ts_args_type = "request: string, options?: { session?: string | null; tenant?: string | null; inputs?: Record<string, any> | null } | null",
        ts_return_type = "Promise<Record<string, any>>"
    )]
    pub fn plan(&self, env: &Env, request: JsJson, options: StrictJson) -> napi::Result<AsyncBlock<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let request = plan_request(request)?;
            let options = options.0.into_optional("plan options").map_err(invalid)?.unwrap_or(Value::Null);
            let plan = utp_core::host::plan_options(&options, "plan", KeyStyle::Camel).map_err(core_err)?;
            promise(env, async move {
                engine.plan(&request, plan).await.map(|planned| planned.to_value()).map_err(core_err)
            })
        })
    }

    /// Plan a workflow for a request and run it with `inputs` (an object; undefined /
    /// null = none); resolves to the execution record (as `runWorkflow`) with `plan`
    /// (as `plan()` resolves). Planning errors reject as `plan()`; a run that fails
    /// or times out still resolves (see `status`). Options: `session`, `tenant`,
    /// `user`, `timeout` (seconds, for the run).
    #[napi(
        catch_unwind,
        ts_args_type = "request: string, inputs?: Record<string, any> | null, options?: { session?: string | null; tenant?: string | null; user?: string | null; timeout?: number | null } | null",
        ts_return_type = "Promise<Record<string, any>>"
    )]
    pub fn run(
        &self,
        env: &Env,
        request: JsJson,
        inputs: JsJson,
        options: StrictJson,
    ) -> napi::Result<AsyncBlock<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let request = plan_request(request)?;
            let inputs = request_inputs(inputs.into_optional("inputs").map_err(invalid)?, "inputs")?
                .unwrap_or_else(|| Value::Object(Map::new()));
            let options = run_options(options, "run")?;
            promise(env, async move { engine.run_request(&request, inputs, options).await.map_err(core_err) })
        })
    }
}
