"""Decorators that record the bizmetrics catalogue around functions and methods.

Each works on plain functions, coroutine functions, generator functions and
async generator functions, as functions, instance methods, classmethods and
staticmethods (above or below ``@classmethod`` / ``@staticmethod``).  See
:doc:`/guides/decorators` for the label, counting and outcome rules.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token
from typing import Any, Protocol, TypeVar, cast, overload

from . import _extract, _values
from ._families import (
    AGENT_FAMILY,
    CACHE_FAMILY,
    CONNECTOR_OPERATION_FAMILY,
    DB_QUERY_FAMILY,
    STEP_FAMILY,
    SYNC_CALL_FAMILY,
    TOOL_FAMILY,
    WORKFLOW_FAMILY,
    AgentCall,
    Bundle,
)
from ._instrument import Site, Target, is_new, wrap
from ._labels import Args, Bundles, Kwargs, Label, Signature, attribute, resolver
from ._values import DEFAULT_TENANT, UNKNOWN
from .context import AGENT, AGENT_CALL, TENANT, WORKFLOW

__all__ = [
    "MISS",
    "http_error_type",
    "instrument_agent",
    "instrument_cache_lookup",
    "instrument_connector_operation",
    "instrument_db_query",
    "instrument_sync_operation",
    "instrument_tool",
    "instrument_workflow",
    "instrument_workflow_step",
]

F = TypeVar("F", bound=Callable[..., Any])

#: ``error_type=``: turns an exception into its ``error_type`` label.
ErrorType = Callable[[BaseException], object]


class Decorator(Protocol):
    """A decorator that returns what it is given, with the same type."""

    @overload
    def __call__(self, wrapped: F) -> F: ...
    @overload
    def __call__(self, wrapped: classmethod[Any, Any, Any]) -> classmethod[Any, Any, Any]: ...


class _Miss:
    def __repr__(self) -> str:
        return "bizmetrics.MISS"


#: Return this from a cache lookup to say "not found" when ``None`` is a valid cached value.
MISS: Any = _Miss()

_CALLABLES = (classmethod, staticmethod)


def _http_status(exc: BaseException) -> int | None:
    for holder, name in ((attribute(exc, "response"), "status_code"), (exc, "status_code"), (exc, "status")):
        status = attribute(holder, name) if holder is not None else None
        if type(status) is not bool and isinstance(status, int) and 100 <= status <= 599:
            return int(status)
    return None


def http_error_type(exc: BaseException) -> str:
    """Return ``http_<status>`` for an exception that carries an HTTP status, else its class name.

    The status is read from ``exc.response.status_code`` (httpx, requests),
    ``exc.status_code`` (the OpenAI and Anthropic SDKs) or ``exc.status``
    (aiohttp).  Use it as ``error_type=http_error_type`` on any decorator.

    .. versionadded:: 0.2.0
    """
    status = _http_status(exc)
    return type(exc).__name__ if status is None else f"http_{status}"


def _is_target(value: object) -> bool:
    """Was the decorator used bare (``@instrument_x``) rather than called (``@instrument_x(...)``)?"""
    return callable(value) or isinstance(value, _CALLABLES)


def _bare(decorator: Callable[[], Decorator], wrapped: Any) -> Decorator:
    """Apply ``decorator`` with its defaults, for ``@instrument_x`` written without parentheses."""
    return cast(Decorator, decorator()(wrapped))


def _decorator(make_site: Callable[[Target], Site]) -> Decorator:
    return lambda wrapped: wrap(wrapped, make_site)


def _resolver(
    family: Bundles[Bundle], target: Target, *labels: Label
) -> Callable[[Args, Kwargs], tuple[Bundle, object]]:
    return resolver(family, labels, Signature(target.func, target.self_like), target.name, own="tenant_id")


#: The tenant: the call's ``tenant_id``, else ``self.tenant_id``, else ``tenant_context``, else the default.
_TENANT_LABEL = Label("tenant_id", paths=("tenant_id",), context=TENANT, fallback=DEFAULT_TENANT)


# --- Scopes: what the body of a call sees as current -----------------------------------
#
# A connector, workflow or agent call whose tenant comes from its argument
# or ``self`` runs its body with that tenant current, so what it does inside
# (tools, steps, connector calls, LLM usage) is booked to the same tenant.
# The raw value is set, not the cleaned label: ``current_tenant()`` inside
# reads what the call was given, and the cap judges every inner record.


def _new_tenant(own: object) -> bool:
    """Whether ``own`` must be set: a call's own tenant that is not already the current one.

    A connector call's scope is its tenant alone: its site's ``own_scope`` (the engine sets it inline).
    """
    return own is not None and is_new(own, TENANT.get())


def _enter_workflow(bundle: Bundle, own: object) -> Token[object] | tuple[Token[object], ...]:
    workflow = WORKFLOW.set(bundle.scope)
    return (workflow, TENANT.set(own)) if _new_tenant(own) else workflow


def _enter_agent(call: AgentCall, own: object) -> tuple[Token[object], ...]:
    """An agent call's scope: the agent (for tools), the call itself (for ``report_usage``), its own tenant."""
    agent = AGENT.set(call.agent.scope)
    if _new_tenant(own):
        return agent, AGENT_CALL.set(call), TENANT.set(own)
    return agent, AGENT_CALL.set(call)


