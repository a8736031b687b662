"""The Grafana dashboards, built from one description each, sorted by role.

The JSON files in ``grafana/`` are written from here (``python -m
bizmetrics.assets.dashboards``) and shipped in the package; a test checks
they match.  Every panel query is evaluated against a real Prometheus by the
end-to-end test, with the template variables set to "All".

Every dashboard has a ``job`` variable (the services, multi-select, "All")
that every panel honours; a panel whose metric has no ``tenant_id`` says so
in its title and description.

Each dashboard belongs to a role (``ROLES``): Business, Operations or
Engineering.  It is tagged ``bizmetrics`` and its role, and links to the
dashboards of every role through those tags, carrying the time range and
the variables along.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

GRAFANA_DIR = Path(__file__).parent / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: The scrape jobs the dashboards cover unless ``render(jobs=...)`` says otherwise.
DEFAULT_JOBS = ".+"
NO_TENANT = " (all tenants)"
NO_TENANT_NOTE = "This metric has no tenant_id label: the panel shows every tenant whatever the Tenant variable says."

Panel = tuple[str, str, list[tuple[str, str]]]  # title, unit, [(expr, legend)]

#: The roles, in the order of the links on every dashboard.
ROLES = ("Business", "Operations", "Engineering")


def _links() -> list[dict[str, Any]]:
    """One drop-down per role: the bizmetrics dashboards tagged with it."""
    return [
        {
            "title": role,
            "type": "dashboards",
            "tags": ["bizmetrics", role.lower()],
            "asDropdown": True,
            "includeVars": True,
            "keepTime": True,
            "targetBlank": False,
            "icon": "external link",
            "tooltip": f"The {role} dashboards",
            "url": "",
        }
        for role in ROLES
    ]


def _quantiles(metric: str, by: str, selector: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (job, {by}, le) (rate({metric}_bucket{selector}[5m])))",
            f"{{{{job}}}} p{round(q * 100)} {{{{{by.split(',')[0]}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _variable(name: str, label: str, query: str, all_value: str = ".*", *, single: bool = False) -> dict[str, Any]:
    """A query variable: any of its values, "All" by default; ``single``: exactly one, the first by default."""
    variable = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "includeAll": not single,
        "multi": not single,
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }
    if single:
        # Grafana selects the first value when none is current.
        del variable["allValue"]
        variable["current"] = {"selected": False, "text": "", "value": ""}
    return variable


def _job_variable(jobs: str, metrics: str) -> dict[str, Any]:
    """The services: scrape jobs matching ``jobs`` that expose one of ``metrics``; "All" means all of those."""
    # Inside PromQL's double quotes (Grafana pastes "All" there too), a backslash and a quote need escaping.
    quoted = jobs.replace("\\", "\\\\").replace('"', '\\"')
    selector = f'{{__name__=~"{metrics}", job=~"{quoted}"}}' if "|" in metrics else f'{metrics}{{job=~"{quoted}"}}'
    return _variable("job", "Service (job)", f"label_values({selector}, job)", all_value=quoted)


def _table(title: str, description: str, columns: list[tuple[str, str, str]]) -> dict[str, Any]:
    """A table of instant queries joined on their labels: one row per series, one column per (expr, name, unit)."""
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": f"Value #{chr(ord('A') + j)}"},
                    "properties": [{"id": "displayName", "value": name}, {"id": "unit", "value": unit}],
                }
                for j, (_, name, unit) in enumerate(columns)
            ],
        },
        "options": {"showHeader": True, "sortBy": [{"displayName": columns[-1][1], "desc": False}]},
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
        ],
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "refId": chr(ord("A") + j), "instant": True, "format": "table"}
            for j, (expr, _, _) in enumerate(columns)
        ],
    }


def _dashboard(
    role: str,
    uid: str,
    title: str,
    description: str,
    variables: list[dict[str, Any]],
    panels: list[Panel],
    tables: list[dict[str, Any]] = [],  # noqa: B006 (never mutated)
) -> dict[str, Any]:
    built = []
    for i, (panel_title, unit, targets) in enumerate(panels):
        per_tenant = all("$tenant" in expr for expr, _ in targets)
        built.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": panel_title if per_tenant else panel_title + NO_TENANT,
                "description": "" if per_tenant else NO_TENANT_NOTE,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
                "targets": [
                    {
                        "datasource": DATASOURCE,
                        "expr": expr,
                        "legendFormat": legend,
                        "refId": chr(ord("A") + j),
                        # Latency panels show the exemplars (trace ids) of their buckets.
                        "exemplar": "histogram_quantile(" in expr,
                    }
                    for j, (expr, legend) in enumerate(targets)
                ],
            }
        )
    rows = 8 * ((len(built) + 1) // 2)
    for i, table in enumerate(tables):
        built.append({"id": len(built) + 1, "gridPos": {"h": 12, "w": 24, "x": 0, "y": rows + 12 * i}, **table})
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["bizmetrics", role.lower()],
        "links": _links(),
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    # Grafana's schema requires text and value; Grafana picks the
                    # default Prometheus data source when this one does not exist.
                    "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                *variables,
            ]
        },
        "annotations": {"list": []},
        "panels": built,
    }


def _outcome_panels(
    noun: str, counter: str, key: str, errors: str, selector: str, *, ratio: str = "error", errors_noun: str = "Errors"
) -> list[Panel]:
    """Count by status, error (or success) ratio, and errors by type: the three panels every family opens with."""
    ratio_selector = selector.replace("{", f'{{status="{ratio}", ', 1)
    return [
        (
            f"{noun} per second by status",
            "ops",
            [
                (
                    f"sum by (job, {key}, status) (rate({counter}{selector}[5m]))",
                    f"{{{{job}}}} {{{{{key}}}}} {{{{status}}}}",
                )
            ],
        ),
        (
            f"{ratio.capitalize()} ratio",
            "percentunit",
            [
                (
                    f"sum by (job, {key}) (rate({counter}{ratio_selector}[5m]))"
                    f" / sum by (job, {key}) (rate({counter}{selector}[5m]))",
                    f"{{{{job}}}} {{{{{key}}}}}",
                )
            ],
        ),
        (
            f"{errors_noun} per second by error type",
            "ops",
            [
                (
                    f"sum by (job, {key}, error_type) (rate({errors}{selector}[5m]))",
                    f"{{{{job}}}} {{{{{key}}}}} {{{{error_type}}}}",
                )
            ],
        ),
    ]


def _rate_ratio(numerator: str, denominator: str, by: str, legend: str, scale: str = "") -> list[tuple[str, str]]:
    """One target: the ratio of two rates summed by ``job`` and ``by``."""
    return [
        (
            f"sum by (job, {by}) (rate({numerator}[5m])) / sum by (job, {by}) (rate({denominator}[5m])){scale}",
            legend,
        )
    ]


def connector_health(jobs: str = DEFAULT_JOBS) -> dict[str, Any]:
    t = '{job=~"$job", tenant_id=~"$tenant", connector_type=~"$connector_type"}'
    h = '{job=~"$job", connector_type=~"$connector_type"}'
    v = '{job=~"$job"}'
    return _dashboard(
        "Operations",
        "bizmetrics-connector-health",
        "bizmetrics / Connector Health",
        "Connector operation success rates, latency, errors and sync volumes, per service (job).",
        [
            _job_variable(jobs, "connector_operations_total|connector_sync_records_total"),
            _variable("tenant", "Tenant", f"label_values(connector_operations_total{v}, tenant_id)"),
            _variable("connector_type", "Connector", f"label_values(connector_operations_total{v}, connector_type)"),
        ],
        [
            *_outcome_panels("Operations", "connector_operations_total", "connector_type", "connector_errors_total", t),
            ("Operation latency", "ms", _quantiles("connector_operation_duration", "connector_type", h)),
            (
                "Average operation duration",
                "ms",
                _rate_ratio(
                    f"connector_operation_duration_sum{h}",
                    f"connector_operation_duration_count{h}",
                    "connector_type, operation",
                    "{{job}} {{connector_type}} {{operation}}",
                ),
            ),
            (
                "Records synced per minute",
                "short",
                [
                    (
                        f"sum by (job, connector_type, resource_type) (rate(connector_sync_records_total{t}[5m])) * 60",
                        "{{job}} {{connector_type}} {{resource_type}}",
                    )
                ],
            ),
            (
                "Sync operations per second by status",
                "ops",
                [
                    (
                        f"sum by (job, resource_type, status) (rate(connector_sync_operations_total{t}[5m]))",
                        "{{job}} {{resource_type}} {{status}}",
                    )
                ],
            ),
            (
                "Top 10 tenants by records synced per minute",
                "short",
                [
                    (
                        f"topk(10, sum by (job, tenant_id) (rate(connector_sync_records_total{t}[5m])) * 60)",
                        "{{job}} {{tenant_id}}",
                    )
                ],
            ),
        ],
    )


def workflow_performance(jobs: str = DEFAULT_JOBS) -> dict[str, Any]:
    t = '{job=~"$job", tenant_id=~"$tenant", workflow_id=~"$workflow"}'
    h = '{job=~"$job", workflow_id=~"$workflow"}'
    v = '{job=~"$job"}'
    return _dashboard(
        "Engineering",
        "bizmetrics-workflow-performance",
        "bizmetrics / Workflow Performance",
        "Workflow execution times, failure rates and step analysis, per service (job).",
        [
            _job_variable(jobs, "workflow_executions_total"),
            _variable("tenant", "Tenant", f"label_values(workflow_executions_total{v}, tenant_id)"),
            _variable("workflow", "Workflow", f"label_values(workflow_executions_total{v}, workflow_id)"),
        ],
        [
            *_outcome_panels(
                "Executions",
                "workflow_executions_total",
                "workflow_id",
                "workflow_failures_total",
                t,
                ratio="success",
                errors_noun="Failures",
            ),
            ("Execution duration", "ms", _quantiles("workflow_execution_duration", "workflow_id", h)),
            (
                "Average execution duration",
                "ms",
                _rate_ratio(
                    f"workflow_execution_duration_sum{h}",
                    f"workflow_execution_duration_count{h}",
                    "workflow_id",
                    "{{job}} {{workflow_id}}",
                ),
            ),
            (
                "Step duration p95",
                "ms",
                [
                    (
                        "histogram_quantile(0.95, sum by (job, workflow_id, step, le)"
                        f" (rate(workflow_step_duration_bucket{h}[5m])))",
                        "{{job}} {{workflow_id}} {{step}}",
                    )
                ],
            ),
        ],
    )


def ai_agent_analytics(jobs: str = DEFAULT_JOBS) -> dict[str, Any]:
    t = '{job=~"$job", tenant_id=~"$tenant", agent_id=~"$agent"}'
    te = '{status="error", job=~"$job", tenant_id=~"$tenant", agent_id=~"$agent"}'
    h = '{job=~"$job", agent_id=~"$agent"}'
    v = '{job=~"$job"}'
    return _dashboard(
        "Engineering",
        "bizmetrics-ai-agent-analytics",
        "bizmetrics / AI Agent Analytics",
        "Token usage, response times and invocation patterns of AI agents, per service (job).",
        [
            _job_variable(jobs, "agent_invocations_total"),
            _variable("tenant", "Tenant", f"label_values(agent_invocations_total{v}, tenant_id)"),
            _variable("agent", "Agent", f"label_values(agent_invocations_total{v}, agent_id)"),
        ],
        [
            *_outcome_panels("Invocations", "agent_invocations_total", "agent_id", "agent_errors_total", t),
            ("Response time", "ms", _quantiles("agent_response_duration", "agent_id", h)),
            (
                "Tokens per minute by agent",
                "short",
                [(f"sum by (job, agent_id) (rate(agent_tokens_used_total{t}[5m])) * 60", "{{job}} {{agent_id}}")],
            ),
            (
                "Tokens per minute by tenant",
                "short",
                [(f"sum by (job, tenant_id) (rate(agent_tokens_used_total{t}[5m])) * 60", "{{job}} {{tenant_id}}")],
            ),
            (
                "Tokens per invocation",
                "short",
                _rate_ratio(
                    f"agent_tokens_used_total{t}", f"agent_invocations_total{t}", "agent_id", "{{job}} {{agent_id}}"
                ),
            ),
            (
                "Tokens per minute by type and model",
                "short",
                [
                    (
                        f"sum by (job, model, token_type) (rate(agent_token_usage_total{t}[5m])) * 60",
                        "{{job}} {{model}} {{token_type}}",
                    )
                ],
            ),
            (
                "Time to first token (streams)",
                "ms",
                [
                    (
                        f"histogram_quantile({q}, sum by (job, agent_id, le)"
                        f" (rate(agent_time_to_first_token_bucket{h}[5m])))",
                        f"{{{{job}}}} p{round(q * 100)} {{{{agent_id}}}}",
                    )
                    for q in (0.5, 0.95)
                ],
            ),
            (
                "Tool calls per second by status",
                "ops",
                [
                    (
                        f"sum by (job, agent_id, tool, status) (rate(agent_tool_calls_total{t}[5m]))",
                        "{{job}} {{agent_id}} {{tool}} {{status}}",
                    )
                ],
            ),
            (
                "Tool error ratio",
                "percentunit",
                _rate_ratio(
                    f"agent_tool_calls_total{te}",
                    f"agent_tool_calls_total{t}",
                    "agent_id, tool",
                    "{{job}} {{agent_id}} {{tool}}",
                ),
            ),
            ("Tool latency", "ms", _quantiles("agent_tool_duration", "tool", h)),
        ],
    )


def system_overview(jobs: str = DEFAULT_JOBS) -> dict[str, Any]:
    t = '{job=~"$job", tenant_id=~"$tenant"}'
    # Server errors whether status holds codes (503) or classes (5xx, BIZMETRICS_HTTP_STATUS=class).
    t5 = '{status=~"5..", job=~"$job", tenant_id=~"$tenant"}'
    j = '{job=~"$job"}'
    return _dashboard(
        "Operations",
        "bizmetrics-system-overview",
        "bizmetrics / System Overview",
        "API requests, database queries, connection pools, cache hit rates, scrape health and batch jobs,"
        " per service (job).",
        [
            _job_variable(jobs, "up|api_requests_total|batch_job_last_run_success"),
            _variable("tenant", "Tenant", f"label_values(api_requests_total{j}, tenant_id)"),
        ],
        [
            (
                "API requests per second by status",
                "reqps",
                [(f"sum by (job, status) (rate(api_requests_total{t}[5m]))", "{{job}} {{status}}")],
            ),
            (
                "API 5xx ratio by endpoint",
                "percentunit",
                _rate_ratio(f"api_requests_total{t5}", f"api_requests_total{t}", "endpoint", "{{job}} {{endpoint}}"),
            ),
            (
                "API errors per second by status",
                "reqps",
                [(f"sum by (job, status) (rate(api_errors_total{t}[5m]))", "{{job}} {{status}}")],
            ),
            (
                "API latency p95 by endpoint",
                "ms",
                [
                    (
                        "histogram_quantile(0.95, sum by (job, endpoint, le)"
                        f" (rate(api_request_duration_bucket{j}[5m])))",
                        "{{job}} {{endpoint}}",
                    )
                ],
            ),
            ("DB query latency", "ms", _quantiles("db_query_duration", "operation", j)),
            (
                "DB connection pool size",
                "short",
                [(f"sum by (job, pool) (db_connection_pool_size{j})", "{{job}} {{pool}}")],
            ),
            (
                "Cache hit ratio",
                "percentunit",
                [
                    (
                        f"sum by (job, cache) (rate(cache_hits_total{j}[5m])) / (sum by (job, cache)"
                        f" (rate(cache_hits_total{j}[5m])) + sum by (job, cache) (rate(cache_misses_total{j}[5m])))",
                        "{{job}} {{cache}}",
                    )
                ],
            ),
            ("Scrape targets up", "short", [(f"up{j}", "{{job}} {{instance}}")]),
            (
                "Tenants with their own label, and records folded into __overflow__ per second",
                "short",
                [
                    (f"max by (job) (bizmetrics_tenants_admitted{j})", "{{job}} tenants admitted"),
                    (f"sum by (job) (rate(bizmetrics_tenant_overflow_total{j}[5m]))", "{{job}} folded per second"),
                ],
            ),
            (
                "Batch jobs: time since last success",
                "s",
                [(f"time() - batch_job_last_success_timestamp_seconds{j}", "{{job}} {{instance}}")],
            ),
            (
                "Batch jobs: last run succeeded (1) or failed (0)",
                "short",
                [(f"batch_job_last_run_success{j}", "{{job}} {{instance}}")],
            ),
            (
                "Batch jobs: last run duration",
                "s",
                [(f"batch_job_last_run_duration_seconds{j}", "{{job}} {{instance}}")],
            ),
        ],
    )


def slo_overview(jobs: str = DEFAULT_JOBS) -> dict[str, Any]:
    s = '{job=~"$job", slo=~"$slo"}'
    t = '{job=~"$job", tenant_id=~"$tenant", slo=~"$slo"}'
    j = '{job=~"$job"}'
    tl = '{job=~"$job", tenant_id=~"$tenant"}'
    return _dashboard(
        "Operations",
        "bizmetrics-slos",
        "bizmetrics / SLOs and error budgets",
        "Every SLO of every service (job): error budget left over 30 days, burn rates, objectives and latency"
        " thresholds, and per customer (tenant) the attainment and budget left.",
        [
            _job_variable(jobs, "job:bizmetrics_slo_objective:ratio"),
            _variable("slo", "SLO", f"label_values(job:bizmetrics_slo_objective:ratio{j}, slo)"),
            _variable(
                "tenant", "Tenant", f"label_values(job_tenant_id:bizmetrics_slo_errors:ratio_rate30d{j}, tenant_id)"
            ),
        ],
        [
            (
                "Error budget left (30 days)",
                "percentunit",
                [(f"job:bizmetrics_slo_error_budget_remaining:ratio{s}", "{{job}} {{slo}}")],
            ),
            (
                "Burn rate (1 hour): 1 spends the budget in exactly 30 days",
                "short",
                [
                    (
                        f"sum by (job, slo) (job:bizmetrics_slo_errors:ratio_rate1h{s})"
                        f" / sum by (job, slo) (1 - job:bizmetrics_slo_objective:ratio{s})",
                        "{{job}} {{slo}}",
                    )
                ],
            ),
            (
                "Attainment (30 days) and objective",
                "percentunit",
                [
                    (f"1 - job:bizmetrics_slo_errors:ratio_rate30d{s}", "{{job}} {{slo}}"),
                    (f"job:bizmetrics_slo_objective:ratio{s}", "{{job}} {{slo}} objective"),
                ],
            ),
            (
                "Latency thresholds of the latency SLOs",
                "ms",
                [(f"job:bizmetrics_slo_latency_threshold:ms{s}", "{{job}} {{slo}}")],
            ),
            (
                "Events per hour, and the minimum an alert's window needs",
                "short",
                [
                    (f"job:bizmetrics_slo_events:increase1h{s}", "{{job}} {{slo}}"),
                    (f"job:bizmetrics_alert_min_events:count{j}", "{{job}} minimum"),
                ],
            ),
            (
                "Burn rate per tenant (6 hours), judged on the Wilson lower bound",
                "short",
                [
                    (
                        f"sum by (job, tenant_id, slo) (job_tenant_id:bizmetrics_slo_errors:wilson_lower_rate6h{t})"
                        f" / on (job, slo) group_left () sum by (job, slo) (1 - job:bizmetrics_slo_objective:ratio{s})",
                        "{{job}} {{tenant_id}} {{slo}}",
                    )
                ],
            ),
            (
                "API latency p95 of the tenants tracked with track_tenant_latency",
                "ms",
                [
                    (
                        "histogram_quantile(0.95, sum by (job, tenant_id, le)"
                        f" (rate(api_request_duration_by_tenant_bucket{tl}[5m])))",
                        "{{job}} {{tenant_id}}",
                    )
                ],
            ),
        ],
        [
            _table(
                "Per tenant: attainment and error budget left (30 days)",
                "One row per service, tenant and SLO (success SLOs; latency SLOs for tracked tenants). Budget left:"
                " 1 untouched, 0 spent, negative overspent.",
                [
                    (f"1 - job_tenant_id:bizmetrics_slo_errors:ratio_rate30d{t}", "Attainment", "percentunit"),
                    (f"job_tenant_id:bizmetrics_slo_events:increase1d{t}", "Events (1 day)", "short"),
                    (f"job_tenant_id:bizmetrics_slo_error_budget_remaining:ratio{t}", "Budget left", "percentunit"),
                ],
            )
        ],
    )


#: The metrics whose tenants the Business dashboard lists.
TENANT_USAGE = (
    "api_requests_total|agent_invocations_total|agent_cost_total|agent_token_usage_total"
    "|connector_operations_total|connector_sync_records_total|workflow_executions_total"
)


def business(jobs: str = DEFAULT_JOBS) -> dict[str, Any]:
    """Customers by usage and cost, budgets, SLA attainment, top tenants and movers, cost by model and agent."""
    t = '{job=~"$job", tenant_id=~"$tenant"}'
    tc = '{job=~"$job", tenant_id=~"$tenant", currency=~"$currency"}'
    tm = '{job=~"$job", tenant_id=~"$tenant", currency=~"$currency", period="month"}'
    j = '{job=~"$job"}'
    today = f"sum by (job, tenant_id, currency) (job_tenant_id_currency:agent_cost:increase1d{tc})"
    yesterday = f"sum by (job, tenant_id, currency) (job_tenant_id_currency:agent_cost:increase1d{tc} offset 1d)"
    # A tenant new since yesterday moved by all of its cost.
    change = f"({today} - ({yesterday} or {today} * 0))"
    return _dashboard(
        "Business",
        "bizmetrics-business",
        "bizmetrics / Business: customers, cost and budgets",
        "What each customer (tenant) uses and costs: AI spend against its budget, usage of every kind per"
        " day, SLA attainment, the top tenants and the movers, and cost by model and agent. Money is in the"
        " currency of the price table (set_prices), one currency at a time (the Currency variable).",
        [
            _job_variable(jobs, "api_requests_total|agent_invocations_total"),
            # Every tenant with usage of any kind: one that only calls agents has no API requests.
            _variable("tenant", "Tenant", f'label_values({{__name__=~"{TENANT_USAGE}", job=~"$job"}}, tenant_id)'),
            # One currency at a time: money of two price tables never adds up.
            _variable("currency", "Currency", f"label_values(agent_cost_total{j}, currency)", single=True),
        ],
        [
            (
                "AI cost per hour by tenant",
                "short",
                [
                    (
                        f"sum by (job, tenant_id, currency) (rate(agent_cost_total{tc}[5m])) * 3600",
                        "{{job}} {{tenant_id}} {{currency}}",
                    )
                ],
            ),
            (
                "Month-to-date spend against the monthly budget",
                "short",
                [
                    (
                        f"sum by (job, tenant_id, currency) (job_tenant_id_currency:agent_cost:month_to_date{tc})",
                        "{{job}} {{tenant_id}} spent ({{currency}})",
                    ),
                    (
                        "sum by (job, tenant_id, currency)"
                        f" (job_tenant_id_currency_period:bizmetrics_tenant_budget:max{tm})",
                        "{{job}} {{tenant_id}} budget ({{currency}})",
                    ),
                ],
            ),
            (
                "Budget burn: share of the period's budget spent, and forecast at the period's end",
                "percentunit",
                [
                    (
                        f"sum by (job, tenant_id, period) (job_tenant_id_currency_period:agent_cost_budget:ratio{tc})",
                        "{{job}} {{tenant_id}} {{period}} spent",
                    ),
                    (
                        "sum by (job, tenant_id, period)"
                        f" (job_tenant_id_currency_period:agent_cost_budget_forecast:ratio{tc})",
                        "{{job}} {{tenant_id}} {{period}} forecast",
                    ),
                ],
            ),
            (
                "Cost per hour by model and agent",
                "short",
                [
                    (
                        f"sum by (job, model, agent_id, currency) (rate(agent_cost_total{tc}[5m])) * 3600",
                        "{{job}} {{model}} {{agent_id}} {{currency}}",
                    )
                ],
            ),
            (
                "Usage per tenant in the last 24 hours",
                "short",
                [
                    (
                        f"sum by (job, tenant_id) (job_tenant_id:{name}:increase1d{t})",
                        f"{{{{job}}}} {{{{tenant_id}}}} {what}",
                    )
                    for name, what in (
                        ("api_requests", "API requests"),
                        ("agent_invocations", "agent invocations"),
                        ("workflow_executions", "workflow executions"),
                        ("connector_operations", "connector operations"),
                        ("connector_sync_records", "records synced"),
                    )
                ],
            ),
            (
                "Tokens per tenant and type in the last 24 hours",
                "short",
                [
                    (
                        "sum by (job, tenant_id, token_type)"
                        f" (job_tenant_id_token_type:agent_token_usage:increase1d{t})",
                        "{{job}} {{tenant_id}} {{token_type}}",
                    )
                ],
            ),
            (
                "Each tenant's share of the service's cost and API requests (24 hours)",
                "percentunit",
                [
                    (
                        f"sum by (job, tenant_id) (job_tenant_id_currency:agent_cost:share1d{tc})",
                        "{{job}} {{tenant_id}} cost",
                    ),
                    (
                        f"sum by (job, tenant_id) (job_tenant_id:api_requests:share1d{t})",
                        "{{job}} {{tenant_id}} API requests",
                    ),
                ],
            ),
            (
                "Movers: change of a tenant's daily cost against the day before (top 10)",
                "short",
                [
                    (
                        f"{change} and on (job, tenant_id, currency) topk(10, abs({change}))",
                        "{{job}} {{tenant_id}} {{currency}}",
                    )
                ],
            ),
            (
                "SLA attainment per tenant (30 days)",
                "percentunit",
                [
                    (
                        f"1 - sum by (job, tenant_id, slo) (job_tenant_id:bizmetrics_slo_errors:ratio_rate30d{t})",
                        "{{job}} {{tenant_id}} {{slo}}",
                    )
                ],
            ),
            (
                "Tokens without a price per hour (not in the cost)",
                "short",
                [
                    (
                        f"sum by (job, model, token_type) (rate(agent_unpriced_tokens_total{t}[5m])) * 3600",
                        "{{job}} {{model}} {{token_type}}",
                    )
                ],
            ),
        ],
        [
            _table(
                "Customers: usage, cost and budget",
                "One row per service and tenant: the last 24 hours' usage and cost, this month's spend, its"
                " monthly budget and the share of it spent.",
                [
                    (
                        f"sum by (job, tenant_id) (job_tenant_id:api_requests:increase1d{t})",
                        "API requests (24 h)",
                        "short",
                    ),
                    (
                        f"sum by (job, tenant_id) (job_tenant_id:agent_invocations:increase1d{t})",
                        "Agent invocations (24 h)",
                        "short",
                    ),
                    (
                        f"sum by (job, tenant_id) (job_tenant_id_currency:agent_cost:increase1d{tc})",
                        "Cost (24 h)",
                        "short",
                    ),
                    (
                        f"sum by (job, tenant_id) (job_tenant_id_currency:agent_cost:increase30d{tc})",
                        "Cost (30 days)",
                        "short",
                    ),
                    (
                        f"sum by (job, tenant_id) (job_tenant_id_currency:agent_cost:month_to_date{tc})",
                        "Month to date",
                        "short",
                    ),
                    (
                        f"sum by (job, tenant_id) (job_tenant_id_currency_period:agent_cost_budget:ratio{tm})",
                        "Monthly budget spent",
                        "percentunit",
                    ),
                ],
            ),
            _table(
                "Top tenants by cost and by usage (24 hours)",
                "The ten tenants of each service that cost the most and use the most.",
                [
                    (f"sum by (job, tenant_id) (job_tenant_id_currency:agent_cost:top10_1d{tc})", "Cost", "short"),
                    (f"sum by (job, tenant_id) (job_tenant_id:api_requests:top10_1d{t})", "API requests", "short"),
                    (
                        f"sum by (job, tenant_id) (job_tenant_id:agent_invocations:top10_1d{t})",
                        "Agent invocations",
                        "short",
                    ),
                ],
            ),
        ],
    )


def clients(jobs: str = DEFAULT_JOBS) -> dict[str, Any]:
    """Connection pools and the rate limits of connectors' providers, as the client instrumentations record them."""
    t = '{job=~"$job", tenant_id=~"$tenant"}'
    p = '{job=~"$job", pool=~"$pool"}'
    return _dashboard(
        "Operations",
        "bizmetrics-pools-rate-limits",
        "bizmetrics / Pools and Rate Limits",
        "Database connection pools (bizmetrics.sqlalchemy) and the rate limits connectors meet at their"
        " providers (bizmetrics.httpx, .requests, .aiohttp), per service (job).",
        [
            _job_variable(jobs, "db_connection_pool_size|connector_rate_limited_total"),
            _variable("pool", "Pool", 'label_values(db_connection_pool_size{job=~"$job"}, pool)'),
            _variable("tenant", "Tenant", 'label_values(connector_rate_limited_total{job=~"$job"}, tenant_id)'),
        ],
        [
            (
                "Pool connections: open and in use",
                "short",
                [
                    (f"sum by (job, pool) (db_connection_pool_size{p})", "{{job}} {{pool}} open"),
                    (f"sum by (job, pool) (db_connection_pool_in_use{p})", "{{job}} {{pool}} in use"),
                ],
            ),
            (
                "Pool checkout wait p95",
                "ms",
                [
                    (
                        "histogram_quantile(0.95, sum by (job, pool, le)"
                        f" (rate(db_connection_pool_checkout_wait_bucket{p}[5m])))",
                        "{{job}} {{pool}}",
                    )
                ],
            ),
            (
                "Pool checkout timeouts per second",
                "short",
                [(f"sum by (job, pool) (rate(db_connection_pool_checkout_timeouts_total{p}[5m]))", "{{job}} {{pool}}")],
            ),
            (
                "Pool connections created and invalidated per second",
                "short",
                [
                    (
                        f"sum by (job, pool) (rate(db_connection_pool_connections_created_total{p}[5m]))",
                        "{{job}} {{pool}} created",
                    ),
                    (
                        f"sum by (job, pool) (rate(db_connection_pool_connections_invalidated_total{p}[5m]))",
                        "{{job}} {{pool}} invalidated",
                    ),
                ],
            ),
            (
                "Rate-limited responses per second by connector",
                "reqps",
                [
                    (
                        f"sum by (job, connector_type) (rate(connector_rate_limited_total{t}[5m]))",
                        "{{job}} {{connector_type}}",
                    )
                ],
            ),
            (
                "Provider quota left (lowest per connector)",
                "short",
                [
                    (
                        f"min by (job, connector_type) (connector_rate_limit_remaining{t})",
                        "{{job}} {{connector_type}}",
                    )
                ],
            ),
        ],
    )


