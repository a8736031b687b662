"""The engine: wrapper classes, binding in a class body, and the outcome rules stated once."""

from __future__ import annotations

import asyncio
import logging

import pytest
from helpers import unique, value

import bizmetrics._instrument as engine
from bizmetrics import instrument_connector_operation


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
    import threading

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
