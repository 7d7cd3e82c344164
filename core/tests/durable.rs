//! The engine on a SQLite store (docs/design.md §9): what a run commits, what a new engine
//! on the same file sees, recovery of executions a previous engine left unfinished
//! (completed steps never re-run), session state and approvals across engines,
//! retention, and clear STORE errors for a database that cannot be opened or written.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use utp_core::store::{EventFilter, ExecutionRow, SqliteStore, StepRow, Store};
use utp_core::workflow::{RunOptions, WorkflowSource};
use utp_core::{Engine, ErrorCode, NativeHandler};

/// Invocations per `<execution_id>:<step_id>` (the step's idempotency key).
type Calls = Arc<Mutex<HashMap<String, usize>>>;

/// An engine on `db` with `t.step`: returns `{n: args.n}` and counts its invocations
/// by the key the workflow passes in `args.key`.
fn engine(db: &Path, extra: Value) -> (Engine, Calls) {
    let mut config = json!({"store": {"url": format!("sqlite:{}", db.display())}});
    if let (Value::Object(c), Value::Object(x)) = (&mut config, extra) {
        c.extend(x);
    }
    let e = Engine::from_json(config).unwrap();
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let handler: NativeHandler = Arc::new(move |args: Value| {
        let seen = seen.clone();
        async move {
            let key = args["key"].as_str().unwrap_or_default().to_string();
            *seen.lock().entry(key).or_default() += 1;
            Ok(json!({"n": args["n"]}))
        }
        .boxed()
    });
    e.register_tool("t.step", handler, None, None, "", vec![]).unwrap();
    (e, calls)
}

/// `n` steps in a chain; each passes its idempotency key and the previous output + 1.
fn chain(n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "tool": "t.step",
                               "args": {"key": format!("${{{{ execution.id + ':s{i}' }}}}"), "n": i}});
            if i > 0 {
                s["depends_on"] = json!([format!("s{}", i - 1)]);
                s["args"]["n"] = json!(format!("${{{{ steps.s{}.output.n + 1 }}}}", i - 1));
            }
            s
        })
        .collect();
    json!({"name": "chain", "steps": steps, "outputs": {"last": format!("${{{{ steps.s{}.output.n }}}}", n - 1)}})
}

fn kinds_of(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap_or_default().to_string()).collect()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// Dropping the engine as soon as `run_workflow` returns releases the file: a new
/// engine opens it at once (the run's task held the engine past the wake-up, and
/// under load the second open found the lock still taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_dropped_after_a_run_releases_the_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("utp.db");
    for round in 0..25 {
        let (e, _) = engine(&db, json!({}));
        let record = e.run_workflow(WorkflowSource::Definition(chain(2)), json!({}), RunOptions::default()).await;
        assert_eq!(record.unwrap().to_json()["status"], "completed");
        drop(e);
        let again = Engine::from_json(json!({"store": {"url": format!("sqlite:{}", db.display())}}));
        assert!(again.is_ok(), "round {round}: {:?}", again.err());
    }
}

