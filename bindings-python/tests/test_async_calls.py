"""`Engine.call_tool_async` as a native awaitable: many calls in flight at once (text
and Python tools), results and errors identical to `call_tool`, cancellation of the
awaiting task cancels the call (a CLI tool's process is killed, a slow Python tool's
result is dropped), a loop closed under a pending call, and `close()` with calls pending."""

import asyncio
import gc
import os
import sys
import threading
import time
import weakref

import pytest

import utp

TEXT_MANUAL = {
    "tools": [
        {"name": "hello", "tool_call_template": {"call_template_type": "text", "content": "hello"}},
        {
            "name": "typed",
            "inputs": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            "tool_call_template": {"call_template_type": "text", "content": "typed"},
        },
    ]
}


def make_engine(config=None):
    engine = utp.Engine(config)
    engine.register_manual(TEXT_MANUAL, name="txt")
    engine.register_tool("py.echo", lambda args: args)

    async def adouble(args):
        await asyncio.sleep(0.001)
        return args["x"] * 2

    engine.register_tool("py.adouble", adouble)

    def boom(args):
        raise ValueError("boom " + str(args.get("i")))

    engine.register_tool("py.boom", boom)
    engine.register_tool("py.sleepy", lambda args: time.sleep(args.get("s", 2)) or "late")
    return engine


def outcome(fn, *args, **kwargs):
    """What a call gives: ("ok", value) or ("err", type, code, message, retry_after, approval_id)."""
    try:
        return ("ok", fn(*args, **kwargs))
    except utp.UtpError as e:
        return ("err", type(e), e.code, str(e), getattr(e, "retry_after", None), getattr(e, "approval_id", None))


async def outcome_async(coro):
    try:
        return ("ok", await coro)
    except utp.UtpError as e:
        return ("err", type(e), e.code, str(e), getattr(e, "retry_after", None), getattr(e, "approval_id", None))


def test_200_concurrent_text_and_python_tool_calls():
    async def main(engine):
        texts = [engine.call_tool_async("txt.hello") for _ in range(200)]
        echoes = [engine.call_tool_async("py.echo", {"i": i, "s": "ü" * (i % 3)}) for i in range(200)]
        doubles = [engine.call_tool_async("py.adouble", {"x": i}) for i in range(200)]
        start = time.monotonic()
        results = await asyncio.gather(*texts, *echoes, *doubles)
        return results, time.monotonic() - start

    with make_engine() as engine:
        results, elapsed = asyncio.run(main(engine))
        assert results[:200] == ["hello"] * 200 == [engine.call_tool("txt.hello") for _ in range(200)]
        assert results[200:400] == [{"i": i, "s": "ü" * (i % 3)} for i in range(200)]
        assert results[400:] == [engine.call_tool("py.adouble", {"x": i}) for i in range(200)]
        assert elapsed < 30


def test_many_slow_python_calls_are_in_flight_together():
    # 64 calls of a tool that sleeps 0.2 s: one after another (or 6 at a time on
    # asyncio's default thread pool) would take 2-13 s.
    async def main(engine):
        start = time.monotonic()
        results = await asyncio.gather(*(engine.call_tool_async("py.sleepy", {"s": 0.2}) for _ in range(64)))
        return results, time.monotonic() - start

    with make_engine() as engine:
        results, elapsed = asyncio.run(main(engine))
        assert results == ["late"] * 64
        assert elapsed < 1.8, elapsed


