"""The anomaly rules (``prometheus/anomaly_rules.yml``): each customer's usage against its own seasonal band.

The shipped file is written from here (``python -m bizmetrics.assets.anomaly``)
and a test checks they match.  Every signal (``SIGNALS``) becomes one series
per service (``job``) and tenant, ``job_tenant_id:bizmetrics_anomaly_value:5m``
with a ``signal`` label: events in the last 5 minutes (volumes), a ratio
(errors) or a p95 in milliseconds (latency).  Every signal then goes through
the same steps, each a recording rule:

1. **Seasonal envelope.**  The 10th and 90th percentiles of the value in the
   hour around the same time one day and one week ago; the envelope runs from
   the lowest to the highest of them.  Daily and weekly seasonality (the
   weekend dip) are both inside it, a timing shift of up to half an hour too,
   and a past outlier moves neither percentile.
2. **Excess.**  How far, in natural-log units, the value is outside its
   envelope (0 inside), capped at 1 so one outlier weighs little.  Values get
   a floor before the logarithm (``FLOOR_EVENTS`` events; for tokens, cost and
   records that many events' worth of the tenant's own amount per event; for
   ratios that many errors out of the window's events), so a count of 0
   against 1 is no anomaly while 0 against 300 is: a Poisson-aware,
   scale-free comparison.
3. **Spread.**  The mean excess over the last week: how far this series
   usually strays out of its envelope.
4. **Band.**  The envelope widened by ``MIN_RATIO`` times ``e`` to the power
   ``K`` times the spread, both ways, in log units: never narrower than a
   factor of ``MIN_RATIO``, wider for a noisy series.

The alerts fire when the value leaves its band for ``FOR``: volume signals
both ways (``direction="up"`` or ``"down"``: a tenant gone silent is an
anomaly), error ratios and latency upwards only, and those two only with at
least the job's minimum events in the window (``job:bizmetrics_alert_min_events:count``,
as every ratio alert).  Batch jobs are left out, as in every other alert.
A series needs a day of history before it has a band and a week before its
band knows its weekly pattern.

``benchmarks/anomaly.py`` measures these rules on the Numenta Anomaly
Benchmark's labelled series beside Grafana's promql-anomaly-detection.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FLOOR_EVENTS", "FOR", "MIN_RATIO", "SIGNALS", "K", "Signal", "build", "main"]

PROMETHEUS_DIR = Path(__file__).parent / "prometheus"

#: Events a window counts as at least (added before the logarithm): the Poisson guard of tiny volumes.
FLOOR_EVENTS = 3.0
#: The band is never narrower than this factor around the seasonal envelope.
MIN_RATIO = 1.4
#: Spread multiplier: the band widens by e ** (K * mean excess of the last week).
K = 3.0
#: How long a value must stay outside its band before the alert fires.
FOR = "10m"
#: How long an alert keeps firing after the value came back (one episode, not a flapping series).
KEEP_FIRING_FOR = "30m"
#: Where each seasonal reference sits: one day and one week before, the hour around it.
LAGS = {"1d": "23h30m", "1w": "167h30m"}
#: The window of the spread (mean excess).
SPREAD_WINDOW = "1w"

VALUE = "job_tenant_id:bizmetrics_anomaly_value:5m"
FLOOR = "job_tenant_id:bizmetrics_anomaly_floor:5m"
EVENTS = "job_tenant_id:bizmetrics_anomaly_events:5m"
ENVELOPE_UPPER = "job_tenant_id:bizmetrics_anomaly_envelope_upper:5m"
ENVELOPE_LOWER = "job_tenant_id:bizmetrics_anomaly_envelope_lower:5m"
EXCESS = "job_tenant_id:bizmetrics_anomaly_excess:ln"
EXCESS_1H = "job_tenant_id:bizmetrics_anomaly_excess:ln_avg1h"
SPREAD = "job_tenant_id:bizmetrics_anomaly_spread:ln1w"
BAND_UPPER = "job_tenant_id:bizmetrics_anomaly_band_upper:5m"
BAND_LOWER = "job_tenant_id:bizmetrics_anomaly_band_lower:5m"
MIN_EVENTS = "job:bizmetrics_alert_min_events:count"
BATCH_JOBS = "batch_job_last_run_success"
RUNBOOK = "https://bizmetrics.readthedocs.io/en/latest/operations/runbook.html#"


@dataclass(frozen=True)
class Signal:
    """One signal: what its value is, per job and tenant."""

    #: The ``signal`` label.
    name: str
    #: ``volume`` (events per 5 minutes), ``ratio`` (errors / events) or ``latency`` (p95 ms).
    kind: str
    #: Volumes: the counter; ratios: the counter of events; latency: the per-tenant histogram.
    metric: str
    #: Volumes and ratios: a label matcher on ``metric`` (volumes: what counts; ratios: an error).
    matcher: str = ""
    #: Volumes counted in amounts (tokens, money, records): the counter of the events they come in.
    per_event: str = ""
    #: Extra labels kept beside job and tenant_id.
    by: str = ""
    #: Latency: the family (``api``, ``connector``, ``workflow``, ``agent``).
    family: str = ""


SIGNALS: tuple[Signal, ...] = (
    Signal("records_synced", "volume", "connector_sync_records_total", per_event="connector_sync_operations_total"),
    Signal("connector_operations", "volume", "connector_operations_total"),
    Signal("api_requests", "volume", "api_requests_total"),
    Signal("workflow_executions", "volume", "workflow_executions_total"),
    Signal("agent_invocations", "volume", "agent_invocations_total"),
    # input and output are every token; cache_read, cache_write and reasoning are subsets of them.
    Signal(
        "tokens",
        "volume",
        "agent_token_usage_total",
        matcher='token_type=~"input|output"',
        per_event="agent_invocations_total",
    ),
    Signal("cost", "volume", "agent_cost_total", per_event="agent_invocations_total", by="currency"),
    Signal("connector_error_ratio", "ratio", "connector_operations_total", matcher='status="error"'),
    Signal("api_error_ratio", "ratio", "api_requests_total", matcher='status=~"5.."'),
    Signal("workflow_error_ratio", "ratio", "workflow_executions_total", matcher='status="error"'),
    *(
        Signal("latency", "latency", f"{family}_duration_by_tenant", family=family.split("_")[0])
        for family in ("api_request", "connector_operation", "workflow_execution", "agent_response")
    ),
)


def _sel(matcher: str) -> str:
    return f"{{{matcher}}}" if matcher else ""


def _by(signal: Signal) -> str:
    return "job, tenant_id" + (f", {signal.by}" if signal.by else "")


def _labels(signal: Signal) -> dict[str, str]:
    labels = {"signal": signal.name}
    if signal.family:
        labels["family"] = signal.family
    return labels


def _record(name: str, expr: str, labels: dict[str, str] | None = None) -> str:
    lines = [f"      - record: {name}", "        expr: |"]
    lines += [f"          {line}" for line in expr.strip().splitlines()]
    if labels:
        lines.append("        labels:")
        lines += [f"          {key}: {value}" for key, value in labels.items()]
    return "\n".join(lines) + "\n"


def _inputs(signal: Signal, floor_events: float) -> list[str]:
    by = _by(signal)
    labels = _labels(signal)
    floor = repr(floor_events)
    if signal.kind == "volume":
        value = f"sum by ({by}) (increase({signal.metric}{_sel(signal.matcher)}[5m]))"
        rules = [_record(VALUE, value, labels)]
        if signal.per_event:
            # The floor in the signal's own unit: that many events' worth of the tenant's amount per event
            # over the last day, so tokens and money are judged like the events they come in.
            per_event = (
                f"sum by ({by}) (increase({signal.metric}{_sel(signal.matcher)}[1d]))\n"
                f"  / on (job, tenant_id) group_left ()\n"
                f"  (sum by (job, tenant_id) (increase({signal.per_event}[1d])) > 0)"
            )
            floor_expr = f"{floor} * (\n{_indent(per_event)}\n)"
        else:
            floor_expr = f"{floor} + 0 * {value}"
        return [*rules, _record(FLOOR, floor_expr, labels)]
    if signal.kind == "ratio":
        events = f"sum by ({by}) (increase({signal.metric}[5m]))"
        errors = f"sum by ({by}) (increase({signal.metric}{_sel(signal.matcher)}[5m]))"
        return [
            _record(VALUE, f"{errors}\n  / ({events} > 0)", labels),
            _record(EVENTS, events, labels),
            # That many errors out of the window's events: a ratio's Poisson guard.
            _record(FLOOR, f"{floor} / ({events} > 0)", labels),
        ]
    buckets = f"sum by ({by}, le) (rate({signal.metric}_bucket[5m]))"
    events = f"sum by ({by}) (increase({signal.metric}_count[5m]))"
    return [
        _record(VALUE, f"histogram_quantile(0.95, {buckets})", labels),
        _record(EVENTS, events, labels),
        _record(FLOOR, f"1 + 0 * {events}", labels),  # 1 ms: latency is never a count
    ]


def _indent(text: str, by: int = 2) -> str:
    return "\n".join(" " * by + line for line in text.splitlines())


#: The labels a band is kept by: one band per series of a signal.
KEEP = "job, tenant_id, signal, family, currency"


def _reference(quantile: float, aggregate: str) -> str:
    parts = [
        f'label_replace(quantile_over_time({quantile}, {VALUE}[1h] offset {offset}), "lag", "{lag}", "", "")'
        for lag, offset in LAGS.items()
    ]
    return f"{aggregate} by ({KEEP}) (\n" + "\n  or\n".join(f"  {part}" for part in parts) + "\n)"


def _kept(expr: str) -> str:
    """``expr`` (one series per band already) aggregated by the band's labels, as every bizmetrics rule is by job."""
    return f"max by ({KEEP}) (\n{_indent(expr)}\n)"