#[tokio::test]
async fn a_run_is_committed_and_a_new_engine_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/utp.db");
    let id = {
        let (e, calls) = engine(&db, json!({}));
        let record = e
            .run_workflow(
                WorkflowSource::Definition(chain(4)),
                json!({}),
                RunOptions { session: Some("s1".into()), ..Default::default() },
            )
            .await
            .unwrap()
            .to_json();
        assert_eq!(record["status"], "completed", "{record:#}");
        assert_eq!(record["outputs"]["last"], 3);
        assert_eq!(calls.lock().len(), 4);
        record["execution_id"].as_str().unwrap().to_string()
    };
    // A new engine on the same file: the record, the listing and the audit log.
    let (e, calls) = engine(&db, json!({}));
    let record = e.execution(&id).unwrap().to_json();
    assert_eq!(record["status"], "completed");
    assert_eq!(record["outputs"]["last"], 3);
    assert_eq!(record["steps"]["s2"]["output"]["n"], 2);
    assert_eq!(record["steps"]["s3"]["tool"], "t.step");
    let listed = e.executions(Some("completed"), Some("s1")).unwrap().iter().map(|r| r.to_json()).collect::<Vec<_>>();
    assert_eq!(listed.len(), 1);
    assert!(listed[0]["steps"]["s0"].get("output").is_none(), "listings leave step outputs out");
    assert!(e.executions(Some("failed"), None).unwrap().is_empty());
    let events = e.stored_events(&EventFilter { execution_id: Some(id.clone()), ..Default::default() }).unwrap();
    let kinds = kinds_of(&events);
    assert_eq!(count(&kinds, "workflow.started"), 1, "{kinds:?}");
    assert_eq!(count(&kinds, "step.started"), 4);
    assert_eq!(count(&kinds, "step.completed"), 4);
    assert_eq!(count(&kinds, "tool.called"), 4);
    assert_eq!(count(&kinds, "workflow.completed"), 1);
    assert_eq!(kinds.first().map(String::as_str), Some("workflow.started"));
    assert_eq!(kinds.last().map(String::as_str), Some("workflow.completed"));
    // Nothing to recover: nothing runs again.
    assert!(e.recover().await.unwrap().is_empty());
    assert!(calls.lock().is_empty());
}

/// A run's end commits with the step it ended with and the steps it never ran: a new
/// engine reads the same record as the run returned, and the audit log ends the same way.
#[tokio::test]
async fn a_failed_run_commits_its_last_step_and_the_steps_it_never_ran() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("utp.db");
    let mut wf = chain(4);
    wf["steps"][1]["tool"] = json!("t.fail");
    let returned = {
        let (e, calls) = engine(&db, json!({}));
        let fail: NativeHandler = Arc::new(|_args: Value| {
            async { Err(utp_core::Error::with_code(ErrorCode::ToolFailed, "out of stock")) }.boxed()
        });
        e.register_tool("t.fail", fail, None, None, "", vec![]).unwrap();
        let record =
            e.run_workflow(WorkflowSource::Definition(wf), json!({}), RunOptions::default()).await.unwrap().to_json();
        assert_eq!(record["status"], "failed", "{record:#}");
        assert_eq!(calls.lock().len(), 1);
        record
    };
    let (e, _) = engine(&db, json!({}));
    let id = returned["execution_id"].as_str().unwrap();
    let stored = e.execution(id).unwrap().to_json();
    assert_eq!(stored["status"], "failed");
    for s in ["s0", "s1", "s2", "s3"] {
        assert_eq!(stored["steps"][s]["status"], returned["steps"][s]["status"], "{s}: {stored:#}");
    }
    assert_eq!(stored["steps"]["s1"]["status"], "failed");
    assert_eq!(stored["steps"]["s1"]["error"]["code"], "TOOL_FAILED");
    assert_eq!(stored["steps"]["s3"]["status"], "skipped");
    assert!(stored["steps"]["s3"]["note"].as_str().unwrap().starts_with("not run"), "{stored:#}");
    let events = e.stored_events(&EventFilter { execution_id: Some(id.into()), ..Default::default() }).unwrap();
    let kinds = kinds_of(&events);
    assert_eq!(kinds[kinds.len() - 2..], ["step.failed", "workflow.error"], "{kinds:?}");
    assert!(e.recover().await.unwrap().is_empty());
}

