"""The tenant cardinality guard, the metric namespace and bucket settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.registry import unique, value

import bizmetrics
from bizmetrics import OVERFLOW_TENANT, _tenants, instrument_connector_operation, instrument_sync_operation

# Written for status classes (4xx): the exact codes of the default are in test_helpers_http_status.py.
pytestmark = pytest.mark.usefixtures("http_status_classes")

OVERFLOW = "bizmetrics_tenant_overflow_total"


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> Callable[..., _tenants.Admission]:
    """Give the test a fresh admission (no tenant admitted yet) with the cap it asks for."""

    def make(max_tenants: int | None, pinned: tuple[str, ...] = ()) -> _tenants.Admission:
        monkeypatch.setattr(_tenants, "ADMISSION", _tenants.Admission(None))
        bizmetrics.limit_tenants(max_tenants, pinned=pinned)
        return _tenants.ADMISSION

    return make


def _ops(ct: str, tenant: str, status: str = "success", op: str = "fetch") -> float:
    return value("connector_operations_total", connector_type=ct, operation=op, status=status, tenant_id=tenant)


def test_tenants_over_the_cap_fold_into_overflow_with_other_labels_kept(cap):
    """The first N tenants keep their label; the rest record as __overflow__, counted, labels kept."""
    cap(3)
    ct = unique("ct")
    tenants = [unique() for _ in range(5)]
    before = value(OVERFLOW)

    @instrument_connector_operation("fetch", connector_type=ct)
    def fetch(tenant_id: str) -> int:
        return 1

    for tenant in tenants:
        fetch(tenant)
        fetch(tenant)
        bizmetrics.record_connector_sync(ct, "rows", 7, tenant)
    for tenant in tenants[:3]:
        assert _ops(ct, tenant) == 2
        assert value("connector_sync_records_total", connector_type=ct, resource_type="rows", tenant_id=tenant) == 7
    for tenant in tenants[3:]:
        assert _ops(ct, tenant) == 0
    assert _ops(ct, OVERFLOW_TENANT) == 4
    assert (
        value("connector_sync_records_total", connector_type=ct, resource_type="rows", tenant_id=OVERFLOW_TENANT) == 14
    )
    assert value(OVERFLOW) - before == 6
    assert value("bizmetrics_tenants_admitted") == 3


@given(outcomes=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=40))
def test_the_overflow_series_keeps_exact_error_ratios(outcomes):
    """Successes and failures of folded tenants keep their status: the overflow error ratio is exact."""
    saved = _tenants.ADMISSION
    _tenants.ADMISSION = _tenants.Admission(1)
    try:
        ct = unique("ct")
        tenants = [unique() for _ in range(6)]
        bizmetrics.record_connector_operation(ct, "fetch", 1, True, tenants[0])  # takes the one place
        expected = {"success": 0, "error": 0}
        for index, ok in outcomes:
            bizmetrics.record_connector_operation(ct, "fetch", 1, ok, tenants[index], error_type="Timeout")
            if index:
                expected["success" if ok else "error"] += 1
        assert _ops(ct, OVERFLOW_TENANT, "success") == expected["success"]
        assert _ops(ct, OVERFLOW_TENANT, "error") == expected["error"]
        errors = value(
            "connector_errors_total",
            connector_type=ct,
            operation="fetch",
            error_type="Timeout",
            tenant_id=OVERFLOW_TENANT,
        )
        assert errors == expected["error"]
    finally:
        _tenants.ADMISSION = saved


def test_default_and_pinned_tenants_are_always_admitted_and_not_counted(cap):
    """default_tenant and pinned tenants keep their label at a cap of 0 and do not use a place."""
    pinned = unique("vip")
    admission = cap(1, pinned=(pinned,))
    ct = unique("ct")
    first, second = unique(), unique()
    for tenant in (pinned, None, first, second):
        bizmetrics.record_connector_operation(ct, "fetch", 1, True, tenant)
    assert _ops(ct, pinned) == 1
    assert _ops(ct, "default_tenant") == 1
    assert _ops(ct, first) == 1
    assert _ops(ct, OVERFLOW_TENANT) == 1
    assert admission.admitted == {first}


def test_no_cap_admits_every_tenant(cap):
    """limit_tenants(None) disables the cap."""
    cap(None)
    ct = unique("ct")
    tenants = [unique() for _ in range(50)]
    for tenant in tenants:
        bizmetrics.record_connector_operation(ct, "fetch", 1, True, tenant)
    assert all(_ops(ct, t) == 1 for t in tenants)
    assert _ops(ct, OVERFLOW_TENANT) == 0


def test_the_cap_applies_to_every_way_a_tenant_arrives(cap):
    """Decorator argument, self.tenant_id, tenant_context and helpers all go through the one cap."""
    cap(1)
    ct = unique("ct")
    first = unique()

    class Connector:
        tenant_id = unique()

        @instrument_sync_operation("rows", connector_type=ct)
        def rows(self) -> list[int]:
            return [1, 2]

    bizmetrics.record_api_request("GET", "/x/" + ct, 200, 1, first)
    Connector().rows()
    with bizmetrics.tenant_context(unique()):
        bizmetrics.record_api_request("GET", "/x/" + ct, 500, 1)
    bizmetrics.record_agent_invocation(ct, 1, 5, True, unique())
    api = {"method": "GET", "endpoint": "/x/" + ct}
    assert value("api_requests_total", **api, status="2xx", tenant_id=first) == 1
    assert value("api_requests_total", **api, status="5xx", tenant_id=OVERFLOW_TENANT) == 1
    assert (
        value("connector_sync_records_total", connector_type=ct, resource_type="rows", tenant_id=OVERFLOW_TENANT) == 2
    )
    assert value("agent_tokens_used_total", agent_id=ct, tenant_id=OVERFLOW_TENANT) == 5


def test_reaching_the_cap_warns_once(cap, caplog):
    """One warning on the bizmetrics logger when the cap is first reached."""
    from bizmetrics import _log

    _log.reset()
    cap(1)
    ct = unique("ct")
    for _ in range(5):
        bizmetrics.record_connector_operation(ct, "fetch", 1, True, unique())
    warnings = [r for r in caplog.records if "tenant cap (1" in r.getMessage()]
    assert len(warnings) == 1


def test_limit_tenants_refuses_caps_that_are_not_counts():
    """A negative cap, or one that is not an int, is a programming error, refused at once."""
    with pytest.raises(ValueError, match="max_tenants"):
        bizmetrics.limit_tenants(-1)
    for wrong in ("5", 2.5, True):
        with pytest.raises(TypeError, match="max_tenants"):
            bizmetrics.limit_tenants(wrong)  # type: ignore[arg-type]


def test_a_single_pinned_tenant_may_be_given_as_a_string(cap):
    """pinned="acme" pins the tenant acme, not the letters a, c, m and e."""
    cap(0, pinned="acme")  # type: ignore[arg-type]
    ct = unique("ct")
    for tenant in ("acme", "a"):
        bizmetrics.record_connector_operation(ct, "fetch", 1, True, tenant)
    assert _ops(ct, "acme") == 1
    assert _ops(ct, OVERFLOW_TENANT) == 1


def _run(script: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BIZMETRICS_")}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, 2000), ("5", 5), ("0", 0), ("none", None), ("lots", 2000), ("-3", 2000)],
)
def test_the_default_cap_comes_from_the_environment(setting, expected):
    """BIZMETRICS_MAX_TENANTS sets the default cap (none disables it); unset or invalid, 2000."""
    env = {} if setting is None else {"BIZMETRICS_MAX_TENANTS": setting}
    proc = _run("import bizmetrics._tenants as t; print(t.ADMISSION.max_tenants)", env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(expected)
    if setting in ("lots", "-3"):
        assert "BIZMETRICS_MAX_TENANTS" in proc.stderr


_WORKER = """
import json, sys
import bizmetrics
order = json.loads(sys.argv[1])
for tenant in order:
    bizmetrics.record_connector_operation("mp", "fetch", 1, True, tenant)
