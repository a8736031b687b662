"""Families of label bundles: how one record of each kind reaches the catalogue.

A *bundle* holds the value cells of one label combination of a family
(a connector operation of one connector, operation and tenant, say),
created once and cached by its family.  The decorators and helpers only see
``Family.get(*labels) -> Bundle`` and the ``Bundle`` methods.

Two ways of recording, chosen per record:

- the fast path (``_fastpath``): the cells of the whole record updated under
  the shared lock, taken once;
- with a current trace and nothing else set (``_trace.TRACED_FAST``): the
  fast path, each counted cell also given the trace as its exemplar;
- the public path: prometheus_client's ``inc()`` / ``observe()``, with the
  exemplar and the fixed test duration, when an exemplar provider or fixed
  durations are set, or the fast path is off (``_trace.ACTIVE``); an exemplar
  is still written into the cell (or the worker's store) directly.

Creating a bundle also creates its ``error`` sibling at 0, so error ratios
exist before the first failure.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from time import time as _now
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.samples import Exemplar

from . import _cache, _deferred, _extract, _log, _mpworker, _pricing, _settings, _tenants, _trace, _values
from ._fastpath import FAST_PATH, LOCK, Cell, Cells, cell
from ._fastpath import add as add_to
from ._values import DEFAULT_TENANT, UNKNOWN
from .metrics import (
    AGENT_COST,
    AGENT_ERRORS,
    AGENT_INVOCATIONS,
    AGENT_RESPONSE_DURATION,
    AGENT_RESPONSE_DURATION_BY_TENANT,
    AGENT_TIME_TO_FIRST_TOKEN,
    AGENT_TOKEN_USAGE,
    AGENT_TOKENS_USED,
    AGENT_TOOL_CALLS,
    AGENT_TOOL_DURATION,
    AGENT_TOOL_ERRORS,
    AGENT_UNPRICED_TOKENS,
    AGENT_USAGE_UNREPORTED,
    API_ERRORS,
    API_REQUEST_DURATION,
    API_REQUEST_DURATION_BY_TENANT,
    API_REQUESTS,
    CACHE_COMMAND_DURATION,
    CACHE_ERRORS,
    CACHE_HITS,
    CACHE_MISSES,
    CONNECTOR_ERRORS,
    CONNECTOR_OPERATION_DURATION,
    CONNECTOR_OPERATION_DURATION_BY_TENANT,
    CONNECTOR_OPERATIONS,
    CONNECTOR_RATE_LIMIT_REMAINING,
    CONNECTOR_RATE_LIMITED,
    CONNECTOR_SYNC_OPERATIONS,
    CONNECTOR_SYNC_RECORDS,
    DB_CONNECTION_POOL_SIZE,
    DB_POOL_CHECKOUT_TIMEOUTS,
    DB_POOL_CHECKOUT_WAIT,
    DB_POOL_CONNECTIONS_CREATED,
    DB_POOL_CONNECTIONS_INVALIDATED,
    DB_POOL_IN_USE,
    DB_QUERY_DURATION,
    WORKFLOW_EXECUTION_DURATION,
    WORKFLOW_EXECUTION_DURATION_BY_TENANT,
    WORKFLOW_EXECUTIONS,
    WORKFLOW_FAILURES,
    WORKFLOW_STEP_DURATION,
)

__all__ = [
    "AGENT_FAMILY",
    "API_FAMILY",
    "CACHE_COMMAND_FAMILY",
    "CACHE_FAMILY",
    "CONNECTOR_OPERATION_FAMILY",
    "DB_POOL_FAMILY",
    "DB_QUERY_FAMILY",
    "POOL_FAMILY",
    "RATE_LIMIT_FAMILY",
    "STEP_FAMILY",
    "SYNC_CALL_FAMILY",
    "SYNC_FAMILY",
    "TOKEN_USAGE_FAMILY",
    "TOOL_FAMILY",
    "WORKFLOW_FAMILY",
    "AgentCall",
    "Bundle",
    "Family",
    "track_tenant_latency",
]


class Bundle(Protocol):
    """What the engine records into: one label combination of a family.

    ``ms`` is ``None`` when the duration was dropped (bad input, a call that
    never ran); ``amount`` is what the family counts (records, tokens, cache
    hits: 0 when it counts nothing).
    """

    @property
    def scope(self) -> object:
        """Set in the site's context variable while the body runs (the workflow, the agent), or ``None``."""

    def success(self, ms: float | None, amount: Any) -> None: ...
    def failure(self, ms: float | None, error_type: object, amount: Any) -> None: ...
    def cancelled(self, ms: float | None, amount: Any) -> None: ...
    def first_item(self, ms: float) -> None:
        """The time to the first item of a stream (generators); most families ignore it."""


B = TypeVar("B")


