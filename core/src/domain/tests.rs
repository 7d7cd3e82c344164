use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn domain(config: Value) -> Domain {
    Domain::new(DomainSpec::from_config(config.as_object().unwrap()).unwrap()).unwrap()
}

fn call<'a>(manual: &'a str, action: &'a str, tool: &'a str, params: &'a Map<String, Value>) -> Call<'a> {
    Call { tool, manual, action, params, tenant: Some("acme"), session: Some("s1"), user: None }
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    futures_util::FutureExt::now_or_never(f).expect("no host rules: decide completes at once")
}

fn utp_example() -> Value {
    json!({
        "permissions": {"betfair": {"enabled": true, "allowed_actions": ["listMarkets", "getOdds", "placeBet"]},
                        "casino": {"enabled": false}},
        "business_rules": {"max_bet_amount": 1000},
        "rules": [{"name": "max_bet", "match": {"tool": "betfair", "action": "placeBet"},
                   "deny_if": "params.amount > constants.max_bet_amount",
                   "message": "bets above {{constants.max_bet_amount}} are not allowed"}]
    })
}

#[test]
fn the_original_utp_example() {
    let d = domain(utp_example());
    let now = jiff::Timestamp::now();
    let big = json!({"amount": 1500}).as_object().unwrap().clone();
    let small = json!({"amount": 500}).as_object().unwrap().clone();
    let denied = block(d.decide(&call("betfair", "placeBet", "betfair.placeBet", &big), now));
    assert_eq!(denied.outcome, Outcome::Deny);
    assert_eq!(denied.reason(), "bets above 1000 are not allowed (max_bet)");
    assert_eq!(block(d.decide(&call("betfair", "placeBet", "betfair.placeBet", &small), now)).outcome, Outcome::Allow);
    let other = block(d.decide(&call("betfair", "cashOut", "betfair.cashOut", &small), now));
    assert_eq!(other.outcome, Outcome::Deny);
    assert!(other.reason().contains("not among the allowed actions"), "{}", other.reason());
    let disabled = block(d.decide(&call("casino", "spin", "casino.spin", &small), now));
    assert!(disabled.reason().contains("is disabled"), "{}", disabled.reason());
    // No permissions entry: allowed by default.
    assert_eq!(block(d.decide(&call("weather", "get", "weather.get", &small), now)).outcome, Outcome::Allow);
    // A float amount exactly at the limit is not above it.
    let edge = json!({"amount": 1000.0}).as_object().unwrap().clone();
    assert_eq!(block(d.decide(&call("betfair", "placeBet", "betfair.placeBet", &edge), now)).outcome, Outcome::Allow);
}

#[test]
fn cel_conditions_see_every_variable() {
    let rules = json!({"business_rules": {"limits": {"vip": 5000}}, "rules": [
        {"name": "vars", "escalate_if":
            "tool == 'betfair' && action == 'placeBet' && tenant == 'acme' && session == 's1' && now > '2000-01-01' && constants.limits.vip == 5000"},
        {"name": "sum", "deny_if": "double(params.amount) * params.odds > 10000.0"},
        {"name": "list", "deny_if": "size(params.tags) > 2"}
    ]});
    let d = domain(rules);
    let now = jiff::Timestamp::now();
    let p = json!({"amount": 100, "odds": 2.5, "tags": ["a"]}).as_object().unwrap().clone();
    let decision = block(d.decide(&call("betfair", "placeBet", "betfair.placeBet", &p), now));
    assert_eq!(decision.outcome, Outcome::Escalate, "{decision:?}");
    assert_eq!(decision.hits.len(), 1);
    let big = json!({"amount": 5000, "odds": 2.5, "tags": ["a", "b", "c"]}).as_object().unwrap().clone();
    let decision = block(d.decide(&call("betfair", "placeBet", "betfair.placeBet", &big), now));
    let mut rules: Vec<&str> = decision.hits.iter().map(|h| h.rule.as_str()).collect();
    rules.sort();
    assert_eq!((decision.outcome, rules), (Outcome::Deny, vec!["list", "sum", "vars"]));
    // No tenant: `tenant == 'acme'` is false (null), not an error.
    let anonymous = Call { tenant: None, ..call("betfair", "placeBet", "betfair.placeBet", &p) };
    assert_eq!(block(d.decide(&anonymous, now)).outcome, Outcome::Allow);
}

