"""The SLO rules (``prometheus/slo_rules.yml``), built from one description per SLO.

The shipped file is written from here (``python -m bizmetrics.assets.slo``)
and a test checks they match; ``export-assets`` builds it again with the
objectives, latency thresholds and minimum event counts it is given.

Every SLO is a ratio of bad events to all events of a service (``job``):

- success SLOs (``connector``, ``api``, ``workflow``, ``agent``): failed
  operations, 5xx requests, failed executions and invocations;
- latency SLOs (``api_latency``, ``connector_latency``, ``agent_latency``,
  ``agent_ttft``): observations above a threshold, which is a bucket bound of
  the histogram, so ``le`` selects it exactly.

For each SLO and each window of the multi-window, multi-burn-rate method
the rules record the events, the bad events and their ratio per job (and,
for the success SLOs, per job and tenant), then the 30-day error budget
left; the alerts page (``critical``) on a fast burn and open a ticket on a
slow one, only where the window held at least the job's minimum number of
events, and never for batch jobs (their failures are the batch alerts').
Per tenant, the alerts judge the Wilson score lower bound of the error
ratio (95% confidence) instead of the raw ratio, on top of the same
minimum.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import DEFAULT_MIN_EVENTS, _check_ratio, _promql_string, runbook_url

__all__ = [
    "DEFAULT_MIN_EVENTS",
    "SLO",
    "SLOS",
    "build",
    "check_threshold",
    "main",
]

PROMETHEUS_DIR = Path(__file__).parent / "prometheus"


#: The windows the rules record: the burn-rate pairs' long and short windows.
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

#: By speed: the severity, and the (burn rate, long window, short window) pairs, either of which fires.
BURN_PAIRS = {
    "Fast": ("critical", (("14.4", "1h", "5m"), ("6", "6h", "30m"))),
    "Slow": ("ticket", (("3", "1d", "2h"), ("1", "3d", "6h"))),
}
FOR = {"Fast": "2m", "Slow": "1h"}

#: z of a two-sided 95% confidence interval; the tenant alerts judge the lower bound of the error ratio.
Z = 1.96

#: Recording rule names (``slo`` label on each).
EVENTS = "job:bizmetrics_slo_events:increase{w}"
ERRORS = "job:bizmetrics_slo_errors:increase{w}"
RATIO = "job:bizmetrics_slo_errors:ratio_rate{w}"
TENANT_EVENTS = "job_tenant_id:bizmetrics_slo_events:increase{w}"
TENANT_ERRORS = "job_tenant_id:bizmetrics_slo_errors:increase{w}"
TENANT_RATIO = "job_tenant_id:bizmetrics_slo_errors:ratio_rate{w}"
TENANT_WILSON = "job_tenant_id:bizmetrics_slo_errors:wilson_lower_rate{w}"
OBJECTIVE = "job:bizmetrics_slo_objective:ratio"
THRESHOLD = "job:bizmetrics_slo_latency_threshold:ms"
MIN_EVENTS = "job:bizmetrics_alert_min_events:count"
BUDGET = "job:bizmetrics_slo_error_budget_remaining:ratio"
TENANT_BUDGET = "job_tenant_id:bizmetrics_slo_error_budget_remaining:ratio"
BATCH_JOBS = "batch_job_last_run_success"
#: Metrics of ratio alerts outside the SLOs whose jobs need a minimum too: background jobs (job_rules.yml).
GUARDED_ELSEWHERE = ("job_executions_total",)


@dataclass(frozen=True)
class SLO:
    """One SLO: what an event is, what a bad one is, and its shipped objective (and threshold)."""

    #: The ``slo`` label.
    name: str
    #: Alert name part: ``Bizmetrics{title}SLOBurnRateFast``.
    title: str
    #: What is counted, for annotations ("connector operations").
    noun: str
    #: The counter (success SLOs) or histogram (latency SLOs) the SLO reads.
    metric: str
    objective: float
    #: Success SLOs: the label matcher of a bad event.
    bad: str = ""
    #: Latency SLOs: the shipped threshold (ms), and the catalogue's bucket constant it must be one of.
    threshold: float | None = None
    buckets: str = ""
    runbook: str = ""
    #: Latency SLOs: the per-tenant histogram of the tenants ``track_tenant_latency`` names ("": none).
    tenant_metric: str = ""

    @property
    def latency(self) -> bool:
        return self.threshold is not None

    @property
    def per_tenant(self) -> bool:
        """Whether the SLO has a view per tenant: success SLOs always, latency SLOs of tracked tenants."""
        return not self.latency or bool(self.tenant_metric)


SLOS: dict[str, SLO] = {
    slo.name: slo
    for slo in (
        SLO(
            "connector",
            "Connector",
            "connector operations",
            "connector_operations_total",
            0.995,
            bad='status="error"',
            runbook="BizmetricsConnectorErrorRatioHigh names the connector types; connector_errors_total by error_type"
            " says what fails (timeouts, auth, rate limits).",
        ),
        SLO(
            "api",
            "Api",
            "API requests",
            "api_requests_total",
            0.999,
            # Server errors whether status holds codes (503) or classes (5xx, BIZMETRICS_HTTP_STATUS=class).
            bad='status=~"5.."',
            runbook="BizmetricsApi5xxRatioHigh names the endpoints; then the service's logs and its dependencies"
            " (db_query_duration, the connector alerts).",
        ),
        SLO(
            "workflow",
            "Workflow",
            "workflow executions",
            "workflow_executions_total",
            0.99,
            bad='status="error"',
            runbook="BizmetricsWorkflowFailureRatioHigh names the workflows; workflow_failures_total by error_type"
            " the cause, workflow_step_duration the slow or stuck step.",
        ),
        SLO(
            "agent",
            "Agent",
            "agent invocations",
            "agent_invocations_total",
            0.99,
            bad='status="error"',
            runbook="agent_errors_total by agent_id and error_type says what fails; check the model provider's"
            " status and rate limits.",
        ),
        SLO(
            "api_latency",
            "ApiLatency",
            "API requests",
            "api_request_duration",
            0.99,
            threshold=500.0,
            buckets="API_BUCKETS",
            tenant_metric="api_request_duration_by_tenant",
            runbook="job_method_endpoint:api_request_duration_ms:p95_5m names the slow endpoints; db_query_duration"
            " and the connector latency show a slow dependency.",
        ),
        SLO(
            "connector_latency",
            "ConnectorLatency",
            "connector operations",
            "connector_operation_duration",
            0.99,
            threshold=2500.0,
            buckets="CONNECTOR_BUCKETS",
            tenant_metric="connector_operation_duration_by_tenant",
            runbook="job_connector_type_operation:connector_operation_duration_ms:p95_5m names the slow operations;"
            " check the remote service's status and rate limits.",
        ),
        SLO(
            "agent_latency",
            "AgentLatency",
            "agent responses",
            "agent_response_duration",
            0.95,
            threshold=10000.0,
            buckets="AGENT_BUCKETS",
            tenant_metric="agent_response_duration_by_tenant",
            runbook="job_agent_id:agent_response_duration_ms:p95_5m names the slow agents; check the model"
            " provider, prompt sizes (agent_tokens_used_total) and tool latency.",
        ),
        SLO(
            "agent_ttft",
            "AgentTtft",
            "agent streams' first tokens",
            "agent_time_to_first_token",
            0.95,
            threshold=2500.0,
            buckets="AGENT_TTFT_BUCKETS",
            runbook="job_agent_id:agent_time_to_first_token_ms:p95_5m names the slow agents; a long time to the"
            " first token is the provider's queue or a large prompt.",
        ),
    )
}

#: The SLOs with a view per tenant: the success SLOs (their counters carry ``tenant_id``), and the
#: latency SLOs of the tenants tracked with ``track_tenant_latency`` (their own histograms).
TENANT_SLOS = tuple(slo for slo in SLOS.values() if slo.per_tenant)


def bucket_bounds(slo: SLO) -> tuple[float, ...]:
    """The bucket bounds of a latency SLO's histogram, as this process's settings make them."""
    from .. import metrics

    bounds: tuple[float, ...] = getattr(metrics, slo.buckets)
    return bounds


def check_threshold(slo: SLO, threshold: float, job: str | None = None) -> None:
    """Raise ``ValueError`` unless ``threshold`` is one of the bucket bounds of ``slo``'s histogram."""
    bounds = bucket_bounds(slo)
    if threshold not in bounds:
        where = f" of job {job!r}" if job else ""
        raise ValueError(
            f"the {slo.name} threshold{where} must be a bucket bound of {slo.metric} (in ms: "
            f"{', '.join(f'{b:g}' for b in bounds)}), not {threshold:g}: the SLO counts observations in the buckets "
            f"up to the threshold, so any other value would be rounded silently (BIZMETRICS_BUCKETS_"
            f"{slo.buckets.removesuffix('_BUCKETS')} sets the buckets)"
        )