class Family(Generic[B]):
    """Bundles of one family, cached by raw label values.

    ``Family(make, connector_type=UNKNOWN, ...)``: the labels ``make`` takes,
    in order, each with the value a missing or empty one gets.
    """

    __slots__ = ("_defaults", "_make", "_names", "_tenant", "cache")

    def __init__(self, make: Callable[..., B], **labels: str) -> None:
        #: Bundles by label values; resolvers read it directly before calling ``get``.
        self.cache = _cache.Cache()
        self._make = make
        self._names = tuple(labels)
        self._defaults = tuple(labels.values())
        #: Where ``tenant_id`` is among the labels: it goes through the tenant cap.
        self._tenant = self._names.index("tenant_id") if "tenant_id" in labels else None

    def get(self, *raw: Any) -> B:
        """Return the bundle for these label values (cleaning them on first use)."""
        try:
            bundle: B | None = self.cache.get(raw)
        except TypeError:  # an unhashable label value: cleaned below, as str() of it
            bundle = None
        if bundle is None:
            if _deferred.collector is not None and _deferred.collecting():
                # Making a bundle takes prometheus_client's locks, which the thread the
                # collector interrupted may hold: made when the queue drains.
                return _Later(self, raw)  # type: ignore[return-value]
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


class _Later:
    """A bundle asked for inside a garbage collection (a decorated call in a finaliser), not made yet.

    Every method called on it is queued (``_deferred``) and called on the
    real bundle, made from the same raw label values, when the queue drains.
    """

    __slots__ = ("family", "raw")
    scope = None

    def __init__(self, family: Family[Any], raw: tuple[Any, ...]) -> None:
        self.family = family
        self.raw = raw

    def __getattr__(self, name: str) -> Callable[..., None]:
        family, raw = self.family, self.raw

        def later(*args: Any) -> None:
            _deferred.defer(lambda: getattr(family.get(*raw), name)(*args))

        return later


def _keyed_cell(cells: dict[Any, Cell], metric: Counter, key: object, *labels: str) -> Cell:
    """Return the cell of ``metric``'s child for ``labels``, kept in ``cells`` under ``key``."""
    found = cells.get(key)
    if found is None:
        found = cells[key] = cell(metric.labels(*labels))
    return found


def _error_label(error_type: object) -> str:
    # Exception class names are cleaned like any label (control characters, length).
    return _values.label(error_type, "error_type")


# --- Exemplars, and the public path -------------------------------------------------
#
# An exemplar's labels were checked once, when they became the current trace
# (``_trace.valid_exemplar``): prometheus_client's ``inc(exemplar=)`` and
# ``observe(exemplar=)`` would check them again on every call (a regex per
# label name).  So the exemplar is written straight into the value cell
# that was counted, as ``set_exemplar`` would; in multiprocess mode, where
# prometheus_client drops exemplars, into the worker's shared store.

_current_trace = _trace.current
#: ``Exemplar(labels, value, timestamp)`` without the frame of its ``__new__``: half the cost.
_exemplar = tuple.__new__


def _keep(value: Any, exemplar: dict[str, str], amount: float) -> None:
    """Give the value cell ``value`` (just counted by its owner's public method) its exemplar."""
    if _trace.MULTIPROCESS:
        _mpworker.keep(value, exemplar, amount)
    else:
        value.set_exemplar(Exemplar(exemplar, amount, _now()))


def _inc(child: Any, exemplar: dict[str, str] | None, amount: float = 1) -> None:
    value = child._value
    if exemplar is None:
        child.inc(amount)
    elif getattr(value, "_lock", None) is LOCK:
        found = Exemplar(exemplar, amount, _now())
        with LOCK:
            value._value += amount
            value._exemplar = found
    else:
        child.inc(amount)
        _keep(value, exemplar, amount)


def _observe(child: Any, ms: float | None, exemplar: dict[str, str] | None) -> None:
    ms = _trace.duration(ms)
    if ms is None:
        return
    if exemplar is None:
        child.observe(ms)
        return
    bucket = child._buckets[bisect_left(child._upper_bounds, ms)]  # Histogram.observe's bucket
    if getattr(bucket, "_lock", None) is LOCK:
        found = Exemplar(exemplar, ms, _now())
        with LOCK:
            child._sum._value += ms
            bucket._value += 1
            bucket._exemplar = found
    else:
        child.observe(ms)
        _keep(bucket, exemplar, ms)


#: The last exemplar of a count of 1: ``(labels, its timestamp, the Exemplar)``, read and replaced whole.
#: The records of one request share its trace: while under 10 ms old it serves them all, since
#: building one ``Exemplar`` per count is most of what an exemplar costs.
_last_count: tuple[Any, float, Any] = (None, 0.0, None)


def _traced(calls: Any, timed: Any, ms: float | None, exemplar: dict[str, str]) -> None:
    """The fast path with the current trace: count ``calls``, observe ``ms`` in ``timed``'s cells, both exemplified.

    ``calls`` may be ``None`` (a histogram alone), ``ms`` too (a count alone).
    """
    global _last_count
    now = _now()
    counted = None
    if calls is not None:
        labels, then, counted = _last_count
        if labels is not exemplar or now - then >= 0.01:
            counted = _exemplar(Exemplar, (exemplar, 1, now))
            _last_count = (exemplar, now, counted)
        if ms is None:
            with LOCK:
                calls._value += 1
                calls._exemplar = counted
            return
    bucket = timed.buckets[bisect_left(timed.bounds, ms)]
    observed = _exemplar(Exemplar, (exemplar, ms, now))
    with LOCK:
        if counted is not None:
            calls._value += 1
            calls._exemplar = counted
        timed.sum._value += ms
        bucket._value += 1
        bucket._exemplar = observed


