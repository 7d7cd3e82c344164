//! What the store remembers: `utp executions`, `utp show`, `utp events` (without a
//! command) and `utp approvals`. These read; they never resume or write anything.

use std::process::ExitCode;

use serde_json::Value;
use utp_core::Engine;
use utp_core::store::EventFilter;

use crate::db::Db;
use crate::fail;

/// `utp executions`: newest first.
pub fn executions(engine: &Engine, db: &Db, filter: &utp_core::store::ExecutionFilter, json: bool) -> ExitCode {
    // Newest first, the limit applied by the store (only the rows shown have their steps read).
    let list = match engine.executions_matching(filter) {
        Ok(l) => l.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        Err(e) => return fail(&format!("[{}] {e}", e.code())),
    };
    if json {
        emit_line(&pretty(&Value::Array(list)));
        return ExitCode::SUCCESS;
    }
    if list.is_empty() {
        eprintln!("utp: no executions recorded{}", db.place());
        return ExitCode::SUCCESS;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let (done, total) = step_counts(e);
            vec![
                text(&e["execution_id"]),
                text(&e["workflow"]),
                text(&e["status"]),
                time(&e["created_at"]),
                time(&e["finished_at"]),
                format!("{done}/{total}"),
            ]
        })
        .collect();
    print_table(&["ID", "WORKFLOW", "STATUS", "CREATED", "FINISHED", "STEPS"], &rows, "");
    ExitCode::SUCCESS
}

/// Steps that reached an end (succeeded, failed, skipped) and all steps.
fn step_counts(record: &Value) -> (usize, usize) {
    let steps = record["steps"].as_object();
    let total = steps.map_or(0, |s| s.len());
    let done = steps.map_or(0, |s| {
        s.values().filter(|v| matches!(v["status"].as_str(), Some("succeeded" | "failed" | "skipped"))).count()
    });
    (done, total)
}

/// `utp show ID`: the docs/design.md §7 record, with its steps.
pub fn show(engine: &Engine, db: &Db, id: &str, json: bool) -> ExitCode {
    let record = match engine.execution(id) {
        Ok(r) => r.to_json(),
        Err(e) if e.code() == utp_core::ErrorCode::NotFound => {
            return fail(&format!("[NOT_FOUND] no execution with id '{id}'{}", db.place()));
        }
        Err(e) => return fail(&format!("[{}] {e}", e.code())),
    };
    if json {
        emit_line(&pretty(&record));
        return ExitCode::SUCCESS;
    }
    emit(&describe(&record));
    ExitCode::SUCCESS
}

/// An execution record as text: a header, then one line per step.
pub fn describe(record: &Value) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<10} {v}\n"));
    line("execution", text(&record["execution_id"]));
    line("workflow", text(&record["workflow"]));
    line("status", text(&record["status"]));
    for key in ["session_id", "tenant"] {
        if !record[key].is_null() {
            line(key.trim_end_matches("_id"), text(&record[key]));
        }
    }
    line("created", time(&record["created_at"]));
    line("finished", time(&record["finished_at"]));
    if record.get("inputs").is_some_and(|v| !v.is_null()) {
        line("inputs", excerpt(&record["inputs"], 100));
    }
    if record.get("outputs").is_some_and(|v| !v.is_null()) {
        line("outputs", excerpt(&record["outputs"], 100));
    }
    if !record["error"].is_null() {
        line("error", error(&record["error"]));
    }
    if let Some(warnings) = record["warnings"].as_array() {
        for w in warnings {
            line("warning", text(w));
        }
    }
    let Some(steps) = record["steps"].as_object() else {
        return out;
    };
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|(id, s)| {
            let detail = if !s["error"].is_null() {
                error(&s["error"])
            } else if let Some(approval) = s["approval_id"].as_str().filter(|_| s["status"] != "succeeded") {
                format!("waits for approval {approval}")
            } else if s["status"] == "skipped" {
                s["note"].as_str().unwrap_or_default().to_string()
            } else if s.get("output").is_some_and(|o| !o.is_null()) {
                let note = s["note"].as_str().map(|n| format!("  ({n})")).unwrap_or_default();
                format!("{}{note}", excerpt(&s["output"], 60))
            } else {
                String::new()
            };
            vec![id.clone(), text(&s["status"]), s["attempts"].to_string(), text(&s["tool"]), detail]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["STEP", "STATUS", "ATTEMPTS", "TOOL", "OUTPUT / ERROR"], &rows, "  "));
    out
}

