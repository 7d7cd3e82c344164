//! Host options: the options the bindings (C, Python, Node) take from their users,
//! parsed and checked here once, from JSON, with one set of limits and messages.
//!
//! Each binding keeps only the conversion between its own values and JSON (C parses
//! `options_json` with [`parse_json`], Python puts its keyword arguments in a map,
//! Node converts its options object) and hands the result to a function here:
//! [`call_options`], [`run_options`], [`plan_options`], [`history_filter`],
//! [`event_filter`], [`event_pattern`] (subscriptions) and [`store_override`].
//! So the same bad option gives the same `INVALID_ARGUMENT` message everywhere
//! (`tests/scenarios/host_options.json` holds the cases every binding is tested on).
//!
//! Keys are spelled the way the host language spells them ([`KeyStyle`]):
//! `approval_id` in C and Python, `approvalId` in Node; one-word keys (`timeout`,
//! `session`, `type`...) are the same in all three, and so are their messages.
//! Messages name the option, say what was expected and what was found; the
//! `what` a binding passes is its own name for the function (`callTool`,
//! `utp_call_tool`) and appears only where the whole options value is wrong.
//!
//! The limits (docs/architecture.md, "Host options"):
//! - [`MAX_JSON_DEPTH`] nested arrays / objects in any value a host hands over;
//! - ids (`session`, `tenant`, `user`): non-empty, at most [`MAX_ID_BYTES`] bytes,
//!   no control characters;
//! - timeouts: seconds, finite, `>= 0`, at most [`MAX_TIMEOUT_SECONDS`];
//! - event-type patterns must match at least one event type.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Number, Value};

use crate::config::Config;
use crate::engine::CallOptions;
use crate::error::{Error, Result};
use crate::events::{HistoryFilter, Pattern};
use crate::json::json_kind;
use crate::planner::PlanOptions;
use crate::store::EventFilter;
use crate::workflow::RunOptions;

/// Deepest nesting of arrays and objects accepted in a value a host hands over
/// (arguments, inputs, manuals, options): deeper than any real manual or schema, and
/// below serde_json's own recursion limit (128), so JSON text is refused by
/// [`parse_json`] with this message before serde_json would refuse it with its own.
pub const MAX_JSON_DEPTH: usize = 100;

/// Longest session, tenant or user id, in UTF-8 bytes (they key stores and metrics).
pub const MAX_ID_BYTES: usize = 256;

/// Longest timeout: 365 days. More is a unit mistake (milliseconds given as seconds),
/// and deadlines that far out overflow some clocks.
pub const MAX_TIMEOUT_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// How the host language spells multi-word option keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// `approval_id`, `execution_id` (C, Python).
    Snake,
    /// `approvalId`, `executionId` (Node).
    Camel,
}

