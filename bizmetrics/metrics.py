"""The bizmetrics catalogue: every metric of the spec, with its buckets.

All metrics live on prometheus_client's default registry, so importing
``bizmetrics`` is enough for ``start_http_server`` to expose them.  Durations
are milliseconds.  Histograms carry no ``tenant_id``; per-tenant numbers live
on the counters, and the durations of the few tenants named by
``track_tenant_latency`` in the ``*_duration_by_tenant`` histograms.

The ``record_*`` helpers live in ``bizmetrics.helpers``; they are also
importable from here, where they used to live.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from . import _cache, _deferred, _fastpath, _settings  # noqa: F401  # _deferred's drain collector precedes the catalogue
from .multiprocess import check_import_order

if TYPE_CHECKING:
    from .helpers import (
        HTTP_METHODS,
        dec_db_pool_size,
        http_method,
        inc_db_pool_size,
        record_agent_invocation,
        record_api_request,
        record_cache_hit,
        record_cache_miss,
        record_connector_operation,
        record_connector_sync,
        record_db_query,
        record_tool_call,
        record_workflow_execution,
        record_workflow_step,
        set_db_pool_size,
        status_class,
    )

__all__ = [
    "AGENT_BUCKETS",
    "AGENT_COST",
    "AGENT_ERRORS",
    "AGENT_INVOCATIONS",
    "AGENT_RESPONSE_DURATION",
    "AGENT_RESPONSE_DURATION_BY_TENANT",
    "AGENT_TIME_TO_FIRST_TOKEN",
    "AGENT_TOKENS_USED",
    "AGENT_TOKEN_USAGE",
    "AGENT_TOOL_BUCKETS",
    "AGENT_TOOL_CALLS",
    "AGENT_TOOL_DURATION",
    "AGENT_TOOL_ERRORS",
    "AGENT_TTFT_BUCKETS",
    "AGENT_UNPRICED_TOKENS",
    "AGENT_USAGE_UNREPORTED",
    "API_BUCKETS",
    "API_ERRORS",
    "API_REQUESTS",
    "API_REQUEST_DURATION",
    "API_REQUEST_DURATION_BY_TENANT",
    "CACHE_BUCKETS",
    "CACHE_COMMAND_DURATION",
    "CACHE_ERRORS",
    "CACHE_HITS",
    "CACHE_MISSES",
    "CATALOGUE",
    "CONNECTOR_BUCKETS",
    "CONNECTOR_ERRORS",
    "CONNECTOR_OPERATIONS",
    "CONNECTOR_OPERATION_DURATION",
    "CONNECTOR_OPERATION_DURATION_BY_TENANT",
    "CONNECTOR_RATE_LIMITED",
    "CONNECTOR_RATE_LIMIT_REMAINING",
    "CONNECTOR_SYNC_OPERATIONS",
    "CONNECTOR_SYNC_RECORDS",
    "DB_BUCKETS",
    "DB_CONNECTION_POOL_SIZE",
    "DB_POOL_CHECKOUT_TIMEOUTS",
    "DB_POOL_CHECKOUT_WAIT",
    "DB_POOL_CONNECTIONS_CREATED",
    "DB_POOL_CONNECTIONS_INVALIDATED",
    "DB_POOL_IN_USE",
    "DB_QUERY_DURATION",
    "HTTP_METHODS",
    "JOB_BUCKETS",
    "JOB_DURATION",
    "JOB_EXECUTIONS",
    "JOB_IN_PROGRESS",
    "JOB_QUEUE_WAIT",
    "JOB_QUEUE_WAIT_BUCKETS",
    "JOB_RETRIES",
    "TENANT_BUDGET",
    "WORKFLOW_BUCKETS",
    "WORKFLOW_EXECUTIONS",
    "WORKFLOW_EXECUTION_DURATION",
    "WORKFLOW_EXECUTION_DURATION_BY_TENANT",
    "WORKFLOW_FAILURES",
    "WORKFLOW_STEP_BUCKETS",
    "WORKFLOW_STEP_DURATION",
    "dec_db_pool_size",
    "http_method",
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
    "set_db_pool_size",
    "status_class",
]

check_import_order()

# Bucket bounds, in milliseconds, sized to what each family measures: each
# starts low enough to resolve the family's fast cases (a 17 ms workflow must
# not read as a 95 ms p95).  ``BIZMETRICS_BUCKETS_<FAMILY>`` replaces them.
CONNECTOR_BUCKETS = _settings.buckets(
    "CONNECTOR",
    (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0),
)
WORKFLOW_BUCKETS = _settings.buckets(
    "WORKFLOW",
    (
        10.0,
        25.0,
        50.0,
        100.0,
        250.0,
        500.0,
        1000.0,
        2500.0,
        5000.0,
        10000.0,
        30000.0,
        60000.0,
        120000.0,
        300000.0,
        600000.0,
    ),
)
WORKFLOW_STEP_BUCKETS = _settings.buckets(
    "WORKFLOW_STEP",
    (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0),
)
AGENT_BUCKETS = _settings.buckets(
    "AGENT",
    (25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0, 30000.0, 60000.0, 120000.0, 300000.0),
)
AGENT_TTFT_BUCKETS = _settings.buckets(
    "AGENT_TTFT", (10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0)
)
AGENT_TOOL_BUCKETS = _settings.buckets(
    "AGENT_TOOL",
    (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0),
)
API_BUCKETS = _settings.buckets(
    "API", (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)
)
DB_BUCKETS = _settings.buckets(
    "DB", (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
)

#: Whether bizmetrics records straight into the catalogue's value cells (see ``bizmetrics._fastpath``).
FAST_PATH = _fastpath.FAST_PATH

#: The prefix of every catalogue metric (``BIZMETRICS_NAMESPACE``), or ``""``.
NAMESPACE = _settings.namespace()


M = TypeVar("M", Counter, Gauge, Histogram)


def _catalogued(base: type[M]) -> type[M]:
    """The catalogue's class of kind ``base``.

    Removing series empties bizmetrics' caches of label children; a new
    child's value cells take the fast path's shared lock (see ``_fastpath``).
    It adds nothing to ``base``'s layout, so that a reused metric can become
    one (see ``_catalogue``).
    """

    class Catalogued(base):  # type: ignore[valid-type,misc]
        __slots__ = ()

        def _metric_init(self) -> None:
            super()._metric_init()
            if _fastpath.FAST_PATH:
                _fastpath.adopt(self)

        def clear(self) -> None:
            super().clear()
            _cache.invalidate_all()

        def remove(self, *labelvalues: Any) -> None:
            super().remove(*labelvalues)
            _cache.invalidate_all()

        def remove_by_labels(self, labels: dict[str, str]) -> None:
            super().remove_by_labels(labels)
            _cache.invalidate_all()

    Catalogued.__name__ = Catalogued.__qualname__ = f"_{base.__name__}"
    return Catalogued


_Counter = _catalogued(Counter)
_Histogram = _catalogued(Histogram)
_Gauge = _catalogued(Gauge)


#: The catalogue's metric names as the spec gives them, before any ``BIZMETRICS_NAMESPACE`` prefix.
BASE_NAMES: list[str] = []


def _kind(cls: type) -> type[Counter | Gauge | Histogram]:
    """prometheus_client's class (Counter, Gauge, Histogram) that ``cls`` is a kind of."""
    return next(k for k in cls.__mro__ if k in (Counter, Gauge, Histogram))


