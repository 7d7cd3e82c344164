//! The shared host-option cases (tests/scenarios/host_options.json) against
//! `utp_core::host` directly: every binding's table test reads the same file and must
//! get the same code and message through its public API.

use serde_json::Value;
use utp_core::ErrorCode;
use utp_core::host::{self, KeyStyle};

fn cases() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/scenarios/host_options.json");
    let text = std::fs::read_to_string(path).expect("tests/scenarios/host_options.json");
    let doc: Value = serde_json::from_str(&text).expect("valid JSON");
    doc["cases"].as_array().expect("a cases array").clone()
}

/// Parse one case's input the way its kind is parsed for a host (C's spelling).
fn run(kind: &str, input: &Value) -> utp_core::Result<()> {
    let what = "test";
    match kind {
        "call_options" => host::call_options(input, what, KeyStyle::Snake).map(drop),
        "run_options" => host::run_options(input, what, KeyStyle::Snake).map(drop),
        "plan_options" => host::plan_options(input, what, KeyStyle::Snake).map(drop),
        "event_filter" => host::event_filter(input, what, KeyStyle::Snake).map(drop),
        "history_filter" => host::history_filter(input, what, KeyStyle::Snake).map(drop),
        "subscribe" => host::event_pattern(input["pattern"].as_str().expect("pattern"), "event pattern").map(drop),
        "store" => host::engine_options(input, what, KeyStyle::Snake).map(drop),
        other => panic!("unknown kind {other}"),
    }
}

#[test]
fn every_shared_case_gets_its_code_and_message() {
    let cases = cases();
    assert!(cases.len() >= 20, "the table lost its cases");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let kind = case["kind"].as_str().expect("kind");
        let outcome = run(kind, &case["input"]);
        match (case["code"].as_str(), outcome) {
            (None, Ok(())) => {}
            (None, Err(e)) => failures.push(format!("{name}: expected ok, got {} {e}", e.code())),
            (Some(code), Ok(())) => failures.push(format!("{name}: expected {code}, got ok")),
            (Some(code), Err(e)) => {
                let message = case["message"].as_str().expect("message");
                if ErrorCode::from_name(code) != Some(e.code()) || !e.to_string().contains(message) {
                    failures.push(format!("{name}: expected {code} '{message}', got {} '{e}'", e.code()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_kind_has_a_bad_and_a_valid_case_except_plans() {
    let cases = cases();
    for kind in ["call_options", "run_options", "event_filter", "history_filter", "subscribe", "store"] {
        let of_kind: Vec<&Value> = cases.iter().filter(|c| c["kind"] == kind).collect();
        assert!(of_kind.iter().any(|c| c["code"].is_null()), "{kind}: no valid case");
        assert!(of_kind.iter().any(|c| c["code"].is_string()), "{kind}: no bad case");
    }
}

#[test]
fn the_engine_subscribes_with_the_same_pattern_message() {
    let engine = utp_core::Engine::new(utp_core::Config::default()).expect("engine");
    let handler: utp_core::EventHandler = std::sync::Arc::new(|_| Ok(()));
    let err = engine.subscribe("tool.sucess", handler).expect_err("a typo is refused");
    let expected = host::event_pattern("tool.sucess", "event pattern").expect_err("refused").to_string();
    assert_eq!((err.code(), err.to_string()), (ErrorCode::InvalidArgument, expected));
}
