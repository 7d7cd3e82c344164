//! `utp`: discover, search, check and call UTCP tools from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;
use utp_core::workflow::RunOptions;
use utp_core::{CallOptions, Config, Engine, Outcome, RegisteredTool};

mod run;

#[derive(Parser)]
#[command(name = "utp", version = utp_core::VERSION, about = "UTP Runtime: discover, search, check and call UTCP tools; run workflows")]
struct Cli {
    /// Config file (utp.yaml or utp.json). Default: ./utp.yaml or ./utp.json if present.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print this run's events live on stderr, one JSON line each: `--events` for all,
    /// `--events=PATTERN` for a glob over event types (`tool.*`, `policy.denied`).
    #[arg(long, global = true, value_name = "PATTERN", num_args = 0..=1, require_equals = true, default_missing_value = "*")]
    events: Option<String>,
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Subcommand)]
enum TopCommand {
    /// Run COMMAND and print the events of its run live on stderr, one JSON line each
    /// (the same as `--events=PATTERN COMMAND`): `utp events --type 'step.*' run wf.yaml`.
    Events {
        /// Glob over event types (`tool.*`, `policy.denied`, `*`).
        #[arg(long = "type", default_value = "*")]
        pattern: String,
        #[command(subcommand)]
        command: Command,
    },
    #[command(flatten)]
    Other(Command),
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
    },
    /// Run a workflow (YAML/JSON file) with live progress on stderr; prints its outputs
    /// (or, with --json, the whole execution record). Exit 0 when it completed.
    Run {
        /// Workflow file (design §7 format).
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
        /// Print the whole execution record as JSON.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let config = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let engine = match Engine::new(config) {
        Ok(e) => e,
        Err(e) => return fail(&format!("[{}] {e}", e.code())),
    };
    let (command, events) = match cli.command {
        TopCommand::Events { pattern, command } => (command, Some(pattern)),
        TopCommand::Other(command) => (command, cli.events),
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
            Command::Call { tool, args, timeout, from, tenant } => {
                call(&engine, &tool, args.as_deref(), timeout, from, tenant).await
            }
            Command::Check { tool, args, tenant, from } => check(&engine, &tool, args.as_deref(), tenant, from).await,
            Command::Run { workflow, inputs, from, tenant, session, timeout, json } => {
                let inputs = match run::parse_inputs(&inputs) {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("utp: [INVALID_ARGUMENT] {e}");
                        return ExitCode::from(2);
                    }
                };
                let timeout = match parse_timeout(timeout) {
                    Ok(t) => t,
                    Err(code) => return code,
                };
                if let Err(e) = load_tools(&engine, from).await {
                    return fail(&e);
                }
                let options = RunOptions { tenant, session, timeout, ..RunOptions::default() };
                run::run(&engine, &workflow, inputs, options, json).await
            }
        }
    });
    if printer.is_some() {
        settle(&engine);
    }
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
                reports.push(serde_json::json!({"root": target, "error": {"code": e.code().as_str(), "message": e.to_string()}}));
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
    let result = engine.call_tool(tool, args, CallOptions { timeout, tenant, ..Default::default() }).await;
    settle(engine);
    match result {
        Ok(result) => {
            println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("[{}] {e}", e.code())),
    }
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