impl KeyStyle {
    /// `snake` (a snake_case key) as this style spells it; borrowed when it is the
    /// same word (every key in snake style, one-word keys in camel style).
    pub fn spell(self, snake: &str) -> Cow<'_, str> {
        match self {
            KeyStyle::Camel if snake.contains('_') => {
                let mut out = String::with_capacity(snake.len());
                let mut upper = false;
                for c in snake.chars() {
                    if c == '_' {
                        upper = true;
                    } else if upper {
                        out.extend(c.to_uppercase());
                        upper = false;
                    } else {
                        out.push(c);
                    }
                }
                Cow::Owned(out)
            }
            _ => Cow::Borrowed(snake),
        }
    }

    /// Whether `key` is how this style spells `snake` (no allocation: every call checks it).
    fn is_spelling(self, snake: &str, key: &str) -> bool {
        match self {
            KeyStyle::Snake => snake == key,
            KeyStyle::Camel => {
                let mut key = key.chars();
                let mut upper = false;
                for c in snake.chars() {
                    if c == '_' {
                        upper = true;
                        continue;
                    }
                    let expected = if upper { c.to_ascii_uppercase() } else { c };
                    upper = false;
                    if key.next() != Some(expected) {
                        return false;
                    }
                }
                key.next().is_none()
            }
        }
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

/// The message for a value nested deeper than [`MAX_JSON_DEPTH`] (each binding's
/// conversion adds where).
pub fn too_deep() -> String {
    format!("nested deeper than {MAX_JSON_DEPTH} levels")
}

/// A host number as JSON, as `JSON.stringify` writes it: whole numbers in the safe
/// integer range as integers (`-1`, not `-1.0`), others as floats; `None` for NaN
/// and ±Infinity, which JSON cannot hold (see [`seconds_from_f64`] for timeouts).
pub fn number_value(f: f64) -> Option<Value> {
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    if f.fract() == 0.0 && (-MAX_SAFE..=MAX_SAFE).contains(&f) {
        // Exact: |f| <= 2^53 - 1 and whole. -0 becomes 0, as in JSON.stringify.
        return Some(Value::Number(Number::from(f as i64)));
    }
    Number::from_f64(f).map(Value::Number)
}

/// How deeply `value` nests arrays and objects (a scalar is 0), counted up to
/// `MAX_JSON_DEPTH + 1` (deeper is not walked).
fn depth(value: &Value) -> usize {
    fn walk(value: &Value, level: usize) -> usize {
        if level > MAX_JSON_DEPTH {
            return level;
        }
        match value {
            Value::Array(items) => items.iter().map(|v| walk(v, level + 1)).max().unwrap_or(level + 1),
            Value::Object(map) => map.values().map(|v| walk(v, level + 1)).max().unwrap_or(level + 1),
            _ => level,
        }
    }
    walk(value, 0)
}

/// Check that `value` nests at most [`MAX_JSON_DEPTH`] levels; `what` names it.
pub fn check_depth(value: &Value, what: &str) -> Result<()> {
    if depth(value) > MAX_JSON_DEPTH {
        return Err(invalid(format!("{what}: {}", too_deep())));
    }
    Ok(())
}

/// Parse JSON text a host handed over (`what` names it: "options_json"): depth
/// first, so deep text gets the [`too_deep`] message, never a stack overflow or
/// serde_json's own limit. Empty text is `null`.
pub fn parse_json(text: &str, what: &str) -> Result<Value> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    let (mut level, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                level += 1;
                if level > MAX_JSON_DEPTH {
                    return Err(invalid(format!("{what}: {}", too_deep())));
                }
            }
            b']' | b'}' => level = level.saturating_sub(1),
            _ => {}
        }
    }
    serde_json::from_str(text).map_err(|e| invalid(format!("{what} is not valid JSON: {e}")))
}

/// The options object of one function: its keys checked against `known` (snake_case),
/// read back as the host spells them.
struct Options<'a> {
    map: &'a Map<String, Value>,
    style: KeyStyle,
}

