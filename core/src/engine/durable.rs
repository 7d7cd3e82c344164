//! The engine's link to its store (docs/design.md §9): which store the config asks for,
//! how executions, steps, approvals and session state become rows, and what a
//! new process takes back from a store a previous one wrote.
//!
//! What is written, and when:
//! - an execution's header with `workflow.started` when it starts, with its final
//!   event (`workflow.completed | error | cancelled`) when it ends;
//! - each step's record with its `step.completed | failed | skipped` event and the
//!   execution's status, in one commit, before its dependants start;
//! - every other event through the bus's sink, deferred in publish order into the
//!   next commit (so a step's commit also makes the events before it durable), or
//!   committed on its own within 10 ms when no commit comes;
//! - approvals when requested and resolved; a session's state when it changes.
//!
//! With `store: memory` (the default) nothing of this runs: the engine's own maps
//! are the store.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::config::{Config, parse_duration};
use crate::domain::ApprovalInfo;
use crate::error::{Error, Result};
use crate::events::{Event, EventBus, kinds, rfc3339};
use crate::store::{Durability, ExecutionRow, StepRow, Store, open_store};
use crate::workflow::execution::{Execution, StepState};
use crate::workflow::{ErrorInfo, ExecutionRecord, ExecutionStatus, StepStatus};

/// The `store` section: `"sqlite:PATH"` / `"memory"`, or
/// `{url, durability: sync|normal|off, retention: 30d, recover: true, read_only: false}`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub url: String,
    pub durability: Durability,
    /// Finished executions and events older than this are deleted (in batches, hourly or sooner).
    pub retention: Option<Duration>,
    /// Resume executions left unfinished by a previous process when the engine opens.
    pub recover: bool,
    /// Inspection only ([`crate::store::open_store_read_only`]): no lock (works while
    /// another engine holds the file), nothing written, nothing resumed (`recover` is
    /// off), no retention; the database must exist. `utp executions` / `show` / `events`.
    pub read_only: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "memory".into(),
            durability: Durability::Normal,
            retention: None,
            recover: true,
            read_only: false,
        }
    }
}

impl StoreConfig {
    /// From the config's `store` section; a relative SQLite path is resolved
    /// against the config file's folder, as manual paths are.
    pub fn from_config(config: &Config) -> Result<StoreConfig> {
        let mut out = StoreConfig::default();
        match config.other.get("store") {
            None | Some(Value::Null) => return Ok(out),
            Some(Value::String(s)) => out.url = s.clone(),
            Some(Value::Object(m)) => {
                for (key, value) in m {
                    let bad = |what: &str| {
                        Error::InvalidArgument(format!("config store.{key}: expected {what}, found {value}"))
                    };
                    match key.as_str() {
                        "url" | "path" => out.url = value.as_str().ok_or_else(|| bad("a string"))?.to_string(),
                        "durability" => out.durability = value.as_str().ok_or_else(|| bad("a string"))?.parse()?,
                        "retention" => {
                            out.retention = Some(
                                parse_duration(value)
                                    .map_err(|e| Error::InvalidArgument(format!("config store.retention: {e}")))?,
                            )
                        }
                        "recover" => out.recover = value.as_bool().ok_or_else(|| bad("true or false"))?,
                        "read_only" => out.read_only = value.as_bool().ok_or_else(|| bad("true or false"))?,
                        _ => {
                            return Err(Error::InvalidArgument(format!(
                                "config store: unknown key '{key}' (url, durability, retention, recover, read_only)"
                            )));
                        }
                    }
                }
                if key_is_path_only(m) {
                    out.url = format!("sqlite:{}", out.url);
                }
            }
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "config store: expected \"memory\", \"sqlite:PATH\" or a mapping, found {other}"
                )));
            }
        }
        if let Some(path) = out.url.strip_prefix("sqlite:") {
            let resolved = config.resolve_path(std::path::Path::new(path));
            out.url = format!("sqlite:{}", resolved.display());
        }
        if out.read_only {
            out.recover = false;
            out.retention = None;
        }
        Ok(out)
    }

    pub fn is_memory(&self) -> bool {
        self.url.trim() == "memory"
    }
}

/// `{path: ...}` names a SQLite file without the `sqlite:` prefix.
fn key_is_path_only(m: &Map<String, Value>) -> bool {
    m.contains_key("path") && !m.contains_key("url")
}

