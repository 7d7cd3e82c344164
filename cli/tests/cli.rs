//! The `utp` binary, run as a user would.

use std::process::Command;

/// Each run in a fresh working directory: commands that record runs create their
/// default database (.utp/utp.db) there, not in the source tree.
fn utp(args: &[&str]) -> (i32, String, String) {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_utp")).args(args).current_dir(cwd.path()).output().expect("run utp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const GOOD: &str = r#"{"tools": [{"name": "ping", "description": "Ping a host",
    "tool_call_template": {"call_template_type": "http", "url": "https://x.dev/ping"}}]}"#;

#[test]
fn discover_reports_every_file_and_succeeds_when_something_registered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("net.utcp.json"), GOOD).unwrap();
    std::fs::write(dir.path().join("bad.json"), "{oops").unwrap();
    std::fs::write(
        dir.path().join("files.utcp.yaml"),
        "tools:\n  - name: read\n    tool_call_template: {call_template_type: file, file_path: ./x.json}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("old.json"),
        r#"{"version": "0.1", "tools": [{"name": "t", "tool_provider": {"provider_type": "cli", "command_name": "echo"}}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("weird.utcp.yaml"),
        "tools: [{name: x, tool_call_template: {call_template_type: carrier_pigeon}}]",
    )
    .unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
    let (code, out, _) = utp(&["discover", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("registered") && out.contains("net"), "{out}");
    assert!(out.contains("bad.json") && out.contains("invalid JSON"), "{out}");
    assert!(out.contains("carrier_pigeon"), "{out}");
    assert!(out.contains("loop"), "{out}");
    assert!(out.contains("→ files") && out.contains("→ old"), "{out}");
    assert!(out.contains("3 manual(s) registered"), "{out}");

    let (code, out, _) = utp(&["discover", "--json", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["files"].as_array().unwrap().len(), 6, "{out}");
}

#[test]
fn discover_fails_when_nothing_could_be_registered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.utcp.json"), "[]").unwrap();
    let (code, out, _) = utp(&["discover", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let (code, _, err) = utp(&["discover", "/nonexistent/utp-cli-test"]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "{err}");
}

#[test]
fn tools_lists_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("net.utcp.json"), GOOD).unwrap();
    let (code, out, _) = utp(&["tools", dir.path().to_str().unwrap(), "--search", "ping host"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("net.ping"), "{out}");
    let (code, out, _) = utp(&["tools", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "net.ping");
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("utp.yaml");
    std::fs::write(&cfg, "variables: [1, 2]").unwrap();
    let (code, _, err) = utp(&["--config", cfg.to_str().unwrap(), "tools", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("INVALID_ARGUMENT") && err.contains("utp.yaml"), "{err}");
}

#[test]
fn call_runs_a_tool_and_reports_errors_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sh.utcp.json"),
        r#"{"tools": [
            {"name": "echo", "inputs": {"type": "object", "properties": {"msg": {"type": "string"}}, "required": ["msg"]},
             "tool_call_template": {"call_template_type": "cli", "commands": [{"command": "printf '{\"said\": \"%s\"}' UTCP_ARG_msg_UTCP_END"}]}},
            {"name": "slow", "tool_call_template": {"call_template_type": "cli", "commands": [{"command": "sleep 20"}]}}
        ]}"#,
    )
    .unwrap();
    let from = dir.path().to_str().unwrap();
    let (code, out, err) = utp(&["call", "sh.echo", r#"{"msg": "hi; rm -rf /"}"#, "--from", from]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["said"], "hi; rm -rf /");

    let (code, _, err) = utp(&["call", "sh.echo", "{}", "--from", from]);
    assert_eq!(code, 1);
    assert!(err.contains("[VALIDATION_FAILED]") && err.contains("msg"), "{err}");
    let (code, _, err) = utp(&["call", "sh.nope", "{}", "--from", from]);
    assert_eq!(code, 1);
    assert!(err.contains("[NOT_FOUND]"), "{err}");
    let (code, _, err) = utp(&["call", "sh.echo", "{oops", "--from", from]);
    assert_eq!(code, 2);
    assert!(err.contains("[INVALID_ARGUMENT]"), "{err}");
    let (code, _, err) = utp(&["call", "sh.slow", "{}", "--timeout", "0.3", "--from", from]);
    assert_eq!(code, 1);
    assert!(err.contains("[TIMEOUT]"), "{err}");
    let (code, _, err) = utp(&["call", "sh.slow", "{}", "--timeout", "-1", "--from", from]);
    assert_eq!(code, 2, "{err}");
}

const POLICY: &str = r#"{
    "permissions": {"shop": {"enabled": true, "allowed_actions": ["get", "set"]}},
    "business_rules": {"max": 10},
    "rules": [{"name": "max_count", "match": {"tool": "shop", "action": "set"},
               "deny_if": "params.count > constants.max", "message": "at most {{constants.max}}"}]
}"#;

const SHOP: &str = r#"{"tools": [
    {"name": "get", "tool_call_template": {"call_template_type": "text", "content": "42"}},
    {"name": "set", "inputs": {"type": "object", "properties": {"count": {"type": "integer"}}},
     "tool_call_template": {"call_template_type": "text", "content": "ok"}},
    {"name": "drop", "tool_call_template": {"call_template_type": "text", "content": "gone"}}
]}"#;

