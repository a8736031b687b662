"""The families and their bundles: the fast path records exactly what prometheus_client's public API would.

The label-child cache never outlives a removal of series (``clear()``, ``remove()``), even while threads record.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from support.registry import exists, unique, value

import bizmetrics
from bizmetrics import (
    _families,
    instrument_agent,
    instrument_cache_lookup,
    instrument_connector_operation,
    instrument_db_query,
    instrument_sync_operation,
    instrument_workflow,
    instrument_workflow_step,
    metrics,
    tenant_context,
)

events = st.lists(
    st.tuples(
        st.sampled_from(["success", "failure"]),
        st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from([5.0, 10.0])),
        st.sampled_from(["TimeoutError", "ValueError", "http_503"]),
    ),
    max_size=30,
)


def _samples(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    )


def _metrics(registry: CollectorRegistry, counter: type, histogram: type) -> tuple[Counter, Counter, Histogram]:
    return (
        counter("calls", "", ["k", "status", "tenant_id"], registry=registry),
        counter("errors", "", ["k", "error_type", "tenant_id"], registry=registry),
        histogram("duration", "", ["k"], buckets=metrics.CONNECTOR_BUCKETS, registry=registry),
    )


@given(events)
def test_an_outcomes_bundle_records_what_the_public_api_would(recorded):
    """Successes and failures, with and without a duration, on the bucket bounds too: the same exposition."""
    assert metrics.FAST_PATH
    fast, public = CollectorRegistry(), CollectorRegistry()
    calls, errors, duration = _metrics(fast, metrics._Counter, metrics._Histogram)

    class Probe(_families._Outcomes):
        __slots__ = ()
        CALLS, ERRORS, DURATION = calls, errors, duration

    bundle = Probe("k1", "acme")
    calls2, errors2, duration2 = _metrics(public, Counter, Histogram)
    ok, err = calls2.labels("k1", "success", "acme"), calls2.labels("k1", "error", "acme")
    for outcome, ms, error_type in recorded:
        if outcome == "success":
            bundle.success(ms, 0)
            ok.inc()
        else:
            bundle.failure(ms, error_type, 0)
            err.inc()
            errors2.labels("k1", error_type, "acme").inc()
        if ms is not None:
            duration2.labels("k1").observe(ms)
    duration2.labels("k1")
    assert _samples(fast) == _samples(public)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=30))
def test_a_timed_bundle_records_what_the_public_api_would(durations):
    fast, public = CollectorRegistry(), CollectorRegistry()
    bundle = _families._Timed(metrics._Histogram("h", "", ["k"], buckets=metrics.DB_BUCKETS, registry=fast).labels("q"))
    child = Histogram("h", "", ["k"], buckets=metrics.DB_BUCKETS, registry=public).labels("q")
    for ms in durations + list(metrics.DB_BUCKETS[:3]):
        bundle.success(ms, 0)
        child.observe(ms)
    assert _samples(fast) == _samples(public)


def _remove_all(metric: Any, how: str) -> None:
    if how == "clear":
        metric.clear()
    else:
        # remove() and remove_by_labels() of every exposed series.
        for labels in [dict(s.labels) for fam in metric.collect() for s in fam.samples if s.labels]:
            labels.pop("le", None)
            key = tuple(labels[n] for n in metric._labelnames)
            if how == "remove":
                try:
                    metric.remove(*key)
                except KeyError:
                    pass
            else:
                metric.remove_by_labels(dict(zip(metric._labelnames, key, strict=True)))


def _every_family(t: str) -> list[tuple[Any, str, dict[str, str]]]:
    """One decorated call and one helper call per family, and a series each must expose."""

    @instrument_db_query(f"q_{t}")
    def query() -> int:
        return 1

    @instrument_cache_lookup(f"c_{t}")
    def lookup() -> int:
        return 1

    @instrument_connector_operation(f"op_{t}", connector_type="ct")
    def op() -> int:
        return 1

    @instrument_sync_operation("rt", operation_name=f"sync_{t}", connector_type="ct")
    def sync() -> list[int]:
        return [1, 2]

    @instrument_workflow(f"wf_{t}")
    def workflow() -> int:
        return 1

    @instrument_workflow_step(f"step_{t}", workflow_id=f"wf_{t}")
    def step() -> int:
        return 1

    @instrument_agent(f"agent_{t}")
    def agent() -> int:
        return 3

    return [
        (query, "db_query_duration_count", {"operation": f"q_{t}"}),
        (lookup, "cache_hits_total", {"cache": f"c_{t}"}),
        (
            op,
            "connector_operations_total",
            {"connector_type": "ct", "operation": f"op_{t}", "status": "success", "tenant_id": t},
        ),
        (sync, "connector_sync_records_total", {"connector_type": "ct", "resource_type": "rt", "tenant_id": t}),
        (workflow, "workflow_executions_total", {"workflow_id": f"wf_{t}", "status": "success", "tenant_id": t}),
        (step, "workflow_step_duration_count", {"workflow_id": f"wf_{t}", "step": f"step_{t}"}),
        (agent, "agent_tokens_used_total", {"agent_id": f"agent_{t}", "tenant_id": t}),
        (
            lambda: bizmetrics.record_db_query(f"hq_{t}", 1),
            "db_query_duration_count",
            {"operation": f"hq_{t}"},
        ),
        (lambda: bizmetrics.record_cache_miss(f"hc_{t}"), "cache_misses_total", {"cache": f"hc_{t}"}),
        (
            lambda: bizmetrics.record_api_request("GET", f"/h/{t}", 200, 1, t),
            "api_requests_total",
            {"method": "GET", "endpoint": f"/h/{t}", "status": "2xx", "tenant_id": t},
        ),
        (lambda: bizmetrics.set_db_pool_size(f"p_{t}", 4), "db_connection_pool_size", {"pool": f"p_{t}"}),
    ]


# remove_by_labels() came with prometheus-client 0.21; the oldest supported version has the other two.
@pytest.mark.parametrize("how", [h for h in ("clear", "remove", "remove_by_labels") if hasattr(Counter, h)])
@pytest.mark.usefixtures("http_status_classes")
def test_every_decorator_and_helper_records_into_an_exposed_series_after_a_removal(how):
    """After clear(), remove() or remove_by_labels() on every catalogue metric, the next call is exposed."""
    t = unique()
    calls = _every_family(t)
    with tenant_context(t):
        for call, _, _ in calls:
            call()
        for metric in metrics.CATALOGUE:
            _remove_all(metric, how)
        for _, name, labels in calls:
            assert not exists(name, **labels), name
        for call, _, _ in calls:
            call()
    for _, name, labels in calls:
        assert exists(name, **labels), (how, name, labels)
        assert value(name, **labels) > 0, (how, name, labels)


@pytest.mark.usefixtures("http_status_classes")
def test_clearing_while_threads_record_never_orphans_a_series(monkeypatch):
    """Recording threads and a clearing thread: once clearing stops, one call per label set is exposed."""
    run_id = unique()
    for metric in (metrics.CONNECTOR_OPERATIONS, metrics.CONNECTOR_SYNC_RECORDS):
        # labels() that lets other threads run once the child exists, as it
        # does in multiprocess mode (it opens a file): widens the race window.
        def slow_labels(*args: Any, _labels: Any = metric.labels, **kwargs: Any) -> Any:
            child = _labels(*args, **kwargs)
            time.sleep(0)
            return child

        monkeypatch.setattr(metric, "labels", slow_labels)
    tenants = [f"{run_id}_{i}" for i in range(40)]

    @instrument_connector_operation("race", connector_type=run_id)
    def op(tenant_id: str) -> None:
        pass

    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            for tenant in tenants:
                op(tenant)
                bizmetrics.record_connector_sync(run_id, "rows", 1, tenant)

    def clear() -> None:
        while not stop.is_set():
            metrics.CONNECTOR_OPERATIONS.clear()
            metrics.CONNECTOR_SYNC_RECORDS.clear()

    threads = [threading.Thread(target=record) for _ in range(3)] + [threading.Thread(target=clear)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so the race has every chance
    try:
        for thread in threads:
            thread.start()
        stop.wait(1.5)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    ops = {"connector_type": run_id, "operation": "race", "status": "success"}
    syncs = {"connector_type": run_id, "resource_type": "rows"}

    def counts(t: str) -> tuple[float, float]:
        return value("connector_operations_total", **ops, tenant_id=t), value(
            "connector_sync_records_total", **syncs, tenant_id=t
        )

    before = {t: counts(t) for t in tenants}
    for tenant in tenants:
        op(tenant)
        bizmetrics.record_connector_sync(run_id, "rows", 1, tenant)
    lost = [t for t in tenants if counts(t) != (before[t][0] + 1, before[t][1] + 1)]
    assert lost == []
