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

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from prometheus_client.registry import CollectorRegistry

from . import _log
from .jobs import ENQUEUED_AT_HEADER, TENANT_HEADER, Job, QueueDepth, inject, record_job

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

#: The jobs running in this context, innermost first: ``(job, outer)`` or ``None``.
_RUNNING: ContextVar[tuple[Job | None, Any] | None] = ContextVar("bizmetrics_celery_running", default=None)
_UTC = timezone.utc


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
    inject(headers, enqueued_at=_eta_seconds(eta) if eta else None)


def _queue_of(task: Any, request: Any) -> str:
    info = request.delivery_info
    if info:
        queue = info.get("routing_key") or info.get("queue")
        if queue:
            return str(queue)
    queue = getattr(task, "queue", None)
    if queue:
        return str(queue)
    return str(task.app.conf.task_default_queue)


def _header(request: Any, name: str) -> Any:
    found = getattr(request, name, None)
    if found is None:
        custom = getattr(request, "headers", None)
        if custom:
            found = custom.get(name)
    return found


def _prerun(sender: Any = None, task: Any = None, **_: Any) -> None:
    try:
        task = task or sender
        request = task.request
        eager = bool(request.is_eager)
        job = Job(
            _queue_of(task, request),
            task.name,
            None if eager else _header(request, ENQUEUED_AT_HEADER),
            _header(request, TENANT_HEADER),
            eager,
        )
    except Exception:
        _log.internal_error("celery task_prerun")
        _RUNNING.set((None, _RUNNING.get()))  # its task_postrun pops this, not an outer task's job
        return
    job.start()
    # A stack in the context, not an attribute of the request: reading ``task.request`` again in
    # ``task_postrun`` costs more than the rest of it. Eager tasks run inside others: the innermost ends first.
    _RUNNING.set((job, _RUNNING.get()))


def _postrun(sender: Any = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    running = _RUNNING.get()
    if running is None:
        return
    job, outer = running
    _RUNNING.set(outer)
    if job is not None:
        job.finish(STATES.get(state or "", "error"))


def _revoked(sender: Any = None, request: Any = None, terminated: bool = False, **_: Any) -> None:
    """A task revoked before it ran (or terminated while it ran, in a pool process now gone)."""
    try:
        # ``sender`` is the task; ``request`` its context, custom headers as attributes.
        info = getattr(request, "delivery_info", None) or {}
        queue = info.get("routing_key") or info.get("queue") or getattr(sender, "queue", None) or "unknown"
        name = getattr(sender, "name", None) or getattr(request, "task", None)
        record_job(queue, name, "cancelled", tenant_id=_header(request, TENANT_HEADER) if request else None)
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