/// An engine's open store and its retention worker.
pub(crate) struct Durable {
    pub store: Arc<dyn Store>,
    pub config: StoreConfig,
    /// Held for its Drop: stops and joins the worker.
    _retention: Option<RetentionWorker>,
}

struct RetentionWorker {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RetentionWorker {
    fn drop(&mut self) {
        // Disconnecting wakes the worker; joining means the store is released when the engine is.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Rows pruned per transaction, so running executions' commits interleave.
const PRUNE_BATCH: usize = 500;

impl Durable {
    /// Open the store the config names (`None` for memory) and hook the bus's sink to it.
    pub fn open(config: StoreConfig, events: &EventBus) -> Result<Option<Durable>> {
        if config.is_memory() {
            return Ok(None);
        }
        if config.read_only {
            // Nothing to write: no folder, no sink for this engine's events, no retention.
            let store = crate::store::open_store_read_only(&config.url)?;
            return Ok(Some(Durable { store, config, _retention: None }));
        }
        if let Some(path) = config.url.trim().strip_prefix("sqlite:") {
            if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    crate::store::store_error(format!(
                        "store {}: cannot create folder {}: {e}",
                        config.url,
                        dir.display()
                    ))
                })?;
            }
        }
        let store = open_store(&config.url, config.durability)?;
        let weak: Weak<dyn Store> = Arc::downgrade(&store);
        events.set_sink(Box::new(move |event| {
            if written_with_transition(event) {
                return;
            }
            if let Some(store) = weak.upgrade() {
                // Not awaited: it rides in the next commit (a step's, typically).
                store.defer_events(vec![event.to_value()]);
            }
        }));
        let retention = config.retention.map(|age| RetentionWorker::start(store.clone(), age));
        Ok(Some(Durable { store, config, _retention: retention }))
    }

    /// Delete finished executions and events older than `age`; rows deleted.
    pub fn prune(&self, age: Duration) -> Result<usize> {
        prune(&*self.store, age)
    }
}

fn prune(store: &dyn Store, age: Duration) -> Result<usize> {
    let cutoff = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
    store.prune(&rfc3339(cutoff), PRUNE_BATCH)
}

