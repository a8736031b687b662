"""The fast exposition: byte for byte prometheus_client's, for any label values, in both text formats."""

from __future__ import annotations

import http.client
import re
import ssl
from inspect import signature
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, Summary
from prometheus_client import generate_latest as pc_text
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as pc_openmetrics
from support.registry import unique

import bizmetrics
from bizmetrics import _exposition

#: Any text a label value, help text or exemplar value can hold.
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
values = st.one_of(
    st.floats(min_value=0, allow_nan=False, allow_infinity=True),
    st.integers(min_value=0, max_value=10**20),
    st.sampled_from([0.1, 1e6, 999999.99, 1e16, 123456789.0, 5e-324]),
)
gauge_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**18), 10**18))
exemplar_labels = st.dictionaries(
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True).filter(lambda k: not k.startswith("__")),
    st.text(max_size=12),
    max_size=3,
)


def both(registry: Any) -> None:
    """Assert that bizmetrics renders ``registry`` exactly as prometheus_client does, in both formats."""
    assert _exposition.FAST
    assert _exposition.generate_latest(registry) == pc_text(registry)
    assert _exposition.generate_latest_openmetrics(registry) == pc_openmetrics(registry)
    # prometheus_client before 0.22 has no escaping schemes.
    escapings = ("allow-utf-8", "underscores", "values", "dots") if "escaping" in signature(pc_text).parameters else ()
    for escaping in escapings:
        for om in (False, True):
            assert _exposition.render(registry, om, escaping) == _exposition._reference(registry, om, escaping)


@given(
    series=st.lists(
        st.tuples(texts, texts, values, gauge_values, st.lists(values, max_size=4)),
        min_size=1,
        max_size=8,
    ),
    doc=texts,
    exemplar=exemplar_labels,
)
def test_any_label_values_render_byte_for_byte(series: list[Any], doc: str, exemplar: dict[str, str]) -> None:
    """Counters, gauges and histograms with any label values, help texts and exemplars match prometheus_client."""
    registry = CollectorRegistry()
    counter = Counter("hyp_ops", doc, ["kind", "tenant_id"], registry=registry)
    gauge = Gauge("hyp_level", doc, ["kind"], registry=registry)
    histogram = Histogram("hyp_ms", doc, ["kind"], buckets=(0.5, 10.0, 1e7), registry=registry)
    for kind, tenant, amount, level, observations in series:
        use_exemplar = bool(exemplar) and sum(len(k) + len(v) for k, v in exemplar.items()) <= 128
        counter.labels(kind, tenant).inc(amount, exemplar=exemplar if use_exemplar else None)
        gauge.labels(kind).set(level)
        for observed in observations:
            histogram.labels(tenant).observe(observed, exemplar=exemplar if use_exemplar else None)
    both(registry)


@given(tenants=st.lists(texts, min_size=1, max_size=6, unique=True))
def test_the_catalogue_renders_byte_for_byte(tenants: list[str]) -> None:
    """The default registry renders as prometheus_client renders it (volatile process lines aside)."""
    for tenant in tenants:
        bizmetrics.record_connector_operation("wp", unique("op"), 12.0, True, tenant)
        bizmetrics.record_agent_invocation("agent", 300.0, 120, False, tenant, error_type="Timeout")
        bizmetrics.record_api_request("GET", "/x/{id}", 503, 2.5, tenant_id=tenant)
    with bizmetrics.trace_context("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"):
        bizmetrics.record_workflow_execution("wf", 7.0, True, tenants[0])
    volatile = re.compile(rb"(?m)^(?:# (?:HELP|TYPE) )?(?:process_|python_gc_).*\n")
    for ours, theirs in (
        (_exposition.generate_latest, pc_text),
        (_exposition.generate_latest_openmetrics, pc_openmetrics),
    ):
        assert volatile.sub(b"", ours(REGISTRY)) == volatile.sub(b"", theirs(REGISTRY))