# --- Bundles --------------------------------------------------------------------------
#
# Every recording method starts with ``if _trace.ACTIVE or _current_trace()
# is not None``: one module attribute and one context-variable read decide
# the path.  On the fast path, the bucket index is found before the lock is
# taken, so nothing inside the lock makes a call.


class _Outcomes:
    """A family that counts calls by status, observes their duration and counts errors by type.

    Its counters are labelled ``(*key, status, tenant_id)`` and
    ``(*key, error_type, tenant_id)``, its histogram ``key``; subclasses name
    the three metrics.
    """

    __slots__ = ("bounds", "buckets", "children", "err", "errors", "key", "ok", "sum", "tenant")
    scope: object = None
    CALLS: Counter
    ERRORS: Counter
    DURATION: Histogram

    def __init__(self, *labels: str) -> None:
        *key, tenant = labels
        self.key, self.tenant = tuple(key), tenant
        #: The success and error counters and the histogram, for the public path.
        self.children = (
            self.CALLS.labels(*key, "success", tenant),
            self.CALLS.labels(*key, "error", tenant),
            self.DURATION.labels(*key),
        )
        self.errors: dict[object, Cell] = {}
        if FAST_PATH:
            self.ok = cell(self.children[0])
            self.err = cell(self.children[1])
            cells = Cells(self.children[2])
            self.sum, self.buckets, self.bounds = cells.sum, cells.buckets, cells.bounds

    def success(self, ms: float | None, amount: Any) -> None:
        trace = _current_trace()
        if _trace.ACTIVE or trace is not None:
            if trace is not None and _trace.TRACED_FAST:
                _traced(self.ok, self, ms, trace)
                return
            exemplar = _trace.exemplar()
            _inc(self.children[0], exemplar)
            _observe(self.children[2], ms, exemplar)
            return
        if ms is None:
            add_to(self.ok, 1)
            return
        index = bisect_left(self.bounds, ms)
        with LOCK:
            self.ok._value += 1
            self.sum._value += ms
            self.buckets[index]._value += 1

    def _error_cell(self, error_type: object) -> Cell:
        key = error_type
        try:
            found = self.errors.get(key)
        except TypeError:  # an unhashable error_type= result: keyed by its clean label
            key = _error_label(error_type)
            found = self.errors.get(key)
        if found is None:
            found = _keyed_cell(self.errors, self.ERRORS, key, *self.key, _error_label(error_type), self.tenant)
        return found

    def failure(self, ms: float | None, error_type: object, amount: Any) -> None:
        trace = _current_trace()
        if _trace.ACTIVE or trace is not None:
            if trace is not None and _trace.TRACED_FAST:
                add_to(self._error_cell(error_type), 1)
                _traced(self.err, self, ms, trace)
                return
            exemplar = _trace.exemplar()
            _inc(self.children[1], exemplar)
            _inc(self.ERRORS.labels(*self.key, _error_label(error_type), self.tenant), None)
            _observe(self.children[2], ms, exemplar)
            return
        errors = self.errors.get(error_type) if type(error_type) is str else None
        if errors is None:
            errors = self._error_cell(error_type)
        if ms is None:
            with LOCK:
                self.err._value += 1
                errors._value += 1
            return
        index = bisect_left(self.bounds, ms)
        with LOCK:
            self.err._value += 1
            errors._value += 1
            self.sum._value += ms
            self.buckets[index]._value += 1

    def cancelled(self, ms: float | None, amount: Any) -> None:
        exemplar = _trace.exemplar() if _trace.ACTIVE or _current_trace() is not None else None
        _inc(self.CALLS.labels(*self.key, "cancelled", self.tenant), exemplar)
        _observe(self.children[2], ms, exemplar)

    def first_item(self, ms: float) -> None:
        pass


class _ConnectorOperation(_Outcomes):
    __slots__ = ()
    CALLS, ERRORS, DURATION = CONNECTOR_OPERATIONS, CONNECTOR_ERRORS, CONNECTOR_OPERATION_DURATION


