//! Engine overhead per `call_tool`, no I/O: a native no-op tool (with and without
//! an inputs schema), argument validation alone, and a `text` tool.
//! Run: cargo bench -p utp-core --bench calls
//!
//! Each iteration is one `block_on` of a current-thread tokio runtime (time driver
//! on, as `call_tool`'s timeout needs it); `runtime/block_on_empty` is that floor.
//! Arguments are cloned outside the timed part (`iter_batched`).

use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use serde_json::{Value, json};
use utp_core::{CallOptions, Engine, ManualSource};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
        "required": ["query"]
    })
}

fn args() -> Value {
    json!({"query": "weather in Lisbon", "limit": 5})
}

fn engine() -> Engine {
    let engine = Engine::from_json(json!({})).unwrap();
    let noop: utp_core::NativeHandler = Arc::new(|_args| async { Ok(Value::Null) }.boxed());
    engine.register_tool("bench.noop", noop.clone(), Some(schema()), None, "no-op, 2-property schema", vec![]).unwrap();
    engine.register_tool("bench.noop_any", noop, None, None, "no-op, no schema", vec![]).unwrap();
    let rt = runtime();
    rt.block_on(engine.register_manual(
        ManualSource::Inline(json!({"tools": [{
            "name": "hello",
            "description": "constant text",
            "inputs": schema(),
            "tool_call_template": {"call_template_type": "text", "content": "hello from a text tool"}
        }]})),
        Some("text"),
    ))
    .unwrap();
    engine
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn bench_calls(c: &mut Criterion) {
    let engine = engine();
    let rt = runtime();
    // Sanity: every tool answers before it is timed.
    assert_eq!(rt.block_on(engine.call_tool("bench.noop", args(), CallOptions::default())).unwrap(), Value::Null);
    assert_eq!(
        rt.block_on(engine.call_tool("text.hello", args(), CallOptions::default())).unwrap(),
        json!("hello from a text tool")
    );
    assert!(rt.block_on(engine.call_tool("bench.noop", json!({"limit": 0}), CallOptions::default())).is_err());

    let mut g = c.benchmark_group("call_tool");
    for (label, tool) in
        [("native_noop_2_props", "bench.noop"), ("native_noop_no_schema", "bench.noop_any"), ("text", "text.hello")]
    {
        g.bench_function(label, |b| {
            b.iter_batched(
                args,
                |a| rt.block_on(engine.call_tool(tool, a, CallOptions::default())).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("native_noop_2_props_invalid_args", |b| {
        b.iter_batched(
            || json!({"limit": 0}),
            |a| rt.block_on(engine.call_tool("bench.noop", a, CallOptions::default())).unwrap_err(),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("validation");
    // What `validate_args` does per call: wrap a copy of the arguments map, `is_valid`.
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let map = args().as_object().unwrap().clone();
    g.bench_function("clone_args_and_is_valid", |b| {
        b.iter(|| validator.is_valid(&Value::Object(std::hint::black_box(&map).clone())))
    });
    let instance = args();
    g.bench_function("is_valid_only", |b| b.iter(|| validator.is_valid(std::hint::black_box(&instance))));
    g.finish();

    c.bench_function("runtime/block_on_empty", |b| b.iter(|| rt.block_on(async { std::hint::black_box(1) })));
}

criterion_group!(benches, bench_calls);
criterion_main!(benches);