def _catalogue(metric: Counter | Gauge | Histogram, cls: type) -> None:
    """Make a reused metric (the application's own, or one from before a reload) record like the catalogue's.

    A plain prometheus_client metric, or one of an earlier load of this
    module, becomes one of ``cls``, so its new children take the shared lock
    when created.  A metric of the application's own subclass keeps its
    class: its children take the lock when bizmetrics first records into
    them.  Existing children take it now (see ``_fastpath.adopt``).
    """
    if type(metric) is cls:
        return
    kind = _kind(cls)
    if type(metric) is kind or type(metric).__qualname__ == cls.__qualname__:
        metric.__class__ = cls  # the same layout: see ``_catalogued``
    if _fastpath.FAST_PATH:
        with metric._lock:
            children = list(metric._metrics.values())
        for child in children:
            _fastpath.adopt(child)


def _declare(cls: type[M], name: str, documentation: str, labelnames: Sequence[str], **kwargs: Any) -> M:
    """Create a metric on the default registry, or return the one already there.

    Re-importing or reloading this module must not raise "Duplicated
    timeseries", so an existing collector of the same kind and labels is
    reused (its children, and counts, stay).  A different metric of the same
    name (the application's own ``cache_hits``, say) is a clash: the error
    names the metric and the remedy.
    """
    BASE_NAMES.append(name)
    try:
        return cls(name, documentation, labelnames, namespace=NAMESPACE, **kwargs)
    except ValueError as exc:
        full = f"{NAMESPACE}_{name}" if NAMESPACE else name
        existing = getattr(REGISTRY, "_names_to_collectors", {}).get(full)
        base = _kind(cls)
        if isinstance(existing, base) and tuple(getattr(existing, "_labelnames", ())) == tuple(labelnames):
            _catalogue(existing, cls)
            return existing  # type: ignore[return-value]
        raise ValueError(
            f"bizmetrics: cannot register its metric {full!r}: the default registry already has a metric of that "
            f"name with another definition ({type(existing).__name__ if existing is not None else 'a collector'} "
            f"with labels {tuple(getattr(existing, '_labelnames', ()))}). Set the environment variable "
            f"BIZMETRICS_NAMESPACE (for example BIZMETRICS_NAMESPACE=myservice) before importing bizmetrics to "
            f"prefix every bizmetrics metric, or rename your own metric."
        ) from exc