/// What a process killed after committing `done` steps of a chain leaves behind.
fn leave_unfinished(db: &Path, id: &str, steps: usize, done: usize, running: Option<usize>) {
    let store = SqliteStore::open(db, Default::default()).unwrap();
    let created = "2026-01-01T00:00:00Z".to_string();
    store
        .put_execution(ExecutionRow {
            id: id.into(),
            workflow: "chain".into(),
            definition: chain(steps),
            status: "running".into(),
            inputs: json!({}),
            outputs: Value::Null,
            error: Value::Null,
            warnings: vec![],
            tenant: None,
            session: None,
            user: None,
            timeout_ms: None,
            created_at: created.clone(),
            finished_at: None,
        })
        .wait_blocking()
        .unwrap();
    let row = |i: usize, status: &str, output: Value| StepRow {
        execution_id: id.into(),
        step_id: format!("s{i}"),
        index: i as u32,
        status: status.into(),
        output,
        error: Value::Null,
        attempts: 1,
        started_at: Some(created.clone()),
        finished_at: (status == "succeeded").then(|| created.clone()),
        note: None,
        approval_id: None,
    };
    for i in 0..done {
        let event = json!({"id": i + 1, "type": "step.completed", "time": created, "execution_id": id, "step_id": format!("s{i}"), "data": {}});
        store
            .put_step(row(i, "succeeded", json!({"n": i * 10})), Some("running".into()), vec![event])
            .wait_blocking()
            .unwrap();
    }
    if let Some(i) = running {
        store.put_step(row(i, "running", Value::Null), None, vec![]).wait_blocking().unwrap();
    }
}

#[tokio::test]
async fn an_unfinished_execution_resumes_from_its_last_committed_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("utp.db");
    leave_unfinished(&db, "exe_crashed", 5, 2, Some(2));
    let (e, calls) = engine(&db, json!({}));
    let resumed = e.recover().await.unwrap();
    assert_eq!(resumed, vec!["exe_crashed".to_string()]);
    let record = e.wait_execution("exe_crashed").await.unwrap().to_json();
    assert_eq!(record["status"], "completed", "{record:#}");
    // s0 and s1 kept their committed outputs (n = 0, 10); s2 re-ran from s1's output.
    assert_eq!(record["steps"]["s1"]["output"]["n"], 10);
    assert_eq!(record["steps"]["s2"]["output"]["n"], 11);
    assert_eq!(record["outputs"]["last"], 13);
    let calls = calls.lock().clone();
    assert_eq!(calls.len(), 3, "only s2..s4 ran: {calls:?}");
    for step in ["s2", "s3", "s4"] {
        assert_eq!(calls.get(&format!("exe_crashed:{step}")), Some(&1), "{calls:?}");
    }
    drop(e);
    // The store agrees, and every step has one completion event.
    let (e, _) = engine(&db, json!({}));
    assert_eq!(e.execution("exe_crashed").unwrap().to_json()["status"], "completed");
    let events =
        e.stored_events(&EventFilter { execution_id: Some("exe_crashed".into()), ..Default::default() }).unwrap();
    let kinds = kinds_of(&events);
    assert_eq!(count(&kinds, "step.completed"), 5, "{kinds:?}");
    assert_eq!(count(&kinds, "workflow.completed"), 1);
    assert_eq!(count(&kinds, "workflow.resumed"), 1);
}

#[tokio::test]
async fn engine_open_recovers_and_a_workflow_whose_tools_are_missing_waits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("utp.db");
    leave_unfinished(&db, "exe_a", 3, 1, None);
    // `Engine::open` recovers, but `t.step` is a native tool the host registers
    // after opening: the execution stays in the store, untouched.
    let config = utp_core::Config::from_value(json!({"store": format!("sqlite:{}", db.display())})).unwrap();
    let e = Engine::open(config).await.unwrap();
    assert_eq!(e.execution("exe_a").unwrap().to_json()["status"], "running");
    drop(e);
    let (e, calls) = engine(&db, json!({}));
    assert_eq!(e.recover().await.unwrap(), vec!["exe_a".to_string()]);
    assert_eq!(e.wait_execution("exe_a").await.unwrap().to_json()["status"], "completed");
    assert_eq!(calls.lock().len(), 2);
}