#[test]
fn check_prints_the_decision_and_exits_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("utp.json");
    std::fs::write(&cfg, POLICY).unwrap();
    let manuals = dir.path().join("m");
    std::fs::create_dir(&manuals).unwrap();
    std::fs::write(manuals.join("shop.utcp.json"), SHOP).unwrap();
    let (cfg, manuals) = (cfg.to_str().unwrap(), manuals.to_str().unwrap());

    let (code, out, err) = utp(&["--config", cfg, "check", "shop.set", r#"{"count": 5}"#, "--from", manuals]);
    assert_eq!(code, 0, "{out}{err}");
    let decision: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(decision["decision"], "allow");

    let (code, out, _) = utp(&["--config", cfg, "check", "shop.set", r#"{"count": 50}"#, "--from", manuals]);
    assert_eq!(code, 1);
    let decision: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (decision["decision"].as_str(), decision["rules"][0]["rule"].as_str()),
        (Some("deny"), Some("max_count"))
    );
    let (code, out, _) = utp(&["--config", cfg, "check", "shop.drop", "--from", manuals]);
    assert_eq!(code, 1, "{out}");
    let (code, _, err) = utp(&["--config", cfg, "check", "shop.nope", "--from", manuals]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "{err}");
    let (code, _, err) = utp(&["--config", cfg, "check", "shop.set", "{oops", "--from", manuals]);
    assert_eq!(code, 2);
    assert!(err.contains("INVALID_ARGUMENT"), "{err}");
}

#[test]
fn events_flag_prints_this_runs_events_before_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("utp.json");
    std::fs::write(&cfg, POLICY).unwrap();
    let manuals = dir.path().join("m");
    std::fs::create_dir(&manuals).unwrap();
    std::fs::write(manuals.join("shop.utcp.json"), SHOP).unwrap();
    let (cfg, manuals) = (cfg.to_str().unwrap(), manuals.to_str().unwrap());

    let (code, out, err) = utp(&["--config", cfg, "--events", "call", "shop.get", "--from", manuals]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "\"42\"");
    let kinds: Vec<String> = err
        .lines()
        .filter_map(|l| l.strip_prefix("event "))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["manual.registered", "tool.called", "tool.succeeded"], "{err}");

    let (code, _, err) =
        utp(&["--config", cfg, "--events=policy.*", "call", "shop.set", r#"{"count": 99}"#, "--from", manuals]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with("event ") && lines[0].contains("\"policy.denied\"") && lines[0].contains("max_count"),
        "{err}"
    );
    assert!(lines[1].contains("PERMISSION_DENIED") && lines[1].contains("at most 10"), "{err}");
    assert_eq!(lines.len(), 2, "{err}");
    let (code, _, err) = utp(&["--events=", "tools", manuals]);
    assert_eq!(code, 1, "{err}");

    // `utp events [--type PATTERN] COMMAND` is the same as --events.
    let (code, out, err) = utp(&["--config", cfg, "events", "--type", "tool.*", "call", "shop.get", "--from", manuals]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "\"42\"");
    assert_eq!(err.lines().filter(|l| l.starts_with("event ")).count(), 2, "{err}");
    let (code, _, err) = utp(&["events", "--type", "tool.sucess", "tools", manuals]);
    assert_eq!(code, 1);
    assert!(err.contains("matches no event type"), "{err}");
}

#[test]
fn run_shows_progress_and_prints_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let manuals = dir.path().join("m");
    std::fs::create_dir(&manuals).unwrap();
    std::fs::write(manuals.join("shop.utcp.json"), SHOP).unwrap();
    let wf = dir.path().join("wf.yaml");
    std::fs::write(
        &wf,
        "name: w\ninputs: {n: {type: integer}}\nsteps:\n  - id: a\n    tool: shop.get\n  - id: b\n    tool: shop.set\n    depends_on: [a]\n    args: {count: \"${{ inputs.n + 1 }}\"}\n  - id: c\n    tool: shop.get\n    depends_on: [b]\n    if: \"inputs.n > 100\"\noutputs: {first: \"${{ steps.a.output }}\", n: \"${{ inputs.n }}\"}\n",
    )
    .unwrap();
    let (wf, manuals) = (wf.to_str().unwrap(), manuals.to_str().unwrap());
    let (code, out, err) = utp(&["run", wf, "--from", manuals, "--input", "n=41"]);
    assert_eq!(code, 0, "{out}{err}");
    let outputs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outputs, serde_json::json!({"first": "42", "n": 41}));
    assert!(
        err.contains("▶ w started")
            && err.contains("b              succeeded")
            && err.contains("c              skipped"),
        "{err}"
    );
    assert!(err.contains("✔ completed"), "{err}");

    let (code, out, _) = utp(&["run", wf, "--from", manuals, "--input", "n=1", "--json"]);
    assert_eq!(code, 0);
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["steps"]["b"]["status"], "succeeded");
    // Bad inputs and bad workflows are clear errors.
    let (code, _, err) = utp(&["run", wf, "--from", manuals, "--input", "n=oops"]);
    assert_eq!(code, 1);
    assert!(err.contains("VALIDATION_FAILED"), "{err}");
    let (code, _, err) = utp(&["run", wf, "--from", manuals, "--input", "novalue"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = utp(&["run", "/nonexistent/wf.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("NOT_FOUND"), "{err}");
}
