//! Counters and latency histograms, exported as a JSON snapshot and as
//! Prometheus text (hand-written: a few atomics per tool, no registry crate).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::RwLock;
use serde_json::{Map, Value, json};

use crate::error::ErrorCode;

/// Upper bounds (seconds) of the call-latency histogram: Prometheus' default
/// buckets, extended down to 0.5 ms for native tools and up to 60 s for slow ones.
pub const LATENCY_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

const CODES: usize = ErrorCode::ALL.len();

#[derive(Default)]
struct ToolStats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    errors: [AtomicU64; CODES],
    /// Non-cumulative bucket counts; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    denied: AtomicU64,
    rate_limited: AtomicU64,
}

/// The engine's metrics. Cheap to update from any thread.
#[derive(Default)]
pub struct Metrics {
    tools: RwLock<HashMap<Box<str>, Arc<ToolStats>>>,
    pub(crate) published: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) subscriber_errors: AtomicU64,
}

/// Per-subscription counters the bus passes in when exporting.
pub(crate) struct SubscriberCounts {
    pub id: u64,
    pub pattern: String,
    pub delivered: u64,
    pub dropped: u64,
    pub errors: u64,
    pub queued: usize,
}

impl Metrics {
    fn stats(&self, tool: &str) -> Arc<ToolStats> {
        if let Some(s) = self.tools.read().get(tool) {
            return s.clone();
        }
        self.tools.write().entry(tool.into()).or_default().clone()
    }

