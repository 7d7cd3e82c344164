//! Store costs: opening a database (fresh, with migrations; existing), and the
//! writes of a 10-step workflow (header, 10 `put_step` each with 2 events, final
//! header) sequentially and from 8 threads, per durability. The storage layer
//! alone: no engine, no tools.
//! Run: cargo bench -p utp-core --bench store
//!
//! Where a commit's time goes (writer timings, 2-core VM, normal, sequential):
//! ~40 µs in COMMIT (about 7 WAL frames, two pwrites each), ~11 µs applying the
//! write, ~5 µs BEGIN, ~10 µs waking the caller, and the wait for the caller's
//! next write. SQLite's automatic checkpoint (every 1000 frames, two fsyncs, on the
//! writer) was the largest cost before, and dominated when fsyncs were slow: it now
//! runs on a checkpointer thread. Medians per 10-step workflow (12 commits), before
//! -> after, same machine and load, alternating runs (3 rounds):
//!   normal/1 1.28-1.68 ms -> 0.92-1.12 ms; normal/8 0.56-0.68 ms -> 0.48-0.52 ms;
//!   sync/1 and sync/8 unchanged (fsync-bound, 2.5-3.3 ms and 0.83-1.01 ms).
//! With slow fsyncs (~3 ms each) the first comparison gave normal/1 3.23 -> 1.71 ms,
//! normal/8 1.21 -> 0.95 ms, sync/8 3.35 -> 1.01 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use utp_core::store::{Durability, ExecutionRow, SqliteStore, StepRow, Store};

fn header(id: &str, status: &str) -> ExecutionRow {
    ExecutionRow {
        id: id.into(),
        workflow: "bench".into(),
        definition: json!({"name": "bench", "steps": (0..10).map(|i| json!({"id": format!("s{i}"), "tool": "t.noop"})).collect::<Vec<_>>()}),
        status: status.into(),
        inputs: json!({"n": 1}),
        outputs: Value::Null,
        error: Value::Null,
        warnings: vec![],
        tenant: Some("acme".into()),
        session: Some("s".into()),
        user: None,
        timeout_ms: None,
        created_at: "2024-01-01T00:00:00Z".into(),
        finished_at: None,
    }
}

/// One workflow's writes, each step committed before the next starts (as the engine does).
fn workflow(store: &dyn Store, id: &str) {
    store.put_execution(header(id, "running")).wait_blocking().unwrap();
    for k in 0..10u32 {
        let step = StepRow {
            execution_id: id.into(),
            step_id: format!("s{k}"),
            index: k,
            status: "succeeded".into(),
            output: json!({"ok": true}),
            error: Value::Null,
            attempts: 1,
            started_at: Some("2024-01-01T00:00:00Z".into()),
            finished_at: Some("2024-01-01T00:00:00.001Z".into()),
            note: None,
            approval_id: None,
        };
        let events = vec![
            json!({"type": "step.started", "time": "2024-01-01T00:00:00Z", "execution_id": id, "step_id": step.step_id, "data": {}}),
            json!({"type": "step.completed", "time": "2024-01-01T00:00:00.001Z", "execution_id": id, "step_id": step.step_id, "data": {}}),
        ];
        store.put_step(step, Some("running".into()), events).wait_blocking().unwrap();
    }
    let mut done = header(id, "completed");
    done.finished_at = Some("2024-01-01T00:00:01Z".into());
    store.put_execution(done).wait_blocking().unwrap();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_open");
    g.sample_size(20);
    // Only the open is timed; the drop (WAL checkpoint on close) is not.
    g.bench_function("fresh_with_migrations", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let t = Instant::now();
                let s = SqliteStore::open(&dir.path().join("utp.db"), Durability::Normal).unwrap();
                total += t.elapsed();
                drop(s);
            }
            total
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("utp.db");
    {
        let s = SqliteStore::open(&path, Durability::Off).unwrap();
        for i in 0..200 {
            workflow(&s, &format!("w{i}"));
        }
    }
    g.bench_function("existing_2000_steps_with_unfinished", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let s = SqliteStore::open(&path, Durability::Normal).unwrap();
                let _ = s.unfinished().unwrap();
                total += t.elapsed();
                drop(s);
            }
            total
        })
    });
    g.finish();
}

/// One small write and its commit, waited on: the writer round trip plus the commit.
fn single_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_single_commit");
    g.sample_size(20);
    for durability in [Durability::Off, Durability::Normal, Durability::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("utp.db"), durability).unwrap();
        let mut i = 0u64;
        g.bench_function(durability.as_str(), |b| {
            b.iter(|| {
                i += 1;
                store.put_session_state("t", &format!("s{}", i % 100), json!(i)).wait_blocking().unwrap();
            })
        });
    }
    g.finish();
}

fn workflows(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_workflow_10_steps");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for durability in [Durability::Normal, Durability::Sync] {
        for threads in [1usize, 8] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SqliteStore::open(&dir.path().join("utp.db"), durability).unwrap());
            let mut next = 0u64;
            let name = format!("{durability}/{threads}_concurrent");
            let mut total = (0u64, Duration::ZERO);
            g.bench_function(&name, |b| {
                b.iter_custom(|iters| {
                    // `iters` workflows spread over `threads` threads.
                    let base = next;
                    next += iters;
                    let t = Instant::now();
                    std::thread::scope(|scope| {
                        for th in 0..threads as u64 {
                            let store = store.clone();
                            scope.spawn(move || {
                                let mut i = th;
                                while i < iters {
                                    workflow(store.as_ref(), &format!("w{}", base + i));
                                    i += threads as u64;
                                }
                            });
                        }
                    });
                    let el = t.elapsed();
                    total = (total.0 + iters, total.1 + el);
                    el
                })
            });
            let stats = store.writer_stats();
            eprintln!(
                "{name}: {:.0} workflows/s; {:.1} writes per transaction",
                total.0 as f64 / total.1.as_secs_f64(),
                stats.writes as f64 / stats.transactions.max(1) as f64
            );
        }
    }
    g.finish();
}

criterion_group!(benches, open, single_commit, workflows);
criterion_main!(benches);
