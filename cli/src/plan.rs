//! `utp plan` and `utp do`: a request in words becomes a workflow (docs/design.md §10).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use serde_json::Value;
use utp_core::Engine;
use utp_core::planner::{PlanOptions, PlannedWorkflow};
use utp_core::workflow::RunOptions;

/// The definition as YAML (or pretty JSON).
fn render(definition: &Value, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(definition).unwrap_or_default();
    }
    utp_core::planner::to_yaml(definition)
        .unwrap_or_else(|_| serde_json::to_string_pretty(definition).unwrap_or_default())
}

/// `planned by openai gpt-4o in 2 round(s), 1234 tokens`.
fn summary(plan: &PlannedWorkflow) -> String {
    let by = if plan.model.is_empty() { plan.provider.clone() } else { format!("{} {}", plan.provider, plan.model) };
    let tokens = plan.usage.prompt_tokens + plan.usage.completion_tokens;
    if plan.rounds == 0 {
        format!("planned by the {by} planner")
    } else {
        format!(
            "planned by {by} in {} round(s), {tokens} tokens ({} prompt, {} completion)",
            plan.rounds, plan.usage.prompt_tokens, plan.usage.completion_tokens
        )
    }
}

fn failed(e: &utp_core::Error) -> ExitCode {
    eprintln!("utp: [{}] {e}", e.code());
    ExitCode::FAILURE
}

/// Print the planned workflow (YAML, or JSON with `json`) on stdout, how it was
/// planned on stderr. Exit 1 when no valid workflow came out.
pub async fn plan(engine: &Engine, request: &str, options: PlanOptions, json: bool) -> ExitCode {
    match engine.plan(request, options).await {
        Ok(plan) => {
            let text = render(&plan.definition, json);
            println!("{}", text.trim_end());
            eprintln!("utp: {}", summary(&plan));
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}

/// Plan, show the plan on stderr, and (with `yes`, or after a `y` on a terminal) run
/// it like `utp run`. Without `--yes` and without a terminal to ask on, nothing runs (exit 2).
pub async fn run(
    engine: &Engine,
    request: &str,
    inputs: Value,
    yes: bool,
    options: RunOptions,
    json: bool,
) -> ExitCode {
    let plan_options = PlanOptions {
        tenant: options.tenant.clone(),
        session: options.session.clone(),
        inputs: Some(inputs.clone()),
        client: None,
    };
    let plan = match engine.plan(request, plan_options).await {
        Ok(p) => p,
        Err(e) => return failed(&e),
    };
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "utp: {}:", summary(&plan));
        for line in render(&plan.definition, false).lines() {
            let _ = writeln!(err, "  {line}");
        }
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("utp: [INVALID_ARGUMENT] not run: pass --yes to run a planned workflow without confirming it");
            return ExitCode::from(2);
        }
        eprint!("Run this workflow? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
            eprintln!("utp: not run");
            return ExitCode::FAILURE;
        }
    }
    let definition = serde_json::to_string(&plan.definition).unwrap_or_default();
    crate::run::run(engine, &definition, inputs, options, 1, json).await
}
