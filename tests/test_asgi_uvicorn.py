"""End to end: the ASGI middleware and metrics_app() under real uvicorn and gunicorn processes with 2 workers."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.servers import free_port, wait
from test_multiprocess import _get, _samples

APP = """
import os
import pathlib

import bizmetrics
from bizmetrics.asgi import MetricsMiddleware, metrics_app
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

# Each worker owns a pool of 5 connections for as long as it lives.
bizmetrics.set_db_pool_size("primary", 5)
pathlib.Path(os.environ["PIDS_DIR"], str(os.getpid())).touch()


async def user(request):
    return JSONResponse({"pid": os.getpid(), "tenant": bizmetrics.current_tenant()})


app = Starlette(
    routes=[
        Mount("/v1", routes=[Route("/users/{user_id:int}", user)]),
        Route("/metrics", metrics_app()),
    ],
    middleware=[Middleware(MetricsMiddleware, tenant="X-Tenant-ID")],
)
"""


def _request(port: int, path: str, tenant: str) -> tuple[int, dict[str, str], bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-Tenant-ID": tenant})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _pids(pids_dir: Path) -> set[int]:
    return {int(p.name) for p in pids_dir.iterdir()}


@contextmanager
def server(tmp_path: Path, argv: list[str]) -> Iterator[tuple[int, Path]]:
    """Run a server on a free loopback port with multiprocess mode on; yield its port and pid directory."""
    port = free_port()
    mp_dir, pids_dir = tmp_path / "mp", tmp_path / "pids"
    mp_dir.mkdir()
    pids_dir.mkdir()
    (tmp_path / "app.py").write_text(APP)
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(mp_dir), PIDS_DIR=str(pids_dir), PYTHONPATH=str(tmp_path))
    cmd = [sys.executable, "-m", *(a.format(port=port) for a in argv)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while len(_pids(pids_dir)) < 2 or not _answers(port):
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield port, pids_dir
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if sys.exc_info()[0] is not None:
            print(out.decode(errors="replace"))


def _answers(port: int) -> bool:
    try:
        return _get(port, "/metrics")[0] == 200
    except OSError:
        return False


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = _get(port, "/metrics")
    assert status == 200
    return _samples(body.decode())


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def _send_and_count(port: int, n: int) -> None:
    tenants = ("acme", "globex")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _request(port, f"/v1/users/{i}", tenants[i % 2]), range(n)))
    assert all(status == 200 for status, _, _ in answers)
    pids = {json.loads(body)["pid"] for _, _, body in answers}
    assert len(pids) == 2, "the requests should have reached both workers"
    assert {json.loads(body)["tenant"] for _, _, body in answers} == set(tenants)
    missing = [_request(port, f"/nope/{i}", "acme")[0] for i in range(10)]
    assert missing == [404] * 10

    # A request is recorded once its response is sent: on a loaded machine the worker that served the last
    # one may record it just after the client has read it. Scrape until every request is in (or more are).
    def recorded() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = _scrape(port)
        total = sum(
            value
            for (name, labels), value in samples.items()
            if name == "api_requests_total" and dict(labels)["endpoint"] in ("/v1/users/{user_id}", "__unmatched__")
        )
        return samples if total >= n + 10 else None

    samples = wait(recorded, f"{n + 10} requests recorded", timeout=15, every=0.1)
    for tenant in tenants:
        api = {"method": "GET", "endpoint": "/v1/users/{user_id}", "tenant_id": tenant}
        assert samples[key("api_requests_total", status="200", **api)] == n / 2
        assert samples[key("api_requests_total", status="500", **api)] == 0
    assert samples[key("api_request_duration_count", method="GET", endpoint="/v1/users/{user_id}")] == n
    unmatched = {"method": "GET", "endpoint": "__unmatched__", "tenant_id": "acme"}
    assert samples[key("api_requests_total", status="404", **unmatched)] == 10
    assert not any(k[0] == "api_requests_total" and ("endpoint", "/metrics") in k[1] for k in samples)


README = Path(__file__).parent.parent / "docs" / "guides" / "multiprocess.md"


def readme_command(program: str, needle: str) -> list[str]:
    """README's multiprocess command line for ``program`` (the one containing ``needle``), without the variable."""
    for line in README.read_text().splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith("PROMETHEUS_MULTIPROC_DIR=") else []
        if len(words) > 1 and words[1] == program and needle in words:
            # Two workers instead of README's four: the machine is shared.
            return ["2" if w == "4" else w for w in words[1:]]
    raise AssertionError(f"{README} has no multiprocess command for {program} with {needle}")


def readme_gunicorn_conf() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    conf = next(b for b in blocks if "import child_exit" in b)
    return textwrap.dedent(conf).replace("workers = 4", "workers = 2")


@pytest.mark.slow
def test_uvicorn_two_workers_count_exactly(tmp_path: Path):
    """README's uvicorn command with 2 workers: one /metrics endpoint exposes exactly the N requests sent."""
    argv = [*readme_command("uvicorn", "--workers"), "--host", "127.0.0.1", "--port", "{port}"]
    with server(tmp_path, argv) as (port, _):
        _send_and_count(port, 300)


@pytest.mark.slow
def test_gunicorn_with_readmes_asgi_worker_class_counts_exactly(tmp_path: Path):
    """README's gunicorn command for ASGI apps (worker class, gunicorn.conf.py with child_exit) counts exactly."""
    (tmp_path / "gunicorn.conf.py").write_text(readme_gunicorn_conf())
    argv = [*readme_command("gunicorn", "-k"), "-b", "127.0.0.1:{port}"]
    with server(tmp_path, argv) as (port, _):
        _send_and_count(port, 300)


@pytest.mark.slow
def test_uvicorn_killed_worker_stops_counting_in_the_live_pool_gauge(tmp_path: Path):
    """kill -9 of one of 2 uvicorn workers: once it is replaced, the pool gauge reads 10 (2 x 5), not 15."""
    argv = [*readme_command("uvicorn", "--workers"), "--host", "127.0.0.1", "--port", "{port}"]
    with server(tmp_path, argv) as (port, pids_dir):
        assert _scrape(port)[key("db_connection_pool_size", pool="primary")] == 10
        first = _pids(pids_dir)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(_pids(pids_dir)) < 3 or not _answers(port):
            assert time.monotonic() < deadline, "uvicorn did not replace the killed worker"
            time.sleep(0.2)
        assert _scrape(port)[key("db_connection_pool_size", pool="primary")] == 10