#[tokio::test]
async fn session_state_and_approvals_outlive_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("utp.db");
    let extra = json!({"security": {"levels": {"t.step": "restricted"}}});
    let (approval, id) = {
        let (e, _) = engine(&db, extra.clone());
        assert!(e.set_session_value(Some("acme"), Some("s1"), "cart", json!([1, 2])));
        let exec = e.start_workflow(WorkflowSource::Definition(chain(2)), json!({}), RunOptions::default()).unwrap();
        // Wait until s0 asks for its approval; then the engine goes away (as a process would).
        let mut approval = None;
        for _ in 0..200 {
            if let Some(a) = e.approvals(true).first() {
                approval = Some(a.id.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let approval = approval.expect("an approval was requested");
        for _ in 0..200 {
            if e.execution(&exec.id).unwrap().to_json()["status"] == "waiting_approval" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        e.cancel(&exec.id).unwrap();
        // Its end is committed before the engine (and its hold on the file) goes away.
        assert_eq!(e.wait_execution(&exec.id).await.unwrap().to_json()["status"], "cancelled");
        (approval, exec.id.clone())
    };
    let (e, _) = engine(&db, extra);
    assert_eq!(e.session_state(Some("acme"), Some("s1")), json!({"cart": [1, 2]}));
    let pending = e.approvals(true);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].id, approval);
    let resolved = e.approve(&approval, false, Some("not today")).unwrap();
    assert_eq!(resolved.status, utp_core::ApprovalStatus::Denied);
    drop(e);
    let (e, _) = engine(&db, json!({}));
    let all = e.approvals(false);
    assert_eq!(all[0].resolution_reason.as_deref(), Some("not today"));
    assert_eq!(e.execution(&id).unwrap().to_json()["status"], "cancelled");
    assert!(e.recover().await.unwrap().is_empty(), "a cancelled execution is finished");
}

#[test]
fn a_step_waiting_for_an_approval_waits_for_the_same_approval_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("utp.db");
    let extra = json!({"security": {"levels": {"t.step": "restricted"}}});
    // First engine: the run reaches s0's approval; the "process" stops without
    // finishing it (the task is left behind with its engine, as a killed process would).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (approval, id) = runtime.block_on(async {
        let (e, _) = engine(&db, extra.clone());
        let exec = e.start_workflow(WorkflowSource::Definition(chain(2)), json!({}), RunOptions::default()).unwrap();
        loop {
            if e.execution(&exec.id).unwrap().to_json()["status"] == "waiting_approval" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (e.approvals(true)[0].id.clone(), exec.id.clone())
    });
    // The engine and its store go away with the runtime's tasks, as with a killed process.
    runtime.shutdown_timeout(Duration::from_secs(5));
    // Second engine: the execution is still waiting for that approval; approving it runs the rest.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (e, calls) = engine(&db, extra);
        assert_eq!(e.recover().await.unwrap(), vec![id.clone()]);
        for _ in 0..200 {
            if e.execution(&id).unwrap().to_json()["status"] == "waiting_approval" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(e.execution(&id).unwrap().to_json()["status"], "waiting_approval");
        e.approve(&approval, true, None).unwrap();
        // s1 asks for its own approval.
        let mut second = None;
        for _ in 0..2000 {
            second = e.approvals(true).first().map(|a| a.id.clone());
            if second.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let second = second
            .unwrap_or_else(|| panic!("s1 never asked for its approval: {:#}", e.execution(&id).unwrap().to_json()));
        e.approve(&second, true, None).unwrap();
        let record = e.wait_execution(&id).await.unwrap().to_json();
        assert_eq!(record["status"], "completed", "{record:#}");
        assert_eq!(calls.lock().len(), 2);
    });
}

#[tokio::test]
async fn retention_deletes_old_finished_executions_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("utp.db");
    leave_unfinished(&db, "exe_old_running", 2, 0, None);
    let (e, _) = engine(&db, json!({"store": {"url": format!("sqlite:{}", db.display()), "recover": false}}));
    let record =
        e.run_workflow(WorkflowSource::Definition(chain(2)), json!({}), RunOptions::default()).await.unwrap().to_json();
    let id = record["execution_id"].as_str().unwrap().to_string();
    // Nothing is older than an hour.
    assert_eq!(e.prune_store(Duration::from_secs(3600)).unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let deleted = e.prune_store(Duration::from_millis(1)).unwrap();
    assert!(deleted > 0);
    let store = e.store().unwrap();
    assert!(store.execution(&id).unwrap().is_none());
    assert!(store.events(&EventFilter { execution_id: Some(id.clone()), ..Default::default() }).unwrap().is_empty());
    // The unfinished one (created long ago) is untouched.
    assert_eq!(e.execution("exe_old_running").unwrap().to_json()["status"], "running");
}

