"""Intents from Python: a named kind of request routed to a workflow (dict, YAML text,
a path) or to a Python handler `fn(ctx, params)` (sync or `async def`) with an
`IntentContext` and the session's state; failures as `failed` records, misuse as
errors, unregistering, the asyncio twin, Ctrl-C, and handlers released to the GC."""

import asyncio
import gc
import textwrap
import threading
import time
import weakref

import pytest

import utp
from conftest import interrupt_child

SKU = {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}

RESTOCK = {
    "name": "restock",
    "inputs": {"sku": {"type": "string"}},
    "steps": [
        {"id": "stock", "tool": "shop.getInventory", "args": {"sku": "${{ inputs.sku }}"}},
        {
            "id": "update",
            "tool": "shop.setInventory",
            "depends_on": ["stock"],
            "args": {"sku": "${{ inputs.sku }}", "count": "${{ steps.stock.output.count + 10 }}"},
        },
    ],
    "outputs": {"new_count": "${{ steps.update.output.count }}"},
}


def shop_engine():
    engine = utp.Engine()
    log = []

    @engine.tool(name="shop.getInventory", inputs=SKU)
    def get_inventory(args):
        log.append(f"get {args['sku']}")
        return {"sku": args["sku"], "count": 4}

    @engine.tool(name="shop.setInventory")
    def set_inventory(args):
        log.append(f"set {args['sku']} {args['count']}")
        return {"sku": args["sku"], "count": args["count"]}

    engine.log = log
    return engine


@pytest.fixture
def shop():
    engine = shop_engine()
    yield engine
    engine.close()


def collect():
    for _ in range(3):
        gc.collect()
        utp.Engine().close()  # lets the interpreter run deferred reference drops


# ---------------------------------------------------------------------------
# Workflow intents
# ---------------------------------------------------------------------------


def test_workflow_intent_returns_the_execution_record(shop):
    shop.register_intent("restock", RESTOCK)
    record = shop.submit_intent("restock", {"sku": "Q"}, tenant="acme", session="s9")
    assert record["intent"] == "restock"
    assert record["status"] == "completed"
    assert record["outputs"] == {"new_count": 14}
    assert (record["tenant"], record["session_id"]) == ("acme", "s9")
    assert record["steps"]["update"]["output"] == {"sku": "Q", "count": 14}
    assert shop.execution(record["execution_id"])["status"] == "completed"
    assert shop.log == ["get Q", "set Q 14"]


def test_workflow_intent_from_yaml_text_and_files(shop, tmp_path):
    text = textwrap.dedent(
        """
        name: peek
        inputs:
          sku: {type: string}
        steps:
          - id: stock
            tool: shop.getInventory
            args: {sku: "${{ inputs.sku }}"}
        outputs:
          count: "${{ steps.stock.output.count }}"
        """
    )
    path = tmp_path / "peek.yaml"
    path.write_text(text)
    shop.register_intent("peek_text", text)
    shop.register_intent("peek_str_path", str(path))
    shop.register_intent("peek_path", path)
    for name in ("peek_text", "peek_str_path", "peek_path"):
        record = shop.submit_intent(name, {"sku": "A"})
        assert (record["intent"], record["status"], record["outputs"]) == (name, "completed", {"count": 4})


def test_workflow_intents_are_validated_when_registered_and_submitted(shop):
    bad = {"name": "bad", "steps": [{"id": "x", "tool": "shop.nope"}]}
    with pytest.raises(utp.ValidationFailedError, match="shop.nope"):
        shop.register_intent("bad", bad)
    assert shop.intents() == []
    shop.register_intent("restock", RESTOCK)
    with pytest.raises(utp.ValidationFailedError):
        shop.submit_intent("restock", {"sku": 1})
    assert shop.log == []


def test_failing_workflow_intent_is_a_failed_record(shop):
    def broken(args):
        raise RuntimeError("warehouse offline")

    shop.register_tool("shop.broken", broken)
    shop.register_intent("break", {"name": "b", "steps": [{"id": "x", "tool": "shop.broken"}]})
    record = shop.submit_intent("break")
    assert record["status"] == "failed"
    assert "warehouse offline" in str(record["error"])


# ---------------------------------------------------------------------------
# Handler intents
# ---------------------------------------------------------------------------


