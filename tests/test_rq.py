"""RQ against a real Redis: in-process ``SimpleWorker`` runs, and end to end a real forking worker.

The in-process tests compare the catalogue with what a model of the jobs
predicts. The end-to-end ones (``slow``) run ``rq worker`` (a work horse per
job) with jobs enqueued from another process, and compare every count, queue
wait and retry with the ground truth the jobs and the publisher write down.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from redis import Redis
from rq import Queue, Retry, SimpleWorker
from rq.job import Job
from support import registry
from support.jobs import check, env, ground_truth_waits, plan, publish, rq_flaky, rq_tenant, scrape, value, write
from support.servers import process, redis_server, redis_url, wait

import bizmetrics
import bizmetrics.rq
from bizmetrics.jobs import TENANT_HEADER

# --- in this process: a SimpleWorker runs the jobs ------------------------------------------


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    with redis_server() as port:
        connection = Redis(port=port)
        yield connection
        connection.close()


class BurstWorker(SimpleWorker):
    """RQ's in-process worker, without the channel ``rq`` commands reach a live worker through.

    A burst never needs it, and its listener thread can hold the end of a burst for 60 s (RQ's
    ``sleep_time``) when redis-py's ``stop()`` joins it.
    """

    def subscribe(self) -> None:
        pass


def work(queue: Queue, job_class: type[Job] = Job) -> None:
    # RQ's worker takes over SIGINT and SIGTERM for the process and leaves them so: give them back, or the
    # processes this test process starts later (the demo that must stop on Ctrl-C) inherit its handling.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # CRITICAL: RQ logs every job, and every failure's traceback, at INFO and ERROR.
        worker = BurstWorker([queue], connection=queue.connection, job_class=job_class)
        worker.work(burst=True, logging_level="CRITICAL")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def runs(queue: str, task: str, status: str, tenant: str) -> float:
    return registry.value("job_executions_total", queue=queue, task=task, status=status, tenant_id=tenant)


#: A job: its publisher's tenant (None: none current), the runs that raise, the retries it is enqueued with.
jobs_plans = st.lists(
    st.tuples(st.sampled_from(["acme", "beta", None]), st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=6
)


@settings(max_examples=20)
@given(jobs=jobs_plans)
def test_a_simple_worker_records_every_run_under_the_publishers_tenant(redis: Redis, jobs: list[Any]) -> None:
    """Each run is an execution of the job's tenant (success, error, or retry while RQ retries), with its wait."""
    bizmetrics.rq.instrument()
    name, task = registry.unique("work"), "support.jobs.rq_flaky"
    queue = Queue(name, connection=redis)
    before = time.time()
    enqueued = []
    for tenant, failures, retries in jobs:
        with bizmetrics.tenant_context(tenant):
            retry = Retry(max=retries) if retries else None
            enqueued.append(queue.enqueue(rq_flaky, retries, failures, retry=retry))
    work(queue)
    spent_ms = (time.time() - before) * 1000

    total_runs = 0
    for tenant in ("acme", "beta", None):
        mine = [(failures, retries) for t, failures, retries in jobs if t == tenant]
        label = tenant or "default_tenant"
        retried = sum(min(f, r) for f, r in mine)
        assert runs(name, task, "success", label) == sum(f <= r for f, r in mine)
        assert runs(name, task, "error", label) == sum(f > r for f, r in mine)
        assert runs(name, task, "retry", label) == retried
        assert registry.value("job_retries_total", queue=name, task=task, tenant_id=label) == retried
        total_runs += len(mine) + retried
    # The job body ran under the publisher's tenant.
    for job, (tenant, failures, retries) in zip(enqueued, jobs, strict=True):
        if failures <= retries:
            assert job.return_value() == tenant
    q = {"queue": name, "task": task}
    assert registry.value("job_duration_count", **q) == total_runs
    assert registry.value("job_queue_wait_count", **q) == total_runs
    # Every wait lies between the enqueue and the end of the burst, on this machine's clock.
    assert 0 <= registry.value("job_queue_wait_sum", **q) <= total_runs * spent_ms
    assert registry.value("job_in_progress", **q) == 0