def test_results_and_errors_are_those_of_call_tool():
    config = {
        "rate_limits": [{"match": {"tool": "limited"}, "per": "tenant", "limit": 1, "window": "10s"}],
        "security": {"levels": {"guarded.op": "restricted"}},
    }
    with make_engine(config) as engine:
        engine.register_tool("limited.op", lambda args: "once")
        engine.register_tool("guarded.op", lambda args: "approved")
        cases = [
            (("txt.hello",), {}),
            (("txt.typed", {"n": 1}), {}),
            (("txt.typed", {"n": "x"}), {}),  # validation
            (("txt.typed", [1, 2]), {}),
            (("txt.hello", {1: 2}), {}),  # argument conversion
            (("txt.hello", {"x": object()}), {}),
            (("nope.tool",), {}),
            (("py.echo", {"a": [1, {"b": None}], "f": 1.5}), {}),
            (("py.boom", {"i": 3}), {}),
            (("py.sleepy", {"s": 2}), {"timeout": 0.1}),
            (("txt.hello",), {"timeout": -1.0}),
            (("txt.hello",), {"timeout": float("nan")}),
            (("py.echo",), {"tenant": "t", "session": "s", "user": "u"}),
        ]
        for args, kwargs in cases:
            expected = outcome(engine.call_tool, *args, **kwargs)
            got = asyncio.run(outcome_async(engine.call_tool_async(*args, **kwargs)))
            assert got == expected, (args, kwargs)

        # rate limit: the second call (sync or async) is refused, with retry_after
        assert asyncio.run(engine.call_tool_async("limited.op", tenant="a")) == "once"
        sync = outcome(engine.call_tool, "limited.op", tenant="a")
        aio = asyncio.run(outcome_async(engine.call_tool_async("limited.op", tenant="a")))
        assert sync[:3] == aio[:3] and sync[1] is utp.RateLimitedError
        assert sync[3].split("retry after")[0] == aio[3].split("retry after")[0]  # the wait shrinks meanwhile
        assert isinstance(aio[4], float) and 0 < aio[4] <= 10

        # approvals: fail fast with approval_id, then call again with it
        aio = asyncio.run(outcome_async(engine.call_tool_async("guarded.op", fail_fast_on_approval=True)))
        assert aio[1] is utp.ApprovalRequiredError and aio[2] == "APPROVAL_REQUIRED"
        assert isinstance(aio[5], str) and aio[5] in aio[3]
        engine.approve(aio[5])
        assert asyncio.run(engine.call_tool_async("guarded.op", approval_id=aio[5])) == "approved"


def test_a_call_waiting_for_approval_is_released_from_the_loop():
    with make_engine({"security": {"levels": {"guarded.op": "restricted"}}}) as engine:
        engine.register_tool("guarded.op", lambda args: args["n"])

        async def main():
            task = asyncio.ensure_future(engine.call_tool_async("guarded.op", {"n": 7}, timeout=20))
            for _ in range(200):
                if engine.approvals(pending_only=True):
                    break
                await asyncio.sleep(0.01)
            engine.approve(engine.approvals(pending_only=True)[0]["id"])
            return await asyncio.wait_for(task, 10)

        assert asyncio.run(main()) == 7


