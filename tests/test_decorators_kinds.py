"""Every kind of callable is timed right and keeps its identity, in every placement."""

from __future__ import annotations

import asyncio
import copy
import inspect
import pickle
import time

import pytest
from support.registry import unique, value
from support.samples import KINDS, Config, kind_of, make, run

from bizmetrics import instrument_connector_operation, instrument_sync_operation


def _ops(ct: str, op: str, status: str, tenant: str = "default_tenant") -> float:
    return value("connector_operations_total", connector_type=ct, operation=op, status=status, tenant_id=tenant)


def _duration(ct: str, op: str) -> tuple[float, float]:
    labels = {"connector_type": ct, "operation": op}
    return value("connector_operation_duration_count", **labels), value("connector_operation_duration_sum", **labels)


@pytest.mark.parametrize("kind", KINDS)
class TestIntrospection:
    def test_kind_predicates_are_preserved(self, kind):
        """inspect still says coroutine / generator / async generator function, as before decorating."""
        fn = make(kind)
        decorated = instrument_connector_operation("x")(fn)
        assert kind_of(decorated) == kind
        assert inspect.iscoroutinefunction(decorated) == inspect.iscoroutinefunction(fn)
        assert inspect.isgeneratorfunction(decorated) == inspect.isgeneratorfunction(fn)
        assert inspect.isasyncgenfunction(decorated) == inspect.isasyncgenfunction(fn)

    def test_metadata_is_preserved(self, kind):
        """signature, __name__, __qualname__, __doc__ and __wrapped__ are the original's."""
        fn = make(kind, params="self, limit: int = 100, *, tenant_id=None", name="get_posts")
        fn.__doc__ = "Fetch posts."
        decorated = instrument_sync_operation("posts")(fn)
        assert inspect.signature(decorated) == inspect.signature(fn)
        assert decorated.__name__ == "get_posts"
        assert decorated.__qualname__ == fn.__qualname__
        assert decorated.__doc__ == "Fetch posts."
        assert decorated.__wrapped__ is fn

    def test_result_is_unchanged(self, kind):
        """The decorated callable returns, awaits to or yields exactly what the original does."""
        fn = make(kind, result={"a": 1}, items=("x", "y"))
        assert run(instrument_connector_operation(unique("op"))(fn)) == run(fn)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_50ms_body_records_at_least_45ms(kind):
    """The whole awaited / iterated body is timed, not just the call that creates it."""
    op = unique("op")
    items = (1,) if "generator" in kind else ()
    run(instrument_connector_operation(op, connector_type="slow")(make(kind, delay=0.05, items=items)))
    count, total = _duration("slow", op)
    assert count == 1
    assert total >= 45


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["generator", "async generator"])
def test_a_slow_consumer_adds_nothing(kind):
    """Time the consumer spends between items is not the generator's: 3 x 50 ms of consumer adds ~0."""
    op = unique("op")
    decorated = instrument_connector_operation(op, connector_type="consumer")(make(kind, items=(1, 2, 3)))
    if kind == "generator":
        for _ in decorated():
            time.sleep(0.05)
    else:

        async def consume():
            async for _ in decorated():
                await asyncio.sleep(0.05)

        asyncio.run(consume())
    count, total = _duration("consumer", op)
    assert count == 1
    assert total < 20


@pytest.mark.parametrize("kind", KINDS)
def test_injected_clock_gives_exact_duration_sums(kind, clock):
    """With a clock that ticks 1 ms per read: a call is 1 ms, a generator of n items n+1 ms (one per resume)."""
    op = unique("op")
    decorated = instrument_connector_operation(op, connector_type="clock")(make(kind, items=(1, 2, 3, 4)))
    for _ in range(3):
        run(decorated)
    per_call = 5 if "generator" in kind else 1
    assert _duration("clock", op) == (3, 3 * per_call)


