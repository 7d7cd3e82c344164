//! Discovery over a directory of good, legacy, broken and hostile files, and
//! manual registration from a real HTTP server on 127.0.0.1.

mod support;

use std::path::Path;

use serde_json::json;
use utp_core::{Engine, ErrorCode, ManualSource, Outcome};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn manual_json(tool: &str) -> String {
    json!({"utcp_version": "1.0.1", "manual_version": "1.0.0", "tools": [{
        "name": tool, "description": "a tool", "inputs": {"type": "object"},
        "tool_call_template": {"call_template_type": "http", "url": "https://api.example.com/x"}}]})
    .to_string()
}

fn billion_laughs() -> String {
    let mut doc = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let mut prev = 'a';
    for n in 'b'..='j' {
        doc.push_str(&format!("{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        prev = n;
    }
    doc.push_str("tools: []\n");
    doc
}

/// The directory of the issue's "must show": valid JSON and YAML manuals, a legacy
/// manual, malformed JSON, an unknown call-template type, a symlink loop, a symlink
/// out of the root, a YAML billion-laughs file, JSON nested 100,000 deep and a 200 MB file.
fn hostile_tree(root: &Path, outside: &Path) {
    let w = |p: &str, s: &str| std::fs::write(root.join(p), s).unwrap();
    std::fs::create_dir_all(root.join("nested/deeper")).unwrap();
    w("alpha.utcp.json", &manual_json("ping"));
    w(
        "nested/beta.utcp.yaml",
        "utcp_version: '1.0.1'\ntools:\n  - name: pong\n    tool_call_template: {call_template_type: cli, commands: [{command: echo}]}\n",
    );
    w(
        "nested/deeper/old.json",
        r#"{"version": "0.1.0", "tools": [{"name": "legacy", "tool_provider": {"provider_type": "http_stream", "url": "https://x"}}]}"#,
    );
    w("broken.json", "{\"tools\": [ {\"name\": ");
    w(
        "teleport.utcp.json",
        r#"{"tools": [{"name": "beam", "tool_call_template": {"call_template_type": "teleport"}}]}"#,
    );
    w("package.json", r#"{"name": "not-a-manual", "version": "1.0.0"}"#);
    w("laughs.utcp.yaml", &billion_laughs());
    w("deep.utcp.json", &("[".repeat(100_000) + &"]".repeat(100_000)));
    w("readme.txt", "ignored");
    // A 200 MB file: sparse, so the test costs no disk, but its size is real.
    let big = std::fs::File::create(root.join("huge.utcp.json")).unwrap();
    big.set_len(200 * 1024 * 1024).unwrap();
    std::os::unix::fs::symlink(root, root.join("nested/loop")).unwrap();
    std::fs::write(outside.join("secret.utcp.json"), manual_json("exfil")).unwrap();
    std::os::unix::fs::symlink(outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.utcp.json"), root.join("escape_file.utcp.json")).unwrap();
}

fn outcome<'a>(report: &'a utp_core::DiscoveryReport, suffix: &str) -> &'a Outcome {
    &report
        .files
        .iter()
        .find(|f| f.path.ends_with(suffix))
        .unwrap_or_else(|| panic!("no report for {suffix}: {:#?}", report.files))
        .outcome
}

#[test]
fn discovery_registers_good_files_and_explains_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    hostile_tree(dir.path(), outside.path());
    let engine = Engine::from_json(json!({})).unwrap();
    let started = std::time::Instant::now();
    let report = runtime().block_on(engine.discover(dir.path().to_str().unwrap())).unwrap();
    assert!(started.elapsed().as_secs() < 10, "discovery took {:?}", started.elapsed());

    let mut names = report.registered();
    names.sort();
    assert_eq!(names, ["alpha", "beta", "old"]);
    assert!(engine.tool("old.legacy").is_ok());
    assert!(engine.tool("beta.pong").is_ok());

    let failed = |suffix: &str, code: ErrorCode, needle: &str| match outcome(&report, suffix) {
        Outcome::Failed { code: c, error } => {
            assert_eq!(c, code.as_str(), "{suffix}: {error}");
            assert!(error.contains(needle), "{suffix}: {error}");
        }
        other => panic!("{suffix}: expected failure, got {other:?}"),
    };
    let skipped = |suffix: &str, needle: &str| match outcome(&report, suffix) {
        Outcome::Skipped { reason } => assert!(reason.contains(needle), "{suffix}: {reason}"),
        other => panic!("{suffix}: expected skip, got {other:?}"),
    };
    failed("broken.json", ErrorCode::InvalidManual, "invalid JSON");
    failed("teleport.utcp.json", ErrorCode::InvalidManual, "teleport");
    failed("laughs.utcp.yaml", ErrorCode::InvalidManual, "YAML");
    failed("deep.utcp.json", ErrorCode::InvalidManual, "recursion limit");
    skipped("huge.utcp.json", "cap");
    skipped("package.json", "not a UTCP manual");
    skipped("nested/loop", "loop");
    skipped("escape", "outside");
    skipped("escape_file.utcp.json", "outside");
    assert!(engine.tool("secret.exfil").is_err());
    assert!(!report.files.iter().any(|f| f.path.ends_with("readme.txt")));
}

#[test]
fn discovering_a_missing_path_is_not_found() {
    let engine = Engine::from_json(json!(null)).unwrap();
    let err = runtime().block_on(engine.discover("/nonexistent/utp/tools")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
}

#[test]
fn register_file_by_path_and_reject_directories() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weather.utcp.json");
    std::fs::write(&file, manual_json("get")).unwrap();
    let engine = Engine::from_json(json!({})).unwrap();
    let rt = runtime();
    let tools = rt.block_on(engine.register_manual(ManualSource::Path(file.clone()), None)).unwrap();
    assert_eq!(tools, ["weather.get"]);
    let again = rt.block_on(engine.register_manual(ManualSource::Path(file), None)).unwrap_err();
    assert_eq!(again.code(), ErrorCode::AlreadyExists);
    let err = rt.block_on(engine.register_manual(ManualSource::Path(dir.path().into()), None)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let named = rt
        .block_on(engine.register_manual(ManualSource::from_text(&manual_json("x")).unwrap(), Some("my-api")))
        .unwrap();
    assert_eq!(named, ["my_api.x"]);
}

/// A loopback HTTP/1.1 server serving fixed routes (request target, status, body).
struct Server {
    port: u16,
}

impl Server {
    fn start(routes: Vec<(&'static str, u16, String)>) -> Server {
        let port = support::blocking::serve(move |request| {
            routes
                .iter()
                .find(|(p, _, _)| *p == request.target)
                .map(|(_, s, b)| (*s, b.clone()))
                .unwrap_or((404, "not found".into()))
        });
        Server { port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

#[test]
fn manual_from_url_and_from_url_slash_utcp() {
    let server = Server::start(vec![
        ("/manual.json", 200, manual_json("direct")),
        ("/api/utcp", 200, manual_json("fallback")),
        (
            "/spec",
            200,
            json!({"openapi": "3.1.0", "info": {"title": "Pets"}, "servers": [{"url": "/v1"}],
            "paths": {"/pets": {"get": {"operationId": "listPets"}}}})
            .to_string(),
        ),
        ("/junk/utcp", 200, "{not json".into()),
    ]);
    let rt = runtime();
    let engine = Engine::from_json(json!({})).unwrap();
    let tools = rt.block_on(engine.register_manual(ManualSource::Url(server.url("/manual.json")), None)).unwrap();
    assert_eq!(tools, ["127_0_0_1.direct"]);
    let tools = rt.block_on(engine.register_manual(ManualSource::Url(server.url("/api")), Some("api"))).unwrap();
    assert_eq!(tools, ["api.fallback"]);

    let report = rt.block_on(engine.discover(&server.url("/nothing"))).unwrap();
    assert!(report.registered().is_empty());
    assert!(matches!(report.files[0].outcome, Outcome::Failed { .. }));

    // An OpenAPI document at a URL converts; its relative server resolves against the URL.
    let tools = rt.block_on(engine.register_manual(ManualSource::Url(server.url("/spec")), Some("pets"))).unwrap();
    assert_eq!(tools, ["pets.listPets"]);
    let tool = engine.tool("pets.listPets").unwrap().to_value();
    assert_eq!(tool["tool_call_template"]["url"], server.url("/v1/pets"));
    let err = rt.block_on(engine.register_manual(ManualSource::Url(server.url("/junk")), Some("j"))).unwrap_err();
    assert!(!err.to_string().is_empty());
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let engine = Engine::from_json(json!({})).unwrap();
    let err = runtime()
        .block_on(engine.register_manual(ManualSource::Url("http://example.com/utcp".into()), None))
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Security);
}

#[test]
fn oversized_url_response_is_refused() {
    let server = Server::start(vec![("/big", 200, " ".repeat(4096))]);
    let engine = Engine::from_json(json!({"discovery": {"max_file_size": 1024}})).unwrap();
    let err = runtime().block_on(engine.register_manual(ManualSource::Url(server.url("/big")), Some("b"))).unwrap_err();
    assert!(err.to_string().contains("cap"), "{err}");
}
