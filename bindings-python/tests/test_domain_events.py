"""Domain layer and events from Python: business rules (sync and async, many threads,
errors fail closed), Decision, dry-run checks, config rules (permissions, CEL, rate
limits, security levels), approvals, error attributes, event subscriptions (sync and
async, failures counted and logged), history, metrics, and that every stored callable
is released (weakref + gc)."""

import asyncio
import gc
import logging
import threading
import time
import weakref

import pytest

import utp

BETFAIR_CONFIG = {
    "permissions": {"betfair": {"enabled": True, "allowed_actions": ["listMarkets", "getOdds", "placeBet"]}},
    "business_rules": {"max_bet_amount": 1000},
}


def place_bet(args):
    return {"placed": True, "amount": args.get("amount")}


def betfair_engine(config=None):
    engine = utp.Engine(config if config is not None else BETFAIR_CONFIG)
    engine.register_tool("betfair.placeBet", place_bet)
    engine.register_tool("betfair.listMarkets", lambda args: ["m1", "m2"])
    engine.register_tool("betfair.cancelBet", lambda args: "cancelled")
    return engine


@pytest.fixture
def betting():
    engine = betfair_engine()
    yield engine
    engine.close()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def collect():
    for _ in range(3):
        gc.collect()
        utp.Engine().close()  # lets the interpreter run deferred reference drops


# ---------------------------------------------------------------------------
# The original UTP examples, verbatim
# ---------------------------------------------------------------------------


def test_original_utp_max_bet_rule_and_bet_placed_subscriber(betting):
    engine = betting

    def max_bet_rule(tool, action, params):
        return not (tool == "betfair" and action == "placeBet" and params.get("amount", 0) > 1000)

    engine.domain_layer.add_business_rule("max_bet", max_bet_rule)

    bets = []

    async def on_bet_placed(event):
        bets.append(event)

    engine.event_bus.subscribe("tool.succeeded", on_bet_placed)
    # Workflows do not exist yet: a valid future event type is accepted all the same.
    future = engine.event_bus.subscribe("step.completed", on_bet_placed)
    assert isinstance(future, utp.Subscription)

    with pytest.raises(utp.PermissionDeniedError) as info:
        engine.call_tool("betfair.placeBet", {"amount": 1500})
    assert "max_bet" in str(info.value)
    assert info.value.code == "PERMISSION_DENIED"

    assert engine.call_tool("betfair.placeBet", {"amount": 500}) == {"placed": True, "amount": 500}
    assert engine.event_bus.flush()
    assert [e["type"] for e in bets] == ["tool.succeeded"]
    assert bets[0]["tool"] == "betfair.placeBet"


# ---------------------------------------------------------------------------
# Business rules
# ---------------------------------------------------------------------------


def test_rule_arguments_are_manual_action_and_params(betting):
    seen = []

    def spy(tool, action, params):
        seen.append((tool, action, params))
        return True

    betting.domain_layer.add_business_rule("spy", spy)
    betting.call_tool("betfair.placeBet", {"amount": 5, "market": "m1"})
    betting.call_tool("betfair.listMarkets")
    assert seen == [("betfair", "placeBet", {"amount": 5, "market": "m1"}), ("betfair", "listMarkets", {})]


def test_decision_objects():
    allow, deny, esc = utp.Decision.allow(), utp.Decision.deny("too big"), utp.Decision.escalate()
    assert (allow.kind, allow.reason) == ("allow", None)
    assert (deny.kind, deny.reason) == ("deny", "too big")
    assert (esc.kind, esc.reason) == ("escalate", None)
    assert utp.Decision.deny(reason="x") == utp.Decision.deny("x")
    assert utp.Decision.deny("x") != utp.Decision.deny("y")
    assert len({utp.Decision.allow(), utp.Decision.allow()}) == 1
    assert repr(deny) == "Decision.deny(reason='too big')"
    assert repr(allow) == "Decision.allow()"


