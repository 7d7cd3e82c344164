//! The executor: runs one execution's steps as their dependencies finish, up to
//! `max_parallel` at once, each through the engine's `call_tool` pipeline (policy,
//! validation, events), with retries, timeouts, fallbacks and circuit breakers.
//!
//! It lives in the engine because it is the wiring of the subsystems: it drives the
//! store (commits), the bus (step events), the domain (approvals), the transports
//! (through `call_tool`) and session state. The policies it applies are pure and
//! live in `workflow` (`retry`, `breaker`, `expr`, the execution record).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{CallOptions, CallTrace, Engine};
use crate::domain::ApprovalStatus;
use crate::error::{Error, Result};
use crate::events::{Event, kinds};
use crate::workflow::breaker::{self, Admission, Transition, outcome_of};
use crate::workflow::definition::{OnError, Step};
use crate::workflow::execution::Execution;
use crate::workflow::expr::{Scope, Template};
use crate::workflow::{ErrorInfo, ExecutionStatus, StepStatus};

/// How a step ended, as the scheduler sees it.
enum StepEnd {
    Succeeded(Value),
    /// Failed; `fatal` unless its `on_error` is `continue`.
    Failed {
        error: Error,
        fatal: bool,
    },
}

/// Run `exec` to its end. Never panics on user input; every outcome is recorded
/// (and, with a store, committed: each step before its dependants start).
///
/// A `recovered` execution was left unfinished by a previous process: the steps it
/// committed keep their records and never run again; the others (including one
/// that was running) run now, with the same idempotency keys. The caller wakes
/// the execution's waiters (`notify_finished`) when it no longer needs the engine.
pub(super) async fn run(engine: Engine, exec: Arc<Execution>, recovered: bool) {
    let started = Instant::now();
    let wf = exec.workflow.clone();
    exec.with_state(|s| {
        s.status = ExecutionStatus::Running;
        Execution::refresh_status(s);
    });
    let start = if recovered {
        engine.events().publish(event(&exec, kinds::WORKFLOW_RESUMED).data(json!({"recovered": true})));
        engine.persist_header(&exec, None).await
    } else {
        let started = engine
            .events()
            .publish_shared(event(&exec, kinds::WORKFLOW_STARTED).data(json!({"steps": wf.steps.len()})));
        engine.persist_header(&exec, Some(&started)).await
    };
    let deadline = exec.timeout.map(|t| tokio::time::Instant::now() + t);
    // Step calls get a child token: failing or timing out the run cancels them too.
    let calls = exec.cancel.child_token();
    let (mut waiting, mut ready, earlier_failure) = schedule(&exec);
    let mut running = FuturesUnordered::new();
    let mut suspended = exec.suspended();
    let mut failure: Option<Error> = start.err().or(earlier_failure);
    let mut timed_out = false;
    let shutdown = engine.workflows().shutdown.clone();
    // The step the run ends with: its record commits with the run's end.
    let mut last: Option<(usize, Arc<Event>)> = None;
    loop {
        let stopping = failure.is_some() || timed_out || exec.cancel.is_cancelled();
        while !stopping && running.len() < wf.max_parallel && !*suspended.borrow() {
            let Some(i) = ready.pop_front() else { break };
            match skip_reason(&engine, &exec, i) {
                Ok(Some(reason)) => {
                    let skipped = skip(&engine, &exec, i, reason);
                    commit_step(&engine, &exec, i, &skipped, &calls, &mut failure).await;
                    release(&wf.dependants[i], &mut waiting, &mut ready);
                }
                Ok(None) => {
                    mark_started(&engine, &exec, i);
                    let (engine, exec, token) = (engine.clone(), exec.clone(), calls.child_token());
                    running.push(async move { (i, run_step(&engine, &exec, i, deadline, token).await) });
                }
                Err(e) => {
                    // The `if` could not be evaluated: the step fails, as any step error.
                    let fatal = !matches!(wf.steps[i].on_error, OnError::Continue);
                    let failed = mark_failed(&engine, &exec, i, &e);
                    commit_step(&engine, &exec, i, &failed, &calls, &mut failure).await;
                    if fatal {
                        failure.get_or_insert(e);
                    } else {
                        release(&wf.dependants[i], &mut waiting, &mut ready);
                    }
                }
            }
        }
        if running.is_empty() {
            let paused = *suspended.borrow() && !ready.is_empty();
            if !paused || failure.is_some() || timed_out || exec.cancel.is_cancelled() {
                break;
            }
        }
        let deadline_passed = async {
            match deadline {
                Some(d) if !timed_out => tokio::time::sleep_until(d).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            // A step's record commits before any dependant starts (a completed step never
            // runs twice): dependants released here start at the next turn of the loop. The
            // step the run ends with commits with the run's end instead.
            Some((i, end)) = running.next() => {
                let (recorded, fatal_error) = match end {
                    StepEnd::Succeeded(output) => (mark_succeeded(&engine, &exec, i, output), None),
                    StepEnd::Failed { error, fatal } => {
                        (mark_failed(&engine, &exec, i, &error), fatal.then_some(error))
                    }
                };
                if fatal_error.is_none() {
                    release(&wf.dependants[i], &mut waiting, &mut ready);
                }
                let stops = fatal_error.is_some() || failure.is_some() || timed_out;
                if running.is_empty() && (ready.is_empty() || stops) {
                    last = Some((i, recorded));
                } else {
                    commit_step(&engine, &exec, i, &recorded, &calls, &mut failure).await;
                }
                if let Some(error) = fatal_error {
                    calls.cancel();
                    failure.get_or_insert(error);
                }
            }
            _ = deadline_passed => {
                timed_out = true;
                calls.cancel();
            }
            _ = exec.cancel.cancelled(), if !calls.is_cancelled() => calls.cancel(),
            _ = shutdown.cancelled() => {
                // The engine is closing: stop here, record nothing more. Running calls are
                // dropped; with a store, the next engine resumes from the last commit.
                calls.cancel();
                let e = Error::Cancelled(format!("execution '{}' stopped: the engine was closed", exec.id));
                exec.finish(ExecutionStatus::Cancelled, Value::Null, Some(ErrorInfo::of(&e)));
                return;
            }
            changed = suspended.changed() => {
                if changed.is_ok() {
                    let kind = if *suspended.borrow() { kinds::WORKFLOW_SUSPENDED } else { kinds::WORKFLOW_RESUMED };
                    engine.events().publish(event(&exec, kind));
                    if let Err(e) = engine.persist_header(&exec, None).await {
                        failure.get_or_insert(e);
                    }
                }
            }
        }
    }
    finish(&engine, &exec, failure, timed_out, started, last).await;
}

/// Commit step `i`'s record with its event. A commit that fails (disk full, I/O
/// error) fails the run: nothing more can be recorded, so running calls are cancelled.
async fn commit_step(
    engine: &Engine,
    exec: &Execution,
    i: usize,
    event: &Arc<Event>,
    calls: &CancellationToken,
    failure: &mut Option<Error>,
) {
    if let Err(e) = engine.persist_step(exec, i, Some(event)).await {
        calls.cancel();
        failure.get_or_insert(e);
    }
}

/// Where a run starts: how many unfinished dependencies each step waits for, the
/// steps ready now, and the failure a previous process already committed (a failed
/// step whose `on_error` is not `continue`). For a new execution: every step pending.
fn schedule(exec: &Execution) -> (Vec<usize>, std::collections::VecDeque<usize>, Option<Error>) {
    let wf = &exec.workflow;
    exec.with_state(|s| {
        let done = |d: usize| s.steps[d].status != StepStatus::Pending;
        let waiting: Vec<usize> = wf.steps.iter().map(|step| step.deps.iter().filter(|&&d| !done(d)).count()).collect();
        let ready = (0..wf.steps.len()).filter(|&i| !done(i) && waiting[i] == 0).collect();
        let failure = wf.steps.iter().zip(&s.steps).find_map(|(step, rec)| {
            let fatal = !matches!(step.on_error, OnError::Continue);
            (fatal && rec.status == StepStatus::Failed).then(|| {
                rec.error
                    .as_ref()
                    .map_or_else(|| Error::Internal(format!("step '{}' failed", step.id)), ErrorInfo::to_error)
            })
        });
        (waiting, ready, failure)
    })
}

/// Record the run's end: its status, the final event, and in the same commit the step
/// it ended with (`last`) and the steps it never ran.
async fn finish(
    engine: &Engine,
    exec: &Execution,
    failure: Option<Error>,
    timed_out: bool,
    started: Instant,
    last: Option<(usize, Arc<Event>)>,
) {
    let wf = &exec.workflow;
    let (status, error) = if exec.cancel.is_cancelled() {
        (ExecutionStatus::Cancelled, Some(Error::Cancelled(format!("execution '{}' was cancelled", exec.id))))
    } else if timed_out {
        let limit = exec.timeout.unwrap_or_default();
        (
            ExecutionStatus::Failed,
            Some(Error::Timeout(format!("workflow '{}' did not finish within {limit:?}", wf.name))),
        )
    } else if let Some(e) = failure {
        (ExecutionStatus::Failed, Some(e))
    } else {
        (ExecutionStatus::Completed, None)
    };
    let (mut steps, mut events): (Vec<usize>, Vec<Arc<Event>>) = last.into_iter().unzip();
    // Steps that never ran are skipped, with the reason.
    if let Some(e) = &error {
        let reason = match status {
            ExecutionStatus::Cancelled => "not run: the execution was cancelled".to_string(),
            _ => format!("not run: the execution failed ({})", e.code().as_str()),
        };
        exec.with_state(|s| {
            for (i, rec) in s.steps.iter_mut().enumerate().filter(|(_, r)| r.status == StepStatus::Pending) {
                rec.status = StepStatus::Skipped;
                rec.note = Some(reason.clone());
                steps.push(i);
            }
        });
    }
    let outputs = if status == ExecutionStatus::Completed { outputs(engine, exec) } else { Value::Null };
    let duration_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    let info = error.as_ref().map(ErrorInfo::of);
    let (kind, data) = match (&status, &info) {
        (ExecutionStatus::Completed, _) => (kinds::WORKFLOW_COMPLETED, json!({"duration_ms": duration_ms})),
        (ExecutionStatus::Cancelled, _) => (kinds::WORKFLOW_CANCELLED, json!({"duration_ms": duration_ms})),
        (_, Some(i)) => {
            (kinds::WORKFLOW_ERROR, json!({"duration_ms": duration_ms, "code": i.code.as_str(), "message": i.message}))
        }
        (_, None) => (kinds::WORKFLOW_ERROR, json!({"duration_ms": duration_ms})),
    };
    exec.finish(status, outputs, info);
    // The final event is in the history (and committed with the final state) before
    // `run_workflow` / `wait` return.
    events.push(engine.events().publish_shared(event(exec, kind).data(data)));
    if let Err(e) = engine.persist_header_and_steps(exec, &steps, &events).await {
        // The run ended but its end is not recorded: say so rather than report success.
        tracing::warn!(execution = %exec.id, "final state not persisted: {e}");
        exec.finish(ExecutionStatus::Failed, Value::Null, Some(ErrorInfo::of(&e)));
    }
}

/// The workflow's `outputs`, evaluated over the finished steps. An output that
/// cannot be evaluated (it reads a skipped step, or a field a fallback did not
/// produce) is null, and the record's `warnings` say why: the steps did complete.
fn outputs(engine: &Engine, exec: &Execution) -> Value {
    let wf = &exec.workflow;
    if wf.outputs.is_empty() {
        return Value::Object(Map::new());
    }
    let mut out = Map::new();
    let mut warnings = Vec::new();
    for (key, template) in &wf.outputs {
        let refs = template.referenced_steps();
        let v = with_scope(engine, exec, &template.referenced_variables(), &refs, |scope| template.evaluate(scope))
            .unwrap_or_else(|e| {
                warnings.push(e);
                Value::Null
            });
        out.insert(key.clone(), v);
    }
    if !warnings.is_empty() {
        exec.with_state(|s| s.warnings.extend(warnings));
    }
    Value::Object(out)
}

/// Let a step's dependants go once all their dependencies are done.
fn release(dependants: &[usize], waiting: &mut [usize], ready: &mut std::collections::VecDeque<usize>) {
    for &d in dependants {
        waiting[d] -= 1;
        if waiting[d] == 0 {
            ready.push_back(d);
        }
    }
}

/// Why step `i` does not run: a dependency was skipped, or its `if` is false.
fn skip_reason(engine: &Engine, exec: &Execution, i: usize) -> Result<Option<String>> {
    let step = &exec.workflow.steps[i];
    let skipped_dep = exec.with_state(|s| {
        step.deps
            .iter()
            .find(|&&d| s.steps[d].status == StepStatus::Skipped)
            .map(|&d| exec.workflow.steps[d].id.clone())
    });
    if let Some(dep) = skipped_dep {
        return Ok(Some(format!("dependency '{dep}' was skipped")));
    }
    let Some(condition) = &step.condition else {
        return Ok(None);
    };
    let refs = condition.referenced_steps();
    match with_scope(engine, exec, &condition.referenced_variables(), &refs, |scope| condition.evaluate(scope)) {
        Ok(true) => Ok(None),
        Ok(false) => Ok(Some("its `if` condition is false".into())),
        Err(e) => Err(Error::ValidationFailed(e)),
    }
}

/// `steps` as expressions see it: `{id: {output, status, error}}`, for the listed
/// steps only (what an expression references).
fn steps_value(exec: &Execution, only: &[String]) -> Value {
    let wf = &exec.workflow;
    exec.with_state(|s| {
        let mut m = Map::new();
        for (def, rec) in wf.steps.iter().zip(&s.steps) {
            if !only.contains(&def.id) {
                continue;
            }
            m.insert(
                def.id.clone(),
                json!({"output": rec.output, "status": rec.status.as_str(),
                       "error": rec.error.as_ref().map_or(Value::Null, ErrorInfo::to_value)}),
            );
        }
        Value::Object(m)
    })
}

fn execution_value(exec: &Execution) -> Value {
    json!({"id": exec.id, "workflow": exec.workflow.name, "tenant": exec.tenant, "session": exec.session})
}

fn event(exec: &Execution, kind: &'static str) -> Event {
    Event::new(kind)
        .execution(exec.id.clone())
        .workflow(exec.workflow.name.clone())
        .context(exec.tenant.as_deref(), exec.session.as_deref())
}

fn step_event(exec: &Execution, i: usize, kind: &'static str) -> Event {
    let step = &exec.workflow.steps[i];
    event(exec, kind).step(step.id.clone()).tool(step.tool.clone())
}

fn mark_started(engine: &Engine, exec: &Execution, i: usize) {
    exec.with_state(|s| {
        let rec = &mut s.steps[i];
        rec.status = StepStatus::Running;
        rec.started_at = Some(SystemTime::now());
    });
    engine.events().publish(step_event(exec, i, kinds::STEP_STARTED));
}

fn skip(engine: &Engine, exec: &Execution, i: usize, reason: String) -> Arc<Event> {
    exec.with_state(|s| {
        let rec = &mut s.steps[i];
        rec.status = StepStatus::Skipped;
        rec.note = Some(reason.clone());
    });
    engine.events().publish_shared(step_event(exec, i, kinds::STEP_SKIPPED).data(json!({"reason": reason})))
}

fn mark_succeeded(engine: &Engine, exec: &Execution, i: usize, output: Value) -> Arc<Event> {
    let step = &exec.workflow.steps[i];
    let (attempts, duration_ms, fallback) = exec.with_state(|s| {
        let rec = &mut s.steps[i];
        rec.status = StepStatus::Succeeded;
        rec.output = output;
        let now = SystemTime::now();
        rec.finished_at = Some(now);
        let ms = rec.started_at.and_then(|t| now.duration_since(t).ok()).map_or(0.0, |d| d.as_secs_f64() * 1e3);
        (rec.attempts, ms, rec.note.is_some())
    });
    // Session state written by the step, now that its output is known.
    if !step.set_state.is_empty() {
        if let Err(e) = write_state(engine, exec, i) {
            tracing::warn!(execution = %exec.id, step = %step.id, "set_state failed: {e}");
            exec.with_state(|s| s.steps[i].note = Some(format!("set_state failed: {e}")));
        }
    }
    let data = json!({"attempts": attempts, "duration_ms": (duration_ms * 1e3).round() / 1e3, "fallback": fallback});
    engine.events().publish_shared(step_event(exec, i, kinds::STEP_COMPLETED).data(data))
}

fn write_state(engine: &Engine, exec: &Execution, i: usize) -> Result<()> {
    let step = &exec.workflow.steps[i];
    let mut values = Vec::with_capacity(step.set_state.len());
    for (key, template) in &step.set_state {
        let refs = template.referenced_steps();
        let value = with_scope(engine, exec, &template.referenced_variables(), &refs, |scope| template.evaluate(scope));
        values.push((key.clone(), value.map_err(Error::ValidationFailed)?));
    }
    let (tenant, session) = (exec.tenant.as_deref(), exec.session.as_deref());
    for (key, value) in values {
        engine.workflows().sessions.set(tenant, session, &key, value);
    }
    // Not awaited: the step's own commit, queued after it, covers it.
    drop(engine.persist_session(tenant, session));
    Ok(())
}

fn mark_failed(engine: &Engine, exec: &Execution, i: usize, error: &Error) -> Arc<Event> {
    let attempts = exec.with_state(|s| {
        let rec = &mut s.steps[i];
        rec.status = StepStatus::Failed;
        rec.error = Some(ErrorInfo::of(error));
        rec.finished_at = Some(SystemTime::now());
        rec.attempts
    });
    let data = json!({"code": error.code().as_str(), "message": error.to_string(), "attempts": attempts});
    engine.events().publish_shared(step_event(exec, i, kinds::STEP_FAILED).data(data))
}

/// One step: evaluate its arguments, call its tool with retries, fall back if told to.
async fn run_step(
    engine: &Engine,
    exec: &Execution,
    i: usize,
    deadline: Option<tokio::time::Instant>,
    cancel: CancellationToken,
) -> StepEnd {
    let step = &exec.workflow.steps[i];
    let fatal = !matches!(step.on_error, OnError::Continue);
    let call = StepCall { engine, exec, i, deadline, cancel: &cancel };
    let result = match evaluate_args(engine, exec, &step.args, step) {
        Ok(args) => call_with_retries(&call, &step.tool, args).await,
        Err(e) => Err(e),
    };
    let error = match result {
        Ok(v) => return StepEnd::Succeeded(v),
        Err(e) => e,
    };
    if let OnError::Fallback { tool, args } = &step.on_error {
        if !cancel.is_cancelled() && error.code() != crate::ErrorCode::Cancelled {
            let original = ErrorInfo::of(&error);
            exec.with_state(|s| {
                s.steps[i].note =
                    Some(format!("fallback '{tool}' after {}: {}", original.code.as_str(), original.message))
            });
            let fallback = match evaluate_args(engine, exec, args, step) {
                Ok(a) => call_once(&call, tool, a, None).await,
                Err(e) => Err(e),
            };
            return match fallback {
                Ok(v) => StepEnd::Succeeded(v),
                Err(e) => StepEnd::Failed {
                    error: Error::with_code(
                        e.code(),
                        format!("step '{}': fallback '{tool}' failed: {e} (after: {})", step.id, original.message),
                    ),
                    fatal,
                },
            };
        }
    }
    StepEnd::Failed { error, fatal }
}

fn evaluate_args(engine: &Engine, exec: &Execution, template: &Template, step: &Step) -> Result<Value> {
    let refs = template.referenced_steps();
    with_scope(engine, exec, &template.referenced_variables(), &refs, |scope| template.evaluate(scope))
        .map_err(|e| Error::ValidationFailed(format!("step '{}': {e}", step.id)))
}

/// Run `f` with what an expression of `exec` sees, building only the root
/// `variables` it references, and of `steps` only the `step_ids` it reads.
fn with_scope<T>(
    engine: &Engine,
    exec: &Execution,
    variables: &[String],
    step_ids: &[String],
    f: impl FnOnce(&Scope<'_>) -> T,
) -> T {
    let wants = |name: &str| variables.iter().any(|v| v == name);
    let steps = if wants("steps") { steps_value(exec, step_ids) } else { Value::Null };
    let state = if wants("state") {
        engine.session_state(exec.tenant.as_deref(), exec.session.as_deref())
    } else {
        Value::Null
    };
    let execution = if wants("execution") { execution_value(exec) } else { Value::Null };
    f(&Scope::new(&exec.inputs, &steps, &state, engine.domain().constants(), &execution))
}

/// A step's calls of its tool (or its fallback): the step, the run's deadline and the
/// token that cancels them.
#[derive(Clone, Copy)]
struct StepCall<'a> {
    engine: &'a Engine,
    exec: &'a Execution,
    /// The step's index in the workflow.
    i: usize,
    deadline: Option<tokio::time::Instant>,
    cancel: &'a CancellationToken,
}

async fn call_with_retries(call: &StepCall<'_>, tool: &str, args: Value) -> Result<Value> {
    let StepCall { engine, exec, i, deadline, cancel } = *call;
    let step = &exec.workflow.steps[i];
    let mut attempt = 1u32;
    // A step recovered while it waited for an approval waits for that same approval.
    let mut approval =
        exec.with_state(|s| s.steps[i].approval_id.clone()).filter(|id| engine.domain().approvals.get(id).is_some());
    loop {
        let result = call_once(call, tool, args.clone(), approval.take()).await;
        let error = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if attempt >= step.retry.max_attempts || cancel.is_cancelled() {
            return Err(error);
        }
        let Some(delay) = step.retry.delay_after(&error, attempt + 1, fastrand::f64()) else {
            return Err(error);
        };
        // A retry that cannot start before the deadline is not made.
        if deadline.is_some_and(|d| tokio::time::Instant::now() + delay >= d) {
            return Err(error);
        }
        let data = json!({"attempt": attempt, "next_attempt": attempt + 1, "delay_ms": delay.as_millis() as u64,
                          "code": error.code().as_str(), "message": error.to_string()});
        engine.events().publish(step_event(exec, i, kinds::STEP_RETRYING).data(data));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(Error::Cancelled(format!("step '{}' cancelled while waiting to retry", step.id))),
        }
        attempt += 1;
    }
}

