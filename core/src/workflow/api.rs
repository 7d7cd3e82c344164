//! The workflow part of the engine API: validate, run, start, inspect and control
//! executions, and session state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::breaker::Breakers;
use super::definition::Workflow;
use super::execution::{Execution, ExecutionStatus, new_execution_id};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Where a workflow definition comes from.
#[derive(Debug, Clone)]
pub enum WorkflowSource {
    /// A definition already parsed (a dict in Python, an object in JS).
    Definition(Value),
    /// YAML or JSON text.
    Text(String),
    Path(PathBuf),
    /// A workflow validated earlier (`Engine::workflow`).
    Compiled(Arc<Workflow>),
}

impl WorkflowSource {
    /// A string as the bindings and the CLI receive it: a path when it names a file,
    /// else YAML/JSON text.
    pub fn from_text(text: &str) -> WorkflowSource {
        let trimmed = text.trim();
        if !trimmed.contains('\n') && !trimmed.starts_with('{') && std::path::Path::new(trimmed).is_file() {
            return WorkflowSource::Path(PathBuf::from(trimmed));
        }
        if !trimmed.contains('\n') && !trimmed.starts_with('{') && !trimmed.contains(':') {
            // Neither a file nor a definition: say which file was not found.
            return WorkflowSource::Path(PathBuf::from(trimmed));
        }
        WorkflowSource::Text(text.to_string())
    }
}

/// How to run a workflow. Everything is optional.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub tenant: Option<String>,
    /// Session whose state the run reads and writes.
    pub session: Option<String>,
    pub user: Option<String>,
    /// Bounds the whole run; wins over the workflow's `timeout`.
    pub timeout: Option<Duration>,
    /// Cancelling this token cancels the run.
    pub cancel: Option<CancellationToken>,
}

impl Engine {
    /// Validate a workflow against the registered tools and compile it. Runs nothing.
    pub fn workflow(&self, source: WorkflowSource) -> Result<Arc<Workflow>> {
        match source {
            WorkflowSource::Compiled(w) => Ok(w),
            WorkflowSource::Definition(v) => Workflow::compile(v, self),
            WorkflowSource::Text(t) => Workflow::parse_text(&t, self),
            WorkflowSource::Path(p) => {
                let bytes = std::fs::read(&p)
                    .map_err(|e| Error::NotFound(format!("workflow file {}: {e}", p.display())))?;
                let value = crate::parse::parse_document(&bytes, Some(&p))
                    .map_err(|e| Error::InvalidArgument(format!("workflow file {}: {e}", p.display())))?;
                Workflow::compile(value, self).map_err(|e| match e {
                    Error::ValidationFailed(m) => Error::ValidationFailed(format!("{}: {m}", p.display())),
                    other => other,
                })
            }
        }
    }

    /// Run a workflow to its end and return its record (design §7). A run that fails
    /// or is cancelled still returns its record (`status`, `error`, every step);
    /// `Err` is for a definition or inputs that do not validate.
    pub async fn run_workflow(&self, source: WorkflowSource, inputs: Value, options: RunOptions) -> Result<Value> {
        let exec = self.start_workflow(source, inputs, options)?;
        exec.wait().await;
        Ok(exec.to_value(true))
    }

    /// Validate and start a workflow on the current tokio runtime; returns at once.
    pub fn start_workflow(&self, source: WorkflowSource, inputs: Value, options: RunOptions) -> Result<Arc<Execution>> {
        let workflow = self.workflow(source)?;
        let inputs = workflow.resolve_inputs(inputs)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Internal("start_workflow needs a tokio runtime".into()))?;
        let exec = Arc::new(Execution::new(
            new_execution_id(),
            workflow,
            inputs,
            options.tenant,
            options.session,
            options.user,
            options.timeout,
            options.cancel.unwrap_or_default(),
        ));
        self.workflows().executions.insert(exec.clone());
        let (engine, run) = (self.clone(), exec.clone());
        runtime.spawn(async move {
            let id = run.id.clone();
            super::runner::run(engine.clone(), run).await;
            engine.workflows().executions.finished(&id);
        });
        Ok(exec)
    }

    fn execution_handle(&self, id: &str) -> Result<Arc<Execution>> {
        self.workflows().executions.get(id).ok_or_else(|| Error::NotFound(format!("no execution with id '{id}'")))
    }

    /// An execution's full record.
    pub fn execution(&self, id: &str) -> Result<Value> {
        Ok(self.execution_handle(id)?.to_value(true))
    }

    /// Executions (without step outputs), oldest first, optionally by status and session.
    pub fn executions(&self, status: Option<&str>, session: Option<&str>) -> Result<Vec<Value>> {
        let status = match status {
            None => None,
            Some(s) => Some(ExecutionStatus::parse(s).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown execution status '{s}' (created, running, suspended, waiting_approval, completed, failed, cancelled)"
                ))
            })?),
        };
        let mut list: Vec<Arc<Execution>> = self
            .workflows()
            .executions
            .all()
            .into_iter()
            .filter(|e| status.is_none_or(|s| e.status() == s))
            .filter(|e| session.is_none_or(|s| e.session.as_deref() == Some(s)))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list.iter().map(|e| e.to_value(false)).collect())
    }

    /// Wait for an execution to finish; its full record.
    pub async fn wait_execution(&self, id: &str) -> Result<Value> {
        let exec = self.execution_handle(id)?;
        exec.wait().await;
        Ok(exec.to_value(true))
    }

    /// Cancel a run: its running tool calls are cancelled. False when it had finished.
    pub fn cancel(&self, id: &str) -> Result<bool> {
        let exec = self.execution_handle(id)?;
        if exec.status().is_finished() {
            return Ok(false);
        }
        exec.cancel.cancel();
        Ok(true)
    }

    /// Start no new steps until `resume` (running steps finish). False when finished or already suspended.
    pub fn suspend(&self, id: &str) -> Result<bool> {
        let exec = self.execution_handle(id)?;
        if exec.status() == ExecutionStatus::Suspended {
            return Ok(false);
        }
        Ok(exec.suspend())
    }

    pub fn resume(&self, id: &str) -> Result<bool> {
        Ok(self.execution_handle(id)?.resume())
    }

    /// A session's state (`{}` when empty or without a session).
    pub fn session_state(&self, tenant: Option<&str>, session: Option<&str>) -> Value {
        self.workflows().sessions.get(tenant, session)
    }

    /// Set one key of a session's state (`null` removes it). False without a session.
    pub fn set_session_value(&self, tenant: Option<&str>, session: Option<&str>, key: &str, value: Value) -> bool {
        self.workflows().sessions.set(tenant, session, key, value)
    }

    /// The circuit breakers, one per tool.
    pub fn breakers(&self) -> &Breakers {
        &self.workflows().breakers
    }
}