def background_jobs(jobs: str = DEFAULT_JOBS) -> dict[str, Any]:
    t = '{job=~"$job", tenant_id=~"$tenant", queue=~"$queue", task=~"$task"}'
    te = '{status="error", job=~"$job", tenant_id=~"$tenant", queue=~"$queue", task=~"$task"}'
    h = '{job=~"$job", queue=~"$queue", task=~"$task"}'
    v = '{job=~"$job"}'
    return _dashboard(
        "Operations",
        "bizmetrics-background-jobs",
        "bizmetrics / Background jobs",
        "Celery, RQ and other queued tasks: runs by outcome, failure ratio, queue wait, duration, retries, "
        "jobs in progress and queue depth, per service (job), queue and task.",
        [
            _job_variable(jobs, "job_executions_total"),
            _variable("tenant", "Tenant", f"label_values(job_executions_total{v}, tenant_id)"),
            _variable("queue", "Queue", f"label_values(job_executions_total{v}, queue)"),
            _variable("task", "Task", f"label_values(job_executions_total{v}, task)"),
        ],
        [
            (
                "Runs per second by status",
                "ops",
                [
                    (
                        f"sum by (job, task, status) (rate(job_executions_total{t}[5m]))",
                        "{{job}} {{task}} {{status}}",
                    )
                ],
            ),
            (
                "Failure ratio",
                "percentunit",
                [
                    (
                        f"sum by (job, queue, task) (rate(job_executions_total{te}[5m]))"
                        f" / sum by (job, queue, task) (rate(job_executions_total{t}[5m]))",
                        "{{job}} {{queue}} {{task}}",
                    )
                ],
            ),
            ("Queue wait", "ms", _quantiles("job_queue_wait", "queue, task", h)),
            ("Run duration", "ms", _quantiles("job_duration", "task, queue", h)),
            (
                "Retries per second",
                "ops",
                [(f"sum by (job, queue, task) (rate(job_retries_total{t}[5m]))", "{{job}} {{queue}} {{task}}")],
            ),
            (
                "Jobs in progress (live workers)",
                "short",
                [(f"sum by (job, queue, task) (job_in_progress{h})", "{{job}} {{queue}} {{task}}")],
            ),
            (
                "Queue depth (when read from the broker)",
                "short",
                [('sum by (job, queue) (job_queue_depth{job=~"$job", queue=~"$queue"})', "{{job}} {{queue}}")],
            ),
            (
                "Top 10 tenants by runs per minute",
                "short",
                [
                    (
                        f"topk(10, sum by (job, tenant_id) (rate(job_executions_total{t}[5m])) * 60)",
                        "{{job}} {{tenant_id}}",
                    )
                ],
            ),
        ],
    )


