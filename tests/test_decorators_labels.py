"""Labels resolved per call, and what each family counts in results."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.registry import unique, value
from support.samples import KINDS, Config, make, run
from support.strategies import payloads

import bizmetrics
from bizmetrics import (
    MISS,
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


def _ops(ct: str, op: str, tenant: str, status: str = "success") -> float:
    return value("connector_operations_total", connector_type=ct, operation=op, status=status, tenant_id=tenant)


def _records(ct: str, rt: str, tenant: str) -> float:
    return value("connector_sync_records_total", connector_type=ct, resource_type=rt, tenant_id=tenant)


class TestConnectorLabels:
    def test_connector_type_order(self):
        """connector_type: decorator argument, else self.config.id, else self.connector_type, else unknown."""
        t = unique()

        class WithConfig:
            config = Config("from_config")
            connector_type = "ignored"
            tenant_id = t

            @instrument_connector_operation("op1")
            def a(self): ...

            @instrument_connector_operation("op1", connector_type="explicit")
            def b(self): ...

        class WithAttr:
            connector_type = "from_attr"
            tenant_id = t

            @instrument_connector_operation("op1")
            def a(self): ...

        class Bare:
            tenant_id = t

            @instrument_connector_operation("op1")
            def a(self): ...

        WithConfig().a(), WithConfig().b(), WithAttr().a(), Bare().a()
        for ct in ("from_config", "explicit", "from_attr", "unknown"):
            assert _ops(ct, "op1", t) == 1, ct

    def test_operation_defaults_to_the_function_name(self):
        """The spec's sample: @instrument_sync_operation("posts") on get_posts has operation="get_posts"."""
        t = unique()

        class WordPress:
            config = Config("wordpress")
            tenant_id = t

            @instrument_sync_operation("posts")
            async def get_posts(self, limit: int = 100):
                return list(range(limit))

        assert len(asyncio.run(WordPress().get_posts(limit=7))) == 7
        assert _ops("wordpress", "get_posts", t) == 1
        assert _records("wordpress", "posts", t) == 7
        sync = {"connector_type": "wordpress", "resource_type": "posts", "tenant_id": t}
        assert value("connector_sync_operations_total", **sync, status="success") == 1

    def test_a_property_that_raises_does_not_break_the_call(self):
        """A label source that raises falls back to the default; the call still works."""
        t = unique()

        class Odd:
            @property
            def config(self):
                raise RuntimeError("lazy config failed")

            tenant_id = t

            @instrument_connector_operation("odd")
            def a(self):
                return 5

        assert Odd().a() == 5
        assert _ops("unknown", "odd", t) == 1


class TestTenant:
    def test_resolution_order(self):
        """tenant_id: call argument (keyword or positional), else self.tenant_id, else tenant_context, else default."""
        ctx, own, arg = unique(), unique(), unique()
        op_fn, op_m = unique("fn"), unique("m")

        @instrument_connector_operation(op_fn, connector_type="tenants")
        def fn(x, tenant_id=None):
            return x

        class Holder:
            tenant_id = own

            @instrument_connector_operation(op_m, connector_type="tenants")
            def m(self, tenant_id=None): ...

        fn(1, tenant_id=arg)
        fn(1, arg)
        with tenant_context(ctx):
            fn(1)
            Holder().m()
            Holder().m(arg)
        fn(1)
        assert _ops("tenants", op_fn, arg) == 2
        assert _ops("tenants", op_fn, ctx) == 1
        assert _ops("tenants", op_fn, "default_tenant") == 1
        assert _ops("tenants", op_m, own) == 1
        assert _ops("tenants", op_m, arg) == 1

    def test_context_is_per_thread(self):
        """Each thread sees its own tenant_context."""
        op = unique("op")
        decorated = instrument_connector_operation(op, connector_type="threads")(make("sync"))
        tenants = [unique() for _ in range(4)]

        def worker(tenant):
            with tenant_context(tenant):
                for _ in range(50):
                    decorated()

        threads = [threading.Thread(target=worker, args=(t,)) for t in tenants]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert [_ops("threads", op, t) for t in tenants] == [50] * 4

    def test_context_is_per_asyncio_task(self):
        """Each task keeps the tenant it was created under, across awaits."""
        op = unique("op")
        decorated = instrument_connector_operation(op, connector_type="tasks")(make("coroutine", delay=0.001))
        tenants = [unique() for _ in range(5)]

        async def job(tenant):
            with tenant_context(tenant):
                for _ in range(10):
                    await decorated()

        async def main():
            await asyncio.gather(*(job(t) for t in tenants))

        asyncio.run(main())
        assert [_ops("tasks", op, t) for t in tenants] == [10] * 5


