"""The benchmark cases: one callable per way of recording the same operation.

Every case is a function ``run(n) -> ns`` that makes ``n`` calls and returns
the elapsed nanoseconds.  Each case's docstring says what it measures.  All
cases of one kind record into the same two series as the spec's hand-written
pattern (``connector_operations_total`` and ``connector_operation_duration``);
the "sync operation" kind also into ``connector_sync_operations_total`` and
``connector_sync_records_total``, counting the records of the list returned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

import wrapt

from bizmetrics import instrument_connector_operation, instrument_sync_operation, tenant_context, trace_context
from bizmetrics.metrics import CONNECTOR_OPERATION_DURATION as DURATION
from bizmetrics.metrics import CONNECTOR_OPERATIONS as OPERATIONS
from bizmetrics.metrics import CONNECTOR_SYNC_OPERATIONS as SYNC_OPERATIONS
from bizmetrics.metrics import CONNECTOR_SYNC_RECORDS as SYNC_RECORDS

ITEMS = 10
#: What the "sync operation" methods return: a page of records.
RECORDS = list(range(50))
RESOURCE = "rows"
TENANT = "tenant_bench"


class Boom(Exception):
    """The error path's exception."""


@dataclass
class Case:
    name: str
    kind: str  # sync, coroutine, generator, async generator
    path: str  # success or error
    group: str  # bare, hand, prometheus_client, floor, bizmetrics
    run: Callable[[int], int]
    doc: str
    items: int = 0


class Config:
    id = "bench"


# --- The spec's hand-written pattern ("For Custom Operations"), per kind ------------


def _hand_record(connector: Any, operation: str, start: float, success: bool) -> None:
    duration_ms = (time.time() - start) * 1000
    OPERATIONS.labels(
        connector_type=connector.config.id,
        operation=operation,
        status="success" if success else "error",
        tenant_id=connector.tenant_id,
    ).inc()
    DURATION.labels(connector_type=connector.config.id, operation=operation).observe(duration_ms)


def _hand_sync_record(connector: Any, operation: str, start: float, success: bool, records: int) -> None:
    """The same, for a sync: the operation, then the sync by status and, on success, its records."""
    _hand_record(connector, operation, start, success)
    SYNC_OPERATIONS.labels(
        connector_type=connector.config.id,
        resource_type=RESOURCE,
        status="success" if success else "error",
        tenant_id=connector.tenant_id,
    ).inc()
    if success:
        SYNC_RECORDS.labels(
            connector_type=connector.config.id, resource_type=RESOURCE, tenant_id=connector.tenant_id
        ).inc(records)


class Connector:
    """A connector whose labels come from self, with every variant of one operation."""

    config = Config()
    tenant_id = TENANT

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    # bare
    def bare(self) -> int:
        if self.fail:
            raise Boom
        return 1

    async def abare(self) -> int:
        if self.fail:
            raise Boom
        return 1

    def gbare(self, n: int = ITEMS) -> Any:
        yield from range(n)
        if self.fail:
            raise Boom

    async def agbare(self, n: int = ITEMS) -> Any:
        for i in range(n):
            yield i
        if self.fail:
            raise Boom

    def sbare(self) -> list[int]:
        if self.fail:
            raise Boom
        return RECORDS

    # hand-written
    def hand(self) -> int:
        start = time.time()
        success = False
        try:
            if self.fail:
                raise Boom
            result = 1
            success = True
            return result
        finally:
            _hand_record(self, "hand", start, success)

    async def ahand(self) -> int:
        start = time.time()
        success = False
        try:
            if self.fail:
                raise Boom
            result = 1
            success = True
            return result
        finally:
            _hand_record(self, "ahand", start, success)

    def ghand(self, n: int = ITEMS) -> Any:
        start = time.time()
        success = False
        try:
            yield from range(n)
            if self.fail:
                raise Boom
            success = True
        finally:
            _hand_record(self, "ghand", start, success)

    async def aghand(self, n: int = ITEMS) -> Any:
        start = time.time()
        success = False
        try:
            for i in range(n):
                yield i
            if self.fail:
                raise Boom
            success = True
        finally:
            _hand_record(self, "aghand", start, success)

    def shand(self) -> list[int]:
        start = time.time()
        success = False
        records = 0
        try:
            if self.fail:
                raise Boom
            result = RECORDS
            records = len(result)
            success = True
            return result
        finally:
            _hand_sync_record(self, "shand", start, success, records)

    # bizmetrics
    @instrument_connector_operation("deco")
    def deco(self) -> int:
        if self.fail:
            raise Boom
        return 1

    @instrument_connector_operation("adeco")
    async def adeco(self) -> int:
        if self.fail:
            raise Boom
        return 1

    @instrument_connector_operation("gdeco")
    def gdeco(self, n: int = ITEMS) -> Any:
        yield from range(n)
        if self.fail:
            raise Boom

    @instrument_connector_operation("agdeco")
    async def agdeco(self, n: int = ITEMS) -> Any:
        for i in range(n):
            yield i
        if self.fail:
            raise Boom

    @instrument_sync_operation(RESOURCE)
    def sdeco(self) -> list[int]:
        if self.fail:
            raise Boom
        return RECORDS


