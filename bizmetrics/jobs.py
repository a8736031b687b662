"""Background jobs on any queue: record a run, carry the tenant and the enqueue time in a message's headers.

``bizmetrics.celery`` and ``bizmetrics.rq`` are built on this module; an
adapter for another queue (Dramatiq, arq, taskiq, a home-made one) is a few
lines of it::

    # publisher
    message.headers.update(bizmetrics.jobs.headers())
    # worker
    with bizmetrics.jobs.run_job("emails", "send_welcome", message.headers) as job:
        handle(message)            # runs with the publisher's tenant current
        if must_retry:
            job.retry()            # ends as status="retry" (an exception ends as "error")

Nothing here imports a queue library.  See :doc:`/guides/jobs`.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from types import TracebackType
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from . import _log, _trace, _values
from ._families import Family
from ._fastpath import FAST_PATH, LOCK, Cells, cell
from ._values import DEFAULT_TENANT, UNKNOWN
from .context import TENANT, tenant_or_current
from .metrics import JOB_DURATION, JOB_EXECUTIONS, JOB_IN_PROGRESS, JOB_QUEUE_WAIT, JOB_RETRIES, NAMESPACE

__all__ = [
    "ENQUEUED_AT_HEADER",
    "STATUSES",
    "TENANT_HEADER",
    "Job",
    "QueueDepth",
    "headers",
    "inject",
    "record_job",
    "run_job",
]

#: The header holding the enqueue time (or the ETA of a delayed job): Unix seconds, a float.
ENQUEUED_AT_HEADER = "bizmetrics_enqueued_at"
#: The header holding the publisher's tenant (absent when none was current).
TENANT_HEADER = "bizmetrics_tenant"
#: The values of ``job_executions_total``'s ``status`` label.
STATUSES = ("success", "error", "retry", "cancelled")

_wall = time.time
_clock = time.perf_counter_ns


def inject(
    headers: MutableMapping[str, Any], *, tenant_id: object = None, enqueued_at: float | None = None
) -> MutableMapping[str, Any]:
    """Put the enqueue time and the tenant (``tenant_id``, else the current one) into a message's headers.

    ``enqueued_at`` (Unix seconds) defaults to now; pass a delayed job's ETA
    so its queue wait counts from when it was due.  A tenant already in the
    headers stays when none is given or current.  Returns ``headers``; never raises.
    """
    try:
        headers[ENQUEUED_AT_HEADER] = _wall() if enqueued_at is None else float(enqueued_at)
        tenant = TENANT.get() if tenant_id is None else tenant_id
        if tenant is not None:
            headers[TENANT_HEADER] = tenant if type(tenant) is str else _values.label(tenant, "tenant_id")
    except Exception:
        _log.internal_error("jobs.inject")
    return headers


def headers(*, tenant_id: object = None, enqueued_at: float | None = None) -> dict[str, Any]:
    """Return new headers for a message: ``inject`` into an empty ``dict``."""
    found: dict[str, Any] = {}
    inject(found, tenant_id=tenant_id, enqueued_at=enqueued_at)
    return found


class _Series:
    """The cells of one queue, task and tenant: executions by status, retries, duration, wait, in progress."""

    __slots__ = ("by_status", "children", "duration", "key", "retries", "running", "tenant", "wait")

    def __init__(self, queue: str, task: str, tenant: str) -> None:
        self.key, self.tenant = (queue, task), tenant
        executions = tuple(JOB_EXECUTIONS.labels(queue, task, status, tenant) for status in STATUSES)
        #: For the public path: the executions by status, retries, duration, queue wait, in progress.
        self.children = (
            dict(zip(STATUSES, executions, strict=True)),
            JOB_RETRIES.labels(queue, task, tenant),
            JOB_DURATION.labels(queue, task),
            JOB_QUEUE_WAIT.labels(queue, task),
            JOB_IN_PROGRESS.labels(queue, task),
        )
        if FAST_PATH:
            self.by_status = {status: cell(child) for status, child in zip(STATUSES, executions, strict=True)}
            self.retries = cell(self.children[1])
            self.duration = Cells(self.children[2])
            self.wait = Cells(self.children[3])
            self.running = cell(self.children[4])

    def start(self, wait_ms: float | None) -> None:
        """A run starts, after ``wait_ms`` in the queue (``None``: not queued, or unknown)."""
        if _trace.ACTIVE:
            self.children[4].inc()
            wait_ms = _trace.duration(wait_ms)
            if wait_ms is not None:
                self.children[3].observe(wait_ms)
            return
        running = self.running
        if wait_ms is None:
            with LOCK:
                running._value += 1
            return
        wait = self.wait
        bucket = wait.buckets[bisect_left(wait.bounds, wait_ms)]
        with LOCK:
            running._value += 1
            wait.sum._value += wait_ms
            bucket._value += 1

    def finish(self, status: str, ms: float | None, started: bool) -> None:
        """A run ends with ``status`` after ``ms``; ``started``: it was counted in progress."""
        if _trace.ACTIVE:
            self.children[0][status].inc()
            if status == "retry":
                self.children[1].inc()
            ms = _trace.duration(ms)
            if ms is not None:
                self.children[2].observe(ms)
            if started:
                self.children[4].dec()
            return
        count = self.by_status[status]
        retries = self.retries if status == "retry" else None
        running = self.running if started else None
        duration = self.duration
        bucket = None if ms is None else duration.buckets[bisect_left(duration.bounds, ms)]
        with LOCK:
            count._value += 1
            if retries is not None:
                retries._value += 1
            if running is not None:
                running._value -= 1
            if bucket is not None:
                duration.sum._value += ms  # type: ignore[operator]
                bucket._value += 1


_JOBS: Family[_Series] = Family(_Series, queue=UNKNOWN, task=UNKNOWN, tenant_id=DEFAULT_TENANT)


def _wait_ms(enqueued_at: object, now: float) -> float | None:
    """The ms from ``enqueued_at`` (Unix seconds) to ``now``: 0 if the clocks disagree, ``None`` if unreadable."""
    if enqueued_at is None:
        return None
    try:
        at = enqueued_at if type(enqueued_at) is float else float(enqueued_at)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        _log.warn(
            "jobs.enqueued_at", "bizmetrics: unreadable %s header %r: no queue wait", ENQUEUED_AT_HEADER, enqueued_at
        )
        return None
    if not math.isfinite(at):
        return None
    # Publisher and worker clocks may disagree by a little: never a negative wait.
    return max(0.0, (now - at) * 1000.0)


class Job:
    """One run of a job: counted in progress from ``start()`` to ``finish()``, with its tenant current in between.

    Made by ``run_job``; use it as a ``with`` block, or call ``start()`` and
    ``finish()`` from a queue's hooks (both in the thread that runs the job).
    The status ``finish()`` records is, in order: the one given, else the one
    set by ``retry()``/``cancel()``/``status``, else ``error`` if an exception
    ended the block (``cancelled`` for ``asyncio.CancelledError``,
    ``KeyboardInterrupt`` and ``SystemExit``), else ``success``.
    """

    __slots__ = ("_scope", "_started_ns", "_token", "eager", "enqueued_at", "queue", "status", "task", "tenant")

    def __init__(
        self, queue: object, task: object, enqueued_at: object = None, tenant: object = None, eager: bool = False
    ) -> None:
        self.queue, self.task, self.enqueued_at, self.tenant, self.eager = queue, task, enqueued_at, tenant, eager
        #: The status ``finish()`` records unless given one: ``None`` means from the outcome.
        self.status: str | None = None
        self._scope: _Series | None = None
        self._token: Any = None
        self._started_ns = 0

    def retry(self) -> None:
        """End this run as ``retry`` (and count it in ``job_retries_total``)."""
        self.status = "retry"

    def cancel(self) -> None:
        """End this run as ``cancelled``."""
        self.status = "cancelled"

    def start(self) -> Job:
        """Make the job's tenant current, count it in progress and observe its queue wait; never raises."""
        tenant = self.tenant
        if tenant is not None:
            self._token = TENANT.set(tenant)
        try:
            series = self._scope = _JOBS.get(self.queue, self.task, tenant_or_current(None))
            wait = None if self.eager else _wait_ms(self.enqueued_at, _wall())
            series.start(wait)
        except Exception:
            _log.internal_error("jobs.start")
        self._started_ns = _clock()
        return self

    def finish(self, status: str | None = None, error: BaseException | None = None) -> None:
        """Record the run's outcome and restore the tenant that was current before ``start()``; never raises."""
        ms = (_clock() - self._started_ns) / 1e6
        token, self._token = self._token, None
        try:
            status = status or self.status or _outcome(error)
            if status not in STATUSES:
                _log.warn("jobs.status", "bizmetrics: job status %r is none of %s: recorded as error", status, STATUSES)
                status = "error"
            series, self._scope = self._scope, None
            if series is not None:
                series.finish(status, ms, True)
        except Exception:
            _log.internal_error("jobs.finish")
        finally:
            if token is not None:
                try:
                    TENANT.reset(token)
                except ValueError:  # finished in another context than it started in: leave that context alone
                    _log.warn("jobs.context", "bizmetrics: a job finished in another context than it started in")

    def __enter__(self) -> Job:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(None, exc)


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "success"
    if isinstance(error, (KeyboardInterrupt, SystemExit)) or type(error).__name__ == "CancelledError":
        return "cancelled"
    return "error"