def test_rule_returning_a_decision_with_a_reason(betting):
    def limits(tool, action, params):
        if params.get("amount", 0) > 100:
            return utp.Decision.deny(reason="bets over 100 need a premium account")
        return utp.Decision.allow()

    betting.domain_layer.add_business_rule("premium", limits)
    with pytest.raises(utp.PermissionDeniedError, match="bets over 100 need a premium account"):
        betting.call_tool("betfair.placeBet", {"amount": 101})
    assert betting.call_tool("betfair.placeBet", {"amount": 99})["placed"]


def test_async_def_rule(betting):
    calls = []

    async def remote_limit(tool, action, params):
        await asyncio.sleep(0.01)
        calls.append(action)
        return params.get("amount", 0) <= 10

    betting.domain_layer.add_business_rule("remote_limit", remote_limit)
    assert betting.call_tool("betfair.placeBet", {"amount": 10})["placed"]
    with pytest.raises(utp.PermissionDeniedError, match="remote_limit"):
        betting.call_tool("betfair.placeBet", {"amount": 11})
    assert calls == ["placeBet", "placeBet"]


def test_rule_exception_denies_and_names_rule_and_exception(betting, caplog):
    def broken(tool, action, params):
        raise ValueError("no odds feed")

    async def broken_async(tool, action, params):
        raise KeyError("market")

    betting.domain_layer.add_business_rule("odds_check", broken)
    with caplog.at_level(logging.WARNING, logger="utp.rules"):
        with pytest.raises(utp.PermissionDeniedError) as info:
            betting.call_tool("betfair.placeBet", {"amount": 1})
    message = str(info.value)
    assert "odds_check" in message and "ValueError: no odds feed" in message, message
    assert any("odds_check" in r.getMessage() and r.exc_info for r in caplog.records)
    betting.domain_layer.remove_business_rule("odds_check")

    betting.domain_layer.add_business_rule("market_check", broken_async)
    with pytest.raises(utp.PermissionDeniedError, match=r"market_check.*KeyError"):
        betting.call_tool("betfair.placeBet", {"amount": 1})


@pytest.mark.parametrize("returned", [None, 1, "yes", [True], {"allow": True}])
def test_rule_with_a_wrong_return_type_denies(betting, returned):
    betting.domain_layer.add_business_rule("sloppy", lambda tool, action, params: returned)
    with pytest.raises(utp.PermissionDeniedError) as info:
        betting.call_tool("betfair.listMarkets")
    message = str(info.value)
    assert "sloppy" in message and type(returned).__name__ in message and "bool or a utp.Decision" in message


def test_rule_that_takes_too_long_denies(betting):
    betting.domain_layer.add_business_rule("slow", lambda t, a, p: time.sleep(1) or True, timeout=0.1)
    start = time.monotonic()
    with pytest.raises(utp.PermissionDeniedError, match=r"slow.*did not answer within 0\.100 s"):
        betting.call_tool("betfair.listMarkets")
    assert time.monotonic() - start < 0.9


def test_remove_business_rule(betting):
    betting.domain_layer.add_business_rule("closed", lambda t, a, p: False)
    with pytest.raises(utp.PermissionDeniedError):
        betting.call_tool("betfair.listMarkets")
    assert betting.domain_layer.remove_business_rule("closed") is True
    assert betting.domain_layer.remove_business_rule("closed") is False
    assert betting.call_tool("betfair.listMarkets") == ["m1", "m2"]
    # the name is free again
    betting.domain_layer.add_business_rule("closed", lambda t, a, p: True)


def test_bad_rule_arguments(betting):
    layer = betting.domain_layer
    with pytest.raises(utp.InvalidArgumentError, match="callable"):
        layer.add_business_rule("x", 42)
    with pytest.raises(utp.InvalidArgumentError, match="name"):
        layer.add_business_rule("", lambda t, a, p: True)
    with pytest.raises(utp.InvalidArgumentError, match="name"):
        layer.add_business_rule("   ", lambda t, a, p: True)
    layer.add_business_rule("once", lambda t, a, p: True)
    with pytest.raises(utp.AlreadyExistsError, match="once"):
        layer.add_business_rule("once", lambda t, a, p: False)
    assert betting.call_tool("betfair.listMarkets") == ["m1", "m2"]  # the first one stays
    with pytest.raises(TypeError):
        layer.add_business_rule(None, lambda t, a, p: True)
    with pytest.raises(TypeError):
        layer.remove_business_rule(7)
    for bad in [0, -1.0, float("nan")]:
        with pytest.raises(utp.InvalidArgumentError, match="timeout"):
            layer.add_business_rule("t", lambda t, a, p: True, timeout=bad)
    with pytest.raises(utp.NotFoundError):
        layer.check("nope.tool")
    with pytest.raises(utp.InvalidArgumentError, match="dict"):
        layer.check("betfair.placeBet", [1, 2])


