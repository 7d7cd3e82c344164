//! The domain layer through `call_tool`: the original UTP config shape, CEL rules,
//! host rules, rate limits, security levels and approvals, with the events each
//! decision publishes. Native tools count their runs, so "denied" also means "never ran".

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{Value, json};
use utp_core::{ApprovalStatus, CallOptions, Engine, ErrorCode, HistoryFilter, HostRule, HostVerdict, NativeHandler};

/// The original UTP example: betfair with allowed actions and a max bet constant.
fn betting_config() -> Value {
    json!({
        "permissions": {"betfair": {"enabled": true, "allowed_actions": ["listMarkets", "placeBet"]}},
        "business_rules": {"max_bet_amount": 1000},
        "rules": [{
            "name": "max_bet",
            "match": {"tool": "betfair", "action": "placeBet"},
            "deny_if": "params.amount > constants.max_bet_amount",
            "message": "bets above {{constants.max_bet_amount}} are not allowed"
        }]
    })
}

/// An engine with `betfair.{listMarkets,placeBet,cashOut}` native tools; the counter
/// counts tool runs.
fn betting_engine(config: Value) -> (Engine, Arc<AtomicUsize>) {
    let engine = Engine::from_json(config).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    for name in ["betfair.listMarkets", "betfair.placeBet", "betfair.cashOut"] {
        let runs = runs.clone();
        let handler: NativeHandler = Arc::new(move |args| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move { Ok(json!({"ok": true, "args": args})) }.boxed()
        });
        engine.register_tool(name, handler, None, None, "", vec![]).unwrap();
    }
    (engine, runs)
}

fn with_tenant(tenant: &str) -> CallOptions {
    CallOptions { tenant: Some(tenant.into()), ..CallOptions::default() }
}

fn events_of(engine: &Engine, kind: &str) -> Vec<Value> {
    let filter = HistoryFilter { kind: Some(kind.into()), ..HistoryFilter::default() };
    engine.history(&filter).iter().map(|e| e.to_value()).collect()
}

