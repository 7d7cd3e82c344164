//! Durable state (docs/design.md §9): executions with their steps, the event audit log,
//! approvals and session state, behind one [`Store`] trait with two
//! implementations of the same semantics:
//!
//! - [`MemoryStore`]: maps under a mutex; every write is committed when it returns.
//! - [`SqliteStore`]: bundled SQLite in WAL mode, one writer thread with group
//!   commit, readers on their own connections, schema migrations applied on open,
//!   an advisory lock so that a second engine cannot open the same file.
//!
//! Writes return a [`Commit`] that resolves once the write is durable (per the
//! store's [`Durability`]); reads are synchronous and see every resolved commit.
//!
//! Semantics shared by both implementations (the test suite runs one body against each):
//! - `put_execution` upserts the header; `put_step` upserts a step by
//!   `(execution_id, step_id)` and needs the execution to be stored (else `NOT_FOUND`);
//!   step, status change and events of `put_step` are applied together or not at all.
//! - Events keep their JSON as given; reads add `seq`, the store's own increasing
//!   key (`EventFilter::after_id` pages on it). An event whose engine `id` was already
//!   stored by this store instance is ignored (idempotent retries); each store
//!   instance has its own id space, so a new process's ids never collide with a
//!   crashed one's.
//! - Times are RFC 3339 strings, compared as instants (not as text).
//!   `created_after`/`created_before` are strict; `since` is inclusive, `until` exclusive.
//! - `executions()` lists newest first; `unfinished()` oldest first; `events()`
//!   in store order (`seq` ascending); approvals by `created` then id; session
//!   states by (tenant, session).

mod memory;
mod schema;
mod sqlite;

pub use memory::MemoryStore;
pub use schema::SCHEMA_VERSION;
pub use sqlite::{SqliteStore, WriterStats};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};
use crate::json::json_kind;

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit (`synchronous=FULL`): survives power loss.
    Sync,
    /// WAL + `synchronous=NORMAL`: survives a process crash (default).
    #[default]
    Normal,
    /// No fsync (`synchronous=OFF`): fastest, an OS crash may lose recent commits.
    Off,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Normal => "normal",
            Durability::Off => "off",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Durability> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sync" => Ok(Durability::Sync),
            "normal" => Ok(Durability::Normal),
            "off" => Ok(Durability::Off),
            other => Err(Error::InvalidArgument(format!(
                "durability: expected \"sync\", \"normal\" or \"off\", found \"{other}\""
            ))),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An execution's header. JSON columns are plain [`Value`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRow {
    pub id: String,
    pub workflow: String,
    /// The workflow definition the execution runs (so a resumed execution runs the same one).
    pub definition: Value,
    pub status: String,
    pub inputs: Value,
    pub outputs: Value,
    /// `null` or `{code, message}`.
    pub error: Value,
    pub warnings: Vec<String>,
    pub tenant: Option<String>,
    pub session: Option<String>,
    pub user: Option<String>,
    pub timeout_ms: Option<u64>,
    /// RFC 3339.
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// One step of an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    pub execution_id: String,
    pub step_id: String,
    /// Position in the definition (steps are returned in this order).
    pub index: u32,
    pub status: String,
    pub output: Value,
    pub error: Value,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub note: Option<String>,
    pub approval_id: Option<String>,
}

/// Which executions `executions()` returns (newest first). Every field narrows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionFilter {
    pub status: Option<String>,
    pub session: Option<String>,
    /// Strictly after this instant (RFC 3339).
    pub created_after: Option<String>,
    /// Strictly before this instant (RFC 3339).
    pub created_before: Option<String>,
    pub limit: Option<usize>,
}

/// Which events `events()` returns (store order). Every field narrows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub execution_id: Option<String>,
    /// Event type, exact or a glob with `*` / `?` (as subscriptions match).
    pub kind: Option<String>,
    /// Only events whose store `seq` is greater than this.
    pub after_id: Option<u64>,
    /// `time >= since` (RFC 3339).
    pub since: Option<String>,
    /// `time < until` (RFC 3339).
    pub until: Option<String>,
    pub limit: Option<usize>,
}

