"""The documentation: every query is valid, the site builds offline, every alert has its runbook entry.

Every ```` ```promql ```` query parses (``promtool check rules``) and reads only
names bizmetrics exposes or its rules record; ``test_assets.py`` also runs each
one against a Prometheus scraping the demo and requires data. The Python
examples are run by ``test_docs_examples.py``.
"""

from __future__ import annotations

import html.parser
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from docs_blocks import DOCS, ROOT, pages, promql_queries, series_in
from support.servers import binary

from bizmetrics import assets


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
    """The URLs of a page's scripts and links (style sheets, fonts, icons), and its element ids."""

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
        if tag == "link" and found.get("href"):
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


#: The modules the API reference renders (docs/reference/api.md).
REFERENCE = (
    "bizmetrics", "bizmetrics.decorators", "bizmetrics.helpers", "bizmetrics.context", "bizmetrics.testing",
    "bizmetrics.multiprocess", "bizmetrics.batch", "bizmetrics.asgi", "bizmetrics.wsgi", "bizmetrics.django",
    "bizmetrics.jobs", "bizmetrics.celery", "bizmetrics.rq", "bizmetrics.sqlalchemy", "bizmetrics.redis",
    "bizmetrics.httpx", "bizmetrics.requests", "bizmetrics.aiohttp", "bizmetrics.assets", "bizmetrics.assets.slo",
)  # fmt: skip


@pytest.mark.slow
def test_api_reference_renders_every_public_function_and_class(site: Path) -> None:
    """Each public function and class is described where it lives (a private module's: where it is exported)."""
    import importlib
    import inspect

    ids = _parse(site / "reference" / "api.html").ids
    missing = []
    for name in REFERENCE:
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", ()):
            obj = getattr(module, public)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            home = obj.__module__ if "._" not in obj.__module__ and obj.__module__ in REFERENCE else name
            if f"{home}.{public}" not in ids:
                missing.append(f"{home}.{public}")
    assert missing == []
    assert len(ids) >= 150


def test_pages_are_markdown_with_a_title() -> None:
    """Every documentation page starts with its one top-level title."""
    for page in pages()[1:]:
        text = page.read_text()
        assert text.startswith("# "), page