def anomalies(jobs: str = DEFAULT_JOBS) -> dict[str, Any]:
    """Each signal of one tenant inside its learnt band (anomaly_rules.yml): a panel per signal."""
    from . import anomaly

    j = '{job=~"$job"}'
    panels: list[Panel] = []
    for name in dict.fromkeys(signal.name for signal in anomaly.SIGNALS):
        s = f'{{job=~"$job", tenant_id=~"$tenant", signal="{name}"}}'
        unit = {"latency": "ms"}.get(name, "percentunit" if name.endswith("_ratio") else "short")
        legend = "{{job}} {{tenant_id}}" + (" {{family}}" if name == "latency" else "")
        panels.append(
            (
                f"{name.replace('_', ' ').capitalize()}"
                + (" (per 5 minutes)" if unit == "short" else " (over 5 minutes)")
                + ": value and band",
                unit,
                [
                    (f"{anomaly.VALUE}{s}", legend),
                    (f"{anomaly.BAND_UPPER}{s}", legend + " band upper"),
                    (f"{anomaly.BAND_LOWER}{s}", legend + " band lower"),
                ],
            )
        )
    return _dashboard(
        "Operations",
        "bizmetrics-anomalies",
        "bizmetrics / Anomalies per customer",
        "Each signal of the chosen tenants against the band its anomaly rules learnt from the same hour a day and a"
        f" week before: a value outside the band for {anomaly.FOR} raises a *Anomaly alert"
        " (docs: operations/anomalies).",
        [
            _job_variable(jobs, anomaly.VALUE),
            _variable("tenant", "Tenant", f"label_values({anomaly.VALUE}{j}, tenant_id)"),
        ],
        panels,
    )


DASHBOARDS = {
    "connector-health.json": connector_health,
    "workflow-performance.json": workflow_performance,
    "ai-agent-analytics.json": ai_agent_analytics,
    "system-overview.json": system_overview,
    "slo-overview.json": slo_overview,
    "business.json": business,
    "pools-rate-limits.json": clients,
    "background-jobs.json": background_jobs,
    "anomalies.json": anomalies,
}


def render(build: Callable[[str], dict[str, Any]], jobs: str = DEFAULT_JOBS) -> str:
    """Return a dashboard as the JSON text shipped in ``grafana/``, covering the scrape jobs matching ``jobs``.

    .. versionchanged:: 0.2.0 ``jobs``.
    """
    return json.dumps(build(jobs), indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Write ``grafana/*.json`` from the descriptions above."""
    GRAFANA_DIR.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        (GRAFANA_DIR / name).write_text(render(build))
    return 0


if __name__ == "__main__":
    sys.exit(main())
