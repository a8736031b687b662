"""The bizmetrics catalogue: every metric of the spec, and helpers to record them.

All metrics live on prometheus_client's default registry, so importing
``bizmetrics`` is enough for ``start_http_server`` to expose them.  Durations
are milliseconds.  Histograms carry no ``tenant_id``; per-tenant numbers live
on the counters.

Every ``record_*`` helper swallows bad input (see README, "Bad input") and
any failure of its own, logging it on the ``bizmetrics`` logger: recording a
metric never raises into application code.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from . import _cache, _extract, _log, _settings, _tenants, _trace, _values
from ._values import DEFAULT_TENANT, UNKNOWN
from .context import agent_or_current, tenant_or_current, workflow_or_current
from .multiprocess import check_import_order, enabled

__all__ = [
    "AGENT_BUCKETS",
    "AGENT_ERRORS",
    "AGENT_INVOCATIONS",
    "AGENT_RESPONSE_DURATION",
    "AGENT_TIME_TO_FIRST_TOKEN",
    "AGENT_TOKENS_USED",
    "AGENT_TOKEN_USAGE",
    "AGENT_TOOL_BUCKETS",
    "AGENT_TOOL_CALLS",
    "AGENT_TOOL_DURATION",
    "AGENT_TOOL_ERRORS",
    "AGENT_TTFT_BUCKETS",
    "API_BUCKETS",
    "API_ERRORS",
    "API_REQUESTS",
    "API_REQUEST_DURATION",
    "CACHE_HITS",
    "CACHE_MISSES",
    "CATALOGUE",
    "CONNECTOR_BUCKETS",
    "CONNECTOR_ERRORS",
    "CONNECTOR_OPERATIONS",
    "CONNECTOR_OPERATION_DURATION",
    "CONNECTOR_SYNC_OPERATIONS",
    "CONNECTOR_SYNC_RECORDS",
    "DB_BUCKETS",
    "DB_CONNECTION_POOL_SIZE",
    "DB_QUERY_DURATION",
    "WORKFLOW_BUCKETS",
    "WORKFLOW_EXECUTIONS",
    "WORKFLOW_EXECUTION_DURATION",
    "WORKFLOW_FAILURES",
    "WORKFLOW_STEP_BUCKETS",
    "WORKFLOW_STEP_DURATION",
    "dec_db_pool_size",
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

#: The prefix of every catalogue metric (``BIZMETRICS_NAMESPACE``), or ``""``.
NAMESPACE = _settings.namespace()


class _Invalidating:
    """Mixin: removing series empties bizmetrics' caches of label children."""

    def clear(self) -> None:
        super().clear()  # type: ignore[misc]
        _cache.invalidate_all()

    def remove(self, *labelvalues: Any) -> None:
        super().remove(*labelvalues)  # type: ignore[misc]
        _cache.invalidate_all()

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        super().remove_by_labels(labels)  # type: ignore[misc]
        _cache.invalidate_all()


class _Counter(_Invalidating, Counter):
    pass


class _Histogram(_Invalidating, Histogram):
    pass


class _Gauge(_Invalidating, Gauge):
    pass


M = TypeVar("M", Counter, Gauge, Histogram)


#: The catalogue's metric names as the spec gives them, before any ``BIZMETRICS_NAMESPACE`` prefix.
BASE_NAMES: list[str] = []


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
        base = next(k for k in cls.__mro__ if k in (Counter, Gauge, Histogram))
        if isinstance(existing, base) and tuple(getattr(existing, "_labelnames", ())) == tuple(labelnames):
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
    "Total number of API requests, by HTTP status class",
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
)


# --- Fast, exact recording ------------------------------------------------------
#
# Counter.inc() and Histogram.observe() spend most of their time on checks
# that cannot fail for bizmetrics' own children (observability, sign,
# exemplars).  Recording straight into the children's value objects, as
# Histogram.observe itself does, makes a decorated call about 600 ns
# cheaper.  Those attributes are prometheus_client internals, so a self-test
# at import records through both paths into a private registry and compares
# the exposition; any difference, any missing attribute, or multiprocess mode
# (where a self-test would leave files behind) keeps the public API.


