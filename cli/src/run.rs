//! `utp run`: run a workflow with live progress from its events.

use std::process::ExitCode;

use serde_json::{Map, Value};
use utp_core::Engine;
use utp_core::workflow::{RunOptions, WorkflowSource};

/// `k=v` pairs → the inputs object; a value that parses as JSON is JSON (`n=3` is a
/// number, `tags=["a"]` a list), anything else a string.
pub fn parse_inputs(pairs: &[String]) -> Result<Value, String> {
    let mut inputs = Map::new();
    for pair in pairs {
        let Some((key, raw)) = pair.split_once('=') else {
            return Err(format!("--input '{pair}' is not key=value"));
        };
        if key.trim().is_empty() {
            return Err(format!("--input '{pair}' has an empty key"));
        }
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        inputs.insert(key.trim().to_string(), value);
    }
    Ok(Value::Object(inputs))
}

/// Run the workflow (`repeat` copies at once); print progress on stderr and the
/// outputs (or, with `json`, the whole record) on stdout, a list of them when
/// `repeat > 1`. With a store, a run that waits for an approval is left saved and
/// the command exits 3 (`utp approve ID` continues it). Exit 0 when all completed.
pub async fn run(
    engine: &Engine,
    workflow: &str,
    inputs: Value,
    options: RunOptions,
    repeat: usize,
    json: bool,
) -> ExitCode {
    let compiled = match engine.workflow(WorkflowSource::from_text(workflow)) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("utp: [{}] {e}", e.code());
            return ExitCode::FAILURE;
        }
    };
    let printer = crate::watch::subscribe_progress(engine, repeat > 1);
    let mut ids = Vec::new();
    let mut failure = None;
    for _ in 0..repeat.max(1) {
        match engine.start_workflow(WorkflowSource::Compiled(compiled.clone()), inputs.clone(), options.clone()) {
            Ok(exec) => ids.push(exec.id.clone()),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut records = Vec::new();
    for id in &ids {
        records.push(crate::watch::settle(engine, id).await);
    }
    engine.events().flush(std::time::Duration::from_secs(2));
    if let Some(id) = printer {
        engine.unsubscribe(id);
    }
    if let Some(e) = failure {
        eprintln!("utp: [{}] {e}", e.code());
        return ExitCode::FAILURE;
    }
    for record in &records {
        if let Some(approval) = crate::watch::waiting_for(record) {
            eprintln!(
                "⏸ {} waits for approval {approval}: `utp approve {approval}` continues it (`--deny` refuses)",
                record["execution_id"].as_str().unwrap_or_default()
            );
        }
    }
    let shown: Vec<&Value> = records.iter().map(|r| if json { r } else { &r["outputs"] }).collect();
    let text = match shown.as_slice() {
        [one] => serde_json::to_string_pretty(one),
        many => serde_json::to_string_pretty(many),
    };
    println!("{}", text.unwrap_or_default());
    let status = |s: &str| records.iter().any(|r| r["status"] == s);
    if records.iter().all(|r| r["status"] == "completed") {
        ExitCode::SUCCESS
    } else if status("failed") || status("cancelled") || records.iter().any(|r| r["status"].is_null()) {
        ExitCode::FAILURE
    } else {
        ExitCode::from(crate::watch::WAITING)
    }
}