def run_job(
    queue: object,
    task: object,
    headers: Mapping[str, Any] | None = None,
    *,
    tenant_id: object = None,
    eager: bool = False,
) -> Job:
    """Return the ``Job`` of one run of ``task`` taken from ``queue``, for a ``with`` block.

    ``headers`` are the message's (see ``inject``): their tenant becomes
    current while the job runs, and their enqueue time gives the queue wait.
    ``tenant_id`` overrides the headers' tenant; ``eager``: the job was run
    in place, not queued, so no wait is observed.
    """
    enqueued_at = tenant = None
    if headers:
        try:
            enqueued_at = headers.get(ENQUEUED_AT_HEADER)
            tenant = headers.get(TENANT_HEADER)
        except Exception:
            _log.internal_error("jobs.run_job headers")
    return Job(queue, task, enqueued_at, tenant if tenant_id is None else tenant_id, eager)


def record_job(
    queue: object,
    task: object,
    status: str,
    duration_ms: float | None = None,
    *,
    queue_wait_ms: float | None = None,
    tenant_id: object = None,
) -> None:
    """Record one finished run of a job at once: its status, duration and queue wait; never raises.

    For queues that report runs after the fact (a job that never ran, a
    revoked one: ``duration_ms=None``).  ``tenant_id`` defaults to the current
    tenant.  Does not touch ``job_in_progress``.
    """
    try:
        if status not in STATUSES:
            _log.warn("jobs.status", "bizmetrics: job status %r is none of %s: recorded as error", status, STATUSES)
            status = "error"
        series = _JOBS.get(queue, task, tenant_or_current(tenant_id))
        wait = None if queue_wait_ms is None else _values.duration(queue_wait_ms, "queue_wait_ms")
        if wait is not None:
            series.start(wait)
        ms = None if duration_ms is None else _values.duration(duration_ms)
        series.finish(status, ms, wait is not None)
    except Exception:
        _log.internal_error("record_job")


