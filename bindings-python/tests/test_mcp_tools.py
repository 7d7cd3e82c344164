"""`mcp` tools from Python against real MCP servers built with the official Python SDK of
each protocol era (tests/mcp/: mcp 1.x answers the initialize handshake, mcp 2.x the
stateless server/discover), over stdio and over Streamable HTTP on 127.0.0.1, and mcp 1.x over
the older HTTP+SSE transport (named by `"transport": "sse"`, or reached by falling back from
Streamable HTTP). `make test-python` creates their venvs."""
import asyncio
import json
import os
import pathlib
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import json_server

import utp

ROOT = pathlib.Path(__file__).resolve().parents[2]
ERAS = {"v1": ROOT / ".venv-mcp1" / "bin" / "python", "v2": ROOT / ".venv-mcp2" / "bin" / "python"}
TOOLS = ["add", "fail", "grow", "image", "pid", "progress", "shout", "sleep", "stats"]
# (era, transport): both eras over both transports, and mcp 1.x over HTTP+SSE: "sse" with
# `"transport": "sse"` in the config, "sse-url" by its URL alone (Streamable HTTP is refused first).
SERVERS = [("v1", "stdio"), ("v1", "http"), ("v1", "sse"), ("v1", "sse-url"), ("v2", "stdio"), ("v2", "http")]


def python(era: str) -> str:
    path = ERAS[era]
    if not path.exists():
        pytest.fail(f"{path} is missing: `make mcp-servers` creates it")
    return str(path)


def script(era: str) -> str:
    return str(ROOT / "tests" / "mcp" / f"server_{era}.py")


def stdio_server(era: str) -> dict:
    return {"command": python(era), "args": [script(era)]}


class HttpServer:
    """An SDK server over Streamable HTTP in a child process; `url` is its endpoint."""

    def __init__(self, era: str, mode: str = "http", env: dict | None = None):
        self.process = subprocess.Popen(
            [python(era), script(era), mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, **(env or {})},
        )
        self.url = self.process.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:  # uvicorn waits for a tool still running
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def servers():
    started = []

    def start(era: str, mode: str = "http", env: dict | None = None) -> HttpServer:
        started.append(HttpServer(era, mode, env))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def spec(servers, era: str, transport: str) -> dict:
    if transport == "stdio":
        return stdio_server(era)
    if transport == "http":
        return {"url": servers(era).url}
    url = servers(era, "sse").url
    return {"url": url, "transport": "sse"} if transport == "sse" else {"url": url}


def template(name: str, server: dict, **extra) -> dict:
    return {"name": name, "call_template_type": "mcp", "config": {"mcpServers": {"srv": server}}, **extra}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(params=SERVERS, ids=lambda p: f"{p[0]}-{p[1]}")
def engine(request, servers):
    era, transport = request.param
    e = utp.Engine()
    names = e.register_manual(template("calc", spec(servers, era, transport)))
    assert sorted(names) == [f"calc.srv.{t}" for t in TOOLS]
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


def test_progress_is_stream_items_and_tool_progress_events(engine):
    seen = []
    engine.event_bus.subscribe("tool.progress", seen.append)
    items = list(engine.call_tool_stream("calc.srv.progress", {"steps": 3}))
    assert items[-1] == "done"
    assert items[:-1] == [{"progress": float(i), "total": 3.0, "message": f"step {i}"} for i in (1, 2, 3)]
    assert engine.call_tool("calc.srv.progress", {"steps": 2}) == "done"
    deadline = time.time() + 5
    while len(seen) < 5 and time.time() < deadline:
        time.sleep(0.01)
    assert [e["data"]["progress"] for e in seen] == [1.0, 2.0, 3.0, 1.0, 2.0]
    assert {e["tool"] for e in seen} == {"calc.srv.progress"}


def test_list_changed_registers_the_servers_new_tools(engine):
    assert engine.call_tool("calc.srv.grow", {}) == "grew"
    deadline = time.time() + 10
    while "calc.srv.grown" not in [t["name"] for t in engine.tools()] and time.time() < deadline:
        time.sleep(0.02)
    assert engine.call_tool("calc.srv.grown", {}) == "grown"
    assert engine.call_tool("calc.srv.add", {"a": 1, "b": 1}) == 2.0


@pytest.mark.parametrize("era,transport", SERVERS)
def test_resources_register_as_tools_that_read_them(servers, era, transport):
    e = utp.Engine()
    names = e.register_manual(template("m", spec(servers, era, transport), register_resources_as_tools=True))
    assert "m.srv.resource_app_config" in names
    tool = e.tool("m.srv.resource_app_config")
    assert tool["description"] == "Read resource: The app's settings. URI: config://app"
    contents = e.call_tool("m.srv.resource_app_config", {})["contents"]
    assert contents[0]["uri"] == "config://app" and json.loads(contents[0]["text"]) == {"debug": False}
    e.close()