def _fast_adder(child: Any) -> Callable[[float], None]:
    inc: Callable[[float], None] = child._value.inc
    return inc


def _fast_observer(child: Any) -> Callable[[float], None]:
    sum_inc = child._sum.inc
    bounds = list(child._upper_bounds)
    bucket_incs = [bucket.inc for bucket in child._buckets]
    if len(bounds) != len(bucket_incs) or bounds[-1] != float("inf"):
        raise TypeError("unexpected histogram layout")

    def observe(amount: float) -> None:
        sum_inc(amount)
        # The first bucket whose upper bound is >= amount: Histogram.observe's rule.
        bucket_incs[bisect_left(bounds, amount)](1)

    return observe


def _fast_path_matches() -> bool:
    from prometheus_client import CollectorRegistry

    if enabled():
        return False
    try:
        registries = []
        for fast in (True, False):
            reg = CollectorRegistry()
            counter = Counter("selftest", "", ["a"], registry=reg).labels("x")
            hist = Histogram("selftest_ms", "", ["a"], buckets=(1.0, 5.0), registry=reg).labels("x")
            add = _fast_adder(counter) if fast else counter.inc
            observe = _fast_observer(hist) if fast else hist.observe
            for amount in (2.0, 0.5, 1.0):
                add(amount)
            for amount in (0.5, 1.0, 3.0, 7.0, 0.0):
                observe(amount)
            registries.append(
                sorted(
                    (s.name, tuple(sorted(s.labels.items())), s.value)
                    for metric in reg.collect()
                    for s in metric.samples
                    if not s.name.endswith("_created")
                )
            )
        return bool(registries[0]) and registries[0] == registries[1]
    except Exception:
        return False


#: Whether bundles record through the children's value objects (see above).
FAST_PATH = _fast_path_matches()


def _adder(child: Any) -> Callable[[float], None]:
    """Return ``child.inc``, or its exact fast equivalent."""
    return _fast_adder(child) if FAST_PATH else child.inc


def _observer(child: Any) -> Callable[[float], None]:
    """Return ``child.observe``, or its exact fast equivalent."""
    return _fast_observer(child) if FAST_PATH else child.observe


# --- Label bundles -----------------------------------------------------------
#
# A bundle holds the label children of one label combination, created once.
# Each has success(ms, amount), failure(ms, error_type, amount) and
# cancelled(ms, amount); ms is None when the duration was dropped, amount is
# what the family counts (records, tokens, cache hits).  Creating a bundle
# also creates the "error" sibling at 0, so error ratios exist before the
# first failure.

B = TypeVar("B")


class _Family(Generic[B]):
    """Bundles of one family, cached by raw label values."""

    __slots__ = ("_defaults", "_make", "_names", "_tenant", "cache")

    def __init__(self, make: Callable[..., B], names: tuple[str, ...], defaults: tuple[str, ...]) -> None:
        #: Bundles by label values; the decorators' hot path reads it directly.
        self.cache = _cache.Cache()
        self._make = make
        self._names = names
        self._defaults = defaults
        #: Where ``tenant_id`` is among the labels: it goes through the tenant cap.
        self._tenant = names.index("tenant_id") if "tenant_id" in names else None

    def get(self, *raw: Any) -> B:
        """Return the bundle for these label values (cleaning them on first use)."""
        try:
            bundle: B | None = self.cache.get(raw)
        except TypeError:  # an unhashable label value: cleaned below, as str() of it
            bundle = None
        if bundle is None:
            # Only clean str keys are cached; anything else is cleaned (and
            # logged) on every call, so 1, True and "1" can never collide.
            clean = tuple(
                # A value equal to the default is clean: for agents' model, "" means "none given".
                value if type(value) is str and value == default else _values.label(value, name, default)
                for value, name, default in zip(raw, self._names, self._defaults, strict=True)
            )
            at = self._tenant
            if at is not None:
                tenant = clean[at]
                admitted = _tenants.ADMISSION.admit(tenant)
                if admitted is not tenant:
                    # Over the cap: never cached under this tenant, so each of its records is counted.
                    clean = (*clean[:at], admitted, *clean[at + 1 :])
            bundle = self.cache.get(clean)
            if bundle is None:
                seen = _cache.generation()
                bundle = self._make(*clean)
                _cache.store(self.cache, clean, bundle, seen)
        return bundle