#[tokio::test]
async fn bad_databases_are_clear_store_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A file that is not a database.
    let foreign = dir.path().join("notes.db");
    std::fs::write(&foreign, b"these are my notes, not a database; ".repeat(200)).unwrap();
    let e = Engine::from_json(json!({"store": format!("sqlite:{}", foreign.display())})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Store, "{e}");
    assert!(e.to_string().contains("notes.db"), "{e}");
    // A second engine on a file the first one holds.
    let db = dir.path().join("utp.db");
    let (_first, _) = engine(&db, json!({}));
    let e = Engine::from_json(json!({"store": format!("sqlite:{}", db.display())})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Store, "{e}");
    // Unknown store kinds and durabilities are argument errors.
    for bad in [json!("postgres://x"), json!({"url": "sqlite:/tmp/x.db", "durability": "eventually"})] {
        let e = Engine::from_json(json!({ "store": bad })).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    }
    // A folder that cannot be written: a read-only mount where this process may mount
    // one (root ignores permission bits), else permission bits.
    let ro_mount = dir.path().join("ro_mount");
    std::fs::create_dir(&ro_mount).unwrap();
    if mount_tmpfs(&ro_mount, "ro,size=64k") {
        let _unmount = Unmount(&ro_mount);
        let e = Engine::from_json(json!({"store": format!("sqlite:{}/utp.db", ro_mount.display())})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Store, "{e}");
        assert!(e.to_string().contains("ro_mount"), "{e}");
    }
    #[cfg(unix)]
    if rustix::process::geteuid().as_raw() != 0 {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let e = Engine::from_json(json!({"store": format!("sqlite:{}/utp.db", ro.display())})).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Store, "{e}");
    }
}