def test_handler_intent_gets_a_context_and_shares_session_state(shop):
    seen = []

    def lookup(ctx, params):
        seen.append(ctx)
        assert isinstance(ctx, utp.IntentContext)
        count = ctx.state().get("count", 0)
        assert ctx.set_state("count", count + 1) is (ctx.session is not None)
        return {
            "seen_before": count,
            "sku": params.get("sku"),
            "context": [ctx.execution_id, ctx.intent, ctx.tenant, ctx.session],
        }

    shop.register_intent("lookup", lookup)
    first = shop.submit_intent("lookup", {"sku": "Q"}, tenant="acme", session="s1")
    assert first["status"] == "completed" and first["error"] is None
    assert first["output"]["seen_before"] == 0
    assert first["output"]["context"] == [first["execution_id"], "lookup", "acme", "s1"]
    assert (first["intent"], first["tenant"], first["session_id"]) == ("lookup", "acme", "s1")

    second = shop.submit_intent("lookup", {"sku": "Q"}, tenant="acme", session="s1")
    assert second["output"]["seen_before"] == 1, "the session's requests share its state"
    assert second["execution_id"] != first["execution_id"]
    assert shop.session_state("s1", tenant="acme") == {"count": 2}

    # Another tenant's session of the same name, and no session at all, start empty.
    assert shop.submit_intent("lookup", {}, tenant="other", session="s1")["output"]["seen_before"] == 0
    anonymous = shop.submit_intent("lookup")
    assert anonymous["output"] == {"seen_before": 0, "sku": None, "context": [anonymous["execution_id"], "lookup", None, None]}
    assert anonymous["session_id"] is None

    ctx = seen[0]
    assert "lookup" in repr(ctx) and "s1" in repr(ctx)
    assert ctx.to_dict() == {"execution_id": first["execution_id"], "intent": "lookup", "tenant": "acme", "session_id": "s1"}
    with pytest.raises(TypeError):
        utp.IntentContext()


def test_session_state_is_shared_with_workflows(shop):
    shop.set_session_state("s2", "greeting", "hi")

    def greet(ctx, params):
        ctx.set_state("answered", True)
        ctx.set_state("greeting", None)  # None removes the key
        return ctx.state()

    shop.register_intent("greet", greet)
    before = shop.submit_intent("greet", session="s2")["output"]
    assert before == {"answered": True}
    assert shop.session_state("s2") == {"answered": True}


def test_async_handler(shop):
    async def slow_echo(ctx, params):
        await asyncio.sleep(0.01)
        return {"echo": params, "intent": ctx.intent}

    shop.register_intent("echo", slow_echo)
    record = shop.submit_intent("echo", {"a": [1, 2.5, None, True]})
    assert record["status"] == "completed"
    assert record["output"] == {"echo": {"a": [1, 2.5, None, True]}, "intent": "echo"}


def test_handler_calling_tools_and_workflows(shop):
    def check_and_restock(ctx, params):
        stock = shop.call_tool("shop.getInventory", {"sku": params["sku"]}, session=ctx.session)
        if stock["count"] >= params["min"]:
            return {"restocked": False, "count": stock["count"]}
        run = shop.run_workflow(RESTOCK, {"sku": params["sku"]}, session=ctx.session)
        return {"restocked": True, "count": run["outputs"]["new_count"]}

    shop.register_intent("ensure_stock", check_and_restock)
    assert shop.submit_intent("ensure_stock", {"sku": "Q", "min": 2})["output"] == {"restocked": False, "count": 4}
    assert shop.submit_intent("ensure_stock", {"sku": "Q", "min": 10})["output"] == {"restocked": True, "count": 14}
    assert shop.log == ["get Q", "get Q", "get Q", "set Q 14"]


def test_handler_calling_an_async_tool_from_an_async_handler(shop):
    async def double(args):
        await asyncio.sleep(0)
        return args["n"] * 2

    shop.register_tool("math.double", double)

    async def handler(ctx, params):
        return await shop.call_tool_async("math.double", {"n": params["n"]})

    shop.register_intent("double", handler)
    assert shop.submit_intent("double", {"n": 21})["output"] == 42


