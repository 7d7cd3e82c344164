"""UTP Runtime: discover UTCP tools, register and search them, call them under
policy, and run workflows over them, in-process.

    import utp
    with utp.Engine() as engine:
        engine.discover("./tools")
        for tool in engine.search_tools("weather forecast", limit=3):
            print(tool["name"], tool["description"])

Business rules and event subscribers are Python functions too::

    engine.domain_layer.add_business_rule("max_bet", lambda tool, action, params: params.get("amount", 0) <= 1000)
    engine.event_bus.subscribe("policy.*", lambda event: print(event["type"], event["data"]))

Workflows (a dict, YAML/JSON text or a file) run their steps as dependencies finish,
with retries, fallbacks, ``if`` conditions and data between steps::

    record = engine.run_workflow("restock.yaml", {"sku": "A1"}, session="s1")
    record["status"], record["outputs"], record["steps"]["update"]["attempts"]

With ``store="sqlite:PATH"`` executions, events, approvals and session state are
durable: a new engine on the same file reads them and resumes what a crashed
process left unfinished::

    engine = utp.Engine(store="sqlite:utp.db")
    engine.register_tool("shop.update", update)
    engine.recover()                                  # ids resumed
    engine.stored_events(execution_id=record["execution_id"])

Intents route a named kind of request to a workflow or a Python handler::

    engine.register_intent("restock", "restock.yaml")
    engine.register_intent("lookup", lambda ctx, params: engine.call_tool("shop.get", params))
    engine.submit_intent("lookup", {"sku": "A1"}, session="s1")["output"]

The planner turns a request into a validated workflow (offline by default; a model
with the config's ``planner`` section), and ``run`` plans and runs it::

    engine.plan("weather forecast for the city of an IP address")["definition"]
    engine.run("weather forecast for the city of an IP address", {"ip": "8.8.8.8"})["outputs"]

Streaming tools (``sse``, ``streamable_http``) can be read item by item, as the
server sends them, and an ``mcp`` tool's progress notifications come before its result;
closing the stream (or leaving the block) closes the connection::

    with engine.call_tool_stream("news.feed", {"topic": "rust"}) as stream:
        for item in stream:
            print(item)
    async for item in engine.call_tool_stream_async("news.feed"):   # in a coroutine
        print(item)

Every blocking method releases the GIL while Rust works and has an awaitable twin
(``discover_async``, ``register_manual_async``...) that runs it on a worker thread;
``call_tool_async`` is native: the call runs on the engine's own runtime.
Errors are ``utp.UtpError`` subclasses with a stable ``.code`` (``"NOT_FOUND"``...).
"""

from __future__ import annotations

import os
import weakref
from types import TracebackType
from typing import TYPE_CHECKING
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union, overload

from . import _utp

if TYPE_CHECKING:
    import asyncio
from ._utp import (
    ERRORS_BY_CODE,
    AlreadyExistsError,
    ApprovalRequiredError,
    CancelledError,
    Decision,
    IntentContext,
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
    ToolStream,
    TransportError,
    UtpError,
    ValidationFailedError,
    VariableNotFoundError,
    version,
)

__version__: str = _utp.__version__

PathLike = Union[str, "os.PathLike[str]"]
WorkflowLike = Union[Dict[str, Any], str, "os.PathLike[str]"]
"""A workflow definition (dict), YAML/JSON text, or the path of a workflow file."""


T = TypeVar("T")
ToolFn = TypeVar("ToolFn", bound=Callable[..., Any])


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    # asyncio is imported on first use: it alone would triple `import utp`'s time.
    import asyncio

    return await asyncio.to_thread(fn, *args)


