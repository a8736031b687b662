"""The anomaly rules (``bizmetrics/assets/anomaly.py``): shipped as built, exported, and proven with promtool."""

from __future__ import annotations

import subprocess

import anomaly_spec
import pytest
import yaml
from support.ops import ASSETS, HERE, promtool_unit_tests, rules
from support.servers import binary

from bizmetrics import assets
from bizmetrics.assets import anomaly, dashboards


def test_shipped_anomaly_rules_match_their_description():
    """The shipped anomaly_rules.yml is what ``python -m bizmetrics.assets.anomaly`` writes."""
    assert ASSETS.joinpath("prometheus").joinpath("anomaly_rules.yml").read_text() == anomaly.build()


def test_the_promtool_scenarios_are_what_the_spec_builds():
    """tests/promtool/anomaly_test.yml is what tests/anomaly_spec.py writes."""
    assert (HERE / "promtool" / "anomaly_test.yml").read_text() == anomaly_spec.text()


def test_export_assets_writes_the_anomaly_rules_and_dashboard():
    files = assets.render()
    assert "anomaly_rules.yml" in assets.RULE_FILES
    assert files["prometheus/anomaly_rules.yml"] == anomaly.build()
    assert files["grafana/anomalies.json"] == dashboards.render(dashboards.anomalies)


def test_every_anomaly_alert_follows_the_conventions():
    """Names end in Anomaly; labels direction and severity; runbook_url per alert; signal, tenant_id and job kept."""
    alerts = [rule for group in rules("anomaly_rules.yml")["groups"] for rule in group["rules"] if "alert" in rule]
    assert {a["alert"] for a in alerts} == {
        "BizmetricsUsageSpikeAnomaly",
        "BizmetricsUsageDropAnomaly",
        "BizmetricsErrorRatioAnomaly",
        "BizmetricsLatencyAnomaly",
    }
    for alert in alerts:
        assert alert["alert"].endswith("Anomaly")
        assert alert["labels"]["direction"] in ("up", "down")
        assert alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["runbook_url"] == (
            f"https://bizmetrics.readthedocs.io/en/latest/operations/runbook.html#{alert['alert'].lower()}"
        )
        # Nothing aggregates the labels away: the value series carries signal, job and tenant_id.
        assert " by (" not in alert["expr"] and "without" not in alert["expr"]
    values = [
        rule
        for group in rules("anomaly_rules.yml")["groups"]
        for rule in group["rules"]
        if rule.get("record") == anomaly.VALUE
    ]
    assert {rule["labels"]["signal"] for rule in values} == {
        "records_synced",
        "connector_operations",
        "api_requests",
        "workflow_executions",
        "agent_invocations",
        "tokens",
        "cost",
        "connector_error_ratio",
        "api_error_ratio",
        "workflow_error_ratio",
        "latency",
    }
    assert all("by (job, tenant_id" in rule["expr"] for rule in values)


def test_the_fixed_ratio_token_alert_is_gone():
    """The anomaly rules replace the token spike alert (3x the last day's average), which missed drops and weekends."""
    names = {rule.get("alert") for name in assets.RULE_FILES for g in rules(name)["groups"] for rule in g["rules"]}
    assert "BizmetricsAgentTokenUsageSpike" not in names


@pytest.mark.slow
def test_anomaly_rules_pass_promtool_check(tmp_path):
    path = tmp_path / "anomaly_rules.yml"
    path.write_text(anomaly.build())
    done = subprocess.run([binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_spike_and_drop_alert_within_15_minutes_and_seasonality_sparse_and_growth_do_not(tmp_path):
    """anomaly_test.yml: eight days with daily and weekly seasonality; a 5x spike, a 90% drop, a 30% error ratio and a
    24x latency alert within 15 minutes; the weekend dip, a sparse tenant and a tenant growing 4% a day do not."""
    done = promtool_unit_tests(tmp_path, "anomaly_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_quiet_tenants_alert_with_a_band_of_the_envelope_alone(tmp_path):
    """The same scenarios with no tolerance around the seasonal envelope (factor 1, spread ignored): the sparse and
    growing tenants alert, so the floor factor and the learnt spread are what keep them quiet."""
    rendered = assets.render()
    rendered["prometheus/anomaly_rules.yml"] = anomaly.build(k=0.0, min_ratio=1.0)
    done = promtool_unit_tests(tmp_path, "anomaly_test.yml", rendered=rendered)
    assert done.returncode != 0
    assert 'ALERTS{tenant_id=~\\"steady|growing|sparse\\"}' in done.stdout + done.stderr


def test_the_spec_holds_the_scenarios_the_issue_names():
    spec = yaml.safe_load((HERE / "promtool" / "anomaly_test.yml").read_text())
    tenants = {
        s["series"].split('tenant_id="')[1].split('"')[0]
        for s in spec["tests"][0]["input_series"]
        if "tenant_id" in s["series"]
    }
    assert {"steady", "growing", "sparse", "spike", "drop", "errors", "slow"} <= tenants
