//! `utp resume` and `utp approve`: take back the executions a previous process left
//! unfinished in the store and run them to their end (or until they wait for an
//! approval), and resolve approvals.
//!
//! Exit codes (also `utp run`'s): 0 every execution completed; 1 an error, or an
//! execution failed, was cancelled or could not be resumed; 3 an execution waits for
//! an approval (it is saved: `utp approve ID` continues it).

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use utp_core::Engine;
use utp_core::workflow::WorkflowSource;

use crate::db::Db;
use crate::history::{error, pretty, text};
use crate::watch::{WAITING, settle, waiting_for};
use crate::{fail, load_tools};

/// One line (or JSON object) per execution this command dealt with.
struct Outcome {
    record: Value,
    /// Why it could not be resumed here.
    not_resumed: Option<String>,
    /// A denied approval's own waiter: its failure is what was asked for.
    denied_waiter: bool,
}

impl Outcome {
    fn status(&self) -> &str {
        self.record["status"].as_str().unwrap_or("unknown")
    }

    fn to_value(&self) -> Value {
        let r = &self.record;
        let mut v = json!({"execution_id": r["execution_id"], "workflow": r["workflow"], "status": r["status"],
                           "outputs": r.get("outputs").cloned().unwrap_or(Value::Null), "error": r["error"]});
        if let Some(approval) = waiting_for(r) {
            v["waiting_for"] = approval.into();
        }
        if let Some(why) = &self.not_resumed {
            v["not_resumed"] = why.clone().into();
        }
        v
    }

    fn line(&self) -> String {
        let r = &self.record;
        let detail = if let Some(why) = &self.not_resumed {
            format!("not resumed: {why}")
        } else if let Some(approval) = waiting_for(r) {
            format!("waits for approval {approval}: `utp approve {approval}` (or --deny)")
        } else if !r["error"].is_null() {
            error(&r["error"])
        } else {
            String::new()
        };
        format!("{}  {}  {:<16} {detail}", text(&r["execution_id"]), text(&r["workflow"]), self.status())
            .trim_end()
            .to_string()
    }
}

/// 0 all completed, 3 some wait for an approval, 1 otherwise.
fn exit_code(outcomes: &[Outcome]) -> ExitCode {
    let failed = outcomes.iter().any(|o| {
        o.not_resumed.is_some() || (!o.denied_waiter && matches!(o.status(), "failed" | "cancelled" | "unknown"))
    });
    if failed {
        return ExitCode::FAILURE;
    }
    if outcomes.iter().any(|o| !matches!(o.status(), "completed" | "failed" | "cancelled")) {
        return ExitCode::from(WAITING);
    }
    ExitCode::SUCCESS
}

/// An execution the store holds unfinished.
struct Unfinished {
    id: String,
    definition: Value,
    /// The approvals its unfinished steps wait for.
    approvals: Vec<String>,
}

/// The store's unfinished executions, oldest first.
fn unfinished(engine: &Engine) -> Result<Vec<Unfinished>, String> {
    let Some(store) = engine.store() else {
        return Ok(Vec::new());
    };
    let rows = store.unfinished().map_err(|e| format!("[{}] {e}", e.code()))?;
    Ok(rows
        .into_iter()
        .map(|(row, steps)| Unfinished {
            approvals: steps.iter().filter(|s| s.status != "succeeded").filter_map(|s| s.approval_id.clone()).collect(),
            id: row.id,
            definition: row.definition,
        })
        .collect())
}

/// Resume what the store holds unfinished and wait for it. `denied`: the approval
/// just refused, whose waiters are expected to fail.
async fn resume_all(engine: &Engine, denied: Option<&str>) -> Result<Vec<Outcome>, String> {
    let before = unfinished(engine)?;
    let printer = crate::watch::subscribe_progress(engine, true);
    let resumed = engine.recover().await.map_err(|e| format!("[{}] {e}", e.code()))?;
    let mut outcomes = Vec::new();
    for id in &resumed {
        let record = settle(engine, id).await;
        let denied_waiter =
            denied.is_some_and(|a| before.iter().any(|u| &u.id == id && u.approvals.iter().any(|x| x == a)));
        outcomes.push(Outcome { record, not_resumed: None, denied_waiter });
    }
    engine.events().flush(Duration::from_secs(2));
    if let Some(id) = printer {
        engine.unsubscribe(id);
    }
    let resumed: HashSet<&String> = resumed.iter().collect();
    for Unfinished { id, definition, .. } in &before {
        if resumed.contains(id) {
            continue;
        }
        let why = match engine.workflow(WorkflowSource::Definition(definition.clone())) {
            Err(e) => format!("[{}] {e} (register its tools: --from PATH or config `manuals`)", e.code()),
            Ok(_) => "it is running in this process already".into(),
        };
        let record = engine.execution(id).map(|r| r.to_json()).unwrap_or_else(|_| json!({"execution_id": id}));
        outcomes.push(Outcome { record, not_resumed: Some(why), denied_waiter: false });
    }
    Ok(outcomes)
}