def test_close_ends_the_server():
    e = utp.Engine()
    e.register_manual(template("m", stdio_server("v2")))
    pid = e.call_tool("m.srv.pid", {})
    assert alive(pid)
    e.close()
    assert not alive(pid)


def test_config_manual_call_templates_and_bad_templates():
    e = utp.Engine({"manual_call_templates": [template("calc", stdio_server("v1"))]})
    assert e.call_tool("calc.srv.add", {"a": 1, "b": 1}) == 2.0
    e.close()
    e = utp.Engine()
    with pytest.raises(utp.InvalidManualError, match=r"config\.mcpServers\.s\.command"):
        e.register_manual({"name": "m", "call_template_type": "mcp", "config": {"mcpServers": {"s": {"args": []}}}})
    with pytest.raises(utp.TransportError, match="'srv'.*/nonexistent/server"):
        e.register_manual(template("m", {"command": "/nonexistent/server"}))
    with pytest.raises(utp.InvalidManualError, match=r"config\.mcpServers\.srv\.url"):
        e.register_manual(template("m", {"url": "ftp://127.0.0.1/mcp"}))
    assert e.tools() == []
    e.close()


@pytest.mark.parametrize("url", ["http://10.0.0.1/mcp", "http://example.com/mcp", "https://169.254.169.254/mcp"])
def test_http_servers_follow_the_network_rules_of_http_tools(url):
    e = utp.Engine()
    with pytest.raises(utp.SecurityError):
        e.register_manual(template("m", {"url": url, "timeout": 2}))
    e.close()


def test_an_http_server_that_is_down_is_a_transport_error_naming_it():
    e = utp.Engine()
    with pytest.raises(utp.TransportError, match="'srv'"):
        e.register_manual(template("m", {"url": "http://127.0.0.1:9/mcp"}))
    e.close()


@pytest.fixture
def token_server():
    """An OAuth2 token endpoint: client credentials → a new token each time."""
    issued = []

    def token(request):
        request.rfile.read(int(request.headers.get("content-length", 0)))
        issued.append(f"tok{len(issued) + 1}")
        return 200, {"access_token": issued[-1], "token_type": "Bearer", "expires_in": 3600}

    with json_server(token) as base:
        yield f"{base}/token", issued


@pytest.mark.parametrize("era,mode", [("v1", "http"), ("v2", "http"), ("v1", "sse")])
def test_manual_level_auth_is_sent(servers, token_server, era, mode):
    token_url, issued = token_server
    s = servers(era, mode, env={"UTP_MCP_REQUIRE_AUTHORIZATION": "Bearer tok1"})
    e = utp.Engine()
    with pytest.raises(utp.TransportError):
        e.register_manual(template("none", {"url": s.url}))
    oauth = {"auth_type": "oauth2", "token_url": token_url, "client_id": "id", "client_secret": "secret"}
    names = e.register_manual(template("m", {"url": s.url}, auth=oauth))
    assert "m.srv.add" in names and issued == ["tok1"]
    assert e.call_tool("m.srv.add", {"a": 1, "b": 2}) == 3.0
    e.close()
    # A token the server refuses (an expired one): one more try with a new token.
    s3 = servers(era, mode, env={"UTP_MCP_REQUIRE_AUTHORIZATION": "Bearer tok3"})
    e = utp.Engine()
    assert "m.srv.add" in e.register_manual(template("m", {"url": s3.url}, auth=oauth))
    assert issued == ["tok1", "tok2", "tok3"]
    e.close()
    s2 = servers(era, mode, env={"UTP_MCP_REQUIRE_AUTHORIZATION": "Basic dXNlcjpwdw=="})
    e = utp.Engine()
    basic = {"auth_type": "basic", "username": "user", "password": "pw"}
    assert "m.srv.add" in e.register_manual(template("m", {"url": s2.url}, auth=basic))
    e.close()


def test_mcp_config_files_are_manuals_named_after_the_file(tmp_path):
    (tmp_path / ".cursor").mkdir()
    (tmp_path / ".cursor" / "mcp.json").write_text(json.dumps({"mcpServers": {"calc": stdio_server("v1")}}))
    (tmp_path / "notes.json").write_text(json.dumps({"mcpServers": []}))
    (tmp_path / "claude_desktop_config.json").write_text(json.dumps({"mcpServers": {"calc": stdio_server("v2")}}))
    e = utp.Engine()
    # Hidden directories are not scanned (.git, .venv...): Cursor's is named explicitly.
    assert e.discover(str(tmp_path)) == ["claude_desktop_config"]
    assert e.discover(str(tmp_path / ".cursor")) == ["mcp"]
    assert e.call_tool("mcp.calc.add", {"a": 1, "b": 2}) == 3.0
    assert "desk.calc.add" in e.register_manual(str(tmp_path / ".cursor" / "mcp.json"), name="desk")
    assert "inline.calc.shout" in e.register_manual({"mcpServers": {"calc": stdio_server("v2")}}, name="inline")
    e.close()


