"""Helpers that record one event of the catalogue each: for code that cannot be decorated.

Every ``record_*`` helper swallows bad input (see :doc:`/guides/bad-input`) and
any failure of its own, logging it on the ``bizmetrics`` logger: recording a
metric never raises into application code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from contextvars import copy_context
from typing import Any, ParamSpec

from prometheus_client import Gauge

from . import _deferred, _extract, _log, _settings, _values
from ._families import (
    AGENT_FAMILY,
    API_FAMILY,
    CACHE_FAMILY,
    CONNECTOR_OPERATION_FAMILY,
    DB_QUERY_FAMILY,
    POOL_FAMILY,
    STEP_FAMILY,
    SYNC_FAMILY,
    TOKEN_USAGE_FAMILY,
    TOOL_FAMILY,
    WORKFLOW_FAMILY,
    AgentCall,
    Bundle,
)
from ._families import track_tenant_latency as _track
from ._values import UNKNOWN
from .context import AGENT_CALL, agent_or_current, tenant_or_current, workflow_or_current

__all__ = [
    "HTTP_METHODS",
    "dec_db_pool_size",
    "http_method",
    "http_status",
    "inc_db_pool_size",
    "record_agent_invocation",
    "record_api_request",
    "record_cache_hit",
    "record_cache_miss",
    "record_connector_operation",
    "record_connector_sync",
    "record_db_query",
    "record_tool_call",
    "record_workflow_execution",
    "record_workflow_step",
    "report_usage",
    "set_db_pool_size",
    "status_class",
    "status_code",
    "track_tenant_latency",
]


P = ParamSpec("P")


def _finaliser_safe(helper: Callable[P, None]) -> Callable[P, None]:
    """``helper``, queued with its context when called inside a garbage collection (see ``_deferred``).

    A finaliser that records (a connector's ``__del__`` closing it, say) may
    run while its thread holds prometheus_client's locks; the record is made
    when the queue drains, with the tenant and agent current at the call.
    """

    @functools.wraps(helper)
    def record(*args: P.args, **kwargs: P.kwargs) -> None:
        if _deferred.collector is not None and _deferred.collecting():
            _deferred.defer(functools.partial(copy_context().run, helper, *args, **kwargs))
            return
        helper(*args, **kwargs)

    return record


def _error_type(error_type: object) -> str:
    return UNKNOWN if error_type is None else _values.label(error_type, "error_type")


def _call(bundle: Bundle, duration_ms: object, success: bool, error_type: object, amount: float = 0) -> None:
    """Record one call that succeeded or failed (``error_type``, ``unknown`` if not given)."""
    ms = _values.duration(duration_ms)
    if success:
        bundle.success(ms, amount)
    else:
        bundle.failure(ms, _error_type(error_type), amount)


@_finaliser_safe
def record_connector_operation(
    connector_type: str,
    operation: str,
    duration_ms: float,
    success: bool,
    tenant_id: str | None = None,
    *,
    error_type: str | None = None,
) -> None:
    """Record one connector operation: its count by status, its duration and, on failure, its error.

    :param error_type: the error's class name for ``connector_errors_total``
        when ``success`` is false (``unknown`` if not given).

    .. versionadded:: 0.2.0
    """
    try:
        _call(
            CONNECTOR_OPERATION_FAMILY.get(connector_type, operation, tenant_or_current(tenant_id)),
            duration_ms,
            success,
            error_type,
        )
    except Exception:
        _log.internal_error("record_connector_operation")


@_finaliser_safe
def record_connector_sync(
    connector_type: str,
    resource_type: str,
    record_count: int,
    tenant_id: str | None = None,
    *,
    success: bool = True,
) -> None:
    """Record one sync operation of ``resource_type`` and the records it synced.

    .. versionadded:: 0.2.0
    """
    try:
        SYNC_FAMILY.get(connector_type, resource_type, tenant_or_current(tenant_id)).count(
            "success" if success else "error", _values.amount(record_count, "record_count")
        )
    except Exception:
        _log.internal_error("record_connector_sync")


@_finaliser_safe
def record_workflow_execution(
    workflow_id: str,
    duration_ms: float,
    success: bool,
    tenant_id: str | None = None,
    *,
    error_type: str | None = None,
) -> None:
    """Record one workflow execution: its count by status, its duration and, on failure, the failure.

    .. versionadded:: 0.2.0
    """
    try:
        _call(WORKFLOW_FAMILY.get(workflow_id, tenant_or_current(tenant_id)), duration_ms, success, error_type)
    except Exception:
        _log.internal_error("record_workflow_execution")


@_finaliser_safe
def record_workflow_step(workflow_id: str | None, step: str, duration_ms: float) -> None:
    """Record the duration of one step of workflow ``workflow_id``.

    A ``workflow_id`` of ``None`` means the one set by ``workflow_context``
    (and so by an enclosing ``instrument_workflow``), else ``unknown``.

    .. versionadded:: 0.2.0
    """
    try:
        STEP_FAMILY.get(workflow_or_current(workflow_id), step).success(_values.duration(duration_ms), 0)
    except Exception:
        _log.internal_error("record_workflow_step")


@_finaliser_safe
def record_agent_invocation(
    agent_id: str,
    duration_ms: float,
    tokens_used: int,
    success: bool,
    tenant_id: str | None = None,
    *,
    error_type: str | None = None,
    model: str | None = None,
    usage: Mapping[str, Any] | object = None,
) -> None:
    """Record one AI agent invocation: its count by status, duration and the tokens it used.

    Tokens are counted whether or not the call succeeded: a failed call still costs them.

    :param model: the ``model`` label of ``agent_token_usage_total`` (else the
        model ``usage`` names, else ``unknown``).
    :param usage: tokens by type (``input``, ``output``, ``cache_read``,
        ``cache_write``, ``reasoning``), or anything ``report_usage`` reads (a
        model response, a provider's ``usage``), for ``agent_token_usage_total``;
        ``tokens_used`` then feeds ``agent_tokens_used_total`` and nothing
        else.  The usage is priced into ``agent_cost_total`` (or counted as
        given if it holds a ``cost``); without it, ``tokens_used`` has no types
        and no price, and goes once to ``agent_unpriced_tokens_total`` as
        ``untyped``.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 tokens are priced (``agent_cost_total``); ``usage`` takes provider shapes;
       tokens are never counted as untyped as well as by type.
    """
    try:
        tenant = tenant_or_current(tenant_id)
        tokens = _values.amount(tokens_used, "tokens_used")
        # The bundle of the model: a bare count is booked under it (untyped, unpriced), once.
        bundle = AGENT_FAMILY.get(agent_id, tenant, "" if model is None else model)
        typed = None if usage is None else _extract.read_given(usage, "usage")
        if not isinstance(typed, _extract.Usage) or not typed.reported:
            if usage is not None:
                _log.warn("usage", "bizmetrics: usage %r has no token types; ignored", type(usage).__name__)
            _call(bundle, duration_ms, success, error_type, tokens)
            return
        # The typed usage alone is priced; tokens_used only feeds agent_tokens_used_total.
        _call(bundle, duration_ms, success, error_type)
        if tokens:
            bundle.tokens.inc(tokens)
        # The bundle's tenant has been through the cap: a folded record is counted once.
        for call in typed.calls():
            named = call.model if isinstance(call.model, str) else None
            TOKEN_USAGE_FAMILY.get(agent_id, model or named or UNKNOWN, bundle.tenant).add(call)
    except Exception:
        _log.internal_error("record_agent_invocation")


@_finaliser_safe
def report_usage(usage: object, *, model: str | None = None) -> None:
    """Add the tokens of ``usage`` to the ``instrument_agent`` call that is running.

    ``usage`` is anything ``instrument_agent`` reads tokens from (a model
    response, a ``usage`` object, a stream event, as objects or as dicts: a
    whole response dict, a bare OpenAI or Anthropic ``usage`` dict, a
    LangChain or Gemini ``usage_metadata``) or a mapping of token types to
    counts (``{"input": 120, "output": 40}``; a mapping with any of these keys
    is read this way, and its other keys are logged and not counted).  The tokens are counted at
    once, under the agent and tenant of the running call and under ``model``
    (else the one ``usage`` names, else the call's), and the call no longer
    counts as unreported.  Use it for text-only streams and for LLM calls
    made inside tools.  Outside an agent call it records nothing and logs
    once.

    .. versionadded:: 0.3.0
    """
    try:
        call = AGENT_CALL.get()
        if not isinstance(call, AgentCall):
            _log.warn(
                "report-usage-outside",
                "bizmetrics: report_usage() called outside an instrument_agent call; nothing recorded",
            )
            return
        read = _extract.read_given(usage, "report_usage()")
        if not (read.reported if isinstance(read, _extract.Usage) else read):
            _log.warn("report-usage-empty", "bizmetrics: report_usage() found no tokens in a %s", type(usage).__name__)
            return
        call.report(read, model)
    except Exception:
        _log.internal_error("report_usage")


@_finaliser_safe
def record_tool_call(
    agent_id: str | None,
    tool: str,
    duration_ms: float,
    success: bool,
    tenant_id: str | None = None,
    *,
    error_type: str | None = None,
) -> None:
    """Record one tool call of an AI agent: its count by status, its duration and, on failure, its error.

    A ``agent_id`` of ``None`` means the agent of the enclosing ``instrument_agent`` call, else ``unknown``.

    .. versionadded:: 0.2.0
    """
    try:
        _call(
            TOOL_FAMILY.get(agent_or_current(agent_id), tool, tenant_or_current(tenant_id)),
            duration_ms,
            success,
            error_type,
        )
    except Exception:
        _log.internal_error("record_tool_call")


HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))


_CLASSES = {code: f"{code // 100}xx" for code in range(100, 600)}


def status_class(status_code: object) -> str:
    """Return the HTTP status class (``2xx`` ...) of a status code, or ``unknown``."""
    if type(status_code) is int:
        known = _CLASSES.get(status_code)
        if known is not None:
            return known
    try:
        code = int(status_code)  # type: ignore[call-overload]
    except Exception:
        code = 0
    if isinstance(status_code, bool) or not 100 <= code <= 599:
        _log.warn("status_code", "bizmetrics: %r is not an HTTP status code; status 'unknown'", status_code)
        return UNKNOWN
    return f"{code // 100}xx"


_CODES = {code: str(code) for code in range(100, 600)}

#: How ``record_api_request`` and the middlewares write ``status`` by default (``BIZMETRICS_HTTP_STATUS``).
HTTP_STATUS = _settings.http_status()


def status_code(status_code: object) -> str:
    """Return the HTTP status code (``"429"``) of a status code, or ``unknown``.

    .. versionadded:: 0.3.0
    """
    if type(status_code) is int:
        known = _CODES.get(status_code)
        if known is not None:
            return known
    label = status_class(status_code)
    return label if label == UNKNOWN else str(int(status_code))  # type: ignore[call-overload]


def http_status(mode: str | None = None) -> Callable[[object], str]:
    """Return the function writing ``status``: exact codes, or classes with ``mode="class"``.

    ``None`` is the process's default (``BIZMETRICS_HTTP_STATUS``); any other
    value than ``code`` or ``class`` is logged and means ``code``.

    .. versionadded:: 0.3.0
    """
    if mode is None:
        mode = HTTP_STATUS
    if mode == "class":
        return status_class
    if mode != "code":
        _log.warn("http_status", "bizmetrics: http_status=%r is neither 'code' nor 'class'; using 'code'", mode)
    return status_code


#: ``record_api_request``'s status writer.
_status = http_status()


def http_method(method: object) -> str:
    """Return ``method`` as a standard upper-case HTTP method, or ``OTHER``.

    ``bytes`` (as ASGI servers may hand them out) are decoded as Latin-1.
    """
    if type(method) is str and method in HTTP_METHODS:
        return method
    if isinstance(method, (bytes, bytearray)):
        method = bytes(method).decode("latin-1")
    if isinstance(method, str):
        upper = method.upper()
        if upper in HTTP_METHODS:
            return str.__str__(upper)
    _log.warn("method", "bizmetrics: %r is not an HTTP method; recorded as 'OTHER'", repr(method)[:40])
    return "OTHER"


@_finaliser_safe
def record_api_request(
    method: str | bytes,
    endpoint: str,
    status_code: int,
    duration_ms: float,
    tenant_id: str | None = None,
) -> None:
    """Record one API request: its count by status, its duration and, for 4xx/5xx, an error.

    ``status`` is the exact code (``429``), or its class (``4xx``) with
    ``BIZMETRICS_HTTP_STATUS=class``.

    ``method`` (``str`` or ``bytes``) is upper-cased; a method outside the
    HTTP standard ones is recorded as ``OTHER``.  ``endpoint`` should be the route template
    (``/users/{id}``), not the raw path, to keep the series bounded.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 ``status`` is the exact code unless ``BIZMETRICS_HTTP_STATUS=class``.
    """
    try:
        method = http_method(method)
        API_FAMILY.get(method, endpoint, tenant_or_current(tenant_id)).record(
            _values.duration(duration_ms), _status(status_code)
        )
    except Exception:
        _log.internal_error("record_api_request")


@_finaliser_safe
def record_db_query(operation: str, duration_ms: float) -> None:
    """Record the duration of one database query.

    .. versionadded:: 0.2.0
    """
    try:
        DB_QUERY_FAMILY.get(operation).success(_values.duration(duration_ms), 0)
    except Exception:
        _log.internal_error("record_db_query")


def _pool_change(pool: str, value: object, what: str, apply: Callable[[Any, float], None], where: str) -> None:
    try:
        number = _values.level(value, what)
        if number is not None:
            apply(POOL_FAMILY.get(pool), number)
    except Exception:
        _log.internal_error(where)


@_finaliser_safe
def set_db_pool_size(pool: str, size: float) -> None:
    """Set the size of connection pool ``pool``.

    .. versionadded:: 0.2.0
    """
    _pool_change(pool, size, "pool size", Gauge.set, "set_db_pool_size")


@_finaliser_safe
def inc_db_pool_size(pool: str, amount: float = 1) -> None:
    """Grow the size of connection pool ``pool`` by ``amount``.

    .. versionadded:: 0.2.0
    """
    _pool_change(pool, amount, "pool size change", Gauge.inc, "inc_db_pool_size")


@_finaliser_safe
def dec_db_pool_size(pool: str, amount: float = 1) -> None:
    """Shrink the size of connection pool ``pool`` by ``amount``.

    .. versionadded:: 0.2.0
    """
    _pool_change(pool, amount, "pool size change", Gauge.dec, "dec_db_pool_size")


def _count_lookups(cache: str, count: object, hit: bool, where: str) -> None:
    try:
        value = _values.amount(count, "cache hits" if hit else "cache misses")
        if value:
            CACHE_FAMILY.get(cache).count(hit, value)
    except Exception:
        _log.internal_error(where)


@_finaliser_safe
def record_cache_hit(cache: str, count: int = 1) -> None:
    """Count ``count`` hits of cache ``cache``.

    .. versionadded:: 0.2.0
    """
    _count_lookups(cache, count, True, "record_cache_hit")


@_finaliser_safe
def record_cache_miss(cache: str, count: int = 1) -> None:
    """Count ``count`` misses of cache ``cache``.

    .. versionadded:: 0.2.0
    """
    _count_lookups(cache, count, False, "record_cache_miss")


def track_tenant_latency(*tenant_ids: str) -> None:
    """Also record the connector, API, workflow and agent durations of these tenants, per tenant.

    Duration histograms carry no ``tenant_id`` (one series set per tenant
    would multiply every histogram); the tenants named here, and those of
    ``BIZMETRICS_TENANT_LATENCY`` (comma-separated), get their own series in
    ``connector_operation_duration_by_tenant``, ``api_request_duration_by_tenant``,
    ``workflow_execution_duration_by_tenant`` and ``agent_response_duration_by_tenant``,
    with the family's buckets, so a latency SLO per key customer exists. Other
    tenants add nothing, not even work per call. Calls add to the tenants
    already named; a tenant over the tenant cap is recorded as ``__overflow__``,
    which is never tracked.

    .. versionadded:: 0.3.0
    """
    try:
        _track(*tenant_ids)
    except Exception:
        _log.internal_error("track_tenant_latency")