fn report(outcomes: &[Outcome], json: bool) {
    if json {
        let list: Vec<Value> = outcomes.iter().map(Outcome::to_value).collect();
        crate::history::emit_line(&pretty(&Value::Array(list)));
        return;
    }
    for o in outcomes {
        crate::history::emit_line(&o.line());
    }
}

/// `utp resume`: every unfinished execution, run to its end; exit by [`exit_code`].
pub async fn resume(engine: &Engine, db: &Db, from: Vec<String>, json: bool) -> ExitCode {
    if engine.store().is_none() {
        return fail("[INVALID_ARGUMENT] utp resume needs a database (--db PATH; not --db memory)");
    }
    if let Err(e) = load_tools(engine, from).await {
        return fail(&e);
    }
    let outcomes = match resume_all(engine, None).await {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    if outcomes.is_empty() && !json {
        eprintln!("utp: nothing to resume{}", db.place());
    }
    report(&outcomes, json);
    exit_code(&outcomes)
}

/// What `utp approve` was asked: the approval, the verdict and how to go on.
pub struct Approve<'a> {
    pub id: &'a str,
    pub approved: bool,
    pub reason: Option<&'a str>,
    /// Resolve only: leave the executions waiting on it for `utp resume`.
    pub no_wait: bool,
    /// Manuals to register before resuming (`--from`).
    pub from: Vec<String>,
    pub json: bool,
}

/// `utp approve ID`: resolve the approval in the store; unless `no_wait`, resume the
/// unfinished executions (those waiting for it go on) and wait for them.
pub async fn approve(engine: &Engine, db: &Db, args: Approve<'_>) -> ExitCode {
    let Approve { id, approved, reason, no_wait, from, json } = args;
    if engine.store().is_none() {
        return fail("[INVALID_ARGUMENT] utp approve needs a database (--db PATH; not --db memory)");
    }
    // Tools first: a resume that cannot run should fail before the approval is spent.
    if !no_wait {
        if let Err(e) = load_tools(engine, from).await {
            return fail(&e);
        }
    }
    let waiters: Vec<String> = match unfinished(engine) {
        Ok(list) => list.into_iter().filter(|u| u.approvals.iter().any(|a| a == id)).map(|u| u.id).collect(),
        Err(e) => return fail(&e),
    };
    let info = match engine.approve(id, approved, reason) {
        Ok(info) => info,
        Err(e) if e.code() == utp_core::ErrorCode::NotFound => {
            return fail(&format!("[NOT_FOUND] no approval with id '{id}'{}", db.place()));
        }
        Err(e) => return fail(&format!("[{}] {e}", e.code())),
    };
    let verb = if approved { "approved" } else { "denied" };
    let waiting = if waiters.is_empty() { String::new() } else { format!("; waiting on it: {}", waiters.join(", ")) };
    eprintln!("utp: approval {id} {verb} ({}){waiting}", info.tool);
    if no_wait {
        if !waiters.is_empty() {
            eprintln!("utp: `utp resume` continues them");
        }
        if json {
            crate::history::emit_line(&pretty(&json!({"approval": info, "waiters": waiters, "executions": []})));
        }
        return ExitCode::SUCCESS;
    }
    let outcomes = match resume_all(engine, (!approved).then_some(id)).await {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    if json {
        let list: Vec<Value> = outcomes.iter().map(Outcome::to_value).collect();
        crate::history::emit_line(&pretty(&json!({"approval": info, "waiters": waiters, "executions": list})));
    } else {
        report(&outcomes, false);
    }
    exit_code(&outcomes)
}
