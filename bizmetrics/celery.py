"""Celery tasks measured in-process through Celery's signals: ``instrument(app)``.

No task events are needed.  The publisher puts the enqueue time (a delayed
task's ETA) and its current tenant in the task's headers
(``before_task_publish``); the worker runs the task with that tenant current
and records ``job_executions_total``, ``job_duration``, ``job_queue_wait``,
``job_retries_total`` and ``job_in_progress`` (``task_prerun`` /
``task_postrun``; ``task_revoked`` for a task revoked before or while it
ran).  Celery is imported only when ``instrument`` is called.  See
:doc:`/guides/jobs`.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from prometheus_client.registry import CollectorRegistry

from . import _log, _values
from ._values import DEFAULT_TENANT
from .context import TENANT
from .jobs import (
    _JOBS,
    ENQUEUED_AT_HEADER,
    TENANT_HEADER,
    QueueDepth,
    _clock,
    _Series,
    _wait_ms,
    _wall,
    inject,
    record_job,
)

__all__ = ["instrument", "queue_depth"]

#: Celery's end states (``task_postrun``'s ``state``) -> ``job_executions_total``'s status.
STATES = {
    "SUCCESS": "success",
    "FAILURE": "error",
    "RETRY": "retry",
    "REVOKED": "cancelled",
    "REJECTED": "cancelled",
    "IGNORED": "cancelled",
}

#: The runs started by ``task_prerun`` and not ended yet: (task id, thread) -> (series, token, start ns, outer).
#: Keyed by the thread too (greenlet under gevent/eventlet, which patch ``get_ident``): an eager retry
#: runs again under the same id inside its first run, and ``outer`` is that run, restored when it ends.
_RUNS: dict[tuple[Any, int], tuple[_Series | None, Any, int, Any]] = {}
#: Each task object's own queue, else its app's default queue: read once (``app.conf`` lookups are slow).
_QUEUES: dict[Any, str] = {}
_UTC = timezone.utc
_tenant = TENANT.get
_get_ident = threading.get_ident


def _eta_seconds(eta: object) -> float | None:
    """A protocol-2 ``eta`` header (ISO 8601 text, naive meaning UTC) as Unix seconds."""
    if not eta:
        return None
    try:
        when = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
        return (when if when.tzinfo else when.replace(tzinfo=_UTC)).timestamp()
    except ValueError:
        return None


def _before_publish(sender: object = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:  # task protocol 1: nothing to carry the headers in
        return
    eta = headers.get("eta")
    if eta:
        inject(headers, enqueued_at=_eta_seconds(eta))
        return
    # inject(headers), inlined: this runs for every task published.
    try:
        headers[ENQUEUED_AT_HEADER] = _wall()
        tenant = _tenant()
        if tenant is not None:
            headers[TENANT_HEADER] = tenant if type(tenant) is str else _values.label(tenant, "tenant_id")
    except Exception:
        _log.internal_error("celery before_task_publish")


def _default_queue(task: Any) -> str:
    queue = getattr(task, "queue", None) or task.app.conf.task_default_queue
    found = _QUEUES[task] = str(queue)
    return found


def _attribute_header(request: Any, name: str) -> Any:
    """A custom header of a request that may not be a ``Context`` (a worker's ``Request`` has slots)."""
    found = getattr(request, name, None)
    if found is None:
        custom = getattr(request, "headers", None)
        if custom:
            found = custom.get(name)
    return found


def _prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    # jobs.Job.start, unrolled and inlined: this and _postrun run for every task, and Celery's own
    # dispatch of the two signals already costs about the 5 µs per task budget
    # (docs/performance-clients-jobs.md).
    token = series = None
    try:
        task = task or sender
        # A Context keeps its fields (and protocol 2's custom headers) in its __dict__: read there,
        # a missing one costs no AttributeError.
        found = vars(task.request)
        custom = found.get("headers")
        tenant = found.get(TENANT_HEADER)
        if tenant is None and custom:
            tenant = custom.get(TENANT_HEADER)
        if tenant is not None:
            token = TENANT.set(tenant)
        else:
            tenant = _tenant()
            if tenant is None:
                tenant = DEFAULT_TENANT
        # The queue its message came from, else the task's own, else its app's default (read once:
        # app.conf lookups are slow).
        info = found.get("delivery_info")
        queue = (info.get("routing_key") or info.get("queue")) if info else None
        if not queue:
            queue = _QUEUES.get(task) or _default_queue(task)
        elif type(queue) is not str:
            queue = str(queue)
        name = task.name
        series = _JOBS.cache.get((queue, name, tenant)) if type(tenant) is str else None
        if series is None:
            series = _JOBS.get(queue, name, tenant)
        if found.get("is_eager"):
            series.start(None)
        else:
            enqueued_at = found.get(ENQUEUED_AT_HEADER)
            if enqueued_at is None and custom:
                enqueued_at = custom.get(ENQUEUED_AT_HEADER)
            series.start(_wait_ms(enqueued_at, _wall()))
    except Exception:
        _log.internal_error("celery task_prerun")
    if token is not None or series is not None:  # its task_postrun ends it (and restores the tenant)
        try:
            key = (task_id, _get_ident())
            _RUNS[key] = (series, token, _clock(), _RUNS.get(key))
        except Exception:
            _log.internal_error("celery task_prerun")


def _postrun(sender: Any = None, task_id: Any = None, state: str | None = None, **_: Any) -> None:
    ended = _clock()
    try:
        key = (task_id, _get_ident())
        run = _RUNS.pop(key, None)
    except Exception:
        _log.internal_error("celery task_postrun")
        return
    if run is None:
        return
    series, token, started, outer = run
    if outer is not None:
        _RUNS[key] = outer
    try:
        if series is not None:
            series.finish(STATES.get(state, "error") if state else "error", (ended - started) / 1e6, True)
    except Exception:
        _log.internal_error("celery task_postrun")
    finally:
        if token is not None:
            try:
                TENANT.reset(token)
            except ValueError:  # ended in another context than it started in: leave that context alone
                _log.warn("jobs.context", "bizmetrics: a job finished in another context than it started in")


def _revoked(sender: Any = None, request: Any = None, terminated: bool = False, **_: Any) -> None:
    """A task revoked before it ran (or terminated while it ran, in a pool process now gone)."""
    try:
        # ``sender`` is the task; ``request`` its context, custom headers as attributes.
        info = getattr(request, "delivery_info", None) or {}
        queue = info.get("routing_key") or info.get("queue") or getattr(sender, "queue", None) or "unknown"
        name = getattr(sender, "name", None) or getattr(request, "task", None)
        record_job(queue, name, "cancelled", tenant_id=_attribute_header(request, TENANT_HEADER) if request else None)
    except Exception:
        _log.internal_error("celery task_revoked")


#: Celery's signals and bizmetrics' receivers (connected with ``dispatch_uid="bizmetrics.<signal>"``).
RECEIVERS: dict[str, Callable[..., None]] = {
    "before_task_publish": _before_publish,
    "task_prerun": _prerun,
    "task_postrun": _postrun,
    "task_revoked": _revoked,
}
_INSTRUMENTED: set[int] = set()


def instrument(
    app: Any,
    *,
    queue_depth: Iterable[str] | None = None,
    depth_timeout: float = 0.25,
    registry: CollectorRegistry | None = None,
) -> QueueDepth | None:
    """Record every task of ``app`` (published or run in this process) in the job family; idempotent.

    Call it where the app is defined, so publishers and workers (every pool:
    prefork, threads, solo, eager) both run it.  ``queue_depth``: queue names
    whose length is read from the broker at each scrape (off by default), each
    read bounded by ``depth_timeout`` seconds, exposed as ``job_queue_depth``
    on ``registry`` (the default registry if ``None``); the collector is returned.
    """
    from celery import signals  # type: ignore[import-untyped]  # optional: imported only here

    if id(app) not in _INSTRUMENTED:
        _INSTRUMENTED.add(id(app))
        for name, receiver in RECEIVERS.items():
            # Celery's signals hold weak references by default: these module functions live as long as the process.
            getattr(signals, name).connect(receiver, weak=False, dispatch_uid=f"bizmetrics.{name}")
    if queue_depth is None:
        return None
    return QueueDepth(_broker_depths(app, tuple(queue_depth)), depth_timeout).register(registry)


def queue_depth(app: Any, queues: Iterable[str]) -> Callable[[], dict[str, int]]:
    """Return a function reading the length of ``queues`` from ``app``'s broker (for ``jobs.QueueDepth``)."""
    return _broker_depths(app, tuple(queues))


def _broker_depths(app: Any, queues: tuple[str, ...]) -> Callable[[], dict[str, int]]:
    def read() -> dict[str, int]:
        found = {}
        with app.connection_for_read() as connection:
            for queue in queues:
                # A passive declare creates nothing: it answers the queue's message count, or fails (and,
                # on AMQP, closes its channel) for a queue the broker does not know, which is left out.
                channel = connection.channel()
                try:
                    found[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
                except connection.channel_errors:
                    pass
                finally:
                    try:
                        channel.close()
                    except Exception:
                        pass
        return found

    return read
