"""Type stubs of the native module ``utp._utp`` (checked by mypy.stubtest in ``make test``)."""

import asyncio
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, final

from typing_extensions import disjoint_base

__all__ = [
    "Engine",
    "Decision",
    "IntentContext",
    "_PendingCall",
    "_Settler",
    "ToolStream",
    "version",
    "__version__",
    "UtpError",
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "InvalidManualError",
    "ValidationFailedError",
    "VariableNotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ApprovalRequiredError",
    "TimeoutError",
    "CancelledError",
    "TransportError",
    "ToolFailedError",
    "SecurityError",
    "StoreError",
    "PlannerError",
    "SandboxError",
    "InternalError",
    "PanicError",
    "ERRORS_BY_CODE",
]

__version__: str

def version() -> str: ...

class UtpError(Exception):
    code: str

class InvalidArgumentError(UtpError): ...
class NotFoundError(UtpError): ...
class AlreadyExistsError(UtpError): ...
class InvalidManualError(UtpError): ...
class ValidationFailedError(UtpError): ...
class VariableNotFoundError(UtpError): ...
class PermissionDeniedError(UtpError): ...
class RateLimitedError(UtpError):
    retry_after: Optional[float]
    """Seconds until a call may pass (set on raised instances)."""

class ApprovalRequiredError(UtpError):
    approval_id: Optional[str]
    """The approval to grant with ``engine.approve`` (set on raised instances)."""

class TimeoutError(UtpError): ...
class CancelledError(UtpError): ...
class TransportError(UtpError): ...
class ToolFailedError(UtpError): ...
class SecurityError(UtpError): ...
class StoreError(UtpError): ...
class PlannerError(UtpError): ...
class SandboxError(UtpError): ...
class InternalError(UtpError): ...
class PanicError(UtpError): ...

ERRORS_BY_CODE: Dict[str, type[UtpError]]

@final
class Decision:
    """A business rule's answer when a bool is not enough."""

    @staticmethod
    def allow() -> Decision: ...
    @staticmethod
    def deny(reason: Optional[str] = None) -> Decision: ...
    @staticmethod
    def escalate(reason: Optional[str] = None) -> Decision: ...
    @property
    def kind(self) -> str: ...
    @property
    def reason(self) -> Optional[str]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class IntentContext:
    """What an intent handler gets: the request and its session's state."""

    @property
    def execution_id(self) -> str: ...
    @property
    def intent(self) -> str: ...
    @property
    def tenant(self) -> Optional[str]: ...
    @property
    def session(self) -> Optional[str]: ...
    def state(self) -> Dict[str, Any]: ...
    def set_state(self, key: str, value: Any) -> bool: ...
    def to_dict(self) -> Dict[str, Any]: ...

@final
class _PendingCall:
    """A call started by ``Engine._call_tool_start`` that did not finish at once."""

    @property
    def cancelled(self) -> bool: ...
    def cancel(self) -> None: ...

@final
class _Settler:
    """Settles one event loop's ``call_tool_async`` futures in batches, on the loop's thread."""

    def __new__(cls) -> "_Settler": ...
    def fileno(self) -> int: ...
    def drain(self) -> List[Tuple[asyncio.Future[Any], bool, Any]]: ...

@final
class ToolStream:
    """The items of one tool call as the server sends them (``Engine.call_tool_stream``)."""

    def __iter__(self) -> "ToolStream": ...
    def __next__(self) -> Any: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> "ToolStream": ...
    def __exit__(self, *_exc_info: object) -> None: ...
    def _next_start(self, future: asyncio.Future[List[Any]], settler: _Settler) -> None: ...

