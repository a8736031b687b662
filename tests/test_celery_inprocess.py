"""Celery in this process: its real publisher, worker request and tracer on the in-memory broker.

What ``bizmetrics.celery`` hooks (the published headers, each task's body, the
app's loader) is checked here against Celery's own code paths, without a worker
process: a message is published with ``apply_async``, taken from the in-memory
queue and run by ``celery.worker.request.Request.execute``, the code a worker
runs for each task (``tests/test_celery.py`` runs real workers on Redis).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task, chain, signals
from celery.exceptions import Ignore
from celery.worker.request import Request
from support.registry import unique, value

import bizmetrics
import bizmetrics.celery
from bizmetrics.context import current_tenant
from bizmetrics.jobs import ENQUEUED_AT_HEADER, TENANT_HEADER


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The wall clock of publisher and worker, in Unix seconds, set by the test."""
    now = [1_000_000.0]
    monkeypatch.setattr(bizmetrics.celery, "_wall", lambda: now[0])
    return now


@pytest.fixture
def app() -> Iterator[Any]:
    """An instrumented app on the in-memory broker, with a queue of its own."""
    found = Celery(unique("app"), broker="memory://", backend="cache+memory://")
    found.conf.update(task_default_queue=unique("q"), task_ignore_result=True)
    bizmetrics.celery.instrument(found)
    yield found


def take(app: Any, queue: str | None = None) -> Any:
    """The next message of ``queue`` (the app's default queue), or ``None``."""
    with app.connection_for_write() as connection:
        return connection.default_channel.basic_get(queue or app.conf.task_default_queue, no_ack=True)


def work(app: Any, message: Any) -> Any:
    """Run one message as a worker does (in this process): Celery's ``Request.execute``."""
    task = app.tasks[message.headers["task"]]
    return Request(message, app=app, task=task, hostname="test@localhost").execute()


def runs(app: Any, task: Any, tenant: str, status: str = "success") -> float:
    """``job_executions_total`` of ``task`` on its app's default queue."""
    queue = app.conf.task_default_queue
    return value("job_executions_total", queue=queue, task=task.name, status=status, tenant_id=tenant)


def both_ways(app: Any, task: Any) -> tuple[str, list[Any]]:
    """Run ``task`` eagerly, then published and worked, under a fresh tenant: the tenant, what each returned."""
    tenant = unique("tenant")
    with bizmetrics.tenant_context(tenant):
        eager = task.apply().get()
        with app.connection_for_write() as connection:
            task.apply_async(connection=connection)
    return tenant, [eager, work(app, take(app))]


def publish_and_work(app: Any, task: Any, *args: Any, **options: Any) -> Any:
    with app.connection_for_write() as connection:
        task.apply_async(args, connection=connection, **options)
    return work(app, take(app))


def test_no_receiver_is_connected_to_the_signals_of_publishing_and_running_a_task(app: Any) -> None:
    """Celery's dispatch of a signal costs more than the 5 µs per task budget: only task_revoked is used."""
    for name in ("before_task_publish", "after_task_publish", "task_prerun", "task_postrun", "task_success"):
        keys = [key for key, _ in getattr(signals, name).receivers]
        assert not [key for key in keys if "bizmetrics" in str(key)], name
    assert [key for key, _ in signals.task_revoked.receivers if "bizmetrics" in str(key)]


def test_a_worker_run_is_booked_to_the_publishers_tenant_with_its_exact_queue_wait(app: Any, wall: list[float]) -> None:
    seen = []

    @app.task(name=unique("task"), bind=True)
    def job(self: Any, fail: bool = False) -> str:
        seen.append(current_tenant())
        if fail:
            raise ValueError("boom")
        return "done"

    tenant = unique("tenant")
    queue = app.conf.task_default_queue
    with app.connection_for_write() as connection, bizmetrics.tenant_context(tenant):
        job.apply_async(connection=connection)
        job.apply_async((True,), connection=connection)
    wall[0] += 0.25
    assert work(app, take(app)) == "done"
    wall[0] += 0.5
    work(app, take(app))
    assert seen == [tenant, tenant]
    assert current_tenant() is None  # the worker's own tenant is back after each run
    q = {"queue": queue, "task": job.name}
    assert value("job_executions_total", **q, status="success", tenant_id=tenant) == 1
    assert value("job_executions_total", **q, status="error", tenant_id=tenant) == 1
    assert value("job_queue_wait_sum", **q) == 250.0 + 750.0
    assert value("job_queue_wait_count", **q) == 2
    assert value("job_duration_count", **q) == 2
    assert value("job_in_progress", **q) == 0


