"""The job family: the generic helper (``bizmetrics.jobs``), Celery eager tasks, optional imports, queue depth."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.registry import unique, value

import bizmetrics
from bizmetrics import _values, jobs
from bizmetrics.context import current_tenant


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The worker's wall clock, in Unix seconds, set by the test."""
    now = [1_000_000.0]
    monkeypatch.setattr(jobs, "_wall", lambda: now[0])
    return now


def test_importing_bizmetrics_imports_no_queue_library() -> None:
    code = (
        "import sys, bizmetrics, bizmetrics.jobs, bizmetrics.celery, bizmetrics.rq; "
        "print(sorted(m for m in ('celery', 'kombu', 'rq', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_job_books_the_headers_tenant_and_records_wait_duration_and_success(wall: list[float]) -> None:
    queue, task, tenant = unique("q"), unique("task"), unique("tenant")
    with bizmetrics.tenant_context(tenant):
        headers = jobs.headers()
    assert headers == {jobs.ENQUEUED_AT_HEADER: wall[0], jobs.TENANT_HEADER: tenant}
    wall[0] += 2.5
    assert current_tenant() is None
    with jobs.run_job(queue, task, headers):
        assert current_tenant() == tenant
        assert value("job_in_progress", queue=queue, task=task) == 1
        bizmetrics.record_workflow_execution("inside", 1.0, True)
    assert current_tenant() is None
    assert value("job_in_progress", queue=queue, task=task) == 0
    assert value("job_executions_total", queue=queue, task=task, status="success", tenant_id=tenant) == 1
    assert value("job_queue_wait_count", queue=queue, task=task) == 1
    assert value("job_queue_wait_sum", queue=queue, task=task) == 2500.0
    assert value("job_duration_count", queue=queue, task=task) == 1
    assert value("workflow_executions_total", workflow_id="inside", status="success", tenant_id=tenant) == 1


@pytest.mark.parametrize(
    ("error", "status"),
    [(ValueError("x"), "error"), (asyncio.CancelledError(), "cancelled"), (KeyboardInterrupt(), "cancelled")],
)
def test_an_exception_ends_the_job_with_its_status_and_reaches_the_caller_unchanged(
    error: BaseException, status: str
) -> None:
    queue, task = unique("q"), unique("task")
    with pytest.raises(type(error)) as raised, jobs.run_job(queue, task, tenant_id="t1"):
        raise error
    assert raised.value is error
    assert value("job_executions_total", queue=queue, task=task, status=status, tenant_id="t1") == 1
    assert value("job_in_progress", queue=queue, task=task) == 0
    # No headers: not queued as far as bizmetrics knows, so no wait.
    assert value("job_queue_wait_count", queue=queue, task=task) == 0


def test_retry_and_cancel_set_the_status_and_retries_are_counted() -> None:
    queue, task = unique("q"), unique("task")
    with jobs.run_job(queue, task, tenant_id="t1") as job:
        job.retry()
    with pytest.raises(ValueError), jobs.run_job(queue, task, tenant_id="t1") as job:
        job.retry()
        raise ValueError("retried by the queue")
    with jobs.run_job(queue, task, tenant_id="t1") as job:
        job.cancel()
    assert value("job_executions_total", queue=queue, task=task, status="retry", tenant_id="t1") == 2
    assert value("job_retries_total", queue=queue, task=task, tenant_id="t1") == 2
    assert value("job_executions_total", queue=queue, task=task, status="cancelled", tenant_id="t1") == 1


def test_eager_jobs_are_executions_without_queue_wait(wall: list[float]) -> None:
    queue, task = unique("q"), unique("task")
    with jobs.run_job(queue, task, jobs.headers(tenant_id="t2"), eager=True):
        assert current_tenant() == "t2"
    assert value("job_executions_total", queue=queue, task=task, status="success", tenant_id="t2") == 1
    assert value("job_queue_wait_count", queue=queue, task=task) == 0


def test_a_wait_from_a_clock_ahead_is_zero_never_negative(wall: list[float]) -> None:
    queue, task = unique("q"), unique("task")
    with jobs.run_job(queue, task, jobs.headers(enqueued_at=wall[0] + 3)):
        pass
    assert value("job_queue_wait_count", queue=queue, task=task) == 1
    assert value("job_queue_wait_sum", queue=queue, task=task) == 0


def _finite(raw: Any) -> float | None:
    try:
        found = float(raw)
    except (TypeError, ValueError):
        return None
    return found if math.isfinite(found) else None


@given(
    enqueued_at=st.one_of(
        st.text(),
        st.sampled_from(["12.5", "inf", "-inf", "nan", " 3 "]),
        st.floats(),
        st.lists(st.integers()),
        st.just(float("nan")),
        st.none(),
    ),
    tenant=st.text(),
)
def test_garbage_headers_never_reach_the_job(enqueued_at: Any, tenant: str) -> None:
    queue, task = unique("q"), unique("task")
    headers = {jobs.ENQUEUED_AT_HEADER: enqueued_at, jobs.TENANT_HEADER: tenant}
    with jobs.run_job(queue, task, headers):
        pass
    booked = _values.label(tenant, "tenant_id", _values.DEFAULT_TENANT)
    assert value("job_executions_total", queue=queue, task=task, status="success", tenant_id=booked) == 1
    assert value("job_queue_wait_count", queue=queue, task=task) == (_finite(enqueued_at) is not None)
    assert value("job_duration_count", queue=queue, task=task) == 1
    assert value("job_in_progress", queue=queue, task=task) == 0


def test_record_job_books_a_run_after_the_fact(caplog: pytest.LogCaptureFixture) -> None:
    queue, task = unique("q"), unique("task")
    jobs.record_job(queue, task, "cancelled", tenant_id="t3")
    jobs.record_job(queue, task, "success", 12.0, queue_wait_ms=40.0, tenant_id="t3")
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        jobs.record_job(queue, task, "exploded", 1.0, tenant_id="t3")
    assert "exploded" in caplog.text
    assert value("job_executions_total", queue=queue, task=task, status="cancelled", tenant_id="t3") == 1
    assert value("job_executions_total", queue=queue, task=task, status="success", tenant_id="t3") == 1
    assert value("job_executions_total", queue=queue, task=task, status="error", tenant_id="t3") == 1
    assert value("job_queue_wait_sum", queue=queue, task=task) == 40.0
    assert value("job_duration_sum", queue=queue, task=task) == 13.0
    assert value("job_in_progress", queue=queue, task=task) == 0


def test_under_fixed_durations_every_duration_and_wait_is_the_fixed_one(wall: list[float]) -> None:
    """``testing.fixed_durations(ms)``: runs and after-the-fact records observe ``ms``; counts are as ever."""
    from bizmetrics.testing import fixed_durations

    queue, task = unique("q"), unique("task")
    q = {"queue": queue, "task": task}
    headers = jobs.headers(tenant_id="t5")
    wall[0] += 9.0  # a 9 s wait, recorded as the fixed 7 ms
    with fixed_durations(7):
        with jobs.run_job(queue, task, headers):
            assert value("job_in_progress", **q) == 1
        with jobs.run_job(queue, task, headers) as job:
            job.retry()
        jobs.record_job(queue, task, "cancelled", tenant_id="t5")  # never ran: neither duration nor wait
        jobs.record_job(queue, task, "error", 30.0, queue_wait_ms=50.0, tenant_id="t5")
    for status, count in (("success", 1), ("retry", 1), ("cancelled", 1), ("error", 1)):
        assert value("job_executions_total", **q, status=status, tenant_id="t5") == count, status
    assert value("job_retries_total", **q, tenant_id="t5") == 1
    assert (value("job_duration_count", **q), value("job_duration_sum", **q)) == (3, 21.0)
    assert (value("job_queue_wait_count", **q), value("job_queue_wait_sum", **q)) == (3, 21.0)
    assert value("job_in_progress", **q) == 0


def test_celery_eager_tasks_run_with_the_callers_tenant_without_queue_wait() -> None:
    from celery import Celery

    import bizmetrics.celery

    app = Celery(unique("app"), broker="memory://", backend="cache+memory://")
    app.conf.update(task_always_eager=True, task_default_queue="eager-q")
    bizmetrics.celery.instrument(app)
    bizmetrics.celery.instrument(app)  # idempotent

    @app.task(bind=True, name="eager.work", max_retries=3)
    def work(self: Any, fail: bool = False, retries: int = 0) -> str | None:
        if self.request.retries < retries:
            raise self.retry(countdown=0)
        if fail:
            raise ValueError("boom")
        return current_tenant()  # type: ignore[return-value]

    tenant = unique("tenant")
    with bizmetrics.tenant_context(tenant):
        assert work.delay().get() == tenant
        assert work.apply_async(kwargs={"retries": 2}).get() == tenant
        with pytest.raises(ValueError):
            work.delay(fail=True).get()
    q = {"queue": "eager-q", "task": "eager.work"}
    assert value("job_executions_total", **q, status="success", tenant_id=tenant) == 2
    assert value("job_executions_total", **q, status="retry", tenant_id=tenant) == 2
    assert value("job_retries_total", **q, tenant_id=tenant) == 2
    assert value("job_executions_total", **q, status="error", tenant_id=tenant) == 1
    assert value("job_duration_count", **q) == 5
    assert value("job_queue_wait_count", **q) == 0
    assert value("job_in_progress", **q) == 0


def test_queue_depth_never_stalls_a_scrape_on_a_broker_that_does_not_answer() -> None:
    release = threading.Event()
    answers = iter([{"a": 3, "b": 0}])

    def read() -> dict[str, int]:
        release.wait(30)
        return next(answers)

    depth = jobs.QueueDepth(read, timeout=0.05)
    assert [s for m in depth.collect() for s in m.samples] == []  # the read hangs: no queues, no wait past the timeout
    assert [s for m in depth.collect() for s in m.samples] == []  # still the same read: no second one started
    release.set()
    samples = wait_for_samples(depth)
    assert {s.labels["queue"]: s.value for s in samples} == {"a": 3.0, "b": 0.0}


def wait_for_samples(depth: jobs.QueueDepth) -> list[Any]:
    for _ in range(200):
        depth.timeout = 1.0
        found = [s for m in depth.collect() for s in m.samples]
        if found:
            return found
    raise AssertionError("no depth read")


def test_queue_depth_from_a_stalled_redis_is_left_out() -> None:
    """A TCP server that accepts and never answers, as a hung broker does."""
    from redis import Redis

    import bizmetrics.rq

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        read = bizmetrics.rq.queue_depth(Redis(port=port, socket_timeout=30), ["work"])
        depth = jobs.QueueDepth(read, timeout=0.1)
        assert [s for m in depth.collect() for s in m.samples] == []


def test_celery_eager_task_with_a_tenant_header_runs_under_it_then_restores_the_callers() -> None:
    from celery import Celery

    import bizmetrics.celery

    app = Celery(unique("app"), broker="memory://", backend="cache+memory://")
    app.conf.update(task_always_eager=True, task_default_queue="eager-h")
    bizmetrics.celery.instrument(app)

    @app.task(name="eager.who")
    def who() -> object:
        return current_tenant()

    inner, outer = unique("inner"), unique("outer")
    with bizmetrics.tenant_context(outer):
        assert who.apply(headers={bizmetrics.jobs.TENANT_HEADER: inner}).get() == inner
        assert current_tenant() == outer
        assert who.apply().get() == outer
    q = {"queue": "eager-h", "task": "eager.who", "status": "success"}
    assert value("job_executions_total", **q, tenant_id=inner) == 1
    assert value("job_executions_total", **q, tenant_id=outer) == 1
    assert value("job_in_progress", queue="eager-h", task="eager.who") == 0
