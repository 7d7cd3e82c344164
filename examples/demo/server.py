#!/usr/bin/env python3
"""The HTTP service behind the bundled example manuals, for `make demo`.

Serves the shop and weather endpoints of examples/manuals on 127.0.0.1:8765 (or
--port). The first stock lookup of each SKU answers 503, so the demo workflow shows
a retry. Standard library only.
"""
import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

STOCK = {"A1": 4, "B2": 40}
_seen = set()
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _args(self):
        url = urlparse(self.path)
        args = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("content-length") or 0)
        if length:
            try:
                args.update(json.loads(self.rfile.read(length)))
            except ValueError:
                pass
        return url.path.strip("/").split("/"), args

    def do_GET(self):
        parts, args = self._args()
        if parts[:1] == ["inventory"] and len(parts) == 2:
            sku = parts[1]
            with _lock:
                first = sku not in _seen
                _seen.add(sku)
            if first:
                return self._send(503, {"error": "inventory service warming up, try again"})
            return self._send(200, {"sku": sku, "count": STOCK.get(sku, 0)})
        if parts == ["weather", "current"]:
            return self._send(200, {"city": args.get("city", ""), "temperature": 14.5, "conditions": "cloudy"})
        if parts == ["weather", "forecast"]:
            return self._send(200, {"days": [{"high": 16}, {"high": 18}]})
        self._send(404, {"error": "not found"})

    def do_PUT(self):
        parts, args = self._args()
        if parts[:1] == ["inventory"] and len(parts) == 2:
            STOCK[parts[1]] = int(args.get("count", 0))
            return self._send(200, {"sku": parts[1], "count": STOCK[parts[1]]})
        self._send(404, {"error": "not found"})

    def do_POST(self):
        parts, _ = self._args()
        if parts[:1] == ["queue"] and len(parts) == 2:
            return self._send(202, {"sku": parts[1], "queued": True})
        self._send(404, {"error": "not found"})

    def log_message(self, *_):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8765)
    port = parser.parse_args().port
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