def _ln(series: str) -> str:
    return f"ln({series} + {FLOOR})"


def _band_rules(k: float, min_ratio: float) -> list[str]:
    margin = repr(math.log(min_ratio))
    up = f"{_ln(VALUE)} - {_ln(ENVELOPE_UPPER)}"
    down = f"{_ln(ENVELOPE_LOWER)} - {_ln(VALUE)}"
    tolerance = f"{margin} + {k!r} * {SPREAD}"
    return [
        _record(ENVELOPE_UPPER, _reference(0.9, "max")),
        _record(ENVELOPE_LOWER, _reference(0.1, "min")),
        # Outside the envelope, in log units; 0 inside; capped at 1 (a factor e) so an outlier weighs little.
        _record(EXCESS, _kept(f"clamp(\n  (({up}) > ({down}))\n  or ({down}),\n  0, 1\n)")),
        # The hour's mean excess, then the week's mean of those (168 samples a series, not 10,080).
        _record(EXCESS_1H, _kept(f"avg_over_time({EXCESS}[1h])")),
        _record(SPREAD, _kept(f"avg_over_time({EXCESS_1H}[{SPREAD_WINDOW}:1h])")),
        _record(BAND_UPPER, _kept(f"(({ENVELOPE_UPPER} + {FLOOR}) * exp({tolerance})) - {FLOOR}")),
        _record(BAND_LOWER, _kept(f"clamp_min(({ENVELOPE_LOWER} + {FLOOR}) * exp(-({tolerance})) - {FLOOR}, 0)")),
    ]