def test_a_tenant_the_publisher_put_in_meta_is_kept(redis: Redis) -> None:
    """A job whose meta already names a tenant runs under that one, not the publisher's current tenant."""
    bizmetrics.rq.instrument()
    queue = Queue(registry.unique("meta"), connection=redis)
    with bizmetrics.tenant_context("current"):
        job = queue.enqueue(rq_tenant, meta={TENANT_HEADER: "named"})
    assert job.meta[TENANT_HEADER] == "named"
    work(queue)
    assert job.return_value() == "named"
    assert runs(queue.name, "support.jobs.rq_tenant", "success", "named") == 1


class AuditedJob(Job):
    """A custom job class that overrides ``perform`` as RQ's docs show: around ``super().perform()``."""

    def perform(self) -> Any:
        self.meta["audited"] = True
        self.save_meta()
        return super().perform()


class AuditedQueue(Queue):
    job_class = AuditedJob


def test_a_custom_job_class_calling_super_records_each_run_once(redis: Redis) -> None:
    """``instrument()`` and ``instrument(job_class=..., queue_class=...)`` both: one execution per run, not two."""
    bizmetrics.rq.instrument()
    bizmetrics.rq.instrument(job_class=AuditedJob, queue_class=AuditedQueue)
    bizmetrics.rq.instrument(job_class=AuditedJob, queue_class=AuditedQueue)  # idempotent
    queue = AuditedQueue(registry.unique("custom"), connection=redis)
    with bizmetrics.tenant_context("acme"):
        job = queue.enqueue(rq_tenant)
    assert isinstance(job, AuditedJob)
    work(queue, AuditedJob)
    assert job.return_value() == "acme" and job.get_meta()["audited"] is True
    q = {"queue": queue.name, "task": "support.jobs.rq_tenant"}
    assert runs(queue.name, "support.jobs.rq_tenant", "success", "acme") == 1
    assert registry.value("job_duration_count", **q) == 1


def test_queue_depth_reads_the_queues_lengths_and_needs_a_connection(redis: Redis) -> None:
    """``queue_depth()`` reads each queue's length from Redis; ``instrument(queue_depth=...)`` refuses no connection."""
    names = registry.unique("a"), registry.unique("b")
    read = bizmetrics.rq.queue_depth(redis, names)
    assert read() == {names[0]: 0, names[1]: 0}
    for _ in range(3):
        Queue(names[1], connection=redis).enqueue(rq_tenant)
    assert read() == {names[0]: 0, names[1]: 3}
    with pytest.raises(ValueError, match="queue_depth needs connection="):
        bizmetrics.rq.instrument(queue_depth=names)
    reg = CollectorRegistry()
    bizmetrics.rq.instrument(queue_depth=names, connection=redis, registry=reg)
    assert f'job_queue_depth{{queue="{names[1]}"}} 3.0' in generate_latest(reg).decode()


# --- end to end: rq worker, a work horse per job ---------------------------------------------

#: The worker's settings module (``rq worker -c rqsettings``): instrumenting there is the whole set-up.
SETTINGS = """
import os
import bizmetrics.rq

REDIS_URL = os.environ["BROKER"]
bizmetrics.rq.instrument()
"""

JOBS = """
import json, os, time
import bizmetrics
from rq import get_current_job

RUNS = os.environ["RUNS"]


def note(name, when):
    with open(os.path.join(RUNS, name), "w") as f:
        f.write(json.dumps(when))


def work(ms=0, fail=False, retries=0, hang=False):
    job = get_current_job()
    run = retries - (job.retries_left or 0)
    note(f"{job.id}.{run}.start", time.time())
    bizmetrics.record_workflow_execution("inside", 1.0, True)  # booked to the publisher's tenant
    if hang:
        note("hang.pid", os.getpid())
        time.sleep(600)
    time.sleep(ms / 1000)
    if run < retries:
        note(f"{job.id}.{run}.republish", (time.time(), None))  # RQ republishes after this run ends
        raise RuntimeError("try again")
    if fail:
        raise ValueError("boom")
    return run
"""

