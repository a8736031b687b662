"""Regression tests for the reliability promises: no data loss, the application first, callables unchanged.

Each test is named after the promise it proves; the numbers in the section
comments refer to the reliability issue's items.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import enum
import functools
import gc
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from helpers import exists, unique, value
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import Counter

import bizmetrics
from bizmetrics import (
    _log,
    current_tenant,
    current_workflow,
    instrument_agent,
    instrument_cache_lookup,
    instrument_connector_operation,
    instrument_db_query,
    instrument_sync_operation,
    instrument_workflow,
    instrument_workflow_step,
    metrics,
    tenant_context,
    workflow_context,
)

# Written for status classes (4xx): the exact codes of the default are in test_http_status.py.
pytestmark = pytest.mark.usefixtures("http_status_classes")

# --- 1, 2: the label-child cache never outlives a removal ------------------------


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


# --- 3, 4: non-str label values land in one series, decided by the value ---------


class Plan(str, enum.Enum):
    PRO = "pro"
    FREE = "free"


class Region(enum.Enum):
    EU = "eu"


class Tier(enum.IntEnum):
    GOLD = 1


class Loud(str):
    def __str__(self) -> str:
        return "LOUD"


@given(order=st.permutations(["enum", "plain", "subclass"]))
def test_a_str_enum_member_and_its_value_share_one_series_whatever_the_order(order):
    """A (str, Enum) member, its plain string value and a str subclass of it record in the same series."""
    t = unique()
    forms = {"enum": Plan.PRO, "plain": "pro", "subclass": Loud("pro")}
    for form in order:
        bizmetrics.record_connector_operation(t, forms[form], 1, True, "acme")
    assert (
        value("connector_operations_total", connector_type=t, operation="pro", status="success", tenant_id="acme") == 3
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(Plan.FREE, "free"), (Region.EU, "eu"), (Tier.GOLD, "1"), (Loud("quiet"), "quiet"), (7, "7")],
)
def test_enum_members_record_their_value_and_other_types_str(raw, expected):
    """Enum members record their .value as a string; any other non-str value records str() of it."""
    t = unique()
    bizmetrics.record_connector_operation(t, raw, 1, True, "acme")
    assert value("connector_operations_total", connector_type=t, operation=expected, status="success", tenant_id="acme")


@dataclasses.dataclass
class Account:
    name: str


@pytest.mark.parametrize("raw", [["a", "b"], Account("acme"), {"k": 1}])
def test_unhashable_label_values_record_under_str(raw, caplog):
    """A list, a dict or a plain dataclass as a label records under str() of it, from helpers and decorators."""
    t = unique()
    bizmetrics.record_connector_operation(t, "op", 1, True, raw)

    @instrument_connector_operation("deco", connector_type=t)
    def op(tenant_id: Any) -> str:
        return "ok"

    assert op(raw) == "ok"
    for operation in ("op", "deco"):
        assert (
            value(
                "connector_operations_total",
                connector_type=t,
                operation=operation,
                status="success",
                tenant_id=str(raw),
            )
            == 1
        )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- 5, 6: numbers ------------------------------------------------------------------


def test_an_int_too_large_for_a_float_is_dropped_and_the_rest_kept(caplog):
    """10**400 as a duration or a count is dropped with a warning; the operation is still counted."""
    t = unique()
    _log.reset()
    bizmetrics.record_connector_operation(t, "op", 10**400, True, "acme")
    bizmetrics.record_connector_sync(t, "rows", 10**400, "acme")
    bizmetrics.record_agent_invocation(t, 10**400, 10**400, True, "acme")
    assert (
        value("connector_operations_total", connector_type=t, operation="op", status="success", tenant_id="acme") == 1
    )
    assert value("connector_operation_duration_count", connector_type=t, operation="op") == 0
    assert (
        value(
            "connector_sync_operations_total",
            connector_type=t,
            resource_type="rows",
            status="success",
            tenant_id="acme",
        )
        == 1
    )
    assert value("connector_sync_records_total", connector_type=t, resource_type="rows", tenant_id="acme") == 0
    assert value("agent_invocations_total", agent_id=t, status="success", tenant_id="acme") == 1

    @instrument_sync_operation("rows", connector_type=t, operation_name="deco")
    def huge() -> int:
        return 10**400

    assert huge() == 10**400
    assert (
        value(
            "connector_operations_total",
            connector_type=t,
            operation="deco",
            status="success",
            tenant_id="default_tenant",
        )
        == 1
    )
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class Indexable:
    def __index__(self) -> int:
        return 6


NUMBER_LIKES = [np.int64(6), np.float64(6.0), np.int32(6), Decimal("6"), Fraction(6), "6", Indexable()]


@pytest.mark.parametrize("number", NUMBER_LIKES, ids=lambda n: type(n).__name__)
def test_number_likes_count_their_value_in_decorators_and_helpers_alike(number):
    """numpy numbers, Decimal, Fraction, numeric strings and __index__ objects count their value everywhere."""
    t = unique()
    sync = {"connector_type": t, "tenant_id": "acme"}

    def counted(rt: str) -> float:
        return value("connector_sync_records_total", resource_type=rt, **sync)

    bizmetrics.record_connector_sync(t, "helper", number, "acme")

    @instrument_sync_operation("bare", connector_type=t)
    def bare(tenant_id: str) -> Any:
        return number

    @instrument_sync_operation("field", connector_type=t)
    def field(tenant_id: str) -> Any:
        return {"count": number}

    @instrument_sync_operation("by_count", connector_type=t, count=lambda r: r["n"])
    def by_count(tenant_id: str) -> Any:
        return {"n": number}

    @instrument_sync_operation("by_name", connector_type=t, count="n")
    def by_name(tenant_id: str) -> Any:
        return {"n": number}

    for f in (bare, field, by_count, by_name):
        f("acme")
    for rt in ("helper", "bare", "field", "by_count", "by_name"):
        assert counted(rt) == 6, rt

    @instrument_agent(f"{t}_usage")
    def usage(tenant_id: str) -> Any:
        return {"usage": {"prompt_tokens": number, "completion_tokens": number}}

    @instrument_agent(f"{t}_total")
    def total(tenant_id: str) -> Any:
        return {"usage": {"total_tokens": number}}

    @instrument_agent(f"{t}_tokens", tokens=lambda r: r)
    def tokens(tenant_id: str) -> Any:
        return number

    bizmetrics.record_agent_invocation(f"{t}_helper", 1, number, True, "acme")
    for f in (usage, total, tokens):
        f("acme")
    assert value("agent_tokens_used_total", agent_id=f"{t}_usage", tenant_id="acme") == 12
    for suffix in ("total", "tokens", "helper"):
        assert value("agent_tokens_used_total", agent_id=f"{t}_{suffix}", tenant_id="acme") == 6, suffix

    bizmetrics.record_cache_hit(f"{t}_cache", number)
    assert value("cache_hits_total", cache=f"{t}_cache") == 6


# --- 7, 8: the application comes first ------------------------------------------------


def test_decorating_survives_a_failing_labels_and_the_function_still_runs(monkeypatch, caplog):
    """With labels() broken on every catalogue metric, decorating works and decorated calls return."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("registry is broken")

    for metric in metrics.CATALOGUE:
        monkeypatch.setattr(metric, "labels", broken)
    from bizmetrics import _cache

    _cache.invalidate_all()
    t = unique()

    @instrument_db_query(f"q_{t}")
    def query() -> int:
        return 1

    @instrument_cache_lookup(f"c_{t}")
    async def lookup() -> int:
        return 2

    @instrument_connector_operation(f"op_{t}")
    def op() -> int:
        return 3

    assert query() == 1
    assert asyncio.run(lookup()) == 2
    assert op() == 3
    bizmetrics.record_db_query(f"hq_{t}", 1)
    assert any("registry is broken" in r.getMessage() or r.exc_info for r in caplog.records)


