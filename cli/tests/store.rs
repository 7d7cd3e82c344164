//! The CLI on its SQLite database: runs are recorded (`--db`, the default
//! `.utp/utp.db`, the config's `store`, `--db memory`), `executions` / `show` /
//! `events` / `approvals` read them, `approve` and `resume` continue executions, and
//! bad ids, locked and corrupt databases are clear errors with stable codes.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

/// `utp ARGS` in `cwd`.
fn utp_in(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_utp")).args(args).current_dir(cwd).output().expect("run utp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn json_out(cwd: &Path, args: &[&str]) -> Value {
    let (code, out, err) = utp_in(cwd, args);
    assert_eq!(code, 0, "utp {args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("utp {args:?}: {e}: {out}"))
}

/// `events --json` prints JSON Lines.
fn json_lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

const SHOP: &str = r#"{"tools": [
    {"name": "get", "tool_call_template": {"call_template_type": "text", "content": "42"}},
    {"name": "set", "inputs": {"type": "object", "properties": {"count": {"type": "integer"}}},
     "tool_call_template": {"call_template_type": "text", "content": "ok"}}
]}"#;

/// Setting a count of 0 needs an approval.
const POLICY: &str = r#"{
    "rules": [{"name": "zero_needs_a_manager", "match": {"tool": "shop", "action": "set"},
               "escalate_if": "params.count == 0", "message": "zero needs a manager"}]
}"#;

const WF: &str = "name: w\ninputs: {n: {type: integer}}\nsteps:\n  - id: a\n    tool: shop.get\n  - id: b\n    tool: shop.set\n    depends_on: [a]\n    args: {count: \"${{ inputs.n }}\"}\n  - id: c\n    tool: shop.get\n    depends_on: [b]\noutputs: {n: \"${{ inputs.n }}\", b: \"${{ steps.b.output }}\"}\n";

/// A temp dir with `m/shop.utcp.json`, `utp.json` (the policy) and `wf.yaml`.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("m")).unwrap();
    std::fs::write(dir.path().join("m/shop.utcp.json"), SHOP).unwrap();
    std::fs::write(dir.path().join("utp.json"), POLICY).unwrap();
    std::fs::write(dir.path().join("wf.yaml"), WF).unwrap();
    dir
}