def _by_error_type(children: dict[str, Any], metric: Counter, error_type: str, *labels: str) -> Any:
    """Return the adder of ``metric``'s child for ``labels``, kept in ``children`` under ``error_type``."""
    child = children.get(error_type)
    if child is None:
        child = children[error_type] = _adder(metric.labels(*labels))
    return child


def _error_label(error_type: str) -> str:
    # Exception class names are cleaned like any label (control characters, length).
    return _values.label(error_type, "error_type")


# --- Exemplars and fixed durations: the slow path ----------------------------------
#
# Every bundle method starts with ``if _trace.ACTIVE or _current_trace() is
# not None``: one global and one context-variable read when no trace is
# current.  Otherwise it records through the children's public API, with the
# exemplar of the current trace and the fixed test duration, if any.

_current_trace = _trace.current


# prometheus_client counts first and validates the exemplar after, so a
# rejected exemplar has already been counted: never count again.


def _inc(child: Any, exemplar: dict[str, str] | None, amount: float = 1) -> None:
    if exemplar is None:
        child.inc(amount)
        return
    try:
        child.inc(amount, exemplar=exemplar)
    except Exception:
        _log.warn("exemplar:rejected", "bizmetrics: prometheus_client rejected an exemplar; dropped")


def _observe(child: Any, ms: float | None, exemplar: dict[str, str] | None) -> None:
    ms = _trace.duration(ms)
    if ms is None:
        return
    if exemplar is None:
        child.observe(ms)
        return
    try:
        child.observe(ms, exemplar=exemplar)
    except Exception:
        _log.warn("exemplar:rejected", "bizmetrics: prometheus_client rejected an exemplar; dropped")


class _Outcomes:
    """A family that counts calls by status, observes their duration and counts errors by type.

    Its counters are labelled ``(*key, status, tenant_id)`` and
    ``(*key, error_type, tenant_id)``, its histogram ``key``; subclasses name
    the three metrics.
    """

    __slots__ = ("children", "duration", "err", "errors", "key", "ok", "tenant")
    scope: object = None
    CALLS: Counter
    ERRORS: Counter
    DURATION: Histogram

    def __init__(self, *labels: str) -> None:
        *key, tenant = labels
        self.key, self.tenant = tuple(key), tenant
        #: The success and error counters and the histogram, for the slow path.
        self.children = (
            self.CALLS.labels(*key, "success", tenant),
            self.CALLS.labels(*key, "error", tenant),
            self.DURATION.labels(*key),
        )
        self.ok = _adder(self.children[0])
        self.err = _adder(self.children[1])
        self.duration = _observer(self.children[2])
        self.errors: dict[str, Any] = {}

    def success(self, ms: float | None, amount: Any) -> None:
        if _trace.ACTIVE or _current_trace() is not None:
            exemplar = _trace.exemplar()
            _inc(self.children[0], exemplar)
            _observe(self.children[2], ms, exemplar)
            return
        self.ok(1)
        if ms is not None:
            self.duration(ms)

    def _error(self, error_type: str) -> None:
        try:
            add = self.errors.get(error_type)
        except TypeError:  # an unhashable error_type= result: keyed by its clean label
            error_type = _error_label(error_type)
            add = self.errors.get(error_type)
        if add is None:
            add = _by_error_type(self.errors, self.ERRORS, error_type, *self.key, _error_label(error_type), self.tenant)
        add(1)

    def failure(self, ms: float | None, error_type: str, amount: Any) -> None:
        if _trace.ACTIVE or _current_trace() is not None:
            exemplar = _trace.exemplar()
            _inc(self.children[1], exemplar)
            self._error(error_type)
            _observe(self.children[2], ms, exemplar)
            return
        self.err(1)
        # _error inlined for a str error type: the error path is hot when a remote service is down.
        add = self.errors.get(error_type) if type(error_type) is str else None
        if add is None:
            self._error(error_type)
        else:
            add(1)
        if ms is not None:
            self.duration(ms)

    def cancelled(self, ms: float | None, amount: Any) -> None:
        exemplar = _trace.exemplar() if _trace.ACTIVE or _current_trace() is not None else None
        _inc(self.CALLS.labels(*self.key, "cancelled", self.tenant), exemplar)
        _observe(self.children[2], ms, exemplar)


