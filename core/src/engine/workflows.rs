//! Workflows on the engine (docs/design.md §7): validate, run, start, inspect and control
//! executions, and session state. The executor itself is `runner`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Engine, durable, runner};
use crate::error::{Error, Result};
use crate::workflow::breaker::Breakers;
use crate::workflow::execution::{Execution, StepState, new_execution_id};
use crate::workflow::{ExecutionRecord, ExecutionStatus, RunOptions, Workflow, WorkflowSource};

impl Engine {
    /// Validate a workflow against the registered tools and compile it. Runs nothing.
    pub fn workflow(&self, source: WorkflowSource) -> Result<Arc<Workflow>> {
        match source {
            WorkflowSource::Compiled(w) => Ok(w),
            WorkflowSource::Definition(v) => Workflow::compile(v, &self.catalogue()),
            WorkflowSource::Text(t) => Workflow::parse_text(&t, &self.catalogue()),
            WorkflowSource::Path(p) => {
                let bytes =
                    std::fs::read(&p).map_err(|e| Error::NotFound(format!("workflow file {}: {e}", p.display())))?;
                let value = crate::parse::parse_document(&bytes, Some(&p))
                    .map_err(|e| Error::InvalidArgument(format!("workflow file {}: {e}", p.display())))?;
                Workflow::compile(value, &self.catalogue()).map_err(|e| match e {
                    Error::ValidationFailed(m) => Error::ValidationFailed(format!("{}: {m}", p.display())),
                    other => other,
                })
            }
        }
    }

    /// Run a workflow to its end and return its record (docs/design.md §7). A run that fails
    /// or is cancelled still returns its record (`status`, `error`, every step);
    /// `Err` is for a definition or inputs that do not validate.
    pub async fn run_workflow(
        &self,
        source: WorkflowSource,
        inputs: Value,
        options: RunOptions,
    ) -> Result<ExecutionRecord> {
        let exec = self.start_workflow(source, inputs, options)?;
        exec.wait().await;
        Ok(exec.record(true))
    }

