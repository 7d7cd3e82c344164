"""Workflows from Python (docs/design.md §7): Python tools as steps, data between steps with
types kept, `if` skips, retries of a raising tool, fallback on a policy denial,
validation, YAML text and files, start / execution / wait, cancel of a hanging step
from another thread, suspend / resume, session state, asyncio, the executions list,
Ctrl-C, and the original UTP betting example driven by a workflow."""

import asyncio
import pathlib
import textwrap
import threading
import time

import pytest

import utp
from conftest import interrupt_child

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

SKU = {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}
SET = {
    "type": "object",
    "properties": {"sku": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
    "required": ["sku", "count"],
}


def shop_engine(config=None):
    """An engine with Python shop tools; `engine.log` records what they did."""
    engine = utp.Engine(config)
    log = []

    @engine.tool(name="shop.getInventory", inputs=SKU)
    def get_inventory(args):
        log.append(f"get {args['sku']}")
        return {"sku": args["sku"], "count": 4}

    def set_inventory(args):
        log.append(f"set {args['sku']} {args['count']!r}")
        return {"sku": args["sku"], "count": args["count"]}

    engine.register_tool("shop.setInventory", set_inventory, inputs=SET)

    @engine.tool(name="shop.queueUpdate", inputs=SKU)
    async def queue_update(args):
        log.append(f"queue {args['sku']}")
        return {"queued": True}

    engine.log = log
    return engine


@pytest.fixture
def shop():
    engine = shop_engine()
    yield engine
    engine.close()


def restock():
    return {
        "name": "restock",
        "inputs": {"sku": {"type": "string"}, "extra": {"type": "integer", "default": 100}},
        "steps": [
            {"id": "stock", "tool": "shop.getInventory", "args": {"sku": "${{ inputs.sku }}"}},
            {
                "id": "update",
                "tool": "shop.setInventory",
                "depends_on": ["stock"],
                "if": "steps.stock.output.count < 10",
                "args": {"sku": "${{ inputs.sku }}", "count": "${{ steps.stock.output.count + inputs.extra }}"},
                "on_error": {"fallback": {"tool": "shop.queueUpdate", "args": {"sku": "${{ inputs.sku }}"}}},
            },
            {"id": "note", "tool": "shop.getInventory", "depends_on": ["update"], "args": {"sku": "note-${{ inputs.sku }}"}},
        ],
        "outputs": {"new_count": "${{ steps.update.output.count }}", "label": "sku ${{ inputs.sku }}"},
    }


class Gate:
    """A Python tool that blocks until `open()` (or 30 s), counting its calls."""

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def __call__(self, args):
        self.calls += 1
        self.entered.set()
        self.release.wait(30)
        return {"waited": True}

    def open(self):
        self.release.set()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


TERMINAL = ("workflow.completed", "workflow.error", "workflow.cancelled")


def event_kinds(engine, execution_id):
    """The run's events as "type[:step_id]", once its final workflow event is in the
    history (the core publishes it just after the record is marked finished)."""

    def kinds():
        return [
            e["type"] + (":" + e["step_id"] if "step_id" in e else "")
            for e in engine.event_bus.history(limit=None, execution_id=execution_id)
        ]

    wait_for(lambda: kinds()[-1:] and kinds()[-1] in TERMINAL)
    return kinds()


# ---------------------------------------------------------------------------
# Data between steps, if, retries, fallbacks
# ---------------------------------------------------------------------------


def test_three_python_steps_pass_data_with_types_kept():
    with utp.Engine() as engine:

        @engine.tool(name="calc.a")
        def a(args):
            return {"x": 41, "label": "forty-one"}

        @engine.tool(name="calc.b")
        def b(args):
            return {"y": args["value"], "type": type(args["value"]).__name__}

        @engine.tool(name="calc.c")
        async def c(args):
            return {"joined": f"{args['label']}/{args['y']}"}

        wf = {
            "name": "three",
            "steps": [
                {"id": "a", "tool": "calc.a"},
                {"id": "b", "tool": "calc.b", "depends_on": ["a"], "args": {"value": "${{ steps.a.output.x + 1 }}"}},
                {
                    "id": "c",
                    "tool": "calc.c",
                    "depends_on": ["a", "b"],
                    "args": {"label": "${{ steps.a.output.label }}", "y": "${{ steps.b.output.y }}"},
                },
            ],
            "outputs": {"y": "${{ steps.b.output.y }}", "text": "y is ${{ steps.b.output.y }}"},
        }
        r = engine.run_workflow(wf)
        assert r["status"] == "completed", r
        assert r["steps"]["b"]["output"] == {"y": 42, "type": "int"}, "a whole-string expression keeps its int type"
        assert r["steps"]["c"]["output"] == {"joined": "forty-one/42"}
        assert r["outputs"] == {"y": 42, "text": "y is 42"}
        assert type(r["outputs"]["y"]) is int
        assert r["workflow"] == "three" and r["error"] is None and r["inputs"] == {}
        for step in r["steps"].values():
            assert (step["status"], step["attempts"], step["error"]) == ("succeeded", 1, None)
            assert step["started_at"] <= step["finished_at"]
        assert [r["steps"][s]["tool"] for s in "abc"] == ["calc.a", "calc.b", "calc.c"]

        kinds = event_kinds(engine, r["execution_id"])
        assert kinds[0] == "workflow.started" and kinds[-1] == "workflow.completed"
        assert [k for k in kinds if k.startswith("step.completed")] == [
            "step.completed:a",
            "step.completed:b",
            "step.completed:c",
        ]


def test_restock_with_inputs_defaults_and_if(shop):
    r = shop.run_workflow(restock(), {"sku": "A1"})
    assert r["status"] == "completed", r
    assert r["outputs"] == {"new_count": 104, "label": "sku A1"}
    assert r["inputs"] == {"sku": "A1", "extra": 100}
    assert shop.log == ["get A1", "set A1 104", "get note-A1"]

    # A false `if` skips the step and the steps that need it.
    wf = restock()
    wf["steps"][1]["if"] = "steps.stock.output.count > 10"
    r = shop.run_workflow(wf, {"sku": "B"})
    assert r["status"] == "completed", r
    assert r["steps"]["update"]["status"] == "skipped"
    assert "condition" in r["steps"]["update"]["note"]
    assert r["steps"]["note"]["status"] == "skipped"
    assert r["outputs"]["new_count"] is None
    assert any("new_count" in w for w in r["warnings"])
    assert shop.log[3:] == ["get B"]
    assert "step.skipped:update" in event_kinds(shop, r["execution_id"])


def test_a_raising_python_tool_is_retried_until_it_succeeds():
    with utp.Engine() as engine:
        calls = []

        @engine.tool(name="flaky.fetch")
        def fetch(args):
            calls.append(time.monotonic())
            if len(calls) <= 2:
                raise ConnectionError(f"attempt {len(calls)} failed")
            return {"attempt": len(calls)}

        wf = {
            "name": "retry",
            "steps": [{"id": "fetch", "tool": "flaky.fetch", "retry": {"max_attempts": 3, "initial_delay": "10ms"}}],
        }
        r = engine.run_workflow(wf)
        assert r["status"] == "completed", r
        assert r["steps"]["fetch"]["attempts"] == 3
        assert r["steps"]["fetch"]["output"] == {"attempt": 3}
        assert event_kinds(engine, r["execution_id"]).count("step.retrying:fetch") == 2

        # Out of attempts: the step fails with the tool's error, named, and the run fails.
        calls.clear()
        wf["steps"][0]["retry"]["max_attempts"] = 2
        r = engine.run_workflow(wf)
        assert r["status"] == "failed"
        assert r["steps"]["fetch"]["attempts"] == 2
        assert r["error"]["code"] == "TOOL_FAILED"
        assert "ConnectionError: attempt 2 failed" in r["steps"]["fetch"]["error"]["message"]


def test_a_policy_denial_is_not_retried_and_falls_back():
    config = {"permissions": {"shop": {"allowed_actions": ["getInventory", "queueUpdate"]}}}
    with shop_engine(config) as engine:
        wf = restock()
        wf["steps"][1]["retry"] = {"max_attempts": 5, "initial_delay": "10ms"}
        r = engine.run_workflow(wf, {"sku": "A1"})
        assert r["status"] == "completed", r
        update = r["steps"]["update"]
        assert update["status"] == "succeeded"
        assert update["output"] == {"queued": True}, "the fallback's result is the step's output"
        assert update["attempts"] == 2, "one denied attempt (never retried) and the fallback"
        assert "PERMISSION_DENIED" in update["note"]
        assert engine.log == ["get A1", "queue A1", "get note-A1"]

        # Without a fallback the run fails with the denial.
        del wf["steps"][1]["on_error"]
        r = engine.run_workflow(wf, {"sku": "C"})
        assert r["status"] == "failed"
        assert r["error"]["code"] == "PERMISSION_DENIED"
        assert r["steps"]["note"]["status"] == "skipped"


# ---------------------------------------------------------------------------
# Validation, YAML text and files
# ---------------------------------------------------------------------------


def test_invalid_workflows_raise_validation_failed_before_anything_runs(shop):
    bad = {
        "name": "bad",
        "steps": [
            {"id": "a", "tool": "shop.nope"},
            {"id": "b", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["zz"]},
            {"id": "c", "tool": "shop.setInventory", "args": {"sku": "1", "count": -5}},
        ],
    }
    with pytest.raises(utp.ValidationFailedError) as info:
        shop.validate_workflow(bad)
    message = str(info.value)
    assert info.value.code == "VALIDATION_FAILED"
    for needle in ["no tool named 'shop.nope'", "no step has the id 'zz'", "/count"]:
        assert needle in message, f"every problem is listed: {needle!r} in {message}"
    with pytest.raises(utp.ValidationFailedError):
        shop.run_workflow(bad)
    with pytest.raises(utp.ValidationFailedError):
        shop.start_workflow(bad)

    cycle = {
        "name": "cycle",
        "steps": [
            {"id": "a", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["b"]},
            {"id": "b", "tool": "shop.getInventory", "args": {"sku": "1"}, "depends_on": ["a"]},
        ],
    }
    with pytest.raises(utp.ValidationFailedError, match="cycle"):
        shop.run_workflow(cycle)
    with pytest.raises(utp.ValidationFailedError, match="steps.a.args.sku"):
        shop.validate_workflow(
            {"name": "x", "steps": [{"id": "a", "tool": "shop.getInventory", "args": {"sku": "${{ inputs.sku + }}"}}]}
        )
    # Inputs are validated too.
    with pytest.raises(utp.ValidationFailedError, match="sku"):
        shop.run_workflow(restock(), {"sku": 5})
    with pytest.raises(utp.ValidationFailedError, match="sku"):
        shop.run_workflow(restock())
    # Wrong Python types are InvalidArgumentError.
    with pytest.raises(utp.InvalidArgumentError, match="workflow must be"):
        shop.run_workflow(42)
    with pytest.raises(utp.InvalidArgumentError, match="inputs must be a dict"):
        shop.run_workflow(restock(), ["A1"])
    with pytest.raises(utp.InvalidArgumentError, match="timeout"):
        shop.run_workflow(restock(), {"sku": "A1"}, timeout=-1)

    assert shop.log == [], "nothing ran for the invalid ones"
    assert shop.executions() == []
    assert shop.validate_workflow(restock()) is None


RESTOCK_YAML = """\
name: restock-yaml
inputs: {sku: {type: string}}
steps:
  - id: stock
    tool: shop.getInventory
    args: {sku: "${{ inputs.sku }}"}
  - id: update
    tool: shop.setInventory
    depends_on: [stock]
    args: {sku: "${{ inputs.sku }}", count: "${{ steps.stock.output.count + 1 }}"}
outputs: {new_count: "${{ steps.update.output.count }}"}
"""


def test_yaml_text_and_files(shop, tmp_path):
    r = shop.run_workflow(RESTOCK_YAML, {"sku": "Y"})
    assert (r["status"], r["workflow"], r["outputs"]) == ("completed", "restock-yaml", {"new_count": 5})

    path = tmp_path / "restock.yaml"
    path.write_text(RESTOCK_YAML)
    for source in (str(path), path):
        r = shop.run_workflow(source, {"sku": "F"})
        assert r["status"] == "completed" and r["outputs"] == {"new_count": 5}, r
    assert shop.validate_workflow(path) is None

    json_path = tmp_path / "restock.json"
    import json

    json_path.write_text(json.dumps(restock()))
    assert shop.run_workflow(json_path, {"sku": "J"})["outputs"]["new_count"] == 104
    assert shop.run_workflow(json.dumps(restock()), {"sku": "J"})["outputs"]["new_count"] == 104

    with pytest.raises(utp.NotFoundError, match="nope.yaml"):
        shop.run_workflow(str(tmp_path / "nope.yaml"))
    with pytest.raises(utp.NotFoundError):
        shop.validate_workflow(pathlib.Path(tmp_path / "nope.yaml"))

    broken = tmp_path / "broken.yaml"
    broken.write_text(RESTOCK_YAML.replace("shop.setInventory", "shop.missing"))
    with pytest.raises(utp.ValidationFailedError, match="broken.yaml"):
        shop.run_workflow(broken, {"sku": "X"})


# ---------------------------------------------------------------------------
# Executions: start, inspect, wait, cancel, suspend, resume
# ---------------------------------------------------------------------------


def gated_engine():
    engine = utp.Engine()
    gate = Gate()
    engine.register_tool("t.wait", gate)
    engine.register_tool("t.ok", lambda args: {"ok": True, "got": args})
    return engine, gate


GATED = {
    "name": "gated",
    "steps": [
        {"id": "first", "tool": "t.wait"},
        {"id": "second", "tool": "t.ok", "depends_on": ["first"], "args": {"w": "${{ steps.first.output.waited }}"}},
    ],
}


def test_start_returns_at_once_then_execution_and_wait():
    engine, gate = gated_engine()
    try:
        started = time.monotonic()
        execution_id = engine.start_workflow(GATED, session="s-start", tenant="acme")
        assert time.monotonic() - started < 1.0
        assert isinstance(execution_id, str) and execution_id
        assert gate.entered.wait(5)
        record = engine.execution(execution_id)
        assert record["execution_id"] == execution_id
        assert record["status"] == "running"
        assert record["steps"]["first"]["status"] == "running"
        assert record["steps"]["second"]["status"] == "pending"
        assert (record["session_id"], record["tenant"]) == ("s-start", "acme")

        with pytest.raises(utp.TimeoutError, match="still running"):
            engine.wait_execution(execution_id, timeout=0.05)

        gate.open()
        record = engine.wait_execution(execution_id, timeout=10)
        assert record["status"] == "completed", record
        assert record["steps"]["second"]["output"] == {"ok": True, "got": {"w": True}}
        assert engine.execution(execution_id) == record
        assert engine.wait_execution(execution_id)["status"] == "completed", "waiting on a finished run returns at once"

        with pytest.raises(utp.NotFoundError):
            engine.execution("exe_nope")
        with pytest.raises(utp.NotFoundError):
            engine.wait_execution("exe_nope")
    finally:
        gate.open()
        engine.close()


def test_cancel_a_hanging_python_step_from_another_thread():
    engine, gate = gated_engine()
    try:
        cancelled = {}

        def canceller():
            assert gate.entered.wait(5)
            time.sleep(0.05)
            running = engine.executions(status="running")
            assert len(running) == 1
            cancelled["at"] = time.monotonic()
            cancelled["ok"] = engine.cancel(running[0]["execution_id"])

        thread = threading.Thread(target=canceller)
        thread.start()
        record = engine.run_workflow(GATED)  # blocks, GIL released, until the cancel
        returned = time.monotonic()
        thread.join(5)
        assert cancelled["ok"] is True
        assert returned - cancelled["at"] < 0.5, f"cancel took {returned - cancelled['at']:.3f} s"
        assert record["status"] == "cancelled", record
        assert record["steps"]["first"]["error"]["code"] == "CANCELLED"
        assert record["steps"]["second"]["status"] != "succeeded"
        assert engine.cancel(record["execution_id"]) is False, "cancelling a finished run is a no-op"
        assert "workflow.cancelled" in event_kinds(engine, record["execution_id"])
        with pytest.raises(utp.NotFoundError):
            engine.cancel("exe_nope")
    finally:
        gate.open()
        engine.close()


def test_a_run_timeout_fails_the_run_with_timeout():
    engine, gate = gated_engine()
    try:
        started = time.monotonic()
        record = engine.run_workflow(GATED, timeout=0.2)
        assert time.monotonic() - started < 3
        assert (record["status"], record["error"]["code"]) == ("failed", "TIMEOUT"), record
    finally:
        gate.open()
        engine.close()


def test_a_step_timeout_ends_the_wait_for_a_sync_python_step():
    """A sync Python step runs on an engine worker; its timeout still fails the step at
    the deadline, while the function finishes on its own."""
    release = threading.Event()
    with utp.Engine() as engine:
        engine.register_tool("t.stuck", lambda args: release.wait(10) and "late")
        wf = {"name": "stuck", "steps": [{"id": "s", "tool": "t.stuck", "timeout": "200ms"}]}
        started = time.monotonic()
        record = engine.run_workflow(wf, {})
        took = time.monotonic() - started
        release.set()
    assert record["status"] == "failed", record
    assert record["steps"]["s"]["error"]["code"] == "TIMEOUT", record
    assert took < 5


def test_suspend_and_resume():
    engine, gate = gated_engine()
    try:
        execution_id = engine.start_workflow(GATED)
        assert gate.entered.wait(5)
        assert engine.suspend(execution_id) is True
        assert engine.suspend(execution_id) is False, "already suspended"
        assert engine.execution(execution_id)["status"] == "suspended"
        assert [e["execution_id"] for e in engine.executions(status="suspended")] == [execution_id]

        gate.open()  # the running step finishes; the next one does not start
        assert wait_for(lambda: engine.execution(execution_id)["steps"]["first"]["status"] == "succeeded")
        time.sleep(0.1)
        record = engine.execution(execution_id)
        assert record["status"] == "suspended"
        assert record["steps"]["second"]["status"] == "pending"

        assert engine.resume(execution_id) is True
        record = engine.wait_execution(execution_id, timeout=10)
        assert record["status"] == "completed", record
        assert engine.resume(execution_id) is False
        kinds = event_kinds(engine, execution_id)
        assert "workflow.suspended" in kinds and "workflow.resumed" in kinds
    finally:
        gate.open()
        engine.close()


# ---------------------------------------------------------------------------
# Session state, executions list, asyncio
# ---------------------------------------------------------------------------


def test_session_state_round_trip(shop):
    assert shop.session_state("s1") == {}
    shop.set_session_state("s1", "greeting", "hello", tenant="acme")
    shop.set_session_state("s1", "limits", {"max": 3, "tags": ["a", None, 1.5]}, tenant="acme")
    assert shop.session_state("s1", tenant="acme") == {"greeting": "hello", "limits": {"max": 3, "tags": ["a", None, 1.5]}}
    assert shop.session_state("s1") == {}, "state is per (tenant, session)"
    assert shop.session_state("s1", tenant="other") == {}

    wf = {
        "name": "st",
        "steps": [
            {
                "id": "stock",
                "tool": "shop.getInventory",
                "args": {"sku": "${{ has(state.last) ? state.last : state.greeting }}"},
                "set_state": {"last": "${{ steps.stock.output.sku + '!' }}", "count": "${{ steps.stock.output.count }}"},
            }
        ],
    }
    r = shop.run_workflow(wf, session="s1", tenant="acme")
    assert r["steps"]["stock"]["output"]["sku"] == "hello", r
    assert (r["session_id"], r["tenant"]) == ("s1", "acme")
    state = shop.session_state("s1", tenant="acme")
    assert state["last"] == "hello!" and state["count"] == 4 and type(state["count"]) is int
    r = shop.run_workflow(wf, session="s1", tenant="acme")
    assert r["steps"]["stock"]["output"]["sku"] == "hello!"

    shop.set_session_state("s1", "last", None, tenant="acme")  # None removes the key
    assert "last" not in shop.session_state("s1", tenant="acme")
    with pytest.raises(utp.InvalidArgumentError):
        shop.set_session_state("s1", "bad", object())


def test_executions_filter(shop):
    a = shop.run_workflow(restock(), {"sku": "A"}, session="s-a")
    b = shop.run_workflow(restock(), {"sku": "B"}, session="s-b")
    wf = restock()
    del wf["steps"][1]["on_error"]
    wf["steps"][1]["args"]["count"] = "${{ steps.stock.output.count - 100 }}"  # below the minimum: fails
    c = shop.run_workflow(wf, {"sku": "C"}, session="s-a")
    assert c["status"] == "failed", c

    everything = shop.executions()
    assert [e["execution_id"] for e in everything] == [a["execution_id"], b["execution_id"], c["execution_id"]]
    assert all("output" not in step for e in everything for step in e["steps"].values()), "listed without outputs"
    assert [e["execution_id"] for e in shop.executions(status="completed")] == [a["execution_id"], b["execution_id"]]
    assert [e["execution_id"] for e in shop.executions(status="failed")] == [c["execution_id"]]
    assert [e["execution_id"] for e in shop.executions(session="s-a")] == [a["execution_id"], c["execution_id"]]
    assert [e["execution_id"] for e in shop.executions(status="completed", session="s-a")] == [a["execution_id"]]
    assert shop.executions(status="running") == []
    assert shop.executions(session="nobody") == []
    with pytest.raises(utp.InvalidArgumentError, match="unknown execution status 'bogus'"):
        shop.executions(status="bogus")


def test_asyncio_gather_of_ten_runs():
    with utp.Engine() as engine:
        active = []
        peak = []
        lock = threading.Lock()

        @engine.tool(name="slow.work")
        def work(args):
            with lock:
                active.append(1)
                peak.append(len(active))
            time.sleep(0.3)
            with lock:
                active.pop()
            return {"n": args["n"] * 2}

        wf = {
            "name": "slow",
            "inputs": {"n": {"type": "integer"}},
            "steps": [{"id": "w", "tool": "slow.work", "args": {"n": "${{ inputs.n }}"}}],
            "outputs": {"double": "${{ steps.w.output.n }}"},
        }

        async def main():
            started = time.monotonic()
            records = await asyncio.gather(*(engine.run_workflow_async(wf, {"n": i}, session="aio") for i in range(10)))
            return records, time.monotonic() - started

        records, took = asyncio.run(main())
        assert [r["outputs"]["double"] for r in records] == [i * 2 for i in range(10)]
        assert all(r["status"] == "completed" for r in records)
        assert len({r["execution_id"] for r in records}) == 10
        assert took < 2.0, f"the runs overlap ({took:.2f} s for 10 x 0.3 s)"
        assert max(peak) > 1
        assert len(engine.executions(session="aio")) == 10

        async def others():
            execution_id = await engine.start_workflow_async(wf, {"n": 5})
            record = await engine.wait_execution_async(execution_id)
            await engine.validate_workflow_async(wf)
            with pytest.raises(utp.ValidationFailedError):
                await engine.run_workflow_async(wf, {"n": "five"})
            return record

        assert asyncio.run(others())["outputs"] == {"double": 10}


def test_cancelling_the_asyncio_task_cancels_the_run():
    engine, gate = gated_engine()
    try:

        async def main():
            task = asyncio.ensure_future(engine.run_workflow_async(GATED))
            while not gate.entered.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert wait_for(lambda: engine.executions()[0]["status"] == "cancelled"), engine.executions()
    finally:
        gate.open()
        engine.close()


def test_ctrl_c_cancels_a_running_workflow(tmp_path):
    script = tmp_path / "slow_workflow.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, threading, time, utp
            engine = utp.Engine()
            release = threading.Event()
            def hang(args):
                print("ready", flush=True)
                release.wait(30)
                return {}
            engine.register_tool("slow.hang", hang)
            try:
                engine.run_workflow({"name": "hang", "steps": [{"id": "h", "tool": "slow.hang"}]})
            except KeyboardInterrupt:
                deadline = time.monotonic() + 5
                while engine.executions()[0]["status"] != "cancelled" and time.monotonic() < deadline:
                    time.sleep(0.01)
                print("interrupted", engine.executions()[0]["status"], flush=True)
                release.set()
                engine.close()
                sys.exit(3)
            """
        )
    )
    code, out, elapsed = interrupt_child(script, settle=0.2, timeout=15)
    assert code == 3, out
    assert "interrupted cancelled" in out
    assert elapsed < 5


# ---------------------------------------------------------------------------
# The original UTP example, verbatim, driven by a workflow
# ---------------------------------------------------------------------------

BETFAIR_CONFIG = {
    "permissions": {"betfair": {"enabled": True, "allowed_actions": ["listMarkets", "getOdds", "placeBet"]}},
    "business_rules": {"max_bet_amount": 1000},
}


def bet_workflow(amount, on_error=None):
    place = {"id": "place_bet", "tool": "betfair.placeBet", "depends_on": ["markets"],
             "args": {"market": "${{ steps.markets.output[0] }}", "amount": amount}}
    if on_error is not None:
        place["on_error"] = on_error
    return {
        "name": "bet",
        "steps": [
            {"id": "markets", "tool": "betfair.listMarkets"},
            place,
            {"id": "done", "tool": "betfair.listMarkets", "depends_on": ["place_bet"]},
        ],
    }


def test_original_utp_example_with_a_workflow():
    engine = utp.Engine(BETFAIR_CONFIG)
    try:
        engine.register_tool("betfair.placeBet", lambda args: {"placed": True, "amount": args.get("amount")})
        engine.register_tool("betfair.listMarkets", lambda args: ["m1", "m2"])

        def max_bet_rule(tool, action, params):
            return not (tool == "betfair" and action == "placeBet" and params.get("amount", 0) > 1000)

        engine.domain_layer.add_business_rule("max_bet", max_bet_rule)

        bets = []

        async def on_bet_placed(event):
            bets.append(event)

        engine.event_bus.subscribe("step.completed", on_bet_placed)

        r = engine.run_workflow(bet_workflow(500))
        assert r["status"] == "completed", r
        assert r["steps"]["place_bet"]["output"] == {"placed": True, "amount": 500}
        assert engine.event_bus.flush()
        placed = [e for e in bets if e["step_id"] == "place_bet"]
        assert len(placed) == 1
        assert placed[0]["type"] == "step.completed"
        assert placed[0]["tool"] == "betfair.placeBet"
        assert placed[0]["execution_id"] == r["execution_id"]
        assert placed[0]["workflow"] == "bet"
        assert {e["step_id"] for e in bets} == {"markets", "place_bet", "done"}

        # max_bet_rule denies the step: the run fails with PERMISSION_DENIED on it.
        bets.clear()
        r = engine.run_workflow(bet_workflow(1500))
        assert r["status"] == "failed", r
        assert r["error"]["code"] == "PERMISSION_DENIED"
        step = r["steps"]["place_bet"]
        assert step["status"] == "failed"
        assert step["error"]["code"] == "PERMISSION_DENIED"
        assert "max_bet" in step["error"]["message"]
        assert step["attempts"] == 1
        assert r["steps"]["done"]["status"] == "skipped"
        assert engine.event_bus.flush()
        assert [e["step_id"] for e in bets] == ["markets"], "the denied step never completed"
        failed = engine.event_bus.history(type="step.failed", execution_id=r["execution_id"])
        assert [(e["step_id"], e["tool"]) for e in failed] == [("place_bet", "betfair.placeBet")]

        # ... unless on_error: continue, which records the denial and carries on.
        r = engine.run_workflow(bet_workflow(1500, on_error="continue"))
        assert r["status"] == "completed", r
        assert r["steps"]["place_bet"]["status"] == "failed"
        assert r["steps"]["place_bet"]["error"]["code"] == "PERMISSION_DENIED"
        assert r["steps"]["done"]["status"] == "succeeded"
    finally:
        engine.close()