class TestOutcomes:
    @pytest.mark.parametrize("kind", KINDS)
    def test_exception_is_counted_and_propagates_as_the_same_object(self, kind, clock):
        """An exception is status error, counted by class, still timed, and re-raised as itself."""
        op, t = unique("op"), unique()
        err = TimeoutError("remote timed out")
        decorated = instrument_connector_operation(op, connector_type="err")(make(kind, exc=err, items=(1,)))
        with pytest.raises(TimeoutError) as info:
            run(decorated, tenant_id=t)
        assert info.value is err
        assert any(frame.name == "work" for frame in info.traceback), "the raising frame stays in the traceback"
        assert _ops("err", op, "error", t) == 1
        assert _ops("err", op, "success", t) == 0
        errors = value(
            "connector_errors_total", connector_type="err", operation=op, error_type="TimeoutError", tenant_id=t
        )
        assert errors == 1
        assert _duration("err", op)[0] == 1

    @pytest.mark.parametrize("kind", ["coroutine", "async generator"])
    def test_cancellation_is_cancelled_not_error(self, kind):
        """asyncio cancellation is status cancelled, no error, and CancelledError still reaches the caller."""
        op, t = unique("op"), unique()
        decorated = instrument_connector_operation(op, connector_type="cancel")(make(kind, delay=10, items=(1,)))

        async def main():
            if kind == "coroutine":
                task = asyncio.create_task(decorated(tenant_id=t))
            else:

                async def consume():
                    async for _ in decorated(tenant_id=t):
                        pass

                task = asyncio.create_task(consume())
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert _ops("cancel", op, "cancelled", t) == 1
        assert _ops("cancel", op, "error", t) == 0
        assert _ops("cancel", op, "success", t) == 0

    def test_generator_closed_early_is_a_success_with_the_items_so_far(self):
        """A consumer that stops after 2 of 5 items: success, 2 records, and the body's finally runs."""
        t = unique()
        cleaned = []

        @instrument_sync_operation("posts", connector_type="early")
        def rows(tenant_id):
            try:
                yield from range(5)
            finally:
                cleaned.append(True)

        gen = rows(tenant_id=t)
        assert [next(gen), next(gen)] == [0, 1]
        gen.close()
        assert cleaned == [True]
        assert _ops("early", "rows", "success", t) == 1
        records = value("connector_sync_records_total", connector_type="early", resource_type="posts", tenant_id=t)
        assert records == 2

    def test_async_generator_closed_early_is_a_success(self):
        """aclose() after one item closes the body and records a success with 1 record."""
        t = unique()
        decorated = instrument_sync_operation("posts", connector_type="aearly")(make("async generator", items=range(9)))

        async def main():
            agen = decorated(tenant_id=t)
            assert await agen.__anext__() == 0
            await agen.aclose()

        asyncio.run(main())
        assert _ops("aearly", "work", "success", t) == 1
        assert value("connector_sync_records_total", connector_type="aearly", resource_type="posts", tenant_id=t) == 1

    @pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
    def test_keyboard_interrupt_and_system_exit_pass_untouched(self, exc_type):
        """KeyboardInterrupt and SystemExit propagate and record nothing."""
        op = unique("op")
        err = exc_type()
        decorated = instrument_connector_operation(op, connector_type="exit")(make("sync", exc=err))
        with pytest.raises(exc_type) as info:
            decorated()
        assert info.value is err
        assert _ops("exit", op, "error") == _ops("exit", op, "success") == 0
        assert _duration("exit", op) == (0, 0)


class TestGeneratorProtocol:
    def test_send_round_trip_and_return_value(self):
        """send() reaches the body and the return value survives ``yield from``."""

        @instrument_connector_operation("echo", connector_type="proto")
        def echo():
            received = yield "ready"
            while received is not None:
                received = yield received * 2
            return "bye"

        def outer():
            return (yield from echo())

        gen = outer()
        assert next(gen) == "ready"
        assert gen.send(21) == 42
        with pytest.raises(StopIteration) as info:
            gen.send(None)
        assert info.value.value == "bye"

    def test_throw_is_delivered_to_the_body(self):
        """throw() raises inside the body; what the body yields in response comes back."""

        @instrument_connector_operation("thrown", connector_type="proto")
        def body():
            while True:
                try:
                    yield "ok"
                except ValueError as exc:
                    yield f"caught {exc}"

        gen = body()
        next(gen)
        assert gen.throw(ValueError("boom")) == "caught boom"
        assert next(gen) == "ok"
        gen.close()

    def test_uncaught_throw_is_an_error_of_the_body(self):
        """An exception thrown in and not handled propagates as the same object and counts as an error."""
        t = unique()
        decorated = instrument_connector_operation("throw2", connector_type="proto")(make("generator", items=(1, 2)))
        gen = decorated(tenant_id=t)
        next(gen)
        err = KeyError("k")
        with pytest.raises(KeyError) as info:
            gen.throw(err)
        assert info.value is err
        assert _ops("proto", "throw2", "error", t) == 1

    def test_async_generator_asend_and_athrow(self):
        """asend() and athrow() behave as on the undecorated async generator."""

        @instrument_connector_operation("aecho", connector_type="proto")
        async def aecho():
            received = yield "ready"
            while True:
                try:
                    received = yield received * 2
                except ValueError:
                    received = yield "caught"

        async def main():
            agen = aecho()
            assert await agen.asend(None) == "ready"
            assert await agen.asend(5) == 10
            assert await agen.athrow(ValueError("x")) == "caught"
            assert await agen.asend(1) == 2
            await agen.aclose()

        asyncio.run(main())


