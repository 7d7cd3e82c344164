//! JS values → `serde_json::Value` with the rules of `JSON.stringify`, for the
//! values that cross into the runtime from calls and JS tools (arguments, options,
//! tool results).
//!
//! napi's own serde conversion refuses `undefined` anywhere (so `{ a: undefined }`
//! fails) and turns a BigInt silently into a number. Here, as in `JSON.stringify`:
//! object properties that are `undefined`, functions or symbols are left out, and
//! in arrays they become `null`; `toJSON()` is called (a `Date` becomes its ISO
//! string); NaN and ±Infinity become `null` (errors in [`StrictJson`], used for
//! options). Unlike `JSON.stringify`, nothing is
//! silently lost at the top: a top-level `undefined` / function / symbol is an
//! error, and so are a BigInt anywhere, a cycle, and nesting deeper than
//! [`MAX_DEPTH`]. Every error names where in the value it happened (a JSON pointer).
//!
//! The walk runs on the JS thread, may run user code (`toJSON`, getters, proxies),
//! and never leaves an exception pending: a throw becomes an error message.

use std::ptr;

use napi::bindgen_prelude::{FromNapiValue, TypeName, Unknown, ValidateNapiValue};
use napi::{Status, sys};
use serde_json::{Map, Value};

/// Nesting limit: the one every binding applies (`utp_core::host::MAX_JSON_DEPTH`).
const MAX_DEPTH: usize = utp_core::host::MAX_JSON_DEPTH;
/// Node limit: values with more nodes are refused rather than exhausting memory.
const MAX_NODES: usize = 1_000_000;

/// A JS value converted with JSON rules. Converting never fails at the napi level
/// (the outcome is in the value), so it is safe as a callback's return type.
pub enum JsJson {
    Value(Value),
    /// A top-level value with no JSON form: "undefined", "a function", "a symbol".
    Missing(&'static str),
    /// Why the value is not JSON (with a JSON pointer to the culprit).
    Invalid(String),
}

impl JsJson {
    /// The value, or a message starting with `what` (e.g. "args") saying why there is none.
    pub fn into_value(self, what: &str) -> Result<Value, String> {
        match self {
            JsJson::Value(v) => Ok(v),
            JsJson::Missing(kind) => Err(format!("{what}: {kind} is not a JSON value")),
            JsJson::Invalid(e) => Err(format!("{what}: {e}")),
        }
    }

    /// Like [`into_value`](Self::into_value), with `undefined` and `null` read as `None`.
    pub fn into_optional(self, what: &str) -> Result<Option<Value>, String> {
        match self {
            JsJson::Missing("undefined") | JsJson::Value(Value::Null) => Ok(None),
            other => other.into_value(what).map(Some),
        }
    }
}

impl TypeName for JsJson {
    fn type_name() -> &'static str {
        "JSON value"
    }

    fn value_type() -> napi::ValueType {
        napi::ValueType::Unknown
    }
}

impl ValidateNapiValue for JsJson {
    unsafe fn validate(_env: sys::napi_env, _napi_val: sys::napi_value) -> napi::Result<sys::napi_value> {
        Ok(ptr::null_mut())
    }
}

impl FromNapiValue for JsJson {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        Ok(unsafe { convert(env, value, false) })
    }
}

/// A [`JsJson`] in which NaN and ±Infinity are errors instead of `null`: for
/// options, where a NaN timeout must not silently mean "no timeout".
pub struct StrictJson(pub JsJson);

impl TypeName for StrictJson {
    fn type_name() -> &'static str {
        "JSON value"
    }

    fn value_type() -> napi::ValueType {
        napi::ValueType::Unknown
    }
}

impl ValidateNapiValue for StrictJson {
    unsafe fn validate(_env: sys::napi_env, _napi_val: sys::napi_value) -> napi::Result<sys::napi_value> {
        Ok(ptr::null_mut())
    }
}

impl FromNapiValue for StrictJson {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        Ok(StrictJson(unsafe { convert(env, value, true) }))
    }
}

unsafe fn convert(env: sys::napi_env, value: sys::napi_value, strict: bool) -> JsJson {
    {
        let mut walk = Walk { env, strict, nodes: 0, stack: Vec::new(), path: Vec::new() };
        match unsafe { walk.value(value) } {
            Ok(Some(v)) => JsJson::Value(v),
            Ok(None) => JsJson::Missing(match unsafe { walk.type_of(value) } {
                Ok(sys::ValueType::napi_function) => "a function",
                Ok(sys::ValueType::napi_symbol) => "a symbol",
                _ => "undefined",
            }),
            Err(e) if walk.path.is_empty() => JsJson::Invalid(e),
            Err(e) => JsJson::Invalid(format!("{e} (at /{})", walk.path.join("/"))),
        }
    }
}