def test_rules_from_32_threads(betting):
    lock = threading.Lock()
    counted = {"n": 0}
    threads_seen = set()

    def counting_rule(tool, action, params):
        with lock:
            counted["n"] += 1
            threads_seen.add(threading.get_ident())
        return params.get("amount", 0) <= 1000

    betting.domain_layer.add_business_rule("counting", counting_rule)
    outcomes = {}
    errors = []

    def worker(i):
        try:
            got = []
            for j in range(10):
                amount = 2000 if (i + j) % 2 else 10
                try:
                    betting.call_tool("betfair.placeBet", {"amount": amount})
                    got.append("ok")
                except utp.PermissionDeniedError:
                    got.append("denied")
            outcomes[i] = got
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert counted["n"] == 320
    for i in range(32):
        assert outcomes[i] == ["denied" if (i + j) % 2 else "ok" for j in range(10)]
    assert threading.get_ident() not in threads_seen  # rules run on engine threads
    metrics = betting.metrics()["tools"]["betfair.placeBet"]
    assert metrics["policy_denied"] == 160 and metrics["calls"]["succeeded"] == 160


def test_check_is_a_dry_run(betting):
    calls = []
    betting.register_tool("betfair.getOdds", lambda args: calls.append(args) or 1.5)
    betting.domain_layer.add_business_rule("max_bet", lambda t, a, p: p.get("amount", 0) <= 1000)
    denied = betting.domain_layer.check("betfair.placeBet", {"amount": 1500})
    assert denied["decision"] == "deny"
    assert denied["tool"] == "betfair.placeBet"
    assert [r["rule"] for r in denied["rules"]] == ["max_bet"]
    assert "max_bet" in denied["reason"]
    assert denied["security_level"] == "safe"
    assert denied["rate_limited"] is None
    allowed = betting.domain_layer.check("betfair.getOdds")
    assert allowed["decision"] == "allow" and allowed["rules"] == [] and allowed["reason"] is None
    assert calls == []  # nothing was called
    assert betting.event_bus.history(type="policy.denied") == []  # and nothing was published
    assert asyncio.run(betting.domain_layer.check_async("betfair.placeBet", {"amount": 1}))["decision"] == "allow"


# ---------------------------------------------------------------------------
# Config rules (docs/design.md §6)
# ---------------------------------------------------------------------------


def test_permissions_disabled_and_allowed_actions():
    with betfair_engine({"permissions": {"betfair": {"enabled": False}}}) as engine:
        with pytest.raises(utp.PermissionDeniedError, match="disabled"):
            engine.call_tool("betfair.listMarkets")
    with betfair_engine() as engine:
        assert engine.call_tool("betfair.listMarkets") == ["m1", "m2"]
        with pytest.raises(utp.PermissionDeniedError, match="cancelBet") as info:
            engine.call_tool("betfair.cancelBet")
        assert "allowed actions" in str(info.value)


def test_cel_deny_if_with_constants():
    config = dict(BETFAIR_CONFIG)
    config["rules"] = [
        {
            "name": "max_bet",
            "match": {"tool": "betfair", "action": "placeBet"},
            "deny_if": "params.amount > constants.max_bet_amount",
            "message": "bets above {{constants.max_bet_amount}} are not allowed",
        }
    ]
    with betfair_engine(config) as engine:
        with pytest.raises(utp.PermissionDeniedError, match="bets above 1000 are not allowed"):
            engine.call_tool("betfair.placeBet", {"amount": 1500})
        assert engine.call_tool("betfair.placeBet", {"amount": 500}) == {"placed": True, "amount": 500}
        check = engine.domain_layer.check("betfair.placeBet", {"amount": 1500})
        assert check["decision"] == "deny" and check["rules"][0]["rule"] == "max_bet"


