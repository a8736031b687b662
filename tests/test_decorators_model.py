"""Counts are exact: against a model, under threads and tasks, with recording broken, across processes."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import Counter, Histogram
from prometheus_client.values import MutexValue
from support import samples
from support.registry import unique, value
from support.samples import KINDS, Config, make, run
from support.strategies import kinds, outcomes

import bizmetrics._families
import bizmetrics._trace
from bizmetrics import _log, instrument_agent, instrument_connector_operation, instrument_sync_operation

calls = st.lists(
    st.tuples(kinds, st.lists(st.integers(), max_size=5), outcomes),
    min_size=1,
    max_size=12,
)


@given(plan=calls)
def test_counters_match_a_model(plan):
    """A random mix of kinds, results and exceptions moves every counter exactly as a simple model says."""
    t = unique()
    model = {"success": 0, "error": 0, "records": 0, "errors": {}}
    for kind, items, outcome in plan:
        exc = outcome("boom") if outcome else None
        decorated = instrument_sync_operation("model", connector_type="model")(
            make(kind, result=items, items=items, exc=exc)
        )
        if exc is None:
            assert run(decorated, tenant_id=t) == items
            model["success"] += 1
        else:
            with pytest.raises(outcome):
                run(decorated, tenant_id=t)
            model["error"] += 1
            model["errors"][outcome.__name__] = model["errors"].get(outcome.__name__, 0) + 1
        # A returned list counts on success; yielded items were delivered, so they count whatever the outcome.
        if "generator" in kind or exc is None:
            model["records"] += len(items)

    ops = {"connector_type": "model", "operation": "work", "tenant_id": t}
    sync = {"connector_type": "model", "resource_type": "model", "tenant_id": t}
    assert value("connector_operations_total", **ops, status="success") == model["success"]
    assert value("connector_operations_total", **ops, status="error") == model["error"]
    assert value("connector_sync_operations_total", **sync, status="success") == model["success"]
    assert value("connector_sync_operations_total", **sync, status="error") == model["error"]
    assert value("connector_sync_records_total", **sync) == model["records"]
    for name, n in model["errors"].items():
        assert value("connector_errors_total", **ops, error_type=name) == n


@given(plan=calls)
def test_histogram_deltas_match_the_model(plan, clock):
    """Each call adds one observation and, with the 1 ms clock, a known number of milliseconds."""
    op = unique("op")
    expected_ms = 0
    for kind, items, outcome in plan:
        decorated = instrument_connector_operation(op, connector_type="hmodel")(
            make(kind, items=items, exc=outcome("x") if outcome else None)
        )
        try:
            run(decorated)
        except Exception:
            pass
        expected_ms += len(items) + 1 if "generator" in kind else 1
    labels = {"connector_type": "hmodel", "operation": op}
    assert value("connector_operation_duration_count", **labels) == len(plan)
    assert value("connector_operation_duration_sum", **labels) == expected_ms
    assert value("connector_operation_duration_bucket", **labels, le="10.0") == sum(
        1 for kind, items, _ in plan if (len(items) + 1 if "generator" in kind else 1) <= 10
    )


@pytest.mark.slow
def test_eight_threads_times_5000_calls_are_exact():
    """8 threads x 5,000 calls on one decorated method: exactly 40,000 of everything."""
    t = unique()

    class Conn:
        config = Config("threaded")
        tenant_id = t

        @instrument_sync_operation("rows")
        def fetch(self):
            return [1, 2]

    conn = Conn()
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for _ in range(5000):
            conn.fetch()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ops = {"connector_type": "threaded", "operation": "fetch", "tenant_id": t}
    assert value("connector_operations_total", **ops, status="success") == 40_000
    assert value("connector_sync_records_total", connector_type="threaded", resource_type="rows", tenant_id=t) == 80_000
    assert value("connector_operation_duration_count", connector_type="threaded", operation="fetch") == 40_000


@pytest.mark.slow
def test_2000_concurrent_tasks_are_exact():
    """2,000 asyncio tasks awaiting one decorated coroutine at once: exactly 2,000, half of them errors."""
    t = unique()

    @instrument_agent("swarm")
    async def ask(i, tenant_id):
        await asyncio.sleep(0.01)
        if i % 2:
            raise TimeoutError
        return 3

    async def main():
        return await asyncio.gather(*(ask(i, tenant_id=t) for i in range(2000)), return_exceptions=True)

    results = asyncio.run(main())
    assert sum(r == 3 for r in results) == 1000
    labels = {"agent_id": "swarm", "tenant_id": t}
    assert value("agent_invocations_total", **labels, status="success") == 1000
    assert value("agent_invocations_total", **labels, status="error") == 1000
    assert value("agent_errors_total", **labels, error_type="TimeoutError") == 1000
    assert value("agent_tokens_used_total", **labels) == 3000


def _explode(*args, **kwargs):
    raise RuntimeError("metrics backend on fire")


class _ExplodingLock:
    """The fast path's shared lock, broken."""

    __enter__ = _explode
    __exit__ = _explode


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "broken",
    [
        (MutexValue, "inc", _explode),
        (Counter, "labels", _explode),
        (Histogram, "labels", _explode),
        (bizmetrics._families, "LOCK", _ExplodingLock()),
    ],
    ids=["MutexValue.inc", "Counter.labels", "Histogram.labels", "fast-path lock"],
)
def test_broken_recording_never_reaches_the_caller(kind, broken, monkeypatch, caplog):
    """With prometheus_client raising inside, results and exceptions are exactly the undecorated ones."""
    monkeypatch.setattr(*broken)
    if broken[1] == "inc":  # only the public path (exemplars, fixed durations) calls it
        monkeypatch.setattr(bizmetrics._trace, "ACTIVE", True)
    _log.reset()
    ok = instrument_sync_operation(unique("rt"))(make(kind, result=[1], items=(1, 2)))
    assert run(ok, tenant_id=unique()) == run(make(kind, result=[1], items=(1, 2)))
    err = ValueError("app error")
    failing = instrument_sync_operation(unique("rt"))(make(kind, exc=err, items=(1,)))
    with caplog.at_level(logging.ERROR, logger="bizmetrics"), pytest.raises(ValueError) as info:
        run(failing, tenant_id=unique())
    assert info.value is err
    assert any(r.name == "bizmetrics" for r in caplog.records)


class TestPickling:
    def test_module_function_round_trips(self):
        """A decorated module-level function pickles by reference."""
        assert pickle.loads(pickle.dumps(samples.pickled_function)) is samples.pickled_function

    def test_methods_round_trip(self):
        """Bound methods, classmethods and staticmethods pickle and still work (and still record)."""
        conn = samples.PickledConnector()
        fetch = pickle.loads(pickle.dumps(conn.fetch))
        assert fetch(3) == [0, 1, 2]
        assert pickle.loads(pickle.dumps(samples.PickledConnector.ping))() == "pong"
        assert pickle.loads(pickle.dumps(samples.PickledConnector.util))(1) == 2
        assert pickle.loads(pickle.dumps(samples.PickledConnector.fetch))(conn, 2) == [0, 1]

    @pytest.mark.slow
    def test_sent_to_another_process(self):
        """A decorated function and method run in a spawned process pool, and record there."""
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=ctx) as pool:
            assert list(pool.map(samples.pickled_function, [1, 2, 3])) == [2, 4, 6]
            assert pool.submit(samples.PickledConnector().fetch, 4).result() == [0, 1, 2, 3]
