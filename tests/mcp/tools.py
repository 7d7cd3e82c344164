"""The tools of the MCP test servers, shared by both SDK generations (server_v1.py, server_v2.py).

`add` has an output schema (structured content), `shout` returns text, `image` an image,
`fail` raises (the SDK answers `isError: true`), `sleep` waits, `pid` names the process,
`stats` returns an object (structured content that is not `{"result": x}`)."""
import asyncio
import base64
import os

from typing import TypedDict

from mcp.types import ImageContent

PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


class Stats(TypedDict):
    count: int
    mean: float


def register(app) -> None:
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