def test_rate_limit_error_carries_retry_after():
    config = dict(BETFAIR_CONFIG)
    config["rate_limits"] = [{"match": {"tool": "betfair", "action": "placeBet"}, "per": "tenant", "limit": 2, "window": "10s"}]
    with betfair_engine(config) as engine:
        for _ in range(2):
            engine.call_tool("betfair.placeBet", {"amount": 1}, tenant="acme")
        with pytest.raises(utp.RateLimitedError) as info:
            engine.call_tool("betfair.placeBet", {"amount": 1}, tenant="acme")
        err = info.value
        assert err.code == "RATE_LIMITED"
        assert isinstance(err.retry_after, float) and 0 < err.retry_after <= 10
        assert engine.call_tool("betfair.placeBet", {"amount": 1}, tenant="other")["placed"]  # per tenant
        assert engine.domain_layer.check("betfair.placeBet", {"amount": 1}, tenant="acme")["rate_limited"]
        assert engine.metrics()["tools"]["betfair.placeBet"]["rate_limited"] == 1
        assert [e["tenant"] for e in engine.event_bus.history(type="ratelimit.limited")] == ["acme"]
    assert utp.RateLimitedError.retry_after is None  # the class default


def test_rate_limit_per_user():
    config = {"rate_limits": [{"match": {"tool": "betfair"}, "per": "user", "limit": 1, "window": "10s"}]}
    with betfair_engine(config) as engine:
        engine.call_tool("betfair.listMarkets", user="ann")
        engine.call_tool("betfair.listMarkets", user="bob")
        with pytest.raises(utp.RateLimitedError):
            engine.call_tool("betfair.listMarkets", user="ann")


# ---------------------------------------------------------------------------
# Approvals
# ---------------------------------------------------------------------------

RESTRICTED = {"security": {"levels": {"betfair.placeBet": "restricted"}}}


def test_approval_required_then_approve_and_call_again():
    with betfair_engine(RESTRICTED) as engine:
        with pytest.raises(utp.ApprovalRequiredError) as info:
            engine.call_tool("betfair.placeBet", {"amount": 5}, fail_fast_on_approval=True)
        err = info.value
        assert err.code == "APPROVAL_REQUIRED"
        assert isinstance(err.approval_id, str) and err.approval_id in str(err)
        pending = engine.approvals(pending_only=True)
        assert [a["id"] for a in pending] == [err.approval_id]
        assert pending[0]["tool"] == "betfair.placeBet" and pending[0]["status"] == "pending"
        # not approved yet: the id does not let the call through
        with pytest.raises(utp.UtpError):
            engine.call_tool("betfair.placeBet", {"amount": 5}, approval_id=err.approval_id)
        approved = engine.approve(err.approval_id, reason="checked by ops")
        assert approved["status"] == "approved" and approved["resolution_reason"] == "checked by ops"
        assert engine.approvals(pending_only=True) == []
        assert len(engine.approvals()) == 1
        assert engine.call_tool("betfair.placeBet", {"amount": 5}, approval_id=err.approval_id)["placed"]
        # an approval lets one call through
        with pytest.raises(utp.UtpError):
            engine.call_tool("betfair.placeBet", {"amount": 5}, approval_id=err.approval_id)
        with pytest.raises(utp.NotFoundError):
            engine.approve("apr_nope")
        kinds = [e["type"] for e in engine.event_bus.history(type="approval.*")]
        assert kinds[:2] == ["approval.requested", "approval.resolved"]
    assert utp.ApprovalRequiredError.approval_id is None