/// One attempt: the circuit breaker, then `call_tool` (failing fast on approvals so
/// the execution can show `waiting_approval`, then calling again once approved).
async fn call_once(call: &StepCall<'_>, tool: &str, args: Value, approval_id: Option<String>) -> Result<Value> {
    let StepCall { engine, exec, i, deadline, cancel } = *call;
    let step = &exec.workflow.steps[i];
    let breaker = engine.breakers().get(tool);
    let (admission, transition) = breaker.admit(Instant::now());
    publish_transition(engine, exec, i, tool, transition);
    if let Admission::Rejected { retry_in } = admission {
        exec.with_state(|s| s.steps[i].attempts += 1);
        return Err(Error::Transport(format!(
            "tool '{tool}': circuit breaker open after repeated failures; next probe in {:.1} s",
            retry_in.as_secs_f64()
        )));
    }
    let mut approval_id = approval_id;
    loop {
        exec.with_state(|s| s.steps[i].attempts += 1);
        let timeout = match (step.timeout, deadline) {
            (t, Some(d)) => {
                let left = d.saturating_duration_since(tokio::time::Instant::now());
                Some(t.map_or(left, |t| t.min(left)))
            }
            (t, None) => t,
        };
        let options = CallOptions {
            timeout,
            tenant: exec.tenant.clone(),
            session: exec.session.clone(),
            user: exec.user.clone(),
            cancel: Some(cancel.clone()),
            fail_fast_on_approval: true,
            approval_id: approval_id.take(),
            trace: Some(Arc::new(CallTrace {
                execution_id: exec.id.clone(),
                workflow: exec.workflow.name.clone(),
                step_id: step.id.clone(),
            })),
        };
        let result = engine.call_tool(tool, args.clone(), options).await;
        if let Err(Error::ApprovalRequired { approval_id: id, .. }) = &result {
            let id = id.clone();
            // Attempts count tool runs; asking for an approval is not one.
            exec.with_state(|s| s.steps[i].attempts -= 1);
            match wait_for_approval(engine, exec, i, &id, cancel).await {
                Ok(()) => {
                    approval_id = Some(id);
                    continue;
                }
                Err(e) => {
                    // A refused approval is a denial: it says nothing about the tool's health.
                    breaker.record(Instant::now(), breaker::Outcome::Ignored);
                    return Err(e);
                }
            }
        }
        let transition = breaker.record(Instant::now(), outcome_of(&result));
        publish_transition(engine, exec, i, tool, transition);
        return result;
    }
}