class _Sync:
    """The sync-operation and record counters of one connector, resource type and tenant."""

    __slots__ = ("err", "labels", "ok", "records")

    def __init__(self, connector_type: str, resource_type: str, tenant_id: str) -> None:
        self.labels = (connector_type, resource_type, tenant_id)
        ok = CONNECTOR_SYNC_OPERATIONS.labels(connector_type, resource_type, "success", tenant_id)
        err = CONNECTOR_SYNC_OPERATIONS.labels(connector_type, resource_type, "error", tenant_id)
        records = CONNECTOR_SYNC_RECORDS.labels(connector_type, resource_type, tenant_id)
        if FAST_PATH:
            self.ok, self.err, self.records = cell(ok), cell(err), cell(records)

    def count(self, status: str, amount: float) -> None:
        """Count one sync operation of ``status`` and ``amount`` records."""
        ct, rt, tenant = self.labels
        if _trace.ACTIVE or status == "cancelled":
            CONNECTOR_SYNC_OPERATIONS.labels(ct, rt, status, tenant).inc()
            if amount:
                CONNECTOR_SYNC_RECORDS.labels(ct, rt, tenant).inc(amount)
            return
        calls = self.ok if status == "success" else self.err
        with LOCK:
            calls._value += 1
            self.records._value += amount


class _SyncCall:
    """A sync operation as ``instrument_sync_operation`` records it: a connector operation plus a sync."""

    __slots__ = ("op", "sync")
    scope = None

    def __init__(self, connector_type: str, operation: str, resource_type: str, tenant_id: str) -> None:
        self.op = CONNECTOR_OPERATION_FAMILY.get(connector_type, operation, tenant_id)
        self.sync = SYNC_FAMILY.get(connector_type, resource_type, tenant_id)

    def success(self, ms: float | None, amount: Any) -> None:
        self.op.success(ms, 0)
        self.sync.count("success", amount)

    def failure(self, ms: float | None, error_type: object, amount: Any) -> None:
        self.op.failure(ms, error_type, 0)
        self.sync.count("error", amount)

    def cancelled(self, ms: float | None, amount: Any) -> None:
        self.op.cancelled(ms, 0)
        self.sync.count("cancelled", amount)

    def first_item(self, ms: float) -> None:
        pass


class _Workflow(_Outcomes):
    __slots__ = ("scope",)
    CALLS, ERRORS, DURATION = WORKFLOW_EXECUTIONS, WORKFLOW_FAILURES, WORKFLOW_EXECUTION_DURATION

    def __init__(self, workflow_id: str, tenant_id: str) -> None:
        super().__init__(workflow_id, tenant_id)
        #: Set as the current workflow while the body runs, for the steps inside it.
        self.scope = workflow_id


#: Models whose unpriced tokens were logged (once per model and process).
_UNPRICED_LOGGED: set[str] = set()


def _count(cells: dict[Any, Cell], metric: Counter, key: object, amount: float, *labels: str) -> None:
    if FAST_PATH:
        add_to(_keyed_cell(cells, metric, key, *labels), amount)
    else:
        metric.labels(*labels).inc(amount)


class _TokenUsage:
    """The token, cost and unpriced-token cells of one agent, model and tenant.

    The model's prices are looked up once per price table (``_pricing.Table``
    is replaced, never changed, so its identity says whether they are stale).
    """

    __slots__ = ("by_type", "cost", "labels", "prices", "table", "unpriced")

    def __init__(self, agent_id: str, model: str, tenant_id: str) -> None:
        self.labels = (agent_id, model, tenant_id)
        self.by_type: dict[str, Cell] = {}
        self.cost: dict[str, Cell] = {}
        self.unpriced: dict[str, Cell] = {}
        self.table: _pricing.Table | None = None
        self.prices: dict[str, float] | None = None

    def add(self, usage: _extract.Usage) -> None:
        """Count one model call's tokens by type, and its money (see docs/guides/agents.md, "Cost and budgets")."""
        agent, model, tenant = self.labels
        for kind, count in usage.tokens.items():
            _count(self.by_type, AGENT_TOKEN_USAGE, kind, count, agent, model, kind, tenant)
        table = _pricing.current()
        if usage.cost is not None:
            # The provider's own figure: counted as given, its tokens not priced again.
            if usage.cost:
                _count(self.cost, AGENT_COST, table.currency, usage.cost, agent, model, tenant, table.currency)
            return
        if self.table is not table:
            self.prices, self.table = table.lookup(model), table
        money, unpriced = _pricing.price_call(usage.tokens, self.prices)
        if money:
            _count(self.cost, AGENT_COST, table.currency, money, agent, model, tenant, table.currency)
        if usage.untyped:
            unpriced["untyped"] = usage.untyped
        if unpriced:
            self.no_price(unpriced)

    def no_price(self, unpriced: dict[str, float]) -> None:
        """Count tokens that have no price, and say so once per model."""
        agent, model, tenant = self.labels
        for kind, count in unpriced.items():
            _count(self.unpriced, AGENT_UNPRICED_TOKENS, kind, count, agent, model, kind, tenant)
        # Said once a price table is set: a service that prices nothing counts, and is not told every model.
        if model not in _UNPRICED_LOGGED and _pricing.current().prices:
            _UNPRICED_LOGGED.add(model)
            _log.warning(
                "bizmetrics: model %r has no price for its %s tokens: they are counted in "
                "agent_unpriced_tokens_total, not in agent_cost_total. Give its prices with bizmetrics.set_prices() "
                "or BIZMETRICS_PRICES (untyped tokens, a bare count, can never be priced: report usage by type)",
                model,
                ", ".join(sorted(unpriced)),
            )


