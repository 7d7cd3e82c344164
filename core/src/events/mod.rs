//! Events (docs/design.md §8): typed events, the bus with glob subscriptions and bounded
//! per-subscriber queues, the bounded in-memory history, and metrics.
//!
//! Publishing never blocks and never fails: the event gets its id, goes into the
//! history ring and is offered to each matching subscriber's queue; a full queue
//! drops it for that subscriber and counts the drop. Each subscriber is served by
//! its own thread, so no tokio runtime is needed and a slow or panicking handler
//! only hurts itself.
//!
//! Metrics observe the event stream: `policy.denied` and `ratelimit.limited`
//! events count as denials and rate-limited calls (per `tool`), so the domain
//! layer only publishes. Calls are recorded by the engine with their duration.
//!
//! Secrets never belong in events: arguments, resolved templates and auth values
//! are never put in `data`; only names, codes, durations and our own messages.

mod bus;
mod glob;
mod history;
mod metrics;

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::error::{Error, Result};

pub use bus::{EventBus, EventHandler, EventSink, SubscriptionId, SubscriptionInfo};
pub use glob::Pattern;
pub use history::HistoryFilter;
pub use metrics::{LATENCY_BUCKETS, Metrics};

/// Check an event-type pattern named `option` ("event pattern" for a subscription,
/// "type" for a filter): it must match at least one event type, so a typo
/// (`tool.sucess`) is an error instead of a subscription or filter that never matches.
/// The bindings reach it as `utp_core::host::event_pattern`.
pub fn check_pattern(pattern: &str, option: &str) -> Result<Pattern> {
    if pattern.trim().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{option} is empty: use \"*\" for every event, or e.g. \"tool.*\", \"policy.denied\""
        )));
    }
    let compiled = Pattern::new(pattern);
    if kinds::ALL.iter().any(|k| compiled.matches(k)) {
        return Ok(compiled);
    }
    Err(Error::InvalidArgument(format!(
        "{option} '{}' matches no event type; the types are: {}",
        compiled.as_str(),
        kinds::ALL.join(", ")
    )))
}

/// The event type names of docs/design.md §8.
pub mod kinds {
    pub const WORKFLOW_STARTED: &str = "workflow.started";
    pub const WORKFLOW_PLANNED: &str = "workflow.planned";
    pub const STEP_STARTED: &str = "step.started";
    pub const STEP_COMPLETED: &str = "step.completed";
    pub const STEP_FAILED: &str = "step.failed";
    pub const STEP_RETRYING: &str = "step.retrying";
    pub const STEP_SKIPPED: &str = "step.skipped";
    pub const WORKFLOW_COMPLETED: &str = "workflow.completed";
    pub const WORKFLOW_ERROR: &str = "workflow.error";
    pub const WORKFLOW_CANCELLED: &str = "workflow.cancelled";
    pub const WORKFLOW_SUSPENDED: &str = "workflow.suspended";
    pub const WORKFLOW_RESUMED: &str = "workflow.resumed";
    pub const TOOL_CALLED: &str = "tool.called";
    pub const TOOL_SUCCEEDED: &str = "tool.succeeded";
    pub const TOOL_FAILED: &str = "tool.failed";
    /// A progress notification of a running call (MCP `notifications/progress`).
    pub const TOOL_PROGRESS: &str = "tool.progress";
    /// A tool server restarted or reconnected.
    pub const TOOL_TRANSPORT: &str = "tool.transport";
    pub const POLICY_DENIED: &str = "policy.denied";
    pub const APPROVAL_REQUESTED: &str = "approval.requested";
    pub const APPROVAL_RESOLVED: &str = "approval.resolved";
    pub const RATELIMIT_LIMITED: &str = "ratelimit.limited";
    pub const BREAKER_OPENED: &str = "breaker.opened";
    pub const BREAKER_CLOSED: &str = "breaker.closed";
    pub const MANUAL_REGISTERED: &str = "manual.registered";
    pub const MANUAL_DEREGISTERED: &str = "manual.deregistered";

    /// Every type, in the order of docs/design.md §8.
    pub const ALL: [&str; 25] = [
        WORKFLOW_STARTED,
        WORKFLOW_PLANNED,
        STEP_STARTED,
        STEP_COMPLETED,
        STEP_FAILED,
        STEP_RETRYING,
        STEP_SKIPPED,
        WORKFLOW_COMPLETED,
        WORKFLOW_ERROR,
        WORKFLOW_CANCELLED,
        WORKFLOW_SUSPENDED,
        WORKFLOW_RESUMED,
        TOOL_CALLED,
        TOOL_SUCCEEDED,
        TOOL_FAILED,
        TOOL_PROGRESS,
        TOOL_TRANSPORT,
        POLICY_DENIED,
        APPROVAL_REQUESTED,
        APPROVAL_RESOLVED,
        RATELIMIT_LIMITED,
        BREAKER_OPENED,
        BREAKER_CLOSED,
        MANUAL_REGISTERED,
        MANUAL_DEREGISTERED,
    ];
}

/// One event. Build with [`Event::new`] and the chained setters; the bus assigns
/// `id` (monotonic per engine, from 1) when it is published.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: u64,
    /// The event type (`tool.called`, ...); serialised as `type`.
    pub kind: Cow<'static, str>,
    pub time: SystemTime,
    pub execution_id: Option<String>,
    pub session_id: Option<String>,
    pub tenant: Option<String>,
    pub workflow: Option<String>,
    pub step_id: Option<String>,
    pub tool: Option<String>,
    pub data: Value,
}