def _settle(fut: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    """Settle ``fut`` on its loop's thread, unless it was cancelled meanwhile."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _settle_all(batch: List[Tuple["asyncio.Future[Any]", bool, Any]]) -> None:
    for fut, ok, value in batch:
        _settle(fut, ok, value)


_SETTLERS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _utp._Settler]" = weakref.WeakKeyDictionary()


def _settler_for(loop: "asyncio.AbstractEventLoop") -> "_utp._Settler":
    """The loop's settler of ``call_tool_async`` futures (see ``_utp._Settler``): one per
    loop, watched by the loop, so that calls finishing together are settled in one
    wake-up of the loop, on its own thread."""
    settler = _SETTLERS.get(loop)
    if settler is None:
        settler = _utp._Settler()
        loop.add_reader(settler.fileno(), _drain, settler)
        _SETTLERS[loop] = settler
    return settler


def _drain(settler: "_utp._Settler") -> None:
    _settle_all(settler.drain())


class AsyncToolStream:
    """The items of one tool call as the server sends them, for ``async for``
    (``Engine.call_tool_stream_async``). The call is admitted and its stream opened
    on the first ``__anext__``; errors (``NotFoundError``, ``TimeoutError`` while
    opening, ``TransportError`` mid-stream...) are raised there. ``aclose()`` /
    ``close()`` (or leaving an ``async with`` block, or dropping the stream) cancel the
    call and close its connection; cancelling the task awaiting ``__anext__`` does too.
    The next item is awaited on the engine's runtime, never on a thread of asyncio's
    pool."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ToolStream) -> None:
        self._stream = stream

    def __aiter__(self) -> "AsyncToolStream":
        return self

    async def __anext__(self) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[List[Any]]" = loop.create_future()
        self._stream._next_start(fut, _settler_for(loop))
        try:
            item = await fut
        except asyncio.CancelledError:
            self._stream.close()
            raise
        if not item:
            raise StopAsyncIteration
        return item[0]

    def close(self) -> None:
        """Cancel the call and close its connection; idempotent."""
        self._stream.close()

    async def aclose(self) -> None:
        self._stream.close()

    @property
    def closed(self) -> bool:
        return self._stream.closed

    async def __aenter__(self) -> "AsyncToolStream":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._stream.close()

    def __repr__(self) -> str:
        return repr(self._stream).replace("<utp.ToolStream", "<utp.AsyncToolStream", 1)


RuleFn = Callable[[str, str, Dict[str, Any]], Any]
"""``fn(tool, action, params)`` returning a bool or a ``Decision`` (or an awaitable of one)."""
EventCallback = Callable[[Dict[str, Any]], Any]
"""``callback(event)``; the event is a dict (docs/design.md §8 JSON). May be ``async def``."""


class DomainLayer:
    """``engine.domain_layer``: business rules in Python and dry-run checks.

    A rule ``fn(tool, action, params)`` gets ``tool`` = the manual name (``"betfair"``),
    ``action`` = the tool name without it (``"placeBet"``) and ``params`` = the call's
    arguments. It returns True (allow), False (deny) or a ``utp.Decision``; it may be
    ``async def``. It runs before every call; an exception, any other return value, or
    no answer within ``timeout`` seconds (default 10) denies the call with a message
    naming the rule (fail closed). Deny beats escalate beats allow.

    Where it runs: a sync rule added without ``timeout`` runs on the thread that waits
    for the call when it can (a blocking ``call_tool``, or the first step of
    ``call_tool_async`` on the event loop's thread), with no hand-off to another thread;
    its answer is checked against the 10 s when it comes. Give ``timeout`` (or make it
    ``async def``) and it runs on an engine thread, so that the call stops waiting for it
    at the deadline. docs/architecture.md, "Host callbacks on the calling thread".
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: "Engine") -> None:
        self._engine = engine

    def add_business_rule(self, name: str, fn: RuleFn, *, timeout: Optional[float] = None) -> None:
        """Add the rule ``name``; ``AlreadyExistsError`` if that name is taken."""
        self._engine._add_business_rule(name, fn, timeout)

    def remove_business_rule(self, name: str) -> bool:
        """Remove the rule ``name`` (its function is released); False if there was none."""
        return self._engine._remove_business_rule(name)

    def check(
        self, tool_name: str, args: Optional[Dict[str, Any]] = None, tenant: Optional[str] = None
    ) -> Dict[str, Any]:
        """Dry run for a call: ``{decision, security_level, rules, reason, tool, rate_limited}``.

        Business rules run; nothing is called, no approval is created, and no
        rate-limit budget is used.
        """
        return self._engine._check(tool_name, args, tenant)

    async def check_async(
        self, tool_name: str, args: Optional[Dict[str, Any]] = None, tenant: Optional[str] = None
    ) -> Dict[str, Any]:
        return await _in_thread(self.check, tool_name, args, tenant)

    def __repr__(self) -> str:
        return f"<utp.DomainLayer of {self._engine!r}>"


class Subscription:
    """A live event subscription; ``unsubscribe()`` ends it (also on leaving a ``with`` block)."""

    __slots__ = ("_bus", "id", "pattern")

    def __init__(self, bus: "EventBus", id: int, pattern: str) -> None:
        self._bus = bus
        self.id = id
        self.pattern = pattern

    def unsubscribe(self) -> bool:
        """End the subscription and release its callback; False if it had already ended."""
        return self._bus.unsubscribe(self.id)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        return f"<utp.Subscription id={self.id} pattern={self.pattern!r}>"


class EventBus:
    """``engine.event_bus``: subscribe to events by glob pattern, read the history.

    Patterns: ``"*"`` (every event), ``"tool.*"``, ``"*.failed"``, ``"policy.denied"``;
    a pattern must match at least one event type of the runtime. A callback runs on
    its subscription's own thread, one event at a time in order; a slow one never
    delays a call (its bounded queue drops events, counted in ``metrics()``). An
    exception in it is counted and logged on the ``utp.events`` logger.
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: "Engine") -> None:
        self._engine = engine

    def subscribe(self, pattern: str, callback: EventCallback) -> Subscription:
        """Call ``callback(event: dict)`` (sync or ``async def``) for each matching event."""
        sub_id = self._engine._subscribe(pattern, callback)
        return Subscription(self, sub_id, pattern)

    def unsubscribe(self, subscription: Union[Subscription, int]) -> bool:
        """End a subscription (a ``Subscription`` or its id); False if it had already ended."""
        if isinstance(subscription, Subscription):
            sub_id = subscription.id
        elif isinstance(subscription, int) and not isinstance(subscription, bool):
            sub_id = subscription
        else:
            raise TypeError(f"expected a Subscription or its id, got {type(subscription).__name__}")
        if sub_id < 0:
            return False
        return self._engine._unsubscribe(sub_id)

    def history(
        self,
        limit: Optional[int] = 100,
        type: Optional[str] = None,
        execution_id: Optional[str] = None,
        tool: Optional[str] = None,
        tenant: Optional[str] = None,
        since: Optional[int] = None,
    ) -> List[Dict[str, Any]]:
        """Events kept in memory, oldest first: the last ``limit`` (None or 0: all) that
        match every filter given. ``type`` is a glob like ``subscribe``'s pattern;
        ``since`` keeps events with a greater id (for polling)."""
        return self._engine._history(limit, type, execution_id, tool, tenant, since)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every subscriber has handled the events published so far (at most
        ``timeout`` seconds); True when all are idle. Do not call it from a subscriber."""
        return self._engine._flush_events(timeout)

    async def flush_async(self, timeout: float = 5.0) -> bool:
        return await _in_thread(self.flush, timeout)

    def __repr__(self) -> str:
        return f"<utp.EventBus of {self._engine!r}>"


class Engine(_utp.Engine):
    """The runtime engine: ``Engine(config=None, store="memory")``.

    ``config`` is a dict, a path to ``utp.yaml`` / ``utp.json``, or None.
    ``store`` is ``"memory"`` (nothing outlives the engine) or ``"sqlite:PATH"``:
    executions, their steps, the event audit log, approvals and session state are
    committed to that SQLite file, and a new engine on it sees them (``execution``,
    ``executions``, ``stored_events``) and resumes the executions a crashed process
    left unfinished (``recover``; steps already committed never run again). One
    engine at a time per file: a second one raises ``StoreError``. ``store`` wins
    over the config's ``store`` url; the config may also set ``durability``
    (``sync`` / ``normal`` / ``off``), ``retention`` (``"30d"``) and ``recover``.
    Use it as a context manager, or call ``close()`` when done (which releases the file).
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
        user: Optional[str] = None,
        approval_id: Optional[str] = None,
        fail_fast_on_approval: bool = False,
    ) -> Any:
        """``call_tool`` as a native awaitable: the call runs on the engine's runtime,
        not on a thread of asyncio's pool, so any number can be in flight. Cancelling
        the awaiting task cancels the call (a CLI tool's process is killed, a Python
        tool's result is dropped)."""
        import asyncio

        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[Any]" = loop.create_future()
        pending = self._call_tool_start(
            name, args, tenant, session, timeout, user, approval_id, fail_fast_on_approval, fut, _settler_for(loop)
        )
        if not isinstance(pending, _utp._PendingCall):
            return pending  # finished in its first poll (no I/O, no Python tool)
        try:
            return await fut
        except asyncio.CancelledError:
            pending.cancel()
            raise

    def call_tool_stream_async(
        self,
        name: str,
        args: Optional[Dict[str, Any]] = None,
        *,
        tenant: Optional[str] = None,
        session: Optional[str] = None,
        timeout: Optional[float] = None,
        user: Optional[str] = None,
        approval_id: Optional[str] = None,
        fail_fast_on_approval: bool = False,
    ) -> AsyncToolStream:
        """``call_tool_stream`` for ``async for``: returns at once (bad arguments raise
        here); the stream opens on the first ``__anext__`` (see ``AsyncToolStream``)."""
        stream = self._call_tool_stream_deferred(
            name, args, tenant, session, timeout, user, approval_id, fail_fast_on_approval
        )
        return AsyncToolStream(stream)

    async def run_workflow_async(
        self,
        workflow: WorkflowLike,
        inputs: Optional[Dict[str, Any]] = None,
        *,
        session: Optional[str] = None,
        tenant: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """``run_workflow`` as an awaitable. Cancelling the awaiting task cancels the run."""
        execution_id = await self.start_workflow_async(
            workflow, inputs, session=session, tenant=tenant, user=user, timeout=timeout
        )
        try:
            return await self.wait_execution_async(execution_id)
        except BaseException:
            # The awaiting task was cancelled (or the loop is going away): stop the run too.
            self._cancel_quietly(execution_id)
            raise

    async def start_workflow_async(
        self,
        workflow: WorkflowLike,
        inputs: Optional[Dict[str, Any]] = None,
        *,
        session: Optional[str] = None,
        tenant: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> str:
        """``start_workflow`` as an awaitable (validation runs on a worker thread)."""
        import asyncio

        def start() -> str:
            return self.start_workflow(workflow, inputs, session=session, tenant=tenant, user=user, timeout=timeout)

        started = asyncio.ensure_future(_in_thread(start))
        try:
            return await asyncio.shield(started)
        except asyncio.CancelledError:
            # Cancelled while validating: a run that starts all the same is cancelled at once.
            started.add_done_callback(self._cancel_started)
            raise

    def _cancel_started(self, started: "asyncio.Future[str]") -> None:
        if not started.cancelled() and started.exception() is None:
            self._cancel_quietly(started.result())

    def _cancel_quietly(self, execution_id: str) -> None:
        try:
            self.cancel(execution_id)
        except UtpError:
            pass  # finished, or the engine was closed

    async def wait_execution_async(self, execution_id: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """``wait_execution`` as an awaitable; cancelling it stops the waiting, not the run."""
        return await _in_thread(self.wait_execution, execution_id, timeout)

    async def validate_workflow_async(self, workflow: WorkflowLike) -> None:
        await _in_thread(self.validate_workflow, workflow)

    async def submit_intent_async(
        self,
        intent_type: str,
        params: Optional[Dict[str, Any]] = None,
        *,
        tenant: Optional[str] = None,
        session: Optional[str] = None,
    ) -> Dict[str, Any]:
        """``submit_intent`` as an awaitable (on a worker thread). Cancelling the
        awaiting task stops the waiting; the request itself runs to its end."""

        def submit() -> Dict[str, Any]:
            return self.submit_intent(intent_type, params, tenant=tenant, session=session)

        return await _in_thread(submit)

    async def plan_async(
        self,
        request: str,
        *,
        session: Optional[str] = None,
        tenant: Optional[str] = None,
        inputs: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """``plan`` as an awaitable (on a worker thread). Cancelling the awaiting task
        stops the waiting; the planning itself runs to its end."""

        def plan() -> Dict[str, Any]:
            return self.plan(request, session=session, tenant=tenant, inputs=inputs)

        return await _in_thread(plan)

    async def run_async(
        self,
        request: str,
        inputs: Optional[Dict[str, Any]] = None,
        *,
        session: Optional[str] = None,
        tenant: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """``run`` as an awaitable: ``plan_async``, then ``run_workflow_async`` of the
        plan's definition; the record gets ``plan``. Cancelling the awaiting task
        cancels the run (while planning: stops the waiting)."""
        planned = await self.plan_async(request, session=session, tenant=tenant, inputs=inputs or {})
        record = await self.run_workflow_async(
            planned["definition"], inputs, session=session, tenant=tenant, user=user, timeout=timeout
        )
        record["plan"] = planned
        return record

    @property
    def domain_layer(self) -> DomainLayer:
        """Business rules and dry-run checks (see ``DomainLayer``)."""
        return DomainLayer(self)

    @property
    def event_bus(self) -> EventBus:
        """Event subscriptions and history (see ``EventBus``)."""
        return EventBus(self)

    async def recover_async(self) -> List[str]:
        """``recover`` as an awaitable (on a worker thread)."""
        return await _in_thread(self.recover)

    async def stored_events_async(
        self,
        execution_id: Optional[str] = None,
        type: Optional[str] = None,
        after: Optional[int] = None,
        limit: Optional[int] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """``stored_events`` as an awaitable (on a worker thread)."""
        return await _in_thread(self.stored_events, execution_id, type, after, limit, since, until)

    async def prune_async(self, older_than: Union[float, str]) -> int:
        """``prune`` as an awaitable (on a worker thread)."""
        return await _in_thread(self.prune, older_than)

    async def approve_async(
        self, approval_id: str, approved: bool = True, reason: Optional[str] = None
    ) -> Dict[str, Any]:
        return await _in_thread(self.approve, approval_id, approved, reason)

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

    def tool(self, *args: Any, **options: Any) -> Any:
        """``engine.tool("manual.tool")`` returns a registered tool as a dict.

        As a decorator it registers a Python function as a native tool::

            @engine.tool                        # -> "local.<function name>"
            def echo(args): return args

            @engine.tool(name="math.add", inputs={...}, description="Add two numbers")
            async def add(args): return args["a"] + args["b"]

        The function gets the arguments as one dict; its docstring is the default
        description.
        """
        # Only a positional string is a look-up: ``@engine.tool(name="m.t")`` registers.
        if len(args) == 1 and isinstance(args[0], str) and not options:
            return super().tool(args[0])
        if len(args) == 1 and callable(args[0]) and not options:
            return self._register_decorated(args[0], {})
        if args:
            raise TypeError("engine.tool() takes a tool name to look up, a function to register, or keyword options")

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
    "Decision",
    "DomainLayer",
    "IntentContext",
    "EventBus",
    "Subscription",
    "ToolStream",
    "AsyncToolStream",
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
