//! Generates the C header with cbindgen into `$OUT_DIR/utp.h`.
//!
//! The committed copy lives at `include/utp.h`; it is only rewritten when the
//! environment has `UTP_UPDATE_HEADER=1` (the build never writes into the source
//! tree otherwise). `tests/header.rs` fails when the two differ.

use std::env;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let config_path = crate_dir.join("cbindgen.toml");

    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=UTP_UPDATE_HEADER");

    let mut config = cbindgen::Config::from_file(&config_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", config_path.display()));
    let version = env::var("CARGO_PKG_VERSION").expect("CARGO_PKG_VERSION");
    let part = |name: &str| env::var(name).unwrap_or_else(|_| "0".into());
    let prelude = format!(
        "\n/* Version of the library this header belongs to (utp_version() returns the same string). */\n\
         #define UTP_VERSION_MAJOR {}\n\
         #define UTP_VERSION_MINOR {}\n\
         #define UTP_VERSION_PATCH {}\n\
         #define UTP_VERSION_STRING \"{}\"\n\
         \n\
         /*\n \
         * An engine: the registry of manuals and tools, discovery and search, plus the\n \
         * library threads that run its work. Create with utp_engine_new(), release with\n \
         * utp_engine_free(). Thread-safe: may be shared between threads.\n \
         */\n\
         typedef struct utp_engine utp_engine_t;\n\
         \n\
         /*\n \
         * An error: a code (one of the UTP_ERR_* values) and a UTF-8 message. Returned by\n \
         * every fallible function (NULL means success); release with utp_error_free().\n \
         */\n\
         typedef struct utp_error utp_error_t;\n\
         \n\
         /*\n \
         * Where a C tool callback puts its outcome: utp_tool_result_set_json() on success,\n \
         * utp_tool_result_set_error() on failure. Valid only during the callback.\n \
         */\n\
         typedef struct utp_tool_result utp_tool_result_t;\n\
         \n\
         /*\n \
         * Where a C business rule puts its verdict: utp_rule_result_deny() or\n \
         * utp_rule_result_escalate(); a rule that sets nothing allows the call. Valid only\n \
         * during the callback.\n \
         */\n\
         typedef struct utp_rule_result utp_rule_result_t;\n\
         \n\
         /*\n \
         * The items of one streaming tool call, from utp_call_tool_stream(): read them with\n \
         * utp_stream_next(), cancel with utp_stream_cancel() (from any thread), release with\n \
         * utp_stream_free() before the engine. utp_stream_next() calls are served one at a time.\n \
         */\n\
         typedef struct utp_stream utp_stream_t;\n",
        part("CARGO_PKG_VERSION_MAJOR"),
        part("CARGO_PKG_VERSION_MINOR"),
        part("CARGO_PKG_VERSION_PATCH"),
        version
    );
    config.after_includes = Some(match config.after_includes.take() {
        Some(existing) => format!("{existing}\n{prelude}"),
        None => prelude,
    });

    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen failed to generate utp.h: {e}"));

    let mut header = Vec::new();
    bindings.write(&mut header);
    let generated = out_dir.join("utp.h");
    std::fs::write(&generated, &header).unwrap_or_else(|e| panic!("cannot write {}: {e}", generated.display()));

    if env::var("UTP_UPDATE_HEADER").as_deref() == Ok("1") {
        let committed = crate_dir.join("..").join("include").join("utp.h");
        if std::fs::read(&committed).ok().as_deref() != Some(header.as_slice()) {
            if let Some(dir) = committed.parent() {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            }
            std::fs::write(&committed, &header).unwrap_or_else(|e| panic!("cannot write {}: {e}", committed.display()));
            println!("cargo:warning=updated {}", committed.display());
        }
    }
}
