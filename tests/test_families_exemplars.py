"""Exemplars written straight into the value cells: what prometheus_client's own ``inc``/``observe`` would keep."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from support.registry import unique

import bizmetrics
from bizmetrics import _families, _trace
from bizmetrics.metrics import CONNECTOR_OPERATION_DURATION, CONNECTOR_OPERATIONS

# Written for status classes (4xx): the exact codes of the default are in test_helpers_http_status.py.
pytestmark = pytest.mark.usefixtures("http_status_classes")

durations = st.floats(min_value=0, max_value=1e7, allow_nan=False) | st.sampled_from([0.0, 5.0, 10.0, 1e9])
traces = st.from_regex(r"[0-9a-f]{1,32}", fullmatch=True)


def exemplars(child: Any) -> list[tuple[int, Any, float]]:
    """(bucket index or -1 for a counter, labels, value) of every exemplar a child holds; timestamps aside."""
    if hasattr(child, "_buckets"):
        return [(i, b._exemplar.labels, b._exemplar.value) for i, b in enumerate(child._buckets) if b._exemplar]
    found = child._value._exemplar
    return [(-1, found.labels, found.value)] if found else []


@given(calls=st.lists(st.tuples(durations, traces, st.booleans()), min_size=1, max_size=6))
def test_the_cells_hold_what_prometheus_clients_public_api_would(calls: list[tuple[float, str, bool]]) -> None:
    """Counts, sums, buckets and each bucket's and counter's latest exemplar match ``inc``/``observe(exemplar=)``."""
    assert _trace.TRACED_FAST
    connector, tenant = unique("c"), unique("t")
    registry = CollectorRegistry()
    calls_ref = Counter("ref_ops", "", ["status"], registry=registry)
    duration_ref = Histogram("ref_ms", "", buckets=CONNECTOR_OPERATION_DURATION._upper_bounds[:-1], registry=registry)
    for ms, trace, ok in calls:
        with bizmetrics.trace_context(trace, "5pan"):
            bizmetrics.record_connector_operation(connector, "op", ms, ok, tenant, error_type="E")
        labels = {"trace_id": trace, "span_id": "5pan"}
        calls_ref.labels("success" if ok else "error").inc(1, exemplar=labels)
        duration_ref.observe(ms, exemplar=labels)
    for status in ("success", "error"):
        ours = CONNECTOR_OPERATIONS.labels(connector, "op", status, tenant)
        theirs = calls_ref.labels(status)
        assert ours._value._value == theirs._value._value
        assert exemplars(ours) == exemplars(theirs)
    ours_h = CONNECTOR_OPERATION_DURATION.labels(connector, "op")
    assert [b._value for b in ours_h._buckets] == [b._value for b in duration_ref._buckets]
    assert ours_h._sum._value == duration_ref._sum._value
    assert exemplars(ours_h) == exemplars(duration_ref)


@given(names=st.lists(st.text(max_size=6) | st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,5}", fullmatch=True), max_size=3))
def test_label_names_checked_once_per_key_set_give_the_same_verdict_every_time(names: list[str]) -> None:
    """Plain label names (not ``__``) are taken, nothing prometheus_client refuses is, and the verdict never changes."""
    import re

    try:
        from prometheus_client.validation import _validate_exemplar
    except ImportError:  # prometheus_client before 0.22
        from prometheus_client.metrics import _validate_exemplar  # type: ignore[attr-defined,no-redef]

    labels = dict.fromkeys(names, "v")
    first = _trace.valid_exemplar(labels)
    if first is not None:
        _validate_exemplar(first)  # never one prometheus_client would refuse
    plain = all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", n) and not n.startswith("__") for n in names)
    assert (first is not None) == (plain and bool(names))
    for _ in range(3):
        assert _trace.valid_exemplar(dict(labels)) == first


def test_a_trace_on_every_family_lands_in_its_cells() -> None:
    """Workflows, steps, DB queries, API requests and agents' first tokens carry the trace on the fast path."""
    wf, t = unique("wf"), unique("t")
    with bizmetrics.trace_context("abc", "def"):
        bizmetrics.record_workflow_execution(wf, 12.0, False, t, error_type="Boom")
        bizmetrics.record_workflow_step(wf, "s", 3.0)
        bizmetrics.record_api_request("GET", f"/{wf}", 503, 4.0, tenant_id=t)
        _families.AGENT_FAMILY.get(wf, t, "").first_item(7.0)
    from bizmetrics.metrics import (
        AGENT_TIME_TO_FIRST_TOKEN,
        API_ERRORS,
        API_REQUEST_DURATION,
        API_REQUESTS,
        WORKFLOW_EXECUTION_DURATION,
        WORKFLOW_EXECUTIONS,
        WORKFLOW_FAILURES,
        WORKFLOW_STEP_DURATION,
    )

    trace = {"trace_id": "abc", "span_id": "def"}
    assert exemplars(WORKFLOW_EXECUTIONS.labels(wf, "error", t)) == [(-1, trace, 1)]
    assert WORKFLOW_FAILURES.labels(wf, "Boom", t)._value._value == 1
    assert [e[1:] for e in exemplars(WORKFLOW_EXECUTION_DURATION.labels(wf))] == [(trace, 12.0)]
    assert [e[1:] for e in exemplars(WORKFLOW_STEP_DURATION.labels(wf, "s"))] == [(trace, 3.0)]
    assert exemplars(API_REQUESTS.labels("GET", f"/{wf}", "5xx", t)) == [(-1, trace, 1)]
    assert API_ERRORS.labels("GET", f"/{wf}", "5xx", t)._value._value == 1
    assert [e[1:] for e in exemplars(API_REQUEST_DURATION.labels("GET", f"/{wf}"))] == [(trace, 4.0)]
    assert [e[1:] for e in exemplars(AGENT_TIME_TO_FIRST_TOKEN.labels(wf))] == [(trace, 7.0)]
