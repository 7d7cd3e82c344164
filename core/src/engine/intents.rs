//! Intents (from the original UTP runtime contracts): a named kind of request routed
//! to a registered workflow or host handler, with an execution context.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::RwLock;
use serde_json::{Value, json};

use super::Engine;
use crate::error::{Error, Result};
use crate::workflow::execution::new_execution_id;
use crate::workflow::{RunOptions, Workflow, WorkflowSource};

/// A host function handling an intent: `(context, params) -> output`.
pub type IntentHandler = Arc<dyn Fn(IntentContext, Value) -> BoxFuture<'static, Result<Value>> + Send + Sync>;

/// Where an intent goes.
#[derive(Clone)]
pub enum IntentTarget {
    /// Run this workflow with the intent's params as its inputs.
    Workflow(Arc<Workflow>),
    Handler(IntentHandler),
}

/// What a handler knows about the request it serves, and its way to the session state.
#[derive(Clone)]
pub struct IntentContext {
    pub execution_id: String,
    pub intent: String,
    pub tenant: Option<String>,
    pub session: Option<String>,
    engine: Engine,
}

impl IntentContext {
    /// The session's state (`{}` without a session).
    pub fn state(&self) -> Value {
        self.engine.session_state(self.tenant.as_deref(), self.session.as_deref())
    }

    /// Set one key of the session's state; false without a session.
    pub fn set_state(&self, key: &str, value: Value) -> bool {
        self.engine.set_session_value(self.tenant.as_deref(), self.session.as_deref(), key, value)
    }

    /// The engine, to call tools or run workflows from the handler.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn to_value(&self) -> Value {
        json!({"execution_id": self.execution_id, "intent": self.intent, "tenant": self.tenant, "session_id": self.session})
    }
}

#[derive(Default)]
pub struct Intents {
    targets: RwLock<BTreeMap<String, IntentTarget>>,
}

impl Engine {
    /// Route `intent_type` to a workflow or a handler. Names are unique.
    pub fn register_intent(&self, intent_type: &str, target: IntentTarget) -> Result<()> {
        if intent_type.trim().is_empty() {
            return Err(Error::InvalidArgument("an intent needs a type name".into()));
        }
        let mut targets = self.inner.intents.targets.write();
        if targets.contains_key(intent_type) {
            return Err(Error::AlreadyExists(format!("intent '{intent_type}' is already registered")));
        }
        targets.insert(intent_type.to_string(), target);
        Ok(())
    }

    /// Validate `source` and route `intent_type` to it.
    pub fn register_intent_workflow(&self, intent_type: &str, source: WorkflowSource) -> Result<()> {
        let workflow = self.workflow(source)?;
        self.register_intent(intent_type, IntentTarget::Workflow(workflow))
    }

    pub fn unregister_intent(&self, intent_type: &str) -> bool {
        self.inner.intents.targets.write().remove(intent_type).is_some()
    }

    /// Registered intent types, sorted.
    pub fn intents(&self) -> Vec<String> {
        self.inner.intents.targets.read().keys().cloned().collect()
    }

    /// Handle a request: a workflow intent returns its execution record (with
    /// `intent`); a handler intent returns `{execution_id, intent, status, output,
    /// error, tenant, session_id}`. A handler's failure is a `failed` record, as a
    /// workflow's is; `Err` is for an unknown intent or params a workflow refuses.
    pub async fn submit_intent(
        &self,
        intent_type: &str,
        params: Value,
        tenant: Option<&str>,
        session: Option<&str>,
    ) -> Result<Value> {
        let target = self.inner.intents.targets.read().get(intent_type).cloned().ok_or_else(|| {
            Error::NotFound(format!("no intent named '{intent_type}' (registered: {})", self.intents().join(", ")))
        })?;
        match target {
            IntentTarget::Workflow(workflow) => {
                let options = RunOptions {
                    tenant: tenant.map(str::to_string),
                    session: session.map(str::to_string),
                    ..RunOptions::default()
                };
                let mut record =
                    self.run_workflow(WorkflowSource::Compiled(workflow), params, options).await?.to_json();
                record["intent"] = Value::String(intent_type.to_string());
                Ok(record)
            }
            IntentTarget::Handler(handler) => {
                let context = IntentContext {
                    execution_id: new_execution_id(),
                    intent: intent_type.to_string(),
                    tenant: tenant.map(str::to_string),
                    session: session.map(str::to_string),
                    engine: self.clone(),
                };
                let mut record = context.to_value();
                let outcome = std::panic::AssertUnwindSafe(handler(context, params)).catch_unwind().await;
                let result =
                    outcome.unwrap_or_else(|p| Err(Error::from_panic(p.as_ref(), &format!("intent '{intent_type}'"))));
                match result {
                    Ok(output) => {
                        record["status"] = "completed".into();
                        record["output"] = output;
                        record["error"] = Value::Null;
                    }
                    Err(e) => {
                        record["status"] = "failed".into();
                        record["output"] = Value::Null;
                        record["error"] = json!({"code": e.code().as_str(), "message": e.to_string()});
                    }
                }
                Ok(record)
            }
        }
    }
}