# Connectors
CONNECTOR_OPERATIONS = _declare(
    _Counter,
    "connector_operations_total",
    "Total number of connector operations",
    ("connector_type", "operation", "status", "tenant_id"),
)
CONNECTOR_OPERATION_DURATION = _declare(
    _Histogram,
    "connector_operation_duration",
    "Duration of connector operations in milliseconds",
    ("connector_type", "operation"),
    buckets=CONNECTOR_BUCKETS,
)
CONNECTOR_ERRORS = _declare(
    _Counter,
    "connector_errors_total",
    "Total number of connector errors, by exception class",
    ("connector_type", "operation", "error_type", "tenant_id"),
)
CONNECTOR_SYNC_OPERATIONS = _declare(
    _Counter,
    "connector_sync_operations",
    "Total number of connector sync operations",
    ("connector_type", "resource_type", "status", "tenant_id"),
)
CONNECTOR_SYNC_RECORDS = _declare(
    _Counter,
    "connector_sync_records",
    "Total number of records synced by connectors",
    ("connector_type", "resource_type", "tenant_id"),
)

# Workflows
WORKFLOW_EXECUTIONS = _declare(
    _Counter,
    "workflow_executions_total",
    "Total number of workflow executions",
    ("workflow_id", "status", "tenant_id"),
)
WORKFLOW_EXECUTION_DURATION = _declare(
    _Histogram,
    "workflow_execution_duration",
    "Duration of workflow executions in milliseconds",
    ("workflow_id",),
    buckets=WORKFLOW_BUCKETS,
)
WORKFLOW_STEP_DURATION = _declare(
    _Histogram,
    "workflow_step_duration",
    "Duration of individual workflow steps in milliseconds",
    ("workflow_id", "step"),
    buckets=WORKFLOW_STEP_BUCKETS,
)
WORKFLOW_FAILURES = _declare(
    _Counter,
    "workflow_failures_total",
    "Total number of workflow failures, by exception class",
    ("workflow_id", "error_type", "tenant_id"),
)

# AI agents
AGENT_INVOCATIONS = _declare(
    _Counter,
    "agent_invocations_total",
    "Total number of AI agent invocations",
    ("agent_id", "status", "tenant_id"),
)
AGENT_RESPONSE_DURATION = _declare(
    _Histogram,
    "agent_response_duration",
    "Duration of AI agent responses in milliseconds",
    ("agent_id",),
    buckets=AGENT_BUCKETS,
)
AGENT_TOKENS_USED = _declare(
    _Counter,
    "agent_tokens_used",
    "Total number of tokens used by AI agents",
    ("agent_id", "tenant_id"),
)
AGENT_ERRORS = _declare(
    _Counter,
    "agent_errors_total",
    "Total number of AI agent errors, by exception class",
    ("agent_id", "error_type", "tenant_id"),
)