class QueueDepth:
    """A collector of ``job_queue_depth{queue}``: the broker's queue lengths, read at scrape time.

    ``read`` returns ``{queue: length}``; it runs in one background thread
    and a scrape waits for it at most ``timeout`` seconds: a slow or dead
    broker never stalls the scrape (the queues are then absent, and a read
    still hanging is not started again until it returns).
    """

    def __init__(self, read: Callable[[], Mapping[str, int]], timeout: float = 0.25) -> None:
        self.read, self.timeout = read, timeout
        self._lock = threading.Lock()
        self._pending: threading.Event | None = None
        self._result: Mapping[str, int] | None = None

    def _run(self, done: threading.Event) -> None:
        try:
            self._result = dict(self.read())
        except Exception:
            _log.warn("jobs.depth", "bizmetrics: reading queue depths from the broker failed")
            self._result = None
        finally:
            with self._lock:
                self._pending = None
            done.set()

    def depths(self) -> Mapping[str, int] | None:
        """Return the queue lengths, or ``None`` if the broker did not answer within the timeout."""
        with self._lock:
            done = self._pending
            if done is None:
                done = self._pending = threading.Event()
                self._result = None
                threading.Thread(target=self._run, args=(done,), name="bizmetrics-queue-depth", daemon=True).start()
        return self._result if done.wait(self.timeout) else None

    def collect(self) -> Iterable[Metric]:
        name = f"{NAMESPACE}_job_queue_depth" if NAMESPACE else "job_queue_depth"
        family = GaugeMetricFamily(name, "Messages waiting in each queue, read from the broker", labels=("queue",))
        found = self.depths()
        for queue, length in sorted((found or {}).items()):
            family.add_metric((_values.label(queue, "queue"),), float(length))
        yield family

    def register(self, registry: CollectorRegistry | None = None) -> QueueDepth:
        """Register on ``registry`` (the default one if ``None``); returns itself."""
        (REGISTRY if registry is None else registry).register(self)
        return self