def _connector_class(kind: str, deco):
    """A connector class with the sample of ``kind`` in every method placement."""
    method = make(kind, params="self, *args, tenant_id=None", name="method", items=(1,))
    cm = make(kind, params="cls, *args", name="cm", items=(1,))
    sm = make(kind, params="*args", name="sm", items=(1,))

    class Connector:
        config = Config("placed")
        tenant_id = "class_tenant"

        def __init__(self, tenant_id):
            self.tenant_id = tenant_id

        m = deco(method)
        cm_above = deco(classmethod(cm))
        cm_below = classmethod(deco(cm))
        sm_above = deco(staticmethod(sm))
        sm_below = staticmethod(deco(sm))

    return Connector


@pytest.mark.parametrize("kind", KINDS)
class TestPlacements:
    def test_instance_method_reads_labels_from_self(self, kind):
        """An instance method takes connector_type from self.config.id and tenant from self.tenant_id."""
        op, t = unique("op"), unique()
        cls = _connector_class(kind, instrument_connector_operation(op))
        run(cls(t).m)
        run(cls.m, cls(t))  # called through the class
        assert _ops("placed", op, "success", t) == 2
        assert kind_of(cls(t).m) == kind

    @pytest.mark.parametrize("placement", ["cm_above", "cm_below"])
    def test_classmethod_either_order_reads_labels_from_cls(self, kind, placement):
        """Above or below @classmethod, the call works and labels come from the class."""
        op = unique("op")
        cls = _connector_class(kind, instrument_connector_operation(op))
        run(getattr(cls, placement))
        run(getattr(cls("x"), placement))
        assert _ops("placed", op, "success", "class_tenant") == 2
        assert kind_of(getattr(cls, placement)) == kind

    @pytest.mark.parametrize("placement", ["sm_above", "sm_below"])
    def test_staticmethod_either_order(self, kind, placement):
        """Above or below @staticmethod, the call works; there is no self to read labels from."""
        op = unique("op")
        cls = _connector_class(kind, instrument_connector_operation(op))
        run(getattr(cls, placement))
        run(getattr(cls("x"), placement))
        assert _ops("unknown", op, "success") == 2
        assert kind_of(getattr(cls, placement)) == kind


def test_bare_decorator_uses_the_function_name():
    """@instrument_connector_operation without parentheses names the operation after the function."""
    t = unique()

    @instrument_connector_operation
    def get_pages(tenant_id):
        return []

    get_pages(tenant_id=t)
    assert _ops("unknown", "get_pages", "success", t) == 1


def test_classmethod_over_the_decorator_finds_cls():
    """@classmethod over the decorator (unbound call since Python 3.13): labels still come from cls."""
    op = unique("op")

    class C:
        config = Config("py313")
        tenant_id = "t313"

        @classmethod
        @instrument_connector_operation(op)
        def ping(cls):
            return cls

    assert C.ping() is C
    assert _ops("py313", op, "success", "t313") == 1


def test_stacked_decorators_each_record():
    """Two bizmetrics decorators on one async method both record, with labels from self."""
    t = unique()

    class Flow:
        tenant_id = t
        workflow_id = unique("wf")
        config = Config("stacked")

        @instrument_sync_operation("rows")
        @instrument_connector_operation("inner")
        async def go(self, x):
            return [x]

    assert asyncio.run(Flow().go(3)) == [3]
    assert _ops("stacked", "inner", "success", t) == 1
    assert _ops("stacked", "go", "success", t) == 1


def test_bound_methods_and_callable_objects_can_be_wrapped():
    """Decorating an already bound method reads labels from its instance; callable objects work too."""
    t = unique()

    class Conn:
        tenant_id = t
        config = Config("bound")

        def fetch(self):
            return "ok"

    class Job:
        def __call__(self, tenant_id):
            return "done"

    fetch = instrument_connector_operation("bound_op")(Conn().fetch)
    job = instrument_connector_operation("job_op", connector_type="callable")(Job())
    assert fetch() == "ok"
    assert job(tenant_id=t) == "done"
    assert _ops("bound", "bound_op", "success", t) == 1
    assert _ops("callable", "job_op", "success", t) == 1


def test_bare_sync_operation_decorator_is_refused_with_the_right_use():
    """@instrument_sync_operation without resource_type raises TypeError showing the right use."""
    with pytest.raises(TypeError, match=r"instrument_sync_operation\(['\"]"):

        class Connector:
            @instrument_sync_operation
            def fetch(self) -> list[int]:
                return [1]

    with pytest.raises(TypeError, match="resource_type"):
        instrument_sync_operation(classmethod(lambda cls: None))  # type: ignore[arg-type]


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


def _impl_kept_undecorated() -> int:
    return 1


decorated_under_another_name = instrument_connector_operation("other")(_impl_kept_undecorated)


def test_pickling_a_decorated_function_whose_name_holds_something_else_fails():
    """If the qualified name resolves to the undecorated function, pickling fails, as pickle does for functions."""
    with pytest.raises(pickle.PicklingError, match="not the same object"):
        pickle.dumps(decorated_under_another_name)