PUBLISH = """
import json, os, sys, time
import bizmetrics, bizmetrics.rq
from redis import Redis
from rq import Queue, Retry
from rqjobs import work

bizmetrics.rq.instrument()
queue = Queue("work", connection=Redis.from_url(os.environ["BROKER"]))
if sys.argv[2:] == ["hang"]:
    before = time.time()
    job = queue.enqueue(work, hang=True)
    print(json.dumps({job.id: (before, time.time())}))
    sys.exit()
sent = []
for tenant, ms, fail, retries in json.loads(sys.argv[1]):
    with bizmetrics.tenant_context(tenant):
        before = time.time()
        retry = Retry(max=retries) if retries else None
        job = queue.enqueue(work, ms=ms, fail=fail, retries=retries, retry=retry)
        sent.append((job, (before, time.time())))
deadline = time.time() + 120
for job, _ in sent:
    while job.get_status(refresh=True) not in ("finished", "failed") and time.time() < deadline:
        time.sleep(0.02)
print(json.dumps({job.id: at for job, at in sent}))
"""


def setup(tmp_path: Path, url: str) -> tuple[Path, Path, dict[str, str]]:
    mpdir, runs = tmp_path / "mp", tmp_path / "runs"
    mpdir.mkdir()
    runs.mkdir()
    write(tmp_path / "rqsettings.py", SETTINGS)
    write(tmp_path / "rqjobs.py", JOBS)
    write(tmp_path / "publish.py", PUBLISH)
    return mpdir, runs, env(mpdir, BROKER=url, RUNS=str(runs), PYTHONPATH=str(tmp_path))


def worker(tmp_path: Path, environ: dict[str, str]) -> process:
    return process([sys.executable, "-m", "rq.cli", "worker", "-c", "rqsettings", "work"], cwd=tmp_path, env=environ)


@pytest.mark.slow
def test_rq_worker_counts_waits_retries_and_tenants_match_ground_truth(tmp_path: Path) -> None:
    with redis_url(tmp_path / "redis") as url:
        mpdir, runs, environ = setup(tmp_path, url)
        tasks = plan(18)
        with worker(tmp_path, environ):
            published = publish(tmp_path, environ, tasks)
            check(scrape(mpdir), "rqjobs.work", tasks, ground_truth_waits(runs, published))


@pytest.mark.slow
def test_rq_kill_9_of_the_work_horse_mid_job_loses_or_doubles_nothing_finished(tmp_path: Path) -> None:
    with redis_url(tmp_path / "redis") as url:
        mpdir, runs, environ = setup(tmp_path, url)
        before, after = plan(9), [(tenant, ms, fail, 0) for tenant, ms, fail, _ in plan(6)]
        with worker(tmp_path, environ) as proc:
            published = publish(tmp_path, environ, before)
            published |= publish(tmp_path, environ, [], hang=True)
            pid = int(wait(lambda: (runs / "hang.pid").exists() and (runs / "hang.pid").read_text(), "the hung job"))
            assert value(scrape(mpdir), "job_in_progress", queue="work", task="rqjobs.work") == 1
            os.kill(pid, signal.SIGKILL)
            wait(lambda: not os.path.exists(f"/proc/{pid}"), "the killed work horse reaped")
            published |= publish(tmp_path, environ, after)
            assert proc.poll() is None
            samples = scrape(mpdir)
        # The killed run's in-progress count is gone with its work horse; every finished job is counted once.
        check(samples, "rqjobs.work", before + after, ground_truth_waits(runs, published), killed=1)