def test_an_mcp_config_fetched_from_a_url_is_refused():
    config = {"mcpServers": {"evil": {"command": "/bin/sh", "args": ["-c", "exit 1"]}}}
    e = utp.Engine()
    with json_server(lambda request: (200, config)) as base:
        with pytest.raises(utp.InvalidManualError, match="not from a URL"):
            e.register_manual(f"{base}/mcp.json")
    e.close()


@pytest.mark.parametrize("era", ["v1", "v2"])
def test_a_denied_mcp_tool_sends_nothing_and_workflows_chain_mcp_steps(servers, tmp_path, era):
    log = tmp_path / "requests.jsonl"
    s = servers(era, env={"UTP_MCP_REQUEST_LOG": str(log)})
    e = utp.Engine({"permissions": {"calc": {"enabled": True, "allowed_actions": ["srv.add", "srv.shout"]}}})
    e.register_manual(template("calc", {"url": s.url}))
    with pytest.raises(utp.PermissionDeniedError):
        e.call_tool("calc.srv.pid", {})
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert not any(m.get("params", {}).get("name") == "pid" for m in sent), sent
    assert e.event_bus.history(type="policy.denied")[-1]["tool"] == "calc.srv.pid"

    wf = {
        "name": "mcp-chain",
        "steps": [
            {"id": "a", "tool": "calc.srv.add", "args": {"a": 2, "b": 3}},
            {"id": "b", "tool": "calc.srv.shout", "depends_on": ["a"], "args": {"text": "sum ${{ steps.a.output }}"}},
        ],
        "outputs": {"text": "${{ steps.b.output }}"},
    }
    r = e.run_workflow(wf)
    assert r["status"] == "completed", r
    assert r["outputs"] == {"text": "SUM 5.0"}
    kinds = [ev["type"] for ev in e.event_bus.history(type="tool.*") if ev.get("tool") == "calc.srv.shout"]
    assert kinds == ["tool.called", "tool.succeeded"]
    e.close()


@pytest.mark.parametrize("era", ["v1", "v2"])
def test_closing_a_stream_cancels_the_call_on_the_server(servers, tmp_path, era):
    log = tmp_path / "requests.jsonl"
    s = servers(era, env={"UTP_MCP_REQUEST_LOG": str(log)})
    e = utp.Engine()
    e.register_manual(template("m", {"url": s.url}))
    with e.call_tool_stream("m.srv.progress", {"steps": 500}) as stream:
        first = next(iter(stream))
        assert first["progress"] == 1.0
    # A session-era server is sent notifications/cancelled; a stateless-era one sees its
    # response stream closed (the 2026-07-28 rule: no notification over HTTP).
    told = {"v1": lambda m: m.get("method") == "notifications/cancelled", "v2": lambda m: m.get("disconnect")}[era]
    deadline = time.time() + 10
    cancelled = []
    while not cancelled and time.time() < deadline:
        sent = [json.loads(line) for line in log.read_text().splitlines()]
        cancelled = [m for m in sent if told(m)]
        time.sleep(0.02)
    assert cancelled, "the server was told"
    assert e.call_tool("m.srv.add", {"a": 1, "b": 1}) == 2.0, "and keeps serving"


@pytest.fixture
def foreign_endpoint_server():
    """An HTTP+SSE server whose `endpoint` event names another origin (`localhost` for
    `127.0.0.1`): it answers POST /sse with 405 and records every request."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(("GET", self.path))
            port = self.server.server_address[1]
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.write(f"event: endpoint\ndata: http://localhost:{port}/messages/?session_id=1\n\n".encode())
            self.wfile.flush()

        def do_POST(self):
            seen.append(("POST", self.path))
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(405)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/sse", seen
    httpd.shutdown()


@pytest.mark.parametrize("by", ["transport", "fallback"])
def test_an_endpoint_of_another_origin_is_refused(foreign_endpoint_server, by):
    url, seen = foreign_endpoint_server
    server = {"url": url, "transport": "sse"} if by == "transport" else {"url": url}
    e = utp.Engine()
    with pytest.raises(utp.SecurityError, match="not of the origin"):
        e.register_manual(template("m", server))
    assert e.tools() == []
    e.close()
    # Nothing was sent to the endpoint: only the Streamable HTTP attempts (POST /sse) and the GET.
    assert ("GET", "/sse") in seen
    assert all(path == "/sse" for _, path in seen), seen
    if by == "transport":
        assert seen == [("GET", "/sse")]


def test_the_sse_transport_alone_is_not_tried_on_a_streamable_http_server(servers):
    # `"transport": "sse"` on a Streamable HTTP endpoint: its GET is not an `endpoint` stream.
    s = servers("v1")
    e = utp.Engine()
    with pytest.raises((utp.TransportError, utp.TimeoutError), match="HTTP\\+SSE"):
        e.register_manual(template("m", {"url": s.url, "transport": "sse", "timeout": 2}))
    e.close()
