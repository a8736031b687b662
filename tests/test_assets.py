"""The operations kit, proven with the real binaries: promtool, Prometheus and the Pushgateway.

Every binary is required: a missing one fails these tests, it never skips them
(README's test command installs the Debian packages).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from docs_blocks import promql_queries
from docs_blocks import series_in as _series_in
from hypothesis import given
from support.ops import (
    ASSETS,
    PROMTOOL_TESTS,
    alerts,
    all_rules,
    all_variables,
    burn_rate_spec,
    dashboard_targets,
    export_assets,
    needs_history,
    promtool_unit_tests,
)
from support.registry import unique
from support.servers import Prometheus, batch_run, binary, free_port, get, process, pushgateway, wait
from support.servers import prometheus as start_prometheus
from support.strategies import DURATION_UNITS, duration_like, durations, namespaces

from bizmetrics import assets
from bizmetrics.assets import dashboards

HERE = Path(__file__).parent


# --- promtool ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", assets.RULE_FILES)
def test_rule_files_pass_promtool_check(name, tmp_path):
    """``promtool check rules`` accepts every shipped rule file (templates included)."""
    path = tmp_path / name
    path.write_text(ASSETS.joinpath("prometheus").joinpath(name).read_text())
    done = subprocess.run([binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.slow
def test_every_alert_fires_and_resolves_in_promtool_unit_tests(tmp_path):
    """``promtool test rules``: each shipped alert fires on synthetic series, then resolves."""
    fired: set[str] = set()
    resolved: set[str] = set()
    specs = [yaml.safe_load((HERE / "promtool" / name).read_text()) for name in PROMTOOL_TESTS]
    for spec in [*specs, burn_rate_spec()]:
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else resolved).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - resolved == set(), "alerts never shown quiet"

    # slo_test.yml and budget_test.yml run in their own tests below, the cost tests in test_assets_cost.py,
    # anomaly_test.yml in test_assets_anomaly.py (each promtool run takes seconds).
    own = {"slo_test.yml", "budget_test.yml", "cost_test.yml", "cost_minutes_test.yml", "anomaly_test.yml"}
    for name in sorted(set(PROMTOOL_TESTS) - own):
        done = promtool_unit_tests(tmp_path, name)
        assert done.returncode == 0, done.stdout + done.stderr
    done = promtool_unit_tests(tmp_path, "burn_rate_test.yml", spec=burn_rate_spec())
    assert done.returncode == 0, done.stdout + done.stderr


# --- The alerts an on-call team can trust (promtool) ---------------------------------------


def _without_guards(rendered: dict[str, str]) -> dict[str, str]:
    """The rules without the batch-job exclusion (the volume guard is off with ``min_events=0``)."""
    return {name: text.replace("unless on (job) batch_job_last_run_success", "") for name, text in rendered.items()}


@pytest.mark.slow
def test_on_call_scenarios_pass_promtool_unit_tests(tmp_path):
    """slo_test.yml against the shipped rules: the nightly 1-of-3 case pages nothing; 30% connector errors at
    realistic volume page once per service; a latency regression pages; a tiny tenant (2 of 3) and a modest one
    (1 of 60) page nothing while a large tenant at 10x its budget pages with its tenant_id."""
    done = promtool_unit_tests(tmp_path, "slo_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_nightly_one_failure_in_three_pages_without_the_guards(tmp_path):
    """Without the volume guard and the batch-job exclusion, the same nightly case pages: the guards are what hold."""
    unguarded = promtool_unit_tests(tmp_path, "slo_test.yml", rendered=_without_guards(assets.render(min_events=0)))
    assert unguarded.returncode != 0
    out = unguarded.stdout + unguarded.stderr
    assert 'count(count_over_time(ALERTS{job=\\"nightly_sync' in out, (
        "the nightly case must be what fails without the guards"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rule", "old", "new", "why"),
    [
        (
            "BizmetricsApiTenantSLOBurnRateFast",
            "job_tenant_id:bizmetrics_slo_errors:wilson_lower_rate6h",
            "job_tenant_id:bizmetrics_slo_errors:ratio_rate6h",
            "the raw ratio instead of the Wilson bound: modest's 1 failure in 60 pages",
        ),
        (
            "BizmetricsApiTenantSLOBurnRateFast",
            ">= on (job) group_left () job:bizmetrics_alert_min_events:count",
            ">= on (job) group_left () (0 * job:bizmetrics_alert_min_events:count)",
            "no volume guard: tiny's 2 failures in 3 page (the Wilson bound alone is 0.21)",
        ),
        (
            "BizmetricsConnectorErrorRatioCritical",
            "job:connector_operations_errors:ratio_rate5m > 0.25",
            "job_connector_type:connector_operations_errors:ratio_rate5m > 0.25",
            "a page per connector type instead of one per service",
        ),
        (
            "BizmetricsApiLatencySLOBurnRateFast",
            '{slo="api_latency"}',
            '{slo="api"}',
            "the latency alert reading the API's 5xx ratios: the latency regression would not page",
        ),
    ],
)
def test_slo_promtool_unit_tests_catch_a_broken_rule(tmp_path, rule, old, new, why):
    """slo_test.yml fails when a guard, the Wilson bound, the per-service aggregation or a burn rate is broken."""
    done = promtool_unit_tests(tmp_path, "slo_test.yml", break_rule=(rule, old, new))
    assert done.returncode != 0, why
    assert "FAILED" in done.stdout + done.stderr, why


@pytest.mark.slow
def test_error_budget_remaining_reads_the_hand_computed_month(tmp_path):
    """budget_test.yml: a scripted month leaves 0.8 of the API budget, -1 of the workflow budget, 0 on day 10."""
    done = promtool_unit_tests(tmp_path, "budget_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    # The traffic-weighted ratio matters: averaging each hour's ratio instead reads 2/3, not 0.8.
    unweighted = promtool_unit_tests(
        tmp_path,
        "budget_test.yml",
        break_rule=(
            "job:bizmetrics_slo_errors:ratio_rate30d",
            'sum by (job, slo) (sum_over_time(job:bizmetrics_slo_errors:increase1h{slo="api"}[30d]))'
            ' / sum by (job, slo) (sum_over_time(job:bizmetrics_slo_events:increase1h{slo="api"}[30d]))',
            'sum by (job, slo) (avg_over_time(job:bizmetrics_slo_errors:ratio_rate1h{slo="api"}[30d]))',
        ),
    )
    assert unweighted.returncode != 0
    assert "FAILED" in unweighted.stdout + unweighted.stderr


@pytest.mark.slow
def test_per_job_latency_thresholds_in_promtool_unit_tests(tmp_path):
    """--api-latency-threshold checkout=1000: 750 ms answers page billing (500 ms), not checkout."""
    rendered = assets.render(latency_thresholds={"api_latency": {"checkout": 1000.0}})
    done = promtool_unit_tests(tmp_path, "threshold_test.yml", rendered=rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    same = promtool_unit_tests(tmp_path, "threshold_test.yml")
    assert same.returncode != 0, "with one threshold for every job, checkout would page too"
    assert "FAILED" in same.stdout + same.stderr


@pytest.mark.slow
def test_min_events_per_job_in_promtool_unit_tests(tmp_path):
    """--min-events burning=1000000: the job that burns every SLO fast and slow alerts on nothing."""
    rendered = assets.render(min_events={None: 50, "burning": 1_000_000})
    done = promtool_unit_tests(tmp_path, "burn_rate_test.yml", rendered=rendered, spec=burn_rate_spec(paging_job=""))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("test_file", "rule", "old", "new", "why"),
    [
        ("alerts_test.yml", "BizmetricsConnectorErrorRatioHigh", "> 0.05", "> 0.5", "a wrong threshold"),
        (
            "alerts_test.yml",
            "job_connector_type:connector_operations_errors:ratio_rate5m",
            "by (job, connector_type)",
            "by (connector_type)",
            "services merged (job aggregated away, as before)",
        ),
        (
            "batch_test.yml",
            "BizmetricsSyncStoppedProducingRecords",
            "unless on (job) batch_job_last_run_success",
            "",
            "batch jobs not told apart: the nightly job trips the alert an hour after each run",
        ),
        (
            "batch_test.yml",
            "BizmetricsBatchJobStale",
            "> 93600",
            "> 21600",
            "the former 6h staleness window: the nightly job trips it every day",
        ),
    ],
)
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path, test_file, rule, old, new, why):
    """The unit tests can fail: with one rule broken the way it used to be (or worse), promtool reports it."""
    done = promtool_unit_tests(tmp_path, test_file, break_rule=(rule, old, new))
    assert done.returncode != 0, why
    assert "FAILED" in done.stdout + done.stderr, why


@pytest.mark.slow
def test_per_job_objectives_in_promtool_unit_tests(tmp_path):
    """SLO objectives differ per service: the same failures page for checkout (99.9%), not for billing (99%)."""
    rendered = assets.render(api_objective={"billing": 0.99}, connector_objective={"billing": 0.95})
    done = promtool_unit_tests(tmp_path, "objectives_test.yml", rendered=rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    same = promtool_unit_tests(tmp_path, "objectives_test.yml")
    assert same.returncode != 0, "with one objective for every job, billing would page too"
    assert "FAILED" in same.stdout + same.stderr, "promtool must fail on the test, not on the files"


def test_every_alert_has_severity_summary_runbook_and_job():
    """Each alert carries a severity label, summary, description and runbook, and names its job in the summary."""
    for rule in alerts():
        assert rule["labels"]["severity"] in {"critical", "warning", "ticket"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert "$labels.job" in rule["annotations"]["summary"], rule["alert"]


def test_every_recording_rule_keeps_the_job():
    """Every recording rule aggregates by ``job`` first (and says so in its level), so services never merge."""
    for rule in all_rules():
        if "record" not in rule:
            continue
        assert rule["record"].startswith("job"), rule["record"]
        clauses = re.findall(r"\bby \(([^)]*)\)", rule["expr"])
        assert clauses, rule["record"]
        assert all(clause.split(",")[0].strip() == "job" for clause in clauses), rule["record"]


@pytest.mark.slow
def test_demo_exposition_passes_promtool_check_metrics():
    """``promtool check metrics`` finds no problem in the demo service's /metrics."""
    with process([sys.executable, "-m", "bizmetrics", "demo", "--port", str(port := free_port())]):
        text = wait(lambda: get(f"http://127.0.0.1:{port}/metrics"), "the demo's /metrics")
    done = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