def _regex_escape(job: str) -> str:
    # RE2 metacharacters, escaped for a regex matcher, then for the PromQL string.
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", job)


def _le(bound: float) -> str:
    """A regex matcher of the ``le`` label of ``bound``: prometheus_client writes 500.0, others 500."""
    text = repr(float(bound))
    if text.endswith(".0"):
        return f'le=~"{text[:-2]}(\\\\.0)?"'
    return f"le={_promql_string(text)}"


def _jobs(by_job: Mapping[str | None, float]) -> list[tuple[str, float]]:
    """The per-job entries of ``by_job`` (its ``None`` key is the default), sorted."""
    return sorted((job, value) for job, value in by_job.items() if job is not None)


def _per_job(default: float, overrides: Mapping[str | None, float], base: str) -> str:
    """``default`` for every job of ``base`` (``group by (job) (...)``), but ``overrides`` for their jobs."""
    expr = f"{default!r} * group by (job) ({base})"
    parts = [
        f'label_replace(vector({value!r}), "job", {_promql_string(job)}, "", "")' for job, value in _jobs(overrides)
    ]
    return " or ".join([*parts, expr])


def _matchers(*matchers: str) -> str:
    inner = ", ".join(m for m in matchers if m)
    return f"{{{inner}}}" if inner else ""


