"""End to end with a real Prometheus: a namespaced service with its exported assets, and exemplars."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from support.ops import all_variables, needs_history
from support.servers import Prometheus, binary, free_port, get, process, wait
from support.servers import prometheus as start_prometheus

from bizmetrics import assets

NAMESPACE = "acme"


@pytest.mark.slow
def test_a_namespaced_service_and_its_exported_assets_work_together(tmp_path):
    """BIZMETRICS_NAMESPACE=acme demo + export-assets --namespace acme: promtool accepts the rules, and in
    a real Prometheus every recording rule and every dashboard panel query returns data."""
    export = subprocess.run(
        [sys.executable, "-m", "bizmetrics", "export-assets", str(tmp_path / "kit"), "--namespace", NAMESPACE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert export.returncode == 0, export.stderr
    rule_files = [str(tmp_path / "kit" / "prometheus" / name) for name in assets.RULE_FILES]
    checked = subprocess.run([binary("promtool"), "check", "rules", *rule_files], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    demo_port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [{"job_name": "acme_service", "static_configs": [{"targets": [f"127.0.0.1:{demo_port}"]}]}],
    }
    env = {**os.environ, "BIZMETRICS_NAMESPACE": NAMESPACE}
    demo = [sys.executable, "-m", "bizmetrics", "demo", "--port", str(demo_port), "--seed", "3"]
    with process(demo, env=env), start_prometheus(config, tmp_path, prom_port):
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")
        wait(lambda: get(f"{prom.url}/-/ready"), "Prometheus")
        wait(lambda: prom.result(f"{NAMESPACE}_agent_errors_total"), "the namespaced demo scraped")
        assert prom.result("connector_operations_total") == [], "no unprefixed catalogue metric"
        time.sleep(3)
        records = sorted(
            {
                rule["record"]
                for name in rule_files
                for group in yaml.safe_load(Path(name).read_text())["groups"]
                for rule in group["rules"]
                if "record" in rule and not needs_history(rule["record"])  # anomaly bands: a day of history
            }
        )
        # 90 s: the cost rules read each counter's sample of a minute before (multiprocess mode has no _created).
        empty = [r for r in records if not prom.eventually_nonempty(r, timeout=90)]
        assert empty == []
        targets = [
            (board, target["expr"])
            for board in sorted((tmp_path / "kit" / "grafana").glob("*.json"))
            for panel in json.loads(board.read_text())["panels"]
            for target in panel["targets"]
        ]
        # A panel reads a namespaced metric or a recording rule (whose names keep no namespace: a colon).
        assert all(
            NAMESPACE + "_" in expr
            or re.search(r"[a-z_]+:[a-z_0-9]+:[a-z_0-9]+", expr)
            or "up{" in expr
            or "bizmetrics_" in expr
            or "batch_job" in expr
            for _, expr in targets
        )
        empty_panels = [
            expr
            for _, expr in targets
            if "batch_job" not in expr
            and not needs_history(expr)
            and not prom.eventually_nonempty(all_variables(expr), timeout=20)
        ]
        assert empty_panels == []


_TRACED_APP = """
import sys, time
from prometheus_client import start_http_server
import bizmetrics

start_http_server(int(sys.argv[1]), addr="127.0.0.1")


@bizmetrics.instrument_connector_operation("fetch", connector_type="traced")
def fetch():
    time.sleep(0.002)


traces = [f"{i:032x}" for i in range(1, 6)]
deadline = time.time() + 120
while time.time() < deadline:
    for trace in traces:
        with bizmetrics.trace_context(trace, "00f067aa0ba902b7"):
            fetch()
            bizmetrics.record_api_request("GET", "/orders/{id}", 200, 12)
    time.sleep(0.2)
"""


@pytest.mark.slow
def test_prometheus_with_exemplar_storage_returns_the_trace_ids(tmp_path):
    """A service recording under trace_context, scraped by Prometheus with exemplar storage:
    /api/v1/query_exemplars returns the trace ids on the duration histograms and the request counter."""
    app_port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "traced", "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}],
    }
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(_TRACED_APP))
    start = time.time() - 5
    with (
        process([sys.executable, str(app), str(app_port)]),
        start_prometheus(config, tmp_path, prom_port, "--enable-feature=exemplar-storage"),
    ):
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")
        wait(lambda: get(f"{prom.url}/-/ready"), "Prometheus")
        expected = {f"{i:032x}" for i in range(1, 6)}

        def traces(query: str) -> set[str]:
            params = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{time.time():.3f}"})
            body = json.loads(get(f"{prom.url}/api/v1/query_exemplars?{params}"))
            assert body["status"] == "success", body
            return {
                exemplar["labels"].get("trace_id")
                for series in body["data"]
                for exemplar in series["exemplars"]
                if exemplar["labels"].get("span_id") == "00f067aa0ba902b7"
            }

        for query in (
            'connector_operation_duration_bucket{connector_type="traced"}',
            'api_request_duration_bucket{endpoint="/orders/{id}"}',
            'connector_operations_total{connector_type="traced"}',
            'api_requests_total{endpoint="/orders/{id}"}',
        ):
            found = wait(lambda query=query: traces(query) & expected, f"exemplars of {query}", timeout=60)
            assert found <= expected