/// The state of one conversion.
struct Walk {
    env: sys::napi_env,
    /// NaN and ±Infinity are errors (else `null`).
    strict: bool,
    nodes: usize,
    /// The objects being converted, outermost first (cycle detection, depth).
    stack: Vec<sys::napi_value>,
    /// JSON pointer tokens to the value being converted (left at the failing value).
    path: Vec<String>,
}

/// A failed napi call: the pending exception's message (cleared), else the status.
fn failure(env: sys::napi_env, status: sys::napi_status, doing: &str) -> String {
    match take_exception(env) {
        Some(message) => format!("{doing} threw: {message}"),
        None => format!("{doing} failed ({:?})", Status::from(status)),
    }
}

/// Take and clear the pending JS exception, if any, as a message.
pub fn take_exception(env: sys::napi_env) -> Option<String> {
    let mut pending = false;
    if unsafe { sys::napi_is_exception_pending(env, &mut pending) } != sys::Status::napi_ok || !pending {
        return None;
    }
    let mut exception = ptr::null_mut();
    if unsafe { sys::napi_get_and_clear_last_exception(env, &mut exception) } != sys::Status::napi_ok {
        return Some("an exception".into());
    }
    let error = napi::Error::from_unknown_without_coercion(unsafe { Unknown::from_raw_unchecked(env, exception) });
    Some(if error.reason.is_empty() { "a value that is not an Error".into() } else { error.reason.clone() })
}

macro_rules! napi_try {
    ($env:expr, $call:expr, $doing:expr) => {{
        let status = $call;
        if status != sys::Status::napi_ok {
            return Err(failure($env, status, $doing));
        }
    }};
}

impl Walk {
    unsafe fn type_of(&self, value: sys::napi_value) -> Result<sys::napi_valuetype, String> {
        let mut ty = 0;
        napi_try!(self.env, unsafe { sys::napi_typeof(self.env, value, &mut ty) }, "typeof");
        Ok(ty)
    }