def _increase(metric: str, window: str, by: str, *matchers: str) -> str:
    return f"sum by ({by}) (increase({metric}{_matchers(*matchers)}[{window}]))"


def _metric(slo: SLO, by: str) -> str:
    return slo.tenant_metric if slo.latency and "tenant_id" in by else slo.metric


def _good_latency(slo: SLO, window: str, by: str, thresholds: Mapping[str | None, float], default: float) -> str:
    """Observations at or under the threshold: the bucket at the threshold, per job's threshold."""
    bucket = f"{_metric(slo, by)}_bucket"
    jobs = _jobs(thresholds)
    if not jobs:
        return _increase(bucket, window, by, _le(default))
    others = "|".join(_regex_escape(job) for job, _ in jobs)
    parts = [_increase(bucket, window, by, f"job!~{_promql_string(others)}", _le(default))]
    parts += [_increase(bucket, window, by, f"job={_promql_string(job)}", _le(value)) for job, value in jobs]
    return "(" + " or ".join(parts) + ")"


def _counts(slo: SLO, window: str, by: str, thresholds: Mapping[str | None, float], default: float) -> tuple[str, str]:
    """(events, bad events) of ``slo`` in ``window``, summed by ``by``."""
    if slo.latency:
        events = _increase(f"{_metric(slo, by)}_count", window, by)
        return events, f"{events} - {_good_latency(slo, window, by, thresholds, default)}"
    events = _increase(slo.metric, window, by)
    # A job (or tenant) that never failed has no bad series: count 0 for it, not nothing.
    return events, f"{_increase(slo.metric, window, by, slo.bad)} or 0 * {events}"


def _record(name: str, expr: str, **labels: str) -> str:
    text = f"      - record: {name}\n        expr: {expr}\n"
    if labels:
        text += "        labels:\n" + "".join(f"          {k}: {v}\n" for k, v in labels.items())
    return text


def _wilson_lower(errors: str, events: str) -> str:
    """The Wilson score interval's lower bound of the error ratio (``Z``): sure, not just observed, failures."""
    z2 = Z * Z
    p = f"({errors} / {events})"
    # Never below 0: with no failure, rounding can leave -1e-19.
    return (
        f"clamp_min(({p} + {z2 / 2!r} / {events} - {Z!r} * sqrt({p} * (1 - {p}) / {events} + {z2 / 4!r}"
        f" / ({events} ^ 2))) / (1 + {z2!r} / {events}), 0)"
    )


