"""Multiprocess mode: a real gunicorn with several workers (``slow``), and short ``python -c`` processes in that mode.

The short ones (well under a second each) are unit tests: multiprocess mode is chosen when a
process imports prometheus_client, so only a fresh interpreter can show it.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.servers import free_port

APP = """
import os

import bizmetrics
from bizmetrics import multiprocess
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def app(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        data = generate_latest(multiprocess.registry())
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [data]
    bizmetrics.record_api_request("GET", "/work", 200, 1.5, tenant_id="t1")
    bizmetrics.record_connector_sync("wordpress", "posts", 3, "t1")
    bizmetrics.set_db_pool_size("primary", 5)
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
    return [b"ok"]
"""

CONF = """
from bizmetrics.multiprocess import child_exit  # noqa: F401  (gunicorn reads it by name)

workers = {workers}
bind = "127.0.0.1:{port}"
"""


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.slow
def test_gunicorn_workers_sum_exactly(tmp_path: Path):
    """N requests spread over 2 gunicorn workers are exposed as exactly N by one endpoint."""
    workers, n = 2, 300
    port = free_port()
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "gunicorn.conf.py").write_text(CONF.format(workers=workers, port=port))
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(port, "/metrics")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _get(port, "/work"), range(n)))
        assert all(status == 200 for status, _, _ in answers)
        pids = {headers["X-Pid"] for _, headers, _ in answers}
        assert len(pids) >= 2, "the requests should have reached more than one worker"

        status, _, body = _get(port, "/metrics")
        assert status == 200
        samples = _samples(body.decode())
        key = lambda name, **labels: (name, tuple(sorted(labels.items())))  # noqa: E731
        api = {"method": "GET", "endpoint": "/work", "tenant_id": "t1"}
        assert samples[key("api_requests_total", status="200", **api)] == n
        assert samples[key("api_requests_total", status="500", **api)] == 0
        assert samples[key("api_request_duration_count", method="GET", endpoint="/work")] == n
        assert samples[key("api_request_duration_sum", method="GET", endpoint="/work")] == 1.5 * n
        sync = {"connector_type": "wordpress", "resource_type": "posts", "tenant_id": "t1"}
        assert samples[key("connector_sync_records_total", **sync)] == 3 * n
        assert samples[key("connector_sync_operations_total", status="success", **sync)] == n
        # livesum: each worker that served a request holds a pool of 5.
        assert samples[key("db_connection_pool_size", pool="primary")] == 5 * len(pids)
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out.decode(errors="replace")


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, check=True
    )


def test_import_order_trap_is_warned_about(tmp_path: Path):
    """prometheus_client imported before PROMETHEUS_MULTIPROC_DIR is set: bizmetrics warns."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    code = f"""
        import os
        import prometheus_client
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(tmp_path)!r}
        import bizmetrics
        from bizmetrics import multiprocess
        print(multiprocess.enabled(), multiprocess.check_import_order())
    """
    done = _run(code, env)
    assert done.stdout.split() == ["False", "False"]
    assert "imported before" in done.stderr


def test_right_import_order_is_silent(tmp_path: Path):
    """With the variable set first, multiprocess mode is on and nothing is logged."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    code = (
        "import bizmetrics.metrics as b, bizmetrics.multiprocess as m;"
        "print(m.enabled(), m.check_import_order(), b.FAST_PATH)"
    )
    done = _run(code, env)
    # In multiprocess mode values live in shared files: bizmetrics records through the public API only.
    assert done.stdout.split() == ["True", "True", "False"]
    assert done.stderr == ""


def test_registry_is_the_default_registry_when_multiprocess_mode_is_off():
    """One /metrics endpoint serves both modes: registry() does not raise without PROMETHEUS_MULTIPROC_DIR."""
    from prometheus_client import REGISTRY

    from bizmetrics import multiprocess

    assert not multiprocess.enabled()
    assert multiprocess.registry() is REGISTRY


def test_registry_collects_every_worker_when_multiprocess_mode_is_on(tmp_path: Path):
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    code = """
        import bizmetrics
        from bizmetrics import multiprocess
        from prometheus_client import REGISTRY
        bizmetrics.record_cache_hit("mp_cache", 3)
        reg = multiprocess.registry()
        print(reg is REGISTRY, reg.get_sample_value("cache_hits_total", {"cache": "mp_cache"}))
    """
    assert _run(code, env).stdout.split() == ["False", "3.0"]


def test_remove_dead_workers_drops_only_dead_processes_live_gauges(tmp_path: Path):
    """The uvicorn remedy: live-gauge files of dead pids go, those of running processes and other kinds stay."""
    from bizmetrics.multiprocess import remove_dead_workers

    dead = subprocess.Popen(["true"])  # a pid that is gone (no interpreter: a few ms)
    dead.wait()
    alive = os.getppid()
    names = [
        f"gauge_livesum_{dead.pid}.db",
        f"gauge_liveall_{dead.pid}.db",
        f"gauge_livesum_{alive}.db",
        f"counter_{dead.pid}.db",
        f"gauge_all_{dead.pid}.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert remove_dead_workers(str(tmp_path)) == [dead.pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_remove_dead_workers_tells_a_reused_pid_by_its_start_time(tmp_path: Path):
    """Files named by identity (pid and start time): a live pid with another start time is a dead worker's."""
    from bizmetrics import _mpfiles
    from bizmetrics.multiprocess import remove_dead_workers

    me, started = os.getpid(), _mpfiles.start_time(os.getpid())
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = {
        f"gauge_livesum_{me}-{started}.db": True,  # this process: alive
        f"gauge_liveall_{me}-{int(started or 0) + 1}.db": False,  # its pid, reused: the older worker is gone
        f"gauge_livemax_{dead.pid}-{started}.db": False,
        f"counter_{dead.pid}-1.db": True,  # not a live gauge: merged by compaction, never dropped
    }
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert remove_dead_workers(str(tmp_path)) == sorted({me, dead.pid})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(name for name, kept in names.items() if kept)


def test_a_missing_multiprocess_directory_never_stops_an_import_or_a_call(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR pointing nowhere: the module imports, decorates, and its functions return."""
    script = textwrap.dedent(
        """
        import asyncio
        from bizmetrics import instrument_cache_lookup, instrument_db_query, instrument_workflow

        @instrument_db_query("q")
        def query():
            return 1

        @instrument_cache_lookup("c")
        def lookup():
            return 2

        @instrument_workflow("wf")
        async def flow():
            return 3

        print(query(), lookup(), asyncio.run(flow()))
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "2", "3"]
    assert "bizmetrics" in proc.stderr
