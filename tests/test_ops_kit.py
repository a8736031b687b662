"""The operations kit, proven with the real binaries: promtool, Prometheus and the Pushgateway.

Every binary is required: a missing one fails these tests, it never skips them
(``.ci/run`` installs Debian's ``prometheus`` and ``prometheus-pushgateway``).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import unique

import bizmetrics
from bizmetrics import assets
from bizmetrics.assets import dashboards
from bizmetrics.batch import batch_job

HERE = Path(__file__).parent
README = HERE.parent / "README.md"
ASSETS = resources.files("bizmetrics.assets")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install -y prometheus prometheus-pushgateway")
    return path


def _rules(name: str) -> dict[str, Any]:
    return yaml.safe_load(ASSETS.joinpath("prometheus", name).read_text())


def _all_rules() -> list[dict[str, Any]]:
    return [rule for name in assets.RULE_FILES for group in _rules(name)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _all_rules() if "alert" in rule]


# --- promtool ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", assets.RULE_FILES)
def test_rule_files_pass_promtool_check(name, tmp_path):
    """``promtool check rules`` accepts every shipped rule file (templates included)."""
    path = tmp_path / name
    path.write_text(ASSETS.joinpath("prometheus", name).read_text())
    done = subprocess.run([_binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_fires_and_resolves_in_promtool_unit_tests(tmp_path):
    """``promtool test rules``: each shipped alert fires on synthetic series, then resolves."""
    spec = yaml.safe_load((HERE / "promtool" / "alerts_test.yml").read_text())
    fired: set[str] = set()
    resolved: set[str] = set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else resolved).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - resolved == set(), "alerts never shown resolved"

    done = _promtool_unit_tests(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_catch_a_broken_alert(tmp_path):
    """The unit tests can fail: with the connector threshold at 50% instead of 5%, promtool reports it."""
    done = _promtool_unit_tests(tmp_path, break_rule=("BizmetricsConnectorErrorRatioHigh", "> 0.05", "> 0.5"))
    assert done.returncode != 0
    assert "BizmetricsConnectorErrorRatioHigh" in done.stdout + done.stderr


def _promtool_unit_tests(
    directory: Path, break_rule: tuple[str, str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run tests/promtool/alerts_test.yml against the shipped rules (optionally with one rule altered)."""
    for name in assets.RULE_FILES:
        rules = _rules(name)
        # Annotation templates are not what these tests are about (promtool check rules
        # parses them); without them the expected alerts need only labels.
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
                if break_rule and rule.get("alert") == break_rule[0]:
                    rule["expr"] = rule["expr"].replace(break_rule[1], break_rule[2])
        (directory / name).write_text(yaml.safe_dump(rules))
    shutil.copy(HERE / "promtool" / "alerts_test.yml", directory)
    return subprocess.run(
        [_binary("promtool"), "test", "rules", "alerts_test.yml"], cwd=directory, capture_output=True, text=True
    )


def test_every_alert_has_severity_summary_and_runbook():
    """Each alert carries a severity label and summary, description and runbook annotations."""
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"critical", "warning", "ticket"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