def _burn(slo: SLO, speed: str, tenant: bool) -> list[str]:
    """The lines of a burn-rate alert: any pair of windows over its burn rate with enough events, no batch job."""
    sel = f'{{slo="{slo.name}"}}'
    pairs = []
    for burn, long, short in BURN_PAIRS[speed][1]:
        budget = f"({burn} * (1 - {OBJECTIVE}))"
        if tenant:
            judged = f"{TENANT_WILSON.format(w=long)}{sel} > on (job, slo) group_left () {budget}"
            confirm = f"{TENANT_RATIO.format(w=short)}{sel} > on (job, slo) group_left () {budget}"
            volume = f"{TENANT_EVENTS.format(w=long)}{sel} >= on (job) group_left () {MIN_EVENTS}"
        else:
            judged = f"{RATIO.format(w=long)}{sel} > on (job, slo) {budget}"
            confirm = f"{RATIO.format(w=short)}{sel} > on (job, slo) {budget}"
            volume = f"{EVENTS.format(w=long)}{sel} >= on (job) group_left () {MIN_EVENTS}"
        pairs.append(["  (", f"    {judged}", f"    and {confirm}", f"    and {volume}", "  )"])
    return ["(", *pairs[0], "  or", *pairs[1], ")", f"unless on (job) {BATCH_JOBS}"]


def _percent(share: float) -> str:
    return f"{share * 100:g}%"


def _alert(slo: SLO, speed: str, tenant: bool) -> str:
    severity, pairs = BURN_PAIRS[speed]
    (burn1, long1, _), (burn2, long2, _) = pairs
    who = "{{ $labels.job }}" + (" for tenant {{ $labels.tenant_id }}" if tenant else "")
    bad = "take longer than the SLO's threshold (job:bizmetrics_slo_latency_threshold:ms)" if slo.latency else "fail"
    share1 = float(burn1) * _hours(long1) / (30 * 24)
    share2 = float(burn2) * _hours(long2) / (30 * 24)
    description = (
        f"{slo.noun[0].upper()}{slo.noun[1:]} of {who} {bad} often enough to use {_percent(share1)}"
        " of a 30-day error budget"
        f" in {long1} (or {_percent(share2)} in {long2}), with at least the job's minimum number of events"
        " (job:bizmetrics_alert_min_events:count) in that window."
    )
    runbook = slo.runbook
    if tenant:
        description += (
            " Judged on the 95% Wilson score lower bound of the tenant's error ratio, so a few failures of a small"
            " tenant never page."
        )
        runbook = (
            "One customer is affected, not the whole service (a service-wide burn pages"
            f" Bizmetrics{slo.title}SLOBurnRate{speed}, which inhibits this alert). Look at this tenant's errors by"
            " error_type, its credentials, quotas and data; the dashboard bizmetrics / SLOs lists every tenant's"
            " budget left. " + slo.runbook
        )
    summary = f"{who}: the {slo.name} SLO is burning its error budget {'fast' if speed == 'Fast' else 'slowly'}"
    expr = "".join(f"          {line}\n" for line in _burn(slo, speed, tenant))
    name = f"Bizmetrics{slo.title}{'Tenant' if tenant else ''}SLOBurnRate{speed}"
    return (
        f"      - alert: {name}\n"
        f"        expr: |\n{expr}"
        f"        for: {FOR[speed]}\n"
        f"        labels:\n          severity: {severity}\n          slo: {slo.name}\n"
        f"        annotations:\n"
        f"          runbook_url: {runbook_url(name)}\n"
        f"          summary: {_yaml_string(summary)}\n"
        f"          description: {_yaml_string(description)}\n"
        f"          runbook: {_yaml_string(runbook)}\n"
    )


def _hours(window: str) -> float:
    return {"h": 1.0, "d": 24.0}[window[-1]] * float(window[:-1])