@pytest.mark.slow
def test_a_missing_multiprocess_directory_never_stops_an_import_or_a_call(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR pointing nowhere: the module imports, decorates, and its functions return."""
    script = textwrap.dedent(
        """
        import asyncio
        from bizmetrics import instrument_cache_lookup, instrument_db_query, instrument_workflow

        @instrument_db_query("q")
        def query():
            return 1

        @instrument_cache_lookup("c")
        def lookup():
            return 2

        @instrument_workflow("wf")
        async def flow():
            return 3

        print(query(), lookup(), asyncio.run(flow()))
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "2", "3"]
    assert "bizmetrics" in proc.stderr


class _BrokenSink(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise OSError("log sink is down")


def test_a_raising_log_handler_never_reaches_the_application(monkeypatch):
    """A logging handler that raises: decorators and helpers with bad input and broken recording still return."""
    logger = logging.getLogger("bizmetrics")
    handler = _BrokenSink()
    logger.addHandler(handler)
    try:
        _log.reset()
        t = unique()
        bizmetrics.record_connector_operation(None, "\n", float("nan"), True, t)
        bizmetrics.record_api_request("BREW", "/x", 999, -1, t)

        @instrument_connector_operation("op")
        def op(tenant_id: Any) -> str:
            return "ok"

        assert op(None) == "ok"
        assert op(["unhashable"]) == "ok"

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("broken")

        monkeypatch.setattr(metrics.CONNECTOR_OPERATIONS, "labels", broken)
        from bizmetrics import _cache

        _cache.invalidate_all()
        assert op(unique()) == "ok"
        bizmetrics.record_connector_operation("ct", "op", 1, True, unique())
    finally:
        logger.removeHandler(handler)


# --- 9: a decorator used bare where it needs an argument -------------------------------


def test_bare_sync_operation_decorator_is_refused_with_the_right_use():
    """@instrument_sync_operation without resource_type raises TypeError showing the right use."""
    with pytest.raises(TypeError, match=r"instrument_sync_operation\(['\"]"):

        class Connector:
            @instrument_sync_operation
            def fetch(self) -> list[int]:
                return [1]

    with pytest.raises(TypeError, match="resource_type"):
        instrument_sync_operation(classmethod(lambda cls: None))  # type: ignore[arg-type]


# --- 10, 11, 12, 13: callables behave as undecorated --------------------------------------


def test_an_abandoned_async_generator_awaiting_in_finally_is_closed_once_without_loop_errors():
    """asyncio.run finalises an abandoned stream: no loop error, its finally runs, recorded once as a success."""
    t = unique()
    closed = []

    @instrument_agent(t)
    async def stream(tenant_id: str):
        try:
            for i in range(10):
                yield i
        finally:
            await asyncio.sleep(0)
            closed.append(True)

    errors: list[dict[str, Any]] = []
    abandoned = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        agen = stream("acme")
        assert await agen.__anext__() == 0
        assert await agen.__anext__() == 1
        # Abandoned, still referenced: asyncio.run's shutdown_asyncgens closes it.
        abandoned.append(agen)

    asyncio.run(main())
    assert errors == []
    assert closed == [True]
    assert value("agent_invocations_total", agent_id=t, status="success", tenant_id="acme") == 1
    assert value("agent_invocations_total", agent_id=t, status="error", tenant_id="acme") == 0


def test_a_coroutine_cancelled_before_its_first_step_warns_nothing_and_records_cancelled():
    """A task cancelled before it ever ran: no 'never awaited' warning, and the call counts as cancelled."""
    t = unique()

    @instrument_workflow(t)
    async def flow() -> int:
        return 1

    async def main() -> None:
        task = asyncio.ensure_future(flow())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    assert value("workflow_executions_total", workflow_id=t, status="cancelled", tenant_id="default_tenant") == 1


def test_a_decorated_coroutine_called_with_bad_arguments_raises_at_the_call():
    """Wrong arguments raise TypeError when calling, not when awaiting, as for an undecorated coroutine."""

    @instrument_workflow(unique())
    async def flow(a: int) -> int:
        return a

    with pytest.raises(TypeError):
        flow(1, 2, 3)  # type: ignore[call-arg]
    gc.collect()


def test_a_never_awaited_decorated_coroutine_still_warns_with_the_users_name():
    """Calling and dropping a decorated coroutine function warns like the undecorated one, naming it."""

    @instrument_workflow(unique())
    async def forgotten_flow() -> int:
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forgotten_flow()
        gc.collect()
    messages = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert len(messages) == 1 and "forgotten_flow" in messages[0], messages


@pytest.mark.parametrize("kind", ["coroutine", "generator", "async generator"])
def test_the_object_a_decorated_function_returns_carries_its_name(kind):
    """Coroutine and generator objects of decorated functions have the function's __name__ and __qualname__."""

    if kind == "coroutine":

        async def fetch_orders() -> int:
            return 1
    elif kind == "generator":

        def fetch_orders():  # type: ignore[misc]
            yield 1
    else:

        async def fetch_orders():  # type: ignore[misc]
            yield 1

    plain = fetch_orders()
    work = instrument_connector_operation(unique())(fetch_orders)()
    assert (work.__name__, work.__qualname__) == (plain.__name__, plain.__qualname__)
    assert "fetch_orders" in repr(work)
    for obj in (plain, work):
        if kind == "coroutine":
            obj.close()
        elif kind == "generator":
            obj.close()
        else:
            asyncio.run(obj.aclose())


async def _fail_later(delay: float, fail: bool) -> str:
    await asyncio.sleep(delay)
    if fail:
        raise ConnectionError("later")
    return "done"


class AsyncCallable:
    async def __call__(self, delay: float, fail: bool) -> str:
        return await _fail_later(delay, fail)


def _wraps_sync(delay: float, fail: bool) -> Any:
    return _fail_later(delay, fail)


AWAITABLE_RETURNING = {
    "async __call__": AsyncCallable(),
    "partial": functools.partial(_fail_later),
    "wraps": functools.wraps(_fail_later)(_wraps_sync),
}


@pytest.mark.parametrize("name", list(AWAITABLE_RETURNING))
def test_awaitable_returning_callables_are_timed_over_the_awaited_work(name):
    """Callables that return coroutines without being async def are timed when awaited, and fail as errors."""
    op = unique()
    decorated = instrument_connector_operation(op, connector_type="aw")(AWAITABLE_RETURNING[name])
    assert asyncio.run(decorated(0.05, False)) == "done"
    with pytest.raises(ConnectionError):
        asyncio.run(decorated(0, True))
    labels = {"connector_type": "aw", "operation": op, "tenant_id": "default_tenant"}
    assert value("connector_operations_total", status="success", **labels) == 1
    assert value("connector_operations_total", status="error", **labels) == 1
    assert value("connector_errors_total", error_type="ConnectionError", **labels) == 1
    # The 50 ms sleep happens when awaited: a sync timing would see about 2 us.
    assert value("connector_operation_duration_sum", connector_type="aw", operation=op) >= 45


def test_a_wraps_sync_wrapper_returning_a_value_stays_sync():
    """A functools.wraps wrapper of an async function that returns a plain value is still a sync call."""

    @functools.wraps(_fail_later)
    def run_now(delay: float, fail: bool) -> str:
        return asyncio.run(_fail_later(delay, fail))

    op = unique()
    assert instrument_connector_operation(op, connector_type="aw")(run_now)(0, False) == "done"
    labels = {"connector_type": "aw", "operation": op, "tenant_id": "default_tenant"}
    assert value("connector_operations_total", status="success", **labels) == 1


@instrument_connector_operation("module_level")
def module_level_op() -> int:
    return 1


def test_copies_of_decorated_functions_are_the_same_object():
    """copy.copy and copy.deepcopy of a decorated function, or of a dict holding one, keep the same function."""
    holder = {"f": module_level_op, "items": [1, 2]}
    assert copy.copy(module_level_op) is module_level_op
    assert copy.deepcopy(module_level_op) is module_level_op
    deep = copy.deepcopy(holder)
    assert deep["f"] is module_level_op and deep["items"] == [1, 2] and deep["items"] is not holder["items"]

    class Job:
        def __init__(self) -> None:
            self.step = module_level_op

        @instrument_connector_operation("method")
        def run(self) -> int:
            return 2

    job = copy.deepcopy(Job())
    assert job.step is module_level_op and job.run() == 2


def test_pickling_a_decorated_local_function_fails_as_for_an_undecorated_one():
    """pickle.dumps of a decorated nested function raises what pickle raises for the plain function."""

    def local() -> None:
        pass

    with pytest.raises(Exception) as plain:
        pickle.dumps(local)
    with pytest.raises(type(plain.value)):
        pickle.dumps(instrument_connector_operation("local")(local))
    assert pickle.loads(pickle.dumps(module_level_op)) is module_level_op


# --- 15: workflow generators finalised early keep their workflow ---------------------------


def test_a_workflow_generator_closed_early_runs_its_finally_in_its_workflow():
    """Steps recorded in the finally of a closed or collected workflow generator land on that workflow."""
    wf = unique()
    seen = []

    @instrument_workflow(wf)
    def pipeline():
        try:
            yield 1
            yield 2
        finally:
            seen.append(current_workflow())
            bizmetrics.record_workflow_step(None, "cleanup", 1)

    gen = pipeline()
    next(gen)
    gen.close()
    gen = pipeline()
    next(gen)
    del gen
    gc.collect()
    assert seen == [wf, wf]
    assert value("workflow_step_duration_count", workflow_id=wf, step="cleanup") == 2


def test_an_async_workflow_generator_closed_early_runs_its_finally_in_its_workflow():
    """The same for an async workflow generator closed early with aclose()."""
    wf = unique()
    seen = []

    @instrument_workflow(wf)
    async def pipeline():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            seen.append(current_workflow())

    async def main() -> None:
        agen = pipeline()
        await agen.__anext__()
        await agen.aclose()

    asyncio.run(main())
    assert seen == [wf]


# --- 16, 17, 18: labels -------------------------------------------------------------------


def test_a_tenant_from_a_parameter_default_or_a_partial_is_the_calls_tenant():
    """def f(tenant_id="acme") and functools.partial(f, tenant_id=...) give the call's tenant."""
    t = unique()

    def sync(tenant_id: str = f"{t}_default") -> None:
        pass

    def positional(tenant_id: str, page: int) -> None:
        pass

    instrument_connector_operation("default", connector_type=t)(sync)()
    instrument_connector_operation("kw", connector_type=t)(functools.partial(sync, tenant_id=f"{t}_kw"))()
    instrument_connector_operation("pos", connector_type=t)(functools.partial(positional, f"{t}_pos"))(1)
    instrument_workflow(f"{t}_wf")(sync)()
    for op, tenant in (("default", "default"), ("kw", "kw"), ("pos", "pos")):
        assert (
            value(
                "connector_operations_total",
                connector_type=t,
                operation=op,
                status="success",
                tenant_id=f"{t}_{tenant}",
            )
            == 1
        ), op
    assert value("workflow_executions_total", workflow_id=f"{t}_wf", status="success", tenant_id=f"{t}_default") == 1


def test_a_mapping_config_gives_the_connector_type():
    """self.config may be a mapping: self.config["id"] is the connector type."""
    t = unique()

    class Connector:
        def __init__(self) -> None:
            self.config = {"id": t}
            self.tenant_id = "acme"

        @instrument_connector_operation
        def fetch(self) -> int:
            return 1

        @instrument_sync_operation("rows")
        def rows(self) -> list[int]:
            return [1, 2, 3]

    Connector().fetch()
    Connector().rows()
    assert (
        value("connector_operations_total", connector_type=t, operation="fetch", status="success", tenant_id="acme")
        == 1
    )
    assert value("connector_sync_records_total", connector_type=t, resource_type="rows", tenant_id="acme") == 3


def test_error_types_from_exception_classes_are_cleaned():
    """An exception class name with control characters or 300 characters is cleaned like any label."""
    t = unique()
    weird = type("Bad\nName", (Exception,), {})
    long = type("E" * 300, (Exception,), {})

    @instrument_connector_operation("op", connector_type=t)
    def op(exc: type[Exception]) -> None:
        raise exc("boom")

    for exc in (weird, long):
        with pytest.raises(exc):
            op(exc)
    labels = {"connector_type": t, "operation": "op", "tenant_id": "default_tenant"}
    assert value("connector_errors_total", error_type="Bad_Name", **labels) == 1
    assert value("connector_errors_total", error_type="E" * 128, **labels) == 1


@pytest.mark.parametrize(
    ("method", "expected"),
    [(b"GET", "GET"), (b"post", "POST"), (b"PATCH", "PATCH"), (b"BREW", "OTHER"), ("brew", "OTHER"), (None, "OTHER")],
)
def test_http_methods_given_as_bytes_are_decoded(method, expected):
    """bytes methods are decoded and upper-cased; standard methods are kept, anything else is OTHER."""
    endpoint = "/" + unique()
    bizmetrics.record_api_request(method, endpoint, 200, 1, "acme")
    assert value("api_requests_total", method=expected, endpoint=endpoint, status="2xx", tenant_id="acme") == 1


# --- 19: the context managers as decorators -----------------------------------------------------


def test_tenant_and_workflow_context_decorate_sync_functions():
    """@tenant_context(...) and @workflow_context(...) set the context while a sync function runs."""

    @tenant_context("acme")
    @workflow_context("wf")
    def handler() -> tuple[object, object]:
        return current_tenant(), current_workflow()

    assert handler() == ("acme", "wf")
    assert (current_tenant(), current_workflow()) == (None, None)


def test_tenant_and_workflow_context_decorate_coroutines_while_they_run():
    """On an async function, the context is set while the coroutine runs, across awaits."""
    t = unique()

    @tenant_context(t)
    @workflow_context("wf")
    async def handler() -> tuple[object, object]:
        await asyncio.sleep(0)
        bizmetrics.record_connector_operation("ctx", "op", 1, True)
        return current_tenant(), current_workflow()

    async def main() -> tuple[object, object]:
        work = handler()
        assert current_tenant() is None
        return await work

    assert asyncio.run(main()) == (t, "wf")
    assert value("connector_operations_total", connector_type="ctx", operation="op", status="success", tenant_id=t) == 1
    with tenant_context("again"):
        assert current_tenant() == "again"
    assert current_tenant() is None


def test_context_decorators_refuse_generators_at_decoration():
    """Generator functions are refused with TypeError when decorated with a context."""
    with pytest.raises(TypeError, match="generator"):

        @tenant_context("acme")
        def rows():
            yield 1

    with pytest.raises(TypeError, match="generator"):

        @workflow_context("wf")
        async def stream():
            yield 1


def test_executors_drop_the_context_and_copy_context_carries_it():
    """As README says: ThreadPoolExecutor.submit loses the tenant; contextvars.copy_context().run keeps it."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as executor, tenant_context("acme"):
        assert executor.submit(current_tenant).result() is None
        assert executor.submit(contextvars.copy_context().run, current_tenant).result() == "acme"

    async def main() -> object:
        with tenant_context("acme"):
            return await asyncio.to_thread(current_tenant)

    assert asyncio.run(main()) == "acme"


def test_one_context_object_shared_by_concurrent_tasks_and_threads():
    """A module-level tenant_context(...) entered by several tasks (and threads) at once never raises."""
    shared = tenant_context("acme")

    async def handler(delay: float) -> object:
        with shared:
            await asyncio.sleep(delay)
            inner = current_tenant()
        return inner, current_tenant()

    async def main() -> list[object]:
        return await asyncio.gather(handler(0.02), handler(0.01), handler(0))

    assert asyncio.run(main()) == [("acme", None)] * 3

    seen: list[object] = []

    def work() -> None:
        for _ in range(200):
            with shared:
                seen.append(current_tenant())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == ["acme"] * 800
    with shared, shared:
        assert current_tenant() == "acme"
    assert current_tenant() is None


def test_a_wraps_wrapper_returning_a_future_returns_it_unchanged_and_records_its_outcome():
    """A functools.wraps sync wrapper that returns a Task gets the Task back; the outcome is recorded when done."""
    op = unique()

    @functools.wraps(_fail_later)
    def schedule(delay: float, fail: bool) -> Any:
        return asyncio.ensure_future(_fail_later(delay, fail))

    decorated = instrument_connector_operation(op, connector_type="fut")(schedule)

    async def main() -> None:
        ok = decorated(0, False)
        assert isinstance(ok, asyncio.Task) and await ok == "done"
        bad = decorated(0, True)
        assert isinstance(bad, asyncio.Task)
        with pytest.raises(ConnectionError):
            await bad
        await asyncio.sleep(0)  # done callbacks run soon after

    asyncio.run(main())
    labels = {"connector_type": "fut", "operation": op, "tenant_id": "default_tenant"}
    assert value("connector_operations_total", status="success", **labels) == 1
    assert value("connector_errors_total", error_type="ConnectionError", **labels) == 1


def test_an_unhashable_error_type_result_records_under_its_str():
    """error_type= returning a list: the error counter and the duration are still recorded, under str()."""
    ct = unique()

    @instrument_connector_operation("op", connector_type=ct, error_type=lambda exc: ["http", 503])
    def op() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        op()
    labels = {"connector_type": ct, "operation": "op", "tenant_id": "default_tenant"}
    assert value("connector_errors_total", error_type="['http', 503]", **labels) == 1
    assert value("connector_operation_duration_count", connector_type=ct, operation="op") == 1


def _impl_kept_undecorated() -> int:
    return 1


decorated_under_another_name = instrument_connector_operation("other")(_impl_kept_undecorated)


def test_pickling_a_decorated_function_whose_name_holds_something_else_fails():
    """If the qualified name resolves to the undecorated function, pickling fails, as pickle does for functions."""
    with pytest.raises(pickle.PicklingError, match="not the same object"):
        pickle.dumps(decorated_under_another_name)


def test_a_wraps_wrapper_runs_its_sync_part_in_the_workflow_scope():
    """instrument_workflow on a functools.wraps wrapper of a coroutine: the sync part sees the workflow too."""
    seen = []

    @functools.wraps(_fail_later)
    def run_now(delay: float, fail: bool) -> str:
        seen.append(bizmetrics.current_workflow())
        return "done"

    workflow = unique("wf")
    assert bizmetrics.instrument_workflow(workflow)(run_now)(0, False) == "done"
    assert seen == [workflow]
    assert bizmetrics.current_workflow() is None