# --- export-assets and the dashboards ------------------------------------------------------

#: Prometheus' own duration regex (prometheus/common model.ParseDuration), the reference.
PROMETHEUS_DURATION = re.compile("".join(rf"(([0-9]+){unit})?" for unit, _ in DURATION_UNITS))


@given(durations)
def test_parse_duration_accepts_every_prometheus_duration(duration):
    """Every duration of Prometheus' grammar parses to its value (``0s`` and ``1h30m`` included)."""
    text, ms = duration
    assert assets.parse_duration(text) == ms / 1000


@given(duration_like)
def test_parse_duration_accepts_exactly_what_prometheus_accepts(text):
    """Any text of digits and unit letters is accepted iff Prometheus' regex matches it (``0`` alone too).

    Like Prometheus, a duration past int64 nanoseconds (about 292 years) is refused too.
    """
    match = PROMETHEUS_DURATION.fullmatch(text) if text else None
    if text == "0":
        assert assets.parse_duration(text) == 0
    elif match is None:
        with pytest.raises(ValueError, match="is not a Prometheus duration"):
            assets.parse_duration(text)
    else:
        numbers = match.groups()[1::2]
        ms = sum(int(n) * unit_ms for n, (_, unit_ms) in zip(numbers, DURATION_UNITS, strict=True) if n)
        if ms * 1_000_000 <= 2**63 - 1:
            assert assets.parse_duration(text) == ms / 1000
        else:
            with pytest.raises(ValueError, match="longer than Prometheus can hold"):
                assets.parse_duration(text)