def test_exceptions_become_failed_records(shop):
    def boom(ctx, params):
        raise ValueError(f"bad sku {params['sku']!r}")

    shop.register_intent("boom", boom)
    record = shop.submit_intent("boom", {"sku": "Z"}, session="s3")
    assert record["status"] == "failed"
    assert record["output"] is None
    assert record["error"]["code"] == "TOOL_FAILED"
    assert "ValueError" in record["error"]["message"] and "bad sku 'Z'" in record["error"]["message"]
    assert "boom" in record["error"]["message"]
    assert record["session_id"] == "s3"

    # A UtpError raised by a nested call keeps its code.
    shop.register_intent("missing_tool", lambda ctx, params: shop.call_tool("shop.nope"))
    record = shop.submit_intent("missing_tool")
    assert (record["status"], record["error"]["code"]) == ("failed", "NOT_FOUND")
    assert "NotFoundError" in record["error"]["message"]

    async def async_boom(ctx, params):
        await asyncio.sleep(0)
        raise KeyError("gone")

    shop.register_intent("async_boom", async_boom)
    record = shop.submit_intent("async_boom")
    assert record["status"] == "failed" and "KeyError" in record["error"]["message"]

    # A result without a JSON form fails too.
    shop.register_intent("no_json", lambda ctx, params: {"when": object()})
    record = shop.submit_intent("no_json")
    assert record["status"] == "failed" and "JSON" in record["error"]["message"]

    # The engine keeps serving after all of that.
    assert shop.call_tool("shop.getInventory", {"sku": "A"})["count"] == 4


def test_unknown_duplicate_and_bad_registrations(shop):
    with pytest.raises(utp.NotFoundError, match="nope"):
        shop.submit_intent("nope")
    shop.register_intent("lookup", lambda ctx, params: 1)
    with pytest.raises(utp.AlreadyExistsError, match="lookup"):
        shop.register_intent("lookup", lambda ctx, params: 2)
    with pytest.raises(utp.AlreadyExistsError):
        shop.register_intent("lookup", RESTOCK)
    assert shop.submit_intent("lookup")["output"] == 1, "the first registration stays"
    with pytest.raises(utp.InvalidArgumentError):
        shop.register_intent("  ", lambda ctx, params: 1)
    for bad in (42, None, [RESTOCK], b"name: x"):
        with pytest.raises((utp.InvalidArgumentError, TypeError), match="workflow|callable"):
            shop.register_intent("bad", bad)
    with pytest.raises(utp.InvalidArgumentError, match="empty"):
        shop.register_intent("bad", "   ")
    with pytest.raises(utp.InvalidArgumentError, match="params must be a dict"):
        shop.submit_intent("lookup", [1, 2])
    with pytest.raises(utp.InvalidArgumentError, match="JSON"):
        shop.submit_intent("lookup", {"x": object()})
    with pytest.raises(TypeError):
        shop.submit_intent("lookup", {}, "tenant-as-positional")
    assert shop.intents() == ["lookup"]


def test_intents_list_and_unregister(shop):
    assert shop.intents() == []
    shop.register_intent("zeta", lambda ctx, params: "z")
    shop.register_intent("alpha", RESTOCK)
    assert shop.intents() == ["alpha", "zeta"]
    assert shop.unregister_intent("zeta") is True
    assert shop.unregister_intent("zeta") is False
    assert shop.unregister_intent("never") is False
    assert shop.intents() == ["alpha"]
    with pytest.raises(utp.NotFoundError):
        shop.submit_intent("zeta")
    shop.register_intent("zeta", lambda ctx, params: "again")  # the name is free again
    assert shop.submit_intent("zeta")["output"] == "again"
    assert shop.unregister_intent("alpha") is True
    assert shop.intents() == ["zeta"]


def test_closed_engine():
    engine = shop_engine()
    engine.register_intent("x", lambda ctx, params: 1)
    engine.close()
    assert engine.unregister_intent("x") is False
    for call in (lambda: engine.intents(), lambda: engine.submit_intent("x"),
                 lambda: engine.register_intent("y", lambda ctx, params: 1)):
        with pytest.raises(utp.InvalidArgumentError, match="closed"):
            call()


# ---------------------------------------------------------------------------
# Threads and asyncio
# ---------------------------------------------------------------------------