def test_what_the_fast_path_does_not_know_is_rendered_by_prometheus_client() -> None:
    """Summaries, enums, infos, callback gauges, custom collectors, subclasses and removed children all match."""

    class Custom:
        def collect(self) -> Any:
            family = GaugeMetricFamily("custom_thing", "Custom.", labels=["a"])
            family.add_metric(['x"y'], 3.0)
            return [family]

    class Doubled(Counter):
        def _child_samples(self) -> Any:
            return [s._replace(value=s.value * 2) for s in super()._child_samples()]

    registry = CollectorRegistry(target_info={"service": "billing"})
    Summary("sm_s", "Summary.", ["a"], registry=registry).labels("1").observe(3)
    Enum("en_state", "Enum.", states=["a", "b"], registry=registry).state("b")
    Info("in_build", "Info.", registry=registry).info({"version": "1"})
    Gauge("cb_items", "Callback.", registry=registry).set_function(lambda: 42)
    registry.register(Custom())
    Doubled("dbl_ops", "Doubled.", registry=registry).inc(3)
    removed = Counter("rm_ops", "Removed.", ["a"], registry=registry)
    for i in range(5):
        removed.labels(str(i)).inc(i)
    both(registry)
    removed.remove("2")
    removed.labels("2").inc(7)  # a new child under the old labels
    removed.remove("3")
    both(registry)
    removed.clear()
    both(registry)


def test_created_series_follow_prometheus_clients_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``disable_created_metrics()`` drops the ``_created`` lines from both renderings."""
    import prometheus_client.metrics as pc_metrics

    registry = CollectorRegistry()
    Counter("cr_ops", "Ops.", ["a"], registry=registry).labels("x").inc()
    Histogram("cr_ms", "Ms.", registry=registry).observe(2)
    monkeypatch.setattr(pc_metrics, "_use_created", False)
    both(registry)
    assert b"_created" not in _exposition.generate_latest(registry)


def test_a_failed_self_test_turns_the_fast_renderer_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the self-test finds one byte of difference, every scrape is prometheus_client's own."""
    monkeypatch.setattr(_exposition, "_escape", lambda value: value)  # a renderer that forgets escaping
    assert _exposition.self_test() is False
    assert _exposition._check() is False
    assert _exposition.FAST is False
    registry = CollectorRegistry()
    Counter("off_ops", "Ops.", ["a"], registry=registry).labels('qu"ote').inc()
    assert _exposition.generate_latest(registry) == pc_text(registry)
    monkeypatch.undo()
    assert _exposition._check() is True


def test_start_http_server_serves_what_prometheus_client_serves() -> None:
    """``bizmetrics.start_http_server`` answers as prometheus_client's does: both formats, gzip, name filters."""
    registry = CollectorRegistry()
    Counter("srv_ops", "Ops.", ["tenant_id"], registry=registry).labels("t1").inc(3)
    Histogram("srv_ms", "Ms.", registry=registry).observe(0.2)
    server, thread = bizmetrics.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]

        def get(path: str, **headers: str) -> tuple[dict[str, str], bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                assert resp.status == 200
                return {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            finally:
                conn.close()

        headers, body = get("/metrics")
        assert body == pc_text(registry)
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        headers, body = get("/metrics", Accept="application/openmetrics-text; version=1.0.0")
        assert body == pc_openmetrics(registry)
        assert headers["content-type"].startswith("application/openmetrics-text")
        headers, body = get("/metrics?name[]=srv_ops_total")
        assert body == pc_text(registry.restricted_registry(["srv_ops_total"]))
        headers, body = get("/metrics", **{"Accept-Encoding": "gzip"})
        assert headers["content-encoding"] == "gzip"
    finally:
        server.shutdown()
        server.server_close()
    thread.join(5)
    assert not thread.is_alive()


def test_start_http_server_takes_prometheus_clients_arguments() -> None:
    """The parameters and defaults of the installed prometheus_client's ``start_http_server``, in order.

    Older prometheus_client versions lack the last ones (``tls_min_version``, ``tls_max_version``).
    """
    import inspect

    import prometheus_client

    ours = inspect.signature(bizmetrics.start_http_server).parameters
    theirs = inspect.signature(prometheus_client.start_http_server).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    assert list(ours) == list(theirs) or "tls_min_version" not in theirs
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default or (
            parameter.default is ssl.PROTOCOL_TLS_SERVER and ours[name].default is ssl.PROTOCOL_TLS_SERVER
        )
