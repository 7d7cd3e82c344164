"""The shared host-option cases (tests/scenarios/host_options.json) through the public
API: the same bad option gets the same code and message from C, Python and Node
(utp_core::host checks them all). Python passes each case's input as keyword arguments."""

import json
import pathlib

import pytest

import utp

SCENARIOS = pathlib.Path(__file__).resolve().parents[2] / "tests" / "scenarios" / "host_options.json"
CASES = [c for c in json.loads(SCENARIOS.read_text(encoding="utf-8"))["cases"] if "python" not in c.get("skip", {})]

WORKFLOW = {"name": "host_options", "steps": [{"id": "a", "tool": "host.echo", "args": {"v": 1}}]}


@pytest.fixture(scope="module")
def engine():
    engine = utp.Engine()
    engine.register_tool("host.echo", lambda args: args)
    yield engine
    engine.close()


def run(engine, kind, options):
    """Run one case's input through the public function its kind belongs to."""
    if kind == "call_options":
        return engine.call_tool("host.echo", {"v": 1}, **options)
    if kind == "run_options":
        return engine.run_workflow(WORKFLOW, {}, **options)
    if kind == "plan_options":
        return engine.plan("echo the value", **options)
    if kind == "event_filter":
        return engine.stored_events(**options)
    if kind == "history_filter":
        return engine.event_bus.history(**options)
    if kind == "subscribe":
        return engine.event_bus.subscribe(options["pattern"], lambda event: None).unsubscribe()
    if kind == "store":
        return utp.Engine(**options).close()
    raise AssertionError(f"unknown kind {kind}")


def test_the_table_has_cases_for_python():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[f"{c['kind']}: {c['name']}" for c in CASES])
def test_host_option(engine, case):
    if case["code"] is None:
        run(engine, case["kind"], case["input"])
        return
    with pytest.raises(utp.UtpError) as info:
        run(engine, case["kind"], case["input"])
    assert info.value.code == case["code"], str(info.value)
    assert case["message"] in str(info.value)
