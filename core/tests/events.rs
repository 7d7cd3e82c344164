//! Events: glob subscriptions, per-subscriber ordering, slow and panicking
//! subscribers, history filters and bound, metrics text, and the events of real
//! native-tool calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use utp_core::events::{EventsConfig, kinds};
use utp_core::{
    CallOptions, Engine, ErrorCode, Event, EventBus, EventHandler, HistoryFilter, ManualSource, NativeHandler,
};

const WAIT: Duration = Duration::from_secs(10);

fn handler(f: impl Fn(Value) -> utp_core::Result<Value> + Send + Sync + 'static) -> NativeHandler {
    let f = Arc::new(f);
    Arc::new(move |args| {
        let f = f.clone();
        async move { f(args) }.boxed()
    })
}

/// A subscriber that records what it receives.
fn recorder() -> (EventHandler, Arc<Mutex<Vec<Arc<Event>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (
        Arc::new(move |e| {
            s.lock().push(e);
            Ok(())
        }),
        seen,
    )
}

fn kinds_of(events: &[Arc<Event>]) -> Vec<String> {
    events.iter().map(|e| e.kind.to_string()).collect()
}

#[test]
fn glob_subscriptions_get_what_they_match() {
    let bus = EventBus::default();
    let mut got = HashMap::new();
    for p in ["*", "tool.*", "step.*", "tool.failed", "*.failed", "workflow.*ed"] {
        let (h, seen) = recorder();
        bus.subscribe(p, h).unwrap();
        got.insert(p, seen);
    }
    for k in [
        kinds::TOOL_CALLED,
        kinds::TOOL_FAILED,
        kinds::STEP_STARTED,
        kinds::STEP_FAILED,
        kinds::WORKFLOW_STARTED,
        kinds::WORKFLOW_ERROR,
        kinds::POLICY_DENIED,
    ] {
        bus.publish(Event::new(k));
    }
    assert!(bus.flush(WAIT));
    let k = |p: &str| kinds_of(&got[p].lock());
    assert_eq!(k("*").len(), 7);
    assert_eq!(k("tool.*"), ["tool.called", "tool.failed"]);
    assert_eq!(k("step.*"), ["step.started", "step.failed"]);
    assert_eq!(k("tool.failed"), ["tool.failed"]);
    assert_eq!(k("*.failed"), ["tool.failed", "step.failed"]);
    assert_eq!(k("workflow.*ed"), ["workflow.started"]);
    // A pattern no event type can match is a typo, refused rather than silently idle.
    let err = bus.subscribe("tool.sucess", recorder().0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("tool.succeeded"), "{err}");
    assert_eq!(bus.subscribe("  ", recorder().0).unwrap_err().code(), ErrorCode::InvalidArgument);
    assert_eq!(bus.subscribe_with_capacity("*", recorder().0, 0).unwrap_err().code(), ErrorCode::InvalidArgument);
}

#[test]
fn each_subscriber_sees_increasing_ids_even_with_concurrent_publishers() {
    let bus = EventBus::new(EventsConfig { history_size: 100, queue_capacity: 100_000 });
    let (h1, a) = recorder();
    let (h2, b) = recorder();
    bus.subscribe("*", h1).unwrap();
    bus.subscribe("tool.*", h2).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let bus = bus.clone();
            s.spawn(move || {
                for i in 0..2_000 {
                    let kind = if i % 2 == 0 { kinds::TOOL_CALLED } else { kinds::STEP_STARTED };
                    bus.publish(Event::new(kind).tool(format!("t{t}")));
                }
            });
        }
    });
    assert!(bus.flush(WAIT));
    let (a, b) = (a.lock(), b.lock());
    assert_eq!(a.len(), 8_000);
    assert_eq!(b.len(), 4_000);
    assert!(a.windows(2).all(|w| w[0].id < w[1].id), "ids out of order for '*'");
    assert!(b.windows(2).all(|w| w[0].id < w[1].id), "ids out of order for 'tool.*'");
    assert_eq!(a.first().unwrap().id, 1);
    assert_eq!(bus.last_id(), 8_000);
    // Per publisher, the order of publication is kept.
    for t in 0..4 {
        let tool = format!("t{t}");
        let mine: Vec<_> = a.iter().filter(|e| e.tool.as_deref() == Some(tool.as_str())).collect();
        assert_eq!(mine.len(), 2_000);
        assert!(mine.windows(2).all(|w| w[0].kind != w[1].kind), "alternation of publisher {t} broken");
    }
}