# API
API_REQUESTS = _declare(
    _Counter,
    "api_requests_total",
    "Total number of API requests, by HTTP status code (or class, BIZMETRICS_HTTP_STATUS=class)",
    ("method", "endpoint", "status", "tenant_id"),
)
API_REQUEST_DURATION = _declare(
    _Histogram,
    "api_request_duration",
    "Duration of API requests in milliseconds",
    ("method", "endpoint"),
    buckets=API_BUCKETS,
)
API_ERRORS = _declare(
    _Counter,
    "api_errors_total",
    "Total number of API requests answered with a 4xx or 5xx status",
    ("method", "endpoint", "status", "tenant_id"),
)

# Database
DB_QUERY_DURATION = _declare(
    _Histogram,
    "db_query_duration",
    "Duration of database queries in milliseconds",
    ("operation",),
    buckets=DB_BUCKETS,
)
DB_CONNECTION_POOL_SIZE = _declare(
    _Gauge,
    "db_connection_pool_size",
    "Number of connections in the database connection pool",
    ("pool",),
    # Each worker process owns its own pool: the service's pool is the sum
    # over live workers, and a dead worker's connections are gone with it.
    multiprocess_mode="livesum",
)

# Caches
CACHE_HITS = _declare(_Counter, "cache_hits_total", "Total number of cache hits", ("cache",))
CACHE_MISSES = _declare(_Counter, "cache_misses_total", "Total number of cache misses", ("cache",))

# AI agents: tokens by model and type, streaming latency, tool calls
AGENT_TOKEN_USAGE = _declare(
    _Counter,
    "agent_token_usage_total",
    "Tokens used by AI agents by model and type: input and output are all tokens; "
    "cache_read and cache_write are subsets of input, reasoning of output",
    ("agent_id", "model", "token_type", "tenant_id"),
)
AGENT_TIME_TO_FIRST_TOKEN = _declare(
    _Histogram,
    "agent_time_to_first_token",
    "Time from the first request for an item of a streaming AI agent to its first item, in milliseconds",
    ("agent_id",),
    buckets=AGENT_TTFT_BUCKETS,
)
AGENT_TOOL_CALLS = _declare(
    _Counter,
    "agent_tool_calls_total",
    "Total number of tool calls made by AI agents",
    ("agent_id", "tool", "status", "tenant_id"),
)
AGENT_TOOL_ERRORS = _declare(
    _Counter,
    "agent_tool_errors_total",
    "Total number of failed tool calls of AI agents, by error type",
    ("agent_id", "tool", "error_type", "tenant_id"),
)
AGENT_TOOL_DURATION = _declare(
    _Histogram,
    "agent_tool_duration",
    "Duration of tool calls of AI agents in milliseconds",
    ("agent_id", "tool"),
    buckets=AGENT_TOOL_BUCKETS,
)
AGENT_USAGE_UNREPORTED = _declare(
    _Counter,
    "agent_usage_unreported",
    "AI agent calls that ended without reporting their token usage (their tokens are not counted)",
    ("agent_id", "tenant_id"),
)


# Durations of the tenants named by ``track_tenant_latency`` (or BIZMETRICS_TENANT_LATENCY):
# the same buckets as the family's histogram, one series set per tracked tenant, none for the others.
CONNECTOR_OPERATION_DURATION_BY_TENANT = _declare(
    _Histogram,
    "connector_operation_duration_by_tenant",
    "Duration of connector operations of the tenants tracked with track_tenant_latency, in milliseconds",
    ("tenant_id",),
    buckets=CONNECTOR_BUCKETS,
)
API_REQUEST_DURATION_BY_TENANT = _declare(
    _Histogram,
    "api_request_duration_by_tenant",
    "Duration of API requests of the tenants tracked with track_tenant_latency, in milliseconds",
    ("tenant_id",),
    buckets=API_BUCKETS,
)
WORKFLOW_EXECUTION_DURATION_BY_TENANT = _declare(
    _Histogram,
    "workflow_execution_duration_by_tenant",
    "Duration of workflow executions of the tenants tracked with track_tenant_latency, in milliseconds",
    ("tenant_id",),
    buckets=WORKFLOW_BUCKETS,
)
AGENT_RESPONSE_DURATION_BY_TENANT = _declare(
    _Histogram,
    "agent_response_duration_by_tenant",
    "Duration of AI agent responses of the tenants tracked with track_tenant_latency, in milliseconds",
    ("tenant_id",),
    buckets=AGENT_BUCKETS,
)


