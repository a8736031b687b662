"""The catalogue: exposed names, types, labels, units and buckets, as Prometheus sees them."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.registry import exists, unique, value

import bizmetrics
import bizmetrics.helpers
import bizmetrics.metrics as m

# Written for status classes (4xx): the exact codes of the default are in test_helpers_http_status.py.
pytestmark = pytest.mark.usefixtures("http_status_classes")

# exposed family name, type, labels (without le), buckets (None: not a histogram)
CATALOGUE = [
    ("connector_operations", "counter", {"connector_type", "operation", "status", "tenant_id"}, None),
    ("connector_operation_duration", "histogram", {"connector_type", "operation"}, m.CONNECTOR_BUCKETS),
    ("connector_errors", "counter", {"connector_type", "operation", "error_type", "tenant_id"}, None),
    ("connector_sync_operations", "counter", {"connector_type", "resource_type", "status", "tenant_id"}, None),
    ("connector_sync_records", "counter", {"connector_type", "resource_type", "tenant_id"}, None),
    ("workflow_executions", "counter", {"workflow_id", "status", "tenant_id"}, None),
    ("workflow_execution_duration", "histogram", {"workflow_id"}, m.WORKFLOW_BUCKETS),
    ("workflow_step_duration", "histogram", {"workflow_id", "step"}, m.WORKFLOW_STEP_BUCKETS),
    ("workflow_failures", "counter", {"workflow_id", "error_type", "tenant_id"}, None),
    ("agent_invocations", "counter", {"agent_id", "status", "tenant_id"}, None),
    ("agent_response_duration", "histogram", {"agent_id"}, m.AGENT_BUCKETS),
    ("agent_tokens_used", "counter", {"agent_id", "tenant_id"}, None),
    ("agent_errors", "counter", {"agent_id", "error_type", "tenant_id"}, None),
    ("api_requests", "counter", {"method", "endpoint", "status", "tenant_id"}, None),
    ("api_request_duration", "histogram", {"method", "endpoint"}, m.API_BUCKETS),
    ("api_errors", "counter", {"method", "endpoint", "status", "tenant_id"}, None),
    ("db_query_duration", "histogram", {"operation"}, m.DB_BUCKETS),
    ("db_connection_pool_size", "gauge", {"pool"}, None),
    ("cache_hits", "counter", {"cache"}, None),
    ("cache_misses", "counter", {"cache"}, None),
]


def _touch_everything() -> None:
    """Record one sample in every family, so each exposes at least one series."""
    t = unique()
    bizmetrics.record_connector_operation("wordpress", "get_posts", 42.0, False, t, error_type="Timeout")
    bizmetrics.record_connector_sync("wordpress", "posts", 3, t)
    bizmetrics.record_workflow_execution("campaign_sync", 1500.0, False, t, error_type="Boom")
    bizmetrics.record_workflow_step("campaign_sync", "fetch", 12.0)
    bizmetrics.record_agent_invocation("support_agent", 800.0, 120, False, t, error_type="RateLimit")
    bizmetrics.record_api_request("GET", "/api/posts", 503, 12.0, t)
    bizmetrics.record_db_query("select_posts", 3.0)
    bizmetrics.set_db_pool_size("primary", 7)
    bizmetrics.record_cache_hit("posts")
    bizmetrics.record_cache_miss("posts")


@pytest.fixture(scope="module")
def families() -> dict[str, object]:
    _touch_everything()
    text = generate_latest().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.mark.parametrize(("name", "kind", "labels", "buckets"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_family_is_exposed_with_its_type_and_labels(families, name, kind, labels, buckets):
    """Every spec metric is exposed under its name, with its type and exactly its labels."""
    family = families[name]
    assert family.type == kind
    sample_names = {s.name for s in family.samples}
    if kind == "counter":
        assert f"{name}_total" in sample_names
    elif kind == "histogram":
        assert {f"{name}_bucket", f"{name}_sum", f"{name}_count"} <= sample_names
    else:
        assert sample_names == {name}
    for sample in family.samples:
        if sample.name.endswith("_created"):
            continue
        assert set(sample.labels) - {"le"} == labels


@pytest.mark.parametrize(("name", "buckets"), [(c[0], c[3]) for c in CATALOGUE if c[3]])
def test_histogram_buckets_are_the_documented_milliseconds(families, name, buckets):
    """Each histogram exposes exactly its bucket constant, plus +Inf."""
    bounds = {s.labels["le"] for s in families[name].samples if s.name.endswith("_bucket")}
    assert bounds == {repr(float(b)) for b in buckets} | {"+Inf"}


def test_connector_buckets_include_the_spec_sample_bounds():
    """The spec's sample output shows le="100.0" and le="500.0" for connectors."""
    assert {100.0, 500.0} <= set(m.CONNECTOR_BUCKETS)
    assert max(m.CONNECTOR_BUCKETS) >= 60_000
    assert min(m.API_BUCKETS) <= 1 and min(m.DB_BUCKETS) <= 1
    assert max(m.AGENT_BUCKETS) >= 120_000 and max(m.WORKFLOW_BUCKETS) >= 120_000