def _connector_type(given: str | None) -> Label:
    # The spec's connectors carry their type as self.config.id (or self.config["id"]).
    return Label(
        "connector_type",
        given=given,
        argument=False,
        paths=("config.id", "config[id]", "connector_type"),
        fallback=UNKNOWN,
    )


def _fixed(name: str, value: object) -> Label:
    return Label(name, given=value, argument=False)


def instrument_connector_operation(
    operation_name: str | None = None, *, connector_type: str | None = None, error_type: ErrorType | None = None
) -> Decorator:
    """Record each call as a connector operation: count by status, duration, errors by class.

    :param operation_name: the ``operation`` label; the function's name if not given.
    :param connector_type: the ``connector_type`` label; else ``self.config.id``,
        else ``self.connector_type``, else ``unknown``.
    :param error_type: turns an exception into its ``error_type`` label
        (``bizmetrics.http_error_type`` gives ``http_503``); its class name if not given.

    .. versionadded:: 0.2.0
    """
    if _is_target(operation_name):
        return _bare(instrument_connector_operation, operation_name)

    def make_site(target: Target) -> Site:
        operation = _fixed("operation", operation_name or target.name)
        family = CONNECTOR_OPERATION_FAMILY
        return Site(
            _resolver(family, target, _connector_type(connector_type), operation, _TENANT_LABEL),
            own_scope=TENANT,
            error_type=error_type,
        )

    return _decorator(make_site)


def instrument_sync_operation(
    resource_type: str,
    *,
    operation_name: str | None = None,
    count: Callable[[Any], Any] | str | None = None,
    connector_type: str | None = None,
    error_type: ErrorType | None = None,
) -> Decorator:
    """Record each call as a connector operation and a sync of ``resource_type``, counting its records.

    :param resource_type: the ``resource_type`` label (``posts``, ``contacts``...).
    :param operation_name: the ``operation`` label; the function's name if not given.
    :param count: how to count records in the result: a callable, or the name
        of a key or attribute; by default the rules of :ref:`counting-records`.
        For generators it is applied to each yielded item (default: 1 per item).
    :param connector_type: as for ``instrument_connector_operation``.
    :param error_type: as for ``instrument_connector_operation``.

    .. versionadded:: 0.2.0
    """
    if _is_target(resource_type):
        raise TypeError(
            "instrument_sync_operation needs the resource_type it syncs: "
            "use @instrument_sync_operation('contacts'), not @instrument_sync_operation"
        )

    def make_site(target: Target) -> Site:
        operation = _fixed("operation", operation_name or target.name)
        counter = _extract.records_counter(count, resource_type)
        labels = (_connector_type(connector_type), operation, _fixed("resource_type", resource_type), _TENANT_LABEL)
        return Site(
            _resolver(SYNC_CALL_FAMILY, target, *labels),
            count=counter,
            count_item=None if count is None else counter,
            own_scope=TENANT,
            error_type=error_type,
        )

    return _decorator(make_site)


def _own_id(name: str, given: object, target: Target) -> Label:
    """A family's own id: given, else the call's argument, else ``self.<name>``, else the function's name."""
    return Label(name, given=given, paths=(name,), fallback=target.name)


def instrument_workflow(workflow_id: str | None = None, *, error_type: ErrorType | None = None) -> Decorator:
    """Record each call as a workflow execution: count by status, duration, failures by class.

    :param workflow_id: the ``workflow_id`` label; else the call's ``workflow_id``
        argument, else ``self.workflow_id``, else the function's name.

    While the body runs, ``workflow_context`` is set, so steps inside it know their workflow.

    .. versionadded:: 0.2.0
    """
    if _is_target(workflow_id):
        return _bare(instrument_workflow, workflow_id)

    def make_site(target: Target) -> Site:
        labels = (_own_id("workflow_id", workflow_id, target), _TENANT_LABEL)
        return Site(_resolver(WORKFLOW_FAMILY, target, *labels), enter=_enter_workflow, error_type=error_type)

    return _decorator(make_site)


def instrument_workflow_step(
    step: str | None = None, *, workflow_id: str | None = None, error_type: ErrorType | None = None
) -> Decorator:
    """Record the duration of each call as a step of a workflow.

    :param step: the ``step`` label; the function's name if not given.
    :param workflow_id: the ``workflow_id`` label; else the call's ``workflow_id``
        argument, else ``self.workflow_id``, else the enclosing
        ``instrument_workflow`` / ``workflow_context``, else ``unknown``.
    :param error_type: accepted like every decorator's, and unused: this family counts no errors by type.

    .. versionadded:: 0.2.0
    """
    if _is_target(step):
        return _bare(instrument_workflow_step, step)

    def make_site(target: Target) -> Site:
        workflow = Label("workflow_id", given=workflow_id, paths=("workflow_id",), context=WORKFLOW, fallback=UNKNOWN)
        return Site(_resolver(STEP_FAMILY, target, workflow, _fixed("step", step or target.name)))

    return _decorator(make_site)


