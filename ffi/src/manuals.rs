//! Manuals and the tool registry: register / deregister a manual, discover manuals in a
//! directory or at a URL, list and search the registered tools.

use std::ffi::c_char;
use std::ptr;

use serde_json::Value;
use utp_core::ManualSource;

use crate::engine::{UtpEngine, engine_and_out};
use crate::error::{UtpError, guard, optional_str, required_str};
use crate::strings::{json_out, parse_tags};

fn tools_json(tools: &[std::sync::Arc<utp_core::RegisteredTool>]) -> Value {
    Value::Array(tools.iter().map(|t| t.to_value()).collect())
}

/// Register a manual. `manual_json_or_path_or_url` is an http(s) URL, a path to an
/// existing file, or the manual itself as JSON or YAML text (a UTCP manual or an
/// OpenAPI document: text starting with '{', spanning several lines, or one
/// `key: value` line); other text is taken for a missing file (UTP_ERR_NOT_FOUND). `name`
/// (nullable) overrides the manual's default name. On success `*out_tool_names_json`
/// receives a JSON array of the registered tools' full names ("manual.tool"); free
/// it with utp_string_free(). Registering a name twice gives UTP_ERR_ALREADY_EXISTS.
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_register_manual(
    engine: *mut UtpEngine,
    manual_json_or_path_or_url: *const c_char,
    name: *const c_char,
    out_tool_names_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_tool_names_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) =
            unsafe { engine_and_out(engine, out_tool_names_json, "out_tool_names_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let source_text = unsafe { required_str(manual_json_or_path_or_url, "manual_json_or_path_or_url") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { optional_str(name, "name") }?;
        let source = ManualSource::from_text(source_text)?;
        let names = handle.block_on(handle.engine.register_manual(source, name))??;
        *out = json_out(&Value::from(names))?;
        Ok(())
    })
}

/// Deregister a manual and its tools. `*out_removed` is set to true when a manual
/// of that name was registered, false otherwise (not an error).
///
/// # Safety
/// `engine` is a live handle; `name` is NULL or NUL-terminated; `out_removed` is
/// valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_deregister_manual(
    engine: *mut UtpEngine,
    name: *const c_char,
    out_removed: *mut bool,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_removed` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_removed, "out_removed", false) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?;
        *out = handle.engine.deregister_manual(name);
        Ok(())
    })
}

/// All registered tools as a JSON array of UTCP tool objects (each `name` is the
/// full "manual.tool" name). Free `*out_tools_json` with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; `out_tools_json` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_tools(engine: *mut UtpEngine, out_tools_json: *mut *mut c_char) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_tools_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_tools_json, "out_tools_json", ptr::null_mut()) }?;
        *out = json_out(&tools_json(&handle.engine.tools()))?;
        Ok(())
    })
}

/// Search the registered tools (BM25 over names, descriptions, tags and schemas),
/// best match first. `limit` caps the results (0 = no limit). `tags_json` (nullable)
/// is a JSON array of tag strings; only tools with at least one of them match
/// (case-insensitive). An empty query lists the (tag-filtered) tools by name. The result
/// is a JSON array of tool objects as in utp_tools(); free it with utp_string_free().
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_search_tools(
    engine: *mut UtpEngine,
    query: *const c_char,
    limit: u32,
    tags_json: *const c_char,
    out_tools_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_tools_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_tools_json, "out_tools_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let query = unsafe { required_str(query, "query") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let tags = parse_tags(unsafe { optional_str(tags_json, "tags_json") }?)?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        *out = json_out(&tools_json(&handle.engine.search_tools(query, limit, &tags)))?;
        Ok(())
    })
}

/// Discover and register manuals in a directory (recursively), a single file, or
/// at an http(s) URL. One bad file never aborts the scan: `*out_report_json`
/// receives the full report, `{"root": ..., "files": [{"path": ..., "status":
/// "registered" | "skipped" | "failed", ...}]}`; free it with utp_string_free().
/// A missing path is a UTP_ERR_NOT_FOUND error.
///
/// # Safety
/// `engine` is a live handle; `path_or_url` is NULL or NUL-terminated; the
/// out-parameter is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_discover(
    engine: *mut UtpEngine,
    path_or_url: *const c_char,
    out_report_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_report_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_report_json, "out_report_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let target = unsafe { required_str(path_or_url, "path_or_url") }?;
        let report = handle.block_on(handle.engine.discover(target))??;
        *out = json_out(&report.to_value())?;
        Ok(())
    })
}