#[tokio::test]
async fn original_utp_config_denies_big_bets_and_unlisted_actions() {
    let (e, runs) = betting_engine(betting_config());
    let bet = |amount: f64| json!({"market": "m1", "amount": amount});

    let ok = e.call_tool("betfair.placeBet", bet(500.0), CallOptions::default()).await.unwrap();
    assert_eq!(ok["ok"], true);
    // Exactly the limit passes: 1000.0 > 1000 is false.
    e.call_tool("betfair.placeBet", bet(1000.0), CallOptions::default()).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    let err = e.call_tool("betfair.placeBet", bet(1500.0), with_tenant("acme")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert!(
        err.to_string().contains("bets above 1000 are not allowed") && err.to_string().contains("max_bet"),
        "{err}"
    );
    // An action outside allowed_actions is denied even with harmless arguments.
    let err = e.call_tool("betfair.cashOut", json!({}), CallOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert!(err.to_string().contains("cashOut"), "{err}");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "a denied call never reaches its tool");

    // One policy.denied event per denial, naming the deciding rule; no tool.called for them.
    let denied = events_of(&e, "policy.denied");
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert_eq!(denied[0]["tool"], "betfair.placeBet");
    assert_eq!(denied[0]["tenant"], "acme");
    assert_eq!(denied[0]["data"]["decision"], "deny");
    assert_eq!(denied[0]["data"]["rules"][0]["rule"], "max_bet");
    assert_eq!(denied[1]["data"]["rules"][0]["rule"], "permissions");
    assert!(!denied[0].to_string().contains("1500"), "arguments stay out of events: {}", denied[0]);
    let called = events_of(&e, "tool.called");
    assert_eq!(called.len(), 2);
    assert_eq!(called[0]["data"]["decision"], "allow", "an allowed call is audited on tool.called");
    assert!(e.metrics_text().contains("utp_policy_denied_total"), "{}", e.metrics_text());
}

#[tokio::test]
async fn disabled_manual_and_tenant_overrides() {
    let config = json!({"permissions": {"betfair": {
        "enabled": false,
        "tenants": {"vip": {"enabled": true, "allowed_actions": ["listMarkets"]}}
    }}});
    let (e, runs) = betting_engine(config);
    let err = e.call_tool("betfair.listMarkets", json!({}), CallOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert!(err.to_string().contains("disabled"), "{err}");
    e.call_tool("betfair.listMarkets", json!({}), with_tenant("vip")).await.unwrap();
    let err = e.call_tool("betfair.placeBet", json!({}), with_tenant("vip")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn host_rules_deny_escalate_and_fail_closed() {
    let (e, runs) = betting_engine(json!({}));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let max_bet: HostRule = Arc::new(move |tool, action, params| {
        seen2.lock().push((tool.clone(), action.clone()));
        let big = params["amount"].as_f64().unwrap_or(0.0) > 1000.0;
        async move {
            Ok(if tool == "betfair" && action == "placeBet" && big {
                HostVerdict::Deny(None)
            } else {
                HostVerdict::Allow
            })
        }
        .boxed()
    });
    e.add_business_rule("max_bet", max_bet.clone()).unwrap();
    assert_eq!(e.add_business_rule("max_bet", max_bet).unwrap_err().code(), ErrorCode::AlreadyExists);
    let empty: HostRule = Arc::new(|_, _, _| async { Ok(HostVerdict::Allow) }.boxed());
    assert_eq!(e.add_business_rule(" ", empty).unwrap_err().code(), ErrorCode::InvalidArgument);

    let err = e.call_tool("betfair.placeBet", json!({"amount": 1500}), CallOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert!(err.to_string().contains("max_bet"), "{err}");
    e.call_tool("betfair.placeBet", json!({"amount": 500}), CallOptions::default()).await.unwrap();
    assert_eq!(seen.lock()[0], ("betfair".to_string(), "placeBet".to_string()), "rules get (manual, action)");

    // A failing rule denies and says which rule failed and why.
    let broken: HostRule = Arc::new(|_, _, _| async { Err("lookup service down".to_string()) }.boxed());
    e.add_business_rule("credit_check", broken).unwrap();
    let err = e.call_tool("betfair.listMarkets", json!({}), CallOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert!(err.to_string().contains("credit_check") && err.to_string().contains("lookup service down"), "{err}");
    assert!(e.remove_business_rule("credit_check"));
    assert!(!e.remove_business_rule("credit_check"));
    e.call_tool("betfair.listMarkets", json!({}), CallOptions::default()).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn rate_limits_report_retry_after_and_count_nothing_when_denied() {
    let config = json!({"rate_limits": [
        {"match": {"tool": "betfair", "action": "placeBet"}, "per": "tenant", "limit": 2, "window": "10s"}
    ]});
    let (e, runs) = betting_engine(config);
    for _ in 0..2 {
        e.call_tool("betfair.placeBet", json!({}), with_tenant("a")).await.unwrap();
    }
    let err = e.call_tool("betfair.placeBet", json!({}), with_tenant("a")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RateLimited);
    let retry = err.retry_after().expect("retry-after");
    assert!(retry > Duration::ZERO && retry <= Duration::from_secs(10), "{retry:?}");
    // Another tenant has its own budget; other actions are not limited.
    e.call_tool("betfair.placeBet", json!({}), with_tenant("b")).await.unwrap();
    e.call_tool("betfair.listMarkets", json!({}), with_tenant("a")).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    let limited = events_of(&e, "ratelimit.limited");
    assert_eq!(limited.len(), 1);
    assert!(limited[0]["data"]["retry_after_ms"].as_u64().unwrap() > 0);

    // The dry run sees the limit without using it.
    let check = e.check("betfair.placeBet", json!({}), Some("b")).await.unwrap();
    assert_eq!(check["decision"], "allow");
    assert!(check["rate_limited"].is_null(), "{check}");
    e.call_tool("betfair.placeBet", json!({}), with_tenant("b")).await.unwrap();
    let check = e.check("betfair.placeBet", json!({}), Some("b")).await.unwrap();
    assert!(check["rate_limited"]["retry_after_ms"].as_u64().is_some(), "{check}");
}

#[tokio::test]
async fn restricted_tools_wait_for_an_approval() {
    let config = json!({"security": {"levels": {"betfair.placeBet": "restricted"}}});
    let (e, runs) = betting_engine(config);
    let caller = {
        let e = e.clone();
        tokio::spawn(async move { e.call_tool("betfair.placeBet", json!({"amount": 5}), with_tenant("acme")).await })
    };
    let pending = loop {
        if let Some(a) = e.approvals(true).into_iter().next() {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(pending.tool, "betfair.placeBet");
    assert_eq!(pending.tenant.as_deref(), Some("acme"));
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing runs before the approval");
    let resolved = e.approve(&pending.id, true, Some("looks fine")).unwrap();
    assert_eq!(resolved.status, ApprovalStatus::Approved);
    caller.await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(e.approvals(true).is_empty());
    assert_eq!(e.approve(&pending.id, true, None).unwrap_err().code(), ErrorCode::InvalidArgument, "resolved once");
    assert_eq!(e.approve("no-such-id", true, None).unwrap_err().code(), ErrorCode::NotFound);
    let called = events_of(&e, "tool.called");
    assert_eq!(called[0]["data"]["approval_id"], pending.id.as_str());

    // A refused approval denies the waiting call.
    let caller = {
        let e = e.clone();
        tokio::spawn(async move { e.call_tool("betfair.placeBet", json!({}), CallOptions::default()).await })
    };
    let pending = loop {
        if let Some(a) = e.approvals(true).into_iter().next() {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    e.approve(&pending.id, false, Some("too risky")).unwrap();
    let err = caller.await.unwrap().unwrap_err();
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
    assert!(err.to_string().contains("too risky"), "{err}");

    // Nobody answers: the call times out and the tool never ran.
    let options = CallOptions { timeout: Some(Duration::from_millis(50)), ..CallOptions::default() };
    let err = e.call_tool("betfair.placeBet", json!({}), options).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(events_of(&e, "approval.requested").len(), 3);
    assert_eq!(events_of(&e, "approval.resolved").len(), 2);
}

#[tokio::test]
async fn fail_fast_approvals_are_used_once_and_only_for_their_tool() {
    let config = json!({"security": {"levels": {"betfair": "dangerous"}}});
    let (e, runs) = betting_engine(config);
    let fail_fast = CallOptions { fail_fast_on_approval: true, ..CallOptions::default() };
    let err = e.call_tool("betfair.placeBet", json!({}), fail_fast.clone()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ApprovalRequired);
    let id = err.approval_id().expect("approval id").to_string();
    assert!(err.to_string().contains(&id));

    // Not yet approved: the id does not let the call through.
    let with_id = CallOptions { approval_id: Some(id.clone()), ..CallOptions::default() };
    let err = e.call_tool("betfair.placeBet", json!({}), with_id.clone()).await.unwrap_err();
    assert_eq!((err.code(), err.approval_id()), (ErrorCode::ApprovalRequired, Some(id.as_str())));
    let unknown = CallOptions { approval_id: Some("nope".into()), ..CallOptions::default() };
    assert_eq!(e.call_tool("betfair.placeBet", json!({}), unknown).await.unwrap_err().code(), ErrorCode::NotFound);
    e.approve(&id, true, None).unwrap();
    // An approval for placeBet does not approve cashOut ... (cashOut is dangerous too)
    let other = e.call_tool("betfair.cashOut", json!({}), with_id.clone()).await.unwrap_err();
    assert_eq!(other.code(), ErrorCode::PermissionDenied);
    e.call_tool("betfair.placeBet", json!({}), with_id.clone()).await.unwrap();
    // ... and is used once.
    assert_eq!(
        e.call_tool("betfair.placeBet", json!({}), with_id).await.unwrap_err().code(),
        ErrorCode::PermissionDenied
    );
    // Arguments cannot approve a call.
    let sneaky = json!({"approval_id": id, "approved": true});
    assert_eq!(
        e.call_tool("betfair.placeBet", sneaky, fail_fast).await.unwrap_err().code(),
        ErrorCode::ApprovalRequired
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cancelling_a_call_waiting_for_approval() {
    let config = json!({"security": {"default": "restricted"}});
    let (e, runs) = betting_engine(config);
    let token = utp_core::CancellationToken::new();
    let options = CallOptions { cancel: Some(token.clone()), ..CallOptions::default() };
    let caller = {
        let e = e.clone();
        tokio::spawn(async move { e.call_tool("betfair.listMarkets", json!({}), options).await })
    };
    while e.approvals(true).is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    token.cancel();
    assert_eq!(caller.await.unwrap().unwrap_err().code(), ErrorCode::Cancelled);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn check_is_a_dry_run_and_bad_config_is_rejected() {
    let (e, runs) = betting_engine(betting_config());
    let check = e.check("betfair.placeBet", json!({"amount": 1500}), None).await.unwrap();
    assert_eq!(check["decision"], "deny");
    assert_eq!(check["tool"], "betfair.placeBet");
    assert_eq!(check["rules"][0]["rule"], "max_bet");
    let check = e.check("betfair.placeBet", json!({"amount": 10}), None).await.unwrap();
    assert_eq!(check["decision"], "allow");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(events_of(&e, "policy.denied").is_empty(), "a dry run publishes nothing");
    assert_eq!(e.check("betfair.nope", json!({}), None).await.unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(e.check("betfair.placeBet", json!([1]), None).await.unwrap_err().code(), ErrorCode::InvalidArgument);

    for bad in [
        json!({"rules": [{"name": "r", "deny_if": "params.amount >"}]}),
        json!({"rules": [{"name": "r"}]}),
        json!({"rules": [{"name": "r", "deny_if": "true"}, {"name": "r", "deny_if": "false"}]}),
        json!({"rules": [{"name": "r", "allow_only_during": {"from": "09:00", "to": "17:00", "timezone": "Mars/Base"}}]}),
        json!({"rate_limits": [{"limit": 0, "window": "1s"}]}),
        json!({"rate_limits": [{"limit": 1, "window": "soon"}]}),
        json!({"permissions": {"betfair": {"enabeld": true}}}),
        json!({"security": {"default": "scary"}}),
    ] {
        let err = Engine::from_json(bad.clone()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad}: {err}");
    }
}

#[tokio::test]
async fn slow_host_rules_count_against_the_call_deadline_and_cancellation() {
    let (e, runs) = betting_engine(json!({}));
    let slow: HostRule = Arc::new(|_, _, _| {
        async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(HostVerdict::Allow)
        }
        .boxed()
    });
    let quick_deny: HostRule = Arc::new(|_, action, _| {
        async move {
            Ok(if action == "cashOut" {
                HostVerdict::Deny(Some("no cash-outs today".into()))
            } else {
                HostVerdict::Allow
            })
        }
        .boxed()
    });
    e.add_business_rule("quick", quick_deny).unwrap();
    e.add_business_rule("slow", slow).unwrap();
    let options = CallOptions { timeout: Some(Duration::from_millis(100)), ..CallOptions::default() };
    let started = std::time::Instant::now();
    let err = e.call_tool("betfair.listMarkets", json!({}), options).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(err.to_string().contains("business rules"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let token = utp_core::CancellationToken::new();
    let options = CallOptions { cancel: Some(token.clone()), ..CallOptions::default() };
    let caller = {
        let e = e.clone();
        tokio::spawn(async move { e.call_tool("betfair.listMarkets", json!({}), options).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    token.cancel();
    assert_eq!(caller.await.unwrap().unwrap_err().code(), ErrorCode::Cancelled);

    // Without the slow rule, the quick rule decides and its reason reaches the caller.
    assert!(e.remove_business_rule("slow"));
    let err = e.call_tool("betfair.cashOut", json!({}), CallOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("no cash-outs today"), "{err}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}