def test_waiting_call_is_released_by_approve_from_another_thread():
    with betfair_engine(RESTRICTED) as engine:
        result = {}

        def caller():
            try:
                result["value"] = engine.call_tool("betfair.placeBet", {"amount": 7}, timeout=20)
            except Exception as e:  # pragma: no cover - asserted below
                result["error"] = e

        t = threading.Thread(target=caller)
        t.start()
        assert wait_for(lambda: engine.approvals(pending_only=True))
        engine.approve(engine.approvals(pending_only=True)[0]["id"])
        t.join(10)
        assert result == {"value": {"placed": True, "amount": 7}}

        errors = []

        def refused_caller():
            try:
                engine.call_tool("betfair.placeBet", {"amount": 8}, timeout=20)
            except utp.PermissionDeniedError as e:
                errors.append(e)

        t = threading.Thread(target=refused_caller)
        t.start()
        assert wait_for(lambda: engine.approvals(pending_only=True))
        engine.approve(engine.approvals(pending_only=True)[0]["id"], approved=False, reason="too risky")
        t.join(10)
        assert len(errors) == 1 and "too risky" in str(errors[0])


def test_rule_escalation_goes_through_approve():
    with betfair_engine({}) as engine:
        engine.domain_layer.add_business_rule(
            "big_bets", lambda t, a, p: utp.Decision.escalate("big bet") if p.get("amount", 0) > 100 else True
        )
        assert engine.call_tool("betfair.placeBet", {"amount": 10})["placed"]
        with pytest.raises(utp.ApprovalRequiredError, match="big bet") as info:
            engine.call_tool("betfair.placeBet", {"amount": 500}, fail_fast_on_approval=True)
        engine.approve(info.value.approval_id)
        assert engine.call_tool("betfair.placeBet", {"amount": 500}, approval_id=info.value.approval_id)["placed"]


def test_call_tool_async_keywords():
    async def main():
        with betfair_engine(RESTRICTED) as engine:
            with pytest.raises(utp.ApprovalRequiredError) as info:
                await engine.call_tool_async("betfair.placeBet", {"amount": 1}, fail_fast_on_approval=True, user="ann")
            await engine.approve_async(info.value.approval_id)
            return await engine.call_tool_async("betfair.placeBet", {"amount": 1}, approval_id=info.value.approval_id)

    assert asyncio.run(main()) == {"placed": True, "amount": 1}


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


def test_events_of_calls_and_denials(betting):
    everything = []
    sub = betting.event_bus.subscribe("*", everything.append)
    betting.domain_layer.add_business_rule("max_bet", lambda t, a, p: p.get("amount", 0) <= 1000)
    betting.call_tool("betfair.placeBet", {"amount": 10}, tenant="acme", session="s1")
    with pytest.raises(utp.PermissionDeniedError):
        betting.call_tool("betfair.placeBet", {"amount": 1500}, tenant="acme")
    assert betting.event_bus.flush()
    kinds = [e["type"] for e in everything]
    assert kinds == ["tool.called", "tool.succeeded", "policy.denied"]
    called = everything[0]
    assert called["tool"] == "betfair.placeBet" and called["tenant"] == "acme" and called["session_id"] == "s1"
    assert "amount" not in str(called["data"])  # arguments never appear in events
    denied = everything[2]
    assert denied["data"]["decision"] == "deny"
    assert [r["rule"] for r in denied["data"]["rules"]] == ["max_bet"]
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert sub.unsubscribe() is True

    text = betting.metrics_text()
    assert 'utp_policy_denied_total{tool="betfair.placeBet"} 1' in text
    assert 'utp_tool_calls_total{tool="betfair.placeBet",outcome="success"} 1' in text


def test_history_filters(betting):
    betting.call_tool("betfair.listMarkets", tenant="a")
    betting.call_tool("betfair.placeBet", {"amount": 1}, tenant="b")
    history = betting.event_bus.history
    assert [e["type"] for e in history(type="tool.*", tool="betfair.placeBet")] == ["tool.called", "tool.succeeded"]
    assert {e["tool"] for e in history(tenant="a")} == {"betfair.listMarkets"}
    assert len(history(limit=1)) == 1
    assert history(limit=1)[0] == history()[-1]
    every = history(limit=None)
    assert [e["type"] for e in every].count("manual.registered") == 3
    last = every[-2]["id"]
    assert [e["id"] for e in history(since=last)] == [every[-1]["id"]]
    assert history(execution_id="nope") == []
    with pytest.raises(utp.InvalidArgumentError, match="matches no event type"):
        history(type="tool.sucess")
    with pytest.raises((TypeError, OverflowError)):
        history(limit=-1)
    with pytest.raises(TypeError):
        history(limit="10")