@dataclass
class Page:
    items: list[int]
    total: int = 10_000


@dataclass
class Counted:
    count: int


class TestRecordCounts:
    @given(payload=payloads, kind=st.sampled_from(["sync", "coroutine"]))
    def test_default_rules(self, payload, kind):
        """Sized collections, ints, mappings and their keys count as documented; unknown formats count 0."""
        result, expected = payload
        t = unique()
        run(instrument_sync_operation("things", connector_type="counts")(make(kind, result=result)), tenant_id=t)
        assert _records("counts", "things", t) == expected

    @pytest.mark.parametrize(
        ("result", "expected"),
        [
            (Page([1, 2, 3]), 3),
            (Counted(7), 7),
            ({"contacts": [1, 2]}, 2),
            ({"results": [1], "count": 50}, 1),
            ({"data": (1, 2, 3, 4)}, 4),
            ({"total": 12}, 12),
            ({"unrelated": 5}, 0),
            ({1, 2, 3}, 3),
            (-4, 0),
            (b"bytes", 0),
        ],
    )
    def test_rule_examples(self, result, expected):
        """Objects with those attributes, a list under the resource type, list before count keys."""
        t = unique()
        decorated = instrument_sync_operation("contacts", connector_type="rules")(make("sync", result=result))
        decorated(tenant_id=t)
        assert _records("rules", "contacts", t) == expected

    @pytest.mark.parametrize(
        ("count", "result", "expected"),
        [
            (lambda r: r["n"], {"n": 9}, 9),
            ("n", {"n": 4}, 4),
            ("rows", Page([1]), 0),
            ("items", Page([1, 2]), 2),
            (len, [1, 2, 3], 3),
            (lambda r: "nonsense", [1], 0),
        ],
    )
    def test_count_override(self, count, result, expected):
        """count= takes a callable, or a key or attribute name; its value is a count or a collection."""
        t = unique()
        decorated = instrument_sync_operation("x", connector_type="override", count=count)(make("sync", result=result))
        decorated(tenant_id=t)
        assert _records("override", "x", t) == expected

    @pytest.mark.parametrize("kind", ["generator", "async generator"])
    def test_generators_count_yielded_items(self, kind):
        """A generator counts the items it yields; with count= it applies it to each item and sums."""
        t = unique()
        run(instrument_sync_operation("rows", connector_type="gens")(make(kind, items=range(6))), tenant_id=t)
        pages = ([1, 2], [3, 4, 5])
        decorated = instrument_sync_operation("pages", connector_type="gens", count=len)(make(kind, items=pages))
        run(decorated, tenant_id=t)
        assert _records("gens", "rows", t) == 6
        assert _records("gens", "pages", t) == 5

    def test_extractor_failure_counts_zero_and_keeps_the_result(self):
        """A count= callable that raises: 0 records, the operation still succeeds, the result is intact."""
        t = unique()

        def broken(result):
            raise ZeroDivisionError

        decorated = instrument_sync_operation("x", connector_type="broken", count=broken)(make("sync", result=[1, 2]))
        assert decorated(tenant_id=t) == [1, 2]
        assert _records("broken", "x", t) == 0
        assert _ops("broken", "work", t) == 1


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None


@dataclass
class Completion:
    usage: Any


