//! Strings across the boundary: C strings and JSON text we hand out (freed only by
//! `utp_string_free`), and the JSON arguments several entry points share.

use std::ffi::{CString, c_char};

use serde_json::Value;
use utp_core::Error;

use crate::error::{guard_value, invalid};

/// A `CString` from text that may hold NUL bytes (they become `\0` escapes).
pub(crate) fn to_cstring_lossy(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).unwrap_or_default()
}

/// JSON text as a C string the caller frees with `utp_string_free`.
pub(crate) fn json_out(value: &Value) -> Result<*mut c_char, Error> {
    let text = serde_json::to_string(value).map_err(|e| Error::Internal(format!("cannot serialise result: {e}")))?;
    let c = CString::new(text).map_err(|e| Error::Internal(format!("result holds a NUL byte: {e}")))?;
    Ok(c.into_raw())
}

/// A C string for an id we hand out.
pub(crate) fn string_out(text: &str) -> Result<*mut c_char, Error> {
    Ok(CString::new(text).map_err(|e| Error::Internal(format!("id holds a NUL byte: {e}")))?.into_raw())
}

pub(crate) fn parse_tags(tags_json: Option<&str>) -> Result<Vec<String>, Error> {
    let Some(text) = tags_json else { return Ok(Vec::new()) };
    let value: Value = serde_json::from_str(text).map_err(|e| invalid(format!("tags_json is not valid JSON: {e}")))?;
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(invalid(format!("tags_json must be an array of strings, found element {other}"))),
            })
            .collect(),
        _ => Err(invalid("tags_json must be a JSON array of strings or null")),
    }
}

/// Free a string returned by this library through a `char **out_...` parameter.
/// NULL is a no-op. Never pass memory the library did not allocate.
///
/// # Safety
/// `s` is NULL or a string returned by this library, freed at most once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_string_free(s: *mut c_char) {
    guard_value((), || {
        if !s.is_null() {
            // SAFETY: a pointer from CString::into_raw in this library, not yet freed.
            drop(unsafe { CString::from_raw(s) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use utp_core::ErrorCode;

    #[test]
    fn tags_parse() {
        assert!(parse_tags(None).unwrap().is_empty());
        assert!(parse_tags(Some("null")).unwrap().is_empty());
        assert_eq!(parse_tags(Some(r#"["a","b"]"#)).unwrap(), vec!["a", "b"]);
        assert_eq!(parse_tags(Some("[1]")).unwrap_err().code(), ErrorCode::InvalidArgument);
        assert_eq!(parse_tags(Some("{")).unwrap_err().code(), ErrorCode::InvalidArgument);
    }
}