def test_the_next_step_of_a_chain_and_a_link_are_published_under_the_tasks_tenant(app: Any) -> None:
    """The tenant stays current while Celery's tracer publishes after the body, then the worker's is back."""

    @app.task(name=unique("first"))
    def first(x: int) -> int:
        return x + 1

    @app.task(name=unique("second"))
    def second(x: int) -> int:
        return x * 2

    tenant = unique("tenant")
    with app.connection_for_write() as connection, bizmetrics.tenant_context(tenant):
        chain(first.s(1), second.s()).apply_async(connection=connection)
        first.apply_async((5,), link=second.s(), connection=connection)
    for _ in range(2):
        work(app, take(app))
        assert current_tenant() is None
    followers = [take(app), take(app)]
    assert [m.headers["task"] for m in followers] == [second.name, second.name]
    assert [m.headers[TENANT_HEADER] for m in followers] == [tenant, tenant]
    assert [work(app, m) for m in followers] == [4, 12]
    assert runs(app, first, tenant) == runs(app, second, tenant) == 2


def test_a_published_task_keeps_the_callers_headers_and_a_delayed_one_waits_from_its_eta(
    app: Any, wall: list[float]
) -> None:
    @app.task(name=unique("task"))
    def job() -> None:
        pass

    with app.connection_for_write() as connection:
        job.apply_async(headers={"x-trace": "abc", TENANT_HEADER: "explicit"}, connection=connection)
        with bizmetrics.tenant_context("current"):
            before = time.time()  # Celery reads its own clock for the ETA
            job.apply_async(headers={TENANT_HEADER: "explicit"}, countdown=30, connection=connection)
            after = time.time()
    plain, delayed = take(app), take(app)
    assert plain.headers["x-trace"] == "abc"
    assert plain.headers[TENANT_HEADER] == "explicit"  # none current: the caller's header stays
    assert plain.headers[ENQUEUED_AT_HEADER] == wall[0]
    assert delayed.headers[TENANT_HEADER] == "current"  # the current tenant is the one carried
    # The ETA travels as ISO text with microseconds: its Unix seconds may round by a microsecond.
    assert before + 30 - 1e-5 <= delayed.headers[ENQUEUED_AT_HEADER] <= after + 30 + 1e-5


def test_autoretry_for_ends_a_run_as_retry(app: Any) -> None:
    """Celery wraps an ``autoretry_for`` task's body after registering it: its retries are still retries."""
    app.conf.task_always_eager = True
    calls = []

    @app.task(name=unique("task"), autoretry_for=(KeyError,), max_retries=3, retry_backoff=False)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KeyError("not yet")
        return "ok"

    tenant = unique("tenant")
    with bizmetrics.tenant_context(tenant):
        assert flaky.delay().get() == "ok"
    q = {"queue": app.conf.task_default_queue, "task": flaky.name, "tenant_id": tenant}
    assert value("job_executions_total", **q, status="retry") == 2
    assert value("job_retries_total", **q) == 2
    assert value("job_executions_total", **q, status="success") == 1
    assert value("job_executions_total", **q, status="error") == 0


class Audited(Task):  # type: ignore[misc]
    """A base task with its own ``__call__``: Celery's tracer then calls the task, not its body."""

    calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        Audited.calls += 1
        return super().__call__(*args, **kwargs)


def test_a_task_with_its_own_call_is_recorded_once_with_its_tenant(app: Any) -> None:
    @app.task(name=unique("task"), base=Audited)
    def job() -> object:
        return current_tenant()

    tenant, returned = both_ways(app, job)
    assert returned == [tenant, tenant]
    assert Audited.calls >= 2
    assert runs(app, job, tenant) == 2


def test_calling_a_task_directly_records_nothing(app: Any) -> None:
    """Only runs Celery makes are jobs: ``task(...)``, in a task's body or outside, is a plain call."""

    @app.task(name=unique("inner"))
    def inner() -> object:
        return current_tenant()

    @app.task(name=unique("outer"), bind=True)
    def outer(self: Any) -> list[object]:
        return [inner(), inner()]

    tenant = unique("tenant")
    with bizmetrics.tenant_context(tenant):
        assert inner() == tenant
        assert outer.apply().get() == [tenant, tenant]
    assert runs(app, inner, tenant) == 0
    assert runs(app, outer, tenant) == 1


class RefusesToStart(Task):  # type: ignore[misc]
    """A task whose ``before_start`` fails: Celery never calls its body."""

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        raise RuntimeError("not today")


def test_a_direct_call_after_a_run_whose_body_never_came_records_nothing(app: Any) -> None:
    """A run stopped before its body (``before_start`` failed) leaves nothing a later ``task(...)`` could use."""

    @app.task(name=unique("refuses"), base=RefusesToStart)
    def refuses() -> int:
        return 1

    tenant = unique("tenant")
    with bizmetrics.tenant_context(tenant):
        assert refuses.apply().state == "FAILURE"
    assert refuses() == 1
    for status in ("success", "error"):
        assert runs(app, refuses, tenant, status) == 0
        assert runs(app, refuses, "default_tenant", status) == 0