def _yaml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build(
    *,
    objectives: Mapping[str, float | Mapping[str | None, float]] | None = None,
    thresholds: Mapping[str, float | Mapping[str | None, float]] | None = None,
    min_events: int | Mapping[str | None, int] | None = None,
) -> str:
    """Return the text of ``slo_rules.yml``.

    :param objectives: by SLO name, an objective (a success ratio strictly
        between 0 and 1) or objectives by job, whose ``None`` key is the default.
    :param thresholds: by latency SLO name, a threshold in ms (a bucket bound
        of its histogram), or thresholds by job.
    :param min_events: the events a window must hold before an alert of a job
        fires, or counts by job (default :data:`~bizmetrics.assets.DEFAULT_MIN_EVENTS`).
    :raises ValueError: for an unknown SLO, an objective out of range, a
        threshold that is not a bucket bound, or a negative count.
    """
    chosen_objectives = _by_job(objectives or {}, "objective")
    chosen_thresholds = _by_job(thresholds or {}, "threshold")
    for name, by_job in chosen_objectives.items():
        for job, value in by_job.items():
            _check_ratio(f"the {name} objective" + (f" of job {job!r}" if job else ""), value)
    for name in chosen_thresholds:
        if not SLOS[name].latency:
            raise ValueError(f"the {name} SLO has no latency threshold; latency SLOs: {', '.join(_latency_names())}")
    for slo in SLOS.values():
        if slo.latency:
            latency_by_job = chosen_thresholds.get(slo.name, {})
            default = latency_by_job.get(None, slo.threshold or 0.0)
            for job, value in {**latency_by_job, None: default}.items():
                check_threshold(slo, float(value), job)
    events_by_job: dict[str | None, int] = (
        dict(min_events)
        if isinstance(min_events, Mapping)
        else {None: DEFAULT_MIN_EVENTS if min_events is None else min_events}
    )
    for job, count in events_by_job.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(
                f"the minimum number of events{f' of job {job!r}' if job else ''} must be a count, not {count!r}"
            )

    # One group per SLO, holding everything its budget and alerts read but the minimum event
    # counts: rules of one group run in order at one instant, while groups run independently
    # (a rule that reads another group's record may see its previous evaluation, or none).
    out = [_HEADER, "groups:\n", "  - name: bizmetrics-alert-settings\n", "    rules:\n"]
    default_events = events_by_job.pop(None, DEFAULT_MIN_EVENTS)
    # Every job with a metric an SLO reads gets a minimum.
    counted = "|".join(
        [*(f"{slo.metric}_count" if slo.latency else slo.metric for slo in SLOS.values()), *GUARDED_ELSEWHERE]
    )
    base_events = f'{{__name__=~"{counted}"}}'
    out.append(_record(MIN_EVENTS, _yaml_quoted(_per_job(default_events, events_by_job, base_events))))
    for slo in SLOS.values():
        out.append(f"\n  - name: bizmetrics-slo-{slo.name.replace('_', '-')}\n    rules:\n")
        out.extend(_slo_rules(slo, chosen_objectives.get(slo.name, {}), chosen_thresholds.get(slo.name, {})))
    out.append("\n  - name: bizmetrics-slo-alerts\n    rules:\n")
    for slo in SLOS.values():
        for speed in BURN_PAIRS:
            out.append(_alert(slo, speed, tenant=False))
    for slo in TENANT_SLOS:
        for speed in BURN_PAIRS:
            out.append(_alert(slo, speed, tenant=True))
    return "".join(out)