/// `utp events` without a command: the store's audit log, oldest first.
pub fn events(engine: &Engine, filter: &EventFilter, json: bool) -> ExitCode {
    if let Some(pattern) = &filter.kind {
        // The same check the live form makes: a pattern that can never match is a typo.
        if let Err(e) = engine.subscribe(pattern, std::sync::Arc::new(|_| Ok(()))).map(|id| engine.unsubscribe(id)) {
            eprintln!("utp: --type: [{}] {e}", e.code());
            return ExitCode::from(2);
        }
    }
    let list = match engine.stored_events(filter) {
        Ok(l) => l,
        Err(e) => return fail(&format!("[{}] {e}", e.code())),
    };
    if json {
        // One event per line (JSON Lines), as a log is read and piped.
        let mut out = String::new();
        for event in &list {
            out.push_str(&serde_json::to_string(event).unwrap_or_default());
            out.push('\n');
        }
        emit(&out);
        return ExitCode::SUCCESS;
    }
    if list.is_empty() {
        eprintln!("utp: no events");
        return ExitCode::SUCCESS;
    }
    let with_execution = filter.execution_id.is_none();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let mut row = vec![e["seq"].as_u64().map(|s| s.to_string()).unwrap_or_default(), clock(&e["time"])];
            row.push(text(&e["type"]));
            if with_execution {
                row.push(text(&e["execution_id"]));
            }
            row.push(text(&e["step_id"]));
            row.push(text(&e["tool"]));
            row.push(excerpt(&e["data"], 70));
            row
        })
        .collect();
    let mut headers = vec!["SEQ", "TIME", "TYPE"];
    if with_execution {
        headers.push("EXECUTION");
    }
    headers.extend(["STEP", "TOOL", "DATA"]);
    print_table(&headers, &rows, "");
    ExitCode::SUCCESS
}

/// `utp approvals`: approvals the store holds, oldest first.
pub fn approvals(engine: &Engine, pending_only: bool, json: bool) -> ExitCode {
    let list = engine.approvals(pending_only);
    if json {
        emit_line(&pretty(&serde_json::to_value(&list).unwrap_or_default()));
        return ExitCode::SUCCESS;
    }
    if list.is_empty() {
        eprintln!("utp: no {}approvals", if pending_only { "pending " } else { "" });
        return ExitCode::SUCCESS;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let v = serde_json::to_value(a).unwrap_or_default();
            vec![a.id.clone(), text(&v["status"]), a.tool.clone(), time(&v["created"]), a.reason.clone()]
        })
        .collect();
    print_table(&["ID", "STATUS", "TOOL", "CREATED", "REASON"], &rows, "");
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// Formatting

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A string as is, anything else as JSON, `null` as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `2026-01-31T12:00:00.123Z` → `2026-01-31 12:00:00` (UTC).
fn time(v: &Value) -> String {
    match v.as_str() {
        Some(t) if t.len() >= 19 => t[..19].replacen('T', " ", 1),
        _ => text(v),
    }
}

/// The time of day with milliseconds, `12:00:00.123`.
fn clock(v: &Value) -> String {
    match v.as_str() {
        Some(t) if t.len() >= 23 && t.as_bytes()[10] == b'T' => t[11..23].to_string(),
        _ => text(v),
    }
}

/// `[CODE] message`.
pub fn error(v: &Value) -> String {
    match (v["code"].as_str(), v["message"].as_str()) {
        (Some(c), Some(m)) => format!("[{c}] {m}"),
        _ => text(v),
    }
}

/// Compact JSON cut to `max` characters.
fn excerpt(v: &Value, max: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    };
    let s = s.replace(['\n', '\r', '\t'], " ");
    if s.chars().count() <= max {
        return s;
    }
    let cut: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

fn table(headers: &[&str], rows: &[Vec<String>], indent: &str) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut l = indent.to_string();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn print_table(headers: &[&str], rows: &[Vec<String>], indent: &str) {
    emit(&table(headers, rows, indent));
}

/// Write to stdout; a closed pipe (`utp events | head`) ends the output quietly.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

pub fn emit_line(text: &str) {
    emit(&format!("{text}\n"));
}
