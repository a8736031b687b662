"""Every Python example of the documentation runs.

Every ```` ```python ```` block of README.md and ``docs/**/*.md`` runs as it
stands, each in a fresh interpreter in its own temporary directory. The MyST
comment lines right above a block (``% test: key=value; key=value``, invisible
in the site) may say what it needs:

- ``setup=NAME``: code of :data:`SETUPS` run first, in the same module (the
  names an excerpt takes from the reader's application); ``setup=redis`` and
  ``setup=pushgateway`` instead start a real redis-server or Pushgateway on a
  free loopback port and point the block's ``localhost:6379`` /
  ``pushgateway:9091`` at it;
- ``port=N``: the port ``N`` in the block is replaced with a free one;
- ``file=NAME``: the block is the file ``NAME`` the page tells the reader to
  save; ``after=NAME``: that file of the same page is written first;
- ``runner=pytest``: the block is a test module, run by pytest (with the
  installed bizmetrics plugin);
- ``skip-reason=...``: the block cannot run standalone; it is compiled only,
  and must be listed in :data:`COMPILED_ONLY`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from docs_blocks import ROOT, Block, blocks
from support.servers import free_port, pushgateway, redis_server, wait

PYTHON = blocks("python")

#: Blocks that are only compiled, by page and first line: keep this short.
COMPILED_ONLY: set[tuple[str, str]] = set()

#: What an excerpt takes from the reader's application, run before it in the same module.
SETUPS = {
    # The spec's connector base class and its types.
    "spec_connector": """
from typing import List


class Post(dict):
    pass


class BaseConnector:
    def __init__(self, tenant_id="acme"):
        self.tenant_id = tenant_id
        self.config = {"id": "wordpress"}
""",
    # A message of a home-made queue.
    "queue_message": """
class Message:
    def __init__(self):
        self.headers = {}


message = Message()
queue_name = "default"
task_name = "send_welcome"
must_try_again = False


def handle(message):
    pass
""",
    # A batch job's work.
    "sync_all_tenants": """
import bizmetrics


def sync_all_tenants():
    bizmetrics.record_connector_sync("wordpress", "posts", 47, "acme")
""",
    # The reader's decorated code under test.
    "sync_contacts": """
import bizmetrics


@bizmetrics.instrument_sync_operation("contacts", connector_type="hubspot")
def sync_contacts(tenant_id):
    return [{"id": i} for i in range(50)]
""",
    # The reader's application and its test client.
    "checkout_client": """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bizmetrics.asgi import MetricsMiddleware


async def checkout(request):
    return JSONResponse({"ok": True})


app = MetricsMiddleware(Starlette(routes=[Route("/checkout", checkout, methods=["POST"])]), tenant="X-Tenant-ID")
client = TestClient(app)
""",
}

#: Setups that are real servers, and the address in the block they replace.
SERVERS = {"redis": "localhost:6379", "pushgateway": "pushgateway:9091"}


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIZMETRICS_", "PROMETHEUS_"))}
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONPATH"] = str(tmp)
    return env


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real redis-server and Pushgateway on loopback, shared by the blocks that need them."""
    port = free_port()
    work = tmp_path_factory.mktemp("pushgateway")
    with redis_server() as redis_port, pushgateway(port, work) as proc:
        wait(lambda: _get(f"http://127.0.0.1:{port}/-/ready"), "the Pushgateway", proc=proc)
        yield {"redis": f"127.0.0.1:{redis_port}", "pushgateway": f"127.0.0.1:{port}"}


def _get(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200)


def _source(block: Block, servers: dict[str, str] | None) -> str:
    code = block.text
    for name in filter(None, block.options.get("setup", "").split(",")):
        if name in SERVERS:
            assert servers is not None and SERVERS[name] in code, (block.where, name)
            code = code.replace(SERVERS[name], servers[name])
        else:
            code = SETUPS[name] + "\n" + code
    if "port" in block.options:
        code = code.replace(block.options["port"], str(free_port()))
    return code


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_python_example_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The example runs as it stands (with the setup declared above it), in a fresh interpreter."""
    reason = block.options.get("skip-reason")
    if reason:
        assert (str(block.page.relative_to(ROOT)), block.text.splitlines()[0]) in COMPILED_ONLY, block.where
        compile(block.text, block.where, "exec")
        return
    setups = set(block.options.get("setup", "").split(","))
    servers = request.getfixturevalue("servers") if setups & set(SERVERS) else None
    if "after" in block.options:
        (earlier,) = [b for b in blocks("python", [block.page]) if b.options.get("file") == block.options["after"]]
        (tmp_path / block.options["after"]).write_text(_source(earlier, servers))
    name = block.options.get("file", "test_example.py" if block.options.get("runner") == "pytest" else "example.py")
    (tmp_path / name).write_text(_source(block, servers))
    if block.options.get("runner") == "pytest":
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name]
    else:
        cmd = [sys.executable, name]
    done = subprocess.run(cmd, cwd=tmp_path, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{block.where}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, f"{block.where}:\n{done.stderr[-3000:]}"


def test_every_python_example_is_run_or_listed() -> None:
    """Options are known ones; compiled-only blocks are few and listed; no setup is unused."""
    known = {"setup", "port", "file", "after", "runner", "skip-reason"}
    used: set[str] = set()
    for block in PYTHON:
        assert set(block.options) <= known, (block.where, block.options)
        used |= set(filter(None, block.options.get("setup", "").split(",")))
    assert used <= set(SETUPS) | set(SERVERS)
    assert set(SETUPS) <= used, "a setup no block uses"
    skipped = {(str(b.page.relative_to(ROOT)), b.text.splitlines()[0]) for b in PYTHON if "skip-reason" in b.options}
    assert skipped == COMPILED_ONLY
    assert len(PYTHON) >= 30