#[test]
fn unsubscribe_stops_delivery() {
    let bus = EventBus::default();
    let (h, seen) = recorder();
    let id = bus.subscribe("*", h).unwrap();
    bus.publish(Event::new(kinds::TOOL_CALLED));
    assert!(bus.flush(WAIT));
    assert!(bus.unsubscribe(id));
    assert!(!bus.unsubscribe(id));
    bus.publish(Event::new(kinds::TOOL_CALLED));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(seen.lock().len(), 1);
    assert!(bus.subscriptions().is_empty());
}

#[test]
fn failing_and_panicking_subscribers_are_counted_and_isolated() {
    let bus = EventBus::default();
    let panicky = bus
        .subscribe(
            "*",
            Arc::new(|e: Arc<Event>| {
                if e.id % 2 == 0 {
                    panic!("subscriber bug on {}", e.id);
                }
                Ok(())
            }),
        )
        .unwrap();
    let failing = bus.subscribe("tool.*", Arc::new(|_| Err("cannot write".to_string()))).unwrap();
    let (h, seen) = recorder();
    bus.subscribe("*", h).unwrap();
    for _ in 0..10 {
        bus.publish(Event::new(kinds::TOOL_CALLED));
    }
    assert!(bus.flush(WAIT));
    assert_eq!(seen.lock().len(), 10, "a healthy subscriber still gets everything");
    let info: HashMap<_, _> = bus.subscriptions().into_iter().map(|i| (i.id, i)).collect();
    assert_eq!(info[&panicky].errors, 5);
    assert_eq!(info[&panicky].delivered, 10, "the panicking subscriber keeps receiving");
    assert_eq!(info[&failing].errors, 10);
    assert_eq!(bus.metrics()["events"]["subscriber_errors"], 15);
    assert!(bus.metrics_text().contains("utp_event_subscriber_errors_total 15"));
}