"""

_COLLECT = """
import json
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
reg = CollectorRegistry()
MultiProcessCollector(reg)
out = {}
for family in reg.collect():
    for s in family.samples:
        if s.name in ("connector_operations_total", "bizmetrics_tenant_overflow_total", "bizmetrics_tenants_admitted"):
            out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
print(json.dumps(out))
"""


@pytest.mark.slow
def test_workers_share_admission_through_the_multiprocess_directory(tmp_path):
    """Three processes, a cap of 4, ten tenants each in another order: 4 admitted in all, the same everywhere."""
    tenants = [f"tenant_{i}" for i in range(10)]
    orders = [tenants, tenants[::-1], tenants[3:] + tenants[:3]]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "BIZMETRICS_MAX_TENANTS": "4"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, json.dumps(order)],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("BIZMETRICS_")}, **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        for order in orders
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    result = _run(_COLLECT, env)
    assert result.returncode == 0, result.stderr
    samples = json.loads(result.stdout)
    per_tenant = {
        json.loads(key[len("connector_operations_total") :])["tenant_id"]: v
        for key, v in samples.items()
        if key.startswith("connector_operations_total") and '"success"' in key
    }
    admitted = {t: v for t, v in per_tenant.items() if t != OVERFLOW_TENANT}
    assert len(admitted) == 4
    # Each admitted tenant has its own label in every process: 3 records each.
    assert set(admitted.values()) == {3.0}
    assert per_tenant[OVERFLOW_TENANT] == 30 - 12
    assert samples["bizmetrics_tenant_overflow_total{}"] == 18
    assert samples["bizmetrics_tenants_admitted{}"] == 4
    shared = (tmp_path / _tenants.ADMISSION_FILE).read_text().split()
    assert sorted(shared) == sorted(admitted)


# --- namespace, clashes, buckets --------------------------------------------------------


@pytest.mark.slow
def test_the_namespace_prefixes_every_catalogue_metric():
    """BIZMETRICS_NAMESPACE=acme exposes acme_connector_operations_total and so on; self-metrics keep their names."""
    script = """
    from prometheus_client import generate_latest
    import bizmetrics
    bizmetrics.record_connector_operation("ct", "op", 1, True, "t")
    bizmetrics.record_cache_hit("c")
    print(generate_latest().decode())
    """
    out = _run(script, {"BIZMETRICS_NAMESPACE": "acme"})
    assert out.returncode == 0, out.stderr
    # The text format names counter families with their _total.
    families = {
        line.split()[2].removesuffix("_total") for line in out.stdout.splitlines() if line.startswith("# TYPE ")
    }
    from bizmetrics import metrics

    catalogue = {m._name for m in metrics.CATALOGUE}
    assert {"acme_" + name for name in catalogue} <= families
    assert not catalogue & families
    assert {"bizmetrics_tenant_overflow", "bizmetrics_tenants_admitted"} <= families
    assert "\nacme_connector_operations_total{" in out.stdout
    plain = _run(script)
    assert "\nconnector_operations_total{" in plain.stdout


@pytest.mark.slow
def test_a_name_clash_names_the_metric_and_the_remedy():
    """An application metric already called cache_hits: importing bizmetrics fails and says what to do."""
    script = """
    from prometheus_client import Counter
    Counter("cache_hits", "mine", ["region"])
    import bizmetrics
    """
    out = _run(script)
    assert out.returncode != 0
    assert "cache_hits_total" in out.stderr and "BIZMETRICS_NAMESPACE" in out.stderr
    assert _run(script, {"BIZMETRICS_NAMESPACE": "acme"}).returncode == 0


@pytest.mark.slow
def test_bucket_settings_from_the_environment():
    """BIZMETRICS_BUCKETS_<FAMILY> sets a family's buckets; a bad value warns once and keeps the defaults."""
    script = """
    from prometheus_client import generate_latest
    from bizmetrics import metrics
    metrics.record_workflow_execution("wf", 3, True)
    print(metrics.WORKFLOW_BUCKETS, metrics.API_BUCKETS[:2], metrics.DB_BUCKETS[:2])
    print(generate_latest().decode())
    """
    env = {
        "BIZMETRICS_BUCKETS_WORKFLOW": "1, 2.5,5",
        "BIZMETRICS_BUCKETS_API": "5,2",
        "BIZMETRICS_BUCKETS_DB": "fast",
    }
    out = _run(script, env)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first == "(1.0, 2.5, 5.0) (1.0, 2.5) (0.5, 1.0)"
    assert 'workflow_execution_duration_bucket{le="5.0",workflow_id="wf"} 1.0' in out.stdout
    assert out.stderr.count("BIZMETRICS_BUCKETS_API") == 1 and out.stderr.count("BIZMETRICS_BUCKETS_DB") == 1