@pytest.mark.parametrize("name", [c[0] for c in CATALOGUE if c[1] == "histogram"])
def test_duration_help_names_milliseconds(families, name):
    """Durations are in ms and their HELP text says so."""
    assert "milliseconds" in families[name].documentation


def test_histograms_carry_no_tenant(families):
    """Per-tenant numbers live on counters; no histogram series has tenant_id."""
    for name, kind, labels, _ in CATALOGUE:
        if kind == "histogram":
            assert "tenant_id" not in labels
            assert all("tenant_id" not in s.labels for s in families[name].samples)


def test_spec_sample_output_lines_appear():
    """The spec's "Sample Output" lines appear in the exposition, with these names and labels."""
    t = unique()
    bizmetrics.record_connector_operation("wordpress", "get_posts", 50.0, True, t)
    text = generate_latest().decode()
    assert "# TYPE connector_operations_total counter" in text
    assert "# HELP connector_operation_duration Duration of connector operations in milliseconds" in text
    assert "# TYPE connector_operation_duration histogram" in text
    assert (
        f'connector_operations_total{{connector_type="wordpress",operation="get_posts",'
        f'status="success",tenant_id="{t}"}}' in text
    )


def test_error_sibling_exists_at_zero_before_any_failure():
    """Recording one success creates the status="error" sibling at 0, so ratios exist."""
    t = unique()
    bizmetrics.record_connector_operation("hubspot", "sync", 5, True, t)
    bizmetrics.record_connector_sync("hubspot", "contacts", 4, t)
    bizmetrics.record_workflow_execution("wf", 5, True, t)
    bizmetrics.record_agent_invocation("agent", 5, 10, True, t)
    bizmetrics.record_api_request("GET", "/x", 200, 5, t)
    base = {"tenant_id": t}
    for name, labels in [
        ("connector_operations_total", {"connector_type": "hubspot", "operation": "sync", "status": "error"}),
        (
            "connector_sync_operations_total",
            {"connector_type": "hubspot", "resource_type": "contacts", "status": "error"},
        ),
        ("workflow_executions_total", {"workflow_id": "wf", "status": "error"}),
        ("agent_invocations_total", {"agent_id": "agent", "status": "error"}),
        ("api_requests_total", {"method": "GET", "endpoint": "/x", "status": "5xx"}),
        ("api_errors_total", {"method": "GET", "endpoint": "/x", "status": "5xx"}),
    ]:
        assert exists(name, **labels, **base), name
        assert value(name, **labels, **base) == 0.0


