"""UTP Runtime: discover UTCP tools, register and search them, and (as the runtime
grows) call them under policy and run durable workflows, in-process.

    import utp
    with utp.Engine() as engine:
        engine.discover("./tools")
        for tool in engine.search_tools("weather forecast", limit=3):
            print(tool["name"], tool["description"])

Every blocking method releases the GIL while Rust works and has an awaitable twin
(``discover_async``, ``register_manual_async``...) that runs it on a worker thread.
Errors are ``utp.UtpError`` subclasses with a stable ``.code`` (``"NOT_FOUND"``...).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar, Union

from . import _utp
from ._utp import (
    ERRORS_BY_CODE,
    AlreadyExistsError,
    ApprovalRequiredError,
    CancelledError,
    InternalError,
    InvalidArgumentError,
    InvalidManualError,
    NotFoundError,
    PanicError,
    PermissionDeniedError,
    PlannerError,
    RateLimitedError,
    SandboxError,
    SecurityError,
    StoreError,
    TimeoutError,
    ToolFailedError,
    TransportError,
    UtpError,
    ValidationFailedError,
    VariableNotFoundError,
    version,
)

__version__: str = _utp.__version__

PathLike = Union[str, "os.PathLike[str]"]


T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    # asyncio is imported on first use: it alone would triple `import utp`'s time.
    import asyncio

    return await asyncio.to_thread(fn, *args)


class Engine(_utp.Engine):
    """The runtime engine: ``Engine(config=None, store="memory")``.

    ``config`` is a dict, a path to ``utp.yaml`` / ``utp.json``, or None.
    Use it as a context manager, or call ``close()`` when done.
    """

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def discover_async(self, target: PathLike) -> List[str]:
        return await _in_thread(self.discover, target)

    async def discover_report_async(self, target: PathLike) -> Dict[str, Any]:
        return await _in_thread(self.discover_report, target)

    async def register_manual_async(
        self, manual: Union[Dict[str, Any], PathLike], name: Optional[str] = None
    ) -> List[str]:
        return await _in_thread(self.register_manual, manual, name)

    async def search_tools_async(
        self, query: str, limit: int = 10, tags: Optional[Sequence[str]] = None
    ) -> List[Dict[str, Any]]:
        return await _in_thread(self.search_tools, query, limit, list(tags) if tags else None)

    def __repr__(self) -> str:
        if self.closed:
            return "<utp.Engine closed>"
        return f"<utp.Engine manuals={len(self.manuals())}>"


__all__ = [
    "Engine",
    "version",
    "__version__",
    "UtpError",
    "ERRORS_BY_CODE",
    "AlreadyExistsError",
    "ApprovalRequiredError",
    "CancelledError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidManualError",
    "NotFoundError",
    "PanicError",
    "PermissionDeniedError",
    "PlannerError",
    "RateLimitedError",
    "SandboxError",
    "SecurityError",
    "StoreError",
    "TimeoutError",
    "ToolFailedError",
    "TransportError",
    "ValidationFailedError",
    "VariableNotFoundError",
]