    /// Convert `value` (found at `self.path`).
    unsafe fn value(&mut self, value: sys::napi_value) -> Result<Option<Value>, String> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(format!("more than {MAX_NODES} values"));
        }
        let env = self.env;
        let ty = unsafe { self.type_of(value)? };
        Ok(Some(match ty {
            sys::ValueType::napi_undefined | sys::ValueType::napi_function | sys::ValueType::napi_symbol => {
                return Ok(None);
            }
            sys::ValueType::napi_null => Value::Null,
            sys::ValueType::napi_boolean => {
                let mut b = false;
                napi_try!(env, unsafe { sys::napi_get_value_bool(env, value, &mut b) }, "reading a boolean");
                Value::Bool(b)
            }
            sys::ValueType::napi_number => {
                let mut f = 0.0;
                napi_try!(env, unsafe { sys::napi_get_value_double(env, value, &mut f) }, "reading a number");
                if self.strict && !f.is_finite() {
                    return Err(format!("{f} is not a JSON number"));
                }
                number(f)
            }
            sys::ValueType::napi_string => Value::String(unsafe { string(env, value)? }),
            sys::ValueType::napi_bigint => {
                return Err("a BigInt is not JSON: convert it to a Number or a String".into());
            }
            sys::ValueType::napi_object => return unsafe { self.object(value) },
            _ => return Err("an external (native) value is not JSON".into()),
        }))
    }

    unsafe fn object(&mut self, value: sys::napi_value) -> Result<Option<Value>, String> {
        let env = self.env;
        // toJSON first, as JSON.stringify (Date, and user classes).
        let mut to_json = ptr::null_mut();
        napi_try!(
            env,
            unsafe { sys::napi_get_named_property(env, value, c"toJSON".as_ptr(), &mut to_json) },
            "reading toJSON"
        );
        if unsafe { self.type_of(to_json)? } == sys::ValueType::napi_function {
            let mut arg = ptr::null_mut();
            // toJSON(key): the property name or index, "" at the top.
            let key = self.path.last().map_or_else(String::new, |t| t.replace("~1", "/").replace("~0", "~"));
            napi_try!(
                env,
                unsafe { sys::napi_create_string_utf8(env, key.as_ptr().cast(), key.len() as isize, &mut arg,) },
                "creating a string"
            );
            let mut replaced = ptr::null_mut();
            napi_try!(env, unsafe { sys::napi_call_function(env, value, to_json, 1, &arg, &mut replaced) }, "toJSON()");
            // The replacement is converted as a value of its own, except that its
            // own toJSON is not called again (JSON.stringify calls toJSON once).
            let ty = unsafe { self.type_of(replaced)? };
            if ty != sys::ValueType::napi_object {
                return unsafe { self.value(replaced) };
            }
            return unsafe { self.plain_object(replaced) };
        }
        unsafe { self.plain_object(value) }
    }

    unsafe fn plain_object(&mut self, value: sys::napi_value) -> Result<Option<Value>, String> {
        let env = self.env;
        for seen in &self.stack {
            let mut same = false;
            napi_try!(env, unsafe { sys::napi_strict_equals(env, *seen, value, &mut same) }, "comparing objects");
            if same {
                return Err("a cycle (the value contains itself) is not JSON".into());
            }
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(utp_core::host::too_deep());
        }
        self.stack.push(value);
        let result = unsafe { self.members(value) };
        self.stack.pop();
        result.map(Some)
    }

    unsafe fn members(&mut self, value: sys::napi_value) -> Result<Value, String> {
        let env = self.env;
        let mut is_array = false;
        napi_try!(env, unsafe { sys::napi_is_array(env, value, &mut is_array) }, "checking for an array");
        if is_array {
            let mut len = 0u32;
            napi_try!(env, unsafe { sys::napi_get_array_length(env, value, &mut len) }, "reading an array length");
            let mut items = Vec::with_capacity(len.min(4096) as usize);
            for i in 0..len {
                let mut item = ptr::null_mut();
                napi_try!(env, unsafe { sys::napi_get_element(env, value, i, &mut item) }, "reading an element");
                self.path.push(i.to_string());
                let converted = unsafe { self.value(item)? };
                self.path.pop();
                items.push(converted.unwrap_or(Value::Null));
            }
            return Ok(Value::Array(items));
        }
        let mut names = ptr::null_mut();
        napi_try!(
            env,
            unsafe {
                sys::napi_get_all_property_names(
                    env,
                    value,
                    sys::KeyCollectionMode::own_only,
                    sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
                    sys::KeyConversion::numbers_to_strings,
                    &mut names,
                )
            },
            "listing properties"
        );
        let mut len = 0u32;
        napi_try!(env, unsafe { sys::napi_get_array_length(env, names, &mut len) }, "listing properties");
        let mut map = Map::new();
        for i in 0..len {
            let mut name = ptr::null_mut();
            napi_try!(env, unsafe { sys::napi_get_element(env, names, i, &mut name) }, "listing properties");
            let name_str = unsafe { string(env, name)? };
            let mut item = ptr::null_mut();
            self.path.push(pointer_token(&name_str));
            napi_try!(env, unsafe { sys::napi_get_property(env, value, name, &mut item) }, "reading a property");
            let converted = unsafe { self.value(item)? };
            self.path.pop();
            if let Some(v) = converted {
                map.insert(name_str, v);
            }
        }
        Ok(Value::Object(map))
    }
}

/// A JS number as JSON (`utp_core::host::number_value`): `5` stays `5`, not `5.0`;
/// NaN and ±Infinity become null (as JSON.stringify).
fn number(f: f64) -> Value {
    utp_core::host::number_value(f).unwrap_or(Value::Null)
}

unsafe fn string(env: sys::napi_env, value: sys::napi_value) -> Result<String, String> {
    let mut len = 0usize;
    napi_try!(
        env,
        unsafe { sys::napi_get_value_string_utf8(env, value, ptr::null_mut(), 0, &mut len) },
        "reading a string"
    );
    let mut buf = vec![0u8; len + 1];
    let mut written = 0usize;
    napi_try!(
        env,
        unsafe { sys::napi_get_value_string_utf8(env, value, buf.as_mut_ptr().cast(), buf.len(), &mut written,) },
        "reading a string"
    );
    buf.truncate(written);
    // V8 writes lone surrogates as U+FFFD, so this is valid UTF-8; stay safe anyway.
    Ok(String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// A property name as a JSON pointer token (RFC 6901).
fn pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}
