"""The promtool unit test of the anomaly rules (``tests/promtool/anomaly_test.yml``), written from here.

``python tests/anomaly_spec.py`` writes it; ``test_assets_anomaly.py`` checks the
file is what this builds.  Eight days of per-minute counters for job
``checkout``, each hour's rate constant (promtool's ``a+bxN`` notation):

- a daily cycle (a sine, 0.4x to 2.4x of its mean) and a weekly one: days 0,
  1 and 7 are a weekend at half the traffic, so day 7, judged against day 0
  a week before and day 6 the day before, is a weekend dip;
- ``steady`` (20 a minute on average), ``growing`` (the same, growing 4% a
  day), ``sparse`` (a quarter of an event a minute: about one every 4
  minutes) never alert on day 7;
- ``spike`` is ``steady`` until 7d10h, then 5 times as busy for 40 minutes;
  ``drop`` is ``steady`` until 7d14h, then at 10% for an hour: both alert
  within 15 minutes;
- ``errors`` answers 1% 5xx, then 30% from 7d6h; ``slow`` has a p95 under
  100 ms, then over a second from 7d6h (per-tenant latency histogram): the
  error-ratio and latency alerts fire within 15 minutes.

The rules are evaluated every minute, as Prometheus does with the shipped
groups: an alert needs 10 minutes outside its band, so the 15-minute promise
holds only with evaluations that see a change within a minute. The first week
is the rules' learning time (a band needs a day, its weekly pattern a week), so
only day 7 is judged quiet.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
DAYS = 8
HOURS = DAYS * 24
JOB = "checkout"


def _shape(hour: int) -> float:
    """The seasonal multiplier of an hour: daily sine, weekend at half."""
    day = hour // 24
    weekend = 0.5 if day % 7 in (0, 1) else 1.0
    return weekend * (1.4 + math.sin(2 * math.pi * ((hour % 24) - 6) / 24))


def _counter(per_minute: list[float]) -> str:
    """promtool values of a counter whose rate is constant within each hour (one float per hour)."""
    total = 0.0
    parts = []
    for rate in per_minute:
        parts.append(f"{round(total, 3)}+{round(rate, 4)}x59")
        total += 60 * round(rate, 4)
    return " ".join(parts)


def _hourly(mean: float, growth: float = 0.0, changes: dict[int, float] | None = None) -> list[float]:
    rates = [mean * _shape(h) * (1 + growth) ** (h / 24) for h in range(HOURS)]
    for hour, factor in (changes or {}).items():
        rates[hour] *= factor
    return rates


def _minutes(rates: list[float], start_minute: int, length: int, factor: float) -> str:
    """A counter at ``rates`` per hour, with minutes [start, start + length) multiplied by ``factor``."""
    values = []
    total = 0.0
    for minute in range(HOURS * 60):
        values.append(total)
        rate = rates[minute // 60]
        if start_minute <= minute < start_minute + length:
            rate *= factor
        total += rate
    # Runs of equal steps written as a+bxN, so the file stays short.
    parts = []
    i = 0
    while i < len(values) - 1:
        step = round(values[i + 1] - values[i], 6)
        j = i + 1
        while j < len(values) - 1 and round(values[j + 1] - values[j], 6) == step:
            j += 1
        parts.append(f"{round(values[i], 4)}+{step}x{j - i - 1}")
        i = j
    parts.append(f"{round(values[-1], 4)}")
    return " ".join(parts)


def _series(metric: str, tenant: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in {"job": JOB, "tenant_id": tenant, **labels}.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


def build() -> dict[str, Any]:
    day7 = 7 * 24 * 60
    spike_at, drop_at, break_at = day7 + 10 * 60, day7 + 14 * 60, day7 + 6 * 60
    steady = _hourly(20)
    rng = random.Random(23)
    sparse = [0.25 * _shape(h) * rng.uniform(0.5, 1.5) for h in range(HOURS)]
    api = {"method": "GET", "endpoint": "/orders"}
    series = [
        _series("api_requests_total", "steady", _counter(steady), status="200", **api),
        _series("api_requests_total", "growing", _counter(_hourly(20, growth=0.04)), status="200", **api),
        _series("api_requests_total", "sparse", _counter(sparse), status="200", **api),
        _series("api_requests_total", "spike", _minutes(steady, spike_at, 40, 5.0), status="200", **api),
        _series("api_requests_total", "drop", _minutes(steady, drop_at, 60, 0.1), status="200", **api),
        # 100 requests a minute, 1% 5xx, then 30% from 7d6h.
        _series(
            "api_requests_total", "errors", _minutes([99.0] * HOURS, break_at, HOURS * 60, 70 / 99), status="200", **api
        ),
        _series(
            "api_requests_total", "errors", _minutes([1.0] * HOURS, break_at, HOURS * 60, 30.0), status="503", **api
        ),
        {"series": f'job:bizmetrics_alert_min_events:count{{job="{JOB}"}}', "values": f"50x{HOURS * 60}"},
    ]
    # The tracked tenant "slow": 100 requests a minute, 97% under 100 ms, the rest under 250 ms; from 7d6h all
    # take between 1 and 2.5 s.
    buckets = {
        "100.0": (97.0, 0.0),
        "250.0": (100.0, 0.0),
        "1000.0": (100.0, 0.0),
        "2500.0": (100.0, 100.0),
        "+Inf": (100.0, 100.0),
    }
    for le, (before, after) in buckets.items():
        values = _minutes([before] * HOURS, break_at, HOURS * 60, after / before if before else 0.0)
        series.append(_series("api_request_duration_by_tenant_bucket", "slow", values, le=le))
    series.append(_series("api_request_duration_by_tenant_count", "slow", _counter([100.0] * HOURS)))
    quiet = "steady|growing|sparse|spike|drop"
    checks = [
        # Day 7 before the spike: nothing from the quiet tenants (including the weekend dip).
        {
            "expr": f'count(count_over_time(ALERTS{{tenant_id=~"{quiet}"}}[10h])) or vector(0)',
            "eval_time": "7d10h",
            "exp_samples": [{"labels": "{}", "value": 0}],
        },
        # The whole of day 7, for the tenants with no anomaly at all.
        {
            "expr": 'count(count_over_time(ALERTS{tenant_id=~"steady|growing|sparse"}[1d])) or vector(0)',
            "eval_time": "7d23h59m",
            "exp_samples": [{"labels": "{}", "value": 0}],
        },
    ]

    def at(minute: int) -> str:
        return f"{minute // 60}h{minute % 60}m"

    # (alert, when the anomaly starts, tenant, signal, direction, extra labels): quiet the evaluation before,
    # firing 15 minutes after.
    cases = [
        ("BizmetricsUsageSpikeAnomaly", spike_at, "spike", "api_requests", "up", {}),
        ("BizmetricsUsageDropAnomaly", drop_at, "drop", "api_requests", "down", {}),
        ("BizmetricsErrorRatioAnomaly", break_at, "errors", "api_error_ratio", "up", {}),
        ("BizmetricsLatencyAnomaly", break_at, "slow", "latency", "up", {"family": "api"}),
    ]
    alerts: list[dict[str, Any]] = []
    for name, start, tenant, signal, direction, extra in cases:
        labels = {"severity": "warning", "direction": direction, "signal": signal, "job": JOB, "tenant_id": tenant}
        alerts.append({"eval_time": at(start - 5), "alertname": name, "exp_alerts": []})
        alerts.append(
            {"eval_time": at(start + 15), "alertname": name, "exp_alerts": [{"exp_labels": {**labels, **extra}}]}
        )
    return {
        "rule_files": ["anomaly_rules.yml"],
        # Every 5 minutes (samples stay a minute apart): 2,304 evaluations of eight days instead of 11,520.
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": alerts, "promql_expr_test": checks}],
    }


def text() -> str:
    header = "# Written by tests/anomaly_spec.py (python tests/anomaly_spec.py): do not edit by hand.\n"
    return header + yaml.safe_dump(build(), sort_keys=False, width=10**9)


def main() -> int:
    (HERE / "promtool" / "anomaly_test.yml").write_text(text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