#[test]
fn tenants_override_permissions_and_security_levels_escalate() {
    let d = domain(json!({
        "permissions": {"bank": {"allowed_actions": ["balance"], "tenants": {"vip": {"allowed_actions": ["balance", "transfer"]}}}},
        "security": {"default": "safe", "levels": {"bank.transfer": "restricted", "ops": "dangerous"}}
    }));
    let p = Map::new();
    let now = jiff::Timestamp::now();
    let mut c = call("bank", "transfer", "bank.transfer", &p);
    assert_eq!(block(d.decide(&c, now)).outcome, Outcome::Deny);
    c.tenant = Some("vip");
    let escalated = block(d.decide(&c, now));
    assert_eq!((escalated.outcome, escalated.level), (Outcome::Escalate, Level::Restricted));
    assert_eq!(d.level("ops.reboot", "ops"), Level::Dangerous);
    assert_eq!(d.level("bank.balance", "bank"), Level::Safe);
}

#[test]
fn bad_rules_are_refused_at_load() {
    let bad = |config: Value| Domain::new(DomainSpec::from_config(config.as_object().unwrap()).unwrap()).err().unwrap();
    assert!(bad(json!({"rules": [{"name": "x", "deny_if": "params.a >"}]})).contains("invalid CEL"));
    assert!(bad(json!({"rules": [{"name": "x"}]})).contains("needs deny_if"));
    assert!(
        bad(json!({"rules": [{"name": "x", "deny_if": "true"}, {"name": "x", "deny_if": "false"}]}))
            .contains("two rules")
    );
    assert!(bad(json!({"rate_limits": [{"limit": 0, "window": "1s"}]})).contains("greater than zero"));
    assert!(DomainSpec::from_config(json!({"permissions": {"a": {"enabld": true}}}).as_object().unwrap()).is_err());
    assert!(DomainSpec::from_config(json!({"security": {"default": "scary"}}).as_object().unwrap()).is_err());
}

#[test]
fn rate_limits_take_from_every_limit_or_none() {
    let d = domain(json!({"rate_limits": [
        {"match": {"tool": "betfair", "action": "placeBet"}, "per": "tenant", "limit": 3, "window": "1h"},
        {"match": {"tool": "betfair"}, "per": "global", "limit": 5, "window": "1h"}
    ]}));
    let p = Map::new();
    let mut bet = call("betfair", "placeBet", "betfair.placeBet", &p);
    for _ in 0..3 {
        d.limits.acquire(&bet).unwrap();
    }
    let limited = d.limits.acquire(&bet).unwrap_err();
    assert!(limited.retry_after > Duration::from_secs(1000), "{limited:?}");
    // The denied bet took nothing from the global limit: two more calls pass.
    let odds = call("betfair", "getOdds", "betfair.getOdds", &p);
    d.limits.acquire(&odds).unwrap();
    d.limits.acquire(&odds).unwrap();
    assert!(d.limits.acquire(&odds).is_err());
    // Another tenant has its own per-tenant budget but shares the global one.
    bet.tenant = Some("other");
    assert!(d.limits.check(&bet).is_err());
}

#[tokio::test]
async fn host_rules_deny_escalate_and_fail_closed() {
    let d = domain(json!({}));
    let max_bet: HostRule = Arc::new(|tool, action, params| {
        Box::pin(async move {
            Ok(if tool == "betfair" && action == "placeBet" && params["amount"].as_f64().unwrap_or(0.0) > 1000.0 {
                HostVerdict::Deny(None)
            } else {
                HostVerdict::Allow
            })
        })
    });
    d.add_business_rule("max_bet", max_bet.clone()).unwrap();
    assert_eq!(d.add_business_rule("max_bet", max_bet).unwrap_err().code(), crate::ErrorCode::AlreadyExists);
    d.add_business_rule(
        "broken",
        Arc::new(|_, action, _| {
            Box::pin(async move {
                if action == "explode" { Err("division by zero".to_string()) } else { Ok(HostVerdict::Allow) }
            })
        }),
    )
    .unwrap();
    let now = jiff::Timestamp::now();
    let big = json!({"amount": 1500}).as_object().unwrap().clone();
    let decision = d.decide(&call("betfair", "placeBet", "betfair.placeBet", &big), now).await;
    assert_eq!(decision.outcome, Outcome::Deny);
    assert_eq!(decision.hits[0].rule, "max_bet");
    let exploded = d.decide(&call("x", "explode", "x.explode", &big), now).await;
    assert_eq!(exploded.outcome, Outcome::Deny);
    assert!(exploded.reason().contains("division by zero"));
    assert!(d.remove_business_rule("broken"));
    assert!(!d.remove_business_rule("broken"));
}

