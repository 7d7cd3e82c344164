//! Durable workflows/s from Rust: a 10-step chain of trivial native steps on a
//! fresh SQLite store, sequentially and with CONCURRENCY executions in flight,
//! per durability; also the time to open an engine on a fresh database.
//! The Python side-by-side with DBOS and LangGraph is bench/store/run.py.
//! Run: cargo run --release -p utp-core --example durable_load [-- WORKFLOWS CONCURRENCY]
//! (DURABILITY=normal,sync,off,none picks the durabilities; `none` runs without a store.)

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use serde_json::{Value, json};
use utp_core::Engine;
use utp_core::workflow::{RunOptions, WorkflowSource};

fn chain() -> Value {
    let steps: Vec<Value> = (0..10)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "tool": "load.step", "args": {"n": i}});
            if i > 0 {
                s["depends_on"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({"name": "ten_steps", "steps": steps})
}

/// Bytes this process has written so far (Linux `/proc/self/io`, `wchar`: every write call, page cache or not).
fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("wchar:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn engine(db: &std::path::Path, durability: &str) -> Result<Engine, Box<dyn std::error::Error>> {
    // "none": no store at all, the floor the store's cost is measured against.
    let config = match durability {
        "none" => json!({}),
        _ => json!({"store": {"url": format!("sqlite:{}", db.display()), "durability": durability}}),
    };
    let engine = Engine::from_json(config)?;
    let step: utp_core::NativeHandler =
        Arc::new(|args: Value| async move { Ok(json!({"ok": true, "n": args["n"]})) }.boxed());
    engine.register_tool("load.step", step, None, None, "", vec![])?;
    Ok(engine)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let workflows: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let concurrency: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;

    let mut opens = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        drop(engine(&dir.path().join(format!("open{i}.db")), "normal")?);
        opens.push(t.elapsed().as_secs_f64() * 1e3);
    }
    opens.sort_by(f64::total_cmp);
    println!("engine open on a fresh database (migrations): median {:.2} ms", opens[opens.len() / 2]);

    let durabilities = std::env::var("DURABILITY").unwrap_or_else(|_| "normal,sync,off".into());
    for durability in durabilities.split(',') {
        for (label, in_flight) in [("sequential", 1), ("concurrent", concurrency)] {
            let db = dir.path().join(format!("{durability}-{label}.db"));
            let engine = engine(&db, durability)?;
            let wf = engine.workflow(WorkflowSource::Definition(chain()))?;
            let t = Instant::now();
            let written = written_bytes();
            let failed = rt.block_on(async {
                let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let mut tasks = Vec::new();
                for _ in 0..in_flight {
                    let (engine, wf, next) = (engine.clone(), wf.clone(), next.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut failed = 0;
                        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < workflows {
                            let source = WorkflowSource::Compiled(wf.clone());
                            let record = engine.run_workflow(source, json!({}), RunOptions::default()).await;
                            if !record.is_ok_and(|r| r.to_json()["status"] == "completed") {
                                failed += 1;
                            }
                        }
                        failed
                    }));
                }
                let mut failed = 0;
                for t in tasks {
                    failed += t.await.unwrap_or(1);
                }
                failed
            });
            let secs = t.elapsed().as_secs_f64();
            let kib = (written_bytes() - written) as f64 / 1024.0 / workflows as f64;
            println!(
                "durability {durability:6} {label:10} ({in_flight} in flight): {:8.0} workflows/s ({workflows} in {secs:.2} s, {failed} failed, {kib:.0} KiB written per workflow)",
                workflows as f64 / secs
            );
        }
    }
    Ok(())
}