def instrument_agent(
    agent_id: str | None = None,
    *,
    tokens: Callable[[Any], Any] | str | None = None,
    model: str | None = None,
    error_type: ErrorType | None = None,
) -> Decorator:
    """Record each call as an AI agent invocation: count by status, duration, tokens by type and model, errors.

    :param agent_id: the ``agent_id`` label; else the call's ``agent_id``
        argument, else ``self.agent_id``, else the function's name.
    :param tokens: how to read the tokens used from the result: a callable, or
        the name of a key or attribute, giving a count or a mapping of token
        types (``input``, ``output``, ``cache_read``, ``cache_write``,
        ``reasoning``); by default the rules of :ref:`counting-tokens`.
        For generators (streaming) it is applied to each yielded chunk.
    :param model: the ``model`` label of ``agent_token_usage_total``; else the
        call's ``model`` argument, else the response's ``model``, else ``unknown``.
    :param error_type: as for ``instrument_connector_operation``.

    While the body runs, the agent is current: tool calls inside it (``instrument_tool``) take its id.
    A generator or async generator (a stream) also records the time to its first item.

    .. versionadded:: 0.2.0
    """
    if _is_target(agent_id):
        return _bare(instrument_agent, agent_id)

    def make_site(target: Target) -> Site:
        counter = _extract.tokens_counter(tokens)
        # model "" means "none given": the response's model is used for the token usage.
        labels = (_own_id("agent_id", agent_id, target), _TENANT_LABEL, Label("model", given=model, fallback=""))
        return Site(
            _resolver(AGENT_FAMILY, target, *labels),
            count=counter,
            count_item=counter,
            begin=AgentCall,
            enter=_enter_agent,
            error_type=error_type,
        )

    return _decorator(make_site)


def instrument_tool(
    tool: str | None = None, *, agent_id: str | None = None, error_type: ErrorType | None = None
) -> Decorator:
    """Record each call as a tool call of an AI agent: count by status, duration, errors by type.

    :param tool: the ``tool`` label; the function's name if not given.
    :param agent_id: the ``agent_id`` label; else the enclosing ``instrument_agent``
        call's agent, else ``unknown``.
    :param error_type: as for ``instrument_connector_operation``.

    .. versionadded:: 0.2.0
    """
    if _is_target(tool):
        return _bare(instrument_tool, tool)

    def make_site(target: Target) -> Site:
        agent = Label("agent_id", given=agent_id, argument=False, context=AGENT, fallback=UNKNOWN)
        labels = (agent, _fixed("tool", tool or target.name), _TENANT_LABEL)
        return Site(_resolver(TOOL_FAMILY, target, *labels), error_type=error_type)

    return _decorator(make_site)


def _static_site(family: Bundles[Bundle], label: str | None, name: str, target: Target, **extra: Any) -> Site:
    """A site whose one label is fixed when decorating; its bundle is still looked up per call.

    Looking it up (a dict read) instead of keeping it means a ``clear()`` or
    ``remove()`` of the metric never leaves the decorator writing into a
    series the registry no longer exposes, and a broken registry fails the
    call's recording, not the decoration.
    """
    return Site(_resolver(family, target, _fixed(name, _values.label(label or target.name, name))), **extra)


def instrument_db_query(operation: str | None = None, *, error_type: ErrorType | None = None) -> Decorator:
    """Record the duration of each call as a database query.

    :param operation: the ``operation`` label (``select_user``...); the function's name if not given.
    :param error_type: accepted like every decorator's, and unused: this family counts no errors by type.

    .. versionadded:: 0.2.0
    """
    if _is_target(operation):
        return _bare(instrument_db_query, operation)
    return _decorator(lambda target: _static_site(DB_QUERY_FAMILY, operation, "operation", target))


def instrument_cache_lookup(
    cache: str | None = None, *, miss: Any = None, error_type: ErrorType | None = None
) -> Decorator:
    """Count each call as a hit or a miss of cache ``cache``.

    A result of ``None`` or ``MISS`` is a miss, as is an exception; anything
    else is a hit.  ``miss`` changes that: a callable is a predicate on the
    result (true means miss), any other value is a sentinel compared by
    identity.  A generator is a hit when it yields at least one item.

    :param cache: the ``cache`` label; the function's name if not given.
    :param error_type: accepted like every decorator's, and unused: a lookup that raises is a miss.

    .. versionadded:: 0.2.0
    """
    if _is_target(cache):
        return _bare(instrument_cache_lookup, cache)

    if miss is None:

        def hit(result: Any) -> float:
            return 0 if result is None or result is MISS else 1
    elif callable(miss):

        def hit(result: Any) -> float:
            return 0 if miss(result) else 1
    else:

        def hit(result: Any) -> float:
            return 0 if result is miss else 1

    return _decorator(lambda target: _static_site(CACHE_FAMILY, cache, "cache", target, count=hit))