class Nightly(Task):  # type: ignore[misc]
    """A class-based task."""

    def run(self, x: int) -> int:
        return x + 1


def test_tasks_registered_before_instrument_or_by_class_are_measured() -> None:
    app = Celery(unique("app"), broker="memory://", backend="cache+memory://")
    app.conf.update(task_default_queue=unique("q"), task_always_eager=True)

    @app.task(name=unique("early"))
    def early() -> int:
        return 1

    assert early.delay().get() == 1  # the app is finalized and the task built before instrument
    bizmetrics.celery.instrument(app)
    Nightly.name = unique("nightly")
    nightly = app.register_task(Nightly())
    legacy = type("Legacy", (Nightly,), {"name": unique("legacy")})
    app.tasks.register(legacy)
    tenant = unique("tenant")
    with bizmetrics.tenant_context(tenant):
        assert early.delay().get() == 1
        assert nightly.delay(1).get() == 2
        assert app.tasks[legacy.name].delay(2).get() == 3
    assert [runs(app, task, tenant) for task in (early, nightly, legacy)] == [1, 1, 1]


def test_a_new_app_at_a_collected_apps_address_is_instrumented_too() -> None:
    seen: set[int] = set()
    app: Any = None
    for _ in range(500):
        app = Celery(unique("app"), broker="memory://", backend="cache+memory://")
        if id(app) in seen:
            break
        seen.add(id(app))
        bizmetrics.celery.instrument(app)
        app = None
        gc.collect()
    assert app is not None, "no address was reused"
    app.conf.task_default_queue = unique("q")
    bizmetrics.celery.instrument(app)

    @app.task(name=unique("task"))
    def job() -> None:
        pass

    with app.connection_for_write() as connection:
        job.apply_async(connection=connection)
    assert ENQUEUED_AT_HEADER in take(app).headers


def test_a_worker_tracer_built_before_instrument_is_built_again() -> None:
    """instrument(app) called in a running worker (a worker_process_init receiver): its tracers are rebuilt."""
    from celery.app.trace import build_tracer

    app = Celery(unique("app"), broker="memory://", backend="cache+memory://")
    app.conf.update(task_default_queue=unique("q"), task_ignore_result=True)

    @app.task(name=unique("task"))
    def job() -> str:
        return "done"

    job.__trace__ = build_tracer(job.name, job, app.loader, "test@localhost", app=app)
    bizmetrics.celery.instrument(app)
    tenant = unique("tenant")
    with bizmetrics.tenant_context(tenant):
        assert publish_and_work(app, job) == "done"
    assert runs(app, job, tenant) == 1


def test_an_ignored_task_is_cancelled_and_a_retried_one_is_a_retry(app: Any) -> None:
    @app.task(name=unique("ignored"))
    def ignored() -> None:
        raise Ignore()

    @app.task(name=unique("retried"), bind=True, max_retries=1)
    def retried(self: Any) -> int:
        if self.request.retries < 1:
            raise self.retry(countdown=0)
        return self.request.retries

    tenant = unique("tenant")
    with bizmetrics.tenant_context(tenant):
        publish_and_work(app, ignored)
        publish_and_work(app, retried)
    assert work(app, take(app)) == 1  # the retry Celery published, with the tenant
    assert runs(app, ignored, tenant, "cancelled") == 1
    assert runs(app, retried, tenant, "retry") == 1
    assert runs(app, retried, tenant) == 1
    assert value("job_in_progress", queue=app.conf.task_default_queue, task=retried.name) == 0


def test_a_failure_inside_bizmetrics_never_changes_what_the_task_returns(
    app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from bizmetrics import jobs

    def broken(*_: Any) -> None:
        raise RuntimeError("bizmetrics bug")

    monkeypatch.setattr(jobs._Series, "start", broken)
    monkeypatch.setattr(jobs._Series, "finish", broken)

    @app.task(name=unique("task"))
    def job() -> object:
        return current_tenant()

    tenant, returned = both_ways(app, job)
    assert returned == [tenant, tenant]
    assert current_tenant() is None
    assert "bizmetrics bug" in caplog.text


def test_a_worker_run_whose_clean_up_failed_leaves_no_tenant_to_the_next_one(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tenant stays current until the tracer cleans up; if that fails, the next run starts without it."""

    def fails(*_: Any) -> None:
        raise RuntimeError("cleanup failed")

    monkeypatch.setattr(type(app.backend), "process_cleanup", fails)

    @app.task(name=unique("task"))
    def job() -> object:
        return current_tenant()

    tenant = unique("tenant")
    with app.connection_for_write() as connection:
        with bizmetrics.tenant_context(tenant):
            job.apply_async(connection=connection)
        job.apply_async(connection=connection)
    assert work(app, take(app)) == tenant
    assert work(app, take(app)) is None
    assert current_tenant() is None
