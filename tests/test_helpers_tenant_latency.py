"""Latency per customer, opt-in: ``track_tenant_latency`` and ``BIZMETRICS_TENANT_LATENCY``."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.registry import exists, unique, value

import bizmetrics
from bizmetrics import _families, metrics
from bizmetrics.wsgi import MetricsMiddleware

BY_TENANT = {
    "connector": ("connector_operation_duration_by_tenant", metrics.CONNECTOR_BUCKETS),
    "api": ("api_request_duration_by_tenant", metrics.API_BUCKETS),
    "workflow": ("workflow_execution_duration_by_tenant", metrics.WORKFLOW_BUCKETS),
    "agent": ("agent_response_duration_by_tenant", metrics.AGENT_BUCKETS),
}


def _record_each(tenant: str, ms: float, ok: bool = True) -> None:
    bizmetrics.record_connector_operation(unique("c"), "op", ms, ok, tenant)
    bizmetrics.record_api_request("GET", "/t", 200 if ok else 503, ms, tenant)
    bizmetrics.record_workflow_execution(unique("w"), ms, ok, tenant)
    bizmetrics.record_agent_invocation(unique("a"), ms, 0, ok, tenant)


def _count(family: str, tenant: str) -> float:
    name = BY_TENANT[family][0]
    return value(f"{name}_count", tenant_id=tenant) if exists(f"{name}_count", tenant_id=tenant) else 0.0


@given(st.lists(st.tuples(st.floats(min_value=0, max_value=400_000), st.booleans()), min_size=1, max_size=20))
def test_tracked_tenant_durations_are_recorded_per_tenant_exactly(calls):
    """Every connector, API, workflow and agent duration of a tracked tenant lands in its histogram, buckets exact."""
    tenant = unique("key")
    bizmetrics.track_tenant_latency(tenant)
    for ms, ok in calls:
        _record_each(tenant, ms, ok)
    for name, bounds in BY_TENANT.values():
        assert value(f"{name}_count", tenant_id=tenant) == len(calls)
        assert value(f"{name}_sum", tenant_id=tenant) == pytest.approx(sum(ms for ms, _ in calls))
        for bound in bounds:
            expected = sum(1 for ms, _ in calls if ms <= bound)
            assert value(f"{name}_bucket", tenant_id=tenant, le=repr(float(bound))) == expected, (name, bound)


def test_untracked_tenants_add_nothing():
    """A tenant nobody named has no per-tenant series, and its bundles are the plain classes (no work per call)."""
    tenant = unique("other")
    _record_each(tenant, 12.0)
    assert all(not exists(f"{name}_count", tenant_id=tenant) for name, _ in BY_TENANT.values())
    assert type(_families.API_FAMILY.get("GET", "/t", tenant)) is _families._Api
    assert type(_families.WORKFLOW_FAMILY.get("w", tenant)) is _families._Workflow
    tracked = unique("key")
    bizmetrics.track_tenant_latency(tracked)
    assert type(_families.API_FAMILY.get("GET", "/t", tracked)) is _families._TrackedApi
    assert type(_families.API_FAMILY.get("GET", "/t", tenant)) is _families._Api


def test_tracking_a_tenant_that_already_recorded_takes_effect_at_once():
    """Bundles made before ``track_tenant_latency`` are made again: the next record is per tenant too."""
    tenant = unique("late")
    _record_each(tenant, 5.0)
    bizmetrics.track_tenant_latency(tenant)
    _record_each(tenant, 5.0)
    assert [_count(family, tenant) for family in BY_TENANT] == [1.0, 1.0, 1.0, 1.0]


def test_decorators_and_middleware_record_per_tenant():
    """The decorators (sync and async) and the WSGI middleware feed the per-tenant histograms as the helpers do."""
    tenant = unique("deco")
    bizmetrics.track_tenant_latency(tenant)

    @bizmetrics.instrument_connector_operation("get")
    def get(tenant_id: str) -> int:
        return 1

    @bizmetrics.instrument_workflow("flow")
    async def flow(tenant_id: str) -> int:
        return 2

    @bizmetrics.instrument_agent("helper")
    def agent(tenant_id: str) -> str:
        raise ValueError("fails: still timed")

    assert get(tenant_id=tenant) == 1
    assert asyncio.run(flow(tenant_id=tenant)) == 2
    with pytest.raises(ValueError):
        agent(tenant_id=tenant)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = MetricsMiddleware(app, tenant="X-Tenant-ID")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "HTTP_X_TENANT_ID": tenant, "wsgi.input": None}
    body = wrapped(environ, lambda status, headers, exc_info=None: None)
    assert b"".join(body) == b"ok"
    if hasattr(body, "close"):
        body.close()
    assert [_count(family, tenant) for family in BY_TENANT] == [1.0, 1.0, 1.0, 1.0]


def test_track_tenant_latency_swallows_bad_input(caplog):
    """A tenant id of any type is cleaned like a label; nothing raises into the application."""
    bizmetrics.track_tenant_latency(None, 3, "", object())  # type: ignore[arg-type]
    bizmetrics.track_tenant_latency()


SCRIPT = """
import os, bizmetrics
from prometheus_client import generate_latest
bizmetrics.limit_tenants(1)
bizmetrics.record_api_request("GET", "/x", 200, 40.0, "first")  # takes the one place under the cap
for tenant in ("acme", "globex", "initech"):
    bizmetrics.record_api_request("GET", "/x", 200, 40.0, tenant)
    bizmetrics.record_connector_operation("wp", "get", 40.0, True, tenant)
print(generate_latest().decode())
"""


def _run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env={**_clean_env(), **env}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("BIZMETRICS_")}


@pytest.mark.slow
def test_environment_variable_names_tenants_with_namespace_buckets_and_cap():
    """BIZMETRICS_TENANT_LATENCY=first,acme: per-tenant series with the namespace and buckets; over the cap, none."""
    out = _run(
        {
            "BIZMETRICS_TENANT_LATENCY": " first, acme ,",
            "BIZMETRICS_NAMESPACE": "shop",
            "BIZMETRICS_BUCKETS_API": "50,100",
        }
    )
    assert 'shop_api_request_duration_by_tenant_bucket{le="50.0",tenant_id="first"} 1.0' in out
    assert 'shop_api_request_duration_by_tenant_bucket{le="100.0",tenant_id="first"} 1.0' in out
    assert 'shop_connector_operation_duration_by_tenant_count{tenant_id="first"} 0.0' not in out
    # acme is tracked but over the cap of one tenant: recorded as __overflow__, which is never tracked.
    assert 'tenant_id="acme"' not in out
    assert 'shop_api_request_duration_by_tenant_count{tenant_id="__overflow__"}' not in out
    assert "globex" not in out and "initech" not in out
    # Exactly the documented series per tracked tenant: 2 bounds + Inf buckets, count, sum, created.
    lines = [line for line in out.splitlines() if line.startswith("shop_api_request_duration_by_tenant")]
    assert len(lines) == 3 + 3


@pytest.mark.slow
def test_without_the_variable_nothing_is_recorded_per_tenant():
    """With no BIZMETRICS_TENANT_LATENCY and no call, the per-tenant histograms have no series at all."""
    out = _run({"BIZMETRICS_MAX_TENANTS": "10"})
    assert "_by_tenant_count{" not in out
