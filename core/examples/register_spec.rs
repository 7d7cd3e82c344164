//! Time registering one OpenAPI spec file (or UTCP manual):
//! `cargo run --release -p utp-core --example register_spec -- FILE [--json] [--phases]`.
//!
//! By default it times `Engine::register_manual(path)` alone, in a fresh process, as a
//! user's first registration runs. `--phases` first times read / parse / convert / index
//! separately (which warms the allocator for the registration that follows).
//! `--json` prints `{"seconds", "tools"}` for the bench harness. `--dump OUT` writes the
//! converted manual (tools without `$defs`, then the shared definitions and their reference
//! graph) to OUT as JSON lines, to check that a change to the converter keeps its output.

use std::time::Instant;

// The allocator of the shipped CLI and Node addon, so the bench measures what they run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first().filter(|a| !a.starts_with("--")).cloned() else {
        eprintln!("usage: register_spec FILE [--json] [--phases] [--dump OUT]");
        std::process::exit(2);
    };
    let flag = |f: &str| args.iter().any(|a| a == f);
    if flag("--phases") {
        phases(&path);
    }
    if let Some(out) = args.iter().position(|a| a == "--dump").and_then(|i| args.get(i + 1)) {
        dump(&path, out);
        return;
    }
    let engine = utp_core::Engine::from_json(serde_json::Value::Null).expect("engine");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
    let t = Instant::now();
    rt.block_on(engine.register_manual(utp_core::ManualSource::Path(path.clone().into()), Some("m")))
        .expect("register");
    let register = t.elapsed();
    let tools = engine.catalogue().tool_count();
    if flag("--json") {
        println!("{{\"seconds\": {}, \"tools\": {tools}}}", register.as_secs_f64());
    } else {
        println!("{path}: engine.register_manual(path) {register:?}, {tools} tools");
    }
}

fn phases(path: &str) {
    let t = Instant::now();
    let bytes = std::fs::read(path).expect("read");
    let read = t.elapsed();
    let t = Instant::now();
    let (doc, parts) = utp_core::parse::parse_spec_document(&bytes, Some(std::path::Path::new(path))).expect("parse");
    let parse = t.elapsed();
    let t = Instant::now();
    let manual = convert(doc, parts);
    let convert = t.elapsed();
    let n = manual.tools.len();
    let t = Instant::now();
    let segment = utp_core::search::Segment::build("m", &manual.tools);
    let index = t.elapsed();
    assert_eq!(segment.len(), n);
    let t = Instant::now();
    drop(manual);
    let drop_manual = t.elapsed();
    println!(
        "{path}: {n} tools | read {read:?} parse {parse:?} convert {convert:?} index {index:?} drop {drop_manual:?}"
    );
}

/// Convert as `Engine::register_manual(path)` does: definitions held back as raw text.
fn convert(doc: serde_json::Value, parts: utp_core::parse::SpecParts) -> utp_core::Manual {
    utp_core::openapi::convert_spec(utp_core::openapi::Spec { doc, parts }, &Default::default()).expect("convert")
}

fn dump(path: &str, out: &str) {
    use std::io::Write;
    let bytes = std::fs::read(path).expect("read");
    let (doc, parts) = utp_core::parse::parse_spec_document(&bytes, Some(std::path::Path::new(path))).expect("parse");
    let manual = convert(doc, parts);
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).expect("create"));
    writeln!(w, "{}", serde_json::json!({"utcp_version": manual.utcp_version, "manual_version": manual.manual_version, "extra": manual.extra})).unwrap();
    for tool in &manual.tools {
        writeln!(w, "{}", serde_json::to_string(tool).expect("tool")).unwrap();
    }
    if let Some(defs) = &manual.shared_defs {
        for (name, def) in defs.iter() {
            let edges = defs.refs(name);
            writeln!(w, "{}", serde_json::json!({"def": name, "schema": def, "edges": edges})).unwrap();
        }
    }
}