class _ConnectorOp(_Outcomes):
    __slots__ = ()
    CALLS, ERRORS, DURATION = CONNECTOR_OPERATIONS, CONNECTOR_ERRORS, CONNECTOR_OPERATION_DURATION


class _Sync:
    __slots__ = ("err", "labels", "ok", "records")

    def __init__(self, connector_type: str, resource_type: str, tenant_id: str) -> None:
        self.labels = (connector_type, resource_type, tenant_id)
        self.ok = _adder(CONNECTOR_SYNC_OPERATIONS.labels(connector_type, resource_type, "success", tenant_id))
        self.err = _adder(CONNECTOR_SYNC_OPERATIONS.labels(connector_type, resource_type, "error", tenant_id))
        self.records = _adder(CONNECTOR_SYNC_RECORDS.labels(connector_type, resource_type, tenant_id))

    def count(self, status: str, amount: float) -> None:
        if status == "success":
            self.ok(1)
        elif status == "error":
            self.err(1)
        else:
            ct, rt, tenant = self.labels
            CONNECTOR_SYNC_OPERATIONS.labels(ct, rt, status, tenant).inc()
        if amount:
            self.records(amount)


class _Workflow(_Outcomes):
    __slots__ = ("scope",)
    CALLS, ERRORS, DURATION = WORKFLOW_EXECUTIONS, WORKFLOW_FAILURES, WORKFLOW_EXECUTION_DURATION

    def __init__(self, workflow_id: str, tenant_id: str) -> None:
        super().__init__(workflow_id, tenant_id)
        #: Set as the current workflow while the body runs, for the steps inside it.
        self.scope = workflow_id


class _TokenUsage:
    """The ``agent_token_usage_total`` children of one agent, model and tenant."""

    __slots__ = ("by_type", "labels")

    def __init__(self, agent_id: str, model: str, tenant_id: str) -> None:
        self.labels = (agent_id, model, tenant_id)
        self.by_type: dict[str, Any] = {}

    def add(self, usage: _extract.Usage) -> None:
        agent, model, tenant = self.labels
        for kind, count in usage.tokens.items():
            _by_error_type(self.by_type, AGENT_TOKEN_USAGE, kind, agent, model, kind, tenant)(count)


class _Agent(_Outcomes):
    __slots__ = ("model", "scope", "tokens", "ttft")
    CALLS, ERRORS, DURATION = AGENT_INVOCATIONS, AGENT_ERRORS, AGENT_RESPONSE_DURATION

    def __init__(self, agent_id: str, tenant_id: str, model: str = "") -> None:
        super().__init__(agent_id, tenant_id)
        #: The model named by the decorator or the call ("": take the response's).
        self.model = model
        #: Set as the current agent while the body runs, for the tool calls inside it.
        self.scope = agent_id
        self.tokens = _adder(AGENT_TOKENS_USED.labels(agent_id, tenant_id))
        self.ttft: Callable[[float], None] | None = None

    def used(self, amount: Any) -> None:
        """Count the tokens of a call: a number, or a ``Usage`` by type and model."""
        if type(amount) is _extract.Usage:
            total = amount.total
            if amount.tokens:
                model = self.model or amount.model
                AGENT_USAGES.get(self.key[0], model if model else UNKNOWN, self.tenant).add(amount)
        else:
            total = amount
        if total:
            self.tokens(total)

    def first_item(self, ms: float) -> None:
        """Observe the time to the first item of a stream."""
        if _trace.ACTIVE or _current_trace() is not None:
            _observe(AGENT_TIME_TO_FIRST_TOKEN.labels(self.key[0]), ms, _trace.exemplar())
            return
        observe = self.ttft
        if observe is None:
            observe = self.ttft = _observer(AGENT_TIME_TO_FIRST_TOKEN.labels(self.key[0]))
        observe(ms)

    # Tokens are counted whatever the outcome: a failed or cancelled call still cost them.
    def success(self, ms: float | None, amount: Any) -> None:
        super().success(ms, amount)
        if amount:
            self.used(amount)

    def failure(self, ms: float | None, error_type: str, amount: Any) -> None:
        super().failure(ms, error_type, amount)
        if amount:
            self.used(amount)

    def cancelled(self, ms: float | None, amount: Any) -> None:
        super().cancelled(ms, amount)
        if amount:
            self.used(amount)


