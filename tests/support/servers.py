"""Real servers and processes on loopback for the tests, and the helpers that start them and wait for them.

Prometheus, the Pushgateway, Alertmanager, VictoriaMetrics, PostgreSQL, Redis and an HTTP API.

Every binary is required: a missing one fails the test that needs it, it
never skips it (README's test command installs the Debian packages). Every
process keeps its state in the test's temporary directory, listens on
loopback only and is stopped when its ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

#: Debian package of each binary, for the failure message.
PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "prometheus-pushgateway": "prometheus-pushgateway",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "victoria-metrics": "victoria-metrics",
    "redis-server": "redis-server",
}


def binary(name: str) -> str:
    """The path of a required binary; fail (never skip) the test when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install -y {PACKAGES[name]}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode()


def wait(
    probe: Callable[[], Any],
    what: str,
    timeout: float = 60.0,
    every: float = 0.5,
    proc: subprocess.Popen[bytes] | None = None,
) -> Any:
    """Return the first truthy result of ``probe`` (OSError counts as not yet); fail after ``timeout`` seconds.

    With ``proc``, fail at once (with its stderr) if that process has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
            if result:
                return result
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            pytest.fail(f"{what}: the process exited with {proc.returncode}: {stderr[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(every)


class process:
    """Run a command for the duration of a ``with`` block, then stop it (killed if it lingers)."""

    def __init__(self, cmd: list[str], **kwargs: Any) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)

    def __enter__(self) -> subprocess.Popen[bytes]:
        return self.proc

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


#: One run of a batch job: a fresh process that records a sync of N records and a 30 ms
#: operation for a tenant, then pushes (and fails if the push fails).
BATCH_RUN = """
import sys, bizmetrics
from bizmetrics.batch import batch_job
gateway, job, instance, records, tenant = sys.argv[1:]
with batch_job(gateway, job, grouping_key={"instance": instance}, raise_on_push_failure=True):
    bizmetrics.record_connector_sync("wordpress", "posts", int(records), tenant)
    bizmetrics.record_connector_operation("wordpress", "get_posts", 30.0, True, tenant)
"""


def batch_run(gateway: str, job: str, instance: str, records: int, tenant: str) -> None:
    """Run one batch job run in a new process, as cron would."""
    done = subprocess.run(
        [sys.executable, "-c", BATCH_RUN, gateway, job, instance, str(records), tenant],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def pushgateway(port: int, work: Path) -> process:
    """Debian's Pushgateway on loopback, persisting into ``work`` (its default file is a system path)."""
    return process(
        [
            binary("prometheus-pushgateway"),
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={work / 'pushgateway.data'}",
        ]
    )


def prometheus(config: dict[str, Any], work: Path, port: int, *flags: str) -> process:
    """A Prometheus on loopback with ``config``, its TSDB in ``work``, and any extra ``flags``."""
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    return process(
        [
            binary("prometheus"),
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            *flags,
        ]
    )


def instant_values(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's result as labels -> value; NaN points left out (VictoriaMetrics drops them,
    Prometheus returns them)."""
    found = {}
    for series in result:
        value = float(series["value"][1])
        if not math.isnan(value):
            found[tuple(sorted(series["metric"].items()))] = value
    return found


class Prometheus:
    """The query API of Prometheus (or of anything that speaks it, such as VictoriaMetrics)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}  # ms, as Prometheus stores
        body: dict[str, Any] = json.loads(get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode(params)))
        return body

    def result(self, expr: str, at: float | None = None) -> list[Any]:
        body = self.query(expr, at)
        assert body["status"] == "success", (expr, body)
        result: list[Any] = body["data"]["result"]
        return result

    def eventually_nonempty(self, expr: str, timeout: float = 60.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.result(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(1)


def _postgres_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install -y postgresql")
    return found


def _ready(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster in a temporary directory on a free loopback port; yields its URL (no driver).

    PostgreSQL refuses to run as root: as root, the cluster belongs to ``nobody``.
    """
    initdb, server = _postgres_binary("initdb"), _postgres_binary("postgres")
    work = tempfile.mkdtemp(prefix="bizmetrics-pg-")
    user: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(work, nobody.pw_uid, nobody.pw_gid)
        user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    data = os.path.join(work, "data")
    try:
        subprocess.run(
            [initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            cwd=work,
            **user,
        )
        port = free_port()
        cmd = [server, "-D", data, "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
        cmd += ["-c", f"unix_socket_directories={work}", "-c", "fsync=off", "-c", "max_connections=50"]
        with process(cmd, cwd=work, **user) as proc:
            wait(lambda: _ready(port), "postgres", proc=proc)
            time.sleep(0.2)
            yield f"postgres@127.0.0.1:{port}/postgres"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def redis_server(work: Path | None = None) -> Iterator[int]:
    """A redis-server on a free loopback port, its state in ``work`` (else a temporary directory); yields the port."""
    redis = binary("redis-server")
    directory = tempfile.mkdtemp(prefix="bizmetrics-redis-") if work is None else str(work)
    os.makedirs(directory, exist_ok=True)
    port = free_port()
    cmd = [redis, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "", "--appendonly", "no"]
    try:
        with process(cmd) as proc:
            wait(lambda: _ready(port), "redis-server", proc=proc)
            yield port
    finally:
        if work is None:
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def redis_url(work: Path) -> Iterator[str]:
    """A redis-server (as :func:`redis_server`) with its state in ``work``; yields its URL, as brokers take it."""
    with redis_server(work) as port:
        yield f"redis://127.0.0.1:{port}/0"


#: What the HTTP API answers, by path: status and headers (``/slow`` answers 200 after 200 ms).
ANSWERS: dict[str, tuple[int, dict[str, str]]] = {
    "/ok": (200, {"X-RateLimit-Remaining": "97"}),
    "/crm/v3/objects/contacts": (200, {"X-HubSpot-RateLimit-Remaining": "41"}),
    "/missing": (404, {}),
    "/limited": (429, {"Retry-After": "2", "X-RateLimit-Remaining": "0"}),
    "/unavailable": (503, {"Retry-After": "1"}),
    "/down": (503, {}),
    "/shop": (200, {"X-Shopify-Shop-Api-Call-Limit": "32/40"}),
    "/slow": (200, {}),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        status, headers = ANSWERS.get(parts.path, (404, {}))
        if parts.path == "/slow":
            time.sleep(0.2)
        left = parse_qs(parts.query).get("remaining")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"{}"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if left:
            self.send_header("X-RateLimit-Remaining", left[0])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_api() -> Iterator[int]:
    """An HTTP API on a free loopback port answering ``ANSWERS``; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
