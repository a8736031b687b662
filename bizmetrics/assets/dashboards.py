"""The four Grafana dashboards, built from one description each.

The JSON files in ``grafana/`` are written from here (``python -m
bizmetrics.assets.dashboards``) and shipped in the package; a test checks
they match.  Every panel query is evaluated against a real Prometheus by the
end-to-end test, with the template variables set to "All".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GRAFANA_DIR = Path(__file__).parent / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

Panel = tuple[str, str, list[tuple[str, str]]]  # title, unit, [(expr, legend)]


def _quantiles(metric: str, by: str, selector: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{selector}[5m])))",
            f"p{round(q * 100)} {{{{{by.split(',')[0]}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def _dashboard(
    uid: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[Panel]
) -> dict[str, Any]:
    built = []
    for i, (panel_title, unit, targets) in enumerate(panels):
        built.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": panel_title,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
                "targets": [
                    {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + j)}
                    for j, (expr, legend) in enumerate(targets)
                ],
            }
        )
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["bizmetrics"],
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
                    "current": {},
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
            [(f"sum by ({key}, status) (rate({counter}{selector}[5m]))", f"{{{{{key}}}}} {{{{status}}}}")],
        ),
        (
            f"{ratio.capitalize()} ratio",
            "percentunit",
            [
                (
                    f"sum by ({key}) (rate({counter}{ratio_selector}[5m]))"
                    f" / sum by ({key}) (rate({counter}{selector}[5m]))",
                    f"{{{{{key}}}}}",
                )
            ],
        ),
        (
            f"{errors_noun} per second by error type",
            "ops",
            [(f"sum by ({key}, error_type) (rate({errors}{selector}[5m]))", f"{{{{{key}}}}} {{{{error_type}}}}")],
        ),
    ]


def connector_health() -> dict[str, Any]:
    t = '{tenant_id=~"$tenant", connector_type=~"$connector_type"}'
    h = '{connector_type=~"$connector_type"}'
    return _dashboard(
        "bizmetrics-connector-health",
        "bizmetrics / Connector Health",
        "Connector operation success rates, latency, errors and sync volumes.",
        [
            _variable("tenant", "Tenant", "label_values(connector_operations_total, tenant_id)"),
            _variable("connector_type", "Connector", "label_values(connector_operations_total, connector_type)"),
        ],
        [
            *_outcome_panels("Operations", "connector_operations_total", "connector_type", "connector_errors_total", t),
            ("Operation latency", "ms", _quantiles("connector_operation_duration", "connector_type", h)),
            (
                "Average operation duration",
                "ms",
                [
                    (
                        f"sum by (connector_type, operation) (rate(connector_operation_duration_sum{h}[5m]))"
                        f" / sum by (connector_type, operation) (rate(connector_operation_duration_count{h}[5m]))",
                        "{{connector_type}} {{operation}}",
                    )
                ],
            ),
            (
                "Records synced per minute",
                "short",
                [
                    (
                        f"sum by (connector_type, resource_type) (rate(connector_sync_records_total{t}[5m])) * 60",
                        "{{connector_type}} {{resource_type}}",
                    )
                ],
            ),
            (
                "Sync operations per second by status",
                "ops",
                [
                    (
                        f"sum by (resource_type, status) (rate(connector_sync_operations_total{t}[5m]))",
                        "{{resource_type}} {{status}}",
                    )
                ],
            ),
            (
                "Top 10 tenants by records synced per minute",
                "short",
                [(f"topk(10, sum by (tenant_id) (rate(connector_sync_records_total{t}[5m])) * 60)", "{{tenant_id}}")],
            ),
        ],
    )


def workflow_performance() -> dict[str, Any]:
    t = '{tenant_id=~"$tenant", workflow_id=~"$workflow"}'
    h = '{workflow_id=~"$workflow"}'
    return _dashboard(
        "bizmetrics-workflow-performance",
        "bizmetrics / Workflow Performance",
        "Workflow execution times, failure rates and step analysis.",
        [
            _variable("tenant", "Tenant", "label_values(workflow_executions_total, tenant_id)"),
            _variable("workflow", "Workflow", "label_values(workflow_executions_total, workflow_id)"),
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
                [
                    (
                        f"sum by (workflow_id) (rate(workflow_execution_duration_sum{h}[5m]))"
                        f" / sum by (workflow_id) (rate(workflow_execution_duration_count{h}[5m]))",
                        "{{workflow_id}}",
                    )
                ],
            ),
            (
                "Step duration p95",
                "ms",
                [
                    (
                        "histogram_quantile(0.95, sum by (workflow_id, step, le)"
                        f" (rate(workflow_step_duration_bucket{h}[5m])))",
                        "{{workflow_id}} {{step}}",
                    )
                ],
            ),
        ],
    )


def ai_agent_analytics() -> dict[str, Any]:
    t = '{tenant_id=~"$tenant", agent_id=~"$agent"}'
    h = '{agent_id=~"$agent"}'
    return _dashboard(
        "bizmetrics-ai-agent-analytics",
        "bizmetrics / AI Agent Analytics",
        "Token usage, response times and invocation patterns of AI agents.",
        [
            _variable("tenant", "Tenant", "label_values(agent_invocations_total, tenant_id)"),
            _variable("agent", "Agent", "label_values(agent_invocations_total, agent_id)"),
        ],
        [
            *_outcome_panels("Invocations", "agent_invocations_total", "agent_id", "agent_errors_total", t),
            ("Response time", "ms", _quantiles("agent_response_duration", "agent_id", h)),
            (
                "Tokens per minute by agent",
                "short",
                [(f"sum by (agent_id) (rate(agent_tokens_used_total{t}[5m])) * 60", "{{agent_id}}")],
            ),
            (
                "Tokens per minute by tenant",
                "short",
                [(f"sum by (tenant_id) (rate(agent_tokens_used_total{t}[5m])) * 60", "{{tenant_id}}")],
            ),
            (
                "Tokens per invocation",
                "short",
                [
                    (
                        f"sum by (agent_id) (rate(agent_tokens_used_total{t}[5m]))"
                        f" / sum by (agent_id) (rate(agent_invocations_total{t}[5m]))",
                        "{{agent_id}}",
                    )
                ],
            ),
        ],
    )


def system_overview() -> dict[str, Any]:
    t = '{tenant_id=~"$tenant"}'
    t5 = '{status="5xx", tenant_id=~"$tenant"}'
    return _dashboard(
        "bizmetrics-system-overview",
        "bizmetrics / System Overview",
        "API requests, database queries, connection pools, cache hit rates, scrape health and batch jobs.",
        [_variable("tenant", "Tenant", "label_values(api_requests_total, tenant_id)")],
        [
            (
                "API requests per second by status",
                "reqps",
                [(f"sum by (status) (rate(api_requests_total{t}[5m]))", "{{status}}")],
            ),
            (
                "API 5xx ratio by endpoint",
                "percentunit",
                [
                    (
                        f"sum by (endpoint) (rate(api_requests_total{t5}[5m]))"
                        f" / sum by (endpoint) (rate(api_requests_total{t}[5m]))",
                        "{{endpoint}}",
                    )
                ],
            ),
            (
                "API errors per second by status",
                "reqps",
                [(f"sum by (status) (rate(api_errors_total{t}[5m]))", "{{status}}")],
            ),
            (
                "API latency p95 by endpoint",
                "ms",
                [
                    (
                        "histogram_quantile(0.95, sum by (endpoint, le) (rate(api_request_duration_bucket[5m])))",
                        "{{endpoint}}",
                    )
                ],
            ),
            ("DB query latency", "ms", _quantiles("db_query_duration", "operation", "")),
            ("DB connection pool size", "short", [("sum by (pool) (db_connection_pool_size)", "{{pool}}")]),
            (
                "Cache hit ratio",
                "percentunit",
                [
                    (
                        "sum by (cache) (rate(cache_hits_total[5m])) / (sum by (cache) (rate(cache_hits_total[5m]))"
                        " + sum by (cache) (rate(cache_misses_total[5m])))",
                        "{{cache}}",
                    )
                ],
            ),
            ("Scrape targets up", "short", [('up{job="bizmetrics"}', "{{instance}}")]),
            (
                "Batch jobs: time since last success",
                "s",
                [("time() - batch_job_last_success_timestamp_seconds", "{{job}}")],
            ),
        ],
    )


DASHBOARDS = {
    "connector-health.json": connector_health,
    "workflow-performance.json": workflow_performance,
    "ai-agent-analytics.json": ai_agent_analytics,
    "system-overview.json": system_overview,
}


def render(build: Any) -> str:
    """Return a dashboard as the JSON text shipped in ``grafana/``."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Write ``grafana/*.json`` from the descriptions above."""
    GRAFANA_DIR.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        (GRAFANA_DIR / name).write_text(render(build))
    return 0


if __name__ == "__main__":
    sys.exit(main())
