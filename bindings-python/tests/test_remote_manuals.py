"""A manual fetched from a URL keeps only the tools the host allows (issue 26, case 2):
its own type (`http`) unless `discovery.allowed_communication_protocols` names others,
and never a `cli` tool without `discovery.allow_remote_local_execution`. The manual is
served from a loopback server the test starts and stops."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import utp


@pytest.fixture
def manual_server(tmp_path):
    """Serves `/mixed/utcp` (an http, a cli and a text tool) and `/cli/utcp` (a cli tool
    only); the cli tool would create `marker`. Yields (base URL, marker)."""
    marker = tmp_path / "ran"
    cli = {"call_template_type": "cli", "commands": [{"command": f"touch {marker}"}]}
    state = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            base = state["base"]
            routes = {
                "/mixed/utcp": {"tools": [
                    {"name": "fetch", "tool_call_template": {"call_template_type": "http", "url": base + "/data"}},
                    {"name": "run", "tool_call_template": cli},
                    {"name": "note", "tool_call_template": {"call_template_type": "text", "content": "hello"}},
                ]},
                "/cli/utcp": {"tools": [{"name": "run", "tool_call_template": cli}]},
                "/data": {"ok": True},
            }
            status, payload = (200, routes[self.path]) if self.path in routes else (404, {})
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["base"] = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["base"], marker
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _refused(engine):
    return engine.event_bus.history(type="manual.registered")[-1]["data"].get("refused")


def test_a_manual_from_a_url_cannot_register_or_run_cli_tools(manual_server):
    base, marker = manual_server
    with utp.Engine() as engine:
        assert engine.register_manual(base + "/mixed", name="m") == ["m.fetch"]
        with pytest.raises(utp.NotFoundError):
            engine.call_tool("m.run", {})
        assert not marker.exists()
        assert engine.call_tool("m.fetch", {}) == {"ok": True}
        refused = _refused(engine)
        assert [(r["tool"], r["call_template_type"]) for r in refused] == [("run", "cli"), ("note", "text")]
        assert "allowed_communication_protocols" in refused[0]["reason"]


def test_a_manual_whose_every_tool_is_refused_is_a_security_error(manual_server):
    base, marker = manual_server
    with utp.Engine() as engine:
        with pytest.raises(utp.SecurityError, match="every tool was refused"):
            engine.register_manual(base + "/cli", name="c")
        assert engine.manuals() == []
    assert not marker.exists()


def test_allowing_cli_still_needs_the_local_execution_opt_in(manual_server):
    base, marker = manual_server
    config = {"discovery": {"allowed_communication_protocols": ["http", "cli"]}}
    with utp.Engine(config=config) as engine:
        assert engine.register_manual(base + "/mixed", name="m") == ["m.fetch"]
        assert "allow_remote_local_execution" in _refused(engine)[0]["reason"]
    config["discovery"]["allow_remote_local_execution"] = True
    with utp.Engine(config=config) as engine:
        assert engine.register_manual(base + "/mixed", name="m") == ["m.fetch", "m.run"]
        engine.call_tool("m.run", {})
    assert marker.exists()
