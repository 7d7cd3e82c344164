//! Engine overhead per workflow step, no I/O: native no-op tools, in-memory
//! executions. A 1-step and a 10-step chain of a compiled workflow, so the per-step
//! cost is visible apart from the per-run cost.
//! Run: cargo bench -p utp-core --bench workflows

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use serde_json::{Value, json};
use utp_core::Engine;
use utp_core::workflow::{RunOptions, WorkflowSource};

fn chain(steps: usize) -> Value {
    let steps: Vec<Value> = (0..steps)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "tool": "bench.noop", "args": {"n": "${{ inputs.n }}"}});
            if i > 0 {
                s["depends_on"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({"name": format!("chain{}", steps.len()), "inputs": {"n": {"type": "integer"}}, "steps": steps})
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let engine = Engine::from_json(json!({"events": {"history_size": 1000}})).unwrap();
    let noop: utp_core::NativeHandler = Arc::new(|_| async { Ok(Value::Null) }.boxed());
    engine.register_tool("bench.noop", noop, None, None, "", vec![]).unwrap();
    let mut group = c.benchmark_group("workflow_run");
    for steps in [1usize, 10] {
        let wf = engine.workflow(WorkflowSource::Definition(chain(steps))).unwrap();
        let run = || {
            let source = WorkflowSource::Compiled(wf.clone());
            let record =
                rt.block_on(engine.run_workflow(source, json!({"n": 1}), RunOptions::default())).unwrap().to_json();
            assert_eq!(record["status"], "completed");
            record
        };
        run();
        group.bench_function(format!("{steps}_step_chain"), |b| b.iter(run));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
