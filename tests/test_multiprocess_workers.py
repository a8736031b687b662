"""Multiprocess mode under gunicorn: exemplars shared across workers (scraped by a real Prometheus), process metrics."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.servers import Prometheus, free_port, get, process, wait
from support.servers import prometheus as start_prometheus

APP = """
import os

import bizmetrics
from bizmetrics.wsgi import metrics_app

metrics = metrics_app()


def app(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        return metrics(environ, start_response)
    trace = environ.get("QUERY_STRING") or None
    sum(range(300_000))  # some CPU time for the workers' counter
    with bizmetrics.trace_context(trace, "00f067aa0ba902b7"):
        bizmetrics.record_connector_operation("wp", "get", 12.0, True, "t1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
    return [b"ok"]
"""

CONF = """
from bizmetrics.multiprocess import child_exit  # noqa: F401

workers = 2
bind = "127.0.0.1:{port}"
max_requests = {max_requests}
"""


def gunicorn(tmp_path: Path, port: int, max_requests: int = 0) -> process:
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "gunicorn.conf.py").write_text(CONF.format(port=port, max_requests=max_requests))
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"]
    return process(cmd, cwd=tmp_path, env=env)


def request(port: int, query: str = "") -> str:
    """One request; returns the pid of the worker that served it."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/work?" + query)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        return str(resp.getheader("X-Pid"))
    finally:
        conn.close()


@pytest.mark.slow
def test_prometheus_stores_exemplars_of_every_gunicorn_worker(tmp_path: Path) -> None:
    """Traces recorded by either of two workers reach Prometheus' exemplar storage, whichever worker serves /metrics."""
    port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "workers", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }
    start = time.time() - 5
    with gunicorn(tmp_path, port), start_prometheus(config, tmp_path, prom_port, "--enable-feature=exemplar-storage"):
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")
        wait(lambda: get(f"{prom.url}/-/ready"), "Prometheus")
        wait(lambda: request(port, "warmup"), "gunicorn")

        def stored() -> set[str]:
            query = 'connector_operations_total{connector_type="wp"}'
            params = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{time.time():.3f}"})
            body = json.loads(get(f"{prom.url}/api/v1/query_exemplars?{params}"))
            assert body["status"] == "success", body
            return {e["labels"]["trace_id"] for series in body["data"] for e in series["exemplars"]}

        by_worker: dict[str, list[str]] = {}
        n = 0
        while len(by_worker) < 2 or min(len(v) for v in by_worker.values()) < 2:
            n += 1
            assert n <= 40, f"requests never reached both workers: {by_worker}"
            trace = f"{n:032x}"
            by_worker.setdefault(request(port, trace), []).append(trace)
            # The latest exemplar of the series, whoever recorded it, is what the next scrapes expose.
            wait(lambda trace=trace: trace in stored(), f"exemplar {trace} in Prometheus", timeout=30)
        assert len(by_worker) == 2


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def workers_of(master: int) -> set[str]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True)
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.slow
def test_process_metrics_per_live_worker_and_cpu_that_never_goes_down(tmp_path: Path) -> None:
    """RSS and open fds per live worker and summed; CPU seconds summed over every worker, dead ones too.

    Workers restart every 15 requests (``max_requests``) while the test scrapes.
    """
    port = free_port()
    with gunicorn(tmp_path, port, max_requests=15) as server:
        wait(lambda: request(port), "gunicorn")
        cpu: list[float] = []
        checked = 0
        deadline = time.time() + 120
        while checked < 8 and time.time() < deadline:
            for _ in range(10):
                request(port)
            time.sleep(1.3)  # each worker writes its process metrics every second
            samples: dict[Any, float] = scrape(port)
            cpu.append(samples[("process_cpu_seconds_total", ())])
            live = workers_of(server.pid)
            rss = {dict(k[1])["pid"]: v for k, v in samples.items() if k[0] == "process_worker_resident_memory_bytes"}
            fds = {dict(k[1])["pid"]: v for k, v in samples.items() if k[0] == "process_worker_open_fds"}
            if set(rss) != live or set(fds) != live:
                continue  # a worker restarted since it last wrote: the next round
            checked += 1
            assert all(v > 10_000_000 for v in rss.values())
            assert all(v >= 3 for v in fds.values())
            assert samples[("process_resident_memory_bytes", ())] == sum(rss.values())
            assert samples[("process_open_fds", ())] == sum(fds.values())
        assert checked >= 4
        assert all(a <= b for a, b in itertools.pairwise(cpu)), cpu
        assert cpu[-1] > cpu[0]