def sleep_processes(marker):
    """PIDs of running `sleep <marker>` processes (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv[:2] == [b"sleep", marker.encode()] and state != "Z":
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="looks for the process in /proc")
def test_cancelling_the_task_kills_a_cli_tool_process():
    marker = f"{40 + os.getpid() % 1000 / 1000:.3f}"  # a sleep no one else runs
    with utp.Engine() as engine:
        engine.register_manual(
            {"tools": [{"name": "sleep", "tool_call_template": {"call_template_type": "cli", "commands": [{"command": f"sleep {marker}"}]}}]},
            name="slow",
        )

        async def main():
            task = asyncio.ensure_future(engine.call_tool_async("slow.sleep", timeout=60))
            for _ in range(500):
                if sleep_processes(marker):
                    break
                await asyncio.sleep(0.01)
            assert sleep_processes(marker), "the tool's process did not start"
            start = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - start

        elapsed = asyncio.run(main())
        assert elapsed < 0.5
        deadline = time.monotonic() + 5
        while sleep_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleep_processes(marker) == []
        with pytest.raises(utp.TimeoutError):
            engine.call_tool("slow.sleep", timeout=0.2)


def test_cancelling_a_slow_python_tool_call_drops_its_result():
    finished = threading.Event()
    with utp.Engine() as engine:

        def slow(args):
            time.sleep(0.5)
            finished.set()
            return "late"

        engine.register_tool("t.slow", slow)

        async def main():
            task = asyncio.ensure_future(engine.call_tool_async("t.slow"))
            await asyncio.sleep(0.1)
            start = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            cancelled_in = time.monotonic() - start
            # the loop keeps running while the tool finishes; its late result is dropped
            await asyncio.sleep(0.6)
            return cancelled_in, await engine.call_tool_async("t.slow")

        cancelled_in, again = asyncio.run(main())
        assert cancelled_in < 0.2
        assert finished.is_set() and again == "late"


def test_wait_for_timeout_cancels_the_call():
    with make_engine() as engine:

        async def main():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(engine.call_tool_async("py.sleepy", {"s": 0.5}), 0.05)
            return await engine.call_tool_async("txt.hello")

        assert asyncio.run(main()) == "hello"


def test_a_closed_loop_under_a_pending_call_does_not_crash(monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with make_engine() as engine:
        loop = asyncio.new_event_loop()
        task = loop.create_task(engine.call_tool_async("py.sleepy", {"s": 0.3}))
        loop.run_until_complete(asyncio.sleep(0.05))  # the call is in flight
        assert not task.done()
        loop.close()
        time.sleep(0.6)  # `done` runs now and finds the loop closed
        assert engine.call_tool("txt.hello") == "hello"
        assert asyncio.run(engine.call_tool_async("py.echo", {"a": 1})) == {"a": 1}
        task._log_destroy_pending = False  # expected here: "Task was destroyed but it is pending"
        del task
    assert unraisable == []


def test_close_while_calls_are_pending():
    async def main():
        engine = make_engine()
        pending = [asyncio.ensure_future(engine.call_tool_async("py.sleepy", {"s": 0.2})) for _ in range(8)]
        pending.append(asyncio.ensure_future(engine.call_tool_async("txt.hello")))
        await asyncio.sleep(0.05)
        engine.close()
        assert engine.closed
        with pytest.raises(utp.InvalidArgumentError, match="closed"):
            await engine.call_tool_async("txt.hello")
        start = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
        return results, time.monotonic() - start

    results, elapsed = asyncio.run(main())
    assert results[-1] == "hello"
    for r in results[:-1]:
        # running when the engine closed: finishes; still queued: its function was released
        assert r == "late" or (isinstance(r, utp.ToolFailedError) and "released" in str(r)), r
    assert elapsed < 5


def test_call_tool_async_needs_a_running_loop():
    with make_engine() as engine:
        coro = engine.call_tool_async("txt.hello")
        with pytest.raises(RuntimeError):
            coro.send(None)  # no running event loop
        coro.close()


def test_network_calls_are_settled_in_batches_and_the_loop_is_let_go(http_server, monkeypatch):
    # Each finished call is queued on its loop's settler; one hand-over to the loop takes
    # every call queued meanwhile. Count what the hand-overs carry: each call exactly once.
    batches = []
    settle_all = utp._settle_all

    def counting(batch):
        batches.append(len(batch))
        settle_all(batch)

    monkeypatch.setattr(utp, "_settle_all", counting)
    manual = {"tools": [{"name": "get", "inputs": {"type": "object", "properties": {"i": {"type": "integer"}}},
                         "tool_call_template": {"call_template_type": "http", "url": http_server + "/items"}}]}
    with utp.Engine() as engine:
        engine.register_manual(manual, name="web")

        async def main():
            loops.append(weakref.ref(asyncio.get_running_loop()))
            ok = await asyncio.gather(*(engine.call_tool_async("web.get", {"i": i}) for i in range(100)))
            # A network call is not polled on the loop's thread: even a call refused before
            # any I/O (bad arguments) settles through the settler, with the same error.
            bad = await outcome_async(engine.call_tool_async("web.get", {"i": "one"}))
            return ok, bad

        loops = []
        ok, bad = asyncio.run(main())
        assert [r["query"] for r in ok] == [{"i": [str(i)]} for i in range(100)]
        assert bad == outcome(engine.call_tool, "web.get", {"i": "one"})
        assert bad[2] == "VALIDATION_FAILED"
        assert sum(batches) == 101 and all(n >= 1 for n in batches), batches
        # A settler holds its loop weakly: a finished loop is not kept alive (a delivery
        # thread may still be returning from handing over the last batch: give it a moment).
        deadline = time.monotonic() + 5
        while loops[0]() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
        assert loops[0]() is None
        # A second loop gets a settler of its own and works as the first.
        assert asyncio.run(engine.call_tool_async("web.get", {"i": 7}))["query"] == {"i": ["7"]}
