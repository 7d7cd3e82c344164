"""python-utcp compatibility cases of issue 26 (3 to 7) through the Python binding:
config `manual_call_templates`, a relative OAuth2 token URL in a spec fetched from a URL,
OpenAPI examples, manuals given as inline YAML text, and JSON Schema keywords in a `text`
tool. Network cases use a loopback server the test starts and stops."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import utp


def _manual(tool, content):
    return {"tools": [{"name": tool, "tool_call_template": {"call_template_type": "text", "content": content}}]}


@pytest.fixture
def server():
    """Serves a manual behind an API key, a spec with a relative token URL, its token
    endpoint and the secured API. Yields the base URL."""
    state = {"tokens": 0}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/utcp":
                if self.headers.get("x-api-key") == "k-1":
                    return self._send(200, _manual("fetched", "from a URL"))
                return self._send(401, {"error": "no key"})
            if self.path == "/specs/openapi.json":
                return self._send(200, {
                    "openapi": "3.0.3", "info": {"title": "Secured", "version": "1"},
                    "paths": {"/data": {"get": {"operationId": "getData", "security": [{"oauth": []}],
                                                "responses": {"200": {"description": "ok"}}}}},
                    "components": {"securitySchemes": {"oauth": {"type": "oauth2", "flows": {
                        "clientCredentials": {"tokenUrl": "/oauth/token", "scopes": {}}}}}}})
            if self.path == "/data" and self.headers.get("authorization") == "Bearer tok":
                return self._send(200, {"ok": True})
            self._send(404, {})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
            if self.path == "/oauth/token" and "client_id=cid" in body:
                state["tokens"] += 1
                return self._send(200, {"access_token": "tok", "token_type": "bearer", "expires_in": 60})
            self._send(404, {})

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_python_utcp_config_registers_its_manual_call_templates(server, tmp_path):
    base, _ = server
    (tmp_path / "local.utcp.json").write_text(json.dumps(_manual("hello", "from a file")))
    config = {
        "variables": {"remote_KEY": "k-1"},
        "manual_call_templates": [
            {"name": "remote", "call_template_type": "http", "url": base + "/utcp",
             "headers": {"X-Api-Key": "${KEY}"}, "allowed_communication_protocols": ["http", "text"]},
            {"name": "local", "call_template_type": "file", "file_path": "local.utcp.json"},
            {"name": "inline", "call_template_type": "text",
             "content": "tools:\n  - name: echo\n    tool_call_template: {call_template_type: text, content: inline}\n"},
        ],
    }
    path = tmp_path / "utcp_config.json"
    path.write_text(json.dumps(config))
    with utp.Engine(config=str(path)) as engine:
        assert engine.manuals() == ["inline", "local", "remote"]
        assert engine.call_tool("remote.fetched", {}) == "from a URL"
        assert engine.call_tool("local.hello", {}) == "from a file"
        assert engine.call_tool("inline.echo", {}) == "inline"


@pytest.mark.parametrize("templates, message", [
    ({"call_template_type": "http"}, "`manual_call_templates` must be a list"),
    ([{"name": "w", "call_template_type": "http"}], "`manual_call_templates[0]` ('w'): invalid http template"),
    ([{"call_template_type": "native"}], "cannot register a manual from call_template_type 'native'"),
    ([7], "`manual_call_templates[0]`: must be a call template object"),
])
def test_a_malformed_manual_call_templates_key_is_named(templates, message):
    with pytest.raises(utp.InvalidArgumentError) as info:
        utp.Engine(config={"manual_call_templates": templates})
    assert message in str(info.value)


def test_a_relative_token_url_resolves_against_the_spec_url(server):
    base, state = server
    config = {"variables": {"secured_OAUTH_CLIENT_ID": "cid", "secured_OAUTH_CLIENT_SECRET": "s"}}
    with utp.Engine(config=config) as engine:
        engine.register_manual(base + "/specs/openapi.json", name="secured")
        tool = engine.tool("secured.getData")
        assert tool["tool_call_template"]["auth"]["token_url"] == base + "/oauth/token"
        assert engine.call_tool("secured.getData", {}) == {"ok": True}
    assert state["tokens"] == 1


def test_openapi_examples_are_kept():
    spec = {"openapi": "3.0.3", "info": {"title": "Shop", "version": "1"},
            "servers": [{"url": "https://shop.example.com"}],
            "paths": {"/items/{id}": {"get": {"operationId": "getItem", "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "example": 7},
                 "examples": {"a": {"value": "7"}, "b": {"value": 8}}}],
                "responses": {"200": {"description": "ok"}}}}}}
    with utp.Engine() as engine:
        engine.register_manual(spec, name="shop")
        schema = engine.tool("shop.getItem")["inputs"]["properties"]["id"]
        assert schema["examples"] == [7, 8]
        assert "example" not in schema


def test_a_manual_given_as_yaml_text():
    yaml = "name: notes\ntools:\n  - name: hi\n    tool_call_template: {call_template_type: text, content: hi}\n"
    with utp.Engine() as engine:
        assert engine.register_manual(yaml) == ["notes.hi"]
        assert engine.call_tool("notes.hi", {}) == "hi"
        with pytest.raises(utp.InvalidManualError, match="must be a mapping"):
            engine.register_manual("- a\n- list\n")
        with pytest.raises(utp.NotFoundError, match="a path to a file, an http\\(s\\) URL, or JSON or YAML text"):
            engine.register_manual("x" * 5000)


def test_json_schema_keywords_in_a_text_tool_are_not_variables():
    document = json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:x",
                           "$ref": "#/$defs/a", "$defs": {"a": {"type": "string", "$comment": "c"}}})
    with utp.Engine() as engine:
        engine.register_manual(_manual("schema", document), name="m")
        assert engine.call_tool("m.schema", {}) == document
