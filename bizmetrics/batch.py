"""Batch jobs: push a finished job's metrics to a Prometheus Pushgateway, adding up across runs.

Connector syncs often run as cron jobs that end before Prometheus' next
scrape; Prometheus recommends that such jobs push their metrics to a
Pushgateway when they finish.  Each run is a new process whose counters start
at zero, so pushing them as they are would replace the previous run's numbers
and ``increase()`` would see nothing.  :func:`push_job_metrics` therefore
adds what this process counted since its last push to what the Pushgateway
holds for the job, so the pushed counters really accumulate, run after run.
See README, "Batch jobs and the Pushgateway".
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, pushadd_to_gateway
from prometheus_client.metrics_core import Metric

from . import _log
from .metrics import CATALOGUE

__all__ = [
    "LAST_DURATION",
    "LAST_RUN_SUCCESS",
    "LAST_SUCCESS",
    "BatchRun",
    "PushError",
    "batch_job",
    "push_job_metrics",
]

#: Unix time of the job's last successful run (pushed only by successful runs).
LAST_SUCCESS = "batch_job_last_success_timestamp_seconds"
#: Duration of the job's last run, in seconds.
LAST_DURATION = "batch_job_last_run_duration_seconds"
#: 1 if the job's last run succeeded, else 0.
LAST_RUN_SUCCESS = "batch_job_last_run_success"

# Sample suffixes that add up across runs; everything else (gauges) is replaced.
_CUMULATIVE = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}

_Key = tuple[str, tuple[tuple[str, str], ...]]

# What this process pushed last, per (gateway, job, grouping key): a process that
# pushes several times adds only what it counted since its previous push.
_pushed: dict[tuple[str, str, tuple[tuple[str, str], ...]], dict[_Key, float]] = {}
_lock = threading.Lock()


class PushError(Exception):
    """A batch job's metrics could not be pushed (raised only when asked for).

    .. versionadded:: 0.2.0
    """


@dataclass
class BatchRun:
    """One run of a batch job, as :func:`batch_job` saw it; read it after the ``with`` block.

    .. versionadded:: 0.2.0
    """

    job: str
    #: Whether the block finished without an exception (``None`` while it runs).
    success: bool | None = None
    #: Whether the Pushgateway accepted the push (``None`` while the block runs).
    pushed: bool | None = None
    #: How long the block ran, in seconds.
    duration_seconds: float | None = None


def _le(bound: str) -> str:
    value = float(bound)
    return "+Inf" if value == math.inf else repr(value)


def _key(name: str, labels: Mapping[str, str]) -> _Key:
    # Bucket bounds come back from the Pushgateway as "10" where prometheus_client wrote "10.0".
    return name, tuple(sorted((k, _le(v) if k == "le" else v) for k, v in labels.items()))


def _local() -> tuple[dict[str, Metric], dict[_Key, float]]:
    """The catalogue's families (without samples) and its current samples, ``_created`` left out."""
    families: dict[str, Metric] = {}
    samples: dict[_Key, float] = {}
    for metric in CATALOGUE:
        for family in metric.collect():
            families[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    samples[_key(sample.name, sample.labels)] = sample.value
    return families, samples


def _url(gateway: str) -> str:
    return gateway if "://" in gateway else f"http://{gateway}"


def _previous(gateway: str, group: Mapping[str, str], timeout: float) -> dict[_Key, float]:
    """The samples the Pushgateway holds for ``group`` (empty if it holds none)."""
    with urllib.request.urlopen(f"{_url(gateway).rstrip('/')}/api/v1/metrics", timeout=timeout) as resp:
        body = json.load(resp)
    found: dict[_Key, float] = {}
    for entry in body.get("data", []):
        if {k: v for k, v in entry.get("labels", {}).items() if v} != {k: v for k, v in group.items() if v}:
            continue
        for name, family in entry.items():
            if not isinstance(family, dict) or "metrics" not in family:
                continue
            for metric in family["metrics"]:
                labels = {k: v for k, v in metric.get("labels", {}).items() if k not in group and k != "instance"}
                if family.get("type") == "HISTOGRAM":
                    for le, value in metric.get("buckets", {}).items():
                        found[_key(f"{name}_bucket", {**labels, "le": le})] = float(value)
                    found[_key(f"{name}_count", labels)] = float(metric["count"])
                    found[_key(f"{name}_sum", labels)] = float(metric["sum"])
                elif "value" in metric:
                    found[_key(name, labels)] = float(metric["value"])
    return found


def _by_sample(families: Mapping[str, Metric]) -> dict[str, Metric]:
    """Each sample name a family exposes (``x_total``, ``x_bucket``...), mapped to its family."""
    return {
        family.name + suffix: family for family in families.values() for suffix in _CUMULATIVE.get(family.type, ("",))
    }


class _Snapshot:
    """A collector that yields fixed families: what one push sends."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def _merge(
    families: Mapping[str, Metric],
    current: Mapping[_Key, float],
    since: Mapping[_Key, float],
    previous: dict[_Key, float],
) -> list[Metric]:
    """Add this process' counts since its last push to the Pushgateway's; gauges take the current value."""
    by_sample = _by_sample(families)
    merged = dict(previous)
    for key, value in current.items():
        family = by_sample.get(key[0])
        if family is None:
            continue
        if family.type in _CUMULATIVE:
            merged[key] = previous.get(key, 0.0) + value - since.get(key, 0.0)
        else:
            merged[key] = value
    out = {name: Metric(f.name, f.documentation, f.type) for name, f in families.items()}
    for (name, labels), value in sorted(merged.items()):
        family = by_sample.get(name)
        if family is not None and not math.isnan(value):
            out[family.name].add_sample(name, dict(labels), value)
    return [family for family in out.values() if family.samples]


def _gauge(name: str, documentation: str, value: float) -> Metric:
    metric = Metric(name, documentation, "gauge")
    metric.add_sample(name, {}, value)
    return metric


def push_job_metrics(
    gateway: str,
    job: str,
    *,
    success: bool = True,
    duration_seconds: float | None = None,
    grouping_key: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> bool:
    """Push the catalogue and the job's run gauges to ``gateway`` under ``job`` and ``grouping_key``.

    Counters and histograms are added to what the Pushgateway already holds
    for this group (what this process counted since its last push, plus the
    previous runs'), so they accumulate across runs and ``increase()`` over
    several runs is what they counted.  ``batch_job_last_run_success`` and
    ``batch_job_last_run_duration_seconds`` describe this run;
    ``batch_job_last_success_timestamp_seconds`` is pushed only on success,
    so a failed run keeps the previous good run's.  Runs of one group must
    not push at the same moment (give concurrent runs their own ``instance``).

    :param gateway: the Pushgateway, ``host:port`` or a URL.
    :param job: the ``job`` label: the batch job's name.
    :param success: whether the run succeeded.
    :param duration_seconds: how long the run took.
    :param grouping_key: more labels that tell this job's groups apart, such as ``instance``.
    :param timeout: seconds to wait for each HTTP request.
    :returns: whether the push succeeded; a failure is logged, never raised.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 counters accumulate across runs; ``duration_seconds`` replaces ``duration_ms``.
    """
    try:
        group = {"job": job, **dict(grouping_key or {})}
        slot = (gateway, job, tuple(sorted(group.items())))
        with _lock:
            families, current = _local()
            since = _pushed.get(slot, {})
            pushed = _merge(families, current, since, _previous(gateway, group, timeout))
            pushed.append(_gauge(LAST_RUN_SUCCESS, "1 if the job's last run succeeded, else 0", 1 if success else 0))
            if duration_seconds is not None:
                pushed.append(_gauge(LAST_DURATION, "Duration of the job's last run in seconds", duration_seconds))
            if success:
                pushed.append(_gauge(LAST_SUCCESS, "Unix time of the job's last successful run", time.time()))
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Snapshot(pushed))
            pushadd_to_gateway(
                gateway, job=job, registry=registry, grouping_key=dict(grouping_key or {}), timeout=timeout
            )
            _pushed[slot] = current
        return True
    except Exception:
        _log.logger.error("bizmetrics: pushing job %r to %s failed", job, gateway, exc_info=True)
        return False


@contextmanager
def batch_job(
    gateway: str,
    job: str,
    *,
    grouping_key: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    raise_on_push_failure: bool = False,
) -> Iterator[BatchRun]:
    """Time the block as one run of batch job ``job`` and push its metrics when it ends.

    The run succeeds if the block finishes without an exception; the
    exception, if any, propagates unchanged after the push.  The yielded
    :class:`BatchRun` tells, after the block, whether the push worked.

    :param gateway: the Pushgateway, ``host:port`` or a URL.
    :param job: the ``job`` label: the batch job's name.
    :param grouping_key: more labels that tell this job's groups apart, such as ``instance``.
    :param timeout: seconds to wait for each HTTP request.
    :param raise_on_push_failure: raise :class:`PushError` when the push fails after a block that succeeded.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 yields a :class:`BatchRun`; ``raise_on_push_failure``.
    """
    run = BatchRun(job)
    start = time.perf_counter()
    success = False
    try:
        yield run
        success = True
    finally:
        run.success = success
        run.duration_seconds = time.perf_counter() - start
        run.pushed = push_job_metrics(
            gateway,
            job,
            success=success,
            duration_seconds=run.duration_seconds,
            grouping_key=grouping_key,
            timeout=timeout,
        )
    if raise_on_push_failure and not run.pushed:
        raise PushError(f"pushing batch job {job!r} to {gateway} failed; see the bizmetrics logger")