@pytest.mark.slow
def test_demo_exposition_passes_promtool_check_metrics():
    """``promtool check metrics`` finds no problem in the demo service's /metrics."""
    with _process([sys.executable, "-m", "bizmetrics", "demo", "--port", str(port := _free_port())]):
        text = _wait(lambda: _get(f"http://127.0.0.1:{port}/metrics"), "the demo's /metrics")
    done = subprocess.run([_binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


# --- export-assets and the dashboards ------------------------------------------------------


def test_export_assets_writes_every_file_with_the_objectives(tmp_path):
    """``python -m bizmetrics export-assets DIR`` writes the rules and dashboards; objectives are set in one place."""
    done = subprocess.run(
        [sys.executable, "-m", "bizmetrics", "export-assets", str(tmp_path), "--connector-objective", "0.99"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(
        [f"prometheus/{name}" for name in assets.RULE_FILES] + [f"grafana/{name}" for name in dashboards.DASHBOARDS]
    )
    slo = (tmp_path / "prometheus" / "slo_rules.yml").read_text()
    objectives = {
        rule["labels"]["slo"]: rule["expr"]
        for group in yaml.safe_load(slo)["groups"]
        for rule in group["rules"]
        if rule.get("record") == "bizmetrics:slo_objective:ratio"
    }
    assert objectives == {"connector": "vector(0.99)", "api": "vector(0.999)"}
    bad = subprocess.run(
        [sys.executable, "-m", "bizmetrics", "export-assets", str(tmp_path), "--api-objective", "1.5"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "between 0 and 1" in bad.stderr


@pytest.mark.parametrize("name", list(dashboards.DASHBOARDS))
def test_shipped_dashboards_match_their_descriptions(name):
    """The shipped JSON is what ``bizmetrics.assets.dashboards`` builds, with the expected variables."""
    shipped = ASSETS.joinpath("grafana", name).read_text()
    assert shipped == dashboards.render(dashboards.DASHBOARDS[name])
    board = json.loads(shipped)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "tenant" in variables
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]


# --- End to end: the demo, a Pushgateway and Prometheus ------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def _wait(probe: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
            if result:
                return result
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


class _process:
    """Run a command for the duration of a ``with`` block, then stop it."""

    def __init__(self, cmd: list[str], **kwargs: Any) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)

    def __enter__(self) -> subprocess.Popen[bytes]:
        return self.proc

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        return body

    def result(self, expr: str) -> list[Any]:
        body = self.query(expr)
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


BATCH_TENANT = unique("batch")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping the demo (job "bizmetrics") and a Pushgateway every second, with the shipped rules."""
    work = tmp_path_factory.mktemp("prometheus")
    assets.export(work)
    demo_port, gateway_port, prom_port = _free_port(), _free_port(), _free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "prometheus" / name) for name in assets.RULE_FILES],
        "scrape_configs": [
            {"job_name": "bizmetrics", "static_configs": [{"targets": [f"127.0.0.1:{demo_port}"]}]},
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}],
            },
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (
        _process([_binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{gateway_port}"]),
        _process([sys.executable, "-m", "bizmetrics", "demo", "--port", str(demo_port), "--seed", "7"]),
        _process(
            [
                _binary("prometheus"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ]
        ),
    ):
        gateway = f"127.0.0.1:{gateway_port}"
        _wait(lambda: _get(f"http://{gateway}/-/ready"), "the Pushgateway")
        # A finished batch job pushes its metrics once.
        with batch_job(gateway, "nightly_sync", grouping_key={"instance": "cron-1"}):
            bizmetrics.record_connector_sync("wordpress", "posts", 42, BATCH_TENANT)
        _wait(lambda: _get(f"http://127.0.0.1:{prom_port}/-/ready"), "Prometheus")
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")
        # Rates and quantiles need a few scrapes of every family, errors included.
        prom.eventually_nonempty("agent_errors_total")
        prom.eventually_nonempty("workflow_failures_total")
        time.sleep(5)
        yield prom


_PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "and", "or", "unless", "on", "ignoring", "group_left", "group_right",
    "scalar", "vector", "avg_over_time", "histogram_quantile", "offset", "time", "topk", "without", "bool",
}  # fmt: skip


def _series_in(expr: str) -> set[str]:
    """The metric and recording-rule names an expression reads."""
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r'"[^"]*"', "", bare)
    names = set(re.findall(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w(])", bare))
    by_clauses = re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", bare)
    labels = {label.strip() for clause in by_clauses for label in clause.split(",")}
    return {n for n in names if n not in _PROMQL_WORDS and n not in labels and not re.fullmatch(r"\d+[smhdwy]", n)}


def _readme_queries() -> list[str]:
    blocks = re.findall(r"```promql\n(.*?)```", README.read_text(), re.S)
    queries = []
    for block in blocks:
        current: list[str] = []
        for line in [*block.splitlines(), ""]:
            if line.strip() and not line.lstrip().startswith("#"):
                current.append(line.strip())
            elif current:
                queries.append(" ".join(current))
                current = []
    return queries


def _dashboard_targets() -> list[tuple[str, str]]:
    found = []
    for name in dashboards.DASHBOARDS:
        board = json.loads(ASSETS.joinpath("grafana", name).read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((f"{name}: {panel['title']}", target["expr"]))
    return found


@pytest.mark.slow
def test_readme_promql_returns_data(prometheus):
    """Every PromQL query in README returns a non-empty result from a Prometheus scraping the demo."""
    queries = _readme_queries()
    assert len(queries) >= 7
    empty = [q for q in queries if not prometheus.eventually_nonempty(q, timeout=20)]
    assert empty == []


@pytest.mark.slow
def test_recording_rules_return_data(prometheus):
    """Every recording rule (rates, ratios, quantiles, SLO windows and objectives) has data."""
    records = sorted({rule["record"] for rule in _all_rules() if "record" in rule})
    empty = [r for r in records if not prometheus.eventually_nonempty(r, timeout=20)]
    assert empty == []


@pytest.mark.slow
def test_alert_expressions_evaluate_on_series_that_exist(prometheus):
    """Every alert expression evaluates, and every series it reads has data (so it can fire)."""
    for rule in _alerts():
        prometheus.result(rule["expr"])
        missing = [s for s in sorted(_series_in(rule["expr"])) if not prometheus.eventually_nonempty(s, timeout=20)]
        assert missing == [], rule["alert"]
    rules = json.loads(_get(f"{prometheus.url}/api/v1/rules"))["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert unhealthy == []


@pytest.mark.slow
def test_dashboard_panels_and_variables_return_data(prometheus):
    """Every panel query of every dashboard (variables set to All) and every variable query return data."""
    empty = []
    for where, expr in _dashboard_targets():
        query = re.sub(r"\$\w+", ".*", expr)
        if not prometheus.eventually_nonempty(query, timeout=20):
            empty.append((where, query))
    assert empty == []
    for name in dashboards.DASHBOARDS:
        board = json.loads(ASSETS.joinpath("grafana", name).read_text())
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"]).groups()
            url = f"{prometheus.url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric})
            assert json.loads(_get(url))["data"], (name, variable["name"])


@pytest.mark.slow
def test_batch_job_push_reaches_prometheus(prometheus):
    """A batch job's records and last-success time go through a real Pushgateway into Prometheus."""
    labels = f'job="nightly_sync",instance="cron-1",tenant_id="{BATCH_TENANT}"'
    records = prometheus.eventually_nonempty(f"connector_sync_records_total{{{labels}}}")
    assert [float(r["value"][1]) for r in records] == [42.0]
    success = prometheus.eventually_nonempty('batch_job_last_success_timestamp_seconds{job="nightly_sync"}')
    assert abs(float(success[0]["value"][1]) - time.time()) < 300
    run = prometheus.eventually_nonempty('batch_job_last_run_success{job="nightly_sync"}')
    assert float(run[0]["value"][1]) == 1.0