/// The empty map, for absent options.
static NO_OPTIONS: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Options<'a> {
    /// `options` must be an object or null (no options); `what` is the host's name
    /// of the function. Unknown keys are errors, so a typo is not silently ignored.
    fn new(options: &'a Value, what: &str, style: KeyStyle, known: &[&str]) -> Result<Options<'a>> {
        let map = match options {
            Value::Null => &*NO_OPTIONS,
            Value::Object(map) => map,
            other => return Err(invalid(format!("{what} options must be an object, found {}", json_kind(other)))),
        };
        // Checked without allocating: this runs on every call a host makes.
        if let Some(key) = map.keys().find(|k| !known.iter().any(|known| style.is_spelling(known, k))) {
            let spelled: Vec<Cow<'_, str>> = known.iter().map(|k| style.spell(k)).collect();
            return Err(invalid(format!("unknown {what} option '{key}' (expected one of: {})", spelled.join(", "))));
        }
        if depth(options) > MAX_JSON_DEPTH {
            return Err(invalid(format!("{what} options: {}", too_deep())));
        }
        Ok(Options { map, style })
    }

    /// The key as the host spells it, and its value unless absent or null.
    fn get<'k>(&self, key: &'k str) -> (Cow<'k, str>, Option<&'a Value>) {
        if self.map.is_empty() {
            return (Cow::Borrowed(key), None);
        }
        let name = self.style.spell(key);
        let value = self.map.get(name.as_ref()).filter(|v| !v.is_null());
        (name, value)
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            (_, None) => Ok(None),
            (_, Some(Value::String(s))) => Ok(Some(s.clone())),
            (name, Some(other)) => Err(invalid(format!("{name} must be a string, found {}", json_kind(other)))),
        }
    }

    /// A session, tenant or user id ([`check_id`]).
    fn id(&self, key: &str) -> Result<Option<String>> {
        let id = self.string(key)?;
        if let Some(id) = &id {
            check_id(&self.style.spell(key), id)?;
        }
        Ok(id)
    }

    fn seconds(&self, key: &str) -> Result<Option<Duration>> {
        match self.get(key) {
            (_, None) => Ok(None),
            (name, Some(Value::Number(n))) => seconds_from_f64(&name, n.as_f64().unwrap_or(f64::NAN), n).map(Some),
            (name, Some(other)) => Err(invalid(format!(
                "{name} must be a finite non-negative number of seconds, found {}",
                json_kind(other)
            ))),
        }
    }

    /// A non-negative integer; whole numbers beyond `u64` saturate ("no practical limit").
    fn count(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            (_, None) => Ok(None),
            (name, Some(Value::Number(n))) => match (n.as_u64(), n.as_f64()) {
                (Some(u), _) => Ok(Some(u)),
                (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 => Ok(Some(u64::MAX)),
                _ => Err(invalid(format!("{name} must be a non-negative integer, found {n}"))),
            },
            (name, Some(other)) => {
                Err(invalid(format!("{name} must be a non-negative integer, found {}", json_kind(other))))
            }
        }
    }

    fn limit(&self, key: &str) -> Result<Option<usize>> {
        Ok(self.count(key)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            (_, None) => Ok(None),
            (_, Some(Value::Bool(b))) => Ok(Some(*b)),
            (name, Some(other)) => Err(invalid(format!("{name} must be a boolean, found {}", json_kind(other)))),
        }
    }

    fn object(&self, key: &str) -> Result<Option<Value>> {
        match self.get(key) {
            (_, None) => Ok(None),
            (_, Some(v @ Value::Object(_))) => Ok(Some(v.clone())),
            (name, Some(other)) => Err(invalid(format!("{name} must be an object, found {}", json_kind(other)))),
        }
    }

    /// An event-type pattern ([`event_pattern`]).
    fn pattern(&self, key: &str) -> Result<Option<String>> {
        let pattern = self.string(key)?;
        if let Some(pattern) = &pattern {
            event_pattern(pattern, &self.style.spell(key))?;
        }
        Ok(pattern)
    }
}

