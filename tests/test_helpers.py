"""Each record helper's effect, as before/after deltas on the default registry."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.registry import unique, value
from support.strategies import clean_labels

import bizmetrics
from bizmetrics import (
    tenant_context,
    workflow_context,
)

# Written for status classes (4xx): the exact codes of the default are in test_helpers_http_status.py.
pytestmark = pytest.mark.usefixtures("http_status_classes")


@given(ct=clean_labels, op=clean_labels, ms=st.floats(0, 1e6), ok=st.booleans())
def test_record_connector_operation(ct, op, ms, ok):
    """Counts one operation under its status, observes its duration, and counts an error on failure."""
    t = unique()
    labels = {"connector_type": ct, "operation": op}
    count0 = value("connector_operation_duration_count", **labels)
    sum0 = value("connector_operation_duration_sum", **labels)
    bizmetrics.record_connector_operation(connector_type=ct, operation=op, duration_ms=ms, success=ok, tenant_id=t)
    status = "success" if ok else "error"
    assert value("connector_operations_total", **labels, status=status, tenant_id=t) == 1
    assert value("connector_operation_duration_count", **labels) == count0 + 1
    assert math.isclose(value("connector_operation_duration_sum", **labels), sum0 + ms, rel_tol=1e-9, abs_tol=1e-6)
    assert value("connector_errors_total", **labels, error_type="unknown", tenant_id=t) == (0 if ok else 1)


def test_record_connector_operation_error_type():
    """error_type names the error class on connector_errors_total."""
    t = unique()
    bizmetrics.record_connector_operation("wp", "op", 1, False, t, error_type="TimeoutError")
    assert (
        value("connector_errors_total", connector_type="wp", operation="op", error_type="TimeoutError", tenant_id=t)
        == 1
    )


@given(count=st.integers(0, 10**6))
def test_record_connector_sync(count):
    """Counts one sync operation and adds its records."""
    t = unique()
    bizmetrics.record_connector_sync(connector_type="wp", resource_type="posts", record_count=count, tenant_id=t)
    labels = {"connector_type": "wp", "resource_type": "posts", "tenant_id": t}
    assert value("connector_sync_operations_total", **labels, status="success") == 1
    assert value("connector_sync_records_total", **labels) == count


def test_record_workflow_execution():
    """Counts executions by status, observes durations and counts failures by error type."""
    t, wf = unique(), unique("wf")
    bizmetrics.record_workflow_execution(workflow_id=wf, duration_ms=100, success=True, tenant_id=t)
    bizmetrics.record_workflow_execution(wf, 300, False, t, error_type="StepFailed")
    assert value("workflow_executions_total", workflow_id=wf, status="success", tenant_id=t) == 1
    assert value("workflow_executions_total", workflow_id=wf, status="error", tenant_id=t) == 1
    assert value("workflow_execution_duration_sum", workflow_id=wf) == 400
    assert value("workflow_execution_duration_bucket", workflow_id=wf, le="100.0") == 1
    assert value("workflow_failures_total", workflow_id=wf, error_type="StepFailed", tenant_id=t) == 1


def test_record_workflow_step_uses_the_workflow_context():
    """A step with workflow_id None takes the one set by workflow_context, else 'unknown'."""
    wf, step = unique("wf"), unique("step")
    with workflow_context(wf):
        bizmetrics.record_workflow_step(None, step, 20)
    bizmetrics.record_workflow_step(None, step, 30)
    bizmetrics.record_workflow_step(workflow_id="explicit", step=step, duration_ms=40)
    assert value("workflow_step_duration_sum", workflow_id=wf, step=step) == 20
    assert value("workflow_step_duration_sum", workflow_id="unknown", step=step) == 30
    assert value("workflow_step_duration_sum", workflow_id="explicit", step=step) == 40


@given(tokens=st.integers(0, 10**7), ok=st.booleans())
def test_record_agent_invocation(tokens, ok):
    """Counts the invocation by status, observes latency and adds tokens, even for failed calls."""
    t, agent = unique(), unique("agent")
    bizmetrics.record_agent_invocation(agent_id=agent, duration_ms=250, tokens_used=tokens, success=ok, tenant_id=t)
    status = "success" if ok else "error"
    assert value("agent_invocations_total", agent_id=agent, status=status, tenant_id=t) == 1
    assert value("agent_tokens_used_total", agent_id=agent, tenant_id=t) == tokens
    assert value("agent_response_duration_count", agent_id=agent) == 1
    assert value("agent_errors_total", agent_id=agent, error_type="unknown", tenant_id=t) == (0 if ok else 1)


@pytest.mark.parametrize(
    ("code", "status", "is_error"),
    [(200, "2xx", False), (201, "2xx", False), (302, "3xx", False), (404, "4xx", True), (503, "5xx", True)],
)
def test_record_api_request(code, status, is_error):
    """Counts requests by status class; 4xx and 5xx are also api errors."""
    t, ep = unique(), unique("/ep")
    bizmetrics.record_api_request(method="get", endpoint=ep, status_code=code, duration_ms=12.5, tenant_id=t)
    labels = {"method": "GET", "endpoint": ep}
    assert value("api_requests_total", **labels, status=status, tenant_id=t) == 1
    assert value("api_errors_total", **labels, status=status, tenant_id=t) == (1 if is_error else 0)
    assert value("api_request_duration_sum", **labels) == 12.5


def test_record_api_request_odd_method_and_status():
    """Unknown methods are 'OTHER'; a status code outside 100-599 is class 'unknown'."""
    t, ep = unique(), unique("/ep")
    bizmetrics.record_api_request("BREW", ep, 999, 1, t)
    assert value("api_requests_total", method="OTHER", endpoint=ep, status="unknown", tenant_id=t) == 1


def test_record_db_query():
    """Observes the query duration under its operation."""
    op = unique("op")
    bizmetrics.record_db_query(operation=op, duration_ms=3.5)
    bizmetrics.record_db_query(op, 0.5)
    assert value("db_query_duration_count", operation=op) == 2
    assert value("db_query_duration_sum", operation=op) == 4
    assert value("db_query_duration_bucket", operation=op, le="1.0") == 1


def test_pool_size_set_inc_dec():
    """The pool gauge is set, grown and shrunk."""
    pool = unique("pool")
    bizmetrics.set_db_pool_size(pool, 10)
    bizmetrics.inc_db_pool_size(pool)
    bizmetrics.inc_db_pool_size(pool, 4)
    bizmetrics.dec_db_pool_size(pool, 2)
    assert value("db_connection_pool_size", pool=pool) == 13


def test_cache_hits_and_misses():
    """Hits and misses are counted per cache."""
    cache = unique("cache")
    bizmetrics.record_cache_hit(cache)
    bizmetrics.record_cache_hit(cache, 2)
    bizmetrics.record_cache_miss(cache)
    assert value("cache_hits_total", cache=cache) == 3
    assert value("cache_misses_total", cache=cache) == 1


def test_tenant_defaults_to_context_then_default_tenant():
    """Without tenant_id, helpers use tenant_context, else 'default_tenant'."""
    t, op = unique(), unique("op")
    with tenant_context(t):
        bizmetrics.record_connector_operation("wp", op, 1, True)
    bizmetrics.record_connector_operation("wp", op, 1, True)
    assert value("connector_operations_total", connector_type="wp", operation=op, status="success", tenant_id=t) == 1
    assert (
        value(
            "connector_operations_total",
            connector_type="wp",
            operation=op,
            status="success",
            tenant_id="default_tenant",
        )
        == 1
    )


@pytest.mark.parametrize(
    ("method", "expected"),
    [(b"GET", "GET"), (b"post", "POST"), (b"PATCH", "PATCH"), (b"BREW", "OTHER"), ("brew", "OTHER"), (None, "OTHER")],
)
def test_http_methods_given_as_bytes_are_decoded(method, expected):
    """bytes methods are decoded and upper-cased; standard methods are kept, anything else is OTHER."""
    endpoint = "/" + unique()
    bizmetrics.record_api_request(method, endpoint, 200, 1, "acme")
    assert value("api_requests_total", method=expected, endpoint=endpoint, status="2xx", tenant_id="acme") == 1


#: Every helper that records, called as an application would (a fresh tenant where it takes one).
HELPER_CALLS = [
    ("record_connector_operation", ("crm", "sync", 5, False), {"error_type": "Timeout"}),
    ("record_connector_sync", ("crm", "contacts", 3, True), {}),
    ("record_workflow_execution", ("wf", 5, False), {}),
    ("record_workflow_step", ("wf", "step", 5), {}),
    ("record_agent_invocation", ("agent", 5, 10, True), {}),
    ("record_agent_invocation", ("agent", 5, 10, True), {"usage": {"input": 7, "output": 3}}),
    ("record_tool_call", ("agent", "search", 5, False), {}),
    ("record_api_request", ("GET", "/x", 503, 5), {}),
    ("record_db_query", ("select", 5), {}),
    ("set_db_pool_size", ("pool", 3), {}),
    ("inc_db_pool_size", ("pool",), {}),
    ("dec_db_pool_size", ("pool",), {}),
    ("record_cache_hit", ("sessions",), {}),
    ("record_cache_miss", ("sessions",), {}),
]


@pytest.mark.parametrize(("helper", "args", "kwargs"), HELPER_CALLS, ids=lambda v: v if isinstance(v, str) else "")
def test_a_broken_registry_never_reaches_the_caller_and_is_logged(helper, args, kwargs, monkeypatch, caplog):
    """With labels() failing on every catalogue metric, each helper returns None and logs the failure once."""
    from bizmetrics import _cache, _log, metrics

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("registry is broken")

    class Broken:
        get = staticmethod(broken)

    for metric in metrics.CATALOGUE:
        monkeypatch.setattr(metric, "labels", broken)
    # The pool gauges' family holds the bound labels() of its gauge from import on.
    monkeypatch.setattr(bizmetrics.helpers, "POOL_FAMILY", Broken())
    _cache.invalidate_all()
    _log.reset()
    with tenant_context(unique()), caplog.at_level("ERROR", logger="bizmetrics"):
        assert getattr(bizmetrics, helper)(*args, **kwargs) is None
    failures = [
        r
        for r in caplog.records
        if r.getMessage() == f"bizmetrics: recording failed in {helper}; the application is unaffected"
    ]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert str(failures[0].exc_info[1]) == "registry is broken"
