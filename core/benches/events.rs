//! Event publish cost: building an event (type, tool, tenant) and publishing it
//! (id, history ring, offer to each matching subscriber's queue).
//! Run: cargo bench -p utp-core --bench events
//!
//! Subscribers are no-op handlers on their own threads; 10 subscribers means 5
//! patterns that match `tool.called` and 5 that do not. Default queue capacity
//! (1024): when the subscriber threads fall behind, events are dropped (counted),
//! which is the cheaper path; the drop share is printed after each group.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use utp_core::events::{EventsConfig, kinds};
use utp_core::{Event, EventBus};

const MATCHING: [&str; 5] = ["*", "tool.*", "tool.called", "*.called", "t*l.c*d"];
const OTHERS: [&str; 5] = ["step.*", "workflow.*", "policy.denied", "manual.*", "*.failed"];

fn bus(patterns: &[&str]) -> EventBus {
    let bus = EventBus::new(EventsConfig::default());
    for p in patterns {
        bus.subscribe(p, Arc::new(|_| Ok(()))).unwrap();
    }
    bus
}

fn event() -> Event {
    Event::new(kinds::TOOL_CALLED).tool("bench.noop").tenant("acme")
}

fn report(name: &str, bus: &EventBus) {
    bus.flush(std::time::Duration::from_secs(10));
    let subs = bus.subscriptions();
    let (delivered, dropped): (u64, u64) = subs.iter().fold((0, 0), |(a, b), s| (a + s.delivered, b + s.dropped));
    if delivered + dropped > 0 {
        let share = dropped as f64 * 100.0 / (delivered + dropped) as f64;
        eprintln!("{name}: {delivered} delivered, {dropped} dropped ({share:.1}%) over {} subscriptions", subs.len());
    }
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    g.bench_function("build_event_only", |b| b.iter(|| std::hint::black_box(event())));

    let cases: [(&str, Vec<&str>); 4] = [
        ("0_subscribers", vec![]),
        ("10_subscribers_5_match", MATCHING.iter().chain(OTHERS.iter()).copied().collect()),
        (
            "10_subscribers_none_match",
            OTHERS.iter().chain(["step.started", "x.*", "*.x", "a?c", "tool.failed"].iter()).copied().collect(),
        ),
        ("10_subscribers_all_match", MATCHING.iter().chain(MATCHING.iter()).copied().collect()),
    ];
    for (name, patterns) in cases {
        let bus = bus(&patterns);
        g.bench_function(name, |b| b.iter(|| bus.publish(event())));
        report(name, &bus);
    }
    g.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
