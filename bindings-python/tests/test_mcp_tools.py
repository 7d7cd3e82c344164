"""`mcp` tools from Python against real MCP servers over stdio, built with the official
Python SDK of each protocol era (tests/mcp/: mcp 1.x answers the initialize handshake,
mcp 2.x the stateless server/discover). `make test-python` creates their venvs."""
import asyncio
import os
import pathlib

import pytest

import utp

ROOT = pathlib.Path(__file__).resolve().parents[2]
ERAS = {"v1": ROOT / ".venv-mcp1" / "bin" / "python", "v2": ROOT / ".venv-mcp2" / "bin" / "python"}


def server(era: str) -> dict:
    python = ERAS[era]
    if not python.exists():
        pytest.fail(f"{python} is missing: `make mcp-servers` creates it")
    return {"command": str(python), "args": [str(ROOT / "tests" / "mcp" / f"server_{era}.py")]}


def template(name: str, era: str) -> dict:
    return {"name": name, "call_template_type": "mcp", "config": {"mcpServers": {"srv": server(era)}}}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(params=sorted(ERAS))
def engine(request):
    e = utp.Engine()
    names = e.register_manual(template("calc", request.param))
    assert sorted(names) == ["calc.srv.add", "calc.srv.fail", "calc.srv.image", "calc.srv.pid", "calc.srv.shout", "calc.srv.sleep", "calc.srv.stats"]
    yield e
    e.close()


def test_calls_unwrap_results_as_python_utcp_does(engine):
    assert engine.call_tool("calc.srv.add", {"a": 2, "b": 3}) == 5.0
    assert engine.call_tool("calc.srv.shout", {"text": "hi"}) == "HI"
    image = engine.call_tool("calc.srv.image", {})
    assert image["type"] == "image" and image["mimeType"] == "image/png"
    tool = engine.tool("calc.srv.add")
    assert tool["description"] == "Add two numbers"
    assert tool["inputs"]["required"] == ["a", "b"]
    assert tool["outputs"]["properties"]["result"]["type"] == "number"


def test_is_error_is_a_tool_failure_not_a_value(engine):
    with pytest.raises(utp.ToolFailedError, match="the tool broke|Error executing tool fail"):
        engine.call_tool("calc.srv.fail", {})
    with pytest.raises(utp.ValidationFailedError):
        engine.call_tool("calc.srv.add", {"a": "two", "b": 1})


def test_one_server_serves_every_call_and_a_timeout_leaves_it_serving(engine):
    pid = engine.call_tool("calc.srv.pid", {})
    with pytest.raises(utp.TimeoutError):
        engine.call_tool("calc.srv.sleep", {"ms": 5000}, timeout=0.2)
    assert engine.call_tool("calc.srv.pid", {}) == pid


def test_async_calls_run_concurrently_on_one_server(engine):
    async def main():
        return await asyncio.gather(*(engine.call_tool_async("calc.srv.sleep", {"ms": 100}) for _ in range(10)))

    assert asyncio.run(main()) == ["slept"] * 10


def test_close_ends_the_server():
    e = utp.Engine()
    e.register_manual(template("m", "v2"))
    pid = e.call_tool("m.srv.pid", {})
    assert alive(pid)
    e.close()
    assert not alive(pid)


def test_config_manual_call_templates_and_bad_templates():
    e = utp.Engine({"manual_call_templates": [template("calc", "v1")]})
    assert e.call_tool("calc.srv.add", {"a": 1, "b": 1}) == 2.0
    e.close()
    e = utp.Engine()
    with pytest.raises(utp.InvalidManualError, match=r"config\.mcpServers\.s\.command"):
        e.register_manual({"name": "m", "call_template_type": "mcp", "config": {"mcpServers": {"s": {"args": []}}}})
    with pytest.raises(utp.TransportError, match="'gone'"):
        e.register_manual({"name": "m", "call_template_type": "mcp", "config": {"mcpServers": {"gone": {"command": "/nonexistent/server"}}}})
    assert e.tools() == []
    e.close()
