//! The committed `include/utp.h` must equal what cbindgen generates from the sources.

use std::path::Path;

#[test]
fn committed_header_is_up_to_date() {
    let generated_path = Path::new(env!("OUT_DIR")).join("utp.h");
    let committed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/utp.h");
    let generated = std::fs::read_to_string(&generated_path)
        .unwrap_or_else(|e| panic!("cannot read generated header {}: {e}", generated_path.display()));
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        generated == committed,
        "include/utp.h is out of date (or missing) with respect to ffi/src; regenerate it with \
         `UTP_UPDATE_HEADER=1 cargo build -p utp-ffi` and commit it"
    );
}