    /// Record one finished call of `tool`: its duration and, when it failed, the code.
    pub fn record_call(&self, tool: &str, duration: Duration, error: Option<ErrorCode>) {
        let s = self.stats(tool);
        match error {
            None => s.succeeded.fetch_add(1, Relaxed),
            Some(code) => {
                if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
                    s.errors[i].fetch_add(1, Relaxed);
                }
                s.failed.fetch_add(1, Relaxed)
            }
        };
        let secs = duration.as_secs_f64();
        let bucket = LATENCY_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BUCKETS.len());
        s.buckets[bucket].fetch_add(1, Relaxed);
        s.sum_nanos.fetch_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A call denied by policy (from `policy.denied` events).
    pub fn record_denied(&self, tool: &str) {
        self.stats(tool).denied.fetch_add(1, Relaxed);
    }

    /// A call refused by a rate limit (from `ratelimit.limited` events).
    pub fn record_rate_limited(&self, tool: &str) {
        self.stats(tool).rate_limited.fetch_add(1, Relaxed);
    }

    fn sorted_tools(&self) -> Vec<(String, Arc<ToolStats>)> {
        let mut v: Vec<_> = self.tools.read().iter().map(|(k, s)| (k.to_string(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub(crate) fn snapshot(&self, subs: &[SubscriberCounts]) -> Value {
        let mut tools = Map::new();
        for (name, s) in self.sorted_tools() {
            let mut errors = Map::new();
            for (i, code) in ErrorCode::ALL.iter().enumerate() {
                let n = s.errors[i].load(Relaxed);
                if n > 0 {
                    errors.insert(code.as_str().into(), n.into());
                }
            }
            let mut cumulative = 0;
            let mut buckets = Vec::new();
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Relaxed);
                buckets.push(json!({"le": bound, "count": cumulative}));
            }
            let count = cumulative + s.buckets[LATENCY_BUCKETS.len()].load(Relaxed);
            tools.insert(
                name,
                json!({
                    "calls": {"succeeded": s.succeeded.load(Relaxed), "failed": s.failed.load(Relaxed)},
                    "errors": errors,
                    "policy_denied": s.denied.load(Relaxed),
                    "rate_limited": s.rate_limited.load(Relaxed),
                    "latency_seconds": {
                        "count": count,
                        "sum": s.sum_nanos.load(Relaxed) as f64 / 1e9,
                        "buckets": buckets,
                    },
                }),
            );
        }
        let subscribers: Vec<Value> = subs
            .iter()
            .map(|c| {
                json!({"id": c.id, "pattern": c.pattern, "delivered": c.delivered,
                       "dropped": c.dropped, "errors": c.errors, "queued": c.queued})
            })
            .collect();
        json!({
            "tools": tools,
            "events": {
                "published": self.published.load(Relaxed),
                "dropped": self.dropped.load(Relaxed),
                "subscriber_errors": self.subscriber_errors.load(Relaxed),
                "subscribers": subscribers,
            },
        })
    }

    pub(crate) fn text(&self, subs: &[SubscriberCounts]) -> String {
        let tools = self.sorted_tools();
        let mut out = String::with_capacity(1024 + tools.len() * 2048);
        let o = &mut out;

        header(o, "utp_tool_calls_total", "counter", "Finished tool calls by outcome.");
        for (name, s) in &tools {
            let t = escape(name);
            line(o, "utp_tool_calls_total", &format!("tool=\"{t}\",outcome=\"success\""), s.succeeded.load(Relaxed));
            line(o, "utp_tool_calls_total", &format!("tool=\"{t}\",outcome=\"error\""), s.failed.load(Relaxed));
        }
        header(o, "utp_tool_errors_total", "counter", "Failed tool calls by error code.");
        for (name, s) in &tools {
            let t = escape(name);
            for (i, code) in ErrorCode::ALL.iter().enumerate() {
                let n = s.errors[i].load(Relaxed);
                if n > 0 {
                    line(o, "utp_tool_errors_total", &format!("tool=\"{t}\",code=\"{}\"", code.as_str()), n);
                }
            }
        }
        header(o, "utp_tool_call_duration_seconds", "histogram", "Tool call latency.");
        for (name, s) in &tools {
            let t = escape(name);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Relaxed);
                line(o, "utp_tool_call_duration_seconds_bucket", &format!("tool=\"{t}\",le=\"{bound}\""), cumulative);
            }
            let count = cumulative + s.buckets[LATENCY_BUCKETS.len()].load(Relaxed);
            line(o, "utp_tool_call_duration_seconds_bucket", &format!("tool=\"{t}\",le=\"+Inf\""), count);
            let sum = s.sum_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(o, "utp_tool_call_duration_seconds_sum{{tool=\"{t}\"}} {sum}");
            line(o, "utp_tool_call_duration_seconds_count", &format!("tool=\"{t}\""), count);
        }
        header(o, "utp_policy_denied_total", "counter", "Calls denied by policy.");
        for (name, s) in &tools {
            line(o, "utp_policy_denied_total", &format!("tool=\"{}\"", escape(name)), s.denied.load(Relaxed));
        }
        header(o, "utp_rate_limited_total", "counter", "Calls refused by a rate limit.");
        for (name, s) in &tools {
            line(o, "utp_rate_limited_total", &format!("tool=\"{}\"", escape(name)), s.rate_limited.load(Relaxed));
        }
        header(o, "utp_events_published_total", "counter", "Events published.");
        let _ = writeln!(o, "utp_events_published_total {}", self.published.load(Relaxed));
        header(o, "utp_event_drops_total", "counter", "Events dropped because a subscriber's queue was full.");
        let _ = writeln!(o, "utp_event_drops_total {}", self.dropped.load(Relaxed));
        header(o, "utp_event_subscriber_errors_total", "counter", "Subscriber handlers that failed or panicked.");
        let _ = writeln!(o, "utp_event_subscriber_errors_total {}", self.subscriber_errors.load(Relaxed));
        header(o, "utp_event_subscription_drops_total", "counter", "Drops per live subscription.");
        for c in subs {
            let labels = format!("subscription=\"{}\",pattern=\"{}\"", c.id, escape(&c.pattern));
            line(o, "utp_event_subscription_drops_total", &labels, c.dropped);
        }
        header(o, "utp_event_subscription_errors_total", "counter", "Handler failures per live subscription.");
        for c in subs {
            let labels = format!("subscription=\"{}\",pattern=\"{}\"", c.id, escape(&c.pattern));
            line(o, "utp_event_subscription_errors_total", &labels, c.errors);
        }
        header(o, "utp_event_subscription_queued", "gauge", "Events waiting in each live subscription's queue.");
        for c in subs {
            let labels = format!("subscription=\"{}\",pattern=\"{}\"", c.id, escape(&c.pattern));
            line(o, "utp_event_subscription_queued", &labels, c.queued as u64);
        }
        out
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn line(o: &mut String, name: &str, labels: &str, value: u64) {
    let _ = writeln!(o, "{name}{{{labels}}} {value}");
}

/// Prometheus label-value escaping: backslash, double quote, newline.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_text_escapes() {
        let m = Metrics::default();
        m.record_call("a.b", Duration::from_micros(100), None);
        m.record_call("a.b", Duration::from_millis(3), Some(ErrorCode::Timeout));
        m.record_call("a.b", Duration::from_secs(100), Some(ErrorCode::Timeout));
        m.record_denied("we\"ird\\tool\n");
        let snap = m.snapshot(&[]);
        let t = &snap["tools"]["a.b"];
        assert_eq!(t["calls"]["succeeded"], 1);
        assert_eq!(t["calls"]["failed"], 2);
        assert_eq!(t["errors"]["TIMEOUT"], 2);
        assert_eq!(t["latency_seconds"]["count"], 3);
        assert_eq!(t["latency_seconds"]["buckets"][0]["count"], 1); // ≤ 0.5 ms
        assert_eq!(t["latency_seconds"]["buckets"][3]["count"], 2); // ≤ 5 ms
        assert_eq!(t["latency_seconds"]["buckets"][14]["count"], 2); // ≤ 60 s
        let text = m.text(&[]);
        assert!(text.contains("utp_tool_call_duration_seconds_bucket{tool=\"a.b\",le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("utp_tool_errors_total{tool=\"a.b\",code=\"TIMEOUT\"} 2"));
        assert!(text.contains("utp_policy_denied_total{tool=\"we\\\"ird\\\\tool\\n\"} 1"), "{text}");
    }
}
