//! The in-memory store: the same semantics as the SQLite one, nothing survives the process.

use std::collections::{BTreeMap, HashMap, HashSet};

use parking_lot::Mutex;
use serde_json::Value;

use super::{
    Commit, EventFilter, ExecutionFilter, ExecutionRow, PreparedApproval, PreparedEvent, PreparedExecution, StepRow,
    Store, event_range, execution_range, is_unfinished, parse_time, prepare_approval, prepare_events,
    prepare_execution, prepare_step, prepare_steps_of, with_seq,
};
use crate::error::{Error, Result};
use crate::events::Pattern;

/// Maps under one mutex; every write is committed when the call returns.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    executions: HashMap<String, PreparedExecution>,
    /// execution id → step id → step.
    steps: HashMap<String, HashMap<String, StepRow>>,
    events: BTreeMap<i64, PreparedEvent>,
    last_seq: i64,
    event_ids: HashSet<i64>,
    approvals: HashMap<String, PreparedApproval>,
    sessions: BTreeMap<(String, String), Value>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Inner {
    fn append_events(&mut self, events: Vec<PreparedEvent>) {
        for e in events {
            if e.event_id.is_some_and(|id| !self.event_ids.insert(id)) {
                continue;
            }
            self.last_seq += 1;
            self.events.insert(self.last_seq, e);
        }
    }

    fn steps_of(&self, id: &str) -> Vec<StepRow> {
        let mut steps: Vec<StepRow> = self.steps.get(id).map(|m| m.values().cloned().collect()).unwrap_or_default();
        steps.sort_by(|a, b| (a.index, &a.step_id).cmp(&(b.index, &b.step_id)));
        steps
    }
}

impl Store for MemoryStore {
    fn put_execution_with_steps(&self, row: ExecutionRow, steps: Vec<StepRow>, events: Vec<Value>) -> Commit {
        let prepared = match prepare_execution(row) {
            Ok(p) => p,
            Err(e) => return Commit::ready(Err(e)),
        };
        if let Err(e) = prepare_steps_of(&prepared.row.id, &steps) {
            return Commit::ready(Err(e));
        }
        let events = match prepare_events(events) {
            Ok(e) => e,
            Err(e) => return Commit::ready(Err(e)),
        };
        let mut inner = self.inner.lock();
        let id = prepared.row.id.clone();
        inner.executions.insert(id.clone(), prepared);
        let records = inner.steps.entry(id).or_default();
        for step in steps {
            records.insert(step.step_id.clone(), step);
        }
        inner.append_events(events);
        Commit::ready(Ok(()))
    }

    fn put_step(&self, step: StepRow, execution_status: Option<String>, events: Vec<Value>) -> Commit {
        if let Err(e) = prepare_step(&step) {
            return Commit::ready(Err(e));
        }
        let events = match prepare_events(events) {
            Ok(e) => e,
            Err(e) => return Commit::ready(Err(e)),
        };
        let mut inner = self.inner.lock();
        let Some(execution) = inner.executions.get_mut(&step.execution_id) else {
            return Commit::ready(Err(Error::NotFound(format!(
                "put_step: execution '{}' is not in the store (put_execution first)",
                step.execution_id
            ))));
        };
        if let Some(status) = execution_status {
            execution.row.status = status;
        }
        inner.steps.entry(step.execution_id.clone()).or_default().insert(step.step_id.clone(), step);
        inner.append_events(events);
        Commit::ready(Ok(()))
    }

    fn put_events(&self, events: Vec<Value>) -> Commit {
        match prepare_events(events) {
            Ok(events) => {
                self.inner.lock().append_events(events);
                Commit::ready(Ok(()))
            }
            Err(e) => Commit::ready(Err(e)),
        }
    }

    fn put_approval(&self, approval: Value) -> Commit {
        match prepare_approval(approval) {
            Ok(a) => {
                self.inner.lock().approvals.insert(a.id.clone(), a);
                Commit::ready(Ok(()))
            }
            Err(e) => Commit::ready(Err(e)),
        }
    }

    fn put_session_state(&self, tenant: &str, session: &str, state: Value) -> Commit {
        self.inner.lock().sessions.insert((tenant.to_string(), session.to_string()), state);
        Commit::ready(Ok(()))
    }