class _Tool(_Outcomes):
    __slots__ = ()
    CALLS, ERRORS, DURATION = AGENT_TOOL_CALLS, AGENT_TOOL_ERRORS, AGENT_TOOL_DURATION


class _Timed:
    """A family that is one histogram child: steps and DB queries."""

    __slots__ = ("child", "duration")
    scope = None

    def __init__(self, child: Any) -> None:
        self.child = child
        self.duration = _observer(child)

    def success(self, ms: float | None, amount: float) -> None:
        if _trace.ACTIVE or _current_trace() is not None:
            _observe(self.child, ms, _trace.exemplar())
        elif ms is not None:
            self.duration(ms)

    def failure(self, ms: float | None, error_type: str, amount: float) -> None:
        self.success(ms, amount)

    def cancelled(self, ms: float | None, amount: float) -> None:
        self.success(ms, amount)


class _CacheLookups:
    __slots__ = ("hits", "misses")
    scope = None

    def __init__(self, cache: str) -> None:
        self.hits = _adder(CACHE_HITS.labels(cache))
        self.misses = _adder(CACHE_MISSES.labels(cache))

    def success(self, ms: float | None, amount: float) -> None:
        (self.hits if amount else self.misses)(1)

    def failure(self, ms: float | None, error_type: str, amount: float) -> None:
        self.misses(1)

    def cancelled(self, ms: float | None, amount: float) -> None:
        pass


class _Api:
    __slots__ = ("child", "duration", "errors", "labels", "requests")

    def __init__(self, method: str, endpoint: str, tenant_id: str) -> None:
        self.labels = (method, endpoint, tenant_id)
        self.child = API_REQUEST_DURATION.labels(method, endpoint)
        self.duration = _observer(self.child)
        self.requests: dict[str, Any] = {}
        self.errors: dict[str, Any] = {}
        # 5xx is the error class the SLOs and alerts divide by.
        _by_error_type(self.requests, API_REQUESTS, "5xx", method, endpoint, "5xx", tenant_id)
        _by_error_type(self.errors, API_ERRORS, "5xx", method, endpoint, "5xx", tenant_id)

    def record(self, ms: float | None, status: str) -> None:
        method, endpoint, tenant = self.labels
        if _trace.ACTIVE or _current_trace() is not None:
            exemplar = _trace.exemplar()
            _inc(API_REQUESTS.labels(method, endpoint, status, tenant), exemplar)
            if status in ("4xx", "5xx"):
                _by_error_type(self.errors, API_ERRORS, status, method, endpoint, status, tenant)(1)
            _observe(self.child, ms, exemplar)
            return
        _by_error_type(self.requests, API_REQUESTS, status, method, endpoint, status, tenant)(1)
        if status in ("4xx", "5xx"):
            _by_error_type(self.errors, API_ERRORS, status, method, endpoint, status, tenant)(1)
        if ms is not None:
            self.duration(ms)


