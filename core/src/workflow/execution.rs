//! Executions: the record of one run of a workflow (docs/design.md §7 lifecycle and result
//! shape), shared between the task that runs it and the engine API that reads and
//! controls it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::definition::Workflow;
use super::options::RunOptions;
use super::record::{ErrorInfo, ExecutionRecord, ExecutionStatus, StepRecord, StepStatus};
use crate::events::rfc3339;

#[derive(Debug, Clone)]
pub struct StepState {
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

impl Default for StepState {
    fn default() -> Self {
        StepState {
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

impl StepState {
    /// The step's part of the docs/design.md §7 record: step `id`, calling `tool`.
    pub(crate) fn record(&self, id: &str, tool: &str, with_output: bool) -> StepRecord {
        StepRecord {
            id: id.to_string(),
            status: self.status,
            output: with_output.then(|| self.output.clone()),
            error: self.error.clone(),
            attempts: self.attempts,
            started_at: self.started_at.map(rfc3339),
            finished_at: self.finished_at.map(rfc3339),
            note: self.note.clone(),
            approval_id: self.approval_id.clone(),
            tool: tool.to_string(),
        }
    }
}

/// The mutable part of an execution.
#[derive(Debug, Clone)]
pub struct ExecutionState {
    pub status: ExecutionStatus,
    /// Set while suspended or waiting for an approval: the status to go back to.
    pub steps: Vec<StepState>,
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
    /// A new execution of `workflow` for whom `options` say, cancelled by its `cancel` token.
    pub fn new(id: String, workflow: Arc<Workflow>, inputs: Value, options: RunOptions) -> Execution {
        let RunOptions { tenant, session, user, timeout, cancel } = options;
        let cancel = cancel.unwrap_or_default();
        let steps = vec![StepState::default(); workflow.steps.len()];
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

    /// An execution a previous process left unfinished, with the steps it committed
    /// (`options` carry no cancel token: the new one is this process's).
    pub fn restore(
        id: String,
        workflow: Arc<Workflow>,
        inputs: Value,
        options: RunOptions,
        created_at: SystemTime,
        steps: Vec<StepState>,
        suspended: bool,
    ) -> Execution {
        let exec = Execution::new(id, workflow, inputs, RunOptions { cancel: None, ..options });
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

    /// The docs/design.md §7 record ([`ExecutionRecord`]). Without `full`, step outputs and
    /// the run's inputs/outputs are left out (listings).
    pub fn record(&self, full: bool) -> ExecutionRecord {
        let s = self.state.lock();
        let steps = self.workflow.steps.iter().zip(&s.steps).map(|(def, rec)| rec.record(&def.id, &def.tool, full));
        ExecutionRecord {
            execution_id: self.id.clone(),
            workflow: self.workflow.name.clone(),
            status: s.status,
            inputs: full.then(|| self.inputs.clone()),
            outputs: full.then(|| s.outputs.clone()),
            error: s.error.clone(),
            warnings: s.warnings.clone(),
            steps: steps.collect(),
            session_id: self.session.clone(),
            tenant: self.tenant.clone(),
            created_at: rfc3339(s.created_at),
            finished_at: s.finished_at.map(rfc3339),
        }
    }

    /// [`Execution::record`] as JSON.
    pub fn to_value(&self, full: bool) -> Value {
        self.record(full).to_json()
    }
}
