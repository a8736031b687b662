"""Decorators that record the bizmetrics catalogue around functions and methods.

Each works on plain functions, coroutine functions, generator functions and
async generator functions, as functions, instance methods, classmethods and
staticmethods (above or below ``@classmethod`` / ``@staticmethod``).  See
README ("Decorators") for the label, counting and outcome rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, cast, overload

from . import _extract, _values
from ._instrument import Site, Target, _attr, wrap
from ._values import DEFAULT_TENANT, UNKNOWN
from .context import _AGENT, _TENANT, _WORKFLOW, agent_or_current, workflow_or_current
from .metrics import AGENTS, CACHES, CONNECTOR_OPS, DB_QUERIES, STEPS, SYNCS, TOOLS, WORKFLOWS, _Family

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
    for holder, name in ((_attr(exc, "response"), "status_code"), (exc, "status_code"), (exc, "status")):
        status = _attr(holder, name) if holder is not None else None
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


def _from_call_or_self(target: Target, name: str) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
    """Return a reader of label ``name``: the call's argument of that name, else ``self.<name>``."""
    read_arg = target.arg_reader(name)

    def read(source: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        value = read_arg(args, kwargs)
        if value is None and source is not None:
            value = _attr(source, name)
        return value

    return read


def _config_id(config: Any) -> Any:
    """``config.id``, or ``config["id"]`` for a mapping config; ``None`` if neither."""
    value = _attr(config, "id")
    if value is None and isinstance(config, Mapping):
        try:
            value = config.get("id")
        except Exception:
            value = None
    return value


def _connector_type(source: Any) -> Any:
    # The spec's connectors carry their type as self.config.id (or self.config["id"]).
    if source is None:
        return UNKNOWN
    value = _config_id(_attr(source, "config"))
    if value is None:
        value = _attr(source, "connector_type")
    return UNKNOWN if value is None else value


def _connector_site(target: Target, family: Any, *static: Any, connector_type: Any) -> Callable[..., Any]:
    """``resolve`` for the connector families: (connector_type, *static, tenant)."""
    safe_tenant = target.tenant_reader()
    read_arg = target.arg_reader("tenant_id") if target.has_param("tenant_id") else None
    get, cache = family.get, family.cache
    first, second = static if len(static) == 2 else (static[0], None)

    def safe(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        source = target.source(args)
        ct = connector_type if connector_type is not None else _connector_type(source)
        return get(ct, *static, safe_tenant(source, args, kwargs))

    def resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # The same rules as ``safe``, inlined for the hot path; an attribute
        # that raises sends the call down the safe path.
        try:
            source = args[0] if args and target.self_like else None
            if read_arg is not None:
                tenant = read_arg(args, kwargs)
            else:
                tenant = kwargs.get("tenant_id") if kwargs else None
            if tenant is None:
                if source is not None:
                    tenant = getattr(source, "tenant_id", None)
                if tenant is None:
                    tenant = _TENANT.get()
                    if tenant is None:
                        tenant = DEFAULT_TENANT
            ct = connector_type
            if ct is None:
                if source is not None:
                    config = getattr(source, "config", None)
                    ct = getattr(config, "id", None)
                    if ct is None:
                        if type(config) is dict:
                            ct = config.get("id")
                        if ct is None:
                            ct = getattr(source, "connector_type", None)
                            if ct is None and config is not None:
                                ct = _connector_type(source)
                if ct is None:
                    ct = UNKNOWN
            key = (ct, first, tenant) if second is None else (ct, first, second, tenant)
            bundle = cache.get(key)
        except Exception:
            # An attribute that raises, or an unhashable label value.
            return safe(args, kwargs)
        return bundle if bundle is not None else get(*key)

    return resolve


def instrument_connector_operation(
    operation_name: str | None = None, *, connector_type: str | None = None, error_type: ErrorType | None = None
) -> Decorator:
    """Record each call as a connector operation: count by status, duration, errors by class.

    :param operation_name: the ``operation`` label; the function's name if not given.
    :param connector_type: the ``connector_type`` label; else ``self.config.id``,
        else ``self.connector_type``, else ``unknown``.
    :param error_type: turns an exception into its ``error_type`` label
        (``bizmetrics.http_error_type`` gives ``http_503``); its class name if not given.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``error_type``.
    """
    if _is_target(operation_name):
        return _bare(instrument_connector_operation, operation_name)

    def make_site(target: Target) -> Site:
        operation = operation_name or target.name
        return Site(
            _connector_site(target, CONNECTOR_OPS, operation, connector_type=connector_type), error_type=error_type
        )

    return _decorator(make_site)


class _SyncCall:
    """A sync operation: one connector operation plus one sync count."""

    __slots__ = ("op", "sync")
    scope = None

    def __init__(self, op: Any, sync: Any) -> None:
        self.op, self.sync = op, sync

    def success(self, ms: float | None, amount: float) -> None:
        self.op.success(ms, 0)
        self.sync.count("success", amount)

    def failure(self, ms: float | None, error_type: str, amount: float) -> None:
        self.op.failure(ms, error_type, 0)
        self.sync.count("error", amount)

    def cancelled(self, ms: float | None, amount: float) -> None:
        self.op.cancelled(ms, 0)
        self.sync.count("cancelled", amount)


SYNC_CALLS: _Family[_SyncCall] = _Family(
    lambda ct, op, rt, tenant: _SyncCall(CONNECTOR_OPS.get(ct, op, tenant), SYNCS.get(ct, rt, tenant)),
    ("connector_type", "operation", "resource_type", "tenant_id"),
    (UNKNOWN, UNKNOWN, UNKNOWN, "default_tenant"),
)


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
        of a key or attribute; by default the rules of README, "Counting records".
        For generators it is applied to each yielded item (default: 1 per item).
    :param connector_type: as for ``instrument_connector_operation``.
    :param error_type: as for ``instrument_connector_operation``.

    .. versionadded:: 0.1.0
    """
    if _is_target(resource_type):
        raise TypeError(
            "instrument_sync_operation needs the resource_type it syncs: "
            "use @instrument_sync_operation('contacts'), not @instrument_sync_operation"
        )

    def make_site(target: Target) -> Site:
        operation = operation_name or target.name
        counter = _extract.records_counter(count, resource_type)
        return Site(
            _connector_site(target, SYNC_CALLS, operation, resource_type, connector_type=connector_type),
            extract=counter,
            extract_item=None if count is None else counter,
            error_type=error_type,
        )

    return _decorator(make_site)


def _named_site(
    target: Target, family: Any, name: str, given: object, model: Callable[..., Any] | None = None
) -> Callable[..., Any]:
    """``resolve`` for the (id, tenant) families, and agents' (id, tenant, model).

    The id is ``given``, else the call's argument ``name``, else ``self.<name>``,
    else the function's name.  ``model(args, kwargs)`` gives the agents' model.
    """
    tenant = target.tenant_reader()
    read_id = _from_call_or_self(target, name)
    get = family.get

    def resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        source = target.source(args)
        ident = given
        if ident is None:
            ident = read_id(source, args, kwargs)
            if ident is None:
                ident = target.name
        if model is None:
            return get(ident, tenant(source, args, kwargs))
        return get(ident, tenant(source, args, kwargs), model(args, kwargs))

    return resolve


def instrument_workflow(workflow_id: str | None = None, *, error_type: ErrorType | None = None) -> Decorator:
    """Record each call as a workflow execution: count by status, duration, failures by class.

    :param workflow_id: the ``workflow_id`` label; else the call's ``workflow_id``
        argument, else ``self.workflow_id``, else the function's name.

    While the body runs, ``workflow_context`` is set, so steps inside it know their workflow.

    .. versionadded:: 0.1.0
    """
    if _is_target(workflow_id):
        return _bare(instrument_workflow, workflow_id)

    def make_site(target: Target) -> Site:
        return Site(
            _named_site(target, WORKFLOWS, "workflow_id", workflow_id), scope_var=_WORKFLOW, error_type=error_type
        )

    return _decorator(make_site)


def instrument_workflow_step(
    step: str | None = None, *, workflow_id: str | None = None, error_type: ErrorType | None = None
) -> Decorator:
    """Record the duration of each call as a step of a workflow.

    :param step: the ``step`` label; the function's name if not given.
    :param workflow_id: the ``workflow_id`` label; else the call's ``workflow_id``
        argument, else ``self.workflow_id``, else the enclosing
        ``instrument_workflow`` / ``workflow_context``, else ``unknown``.

    .. versionadded:: 0.1.0
    """
    if _is_target(step):
        return _bare(instrument_workflow_step, step)

    def make_site(target: Target) -> Site:
        name = step or target.name
        read_id = _from_call_or_self(target, "workflow_id")
        get = STEPS.get

        def resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            wf: object = workflow_id
            if wf is None:
                wf = read_id(target.source(args), args, kwargs)
            return get(workflow_or_current(wf), name)

        return Site(resolve, error_type=error_type)

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
        ``reasoning``); by default the rules of README, "Counting tokens".
        For generators (streaming) it is applied to each yielded chunk.
    :param model: the ``model`` label of ``agent_token_usage_total``; else the
        call's ``model`` argument, else the response's ``model``, else ``unknown``.
    :param error_type: as for ``instrument_connector_operation``.

    While the body runs, the agent is current: tool calls inside it (``instrument_tool``) take its id.
    A generator or async generator (a stream) also records the time to its first item.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``model``, ``error_type``, tokens by type, time to first token.
    """
    if _is_target(agent_id):
        return _bare(instrument_agent, agent_id)

    def make_site(target: Target) -> Site:
        counter = _extract.tokens_counter(tokens)
        if model is not None:
            fixed = model

            def read_model(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return fixed
        elif target.has_param("model"):
            read_arg = target.arg_reader("model")

            def read_model(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                given = read_arg(args, kwargs)
                return "" if given is None else given
        else:

            def read_model(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                given = kwargs.get("model") if kwargs else None
                return "" if given is None else given

        return Site(
            _named_site(target, AGENTS, "agent_id", agent_id, read_model),
            extract=counter,
            extract_item=counter,
            scope_var=_AGENT,
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
        name = tool or target.name
        tenant = target.tenant_reader()
        get = TOOLS.get

        def resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return get(agent_or_current(agent_id), name, tenant(target.source(args), args, kwargs))

        return Site(resolve, error_type=error_type)

    return _decorator(make_site)


def _static_site(family: Any, label: str | None, name: str, target: Target, **extra: Any) -> Site:
    """A site whose labels are fixed when decorating; its bundle is looked up per call.

    Looking it up (a dict read) instead of keeping it means a ``clear()`` or
    ``remove()`` of the metric never leaves the decorator writing into a
    series the registry no longer exposes, and a broken registry fails the
    call's recording, not the decoration.
    """
    key = (_values.label(label or target.name, name),)
    cache, get = family.cache, family.get

    def resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bundle = cache.get(key)
        return bundle if bundle is not None else get(*key)

    return Site(resolve, **extra)


def instrument_db_query(operation: str | None = None, *, error_type: ErrorType | None = None) -> Decorator:
    """Record the duration of each call as a database query.

    :param operation: the ``operation`` label (``select_user``...); the function's name if not given.

    .. versionadded:: 0.1.0
    """
    if _is_target(operation):
        return _bare(instrument_db_query, operation)
    return _decorator(lambda target: _static_site(DB_QUERIES, operation, "operation", target, error_type=error_type))


def instrument_cache_lookup(
    cache: str | None = None, *, miss: Any = None, error_type: ErrorType | None = None
) -> Decorator:
    """Count each call as a hit or a miss of cache ``cache``.

    A result of ``None`` or ``MISS`` is a miss, as is an exception; anything
    else is a hit.  ``miss`` changes that: a callable is a predicate on the
    result (true means miss), any other value is a sentinel compared by
    identity.  A generator is a hit when it yields at least one item.

    :param cache: the ``cache`` label; the function's name if not given.

    .. versionadded:: 0.1.0
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

    return _decorator(lambda target: _static_site(CACHES, cache, "cache", target, extract=hit, error_type=error_type))