# Cost and budgets (docs/guides/agents.md, "Cost and budgets")
AGENT_COST = _declare(
    _Counter,
    "agent_cost",
    "Money spent on AI model tokens, priced by set_prices or as the response reported it",
    ("agent_id", "model", "tenant_id", "currency"),
)
AGENT_UNPRICED_TOKENS = _declare(
    _Counter,
    "agent_unpriced_tokens",
    "AI model tokens with no price (their model or token type is not in the price table), not in agent_cost_total",
    ("agent_id", "model", "token_type", "tenant_id"),
)
TENANT_BUDGET = _declare(
    _Gauge,
    "bizmetrics_tenant_budget",
    "A tenant's spending budget per period, set by set_budget",
    ("tenant_id", "period", "currency"),
    # Every worker sets the same value: the latest one set is the budget, never a sum.
    multiprocess_mode="mostrecent",
)
# Background jobs (Celery, RQ, any queue through ``bizmetrics.jobs``): see docs/guides/jobs.md.
JOB_BUCKETS = _settings.buckets(
    "JOB",
    (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0, 900000.0),
)
JOB_QUEUE_WAIT_BUCKETS = _settings.buckets(
    "JOB_QUEUE_WAIT",
    (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0),
)
JOB_EXECUTIONS = _declare(
    _Counter,
    "job_executions_total",
    "Total number of background job executions, by outcome (success, error, retry, cancelled)",
    ("queue", "task", "status", "tenant_id"),
)
JOB_DURATION = _declare(
    _Histogram,
    "job_duration",
    "Duration of background job executions in milliseconds",
    ("queue", "task"),
    buckets=JOB_BUCKETS,
)
JOB_QUEUE_WAIT = _declare(
    _Histogram,
    "job_queue_wait",
    "Time background jobs waited in their queue, from enqueue (or their ETA) to start, in milliseconds",
    ("queue", "task"),
    buckets=JOB_QUEUE_WAIT_BUCKETS,
)
JOB_RETRIES = _declare(
    _Counter,
    "job_retries_total",
    "Total number of background job executions that ended asking to be retried",
    ("queue", "task", "tenant_id"),
)
JOB_IN_PROGRESS = _declare(
    _Gauge,
    "job_in_progress",
    "Background jobs running now",
    ("queue", "task"),
    # The jobs of a worker killed mid-task are no longer running: live workers only.
    multiprocess_mode="livesum",
)
# Exposed by ``bizmetrics.jobs.QueueDepth`` at scrape time when asked for; the operations kit prefixes it too.
BASE_NAMES.append("job_queue_depth")


#: Every metric of the catalogue, in the order of the spec.
CATALOGUE = (
    CONNECTOR_OPERATIONS,
    CONNECTOR_OPERATION_DURATION,
    CONNECTOR_ERRORS,
    CONNECTOR_SYNC_OPERATIONS,
    CONNECTOR_SYNC_RECORDS,
    WORKFLOW_EXECUTIONS,
    WORKFLOW_EXECUTION_DURATION,
    WORKFLOW_STEP_DURATION,
    WORKFLOW_FAILURES,
    AGENT_INVOCATIONS,
    AGENT_RESPONSE_DURATION,
    AGENT_TOKENS_USED,
    AGENT_ERRORS,
    API_REQUESTS,
    API_REQUEST_DURATION,
    API_ERRORS,
    DB_QUERY_DURATION,
    DB_CONNECTION_POOL_SIZE,
    CACHE_HITS,
    CACHE_MISSES,
    AGENT_TOKEN_USAGE,
    AGENT_TIME_TO_FIRST_TOKEN,
    AGENT_TOOL_CALLS,
    AGENT_TOOL_ERRORS,
    AGENT_TOOL_DURATION,
    AGENT_USAGE_UNREPORTED,
    CONNECTOR_OPERATION_DURATION_BY_TENANT,
    API_REQUEST_DURATION_BY_TENANT,
    WORKFLOW_EXECUTION_DURATION_BY_TENANT,
    AGENT_RESPONSE_DURATION_BY_TENANT,
    AGENT_COST,
    AGENT_UNPRICED_TOKENS,
    TENANT_BUDGET,
    JOB_EXECUTIONS,
    JOB_DURATION,
    JOB_QUEUE_WAIT,
    JOB_RETRIES,
    JOB_IN_PROGRESS,
)