@pytest.mark.parametrize(
    ("buckets", "ms", "fast_bound"),
    [
        ("WORKFLOW_BUCKETS", 17, 25),
        ("WORKFLOW_STEP_BUCKETS", 3, 5),
        ("CONNECTOR_BUCKETS", 7, 10),
        ("AGENT_BUCKETS", 40, 50),
        ("API_BUCKETS", 2, 2.5),
        ("DB_BUCKETS", 0.4, 0.5),
    ],
)
def test_default_buckets_resolve_each_familys_fast_cases(buckets, ms, fast_bound):
    """A 17 ms workflow falls in a bucket no wider than 25 ms, and so on for each family's fast case."""
    from bizmetrics import metrics

    bounds: Any = getattr(metrics, buckets)
    assert min(b for b in bounds if b >= ms) == fast_bound
    assert {100.0, 500.0} <= set(metrics.CONNECTOR_BUCKETS)


def test_the_cap_applies_to_tenants_from_the_http_middleware(cap):
    """Forged X-Tenant-ID headers through the ASGI middleware: one admitted, the rest on __overflow__."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from test_asgi import run

    from bizmetrics.asgi import MetricsMiddleware

    cap(1)
    path = "/" + unique("p")

    async def handler(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route(path, handler)], middleware=[Middleware(MetricsMiddleware, tenant="X-Tenant-ID")])
    tenants = [unique() for _ in range(5)]
    for tenant in tenants:
        run(app, path, **{"X-Tenant-ID": tenant})
    series = {"method": "GET", "endpoint": path, "status": "2xx"}
    assert value("api_requests_total", **series, tenant_id=tenants[0]) == 1
    assert value("api_requests_total", **series, tenant_id=OVERFLOW_TENANT) == 4
    assert all(value("api_requests_total", **series, tenant_id=t) == 0 for t in tenants[1:])


@pytest.mark.slow
def test_an_application_metric_of_the_same_definition_is_reused_and_takes_the_shared_lock():
    """The application's own cache_hits_total (same labels) is reused: its children, old and new, take the lock."""
    script = """
    from prometheus_client import Counter
    mine = Counter("cache_hits", "mine", ["cache"])
    before = mine.labels("users")
    before.inc(2)
    import bizmetrics
    from bizmetrics import _fastpath, metrics
    assert metrics.CACHE_HITS is mine
    bizmetrics.record_cache_hit("users", 3)
    bizmetrics.record_cache_hit("orders")
    assert before._value._lock is _fastpath.LOCK
    assert mine.labels("orders")._value._lock is _fastpath.LOCK
    print(before._value.get(), mine.labels("orders")._value.get())
    """
    out = _run(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5.0", "1.0"]


@pytest.mark.slow
def test_fork_never_waits_for_the_shared_lock():
    """An application's own fork-safe lock (taken before a fork) held while recording: forks never deadlock."""
    script = """
    import os, threading, time
    pool_lock = threading.Lock()
    os.register_at_fork(before=pool_lock.acquire, after_in_parent=pool_lock.release, after_in_child=pool_lock.release)
    from bizmetrics import dec_db_pool_size, inc_db_pool_size
    stop = False
    def pool_worker():
        while not stop:
            with pool_lock:
                inc_db_pool_size("main")
                dec_db_pool_size("main")
    threading.Thread(target=pool_worker, daemon=True).start()
    time.sleep(0.05)
    for i in range(100):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    stop = True
    print("ok")
    """
    out = _run(script, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
def test_an_application_counter_subclass_is_reused_as_it_is():
    """The application's own Counter subclass (with slots) of the same definition: kept, and recorded into."""
    script = """
    from prometheus_client import Counter
    class MyCounter(Counter):
        __slots__ = ("owner",)
    mine = MyCounter("cache_hits", "mine", ["cache"])
    users = mine.labels("users")
    import bizmetrics
    from bizmetrics import _fastpath, metrics
    assert metrics.CACHE_HITS is mine and type(mine) is MyCounter
    bizmetrics.record_cache_hit("users", 2)
    bizmetrics.record_cache_hit("orders")
    assert users._value._lock is _fastpath.LOCK
    print(users._value.get(), mine.labels("orders")._value.get())
    """
    out = _run(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2.0", "1.0"]


def _folded_paths(ct: str) -> dict[str, Callable[[str], Any]]:
    """Every way one record of a tenant arrives, each a call that makes exactly one record."""

    @instrument_connector_operation("op", connector_type=ct)
    def op(tenant_id: str) -> int:
        return 1

    @instrument_sync_operation("rows", connector_type=ct)
    def rows(tenant_id: str) -> list[int]:
        return [1, 2]

    @bizmetrics.instrument_workflow(ct)
    def flow(tenant_id: str) -> int:
        return 1

    @bizmetrics.instrument_agent(ct)
    def agent(tenant_id: str) -> dict[str, Any]:
        return {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 2}}

    @bizmetrics.instrument_agent(ct)
    def stream(tenant_id: str) -> Any:
        yield {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}
        yield {"type": "message_delta", "usage": {"output_tokens": 4}}

    @bizmetrics.instrument_tool("t", agent_id=ct)
    def tool(tenant_id: str) -> int:
        return 1

    return {
        "connector decorator": op,
        "sync decorator": rows,
        "workflow decorator": flow,
        "agent decorator with usage": agent,
        "agent stream": lambda t: list(stream(t)),
        "tool decorator": tool,
        "record_connector_operation": lambda t: bizmetrics.record_connector_operation(ct, "op", 1, True, t),
        "record_connector_sync": lambda t: bizmetrics.record_connector_sync(ct, "rows", 3, t),
        "record_workflow_execution": lambda t: bizmetrics.record_workflow_execution(ct, 1, True, t),
        "record_agent_invocation with usage": lambda t: bizmetrics.record_agent_invocation(
            ct, 1, 5, True, t, model="m", usage={"input": 3, "output": 2}
        ),
        "record_tool_call": lambda t: bizmetrics.record_tool_call(ct, "t", 1, True, t),
        "record_api_request": lambda t: bizmetrics.record_api_request("GET", "/" + ct, 200, 1, t),
    }


def test_one_folded_record_adds_exactly_one_to_the_overflow_counter_whatever_the_path(cap):
    """Each path that folds a tenant's record counts that record once, tokens by type included."""
    cap(1)
    bizmetrics.record_api_request("GET", "/", 200, 1, unique())  # fills the cap
    for path, record in _folded_paths(unique("ct")).items():
        before = value(OVERFLOW)
        record(unique())
        assert value(OVERFLOW) - before == 1, path
