"""RQ jobs measured in-process: ``instrument()``.

Every job created by an ``rq.Queue`` carries the publisher's current tenant
in its ``meta``; ``Job.perform`` (what a worker's work horse, a
``SimpleWorker`` or a synchronous queue calls) runs with that tenant current
and records the job family, the queue wait from RQ's own ``enqueued_at``
(set again when a scheduled or retried job enters the queue).  RQ is
imported only when ``instrument`` is called.  See :doc:`/guides/jobs`.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from prometheus_client.registry import CollectorRegistry

from . import _log
from .context import TENANT
from .jobs import TENANT_HEADER, Job, QueueDepth, inject

__all__ = ["instrument", "queue_depth"]

_UTC = timezone.utc
_MARK = "__bizmetrics_instrumented__"
#: The job whose run an instrumented ``perform`` is recording in this context.
_PERFORMING: ContextVar[Any] = ContextVar("bizmetrics_rq_performing", default=None)


def _seconds(when: object) -> float | None:
    if not isinstance(when, datetime):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=_UTC)).timestamp()


def _wrap_create_job(create_job: Callable[..., Any]) -> Callable[..., Any]:
    def create_job_with_tenant(self: Any, *args: Any, **kwargs: Any) -> Any:
        job = create_job(self, *args, **kwargs)
        if TENANT.get() is not None:
            try:
                meta = job.meta
                if TENANT_HEADER not in meta:
                    headers: dict[str, Any] = {}
                    inject(headers)
                    meta[TENANT_HEADER] = headers[TENANT_HEADER]
            except Exception:
                _log.internal_error("rq create_job")
        return job

    return create_job_with_tenant


def _wrap_perform(perform: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def perform_recorded(self: Any) -> Any:
        # A subclass's perform calling super().perform(), both instrumented: the outer one records the run.
        if _PERFORMING.get() is self:
            return perform(self)
        token = _PERFORMING.set(self)
        try:
            return _perform_recorded(self, perform)
        finally:
            _PERFORMING.reset(token)

    return perform_recorded


def _perform_recorded(self: Any, perform: Callable[[Any], Any]) -> Any:
    try:
        eager = self.worker_name == "sync"  # Queue(is_async=False) runs jobs in place as worker "sync"
        job = Job(
            self.origin,
            self.func_name,
            None if eager else _seconds(self.enqueued_at),
            (self.meta or {}).get(TENANT_HEADER),
            eager,
        )
    except Exception:
        _log.internal_error("rq perform")
        return perform(self)
    job.start()
    try:
        result = perform(self)
    except BaseException as error:
        # RQ retries a failed job while it has retries left: this run asked for a retry.
        retries_left = getattr(self, "retries_left", None)
        job.finish("retry" if isinstance(retries_left, int) and retries_left > 0 else None, error)
        raise
    job.finish("success")
    return result


def instrument(
    *,
    job_class: Any = None,
    queue_class: Any = None,
    queue_depth: Iterable[str] | None = None,
    connection: Any = None,
    depth_timeout: float = 0.25,
    registry: CollectorRegistry | None = None,
) -> QueueDepth | None:
    """Record every RQ job run in this process, and carry the publisher's tenant; idempotent.

    Call it in publishers and workers, before they enqueue or work.  It
    instruments ``rq.job.Job`` and ``rq.Queue`` (or the ``job_class`` and
    ``queue_class`` given, for custom classes that override ``perform`` or
    ``create_job``).  ``queue_depth``: queue names whose length is read from
    Redis (``connection``) at each scrape, bounded by ``depth_timeout``
    seconds, exposed as ``job_queue_depth`` on ``registry``; off by default.
    """
    import rq  # optional dependency: imported only here

    for cls, name, wrap in (
        (job_class or rq.job.Job, "perform", _wrap_perform),
        (queue_class or rq.Queue, "create_job", _wrap_create_job),
    ):
        original = cls.__dict__.get(name) or getattr(cls, name)
        if not getattr(original, _MARK, False):
            wrapped = functools.wraps(original)(wrap(original))
            setattr(wrapped, _MARK, True)
            setattr(cls, name, wrapped)
    if queue_depth is None:
        return None
    if connection is None:
        raise ValueError("bizmetrics.rq.instrument: queue_depth needs connection=, the Redis connection of the queues")
    return QueueDepth(_depths(connection, tuple(queue_depth)), depth_timeout).register(registry)


def queue_depth(connection: Any, queues: Iterable[str]) -> Callable[[], dict[str, int]]:
    """Return a function reading the length of ``queues`` from Redis (for ``jobs.QueueDepth``)."""
    return _depths(connection, tuple(queues))


def _depths(connection: Any, queues: tuple[str, ...]) -> Callable[[], dict[str, int]]:
    def read() -> dict[str, int]:
        import rq

        return {name: int(rq.Queue(name, connection=connection).count) for name in queues}

    return read
