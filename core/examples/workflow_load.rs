//! 10,000 concurrent executions of a 3-step workflow over native tools: prints
//! executions/s and the process's peak RSS (Linux `VmHWM`).
//! Run: cargo run --release -p utp-core --example workflow_load [-- EXECUTIONS]

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use serde_json::{Value, json};
use utp_core::Engine;
use utp_core::workflow::{RunOptions, WorkflowSource};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let executions: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let engine = Engine::from_json(json!({}))?;
    let add: utp_core::NativeHandler =
        Arc::new(|args: Value| async move { Ok(json!({"n": args["n"].as_i64().unwrap_or(0) + 1})) }.boxed());
    engine.register_tool("load.add", add, None, None, "", vec![])?;
    let wf = engine.workflow(WorkflowSource::Definition(json!({
        "name": "three_steps",
        "inputs": {"n": {"type": "integer"}},
        "steps": [
            {"id": "a", "tool": "load.add", "args": {"n": "${{ inputs.n }}"}},
            {"id": "b", "tool": "load.add", "depends_on": ["a"], "args": {"n": "${{ steps.a.output.n }}"}},
            {"id": "c", "tool": "load.add", "depends_on": ["b"], "args": {"n": "${{ steps.b.output.n }}"}}
        ],
        "outputs": {"n": "${{ steps.c.output.n }}"}
    })))?;
    let before = peak_rss_mb();
    let started = Instant::now();
    let completed = rt.block_on(async {
        // All started before any is awaited: they are in flight together.
        let mut ids = Vec::with_capacity(executions);
        for i in 0..executions {
            let exec =
                engine.start_workflow(WorkflowSource::Compiled(wf.clone()), json!({"n": i}), RunOptions::default())?;
            ids.push((i, exec));
        }
        let mut completed = 0usize;
        for (i, exec) in ids {
            exec.wait().await;
            let record = exec.to_value(true);
            if record["status"] == "completed" && record["outputs"]["n"] == json!(i + 3) {
                completed += 1;
            }
        }
        Ok::<usize, utp_core::Error>(completed)
    })?;
    let elapsed = started.elapsed();
    println!(
        "{{\"executions\": {executions}, \"completed\": {completed}, \"seconds\": {:.3}, \"executions_per_s\": {:.0}, \"steps_per_s\": {:.0}, \"peak_rss_mb\": {:.1}, \"rss_before_mb\": {before:.1}}}",
        elapsed.as_secs_f64(),
        executions as f64 / elapsed.as_secs_f64(),
        3.0 * executions as f64 / elapsed.as_secs_f64(),
        peak_rss_mb()
    );
    if completed != executions {
        return Err(format!("{} of {executions} executions did not complete correctly", executions - completed).into());
    }
    Ok(())
}
