"""Batch jobs: push a finished job's metrics to a Prometheus Pushgateway.

Connector syncs often run as cron jobs that end before Prometheus' next
scrape; Prometheus recommends that such jobs push their metrics to a
Pushgateway when they finish.  See README, "Batch jobs".
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

from . import _log
from .metrics import CATALOGUE

__all__ = ["LAST_DURATION", "LAST_RUN_SUCCESS", "LAST_SUCCESS", "batch_job", "push_job_metrics"]

#: Unix time of the job's last successful run (pushed only by successful runs).
LAST_SUCCESS = "batch_job_last_success_timestamp_seconds"
#: Duration of the job's last run, in milliseconds like every bizmetrics duration.
LAST_DURATION = "batch_job_last_duration_ms"
#: 1 if the job's last run succeeded, else 0.
LAST_RUN_SUCCESS = "batch_job_last_run_success"


def push_job_metrics(
    gateway: str,
    job: str,
    *,
    success: bool = True,
    duration_ms: float | None = None,
    grouping_key: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> bool:
    """Push the catalogue and the job's run gauges to ``gateway`` under ``job`` and ``grouping_key``.

    Uses the Pushgateway's POST (``pushadd``): a failed run replaces the
    duration and ``batch_job_last_run_success`` but keeps the last success
    timestamp of the previous good run, so staleness alerts work.  Returns
    whether the push succeeded; a failure is logged, never raised.

    .. versionadded:: 0.1.0
    """
    try:
        registry = CollectorRegistry(auto_describe=True)
        for metric in CATALOGUE:
            registry.register(metric)
        Gauge(LAST_RUN_SUCCESS, "1 if the job's last run succeeded, else 0", registry=registry).set(1 if success else 0)
        if duration_ms is not None:
            Gauge(LAST_DURATION, "Duration of the job's last run in milliseconds", registry=registry).set(duration_ms)
        if success:
            Gauge(LAST_SUCCESS, "Unix time of the job's last successful run", registry=registry).set(time.time())
        pushadd_to_gateway(gateway, job=job, registry=registry, grouping_key=dict(grouping_key or {}), timeout=timeout)
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
) -> Iterator[None]:
    """Time the block as one run of batch job ``job`` and push its metrics when it ends.

    The run succeeds if the block finishes without an exception; the
    exception, if any, propagates unchanged after the push.

    .. versionadded:: 0.1.0
    """
    start = time.perf_counter()
    success = False
    try:
        yield
        success = True
    finally:
        push_job_metrics(
            gateway,
            job,
            success=success,
            duration_ms=(time.perf_counter() - start) * 1000,
            grouping_key=grouping_key,
            timeout=timeout,
        )
