"""The engine: wrapper classes, binding in a class body, and the outcome rules stated once.

Coroutines, generators and awaitable-returning callables behave as undecorated: cancelled, closed early,
never awaited, called with bad arguments; their outcome and workflow scope are kept.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import warnings
from typing import Any

import pytest
from support.registry import unique, value

import bizmetrics
import bizmetrics._instrument as engine
from bizmetrics import (
    current_workflow,
    instrument_agent,
    instrument_connector_operation,
    instrument_workflow,
)


class Recorder:
    """A bundle that writes down what the engine recorded."""

    scope = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def success(self, ms, amount):
        self.calls.append(("success", amount))

    def failure(self, ms, error_type, amount):
        self.calls.append(("failure", error_type))

    def cancelled(self, ms, amount):
        self.calls.append(("cancelled", amount))

    def first_item(self, ms):
        self.calls.append(("first_item", None))


@pytest.mark.parametrize(
    ("exc", "recorded"),
    [
        (None, [("success", 3)]),
        (ValueError("x"), [("failure", "ValueError")]),
        (asyncio.CancelledError(), [("cancelled", 3)]),
        (KeyboardInterrupt(), []),
        (GeneratorExit(), []),
        (SystemExit(1), []),
    ],
)
def test_the_outcome_rules(exc, recorded):
    """No exception: success; an Exception: failure by class; CancelledError: cancelled; anything else: nothing."""
    bundle = Recorder()
    engine._outcome(bundle, 1_000_000, exc, 3, None)
    assert bundle.calls == recorded


def test_error_type_classifies_failures_only():
    bundle = Recorder()
    engine._outcome(bundle, 1, ValueError(), 0, lambda exc: "custom")
    engine._outcome(bundle, 1, ValueError(), 0, lambda exc: None)  # None: the class name
    assert bundle.calls == [("failure", "custom"), ("failure", "ValueError")]


def test_a_bundle_that_raises_is_logged_never_raised(caplog):
    class Broken(Recorder):
        def success(self, ms, amount):
            raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="bizmetrics"):
        engine._outcome(Broken(), 1, None, 0, None)
    assert any("recording an outcome" in r.getMessage() for r in caplog.records)


def fetch_contacts(self):
    return self


async def fetch_deals():
    return 1


def test_wrapper_classes_are_named_after_the_function():
    """Every decorated function gets its own wrapper class, named after it, so reprs name the user's function."""
    sync = instrument_connector_operation()(fetch_contacts)
    coro = instrument_connector_operation()(fetch_deals)
    assert type(sync).__name__ == "fetch_contacts"
    assert type(coro).__name__ == "fetch_deals"
    assert type(sync) is not type(coro)
    assert "fetch_contacts" in repr(sync)
    assert sync.__name__ == "fetch_contacts" and sync.__module__ == __name__


class Config:
    id = "named"


def test_a_function_assigned_in_a_class_body_is_a_method_there_and_a_function_elsewhere():
    """Bound to an instance it reads labels from it; called directly it does not; the object stays the same."""

    def sync(this, tenant_id=None):  # first parameter not called self
        return this

    decorated = instrument_connector_operation("assigned")(sync)
    tenant = unique()

    class Connector:
        config = Config()
        tenant_id = tenant
        run = decorated

    connector = Connector()
    assert Connector.__dict__["run"] is decorated
    assert connector.run() is connector
    assert connector.run() is connector
    labels = {"operation": "assigned", "status": "success"}
    assert value("connector_operations_total", connector_type="named", tenant_id=tenant, **labels) == 2
    other = unique()
    assert decorated(connector, tenant_id=other) is connector
    assert value("connector_operations_total", connector_type="unknown", tenant_id=other, **labels) == 1


def test_stacked_decorators_on_a_method_whose_first_parameter_is_not_self_all_record():
    """A workflow over an agent over ``def run(this, x)``: both record, both read the instance."""
    from bizmetrics import instrument_agent, instrument_workflow

    tenant, workflow, agent = unique(), unique("wf"), unique("agent")

    class Runner:
        tenant_id = tenant
        workflow_id = workflow
        agent_id = agent

        @instrument_workflow()
        @instrument_agent()
        def run(this, x):
            return None

    Runner().run(1)
    assert value("workflow_executions_total", workflow_id=workflow, status="success", tenant_id=tenant) == 1
    assert value("agent_invocations_total", agent_id=agent, status="success", tenant_id=tenant) == 1


