"""The cost, budget and usage rules: promtool unit tests over a scripted month, and that they can fail."""

from __future__ import annotations

import pytest
from ops_helpers import alerts, all_rules, promtool_unit_tests

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
        "vector(time()) - 3600 >=",
        "vector(time()) + 3600 >=",
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


def test_cost_rules_over_a_scripted_month(tmp_path):
    """Month to date, a day's cost, 30 days, shares, the forecast, and the 80% / 100% / forecast alerts."""
    result = promtool_unit_tests(tmp_path, "cost_test.yml")
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
    for kind in ("increase1d", "share1d"):
        assert f"job_tenant_id_token_type:agent_token_usage:{kind}" in records
    for kind in ("increase1d", "increase30d", "month_to_date", "share1d", "top10_1d"):
        assert f"job_tenant_id_currency:agent_cost:{kind}" in records