#[test]
fn runs_are_recorded_and_the_history_commands_read_them() {
    let dir = project();
    let cwd = dir.path();
    // No --db: .utp/utp.db in the working directory, kept out of git.
    let (code, out, err) = utp_in(cwd, &["run", "wf.yaml", "--from", "m", "--input", "n=5", "--json"]);
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["execution_id"].as_str().unwrap().to_string();
    assert!(cwd.join(".utp/utp.db").is_file());
    assert_eq!(std::fs::read_to_string(cwd.join(".utp/.gitignore")).unwrap().lines().last(), Some("*"));
    let (code, _, err) = utp_in(cwd, &["call", "shop.get", "--from", "m"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = utp_in(cwd, &["run", "wf.yaml", "--from", "m", "--input", "n=7"]);
    assert_eq!(code, 0);

    // executions: newest first, as a table and as JSON.
    let list = json_out(cwd, &["executions", "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["execution_id"], id.as_str());
    assert_eq!((list[0]["status"].as_str(), list[0]["workflow"].as_str()), (Some("completed"), Some("w")));
    assert!(list[0]["steps"]["a"].get("output").is_none(), "listings leave step outputs out");
    let (code, out, _) = utp_in(cwd, &["executions"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID") && lines[0].contains("WORKFLOW") && lines[0].ends_with("STEPS"), "{out}");
    assert!(lines[2].starts_with(&id) && lines[2].contains("completed") && lines[2].ends_with("3/3"), "{out}");
    assert_eq!(json_out(cwd, &["executions", "--json", "--limit", "1"]).as_array().unwrap().len(), 1);
    assert!(json_out(cwd, &["executions", "--json", "--status", "failed"]).as_array().unwrap().is_empty());
    let (code, _, err) = utp_in(cwd, &["executions", "--status", "finished"]);
    assert_eq!(code, 1);
    assert!(err.contains("[INVALID_ARGUMENT]") && err.contains("unknown execution status"), "{err}");

    // show: the docs/design.md §7 record, and a readable form.
    let record = json_out(cwd, &["show", &id, "--json"]);
    assert_eq!(record["outputs"], json!({"n": 5, "b": "ok"}));
    assert_eq!(record["steps"]["a"]["output"], "42");
    assert_eq!(record["steps"]["b"]["attempts"], 1);
    let (code, out, _) = utp_in(cwd, &["show", &id]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("execution  {id}")) && out.contains("status     completed"), "{out}");
    assert!(out.contains("outputs    {\"n\":5,\"b\":\"ok\"}"), "{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("a ") && l.contains("succeeded") && l.ends_with("42")),
        "{out}"
    );
    let (code, _, err) = utp_in(cwd, &["show", "exe_nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("[NOT_FOUND]") && err.contains("exe_nope") && err.contains("utp.db"), "{err}");

    // events: the audit log of every process, filtered, paged, as JSON Lines or a table.
    let (code, out, _) = utp_in(cwd, &["events", "--execution", &id, "--json"]);
    assert_eq!(code, 0);
    let events = json_lines(&out);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"workflow.started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"workflow.completed"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "step.completed").count(), 3);
    assert!(events.iter().all(|e| e["execution_id"] == id.as_str() && e["seq"].is_u64()));
    let (_, out, _) = utp_in(cwd, &["events", "--type", "tool.*", "--json"]);
    let tools = json_lines(&out);
    assert_eq!(tools.len(), 2 * 3 + 2 * 3 + 2, "two runs of three calls and one call, called + succeeded");
    let (_, out, _) = utp_in(cwd, &["events", "--type", "tool.*", "--json", "--limit", "2"]);
    let first = json_lines(&out);
    assert_eq!(first.len(), 2);
    let after = first[1]["seq"].to_string();
    let (_, out, _) = utp_in(cwd, &["events", "--type", "tool.*", "--json", "--after", &after]);
    assert_eq!(json_lines(&out).len(), tools.len() - 2);
    let (code, out, _) = utp_in(cwd, &["events", "--execution", &id]);
    assert_eq!(code, 0);
    assert!(out.starts_with("SEQ") && out.contains("step.completed") && !out.contains("EXECUTION"), "{out}");
    let (code, _, err) = utp_in(cwd, &["events", "--type", "tool.sucess"]);
    assert_eq!(code, 2);
    assert!(err.contains("matches no event type"), "{err}");
    // With a command, `events` is the live form: the stored-log options do not apply.
    let (code, _, err) = utp_in(cwd, &["events", "--json", "call", "shop.get", "--from", "m"]);
    assert_eq!(code, 2);
    assert!(err.contains("[INVALID_ARGUMENT]"), "{err}");
}

#[test]
fn db_flag_config_store_and_memory() {
    let dir = project();
    let cwd = dir.path();
    // The config's store is used when --db is not given...
    std::fs::write(cwd.join("store.json"), r#"{"store": {"url": "sqlite:data/cfg.db", "durability": "sync"}}"#)
        .unwrap();
    let (code, _, err) = utp_in(cwd, &["--config", "store.json", "run", "wf.yaml", "--from", "m", "--input", "n=1"]);
    assert_eq!(code, 0, "{err}");
    assert!(cwd.join("data/cfg.db").is_file() && !cwd.join(".utp").exists());
    assert_eq!(json_out(cwd, &["--db", "data/cfg.db", "executions", "--json"]).as_array().unwrap().len(), 1);
    // ...an explicit --db wins.
    let (code, _, err) =
        utp_in(cwd, &["--config", "store.json", "--db", "other.db", "run", "wf.yaml", "--from", "m", "--input", "n=2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_out(cwd, &["--db", "other.db", "executions", "--json"]).as_array().unwrap().len(), 1);
    assert_eq!(json_out(cwd, &["--config", "store.json", "executions", "--json"]).as_array().unwrap().len(), 1);
    // --db memory records nothing; reading a database that does not exist creates nothing.
    let (code, _, err) = utp_in(cwd, &["--db", "memory", "run", "wf.yaml", "--from", "m", "--input", "n=3"]);
    assert_eq!(code, 0, "{err}");
    assert!(!cwd.join(".utp").exists());
    assert!(json_out(cwd, &["executions", "--json"]).as_array().unwrap().is_empty());
    let (code, _, err) = utp_in(cwd, &["executions"]);
    assert_eq!(code, 0);
    assert!(err.contains("no executions recorded") && err.contains("nothing recorded there yet"), "{err}");
    let (code, out, _) = utp_in(cwd, &["events", "--json"]);
    assert_eq!((code, out.as_str()), (0, ""));
    assert!(!cwd.join(".utp").exists(), "read-only commands create no database");
    // A file a killed process left before creating the schema reads as an empty history.
    std::fs::write(cwd.join("empty.db"), "").unwrap();
    assert!(json_out(cwd, &["--db", "empty.db", "executions", "--json"]).as_array().unwrap().is_empty());
    let (code, _, err) = utp_in(cwd, &["--db", "", "executions"]);
    assert_eq!(code, 1);
    assert!(err.contains("[INVALID_ARGUMENT]"), "{err}");
    // discover / tools / check record nothing.
    let (code, _, _) = utp_in(cwd, &["tools", "m"]);
    assert_eq!(code, 0);
    assert!(!cwd.join(".utp").exists());
}

#[test]
fn locked_and_corrupt_databases_are_store_errors() {
    let dir = project();
    let cwd = dir.path();
    let db = cwd.join("busy.db");
    let (code, _, _) = utp_in(cwd, &["--db", "busy.db", "run", "wf.yaml", "--from", "m", "--input", "n=1"]);
    assert_eq!(code, 0);
    {
        // Another engine holds the file.
        let _held = utp_core::store::SqliteStore::open(&db, Default::default()).unwrap();
        let (code, _, err) = utp_in(cwd, &["--db", "busy.db", "run", "wf.yaml", "--from", "m", "--input", "n=1"]);
        assert_eq!(code, 1);
        assert!(err.contains("[STORE]") && err.contains("already open") && err.contains("--db"), "{err}");
        let (code, _, err) = utp_in(cwd, &["--db", "busy.db", "resume", "--from", "m"]);
        assert_eq!(code, 1);
        assert!(err.contains("[STORE]"), "{err}");
        // Reading needs no lock: the history commands work while another engine holds the file.
        let list = json_out(cwd, &["--db", "busy.db", "executions", "--json"]);
        let id = list[0]["execution_id"].as_str().unwrap();
        assert_eq!(json_out(cwd, &["--db", "busy.db", "show", id, "--json"])["status"], "completed");
        let (code, out, err) = utp_in(cwd, &["--db", "busy.db", "events", "--execution", id, "--json"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.lines().count() >= 5, "{out}");
        let (code, _, _) = utp_in(cwd, &["--db", "busy.db", "approvals"]);
        assert_eq!(code, 0);
    }
    assert_eq!(json_out(cwd, &["--db", "busy.db", "executions", "--json"]).as_array().unwrap().len(), 1);

    std::fs::write(cwd.join("bad.db"), vec![0x5a; 8192]).unwrap();
    for args in
        [&["executions"][..], &["show", "exe_x"], &["events"], &["resume"], &["call", "shop.get", "--from", "m"]]
    {
        let mut all = vec!["--db", "bad.db"];
        all.extend_from_slice(args);
        let (code, _, err) = utp_in(cwd, &all);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("[STORE]") && err.contains("bad.db"), "{args:?}: {err}");
    }
}

#[test]
fn a_run_that_needs_an_approval_is_saved_and_approve_continues_it() {
    let dir = project();
    let cwd = dir.path();
    // The run parks on the approval: exit 3, the execution is saved as waiting.
    let (code, _, err) = utp_in(cwd, &["run", "wf.yaml", "--from", "m", "--input", "n=0"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("waits for approval apr_") && err.contains("utp approve"), "{err}");
    let waiting = json_out(cwd, &["executions", "--json", "--status", "waiting_approval"]);
    let exec = waiting[0]["execution_id"].as_str().unwrap().to_string();
    let approval = waiting[0]["steps"]["b"]["approval_id"].as_str().unwrap().to_string();
    let pending = json_out(cwd, &["approvals", "--pending", "--json"]);
    assert_eq!(pending[0]["id"], approval.as_str());
    assert_eq!(pending[0]["tool"], "shop.set");
    let (code, out, _) = utp_in(cwd, &["show", &exec]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("waits for approval {approval}")), "{out}");

    // resume without the tools: not resumed (exit 1), still saved.
    std::fs::create_dir(cwd.join("empty")).unwrap();
    let (code, out, err) = utp_in(cwd, &["resume", "--from", "empty", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report[0]["not_resumed"].as_str().unwrap().contains("shop.get"), "{report}");
    // resume with them: it waits for the approval again (exit 3).
    let (code, out, err) = utp_in(cwd, &["resume", "--from", "m", "--json"]);
    assert_eq!(code, 3, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (report[0]["status"].as_str(), report[0]["waiting_for"].as_str()),
        (Some("waiting_approval"), Some(&*approval))
    );

    // approve: the approval is recorded, the execution goes on to the end.
    let (code, out, err) = utp_in(cwd, &["approve", &approval, "--reason", "ok", "--from", "m", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let done: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(done["approval"]["status"], "approved");
    assert_eq!(done["waiters"], json!([exec]));
    assert_eq!(done["executions"][0]["status"], "completed", "{done}");
    assert_eq!(done["executions"][0]["outputs"], json!({"n": 0, "b": "ok"}));
    let record = json_out(cwd, &["show", &exec, "--json"]);
    assert_eq!(record["status"], "completed");
    assert_eq!(record["steps"]["a"]["attempts"], 1, "the step committed before the approval did not run again");
    let approvals = json_out(cwd, &["approvals", "--json"]);
    assert_eq!(
        (approvals[0]["status"].as_str(), approvals[0]["resolution_reason"].as_str()),
        (Some("approved"), Some("ok"))
    );
    let (code, _, err) = utp_in(cwd, &["approve", &approval]);
    assert_eq!(code, 1);
    assert!(err.contains("[INVALID_ARGUMENT]") && err.contains("already approved"), "{err}");
    let (code, _, err) = utp_in(cwd, &["approve", "apr_nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("[NOT_FOUND]") && err.contains("apr_nope"), "{err}");

    // --deny: the waiting step fails with PERMISSION_DENIED, which is what was asked (exit 0).
    let (code, _, _) = utp_in(cwd, &["run", "wf.yaml", "--from", "m", "--input", "n=0"]);
    assert_eq!(code, 3);
    let approval = json_out(cwd, &["approvals", "--pending", "--json"])[0]["id"].as_str().unwrap().to_string();
    let (code, out, err) = utp_in(cwd, &["approve", &approval, "--deny", "--from", "m"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("failed") && out.contains("PERMISSION_DENIED"), "{out}");

    // --no-wait only records the decision; `utp resume` continues the run later.
    let (code, _, _) = utp_in(cwd, &["run", "wf.yaml", "--from", "m", "--input", "n=0"]);
    assert_eq!(code, 3);
    let approval = json_out(cwd, &["approvals", "--pending", "--json"])[0]["id"].as_str().unwrap().to_string();
    let (code, out, err) = utp_in(cwd, &["approve", &approval, "--no-wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty() && err.contains("utp resume"), "{out}{err}");
    assert_eq!(json_out(cwd, &["executions", "--json", "--status", "waiting_approval"]).as_array().unwrap().len(), 1);
    let (code, out, err) = utp_in(cwd, &["resume", "--from", "m"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("completed"), "{out}");
    let (code, _, err) = utp_in(cwd, &["resume", "--from", "m"]);
    assert_eq!(code, 0);
    assert!(err.contains("nothing to resume"), "{err}");
    // Nothing is left unfinished, and the audit log has every decision.
    assert!(json_out(cwd, &["executions", "--json", "--status", "waiting_approval"]).as_array().unwrap().is_empty());
    let (_, out, _) = utp_in(cwd, &["events", "--type", "approval.*", "--json"]);
    let kinds: Vec<String> = json_lines(&out).iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "approval.resolved").count(), 3, "{kinds:?}");
}

#[test]
fn an_escalated_call_fails_fast_and_runs_with_its_approval() {
    let dir = project();
    let cwd = dir.path();
    let (code, _, err) = utp_in(cwd, &["call", "shop.set", r#"{"count": 0}"#, "--from", "m"]);
    assert_eq!(code, 1);
    assert!(err.contains("[APPROVAL_REQUIRED]") && err.contains("--approval apr_"), "{err}");
    let approval = json_out(cwd, &["approvals", "--pending", "--json"])[0]["id"].as_str().unwrap().to_string();
    let (code, _, err) = utp_in(cwd, &["approve", &approval]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        utp_in(cwd, &["call", "shop.set", r#"{"count": 0}"#, "--from", "m", "--approval", &approval]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "\"ok\"");
}

#[test]
fn run_repeat_runs_copies_at_once() {
    let dir = project();
    let cwd = dir.path();
    let (code, out, err) = utp_in(cwd, &["run", "wf.yaml", "--from", "m", "--input", "n=4", "--repeat", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!([{"n": 4, "b": "ok"}, {"n": 4, "b": "ok"}, {"n": 4, "b": "ok"}])
    );
    assert_eq!(err.matches("✔ completed").count(), 3, "{err}");
    assert!(err.lines().all(|l| l.starts_with("exe_")), "progress lines carry their execution id: {err}");
    assert_eq!(json_out(cwd, &["executions", "--json"]).as_array().unwrap().len(), 3);
    let (code, _, _) = utp_in(cwd, &["run", "wf.yaml", "--from", "m", "--input", "n=4", "--repeat", "0"]);
    assert_eq!(code, 2);
}
