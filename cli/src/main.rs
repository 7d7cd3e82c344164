//! `utp`: discover, search, check and call UTCP tools from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;
use utp_core::workflow::RunOptions;
use utp_core::{CallOptions, Config, Engine, Outcome, RegisteredTool};

// mimalloc, as in the CLI and the Node addon (not the C library or the Python module):
// docs/architecture.md, "Memory allocator".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod db;
mod history;
mod plan;
mod resume;
mod run;
mod watch;

#[derive(Parser)]
#[command(
    name = "utp",
    version = utp_core::VERSION,
    about = "UTP Runtime: discover, search, check and call UTCP tools; run workflows",
    after_help = "\
History: `call`, `run`, `approve` and `resume` record what they run in a SQLite database
(--db, default .utp/utp.db); `executions`, `show`, `events` and `approvals` read it.
Only `resume` and `approve` continue executions a previous process left unfinished.

Exit codes: 0 success; 1 an error (`utp: [CODE] message` on stderr; codes are stable:
NOT_FOUND, STORE, VALIDATION_FAILED, ...) or a run that failed; 2 bad usage;
3 a run waits for an approval (it is saved; `utp approve ID` continues it)."
)]
struct Cli {
    /// Config file (utp.yaml or utp.json). Default: ./utp.yaml or ./utp.json if present.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// SQLite database that records runs (executions, steps, events, approvals) and
    /// that the history commands read; relative to the working directory, its folder
    /// is created. `--db memory`: record nothing. Default: the config's `store` when it
    /// has one, else .utp/utp.db; an explicit --db wins over the config's `store`
    /// (keeping its durability and retention).
    #[arg(long, global = true, value_name = "PATH|memory")]
    db: Option<String>,
    /// Print this run's events live on stderr, one JSON line each: `--events` for all,
    /// `--events=PATTERN` for a glob over event types (`tool.*`, `policy.denied`).
    #[arg(long, global = true, value_name = "PATTERN", num_args = 0..=1, require_equals = true, default_missing_value = "*")]
    events: Option<String>,
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Subcommand)]
enum TopCommand {
    /// Read the audit log of the database (every process that used it), oldest first;
    /// or, followed by a COMMAND, run it and print its events live on stderr, one JSON
    /// line each (the same as `--events=PATTERN COMMAND`): `utp events --type 'step.*' run wf.yaml`.
    Events(EventsArgs),
    #[command(flatten)]
    Other(Command),
}