@pytest.mark.parametrize(("text", "seconds"), [("0s", 0), ("0", 0), ("1h30m", 5400), ("1y2w3d4h5m6s7ms", 33019506.007)])
def test_parse_duration_examples(text, seconds):
    """The issue's examples, and every unit at once."""
    assert assets.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["30s2m", "1h1h", "", "1.5h", "h", "5", "-1s", "1 h", "1H", "\u0665m", "\uff15m", "1\u0660s"]
)
def test_parse_duration_refuses_what_prometheus_refuses(text):
    """Units out of order or repeated, fractions, bare numbers, signs, spaces and non-ASCII digits are not durations."""
    with pytest.raises(ValueError, match="is not a Prometheus duration"):
        assets.parse_duration(text)


@given(namespaces, namespaces)
def test_namespaced_dashboard_uids_are_distinct_short_and_stable(first, second):
    """Two namespaces give every dashboard two uids of at most 40 characters, the same each time."""
    for name in dashboards.DASHBOARDS:
        uid = json.loads(dashboards.render(dashboards.DASHBOARDS[name]))["uid"]
        a, b = assets.namespaced_uid(uid, first), assets.namespaced_uid(uid, second)
        assert len(a) <= 40 and len(b) <= 40
        assert re.fullmatch(r"[A-Za-z0-9_-]+", a), a  # what Grafana allows in a uid
        assert a == assets.namespaced_uid(uid, first)
        assert (a == b) == (first == second)


def test_namespaced_dashboards_of_close_namespaces_do_not_collide():
    """checkout_eu and checkout_us, whose uids used to be cut to the same 40 characters, get distinct uids."""
    uids = {}
    for namespace in ("checkout_eu", "checkout_us"):
        files = assets.render(namespace=namespace)
        uids[namespace] = {name: json.loads(files[name])["uid"] for name in files if name.startswith("grafana/")}
    for name, uid in uids["checkout_eu"].items():
        assert uid != uids["checkout_us"][name], name
        assert len(uid) <= 40


def test_set_objectives_still_tunes_the_connector_and_api_objectives():
    """``set_objectives`` (0.1.0) rewrites the two objectives of the new rules as ``slo.build`` writes them."""
    from bizmetrics.assets import slo

    tuned = assets.set_objectives(slo.build(), connector=0.9, api={"checkout": 0.5})
    assert tuned == slo.build(objectives={"connector": 0.9, "api": {"checkout": 0.5}})
    assert tuned != slo.build()


def test_shipped_slo_rules_match_their_description():
    """The shipped slo_rules.yml is what ``bizmetrics.assets.slo`` builds (``python -m bizmetrics.assets.slo``)."""
    from bizmetrics.assets import slo

    assert ASSETS.joinpath("prometheus").joinpath("slo_rules.yml").read_text() == slo.build()


def test_every_slo_has_its_objective_budget_and_alerts():
    """Each of the eight SLOs has an objective, a 30-day budget, and fast (critical) and slow (ticket) alerts."""
    from bizmetrics.assets import slo

    assert list(slo.SLOS) == [
        "connector", "api", "workflow", "agent", "api_latency", "connector_latency", "agent_latency", "agent_ttft",
    ]  # fmt: skip
    rules = all_rules()
    for name, one in slo.SLOS.items():
        recorded = {(r["record"], r.get("labels", {}).get("slo")) for r in rules if "record" in r}
        assert ("job:bizmetrics_slo_objective:ratio", name) in recorded
        assert ("job:bizmetrics_slo_error_budget_remaining:ratio", name) in recorded
        assert (("job:bizmetrics_slo_latency_threshold:ms", name) in recorded) == one.latency
        for speed, severity in (("Fast", "critical"), ("Slow", "ticket")):
            names = [f"Bizmetrics{one.title}SLOBurnRate{speed}"]
            if not one.latency:
                names.append(f"Bizmetrics{one.title}TenantSLOBurnRate{speed}")
            for alert in names:
                rule = next(r for r in alerts() if r["alert"] == alert)
                assert rule["labels"] == {"severity": severity, "slo": name}, alert
                assert "job:bizmetrics_alert_min_events:count" in rule["expr"], alert
                assert "unless on (job) batch_job_last_run_success" in rule["expr"], alert
        tenant_alert = f"Bizmetrics{one.title}TenantSLOBurnRateFast"
        if not one.latency:
            assert "wilson_lower" in next(r for r in alerts() if r["alert"] == tenant_alert)["expr"]