/// Execution statuses that are not final: what a new process resumes, what
/// retention never touches.
pub const UNFINISHED_STATUSES: [&str; 4] = ["created", "running", "suspended", "waiting_approval"];

/// Whether `status` is one of [`UNFINISHED_STATUSES`].
pub fn is_unfinished(status: &str) -> bool {
    UNFINISHED_STATUSES.contains(&status)
}

/// Persistence for the engine. Writes return a [`Commit`]; reads see every resolved commit.
pub trait Store: Send + Sync + 'static {
    /// Insert or replace an execution's header.
    fn put_execution(&self, row: ExecutionRow) -> Commit {
        self.put_execution_with_events(row, Vec::new())
    }
    /// An execution's header and the events of that transition (its start or its
    /// end), in ONE transaction.
    fn put_execution_with_events(&self, row: ExecutionRow, events: Vec<Value>) -> Commit {
        self.put_execution_with_steps(row, Vec::new(), events)
    }
    /// An execution's header, the records of the steps that end with it and the
    /// events of that transition, in ONE transaction: a run's end commits with its
    /// last step's record and the records of the steps it never ran.
    fn put_execution_with_steps(&self, row: ExecutionRow, steps: Vec<StepRow>, events: Vec<Value>) -> Commit;
    /// One step's record, the execution's new status and the events of that
    /// transition, in ONE transaction (one commit per step completion).
    fn put_step(&self, step: StepRow, execution_status: Option<String>, events: Vec<Value>) -> Commit;
    /// Append events (docs/design.md §8 JSON); an engine `id` already stored by this store is ignored.
    fn put_events(&self, events: Vec<Value>) -> Commit;
    /// Append events with the store's next commit, whatever it is, or on their own
    /// within a short delay when none comes; nobody waits for them. The engine's
    /// bus sink records events that no state change carries this way, so that a
    /// workflow's events ride in its step commits instead of each costing a
    /// transaction. A store keeps them in publish order, before any write made
    /// after them; [`Store::events`] sees them. Failures are logged.
    fn defer_events(&self, events: Vec<Value>) {
        if let Err(e) = self.put_events(events).wait_blocking() {
            tracing::warn!("events not recorded: {e}");
        }
    }
    /// Insert or replace an approval `{id, tool, tenant, session, reason, status, created, resolved, resolution_reason}`.
    fn put_approval(&self, approval: Value) -> Commit;
    /// Insert or replace the state of session (tenant, session).
    fn put_session_state(&self, tenant: &str, session: &str, state: Value) -> Commit;
    /// An execution with its steps (in `index` order).
    fn execution(&self, id: &str) -> Result<Option<(ExecutionRow, Vec<StepRow>)>>;
    /// Execution headers, newest first.
    fn executions(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRow>>;
    /// Executions not finished (created/running/suspended/waiting_approval) with
    /// their steps, oldest first: what a new process resumes.
    fn unfinished(&self) -> Result<Vec<(ExecutionRow, Vec<StepRow>)>>;
    /// Events, in store order, each with its store `seq` added.
    fn events(&self, filter: &EventFilter) -> Result<Vec<Value>>;
    /// Approvals (only `status == "pending"` ones when `pending_only`).
    fn approvals(&self, pending_only: bool) -> Result<Vec<Value>>;
    /// Every (tenant, session, state).
    fn session_states(&self) -> Result<Vec<(String, String, Value)>>;
    /// Retention: delete finished executions (with their steps) whose `finished_at`
    /// (or `created_at` when unset) is before `cutoff`, and events whose time is
    /// before `cutoff`, except events of unfinished executions. Works in
    /// transactions of at most `batch` executions (with their steps) or `batch`
    /// events each, so writers interleave; returns the rows deleted (executions +
    /// steps + events). Blocks the calling thread until done.
    fn prune(&self, cutoff: &str, batch: usize) -> Result<usize>;
}

/// "memory" or "sqlite:PATH" (a relative path is used as given).
pub fn open_store(spec: &str, durability: Durability) -> Result<Arc<dyn Store>> {
    let spec = spec.trim();
    if spec == "memory" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if let Some(path) = spec.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(Error::InvalidArgument("store \"sqlite:\": expected a database path after \"sqlite:\"".into()));
        }
        return Ok(Arc::new(SqliteStore::open(std::path::Path::new(path), durability)?));
    }
    Err(Error::InvalidArgument(format!("store: expected \"memory\" or \"sqlite:PATH\", found \"{spec}\"")))
}