def test_reload_does_not_raise_and_keeps_counting():
    """Reloading the catalogue module reuses the registered metrics instead of raising."""
    t = unique()
    bizmetrics.record_cache_hit(t)
    reloaded = importlib.reload(m)
    assert reloaded.CACHE_HITS is m.CACHE_HITS
    reloaded.record_cache_hit(t)
    bizmetrics.record_cache_hit(t)
    assert value("cache_hits_total", cache=t) == 3


def test_catalogue_survives_series_removal():
    """clear() on a catalogue metric empties bizmetrics' caches, so new records are exposed again."""
    t = unique()
    bizmetrics.record_db_query(t, 1.0)
    m.DB_QUERY_DURATION.remove(t)
    assert not exists("db_query_duration_count", operation=t)
    bizmetrics.record_db_query(t, 1.0)
    assert value("db_query_duration_count", operation=t) == 1


@pytest.mark.slow
def test_import_alone_exposes_the_catalogue():
    """A fresh process that only imports bizmetrics exposes every family's HELP line."""
    code = "import bizmetrics, prometheus_client; print(prometheus_client.generate_latest().decode())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name, kind, _, _ in CATALOGUE:
        exposed = f"{name}_total" if kind == "counter" else name
        assert f"# TYPE {exposed} {kind}" in out


def _upward_imports(path: Path, module: str) -> Iterator[str]:
    """Each place in ``path`` (module ``module``) that takes a helper from ``bizmetrics.metrics``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    bound: set[str] = set()  # names bound to the bizmetrics.metrics module itself
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            for alias in node.names:
                if base == "bizmetrics.metrics" and alias.name in m._HELPERS:
                    yield f"{path.name}:{node.lineno}: from {base} import {alias.name}"
                if base == "bizmetrics" and alias.name == "metrics":
                    bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "bizmetrics.metrics" and alias.asname:
                    bound.add(alias.asname)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in m._HELPERS:
            owner = ast.unparse(node.value)
            if owner in bound or owner == "bizmetrics.metrics":
                yield f"{path.name}:{node.lineno}: {owner}.{node.attr}"


def test_no_module_of_the_package_takes_a_helper_through_the_metrics_re_export():
    """Imports go one way: the helpers are imported from ``bizmetrics.helpers``, never through ``bizmetrics.metrics``.

    The re-export stays for applications written against 0.2.0, and gives the very same objects.
    """
    root = Path(bizmetrics.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found += _upward_imports(path, ".".join(("bizmetrics", *parts[: -1 if parts[-1] == "__init__" else None])))
    assert found == []
    assert m._HELPERS >= {"record_connector_operation", "record_api_request", "set_db_pool_size"}
    for name in m._HELPERS:
        assert getattr(m, name) is getattr(bizmetrics.helpers, name)
    for name in m._HELPERS & set(bizmetrics.__all__):
        assert getattr(bizmetrics, name) is getattr(bizmetrics.helpers, name)


def test_the_import_rule_sees_each_way_of_importing_a_helper_through_metrics(tmp_path):
    """The check above can fail: every spelling of an upward import is reported."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from .metrics import record_db_query, CATALOGUE\n"
        "from bizmetrics.metrics import set_db_pool_size\n"
        "from . import metrics\n"
        "import bizmetrics.metrics as mm\n"
        "metrics.record_cache_hit\n"
        "mm.record_cache_miss\n"
        "bizmetrics.metrics.record_api_request\n"
        "from .helpers import record_tool_call\n"
    )
    package = tmp_path / "__init__.py"
    package.write_text("from .metrics import record_connector_operation\n")
    assert list(_upward_imports(package, "bizmetrics")) == [
        "__init__.py:1: from bizmetrics.metrics import record_connector_operation"
    ]
    assert [place.split(": ", 1)[1] for place in _upward_imports(source, "bizmetrics.mod")] == [
        "from bizmetrics.metrics import record_db_query",
        "from bizmetrics.metrics import set_db_pool_size",
        "metrics.record_cache_hit",
        "mm.record_cache_miss",
        "bizmetrics.metrics.record_api_request",
    ]
