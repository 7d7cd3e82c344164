//! The domain layer's pre-call check, no I/O: permissions + 10 declarative rules
//! (CEL and native comparisons, a time window) + 4 rate limits on the path of one
//! call, then the same check inside a whole `call_tool` of a native no-op tool.
//! Run: cargo bench -p utp-core --bench domain

use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use serde_json::{Map, Value, json};
use utp_core::domain::{Call, Domain, DomainSpec};
use utp_core::{CallOptions, Engine};

/// The original UTP shape plus 10 rules and 4 rate limits that all apply to
/// `betfair.placeBet`, none of which denies the benchmarked call.
fn config() -> Value {
    let mut rules = vec![
        json!({"name": "max_bet", "match": {"tool": "betfair", "action": "placeBet"},
               "deny_if": "params.amount > constants.max_bet_amount"}),
        json!({"name": "min_bet", "match": {"tool": "betfair", "action": "placeBet"}, "deny_if": "params.amount < 1"}),
        json!({"name": "odds_cap", "match": {"tool": "betfair"}, "deny_if": "params.odds > 1000.0"}),
        json!({"name": "blocked_market", "match": {"tool": "betfair", "action": "placeBet"},
               "deny_if": "params.market == 'banned'"}),
        json!({"name": "big_bets_reviewed", "match": {"tool": "betfair", "action": "placeBet"},
               "escalate_if": "params.amount > 900 && params.odds > 50.0"}),
        json!({"name": "test_tenant", "match": {"tool": "*"}, "deny_if": "tenant == 'suspended'"}),
        json!({"name": "market_list", "match": {"tool": "betfair"}, "deny_if": "params.market in ['x1', 'x2', 'x3']"}),
        json!({"name": "stake_ratio", "match": {"tool": "betfair", "action": "placeBet"},
               "deny_if": "double(params.amount) * params.odds > 500000.0"}),
        json!({"name": "open_all_week", "match": {"tool": "betfair"},
               "allow_only_during": {"from": "00:00", "to": "00:00", "timezone": "Europe/London"}}),
    ];
    rules.push(json!({"name": "no_lay_bets", "match": {"tool": "betfair", "action": "placeBet"},
                      "deny_if": "has(params.side) && params.side == 'lay'"}));
    let limit = |per: &str| json!({"match": {"tool": "betfair", "action": "placeBet"}, "per": per, "limit": 1_000_000_000u64, "window": "1s"});
    json!({
        "permissions": {"betfair": {"enabled": true, "allowed_actions": ["listMarkets", "getOdds", "placeBet"]}},
        "business_rules": {"max_bet_amount": 1000},
        "rules": rules,
        "rate_limits": [limit("global"), limit("tool"), limit("tenant"), limit("user")],
    })
}

fn params() -> Map<String, Value> {
    match json!({"market": "m-42", "amount": 250, "odds": 2.5}) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn bench_check(c: &mut Criterion) {
    let cfg = config();
    let domain = Domain::new(DomainSpec::from_config(cfg.as_object().unwrap()).unwrap()).unwrap();
    let params = params();
    let call = Call {
        tool: "betfair.placeBet",
        manual: "betfair",
        action: "placeBet",
        params: &params,
        tenant: Some("acme"),
        session: Some("s1"),
        user: Some("ana"),
    };
    let now = jiff::Timestamp::now();
    let decision = domain.decide(&call, now).now_or_never().unwrap();
    assert_eq!(decision.outcome, utp_core::domain::Outcome::Allow, "{decision:?}");

    let mut group = c.benchmark_group("domain");
    group.bench_function("decide/10_rules", |b| b.iter(|| domain.decide(&call, now).now_or_never().unwrap()));
    group.bench_function("rate_limits/4_acquire", |b| b.iter(|| domain.limits.acquire(&call).unwrap()));
    group.bench_function("pre_call_check/10_rules_4_limits", |b| {
        b.iter(|| {
            let d = domain.decide(&call, jiff::Timestamp::now()).now_or_never().unwrap();
            domain.limits.acquire(&call).unwrap();
            d
        })
    });
    let none = Domain::new(DomainSpec::default()).unwrap();
    group.bench_function("pre_call_check/no_config", |b| {
        b.iter(|| {
            let d = none.decide(&call, jiff::Timestamp::now()).now_or_never().unwrap();
            none.limits.acquire(&call).unwrap();
            d
        })
    });
    group.finish();
}

fn bench_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("call_tool_native_noop");
    for (label, cfg) in [("no_domain_config", json!({})), ("10_rules_4_limits", config())] {
        let engine = Engine::from_json(cfg).unwrap();
        let noop: utp_core::NativeHandler = Arc::new(|_args| async { Ok(Value::Null) }.boxed());
        engine.register_tool("betfair.placeBet", noop, None, None, "", vec![]).unwrap();
        let options = CallOptions { tenant: Some("acme".into()), user: Some("ana".into()), ..CallOptions::default() };
        rt.block_on(engine.call_tool("betfair.placeBet", Value::Object(params()), options.clone())).unwrap();
        group.bench_function(label, |b| {
            b.iter_batched(
                || (Value::Object(params()), options.clone()),
                |(args, options)| rt.block_on(engine.call_tool("betfair.placeBet", args, options)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_check, bench_call);
criterion_main!(benches);