class TestAgents:
    @pytest.mark.parametrize(
        ("result", "expected"),
        [
            (120, 120),
            (Completion(Usage(10, 5, total_tokens=15)), 15),
            (Completion(Usage(10, 5)), 15),
            ({"usage": {"input_tokens": 7, "output_tokens": 3}}, 10),
            ({"usage": {"total_tokens": 99}}, 99),
            ("just text", 0),
            (None, 0),
            (True, 0),
        ],
    )
    def test_tokens_from_results(self, result, expected):
        """Tokens come from an int, usage.total_tokens, prompt+completion or input+output tokens."""
        agent, t = unique("agent"), unique()
        instrument_agent(agent)(make("sync", result=result))(tenant_id=t)
        assert value("agent_tokens_used_total", agent_id=agent, tenant_id=t) == expected
        assert value("agent_invocations_total", agent_id=agent, status="success", tenant_id=t) == 1

    def test_tokens_callable_and_streaming(self):
        """tokens= as a callable; a streaming async generator sums the usage found in its chunks."""
        agent, t = unique("agent"), unique()
        run(instrument_agent(agent, tokens=lambda r: r[1])(make("coroutine", result=("text", 42))), tenant_id=t)
        chunks = ({"delta": "a"}, {"delta": "b"}, {"usage": {"input_tokens": 5, "output_tokens": 8}})
        run(instrument_agent(agent)(make("async generator", items=chunks)), tenant_id=t)
        assert value("agent_tokens_used_total", agent_id=agent, tenant_id=t) == 42 + 13

    def test_agent_id_and_errors(self):
        """agent_id: argument, else self.agent_id, else the function name; errors counted by class."""
        t, bot = unique(), unique("bot")

        class Bot:
            agent_id = bot
            tenant_id = t

            @instrument_agent()
            async def reply(self):
                raise ConnectionError

        with pytest.raises(ConnectionError):
            asyncio.run(Bot().reply())
        labels = {"agent_id": bot, "tenant_id": t}
        assert value("agent_invocations_total", **labels, status="error") == 1
        assert value("agent_errors_total", **labels, error_type="ConnectionError") == 1
        assert value("agent_response_duration_count", agent_id=bot) == 1


class TestWorkflows:
    @pytest.mark.parametrize("kind", KINDS)
    def test_steps_inside_a_workflow_know_its_id(self, kind):
        """A step called inside an instrument_workflow body is labelled with that workflow's id."""
        wf, step, t = unique("wf"), unique("step"), unique()
        inner = instrument_workflow_step(step)(make("sync"))

        if kind == "sync":

            def body(tenant_id):
                inner()
                inner()
        elif kind == "coroutine":

            async def body(tenant_id):
                inner()
                inner()
        elif kind == "generator":

            def body(tenant_id):
                inner()
                yield 1
                inner()
        else:

            async def body(tenant_id):
                inner()
                yield 1
                inner()

        run(instrument_workflow(wf)(body), tenant_id=t)
        inner()  # outside: unknown
        assert value("workflow_step_duration_count", workflow_id=wf, step=step) == 2
        assert value("workflow_step_duration_count", workflow_id="unknown", step=step) == 1
        assert value("workflow_executions_total", workflow_id=wf, status="success", tenant_id=t) == 1
        assert bizmetrics.current_workflow() is None

    def test_workflow_failure_and_default_id(self):
        """Failures are counted by class; without an id the workflow is named after the function."""
        t = unique()

        @instrument_workflow()
        def nightly_import(tenant_id):
            raise ValueError

        with pytest.raises(ValueError):
            nightly_import(t)
        assert value("workflow_executions_total", workflow_id="nightly_import", status="error", tenant_id=t) == 1
        labels = {"workflow_id": "nightly_import", "error_type": "ValueError", "tenant_id": t}
        assert value("workflow_failures_total", **labels) == 1