# Database pools, cache commands and rate limits of outgoing HTTP, filled by
# the client instrumentations (bizmetrics.sqlalchemy, .redis, .httpx, .requests, .aiohttp).
CACHE_BUCKETS = _settings.buckets("CACHE", (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0))
DB_POOL_IN_USE = _declare(
    _Gauge,
    "db_connection_pool_in_use",
    "Connections of the database connection pool checked out by the application",
    ("pool",),
    multiprocess_mode="livesum",
)
DB_POOL_CHECKOUT_WAIT = _declare(
    _Histogram,
    "db_connection_pool_checkout_wait",
    "Time the application waited for a connection of the pool, in milliseconds",
    ("pool",),
    buckets=DB_BUCKETS,
)
DB_POOL_CHECKOUT_TIMEOUTS = _declare(
    _Counter,
    "db_connection_pool_checkout_timeouts_total",
    "Checkouts that gave up waiting for a connection of the pool",
    ("pool",),
)
DB_POOL_CONNECTIONS_CREATED = _declare(
    _Counter,
    "db_connection_pool_connections_created_total",
    "Database connections opened by the pool",
    ("pool",),
)
DB_POOL_CONNECTIONS_INVALIDATED = _declare(
    _Counter,
    "db_connection_pool_connections_invalidated_total",
    "Database connections of the pool invalidated (disconnects, errors, explicit invalidation)",
    ("pool",),
)
CACHE_COMMAND_DURATION = _declare(
    _Histogram,
    "cache_command_duration",
    "Duration of cache commands in milliseconds",
    ("cache", "command"),
    buckets=CACHE_BUCKETS,
)
CACHE_ERRORS = _declare(
    _Counter,
    "cache_errors_total",
    "Cache commands that raised, by exception class",
    ("cache", "command", "error_type"),
)
CONNECTOR_RATE_LIMITED = _declare(
    _Counter,
    "connector_rate_limited_total",
    "Responses of a connector's provider that refused a request for its rate limit (429, or 503 with Retry-After)",
    ("connector_type", "tenant_id"),
)
CONNECTOR_RATE_LIMIT_REMAINING = _declare(
    _Gauge,
    "connector_rate_limit_remaining",
    "Requests left in the provider's rate-limit window, as its last response said",
    ("connector_type", "tenant_id"),
    # The last response of any live worker: the provider's quota is shared by all of them.
    multiprocess_mode="livemostrecent",
)
CLIENT_METRICS = (
    DB_POOL_IN_USE,
    DB_POOL_CHECKOUT_WAIT,
    DB_POOL_CHECKOUT_TIMEOUTS,
    DB_POOL_CONNECTIONS_CREATED,
    DB_POOL_CONNECTIONS_INVALIDATED,
    CACHE_COMMAND_DURATION,
    CACHE_ERRORS,
    CONNECTOR_RATE_LIMITED,
    CONNECTOR_RATE_LIMIT_REMAINING,
)
CATALOGUE = (*CATALOGUE, *CLIENT_METRICS)  # type: ignore[assignment]


# The helpers moved to ``bizmetrics.helpers`` after 0.2.0.  They are imported on
# first use: the helpers record through the families, which are built on this
# catalogue, so importing them here at import time would be circular.


#: The names of ``__all__`` that live in ``bizmetrics.helpers``.
_HELPERS = frozenset(name for name in __all__ if name not in globals())


def __getattr__(name: str) -> Any:
    if name in _HELPERS:
        return getattr(importlib.import_module(".helpers", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_HELPERS})