/// The execution shows `waiting_approval` until `approve(id)` resolves it (or the run is cancelled).
async fn wait_for_approval(
    engine: &Engine,
    exec: &Execution,
    i: usize,
    id: &str,
    cancel: &CancellationToken,
) -> Result<()> {
    let Some(mut rx) = engine.domain().approvals.watch(id) else {
        return Err(Error::NotFound(format!("approval '{id}' disappeared")));
    };
    exec.with_state(|s| {
        s.steps[i].approval_id = Some(id.to_string());
        s.waiting_approvals += 1;
        Execution::refresh_status(s);
    });
    // A process that stops now leaves the approval id with the step: the next one waits for it.
    engine.persist_step(exec, i, None).await?;
    let status = tokio::select! {
        status = rx.wait_for(|s| *s != ApprovalStatus::Pending) => status.map(|s| *s).unwrap_or(ApprovalStatus::Denied),
        _ = cancel.cancelled() => ApprovalStatus::Pending,
    };
    exec.with_state(|s| {
        s.waiting_approvals -= 1;
        Execution::refresh_status(s);
    });
    let step = &exec.workflow.steps[i].id;
    match status {
        ApprovalStatus::Approved => Ok(()),
        ApprovalStatus::Denied => {
            let why = engine
                .domain()
                .approvals
                .get(id)
                .and_then(|a| a.resolution_reason)
                .unwrap_or_else(|| "no reason given".into());
            Err(Error::PermissionDenied(format!("step '{step}': approval '{id}' was refused ({why})")))
        }
        ApprovalStatus::Pending => {
            Err(Error::Cancelled(format!("step '{step}' cancelled while waiting for approval '{id}'")))
        }
    }
}

fn publish_transition(engine: &Engine, exec: &Execution, i: usize, tool: &str, transition: Option<Transition>) {
    let kind = match transition {
        Some(Transition::Opened) => kinds::BREAKER_OPENED,
        Some(Transition::Closed) => kinds::BREAKER_CLOSED,
        _ => return,
    };
    let event = step_event(exec, i, kind).tool(tool.to_string()).data(json!({"tool": tool}));
    engine.events().publish(event);
}