class _Agent(_Outcomes):
    __slots__ = ("model", "scope", "tokens", "ttft", "ttft_cells")
    CALLS, ERRORS, DURATION = AGENT_INVOCATIONS, AGENT_ERRORS, AGENT_RESPONSE_DURATION

    def __init__(self, agent_id: str, tenant_id: str, model: str = "") -> None:
        super().__init__(agent_id, tenant_id)
        #: The model named by the decorator or the call ("": take the response's).
        self.model = model
        #: Set as the current agent while the body runs, for the tool calls inside it.
        self.scope = agent_id
        self.tokens = AGENT_TOKENS_USED.labels(agent_id, tenant_id)
        self.ttft = AGENT_TIME_TO_FIRST_TOKEN.labels(agent_id)
        self.ttft_cells = Cells(self.ttft) if FAST_PATH else None

    def used(self, amount: Any, model: str | None = None, *, reported: bool = False) -> None:
        """Count the tokens of a call: a number, or a ``Usage`` by type and by model call.

        Each model call's typed tokens go under ``model``, else the decorator's
        or the call's model, else the model the response names; for tokens
        ``report_usage`` reports (``reported``), the model the usage names comes
        before the agent's own: an LLM call inside a tool may use another.
        """
        if type(amount) is _extract.Usage:
            total = amount.total
            agent = self.key[0]
            for call in amount.calls():
                name = (model or call.model or self.model) if reported else (model or self.model or call.model)
                TOKEN_USAGE_FAMILY.get(agent, name if name else UNKNOWN, self.tenant).add(call)
        else:
            total = amount
            if total and total > 0:
                # A bare count has no token types, so no price.
                name = model or self.model
                bare = TOKEN_USAGE_FAMILY.get(self.key[0], name if name else UNKNOWN, self.tenant)
                bare.no_price({"untyped": _values.amount(total, "tokens")})
        if total:
            # Through the public API: it refuses a negative count, which a broken token reader might give.
            self.tokens.inc(total)

    def unreported(self) -> None:
        """Count a call that ended without a usage report, and say once per agent how to get one."""
        agent = self.key[0]
        AGENT_USAGE_UNREPORTED.labels(agent, self.tenant).inc()
        _log.warn(
            f"usage-unreported:{agent}",
            "bizmetrics: a call of agent %r ended without reporting its token usage, so its tokens are not counted "
            "(agent_usage_unreported_total). Return or yield the model's responses with their usage (OpenAI "
            "streams: stream_options={'include_usage': True}), give instrument_agent(tokens=...), or call "
            "bizmetrics.report_usage(usage) inside the call",
            agent,
        )

    def first_item(self, ms: float) -> None:
        """Observe the time to the first item of a stream."""
        cells = self.ttft_cells
        trace = _current_trace()
        if cells is None or _trace.ACTIVE or trace is not None:
            if cells is not None and trace is not None and _trace.TRACED_FAST:
                _traced(None, cells, ms, trace)
                return
            _observe(self.ttft, ms, _trace.exemplar())
            return
        index = bisect_left(cells.bounds, ms)
        with LOCK:
            cells.sum._value += ms
            cells.buckets[index]._value += 1

    # Tokens are counted whatever the outcome: a failed or cancelled call still cost them.
    def success(self, ms: float | None, amount: Any) -> None:
        super().success(ms, amount)
        if amount:
            self.used(amount)

    def failure(self, ms: float | None, error_type: object, amount: Any) -> None:
        super().failure(ms, error_type, amount)
        if amount:
            self.used(amount)

    def cancelled(self, ms: float | None, amount: Any) -> None:
        super().cancelled(ms, amount)
        if amount:
            self.used(amount)


def _reports(amount: Any) -> bool:
    """Whether a call's counted amount is a usage report: typed or untyped tokens, or a non-zero count."""
    if type(amount) is _extract.Usage:
        return amount.reported
    return bool(amount)


class AgentCall:
    """One call of an agent: records into the agent's bundle, and knows whether its usage was reported.

    A call that succeeds (a stream closed early included) without any usage
    report, from its result, its items or ``report_usage``, is counted in
    ``agent_usage_unreported_total``: zero tokens would be a lie.
    """

    __slots__ = ("agent", "reported")
    scope = None

    def __init__(self, agent: _Agent) -> None:
        self.agent = agent
        self.reported = False

    def report(self, usage: Any, model: str | None = None) -> None:
        """Count tokens reported by ``report_usage`` during the call."""
        self.reported = True
        self.agent.used(usage, model, reported=True)

    def success(self, ms: float | None, amount: Any) -> None:
        self.agent.success(ms, amount)
        if not self.reported and not _reports(amount):
            self.agent.unreported()

    def failure(self, ms: float | None, error_type: object, amount: Any) -> None:
        self.agent.failure(ms, error_type, amount)

    def cancelled(self, ms: float | None, amount: Any) -> None:
        self.agent.cancelled(ms, amount)

    def first_item(self, ms: float) -> None:
        self.agent.first_item(ms)