    fn execution(&self, id: &str) -> Result<Option<(ExecutionRow, Vec<StepRow>)>> {
        let inner = self.inner.lock();
        Ok(inner.executions.get(id).map(|e| (e.row.clone(), inner.steps_of(id))))
    }

    fn executions(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRow>> {
        let range = execution_range(filter)?;
        let inner = self.inner.lock();
        let mut rows: Vec<&PreparedExecution> = inner
            .executions
            .values()
            .filter(|e| filter.status.as_ref().is_none_or(|s| &e.row.status == s))
            .filter(|e| filter.session.as_ref().is_none_or(|s| e.row.session.as_ref() == Some(s)))
            .filter(|e| range.after.is_none_or(|t| e.created_us > t))
            .filter(|e| range.before.is_none_or(|t| e.created_us < t))
            .collect();
        rows.sort_by(|a, b| (b.created_us, &b.row.id).cmp(&(a.created_us, &a.row.id)));
        Ok(rows.into_iter().take(filter.limit.unwrap_or(usize::MAX)).map(|e| e.row.clone()).collect())
    }

    fn unfinished(&self) -> Result<Vec<(ExecutionRow, Vec<StepRow>)>> {
        let inner = self.inner.lock();
        let mut rows: Vec<&PreparedExecution> =
            inner.executions.values().filter(|e| is_unfinished(&e.row.status)).collect();
        rows.sort_by(|a, b| (a.created_us, &a.row.id).cmp(&(b.created_us, &b.row.id)));
        Ok(rows.into_iter().map(|e| (e.row.clone(), inner.steps_of(&e.row.id))).collect())
    }

    fn events(&self, filter: &EventFilter) -> Result<Vec<Value>> {
        let range = event_range(filter)?;
        let pattern = filter.kind.as_deref().map(Pattern::new);
        let after = filter.after_id.map(|a| i64::try_from(a).unwrap_or(i64::MAX)).unwrap_or(0);
        let inner = self.inner.lock();
        Ok(inner
            .events
            .range(after.saturating_add(1)..)
            .filter(|(_, e)| filter.execution_id.as_ref().is_none_or(|x| e.execution_id.as_ref() == Some(x)))
            .filter(|(_, e)| pattern.as_ref().is_none_or(|p| p.matches(&e.kind)))
            .filter(|(_, e)| range.after.is_none_or(|t| e.time_us >= t))
            .filter(|(_, e)| range.before.is_none_or(|t| e.time_us < t))
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|(seq, e)| with_seq(e.body.clone(), *seq))
            .collect())
    }

    fn approvals(&self, pending_only: bool) -> Result<Vec<Value>> {
        let inner = self.inner.lock();
        let mut rows: Vec<&PreparedApproval> =
            inner.approvals.values().filter(|a| !pending_only || a.status == "pending").collect();
        rows.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(rows.into_iter().map(|a| a.body.clone()).collect())
    }

    fn session_states(&self) -> Result<Vec<(String, String, Value)>> {
        let inner = self.inner.lock();
        Ok(inner.sessions.iter().map(|((t, s), v)| (t.clone(), s.clone(), v.clone())).collect())
    }

    fn prune(&self, cutoff: &str, batch: usize) -> Result<usize> {
        let cutoff = parse_time("prune cutoff", cutoff)?;
        let _ = batch.max(1); // one lock, one "transaction": batching only matters for SQLite
        let mut inner = self.inner.lock();
        let mut deleted = 0;
        let old: Vec<String> = inner
            .executions
            .values()
            .filter(|e| !is_unfinished(&e.row.status) && e.finished_us.unwrap_or(e.created_us) < cutoff)
            .map(|e| e.row.id.clone())
            .collect();
        for id in old {
            inner.executions.remove(&id);
            deleted += 1 + inner.steps.remove(&id).map_or(0, |s| s.len());
        }
        let keep: HashSet<String> =
            inner.executions.values().filter(|e| is_unfinished(&e.row.status)).map(|e| e.row.id.clone()).collect();
        let old_events: Vec<i64> = inner
            .events
            .iter()
            .filter(|(_, e)| e.time_us < cutoff && e.execution_id.as_ref().is_none_or(|x| !keep.contains(x)))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in old_events {
            if let Some(e) = inner.events.remove(&seq) {
                if let Some(id) = e.event_id {
                    inner.event_ids.remove(&id);
                }
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
