"""Where Python tools and business rules run (docs/architecture.md, "Host callbacks on the
calling thread"): on the thread blocked in `call_tool` when nothing needs the wait to stop
at a deadline, on an engine thread otherwise; the outcome is the same either way."""

import asyncio
import textwrap
import threading
import time

import pytest

import utp
from conftest import interrupt_child


def _where(engine, rule_timeout=None, tool=None):
    """Register `t.where` (returns the thread it ran on) under a rule that records its own."""
    seen = []

    def rule(tool_, action, params):
        seen.append(threading.get_ident())
        return True

    engine.register_tool("t.where", tool or (lambda args: threading.get_ident()))
    if rule_timeout is None:
        engine.domain_layer.add_business_rule("where", rule)
    else:
        engine.domain_layer.add_business_rule("where", rule, timeout=rule_timeout)
    return seen


def test_a_blocking_call_runs_its_python_rule_and_tool_on_the_calling_thread(engine):
    seen = _where(engine)
    me = threading.get_ident()
    assert engine.call_tool("t.where") == me
    assert seen == [me]
    # The same from another thread, and from many threads at once.
    results = {}

    def worker(n):
        results[n] = [(engine.call_tool("t.where"), threading.get_ident()) for _ in range(20)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(ran == caller for calls in results.values() for ran, caller in calls)


def test_a_call_with_a_timeout_runs_its_tool_on_an_engine_thread(engine):
    seen = _where(engine)
    me = threading.get_ident()
    assert engine.call_tool("t.where", timeout=5) != me
    assert seen[-1] != me


def test_a_rule_with_a_timeout_runs_on_an_engine_thread(engine):
    seen = _where(engine, rule_timeout=5)
    me = threading.get_ident()
    assert engine.call_tool("t.where") == me
    assert seen == [seen[0]] and seen[0] != me


def test_async_def_callbacks_run_on_an_engine_thread(engine):
    async def tool(args):
        return threading.get_ident()

    async def rule(tool_, action, params):
        return threading.get_ident() != me

    me = threading.get_ident()
    engine.register_tool("t.async", tool)
    engine.domain_layer.add_business_rule("not_here", rule)
    assert engine.call_tool("t.async") != me


def test_a_config_default_timeout_keeps_callbacks_on_engine_threads():
    with utp.Engine({"calls": {"default_timeout": "5s"}}) as engine:
        seen = _where(engine)
        me = threading.get_ident()
        assert engine.call_tool("t.where") != me
        assert seen[-1] != me


def test_call_tool_async_runs_rules_on_the_loop_thread_and_tools_elsewhere(engine):
    seen = _where(engine)

    async def main():
        return await engine.call_tool_async("t.where"), threading.get_ident()

    ran, loop_thread = asyncio.run(main())
    assert seen == [loop_thread]
    assert ran != loop_thread


def test_a_tool_run_here_may_call_the_engine(engine):
    engine.register_tool("t.inner", lambda args: threading.get_ident())
    engine.register_tool("t.outer", lambda args: [threading.get_ident(), engine.call_tool("t.inner")])
    engine.domain_layer.add_business_rule("allow", lambda t, a, p: True)
    me = threading.get_ident()
    outer, inner = engine.call_tool("t.outer")
    # The outer tool runs here; the call it makes cannot be driven inside this one, so
    # its tool runs on an engine thread.
    assert outer == me and inner != me
    assert engine.call_tool("t.outer", timeout=5)[0] != me


def test_rules_run_here_decide_as_before(engine):
    engine.register_tool("t.ok", lambda args: "ok")
    layer = engine.domain_layer
    layer.add_business_rule("no_big", lambda t, a, p: p.get("n", 0) < 10)
    layer.add_business_rule("ask", lambda t, a, p: utp.Decision.escalate("ask") if p.get("ask") else True)
    layer.add_business_rule("broken", lambda t, a, p: 1 / 0 if p.get("boom") else True)
    assert engine.call_tool("t.ok", {"n": 1}) == "ok"
    with pytest.raises(utp.PermissionDeniedError, match="no_big"):
        engine.call_tool("t.ok", {"n": 11})
    with pytest.raises(utp.PermissionDeniedError, match="broken.*ZeroDivisionError"):
        engine.call_tool("t.ok", {"boom": True})
    with pytest.raises(utp.ApprovalRequiredError) as info:
        engine.call_tool("t.ok", {"ask": True}, fail_fast_on_approval=True)
    engine.approve(info.value.approval_id)
    assert engine.call_tool("t.ok", {"ask": True}, approval_id=info.value.approval_id) == "ok"
    # An escalated call waits here for an approval given from another thread.
    def approve_soon():
        while not engine.approvals(pending_only=True):
            time.sleep(0.01)
        engine.approve(engine.approvals(pending_only=True)[0]["id"])

    helper = threading.Thread(target=approve_soon)
    helper.start()
    assert engine.call_tool("t.ok", {"ask": True}) == "ok"
    helper.join()


def test_events_of_a_call_run_here_are_the_same(engine):
    engine.register_tool("t.ok", lambda args: "ok")
    engine.domain_layer.add_business_rule("allow", lambda t, a, p: True)
    kinds = []
    engine.event_bus.subscribe("tool.*", lambda ev: kinds.append(ev["type"]))
    engine.call_tool("t.ok")
    engine.event_bus.flush()
    assert kinds == ["tool.called", "tool.succeeded"]


def test_ctrl_c_interrupts_a_python_tool_run_on_the_calling_thread(tmp_path):
    setup = """
        import sys, time, utp
        engine = utp.Engine()
        engine.register_tool("slow.sleep", lambda args: time.sleep(30))
        engine.domain_layer.add_business_rule("allow", lambda t, a, p: True)
    """
    script = tmp_path / "blocked.py"
    script.write_text(
        textwrap.dedent(setup)
        + textwrap.dedent(
            """
            print("ready", flush=True)
            try:
                engine.call_tool("slow.sleep")
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(3)
            """
        )
    )
    code, out, elapsed = interrupt_child(script, settle=0.3, timeout=10)
    assert code == 3, out
    assert "interrupted" in out
    assert elapsed < 5


def test_ctrl_c_interrupts_a_python_rule_run_on_the_calling_thread(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time, utp
            engine = utp.Engine()
            engine.register_tool("t.ok", lambda args: "ok")
            engine.domain_layer.add_business_rule("slow", lambda t, a, p: time.sleep(30) or True)
            print("ready", flush=True)
            try:
                engine.call_tool("t.ok")
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(3)
            """
        )
    )
    code, out, elapsed = interrupt_child(script, settle=0.3, timeout=10)
    assert code == 3, out
    assert "interrupted" in out
    assert elapsed < 5
