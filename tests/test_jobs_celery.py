"""Celery end to end: real workers (prefork, threads, solo) on a real Redis, tasks published from another process.

Every count, queue wait and retry is compared with the ground truth the tasks and the publisher write down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobs_helpers import env, redis_server, scrape, value, write
from ops_helpers import process, wait

pytestmark = pytest.mark.slow

APP = """
import json, os, time
from celery import Celery
import bizmetrics, bizmetrics.celery

app = Celery("jobapp", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.update(task_default_queue="work", worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
bizmetrics.celery.instrument(app)
RUNS = os.environ["RUNS"]


def note(name, when):
    with open(os.path.join(RUNS, name), "w") as f:
        f.write(json.dumps(when))


@app.task(bind=True, max_retries=5)
def work(self, ms=0, fail=False, retries=0, hang=False):
    note(f"{self.request.id}.{self.request.retries}.start", time.time())
    bizmetrics.record_workflow_execution("inside", 1.0, True)  # booked to the publisher's tenant
    if hang:
        note("hang.pid", os.getpid())
        time.sleep(600)
    time.sleep(ms / 1000)
    if self.request.retries < retries:
        before = time.time()
        retry = self.retry(countdown=0, throw=False)  # published when it returns
        note(f"{self.request.id}.{self.request.retries}.republish", (before, time.time()))
        raise retry
    if fail:
        raise ValueError("boom")
    return self.request.retries
"""

PUBLISH = """
import json, sys, time
import bizmetrics
from jobapp import work

plan = json.loads(sys.argv[1])
sent = []
for tenant, ms, fail, retries in plan:
    with bizmetrics.tenant_context(tenant):
        before = time.time()
        result = work.delay(ms=ms, fail=fail, retries=retries)
        sent.append((result, (before, time.time())))
published = {}
for result, at in sent:
    try:
        result.get(timeout=120, propagate=False)
    except Exception:
        pass
    published[result.id] = at
print(json.dumps(published))
"""

HANG = """
import json, time
from jobapp import work
before = time.time()
result = work.delay(hang=True)
print(json.dumps({result.id: (before, time.time())}))
"""

TENANTS = ("acme", "beta", "gamma")


def plan(count: int) -> list[tuple[str, int, bool, int]]:
    """Tasks of three tenants: some fail, some retry once or twice, each sleeps a little."""
    return [(TENANTS[i % 3], 5 + (i % 4) * 5, i % 5 == 1, (i % 7 == 3) + (i % 11 == 4)) for i in range(count)]


def setup(tmp_path: Path, url: str) -> tuple[Path, Path, dict[str, str]]:
    mpdir, runs = tmp_path / "mp", tmp_path / "runs"
    mpdir.mkdir()
    runs.mkdir()
    write(tmp_path / "jobapp.py", APP)
    write(tmp_path / "publish.py", PUBLISH)
    return mpdir, runs, env(mpdir, BROKER=url, RUNS=str(runs), PYTHONPATH=str(tmp_path))


def worker(tmp_path: Path, environ: dict[str, str], pool: str, concurrency: int) -> process:
    cmd = [sys.executable, "-m", "celery", "-A", "jobapp", "worker", "-P", pool, "-c", str(concurrency), "-Q", "work"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
    return process(cmd, cwd=tmp_path, env=environ)


Published = dict[str, tuple[float, float]]


def publish(tmp_path: Path, environ: dict[str, str], tasks: list[tuple[str, int, bool, int]]) -> Published:
    out = subprocess.run(
        [sys.executable, "publish.py", json.dumps(tasks)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    published: Published = {k: tuple(v) for k, v in json.loads(out.stdout).items()}
    return published


def ground_truth_waits(runs: Path, published: Published) -> list[tuple[float, float]]:
    """The bounds of the queue wait of every run, in ms: from its publish (or its retry's) to its start.

    A publish happens between the times noted just before and just after it.
    """
    waits = []
    for task_id, (before, after) in published.items():
        k = 0
        while (runs / f"{task_id}.{k}.start").exists():
            start = json.loads((runs / f"{task_id}.{k}.start").read_text())
            waits.append(((start - after) * 1000, (start - before) * 1000))
            if (runs / f"{task_id}.{k}.republish").exists():
                before, after = json.loads((runs / f"{task_id}.{k}.republish").read_text())
            k += 1
    return waits


def check(
    samples: dict, tasks: list[tuple[str, int, bool, int]], waits: list[tuple[float, float]], killed: int = 0
) -> None:
    """Compare with the ground truth; ``killed`` runs started (their wait observed) but never finished."""
    q = {"queue": "work", "task": "jobapp.work"}
    for tenant in TENANTS:
        mine = [t for t in tasks if t[0] == tenant]
        retried = sum(t[3] for t in mine)
        t = {**q, "tenant_id": tenant}
        assert value(samples, "job_executions_total", status="success", **t) == sum(not f for _, _, f, _ in mine)
        assert value(samples, "job_executions_total", status="error", **t) == sum(f for _, _, f, _ in mine)
        assert value(samples, "job_executions_total", status="retry", **t) == retried
        assert value(samples, "job_executions_total", status="cancelled", **t) == 0
        assert value(samples, "job_retries_total", **t) == retried
        # The task body ran with the publisher's tenant current.
        assert value(samples, "workflow_executions_total", tenant_id=tenant, workflow_id="inside") == len(mine) + retried
    runs = len(tasks) + sum(t[3] for t in tasks)
    assert value(samples, "job_duration_count", **q) == runs
    assert value(samples, "job_queue_wait_count", **q) == runs + killed == len(waits)
    # Each wait is read on the worker from the publisher's clock (the same machine): between the bounds,
    # give or take the time from the task's start signal to its body.
    low, high = sum(w[0] for w in waits), sum(w[1] for w in waits)
    assert low - 2.0 * len(waits) <= value(samples, "job_queue_wait_sum", **q) <= high
    assert value(samples, "job_duration_sum", **q) >= sum(t[1] * (1 + t[3]) for t in tasks)
    assert value(samples, "job_in_progress", **q) == 0
    # A task published with no tenant current (the killed one) runs with none.
    assert value(samples, "workflow_executions_total", tenant_id="default_tenant") == killed


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("solo", 1), ("threads", 3)])
def test_worker_counts_waits_retries_and_tenants_match_ground_truth(tmp_path: Path, pool: str, concurrency: int) -> None:
    with redis_server(tmp_path / "redis") as url:
        mpdir, runs, environ = setup(tmp_path, url)
        tasks = plan(24)
        with worker(tmp_path, environ, pool, concurrency):
            published = publish(tmp_path, environ, tasks)
            check(scrape(mpdir), tasks, ground_truth_waits(runs, published))


def test_kill_9_of_a_pool_process_mid_task_loses_or_doubles_nothing_finished(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        mpdir, runs, environ = setup(tmp_path, url)
        before = plan(12)
        after = [(tenant, ms, fail, 0) for tenant, ms, fail, _ in plan(9)]
        with worker(tmp_path, environ, "prefork", 2) as proc:
            published = publish(tmp_path, environ, before)
            hang = subprocess.run(
                [sys.executable, "-c", HANG], cwd=tmp_path, env=environ, capture_output=True, text=True, check=True
            )
            published |= {k: tuple(v) for k, v in json.loads(hang.stdout).items()}
            pid = int(wait(lambda: (runs / "hang.pid").exists() and (runs / "hang.pid").read_text(), "the hung task"))
            samples = scrape(mpdir)
            assert value(samples, "job_in_progress", queue="work", task="jobapp.work") == 1
            os.kill(pid, signal.SIGKILL)
            wait(lambda: not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text(), "kill")
            published |= publish(tmp_path, environ, after)
            assert proc.poll() is None
            samples = scrape(mpdir)
        # The killed run's in-progress count is gone with its process; every finished task is counted once.
        check(samples, before + after, ground_truth_waits(runs, published), killed=1)
