"""Per-request context: the current tenant and the current workflow.

Both live in ``contextvars``, so each thread and each asyncio task sees its
own value, and tasks inherit the value that was current when they were
created.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar

from ._values import DEFAULT_TENANT, UNKNOWN

#: The tenant set by ``tenant_context`` (or the middleware), for every record inside it.
TENANT: ContextVar[object] = ContextVar("bizmetrics_tenant", default=None)
#: The workflow set by ``workflow_context`` or the enclosing ``instrument_workflow``, for the steps inside it.
WORKFLOW: ContextVar[object] = ContextVar("bizmetrics_workflow", default=None)
#: The agent of the enclosing ``instrument_agent`` call, for the tool calls inside it.
AGENT: ContextVar[object] = ContextVar("bizmetrics_agent", default=None)
#: The enclosing ``instrument_agent`` call itself, for ``report_usage``.
AGENT_CALL: ContextVar[object] = ContextVar("bizmetrics_agent_call", default=None)

F = TypeVar("F", bound=Callable[..., Any])


#: The tokens of the ``with`` blocks entered in this context, innermost last: kept in a
#: context variable so one ``ContextValue`` can be entered by several tasks or threads at once.
_ENTERED: ContextVar[tuple[tuple[object, Token[object]], ...]] = ContextVar("bizmetrics_entered", default=())


class ContextValue:
    """Sets a context variable inside a ``with`` block, or while a decorated function runs.

    As a decorator it takes sync and ``async def`` functions (for the latter
    the value is set while the coroutine runs, across its awaits); generator
    functions are refused, since their body runs after the call returns.
    Reusable and re-entrant, also by several threads or asyncio tasks at once.
    """

    __slots__ = ("_name", "_value", "_var")

    def __init__(self, var: ContextVar[object], value: object, name: str) -> None:
        self._var = var
        self._value = value
        self._name = name

    def __enter__(self) -> None:
        token = self._var.set(self._value)
        _ENTERED.set((*_ENTERED.get(), (self, token)))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        entered = _ENTERED.get()
        for index in range(len(entered) - 1, -1, -1):
            owner, token = entered[index]
            if owner is self:
                _ENTERED.set(entered[:index] + entered[index + 1 :])
                self._var.reset(token)
                return

    def __call__(self, func: F) -> F:
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"{self._name}: cannot decorate generator function {func.__qualname__!r}; "
                "use a `with` block inside it instead"
            )
        var, value = self._var, self._value
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                token = var.set(value)
                try:
                    return await func(*args, **kwargs)
                finally:
                    var.reset(token)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            token = var.set(value)
            try:
                return func(*args, **kwargs)
            finally:
                var.reset(token)

        return run  # type: ignore[return-value]


def tenant_context(tenant_id: object) -> ContextValue:
    """Make ``tenant_id`` the tenant of every metric recorded inside the block or decorated function.

    An explicit ``tenant_id`` argument or ``self.tenant_id`` still wins.
    Use it as ``with tenant_context("acme"):`` or as ``@tenant_context("acme")``
    on a sync or async function.

    .. versionadded:: 0.2.0
    """
    return ContextValue(TENANT, tenant_id, "tenant_context")


def workflow_context(workflow_id: object) -> ContextValue:
    """Make ``workflow_id`` the workflow of every step recorded inside the block or decorated function.

    ``instrument_workflow`` sets it for the body of the workflow it wraps.

    .. versionadded:: 0.2.0
    """
    return ContextValue(WORKFLOW, workflow_id, "workflow_context")


def current_tenant() -> object:
    """Return the tenant set by the innermost ``tenant_context``, or ``None``."""
    return TENANT.get()


def current_workflow() -> object:
    """Return the workflow set by the innermost ``workflow_context``, or ``None``."""
    return WORKFLOW.get()


def _or_current(var: ContextVar[object], default: object, doc: str) -> Callable[[object], object]:
    def given_or_current(value: object) -> object:
        if value is None:
            value = var.get()
            if value is None:
                return default
        return value

    given_or_current.__doc__ = doc
    return given_or_current


tenant_or_current = _or_current(
    TENANT, DEFAULT_TENANT, "Return the tenant given, else the ``tenant_context`` tenant, else ``default_tenant``."
)
workflow_or_current = _or_current(
    WORKFLOW, UNKNOWN, "Return the workflow given, else the ``workflow_context`` workflow, else ``unknown``."
)
agent_or_current = _or_current(
    AGENT, UNKNOWN, "Return the agent given, else the enclosing ``instrument_agent`` call's, else ``unknown``."
)