def test_every_page_is_about_a_service_and_every_ratio_alert_is_guarded():
    """Critical alerts aggregate to job (tenant_id only on per-customer SLO alerts); every ratio alert has a guard."""
    for rule in alerts():
        expr = rule["expr"]
        if "ratio_rate" in expr:
            assert "job:bizmetrics_alert_min_events:count" in expr, rule["alert"]
            assert "unless on (job) batch_job_last_run_success" in expr, rule["alert"]
        if rule["labels"]["severity"] == "critical" and "ratio_rate" in expr:
            detail = re.findall(r"\b(job_[a-z_]+):", expr)
            allowed = {"job_tenant_id"} if "Tenant" in rule["alert"] else set()
            assert set(detail) <= allowed, (rule["alert"], detail)


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def _objectives(slo_rules: str) -> dict[str, str]:
    return {
        rule["labels"]["slo"]: rule["expr"]
        for group in yaml.safe_load(slo_rules)["groups"]
        for rule in group["rules"]
        if rule.get("record") == "job:bizmetrics_slo_objective:ratio"
    }


def _rule(text: str, name: str) -> dict[str, object]:
    found = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"] if name in (r.get("alert"), r.get("record"))]
    assert len(found) == 1, name
    return found[0]


def test_export_assets_writes_every_file_as_shipped(tmp_path):
    """``export-assets DIR`` writes the rules, dashboards and Alertmanager example exactly as shipped."""
    done = export_assets(tmp_path)
    assert done.returncode == 0, done.stderr
    expected = sorted(
        [f"prometheus/{name}" for name in assets.RULE_FILES]
        + [f"grafana/{name}" for name in dashboards.DASHBOARDS]
        + ["alertmanager/alertmanager.yml"]
    )
    assert _files(tmp_path) == sorted([*expected, assets.MANIFEST])  # the manifest: test_export_manifest.py
    assert done.stdout.split() == [str(tmp_path / name) for name in [*assets.render(), assets.MANIFEST]]
    for name in expected:
        assert (tmp_path / name).read_text() == ASSETS.joinpath(name.split("/")[0]).joinpath(
            name.split("/")[1]
        ).read_text()
    assert _objectives((tmp_path / "prometheus" / "slo_rules.yml").read_text()) == {
        "connector": "0.995 * group by (job) (connector_operations_total)",
        "api": "0.999 * group by (job) (api_requests_total)",
        "workflow": "0.99 * group by (job) (workflow_executions_total)",
        "agent": "0.99 * group by (job) (agent_invocations_total)",
        "api_latency": "0.99 * group by (job) (api_request_duration_count)",
        "connector_latency": "0.99 * group by (job) (connector_operation_duration_count)",
        "agent_latency": "0.95 * group by (job) (agent_response_duration_count)",
        "agent_ttft": "0.95 * group by (job) (agent_time_to_first_token_count)",
    }


