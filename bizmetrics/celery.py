"""Celery tasks measured in-process, around each task's body: ``instrument(app)``.

No task events and no signals on the hot path: Celery's dispatch of a signal
to any receiver costs more than this module's whole work per task.  The
publisher puts the enqueue time (a delayed task's ETA) and its current tenant
in the task's headers (``app.amqp.send_task_message``, wrapped); the worker
runs each task's body with that tenant current and records
``job_executions_total``, ``job_duration``, ``job_queue_wait``,
``job_retries_total`` and ``job_in_progress`` (``task.run``, wrapped, for the
runs Celery's tracer makes: the app's loader marks them).  A task revoked
before or while it ran is counted from Celery's ``task_revoked`` signal, sent
only then.  Celery is imported only when ``instrument`` is called.  See
:doc:`/guides/jobs`.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import threading
import weakref
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
    _wait_ms,
    _wall,
    inject,
    record_job,
)

__all__ = ["instrument", "queue_depth"]

#: Each task object's own queue, else its app's default queue: read once (``app.conf`` lookups are slow).
_QUEUES: dict[Any, str] = {}
_UTC = timezone.utc
_tenant = TENANT.get
_reset = TENANT.reset


class _Runs(threading.local):
    """This thread's runs (greenlet's, under gevent and eventlet, which patch ``threading.local``)."""

    def __init__(self) -> None:
        #: task -> the request of the run Celery's tracer is about to call its body for.
        self.armed: dict[Any, Any] = {}
        #: The tenant token of the last worker run, reset when the tracer cleans up after it.
        self.token: Any = None


_RUNS = _Runs()
#: Celery's exceptions that end a run as ``retry`` and as ``cancelled`` (set by ``instrument``).
_RETRY: tuple[type[BaseException], ...] = ()
_CANCELLED: tuple[type[BaseException], ...] = ()


def _eta_seconds(eta: object) -> float | None:
    """A protocol-2 ``eta`` header (ISO 8601 text, naive meaning UTC) as Unix seconds."""
    if not eta:
        return None
    try:
        when = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
        return (when if when.tzinfo else when.replace(tzinfo=_UTC)).timestamp()
    except ValueError:
        return None


def _publisher(send: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap Celery's ``send_task_message``: the enqueue time and the tenant into each message's headers."""

    def send_task_message(producer: Any, name: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            headers = message[0]
            extra = kwargs.get("headers")
            if extra:  # the caller's own headers: merged first, as Celery does, so that ours are the ones sent
                headers.update(extra)
                kwargs["headers"] = None
            eta = headers.get("eta")
            if eta:
                inject(headers, enqueued_at=_eta_seconds(eta))
            else:
                # inject(headers), inlined: this runs for every task published.
                headers[ENQUEUED_AT_HEADER] = _wall()
                tenant = _tenant()
                if tenant is not None:
                    headers[TENANT_HEADER] = tenant if type(tenant) is str else _values.label(tenant, "tenant_id")
        except Exception:
            _log.internal_error("celery publish")
        return send(producer, name, message, *args, **kwargs)

    return send_task_message


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


def _running(stack: list[Any] | None, request: Any) -> bool:
    if not stack:
        return False
    return stack[-1] is request or (len(stack) > 1 and stack[-2] is request)


def _measured(task: Any, run: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``task``'s body: the runs Celery's tracer makes are recorded, direct calls pass through."""
    armed = _RUNS  # looked up per call: each thread its own

    def run_measured(*args: Any, **kwargs: Any) -> Any:
        request = armed.armed.pop(task, None)
        # Celery's run is under way only while its request is on the task's stack: on top, or under the one a
        # custom __call__ pushes. Else task(...) is called directly, not run by Celery (an armed request left by
        # a run whose body never came, its before_start failed, is not this call's).
        if request is None or not _running(task.request_stack.stack, request):
            return run(*args, **kwargs)
        token = series = None
        eager = False
        try:
            # A Context keeps its fields (and protocol 2's custom headers) in its __dict__: read there,
            # a missing one costs no AttributeError.
            found = vars(request)
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
            # The queue its message came from, else the task's own, else its app's default.
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
                eager = True
                series.start(None)
            else:
                enqueued_at = found.get(ENQUEUED_AT_HEADER)
                if enqueued_at is None and custom:
                    enqueued_at = custom.get(ENQUEUED_AT_HEADER)
                series.start(_wait_ms(enqueued_at, _wall()))
        except Exception:
            _log.internal_error("celery task start")
        started = _clock()
        try:
            result = run(*args, **kwargs)
        except BaseException as error:
            _end(series, started, _status(error), token, eager)
            raise
        _end(series, started, "success", token, eager)
        return result

    run_measured.__wrapped__ = run  # type: ignore[attr-defined]
    return run_measured


#: The code of every body wrapper: a task's ``run`` with it is measured already.
_MEASURED = _measured(None, lambda: None).__code__


def _status(error: BaseException) -> str:
    """The status of a run its body ended with ``error``, as Celery's tracer reads it."""
    if isinstance(error, _RETRY):
        return "retry"
    return "cancelled" if isinstance(error, _CANCELLED) else "error"


def _end(series: Any, started: int, status: str, token: Any, eager: bool) -> None:
    ms = (_clock() - started) / 1e6
    try:
        if series is not None:
            series.finish(status, ms, True)
    except Exception:
        _log.internal_error("celery task end")
    if token is not None:
        if eager:
            _restore(token)
        else:
            # The tenant stays current until Celery's tracer cleans up after the run: the result, the
            # task's callbacks and the next step of its chain are stored and published under it.
            _RUNS.token = token


def _restore(token: Any) -> None:
    try:
        _reset(token)
    except ValueError:  # ended in another context than it started in: leave that context alone
        _log.warn("jobs.context", "bizmetrics: a job finished in another context than it started in")


def _arm(on_task_init: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Wrap the loader's ``on_task_init``, which Celery's tracer calls right before a task's body."""

    def on_task_init_armed(task_id: Any, task: Any) -> Any:
        runs = _RUNS
        request = runs.armed[task] = task.request_stack.top
        # A worker run's tenant still current when the next worker run starts: its clean-up never came (an
        # eager run started by the first one's on_success or after_return handler keeps that tenant).
        if runs.token is not None and not getattr(request, "is_eager", False):
            token, runs.token = runs.token, None
            _restore(token)
        return on_task_init(task_id, task)

    return on_task_init_armed


def _cleanup(on_process_cleanup: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap the loader's ``on_process_cleanup``, which Celery's worker tracer calls after each task."""

    def on_process_cleanup_restoring() -> Any:
        runs = _RUNS
        if runs.token is not None:
            token, runs.token = runs.token, None
            _restore(token)
        if runs.armed:  # a run whose body was never called (its before_start failed)
            runs.armed.clear()
        return on_process_cleanup()

    return on_process_cleanup_restoring


def _measure(task: Any) -> None:
    """Make ``task``'s body measured, outermost (Celery's ``autoretry_for`` wraps ``run`` after registering)."""
    run = task.run
    if getattr(run, "__code__", None) is _MEASURED:
        return
    inner = getattr(task, "_orig_run", None)
    if getattr(inner, "__code__", None) is _MEASURED:  # autoretry wrapped ours: call the body from it instead
        task._orig_run = inner.__wrapped__  # type: ignore[union-attr]
    task.run = _measured(task, run)
    # A tracer built before holds the body it was built with: build it again (a worker's, in place).
    tracer = vars(task).get("__trace__")
    if tracer is not None:
        from celery.app.trace import build_tracer  # type: ignore[import-untyped]

        cells = dict(zip(tracer.__code__.co_freevars, tracer.__closure__ or (), strict=False))
        hostname = cells["hostname"].cell_contents if "hostname" in cells else None
        task.__trace__ = build_tracer(task.name, task, task.app.loader, hostname, app=task.app)


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


#: Celery's signals and bizmetrics' receivers (connected with ``dispatch_uid="bizmetrics.<signal>"``):
#: only ``task_revoked``, sent only when a task is revoked.
RECEIVERS: dict[str, Callable[..., None]] = {"task_revoked": _revoked}
#: The apps instrumented (weakly: a collected app's id may be a new app's).
_INSTRUMENTED: weakref.WeakSet[Any] = weakref.WeakSet()
#: Each registry class -> its subclass that measures every task put in it.
_REGISTRIES: dict[type, type] = {}


def _measuring(registry: type) -> type:
    """The subclass of a task registry's class that measures each task put in it (itself if it is one)."""
    if registry in _REGISTRIES.values():  # a registry shared with an app instrumented before
        return registry
    found = _REGISTRIES.get(registry)
    if found is None:
        setitem = registry.__setitem__  # type: ignore[index]

        def __setitem__(self: Any, name: Any, task: Any) -> None:
            setitem(self, name, task)
            try:
                _measure(task)
            except Exception:
                _log.internal_error("celery task registration")

        found = _REGISTRIES[registry] = type(
            registry.__name__, (registry,), {"__setitem__": __setitem__, "__module__": registry.__module__}
        )
    return found


def _hook(app: Any) -> None:
    """Measure the bodies of ``app``'s tasks, registered now and later, and the messages it publishes."""
    loader = app.loader
    loader.on_task_init = _arm(loader.on_task_init)
    loader.on_process_cleanup = _cleanup(loader.on_process_cleanup)
    amqp = app.amqp
    sender = vars(amqp).get("send_task_message")
    if sender is not None:
        amqp.send_task_message = _publisher(sender)
    else:  # built at the first publish, from the configuration as it is then
        create = amqp._create_task_sender
        amqp._create_task_sender = lambda: _publisher(create())
    tasks = app._tasks  # not app.tasks, which would finalize the app
    tasks.__class__ = _measuring(type(tasks))
    from_fun = app._task_from_fun

    def _task_from_fun(*args: Any, **kwargs: Any) -> Any:
        task = from_fun(*args, **kwargs)
        try:
            _measure(task)  # again, after autoretry_for wrapped the body
        except Exception:
            _log.internal_error("celery task registration")
        return task

    app._task_from_fun = _task_from_fun
    for task in list(tasks.values()):
        _measure(task)


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
    global _RETRY, _CANCELLED
    from celery import signals  # type: ignore[import-untyped]  # optional: imported only here
    from celery.exceptions import Ignore, Reject, Retry  # type: ignore[import-untyped]

    if app not in _INSTRUMENTED:
        _INSTRUMENTED.add(app)
        _RETRY, _CANCELLED = (Retry,), (Reject, Ignore)
        for name, receiver in RECEIVERS.items():
            # Celery's signals hold weak references by default: these module functions live as long as the process.
            getattr(signals, name).connect(receiver, weak=False, dispatch_uid=f"bizmetrics.{name}")
        _hook(app)
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
