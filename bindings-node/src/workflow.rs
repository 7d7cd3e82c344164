//! Workflows from Node (docs/design.md §4, §7): run, start, wait for, inspect and control
//! executions, validate definitions, and session state.
//!
//! A workflow is an object (the definition), a YAML / JSON string, or the path of a
//! YAML / JSON file. Runs go on the tokio runtime napi owns: `runWorkflow` and
//! `waitExecution` return Promises (steps call JS tools on the JS thread, which must
//! stay free), `startWorkflow` validates and starts a run synchronously and returns
//! its id. Records cross as the docs/design.md §7 JSON (snake_case keys, as events do).

use napi::Env;
use napi::bindgen_prelude::AsyncBlock;
use napi_derive::napi;
use serde_json::Value;
use utp_core::ErrorCode;
use utp_core::host::KeyStyle;
use utp_core::workflow::{RunOptions, WorkflowSource};

use crate::json::{JsJson, StrictJson};
use crate::{JsEngine, coded, core_err, guard, invalid, json_kind, option_map, optional_string, promise};

/// A workflow argument: an object (the definition), or a string (YAML / JSON text,
/// or the path of a YAML / JSON file).
pub(crate) fn workflow_source(workflow: JsJson) -> napi::Result<WorkflowSource> {
    match workflow.into_value("workflow").map_err(invalid)? {
        Value::String(text) => {
            if text.trim().is_empty() {
                return Err(invalid(
                    "workflow is an empty string: pass a definition object, YAML / JSON text or a file path",
                ));
            }
            Ok(WorkflowSource::from_text(&text))
        }
        value @ Value::Object(_) => Ok(WorkflowSource::Definition(value)),
        other => Err(invalid(format!(
            "workflow must be a definition object, YAML / JSON text or a file path, found {}",
            json_kind(&other)
        ))),
    }
}

/// The inputs of a run: an object, or undefined / null for none.
fn workflow_inputs(inputs: JsJson) -> napi::Result<Value> {
    match inputs.into_optional("inputs").map_err(invalid)? {
        None => Ok(Value::Null),
        Some(value @ Value::Object(_)) => Ok(value),
        Some(other) => Err(invalid(format!("inputs must be an object, found {}", json_kind(&other)))),
    }
}

/// `{ session, tenant, user, timeout }` of runWorkflow / startWorkflow (and `run`),
/// checked by `utp_core::host`; `timeout` in seconds.
pub(crate) fn run_options(options: StrictJson, what: &str) -> napi::Result<RunOptions> {
    let options = options.0.into_optional(&format!("{what} options")).map_err(invalid)?.unwrap_or(Value::Null);
    utp_core::host::run_options(&options, what, KeyStyle::Camel).map_err(core_err)
}

/// `{ tenant }` of the session-state methods.
fn tenant_option(options: StrictJson, what: &str) -> napi::Result<Option<String>> {
    let options = option_map(options.0.into_optional(&format!("{what} options")).map_err(invalid)?, what, &["tenant"])?;
    optional_string(options.get("tenant"), "tenant")
}

/// A session id, checked as every session option is (`utp_core::host::check_id`).
fn session_id(session: &str) -> napi::Result<()> {
    utp_core::host::check_id("session", session).map_err(core_err)
}