#[derive(clap::Args)]
struct EventsArgs {
    /// Glob over event types (`tool.*`, `policy.denied`, `*`).
    #[arg(long = "type")]
    pattern: Option<String>,
    /// Only the events of this execution.
    #[arg(long)]
    execution: Option<String>,
    /// Only events after this store sequence number (the SEQ column; for paging).
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
    /// At most this many events (the oldest matching ones; page on with --after).
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object per line (docs/design.md §8 event JSON plus the store's `seq`).
    #[arg(long)]
    json: bool,
    /// A command to run with its events printed live.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Find and register manuals in directories, files or at URLs; report every file.
    Discover {
        /// Directories, manual files or manual URLs.
        #[arg(required = true)]
        targets: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List or search the tools found in PATHS (default: config `discovery.paths`, else `.`).
    Tools {
        /// Directories, manual files or manual URLs to load tools from.
        paths: Vec<String>,
        /// Rank tools by relevance to this query.
        #[arg(long, short)]
        search: Option<String>,
        /// Keep only tools with one of these tags (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// At most this many tools (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Print full tool definitions as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Call TOOL (`manual.tool`) with ARGS_JSON and print the JSON result. Tools come
    /// from --from paths, else config `manuals` / `discovery.paths`, else `.`.
    Call {
        /// Full tool name, `manual.tool`.
        tool: String,
        /// Arguments as a JSON object (default `{}`).
        args: Option<String>,
        /// Timeout in seconds (overrides the template and `calls.default_timeout`).
        #[arg(long)]
        timeout: Option<f64>,
        /// Directories, manual files or URLs to load tools from (repeatable).
        #[arg(long = "from")]
        from: Vec<String>,
        /// Tenant the call is made for (permissions, rules and rate limits per tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// An approval granted for this escalated call (`utp approve ID`). Without it an
        /// escalated call fails at once with APPROVAL_REQUIRED and the approval's id.
        #[arg(long)]
        approval: Option<String>,
    },
    /// Run a workflow (YAML/JSON file) with live progress on stderr; prints its outputs
    /// (or, with --json, the whole execution record). Exit 0 when it completed, 1 when
    /// it failed, 3 when it waits for an approval (saved; `utp approve ID` continues it).
    Run {
        /// Workflow file (docs/design.md §7 format).
        workflow: String,
        /// An input as key=value (repeatable); values that parse as JSON are JSON.
        #[arg(long = "input", short = 'i')]
        inputs: Vec<String>,
        /// Directories, manual files or URLs to load tools from (repeatable).
        #[arg(long = "from")]
        from: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        session: Option<String>,
        /// Timeout for the whole run, in seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Run N copies at once (same inputs); prints a list of N results.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=10000))]
        repeat: u16,
        /// Print the whole execution record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Plan a workflow for REQUEST (words) and print it as YAML (--json: JSON); runs
    /// nothing. The model comes from the config's `planner` section (provider openai |
    /// anthropic, base_url, model, api_key: "${OPENAI_API_KEY}"); without one, the
    /// offline planner chains tools by their schemas, or says that a model is needed.
    Plan {
        /// What the workflow should do, in words.
        request: String,
        /// Print the workflow as JSON instead of YAML.
        #[arg(long)]
        json: bool,
        /// Directories, manual files or URLs to load tools from (repeatable).
        #[arg(long = "from")]
        from: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Session whose state keys the planner is told about.
        #[arg(long)]
        session: Option<String>,
    },
    /// Plan a workflow for REQUEST, show it on stderr, then run it like `utp run`
    /// (recorded in the database). Asks before running on a terminal; --yes runs
    /// without asking (needed when stdin is not a terminal).
    Do {
        /// What to do, in words.
        request: String,
        /// An input as key=value (repeatable); values that parse as JSON are JSON.
        /// The planner sees input names and types, never values.
        #[arg(long = "input", short = 'i')]
        inputs: Vec<String>,
        /// Run the plan without asking.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Directories, manual files or URLs to load tools from (repeatable).
        #[arg(long = "from")]
        from: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        session: Option<String>,
        /// Timeout for the run, in seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Print the whole execution record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Executions recorded in the database, newest first: id, workflow, status,
    /// created, finished, steps done/total.
    Executions {
        /// Only this status: created, running, suspended, waiting_approval,
        /// completed, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this session.
        #[arg(long)]
        session: Option<String>,
        /// Only those created after this time (RFC 3339, e.g. 2026-11-26T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only those created before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many (the newest; 0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// The records as a JSON list (docs/design.md §7, without step outputs).
        #[arg(long)]
        json: bool,
    },
    /// One execution with its steps (status, attempts, output excerpt, error).
    Show {
        /// Execution id (`exe_...`, see `utp executions`).
        id: String,
        /// The whole docs/design.md §7 record as JSON, step outputs included.
        #[arg(long)]
        json: bool,
    },
    /// Approvals recorded in the database (escalated calls), oldest first.
    Approvals {
        /// Only those still waiting.
        #[arg(long)]
        pending: bool,
        #[arg(long)]
        json: bool,
    },
    /// Grant (or, with --deny, refuse) approval ID; then resume the unfinished
    /// executions, those waiting for it included, and wait for them. Exit 0 when
    /// they completed (with --deny, its waiters' failure is expected), 1 on an error
    /// or a failure, 3 when one waits for another approval.
    Approve {
        /// Approval id (`utp approvals --pending`, or the step's `approval_id` in `utp show`).
        id: String,
        /// Refuse instead of granting: the waiting step fails with PERMISSION_DENIED.
        #[arg(long)]
        deny: bool,
        /// Why (recorded with the approval).
        #[arg(long)]
        reason: Option<String>,
        /// Only record the decision; `utp resume` continues the executions later.
        #[arg(long)]
        no_wait: bool,
        /// Directories, manual files or URLs with the tools the executions use (repeatable).
        #[arg(long = "from")]
        from: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Resume every execution a previous process left unfinished in the database
    /// (steps it committed never run again; the one in flight re-runs with the same
    /// idempotency key) and wait for them; print each id and final status. Exit 0
    /// when all completed (or there was none), 1 on an error or when one failed or
    /// could not be resumed (its tools are not registered), 3 when one waits for an approval.
    Resume {
        /// Directories, manual files or URLs with the tools the executions use (repeatable).
        #[arg(long = "from")]
        from: Vec<String>,
        /// A JSON list: {execution_id, workflow, status, outputs, error, waiting_for?, not_resumed?}.
        #[arg(long)]
        json: bool,
    },
    /// Dry run of the domain rules for TOOL with ARGS_JSON: prints the decision and the
    /// rules behind it, calls nothing. Exit 0 when the call would be allowed, 1 when
    /// denied, escalated or rate limited.
    Check {
        /// Full tool name, `manual.tool`.
        tool: String,
        /// Arguments as a JSON object (default `{}`).
        args: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Directories, manual files or URLs to load tools from (repeatable).
        #[arg(long = "from")]
        from: Vec<String>,
    },
}

impl Command {
    /// What the command does with the database.
    fn access(&self) -> db::Access {
        match self {
            Command::Discover { .. } | Command::Tools { .. } | Command::Check { .. } | Command::Plan { .. } => {
                db::Access::None
            }
            Command::Call { .. }
            | Command::Run { .. }
            | Command::Do { .. }
            | Command::Approve { .. }
            | Command::Resume { .. } => db::Access::ReadWrite,
            Command::Executions { .. } | Command::Show { .. } | Command::Approvals { .. } => db::Access::ReadOnly,
        }
    }
}

/// What `main` runs: a command (with live events when `events` is set), or a read of
/// the stored audit log.
enum Job {
    Command(Command, Option<String>),
    StoredEvents(utp_core::store::EventFilter, bool),
}

fn job(cli_events: Option<String>, top: TopCommand) -> Result<Job, ExitCode> {
    match top {
        TopCommand::Other(command) => Ok(Job::Command(command, cli_events)),
        TopCommand::Events(args) => match args.command {
            Some(command) => {
                if args.execution.is_some() || args.after.is_some() || args.limit.is_some() || args.json {
                    eprintln!(
                        "utp: [INVALID_ARGUMENT] --execution, --after, --limit and --json read the stored log; \
                         with a COMMAND, `utp events` prints its live events (only --type applies)"
                    );
                    return Err(ExitCode::from(2));
                }
                Ok(Job::Command(command, Some(args.pattern.unwrap_or_else(|| "*".into()))))
            }
            None => Ok(Job::StoredEvents(
                utp_core::store::EventFilter {
                    execution_id: args.execution,
                    kind: args.pattern,
                    after_id: args.after,
                    limit: args.limit,
                    ..Default::default()
                },
                args.json,
            )),
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let job = match job(cli.events, cli.command) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let mut config = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let access = match &job {
        Job::Command(command, _) => command.access(),
        Job::StoredEvents(..) => db::Access::ReadOnly,
    };
    let mut db = match db::choose(&mut config, cli.db.as_deref(), access) {
        Ok(db) => db,
        Err(e) => return fail(&e),
    };
    let engine = match db::engine(config, &mut db) {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    let (command, events) = match job {
        Job::StoredEvents(filter, json) => return history::events(&engine, &filter, json),
        Job::Command(command, events) => (command, events),
    };
    let printer = match events.as_deref().map(|pattern| print_events(&engine, pattern)).transpose() {
        Ok(id) => id,
        Err(e) => return fail(&format!("--events: [{}] {e}", e.code())),
    };
    let status = runtime.block_on(async {
        match command {
            Command::Discover { targets, json } => discover(&engine, &targets, json).await,
            Command::Tools { paths, search, tags, limit, json } => {
                tools(&engine, paths, search.as_deref(), &tags, limit, json).await
            }
            Command::Call { tool, args, timeout, from, tenant, approval } => {
                call(&engine, &tool, args.as_deref(), timeout, from, tenant, approval).await
            }
            Command::Check { tool, args, tenant, from } => check(&engine, &tool, args.as_deref(), tenant, from).await,
            Command::Run { workflow, inputs, from, tenant, session, timeout, repeat, json } => {
                match prepare_run(&engine, &inputs, timeout, from, tenant, session).await {
                    Ok((inputs, options)) => {
                        run::run(&engine, &workflow, inputs, options, usize::from(repeat), json).await
                    }
                    Err(code) => code,
                }
            }
            Command::Plan { request, json, from, tenant, session } => {
                if let Err(e) = load_tools(&engine, from).await {
                    return fail(&e);
                }
                let options = utp_core::planner::PlanOptions { tenant, session, ..Default::default() };
                plan::plan(&engine, &request, options, json).await
            }
            Command::Do { request, inputs, yes, from, tenant, session, timeout, json } => {
                match prepare_run(&engine, &inputs, timeout, from, tenant, session).await {
                    Ok((inputs, options)) => plan::run(&engine, &request, inputs, yes, options, json).await,
                    Err(code) => code,
                }
            }
            Command::Executions { status, session, since, until, limit, json } => {
                let filter = utp_core::store::ExecutionFilter {
                    status,
                    session,
                    created_after: since,
                    created_before: until,
                    limit: (limit > 0).then_some(limit),
                };
                history::executions(&engine, &db, &filter, json)
            }
            Command::Show { id, json } => history::show(&engine, &db, &id, json),
            Command::Approvals { pending, json } => history::approvals(&engine, pending, json),
            Command::Approve { id, deny, reason, no_wait, from, json } => {
                resume::approve(
                    &engine,
                    &db,
                    resume::Approve { id: &id, approved: !deny, reason: reason.as_deref(), no_wait, from, json },
                )
                .await
            }
            Command::Resume { from, json } => resume::resume(&engine, &db, from, json).await,
        }
    });
    if printer.is_some() {
        settle(&engine);
    }
    // Executions still running here (parked on an approval) stop where they are, left
    // unfinished for `utp approve` / `utp resume`; the store is flushed and released.
    engine.close(std::time::Duration::from_secs(5));
    status
}

/// Let subscribers (the `--events` printer) catch up, so events come before the result.
fn settle(engine: &Engine) {
    engine.events().flush(std::time::Duration::from_secs(2));
}

/// Subscribe a printer of events (JSON lines on stderr).
fn print_events(engine: &Engine, pattern: &str) -> utp_core::Result<utp_core::SubscriptionId> {
    engine.subscribe(
        pattern,
        std::sync::Arc::new(|event| {
            use std::io::Write;
            let line = serde_json::to_string(&event.to_value()).map_err(|e| e.to_string())?;
            writeln!(std::io::stderr().lock(), "event {line}").map_err(|e| e.to_string())
        }),
    )
}

fn parse_args(args: Option<&str>) -> Result<Value, ExitCode> {
    match args.map(serde_json::from_str).transpose() {
        Ok(v) => Ok(v.unwrap_or(Value::Object(Default::default()))),
        Err(e) => {
            eprintln!("utp: [INVALID_ARGUMENT] ARGS_JSON is not valid JSON: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, String> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => ["utp.yaml", "utp.yml", "utp.json"].iter().map(PathBuf::from).find(|p| p.is_file()),
    };
    match path {
        Some(p) => Config::load(&p).map_err(|e| format!("[{}] {e}", e.code())),
        None => Ok(Config::default()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("utp: {message}");
    ExitCode::FAILURE
}

/// Exit status: success when at least one manual was registered.
async fn discover(engine: &Engine, targets: &[String], json: bool) -> ExitCode {
    let mut registered = 0usize;
    let mut reports = Vec::new();
    for target in targets {
        match engine.discover(target).await {
            Ok(report) => {
                registered += report.registered().len();
                if !json {
                    print_report(&report);
                }
                reports.push(report.to_value());
            }
            Err(e) => {
                eprintln!("utp: {target}: [{}] {e}", e.code());
                reports.push(
                    serde_json::json!({"root": target, "error": {"code": e.code().as_str(), "message": e.to_string()}}),
                );
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&Value::Array(reports)).unwrap_or_default());
    } else {
        let tools = engine.tools().len();
        println!("{registered} manual(s) registered, {tools} tool(s)");
    }
    if registered == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn print_report(report: &utp_core::DiscoveryReport) {
    for file in &report.files {
        match &file.outcome {
            Outcome::Registered { manual, tools } => println!("registered  {}  → {manual} ({tools} tools)", file.path),
            Outcome::Skipped { reason } => println!("skipped     {}  ({reason})", file.path),
            Outcome::Failed { code, error } => println!("failed      {}  [{code}] {error}", file.path),
        }
    }
}

/// Load the tools `utp tools` / `utp call` work on; per-file failures go to stderr.
async fn load_tools(engine: &Engine, mut paths: Vec<String>) -> Result<(), String> {
    if paths.is_empty() {
        paths = engine.config().discovery.paths.clone();
    }
    if paths.is_empty() && engine.config().manuals.is_empty() {
        paths.push(".".into());
    }
    engine.register_configured_manuals().await.map_err(|e| format!("[{}] {e}", e.code()))?;
    for path in &paths {
        let report = engine.discover(path).await.map_err(|e| format!("{path}: [{}] {e}", e.code()))?;
        for file in &report.files {
            if let Outcome::Failed { code, error } = &file.outcome {
                eprintln!("utp: {}: [{code}] {error}", file.path);
            }
        }
    }
    Ok(())
}

/// Exit 0 with the JSON result on stdout; on failure exit 1 (2 for bad usage) with
/// `utp: [CODE] message` on stderr.
async fn call(
    engine: &Engine,
    tool: &str,
    args: Option<&str>,
    timeout: Option<f64>,
    from: Vec<String>,
    tenant: Option<String>,
    approval: Option<String>,
) -> ExitCode {
    let args = match parse_args(args) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let timeout = match parse_timeout(timeout) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if let Err(e) = load_tools(engine, from).await {
        return fail(&e);
    }
    // An escalated call fails at once with the approval's id (nothing else could
    // approve it while this process waits): `utp approve ID`, then `--approval ID`.
    let options =
        CallOptions { timeout, tenant, fail_fast_on_approval: true, approval_id: approval, ..Default::default() };
    let result = engine.call_tool(tool, args, options).await;
    settle(engine);
    match result {
        Ok(result) => {
            println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(utp_core::Error::ApprovalRequired { message, approval_id }) => fail(&format!(
            "[APPROVAL_REQUIRED] {message} (`utp approve {approval_id}`, then call again with --approval {approval_id})"
        )),
        Err(e) => fail(&format!("[{}] {e}", e.code())),
    }
}

/// What `run` and `do` share: `--input k=v` parsed, `--timeout` checked, the `--from`
/// tools loaded, the run options. Usage errors exit 2, tool loading 1.
async fn prepare_run(
    engine: &Engine,
    inputs: &[String],
    timeout: Option<f64>,
    from: Vec<String>,
    tenant: Option<String>,
    session: Option<String>,
) -> Result<(serde_json::Value, RunOptions), ExitCode> {
    let inputs = run::parse_inputs(inputs).map_err(|e| {
        eprintln!("utp: [INVALID_ARGUMENT] {e}");
        ExitCode::from(2)
    })?;
    let timeout = parse_timeout(timeout)?;
    load_tools(engine, from).await.map_err(|e| fail(&e))?;
    Ok((inputs, RunOptions { tenant, session, timeout, ..RunOptions::default() }))
}

fn parse_timeout(timeout: Option<f64>) -> Result<Option<std::time::Duration>, ExitCode> {
    match timeout {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(std::time::Duration::from_secs_f64(s))),
        Some(s) => {
            eprintln!("utp: [INVALID_ARGUMENT] --timeout must be a positive number of seconds, got {s}");
            Err(ExitCode::from(2))
        }
    }
}

/// Print the dry-run decision as JSON; exit 0 only when the call would run now.
async fn check(engine: &Engine, tool: &str, args: Option<&str>, tenant: Option<String>, from: Vec<String>) -> ExitCode {
    let args = match parse_args(args) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if let Err(e) = load_tools(engine, from).await {
        return fail(&e);
    }
    let decision = engine.check(tool, args, tenant.as_deref()).await;
    settle(engine);
    match decision {
        Ok(decision) => {
            println!("{}", serde_json::to_string_pretty(&decision).unwrap_or_default());
            let runs = decision["decision"] == "allow" && decision["rate_limited"].is_null();
            if runs { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => fail(&format!("[{}] {e}", e.code())),
    }
}

async fn tools(
    engine: &Engine,
    paths: Vec<String>,
    query: Option<&str>,
    tags: &[String],
    limit: usize,
    json: bool,
) -> ExitCode {
    if let Err(e) = load_tools(engine, paths).await {
        return fail(&e);
    }
    let found: Vec<std::sync::Arc<RegisteredTool>> = match query {
        Some(q) => engine.search_tools(q, limit, tags),
        None => engine.search_tools("", limit, tags),
    };
    if json {
        let list: Vec<Value> = found.iter().map(|t| t.to_value()).collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
    } else {
        let width = found.iter().map(|t| t.name.len()).max().unwrap_or(0);
        for t in &found {
            let desc = t.tool.description.lines().next().unwrap_or("");
            println!("{:width$}  {desc}", t.name);
        }
        if found.is_empty() {
            eprintln!("utp: no tools found");
        }
    }
    ExitCode::SUCCESS
}