/// "sqlite:PATH" opened for inspection only ([`SqliteStore::open_read_only`]):
/// works while another engine holds the database; every write is refused.
pub fn open_store_read_only(spec: &str) -> Result<Arc<dyn Store>> {
    let spec = spec.trim();
    if spec == "memory" {
        return Err(Error::InvalidArgument(
            "store \"memory\": a memory store lives only inside the engine that created it, there is nothing to read; use \"sqlite:PATH\"".into(),
        ));
    }
    match spec.strip_prefix("sqlite:") {
        Some("") => Err(Error::InvalidArgument("store \"sqlite:\": expected a database path after \"sqlite:\"".into())),
        Some(path) => Ok(Arc::new(SqliteStore::open_read_only(std::path::Path::new(path))?)),
        None => Err(Error::InvalidArgument(format!("store: expected \"sqlite:PATH\" to read, found \"{spec}\""))),
    }
}

pub(crate) fn store_error(message: impl Into<String>) -> Error {
    Error::with_code(ErrorCode::Store, message)
}

// ---------------------------------------------------------------------------------------
// Commit: a one-shot slot that a writer fills and a caller waits on, from async
// code or from a plain thread. It never panics (unlike a blocking receive inside a
// runtime) and never hangs: a responder dropped unanswered (writer stopped or
// panicked) resolves its commit with a STORE error.

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

struct SlotState<T> {
    value: Option<Result<T>>,
    waker: Option<Waker>,
}

impl<T> Slot<T> {
    fn new() -> Arc<Slot<T>> {
        Arc::new(Slot { state: Mutex::new(SlotState { value: None, waker: None }), ready: Condvar::new() })
    }

    fn fill(&self, value: Result<T>) {
        let waker = {
            let mut state = self.state.lock();
            if state.value.is_some() {
                return;
            }
            state.value = Some(value);
            state.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The writer's side of a one-shot result.
pub(crate) struct Responder<T> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T> Responder<T> {
    pub(crate) fn send(mut self, value: Result<T>) {
        if let Some(slot) = self.slot.take() {
            slot.fill(value);
        }
    }
}

impl<T> Drop for Responder<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.fill(Err(store_error("store writer stopped before committing this write")));
        }
    }
}

/// The waiting side of a one-shot result.
pub(crate) struct Pending<T> {
    slot: Arc<Slot<T>>,
}

pub(crate) fn oneshot<T>() -> (Responder<T>, Pending<T>) {
    let slot = Slot::new();
    (Responder { slot: Some(slot.clone()) }, Pending { slot })
}

impl<T> Pending<T> {
    pub(crate) fn wait_blocking(self) -> Result<T> {
        let mut state = self.slot.state.lock();
        loop {
            if let Some(v) = state.value.take() {
                return v;
            }
            self.slot.ready.wait(&mut state);
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut state = self.slot.state.lock();
        if let Some(v) = state.value.take() {
            return Poll::Ready(v);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Resolves when the write is committed (group commit: many writers share one
/// transaction). Dropping it does not cancel the write.
#[must_use = "a Commit resolves when the write is durable; wait on it or drop it deliberately"]
pub struct Commit {
    inner: CommitInner,
}

enum CommitInner {
    Ready(Option<Result<()>>),
    Pending(Pending<()>),
}

impl Commit {
    /// An already committed (or already failed) write.
    pub fn ready(result: Result<()>) -> Commit {
        Commit { inner: CommitInner::Ready(Some(result)) }
    }

    pub(crate) fn pending(pending: Pending<()>) -> Commit {
        Commit { inner: CommitInner::Pending(pending) }
    }

    /// Wait from async code.
    pub async fn wait(self) -> Result<()> {
        match self.inner {
            CommitInner::Ready(r) => r.unwrap_or(Ok(())),
            CommitInner::Pending(p) => p.await,
        }
    }

    /// Wait on a plain thread (also safe inside a runtime's worker, though it blocks it).
    pub fn wait_blocking(self) -> Result<()> {
        match self.inner {
            CommitInner::Ready(r) => r.unwrap_or(Ok(())),
            CommitInner::Pending(p) => p.wait_blocking(),
        }
    }
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            CommitInner::Ready(_) => "Commit(ready)",
            CommitInner::Pending(_) => "Commit(pending)",
        })
    }
}

// ---------------------------------------------------------------------------------------
// Validation shared by both implementations: a write is checked and its instants
// parsed on the caller's thread, so both stores accept and refuse the same rows.

/// An RFC 3339 instant as microseconds since the epoch.
pub(crate) fn parse_time(what: &str, text: &str) -> Result<i64> {
    let ts: jiff::Timestamp = text
        .trim()
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("{what}: expected an RFC 3339 time, found \"{text}\" ({e})")))?;
    Ok(ts.as_microsecond())
}