class TestDbAndCache:
    @pytest.mark.parametrize("kind", KINDS)
    def test_db_query_is_timed(self, kind, clock):
        """instrument_db_query observes each query's duration under its operation."""
        op = unique("op")
        run(instrument_db_query(op)(make(kind, items=())))
        assert value("db_query_duration_count", operation=op) == 1
        assert value("db_query_duration_sum", operation=op) == 1

    def test_cache_hits_and_misses(self):
        """None, MISS and exceptions are misses; anything else is a hit; miss= changes the rule."""
        cache = unique("cache")
        store = {"a": 1, "n": None}

        @instrument_cache_lookup(cache)
        def get(key):
            if key == "boom":
                raise KeyError(key)
            return store.get(key, MISS if key == "sentinel" else None)

        get("a"), get("b"), get("sentinel")
        with pytest.raises(KeyError):
            get("boom")
        assert value("cache_hits_total", cache=cache) == 1
        assert value("cache_misses_total", cache=cache) == 3

        other = unique("cache")
        empty = object()
        instrument_cache_lookup(other, miss=empty)(make("sync", result=None))()
        instrument_cache_lookup(other, miss=empty)(make("sync", result=empty))()
        instrument_cache_lookup(other, miss=lambda r: r == 0)(make("sync", result=0))()
        assert value("cache_hits_total", cache=other) == 1
        assert value("cache_misses_total", cache=other) == 2


class TestTheCallsTenantReachesItsBody:
    """A connector, workflow or agent call that names its tenant makes it current for what it does inside."""

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("outer", ["connector", "workflow", "agent"])
    @pytest.mark.parametrize("source", ["argument", "self"])
    def test_inner_records_are_booked_to_the_outer_calls_tenant(self, kind, outer, source):
        """Tools, steps, connector calls and LLM usage inside take the outer call's tenant; current_tenant() says it."""
        tenant, name = unique(), unique("n")
        seen: list[object] = []

        @instrument_connector_operation("inner", connector_type=name)
        def inner_connector() -> int:
            return 1

        @bizmetrics.instrument_tool("inner_tool", agent_id=name)
        def inner_tool() -> int:
            return 1

        def body() -> None:
            seen.append(bizmetrics.current_tenant())
            inner_connector()
            inner_tool()
            bizmetrics.record_workflow_execution(name + "_inner", 1, True)

        decorate = {
            "connector": instrument_connector_operation("outer", connector_type=name),
            "workflow": instrument_workflow(name),
            "agent": instrument_agent(name),
        }[outer]
        fn = make_calling(kind, body)
        if source == "argument":
            decorated = decorate(fn)
            run(decorated, tenant_id=tenant)
        else:
            holder = type("Holder", (), {"tenant_id": tenant, "call": decorate(_method_of(fn))})
            run(holder().call)
        assert seen == [tenant]
        assert _ops(name, "inner", tenant) == 1
        assert (
            value("agent_tool_calls_total", agent_id=name, tool="inner_tool", status="success", tenant_id=tenant) == 1
        )
        assert value("workflow_executions_total", workflow_id=name + "_inner", status="success", tenant_id=tenant) == 1
        assert bizmetrics.current_tenant() is None  # restored after the call

    def test_an_inner_call_that_names_its_own_tenant_keeps_it(self):
        """The outer tenant is only the current one: an explicit tenant inside still wins."""
        name, outer_tenant, own = unique("n"), unique(), unique()

        @instrument_connector_operation("inner", connector_type=name)
        def inner(tenant_id: str) -> int:
            return 1

        @instrument_workflow(name)
        def flow(tenant_id: str) -> int:
            return inner(own)

        flow(outer_tenant)
        assert _ops(name, "inner", own) == 1
        assert _ops(name, "inner", outer_tenant) == 0

    def test_a_tenant_from_the_context_is_unchanged_and_none_leaks_out(self):
        """Without a tenant of its own the call leaves the context as it is; with one, restores it after."""
        name, ctx_tenant, own = unique("n"), unique(), unique()
        seen: list[object] = []

        @instrument_connector_operation("c", connector_type=name)
        def call(tenant_id: str | None = None) -> None:
            seen.append(bizmetrics.current_tenant())

        with tenant_context(ctx_tenant):
            call()
            call(own)
            seen.append(bizmetrics.current_tenant())
        assert seen == [ctx_tenant, own, ctx_tenant]

    def test_the_raw_tenant_value_is_current_not_its_cleaned_label(self):
        """current_tenant() inside reads what the call was given (an int stays an int)."""
        seen: list[object] = []

        @instrument_connector_operation("c", connector_type=unique("n"))
        def call(tenant_id: object) -> None:
            seen.append(bizmetrics.current_tenant())

        call(42)
        assert seen == [42]