def test_a_user_wrapt_decorator_above_ours_stays_in_the_class():
    import wrapt

    from bizmetrics import instrument_tool

    calls = []

    @wrapt.decorator
    def audit(wrapped, instance, args, kwargs):
        calls.append(instance)
        return wrapped(*args, **kwargs)

    tenant = unique()

    class Tools:
        tenant_id = tenant

        @audit
        @instrument_tool("lookup")
        def use(this, x):
            return x

    tools = Tools()
    assert tools.use(3) == 3
    assert calls == [tools]
    assert value("agent_tool_calls_total", agent_id="unknown", tool="lookup", status="success", tenant_id=tenant) == 1


def test_repr_names_the_wrapped_function():
    decorated = instrument_connector_operation()(fetch_contacts)
    assert repr(decorated) == f"<instrumented {fetch_contacts!r}>"


def test_a_name_with_a_nul_character_is_still_decorated():
    def f():
        return 1

    f.__name__ = "bad\x00name"
    decorated = instrument_connector_operation("nul", connector_type=unique("ct"))(f)
    assert decorated is not f and decorated() == 1


def test_binding_from_many_threads_builds_one_twin():
    """The first bindings of a method whose first parameter is not self, made at once: one twin for all."""

    def receive(this):
        return this

    class Receiver:
        handle = instrument_connector_operation("twin", connector_type=unique("ct"))(receive)

    receiver, start, bound = Receiver(), threading.Barrier(8), []

    def bind():
        start.wait()
        bound.append(receiver.handle.__func__)

    threads = [threading.Thread(target=bind) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(f) for f in bound}) == 1
    assert receiver.handle() is receiver


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


def test_a_coroutine_dropped_after_others_started_and_reused_holders_still_counts_cancelled():
    """Holders of started coroutines are reused; one never started still closes its work and counts cancelled."""
    t = unique()

    @instrument_workflow(t)
    async def flow() -> int:
        return 1

    async def main() -> None:
        for _ in range(3):
            dropped, started = flow(), flow()  # the second may get the first's holder at the next turn
            assert await started == 1
            dropped.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        forgotten = flow()
        assert asyncio.run(flow()) == 1  # takes a holder a started relay gave back, while `forgotten` holds its own
        del forgotten
        gc.collect()
    never_awaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    del caught  # a recorded warning holds the coroutine it warns about, and so its holder
    gc.collect()
    assert len(never_awaited) == 1 and "flow" in never_awaited[0], never_awaited
    assert value("workflow_executions_total", workflow_id=t, status="success", tenant_id="default_tenant") == 4
    assert value("workflow_executions_total", workflow_id=t, status="cancelled", tenant_id="default_tenant") == 4


def test_more_coroutines_than_the_holder_pool_keeps_all_count_exactly():
    """Coroutines created all at once (more than the pool keeps), then all run or all dropped: every one counts."""
    t = unique()
    n = engine._HOLDERS.maxlen * 2 + 7  # type: ignore[operator]

    @instrument_workflow(t)
    async def flow(i: int) -> int:
        return i

    async def main() -> list[int]:
        return await asyncio.gather(*[flow(i) for i in range(n)])

    assert asyncio.run(main()) == list(range(n))
    assert len(engine._HOLDERS) == engine._HOLDERS.maxlen, "every started call gave its holder back, the pool is full"
    assert all(h.work is None and h.bundle is None for h in engine._HOLDERS), "a pooled holder keeps nothing"
    dropped = [flow(i) for i in range(n)]
    for coroutine in dropped:
        coroutine.close()
    del dropped, coroutine
    gc.collect()
    assert value("workflow_executions_total", workflow_id=t, status="success", tenant_id="default_tenant") == n
    assert value("workflow_executions_total", workflow_id=t, status="cancelled", tenant_id="default_tenant") == n


def test_holders_are_taken_and_given_back_by_many_threads_without_losing_a_call():
    """Threads each running their own loop share the holder pool: every call counts once, none as cancelled."""
    t = unique()
    calls, threads = 300, 4

    @instrument_workflow(t)
    async def flow() -> int:
        await asyncio.sleep(0)
        return 1

    async def many() -> None:
        await asyncio.gather(*[flow() for _ in range(calls)])

    workers = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    gc.collect()
    assert value("workflow_executions_total", workflow_id=t, status="success", tenant_id="default_tenant") == (
        calls * threads
    )
    assert value("workflow_executions_total", workflow_id=t, status="cancelled", tenant_id="default_tenant") == 0


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