pub(crate) fn parse_opt_time(what: &str, text: Option<&str>) -> Result<Option<i64>> {
    text.map(|t| parse_time(what, t)).transpose()
}

pub(crate) fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// A validated execution header with its instants.
#[derive(Debug, Clone)]
pub(crate) struct PreparedExecution {
    pub row: ExecutionRow,
    pub created_us: i64,
    pub finished_us: Option<i64>,
}

pub(crate) fn prepare_execution(row: ExecutionRow) -> Result<PreparedExecution> {
    if row.id.is_empty() {
        return Err(Error::InvalidArgument("put_execution: the execution id is empty".into()));
    }
    let created_us = parse_time(&format!("execution '{}' created_at", row.id), &row.created_at)?;
    let finished_us = parse_opt_time(&format!("execution '{}' finished_at", row.id), row.finished_at.as_deref())?;
    if let Some(t) = row.timeout_ms.filter(|t| i64::try_from(*t).is_err()) {
        return Err(Error::InvalidArgument(format!("execution '{}': timeout_ms {t} is too large", row.id)));
    }
    Ok(PreparedExecution { row, created_us, finished_us })
}

pub(crate) fn prepare_step(step: &StepRow) -> Result<()> {
    if step.execution_id.is_empty() || step.step_id.is_empty() {
        return Err(Error::InvalidArgument("put_step: execution_id and step_id must not be empty".into()));
    }
    let at = format!("step '{}' of execution '{}'", step.step_id, step.execution_id);
    parse_opt_time(&format!("{at} started_at"), step.started_at.as_deref())?;
    parse_opt_time(&format!("{at} finished_at"), step.finished_at.as_deref())?;
    Ok(())
}

/// Steps written with their execution's header: each valid, and of that execution.
pub(crate) fn prepare_steps_of(execution_id: &str, steps: &[StepRow]) -> Result<()> {
    for step in steps {
        prepare_step(step)?;
        if step.execution_id != execution_id {
            return Err(Error::InvalidArgument(format!(
                "put_execution_with_steps: step '{}' is of execution '{}', not '{execution_id}'",
                step.step_id, step.execution_id
            )));
        }
    }
    Ok(())
}

/// A validated event: the JSON as given plus what the store indexes.
#[derive(Debug, Clone)]
pub(crate) struct PreparedEvent {
    pub body: Value,
    pub event_id: Option<i64>,
    pub kind: String,
    pub time_us: i64,
    pub execution_id: Option<String>,
}

pub(crate) fn prepare_event(event: Value) -> Result<PreparedEvent> {
    let Value::Object(map) = &event else {
        return Err(Error::InvalidArgument(format!("event: expected a JSON object, found {}", json_kind(&event))));
    };
    let event_id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().and_then(|n| i64::try_from(n).ok()).ok_or_else(|| {
            Error::InvalidArgument(format!("event: expected `id` to be a non-negative integer, found {v}"))
        })?),
    };
    let kind = match map.get("type") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(v) => {
            return Err(Error::InvalidArgument(format!("event: expected `type` to be a string, found {v}")));
        }
    };
    let time_us = match map.get("time") {
        Some(Value::String(s)) => parse_time("event time", s)?,
        None | Some(Value::Null) => now_us(),
        Some(v) => {
            return Err(Error::InvalidArgument(format!("event: expected `time` to be a string, found {v}")));
        }
    };
    let execution_id = map.get("execution_id").and_then(Value::as_str).map(str::to_string);
    Ok(PreparedEvent { body: event, event_id, kind, time_us, execution_id })
}

