"""The tools of the MCP test servers, shared by both SDK generations (server_v1.py, server_v2.py).

`add` has an output schema (structured content), `shout` returns text, `image` an image,
`fail` raises (the SDK answers `isError: true`), `sleep` waits, `pid` names the process,
`stats` returns an object (structured content that is not `{"result": x}`),
`progress` reports progress, `grow` adds a tool and says the list changed; `app_config`
is a resource. `serve` runs a server over stdio, Streamable HTTP or the older HTTP+SSE."""
import asyncio
import base64
import os
import socket
import sys
from typing import TypedDict

from mcp.types import ImageContent

PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


class Stats(TypedDict):
    count: int
    mean: float


def register(app, context_type) -> None:
    @app.tool()
    def add(a: float, b: float) -> float:
        """Add two numbers"""
        return a + b

    @app.tool()
    def shout(text: str) -> str:
        """The text in capitals"""
        return text.upper()

    @app.tool()
    def image() -> ImageContent:
        """A PNG signature as an image"""
        return ImageContent(type="image", data=PIXEL, mimeType="image/png")

    @app.tool()
    def fail() -> str:
        """Always raises"""
        raise ValueError("the tool broke")

    @app.tool()
    async def sleep(ms: int) -> str:
        """Waits ms milliseconds"""
        await asyncio.sleep(ms / 1000)
        return "slept"

    @app.tool()
    def pid() -> int:
        """The server's process id"""
        return os.getpid()

    @app.tool()
    def stats(values: list[float]) -> Stats:
        """How many values and their mean"""
        return {"count": len(values), "mean": sum(values) / len(values) if values else 0.0}

    async def progress(steps: int, ctx: context_type) -> str:
        """Reports `steps` progress notifications, then returns"""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
            await asyncio.sleep(0.01)
        return "done"

    app.tool()(progress)

    def grown() -> str:
        """A tool that `grow` added"""
        return "grown"

    async def grow(ctx: context_type) -> str:
        """Adds the tool `grown` and tells the client the tool list changed"""
        app.add_tool(grown)
        if hasattr(ctx, "notify_tools_changed"):  # mcp 2.x: to `subscriptions/listen` streams
            await ctx.notify_tools_changed()
        else:
            await ctx.request_context.session.send_tool_list_changed()
        return "grew"

    app.tool()(grow)

    @app.resource("config://app", name="app_config", description="The app's settings", mime_type="application/json")
    def app_config() -> str:
        return '{"debug": false}'


def serve(app) -> None:
    """`server.py [stdio | http | sse]`: over HTTP, bind a free port on 127.0.0.1 and
    print the endpoint's URL as the first line of stdout."""
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "stdio":
        app.run("stdio")
        return
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    if mode == "http":
        asgi, path = app.streamable_http_app(), "/mcp"
    else:
        asgi, path = app.sse_app(), "/sse"
    log = os.environ.get("UTP_MCP_REQUEST_LOG")
    if log:
        asgi = log_requests(asgi, log)
    required = os.environ.get("UTP_MCP_REQUIRE_AUTHORIZATION")
    if required:
        asgi = require_authorization(asgi, required)
    print(f"http://127.0.0.1:{port}{path}", flush=True)
    uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan="on")).run(sockets=[sock])


def require_authorization(asgi, expected: str):
    """Refuse (401) every HTTP request whose Authorization header is not `expected`."""

    async def app(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode() != expected:
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await asgi(scope, receive, send)

    return app


def log_requests(asgi, path: str):
    """Append each HTTP request body (one JSON-RPC message per line) to the file at `path`,
    and `{"disconnect": true}` when a client goes away before its response ended."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return await asgi(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body:
            with open(path, "ab") as f:
                f.write(body.replace(b"\n", b" ") + b"\n")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message = await receive()
            if message["type"] == "http.disconnect":
                with open(path, "ab") as f:
                    f.write(b'{"disconnect": true}\n')
            return message

        await asgi(scope, replay, send)

    return app