@disjoint_base
class Engine:
    def __new__(
        cls,
        config: Union[Dict[str, Any], str, os.PathLike[str], None] = None,
        store: str = "memory",
    ) -> "Engine": ...
    @property
    def closed(self) -> bool: ...
    def discover(self, target: Union[str, os.PathLike[str]]) -> List[str]: ...
    def discover_report(self, target: Union[str, os.PathLike[str]]) -> Dict[str, Any]: ...
    def register_manual(
        self, manual: Union[Dict[str, Any], str, os.PathLike[str]], name: Optional[str] = None
    ) -> List[str]: ...
    def deregister_manual(self, name: str) -> bool: ...
    def tools(self) -> List[Dict[str, Any]]: ...
    def tool(self, name: str) -> Dict[str, Any]: ...
    def search_tools(
        self, query: str, limit: int = 10, tags: Optional[Sequence[str]] = None
    ) -> List[Dict[str, Any]]: ...
    def manuals(self) -> List[str]: ...
    def required_variables(self, name: str) -> List[str]: ...
    def call_tool(
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
    ) -> Any: ...
    def call_tool_stream(
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
    ) -> ToolStream: ...
    def _call_tool_stream_deferred(
        self,
        name: str,
        args: Optional[Dict[str, Any]],
        tenant: Optional[str],
        session: Optional[str],
        timeout: Optional[float],
        user: Optional[str],
        approval_id: Optional[str],
        fail_fast_on_approval: bool,
    ) -> ToolStream: ...
    def _call_tool_start(
        self,
        name: str,
        args: Optional[Dict[str, Any]],
        tenant: Optional[str],
        session: Optional[str],
        timeout: Optional[float],
        user: Optional[str],
        approval_id: Optional[str],
        fail_fast_on_approval: bool,
        future: asyncio.Future[Any],
        settler: _Settler,
    ) -> Any: ...
    def register_tool(
        self,
        name: str,
        func: Callable[[Dict[str, Any]], Any],
        inputs: Optional[Dict[str, Any]] = None,
        outputs: Optional[Dict[str, Any]] = None,
        description: str = "",
        tags: Optional[Sequence[str]] = None,
    ) -> str: ...
    def run_workflow(
        self,
        workflow: Union[Dict[str, Any], str, os.PathLike[str]],
        inputs: Optional[Dict[str, Any]] = None,
        *,
        session: Optional[str] = None,
        tenant: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]: ...
    def plan(
        self,
        request: str,
        *,
        session: Optional[str] = None,
        tenant: Optional[str] = None,
        inputs: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Plan a workflow for a request: ``{definition, provider, model, rounds, usage}``."""
    def run(
        self,
        request: str,
        inputs: Optional[Dict[str, Any]] = None,
        *,
        session: Optional[str] = None,
        tenant: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Plan a workflow for a request and run it: the execution record with ``plan``."""
    def start_workflow(
        self,
        workflow: Union[Dict[str, Any], str, os.PathLike[str]],
        inputs: Optional[Dict[str, Any]] = None,
        *,
        session: Optional[str] = None,
        tenant: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> str: ...
    def wait_execution(self, execution_id: str, timeout: Optional[float] = None) -> Dict[str, Any]: ...
    def validate_workflow(self, workflow: Union[Dict[str, Any], str, os.PathLike[str]]) -> None: ...
    def execution(self, execution_id: str) -> Dict[str, Any]: ...
    def executions(
        self, status: Optional[str] = None, session: Optional[str] = None
    ) -> List[Dict[str, Any]]: ...
    def cancel(self, execution_id: str) -> bool: ...
    def suspend(self, execution_id: str) -> bool: ...
    def resume(self, execution_id: str) -> bool: ...
    def register_intent(
        self,
        intent_type: str,
        target: Union[
            Dict[str, Any], str, os.PathLike[str], Callable[[IntentContext, Dict[str, Any]], Any]
        ],
    ) -> None: ...
    def unregister_intent(self, intent_type: str) -> bool: ...
    def intents(self) -> List[str]: ...
    def submit_intent(
        self,
        intent_type: str,
        params: Optional[Dict[str, Any]] = None,
        *,
        tenant: Optional[str] = None,
        session: Optional[str] = None,
    ) -> Dict[str, Any]: ...
    def session_state(self, session: str, tenant: Optional[str] = None) -> Dict[str, Any]: ...
    def set_session_state(self, session: str, key: str, value: Any, tenant: Optional[str] = None) -> None: ...
    def recover(self) -> List[str]:
        """Resume executions a previous process left unfinished in the store; the ids resumed."""
    def stored_events(
        self,
        execution_id: Optional[str] = None,
        type: Optional[str] = None,
        after: Optional[int] = None,
        limit: Optional[int] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """Events from the store's audit log, in store order (each with ``seq``)."""
    def prune(self, older_than: Union[float, str]) -> int:
        """Delete finished executions and events older than ``older_than``; rows deleted."""
    def _add_business_rule(
        self, name: str, func: Callable[[str, str, Dict[str, Any]], Any], timeout: Optional[float] = None
    ) -> None: ...
    def _remove_business_rule(self, name: str) -> bool: ...
    def _check(
        self, tool_name: str, args: Optional[Dict[str, Any]] = None, tenant: Optional[str] = None
    ) -> Dict[str, Any]: ...
    def _subscribe(self, pattern: str, callback: Callable[[Dict[str, Any]], Any]) -> int: ...
    def _unsubscribe(self, id: int) -> bool: ...
    def _history(
        self,
        limit: Optional[int] = None,
        type: Optional[str] = None,
        execution_id: Optional[str] = None,
        tool: Optional[str] = None,
        tenant: Optional[str] = None,
        since: Optional[int] = None,
    ) -> List[Dict[str, Any]]: ...
    def _flush_events(self, timeout: float = 5.0) -> bool: ...
    def approvals(self, pending_only: bool = False) -> List[Dict[str, Any]]: ...
    def approve(
        self, approval_id: str, approved: bool = True, reason: Optional[str] = None
    ) -> Dict[str, Any]: ...
    def metrics(self) -> Dict[str, Any]: ...
    def metrics_text(self) -> str: ...
    def close(self) -> None: ...
