"""The shipped operations assets in tests: rules, alerts, promtool unit tests, burn-rate specs, dashboard queries."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bizmetrics import assets
from bizmetrics.__main__ import main
from bizmetrics.assets import anomaly, dashboards
from support.servers import binary

#: The tests directory (the promtool unit tests are in its ``promtool`` directory).
HERE = Path(__file__).parent.parent


RULE_FILES = assets.RULE_FILES


def export_assets(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bizmetrics export-assets DIRECTORY ARGS`` in this process: its exit code and output.

    In process, not a fresh interpreter (about 70 ms, not a second): the entry point
    itself is proven by ``test_packaging.py``'s ``python -m bizmetrics --version``.
    """
    argv = ["export-assets", str(directory), *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse refusing an option
            code = exit.code if isinstance(exit.code, int) else 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


ASSETS = resources.files("bizmetrics.assets")


#: The promtool unit test files, run against the shipped rules.
PROMTOOL_TESTS = (
    "alerts_test.yml",
    "batch_test.yml",
    "slo_test.yml",
    "budget_test.yml",
    "cost_test.yml",
    "cost_minutes_test.yml",
    "clients_test.yml",
    "jobs_test.yml",
    "anomaly_test.yml",
)
#: Recorded series that need history: the anomaly bands (they read the same hour a day and a week ago, and
#: the spread a week of excess): a Prometheus that has scraped a demo for minutes has none. anomaly_test.yml
#: (promtool, eight days) shows each of them with data, and test_assets_anomaly_victoriametrics.py compares them
#: (inlined, with the alerts) between Prometheus and VictoriaMetrics on fifteen days of backfilled samples.
NEEDS_HISTORY = frozenset(
    {
        anomaly.ENVELOPE_UPPER,
        anomaly.ENVELOPE_LOWER,
        anomaly.EXCESS,
        anomaly.EXCESS_1H,
        anomaly.SPREAD,
        anomaly.BAND_UPPER,
        anomaly.BAND_LOWER,
        # The spend of the last whole hour: empty until Prometheus has an hour of samples.
        "job_tenant_id_currency:agent_cost:previous_hour",
    }
)


def needs_history(expr: str) -> bool:
    """Whether ``expr`` reads an anomaly band (see ``NEEDS_HISTORY``)."""
    return any(name in expr for name in NEEDS_HISTORY)


def rules(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASSETS.joinpath("prometheus").joinpath(name).read_text())
    return loaded


def all_rules() -> list[dict[str, Any]]:
    return [rule for name in assets.RULE_FILES for group in rules(name)["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "alert" in rule]


def promtool_unit_tests(
    directory: Path,
    name: str,
    break_rule: tuple[str, str, str] | None = None,
    rendered: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``tests/promtool/NAME`` (or ``spec``, written as NAME) against the shipped rules (or ``assets.render()``'s).

    ``break_rule`` is (alert or record name, text in its expression, replacement): every rule of that
    name whose expression holds the text is altered, and at least one must.
    """
    broken = 0
    for file in assets.RULE_FILES:
        loaded = rules(file) if rendered is None else yaml.safe_load(rendered[f"prometheus/{file}"])
        # Annotation templates are not what these tests are about (promtool check rules
        # parses them); without them the expected alerts need only labels.
        for group in loaded["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
                if break_rule and break_rule[0] in (rule.get("alert"), rule.get("record")):
                    if break_rule[1] in rule["expr"]:
                        rule["expr"] = rule["expr"].replace(break_rule[1], break_rule[2])
                        broken += 1
        (directory / file).write_text(yaml.safe_dump(loaded))
    assert break_rule is None or broken, break_rule
    if spec is None:
        shutil.copy(HERE / "promtool" / name, directory)
    else:
        (directory / name).write_text(yaml.safe_dump(spec, sort_keys=False))
    if break_rule is None:
        return _promtool_test(directory, name)
    # A broken rule is expected to fail: run one test group at a time and stop at the first that
    # fails (promtool evaluates every rule at every step of a group, so a group costs seconds to minutes).
    whole = yaml.safe_load((directory / name).read_text())
    done = None
    for index, group in enumerate(whole["tests"]):
        part = f"{Path(name).stem}.group{index}.yml"
        (directory / part).write_text(yaml.safe_dump({**whole, "tests": [group]}, sort_keys=False))
        done = _promtool_test(directory, part)
        if done.returncode != 0:
            break
    assert done is not None, name
    return done


def _promtool_test(directory: Path, name: str) -> subprocess.CompletedProcess[str]:
    # Generous: a month-long test takes minutes on a loaded 2-core machine.
    return subprocess.run(
        [binary("promtool"), "test", "rules", name], cwd=directory, capture_output=True, text=True, timeout=1800
    )


def _le(bound: float) -> str:
    return repr(float(bound))  # as prometheus_client writes it: 500.0


def _slo_series(job: str, slo: Any, per_minute: int, bad_share: float) -> list[dict[str, str]]:
    """Input series of one SLO's metric for ``job``: ``per_minute`` events, ``bad_share`` of them bad, for 4 hours."""
    bad = per_minute * bad_share
    good = per_minute - bad
    if slo.latency:
        selector = f'job="{job}",method="GET",endpoint="/x",connector_type="c",operation="o",agent_id="a"'
        found = []
        # The family's histogram, and the per-tenant one of a tenant tracked with track_tenant_latency.
        for metric, labels in ((slo.metric, selector), (slo.tenant_metric, f'job="{job}",tenant_id="t1"')):
            if metric:
                found += [
                    {"series": f"{metric}_count{{{labels}}}", "values": f"0+{per_minute}x240"},
                    {"series": f'{metric}_bucket{{{labels},le="{_le(slo.threshold)}"}}', "values": f"0+{good!r}x240"},
                    {"series": f'{metric}_bucket{{{labels},le="+Inf"}}', "values": f"0+{per_minute}x240"},
                ]
        return found
    labels = f'job="{job}",connector_type="c",operation="o",method="GET",endpoint="/x",workflow_id="w",agent_id="a"'
    bad_status = "503" if slo.name == "api" else "error"
    return [
        {"series": f'{slo.metric}{{{labels},status="success",tenant_id="t1"}}', "values": f"0+{good!r}x240"},
        {"series": f'{slo.metric}{{{labels},status="{bad_status}",tenant_id="t1"}}', "values": f"0+{bad!r}x240"},
    ]


def burn_rate_spec(paging_job: str = "burning") -> dict[str, Any]:
    """A promtool unit test of every SLO's burn-rate alerts, service and tenant, made from ``slo.SLOS``.

    Job ``burning`` (one tenant, t1) has 100 events a minute of every SLO; job ``calm`` the
    same, none bad. A fast burn (16 times the budget) pages within the hour and opens no
    ticket; a slow one (4 times) opens a ticket after three hours and never pages. Nothing
    names ``calm``. Only ``paging_job`` is expected to alert (another name: none is).
    """
    from bizmetrics.assets import slo as slos

    cases = []
    for speed, burn, at, other in (("Fast", 16, "50m", "Slow"), ("Slow", 4, "3h30m", "Fast")):
        series = []
        checks = []
        for slo in slos.SLOS.values():
            budget = 1 - slo.objective
            series += _slo_series("burning", slo, 100, burn * budget)
            series += _slo_series("calm", slo, 100, 0.0)
            tenants = [None, "t1"] if slo.per_tenant else [None]
            for tenant in tenants:
                name = f"Bizmetrics{slo.title}{'Tenant' if tenant else ''}SLOBurnRate"
                labels = {"severity": slos.BURN_PAIRS[speed][0], "slo": slo.name, "job": "burning"}
                if tenant:
                    labels["tenant_id"] = tenant
                expected = [{"exp_labels": labels}] if paging_job == "burning" else []
                checks.append({"eval_time": at, "alertname": name + speed, "exp_alerts": expected})
                checks.append({"eval_time": at, "alertname": name + other, "exp_alerts": []})
        cases.append(
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": checks,
                "promql_expr_test": [
                    {
                        "expr": f'count(count_over_time(ALERTS{{job="calm"}}[{at}])) or vector(0)',
                        "eval_time": at,
                        "exp_samples": [{"labels": "{}", "value": 0}],
                    }
                ],
            }
        )
    return {"rule_files": list(assets.RULE_FILES), "evaluation_interval": "1m", "tests": cases}


def dashboard_targets() -> list[tuple[str, str]]:
    """(where, expr) of every panel query of every shipped dashboard."""
    found = []
    for name in dashboards.DASHBOARDS:
        board = json.loads(ASSETS.joinpath("grafana").joinpath(name).read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((f"{name}: {panel['title']}", target["expr"]))
    return found


def all_variables(expr: str) -> str:
    """A panel query with every template variable set to All (the ``job`` one: the shipped jobs regex)."""
    return re.sub(r"\$\w+", ".*", expr.replace("$job", assets.DEFAULT_JOBS))