def test_async_subscriber_and_glob_patterns(betting):
    got = []

    async def on_tool(event):
        await asyncio.sleep(0)
        got.append(event["type"])

    with betting.event_bus.subscribe("tool.*", on_tool) as sub:
        assert sub.pattern == "tool.*" and isinstance(sub.id, int)
        betting.call_tool("betfair.listMarkets")
        assert betting.event_bus.flush()
    assert got == ["tool.called", "tool.succeeded"]
    # left the with block: unsubscribed
    assert sub.unsubscribe() is False
    betting.call_tool("betfair.listMarkets")
    assert betting.event_bus.flush()
    assert got == ["tool.called", "tool.succeeded"]


def test_unsubscribe_by_id_and_object(betting):
    bus = betting.event_bus
    a = bus.subscribe("tool.called", lambda e: None)
    b = bus.subscribe("tool.called", lambda e: None)
    assert bus.unsubscribe(a.id) is True
    assert bus.unsubscribe(a) is False
    assert bus.unsubscribe(b) is True
    assert bus.unsubscribe(123456) is False
    with pytest.raises(TypeError):
        bus.unsubscribe("1")
    with pytest.raises(TypeError):
        bus.unsubscribe(True)


def test_bad_subscribe_arguments(betting):
    bus = betting.event_bus
    with pytest.raises(utp.InvalidArgumentError, match="callable"):
        bus.subscribe("tool.*", None)
    with pytest.raises(utp.InvalidArgumentError, match="empty"):
        bus.subscribe("", lambda e: None)
    with pytest.raises(utp.InvalidArgumentError, match="matches no event type"):
        bus.subscribe("tool.sucess", lambda e: None)
    with pytest.raises(utp.InvalidArgumentError, match="matches no event type"):
        bus.subscribe("stp.*", lambda e: None)
    with pytest.raises(TypeError):
        bus.subscribe(42, lambda e: None)
    for ok in ["*", "step.*", "*.failed", "workflow.completed", "approval.?esolved"]:
        bus.subscribe(ok, lambda e: None).unsubscribe()
    with pytest.raises(utp.InvalidArgumentError, match="timeout"):
        bus.flush(-1)


def test_failing_subscriber_is_counted_and_logged_and_never_breaks_a_call(betting, caplog):
    def broken(event):
        raise RuntimeError("subscriber bug")

    async def broken_async(event):
        raise ValueError("async subscriber bug")

    betting.event_bus.subscribe("tool.succeeded", broken)
    betting.event_bus.subscribe("tool.succeeded", broken_async)
    with caplog.at_level(logging.ERROR, logger="utp.events"):
        for _ in range(3):
            assert betting.call_tool("betfair.listMarkets") == ["m1", "m2"]
        assert betting.event_bus.flush()
    metrics = betting.metrics()["events"]
    assert metrics["subscriber_errors"] == 6
    assert sorted(s["errors"] for s in metrics["subscribers"]) == [3, 3]
    logged = [r for r in caplog.records if r.name == "utp.events"]
    assert len(logged) == 6
    assert all(r.exc_info and r.exc_info[0] in (RuntimeError, ValueError) for r in logged)
    assert "tool.succeeded" in logged[0].getMessage()


def test_subscriber_may_call_the_engine(betting):
    follow_ups = []

    def on_denied(event):
        follow_ups.append(betting.domain_layer.check(event["tool"], {"amount": 1})["decision"])

    betting.domain_layer.add_business_rule("max_bet", lambda t, a, p: p.get("amount", 0) <= 1000)
    betting.event_bus.subscribe("policy.denied", on_denied)
    with pytest.raises(utp.PermissionDeniedError):
        betting.call_tool("betfair.placeBet", {"amount": 5000})
    assert betting.event_bus.flush()
    assert follow_ups == ["allow"]