class _Tool(_Outcomes):
    __slots__ = ()
    CALLS, ERRORS, DURATION = AGENT_TOOL_CALLS, AGENT_TOOL_ERRORS, AGENT_TOOL_DURATION


class _Timed:
    """A family that is one histogram child: steps and DB queries."""

    __slots__ = ("bounds", "buckets", "child", "sum")
    scope = None

    def __init__(self, child: Any) -> None:
        self.child = child
        if FAST_PATH:
            cells = Cells(child)
            self.sum, self.buckets, self.bounds = cells.sum, cells.buckets, cells.bounds

    def success(self, ms: float | None, amount: Any) -> None:
        trace = _current_trace()
        if _trace.ACTIVE or trace is not None:
            if trace is not None and _trace.TRACED_FAST:
                if ms is not None:
                    _traced(None, self, ms, trace)
                return
            _observe(self.child, ms, _trace.exemplar())
        elif ms is not None:
            index = bisect_left(self.bounds, ms)
            with LOCK:
                self.sum._value += ms
                self.buckets[index]._value += 1

    def failure(self, ms: float | None, error_type: object, amount: Any) -> None:
        self.success(ms, amount)

    def cancelled(self, ms: float | None, amount: Any) -> None:
        self.success(ms, amount)

    def first_item(self, ms: float) -> None:
        pass


class _CacheLookups:
    """The hit and miss counters of one cache."""

    __slots__ = ("hit_child", "hits", "miss_child", "misses")
    scope = None

    def __init__(self, cache: str) -> None:
        self.hit_child = CACHE_HITS.labels(cache)
        self.miss_child = CACHE_MISSES.labels(cache)
        if FAST_PATH:
            self.hits = cell(self.hit_child)
            self.misses = cell(self.miss_child)

    def count(self, hit: bool, amount: float = 1) -> None:
        """Count ``amount`` hits (or misses)."""
        if _trace.ACTIVE:
            (self.hit_child if hit else self.miss_child).inc(amount)
        else:
            add_to(self.hits if hit else self.misses, amount)

    def success(self, ms: float | None, amount: Any) -> None:
        self.count(bool(amount))

    def failure(self, ms: float | None, error_type: object, amount: Any) -> None:
        self.count(False)

    def cancelled(self, ms: float | None, amount: Any) -> None:
        pass

    def first_item(self, ms: float) -> None:
        pass


class _Api:
    """The request, error and duration series of one method, endpoint and tenant."""

    __slots__ = ("bounds", "buckets", "child", "errors", "labels", "requests", "sum")

    def __init__(self, method: str, endpoint: str, tenant_id: str) -> None:
        self.labels = (method, endpoint, tenant_id)
        self.child = API_REQUEST_DURATION.labels(method, endpoint)
        self.requests: dict[str, Cell] = {}
        self.errors: dict[str, Cell] = {}
        # Server errors are what the SLOs and alerts divide by (status=~"5.."): the series
        # exists at 0 from the first request, as 500 (or 5xx when classes are recorded).
        server_error = "5xx" if _settings.http_status() == "class" else "500"
        if FAST_PATH:
            cells = Cells(self.child)
            self.sum, self.buckets, self.bounds = cells.sum, cells.buckets, cells.bounds
            _keyed_cell(self.requests, API_REQUESTS, server_error, method, endpoint, server_error, tenant_id)
            _keyed_cell(self.errors, API_ERRORS, server_error, method, endpoint, server_error, tenant_id)
        else:
            API_REQUESTS.labels(method, endpoint, server_error, tenant_id)
            API_ERRORS.labels(method, endpoint, server_error, tenant_id)

    def record(self, ms: float | None, status: str) -> None:
        """Record one request answered with ``status``: a code (``429``) or a class (``4xx``)."""
        method, endpoint, tenant = self.labels
        failed = status[0] in "45" and status != UNKNOWN
        trace = _current_trace()
        if _trace.ACTIVE or trace is not None:
            if trace is not None and _trace.TRACED_FAST:
                requests = _keyed_cell(self.requests, API_REQUESTS, status, method, endpoint, status, tenant)
                if failed:
                    add_to(_keyed_cell(self.errors, API_ERRORS, status, method, endpoint, status, tenant), 1)
                _traced(requests, self, ms, trace)
                return
            exemplar = _trace.exemplar()
            _inc(API_REQUESTS.labels(method, endpoint, status, tenant), exemplar)
            if failed:
                _inc(API_ERRORS.labels(method, endpoint, status, tenant), None)
            _observe(self.child, ms, exemplar)
            return
        requests = _keyed_cell(self.requests, API_REQUESTS, status, method, endpoint, status, tenant)
        errors = _keyed_cell(self.errors, API_ERRORS, status, method, endpoint, status, tenant) if failed else None
        index = None if ms is None else bisect_left(self.bounds, ms)
        with LOCK:
            requests._value += 1
            if errors is not None:
                errors._value += 1
            if index is not None:
                self.sum._value += ms  # type: ignore[operator]
                self.buckets[index]._value += 1


