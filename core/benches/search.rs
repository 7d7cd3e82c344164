//! Search latency over 10,000 tools (20 manuals of 500), and registration cost.
//! Run: cargo bench -p utp-core --bench search

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use utp_core::{Engine, ManualSource};

const VERBS: [&str; 10] = ["list", "get", "create", "update", "delete", "search", "merge", "lock", "archive", "sync"];
const NOUNS: [&str; 25] = [
    "issue",
    "repository",
    "pull request",
    "comment",
    "label",
    "milestone",
    "release",
    "branch",
    "commit",
    "tag",
    "workflow",
    "artifact",
    "secret",
    "webhook",
    "member",
    "team",
    "project",
    "gist",
    "notification",
    "invoice",
    "customer",
    "payment",
    "subscription",
    "order",
    "shipment",
];
const SCOPES: [&str; 4] = ["for a repository", "for an organization", "for the authenticated user", "by id"];

fn manual(m: usize, per_manual: usize) -> Value {
    let tools: Vec<Value> = (0..per_manual)
        .map(|i| {
            let n = m * per_manual + i;
            let (verb, noun, scope) = (VERBS[n % 10], NOUNS[(n / 10) % 25], SCOPES[(n / 250) % 4]);
            json!({
                "name": format!("{verb}_{}_{}_{n}", noun.replace(' ', "_"), scope.split(' ').next_back().unwrap_or("x")),
                "description": format!("{verb} {noun}s {scope}"),
                "tags": [noun.split(' ').next().unwrap_or("x")],
                "inputs": {"type": "object", "properties": {"owner": {}, "repo": {}, "per_page": {}, "page": {}}},
                "tool_call_template": {"call_template_type": "http", "url": "https://api.example.com/x"}
            })
        })
        .collect();
    json!({"tools": tools})
}

fn engine_with(total: usize, manuals: usize) -> Engine {
    let engine = Engine::from_json(json!({})).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for m in 0..manuals {
        rt.block_on(engine.register_manual(ManualSource::Inline(manual(m, total / manuals)), Some(&format!("api{m}"))))
            .unwrap();
    }
    engine
}

fn bench(c: &mut Criterion) {
    let engine = engine_with(10_000, 20);
    assert_eq!(engine.tools().len(), 10_000);
    c.bench_function("search 10k tools: 'list issues for a repository' top 10", |b| {
        b.iter(|| engine.search_tools("list issues for a repository", 10, &[]))
    });
    c.bench_function("search 10k tools: 'payment' top 10", |b| b.iter(|| engine.search_tools("payment", 10, &[])));
    c.bench_function("search 10k tools: 'merge pull request' tag filter, unlimited", |b| {
        b.iter(|| engine.search_tools("merge pull request", 0, &["pull".into()]))
    });
    c.bench_function("tool lookup by name in 10k", |b| b.iter(|| engine.tool("api7.list_issue_repository_3500")));
    let one = manual(0, 500);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    c.bench_function("register + deregister a 500-tool manual beside 10k tools", |b| {
        b.iter(|| {
            rt.block_on(engine.register_manual(ManualSource::Inline(one.clone()), Some("extra"))).unwrap();
            engine.deregister_manual("extra")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
