"""Real servers on loopback for the client instrumentations: PostgreSQL, Redis, and an HTTP API.

Every binary is required: a missing one fails the test that needs it (the
Debian packages ``postgresql`` and ``redis-server``), never skips it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from ops_helpers import free_port, process, wait


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
def redis_server() -> Iterator[int]:
    """A redis-server on a free loopback port, its state in a temporary directory; yields the port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server")
    work = tempfile.mkdtemp(prefix="bizmetrics-redis-")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", work, "--save", "", "--appendonly", "no"]
    try:
        with process(cmd) as proc:
            wait(lambda: _ready(port), "redis-server", proc=proc)
            yield port
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