pub(crate) fn prepare_events(events: Vec<Value>) -> Result<Vec<PreparedEvent>> {
    events.into_iter().map(prepare_event).collect()
}

/// A validated approval.
#[derive(Debug, Clone)]
pub(crate) struct PreparedApproval {
    pub id: String,
    pub status: String,
    pub created: String,
    pub body: Value,
}

pub(crate) fn prepare_approval(approval: Value) -> Result<PreparedApproval> {
    let Value::Object(map) = &approval else {
        return Err(Error::InvalidArgument(format!(
            "approval: expected a JSON object, found {}",
            json_kind(&approval)
        )));
    };
    let id = match map.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(Error::InvalidArgument("approval: expected a non-empty string `id`".into())),
    };
    let status = match map.get("status") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(Error::InvalidArgument(format!("approval '{id}': expected a string `status`"))),
    };
    let created = map.get("created").and_then(Value::as_str).unwrap_or("").to_string();
    Ok(PreparedApproval { id, status, created, body: approval })
}

/// Filter instants parsed once.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TimeRange {
    pub after: Option<i64>,
    pub before: Option<i64>,
}

pub(crate) fn execution_range(filter: &ExecutionFilter) -> Result<TimeRange> {
    Ok(TimeRange {
        after: parse_opt_time("created_after", filter.created_after.as_deref())?,
        before: parse_opt_time("created_before", filter.created_before.as_deref())?,
    })
}

pub(crate) fn event_range(filter: &EventFilter) -> Result<TimeRange> {
    Ok(TimeRange {
        after: parse_opt_time("since", filter.since.as_deref())?,
        before: parse_opt_time("until", filter.until.as_deref())?,
    })
}

/// An event JSON with the store's `seq` added.
pub(crate) fn with_seq(mut body: Value, seq: i64) -> Value {
    if let Value::Object(map) = &mut body {
        map.insert("seq".into(), Value::from(seq));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responder_dropped_unanswered_resolves_to_a_store_error() {
        let (reply, pending) = oneshot::<()>();
        drop(reply);
        let e = Commit::pending(pending).wait_blocking().unwrap_err();
        assert_eq!(e.code(), ErrorCode::Store);

        // The same from async code, with the responder dropped on another thread later.
        let (reply, pending) = oneshot::<()>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(reply);
        });
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let e = rt.block_on(Commit::pending(pending).wait()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Store);
        t.join().unwrap();
    }

    #[test]
    fn a_responder_answers_once() {
        let (reply, pending) = oneshot::<u32>();
        reply.send(Ok(7));
        assert_eq!(pending.wait_blocking().unwrap(), 7);
        assert!(Commit::ready(Ok(())).wait_blocking().is_ok());
    }

    #[test]
    fn events_and_times_are_validated() {
        assert_eq!(parse_time("t", "2024-01-01T00:00:00Z").unwrap(), 1_704_067_200_000_000);
        assert_eq!(
            parse_time("t", "2024-01-01T01:00:00+01:00").unwrap(),
            parse_time("t", "2024-01-01T00:00:00.000Z").unwrap()
        );
        assert_eq!(parse_time("t", "2024-01-01").unwrap_err().code(), ErrorCode::InvalidArgument);
        let e = prepare_event(
            serde_json::json!({"id": 3, "type": "step.completed", "time": "2024-01-01T00:00:00Z", "execution_id": "x"}),
        )
        .unwrap();
        assert_eq!((e.event_id, e.kind.as_str(), e.execution_id.as_deref()), (Some(3), "step.completed", Some("x")));
        assert!(prepare_event(serde_json::json!({"type": 5})).is_err());
        assert!(prepare_event(serde_json::json!({"id": "3"})).is_err());
        assert_eq!(prepare_approval(serde_json::json!({"id": "a"})).unwrap_err().code(), ErrorCode::InvalidArgument);
    }
}
