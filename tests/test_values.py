"""Label values and numbers: bad input never raises, gets its documented treatment, is logged, and keeps the exposition
valid; enums, unhashable values and number-likes record under one documented value.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.registry import clear_catalogue, unique, value
from support.strategies import label_values, numbers

import bizmetrics
from bizmetrics import (
    _log,
    _values,
    instrument_agent,
    instrument_connector_operation,
    instrument_sync_operation,
)

HELPERS = [
    lambda v, n: bizmetrics.record_connector_operation(v, v, n, True, v),
    lambda v, n: bizmetrics.record_connector_operation(v, "op", n, False, v, error_type=v),
    lambda v, n: bizmetrics.record_connector_sync(v, v, n, v),
    lambda v, n: bizmetrics.record_workflow_execution(v, n, False, v, error_type=v),
    lambda v, n: bizmetrics.record_workflow_step(v, v, n),
    lambda v, n: bizmetrics.record_agent_invocation(v, n, n, True, v),
    lambda v, n: bizmetrics.record_api_request(v, v, n, n, v),
    lambda v, n: bizmetrics.record_db_query(v, n),
    lambda v, n: bizmetrics.set_db_pool_size(v, n),
    lambda v, n: bizmetrics.inc_db_pool_size(v, n),
    lambda v, n: bizmetrics.dec_db_pool_size(v, n),
    lambda v, n: bizmetrics.record_cache_hit(v, n),
    lambda v, n: bizmetrics.record_cache_miss(v, n),
]


def _parse_exposition() -> None:
    text = generate_latest().decode("utf-8")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert isinstance(sample.value, float)


@given(label=label_values, number=numbers, helper=st.sampled_from(HELPERS))
def test_helpers_never_raise_and_exposition_stays_parseable(label, number, helper):
    """Any label value and any number, into any helper: no exception, and /metrics still parses."""
    # Each example's own series only: the earlier examples' were parsed in their turn.
    clear_catalogue()
    helper(label, number)
    _parse_exposition()


@given(label=label_values)
def test_label_cleaning_rules(label):
    """Clean labels are str, non-empty, at most MAX_LABEL_LENGTH, with no control characters, valid UTF-8;
    a label that already is all of that comes back unchanged."""
    clean = _values.label(label, "x")
    assert type(clean) is str and clean
    assert len(clean) <= _values.MAX_LABEL_LENGTH
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in clean)
    clean.encode("utf-8")
    if (
        type(label) is str
        and label
        and len(label) <= _values.MAX_LABEL_LENGTH
        and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in label)
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in label)
    ):
        assert clean == label


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (None, "unknown"),
        ("", "unknown"),
        (123, "123"),
        ("a\nb", "a_b"),
        ("tab\there", "tab_here"),
        ("x" * 500, "x" * 128),
        ("\udc80bad", "?bad"),
        ("ünïcødé ✓", "ünïcødé ✓"),
    ],
)
def test_label_cleaning_examples(raw, clean):
    """The documented examples of label cleaning."""
    assert _values.label(raw, "x") == clean


def test_none_label_becomes_unknown_in_the_registry():
    """A None connector_type is recorded as connector_type="unknown"."""
    t = unique()
    bizmetrics.record_connector_operation(None, "op", 1, True, t)  # type: ignore[arg-type]
    assert (
        value("connector_operations_total", connector_type="unknown", operation="op", status="success", tenant_id=t)
        == 1
    )


def test_str_and_int_labels_do_not_collide():
    """tenant 1, True and "1" are cleaned separately, never served from one another's cache entry."""
    op = unique("op")
    for tenant in (1, True, "1"):
        bizmetrics.record_connector_operation("wp", op, 1, True, tenant)  # type: ignore[arg-type]
    labels = {"connector_type": "wp", "operation": op, "status": "success"}
    assert value("connector_operations_total", **labels, tenant_id="1") == 2
    assert value("connector_operations_total", **labels, tenant_id="True") == 1


@pytest.mark.parametrize(
    ("duration", "observed", "total"),
    [(-5, 1, 0.0), (math.nan, 0, 0.0), (math.inf, 0, 0.0), ("12", 1, 12.0), ("abc", 0, 0.0), (None, 0, 0.0)],
)
def test_duration_rules(duration, observed, total):
    """Negative durations clamp to 0; NaN, inf and non-numbers drop the observation but still count the call."""
    op = unique("op")
    t = unique()
    bizmetrics.record_connector_operation("wp", op, duration, True, t)
    assert value("connector_operations_total", connector_type="wp", operation=op, status="success", tenant_id=t) == 1
    assert value("connector_operation_duration_count", connector_type="wp", operation=op) == observed
    assert value("connector_operation_duration_sum", connector_type="wp", operation=op) == total


@pytest.mark.parametrize("count", [-3, math.nan, math.inf, True, "many", None])
def test_bad_record_counts_add_nothing(count):
    """Negative, NaN, infinite, boolean and non-numeric record counts add 0 records; the sync still counts."""
    t = unique()
    bizmetrics.record_connector_sync("wp", "posts", count, t)
    labels = {"connector_type": "wp", "resource_type": "posts", "tenant_id": t}
    assert value("connector_sync_operations_total", **labels, status="success") == 1
    assert value("connector_sync_records_total", **labels) == 0


def test_bad_input_is_logged_and_rate_limited(caplog):
    """Bad input logs one warning on the bizmetrics logger, then stays quiet for LOG_INTERVAL."""
    _log.reset()
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        for _ in range(100):
            bizmetrics.record_connector_operation("wp", "op", -1, True, unique())
    records = [r for r in caplog.records if r.name == "bizmetrics" and "negative" in r.getMessage()]
    assert len(records) == 1


def test_broken_registry_never_reaches_the_caller(monkeypatch, caplog):
    """A failure inside prometheus_client is caught and logged; the helper returns normally."""
    from prometheus_client.values import MutexValue

    def explode(*args, **kwargs):
        raise RuntimeError("registry on fire")

    class ExplodingLock:
        __enter__ = __exit__ = explode

    for broken in ((bizmetrics._families, "LOCK", ExplodingLock()), (MutexValue, "inc", explode)):
        with monkeypatch.context() as patched:
            patched.setattr(*broken)
            # MutexValue.inc is only called on the public path: exemplars, fixed durations.
            patched.setattr(bizmetrics._trace, "ACTIVE", broken[1] == "inc")
            _log.reset()
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="bizmetrics"):
                bizmetrics.record_connector_operation("wp", "op", 1, True, "t")
            assert any("record_connector_operation" in r.getMessage() for r in caplog.records), broken


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
