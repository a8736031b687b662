"""The documentation: every example runs, every query is valid, the site builds offline, every alert has its runbook.

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

Every ```` ```promql ```` query parses (``promtool check rules``) and reads only
names bizmetrics exposes or its rules record; ``test_ops_kit.py`` also runs each
one against a Prometheus scraping the demo and requires data.
"""

from __future__ import annotations

import html.parser
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from client_servers import redis_server
from docs_blocks import DOCS, ROOT, Block, blocks, pages, promql_queries, series_in
from ops_helpers import binary, free_port, pushgateway, wait

from bizmetrics import assets

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


def _exposed_names() -> set[str]:
    """Every sample name bizmetrics can expose: its catalogue and self-metrics, the batch and process metrics."""
    from prometheus_client import REGISTRY

    import bizmetrics.batch  # noqa: F401  # its metrics, pushed by batch jobs

    names = {"up", "ALERTS", "ALERTS_FOR_STATE"}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    batch = {"batch_job_last_run_success", "batch_job_last_run_duration_seconds"}
    batch.add("batch_job_last_success_timestamp_seconds")
    process = {"process_worker_resident_memory_bytes", "process_worker_open_fds", "process_resident_memory_bytes"}
    return names | batch | process | {"process_open_fds", "process_cpu_seconds_total"}


def _recorded_names() -> set[str]:
    rules = [yaml.safe_load(text) for name, text in assets.render().items() if name.startswith("prometheus/")]
    return {rule["record"] for file in rules for group in file["groups"] for rule in group["rules"] if "record" in rule}


def test_promql_queries_read_only_names_bizmetrics_exposes_or_records() -> None:
    """No query reads a name that does not exist (the spec's ``connector_sync_records`` did not)."""
    queries = promql_queries()
    assert len(queries) >= 12
    known = _exposed_names() | _recorded_names()
    unknown = [(where, sorted(series_in(q) - known)) for where, q in queries if series_in(q) - known]
    assert unknown == []


@pytest.mark.slow
def test_promql_queries_parse(tmp_path: Path) -> None:
    """Every query parses, as Prometheus itself parses it (each one a recording rule checked by promtool)."""
    queries = promql_queries()
    group = {"name": "docs", "rules": [{"record": f"docs:query{i}", "expr": q} for i, (_, q) in enumerate(queries)]}
    (tmp_path / "docs.yml").write_text(yaml.safe_dump({"groups": [group]}))
    done = subprocess.run(
        [binary("promtool"), "check", "rules", "docs.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(queries)} rules found" in done.stdout


README_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/python -m bizmetrics demo",
    "apt-get update && apt-get install -y prometheus prometheus-pushgateway prometheus-alertmanager victoria-metrics"
    " postgresql redis-server && python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/pytest",
)


def test_readme_is_the_front_page() -> None:
    """At most 200 lines, the two set-up commands unchanged, and every relative link leads to a file."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    lines = readme.splitlines()
    for command in README_COMMANDS:
        assert command in lines
    links = re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", readme)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(relative) >= 10
    assert [link for link in relative if not (ROOT / link).exists()] == []


def test_docstrings_send_readers_to_the_docs_not_readme() -> None:
    """No module of the package points at a README heading: those moved into the documentation."""
    package = ROOT / "bizmetrics"
    files = [p for p in package.rglob("*") if p.suffix in (".py", ".yml", ".json")]
    found = [str(p.relative_to(ROOT)) for p in files if "README" in p.read_text()]
    assert found == []


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as CI builds it: warnings are errors, every reference must resolve (-n)."""
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html", str(DOCS), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert "WARNING" not in done.stderr, done.stderr
    return out


class _Assets(html.parser.HTMLParser):
    """The URLs of a page's scripts, style sheets and fonts, and its element ids."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(found["id"] or "")
        if tag == "script" and found.get("src"):
            self.loaded.append(found["src"] or "")
        if tag == "link" and found.get("href") and found.get("rel") in ("stylesheet", "preload", "icon"):
            self.loaded.append(found["href"] or "")


def _parse(path: Path) -> _Assets:
    parser = _Assets()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.slow
def test_site_builds_offline(site: Path) -> None:
    """Every page of the built site loads its scripts, styles and fonts from the site itself."""
    built = sorted(site.rglob("*.html"))
    assert len(built) >= 25
    external = [(str(p.relative_to(site)), url) for p in built for url in _parse(p).loaded if re.match(r"https?:", url)]
    assert external == []
    css = [p for p in site.rglob("*.css") if re.search(r"@import\s+url\(\s*['\"]?https?:", p.read_text())]
    assert css == []
    # Every page of docs/ is in the site (none left out of the table of contents).
    sources = {p.relative_to(DOCS).with_suffix(".html") for p in DOCS.rglob("*.md") if "_build" not in p.parts}
    assert sources <= {p.relative_to(site) for p in built}


@pytest.mark.slow
def test_every_alert_links_its_runbook_entry_and_every_entry_is_an_alert(site: Path) -> None:
    """Each shipped alert's runbook_url is its anchor on the runbook page, which has an entry for it; no other entry."""
    rules = [yaml.safe_load(text) for name, text in assets.render().items() if name.startswith("prometheus/")]
    alerts = [rule for file in rules for group in file["groups"] for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 50
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == assets.runbook_url(alert["alert"]), alert["alert"]
        assert alert["annotations"]["runbook_url"].startswith(assets.DEFAULT_RUNBOOK_URL + "/operations/runbook.html#")
    anchors = {a for a in _parse(site / "operations" / "runbook.html").ids if a.startswith("bizmetrics")}
    assert anchors == {alert["alert"].lower() for alert in alerts}


def test_pages_are_markdown_with_a_title() -> None:
    """Every documentation page starts with its one top-level title."""
    for page in pages()[1:]:
        text = page.read_text()
        assert text.startswith("# "), page