@pytest.mark.slow
def test_export_assets_options_tune_the_files(tmp_path):
    """Every export option lands where it should, and promtool accepts the result."""
    done = export_assets(
        tmp_path,
        "--jobs",
        "checkout|billing",
        "--connector-objective",
        "0.99",
        "--connector-objective",
        "checkout=0.999",
        "--api-objective",
        "billing=0.98",
        "--connector-error-ratio",
        "0.1",
        "--connector-error-ratio-critical",
        "0.4",
        "--workflow-failure-ratio",
        "0.2",
        "--api-5xx-ratio",
        "0.02",
        "--batch-stale-after",
        "3h",
        "--for",
        "BizmetricsTargetDown=30s",
        "--for",
        "BizmetricsApiSLOBurnRateFast=1m",
        "--workflow-objective",
        "billing=0.95",
        "--api-latency-threshold",
        "250",
        "--api-latency-threshold",
        "checkout=1000",
        "--min-events",
        "20",
        "--min-events",
        "checkout=500",
    )
    assert done.returncode == 0, done.stderr
    prom = tmp_path / "prometheus"
    check = subprocess.run(
        [binary("promtool"), "check", "rules", *(str(prom / name) for name in assets.RULE_FILES)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    alerting = (prom / "alerting_rules.yml").read_text()
    slo = (prom / "slo_rules.yml").read_text()
    assert _rule(alerting, "BizmetricsTargetDown")["expr"] == 'up{job=~"checkout|billing"} == 0'
    assert _rule(alerting, "BizmetricsTargetDown")["for"] == "30s"
    assert str(_rule(alerting, "BizmetricsTargetDown")["annotations"]["description"]).endswith(  # type: ignore[index]
        " for 30s."
    )
    assert _rule(slo, "BizmetricsApiSLOBurnRateFast")["for"] == "1m"
    expected = {
        "BizmetricsConnectorErrorRatioHigh": ("0.1", "10%"),
        "BizmetricsConnectorErrorRatioCritical": ("0.4", "40%"),
        "BizmetricsWorkflowFailureRatioHigh": ("0.2", "20%"),
        "BizmetricsApi5xxRatioHigh": ("0.02", "2%"),
    }
    for alert, (value, percent) in expected.items():
        rule = _rule(alerting, alert)
        assert f"ratio_rate5m > {value}\n" in str(rule["expr"]), alert
        assert f"More than {percent} " in str(rule["annotations"]["description"]), alert  # type: ignore[index]
    stale = _rule(alerting, "BizmetricsBatchJobStale")
    assert stale["expr"] == "time() - batch_job_last_success_timestamp_seconds > 10800"
    assert "more than 3h ago" in str(stale["annotations"]["description"])  # type: ignore[index]
    objectives = _objectives(slo)
    assert {name: objectives[name] for name in ("connector", "api", "workflow")} == {
        "connector": 'label_replace(vector(0.999), "job", "checkout", "", "")'
        " or 0.99 * group by (job) (connector_operations_total)",
        "api": 'label_replace(vector(0.98), "job", "billing", "", "") or 0.999 * group by (job) (api_requests_total)',
        "workflow": 'label_replace(vector(0.95), "job", "billing", "", "")'
        " or 0.99 * group by (job) (workflow_executions_total)",
    }
    threshold = next(
        r for g in yaml.safe_load(slo)["groups"] for r in g["rules"]
        if r.get("record") == "job:bizmetrics_slo_latency_threshold:ms" and r["labels"]["slo"] == "api_latency"
    )  # fmt: skip
    assert threshold["expr"] == (
        'label_replace(vector(1000.0), "job", "checkout", "", "")'
        " or 250.0 * group by (job) (api_request_duration_count)"
    )
    assert r'api_request_duration_bucket{job="checkout", le=~"1000(\\.0)?"}' in slo
    assert r'api_request_duration_bucket{job!~"checkout", le=~"250(\\.0)?"}' in slo
    assert str(_rule(slo, "job:bizmetrics_alert_min_events:count")["expr"]).startswith(
        'label_replace(vector(500), "job", "checkout", "", "") or 20 * group by (job) ({__name__=~"'
    )
    for name in dashboards.DASHBOARDS:
        board = json.loads((tmp_path / "grafana" / name).read_text())
        job = next(v for v in board["templating"]["list"] if v["name"] == "job")
        assert job["allValue"] == "checkout|billing"
        assert 'job=~"checkout|billing"' in job["definition"]
    # Only the options change the files: the rest is as shipped.
    assert (prom / "recording_rules.yml").read_text() == ASSETS.joinpath("prometheus").joinpath(
        "recording_rules.yml"
    ).read_text()


@pytest.mark.slow
def test_export_assets_jobs_regex_is_escaped_for_promql(tmp_path):
    """A --jobs regex with a backslash or a quote lands in PromQL strings escaped, and promtool accepts it."""
    done = export_assets(tmp_path, "--jobs", 'web-\\d+|"odd"')
    assert done.returncode == 0, done.stderr
    alerting = (tmp_path / "prometheus" / "alerting_rules.yml").read_text()
    assert _rule(alerting, "BizmetricsTargetDown")["expr"] == 'up{job=~"web-\\\\d+|\\"odd\\""} == 0'
    check = subprocess.run(
        [binary("promtool"), "check", "rules", str(tmp_path / "prometheus" / "alerting_rules.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    board = json.loads((tmp_path / "grafana" / "connector-health.json").read_text())
    job = next(v for v in board["templating"]["list"] if v["name"] == "job")
    assert job["allValue"] == 'web-\\\\d+|\\"odd\\"'


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api-objective", "1.5"], "between 0 and 1"),
        (["--connector-objective", "checkout=0"], "between 0 and 1"),
        (["--api-5xx-ratio", "2"], "between 0 and 1"),
        (["--batch-stale-after", "5x"], "not a Prometheus duration"),
        (["--for", "BizmetricsNoSuchAlert=5m"], "no alert BizmetricsNoSuchAlert"),
        (["--for", "BizmetricsTargetDown"], "NAME=VALUE"),
        (["--jobs", "("], "is not a regex"),
        (["--jobs", "(?!billing).+"], "RE2"),
        (["--namespace", "1acme"], "not a valid metric name prefix"),
        (["--for", "BizmetricsTargetDown=30s2m"], "is not a Prometheus duration"),
        (["--for", "BizmetricsTargetDown=1h1h"], "is not a Prometheus duration"),
        (["--batch-stale-after", "0s"], "longer than zero"),
        (["--api-latency-threshold", "300"], "must be a bucket bound of api_request_duration"),
        (
            ["--agent-ttft-threshold", "checkout=333"],
            "the agent_ttft threshold of job 'checkout' must be a bucket bound",
        ),
        (["--workflow-objective", "1"], "between 0 and 1"),
        (["--agent-latency-objective", "checkout=x"], "--agent-latency-objective must be RATIO or JOB=RATIO"),
        (["--min-events", "many"], "--min-events must be N or JOB=N"),
        (["--min-events", "checkout=-5"], "must be a count"),
    ],
)
def test_export_assets_rejects_bad_options(tmp_path, args, message):
    """A bad option value exits with 1, says why, and writes nothing."""
    done = export_assets(tmp_path, *args)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert _files(tmp_path) == []


def test_export_assets_namespace_gives_the_dashboards_their_own_identity(tmp_path):
    """--namespace acme: prefixed names, and dashboard uids and titles of their own beside the plain ones."""
    assert export_assets(tmp_path, "--namespace", "acme").returncode == 0
    board = json.loads((tmp_path / "grafana" / "connector-health.json").read_text())
    plain = json.loads(dashboards.render(dashboards.DASHBOARDS["connector-health.json"]))
    assert board["uid"] == plain["uid"] + "-acme" and board["title"] == plain["title"] + " (acme)"
    assert all("acme_connector" in t["expr"] for p in board["panels"] for t in p["targets"])


def test_export_assets_never_overwrites_a_differing_file_without_force(tmp_path):
    """An edited file is left alone (exit 1, listed); unchanged files are fine; --force overwrites."""
    assert export_assets(tmp_path).returncode == 0
    edited = tmp_path / "prometheus" / "alerting_rules.yml"
    edited.write_text(edited.read_text().replace("for: 2m", "for: 3m"))
    mine = edited.read_text()
    removed = tmp_path / "grafana" / "system-overview.json"
    removed.unlink()

    again = export_assets(tmp_path)
    assert again.returncode == 1
    assert again.stderr.splitlines() == [
        f"bizmetrics export-assets: left alone (edited by hand, --force overwrites): {edited}"
    ]
    assert again.stdout.split() == [str(removed), str(tmp_path / assets.MANIFEST)]
    assert edited.read_text() == mine

    tuned = export_assets(tmp_path, "--api-objective", "0.99")
    assert tuned.returncode == 1
    assert str(edited) in tuned.stderr
    # slo_rules.yml is as the last export wrote it, so new options regenerate it (test_export_manifest.py).
    assert tuned.stdout.split() == [str(tmp_path / "prometheus" / "slo_rules.yml"), str(tmp_path / assets.MANIFEST)]

    forced = export_assets(tmp_path, "--defaults", "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(forced.stdout.split()) == sorted(
        [str(edited), str(tmp_path / "prometheus" / "slo_rules.yml"), str(tmp_path / assets.MANIFEST)]
    )
    assert edited.read_text() == ASSETS.joinpath("prometheus").joinpath("alerting_rules.yml").read_text()
    assert export_assets(tmp_path).returncode == 0


@pytest.mark.slow
def test_alertmanager_example_passes_amtool_and_routes_by_severity(tmp_path):
    """``amtool check-config`` accepts the shipped alertmanager.yml; critical pages, warning and ticket do not."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(ASSETS.joinpath("alertmanager").joinpath("alertmanager.yml").read_text())
    done = subprocess.run([binary("amtool"), "check-config", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    for severity, receiver in (("critical", "pager"), ("warning", "ticket"), ("ticket", "ticket")):
        routed = subprocess.run(
            [binary("amtool"), "config", "routes", "test", f"--config.file={config}", f"severity={severity}", "job=x"],
            capture_output=True,
            text=True,
        )
        assert routed.returncode == 0, routed.stderr
        assert routed.stdout.split() == [receiver], severity


@pytest.mark.parametrize("name", list(dashboards.DASHBOARDS))
def test_shipped_dashboards_match_their_descriptions(name):
    """The shipped JSON is what ``bizmetrics.assets.dashboards`` builds, with a job variable every panel honours."""
    shipped = ASSETS.joinpath("grafana").joinpath(name).read_text()
    assert shipped == dashboards.render(dashboards.DASHBOARDS[name])
    board = json.loads(shipped)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "tenant" in variables
    job = variables["job"]
    assert (job["multi"], job["includeAll"], job["allValue"]) == (True, True, assets.DEFAULT_JOBS)
    assert job["current"]["value"] == ["$__all"]
    for variable in variables.values():
        if variable["name"] not in ("datasource", "job"):
            # Within the chosen services: the selector ends with the job filter.
            assert 'job=~"$job"}' in variable["definition"], variable["name"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]
        exprs = [target["expr"] for target in panel["targets"]]
        assert all('job=~"$job"' in expr for expr in exprs), panel["title"]
        per_tenant = all("$tenant" in expr for expr in exprs)
        says_so = panel["title"].endswith(dashboards.NO_TENANT) and panel["description"] == dashboards.NO_TENANT_NOTE
        assert per_tenant != says_so, panel["title"]


def test_dashboards_say_which_panels_ignore_the_tenant():
    """The latency, DB, cache, scrape and batch panels cannot split by tenant, and say so; the counters can."""
    ignoring = sorted(
        f"{name}: {panel['title']}"
        for name in dashboards.DASHBOARDS
        for panel in json.loads(dashboards.render(dashboards.DASHBOARDS[name]))["panels"]
        if panel["title"].endswith(dashboards.NO_TENANT)
    )
    assert ignoring == sorted(
        f"{name}: {title}{dashboards.NO_TENANT}"
        for name, title in [
            ("connector-health.json", "Operation latency"),
            ("connector-health.json", "Average operation duration"),
            ("workflow-performance.json", "Execution duration"),
            ("workflow-performance.json", "Average execution duration"),
            ("workflow-performance.json", "Step duration p95"),
            ("ai-agent-analytics.json", "Response time"),
            ("ai-agent-analytics.json", "Time to first token (streams)"),
            ("ai-agent-analytics.json", "Tool latency"),
            ("system-overview.json", "Tenants with their own label, and records folded into __overflow__ per second"),
            ("system-overview.json", "API latency p95 by endpoint"),
            ("system-overview.json", "DB query latency"),
            ("system-overview.json", "DB connection pool size"),
            ("system-overview.json", "Cache hit ratio"),
            ("system-overview.json", "Scrape targets up"),
            ("system-overview.json", "Batch jobs: time since last success"),
            ("system-overview.json", "Batch jobs: last run succeeded (1) or failed (0)"),
            ("system-overview.json", "Batch jobs: last run duration"),
            ("slo-overview.json", "Error budget left (30 days)"),
            ("slo-overview.json", "Burn rate (1 hour): 1 spends the budget in exactly 30 days"),
            ("slo-overview.json", "Attainment (30 days) and objective"),
            ("slo-overview.json", "Latency thresholds of the latency SLOs"),
            ("slo-overview.json", "Events per hour, and the minimum an alert's window needs"),
            ("pools-rate-limits.json", "Pool connections: open and in use"),
            ("pools-rate-limits.json", "Pool checkout wait p95"),
            ("pools-rate-limits.json", "Pool checkout timeouts per second"),
            ("pools-rate-limits.json", "Pool connections created and invalidated per second"),
            ("background-jobs.json", "Queue wait"),
            ("background-jobs.json", "Run duration"),
            ("background-jobs.json", "Jobs in progress (live workers)"),
            ("background-jobs.json", "Queue depth (when read from the broker)"),
        ]
    )


# --- End to end: the demo, a Pushgateway and Prometheus ------------------------------------

BATCH_TENANT = unique("batch")
BATCH_RECORDS = 47


class Stack(Prometheus):
    """The module's Prometheus, with what the fixture did: when each batch run pushed."""

    gateway: str
    runs: list[float]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Prometheus scraping the demo (job "bizmetrics") and a Pushgateway every second, with the shipped rules.

    The demo names tenant_123 in BIZMETRICS_TENANT_LATENCY, as a service would its key customers.
    """
    work = tmp_path_factory.mktemp("prometheus")
    assets.export(work)
    demo_port, gateway_port, prom_port = free_port(), free_port(), free_port()
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
    with (
        pushgateway(gateway_port, work),
        process(
            [sys.executable, "-m", "bizmetrics", "demo", "--port", str(demo_port), "--seed", "7"],
            # One key customer's latency per tenant, for the per-tenant latency SLOs and panel.
            env={**os.environ, "BIZMETRICS_TENANT_LATENCY": "tenant_123"},
        ),
        start_prometheus(config, work, prom_port),
    ):
        gateway = f"127.0.0.1:{gateway_port}"
        wait(lambda: get(f"http://{gateway}/-/ready"), "the Pushgateway")
        wait(lambda: get(f"http://127.0.0.1:{prom_port}/-/ready"), "Prometheus")
        prom = Stack(f"http://127.0.0.1:{prom_port}")
        prom.gateway, prom.runs = gateway, []
        # Three runs of a nightly sync, each one a new process, each seen by a few scrapes.
        wait(lambda: prom.result('up{job="pushgateway"} == 1'), "a first scrape of the Pushgateway")
        records = f'connector_sync_records_total{{job="nightly_sync",tenant_id="{BATCH_TENANT}"}}'
        for run in range(1, 4):
            batch_run(gateway, "nightly_sync", "cron-1", BATCH_RECORDS, BATCH_TENANT)
            prom.runs.append(time.time())
            wait(lambda run=run: prom.result(f"{records} == {run * BATCH_RECORDS}"), f"batch run {run} in Prometheus")
            time.sleep(2)
        # Rates and quantiles need a few scrapes of every family, errors included.
        wait(lambda: prom.result("agent_errors_total"), "agent errors in Prometheus")
        wait(lambda: prom.result("workflow_failures_total"), "workflow failures in Prometheus")
        time.sleep(3)
        yield prom


@pytest.mark.slow
def test_readme_promql_returns_data(prometheus):
    """Every PromQL query of README and the docs returns a non-empty result from a Prometheus scraping the demo."""
    queries = promql_queries()
    assert len(queries) >= 10
    # 90 s: the cost rules read each counter's sample of a minute before; an anomaly band needs a day of history.
    empty = [
        (where, q) for where, q in queries if not needs_history(q) and not prometheus.eventually_nonempty(q, timeout=90)
    ]
    assert not empty, "queries without data:\n" + "\n".join(f"{where}: {q}" for where, q in empty)


@pytest.mark.slow
def test_recording_rules_return_data_per_job(prometheus):
    """Every recording rule has data, and every series it records names a job that exists."""
    records = sorted({rule["record"] for rule in all_rules() if "record" in rule and not needs_history(rule["record"])})
    empty = [r for r in records if not prometheus.eventually_nonempty(r, timeout=20)]
    assert empty == []
    for record in records:
        jobs = {series["metric"].get("job") for series in prometheus.result(record)}
        assert jobs and jobs <= {"bizmetrics", "nightly_sync"}, record
    # The batch job's syncs stay apart from the service's.
    synced = prometheus.result("job_connector_type_resource_type_tenant_id:connector_sync_records:increase1h")
    assert {s["metric"]["job"] for s in synced} == {"bizmetrics", "nightly_sync"}


@pytest.mark.slow
def test_alert_expressions_evaluate_on_series_that_exist(prometheus):
    """Every alert expression evaluates, and every series it reads has data (so it can fire)."""
    for rule in alerts():
        prometheus.result(rule["expr"])
        read = sorted(s for s in _series_in(rule["expr"]) if not needs_history(s))
        missing = [s for s in read if not prometheus.eventually_nonempty(s, timeout=20)]
        assert missing == [], rule["alert"]
    assert prometheus.result('ALERTS unless ALERTS{job!=""}') == [], "an alert without its job"
    rules = json.loads(get(f"{prometheus.url}/api/v1/rules"))["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert unhealthy == []


@pytest.mark.slow
def test_dashboard_panels_and_variables_return_data(prometheus):
    """Every panel query of every dashboard (variables set to All) and every variable query return data."""
    empty = []
    for where, expr in dashboard_targets():
        query = all_variables(expr)
        if needs_history(query):
            continue
        if not prometheus.eventually_nonempty(query, timeout=20):
            empty.append((where, query))
    assert empty == []
    for name in dashboards.DASHBOARDS:
        board = json.loads(ASSETS.joinpath("grafana").joinpath(name).read_text())
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"]).groups()
            url = f"{prometheus.url}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
                {"match[]": all_variables(selector)}
            )
            values = json.loads(get(url))["data"]
            assert values, (name, variable["name"])
            if label == "job":
                assert "bizmetrics" in values, name


def _at(ms: int) -> float:
    return ms / 1000


@pytest.mark.slow
def test_batch_runs_add_up_in_prometheus(prometheus):
    """Three runs of 47 records go through a real Pushgateway: Prometheus sees 47, 94, 141, and increase() adds up."""
    group = 'job="nightly_sync",instance="cron-1"'
    records = f'connector_sync_records_total{{{group},tenant_id="{BATCH_TENANT}"}}'
    samples = [(round(float(ts) * 1000), float(v)) for ts, v in prometheus.result(f"{records}[5m]")[0]["values"]]
    assert sorted({v for _, v in samples}) == [47.0, 94.0, 141.0]
    assert [v for _, v in samples] == sorted(v for _, v in samples), "the pushed counter only goes up"
    # increase() between the last scrape of run 1's total and the first of run 3's: the
    # window's edges are samples, so Prometheus does not extrapolate: runs 2 and 3 exactly.
    start = max(ts for ts, v in samples if v == 47.0)
    end = min(ts for ts, v in samples if v == 141.0)
    increase = prometheus.result(f"increase({records}[{end - start}ms])", at=_at(end))
    assert [float(s["value"][1]) for s in increase] == [2 * BATCH_RECORDS]
    success = prometheus.result(f"batch_job_last_success_timestamp_seconds{{{group}}}")
    assert prometheus.runs[2] - 5 < float(success[0]["value"][1]) <= prometheus.runs[2]
    assert [float(s["value"][1]) for s in prometheus.result(f"batch_job_last_run_success{{{group}}}")] == [1.0]
    duration = prometheus.result(f"batch_job_last_run_duration_seconds{{{group}}}")
    assert 0 < float(duration[0]["value"][1]) < 5


@pytest.mark.slow
def test_slo_series_of_the_demo_in_prometheus(prometheus):
    """Every SLO has its objective, budget and burn ratios; latency SLOs per tenant only for the tracked tenant."""
    from bizmetrics.assets import slo

    objectives = {s["metric"]["slo"] for s in prometheus.result('job:bizmetrics_slo_objective:ratio{job="bizmetrics"}')}
    assert objectives == set(slo.SLOS)
    thresholds = {
        s["metric"]["slo"]: float(s["value"][1])
        for s in prometheus.result('job:bizmetrics_slo_latency_threshold:ms{job="bizmetrics"}')
    }
    assert thresholds == {name: one.threshold for name, one in slo.SLOS.items() if one.latency}
    budgets = prometheus.result('job:bizmetrics_slo_error_budget_remaining:ratio{job="bizmetrics"}')
    assert {s["metric"]["slo"] for s in budgets} == set(slo.SLOS)
    assert all(float(s["value"][1]) <= 1 for s in budgets)
    per_tenant = prometheus.result('job_tenant_id:bizmetrics_slo_error_budget_remaining:ratio{job="bizmetrics"}')
    rows = {(s["metric"]["tenant_id"], s["metric"]["slo"]) for s in per_tenant}
    assert {("tenant_456", name) for name in ("connector", "api", "workflow", "agent")} <= rows
    latency_rows = {row for row in rows if row[1].endswith("_latency")}
    assert latency_rows == {
        ("tenant_123", "api_latency"),
        ("tenant_123", "connector_latency"),
        ("tenant_123", "agent_latency"),
    }
    minimum = prometheus.result('job:bizmetrics_alert_min_events:count{job="bizmetrics"}')
    assert [float(s["value"][1]) for s in minimum] == [assets.DEFAULT_MIN_EVENTS]
