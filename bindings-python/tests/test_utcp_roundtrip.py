"""What we serialize, python-utcp 1.2 (the reference implementation) accepts."""

import pytest

import utp
from conftest import EXAMPLE_MANUALS

from utcp.data.utcp_manual import UtcpManualSerializer

# Call-template types python-utcp knows through the plugins installed in the venv.
PYTHON_UTCP_TYPES = {"http", "sse", "streamable_http", "cli", "text", "websocket"}


def validate(tools):
    manual = {"utcp_version": "1.0.1", "manual_version": "1.0.0", "tools": tools}
    return UtcpManualSerializer().validate_dict(manual)


def test_discovered_manuals_validate_with_python_utcp(engine):
    engine.discover(EXAMPLE_MANUALS)
    ours = [t for t in engine.tools() if t["tool_call_template"]["call_template_type"] in PYTHON_UTCP_TYPES]
    assert len(ours) == 6  # every example tool (shop.queueUpdate became HTTP for the demo)
    parsed = validate(ours)
    assert [t.name for t in parsed.tools] == [t["name"] for t in ours]
    kinds = {t.name: type(t.tool_call_template).__name__ for t in parsed.tools}
    assert kinds["legacy_notes.search_notes"] == "CliCallTemplate"
    assert kinds["weather.get_current"] == "HttpCallTemplate"


def test_openapi_tools_validate_with_python_utcp(engine):
    spec = {
        "swagger": "2.0",
        "info": {"title": "store", "version": "1"},
        "host": "store.example",
        "basePath": "/api",
        "schemes": ["https"],
        "securityDefinitions": {"key": {"type": "apiKey", "name": "X-Key", "in": "header"}},
        "security": [{"key": []}],
        "paths": {
            "/orders/{id}": {
                "get": {
                    "operationId": "getOrder",
                    "parameters": [{"name": "id", "in": "path", "required": True, "type": "string"}],
                    "responses": {"200": {"description": "ok", "schema": {"$ref": "#/definitions/Order"}}},
                }
            }
        },
        "definitions": {
            "Order": {"type": "object", "properties": {"id": {"type": "string"}, "next": {"$ref": "#/definitions/Order"}}}
        },
    }
    engine.register_manual(spec)
    tools = engine.tools()
    parsed = validate(tools)
    template = parsed.tools[0].tool_call_template
    assert template.url == "https://store.example/api/orders/{id}"
    assert template.auth.api_key == "${KEY_API_KEY}" or "${" in template.auth.api_key


@pytest.mark.parametrize("template_type", sorted(PYTHON_UTCP_TYPES))
def test_each_template_type_round_trips(engine, template_type):
    templates = {
        "http": {"call_template_type": "http", "url": "https://x.example/a", "http_method": "POST"},
        "sse": {"call_template_type": "sse", "url": "https://x.example/events"},
        "streamable_http": {"call_template_type": "streamable_http", "url": "https://x.example/stream"},
        "cli": {"call_template_type": "cli", "commands": [{"command": "echo UTCP_ARG_msg_UTCP_END"}]},
        "text": {"call_template_type": "text", "content": "hello"},
        "websocket": {"call_template_type": "websocket", "url": "wss://x.example/ws", "message": {"q": "UTCP_ARG_q_UTCP_ARG"},
                      "response_format": "json", "keep_alive": False, "timeout": 5},
    }
    manual = {"tools": [{"name": "t", "description": "d", "tool_call_template": templates[template_type]}]}
    engine.register_manual(manual, name="m")
    parsed = validate(engine.tools())
    assert parsed.tools[0].tool_call_template.call_template_type == template_type
