//! Executions: the record of one run of a workflow (design §7 lifecycle and result
//! shape), shared between the task that runs it and the engine API that reads and
//! controls it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::definition::Workflow;
use crate::error::{Error, ErrorCode};
use crate::events::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionStatus {
    Created,
    Running,
    Suspended,
    WaitingApproval,
    Completed,
    Failed,
    Cancelled,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Created => "created",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Suspended => "suspended",
            ExecutionStatus::WaitingApproval => "waiting_approval",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<ExecutionStatus> {
        Some(match text {
            "created" => ExecutionStatus::Created,
            "running" => ExecutionStatus::Running,
            "suspended" => ExecutionStatus::Suspended,
            "waiting_approval" => ExecutionStatus::WaitingApproval,
            "completed" => ExecutionStatus::Completed,
            "failed" => ExecutionStatus::Failed,
            "cancelled" => ExecutionStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(self, ExecutionStatus::Completed | ExecutionStatus::Failed | ExecutionStatus::Cancelled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl StepStatus {
    pub fn parse(text: &str) -> Option<StepStatus> {
        Some(match text {
            "pending" => StepStatus::Pending,
            "running" => StepStatus::Running,
            "succeeded" => StepStatus::Succeeded,
            "failed" => StepStatus::Failed,
            "skipped" => StepStatus::Skipped,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// An error as recorded: code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorInfo {
    pub fn of(e: &Error) -> ErrorInfo {
        ErrorInfo { code: e.code(), message: e.to_string() }
    }

    pub fn to_value(&self) -> Value {
        json!({"code": self.code.as_str(), "message": self.message})
    }

    pub fn to_error(&self) -> Error {
        Error::with_code(self.code, self.message.clone())
    }
}

#[derive(Debug, Clone)]
pub struct StepRecord {
    pub status: StepStatus,
    pub output: Value,
    pub error: Option<ErrorInfo>,
    pub attempts: u32,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// Why a step was skipped, or that a fallback produced its output.
    pub note: Option<String>,
    pub approval_id: Option<String>,
}

impl Default for StepRecord {
    fn default() -> Self {
        StepRecord {
            status: StepStatus::Pending,
            output: Value::Null,
            error: None,
            attempts: 0,
            started_at: None,
            finished_at: None,
            note: None,
            approval_id: None,
        }
    }
}

impl StepRecord {
    /// The step's part of the design §7 record, with the tool it calls.
    pub(crate) fn to_value(&self, tool: &str, with_output: bool) -> Value {
        let mut m = Map::new();
        m.insert("status".into(), self.status.as_str().into());
        if with_output {
            m.insert("output".into(), self.output.clone());
        }
        m.insert("error".into(), self.error.as_ref().map_or(Value::Null, ErrorInfo::to_value));
        m.insert("attempts".into(), self.attempts.into());
        m.insert("started_at".into(), self.started_at.map_or(Value::Null, |t| rfc3339(t).into()));
        m.insert("finished_at".into(), self.finished_at.map_or(Value::Null, |t| rfc3339(t).into()));
        if let Some(note) = &self.note {
            m.insert("note".into(), note.clone().into());
        }
        if let Some(id) = &self.approval_id {
            m.insert("approval_id".into(), id.clone().into());
        }
        m.insert("tool".into(), tool.into());
        Value::Object(m)
    }
}

/// The design §7 record of an execution, from a live one or one the store holds:
/// `{execution_id, workflow, status, inputs, outputs, error, warnings?, steps, session_id,
/// tenant, created_at, finished_at}`; without `full`, inputs, outputs and step outputs are left out.
pub(crate) struct Record<'a> {
    pub id: &'a str,
    pub workflow: &'a str,
    pub status: &'a str,
    pub inputs: &'a Value,
    pub outputs: &'a Value,
    pub error: Value,
    pub warnings: &'a [String],
    pub session: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// Each step's value (`StepRecord::to_value`), by id, in definition order.
    pub steps: Map<String, Value>,
}

impl Record<'_> {
    pub(crate) fn into_value(self, full: bool) -> Value {
        let mut m = Map::new();
        m.insert("execution_id".into(), self.id.into());
        m.insert("workflow".into(), self.workflow.into());
        m.insert("status".into(), self.status.into());
        if full {
            m.insert("inputs".into(), self.inputs.clone());
            m.insert("outputs".into(), self.outputs.clone());
        }
        m.insert("error".into(), self.error);
        if !self.warnings.is_empty() {
            m.insert("warnings".into(), json!(self.warnings));
        }
        m.insert("steps".into(), Value::Object(self.steps));
        m.insert("session_id".into(), self.session.map_or(Value::Null, Value::from));
        m.insert("tenant".into(), self.tenant.map_or(Value::Null, Value::from));
        m.insert("created_at".into(), self.created_at.into());
        m.insert("finished_at".into(), self.finished_at.map_or(Value::Null, Value::String));
        Value::Object(m)
    }
}

/// The mutable part of an execution.
#[derive(Debug, Clone)]
pub struct ExecutionState {
    pub status: ExecutionStatus,
    /// Set while suspended or waiting for an approval: the status to go back to.
    pub steps: Vec<StepRecord>,
    pub outputs: Value,
    pub error: Option<ErrorInfo>,
    pub created_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    /// Steps currently waiting for an approval (the execution is `waiting_approval` while > 0).
    pub waiting_approvals: usize,
    pub suspended: bool,
    /// Outputs that could not be evaluated (they are null).
    pub warnings: Vec<String>,
}

/// One run of a workflow.
pub struct Execution {
    pub id: String,
    pub workflow: Arc<Workflow>,
    pub tenant: Option<String>,
    pub session: Option<String>,
    pub user: Option<String>,
    pub inputs: Value,
    /// Bounds the run (the run option, else the workflow's `timeout`).
    pub timeout: Option<std::time::Duration>,
    state: Mutex<ExecutionState>,
    /// Cancelling ends the run: running steps' calls are cancelled.
    pub cancel: CancellationToken,
    /// True while suspended: the runner starts no new steps.
    suspend: watch::Sender<bool>,
    /// Flips to true once the execution has finished.
    done: watch::Sender<bool>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// `exe_<time><seq>`: unique per process, ordered by creation.
pub fn new_execution_id() -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = jiff::Timestamp::now().as_nanosecond() as u64;
    format!("exe_{:012x}{:06x}", (nanos / 1000) & 0xffff_ffff_ffff, seq & 0xff_ffff)
}

impl Execution {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        workflow: Arc<Workflow>,
        inputs: Value,
        tenant: Option<String>,
        session: Option<String>,
        user: Option<String>,
        timeout: Option<std::time::Duration>,
        cancel: CancellationToken,
    ) -> Execution {
        let steps = vec![StepRecord::default(); workflow.steps.len()];
        let timeout = timeout.or(workflow.timeout);
        Execution {
            id,
            workflow,
            tenant,
            session,
            user,
            inputs,
            timeout,
            state: Mutex::new(ExecutionState {
                status: ExecutionStatus::Created,
                steps,
                outputs: Value::Null,
                error: None,
                created_at: SystemTime::now(),
                finished_at: None,
                waiting_approvals: 0,
                suspended: false,
                warnings: Vec::new(),
            }),
            cancel,
            suspend: watch::Sender::new(false),
            done: watch::Sender::new(false),
        }
    }

    pub fn status(&self) -> ExecutionStatus {
        self.state.lock().status
    }

    /// Run `f` on the state under the lock.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut ExecutionState) -> T) -> T {
        f(&mut self.state.lock())
    }

    pub fn snapshot(&self) -> ExecutionState {
        self.state.lock().clone()
    }

    /// The state without its steps (what an execution's header row holds).
    pub fn snapshot_header(&self) -> ExecutionState {
        let s = self.state.lock();
        ExecutionState {
            status: s.status,
            steps: Vec::new(),
            outputs: s.outputs.clone(),
            error: s.error.clone(),
            created_at: s.created_at,
            finished_at: s.finished_at,
            waiting_approvals: s.waiting_approvals,
            suspended: s.suspended,
            warnings: s.warnings.clone(),
        }
    }

    /// An execution a previous process left unfinished, with the steps it committed.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        id: String,
        workflow: Arc<Workflow>,
        inputs: Value,
        tenant: Option<String>,
        session: Option<String>,
        user: Option<String>,
        timeout: Option<std::time::Duration>,
        created_at: SystemTime,
        steps: Vec<StepRecord>,
        suspended: bool,
    ) -> Execution {
        let exec = Execution::new(id, workflow, inputs, tenant, session, user, timeout, CancellationToken::new());
        {
            let mut s = exec.state.lock();
            s.created_at = created_at;
            for (slot, rec) in s.steps.iter_mut().zip(steps) {
                *slot = rec;
            }
            s.suspended = suspended;
            // It was running before: it does not go back to `created` while its task starts.
            s.status = ExecutionStatus::Running;
            Execution::refresh_status(&mut s);
        }
        exec.suspend.send_replace(suspended);
        exec
    }

    /// The live status, derived from the flags the runner and the API set.
    pub fn refresh_status(state: &mut ExecutionState) {
        if state.status.is_finished() || state.status == ExecutionStatus::Created {
            return;
        }
        state.status = if state.waiting_approvals > 0 {
            ExecutionStatus::WaitingApproval
        } else if state.suspended {
            ExecutionStatus::Suspended
        } else {
            ExecutionStatus::Running
        };
    }

    /// Ask the runner to start no new steps. False when the execution already finished.
    pub fn suspend(&self) -> bool {
        let mut s = self.state.lock();
        if s.status.is_finished() {
            return false;
        }
        s.suspended = true;
        Execution::refresh_status(&mut s);
        self.suspend.send_replace(true);
        true
    }

    pub fn resume(&self) -> bool {
        let mut s = self.state.lock();
        if s.status.is_finished() || !s.suspended {
            return false;
        }
        s.suspended = false;
        Execution::refresh_status(&mut s);
        self.suspend.send_replace(false);
        true
    }

    pub fn suspended(&self) -> watch::Receiver<bool> {
        self.suspend.subscribe()
    }

    /// Record the end. Waiters are woken by `notify_finished`, once the final event is out.
    pub fn finish(&self, status: ExecutionStatus, outputs: Value, error: Option<ErrorInfo>) {
        let mut s = self.state.lock();
        s.status = status;
        s.outputs = outputs;
        s.error = error;
        s.finished_at = Some(SystemTime::now());
    }

    pub fn notify_finished(&self) {
        self.done.send_replace(true);
    }

    /// Wait until the execution has finished.
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// The design §7 record: `{execution_id, workflow, status, inputs, outputs, error,
    /// steps: {id: {status, output, error, attempts, started_at, finished_at}}, session_id, tenant}`.
    /// Without `full`, step outputs and the run's inputs/outputs are left out (listings).
    pub fn to_value(&self, full: bool) -> Value {
        let s = self.state.lock();
        let steps = self.workflow.steps.iter().zip(&s.steps).map(|(def, rec)| (def.id.clone(), rec.to_value(&def.tool, full)));
        Record {
            id: &self.id,
            workflow: &self.workflow.name,
            status: s.status.as_str(),
            inputs: &self.inputs,
            outputs: &s.outputs,
            error: s.error.as_ref().map_or(Value::Null, ErrorInfo::to_value),
            warnings: &s.warnings,
            session: self.session.as_deref(),
            tenant: self.tenant.as_deref(),
            created_at: rfc3339(s.created_at),
            finished_at: s.finished_at.map(rfc3339),
            steps: steps.collect(),
        }
        .into_value(full)
    }
}