    /// Validate and start a workflow on the current tokio runtime; returns at once.
    pub fn start_workflow(&self, source: WorkflowSource, inputs: Value, options: RunOptions) -> Result<Arc<Execution>> {
        if self.workflows().shutdown.is_cancelled() {
            return Err(Error::InvalidArgument("the engine is closed".into()));
        }
        let workflow = self.workflow(source)?;
        let inputs = workflow.resolve_inputs(inputs)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Internal("start_workflow needs a tokio runtime".into()))?;
        let exec = Arc::new(Execution::new(new_execution_id(), workflow, inputs, options));
        self.spawn_execution(exec.clone(), false, &runtime);
        Ok(exec)
    }

    fn spawn_execution(&self, exec: Arc<Execution>, recovered: bool, runtime: &tokio::runtime::Handle) {
        self.workflows().executions.insert(exec.clone());
        let engine = self.clone();
        runtime.spawn(async move {
            runner::run(engine.clone(), exec.clone(), recovered).await;
            engine.workflows().executions.finished(&exec.id);
            // Waiters wake only once this task holds no engine: a host that drops its
            // engine as soon as `run_workflow` returns releases the store (and its
            // file lock) at once, so a new engine can open the same file.
            drop(engine);
            exec.notify_finished();
        });
    }

    /// Resume the executions a previous process left unfinished in the store, on the
    /// current tokio runtime: steps it committed keep their results and never run
    /// again; the rest run now. An execution whose workflow no longer validates (a
    /// tool it uses is not registered yet) stays in the store, untouched, for a later
    /// call (after the host registers its tools). Returns the ids resumed; without a
    /// store, none. [`Engine::open`] calls this.
    pub async fn recover(&self) -> Result<Vec<String>> {
        let Some(durable) = self.durable() else {
            return Ok(Vec::new());
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Internal("recover needs a tokio runtime".into()))?;
        let store = durable.store.clone();
        let unfinished = tokio::task::spawn_blocking(move || store.unfinished())
            .await
            .map_err(|e| Error::Internal(format!("reading unfinished executions: {e}")))??;
        let mut resumed = Vec::new();
        for (row, steps) in unfinished {
            if self.workflows().executions.get(&row.id).is_some() {
                continue; // already running in this engine
            }
            let workflow = match Workflow::compile(row.definition.clone(), &self.catalogue()) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(execution = %row.id, "not resumed (call recover again once its tools are registered): {e}");
                    continue;
                }
            };
            let mut records = vec![StepState::default(); workflow.steps.len()];
            for step in &steps {
                if let Some(i) = workflow.steps.iter().position(|s| s.id == step.step_id) {
                    records[i] = durable::step_record(step);
                }
            }
            let exec = Arc::new(Execution::restore(
                row.id.clone(),
                workflow,
                row.inputs.clone(),
                RunOptions {
                    tenant: row.tenant.clone(),
                    session: row.session.clone(),
                    user: row.user.clone(),
                    timeout: row.timeout_ms.map(Duration::from_millis),
                    cancel: None,
                },
                durable::created_at(&row),
                records,
                row.status == "suspended",
            ));
            self.spawn_execution(exec, true, &runtime);
            resumed.push(row.id);
        }
        Ok(resumed)
    }

    fn execution_handle(&self, id: &str) -> Result<Arc<Execution>> {
        self.workflows().executions.get(id).ok_or_else(|| Error::NotFound(format!("no execution with id '{id}'")))
    }

    /// An execution's full record: a live one of this engine, else (with a store)
    /// one a previous process recorded.
    pub fn execution(&self, id: &str) -> Result<ExecutionRecord> {
        if let Some(exec) = self.workflows().executions.get(id) {
            return Ok(exec.record(true));
        }
        if let Some(store) = self.store() {
            if let Some((row, steps)) = store.execution(id)? {
                return durable::record_from_rows(&row, &steps, true);
            }
        }
        Err(Error::NotFound(format!("no execution with id '{id}'")))
    }

    /// Executions (without step outputs), oldest first, optionally by status and
    /// session. With a store: every execution it holds, live ones as they stand now.
    pub fn executions(&self, status: Option<&str>, session: Option<&str>) -> Result<Vec<ExecutionRecord>> {
        let filter = crate::store::ExecutionFilter {
            status: status.map(str::to_string),
            session: session.map(str::to_string),
            ..Default::default()
        };
        let mut list = self.executions_matching(&filter)?;
        list.reverse();
        Ok(list)
    }

    /// Executions (without step outputs) matching `filter` — status, session,
    /// created strictly after / before (RFC 3339), at most `limit` — newest first:
    /// live ones as they stand now, then (with a store) those only the store holds.
    /// Only the executions returned have their steps read.
    pub fn executions_matching(&self, filter: &crate::store::ExecutionFilter) -> Result<Vec<ExecutionRecord>> {
        let status = match filter.status.as_deref() {
            None => None,
            Some(s) => Some(ExecutionStatus::parse(s).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown execution status '{s}' (created, running, suspended, waiting_approval, completed, failed, cancelled)"
                ))
            })?),
        };
        let after = crate::store::parse_opt_time("created_after", filter.created_after.as_deref())?;
        let before = crate::store::parse_opt_time("created_before", filter.created_before.as_deref())?;
        let micros = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros().min(i64::MAX as u128) as i64)
        };
        // (created µs, id, live record or store row)
        enum Found {
            Live(Arc<Execution>),
            Stored(Box<crate::store::ExecutionRow>),
        }
        let mut found: Vec<(i64, String, Found)> = Vec::new();
        for e in self.workflows().executions.all() {
            let created = micros(e.with_state(|s| s.created_at));
            if status.is_some_and(|s| e.status() != s)
                || filter.session.as_deref().is_some_and(|s| e.session.as_deref() != Some(s))
                || after.is_some_and(|a| created <= a)
                || before.is_some_and(|b| created >= b)
            {
                continue;
            }
            found.push((created, e.id.clone(), Found::Live(e)));
        }
        let store = self.store();
        if let Some(store) = &store {
            // Live executions are in the store too: ask for enough rows to fill `limit` without them.
            let live = self.workflows().executions.len();
            let rows =
                crate::store::ExecutionFilter { limit: filter.limit.map(|l| l.saturating_add(live)), ..filter.clone() };
            for row in store.executions(&rows)? {
                // A live execution's own record wins (its status may be newer than its last commit).
                if self.workflows().executions.get(&row.id).is_some() {
                    continue;
                }
                let created = crate::store::parse_time("created_at", &row.created_at).unwrap_or(0);
                found.push((created, row.id.clone(), Found::Stored(Box::new(row))));
            }
        }
        found.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        if let Some(limit) = filter.limit {
            found.truncate(limit);
        }
        found
            .into_iter()
            .map(|(_, _, f)| match f {
                Found::Live(e) => Ok(e.record(false)),
                Found::Stored(row) => {
                    let steps = match &store {
                        Some(store) => store.execution(&row.id)?.map(|(_, steps)| steps).unwrap_or_default(),
                        None => Vec::new(),
                    };
                    durable::record_from_rows(&row, &steps, false)
                }
            })
            .collect()
    }

    /// Events from the store's audit log (every process that used it), in store
    /// order; without a store, this engine's in-memory history in the same shape.
    pub fn stored_events(&self, filter: &crate::store::EventFilter) -> Result<Vec<Value>> {
        if let Some(store) = self.store() {
            return store.events(filter);
        }
        let history = crate::events::HistoryFilter {
            kind: filter.kind.clone(),
            execution_id: filter.execution_id.clone(),
            since: filter.after_id,
            limit: filter.limit,
            ..Default::default()
        };
        Ok(self.history(&history).iter().map(|e| e.to_value()).collect())
    }

    /// Wait for an execution to finish; its full record (one only in the store has finished, or will not run here).
    pub async fn wait_execution(&self, id: &str) -> Result<ExecutionRecord> {
        let Some(exec) = self.workflows().executions.get(id) else {
            return self.execution(id);
        };
        exec.wait().await;
        Ok(exec.record(true))
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
        let set = self.workflows().sessions.set(tenant, session, key, value);
        if set {
            if let Some(commit) = self.persist_session(tenant, session) {
                // A step's writes are covered by its own commit (FIFO writer); an API call's is waited for.
                if let Err(e) = commit.wait_blocking() {
                    tracing::warn!("session state not persisted: {e}");
                }
            }
        }
        set
    }

    /// The circuit breakers, one per tool.
    pub fn breakers(&self) -> &Breakers {
        &self.workflows().breakers
    }
}