impl Event {
    /// A new event of type `kind`, stamped now, with `data` `{}`.
    pub fn new(kind: impl Into<Cow<'static, str>>) -> Event {
        Event {
            id: 0,
            kind: kind.into(),
            time: SystemTime::now(),
            execution_id: None,
            session_id: None,
            tenant: None,
            workflow: None,
            step_id: None,
            tool: None,
            data: Value::Object(Default::default()),
        }
    }

    pub fn tool(mut self, tool: impl Into<String>) -> Event {
        self.tool = Some(tool.into());
        self
    }
    pub fn tenant(mut self, tenant: impl Into<String>) -> Event {
        self.tenant = Some(tenant.into());
        self
    }
    pub fn session(mut self, session: impl Into<String>) -> Event {
        self.session_id = Some(session.into());
        self
    }
    pub fn execution(mut self, execution_id: impl Into<String>) -> Event {
        self.execution_id = Some(execution_id.into());
        self
    }
    pub fn workflow(mut self, workflow: impl Into<String>) -> Event {
        self.workflow = Some(workflow.into());
        self
    }
    pub fn step(mut self, step_id: impl Into<String>) -> Event {
        self.step_id = Some(step_id.into());
        self
    }
    pub fn data(mut self, data: Value) -> Event {
        self.data = data;
        self
    }
    /// Set `tenant` and `session_id` from optional values (as call options carry them).
    pub fn context(mut self, tenant: Option<&str>, session: Option<&str>) -> Event {
        self.tenant = tenant.map(str::to_string);
        self.session_id = session.map(str::to_string);
        self
    }

    /// The type name.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The event as docs/design.md §8 JSON: `{id, type, time, execution_id?, session_id?,
    /// tenant?, workflow?, step_id?, tool?, data}`; absent fields are left out.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("type", &*self.kind)?;
        map.serialize_entry("time", &rfc3339(self.time))?;
        for (key, value) in [
            ("execution_id", &self.execution_id),
            ("session_id", &self.session_id),
            ("tenant", &self.tenant),
            ("workflow", &self.workflow),
            ("step_id", &self.step_id),
            ("tool", &self.tool),
        ] {
            if let Some(v) = value {
                map.serialize_entry(key, v)?;
            }
        }
        map.serialize_entry("data", &self.data)?;
        map.end()
    }
}

/// RFC 3339 UTC, millisecond precision. Times before 1970 print as the epoch.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Config section `events: {history_size, queue_capacity}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsConfig {
    /// Events kept in memory for `history()` (0 keeps none). Default 10,000.
    pub history_size: usize,
    /// Default bound of each subscriber's queue. Default 1024.
    pub queue_capacity: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { history_size: 10_000, queue_capacity: 1024 }
    }
}

impl EventsConfig {
    /// Read the raw `events` section (absent or `null` → defaults). Unknown keys
    /// and non-integer values are `INVALID_ARGUMENT`.
    pub fn from_value(section: Option<&Value>) -> Result<EventsConfig> {
        let mut config = EventsConfig::default();
        let map = match section {
            None | Some(Value::Null) => return Ok(config),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "invalid config: `events` must be a mapping with history_size and queue_capacity, found {}",
                    crate::json::json_kind(other)
                )));
            }
        };
        for (key, value) in map {
            let n = value.as_u64().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "invalid config: `events.{key}` must be a non-negative integer, found {value}"
                ))
            })?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            match key.as_str() {
                "history_size" => config.history_size = n,
                "queue_capacity" if n == 0 => {
                    return Err(Error::InvalidArgument(
                        "invalid config: `events.queue_capacity` must be at least 1".into(),
                    ));
                }
                "queue_capacity" => config.queue_capacity = n,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "invalid config: unknown key `events.{other}` (expected history_size, queue_capacity)"
                    )));
                }
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_825_600_123); // 2000-02-29 12:00:00.123
        assert_eq!(rfc3339(t), "2000-02-29T12:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // 2024-12-31 23:59:59
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn json_shape() {
        let mut e = Event::new(kinds::POLICY_DENIED).tool("bet.placeBet").tenant("acme").data(json!({"rule": "max"}));
        e.id = 7;
        e.time = UNIX_EPOCH;
        assert_eq!(
            e.to_value(),
            json!({"id": 7, "type": "policy.denied", "time": "1970-01-01T00:00:00.000Z",
                   "tenant": "acme", "tool": "bet.placeBet", "data": {"rule": "max"}})
        );
        let keys: Vec<String> = e.to_value().as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["id", "type", "time", "tenant", "tool", "data"]);
        let full = Event::new("step.started").execution("x1").session("s").workflow("w").step("a").to_value();
        for k in ["execution_id", "session_id", "workflow", "step_id"] {
            assert!(full.get(k).is_some(), "{k}");
        }
        assert_eq!(full["data"], json!({}));
    }

    #[test]
    fn config_section() {
        assert_eq!(EventsConfig::from_value(None).unwrap(), EventsConfig::default());
        let c = EventsConfig::from_value(Some(&json!({"history_size": 5, "queue_capacity": 2}))).unwrap();
        assert_eq!((c.history_size, c.queue_capacity), (5, 2));
        for bad in [json!({"history_size": -1}), json!({"queue_capacity": 0}), json!({"x": 1}), json!([1])] {
            let e = EventsConfig::from_value(Some(&bad)).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::InvalidArgument, "{bad}");
        }
    }
}
