"""Tenant and workflow context: the context managers as decorators, across tasks, threads and executors."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support.registry import unique, value

import bizmetrics
from bizmetrics import (
    current_tenant,
    current_workflow,
    tenant_context,
    workflow_context,
)


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