_T = (UNKNOWN, UNKNOWN, DEFAULT_TENANT)
CONNECTOR_OPS: _Family[_ConnectorOp] = _Family(_ConnectorOp, ("connector_type", "operation", "tenant_id"), _T)
SYNCS: _Family[_Sync] = _Family(_Sync, ("connector_type", "resource_type", "tenant_id"), _T)
WORKFLOWS: _Family[_Workflow] = _Family(_Workflow, ("workflow_id", "tenant_id"), _T[1:])
STEPS: _Family[_Timed] = _Family(
    lambda wf, step: _Timed(WORKFLOW_STEP_DURATION.labels(wf, step)), ("workflow_id", "step"), _T[:2]
)
AGENTS: _Family[_Agent] = _Family(_Agent, ("agent_id", "tenant_id", "model"), (UNKNOWN, DEFAULT_TENANT, ""))
AGENT_USAGES: _Family[_TokenUsage] = _Family(_TokenUsage, ("agent_id", "model", "tenant_id"), _T)
TOOLS: _Family[_Tool] = _Family(_Tool, ("agent_id", "tool", "tenant_id"), _T)
DB_QUERIES: _Family[_Timed] = _Family(lambda op: _Timed(DB_QUERY_DURATION.labels(op)), ("operation",), _T[:1])
CACHES: _Family[_CacheLookups] = _Family(_CacheLookups, ("cache",), _T[:1])
APIS: _Family[_Api] = _Family(_Api, ("method", "endpoint", "tenant_id"), _T)
POOLS: _Family[Any] = _Family(DB_CONNECTION_POOL_SIZE.labels, ("pool",), _T[:1])


def _error_type(error_type: object) -> str:
    return UNKNOWN if error_type is None else _values.label(error_type, "error_type")


