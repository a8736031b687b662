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


def test_a_function_assigned_in_a_class_body_becomes_a_method_without_changing_the_original():
    """``__set_name__`` gives the class a wrapper built as a method; the module-level one stays a function."""

    def sync(this, tenant_id=None):  # first parameter not called self
        return this

    decorated = instrument_connector_operation("assigned")(sync)
    tenant = unique()

    class Connector:
        config = Config()
        tenant_id = tenant
        run = decorated

    connector = Connector()
    assert connector.run() is connector
    assert (
        value(
            "connector_operations_total",
            connector_type="named",
            operation="assigned",
            status="success",
            tenant_id=tenant,
        )
        == 1
    )
    # The original object is untouched: called directly, its first argument is not read as self.
    other = unique()
    assert decorated(connector, tenant_id=other) is connector
    assert (
        value(
            "connector_operations_total",
            connector_type="unknown",
            operation="assigned",
            status="success",
            tenant_id=other,
        )
        == 1
    )
    assert Connector.__dict__["run"] is not decorated