#[test]
fn history_filters_and_bound() {
    let bus = EventBus::new(EventsConfig { history_size: 10, queue_capacity: 8 });
    for i in 1..=25u64 {
        let kind = if i % 3 == 0 { kinds::TOOL_FAILED } else { kinds::TOOL_CALLED };
        let mut e = Event::new(kind).tool(format!("m.t{}", i % 2)).tenant(if i % 5 == 0 { "acme" } else { "other" });
        if i == 24 {
            e = e.execution("x-24");
        }
        assert_eq!(bus.publish(e), i);
    }
    let ids = |f: HistoryFilter| bus.history(&f).iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(bus.history_len(), 10);
    assert_eq!(ids(HistoryFilter::default()), (16..=25).collect::<Vec<_>>());
    assert_eq!(ids(HistoryFilter::default().limit(3)), [23, 24, 25]);
    assert_eq!(ids(HistoryFilter::default().kind("tool.failed")), [18, 21, 24]);
    assert_eq!(ids(HistoryFilter::default().kind("*.failed").limit(2)), [21, 24]);
    assert_eq!(ids(HistoryFilter::default().tool("m.t0")), [16, 18, 20, 22, 24]);
    assert_eq!(ids(HistoryFilter::default().tenant("acme")), [20, 25]);
    assert_eq!(ids(HistoryFilter::default().execution("x-24")), [24]);
    assert_eq!(ids(HistoryFilter::default().since(21)), [22, 23, 24, 25]);
    assert_eq!(ids(HistoryFilter::default().since(3)), (16..=25).collect::<Vec<_>>());
    assert_eq!(ids(HistoryFilter::default().since(17).limit(2)), [18, 19], "since + limit: the first after since");
    assert_eq!(ids(HistoryFilter::default().since(25)), Vec::<u64>::new());
    assert_eq!(ids(HistoryFilter::default().tool("m.t1").kind("tool.called").since(18)), [19, 23, 25]);
    // The filter as the bindings pass it, JSON.
    let f: HistoryFilter = serde_json::from_value(json!({"type": "tool.*", "limit": 1, "tenant": "acme"})).unwrap();
    assert_eq!(ids(f), [25]);
    assert!(serde_json::from_value::<HistoryFilter>(json!({"bogus": 1})).is_err());

    let none = EventBus::new(EventsConfig { history_size: 0, queue_capacity: 8 });
    none.publish(Event::new(kinds::TOOL_CALLED));
    assert!(none.history(&HistoryFilter::default()).is_empty());
    assert_eq!(none.last_id(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_never_slows_calls_and_its_drops_are_counted() {
    let e = Engine::from_json(json!({"events": {"queue_capacity": 4}})).unwrap();
    e.register_tool("m.echo", handler(Ok), None, None, "", vec![]).unwrap();
    let slow = e
        .subscribe(
            "tool.*",
            Arc::new(|_| {
                std::thread::sleep(Duration::from_millis(50));
                Ok(())
            }),
        )
        .unwrap();
    let (h, fast) = recorder();
    let fast_id = e.events().subscribe_with_capacity("tool.*", h, 10_000).unwrap();
    // 400 events at 50 ms each: 20 s if the subscriber were in the way (no timing
    // is asserted; the drops show it was not).
    for i in 0..200 {
        assert_eq!(e.call_tool("m.echo", json!({"i": i}), CallOptions::default()).await.unwrap(), json!({"i": i}));
    }
    let info = e.events().subscriptions().into_iter().find(|i| i.id == slow).unwrap();
    assert!(info.dropped > 0, "{info:?}");
    assert!(info.queued <= 4, "{info:?}");
    assert_eq!(e.metrics()["events"]["dropped"], json!(info.dropped));
    assert!(e.events().flush(WAIT));
    assert_eq!(fast.lock().len(), 400, "the fast subscriber misses nothing");
    let info = e.events().subscriptions().into_iter().find(|i| i.id == slow).unwrap();
    assert_eq!(info.delivered + info.dropped, 400, "{info:?}");
    assert!(e.unsubscribe(slow) && e.unsubscribe(fast_id));
}

#[tokio::test]
async fn events_of_real_calls() {
    let e = Engine::from_json(json!({})).unwrap();
    let (h, seen) = recorder();
    e.subscribe("*", h).unwrap();
    e.register_tool(
        "m.ok",
        handler(|v| Ok(json!({"len": v["password"].as_str().map_or(0, str::len)}))),
        None,
        None,
        "",
        vec![],
    )
    .unwrap();
    e.register_tool(
        "m.bad",
        handler(|v| Err(utp_core::Error::tool_failed(format!("upstream said no to {}", v["password"])))),
        None,
        None,
        "",
        vec![],
    )
    .unwrap();
    e.register_tool(
        "m.slow",
        Arc::new(|_| {
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Value::Null)
            }
            .boxed()
        }),
        None,
        None,
        "",
        vec![],
    )
    .unwrap();
    let opts = CallOptions { tenant: Some("acme".into()), session: Some("s-1".into()), ..Default::default() };
    e.call_tool("m.ok", json!({"password": "hunter2-secret"}), opts.clone()).await.unwrap();
    let err = e.call_tool("m.bad", json!({"password": "hunter2-secret"}), opts.clone()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed);
    let timeout = CallOptions { timeout: Some(Duration::from_millis(20)), ..Default::default() };
    assert_eq!(e.call_tool("m.slow", json!({}), timeout).await.unwrap_err().code(), ErrorCode::Timeout);
    // Failures before the transport (unknown tool, invalid arguments) are not calls.
    e.call_tool("m.nope", json!({}), opts.clone()).await.unwrap_err();
    e.call_tool("m.ok", json!([1]), opts.clone()).await.unwrap_err();
    e.register_manual(
        ManualSource::Inline(json!({"name": "text", "tools": [
            {"name": "a", "tool_call_template": {"call_template_type": "text", "content": "x"}},
            {"name": "b", "tool_call_template": {"call_template_type": "text", "content": "y"}}]})),
        None,
    )
    .await
    .unwrap();
    assert!(e.deregister_manual("text"));
    assert!(!e.deregister_manual("text"));
    assert!(e.events().flush(WAIT));

    let seen = seen.lock();
    assert_eq!(
        kinds_of(&seen),
        [
            "manual.registered",
            "manual.registered",
            "manual.registered",
            "tool.called",
            "tool.succeeded",
            "tool.called",
            "tool.failed",
            "tool.called",
            "tool.failed",
            "manual.registered",
            "manual.deregistered"
        ]
    );
    assert_eq!(seen[0].data, json!({"manual": "m", "tools": 1}));
    assert_eq!(seen[2].data, json!({"manual": "m", "tools": 3}));
    assert_eq!(seen[9].data, json!({"manual": "text", "tools": 2}));
    assert_eq!(seen[10].data, json!({"manual": "text", "tools": 2}));

    let called = seen[3].to_value();
    assert_eq!(called["type"], "tool.called");
    assert_eq!(called["tool"], "m.ok");
    assert_eq!(called["tenant"], "acme");
    assert_eq!(called["session_id"], "s-1");
    assert!(called["time"].as_str().unwrap().ends_with('Z'));
    assert!(called.get("execution_id").is_none());
    let ok = &seen[4];
    assert!(ok.data["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!((ok.tenant.as_deref(), ok.session_id.as_deref()), (Some("acme"), Some("s-1")));
    let bad = &seen[6].data;
    assert_eq!(bad["code"], "TOOL_FAILED");
    assert_eq!(bad["message"], "tool 'm.bad' failed");
    assert!(bad["duration_ms"].is_number());
    assert_eq!(seen[8].data["code"], "TIMEOUT");
    assert!(seen[8].data["message"].as_str().unwrap().contains("m.slow"));
    // Arguments (and what a tool echoed of them) never reach an event.
    for ev in seen.iter() {
        assert!(!ev.to_value().to_string().contains("hunter2"), "{}", ev.to_value());
    }
    // History holds the same stream; ids are increasing from 1.
    let hist = e.history(&HistoryFilter::default());
    assert_eq!(hist.iter().map(|e| e.id).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
    assert_eq!(e.history(&HistoryFilter::default().kind("tool.failed").tool("m.bad")).len(), 1);

    // Metrics.
    let m = e.metrics();
    assert_eq!(m["tools"]["m.ok"]["calls"], json!({"succeeded": 1, "failed": 0}));
    assert_eq!(m["tools"]["m.bad"]["errors"], json!({"TOOL_FAILED": 1}));
    assert_eq!(m["tools"]["m.slow"]["errors"], json!({"TIMEOUT": 1}));
    assert!(m["tools"].get("m.nope").is_none(), "unknown tools make no series");
    assert_eq!(m["events"]["published"], 11);
}

#[tokio::test]
async fn domain_events_feed_the_metrics() {
    let e = Engine::from_json(json!({})).unwrap();
    e.events().publish(
        Event::new(kinds::POLICY_DENIED).tool("bet.placeBet").tenant("t").data(json!({"rule": "max_bet_amount"})),
    );
    e.events().publish(Event::new(kinds::POLICY_DENIED).tool("bet.placeBet"));
    e.events().publish(Event::new(kinds::RATELIMIT_LIMITED).tool("bet.placeBet").data(json!({"retry_after_ms": 100})));
    let m = e.metrics();
    assert_eq!(m["tools"]["bet.placeBet"]["policy_denied"], 2);
    assert_eq!(m["tools"]["bet.placeBet"]["rate_limited"], 1);
    let text = e.metrics_text();
    assert!(text.contains("utp_policy_denied_total{tool=\"bet.placeBet\"} 2"), "{text}");
    assert!(text.contains("utp_rate_limited_total{tool=\"bet.placeBet\"} 1"), "{text}");
}

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parse Prometheus text exposition: comments, and `name{labels} value` lines.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(kw == "HELP" || kw == "TYPE", "comment: {line}");
            assert!(valid_name(name), "name in {line}");
            if kw == "TYPE" {
                assert!(["counter", "gauge", "histogram"].contains(&parts.next().unwrap()), "{line}");
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(valid_name(name), "name in {line}");
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = r.find("=\"").unwrap_or_else(|| panic!("label in {line}"));
                let key = &r[..eq];
                assert!(valid_name(key), "label name in {line}");
                let mut value = String::new();
                let mut chars = r[eq + 2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        Some((i, '"')) => break eq + 2 + i + 1,
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label in {line}"),
                    }
                };
                labels.push((key.to_string(), value));
                r = r[end..].strip_prefix(',').unwrap_or(&r[end..]);
            }
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before value: {line}"));
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        out.push((name.to_string(), labels, v));
    }
    out
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[tokio::test]
async fn metrics_text_parses() {
    let e = Engine::from_json(json!({})).unwrap();
    e.register_tool("m.ok", handler(Ok), None, None, "", vec![]).unwrap();
    e.register_tool("m.bad", handler(|_| Err(utp_core::Error::tool_failed("no"))), None, None, "", vec![]).unwrap();
    e.subscribe("tool.*", Arc::new(|_| Ok(()))).unwrap();
    for _ in 0..3 {
        e.call_tool("m.ok", json!({}), CallOptions::default()).await.unwrap();
    }
    e.call_tool("m.bad", json!({}), CallOptions::default()).await.unwrap_err();
    e.events().publish(Event::new(kinds::POLICY_DENIED).tool("we\"ird\\name\nx"));
    let text = e.metrics_text();
    let samples = parse_prometheus(&text);
    let get = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|s| s.2)
    };
    assert_eq!(get("utp_tool_calls_total", &[("tool", "m.ok"), ("outcome", "success")]), Some(3.0));
    assert_eq!(get("utp_tool_calls_total", &[("tool", "m.bad"), ("outcome", "error")]), Some(1.0));
    assert_eq!(get("utp_tool_errors_total", &[("tool", "m.bad"), ("code", "TOOL_FAILED")]), Some(1.0));
    assert_eq!(get("utp_tool_call_duration_seconds_count", &[("tool", "m.ok")]), Some(3.0));
    assert_eq!(get("utp_tool_call_duration_seconds_bucket", &[("tool", "m.ok"), ("le", "+Inf")]), Some(3.0));
    assert_eq!(get("utp_policy_denied_total", &[("tool", "we\"ird\\name\nx")]), Some(1.0));
    assert_eq!(get("utp_events_published_total", &[]), Some(e.events().last_id() as f64));
    // Buckets are cumulative and non-decreasing.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == "utp_tool_call_duration_seconds_bucket" && l[0].1 == "m.ok")
        .map(|s| s.2)
        .collect();
    assert_eq!(buckets.len(), utp_core::events::LATENCY_BUCKETS.len() + 1);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn events_config_is_checked() {
    for bad in [json!({"events": {"queue_capacity": 0}}), json!({"events": {"history": 5}}), json!({"events": 3})] {
        assert_eq!(Engine::from_json(bad.clone()).unwrap_err().code(), ErrorCode::InvalidArgument, "{bad}");
    }
    let e = Engine::from_json(json!({"events": {"history_size": 2}})).unwrap();
    assert_eq!(e.events().config(), EventsConfig { history_size: 2, queue_capacity: 1024 });
}

#[test]
fn dropping_the_engine_stops_subscriber_threads() {
    let e = Engine::from_json(json!({})).unwrap();
    let sentinel = Arc::new(());
    let held = sentinel.clone();
    e.subscribe(
        "*",
        Arc::new(move |_| {
            let _ = &held;
            Ok(())
        }),
    )
    .unwrap();
    assert_eq!(Arc::strong_count(&sentinel), 2);
    drop(e);
    let deadline = std::time::Instant::now() + WAIT;
    while Arc::strong_count(&sentinel) > 1 {
        assert!(std::time::Instant::now() < deadline, "the subscriber thread still holds its handler");
        std::thread::sleep(Duration::from_millis(1));
    }
}
