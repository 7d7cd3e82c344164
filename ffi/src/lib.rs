//! The C ABI of UTP Runtime: `libutp.so` / `libutp.a` with the header `include/utp.h`
//! (generated from these sources by cbindgen, see `build.rs`).
//!
//! Rules kept by every entry point (docs/conventions, "The C ABI"):
//! - the whole body runs inside `catch_unwind`; a panic becomes a `UTP_ERR_PANIC` error;
//! - NULL pointers and invalid UTF-8 are `UTP_ERR_INVALID_ARGUMENT` errors, never UB;
//! - out-parameters are reset (NULL / false) first and written only on success;
//! - strings we hand out are `CString`s freed only by `utp_string_free`;
//! - `_free(NULL)` is a no-op.
//!
//! One module per concept, as in wasmtime's `crates/c-api`. cbindgen writes the header's
//! constants and functions in the order it reads them: this file first, then the modules
//! in the order they are declared below, each from top to bottom (the callback typedefs
//! follow the first function that uses them). Adding to the end of a module, or a module at
//! the end, keeps `include/utp.h` stable; reordering them reorders the header.

#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{CStr, c_char};

mod error;
mod strings;
mod engine;
mod manuals;
mod calls;
mod streams;
mod tools;
mod callbacks;
mod rules;
mod approvals;
mod events;
mod workflows;
mod sessions;
mod store;
mod intents;
mod planner;

pub use crate::approvals::*;
pub use crate::callbacks::*;
pub use crate::calls::*;
pub use crate::engine::*;
pub use crate::error::*;
pub use crate::events::*;
pub use crate::intents::*;
pub use crate::manuals::*;
pub use crate::planner::*;
pub use crate::rules::*;
pub use crate::sessions::*;
pub use crate::store::*;
pub use crate::streams::*;
pub use crate::strings::*;
pub use crate::tools::*;
pub use crate::workflows::*;

static VERSION_C: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(s) => s,
    Err(_) => panic!("version holds a NUL byte"),
};

/// The library version, e.g. "0.1.0" (equal to UTP_VERSION_STRING of the header it
/// was built with). A static string: do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn utp_version() -> *const c_char {
    VERSION_C.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_core() {
        // SAFETY: utp_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(utp_version()) }.to_str().unwrap();
        assert_eq!(v, utp_core::VERSION);
    }
}
