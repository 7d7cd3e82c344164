//! Following executions: live progress lines from their events, and waiting until
//! an execution finishes or parks on an approval (`utp run`, `utp resume`, `utp approve`).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use utp_core::{Engine, Event};

/// Exit code: an execution waits for an approval.
pub const WAITING: u8 = 3;

/// How often a waiting command looks whether an execution has parked on an approval.
const POLL: Duration = Duration::from_millis(20);

/// Wait until the execution finishes, or (with a store) parks: it waits for an
/// approval, or is suspended, and that is committed, so this process may exit and a
/// later `utp approve` / `utp resume` continues it. Its record as it stands then.
pub async fn settle(engine: &Engine, id: &str) -> Value {
    let finished = engine.wait_execution(id);
    tokio::pin!(finished);
    let mut parked_since: Option<Instant> = None;
    loop {
        tokio::select! {
            record = &mut finished => {
                return record.map(|r| r.to_json()).unwrap_or_else(|e| json!({"execution_id": id, "status": "unknown",
                    "error": {"code": e.code().as_str(), "message": e.to_string()}}));
            }
            _ = tokio::time::sleep(POLL), if engine.store().is_some() => {
                let Ok(record) = engine.execution(id).map(|r| r.to_json()) else { continue };
                let status = record["status"].as_str().unwrap_or_default();
                if !matches!(status, "waiting_approval" | "suspended") {
                    parked_since = None;
                    continue;
                }
                let since = *parked_since.get_or_insert_with(Instant::now);
                // Parked once the store says so too (the step's commit carries the approval id).
                let stored = engine.store().and_then(|s| s.execution(id).ok().flatten()).map(|(row, _)| row.status);
                if stored.as_deref() == Some(status) || since.elapsed() > Duration::from_secs(2) {
                    return record;
                }
            }
        }
    }
}

/// The approval an execution waits for, if it does.
pub fn waiting_for(record: &Value) -> Option<String> {
    if record["status"] != "waiting_approval" {
        return None;
    }
    record["steps"].as_object()?.values().find_map(|s| {
        (s["status"] != "succeeded" && s["status"] != "failed" && s["status"] != "skipped")
            .then(|| s["approval_id"].as_str().map(str::to_string))
            .flatten()
    })
}

/// One progress line per workflow or step event, on stderr.
fn progress(event: &Event) -> Option<String> {
    let step = event.step_id.as_deref().unwrap_or("");
    let data = &event.data;
    let text = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let ms = |k: &str| data.get(k).and_then(Value::as_f64).map(|v| format!("{v:.0} ms")).unwrap_or_default();
    Some(match event.kind() {
        "workflow.started" => format!(
            "▶ {} started ({}, {} steps)",
            event.workflow.as_deref().unwrap_or(""),
            event.execution_id.as_deref().unwrap_or(""),
            data["steps"]
        ),
        "step.started" => format!("  {step:<14} started    {}", event.tool.as_deref().unwrap_or("")),
        "step.retrying" => format!(
            "  {step:<14} retrying   attempt {} failed [{}]; next in {} ms",
            data["attempt"],
            text("code"),
            data["delay_ms"]
        ),
        "step.completed" => {
            let fallback = if data["fallback"] == true { ", by its fallback" } else { "" };
            format!("  {step:<14} succeeded  {} attempt(s), {}{fallback}", data["attempts"], ms("duration_ms"))
        }
        "step.failed" => format!("  {step:<14} failed     [{}] {}", text("code"), text("message")),
        "step.skipped" => format!("  {step:<14} skipped    {}", text("reason")),
        "policy.denied" => format!("  {:<14} denied     {}", step, text("reason")),
        "breaker.opened" => format!("  circuit breaker opened for {}", text("tool")),
        "breaker.closed" => format!("  circuit breaker closed for {}", text("tool")),
        "workflow.suspended" => "⏸ suspended".into(),
        "workflow.resumed" => "▶ resumed".into(),
        "workflow.completed" => format!("✔ completed in {}", ms("duration_ms")),
        "workflow.error" => format!("✘ failed in {}: [{}] {}", ms("duration_ms"), text("code"), text("message")),
        "workflow.cancelled" => "✘ cancelled".into(),
        _ => return None,
    })
}

/// Print workflow and step events as progress lines on stderr; with `prefix`, each
/// line starts with its execution id (several executions at once).
pub fn subscribe_progress(engine: &Engine, prefix: bool) -> Option<utp_core::SubscriptionId> {
    engine
        .subscribe(
            "*",
            Arc::new(move |event| {
                if let Some(line) = progress(&event) {
                    let id = event.execution_id.as_deref().filter(|_| prefix);
                    let _ = match id {
                        Some(id) => writeln!(std::io::stderr().lock(), "{id} {line}"),
                        None => writeln!(std::io::stderr().lock(), "{line}"),
                    };
                }
                Ok(())
            }),
        )
        .ok()
}
