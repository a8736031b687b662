"""The Business dashboard's variables: one currency at a time, every tenant with usage of any kind."""

from __future__ import annotations

import json
import re

from support.ops import ASSETS


def variables() -> dict[str, dict]:
    board = json.loads(ASSETS.joinpath("grafana").joinpath("business.json").read_text())
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def test_the_currency_variable_is_one_currency_never_all():
    currency = variables()["currency"]
    assert (currency["includeAll"], currency["multi"]) == (False, False)
    # No "All" preselected: Grafana takes the first currency.
    assert currency["current"]["value"] == ""  # none current: Grafana selects the first currency
    assert "allValue" not in currency


def test_the_tenant_variable_lists_tenants_of_the_cost_and_agent_metrics_too():
    query = variables()["tenant"]["query"]["query"]
    names = re.search(r'__name__=~"([^"]+)"', query)
    assert names, query
    listed = set(names.group(1).split("|"))
    assert {"api_requests_total", "agent_cost_total", "agent_invocations_total", "agent_token_usage_total"} <= listed
    assert query.endswith(", tenant_id)") and 'job=~"$job"' in query