def _slo_rules(slo: SLO, objectives: Mapping[str | None, float], thresholds: Mapping[str | None, float]) -> list[str]:
    """The recording rules of one SLO: its settings, then per window its counts and ratios, then its budget."""
    name = slo.name
    sel = f'{{slo="{name}"}}'
    rules = []
    by_job = dict(objectives)
    base = f"{slo.metric}_count" if slo.latency else slo.metric
    rules.append(_record(OBJECTIVE, _yaml_quoted(_per_job(by_job.pop(None, slo.objective), by_job, base)), slo=name))
    per_job = {job: float(value) for job, value in thresholds.items()}
    threshold = per_job.pop(None, slo.threshold or 0.0)
    if slo.latency:
        rules.append(_record(THRESHOLD, _yaml_quoted(_per_job(threshold, per_job, base)), slo=name))
    levels = [("job", EVENTS, ERRORS, RATIO)]
    if slo.per_tenant:
        levels.append(("job, tenant_id", TENANT_EVENTS, TENANT_ERRORS, TENANT_RATIO))
    for by, events_name, errors_name, ratio_name in levels:
        for window in WINDOWS:
            events, errors = _counts(slo, window, by, per_job, threshold)
            rules.append(_record(events_name.format(w=window), _yaml_quoted(events), slo=name))
            rules.append(_record(errors_name.format(w=window), _yaml_quoted(errors), slo=name))
        for window in WINDOWS:
            errors, events = (
                f"sum by ({by}, slo) ({errors_name.format(w=window)}{sel})",
                f"sum by ({by}, slo) ({events_name.format(w=window)}{sel})",
            )
            rules.append(_record(ratio_name.format(w=window), _yaml_quoted(f"{errors} / {events}"), slo=name))
    if slo.per_tenant:
        for window in ("1h", "6h", "1d", "3d"):
            errors, events = (
                f"sum by (job, tenant_id, slo) ({TENANT_ERRORS.format(w=window)}{sel})",
                f"sum by (job, tenant_id, slo) ({TENANT_EVENTS.format(w=window)}{sel})",
            )
            rules.append(_record(TENANT_WILSON.format(w=window), _yaml_quoted(_wilson_lower(errors, events)), slo=name))
    # The bad share of the last 30 days, weighted by traffic: every evaluation's last hour, summed.
    for by, events_name, errors_name, ratio_name, budget in _with_budget(levels):
        ratio30d = ratio_name.format(w="30d")
        rules.append(
            _record(
                ratio30d,
                _yaml_quoted(
                    f"sum by ({by}, slo) (sum_over_time({errors_name.format(w='1h')}{sel}[30d]))"
                    f" / sum by ({by}, slo) (sum_over_time({events_name.format(w='1h')}{sel}[30d]))"
                ),
                slo=name,
            )
        )
        join = "" if by == "job" else "on (job, slo) group_left () "
        rules.append(
            _record(
                budget,
                _yaml_quoted(
                    f"1 - sum by ({by}, slo) ({ratio30d}{sel}) / {join}sum by (job, slo) (1 - {OBJECTIVE}{sel})"
                ),
                slo=name,
            )
        )
    return rules


def _with_budget(levels: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str, str]]:
    return [(*level, BUDGET if level[0] == "job" else TENANT_BUDGET) for level in levels]


def _latency_names() -> list[str]:
    return [slo.name for slo in SLOS.values() if slo.latency]


def _by_job(values: Mapping[str, float | Mapping[str | None, float]], what: str) -> dict[str, dict[str | None, float]]:
    chosen: dict[str, dict[str | None, float]] = {}
    for name, value in values.items():
        if name not in SLOS:
            raise ValueError(f"no SLO {name!r} (for its {what}); SLOs: {', '.join(SLOS)}")
        chosen[name] = {None: value} if isinstance(value, (int, float)) else dict(value)
        for job, number in chosen[name].items():
            if not isinstance(number, (int, float)) or not math.isfinite(number):
                raise ValueError(
                    f"the {name} {what}{f' of job {job!r}' if job else ''} must be a number, not {number!r}"
                )
    return chosen


def _yaml_quoted(expr: str) -> str:
    """A YAML scalar of ``expr``: plain when it can be (the objectives stay as 0.2.0 wrote them), else quoted."""
    if not re.search(r"[\"'{}\[\]#:|]", expr):
        return expr
    return "'" + expr.replace("'", "''") + "'"


_HEADER = """\
# bizmetrics SLOs, written by bizmetrics.assets.slo (do not edit by hand: `python -m bizmetrics
# export-assets` writes them tuned). Eight SLOs, each a ratio of bad events to all events of a
# service (job): connector, api, workflow and agent (failures), api_latency, connector_latency,
# agent_latency and agent_ttft (observations above a threshold, which is a bucket bound).
# - Settings as series, so dashboards read them: job:bizmetrics_slo_objective:ratio{slo},
#   job:bizmetrics_slo_latency_threshold:ms{slo} and job:bizmetrics_alert_min_events:count.
# - Per SLO and window: events, bad events and their ratio per job (per job and tenant for the
#   success SLOs), and the 30-day error budget left (1 untouched, 0 spent, negative overspent).
# - Multi-window, multi-burn-rate alerts (the Google SRE workbook's): Fast pages, Slow opens a
#   ticket. None fires on fewer events than the job's minimum in its long window, none for a batch
#   job (jobs that push batch_job_last_run_success: the batch alerts report them). Per tenant they
#   judge the 95% Wilson score lower bound of the error ratio, not the raw ratio.
"""


def main() -> int:
    """Write ``prometheus/slo_rules.yml`` from the descriptions above."""
    (PROMETHEUS_DIR / "slo_rules.yml").write_text(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
