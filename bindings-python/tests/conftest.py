import contextlib
import json
import pathlib
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

import utp

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_MANUALS = REPO / "examples" / "manuals"


def interrupt_child(script, settle=0.2, timeout=15):
    """Run `script` (it prints "ready" when it blocks), send it Ctrl-C (SIGINT) after
    `settle` seconds; return (exit code, its stdout, seconds from the signal to exit)."""
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(settle)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out, time.monotonic() - start


@pytest.fixture
def engine():
    with utp.Engine() as e:
        yield e


@pytest.fixture
def weather_manual():
    return {
        "utcp_version": "1.0.1",
        "manual_version": "1.0.0",
        "tools": [
            {
                "name": "get_current",
                "description": "Current weather conditions for a city",
                "inputs": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
                "tags": ["weather", "current"],
                "tool_call_template": {
                    "call_template_type": "http",
                    "url": "https://api.example.com/current",
                    "http_method": "GET",
                    "auth": {
                        "auth_type": "api_key",
                        "api_key": "${API_KEY}",
                        "var_name": "X-Api-Key",
                        "location": "header",
                    },
                },
            },
            {
                "name": "get_forecast",
                "description": "Daily forecast for the next days",
                "inputs": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
                "tags": ["weather", "forecast"],
                "tool_call_template": {"call_template_type": "http", "url": "https://api.example.com/forecast"},
            },
            {
                "name": "convert_currency",
                "description": "Convert an amount between currencies",
                "inputs": {"type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}}},
                "tags": ["money"],
                "tool_call_template": {"call_template_type": "http", "url": "https://api.example.com/fx"},
            },
        ],
    }


class _Handler(BaseHTTPRequestHandler):
    def _reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/fail":
            return self._reply(503, {"error": "down"})
        if url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["30"])[0]))
        self._reply(200, {"path": url.path, "query": parse_qs(url.query), "key": self.headers.get("x-api-key")})

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        self._reply(200, {"received": json.loads(self.rfile.read(length))})

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections when many calls are in
    # flight, and each dropped SYN costs a 1 s retransmit.
    request_queue_size = 128


@contextlib.contextmanager
def json_server(answer):
    """A loopback HTTP server whose every request (GET or POST) is answered with
    `answer(handler) -> (status, payload)` as JSON. Yields its base URL."""

    class Handler(_Handler):
        def do_GET(self):
            self._reply(*answer(self))

        do_POST = do_GET

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server():
    """A loopback HTTP server (http.server on 127.0.0.1): GET echoes path, query and
    `x-api-key`; GET /fail answers 503; GET /slow?s=N answers after N seconds (30 by
    default); POST echoes the JSON body."""
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
