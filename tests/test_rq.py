"""RQ end to end: a real forking worker (a work horse per job) on a real Redis, jobs enqueued from another process.

Every count, queue wait and retry is compared with the ground truth the jobs and the publisher write down.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from support.jobs import check, env, ground_truth_waits, plan, publish, scrape, value, write
from support.servers import process, redis_url, wait

pytestmark = pytest.mark.slow

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


def test_rq_worker_counts_waits_retries_and_tenants_match_ground_truth(tmp_path: Path) -> None:
    with redis_url(tmp_path / "redis") as url:
        mpdir, runs, environ = setup(tmp_path, url)
        tasks = plan(18)
        with worker(tmp_path, environ):
            published = publish(tmp_path, environ, tasks)
            check(scrape(mpdir), "rqjobs.work", tasks, ground_truth_waits(runs, published))


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