/// Mount a small tmpfs on `dir` with `options`; false where this process may not.
fn mount_tmpfs(dir: &Path, options: &str) -> bool {
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Unmounts on drop.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

/// A store on a full disk (a 1 MB tmpfs, when this process may mount one): the run
/// fails with STORE, and what was committed before stays readable.
#[tokio::test]
async fn a_full_disk_fails_the_run_with_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    if !mount_tmpfs(&mount, "size=1m") {
        eprintln!("skipped: cannot mount a tmpfs here (the store's own tests cover a full disk with max_page_count)");
        return;
    }
    let _unmount = Unmount(&mount);
    let db = mount.join("utp.db");
    let (e, _) = engine(&db, json!({}));
    let big = "x".repeat(64 * 1024);
    let handler: NativeHandler = Arc::new(move |_| {
        let big = big.clone();
        async move { Ok(json!({"blob": big})) }.boxed()
    });
    e.register_tool("t.big", handler, None, None, "", vec![]).unwrap();
    let steps: Vec<Value> = (0..40).map(|i| json!({"id": format!("b{i}"), "tool": "t.big"})).collect();
    let record = e
        .run_workflow(
            WorkflowSource::Definition(json!({"name": "fill", "steps": steps, "max_parallel": 1})),
            json!({}),
            RunOptions::default(),
        )
        .await
        .unwrap()
        .to_json();
    assert_eq!(record["status"], "failed", "{record:#}");
    assert_eq!(record["error"]["code"], "STORE", "{record:#}");
    let id = record["execution_id"].as_str().unwrap();
    drop(e);
    // What was committed is there. Either the run's end could not be written either (the
    // execution stays `running`, and a new engine resumes it), or a checkpoint had freed
    // pages by then and the end committed as the STORE failure it was.
    let store = SqliteStore::open(&db, Default::default());
    if let Ok(store) = store {
        let (row, steps) = store.execution(id).unwrap().expect("the execution was recorded");
        match row.status.as_str() {
            "running" => {}
            "failed" => assert_eq!(row.error["code"], "STORE", "{:#}", row.error),
            other => panic!("a run that hit a full disk is stored as {other}"),
        }
        assert!(steps.iter().any(|s| s.status == "succeeded"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_runs_where_they_are_and_releases_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("utp.db");
    let (e, calls) = engine(&db, json!({}));
    // s1 blocks until released: close finds the run in the middle of it.
    let gate = Arc::new(tokio::sync::Notify::new());
    let blocked = gate.clone();
    let handler: NativeHandler = Arc::new(move |_| {
        let blocked = blocked.clone();
        async move {
            blocked.notified().await;
            Ok(json!({"n": 100}))
        }
        .boxed()
    });
    e.register_tool("t.block", handler, None, None, "", vec![]).unwrap();
    let mut wf = chain(3);
    wf["steps"][1]["tool"] = json!("t.block");
    let exec = e.start_workflow(WorkflowSource::Definition(wf.clone()), json!({}), RunOptions::default()).unwrap();
    for _ in 0..500 {
        if e.execution(&exec.id).unwrap().to_json()["steps"]["s1"]["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    e.close(Duration::from_secs(5));
    let record = e.wait_execution(&exec.id).await.unwrap().to_json();
    assert_eq!(record["error"]["code"], "CANCELLED", "{record:#}");
    assert!(
        e.start_workflow(WorkflowSource::Definition(wf.clone()), json!({}), RunOptions::default()).is_err(),
        "a closed engine starts nothing"
    );
    assert_eq!(calls.lock().len(), 1, "s0 ran");
    // The file is free at once; the next engine resumes from s1 (s0 is not called again).
    let (e2, calls2) = engine(&db, json!({}));
    let handler: NativeHandler = Arc::new(|_| async { Ok(json!({"n": 100})) }.boxed());
    e2.register_tool("t.block", handler, None, None, "", vec![]).unwrap();
    assert_eq!(e2.recover().await.unwrap(), vec![exec.id.clone()]);
    let record = e2.wait_execution(&exec.id).await.unwrap().to_json();
    assert_eq!(record["status"], "completed", "{record:#}");
    assert_eq!(record["outputs"]["last"], 101);
    assert_eq!(calls2.lock().len(), 1, "only s2 ran again: {:?}", calls2.lock());
    drop(gate);
}

#[tokio::test]
async fn executions_are_listed_newest_first_with_limits_and_time_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("utp.db");
    leave_unfinished(&db, "exe_2026", 2, 0, None); // created 2026-01-01, only in the store
    let (e, _) = engine(&db, json!({"store": {"url": format!("sqlite:{}", db.display()), "recover": false}}));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = e
            .run_workflow(WorkflowSource::Definition(chain(1)), json!({}), RunOptions::default())
            .await
            .unwrap()
            .to_json();
        ids.push(r["execution_id"].as_str().unwrap().to_string());
    }
    let listed = |f: utp_core::store::ExecutionFilter| -> Vec<String> {
        e.executions_matching(&f)
            .unwrap()
            .iter()
            .map(|r| r.to_json()["execution_id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = listed(Default::default());
    assert_eq!(all, vec![ids[2].clone(), ids[1].clone(), ids[0].clone(), "exe_2026".into()]);
    assert_eq!(listed(utp_core::store::ExecutionFilter { limit: Some(2), ..Default::default() }), all[..2].to_vec());
    let old =
        utp_core::store::ExecutionFilter { created_before: Some("2026-06-01T00:00:00Z".into()), ..Default::default() };
    assert_eq!(listed(old), vec!["exe_2026".to_string()]);
    let running = utp_core::store::ExecutionFilter { status: Some("running".into()), ..Default::default() };
    assert_eq!(listed(running), vec!["exe_2026".to_string()]);
    // The oldest-first listing of docs/design.md §7 is the same, reversed.
    let oldest_first: Vec<String> = e
        .executions(None, None)
        .unwrap()
        .iter()
        .map(|r| r.to_json()["execution_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(oldest_first, all.iter().rev().cloned().collect::<Vec<_>>());
    let bad = utp_core::store::ExecutionFilter { created_after: Some("yesterday".into()), ..Default::default() };
    assert_eq!(e.executions_matching(&bad).unwrap_err().code(), ErrorCode::InvalidArgument);
}