# --- prometheus_client's own decorators and the pre-bound floors --------------------

_ok = OPERATIONS.labels("bench", "stacked", "success", TENANT)
_hist = DURATION.labels("bench", "stacked")


@_hist.time()
@_ok.count_exceptions()
def stacked() -> int:
    """prometheus_client's ``@h.labels(...).time()`` over ``@c.labels(...).count_exceptions()``."""
    return 1


def _floor_children(operation: str) -> tuple[Any, Any, Any]:
    return (
        OPERATIONS.labels("bench", operation, "success", TENANT),
        OPERATIONS.labels("bench", operation, "error", TENANT),
        DURATION.labels("bench", operation),
    )


def floor_closure(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The floor with prometheus_client's public API: children bound once, a plain closure."""
    ok, err, hist = _floor_children("floor")

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = perf_counter_ns()
        try:
            result = fn(*args, **kwargs)
        except Exception:
            err.inc()
            hist.observe((perf_counter_ns() - start) / 1e6)
            raise
        hist.observe((perf_counter_ns() - start) / 1e6)
        ok.inc()
        return result

    return wrapper


def floor_wrapt(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The same floor as a ``wrapt.decorator``."""
    ok, err, hist = _floor_children("floor_wrapt")

    @wrapt.decorator  # type: ignore[untyped-decorator,unused-ignore]
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        start = perf_counter_ns()
        try:
            result = wrapped(*args, **kwargs)
        except Exception:
            err.inc()
            hist.observe((perf_counter_ns() - start) / 1e6)
            raise
        hist.observe((perf_counter_ns() - start) / 1e6)
        ok.inc()
        return result

    return wrapper(fn)  # type: ignore[no-any-return]


def _plain() -> int:
    return 1


def _plain_fail() -> int:
    raise Boom


@instrument_connector_operation("ctx", connector_type="bench")
def with_context() -> int:
    """A module function whose tenant comes from ``tenant_context``."""
    return 1


# --- Loops ------------------------------------------------------------------------------


def sync_loop(call: Callable[[], Any], fail: bool) -> Callable[[int], int]:
    if not fail:

        def run(n: int) -> int:
            start = perf_counter_ns()
            for _ in range(n):
                call()
            return perf_counter_ns() - start

        return run

    def run_fail(n: int) -> int:
        start = perf_counter_ns()
        for _ in range(n):
            try:
                call()
            except Boom:
                pass
        return perf_counter_ns() - start

    return run_fail


def gen_loop(make: Callable[[], Any], fail: bool) -> Callable[[int], int]:
    def run(n: int) -> int:
        start = perf_counter_ns()
        for _ in range(n):
            try:
                for _item in make():
                    pass
            except Boom:
                pass
        return perf_counter_ns() - start

    return run


_loop = asyncio.new_event_loop()


def async_loop(make: Callable[[], Any], fail: bool) -> Callable[[int], int]:
    async def body(n: int) -> int:
        start = perf_counter_ns()
        for _ in range(n):
            try:
                await make()
            except Boom:
                pass
        return perf_counter_ns() - start

    return lambda n: _loop.run_until_complete(body(n))


def agen_loop(make: Callable[[], Any], fail: bool) -> Callable[[int], int]:
    async def body(n: int) -> int:
        start = perf_counter_ns()
        for _ in range(n):
            try:
                async for _item in make():
                    pass
            except Boom:
                pass
        return perf_counter_ns() - start

    return lambda n: _loop.run_until_complete(body(n))


def _path_cases(path: str) -> list[Case]:
    """The cases of one path (success or error), each kind against its bare and hand-written twins."""
    fail = path == "error"
    c = Connector(fail)
    plain = _plain_fail if fail else _plain
    cases = [
        Case("bare method", "sync", path, "bare", sync_loop(lambda: c.bare(), fail), "the undecorated method"),
        Case("hand-written", "sync", path, "hand", sync_loop(lambda: c.hand(), fail), "the spec's pattern"),
        Case(
            "floor: closure",
            "sync",
            path,
            "floor",
            sync_loop(floor_closure(plain), fail),
            "children bound once, perf_counter_ns, plain closure",
        ),
        Case(
            "floor: wrapt.decorator",
            "sync",
            path,
            "floor",
            sync_loop(floor_wrapt(plain), fail),
            "the same floor on wrapt.decorator",
        ),
        Case(
            "bizmetrics method",
            "sync",
            path,
            "bizmetrics",
            sync_loop(lambda: c.deco(), fail),
            "instrument_connector_operation on a method, labels from self",
        ),
        Case("bare method", "coroutine", path, "bare", async_loop(lambda: c.abare(), fail), "awaited in a loop"),
        Case("hand-written", "coroutine", path, "hand", async_loop(lambda: c.ahand(), fail), "the spec's pattern"),
        Case(
            "bizmetrics method",
            "coroutine",
            path,
            "bizmetrics",
            async_loop(lambda: c.adeco(), fail),
            "instrument_connector_operation on an async method",
        ),
        Case("bare method", "generator", path, "bare", gen_loop(lambda: c.gbare(), fail), f"{ITEMS} items", ITEMS),
        Case(
            "hand-written",
            "generator",
            path,
            "hand",
            gen_loop(lambda: c.ghand(), fail),
            f"the spec's pattern around the loop, wall clock, {ITEMS} items",
            ITEMS,
        ),
        Case(
            "bizmetrics method",
            "generator",
            path,
            "bizmetrics",
            gen_loop(lambda: c.gdeco(), fail),
            f"timed per resume, {ITEMS} items",
            ITEMS,
        ),
        Case(
            "bare method",
            "async generator",
            path,
            "bare",
            agen_loop(lambda: c.agbare(), fail),
            f"{ITEMS} items",
            ITEMS,
        ),
        Case(
            "hand-written",
            "async generator",
            path,
            "hand",
            agen_loop(lambda: c.aghand(), fail),
            f"the spec's pattern around the loop, wall clock, {ITEMS} items",
            ITEMS,
        ),
        Case(
            "bizmetrics method",
            "async generator",
            path,
            "bizmetrics",
            agen_loop(lambda: c.agdeco(), fail),
            f"timed per resume, {ITEMS} items",
            ITEMS,
        ),
    ]
    if not fail:
        ctx_run = sync_loop(with_context, fail)
        traced_run = sync_loop(lambda: c.deco(), fail)

        def in_context(n: int) -> int:
            with tenant_context(TENANT):
                return ctx_run(n)

        def in_trace(n: int) -> int:
            with trace_context("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"):
                return traced_run(n)

        cases[2:2] = [
            Case(
                "prometheus_client stacked",
                "sync",
                path,
                "prometheus_client",
                sync_loop(stacked, fail),
                "time() over count_exceptions(); records less (no tenant, no status), wrong for async",
            )
        ]
        n_records = len(RECORDS)
        cases += [
            Case(
                "bare method",
                "sync operation",
                path,
                "bare",
                sync_loop(lambda: c.sbare(), fail),
                f"the undecorated method, returns a list of {n_records}",
            ),
            Case(
                "hand-written",
                "sync operation",
                path,
                "hand",
                sync_loop(lambda: c.shand(), fail),
                f"the spec's pattern with the sync counters, len() of the list of {n_records}",
            ),
            Case(
                "bizmetrics method",
                "sync operation",
                path,
                "bizmetrics",
                sync_loop(lambda: c.sdeco(), fail),
                f"instrument_sync_operation on a method, labels from self, counts the list of {n_records}",
            ),
        ]
        cases[6:6] = [
            Case(
                "bizmetrics function, tenant_context",
                "sync",
                path,
                "bizmetrics",
                in_context,
                "instrument_connector_operation on a function, tenant from tenant_context",
            ),
            Case(
                "bizmetrics method, trace current",
                "sync",
                path,
                "bizmetrics",
                in_trace,
                "the bizmetrics method inside trace_context: exemplars on the counter and the histogram",
            ),
        ]
    return cases


def floor_relay(gen: Any) -> Any:
    """The least a per-item timer can do in Python: read the clock around each resume, nothing else."""
    elapsed = 0.0
    send = gen.send
    arg = None
    while True:
        elapsed -= time.perf_counter()
        try:
            item = send(arg)
        except StopIteration as stop:
            return stop.value
        elapsed += time.perf_counter()
        arg = yield item


async def afloor_relay(agen: Any) -> Any:
    """``floor_relay`` for async generators."""
    elapsed = 0.0
    asend = agen.asend
    arg = None
    while True:
        elapsed -= time.perf_counter()
        try:
            item = await asend(arg)
        except StopAsyncIteration:
            return
        elapsed += time.perf_counter()
        arg = yield item


def _slope_cases(n_items: int) -> list[Case]:
    """Generators of ``n_items`` items, bare and decorated, for the per-item slope."""
    c = Connector()
    doc = "for the per-item slope"
    return [
        Case(f"bare method, {n_items} items", "generator", "success", "bare",
             gen_loop(lambda: c.gbare(n_items), False), doc, n_items),
        Case(f"bizmetrics method, {n_items} items", "generator", "success", "bizmetrics",
             gen_loop(lambda: c.gdeco(n_items), False), doc, n_items),
        Case(f"bare method, {n_items} items", "async generator", "success", "bare",
             agen_loop(lambda: c.agbare(n_items), False), doc, n_items),
        Case(f"bizmetrics method, {n_items} items", "async generator", "success", "bizmetrics",
             agen_loop(lambda: c.agdeco(n_items), False), doc, n_items),
        Case(f"floor: two clock reads per item, {n_items} items", "generator", "success", "floor",
             gen_loop(lambda: floor_relay(c.gbare(n_items)), False), doc, n_items),
        Case(f"floor: two clock reads per item, {n_items} items", "async generator", "success", "floor",
             agen_loop(lambda: afloor_relay(c.agbare(n_items)), False), doc, n_items),
    ]  # fmt: skip


def all_cases() -> list[Case]:
    """Every case, in the order one round runs them."""
    return _path_cases("success") + _path_cases("error") + _slope_cases(0) + _slope_cases(100)