# --- Latency per tenant, opt-in ----------------------------------------------------------
#
# Decided once per bundle, when its family makes it: a tracked tenant's bundle is of a
# subclass that also observes the per-tenant histogram; every other bundle is the plain
# class, so untracked tenants pay nothing per call.

#: Tenants whose durations are also recorded per tenant (``track_tenant_latency``, ``BIZMETRICS_TENANT_LATENCY``).
TRACKED_TENANTS: frozenset[str] = frozenset(_values.label(t, "tenant_id") for t in _settings.tenant_latency())


def track_tenant_latency(*tenant_ids: str) -> None:
    """Also record the durations of these tenants in the ``*_duration_by_tenant`` histograms (adds to those named).

    Their bundles are made again on their next record (the label caches are
    emptied), so the choice is never made per call.
    """
    global TRACKED_TENANTS
    added = frozenset(_values.label(t, "tenant_id") for t in tenant_ids) - TRACKED_TENANTS
    if added:
        TRACKED_TENANTS = TRACKED_TENANTS | added
        _cache.invalidate_all()


def _observe_tenant(child: Any, ms: float | None) -> None:
    ms = _trace.duration(ms)
    if ms is not None:
        child.observe(ms)


class _ByTenant:
    """What a tracked tenant's bundle adds: the duration, observed again in its tenant's histogram."""

    __slots__ = ()
    by_tenant: Any

    def success(self, ms: float | None, amount: Any) -> None:
        super().success(ms, amount)  # type: ignore[misc]
        _observe_tenant(self.by_tenant, ms)

    def failure(self, ms: float | None, error_type: object, amount: Any) -> None:
        super().failure(ms, error_type, amount)  # type: ignore[misc]
        _observe_tenant(self.by_tenant, ms)

    def cancelled(self, ms: float | None, amount: Any) -> None:
        super().cancelled(ms, amount)  # type: ignore[misc]
        _observe_tenant(self.by_tenant, ms)


class _TrackedConnectorOperation(_ByTenant, _ConnectorOperation):
    __slots__ = ("by_tenant",)

    def __init__(self, *labels: str) -> None:
        super().__init__(*labels)
        self.by_tenant = CONNECTOR_OPERATION_DURATION_BY_TENANT.labels(self.tenant)


class _TrackedWorkflow(_ByTenant, _Workflow):
    __slots__ = ("by_tenant",)

    def __init__(self, workflow_id: str, tenant_id: str) -> None:
        super().__init__(workflow_id, tenant_id)
        self.by_tenant = WORKFLOW_EXECUTION_DURATION_BY_TENANT.labels(tenant_id)


class _TrackedAgent(_ByTenant, _Agent):
    __slots__ = ("by_tenant",)

    def __init__(self, agent_id: str, tenant_id: str, model: str = "") -> None:
        super().__init__(agent_id, tenant_id, model)
        self.by_tenant = AGENT_RESPONSE_DURATION_BY_TENANT.labels(tenant_id)


class _TrackedApi(_Api):
    __slots__ = ("by_tenant",)

    def __init__(self, method: str, endpoint: str, tenant_id: str) -> None:
        super().__init__(method, endpoint, tenant_id)
        self.by_tenant = API_REQUEST_DURATION_BY_TENANT.labels(tenant_id)

    def record(self, ms: float | None, status: str) -> None:
        super().record(ms, status)
        _observe_tenant(self.by_tenant, ms)


T = TypeVar("T")


def _per_tenant(plain: Callable[..., T], tracked: Callable[..., T], at: int) -> Callable[..., T]:
    """A family's ``make``: the tracked bundle for a tracked tenant (label ``at``), else the plain one."""

    def make(*labels: str) -> T:
        return (tracked if labels[at] in TRACKED_TENANTS else plain)(*labels)

    return make