def test_async_flush_and_metrics_shape(betting):
    betting.call_tool("betfair.listMarkets")
    assert asyncio.run(betting.event_bus.flush_async()) is True
    metrics = betting.metrics()
    assert metrics["tools"]["betfair.listMarkets"]["calls"] == {"succeeded": 1, "failed": 0}
    assert metrics["events"]["published"] >= 5
    assert "# TYPE utp_tool_calls_total counter" in betting.metrics_text()


# ---------------------------------------------------------------------------
# Lifetime: callables are released, close stops subscriptions
# ---------------------------------------------------------------------------


class Recorder:
    def __init__(self, result=True):
        self.result = result
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return self.result


def test_removed_rule_and_ended_subscription_release_their_callables(betting):
    rule, listener = Recorder(), Recorder(None)
    rule_ref, listener_ref = weakref.ref(rule), weakref.ref(listener)
    betting.domain_layer.add_business_rule("r", rule)
    sub = betting.event_bus.subscribe("tool.*", listener)
    betting.call_tool("betfair.listMarkets")
    assert betting.event_bus.flush()
    assert rule.calls == 1 and listener.calls == 2
    del rule, listener
    collect()
    assert rule_ref() is not None and listener_ref() is not None  # the engine holds them
    betting.domain_layer.remove_business_rule("r")
    sub.unsubscribe()
    collect()
    assert rule_ref() is None and listener_ref() is None


def test_close_releases_callables_and_stops_subscriptions():
    engine = betfair_engine()
    rule, listener, tool = Recorder(), Recorder(None), Recorder("ok")
    refs = [weakref.ref(x) for x in (rule, listener, tool)]
    engine.domain_layer.add_business_rule("r", rule)
    sub = engine.event_bus.subscribe("*", listener)
    engine.register_tool("t.tool", tool)
    engine.call_tool("t.tool")
    assert engine.event_bus.flush()
    delivered = listener.calls
    del rule, listener, tool
    engine.close()
    collect()
    assert [r() for r in refs] == [None, None, None]
    assert sub.unsubscribe() is False
    with pytest.raises(utp.InvalidArgumentError, match="closed"):
        engine.event_bus.subscribe("*", lambda e: None)
    with pytest.raises(utp.InvalidArgumentError, match="closed"):
        engine.domain_layer.add_business_rule("x", lambda t, a, p: True)
    assert delivered > 0


def test_engine_dropped_without_close_releases_callables():
    engine = betfair_engine()
    rule, listener = Recorder(), Recorder(None)
    refs = [weakref.ref(rule), weakref.ref(listener)]
    engine.domain_layer.add_business_rule("r", rule)
    engine.event_bus.subscribe("*", listener)
    engine.call_tool("betfair.listMarkets")
    del rule, listener, engine
    collect()
    assert [r() for r in refs] == [None, None]


def test_cycles_through_the_engine_are_collected():
    engine = betfair_engine()
    engine_ref = weakref.ref(engine)

    def rule(tool, action, params):  # refers to the engine: engine -> rule -> engine
        return engine.closed is False

    def listener(event):
        engine.metrics()

    rule_ref, listener_ref = weakref.ref(rule), weakref.ref(listener)
    engine.domain_layer.add_business_rule("self_ref", rule)
    sub = engine.event_bus.subscribe("tool.*", listener)
    assert engine.call_tool("betfair.listMarkets") == ["m1", "m2"]
    assert engine.event_bus.flush()
    del rule, listener, sub, engine
    collect()
    assert engine_ref() is None
    assert rule_ref() is None and listener_ref() is None


def test_deregistering_a_manual_releases_its_tool_functions(engine):
    fn = Recorder("x")
    ref = weakref.ref(fn)
    engine.register_tool("m.fn", fn)
    del fn
    assert engine.deregister_manual("m") is True
    collect()
    assert ref() is None
