"""An MCP server of the stateless era (server/discover, protocol 2026-07-28): PyPI mcp 2.x.
`server_v2.py [stdio | http]` (see tools.serve)."""
import sys

from mcp.server.mcpserver import Context, MCPServer

sys.path.insert(0, __import__("os").path.dirname(__file__))
import tools  # noqa: E402

app = MCPServer("utp-test-v2")
tools.register(app, Context)
tools.serve(app)
