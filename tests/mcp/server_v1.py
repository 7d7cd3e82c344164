"""An MCP server of the handshake era (initialize / notifications/initialized): PyPI mcp 1.x.
`server_v1.py [stdio | http | sse]` (see tools.serve)."""
import sys

from mcp.server.fastmcp import Context, FastMCP

sys.path.insert(0, __import__("os").path.dirname(__file__))
import tools  # noqa: E402

app = FastMCP("utp-test-v1")
tools.register(app, Context)
tools.serve(app)