# --- Helpers -----------------------------------------------------------------


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

    .. versionadded:: 0.1.0
    """
    try:
        bundle = CONNECTOR_OPS.get(connector_type, operation, tenant_or_current(tenant_id))
        ms = _values.duration(duration_ms)
        if success:
            bundle.success(ms, 0)
        else:
            bundle.failure(ms, _error_type(error_type), 0)
    except Exception:
        _log.internal_error("record_connector_operation")


def record_connector_sync(
    connector_type: str,
    resource_type: str,
    record_count: int,
    tenant_id: str | None = None,
    *,
    success: bool = True,
) -> None:
    """Record one sync operation of ``resource_type`` and the records it synced.

    .. versionadded:: 0.1.0
    """
    try:
        SYNCS.get(connector_type, resource_type, tenant_or_current(tenant_id)).count(
            "success" if success else "error", _values.amount(record_count, "record_count")
        )
    except Exception:
        _log.internal_error("record_connector_sync")


def record_workflow_execution(
    workflow_id: str,
    duration_ms: float,
    success: bool,
    tenant_id: str | None = None,
    *,
    error_type: str | None = None,
) -> None:
    """Record one workflow execution: its count by status, its duration and, on failure, the failure.

    .. versionadded:: 0.1.0
    """
    try:
        bundle = WORKFLOWS.get(workflow_id, tenant_or_current(tenant_id))
        ms = _values.duration(duration_ms)
        if success:
            bundle.success(ms, 0)
        else:
            bundle.failure(ms, _error_type(error_type), 0)
    except Exception:
        _log.internal_error("record_workflow_execution")


def record_workflow_step(workflow_id: str | None, step: str, duration_ms: float) -> None:
    """Record the duration of one step of workflow ``workflow_id``.

    A ``workflow_id`` of ``None`` means the one set by ``workflow_context``
    (and so by an enclosing ``instrument_workflow``), else ``unknown``.

    .. versionadded:: 0.1.0
    """
    try:
        STEPS.get(workflow_or_current(workflow_id), step).success(_values.duration(duration_ms), 0)
    except Exception:
        _log.internal_error("record_workflow_step")


def record_agent_invocation(
    agent_id: str,
    duration_ms: float,
    tokens_used: int,
    success: bool,
    tenant_id: str | None = None,
    *,
    error_type: str | None = None,
    model: str | None = None,
    usage: Mapping[str, float] | None = None,
) -> None:
    """Record one AI agent invocation: its count by status, duration and the tokens it used.

    Tokens are counted whether or not the call succeeded: a failed call still costs them.

    :param model: the ``model`` label of ``agent_token_usage_total`` (``unknown`` if not given).
    :param usage: tokens by type (``input``, ``output``, ``cache_read``,
        ``cache_write``, ``reasoning``) for ``agent_token_usage_total``;
        ``tokens_used`` still feeds ``agent_tokens_used_total``.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``model`` and ``usage``.
    """
    try:
        tenant = tenant_or_current(tenant_id)
        bundle = AGENTS.get(agent_id, tenant, "")
        ms = _values.duration(duration_ms)
        tokens = _values.amount(tokens_used, "tokens_used")
        if success:
            bundle.success(ms, tokens)
        else:
            bundle.failure(ms, _error_type(error_type), tokens)
        if usage is not None:
            typed = _extract.as_tokens(usage, "usage")
            if isinstance(typed, _extract.Usage) and typed.tokens:
                AGENT_USAGES.get(agent_id, UNKNOWN if model is None else model, tenant).add(typed)
            else:
                _log.warn("usage", "bizmetrics: usage %r has no token types; ignored", type(usage).__name__)
    except Exception:
        _log.internal_error("record_agent_invocation")


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
        bundle = TOOLS.get(agent_or_current(agent_id), tool, tenant_or_current(tenant_id))
        ms = _values.duration(duration_ms)
        if success:
            bundle.success(ms, 0)
        else:
            bundle.failure(ms, _error_type(error_type), 0)
    except Exception:
        _log.internal_error("record_tool_call")


HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))


def status_class(status_code: object) -> str:
    """Return the HTTP status class (``2xx`` ...) of a status code, or ``unknown``."""
    try:
        code = int(status_code)  # type: ignore[call-overload]
    except Exception:
        code = 0
    if isinstance(status_code, bool) or not 100 <= code <= 599:
        _log.warn("status_code", "bizmetrics: %r is not an HTTP status code; status 'unknown'", status_code)
        return UNKNOWN
    return f"{code // 100}xx"


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


def record_api_request(
    method: str | bytes,
    endpoint: str,
    status_code: int,
    duration_ms: float,
    tenant_id: str | None = None,
) -> None:
    """Record one API request: its count by status class, its duration and, for 4xx/5xx, an error.

    ``method`` (``str`` or ``bytes``) is upper-cased; a method outside the
    HTTP standard ones is recorded as ``OTHER``.  ``endpoint`` should be the route template
    (``/users/{id}``), not the raw path, to keep the series bounded.

    .. versionadded:: 0.1.0
    """
    try:
        method = http_method(method)
        APIS.get(method, endpoint, tenant_or_current(tenant_id)).record(
            _values.duration(duration_ms), status_class(status_code)
        )
    except Exception:
        _log.internal_error("record_api_request")


def record_db_query(operation: str, duration_ms: float) -> None:
    """Record the duration of one database query.

    .. versionadded:: 0.1.0
    """
    try:
        DB_QUERIES.get(operation).success(_values.duration(duration_ms), 0)
    except Exception:
        _log.internal_error("record_db_query")


def _pool_change(pool: str, value: object, what: str, apply: Callable[[Any, float], None], where: str) -> None:
    try:
        number = _values.level(value, what)
        if number is not None:
            apply(POOLS.get(pool), number)
    except Exception:
        _log.internal_error(where)


def set_db_pool_size(pool: str, size: float) -> None:
    """Set the size of connection pool ``pool``.

    .. versionadded:: 0.1.0
    """
    _pool_change(pool, size, "pool size", Gauge.set, "set_db_pool_size")


def inc_db_pool_size(pool: str, amount: float = 1) -> None:
    """Grow the size of connection pool ``pool`` by ``amount``.

    .. versionadded:: 0.1.0
    """
    _pool_change(pool, amount, "pool size change", Gauge.inc, "inc_db_pool_size")


def dec_db_pool_size(pool: str, amount: float = 1) -> None:
    """Shrink the size of connection pool ``pool`` by ``amount``.

    .. versionadded:: 0.1.0
    """
    _pool_change(pool, amount, "pool size change", Gauge.dec, "dec_db_pool_size")


def record_cache_hit(cache: str, count: int = 1) -> None:
    """Count ``count`` hits of cache ``cache``.

    .. versionadded:: 0.1.0
    """
    try:
        value = _values.amount(count, "cache hits")
        if value:
            CACHES.get(cache).hits(value)
    except Exception:
        _log.internal_error("record_cache_hit")


def record_cache_miss(cache: str, count: int = 1) -> None:
    """Count ``count`` misses of cache ``cache``.

    .. versionadded:: 0.1.0
    """
    try:
        value = _values.amount(count, "cache misses")
        if value:
            CACHES.get(cache).misses(value)
    except Exception:
        _log.internal_error("record_cache_miss")