CONNECTOR_OPERATION_FAMILY: Family[_ConnectorOperation] = Family(
    _per_tenant(_ConnectorOperation, _TrackedConnectorOperation, 2),
    connector_type=UNKNOWN,
    operation=UNKNOWN,
    tenant_id=DEFAULT_TENANT,
)
SYNC_FAMILY: Family[_Sync] = Family(_Sync, connector_type=UNKNOWN, resource_type=UNKNOWN, tenant_id=DEFAULT_TENANT)
SYNC_CALL_FAMILY: Family[_SyncCall] = Family(
    _SyncCall, connector_type=UNKNOWN, operation=UNKNOWN, resource_type=UNKNOWN, tenant_id=DEFAULT_TENANT
)
WORKFLOW_FAMILY: Family[_Workflow] = Family(
    _per_tenant(_Workflow, _TrackedWorkflow, 1), workflow_id=UNKNOWN, tenant_id=DEFAULT_TENANT
)
STEP_FAMILY: Family[_Timed] = Family(
    lambda wf, step: _Timed(WORKFLOW_STEP_DURATION.labels(wf, step)), workflow_id=UNKNOWN, step=UNKNOWN
)
# model "" means "none given": the response's model is used for the token usage.
AGENT_FAMILY: Family[_Agent] = Family(
    _per_tenant(_Agent, _TrackedAgent, 1), agent_id=UNKNOWN, tenant_id=DEFAULT_TENANT, model=""
)
TOKEN_USAGE_FAMILY: Family[_TokenUsage] = Family(_TokenUsage, agent_id=UNKNOWN, model=UNKNOWN, tenant_id=DEFAULT_TENANT)
TOOL_FAMILY: Family[_Tool] = Family(_Tool, agent_id=UNKNOWN, tool=UNKNOWN, tenant_id=DEFAULT_TENANT)
DB_QUERY_FAMILY: Family[_Timed] = Family(lambda op: _Timed(DB_QUERY_DURATION.labels(op)), operation=UNKNOWN)
CACHE_FAMILY: Family[_CacheLookups] = Family(_CacheLookups, cache=UNKNOWN)
API_FAMILY: Family[_Api] = Family(
    _per_tenant(_Api, _TrackedApi, 2), method=UNKNOWN, endpoint=UNKNOWN, tenant_id=DEFAULT_TENANT
)
POOL_FAMILY: Family[Gauge] = Family(DB_CONNECTION_POOL_SIZE.labels, pool=UNKNOWN)


# --- Clients: database pools, cache commands, rate limits ------------------------------
#
# Filled by bizmetrics.sqlalchemy, .redis and the outgoing-HTTP instrumentations.


class _DbPool:
    """The series of one database connection pool; pool events are rare next to queries: public API."""

    __slots__ = ("created", "in_use", "invalidated", "size", "timeouts", "wait")

    def __init__(self, pool: str) -> None:
        self.size = DB_CONNECTION_POOL_SIZE.labels(pool)
        self.in_use = DB_POOL_IN_USE.labels(pool)
        self.wait = DB_POOL_CHECKOUT_WAIT.labels(pool)
        self.timeouts = DB_POOL_CHECKOUT_TIMEOUTS.labels(pool)
        self.created = DB_POOL_CONNECTIONS_CREATED.labels(pool)
        self.invalidated = DB_POOL_CONNECTIONS_INVALIDATED.labels(pool)


class _CacheCommand:
    """The latency and errors of one command of one cache, and that cache's hits and misses."""

    __slots__ = ("bounds", "buckets", "child", "errors", "labels", "lookups", "sum")

    def __init__(self, cache: str, command: str) -> None:
        self.labels = (cache, command)
        self.child = CACHE_COMMAND_DURATION.labels(cache, command)
        self.lookups = CACHE_FAMILY.get(cache)
        self.errors: dict[str, Counter] = {}
        if FAST_PATH:
            cells = Cells(self.child)
            self.sum, self.buckets, self.bounds = cells.sum, cells.buckets, cells.bounds

    def done(self, ms: float, hits: int, misses: int) -> None:
        """Observe one command of ``ms`` that found ``hits`` and missed ``misses`` keys."""
        if not FAST_PATH or _trace.ACTIVE:
            self.child.observe(ms)
            if hits:
                self.lookups.count(True, hits)
            if misses:
                self.lookups.count(False, misses)
            return
        index = bisect_left(self.bounds, ms)
        lookups = self.lookups
        with LOCK:
            self.sum._value += ms
            self.buckets[index]._value += 1
            if hits:
                lookups.hits._value += hits
            if misses:
                lookups.misses._value += misses

    def failed(self, ms: float, error_type: str) -> None:
        """Observe one command that raised ``error_type``."""
        found = self.errors.get(error_type)
        if found is None:
            found = self.errors[error_type] = CACHE_ERRORS.labels(*self.labels, _error_label(error_type))
        found.inc()
        self.child.observe(ms)


class _RateLimit:
    """The rate-limit series of one connector type and tenant."""

    __slots__ = ("labels", "limited", "remaining")

    def __init__(self, connector_type: str, tenant_id: str) -> None:
        self.labels = (connector_type, tenant_id)
        self.limited = CONNECTOR_RATE_LIMITED.labels(connector_type, tenant_id)
        # Made on the first report: a quota at 0 before any would read as exhausted.
        self.remaining: Gauge | None = None

    def left(self, value: float) -> None:
        """Set the requests left that the provider's last response reported."""
        remaining = self.remaining
        if remaining is None:
            remaining = self.remaining = CONNECTOR_RATE_LIMIT_REMAINING.labels(*self.labels)
        remaining.set(value)


DB_POOL_FAMILY: Family[_DbPool] = Family(_DbPool, pool=UNKNOWN)
CACHE_COMMAND_FAMILY: Family[_CacheCommand] = Family(_CacheCommand, cache=UNKNOWN, command=UNKNOWN)
RATE_LIMIT_FAMILY: Family[_RateLimit] = Family(_RateLimit, connector_type=UNKNOWN, tenant_id=DEFAULT_TENANT)
