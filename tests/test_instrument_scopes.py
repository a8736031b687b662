"""The scope of a call's own tenant on the engine's inlined paths, and the async-stream pump's protocol."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.registry import unique, value

import bizmetrics
from bizmetrics import instrument_connector_operation, instrument_sync_operation, tenant_context

#: A variable of the application's own, set inside decorated bodies.
APP: contextvars.ContextVar[object] = contextvars.ContextVar("app", default=None)


class Boom(Exception):
    pass


def _ops(ct: str, op: str, tenant: str, status: str = "success") -> float:
    return value("connector_operations_total", connector_type=ct, operation=op, status=status, tenant_id=tenant)


class _Config:
    def __init__(self, id: str) -> None:
        self.id = id


def _connector(name: str, tenant: object) -> Any:
    class Connector:
        config = _Config(name)
        tenant_id = tenant

        @instrument_connector_operation("sync")
        def sync(self, fail: bool = False) -> object:
            APP.set("set by the body")
            if fail:
                raise Boom
            return bizmetrics.current_tenant()

        @instrument_connector_operation("coro")
        async def coro(self, fail: bool = False) -> object:
            await asyncio.sleep(0)
            if fail:
                raise Boom
            return bizmetrics.current_tenant()

        @instrument_sync_operation("rows")
        def rows(self) -> list[object]:
            return [bizmetrics.current_tenant()]

    return Connector()


@pytest.mark.parametrize("fail", [False, True])
def test_a_sync_methods_own_tenant_is_current_in_its_body_and_gone_after_while_the_bodys_own_changes_stay(fail):
    """The tenant is set and reset around the body; a variable the body sets reaches the caller, as undecorated."""
    name, own = unique("ct"), unique()
    connector = _connector(name, own)
    token = APP.set(None)
    try:
        if fail:
            with pytest.raises(Boom):
                connector.sync(fail=True)
        else:
            assert connector.sync() == own
        assert bizmetrics.current_tenant() is None
        assert APP.get() == "set by the body"
    finally:
        APP.reset(token)
    assert _ops(name, "sync", own, "error" if fail else "success") == 1
    assert connector.rows() == [own]


@given(outer=st.text(min_size=1, max_size=8), same=st.booleans())
@settings(max_examples=20, deadline=None)
def test_an_own_tenant_already_current_keeps_the_current_object_and_another_replaces_it(outer, same):
    """Equal text is the same tenant: the current object stays (nothing is set); other text is set for the body."""
    name = unique("ct")
    own = "".join(outer) if same else outer + "-own"  # equal text, maybe another object
    current = outer
    connector = _connector(name, own)
    with tenant_context(current):
        inside = connector.sync()
        assert bizmetrics.current_tenant() is current
    assert inside is current if same else inside == own


@pytest.mark.parametrize("fail", [False, True])
def test_a_coroutine_methods_own_tenant_is_current_across_its_awaits_and_gone_after(fail):
    name, own, consumer = unique("ct"), unique(), unique()
    connector = _connector(name, own)

    async def main() -> object:
        with tenant_context(consumer):
            if fail:
                with pytest.raises(Boom):
                    await connector.coro(fail=True)
                result = None
            else:
                result = await connector.coro()
            assert bizmetrics.current_tenant() == consumer
            return result

    assert asyncio.run(main()) == (None if fail else own)
    assert _ops(name, "coro", own, "error" if fail else "success") == 1


def test_a_coroutine_closed_from_another_context_while_it_awaits_is_recorded_and_raises_nothing_else():
    """Resetting the tenant from another context is skipped; the close is not a failure."""
    name, own = unique("ct"), unique()

    class Never:
        def __await__(self) -> Any:
            yield None

    @instrument_connector_operation("stuck", connector_type=name)
    async def stuck(tenant_id: str) -> None:
        await Never()

    coro = stuck(own)
    contextvars.copy_context().run(coro.send, None)  # started, and its tenant set, in a copy
    coro.close()  # closed here: another context
    assert bizmetrics.current_tenant() is None
    assert _ops(name, "stuck", own, "error") == 0


@pytest.mark.parametrize("kind", ["sync", "coroutine"])
def test_an_interrupt_raised_while_recording_a_failure_still_leaves_the_calls_tenant(kind):
    """A KeyboardInterrupt from inside the record (an error_type= raising it) propagates; the scope is still left."""
    name, own, consumer = unique("ct"), unique(), unique()

    def interrupting(exc: BaseException) -> str:
        raise KeyboardInterrupt

    decorate = instrument_connector_operation("interrupted", connector_type=name, error_type=interrupting)

    @decorate
    def sync(tenant_id: str) -> None:
        raise Boom

    @decorate
    async def coro(tenant_id: str) -> None:
        await asyncio.sleep(0)
        raise Boom

    async def main() -> None:
        with tenant_context(consumer):
            with pytest.raises(KeyboardInterrupt):
                if kind == "sync":
                    sync(own)
                else:
                    await coro(own)
            assert bizmetrics.current_tenant() == consumer

    asyncio.run(main())


@pytest.mark.parametrize("fail", [False, True])
def test_a_coroutine_finished_in_another_context_than_it_started_returns_or_raises_as_undecorated(fail):
    """A coroutine driven by hand through two contexts: resetting its tenant is skipped, its outcome untouched."""
    name, own = unique("ct"), unique()

    class Once:
        def __await__(self) -> Any:
            yield None

    @instrument_connector_operation("moved", connector_type=name)
    async def moved(tenant_id: str) -> str:
        await Once()
        if fail:
            raise Boom
        return "done"

    coro = moved(own)
    contextvars.copy_context().run(coro.send, None)  # started, and its tenant set, in a copy
    if fail:
        with pytest.raises(Boom):
            coro.send(None)  # finished here: another context
    else:
        with pytest.raises(StopIteration) as stop:
            coro.send(None)
        assert stop.value.value == "done"
    assert bizmetrics.current_tenant() is None
    assert _ops(name, "moved", own, "error" if fail else "success") == 1


class TestTheStreamPump:
    """A stream with its own tenant runs its steps through the pump: every protocol of async generators holds."""

    def test_values_sent_reach_the_body_in_its_scope(self):
        name, own = unique("ct"), unique()
        seen: list[tuple[object, object]] = []

        @instrument_connector_operation("echo", connector_type=name)
        async def echo(tenant_id: str) -> Any:
            received = None
            for _ in range(3):
                received = yield received
                seen.append((received, bizmetrics.current_tenant()))

        async def main() -> list[object]:
            stream = echo(own)
            got = [await stream.asend(None)]
            for value_ in ("a", "b"):
                got.append(await stream.asend(value_))
            with pytest.raises(StopAsyncIteration):
                await stream.asend("c")
            return got

        assert asyncio.run(main()) == [None, "a", "b"]
        assert seen == [("a", own), ("b", own), ("c", own)]
        assert _ops(name, "echo", own) == 1

    @pytest.mark.parametrize("awaits", [False, True])
    def test_an_exception_thrown_at_an_item_is_raised_there_in_the_bodys_scope(self, awaits):
        """``athrow`` reaches the body at its ``yield``; it may recover and go on, awaiting or not."""
        name, own, consumer = unique("ct"), unique(), unique()
        seen: list[object] = []

        @instrument_connector_operation("recover", connector_type=name)
        async def recover(tenant_id: str) -> Any:
            try:
                yield 1
            except Boom:
                seen.append(bizmetrics.current_tenant())
                if awaits:
                    await asyncio.sleep(0)
                yield "recovered"
            yield 2

        async def main() -> list[object]:
            with tenant_context(consumer):
                stream = recover(own)
                got = [await stream.__anext__(), await stream.athrow(Boom())]
                got += [item async for item in stream]
                seen.append(bizmetrics.current_tenant())
                return got

        assert asyncio.run(main()) == [1, "recovered", 2]
        assert seen == [own, consumer]
        assert _ops(name, "recover", own) == 1

    def test_an_exception_thrown_at_an_item_and_not_caught_fails_the_call(self):
        name, own = unique("ct"), unique()

        @instrument_connector_operation("thrown", connector_type=name)
        async def thrown(tenant_id: str) -> Any:
            yield 1
            yield 2

        async def main() -> None:
            stream = thrown(own)
            await stream.__anext__()
            with pytest.raises(Boom):
                await stream.athrow(Boom())

        asyncio.run(main())
        assert _ops(name, "thrown", own, "error") == 1

    @pytest.mark.parametrize("where", ["first", "after an await", "after items"])
    def test_a_body_that_raises_fails_the_call_once_with_its_error(self, where):
        name, own = unique("ct"), unique()

        @instrument_connector_operation("raises", connector_type=name)
        async def raises(tenant_id: str) -> Any:
            if where == "after an await":
                await asyncio.sleep(0)
            if where == "after items":
                yield 1
                yield 2
            raise Boom

        async def main() -> list[object]:
            return [item async for item in raises(own)]

        with pytest.raises(Boom):
            asyncio.run(main())
        assert (
            value("connector_errors_total", connector_type=name, operation="raises", error_type="Boom", tenant_id=own)
            == 1
        )

    def test_items_that_look_like_awaited_signals_are_items(self):
        """``None`` and futures yielded as items are handed to the consumer, never to the task."""
        name, own = unique("ct"), unique()

        async def main() -> list[object]:
            future = asyncio.get_running_loop().create_future()

            @instrument_connector_operation("odd", connector_type=name)
            async def odd(tenant_id: str) -> Any:
                yield None
                await asyncio.sleep(0)
                yield future
                yield None

            items = [item async for item in odd(own)]
            assert items[1] is future and not future.done()
            return items

        items = asyncio.run(main())
        assert items[0] is None and items[2] is None and len(items) == 3
        assert _ops(name, "odd", own) == 1