/// Check a session, tenant or user id named `option`: non-empty (not only blanks),
/// at most [`MAX_ID_BYTES`] bytes, no control characters.
pub fn check_id(option: &str, id: &str) -> Result<()> {
    if id.trim().is_empty() {
        let found = if id.is_empty() { "an empty string" } else { "only whitespace" };
        return Err(invalid(format!("{option} must be a non-empty string, found {found}")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(invalid(format!("{option} must be at most {MAX_ID_BYTES} bytes long, found {} bytes", id.len())));
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(invalid(format!(
            "{option} must not contain control characters, found U+{:04X} at byte {at}",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Seconds (a timeout named `option`) as a duration: finite, `>= 0`, at most
/// [`MAX_TIMEOUT_SECONDS`]. `shown` is how the host wrote the number.
pub fn seconds_from_f64(option: &str, seconds: f64, shown: impl std::fmt::Display) -> Result<Duration> {
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(invalid(format!("{option} must be a finite non-negative number of seconds, found {shown}")));
    }
    if seconds > MAX_TIMEOUT_SECONDS {
        return Err(invalid(format!(
            "{option} must be at most {MAX_TIMEOUT_SECONDS} seconds (365 days), found {shown}"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Seconds a host gave as a float (a timeout named `option`): as [`seconds_from_f64`],
/// the number shown as JSON writes it (`-1`, `1e300`, `NaN`).
pub fn seconds(option: &str, seconds: f64) -> Result<Duration> {
    match number_value(seconds) {
        Some(shown) => seconds_from_f64(option, seconds, shown),
        None => seconds_from_f64(option, seconds, seconds),
    }
}

/// Check an event-type pattern named `option` ("event pattern" for a subscription,
/// "type" for a filter): it must match at least one event type (the event bus checks
/// subscriptions the same way).
pub fn event_pattern(pattern: &str, option: &str) -> Result<Pattern> {
    crate::events::check_pattern(pattern, option)
}

/// The options of a tool call: `timeout` (seconds), `tenant`, `session`, `user`,
/// `approval_id`, `fail_fast_on_approval`.
pub fn call_options(options: &Value, what: &str, style: KeyStyle) -> Result<CallOptions> {
    const KEYS: [&str; 6] = ["timeout", "tenant", "session", "user", "approval_id", "fail_fast_on_approval"];
    let o = Options::new(options, what, style, &KEYS)?;
    Ok(CallOptions {
        timeout: o.seconds("timeout")?,
        tenant: o.id("tenant")?,
        session: o.id("session")?,
        user: o.id("user")?,
        approval_id: o.string("approval_id")?,
        fail_fast_on_approval: o.boolean("fail_fast_on_approval")?.unwrap_or(false),
        cancel: None,
        trace: None,
    })
}

/// The options of a workflow run (and of planning then running): `session`,
/// `tenant`, `user`, `timeout` (seconds, for the whole run).
pub fn run_options(options: &Value, what: &str, style: KeyStyle) -> Result<RunOptions> {
    let o = Options::new(options, what, style, &["session", "tenant", "user", "timeout"])?;
    Ok(RunOptions {
        tenant: o.id("tenant")?,
        session: o.id("session")?,
        user: o.id("user")?,
        timeout: o.seconds("timeout")?,
        cancel: None,
    })
}

/// The options of planning: `session`, `tenant`, `inputs` (an object).
pub fn plan_options(options: &Value, what: &str, style: KeyStyle) -> Result<PlanOptions> {
    let o = Options::new(options, what, style, &["session", "tenant", "inputs"])?;
    Ok(PlanOptions { tenant: o.id("tenant")?, session: o.id("session")?, inputs: o.object("inputs")?, client: None })
}

/// The filter of the in-memory event history: `limit`, `type` (a pattern),
/// `execution_id`, `tool`, `tenant`, `since` (an event id).
pub fn history_filter(options: &Value, what: &str, style: KeyStyle) -> Result<HistoryFilter> {
    let o = Options::new(options, what, style, &["limit", "type", "execution_id", "tool", "tenant", "since"])?;
    Ok(HistoryFilter {
        limit: o.limit("limit")?,
        kind: o.pattern("type")?,
        execution_id: o.string("execution_id")?,
        tool: o.string("tool")?,
        tenant: o.string("tenant")?,
        since: o.count("since")?,
    })
}

/// The filter of the store's audit log: `execution_id`, `type` (a pattern), `after`
/// (a store sequence number), `limit`, `since` / `until` (RFC 3339 times).
pub fn event_filter(options: &Value, what: &str, style: KeyStyle) -> Result<EventFilter> {
    let o = Options::new(options, what, style, &["execution_id", "type", "after", "limit", "since", "until"])?;
    Ok(EventFilter {
        execution_id: o.string("execution_id")?,
        kind: o.pattern("type")?,
        after_id: o.count("after")?,
        since: o.string("since")?,
        until: o.string("until")?,
        limit: o.limit("limit")?,
    })
}

/// The store a host names when it creates an engine, over the config's `store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOverride {
    /// `"memory"`: keep the config's store (memory unless the config names one).
    Memory,
    /// `"sqlite:PATH"`: this SQLite file (a relative PATH is relative to the working
    /// directory, not to the config file's folder).
    Sqlite(PathBuf),
}

/// Read a store override: `"memory"` or `"sqlite:PATH"` (`null`: memory).
pub fn store_override(store: &Value) -> Result<StoreOverride> {
    let store = match store {
        Value::Null => return Ok(StoreOverride::Memory),
        Value::String(s) => s.trim(),
        other => return Err(invalid(format!("store must be a string, found {}", json_kind(other)))),
    };
    if store == "memory" {
        return Ok(StoreOverride::Memory);
    }
    let Some(path) = store.strip_prefix("sqlite:") else {
        return Err(invalid(format!("unknown store '{store}': expected \"memory\" or \"sqlite:PATH\"")));
    };
    if path.trim().is_empty() {
        return Err(invalid("store 'sqlite:' needs a database path after 'sqlite:' (e.g. \"sqlite:utp.db\")"));
    }
    Ok(StoreOverride::Sqlite(PathBuf::from(path)))
}

/// The options of creating an engine: `store` ([`store_override`]).
pub fn engine_options(options: &Value, what: &str, style: KeyStyle) -> Result<StoreOverride> {
    let o = Options::new(options, what, style, &["store"])?;
    store_override(o.get("store").1.unwrap_or(&Value::Null))
}

impl StoreOverride {
    /// Put the override in `config`: a SQLite path replaces the config's store url and
    /// keeps the rest of its `store` mapping (durability, retention, recover).
    pub fn apply(&self, config: &mut Config) -> Result<()> {
        let StoreOverride::Sqlite(path) = self else { return Ok(()) };
        let mut path = path.clone();
        if path.is_relative() {
            let cwd = std::env::current_dir().map_err(|e| {
                invalid(format!("store 'sqlite:{}': cannot resolve the relative path: {e}", path.display()))
            })?;
            path = cwd.join(path);
        }
        let url = Value::String(format!("sqlite:{}", path.to_string_lossy()));
        match config.other.get_mut("store") {
            Some(Value::Object(section)) => {
                section.remove("path");
                section.insert("url".into(), url);
            }
            _ => {
                config.other.insert("store".into(), url);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!([inner]))
    }

    #[test]
    fn keys_are_spelled_per_host() {
        assert_eq!(KeyStyle::Camel.spell("fail_fast_on_approval"), "failFastOnApproval");
        assert_eq!(KeyStyle::Camel.spell("timeout"), "timeout");
        assert_eq!(KeyStyle::Snake.spell("approval_id"), "approval_id");
        for (style, key, yes) in [
            (KeyStyle::Camel, "failFastOnApproval", true),
            (KeyStyle::Camel, "fail_fast_on_approval", false),
            (KeyStyle::Camel, "failFastOnApprova", false),
            (KeyStyle::Camel, "failFastOnApprovalX", false),
            (KeyStyle::Snake, "fail_fast_on_approval", true),
            (KeyStyle::Snake, "failFastOnApproval", false),
        ] {
            assert_eq!(style.is_spelling("fail_fast_on_approval", key), yes, "{style:?} {key}");
        }
        let o =
            call_options(&json!({"approvalId": "a", "failFastOnApproval": true}), "callTool", KeyStyle::Camel).unwrap();
        assert_eq!((o.approval_id.as_deref(), o.fail_fast_on_approval), (Some("a"), true));
        let e = call_options(&json!({"approval_id": "a"}), "callTool", KeyStyle::Camel).unwrap_err();
        assert!(e.to_string().starts_with("unknown callTool option 'approval_id'"), "{e}");
    }

    #[test]
    fn depth_is_counted_in_containers_the_same_for_values_and_text() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({"a": []})), 2);
        assert!(check_depth(&nested(MAX_JSON_DEPTH), "v").is_ok());
        assert!(check_depth(&nested(MAX_JSON_DEPTH + 1), "v").is_err());
        let text = |levels| serde_json::to_string(&nested(levels)).unwrap();
        assert!(parse_json(&text(MAX_JSON_DEPTH), "t").is_ok());
        let e = parse_json(&text(MAX_JSON_DEPTH + 1), "t").unwrap_err();
        assert_eq!(e.to_string(), format!("t: {}", too_deep()));
        // Brackets inside strings do not count; 100k of them do not overflow anything.
        assert!(parse_json(&format!("{{\"a\": \"{}\\\"[\"}}", "[".repeat(100_000)), "t").is_ok());
        assert!(parse_json(&"[".repeat(100_000), "t").is_err());
    }

    #[test]
    fn numbers_read_as_the_host_wrote_them() {
        assert_eq!(number_value(-1.0), Some(json!(-1)));
        assert_eq!(number_value(1.5), Some(json!(1.5)));
        assert_eq!(number_value(f64::NAN), None);
        let e = seconds_from_f64("timeout", f64::INFINITY, f64::INFINITY).unwrap_err();
        assert_eq!(e.to_string(), "timeout must be a finite non-negative number of seconds, found inf");
    }

    #[test]
    fn store_override_applies_to_the_config() {
        let mut config = Config::default();
        store_override(&json!("sqlite:/tmp/x.db")).unwrap().apply(&mut config).unwrap();
        assert_eq!(config.other.get("store"), Some(&json!("sqlite:/tmp/x.db")));
        assert_eq!(store_override(&json!(" memory ")).unwrap(), StoreOverride::Memory);
    }
}
