"""The cost, budget and usage rules: promtool unit tests over a scripted month, and that they can fail."""

from __future__ import annotations

import json

import pytest
from support.ops import ASSETS, alerts, all_rules, promtool_unit_tests

from bizmetrics.assets import dashboards

#: (rule, text of its expression, replacement, the mistake it stands for)
BROKEN = [
    (
        "job_tenant_id_currency_period:bizmetrics_tenant_budget:max",
        "max by",
        "sum by",
        "the same budget of two workers added up",
    ),
    (
        "job_tenant_id_currency:agent_cost:month_to_date",
        "+ 7200",
        "+ 3600",
        "the last hour of the previous month counted in this one",
    ),
    ("BizmetricsTenantBudget80Percent", ">= 0.8", ">= 0.9", "the warning at 90%"),
    (
        "job_tenant_id_currency_period:agent_cost:forecast",
        "days_in_month() * 86400",
        "30 * 86400",
        "every month 30 days long",
    ),
]


@pytest.mark.slow  # promtool over a month of samples: about 30 s of CPU
def test_cost_rules_over_a_scripted_month(tmp_path):
    """Month to date, a day's cost, 30 days, shares, the forecast, and the 80% / 100% / forecast alerts."""
    result = promtool_unit_tests(tmp_path, "cost_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # promtool, a day and a half evaluated every minute: about 10 s of CPU
def test_month_and_day_to_date_are_exact_to_the_minute(tmp_path):
    """A burst mid-hour counts once, at once; a reset, a scrape gap, midnight; a tenant whose series is gone keeps
    its spend, its budget ratio and its alert (cost_minutes_test.yml)."""
    result = promtool_unit_tests(tmp_path, "cost_minutes_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# Each is a month in promtool (half a minute): they run with the end-to-end tests.
@pytest.mark.slow
@pytest.mark.parametrize(("rule", "old", "new", "why"), BROKEN, ids=[b[3] for b in BROKEN])
def test_the_scripted_month_catches_a_broken_cost_rule(tmp_path, rule, old, new, why):
    result = promtool_unit_tests(tmp_path, "cost_test.yml", break_rule=(rule, old, new))
    assert result.returncode != 0, why


def test_budget_alerts_carry_the_tenant_and_the_three_severities():
    budget = {rule["alert"]: rule for rule in alerts() if "Budget" in rule["alert"] and "Tenant" in rule["alert"]}
    assert {rule["labels"]["severity"] for rule in budget.values()} == {"warning", "critical", "ticket"}
    for rule in budget.values():
        assert "tenant_id" in rule["annotations"]["summary"], rule["alert"]
    # The forecast is a rate: it has the volume guard of the ratio alerts.
    assert "job:bizmetrics_alert_min_events:count" in budget["BizmetricsTenantBudgetForecastExhausted"]["expr"]


def test_usage_analytics_per_tenant_and_day():
    records = {rule["record"] for rule in all_rules() if "record" in rule}
    for usage in (
        "connector_sync_records",
        "connector_operations",
        "api_requests",
        "workflow_executions",
        "agent_invocations",
    ):
        for kind in ("increase1d", "share1d", "top10_1d"):
            assert f"job_tenant_id:{usage}:{kind}" in records
    for kind in ("increase1d", "share1d", "top10_1d"):
        assert f"job_tenant_id_token_type:agent_token_usage:{kind}" in records
    for kind in ("increase1d", "increase30d", "month_to_date", "share1d", "top10_1d"):
        assert f"job_tenant_id_currency:agent_cost:{kind}" in records


def test_dashboards_are_sorted_by_role_and_link_to_every_role():
    roles = {
        "business.json": "business",
        "system-overview.json": "operations",
        "connector-health.json": "operations",
        "slo-overview.json": "operations",
        "pools-rate-limits.json": "operations",
        "background-jobs.json": "operations",
        "anomalies.json": "operations",
        "workflow-performance.json": "engineering",
        "ai-agent-analytics.json": "engineering",
    }
    assert set(dashboards.DASHBOARDS) == set(roles)
    for name, role in roles.items():
        board = json.loads(ASSETS.joinpath("grafana").joinpath(name).read_text())
        assert board["tags"] == ["bizmetrics", role], name
        links = {link["title"]: link for link in board["links"]}
        assert set(links) == {"Business", "Operations", "Engineering"}, name
        for title, link in links.items():
            assert (link["type"], link["tags"]) == ("dashboards", ["bizmetrics", title.lower()])
            assert link["keepTime"] and link["includeVars"]


def test_the_business_dashboard_shows_what_the_business_asked_for():
    board = json.loads(ASSETS.joinpath("grafana").joinpath("business.json").read_text())
    titles = " | ".join(panel["title"] for panel in board["panels"])
    exprs = " ".join(target["expr"] for panel in board["panels"] for target in panel["targets"])
    for words in (
        "cost per hour by tenant",
        "month-to-date spend against the monthly budget",
        "budget burn",
        "by model and agent",
        "sla attainment per tenant",
        "movers",
        "top tenants",
        "share",
    ):
        assert words in titles.lower(), words
    for series in (
        "job_tenant_id:bizmetrics_slo_errors:ratio_rate30d",
        "job_tenant_id_currency:agent_cost:top10_1d",
        "job_tenant_id_currency_period:agent_cost_budget:ratio",
        "agent_unpriced_tokens_total",
    ):
        assert series in exprs, series