#[napi]
impl JsEngine {
    /// Run a workflow to its end; resolves to its record (docs/design.md §7):
    /// `{ execution_id, workflow, status, inputs, outputs, error, warnings?, steps,
    /// session_id, tenant, created_at, finished_at }`. A run that fails or is
    /// cancelled still resolves (`status` 'failed' / 'cancelled', `error`); a
    /// definition or inputs that do not validate reject with VALIDATION_FAILED, a
    /// missing file with NOT_FOUND. Options: `session`, `tenant`, `user`, `timeout`
    /// (seconds; wins over the workflow's `timeout`).
    #[napi(
        catch_unwind,
        ts_args_type = "workflow: Record<string, any> | string, inputs?: Record<string, any> | null, options?: { session?: string | null; tenant?: string | null; user?: string | null; timeout?: number | null } | null",
        ts_return_type = "Promise<Record<string, any>>"
    )]
    pub fn run_workflow(
        &self,
        env: &Env,
        workflow: JsJson,
        inputs: JsJson,
        options: StrictJson,
    ) -> napi::Result<AsyncBlock<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let source = workflow_source(workflow)?;
            let inputs = workflow_inputs(inputs)?;
            let options = run_options(options, "runWorkflow")?;
            promise(env, async move {
                engine.run_workflow(source, inputs, options).await.map(|r| r.to_json()).map_err(core_err)
            })
        })
    }

    /// Validate a workflow and start running it; returns the execution id at once
    /// (synchronously). Errors as `runWorkflow`, thrown. Follow the run with
    /// `execution(id)`, `waitExecution(id)` and the `workflow.*` / `step.*` events.
    #[napi(
        catch_unwind,
        ts_args_type = "workflow: Record<string, any> | string, inputs?: Record<string, any> | null, options?: { session?: string | null; tenant?: string | null; user?: string | null; timeout?: number | null } | null"
    )]
    pub fn start_workflow(&self, workflow: JsJson, inputs: JsJson, options: StrictJson) -> napi::Result<String> {
        guard(|| {
            let engine = self.engine()?;
            let source = workflow_source(workflow)?;
            let inputs = workflow_inputs(inputs)?;
            let options = run_options(options, "startWorkflow")?;
            // The run is spawned on napi's tokio runtime (entered here, on the JS thread).
            let exec =
                napi::bindgen_prelude::within_runtime_if_available(|| engine.start_workflow(source, inputs, options))
                    .map_err(core_err)?;
            Ok(exec.id.clone())
        })
    }

    /// Resolve to an execution's full record once it has finished (at once when it
    /// already has). Rejects with NOT_FOUND for an unknown id.
    #[napi(catch_unwind, ts_return_type = "Promise<Record<string, any>>")]
    pub fn wait_execution(&self, env: &Env, execution_id: String) -> napi::Result<AsyncBlock<Value>> {
        guard(|| {
            let engine = self.engine()?;
            promise(
                env,
                async move { engine.wait_execution(&execution_id).await.map(|r| r.to_json()).map_err(core_err) },
            )
        })
    }

    /// Validate a workflow against the registered tools without running anything;
    /// returns the definition as parsed (the object a YAML / JSON text or file holds).
    /// Throws VALIDATION_FAILED listing every problem, NOT_FOUND for a missing file.
    #[napi(
        catch_unwind,
        ts_args_type = "workflow: Record<string, any> | string",
        ts_return_type = "Record<string, any>"
    )]
    pub fn validate_workflow(&self, workflow: JsJson) -> napi::Result<Value> {
        guard(|| {
            let engine = self.engine()?;
            let source = workflow_source(workflow)?;
            Ok(engine.workflow(source).map_err(core_err)?.definition.clone())
        })
    }

    /// An execution's current record (full: inputs, outputs and step outputs).
    /// NOT_FOUND for an unknown id.
    #[napi(catch_unwind, ts_return_type = "Record<string, any>")]
    pub fn execution(&self, execution_id: String) -> napi::Result<Value> {
        guard(|| self.engine()?.execution(&execution_id).map(|r| r.to_json()).map_err(core_err))
    }

    /// The executions kept by the engine, oldest first, as records without inputs,
    /// outputs and step outputs. Options: `status` ('created', 'running',
    /// 'suspended', 'waiting_approval', 'completed', 'failed', 'cancelled'), `session`.
    #[napi(
        catch_unwind,
        ts_args_type = "options?: { status?: string | null; session?: string | null } | null",
        ts_return_type = "Array<Record<string, any>>"
    )]
    pub fn executions(&self, options: StrictJson) -> napi::Result<Vec<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let options = option_map(
                options.0.into_optional("executions options").map_err(invalid)?,
                "executions",
                &["status", "session"],
            )?;
            let status = optional_string(options.get("status"), "status")?;
            let session = optional_string(options.get("session"), "session")?;
            engine
                .executions(status.as_deref(), session.as_deref())
                .map(|l| l.iter().map(|r| r.to_json()).collect())
                .map_err(core_err)
        })
    }

    /// Cancel a run: its running tool calls are cancelled and it ends as
    /// 'cancelled'. False when it had already finished; NOT_FOUND for an unknown id.
    #[napi(catch_unwind)]
    pub fn cancel(&self, execution_id: String) -> napi::Result<bool> {
        guard(|| self.engine()?.cancel(&execution_id).map_err(core_err))
    }

    /// Start no new steps of a run until `resume` (running steps finish). False when
    /// it had finished or was already suspended; NOT_FOUND for an unknown id.
    #[napi(catch_unwind)]
    pub fn suspend(&self, execution_id: String) -> napi::Result<bool> {
        guard(|| self.engine()?.suspend(&execution_id).map_err(core_err))
    }

    /// Let a suspended run go on. False when it was not suspended (or had finished).
    #[napi(catch_unwind)]
    pub fn resume(&self, execution_id: String) -> napi::Result<bool> {
        guard(|| self.engine()?.resume(&execution_id).map_err(core_err))
    }

    /// A session's state (`{}` when it has none): the `state` workflow expressions
    /// read and steps' `set_state` write. Keyed by (tenant, session); options `{ tenant }`.
    #[napi(
        catch_unwind,
        ts_args_type = "session: string, options?: { tenant?: string | null } | null",
        ts_return_type = "Record<string, any>"
    )]
    pub fn session_state(&self, session: String, options: StrictJson) -> napi::Result<Value> {
        guard(|| {
            let engine = self.engine()?;
            session_id(&session)?;
            let tenant = tenant_option(options, "sessionState")?;
            Ok(engine.session_state(tenant.as_deref(), Some(&session)))
        })
    }

    /// Set one key of a session's state (`null` / `undefined` removes it); options
    /// `{ tenant }`. Later runs of that session read it as `state.<key>`.
    #[napi(
        catch_unwind,
        ts_args_type = "session: string, key: string, value: any, options?: { tenant?: string | null } | null"
    )]
    pub fn set_session_state(
        &self,
        session: String,
        key: String,
        value: JsJson,
        options: StrictJson,
    ) -> napi::Result<()> {
        guard(|| {
            let engine = self.engine()?;
            session_id(&session)?;
            if key.is_empty() {
                return Err(invalid("a session state key is a non-empty string (found an empty string)"));
            }
            let value = value.into_optional("value").map_err(invalid)?.unwrap_or(Value::Null);
            let tenant = tenant_option(options, "setSessionState")?;
            if engine.set_session_value(tenant.as_deref(), Some(&session), &key, value) {
                Ok(())
            } else {
                Err(coded(ErrorCode::Internal, format!("session '{session}': the state could not be set")))
            }
        })
    }
}
