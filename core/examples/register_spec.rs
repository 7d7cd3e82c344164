//! Time registering one OpenAPI spec file (or UTCP manual):
//! `cargo run --release -p utp-core --example register_spec -- FILE [--json] [--phases]`.
//!
//! By default it times `Engine::register_manual(path)` alone, in a fresh process, as a
//! user's first registration runs. `--phases` first times read / parse / convert / index
//! separately (which warms the allocator for the registration that follows).
//! `--json` prints `{"seconds", "tools"}` for the bench harness.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")).cloned() else {
        eprintln!("usage: register_spec FILE [--json] [--phases]");
        std::process::exit(2);
    };
    let flag = |f: &str| args.iter().any(|a| a == f);
    if flag("--phases") {
        phases(&path);
    }
    let engine = utp_core::Engine::from_json(serde_json::Value::Null).expect("engine");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
    let t = Instant::now();
    rt.block_on(engine.register_manual(utp_core::ManualSource::Path(path.clone().into()), Some("m"))).expect("register");
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
    let doc = utp_core::parse::parse_document(&bytes, Some(std::path::Path::new(path))).expect("parse");
    let parse = t.elapsed();
    let t = Instant::now();
    let manual = utp_core::openapi::convert(doc, &Default::default()).expect("convert");
    let convert = t.elapsed();
    let n = manual.tools.len();
    let t = Instant::now();
    let segment = utp_core::search::Segment::build("m", &manual.tools);
    let index = t.elapsed();
    assert_eq!(segment.len(), n);
    let t = Instant::now();
    drop(manual);
    let drop_manual = t.elapsed();
    println!("{path}: {n} tools | read {read:?} parse {parse:?} convert {convert:?} index {index:?} drop {drop_manual:?}");
}