def make_calling(kind: str, body: Any) -> Any:
    """A function of ``kind`` taking ``tenant_id`` that calls ``body()`` while it runs."""
    if kind == "sync":

        def fn(tenant_id: str | None = None) -> int:
            body()
            return 1
    elif kind == "coroutine":

        async def fn(tenant_id: str | None = None) -> int:  # type: ignore[misc]
            await asyncio.sleep(0)
            body()
            return 1
    elif kind == "generator":

        def fn(tenant_id: str | None = None) -> Any:  # type: ignore[misc]
            yield 1
            body()
            yield 2
    else:

        async def fn(tenant_id: str | None = None) -> Any:  # type: ignore[misc]
            yield 1
            await asyncio.sleep(0)
            body()
            yield 2

    return fn


def _method_of(fn: Any) -> Any:
    """``fn`` as a method: ``self`` first, no tenant argument."""
    import inspect

    if inspect.isasyncgenfunction(fn):

        async def method(self: Any) -> Any:
            async for item in fn():
                yield item
    elif inspect.iscoroutinefunction(fn):

        async def method(self: Any) -> Any:  # type: ignore[misc]
            return await fn()
    elif inspect.isgeneratorfunction(fn):

        def method(self: Any) -> Any:  # type: ignore[misc]
            yield from fn()
    else:

        def method(self: Any) -> Any:  # type: ignore[misc]
            return fn()

    return method


class TestAnAsyncStreamsScope:
    """An async generator with its own tenant: each step runs in the body's context, the consumer's stays its own."""

    def test_the_consumer_between_items_keeps_its_tenant_and_the_body_keeps_its_own(self):
        name, own, consumer = unique("n"), unique(), unique()
        seen: list[tuple[str, object]] = []

        @instrument_connector_operation("stream", connector_type=name)
        async def stream(tenant_id: str) -> Any:
            for i in range(3):
                seen.append(("body", bizmetrics.current_tenant()))
                await asyncio.sleep(0)  # a step that awaits: resumed in the body's context too
                yield i

        async def consume() -> None:
            with tenant_context(consumer):
                async for _ in stream(own):
                    seen.append(("consumer", bizmetrics.current_tenant()))

        asyncio.run(consume())
        assert seen == [("body", own), ("consumer", consumer)] * 3
        assert _ops(name, "stream", own) == 1

    def test_a_cancelled_step_propagates_runs_the_bodys_finally_in_its_scope_and_records_cancelled(self):
        name, own = unique("n"), unique()
        seen: list[object] = []

        @instrument_connector_operation("stream", connector_type=name)
        async def stream(tenant_id: str) -> Any:
            try:
                yield 1
                await asyncio.Event().wait()  # never set: cancelled here
                yield 2
            finally:
                seen.append(bizmetrics.current_tenant())

        async def consume() -> None:
            async for _ in stream(own):
                pass

        async def main() -> None:
            task = asyncio.ensure_future(consume())
            for _ in range(5):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert seen == [own]
        assert _ops(name, "stream", own, status="cancelled") == 1

    def test_a_stream_closed_early_closes_its_body_in_its_scope(self):
        name, own = unique("n"), unique()
        seen: list[object] = []

        @instrument_connector_operation("stream", connector_type=name)
        async def stream(tenant_id: str) -> Any:
            try:
                yield 1
                yield 2
            finally:
                await asyncio.sleep(0)
                seen.append(bizmetrics.current_tenant())

        async def consume() -> None:
            agen = stream(own)
            await agen.__anext__()
            await agen.aclose()
            seen.append(bizmetrics.current_tenant())

        asyncio.run(consume())
        assert seen == [own, None]
        assert _ops(name, "stream", own) == 1


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
