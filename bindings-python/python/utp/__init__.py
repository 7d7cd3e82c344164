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
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar, Union, overload

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
ToolFn = TypeVar("ToolFn", bound=Callable[..., Any])


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

    async def call_tool_async(
        self,
        name: str,
        args: Optional[Dict[str, Any]] = None,
        *,
        tenant: Optional[str] = None,
        session: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        def call() -> Any:
            return self.call_tool(name, args, tenant=tenant, session=session, timeout=timeout)

        return await _in_thread(call)

    @overload
    def tool(self, name: str) -> Dict[str, Any]: ...

    @overload
    def tool(self, name: ToolFn) -> ToolFn: ...

    @overload
    def tool(
        self,
        *,
        name: Optional[str] = None,
        inputs: Optional[Dict[str, Any]] = None,
        outputs: Optional[Dict[str, Any]] = None,
        description: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
    ) -> Callable[[ToolFn], ToolFn]: ...

    def tool(self, name: Any = None, **options: Any) -> Any:
        """``engine.tool("manual.tool")`` returns a registered tool as a dict.

        As a decorator it registers a Python function as a native tool::

            @engine.tool                        # -> "local.<function name>"
            def echo(args): return args

            @engine.tool(name="math.add", inputs={...}, description="Add two numbers")
            async def add(args): return args["a"] + args["b"]

        The function gets the arguments as one dict; its docstring is the default
        description.
        """
        if isinstance(name, str) and not options:
            return super().tool(name)
        if callable(name) and not options:
            return self._register_decorated(name, {})
        if name is not None:
            options["name"] = name

        def decorate(fn: ToolFn) -> ToolFn:
            return self._register_decorated(fn, options)

        return decorate

    def _register_decorated(self, fn: ToolFn, options: Dict[str, Any]) -> ToolFn:
        name = options.get("name") or f"local.{getattr(fn, '__name__', 'tool')}"
        description = options.get("description")
        if description is None:
            description = (getattr(fn, "__doc__", None) or "").strip()
        tags = options.get("tags")
        self.register_tool(
            name,
            fn,
            inputs=options.get("inputs"),
            outputs=options.get("outputs"),
            description=description,
            tags=list(tags) if tags else None,
        )
        return fn

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
