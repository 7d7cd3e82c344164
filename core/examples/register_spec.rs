//! Time the phases of registering one OpenAPI spec file:
//! `cargo run --release -p utp-core --example register_spec -- FILE`.

use std::time::Instant;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: register_spec FILE");
        std::process::exit(2);
    };
    let t = Instant::now();
    let bytes = std::fs::read(&path).expect("read");
    let read = t.elapsed();
    let t = Instant::now();
    let doc = utp_core::parse::parse_document(&bytes, Some(std::path::Path::new(&path))).expect("parse");
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
    let engine = utp_core::Engine::from_json(serde_json::Value::Null).expect("engine");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
    let t = Instant::now();
    rt.block_on(engine.register_manual(utp_core::ManualSource::Path(path.clone().into()), Some("m"))).expect("register");
    let register = t.elapsed();
    let tools = engine.tools().len();
    if std::env::args().any(|a| a == "--json") {
        println!(
            "{{\"seconds\": {}, \"tools\": {tools}, \"parse\": {}, \"convert\": {}, \"index\": {}}}",
            register.as_secs_f64(),
            parse.as_secs_f64(),
            convert.as_secs_f64(),
            index.as_secs_f64()
        );
    } else {
        println!(
            "{path}: {n} tools | read {read:?} parse {parse:?} convert {convert:?} index {index:?} drop {drop_manual:?} | engine.register_manual(path) {register:?}"
        );
    }
}