def _signals(kind: str) -> str:
    names = sorted({s.name for s in SIGNALS if s.kind == kind})
    return "|".join(names)


@dataclass(frozen=True)
class _Alert:
    name: str
    kind: str
    direction: str
    summary: str
    description: str
    runbook: str


ALERTS = (
    _Alert(
        "BizmetricsUsageSpikeAnomaly",
        "volume",
        "up",
        "{{ $labels.job }}: {{ $labels.signal }} of tenant {{ $labels.tenant_id }} far above its usual band",
        "The {{ $labels.signal }} of tenant {{ $labels.tenant_id }} in {{ $labels.job }} ({{ $value | humanize }}"
        " in 5 minutes) has been above the band learnt from the same hour a day and a week before for {for}.",
        "Look at what the tenant calls (requests by endpoint, invocations by agent). Tokens or cost: a loop, a large"
        " context or abuse: rate-limit the tenant or disable the agent if it keeps climbing. An expected event (a"
        " launch, a migration): silence the tenant's anomaly alerts for its duration.",
    ),
    _Alert(
        "BizmetricsUsageDropAnomaly",
        "volume",
        "down",
        "{{ $labels.job }}: {{ $labels.signal }} of tenant {{ $labels.tenant_id }} far below its usual band",
        "The {{ $labels.signal }} of tenant {{ $labels.tenant_id }} in {{ $labels.job }} ({{ $value | humanize }}"
        " in 5 minutes) has been below the band learnt from the same hour a day and a week before for {for};"
        " 0 means the tenant went silent.",
        "records_synced: check the tenant's syncs (connector_sync_operations_total); syncs succeeding with 0 records"
        " mean a revoked scope or a changed filter, syncs that stopped mean the scheduler. api_requests: can the tenant"
        " reach the service (its credentials, network, a client release)?",
    ),
    _Alert(
        "BizmetricsErrorRatioAnomaly",
        "ratio",
        "up",
        "{{ $labels.job }}: {{ $labels.signal }} of tenant {{ $labels.tenant_id }} above its usual band",
        "The {{ $labels.signal }} of tenant {{ $labels.tenant_id }} in {{ $labels.job }}"
        " ({{ $value | humanizePercentage }}"
        " over 5 minutes) has been above its usual band for {for}, with at least the job's minimum number of events.",
        "Look at this tenant's errors by error_type (connector_errors_total, workflow_failures_total,"
        " api_errors_total): one tenant failing alone points at its credentials, quotas or data.",
    ),
    _Alert(
        "BizmetricsLatencyAnomaly",
        "latency",
        "up",
        "{{ $labels.job }}: {{ $labels.family }} p95 latency of tenant {{ $labels.tenant_id }} above its usual band",
        "The p95 {{ $labels.family }} latency of tenant {{ $labels.tenant_id }} in {{ $labels.job }}"
        " ({{ $value | humanize }} ms over 5 minutes) has been above its usual band for {for}, with at least the"
        " job's minimum number of observations.",
        "Compare with the service's p95: only this tenant slow points at its data volume or its calls; everyone slow"
        " is a service incident.",
    ),
)