def test_concurrent_submits_from_threads(shop):
    lock = threading.Lock()

    def count(ctx, params):
        with lock:  # the read-modify-write of the state is the handler's to guard
            n = ctx.state().get("n", 0)
            ctx.set_state("n", n + 1)
        time.sleep(0.01)
        return params["i"]

    shop.register_intent("count", count)
    results = []

    def worker(i):
        results.append(shop.submit_intent("count", {"i": i}, session="shared")["output"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(8))
    assert shop.session_state("shared") == {"n": 8}
    assert time.monotonic() - start < 5


def test_submit_intent_async(shop):
    async def handler(ctx, params):
        await asyncio.sleep(0.05)
        return params["n"] * 10

    shop.register_intent("times_ten", handler)
    shop.register_intent("restock", RESTOCK)

    async def main():
        handled = await asyncio.gather(*(shop.submit_intent_async("times_ten", {"n": i}, session="aio") for i in range(10)))
        workflow = await shop.submit_intent_async("restock", {"sku": "Q"}, tenant="t", session="aio")
        with pytest.raises(utp.NotFoundError):
            await shop.submit_intent_async("missing")
        return handled, workflow

    start = time.monotonic()
    handled, workflow = asyncio.run(main())
    assert [r["output"] for r in handled] == [i * 10 for i in range(10)]
    assert all(r["session_id"] == "aio" for r in handled)
    assert (workflow["intent"], workflow["status"], workflow["tenant"]) == ("restock", "completed", "t")
    assert time.monotonic() - start < 2, "the handlers ran concurrently"


def test_ctrl_c_interrupts_submit_intent(tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, threading, time
            import utp

            release = threading.Event()
            engine = utp.Engine()

            def hang(ctx, params):
                print("ready", flush=True)
                release.wait(30)
                return "late"

            engine.register_intent("hang", hang)
            try:
                engine.submit_intent("hang")
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                release.set()
                engine.close()
                sys.exit(3)
            """
        )
    )
    code, out, elapsed = interrupt_child(script, settle=0.2, timeout=15)
    assert code == 3, out
    assert "interrupted" in out
    assert elapsed < 5


# ---------------------------------------------------------------------------
# Stored handlers and the garbage collector
# ---------------------------------------------------------------------------


class Handler:
    def __init__(self, result):
        self.result = result
        self.calls = 0

    def __call__(self, ctx, params):
        self.calls += 1
        return self.result


def test_unregister_releases_the_handler(shop):
    handler = Handler("ok")
    ref = weakref.ref(handler)
    shop.register_intent("h", handler)
    assert shop.submit_intent("h")["output"] == "ok"
    del handler
    collect()
    assert ref() is not None, "the engine holds the handler"
    assert shop.unregister_intent("h") is True
    collect()
    assert ref() is None


def test_close_and_drop_release_handlers():
    engine = shop_engine()
    handler = Handler(1)
    ref = weakref.ref(handler)
    engine.register_intent("h", handler)
    del handler
    engine.close()
    collect()
    assert ref() is None

    engine = shop_engine()
    handler = Handler(2)
    ref = weakref.ref(handler)
    engine.register_intent("h", handler)
    assert engine.submit_intent("h")["output"] == 2
    del handler, engine
    collect()
    assert ref() is None


def test_failed_registration_keeps_nothing(shop):
    shop.register_intent("h", lambda ctx, params: 1)
    handler = Handler(2)
    ref = weakref.ref(handler)
    with pytest.raises(utp.AlreadyExistsError):
        shop.register_intent("h", handler)
    del handler
    collect()
    assert ref() is None
    assert shop.submit_intent("h")["output"] == 1


def test_cycles_through_the_engine_are_collected():
    engine = shop_engine()
    engine_ref = weakref.ref(engine)

    def handler(ctx, params):  # engine -> handler -> engine
        return engine.call_tool("shop.getInventory", {"sku": "C"})["count"]

    handler_ref = weakref.ref(handler)
    engine.register_intent("cycle", handler)
    assert engine.submit_intent("cycle")["output"] == 4
    del handler, engine
    collect()
    assert engine_ref() is None and handler_ref() is None


def test_context_kept_after_the_request():
    kept = []
    engine = shop_engine()
    engine.register_intent("keep", lambda ctx, params: kept.append(ctx))
    engine.submit_intent("keep", session="late")
    engine.close()
    ctx = kept[0]
    assert ctx.intent == "keep" and ctx.session == "late"
    assert ctx.set_state("k", 1) is True  # the session outlives the request
    assert ctx.state() == {"k": 1}


def test_intent_context_is_exported():
    assert utp.IntentContext is utp._utp.IntentContext
    assert "IntentContext" in utp.__all__ and "IntentContext" in utp._utp.__all__