#[test]
fn approvals_resolve_once() {
    let a = Approvals::default();
    let (info, mut rx) = a.request("bank.transfer", Some("acme"), None, "restricted".into());
    assert_eq!(a.list(true).len(), 1);
    assert_eq!(a.resolve(&info.id, true, Some("ok")).unwrap().status, ApprovalStatus::Approved);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), ApprovalStatus::Approved);
    assert_eq!(a.resolve(&info.id, false, None).unwrap_err().code(), crate::ErrorCode::InvalidArgument);
    assert_eq!(a.resolve("apr_nope", true, None).unwrap_err().code(), crate::ErrorCode::NotFound);
    assert!(a.list(true).is_empty());
    assert_eq!(a.list(false).len(), 1);
}

/// A rule set drawn from deny / escalate / allow conditions over `params.x`.
fn arb_rules() -> impl Strategy<Value = Vec<(u8, i64)>> {
    prop::collection::vec((0u8..4, -5i64..5), 0..8)
}

fn rules_config(rules: &[(u8, i64)]) -> Value {
    let list: Vec<Value> = rules
        .iter()
        .enumerate()
        .map(|(i, (kind, k))| match kind {
            0 => json!({"name": format!("r{i}"), "deny_if": format!("params.x > {k}")}),
            1 => json!({"name": format!("r{i}"), "escalate_if": format!("params.x > {k}")}),
            2 => json!({"name": format!("r{i}"), "deny_if": "params.missing > 1"}), // always errors
            _ => json!({"name": format!("r{i}"), "deny_if": format!("params.x > {k} && params.x < 100")}), // CEL
        })
        .collect();
    json!({ "rules": list })
}

proptest! {
    #[test]
    fn decisions_are_order_independent_and_deny_wins(rules in arb_rules(), x in -6i64..6, seed in any::<u64>()) {
        let mut shuffled = rules.clone();
        let n = shuffled.len();
        for i in (1..n).rev() { shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % (i + 1)); }
        let params = json!({"x": x}).as_object().unwrap().clone();
        let now = jiff::Timestamp::now();
        let a = block(domain(rules_config(&rules)).decide(&call("m", "t", "m.t", &params), now));
        let b = block(domain(rules_config(&shuffled)).decide(&call("m", "t", "m.t", &params), now));
        prop_assert_eq!(a.outcome, b.outcome);
        let denies = rules.iter().any(|(kind, k)| matches!(kind, 0 | 3) && x > *k || *kind == 2);
        let escalates = rules.iter().any(|(kind, k)| *kind == 1 && x > *k);
        let expected = if denies { Outcome::Deny } else if escalates { Outcome::Escalate } else { Outcome::Allow };
        prop_assert_eq!(a.outcome, expected);
    }

    #[test]
    fn a_denied_rate_limit_check_consumes_nothing(limits in prop::collection::vec(1u32..4, 1..4), calls in 1usize..12) {
        let specs: Vec<Value> = limits.iter().enumerate().map(|(i, l)| json!({
            "match": {"tool": "m"}, "per": if i % 2 == 0 { "tenant" } else { "global" }, "limit": l, "window": "1h"
        })).collect();
        let d = domain(json!({"rate_limits": specs}));
        let p = Map::new();
        let c = call("m", "t", "m.t", &p);
        let budget = *limits.iter().min().unwrap() as usize;
        let passed = (0..calls).filter(|_| d.limits.acquire(&c).is_ok()).count();
        // Exactly the smallest budget passes, however many calls were denied on the way.
        prop_assert_eq!(passed, calls.min(budget));
    }
}