def _alert_expr(alert: _Alert) -> str:
    value = f'{VALUE}{{signal=~"{_signals(alert.kind)}"}}'
    if alert.direction == "up":
        expr = f"{value}\n  > {BAND_UPPER}"
    else:
        expr = f"{value}\n  < {BAND_LOWER}"
    if alert.kind != "volume":
        expr = (
            f"(\n{_indent(expr)}\n)\nand on (job, tenant_id, signal, family)\n"
            f"  ({EVENTS} >= on (job) group_left () {MIN_EVENTS})"
        )
    return f"(\n{_indent(expr)}\n)\nunless on (job) {BATCH_JOBS}"


def _alert_rule(alert: _Alert, duration: str, keep: str) -> str:
    lines = [
        f"      - alert: {alert.name}",
        "        expr: |",
        *(f"          {line}" for line in _alert_expr(alert).splitlines()),
        f"        for: {duration}",
        f"        keep_firing_for: {keep}",
        "        labels:",
        "          severity: warning",
        f"          direction: {alert.direction}",
        "        annotations:",
        f"          summary: {_quoted(alert.summary)}",
        f"          description: {_quoted(alert.description.format(**{'for': duration}))}",
        f"          runbook: {_quoted(alert.runbook)}",
        f"          runbook_url: {RUNBOOK}{alert.name.lower()}",
    ]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_HEADER = """\
# bizmetrics anomaly rules, written by bizmetrics.assets.anomaly (do not edit by hand).
# Each tenant's usage, error ratios and latency against a band learnt from its own history:
# the seasonal envelope (10th-90th percentiles of the hour around the same time a day and a
# week ago), widened by a floor factor and by the series' usual excess over the last week,
# in log units. Volumes alert both ways (a silent tenant too), error ratios and latency
# upwards; tiny volumes are held back by a Poisson-aware floor, ratios and latency by the
# job's minimum events. See docs/operations/anomalies.md.
"""


def build(
    *,
    k: float = K,
    min_ratio: float = MIN_RATIO,
    floor_events: float = FLOOR_EVENTS,
    duration: str = FOR,
    keep_firing_for: str = KEEP_FIRING_FOR,
) -> str:
    """Return the text of ``anomaly_rules.yml`` (the shipped one with the defaults)."""
    inputs = [rule for signal in SIGNALS for rule in _inputs(signal, floor_events)]
    bands = _band_rules(k, min_ratio)
    groups = [
        ("bizmetrics-anomaly-inputs", inputs),
        ("bizmetrics-anomaly-envelope", bands[:2]),
        ("bizmetrics-anomaly-excess", bands[2:4]),
        ("bizmetrics-anomaly-spread", bands[4:5]),
        ("bizmetrics-anomaly-bands", bands[5:]),
        ("bizmetrics-anomaly-alerts", [_alert_rule(alert, duration, keep_firing_for) for alert in ALERTS]),
    ]
    text = _HEADER + "groups:\n"
    for name, rules in groups:
        text += f"  - name: {name}\n    rules:\n" + "".join(rules) + "\n"
    return text.rstrip("\n") + "\n"


def main() -> int:
    """Write ``prometheus/anomaly_rules.yml``."""
    (PROMETHEUS_DIR / "anomaly_rules.yml").write_text(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