impl RetentionWorker {
    fn start(store: Arc<dyn Store>, age: Duration) -> RetentionWorker {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // Often enough that nothing outlives its age by more than a tenth of it, at most hourly.
        let every = (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let thread = std::thread::Builder::new()
            .name("utp-retention".into())
            .spawn(move || {
                loop {
                    if let Err(e) = prune(&*store, age) {
                        tracing::warn!("store retention: {e}");
                    }
                    match stopped.recv_timeout(every) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .ok();
        RetentionWorker { stop: Some(stop), thread }
    }
}

/// Events the runner writes together with the state change they report, so that
/// a crash never leaves one without the other (and a recovery never repeats one).
fn written_with_transition(event: &Event) -> bool {
    event.execution_id.is_some()
        && matches!(
            &*event.kind,
            kinds::WORKFLOW_STARTED
                | kinds::STEP_COMPLETED
                | kinds::STEP_FAILED
                | kinds::STEP_SKIPPED
                | kinds::WORKFLOW_COMPLETED
                | kinds::WORKFLOW_ERROR
                | kinds::WORKFLOW_CANCELLED
        )
}

// ---------------------------------------------------------------------------------------
// Rows

fn opt_time(t: Option<SystemTime>) -> Option<String> {
    t.map(rfc3339)
}

fn error_value(e: &Option<ErrorInfo>) -> Value {
    e.as_ref().map_or(Value::Null, ErrorInfo::to_value)
}

/// The execution's header as it stands.
pub(crate) fn execution_row(exec: &Execution) -> ExecutionRow {
    let s = exec.snapshot_header();
    ExecutionRow {
        id: exec.id.clone(),
        workflow: exec.workflow.name.clone(),
        definition: exec.workflow.definition.clone(),
        status: s.status.as_str().to_string(),
        inputs: exec.inputs.clone(),
        outputs: s.outputs,
        error: error_value(&s.error),
        warnings: s.warnings,
        tenant: exec.tenant.clone(),
        session: exec.session.clone(),
        user: exec.user.clone(),
        timeout_ms: exec.timeout.map(|t| t.as_millis().min(u64::MAX as u128) as u64),
        created_at: rfc3339(s.created_at),
        finished_at: opt_time(s.finished_at),
    }
}

/// Step `i`'s record as it stands, and the execution's status.
pub(crate) fn step_row(exec: &Execution, i: usize) -> (StepRow, String) {
    exec.with_state(|s| {
        let rec = &s.steps[i];
        let row = StepRow {
            execution_id: exec.id.clone(),
            step_id: exec.workflow.steps[i].id.clone(),
            index: i as u32,
            status: rec.status.as_str().to_string(),
            output: rec.output.clone(),
            error: error_value(&rec.error),
            attempts: rec.attempts,
            started_at: opt_time(rec.started_at),
            finished_at: opt_time(rec.finished_at),
            note: rec.note.clone(),
            approval_id: rec.approval_id.clone(),
        };
        (row, s.status.as_str().to_string())
    })
}

fn parse_system_time(text: &str) -> Option<SystemTime> {
    let ts: jiff::Timestamp = text.parse().ok()?;
    let micros = ts.as_microsecond();
    if micros < 0 {
        return Some(SystemTime::UNIX_EPOCH);
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(micros as u64))
}

fn error_info(v: &Value) -> Option<ErrorInfo> {
    let code = v.get("code")?.as_str()?;
    Some(ErrorInfo {
        code: crate::error::ErrorCode::from_name(code).unwrap_or(crate::error::ErrorCode::Internal),
        message: v.get("message").and_then(Value::as_str).unwrap_or_default().to_string(),
    })
}

/// A step's record as a previous process committed it.
fn stored_step(row: &StepRow) -> StepState {
    let status = StepStatus::parse(&row.status).unwrap_or(StepStatus::Pending);
    StepState {
        status,
        output: row.output.clone(),
        error: error_info(&row.error),
        attempts: row.attempts,
        started_at: row.started_at.as_deref().and_then(parse_system_time),
        finished_at: row.finished_at.as_deref().and_then(parse_system_time),
        note: row.note.clone(),
        approval_id: row.approval_id.clone(),
    }
}

/// A step's record to resume from: one that was running (or waiting for an
/// approval) when the previous process stopped is pending again: it re-runs.
pub(crate) fn step_record(row: &StepRow) -> StepState {
    let mut rec = stored_step(row);
    if matches!(rec.status, StepStatus::Pending | StepStatus::Running) {
        rec.status = StepStatus::Pending;
        rec.output = Value::Null;
        rec.error = None;
        rec.finished_at = None;
    }
    rec
}

pub(crate) fn created_at(row: &ExecutionRow) -> SystemTime {
    parse_system_time(&row.created_at).unwrap_or_else(SystemTime::now)
}

/// The docs/design.md §7 record of an execution known only to the store (a previous
/// process ran it), in the same shape as [`Execution::record`]: steps in
/// definition order, those never committed as pending.
pub(crate) fn record_from_rows(row: &ExecutionRow, steps: &[StepRow], full: bool) -> Result<ExecutionRecord> {
    let status = ExecutionStatus::parse(&row.status).ok_or_else(|| {
        crate::store::store_error(format!("execution '{}' has an unknown status '{}' in the store", row.id, row.status))
    })?;
    let defined = row.definition.get("steps").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    let step_records = defined
        .iter()
        .map(|def| {
            let (id, tool) = (text(def, "id"), text(def, "tool"));
            let rec = steps.iter().find(|s| s.step_id == id).map(stored_step).unwrap_or_default();
            rec.record(&id, &tool, full)
        })
        .collect();
    Ok(ExecutionRecord {
        execution_id: row.id.clone(),
        workflow: row.workflow.clone(),
        status,
        inputs: full.then(|| row.inputs.clone()),
        outputs: full.then(|| row.outputs.clone()),
        error: error_info(&row.error),
        warnings: row.warnings.clone(),
        steps: step_records,
        session_id: row.session.clone(),
        tenant: row.tenant.clone(),
        created_at: row.created_at.clone(),
        finished_at: row.finished_at.clone(),
    })
}

/// An approval as stored (the engine's [`ApprovalInfo`] JSON).
pub(crate) fn approval_value(info: &ApprovalInfo) -> Value {
    serde_json::to_value(info).unwrap_or(Value::Null)
}

pub(crate) fn approval_info(v: Value) -> Option<ApprovalInfo> {
    serde_json::from_value(v).ok()
}

// ---------------------------------------------------------------------------------------
// Writes the runner makes. Each returns once the write is durable (per the store's
// durability); without a store they return at once.

impl super::Engine {
    /// An execution's header, with the event of that transition (its start, a suspension).
    pub(crate) async fn persist_header(&self, exec: &Execution, event: Option<&Arc<Event>>) -> Result<()> {
        self.persist_header_and_steps(exec, &[], event.map(std::slice::from_ref).unwrap_or_default()).await
    }

    /// An execution's header, the records of `steps` and `events`, in one commit (its end).
    pub(crate) async fn persist_header_and_steps(
        &self,
        exec: &Execution,
        steps: &[usize],
        events: &[Arc<Event>],
    ) -> Result<()> {
        let Some(durable) = self.durable() else {
            return Ok(());
        };
        let rows = steps.iter().map(|&i| step_row(exec, i).0).collect();
        let events = events.iter().map(|e| e.to_value()).collect();
        durable.store.put_execution_with_steps(execution_row(exec), rows, events).wait().await
    }

    /// Step `i`'s record, the execution's status and the step's event, in one commit.
    pub(crate) async fn persist_step(&self, exec: &Execution, i: usize, event: Option<&Arc<Event>>) -> Result<()> {
        let Some(durable) = self.durable() else {
            return Ok(());
        };
        let (row, status) = step_row(exec, i);
        let events = event.map(|e| vec![e.to_value()]).unwrap_or_default();
        durable.store.put_step(row, Some(status), events).wait().await
    }

    /// A new or resolved approval.
    pub(crate) fn persist_approval(&self, info: &ApprovalInfo) -> Option<crate::store::Commit> {
        self.durable().map(|d| d.store.put_approval(approval_value(info)))
    }

    /// A session's whole state after a change.
    pub(crate) fn persist_session(&self, tenant: Option<&str>, session: Option<&str>) -> Option<crate::store::Commit> {
        let durable = self.durable()?;
        let session_id = session?;
        let state = self.session_state(tenant, session);
        Some(durable.store.put_session_state(tenant.unwrap_or(""), session_id, state))
    }

    /// Take back what a previous process left in the store: session states and approvals.
    pub(crate) fn load_from_store(&self) -> Result<()> {
        let Some(durable) = self.durable() else {
            return Ok(());
        };
        for (tenant, session, state) in durable.store.session_states()? {
            if let Value::Object(map) = state {
                let tenant = (!tenant.is_empty()).then_some(tenant.as_str());
                self.workflows().sessions.replace(tenant, Some(&session), map);
            }
        }
        for approval in durable.store.approvals(false)? {
            match approval_info(approval) {
                Some(info) => self.domain().approvals.restore(info),
                None => tracing::warn!("store: an approval row could not be read; it is left in the store"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(store: Value) -> Config {
        Config::from_value(json!({ "store": store })).unwrap()
    }

    #[test]
    fn store_config_forms() {
        assert!(StoreConfig::from_config(&Config::default()).unwrap().is_memory());
        let c = StoreConfig::from_config(&config(json!("sqlite:/tmp/x.db"))).unwrap();
        assert_eq!((c.url.as_str(), c.durability, c.recover), ("sqlite:/tmp/x.db", Durability::Normal, true));
        let c = StoreConfig::from_config(&config(
            json!({"url": "sqlite:/tmp/y.db", "durability": "sync", "retention": "30d", "recover": false}),
        ))
        .unwrap();
        assert_eq!(c.durability, Durability::Sync);
        assert_eq!(c.retention, Some(Duration::from_secs(30 * 86400)));
        assert!(!c.recover);
        let c = StoreConfig::from_config(&config(json!({"path": "/tmp/z.db"}))).unwrap();
        assert_eq!(c.url, "sqlite:/tmp/z.db");
        assert!(!c.read_only);
        let c =
            StoreConfig::from_config(&config(json!({"url": "sqlite:/tmp/z.db", "read_only": true, "retention": "1d"})))
                .unwrap();
        assert!(c.read_only && !c.recover && c.retention.is_none(), "{c:?}");
        for bad in [
            json!({"durability": "fast"}),
            json!({"colour": 1}),
            json!(7),
            json!({"retention": "soon"}),
            json!({"read_only": "yes"}),
        ] {
            let e = StoreConfig::from_config(&config(bad.clone())).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn transition_events_are_left_to_the_runner() {
        assert!(written_with_transition(&Event::new(kinds::STEP_COMPLETED).execution("e")));
        assert!(!written_with_transition(&Event::new(kinds::STEP_STARTED).execution("e")));
        assert!(!written_with_transition(&Event::new(kinds::STEP_COMPLETED)));
    }
}
